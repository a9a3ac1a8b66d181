"""The results store: round trips of real evaluations, transactions, parallel writers,
idempotent retries, schema versions, the `zeroseg results` commands, and PostgreSQL."""

from __future__ import annotations

import csv
import json
import math
import os
import pwd
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Column, Text, event, inspect

from zeroseg.platform.cli import EXIT_USER_ERROR, main
from zeroseg.platform.store import (
    CurveRecord,
    MetricRecord,
    RunRecord,
    StoreError,
    dataset_folder_fingerprint,
    migrations,
    open_store,
    open_writable_store,
    schema,
    trial_uid,
)

TESTS = Path(__file__).resolve().parent


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- a realistic run: real evaluations on the tiny synthetic benchmark ---------------------------
@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> dict:
    """Evaluations of the tiny benchmark's validation split, and the training filter's audit."""
    import numpy as np
    from PIL import Image

    from zeroseg.platform import evaluation
    from zeroseg.platform.data.layout import CocoLayout
    from zeroseg.platform.data.leakage import filter_training
    from zeroseg.platform.data.synthetic.generate import generate, load_classes_json

    root = tmp_path_factory.mktemp("store") / "tiny"
    generate("tiny", 0, root, workers=1)
    layout = CocoLayout(root, "val")
    split = load_classes_json(layout.classes_json)

    # A seen-only prediction: the ground truth with each unseen class painted as a seen class
    # of the same kind (unseen IoU 0, seen IoU below 1 where they absorb the unseen pixels).
    relabel = np.arange(256, dtype=np.uint8)
    for c in split.unseen:
        target = next(s for s in split.seen if s.isthing == c.isthing)
        relabel[c.png_label] = target.png_label
    pred = root.parent / "pred_semantic"
    pred.mkdir()
    for png in sorted(layout.semantic_pngs.glob("*.png")):
        with Image.open(png) as im:
            Image.fromarray(relabel[np.asarray(im)]).save(pred / png.name)
    semantic = evaluation.evaluate_semantic(layout, split, pred, "gzsl", workers=1)
    semantic_zsl = evaluation.evaluate_semantic(layout, split, layout.semantic_pngs, "zsl",
                                                workers=1)
    # Panoptic values through the same summary code the evaluators use (seeded, not all 1).
    rng = np.random.default_rng(0)
    per_class = {c.index: {"pq": float(rng.uniform()), "sq": float(rng.uniform()),
                           "rq": float(rng.uniform())} for c in split.classes[:-1]}
    panoptic = evaluation.summarize("panoptic", split, "gzsl", evaluation.PANOPTIC_METRICS,
                                    per_class, num_images=32)
    audit = filter_training(CocoLayout(root, "train"), split, validation=True).to_dict()
    audit.pop("kept_image_ids")
    return {"root": root, "split": split, "semantic": semantic.to_json(),
            "semantic_zsl": semantic_zsl.to_json(), "panoptic": panoptic.to_json(),
            "audit": audit}


def realistic_run(evaluated: dict, **overrides) -> RunRecord:
    split = evaluated["split"]
    run = RunRecord(
        kind="train", status="finished", method="projection", dataset=split.dataset,
        split=split.name, embedding="attributes", backbone="swin-tiny", seed=3,
        config={"method": "projection", "lr": 0.001, "epochs": 2, "embedding": {"dim": 64}},
        dataset_fingerprint=dataset_folder_fingerprint(evaluated["root"]),
        leakage_audit={"training_filter": evaluated["audit"], "text_encoder": "attributes",
                       "backbone_init": "random", "hyperparameters_chosen_on": "val"},
        artifacts={"checkpoint": "runs/x/ckpt.pt", "predictions": "runs/x/pred"},
        duration_s=12.5, name="tiny projection",
        curves=[CurveRecord("train/loss", s, 1.0 / (s + 1)) for s in range(4)]
        + [CurveRecord("val/semantic/hm/iou", s, 0.1 * s) for s in range(2)])
    run.add_evaluation(evaluated["semantic"], "test")
    run.add_evaluation(evaluated["semantic_zsl"], "test")
    run.add_evaluation(evaluated["panoptic"], "val")
    for key, value in overrides.items():
        setattr(run, key, value)
    return run


def as_eval_json(metrics: list[dict], task: str, setting: str, eval_split: str) -> dict:
    """Rebuild the seen / unseen / hm / per_class parts of EvalResult.to_json() from rows."""
    out: dict = {"seen": {}, "unseen": {}, "hm": {}, "per_class": {}}
    for m in metrics:
        if (m["task"], m["setting"], m["eval_split"]) != (task, setting, eval_split):
            continue
        if m["subset"] == "class":
            out["per_class"].setdefault(m["class_name"], {})[m["metric"]] = m["value"]
        else:
            out[m["subset"]][m["metric"]] = m["value"]
    return out


def expected_parts(result: dict) -> dict:
    parts = {k: result[k] for k in ("seen", "unseen", "hm", "per_class")}
    if result["setting"] == "zsl":  # seen and HM do not exist in ZSL: no rows for them
        parts["seen"], parts["hm"] = {}, {}
    return parts


def test_round_trip_of_a_real_run(tmp_path, evaluated):
    store = open_store(tmp_path / "results.db")
    assert store.is_empty()
    run = realistic_run(evaluated)
    run_id = store.record_run(run)
    assert not store.is_empty() and store.count_runs() == 1

    got = store.run(run_id)
    for key in ("uid", "kind", "status", "method", "dataset", "split", "embedding", "backbone",
                "seed", "config", "leakage_audit", "artifacts", "name", "duration_s",
                "dataset_fingerprint"):
        assert got[key] == getattr(run, key), key
    assert got["tasks"] == ["panoptic", "semantic"]
    assert got["leakage_audit"]["training_filter"]["images_dropped"] == \
        evaluated["audit"]["images_dropped"] > 0
    assert got["config_hash"] and got["code_version"] and got["host"]
    assert got["created_at"].tzinfo is not None and got["finished_at"] >= got["created_at"]
    # Every metric comes back exactly, NULL where the evaluator left a class undefined.
    for name, eval_split in (("semantic", "test"), ("semantic_zsl", "test"),
                             ("panoptic", "val")):
        result = evaluated[name]
        back = as_eval_json(got["metrics"], result["task"], result["setting"], eval_split)
        assert back == expected_parts(result), name
    assert evaluated["semantic"]["unseen"]["iou"] == 0.0 < evaluated["semantic"]["seen"]["iou"]
    assert None in [v["pq"] for v in evaluated["panoptic"]["per_class"].values()]
    assert got["evaluations"]["semantic/gzsl/test"]["num_images"] == \
        evaluated["semantic"]["num_images"] > 0
    assert len(got["metrics"]) == len(run.metrics)
    assert [(p["name"], p["step"], p["value"]) for p in got["curves"]] == sorted(
        (c.name, c.step, c.value) for c in run.curves)

    # Long-format rows and the per-task summary agree with the record.
    rows = store.metrics_frame(per_class=False, metric_task="semantic", setting="gzsl")
    assert [(r["subset"], r["value"]) for r in rows] == [
        (s, evaluated["semantic"][s]["iou"]) for s in ("seen", "unseen", "hm")]
    assert all(r["run_id"] == run_id and r["method"] == "projection" for r in rows)
    summary = store.primary_metrics([run_id])[run_id]
    assert summary["semantic"]["hm"] == evaluated["semantic"]["hm"]["iou"]
    assert summary["semantic"]["eval_split"] == "test"
    assert summary["panoptic"]["eval_split"] == "val"  # no test metrics: falls back to val
    assert summary["panoptic"]["seen"] == evaluated["panoptic"]["seen"]["pq"]
    store.close()


def test_live_trial_updates_and_idempotent_retries(tmp_path, evaluated):
    store = open_store(tmp_path / "results.db")
    store.upsert_sweep("s1", method="projection", space={"lr": {"loguniform": [1e-4, 1e-2]}},
                       objective="val/semantic/gzsl/hm/iou", mode="max")
    trial = RunRecord(kind="trial", status="running", sweep="s1", trial_id="t0",
                      method="projection", leakage_audit={"training_filter": "ok"})
    run_id = store.record_run(trial)
    assert store.record_run(trial) == run_id  # a retried write: same run, nothing new
    assert store.count_runs() == 1
    assert store.run(run_id)["finished_at"] is None

    for epoch in range(3):
        store.add_curve_points(run_id, [("val/hm", epoch, 0.1 * epoch)])
    store.add_curve_points(run_id, [("val/hm", 2, 0.25)])  # a re-report replaces the point
    assert [(p["step"], p["value"]) for p in store.curves(run_id, "val/hm")] == [
        (0, 0.0), (1, 0.1), (2, 0.25)]

    n = store.add_evaluation(run_id, evaluated["semantic"], "val")
    assert store.add_evaluation(run_id, evaluated["semantic"], "val") == n  # replaced, not added
    hm = MetricRecord("semantic", "gzsl", "val", "hm", "iou", 0.5)
    store.add_metrics(run_id, [hm])
    rows = store.metrics_frame(ids=[run_id])
    assert len(rows) == n
    assert [r["value"] for r in rows if r["subset"] == "hm"] == [0.5]

    store.update_status(run_id, "stopped", artifacts={"checkpoint": "c.pt"})
    got = store.run(run_id)
    assert got["status"] == "stopped" and got["finished_at"] is not None
    assert got["artifacts"] == {"checkpoint": "c.pt"} and got["tasks"] == ["semantic"]
    assert "semantic/gzsl/val" in got["evaluations"]
    sweeps = store.sweeps()
    assert [(s["name"], s["trials"], s["mode"]) for s in sweeps] == [("s1", 1, "max")]
    assert sweeps[0]["space"] == {"lr": {"loguniform": [1e-4, 1e-2]}}

    # A trial is stored once per sweep: the same trial under another uid is refused, and a
    # trial keyed by trial_uid(sweep, trial id) maps a second report onto the stored run.
    with pytest.raises(StoreError, match="trial 't0' of sweep 's1' is already run"):
        store.record_run(RunRecord(kind="trial", sweep="s1", trial_id="t0"))
    keyed = RunRecord(kind="trial", sweep="s1", trial_id="t1", uid=trial_uid("s1", "t1"),
                      status="running")
    keyed_id = store.record_run(keyed)
    again = RunRecord(kind="trial", sweep="s1", trial_id="t1", uid=trial_uid("s1", "t1"),
                      status="finished")
    assert store.record_run(again) == keyed_id and store.count_runs() == 2
    assert store.run(keyed_id)["status"] == "running"  # the first write stands

    # A reproduction links to its source trial; an unknown source is refused.
    rep_id = store.record_run(RunRecord(kind="reproduction", source_run_id=run_id, seed=1))
    assert store.run(rep_id)["source_run_id"] == run_id
    with pytest.raises(StoreError, match="source_run_id: no run 999"):
        store.record_run(RunRecord(kind="reproduction", source_run_id=999))
    with pytest.raises(StoreError, match="no run 999"):
        store.update_status(999, "finished")
    assert store.count_runs() == 3


def test_an_exception_mid_record_leaves_nothing(tmp_path, evaluated):
    store = open_store(tmp_path / "results.db")
    run = realistic_run(evaluated, kind="trial", sweep="new-sweep", trial_id="t1")

    def fail_on_curves(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO CURVES"):
            raise RuntimeError("disk pulled out while writing curves")

    event.listen(store.engine, "before_cursor_execute", fail_on_curves)
    with pytest.raises(RuntimeError, match="disk pulled out"):
        store.record_run(run)
    event.remove(store.engine, "before_cursor_execute", fail_on_curves)

    # The run, its metric rows and the sweep it created were all rolled back.
    with sqlite3.connect(tmp_path / "results.db") as db:
        counts = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in ("runs", "metrics", "curves", "sweeps")}
    assert counts == {"runs": 0, "metrics": 0, "curves": 0, "sweeps": 0}
    assert store.is_empty()
    # The failed write consumed nothing: retrying the same record stores it once.
    run_id = store.record_run(run)
    assert store.run(run_id)["uid"] == run.uid and store.count_runs() == 1


def test_bad_records_are_refused_with_one_line_naming_the_field(tmp_path):
    store = open_store(tmp_path / "results.db")
    cases = [
        (RunRecord(kind="training"), "run.kind: 'training' is not one of"),
        (RunRecord(status="done"), "run.status"),
        (RunRecord(kind="trial"), "run.sweep: a trial needs"),
        (RunRecord(metrics=[MetricRecord("semantic", "gzsl", "test", "seen", "iou",
                                         float("nan"))]), r"run.metrics\[0\].value"),
        (RunRecord(metrics=[MetricRecord("semantic", "gzsl", "test", "class", "iou", 0.1)]),
         r"run.metrics\[0\].class_name"),
        (RunRecord(metrics=[MetricRecord("semantic", "gzsl", "dev", "seen", "iou", 0.1)]),
         r"run.metrics\[0\].eval_split"),
        (RunRecord(curves=[CurveRecord("loss", 0, 1.0), CurveRecord("loss", 0, 2.0)]),
         r"run.curves\[1\]: duplicate point"),
        (RunRecord(config={"x": object()}), "run.config: not storable as JSON"),
        (RunRecord(seed="1"), "run.seed"),
    ]
    for record, message in cases:
        with pytest.raises(StoreError, match=message) as info:
            store.record_run(record)
        assert "\n" not in str(info.value)
    assert store.is_empty()


# -- many writers at once -----------------------------------------------------------------------
SHARED_UID = "shared-run-written-by-every-worker"


def make_record(worker: int, i: int) -> RunRecord:
    """The i-th run of a worker: its values encode (worker, i) so every row can be checked."""
    base = worker * 1000 + i * 10
    metrics = [MetricRecord("panoptic", "gzsl", "val", subset, metric, (base + k) / 1e5)
               for k, (subset, metric) in enumerate(
                   (s, m) for s in ("seen", "unseen", "hm") for m in ("pq", "sq", "rq"))]
    metrics += [MetricRecord("panoptic", "gzsl", "val", "class", "pq", (base + 9 + k) / 1e5,
                             class_name=f"class {k}") for k in range(3)]
    return RunRecord(
        uid=f"w{worker:02d}-r{i:03d}-parallel", kind="trial", status="finished",
        sweep=f"sweep-{worker % 2}", trial_id=f"{worker}-{i}", method="projection",
        dataset="synthetic", split="synthetic/default", seed=i,
        config={"worker": worker, "i": i}, leakage_audit={"unseen_pixels_in_training": 0},
        metrics=metrics, curves=[CurveRecord("train/loss", s, base + s) for s in range(3)])


def _writer_main(argv: list[str]) -> None:
    """One writer process: wait for the start signal, then write its runs as fast as it can,
    retrying some writes (as a client whose reply got lost would) and racing the others on one
    shared uid."""
    url, worker, count, go = argv[0], int(argv[1]), int(argv[2]), Path(argv[3])
    workers = int(argv[4])
    store = open_store(url)
    (go.parent / f"ready-{worker}").touch()
    deadline = time.monotonic() + 120
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    ids = {}
    shared = None
    for i in range(count):
        if i == count // 2:  # halfway, wait for the others: the writers overlap by construction
            (go.parent / f"half-{worker}").touch()
            while (sum((go.parent / f"half-{w}").exists() for w in range(workers)) < workers
                   and time.monotonic() < deadline):
                time.sleep(0.002)
        record = make_record(worker, i)
        ids[record.uid] = store.record_run(record)
        if i % 5 == 0:
            assert store.record_run(record) == ids[record.uid]
        if i == count // 2:
            shared = store.record_run(RunRecord(uid=SHARED_UID, kind="eval", method="shared"))
    print(json.dumps({"ids": ids, "shared": shared}))


def run_parallel_writers(url: str, workers: int, count: int, tmp_path: Path) -> None:
    go = tmp_path / "go"  # the writers also race to create the store's schema
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_store; "
            "test_store._writer_main(sys.argv[2:])")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(TESTS), url, str(w), str(count),
                               str(go), str(workers)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for w in range(workers)]
    deadline = time.monotonic() + 120  # start them together, once every one is ready
    while (sum((tmp_path / f"ready-{w}").exists() for w in range(workers)) < workers
           and time.monotonic() < deadline and all(p.poll() is None for p in procs)):
        time.sleep(0.01)
    go.touch()
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))

    store = open_store(url, read_only=True)
    runs = store.runs(kind="trial", newest_first=False)
    assert len(runs) == workers * count
    assert len({r["uid"] for r in runs}) == workers * count
    # The writers really overlapped: every writer waits halfway for all the others, so in id
    # order the runs switch writer at least 2 * workers - 1 times (serial writers: workers - 1).
    order = [r["uid"][:3] for r in runs]
    assert sum(a != b for a, b in zip(order, order[1:], strict=False)) > workers
    by_uid = {r["uid"]: r["id"] for r in runs}
    for out in outputs:  # every writer got the id under which its run is stored
        assert all(by_uid[uid] == run_id for uid, run_id in out["ids"].items())
    shared = store.runs(method="shared")
    assert len(shared) == 1 and {o["shared"] for o in outputs} == {shared[0]["id"]}
    # Every metric row and curve point is there exactly once, with its value.
    rows = store.metrics_frame(kind="trial")
    expected = {}
    for w in range(workers):
        for i in range(count):
            rec = make_record(w, i)
            for m in rec.metrics:
                expected[(rec.uid, m.subset, m.class_name, m.metric)] = m.value
    got = [((r["run_uid"], r["subset"], r["class_name"], r["metric"]), r["value"]) for r in rows]
    assert len(got) == len(expected) and dict(got) == expected
    for r in runs[:: max(1, len(runs) // 10)]:
        config = store.run(r["id"])["config"]
        w, i = config["worker"], config["i"]
        assert [p["value"] for p in store.curves(r["id"])] == [w * 1000 + i * 10 + s
                                                               for s in range(3)]
    assert sorted((s["name"], s["trials"]) for s in store.sweeps()
                  if s["name"].startswith("sweep-")) == [
        ("sweep-0", workers // 2 * count), ("sweep-1", (workers - workers // 2) * count)]
    store.close()


def test_parallel_writers_lose_nothing_and_duplicate_nothing_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'results.db'}"
    run_parallel_writers(url, workers=8, count=25, tmp_path=tmp_path)
    with sqlite3.connect(tmp_path / "results.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- empty, missing, old, new and foreign stores ------------------------------------------------
def test_missing_store_is_not_found_and_stays_uncreated(tmp_path, capsys):
    path = tmp_path / "sub" / "results.db"
    with pytest.raises(StoreError) as info:
        open_store(path, read_only=True)
    assert str(info.value) == f"store {path}: not found"
    for argv in (["results", "list"], ["results", "table"], ["results", "show", "1"],
                 ["results", "export", "--csv", str(tmp_path / "x.csv")], ["results", "migrate"],
                 ["dashboard"]):
        code, out, err = cli(capsys, *argv, "--store", str(path))
        assert code == EXIT_USER_ERROR and err == f"zeroseg: error: store {path}: not found\n", \
            (argv, err)
    assert not path.exists() and not path.parent.exists() and not (tmp_path / "x.csv").exists()

    created = open_store(path)  # writers create it; then it is an empty store
    assert created.is_empty() and created.schema_version == schema.SCHEMA_VERSION
    assert path.exists()
    monkey_env = {**os.environ, "ZEROSEG_STORE": str(path)}
    out = subprocess.run([sys.executable, "-m", "zeroseg.platform.cli", "results", "list"],
                         capture_output=True, text=True, env=monkey_env, check=True).stdout
    assert str(path) in out and "is empty" in out


def test_read_only_store_cannot_be_written_even_by_raw_sql(tmp_path, evaluated):
    path = tmp_path / "results.db"
    open_store(path).record_run(realistic_run(evaluated))
    ro = open_store(path, read_only=True)
    assert ro.count_runs() == 1
    with ro.engine.connect() as conn, pytest.raises(Exception, match="readonly|read-only"):
        conn.exec_driver_sql("DELETE FROM runs")
    assert ro.count_runs() == 1


def test_older_schema_is_a_clear_error_until_migrated(tmp_path, evaluated, capsys, monkeypatch):
    path = tmp_path / "results.db"
    run_id = open_store(path).record_run(realistic_run(evaluated))
    # This code now "needs" the next version: a step that adds a column, as a real migration would.
    now, later = schema.SCHEMA_VERSION, schema.SCHEMA_VERSION + 1

    def next_step(op, conn):
        op.add_column("runs", Column("notes", Text, nullable=True))

    monkeypatch.setattr(schema, "SCHEMA_VERSION", later)
    monkeypatch.setitem(migrations.MIGRATIONS, now, next_step)
    expected = (f"store {path}: schema version {now}, this zeroseg reads {later}; run `zeroseg "
                f"results migrate --store {path}`")
    with pytest.raises(StoreError) as info:
        open_store(path, read_only=True)
    assert str(info.value) == expected
    for argv in (["results", "list"], ["dashboard"]):
        code, out, err = cli(capsys, *argv, "--store", str(path))
        assert code == EXIT_USER_ERROR and err == f"zeroseg: error: {expected}\n" and not out

    code, out, err = cli(capsys, "results", "migrate", "--store", str(path))
    assert code == 0 and "migrated" in out and f"v{later}" in out, err
    store = open_store(path)
    assert store.schema_version == later and store.run(run_id)["uid"]
    assert "notes" in {c["name"] for c in inspect(store.engine).get_columns("runs")}
    code, out, _ = cli(capsys, "results", "migrate", "--store", str(path))
    assert code == 0 and "up to date" in out

    monkeypatch.setattr(schema, "SCHEMA_VERSION", later + 1)  # no step beyond
    code, out, err = cli(capsys, "results", "migrate", "--store", str(path))
    assert code == EXIT_USER_ERROR and f"no migration from v{later} to v{later + 1}" in err


def test_a_v1_store_migrates_keeps_its_runs_and_counts_a_stored_twice_run_once(tmp_path,
                                                                               capsys):
    """tests/fixtures/results_store_v1.sql: a store of schema v1 where a re-run stored gmmn
    seed 0 twice (runs 1 and 2). After `zeroseg results migrate` every run is still there, the
    copy is marked superseded by the newer one, and `results table` counts that seed once."""
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:
        db.executescript((TESTS / "fixtures" / "results_store_v1.sql").read_text())
    code, out, err = cli(capsys, "results", "table", "--store", str(path))
    assert code == EXIT_USER_ERROR and "schema version 1, this zeroseg reads 3" in err
    code, out, err = cli(capsys, "results", "migrate", "--store", str(path))
    assert code == 0 and "applied v2, v3" in out, err

    store = open_store(path, read_only=True)
    everything = {r["id"]: r for r in store.runs(superseded=True)}
    assert sorted(everything) == [1, 2, 3, 4, 5]
    assert everything[1]["superseded_by"] == 2 and everything[1]["run_key"] is None
    assert everything[2]["run_key"] and everything[2]["superseded_by"] is None
    keys = [r["run_key"] for r in everything.values() if r["run_key"]]
    assert len(keys) == len(set(keys)) == 3  # runs 2, 3, 4; the trial has none
    assert everything[5]["run_key"] is None and everything[5]["kind"] == "trial"
    assert sorted(r["id"] for r in store.runs()) == [2, 3, 4, 5]  # readers skip the copy
    assert len(store.run(1)["metrics"]) == 3  # still readable by id
    code, out, _ = cli(capsys, "results", "show", "1", "--store", str(path))
    assert code == 0 and "superseded by run 2" in out

    code, out, err = cli(capsys, "results", "table", "--store", str(path), "--settings", "gzsl")
    gmmn = next(ln for ln in out.splitlines() if ln.startswith("GMMN")).split()
    assert gmmn[1] == "2", out  # seeds 0 and 1, not 0, 0 and 1
    assert gmmn[3:5] == ["50.0±14.1", "20.0±14.1"]
    from zeroseg.dashboards.data import leaderboard
    from zeroseg.platform.store import queries

    board = leaderboard.leaderboard_runs(queries.summary_frame(store, "results"),
                                         queries.runs_frame(store))
    assert sorted(set(board["run_id"])) == [2, 3, 4]  # the dashboard skips the copy too

    # The migrated store enforces the identity from now on: storing seed 0 again reuses run 2.
    writer = open_store(path)
    again = writer.run(2)
    record = RunRecord(kind="train", method="gmmn", seed=0, run_key=again["run_key"],
                       config={"method": "gmmn"})
    assert writer.record_run(record) == 2 and writer.count_runs() == 5


def _v2_metrics_check(conn) -> None:
    """Turn a fresh PostgreSQL store back into what schema v2 wrote: metrics.task without
    'detection' (SQLite's older stores come from the v1 fixture)."""
    old = schema.task_check(tuple(t for t in schema.TASKS if t != "detection"))
    conn.exec_driver_sql("ALTER TABLE metrics DROP CONSTRAINT ck_metrics_task")
    conn.exec_driver_sql(f"ALTER TABLE metrics ADD CONSTRAINT ck_metrics_task CHECK ({old})")
    conn.exec_driver_sql("UPDATE schema_version SET version = 2")


def _check_detection_rows_after_migration(path_or_url: str, capsys) -> None:
    """An older store refuses a ZSD (detection) row until `zeroseg results migrate` widens
    metrics.task; then it keeps every row it had and stores detection rows like any other."""
    code, out, err = cli(capsys, "results", "migrate", "--store", path_or_url)
    assert code == 0 and "v3" in out, err
    store = open_store(path_or_url)
    before = store.metrics_frame()
    run = RunRecord(kind="train", method="zsi", seed=0, config={"method": "zsi"},
                    metrics=[MetricRecord("detection", "gzsl", "test", s, "ap50", v)
                             for s, v in (("seen", 0.5), ("unseen", 0.2), ("hm", 2 / 7))])
    run_id = store.record_run(run)
    got = store.run(run_id)
    assert {(m["task"], m["subset"], m["value"]) for m in got["metrics"]} == {
        ("detection", "seen", 0.5), ("detection", "unseen", 0.2), ("detection", "hm", 2 / 7)}
    assert got["tasks"] == ["detection"]
    assert store.primary_metrics([run_id])[run_id]["detection"]["hm"] == pytest.approx(2 / 7)
    assert len(store.metrics_frame()) == len(before) + 3
    names = {ix["name"] for ix in inspect(store.engine).get_indexes("metrics")}
    assert {"ix_metrics_run", "ix_metrics_lookup"} <= names


def test_a_v1_or_v2_sqlite_store_migrates_to_the_detection_task(tmp_path, capsys):
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as db:
        db.executescript((TESTS / "fixtures" / "results_store_v1.sql").read_text())
        rows = db.execute("SELECT * FROM metrics ORDER BY id").fetchall()
        with pytest.raises(sqlite3.IntegrityError, match="ck_metrics_task"):
            db.execute("INSERT INTO metrics (run_id, task, setting, eval_split, subset, metric, "
                       "value) VALUES (1, 'detection', 'gzsl', 'test', 'hm', 'ap50', 0.1)")
    _check_detection_rows_after_migration(str(path), capsys)
    with sqlite3.connect(path) as db:  # the rebuilt table kept every row, id and value
        assert db.execute("SELECT * FROM metrics WHERE id <= ? ORDER BY id",
                          (len(rows),)).fetchall() == rows


def test_newer_or_foreign_stores_are_clear_errors(tmp_path, capsys):
    newer = tmp_path / "newer.db"
    open_store(newer).close()
    with sqlite3.connect(newer) as db:
        db.execute("INSERT INTO schema_version (version, applied_at, zeroseg_version, note) "
                   "VALUES (99, '2030-01-01 00:00:00', '9.0', 'future')")
    with pytest.raises(StoreError, match=f"schema version 99, this zeroseg reads "
                                         f"{schema.SCHEMA_VERSION} .the store is newer.") as info:
        open_store(newer, read_only=True)
    assert "\n" not in str(info.value)

    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE runs (x INTEGER)")
    with pytest.raises(StoreError, match="not a zeroseg results store .tables runs but no "
                                         "schema_version table"):
        open_store(foreign)
    # Another application's SQLite file: readers and writers refuse it, and leave it alone.
    other = tmp_path / "app.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE customers (name TEXT)")
    for read_only in (True, False):
        with pytest.raises(StoreError, match="not a zeroseg results store .it holds another "
                                             "application's tables: customers"):
            open_store(other, read_only=read_only)
    with sqlite3.connect(other) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    assert tables == ["customers"]
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(StoreError, match="not a zeroseg results store .an empty database"):
        open_store(empty, read_only=True)
    text = tmp_path / "notes.db"
    text.write_text("not a database at all, but long enough to have a header" * 10)
    with pytest.raises(StoreError, match="not a zeroseg results store .not a SQLite database"):
        open_store(text)
    with pytest.raises(StoreError, match="not a zeroseg results store .a folder"):
        open_store(tmp_path)
    with pytest.raises(StoreError, match="unsupported database 'mysql'"):
        open_store("mysql://u@localhost/db")
    for url in ("mysql+foo://::garbage", "postgresql://u@host:notaport/db"):
        for argv in (["results", "list"], ["dashboard"]):
            code, out, err = cli(capsys, *argv, "--store", url)
            assert code == EXIT_USER_ERROR and "not a database URL" in err, (url, err)
            assert err.count("\n") == 1


def test_a_store_that_cannot_be_written_fails_the_write_probe(tmp_path):
    from conftest import run_read_only

    path = tmp_path / "ro" / "results.db"
    open_store(path).close()
    probe = ("from zeroseg.platform.store import open_writable_store\n"
             "try:\n"
             f"    open_writable_store({str(path)!r})\n"
             "except Exception as e:\n    print(e)\n")
    out = run_read_only(path.parent, [sys.executable, "-c", probe], capture_output=True,
                        text=True, timeout=120).stdout
    assert out.strip().startswith(f"store {path}: cannot "), out
    assert "\n" not in out.strip()
    open_writable_store(path).close()  # writable: the probe passes and changes nothing
    assert open_store(path, read_only=True).is_empty()
    # A read-only connection to a writable store: the probe is refused as well.
    with pytest.raises(StoreError, match="opened read-only, cannot write .probe."):
        open_store(path, read_only=True).probe_write()


def test_a_finished_run_is_stored_once_per_identity(tmp_path):
    from zeroseg.platform.store import run_key

    store = open_store(tmp_path / "results.db")
    key = run_key(kind="train", config_hash="abc", method="gmmn", seed=0, eval_splits=["test"],
                  code_version="v1")
    assert key != run_key(kind="train", config_hash="abc", method="gmmn", seed=1,
                          eval_splits=["test"], code_version="v1")

    def record(status: str, value: float, **kw) -> int:
        return store.record_run(RunRecord(
            kind="train", status=status, method="gmmn", seed=0, run_key=key,
            metrics=[MetricRecord("semantic", "gzsl", "test", "hm", "iou", value)]), **kw)

    def uids() -> list[str]:
        return [r["uid"] for r in store.runs()]

    failed = store.run(record("failed", 0.0))["uid"]
    first = record("finished", 0.5)
    assert uids() == [store.run(first)["uid"]] != [failed]  # the failed attempt was replaced
    assert record("finished", 0.9) == first and store.count_runs() == 1  # reused
    assert store.run(first)["metrics"][0]["value"] == 0.5
    assert store.finished_run(key)["id"] == first
    before = uids()
    replaced = record("finished", 0.7, replace=True)  # --force
    assert uids() == [store.run(replaced)["uid"]] != before
    assert store.run(replaced)["metrics"][0]["value"] == 0.7
    # A failed --force re-run keeps the finished run beside it.
    record("failed", 0.0, replace=True)
    assert sorted(r["status"] for r in store.runs()) == ["failed", "finished"]
    # The index, not only the code path, refuses a second finished row.
    with pytest.raises(Exception, match="UNIQUE"), store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE runs SET status = 'finished' WHERE status = 'failed'")


def _write_same_run(url: str, key: str, go: str, out: str) -> None:
    """One of several processes that all store the same finished run at the same moment."""
    while not Path(go).exists():
        time.sleep(0.001)
    store = open_store(url)
    run_id = store.record_run(RunRecord(kind="train", method="gmmn", seed=0, run_key=key,
                                        metrics=[MetricRecord("semantic", "gzsl", "test", "hm",
                                                              "iou", 0.5)]))
    Path(out).write_text(str(run_id))


def test_concurrent_processes_storing_the_same_run_end_with_one_row(tmp_path):
    import multiprocessing

    from zeroseg.platform.store import run_key

    url = str(tmp_path / "results.db")
    open_store(url).close()
    key = run_key(kind="train", config_hash="abc", method="gmmn", seed=0, eval_splits=["test"],
                  code_version="v1")
    go = tmp_path / "go"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_same_run, args=(url, key, str(go),
                                                       str(tmp_path / f"out{i}")))
             for i in range(4)]
    for proc in procs:
        proc.start()
    time.sleep(1.0)
    go.touch()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    ids = {(tmp_path / f"out{i}").read_text() for i in range(4)}
    store = open_store(url, read_only=True)
    assert store.count_runs() == 1 and ids == {str(store.runs()[0]["id"])}


def test_store_pickles_as_a_reopen_and_fingerprints_follow_annotations(tmp_path, evaluated):
    import pickle

    store = open_store(tmp_path / "results.db")
    run_id = store.record_run(realistic_run(evaluated))
    again = pickle.loads(pickle.dumps(store))
    assert again.run(run_id)["uid"] == store.run(run_id)["uid"]

    data = tmp_path / "data"
    shutil.copytree(evaluated["root"] / "annotations", data / "annotations")
    before = dataset_folder_fingerprint(data)
    assert before == dataset_folder_fingerprint(data)
    ann = data / "annotations" / "instances_val.json"
    content = json.loads(ann.read_text())
    content["annotations"][0]["area"] += 1.0
    ann.write_text(json.dumps(content))
    assert dataset_folder_fingerprint(data) != before


# -- the command line ---------------------------------------------------------------------------
def test_cli_list_show_export(tmp_path, evaluated, capsys):
    path = str(tmp_path / "results.db")
    store = open_store(path)
    first = store.record_run(realistic_run(evaluated))
    second = store.record_run(realistic_run(evaluated, method="gmmn", seed=4))
    trial = store.record_run(RunRecord(kind="trial", status="running", sweep="sw", method="gmmn",
                                       trial_id="t9", metrics=[MetricRecord(
                                           "semantic", "gzsl", "val", "hm", "iou", 0.125)]))

    code, out, err = cli(capsys, "results", "list", "--store", path)
    assert code == 0, err
    lines = out.splitlines()
    assert "semantic mIoU S/U/HM" in lines[0] and "panoptic PQ S/U/HM" in lines[0]
    assert [ln.split()[0] for ln in lines[1:4]] == [str(trial), str(second), str(first)]
    sem = evaluated["semantic"]
    cell = "/".join(f"{100 * sem[s]['iou']:.1f}" for s in ("seen", "unseen", "hm"))
    assert cell in lines[3]
    assert "-/-/12.5*" in lines[1] and "* validation split" in out
    code, out, _ = cli(capsys, "results", "list", "--store", path, "--method", "gmmn",
                       "--limit", "1")
    assert code == 0 and [ln.split()[0] for ln in out.splitlines()[1:2]] == [str(trial)]
    assert "1 run(s) shown, 3 in" in out
    code, out, _ = cli(capsys, "results", "list", "--store", path, "--sweep", "sw", "--json")
    listed = json.loads(out)
    assert [r["id"] for r in listed] == [trial] and listed[0]["primary"]["semantic"]["hm"] == 0.125

    code, out, err = cli(capsys, "results", "show", str(first), "--store", path)
    assert code == 0, err
    for needle in ("config:", '"lr": 0.001', "leakage audit:", '"images_dropped"',
                   "artifacts:", "runs/x/ckpt.pt", "semantic GZSL on test", "panoptic GZSL on val",
                   "train/loss: 4 points"):
        assert needle in out, needle
    code, out, _ = cli(capsys, "results", "show", str(first), "--store", path, "--json")
    shown = json.loads(out)
    uid_prefix = shown["uid"][:10]
    code2, out2, _ = cli(capsys, "results", "show", uid_prefix, "--store", path, "--json")
    assert code2 == 0 and json.loads(out2)["id"] == first

    # The export of one run holds exactly the rows `show` reports, with exact values.
    csv_path = tmp_path / "out" / "one.csv"
    code, out, err = cli(capsys, "results", "export", "--csv", str(csv_path), "--store", path,
                         "--run", str(first))
    assert code == 0, err
    with csv_path.open() as f:
        exported = list(csv.DictReader(f))
    assert f"wrote {len(exported)} metric rows" in out

    def key(row: dict) -> tuple:
        value = row["value"]
        value = None if value in ("", None) else float(value)
        return (row["task"], row["setting"], row["eval_split"], row["subset"],
                row["class_name"] or None, row["metric"], value)

    assert [key(r) for r in exported] == [key(m) for m in shown["metrics"]]
    assert {r["run_id"] for r in exported} == {str(first)}
    assert {r["method"] for r in exported} == {"projection"}
    assert not [p for p in csv_path.parent.iterdir() if p.name != "one.csv"]  # no temp files

    all_path = tmp_path / "all.csv"
    cli(capsys, "results", "export", "--csv", str(all_path), "--store", path)
    with all_path.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * len(shown["metrics"]) + 1
    cli(capsys, "results", "export", "--csv", str(all_path), "--store", path, "--no-classes",
        "--task", "semantic", "--setting", "gzsl", "--eval-split", "test", "--method", "gmmn")
    with all_path.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["run_id"], r["subset"]) for r in rows] == [
        (str(second), s) for s in ("seen", "unseen", "hm")]
    assert math.isclose(float(rows[2]["value"]), sem["hm"]["iou"], rel_tol=0, abs_tol=0)
    code, _, err = cli(capsys, "results", "export", "--csv", str(tmp_path), "--store", path)
    assert code == EXIT_USER_ERROR and err.count("\n") == 1 and "is a folder" in err


# -- PostgreSQL, a real server ------------------------------------------------------------------
def _pg_bin_dir() -> Path | None:
    candidates = []
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for d in candidates:
        if (d / "initdb").exists() and (d / "pg_ctl").exists() and (d / "postgres").exists():
            return d
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url(tmp_path) -> Iterator[str]:
    """A throw-away PostgreSQL cluster on 127.0.0.1 (initdb refuses root: run it as nobody)."""
    bins = _pg_bin_dir()
    if bins is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found")
    pytest.importorskip("psycopg", reason="psycopg (PostgreSQL driver) not installed")
    user = None
    if os.geteuid() == 0:
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("running as root and no 'nobody' user to run PostgreSQL as")
        user = "nobody"
        base = Path(tempfile.mkdtemp(prefix="zs-pg-", dir="/tmp"))  # tmp_path is root-only
        os.chown(base, nobody.pw_uid, nobody.pw_gid)
    else:
        base = Path(tempfile.mkdtemp(prefix="zs-pg-", dir=tmp_path))
    data, port = base / "data", _free_port()

    def pg(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(bins / args[0]), *args[1:]], user=user, cwd=base,
                              capture_output=True, text=True, timeout=60, check=check)

    try:
        pg("initdb", "-D", str(data), "-U", "zeroseg", "--auth=trust", "-E", "UTF8",
           "--no-sync", "--no-instructions")
        pg("pg_ctl", "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "30",
           "-o", f"-h 127.0.0.1 -p {port} -k {base} -F", "start")
        yield f"postgresql://zeroseg@127.0.0.1:{port}/postgres"
    except subprocess.CalledProcessError as e:
        log = (base / "server.log").read_text() if (base / "server.log").exists() else ""
        pytest.fail(f"PostgreSQL did not start: {e.stderr[-1000:]} {log[-1000:]}")
    finally:
        if data.exists():
            pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_a_v2_postgresql_store_migrates_to_the_detection_task(postgres_url, evaluated, capsys):
    open_store(postgres_url).record_run(realistic_run(evaluated))
    store = open_store(postgres_url)
    with store.engine.begin() as conn:
        _v2_metrics_check(conn)
    with store.engine.begin() as conn, pytest.raises(Exception, match="ck_metrics_task"):
        conn.exec_driver_sql("INSERT INTO metrics (run_id, task, setting, eval_split, subset, "
                             "metric, value) VALUES (1, 'detection', 'gzsl', 'test', 'hm', "
                             "'ap50', 0.1)")
    _check_detection_rows_after_migration(postgres_url, capsys)


def test_postgresql_round_trip_and_parallel_writers(postgres_url, evaluated, tmp_path):
    store = open_store(postgres_url)
    assert store.dialect == "postgresql" and store.is_empty()
    run = realistic_run(evaluated, kind="trial", sweep="pg-sweep", trial_id="t1")
    run_id = store.record_run(run)
    assert store.record_run(run) == run_id
    got = store.run(run_id)
    assert got["config"] == run.config and got["leakage_audit"] == run.leakage_audit
    assert got["created_at"].tzinfo is not None
    for name, eval_split in (("semantic", "test"), ("semantic_zsl", "test"),
                             ("panoptic", "val")):
        result = evaluated[name]
        assert as_eval_json(got["metrics"], result["task"], result["setting"],
                            eval_split) == expected_parts(result), name
    store.add_curve_points(run_id, [("train/loss", 0, 0.75)])
    assert store.curves(run_id, "train/loss")[0]["value"] == 0.75
    n = store.add_evaluation(run_id, evaluated["semantic"], "val")
    assert store.add_evaluation(run_id, evaluated["semantic"], "val") == n  # replaced
    store.update_status(run_id, "stopped", artifacts={"extra": "x.pt"})
    got = store.run(run_id)
    assert got["status"] == "stopped" and got["artifacts"] == {**run.artifacts, "extra": "x.pt"}
    assert "semantic/gzsl/val" in got["evaluations"]
    store.upsert_sweep("pg-sweep", objective="val/semantic/gzsl/hm/iou", mode="max",
                       status="finished")
    assert [(s["name"], s["trials"], s["status"]) for s in store.sweeps()] == [
        ("pg-sweep", 1, "finished")]
    csv_path = tmp_path / "pg.csv"
    assert store.export_csv(csv_path) == len(run.metrics) + n
    ro = open_store(postgres_url, read_only=True)
    with pytest.raises(StoreError, match="read-only"):
        ro.update_status(run_id, "failed")
    with ro.engine.connect() as conn, pytest.raises(Exception, match="read-only transaction"):
        conn.exec_driver_sql("DELETE FROM runs")
    # Deleting a run deletes its metric rows and curve points (ON DELETE CASCADE).
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM runs")
    assert store.is_empty()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM metrics").scalar() == 0
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM curves").scalar() == 0
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("CREATE DATABASE parallel")
    store.close()
    # Writers on a fresh database: they race to create the schema, then to write.
    run_parallel_writers(postgres_url.rsplit("/", 1)[0] + "/parallel", workers=4, count=10,
                         tmp_path=tmp_path)


def test_store_urls(tmp_path, monkeypatch):
    from zeroseg.platform.store import resolve_url

    assert resolve_url("postgres://u:secret@db:5432/runs").render_as_string(
        hide_password=True) == "postgresql+psycopg://u:***@db:5432/runs"
    assert resolve_url("postgresql://u@db/runs").drivername == "postgresql+psycopg"
    assert resolve_url(tmp_path / "r.db").database == str(tmp_path / "r.db")
    monkeypatch.setenv("ZEROSEG_STORE", str(tmp_path / "env.db"))
    assert resolve_url(None).database == str(tmp_path / "env.db")
    monkeypatch.delenv("ZEROSEG_STORE")
    monkeypatch.chdir(tmp_path)
    assert resolve_url(None).database == str(tmp_path / ".zeroseg" / "results.db")
    with pytest.raises(StoreError, match="not a database URL"):
        resolve_url("://nothing")
    with pytest.raises(StoreError, match="not a database URL"):
        resolve_url("mysql+foo://::garbage")


def test_every_results_command_has_help(capsys):
    for action in ("list", "table", "sweeps", "show", "export", "migrate"):
        with pytest.raises(SystemExit) as info:
            main(["results", action, "--help"])
        assert info.value.code == 0
        assert "--store" in capsys.readouterr().out


def test_cli_table_is_mean_and_std_over_the_finished_runs(tmp_path, capsys):
    path = str(tmp_path / "results.db")
    store = open_store(path)

    def run(method: str, seed: int, seen: float, unseen: float, status: str = "finished",
            split: str = "test") -> None:
        hm = 2 * seen * unseen / (seen + unseen)
        store.record_run(RunRecord(kind="train", status=status, method=method, seed=seed,
                                   metrics=[MetricRecord("semantic", "gzsl", split, subset,
                                                         "iou", value)
                                            for subset, value in (("seen", seen),
                                                                  ("unseen", unseen),
                                                                  ("hm", hm))]))

    run("gmmn", 0, 0.40, 0.10)
    run("gmmn", 1, 0.60, 0.30)
    run("gmmn", 2, 0.99, 0.99, status="failed")  # left out
    run("projection", 0, 0.50, 0.20)
    run("projection", 0, 0.70, 0.70, split="val")
    code, out, err = cli(capsys, "results", "table", "--store", path, "--settings", "gzsl")
    assert code == 0, err
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith(("GMMN", "Projection"))}
    gmmn = rows["GMMN"].split()
    assert gmmn[1] == "2"  # runs aggregated
    assert gmmn[3:5] == ["50.0±14.1", "20.0±14.1"]  # sample std of (40, 60) and (10, 30)
    hms = [2 * 0.4 * 0.1 / 0.5, 2 * 0.6 * 0.3 / 0.9]
    assert gmmn[5] == f"{100 * statistics.fmean(hms):.1f}±{100 * statistics.stdev(hms):.1f}"
    assert rows["Projection"].split()[1:6] == ["1", "|", "50.0", "20.0", "28.6"]
    code, out, _ = cli(capsys, "results", "table", "--store", path, "--eval-split", "val",
                       "--methods", "projection", "--settings", "gzsl")
    assert "validation split" in out and "70.0" in out and "GMMN" not in out
    code, out, _ = cli(capsys, "results", "table", "--store", path, "--method", "nothing-here",
                       "--kind", "trial")
    assert code == 0 and "no finished run" in out


def test_cli_table_counts_a_seed_re_run_under_another_code_version_once(tmp_path, capsys):
    path = str(tmp_path / "results.db")
    store = open_store(path)
    for code, seen in (("v1", 0.2), ("v2", 0.4), ("v2", 0.6)):  # the last one: seed 1
        seed = 1 if seen == 0.6 else 0
        store.record_run(RunRecord(
            kind="train", method="gmmn", seed=seed, code_version=code, config={"m": 1},
            metrics=[MetricRecord("semantic", "gzsl", "test", s, "iou", seen)
                     for s in ("seen", "unseen", "hm")]))
    code, out, err = cli(capsys, "results", "table", "--store", path, "--settings", "gzsl")
    gmmn = next(ln for ln in out.splitlines() if ln.startswith("GMMN")).split()
    assert gmmn[1] == "2" and gmmn[3] == "50.0±14.1", out  # 40 and 60; the 20 is older
    assert "1 older run(s) of a config and seed that has a newer run" in out


def test_cli_table_leaves_sweep_trials_and_reproductions_out_unless_asked(tmp_path, capsys):
    path = str(tmp_path / "results.db")
    store = open_store(path)
    store.upsert_sweep("s1", method="gmmn", space={}, objective="val/semantic/gzsl/hm/iou",
                       mode="max")
    ids = {}
    for kind, seed, value in (("train", 0, 0.2), ("train", 1, 0.4), ("trial", 0, 0.9),
                              ("reproduction", 0, 0.8)):
        links = ({"sweep": "s1", "trial_id": "t0"} if kind == "trial" else
                 {"source_run_id": ids["trial"]} if kind == "reproduction" else {})
        ids[kind] = store.record_run(RunRecord(
            kind=kind, method="gmmn", seed=seed, config={"kind": kind}, **links,
            metrics=[MetricRecord("semantic", "gzsl", "test", s, "iou", value)
                     for s in ("seen", "unseen", "hm")]))

    def gmmn_row(*extra: str) -> list[str]:
        code, out, err = cli(capsys, "results", "table", "--store", path, "--settings", "gzsl",
                             *extra)
        assert code == 0, err
        return next(ln for ln in out.splitlines() if ln.startswith("GMMN")).split() + [out]

    row = gmmn_row()
    assert row[1] == "2" and row[3] == "30.0±14.1"  # the config's two seeds only
    assert "1 sweep trial(s) and 1 reproduction(s) left out" in row[-1]
    assert gmmn_row("--kind", "reproduction")[1:4] == ["1", "|", "80.0"]
    assert gmmn_row("--kind", "trial")[1:4] == ["1", "|", "90.0"]
