"""Sweep benchmarks: Ray Tune's overhead, and time-to-best of TPE against random search.

    python benches/bench_sweep.py [--space search_spaces/pading.yaml]
                                  [--config configs/pipeline_tiny.yaml]
                                  [--trials 12] [--concurrency 2] [--seeds 0 1]
                                  [--overhead-only] [--rounds 3 --compare]

1. **Overhead**: one sweep of ``--trials`` trials at ``--concurrency`` with the FIFO scheduler
   (every trial runs to the end, so the figure is not mixed with early stopping):
   ``overhead = wall time / (sum of the trials' own durations / concurrency)``. 1.00 would be a
   scheduler that costs nothing; the excess is Ray's start, the trial actors' start-up (a
   process each, importing torch, Tune and zeroseg), result passing, the store callback and the
   tail. Split into start-up (sweep start to the first trial's start), steady (first trial start
   to last trial end, over the same ideal) and tail. ``--rounds N`` runs it N times;
   ``--compare`` alternates, round by round, ``cold`` (as ``zeroseg sweep`` runs: Ray started
   by the sweep, on a fresh Ray each time) and ``warm`` (Ray already running, as with a cluster
   address or a second sweep in one process: what is left is the trial actors' start-up).
2. **TPE vs random**: for each seed, two ASHA sweeps with the same budget, space and seed --
   Optuna's TPE sampler and its random sampler. Reported per searcher: the best validation HM
   found, and the wall time until a trial first reached 99% of the best value either searcher
   found with that seed ("time to best").

Stages (segmenters, feature caches) are built once, before anything is timed. Everything is
written under ``--work`` (default: a fresh temporary folder per run of the bench).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

REPO = Path(__file__).resolve().parents[1]


def write_space(space: Path, config: Path, out: Path, *, searcher: str, seed: int,
                scheduler: str) -> Path:
    doc = yaml.safe_load(space.read_text())
    doc["config"] = str(config)
    doc["searcher"] = {**doc.get("searcher", {}), "type": searcher, "seed": seed}
    doc["scheduler"] = {"type": scheduler} if scheduler == "fifo" else doc.get("scheduler")
    if "num_primitives" in doc.get("knobs", {}) and "tiny" in config.name:
        doc["knobs"]["num_primitives"] = {"type": "int", "low": 8, "high": 32, "step": 8}
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def trials(store: str, name: str) -> list[dict[str, Any]]:
    from zeroseg.platform.store import open_store

    with open_store(store) as opened:
        runs = opened.runs(sweep=name, kind="trial", newest_first=False)
        values = {r["run_id"]: r["value"] for r in opened.metrics_frame(
            per_class=False, sweep=name, eval_split="val", metric_task="semantic",
            setting="gzsl", subset="hm", metric="iou")}
        for run in runs:
            if run["id"] not in values:  # stopped early: its last per-epoch objective
                curve = opened.curves(run["id"], "val/hm")
                values[run["id"]] = curve[-1]["value"] if curve else None
    for run in runs:
        run["objective"] = values.get(run["id"])
    return runs


def _ts(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value)).timestamp()


def sweep(space: Path, name: str, store: str, trials_n: int, concurrency: int) -> float:
    from zeroseg.platform.tuning.sweep import prepare_job, run_sweep

    job = prepare_job(space, name, store=store)
    started = time.perf_counter()
    run_sweep(job, trials=trials_n, concurrency=concurrency)
    return time.perf_counter() - started


VARIANTS = {
    "cold": "as zeroseg sweep runs: Ray started by the sweep",
    "warm": "Ray already running (a cluster address, or a second sweep in one process)",
}


def _utc_ts(value: Any) -> float:
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC).timestamp()
    return _ts(value)


def overhead_sweep(space: Path, name: str, store: str, trials_n: int, concurrency: int,
                   variant: str) -> tuple[float, float, float, float, float]:
    """One FIFO sweep: (wall, ideal = sum of trial durations / K, start-up, steady span, tail).
    ``cold`` starts Ray afresh (shut down first), ``warm`` keeps it running."""
    import ray

    if variant == "cold":
        ray.shutdown()
    started = time.time()
    wall = sweep(space, name, store, trials_n, concurrency)
    ended = started + wall
    runs = trials(store, name)
    own = [r["duration_s"] for r in runs if r["duration_s"]]
    first = min(_utc_ts(r["created_at"]) for r in runs)
    last = max(_utc_ts(r["finished_at"]) for r in runs if r["finished_at"])
    return wall, sum(own) / concurrency, first - started, last - first, ended - last


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", type=Path, default=REPO / "search_spaces" / "pading.yaml")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "pipeline_tiny.yaml")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--overhead-only", action="store_true", help="skip TPE vs random")
    p.add_argument("--rounds", type=int, default=1, help="overhead sweeps per variant")
    p.add_argument("--compare", action="store_true",
                   help="overhead side by side, round by round: cold (Ray started by the "
                        "sweep) and warm (Ray already running)")
    args = p.parse_args(argv)

    from zeroseg.platform.pipeline import Pipeline, load_pipeline_config

    work = args.work or Path(tempfile.mkdtemp(prefix="zeroseg-bench-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    config_doc = yaml.safe_load(args.config.read_text())
    config_doc["work_dir"] = str(work / "work")
    config_doc["evaluation"] = {**config_doc.get("evaluation", {}), "settings": ["gzsl"],
                                "protocols": ["validation", "test"]}
    config_path = work / args.config.name
    config_path.write_text(yaml.safe_dump(config_doc, sort_keys=False))
    pipeline = Pipeline(load_pipeline_config(config_path), progress=lambda s: None)
    t = time.perf_counter()
    for protocol in ("validation", "test"):
        pipeline.context(protocol, "zero-shot")
    print(f"stages built in {time.perf_counter() - t:.0f} s (untimed below); work dir {work}")
    store = str(work / "results.db")

    # 1. overhead
    space = write_space(args.space, config_path, work / "fifo.yaml", searcher="random", seed=0,
                        scheduler="fifo")
    rows = []
    variants = ["cold", "warm"] if args.compare else ["cold"]
    tag = datetime.now().strftime("%Y%m%d-%H%M%S")  # sweep names are unique in a store
    for r in range(args.rounds):
        for variant in variants:
            name = f"overhead-{tag}-{variant}-{r}"
            rows.append((variant, *overhead_sweep(space, name, store, args.trials,
                                                 args.concurrency, variant)))
    print(f"\noverhead: {args.trials} trials at concurrency {args.concurrency} (overhead = wall / "
          f"(sum of trial durations / K)); start-up = sweep start to the first trial's start, "
          f"steady = first trial start to last trial end over the same ideal, tail = last trial "
          f"end to the sweep's return")
    print(f"{'variant':>9} {'wall s':>7} {'ideal s':>8} {'overhead':>9} {'start-up s':>11} "
          f"{'steady':>7} {'tail s':>7}")
    for variant, wall, ideal, startup, steady, tail in rows:
        print(f"{variant:>9} {wall:7.1f} {ideal:8.1f} {wall / ideal:9.2f} {startup:11.1f} "
              f"{steady / ideal:7.2f} {tail:7.1f}")
    for variant in variants:
        ratios = [w / i for v, w, i, *_ in rows if v == variant]
        print(f"{variant:>9}: overhead min {min(ratios):.2f}, median "
              f"{statistics.median(ratios):.2f} over {len(ratios)} sweep(s) -- {VARIANTS[variant]}")

    if args.overhead_only:
        return 0
    # 2. TPE vs random, same budget and seeds
    print(f"\nTPE vs random: {args.trials} trials, concurrency {args.concurrency}, ASHA, seeds "
          f"{args.seeds}")
    table = []
    for seed in args.seeds:
        found = {}
        for searcher in ("tpe", "random"):
            name = f"{searcher}-{seed}"
            space = write_space(args.space, config_path, work / f"{name}.yaml",
                                searcher=searcher, seed=seed, scheduler="asha")
            started = time.time()
            sweep(space, name, store, args.trials, args.concurrency)
            runs = [r for r in trials(store, name) if r["objective"] is not None]
            found[searcher] = (started, runs)
        best = max(r["objective"] for _, runs in found.values() for r in runs)
        for searcher, (started, runs) in found.items():
            own_best = max(r["objective"] for r in runs)
            hits = [_ts(r["finished_at"]) - started for r in runs
                    if r["objective"] >= 0.99 * best and r["finished_at"]]
            to_best = min(hits) if hits else None
            table.append((seed, searcher, own_best, to_best))
    print(f"{'seed':>4} {'searcher':>8} {'best val HM':>12} {'time to 99% of best':>20}")
    for seed, searcher, own_best, to_best in table:
        tb = f"{to_best:.0f} s" if to_best is not None else "not reached"
        print(f"{seed:>4} {searcher:>8} {100 * own_best:>11.2f}% {tb:>20}")
    for searcher in ("tpe", "random"):
        rows = [r for r in table if r[1] == searcher]
        print(f"mean best {searcher}: {100 * statistics.fmean(r[2] for r in rows):.2f}%; "
              f"reached 99% of the best in {sum(r[3] is not None for r in rows)}/{len(rows)} "
              f"seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
