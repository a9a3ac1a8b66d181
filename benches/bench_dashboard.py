"""Dashboard page-load times on a results store of 10,000 runs.

Fills a SQLite store with ``--runs`` runs shaped like the pipeline's (plain runs of six methods
x several splits / embeddings / seeds, two sweeps of trials with knobs and ``val/hm`` curves,
some stopped early or running, reproductions of top trials), with seen / unseen / HM rows for
every task and per-class rows for semantic segmentation — through the real
``Store.record_run``. Then it times

- each page's data functions, cold (first call) and warm (second call of the same function;
  in the app these are ``st.cache_data`` hits keyed by the store's revision), and
- an ``AppTest`` run of each page, cold (caches cleared) and warm (caches kept),

and prints the figures. Usage::

    python benches/bench_dashboard.py                 # 10,000 runs in a temporary folder
    python benches/bench_dashboard.py --runs 2000 --keep /tmp/dash   # reuse /tmp/dash/results.db
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "dashboards" / "app.py"
METHODS = ("supervised", "projection", "gmmn", "pading-p", "pading-pa", "pading")
SPLITS = ("synthetic/default", "coco-panoptic/zsp-119-14", "coco-stuff/spnet-156-15")
EMBEDDINGS = ("attributes", "clip", "word2vec")
TASK_METRICS = {"semantic": ("iou",), "panoptic": ("pq", "sq", "rq"),
                "instance": ("ap50", "recall50")}
NUM_CLASSES = 32
NUM_UNSEEN = 7


def _metrics(rng: np.random.Generator, per_class: bool = True) -> list[Any]:
    from zeroseg.platform.store import MetricRecord

    rows = []
    for eval_split in ("test", "val"):
        for task, metrics in TASK_METRICS.items():
            for m in metrics:
                seen, unseen = rng.uniform(0.4, 0.7), rng.uniform(0.0, 0.35)
                hm = 2 * seen * unseen / (seen + unseen) if seen + unseen else 0.0
                rows += [MetricRecord(task, "gzsl", eval_split, "seen", m, seen),
                         MetricRecord(task, "gzsl", eval_split, "unseen", m, unseen),
                         MetricRecord(task, "gzsl", eval_split, "hm", m, hm),
                         MetricRecord(task, "zsl", eval_split, "unseen", m, unseen + 0.2)]
        if per_class:
            for c in range(NUM_CLASSES):
                rows.append(MetricRecord("semantic", "gzsl", eval_split, "class", "iou",
                                         rng.uniform(), f"class {c}"))
            for c in range(NUM_CLASSES - NUM_UNSEEN, NUM_CLASSES):
                rows.append(MetricRecord("semantic", "zsl", eval_split, "class", "iou",
                                         rng.uniform(), f"class {c}"))
    return rows


def fill(store: Any, n_runs: int, seed: int = 0) -> dict[str, Any]:
    """Write ``n_runs`` runs; returns the ids the timings use."""
    from zeroseg.platform.store import CurveRecord, RunRecord, trial_uid

    rng = np.random.default_rng(seed)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    common = {"backbone": "tiny", "code_version": "bench", "code_dirty": False,
              "host": "bench", "leakage_audit": {"passed": True, "protocol": "drop-images"}}
    n_trials = int(n_runs * 0.6)
    n_repro = int(n_runs * 0.05)
    n_train = n_runs - n_trials - n_repro
    ids: dict[str, Any] = {"train": [], "trials": [], "repro": []}
    sweeps = ("bench-pading", "bench-gmmn")
    for name, method in zip(sweeps, ("pading", "gmmn"), strict=True):
        store.upsert_sweep(name, method=method, objective="val/semantic/gzsl/hm/iou",
                           mode="max", settings={"searcher": "optuna", "scheduler": "asha",
                                                 "trials": n_trials // 2})
    i = 0
    for k in range(n_train):
        method, split = METHODS[k % len(METHODS)], SPLITS[(k // 6) % len(SPLITS)]
        embedding = EMBEDDINGS[(k // 18) % len(EMBEDDINGS)]
        rec = RunRecord(kind="train", status="finished", method=method,
                        dataset=split.split("/")[0], split=split, embedding=embedding,
                        seed=k // 54, config={"method": method, "seed": k // 54},
                        created_at=t0 + timedelta(seconds=i),
                        metrics=_metrics(rng), **common)
        ids["train"].append(store.record_run(rec))
        i += 1
    for k in range(n_trials):
        sweep = sweeps[k % 2]
        status = "stopped" if k % 3 == 0 else "running" if k >= n_trials - 4 else "finished"
        params = {"num_primitives": int(rng.choice([100, 200, 300, 400, 500, 600, 700])),
                  "structure_weight": float(10 ** rng.uniform(-2, 1)),
                  "sigmas": str(rng.choice(["paper", "code"])), "lr": float(rng.choice(
                      [1e-4, 2e-4, 5e-4])), "layers": int(rng.choice([1, 2, 3]))}
        trial_id = f"t{k:05d}"
        epochs = 2 if status == "stopped" else 6
        rec = RunRecord(kind="trial", status=status, method=sweep.split("-")[1],
                        dataset="synthetic", split="synthetic/default", embedding="attributes",
                        seed=0, sweep=sweep, trial_id=trial_id, uid=trial_uid(sweep, trial_id),
                        config={"params": params}, created_at=t0 + timedelta(seconds=i),
                        finished_at=None if status == "running" else
                        t0 + timedelta(seconds=i + 30),
                        metrics=[] if status == "running" else _metrics(rng, per_class=False),
                        curves=[CurveRecord("val/hm", e, float(rng.uniform(0, 0.4)))
                                for e in range(epochs)], **common)
        ids["trials"].append(store.record_run(rec))
        i += 1
    for k in range(n_repro):
        source = ids["trials"][(k // 3) * 3 + 1]  # finished trials (k % 3 == 1)
        rec = RunRecord(kind="reproduction", status="finished", method="pading",
                        dataset="synthetic", split="synthetic/default", embedding="attributes",
                        seed=k % 3, source_run_id=source, config={"seed": k % 3},
                        created_at=t0 + timedelta(seconds=i), metrics=_metrics(rng), **common)
        ids["repro"].append(store.record_run(rec))
        i += 1
    return ids


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def data_timings(url: str, ids: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(name, cold s, warm s) of each page's data functions, outside Streamlit."""
    from zeroseg.dashboards.data import leaderboard, sweeps
    from zeroseg.platform.store import open_store, queries

    store = open_store(url, read_only=True, create=False)
    cache: dict[str, Any] = {}

    def memo(name: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            if name not in cache:
                cache[name] = fn()
            return cache[name]
        return call

    runs = memo("runs", lambda: queries.runs_frame(store))
    results = memo("results", lambda: leaderboard.leaderboard_runs(
        queries.summary_frame(store, "results"), runs()))
    both = memo("both", lambda: leaderboard.concat_runs([results(), leaderboard.leaderboard_runs(
        queries.summary_frame(store, "trials"), runs())]))
    sweep = memo("sweep", lambda: sweeps.trial_table(
        queries.runs_frame(store, kind="trial", sweep="bench-pading", config=True),
        queries.metric_values(store, ids["trials"][::2], task="semantic", setting="gzsl",
                              eval_split="val", subset="hm", metric="iou")))
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("revisions (every rerun, ttl 3 s)", lambda: queries.revisions(store)),
        ("all runs' columns (shared)", runs),
        ("leaderboard: results' metric rows -> table", results),
        ("leaderboard: view for the default filter",
         lambda: leaderboard.leaderboard_view(results(), leaderboard.LeaderboardFilter())),
        ("leaderboard: + sweep trials' rows -> table", both),
        ("leaderboard: view with trials included", lambda: leaderboard.leaderboard_view(
            both(),
            leaderboard.LeaderboardFilter(kinds=("train", "reproduction", "eval", "trial")))),
        ("leaderboard: CSV + LaTeX of the default view", lambda: (
            leaderboard.view_to_csv(v := leaderboard.leaderboard_view(
                results(), leaderboard.LeaderboardFilter())),
            leaderboard.view_to_latex(v))),
        ("sweeps: trials + objective of one sweep", sweep),
        ("sweeps: best so far + by num_primitives + eta^2", lambda: (
            sweeps.best_so_far(sweep()), sweeps.by_knob(sweep(), "num_primitives"),
            sweeps.eta_squared(sweep()))),
        ("run detail: one run", memo("run", lambda: store.run(ids["train"][0]))),
        ("reproductions: runs + values", memo("repro", lambda: queries.metric_values(
            store, ids["repro"], task="semantic", setting="gzsl", eval_split="val",
            subset="hm", metric="iou"))),
    ]
    out = []
    for name, fn in steps:
        cold, _ = timed(fn)
        warm, _ = timed(fn)
        out.append((name, cold, warm))
    return out


def app_timings(url: str, ids: dict[str, Any]) -> list[tuple[str, float, float, int]]:
    """(page, cold s, warm s, exceptions) of an AppTest run of each page."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["ZEROSEG_STORE"] = url
    pages = [("Leaderboard", None), ("Sweeps", "views/sweeps.py"),
             ("Run detail", "views/run_detail.py"), ("Reproductions", "views/reproductions.py")]
    out = []
    for title, page in pages:
        times = []
        errors = 0
        for attempt in range(2):
            at = AppTest.from_file(str(APP), default_timeout=600)
            if page:
                at.run()  # the navigation must exist before switching pages
                at.query_params["run"] = str(ids["train"][0])
                at.switch_page(page)
            if attempt == 0:
                st.cache_data.clear()
                st.cache_resource.clear()
            t, at = timed(at.run)
            times.append(t)
            errors += len(at.exception)
        out.append((title, times[0], times[1], errors))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--keep", type=Path, default=None,
                   help="folder of the store (reused when it already has the runs)")
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    from zeroseg.platform.store import open_store

    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.db"
    store = open_store(path)
    if store.count_runs() < args.runs:
        if store.count_runs():
            print(f"{path} holds {store.count_runs()} runs, fewer than {args.runs}: refill it "
                  "(delete the folder) or pass --runs", file=sys.stderr)
            return 2
        t, ids = timed(lambda: fill(store, args.runs))
        print(f"filled {path}: {store.count_runs()} runs in {t:.1f} s "
              f"({1000 * t / args.runs:.1f} ms per record_run)")
    else:
        runs = store.runs(newest_first=False)
        ids = {k: [r["id"] for r in runs if r["kind"] == kind] for k, kind in
               (("train", "train"), ("trials", "trial"), ("repro", "reproduction"))}
        print(f"reusing {path}: {store.count_runs()} runs")
    with store.engine.connect() as conn:
        n_metrics = conn.exec_driver_sql("SELECT count(*) FROM metrics").scalar()
    size = path.stat().st_size / 2 ** 20
    print(f"store: {store.count_runs()} runs, {n_metrics} metric rows, {size:.0f} MiB")
    url = str(path)
    print("\ndata functions (seconds)            cold     warm")
    for name, cold, warm in data_timings(url, ids):
        print(f"  {name:<48} {cold:7.3f}  {warm:7.3f}")
    print("\nAppTest page runs (seconds)          cold     warm   exceptions")
    for title, cold, warm, errors in app_timings(url, ids):
        print(f"  {title:<34} {cold:7.2f}  {warm:7.2f}   {errors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
