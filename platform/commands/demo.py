"""The main job on the embedded synthetic benchmark (``zeroseg demo``, run by ``make run``).

End to end, through the same code a real COCO run uses, everything under ``OUT``:

1. the synthetic benchmark (generated once per size / seed, reused after);
2. the segmenters of the test and validation protocols (Mask2Former on Ray Train + DeepSpeed,
   2 workers, ZeRO 0: for the 1.6 M-parameter tiny size ZeRO 2 only costs, 0.86x), each
   trained on its leakage-filtered training images, the supervised oracle (every class, every
   image: the upper bound), and their feature caches;
3. a PADing sweep (Ray Tune + Optuna TPE + ASHA) of ``trials`` trials around the authors'
   recipe -- the layout switches (primitive attention, output head, MMD grouping), the noise
   std, the step budget, the number of primitives, lambda, the class tie's weight, the learning
   rate and the unseen class weight -- scored on the validation protocol (held-out seen classes
   as unseen);
4. the best trial reproduced from scratch with 3 seeds (the trial's own seed first: it must give
   the trial's numbers exactly) and the baselines beside it (supervised oracle, seen-only,
   projection, GMMN, PADing with its defaults -- the authors' semantic recipe, 2,000 generator
   steps with the classifier interleaved) on both protocols, all side by side as Ray tasks;
5. the reproduction's report: mean +- std over the seeds, the sweep value within the spread;
6. the leaderboard (test split, GZSL: seen / unseen / HM of ZSS mIoU, ZSI mAP@0.5 and
   Recall@100, ZSP PQ), the supervised oracle's row as the upper bound, and the command that
   opens the dashboard on ``OUT/results.db``.

The experiment config and the search space are written to ``OUT/experiment.yaml`` and
``OUT/space.yaml`` first, so every step can be re-run by hand with ``zeroseg run`` /
``zeroseg sweep`` / ``zeroseg reproduce``. Running the job again reuses every finished stage
(and resumes an interrupted sweep) and every run already stored, so it stores no run twice;
``OUT/summary.json`` records the figures and timings.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from zeroseg.platform.io import atomic_write_json, atomic_write_text, check_writable_dir
from zeroseg.platform.pipeline import Pipeline, pipeline_config_from_dict
from zeroseg.platform.pipeline.report import (
    method_table,
    newest_per_seed,
    store_rows,
    table_title,
)
from zeroseg.platform.pipeline.runner import RunJob, run_many
from zeroseg.platform.store import open_store
from zeroseg.platform.tuning.reproduce import format_reproductions, plan_reproductions
from zeroseg.platform.tuning.sweep import prepare_job, run_sweep

log = logging.getLogger(__name__)

SWEEP_NAME = "main-pading"
BASELINES = ("supervised", "seen-only", "projection", "gmmn", "pading")

#: Per benchmark size: the segmenter's schedule and the method stages' budgets. ``small`` is
#: the main job (see README for the measured time on 2 cores); ``tiny`` runs in a few minutes
#: (tests). The generators' fixed rows run their defaults (the authors' recipes: 2,000 steps,
#: 400 primitives) at ``small``; ``None``: the default. The sweep's budget knobs are the
#: laptop's: step budgets of 250-1,000 and 100-400 primitives (every other knob of
#: ``search_spaces/pading.yaml`` as it is). A generator step costs 14-61 ms with the code's
#: layout and 15-311 ms with the paper's (100-700 primitives, 1 thread: its self-attention
#: over the primitives and that attention's dropout grow with their square), so the full
#: space's 1,000-4,000 steps and 700 primitives put the main job at 29 minutes, of which the
#: sweep took 16; the full space is ``zeroseg sweep search_spaces/pading.yaml``.
PROFILES: dict[str, dict[str, Any]] = {
    "small": {"segmenter_steps": 1600, "workers": 2, "generator_steps": None,
              "projection_steps": 400, "primitives": None, "layers": None,
              "sweep_steps": [250, 500, 1000], "sweep_primitives": (100, 400, 100)},
    "tiny": {"segmenter_steps": 20, "workers": 0, "generator_steps": 40,
             "projection_steps": 60, "primitives": 16, "layers": 1, "sweep_steps": [20, 40],
             "sweep_primitives": (8, 32, 8)},
}


def _set(params: dict[str, Any], **values: Any) -> dict[str, Any]:
    """``params`` with the values that are not ``None`` (a profile's ``None``: the default)."""
    return {**params, **{k: v for k, v in values.items() if v is not None}}


def experiment(out: Path, size: str, seed: int) -> dict[str, Any]:
    """The main job's experiment config (plain data, as written to ``OUT/experiment.yaml``)."""
    p = PROFILES.get(size, PROFILES["small"])
    # The authors' recipes (methods/pading.py, methods/gmmn.py): the classifier trains
    # interleaved with the generator, one step per generator step.
    pading = _set({}, steps=p["generator_steps"], num_primitives=p["primitives"],
                  layers=p["layers"])
    gmmn = _set({}, steps=p["generator_steps"])
    return {
        "name": "main",
        "methods": list(BASELINES),
        "seeds": [0],
        "data": {"root": str(out / "data"), "synthetic": {"size": size, "seed": seed}},
        "embedding": {"provider": "attributes", "options": {"dim": 64, "noise": 0.1}},
        "segmenter": {
            "model": {"size": "tiny", "image_size": 128},
            "optim": {"lr": 0.001, "weight_decay": 0.05, "grad_clip": 1.0, "schedule": "poly",
                      "warmup_steps": min(100, p["segmenter_steps"] // 10)},
            "train": {"steps": p["segmenter_steps"], "batch_size": 4, "seed": seed,
                      "checkpoint_every": max(1, p["segmenter_steps"] // 4), "log_every": 50
                      if p["segmenter_steps"] >= 50 else 10},
            "distributed": {"workers": p["workers"], "cpus_per_worker": 1, "zero_stage": 0,
                            "precision": "fp32", "max_failures": 1},
        },
        "features": {"batch_size": 16, "shard_size": 128},
        "evaluation": {"protocols": ["test", "validation"], "settings": ["gzsl"]},
        "params": {
            "projection": {"steps": p["projection_steps"], "batch_size": 1200},
            "gmmn": gmmn,
            "pading": pading,
        },
        "work_dir": str(out),
        "store": str(out / "results.db"),
    }


def search_space(experiment_path: Path, size: str) -> dict[str, Any]:
    """The main job's PADing search space (as written to ``OUT/space.yaml``)."""
    p = PROFILES.get(size, PROFILES["small"])
    low, high, step = p["sweep_primitives"]
    primitives = {"type": "int", "low": low, "high": high, "step": step}
    return {
        "method": "pading",
        "config": str(experiment_path),
        "description": "the main job's PADing sweep",
        "objective": {"task": "semantic", "metric": "iou", "setting": "gzsl"},
        "mode": "max",
        "epochs": 3,
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "searcher": {"type": "tpe", "seed": 0, "n_startup_trials": 4},
        "knobs": {
            "primitive_attention": {"type": "choice", "values": ["code", "paper"]},
            "output_head": {"type": "choice", "values": ["layernorm", "linear"]},
            "mmd_grouping": {"type": "choice", "values": ["batch", "class"]},
            "noise_std": {"type": "loguniform", "low": 0.1, "high": 1.5},
            "steps": {"type": "choice", "values": list(p["sweep_steps"])},
            "num_primitives": primitives,
            "structure_weight": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-1},
            "class_tie_weight": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-1},
            "lr": {"type": "loguniform", "low": 1.0e-4, "high": 2.0e-3},
            "classifier.unseen_weight": {"type": "loguniform", "low": 1.0, "high": 20.0},
        },
    }


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(args.out, size=args.size, seed=args.seed, trials=args.trials,
             concurrency=args.concurrency, quiet=args.quiet)
    return 0


def _stage(number: int, title: str, started: float) -> None:
    print(f"\n== {number}/6 {title}  [{time.perf_counter() - started:.0f} s]", flush=True)


def run_demo(out: str | Path, *, size: str = "small", seed: int = 0, trials: int = 12,
             concurrency: int = 2, quiet: bool = False) -> dict[str, Any]:
    out = Path(out).expanduser().resolve()
    check_writable_dir(out, "main job's folder (--out)")
    started = time.perf_counter()
    timings: dict[str, float] = {}
    say = (lambda line: None) if quiet else (lambda line: print(line, flush=True))

    doc = experiment(out, size, seed)
    experiment_path, space_path = out / "experiment.yaml", out / "space.yaml"
    atomic_write_text(experiment_path, yaml.safe_dump(doc, sort_keys=False))
    atomic_write_text(space_path, yaml.safe_dump(search_space(experiment_path, size),
                                                 sort_keys=False))
    config = pipeline_config_from_dict(copy.deepcopy(doc), where=str(experiment_path))
    store_url = config.store

    probe = machine_speed_probe()
    print(f"machine speed probe: 200 single-thread 512x512 matmuls in {probe:.2f} s (compare "
          "timings across machines and runs by it)")
    _stage(1, f"synthetic benchmark '{size}' (seed {seed})", started)
    pipeline = Pipeline(config, progress=say)
    pipeline.check_outputs()
    pipeline.check_inputs()  # data files, class vectors: likewise
    split = pipeline.split  # generates the benchmark on first use
    print(f"{pipeline.data_root}: split {split.name}, {split.num_classes} classes, "
          f"{len(split.seen)} seen, {len(split.unseen)} unseen "
          f"({', '.join(c.name for c in split.unseen)}); validation holds out "
          f"{', '.join(c.name for c in split.classes if c.val_unseen)}")
    timings["benchmark"] = time.perf_counter() - started

    _stage(2, "segmenters (test and validation protocols, supervised oracle) and feature "
              "caches", started)
    t = time.perf_counter()
    for protocol, kind in (("test", "zero-shot"), ("validation", "zero-shot"),
                           ("test", "oracle")):
        ctx = pipeline.context(protocol, kind, train_features=kind == "zero-shot")
        leak = ctx.segmenter.results.get("leakage") or {}
        images = (f"{leak.get('images_kept')}/{leak.get('images_total')} training images kept "
                  f"by the {leak.get('protocol')} filter" if leak else "every training image")
        label = "oracle" if kind == "oracle" else protocol
        print(f"{label}: segmenter trained on {ctx.segmenter.results.get('classes_trained')} "
              f"classes, {images}")
    timings["segmenters_and_features"] = time.perf_counter() - t

    _stage(3, f"PADing sweep: {trials} trials, {concurrency} at a time, TPE + ASHA on the "
              "validation HM", started)
    t = time.perf_counter()
    job = prepare_job(space_path, SWEEP_NAME, store=store_url)
    with open_store(store_url) as store:
        sweeps = {s["name"]: s for s in store.sweeps()}
    previous = sweeps.get(SWEEP_NAME)
    if previous is not None and previous["status"] == "finished":
        print(f"sweep {SWEEP_NAME} already finished in {store_url}; reusing it")
    else:
        result = run_sweep(job, trials=trials, concurrency=concurrency,
                           resume=previous is not None, progress=say)
        print(f"{result.trials} trials: {result.finished} finished, {result.stopped} stopped "
              f"early by ASHA, {result.failed} failed, in {result.seconds:.0f} s")
    timings["sweep"] = time.perf_counter() - t

    _stage(4, f"the best trial reproduced with 3 seeds and the baselines ({', '.join(BASELINES)}"
              "), side by side", started)
    t = time.perf_counter()
    # Runs stored before (same config, seed, protocols, code version; a reproduction: of the
    # same trial) come back from the store without running: a second `make run` stores nothing.
    plan = plan_reproductions(store_url, SWEEP_NAME, top=1, seeds=3, progress=say)

    def ended(outcome: Any) -> None:
        if outcome.record.kind == "reproduction":
            plan.on_run(outcome)
            return
        hm = outcome.metric("test", "semantic", "gzsl", "hm", "iou")
        how = "stored before, reused" if outcome.reused else f"{outcome.seconds:.0f} s"
        print(f"  {outcome.method}: {how}, test ZSS HM {_pct(hm)} (run {outcome.run_id})",
              flush=True)

    # The longest runs first: the reproductions fill both cores, the baselines the gaps.
    baseline_jobs = [RunJob(config, m, 0) for m in BASELINES]
    outcomes = run_many(pipeline, [*plan.jobs, *baseline_jobs], on_run=ended)
    timings["baselines_and_reproduction"] = time.perf_counter() - t

    _stage(5, "reproduction of the best trial: mean ± std over the seeds", started)
    reps = plan.finish(outcomes[:len(plan.jobs)])
    print(format_reproductions(reps))

    _stage(6, "leaderboard (test split, GZSL)", started)
    with open_store(store_url) as store:
        table = leaderboard(store)
    print(table)
    seconds = time.perf_counter() - started
    summary = {"size": size, "seed": seed, "trials": trials, "seconds": round(seconds, 1),
               "speed_probe_s": round(probe, 3),
               "timings": {k: round(v, 1) for k, v in timings.items()}, "store": store_url,
               "experiment": str(experiment_path), "space": str(space_path),
               "reproductions": [{"trial": r.trial_id, "sweep_value": r.sweep_value,
                                  "values": r.values, "exact": r.exact,
                                  "within_spread": r.within_spread} for r in reps]}
    atomic_write_json(out / "summary.json", summary, indent=2)
    print(f"\nmain job done in {seconds / 60:.1f} min; results in {store_url}")
    print(f"open the dashboard:  zeroseg dashboard --store {store_url}")
    return summary


def machine_speed_probe() -> float:
    """Seconds for 200 single-thread 512 x 512 float32 matmuls: the same job's wall time varies
    with the machine (a shared VM's speed drifts by tens of percent within an hour), so the main
    job records this next to its timings."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(512, 512, generator=torch.Generator().manual_seed(0))
        a @ a  # warm-up
        t = time.perf_counter()
        for _ in range(200):
            a @ a
        return time.perf_counter() - t
    finally:
        torch.set_num_threads(threads)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def leaderboard(store: Any) -> str:
    """Baselines and reproductions of the sweep's best config, test split, GZSL, mean +- std."""
    rows, _ = newest_per_seed(store.metrics_frame(per_class=False, setting="gzsl",
                                                  eval_split="test", status="finished"))
    labelled = []
    for r in rows:
        if r["kind"] == "reproduction":
            r = {**r, "method": "pading"}
            labelled.append(("pading (swept)", *store_rows([r])[0][1:]))
        elif r["kind"] == "train":
            labelled.append(store_rows([r])[0])
    methods = [m for m in (*BASELINES, "pading (swept)") if any(x[0] == m for x in labelled)]
    table = method_table(labelled, protocol="test", setting="gzsl", methods=methods,
                         title=table_title("test", "gzsl"))
    if "supervised" in methods:
        table += ("\nSupervised: the oracle segmenter, trained on the unseen classes too -- the "
                  "upper bound, not a zero-shot result")
    return table
