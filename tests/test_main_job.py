"""The main job (`zeroseg demo`) end to end on the tiny benchmark, and the dashboard on the store
it fills: every stage real (segmenters on Ray Train + DeepSpeed in local mode, feature caches, a
Ray Tune + Optuna sweep, baselines, a reproduction), every page driven by Streamlit's AppTest.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from zeroseg.platform.commands.demo import BASELINES
from zeroseg.platform.store import open_store

APP = Path(__file__).resolve().parents[1] / "dashboards" / "app.py"


@pytest.fixture(scope="module")
def main_job(tmp_path_factory) -> dict:
    from zeroseg.platform.cli import main

    out_dir = tmp_path_factory.mktemp("main") / "run"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["demo", "--out", str(out_dir), "--size", "tiny", "--trials", "3",
                     "--quiet"])
    assert code == 0, stdout.getvalue()[-3000:]
    return {"out": out_dir, "stdout": stdout.getvalue(), "store": out_dir / "results.db"}


def test_main_job_runs_every_stage_and_stores_everything(main_job):
    out_dir, out = main_job["out"], main_job["stdout"]
    summary = json.loads((out_dir / "summary.json").read_text())
    with open_store(main_job["store"]) as store:
        trials = store.runs(kind="trial", sweep="main-pading")
        baselines = {r["method"] for r in store.runs(kind="train", status="finished")}
        reps = store.runs(kind="reproduction")
        sweeps = store.sweeps()
    assert len(trials) == 3 and sweeps[0]["status"] == "finished"
    assert baselines == {"supervised", "seen-only", "projection", "gmmn", "pading"}
    assert len(reps) == 3 and {r["seed"] for r in reps} == {0, 1, 2}
    assert summary["reproductions"][0]["exact"] is True
    assert summary["speed_probe_s"] > 0 and "machine speed probe" in out
    assert set(summary["timings"]) == {"benchmark", "segmenters_and_features", "sweep",
                                       "baselines_and_reproduction"}
    for stage in range(1, 7):
        assert f"== {stage}/6" in out
    assert "GZSL, test split" in out and "pading (swept)" in out
    assert "Supervised" in out and "the upper bound" in out  # the oracle's row
    assert f"zeroseg dashboard --store {main_job['store']}" in out
    assert (out_dir / "experiment.yaml").is_file() and (out_dir / "space.yaml").is_file()


def test_main_job_again_reuses_every_stage(main_job):
    from zeroseg.platform.cli import main

    with open_store(main_job["store"]) as store:
        before = sorted(r["uid"] for r in store.runs(superseded=True))
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["demo", "--out", str(main_job["out"]), "--size", "tiny", "--trials", "3",
                     "--quiet"]) == 0
    again = stdout.getvalue()
    assert "already finished" in again
    assert again.count("stored before, reused") == len(BASELINES)  # reproductions: quiet
    with open_store(main_job["store"]) as store:
        assert sorted(r["uid"] for r in store.runs(superseded=True)) == before  # no new run
        assert len(store.runs(kind="trial")) == 3 and len(store.runs(kind="reproduction")) == 3


@pytest.mark.parametrize("page", ["views/leaderboard.py", "views/sweeps.py",
                                  "views/run_detail.py", "views/reproductions.py"])
def test_dashboard_pages_work_on_the_main_job_store(main_job, monkeypatch, page):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ZEROSEG_STORE", str(main_job["store"]))
    at = AppTest.from_file(str(APP), default_timeout=60)
    with open_store(main_job["store"]) as store:
        pading = next(r for r in store.runs(kind="train") if r["method"] == "pading")
    at.query_params["run"] = str(pading["id"])
    at.run()
    if page != "views/leaderboard.py":
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    texts = " ".join(str(e.value) for kind in ("error", "warning", "info", "success", "markdown")
                     for e in getattr(at, kind))
    assert "could not be shown" not in texts
    title = {"views/leaderboard.py": "Leaderboard", "views/sweeps.py": "Sweeps",
             "views/run_detail.py": "Run detail", "views/reproductions.py": "Reproductions"}
    assert at.title[0].value == title[page]
    if page == "views/leaderboard.py":
        methods = set(at.dataframe[0].value["Method"])
        assert {"Seen-only", "Projection", "GMMN", "PADing"} <= methods
    if page == "views/run_detail.py":
        assert at.get("image"), "qualitative predictions of the real run"
        assert "Leakage audit passed." in texts
    if page == "views/sweeps.py":
        assert at.get("plotly_chart")


def test_main_job_space_is_pading_space_with_the_laptop_budget(tmp_path):
    """The main job sweeps every knob of search_spaces/pading.yaml, the same ranges, except the
    two that set a trial's cost (step budget, number of primitives), which stay within the
    full space's and the authors' defaults (steps <= 2,000, primitives <= 400)."""
    import yaml

    from zeroseg.methods.pading import PADingConfig
    from zeroseg.platform.commands.demo import search_space

    full = yaml.safe_load((APP.parents[1] / "search_spaces" / "pading.yaml").read_text())
    main = search_space(tmp_path / "experiment.yaml", "small")
    assert main["method"] == full["method"] and main["objective"] == full["objective"]
    assert {k: main[k] for k in ("epochs", "scheduler", "searcher")} == \
        {k: full[k] for k in ("epochs", "scheduler", "searcher")}
    budget = {"steps", "num_primitives"}
    assert set(main["knobs"]) == set(full["knobs"])
    for name, knob in full["knobs"].items():
        if name not in budget:
            assert main["knobs"][name] == knob, name
    defaults = PADingConfig()
    assert max(main["knobs"]["steps"]["values"]) <= defaults.steps
    assert main["knobs"]["num_primitives"]["high"] <= defaults.num_primitives
    assert main["knobs"]["num_primitives"]["low"] >= full["knobs"]["num_primitives"]["low"]
