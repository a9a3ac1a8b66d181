"""The Streamlit dashboard: its data layer on a filled store, and every page driven by AppTest.

The store comes from :func:`dashboard_fixtures.fill_store` (runs shaped like the pipeline's on
the tiny synthetic benchmark). AppTest runs the real ``dashboards/app.py``: filters change the
leaderboard, the CSV / LaTeX downloads hold exactly the rows shown, and an empty store, an
older schema, an unreadable URL or a missing feature cache give a message, never an exception.
"""

from __future__ import annotations

import io
import math
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from zeroseg.dashboards import launch, media
from zeroseg.dashboards.data import leaderboard, reproductions, run_detail, sweeps
from zeroseg.platform.store import open_store, queries, schema

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from dashboard_fixtures import (  # noqa: E402
    OBJECTIVE,
    SWEEP,
    fill_store,
    write_optuna_study,
)

APP = TESTS.parent / "dashboards" / "app.py"
TIMEOUT = 60


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("dashboard")
    path = root / "results.db"
    with open_store(path) as store:
        info = fill_store(store, root)
    return path, info


@pytest.fixture(scope="module")
def ro(filled):
    store = open_store(filled[0], read_only=True, create=False)
    yield store
    store.close()


@pytest.fixture(scope="module")
def labelled(ro) -> pd.DataFrame:
    return leaderboard.leaderboard_runs(queries.summary_frame(ro), queries.runs_frame(ro))


def _ours(view: pd.DataFrame, **where: str) -> pd.DataFrame:
    rows = view[view["Source"] == leaderboard.OURS]
    for column, value in where.items():
        rows = rows[rows[column.replace("_", " ")] == value]
    return rows


# -- data layer ---------------------------------------------------------------------------------
def test_reference_figures_ship_as_package_data():
    papers = leaderboard.paper_results()
    raw = pd.read_csv(TESTS.parent / "dashboards" / "reference" / "paper_results.csv")
    assert len(papers) == len(raw) and list(papers.columns) == leaderboard.VIEW_COLUMNS
    row = papers[(papers["Source"] == "paper: PADing CVPR 2023, Table 1")
                 & (papers["Method"] == "PADing") & (papers["Metric"] == "PQ")].iloc[0]
    assert (row["Task"], row["Split"], row["Setting"]) == (
        "panoptic", "coco-panoptic/zsp-119-14", "GZSL")
    assert (row["Seen"], row["Unseen"], row["HM"]) == (41.5, 15.3, 22.3)
    assert set(papers["Task"]) == {"semantic", "instance", "panoptic", "detection"}
    assert set(sweeps.primitives_table()["num_primitives"]) == {100, 200, 300, 400, 500, 600, 700}


def test_leaderboard_is_mean_and_std_over_seeds_of_finished_runs(ro, labelled, filled):
    _, info = filled
    view = leaderboard.leaderboard_view(labelled, leaderboard.LeaderboardFilter())
    row = _ours(view, Method="PADing", Metric="mIoU", Config="-", Embedding="attributes")
    assert len(row) == 1
    row = row.iloc[0]
    rows = ro.metrics_frame(ids=info["train"]["pading"], metric_task="semantic",
                            setting="gzsl", eval_split="test", metric="iou", per_class=False)
    for subset, column in (("seen", "Seen"), ("unseen", "Unseen"), ("hm", "HM")):
        values = 100 * np.array([r["value"] for r in rows if r["subset"] == subset])
        assert len(values) == 3
        assert row[column] == pytest.approx(values.mean())
        assert row[f"{column} ±"] == pytest.approx(values.std(ddof=1))
    assert (row["Runs"], row["Seeds"], row["Setting"], row["Eval split"]) == (
        3, "0,1,2", "GZSL", "test")
    # Failed / running runs and sweep trials are not results; reproductions are their own rows.
    assert _ours(view, Method="GMMN", Metric="mIoU").iloc[0]["Runs"] == 3
    configs = set(_ours(view, Method="PADing", Metric="mIoU", Embedding="attributes")["Config"])
    assert configs == {"-"} | {f"reproduction of {SWEEP}/{t}" for t in info["reproduced_trials"]}
    with_trials = leaderboard.leaderboard_view(labelled, leaderboard.LeaderboardFilter(
        kinds=("train", "trial")))
    assert any(c.startswith("trial ") for c in with_trials["Config"])
    # Our rows, then the papers' beside them, for every default metric.
    assert set(_ours(view)["Metric"]) == set(leaderboard.DEFAULT_METRICS)
    assert (view["Source"] != leaderboard.OURS).any()


def test_zsd_and_zsi_rows_of_zsi_sit_beside_padings_and_the_papers(tmp_path):
    """ZSI runs store ZSI (instance, masks) and ZSD (detection, boxes) rows; the leaderboard
    shows both tasks, mean +- std over seeds, next to PADing's and next to ZSI's paper figures
    on the same split."""
    from zeroseg.platform.store import MetricRecord, RunRecord

    values = {("zsi", "instance"): [(40.0, 10.0), (42.0, 12.0), (44.0, 14.0)],
              ("zsi", "detection"): [(50.0, 20.0), (52.0, 22.0), (54.0, 24.0)],
              ("pading", "instance"): [(45.0, 15.0), (45.0, 17.0), (45.0, 19.0)],
              ("pading", "detection"): [(48.0, 18.0), (48.0, 18.0), (48.0, 21.0)]}
    path = tmp_path / "zsi.db"
    with open_store(path) as store:
        for method in ("zsi", "pading"):
            for seed in range(3):
                metrics = []
                for task in ("instance", "detection"):
                    seen, unseen = (v / 100 for v in values[(method, task)][seed])
                    hm = 2 * seen * unseen / (seen + unseen)
                    metrics += [MetricRecord(task, "gzsl", "test", subset, metric, value)
                                for subset, value in (("seen", seen), ("unseen", unseen),
                                                      ("hm", hm))
                                for metric in ("ap50", "recall50")]
                store.record_run(RunRecord(
                    kind="train", method=method, seed=seed, dataset="coco2014",
                    split="coco2014/zsi-48-17", embedding="word2vec", backbone="r101",
                    config={"method": method}, metrics=metrics))
    with open_store(path, read_only=True, create=False) as ro:
        labelled = leaderboard.leaderboard_runs(queries.summary_frame(ro), queries.runs_frame(ro))
    view = leaderboard.leaderboard_view(labelled, leaderboard.LeaderboardFilter(
        tasks=("detection",), splits=("coco2014/zsi-48-17",)))
    zsd = _ours(view, Metric="mAP50")
    assert set(zsd["Method"]) == {"ZSI", "PADing"} and set(zsd["Task"]) == {"detection"}
    zsi = zsd[zsd["Method"] == "ZSI"].iloc[0]
    assert (zsi["Seen"], zsi["Unseen"], zsi["Runs"]) == (pytest.approx(52.0),
                                                         pytest.approx(22.0), 3)
    assert zsi["Unseen ±"] == pytest.approx(2.0)
    papers = view[view["Source"] == "paper: ZSI CVPR 2021, Table 3"]
    assert set(papers["Method"]) == {"ZSI"} and set(papers["Task"]) == {"detection"}
    assert set(papers["Metric"]) == {"mAP50", "Recall@100"}
    # Per metric: our rows (methods in the papers' order), then the paper's.
    ap = view[view["Metric"] == "mAP50"]
    assert list(ap["Source"]) == [leaderboard.OURS] * 2 + ["paper: ZSI CVPR 2021, Table 3"]
    both = leaderboard.leaderboard_view(labelled, leaderboard.LeaderboardFilter(papers=False))
    assert {(r["Method"], r["Task"]) for _, r in both.iterrows()} == {
        (m, t) for m in ("ZSI", "PADing") for t in ("instance", "detection")}
    assert list(both["Task"]).index("detection") > max(
        i for i, t in enumerate(both["Task"]) if t == "instance")  # ZSI before ZSD


def test_leaderboard_filters_select_rows(labelled):
    base = leaderboard.leaderboard_view(labelled, leaderboard.LeaderboardFilter())
    clip = leaderboard.leaderboard_view(
        labelled, leaderboard.LeaderboardFilter(embeddings=("clip",), papers=False))
    assert len(clip) and set(clip["Embedding"]) == {"clip"} and set(clip["Method"]) == {"PADing"}
    zsl = leaderboard.leaderboard_view(
        labelled, leaderboard.LeaderboardFilter(setting="zsl", papers=False))
    assert zsl["Seen"].isna().all() and zsl["HM"].isna().all() and zsl["Unseen"].notna().all()
    val = leaderboard.leaderboard_view(labelled, leaderboard.LeaderboardFilter(eval_split="val"))
    assert (val["Source"] == leaderboard.OURS).all()  # the papers report the test split only
    semantic = leaderboard.leaderboard_view(
        labelled, leaderboard.LeaderboardFilter(tasks=("semantic",)))
    assert set(semantic["Metric"]) == {"mIoU"} and len(semantic) < len(base)


def test_exports_hold_exactly_the_rows_of_the_view(labelled):
    view = leaderboard.leaderboard_view(
        labelled, leaderboard.LeaderboardFilter(methods=("P&A", "PADing")))
    back = pd.read_csv(io.StringIO(leaderboard.view_to_csv(view)), keep_default_na=False,
                       na_values=[""])
    assert list(back.columns) == leaderboard.VIEW_COLUMNS and len(back) == len(view)
    for key in ("Source", "Method", "Metric", "Split"):
        assert list(back[key]) == list(view[key])
    assert np.allclose(back["HM"], view["HM"].astype(float), atol=0.006, equal_nan=True)
    latex = leaderboard.view_to_latex(view, caption="test")
    body = latex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == len(view)
    for line, (_, row) in zip(body, view.iterrows(), strict=True):
        assert leaderboard.latex_escape(row["Method"]) in line
        hm = "--" if math.isnan(row["HM"]) else f"{row['HM']:.1f}"
        assert hm in line
    assert r"P\&A" in latex and r"\toprule" in latex and "Values in \\%" in latex


def test_sweep_tables_objective_progress_and_importance(ro, filled, tmp_path):
    _, info = filled
    objective = sweeps.parse_objective(OBJECTIVE, "max")
    assert (objective.eval_split, objective.task, objective.subset, objective.metric) == (
        "val", "semantic", "hm", "iou")
    assert sweeps.parse_objective(None).key == "val/semantic/gzsl/hm/iou"
    trials = queries.runs_frame(ro, kind="trial", sweep=SWEEP, config=True)
    ids = [int(i) for i in trials["id"]]
    values = queries.metric_values(ro, ids, task="semantic", setting="gzsl", eval_split="val",
                                   subset="hm", metric="iou")
    curve = queries.curve_frame(ro, ids, "val/hm")
    table = sweeps.trial_table(trials, values, curve.groupby("run_id")["value"].last().to_dict())
    assert len(table) == len(info["trials"])
    assert {"knob:num_primitives", "knob:sigmas", "knob:structure_weight"} <= set(table.columns)
    assert set(table["knob:sigmas"]) == {"paper", "code", "1,2,4"}
    running = table[table["status"] == "running"].iloc[0]
    assert running["objective_from"] == "curve" and running["objective"] > 0
    counts = sweeps.status_counts(table, 12)
    assert (counts["finished"], counts["stopped"], counts["running"], counts["planned"]) == (
        7, 2, 1, 12)
    best = sweeps.best_so_far(table)
    assert best["best"].is_monotonic_increasing and len(best) == 9  # not the running trial
    by_n = sweeps.by_knob(table, "num_primitives")
    assert list(by_n["value"]) == [100, 200, 300, 400, 500, 600, 700]
    assert by_n.loc[by_n["best"].idxmax(), "value"] == 400  # the fixture's optimum
    eta = sweeps.eta_squared(table)
    assert math.isclose(sum(eta.values()), 1.0) and next(iter(eta)) == "num_primitives"
    assert sweeps.reproduce_commands(SWEEP, "t003") == \
        f"zeroseg reproduce {SWEEP} --trial t003 --seeds 3"
    # No Optuna study next to the store: importance from the store's trials, with a note.
    fallback = sweeps.knob_importance(table, study_name=SWEEP, store_url=str(filled[0]))
    assert "eta squared" in fallback.method and "no Optuna study file" in fallback.note
    # With the sweep's study beside the store: Optuna's evaluator, read-only.
    store_path = tmp_path / "results.db"
    store_path.touch()
    write_optuna_study(tmp_path / "optuna.db", SWEEP, [
        ({"num_primitives": float(n), "sigmas": s}, q) for n, s, q in
        ((100, "paper", 0.1), (400, "code", 0.3), (700, "paper", 0.15), (400, "paper", 0.32))])
    before = (tmp_path / "optuna.db").stat().st_mtime_ns
    found = sweeps.knob_importance(table, study_name=SWEEP, store_url=str(store_path))
    assert found.method.startswith("Optuna") and set(found.values) == {"num_primitives",
                                                                       "sigmas"}
    assert (tmp_path / "optuna.db").stat().st_mtime_ns == before
    other = sweeps.knob_importance(table, study_name="nope", store_url=str(store_path))
    assert "no Optuna study named 'nope'" in other.note and other.values


def test_reproductions_against_their_sweep_values(ro, filled):
    _, info = filled
    repro = queries.runs_frame(ro, kind="reproduction")
    sources = queries.runs_frame(ro, ids=list(repro["source_run_id"].astype(int)))
    objective = sweeps.parse_objective(OBJECTIVE)
    objectives = {int(i): objective for i in sources["id"]}
    ids = list(repro["id"]) + list(sources["id"])
    values = queries.metric_values(ro, ids, task="semantic", setting="gzsl", eval_split="val",
                                   subset="hm", metric="iou")
    summary, seeds = reproductions.reproduction_table(repro, sources, objectives, values)
    assert len(summary) == 2 and len(seeds) == 6
    assert set(summary["Trial"]) == set(info["reproduced_trials"])
    for _, row in summary.iterrows():
        mine = seeds[seeds["source_run_id"] == row["Source run"]]["value"]
        assert row["Runs"] == 3 and row["Seeds"] == "0,1,2"
        assert row["Sweep value"] == pytest.approx(100 * values[row["Source run"]])
        assert row["Reproduced mean"] == pytest.approx(mine.mean())
        assert row["Reproduced std"] == pytest.approx(mine.std())
        assert row["Δ (mean − sweep)"] == pytest.approx(mine.mean() - row["Sweep value"])


def test_run_media_pca_overlays_and_missing_cache_note(ro, filled):
    _, info = filled
    run = ro.run(info["main_run"])
    roles = media.class_roles(run).value
    assert len(roles.names) == 32 and len(roles.unseen) == 7
    points = media.embedding_points(run, roles)
    assert points.value is not None and set(points.value["kind"]) == {"synthetic unseen"}
    assert set(points.value["role"]) == {"unseen"} and len(points.value) == 7 * 20
    assert any("feature cache" in n and "is missing" in n for n in points.notes)
    examples = media.qualitative_examples(run, roles)
    assert [e.unseen_present for e in examples.value] == [[u] for u in
                                                          info["artifacts"]["_unseen_in_gt"]]
    ex = examples.value[0]
    assert ex.image.shape == ex.ground_truth.shape == ex.prediction.shape == (256, 256, 3)
    assert not np.array_equal(ex.ground_truth, ex.prediction)
    # PCA: the first component carries the most variance, points are centred.
    x = np.random.default_rng(0).normal(size=(50, 5)) * [5, 1, 1, 1, 1]
    pts, explained = media.pca_2d(x)
    assert pts.shape == (50, 2) and explained[0] > explained[1] > 0
    assert np.allclose(pts.mean(axis=0), 0, atol=1e-9)
    bare = media.embedding_points({"artifacts": {}}, roles)
    assert bare.value is None and len(bare.notes) == 2
    assert media.qualitative_examples({"artifacts": {}}, roles).notes


def test_audit_and_headline_tables(ro, filled):
    run = ro.run(filled[1]["main_run"])
    audit = run_detail.audit_table(run["leakage_audit"])
    assert "unseen pixels seen in training" in set(audit["Check"])
    assert audit.set_index("Check").loc["audit passed", "Value"] == "yes"
    assert run_detail.audit_warnings({"passed": False, "unseen_pixels_in_training": 12}) == [
        "the leakage audit FAILED for this run", "unseen pixels seen in training: 12"]
    head = run_detail.headline_table(run["metrics"])
    assert {"semantic", "instance", "panoptic"} == set(head["Task"])
    first = head.iloc[0]
    assert (first["Task"], first["Eval split"]) == ("semantic", "test")


def test_launcher_command_binds_localhost_and_passes_the_store():
    cmd = launch.command("/tmp/x.db", 8765)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4] == str(launch.APP)
    flags = dict(zip(cmd[5::2], cmd[6::2], strict=False))
    assert flags["--server.address"] == "127.0.0.1" and flags["--server.port"] == "8765"
    assert flags["--server.headless"] == "true" and flags["--browser.gatherUsageStats"] == "false"
    assert cmd[-3:] == ["--", "--store", "/tmp/x.db"]
    assert "--" not in launch.command(None)
    with pytest.raises(Exception, match="--port: expected a TCP port"):
        launch.command(None, 0)


# -- the app, driven by AppTest -----------------------------------------------------------------
@pytest.fixture
def app(monkeypatch):
    """``app(store_path)`` -> a fresh AppTest of dashboards/app.py on that store; downloads are
    readable afterwards through ``app.downloads(button)``."""
    from streamlit.runtime import memory_media_file_storage
    from streamlit.testing.v1 import AppTest, app_test

    storages: list = []

    class Recording(memory_media_file_storage.MemoryMediaFileStorage):
        def __init__(self, endpoint: str) -> None:
            super().__init__(endpoint)
            storages.append(self)

    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Recording)

    def make(path) -> AppTest:
        monkeypatch.setenv("ZEROSEG_STORE", str(path))
        return AppTest.from_file(str(APP), default_timeout=TIMEOUT)

    def download(button) -> str:
        name = button.proto.url.rsplit("/", 1)[-1]
        return storages[-1].get_file(name).content.decode("utf-8")

    make.download = download
    return make


def _texts(at) -> str:
    parts = [e.value for kind in ("error", "warning", "info", "success", "markdown", "caption")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def _table(at, column: str) -> pd.DataFrame:
    """The first table shown with ``column`` (plain st.dataframe elements carry no key)."""
    for frame in at.dataframe:
        if column in frame.value.columns:
            return frame.value
    raise AssertionError(f"no table with column {column!r} on the page")


def _no_failures(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert "could not be shown" not in _texts(at)


def test_app_leaderboard_filters_change_the_table_and_exports_match(app, filled):
    at = app(filled[0]).run()
    _no_failures(at)
    assert at.title[0].value == "Leaderboard"
    table = _table(at, "Seen ±")
    assert len(table) and set(leaderboard.DEFAULT_METRICS) <= set(table["Metric"])
    assert ((table["Source"] == leaderboard.OURS).any()
            and (table["Source"] != leaderboard.OURS).any())

    def exported(at) -> tuple[pd.DataFrame, str]:
        buttons = {b.label: b for b in at.get("download_button")}
        csv_text = app.download(buttons["Download this view as CSV"])
        latex = app.download(buttons["Download this view as LaTeX"])
        assert csv_text == at.session_state["leaderboard_csv"]
        return pd.read_csv(io.StringIO(csv_text), keep_default_na=False, na_values=[""]), latex

    def same_rows(shown: pd.DataFrame, csv: pd.DataFrame, latex: str) -> None:
        assert len(csv) == len(shown) and list(csv.columns) == list(shown.columns)
        for key in ("Source", "Method", "Config", "Task", "Metric", "Split", "Embedding"):
            assert list(csv[key].astype(str)) == list(shown[key].astype(str)), key
        for column in ("Seen", "Unseen", "HM"):
            assert np.allclose(csv[column], shown[column].astype(float), atol=0.006,
                               equal_nan=True)
        body = latex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
        assert len(body) == len(shown)

    csv, latex = exported(at)
    same_rows(table, csv, latex)

    at.multiselect(key="lb_methods").set_value(["PADing"]).run()
    _no_failures(at)
    narrowed = _table(at, "Seen ±")
    assert 0 < len(narrowed) < len(table) and set(narrowed["Method"]) == {"PADing"}
    csv, latex = exported(at)
    same_rows(narrowed, csv, latex)

    at.multiselect(key="lb_kinds").set_value(["train", "reproduction", "eval", "trial"]).run()
    _no_failures(at)
    with_trials = _table(at, "Seen ±")
    assert len(with_trials) > len(narrowed)
    assert any(str(c).startswith(f"trial {SWEEP}/") for c in with_trials["Config"])

    at.radio(key="lb_setting").set_value("zsl").run()
    zsl = _table(at, "Seen ±")
    assert set(zsl["Setting"]) == {"ZSL"} and zsl["Seen"].isna().all()
    at.multiselect(key="lb_embeddings").set_value(["word2vec"]).run()  # papers only, ZSL
    only = at.dataframe[0].value if at.dataframe else pd.DataFrame()
    assert not (only.get("Source", pd.Series(dtype=str)) == leaderboard.OURS).any()


def test_app_sweeps_page(app, filled):
    at = app(filled[0]).run()
    at.switch_page("views/sweeps.py").run()
    _no_failures(at)
    assert at.title[0].value == "Sweeps"
    shown = {m.label: str(m.value) for m in at.metric}
    assert shown.items() >= {"finished": "7", "stopped early": "2", "running": "1",
                             "planned": "12"}.items()
    # best so far, parallel coordinates, primitives, importance, sigma and lambda effects, the
    # chosen knob's effect, trial curves
    assert len(at.get("plotly_chart")) == 8
    codes = [c.value for c in at.code]
    assert f"zeroseg reproduce {SWEEP} --top 3 --seeds 3" in codes
    assert any(c.startswith(f"zeroseg reproduce {SWEEP} --trial t00") for c in codes)
    assert "eta squared" in _texts(at)  # no Optuna study beside this store
    trials = _table(at, "trial_id")
    assert len(trials) == 10 and set(trials["status"]) == {"finished", "stopped", "running"}
    at.selectbox(key="sw_trial").set_value("t005").run()
    assert f"zeroseg reproduce {SWEEP} --trial t005 --seeds 3" in [c.value for c in at.code]
    at.toggle(key="sw_auto").set_value(True).run()  # live mode: the same page in a fragment
    _no_failures(at)
    assert len(at.get("plotly_chart")) == 8


def test_app_run_detail_page(app, filled):
    _, info = filled
    at = app(filled[0])
    at.query_params["run"] = str(info["main_run"])
    at.run()
    at.switch_page("views/run_detail.py").run()
    _no_failures(at)
    text = _texts(at)
    assert at.title[0].value == "Run detail" and at.selectbox(key="rd_run").value == \
        info["main_run"]
    audit = _table(at, "Check")
    assert "audit passed" in set(audit["Check"]) and "Leakage audit passed." in text
    assert len(_table(at, "Role")) == 32
    assert "feature cache" in text and "is missing" in text  # PCA of the synthetic ones only
    assert len(at.get("plotly_chart")) == 3  # per-class, curves, embeddings
    assert len(at.get("image")) == 3 * 2  # image / ground truth / prediction of 2 examples
    fidelity = _table(at, "Measure")  # next to the embeddings: the generator's fidelity
    values = dict(zip(fidelity["Measure"], fidelity["Value"], strict=True))
    assert values["MMD (sqrt, per class, mean)"] == "0.412"
    assert values["nearest-fake-mean accuracy (balanced)"] == "0.80"
    assert values["between / within variance of the fakes"] == "0.310"
    assert list(_table(at, "NCM accuracy")["Class"]) == ["purple star", "smooth grass"]
    assert "Generator fidelity" in text
    # A run without artifacts: notes instead of pictures.
    at.query_params["run"] = str(info["failed"])
    at.selectbox(key="rd_run").set_value(info["failed"]).run()
    _no_failures(at)
    text = _texts(at)
    assert "This run failed: RuntimeError: CUDA out of memory" in text
    assert "not available for this run" in text
    assert "Generator fidelity: not available for this run." in text


def test_app_reproductions_page(app, filled):
    at = app(filled[0]).run()
    at.switch_page("views/reproductions.py").run()
    _no_failures(at)
    summary = _table(at, "Sweep value")
    assert len(summary) == 2 and set(summary["Runs"]) == {3}
    assert len(at.get("plotly_chart")) == 1


PAGES = ["views/leaderboard.py", "views/sweeps.py", "views/run_detail.py",
         "views/reproductions.py"]


def _every_page(at):
    at.run()
    yield at
    for page in PAGES[1:]:
        at.switch_page(page).run()
        yield at


def test_app_empty_missing_or_foreign_store_is_a_message(app, tmp_path):
    missing = tmp_path / "nowhere" / "results.db"
    for at in _every_page(app(missing)):
        assert not at.exception
        assert f"store {missing}: not found" in at.error[0].value
    assert not missing.exists()  # read-only: nothing created
    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE customers (name TEXT)")
    for at in _every_page(app(foreign)):
        assert not at.exception
        assert "not a zeroseg results store" in at.error[0].value
    open_store(tmp_path / "empty.db").close()
    for at in _every_page(app(tmp_path / "empty.db")):
        assert not at.exception
        assert "is empty: no run recorded yet" in at.info[0].value


def test_app_store_with_one_bare_running_run_degrades_gracefully(app, tmp_path):
    from zeroseg.platform.store import RunRecord

    path = tmp_path / "bare.db"
    with open_store(path) as store:
        store.record_run(RunRecord(kind="train", status="running", method="pading",
                                   code_version="x", host="h"))
    texts = []
    for at in _every_page(app(path)):
        _no_failures(at)
        texts.append(_texts(at))
    assert "None of our runs matches these filters" in texts[0]
    assert "No sweep in this store yet" in texts[1]
    assert "Metrics: not available for this run" in texts[2]
    assert "Leakage audit: not available for this run" in texts[2]
    assert "No reproduction in this store yet" in texts[3]


def test_app_older_schema_or_bad_url_is_a_message(app, tmp_path, filled):
    old = tmp_path / "old.db"
    open_store(old).close()
    with sqlite3.connect(old) as db:
        db.execute("UPDATE schema_version SET version = ?", (schema.SCHEMA_VERSION - 1,))
    for at in _every_page(app(old)):
        assert not at.exception
        assert "zeroseg results migrate" in at.error[0].value
        assert "older zeroseg" in at.error[0].value
    for at in _every_page(app("mysql://user@localhost/db")):
        assert not at.exception
        assert "unsupported database 'mysql'" in at.error[0].value


def test_trial_knobs_are_the_swept_ones_not_the_whole_method_config():
    from zeroseg.dashboards.data.sweeps import trial_params

    config = {"params": {"steps": 200, "classifier": {"steps": 400, "lr": 0.01},
                         "num_primitives": 300},
              "knobs": {"num_primitives": 600, "classifier.unseen_weight": 2.5,
                        "sigmas": [1, 2, 5]}}
    knobs = trial_params(config)
    assert set(knobs) == {"num_primitives", "classifier.unseen_weight", "sigmas"}
    assert knobs["num_primitives"] == 600 and knobs["classifier.unseen_weight"] == 2.5
    assert set(trial_params({"params": {"tau": 0.1}})) == {"tau"}  # older records
