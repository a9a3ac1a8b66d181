"""``zeroseg run CONFIG``: run an experiment config, print the table."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from zeroseg.methods.fidelity import summary_line
from zeroseg.platform.config import parse_overrides
from zeroseg.platform.errors import ConfigError
from zeroseg.platform.evaluation.summary import tasks_of_split
from zeroseg.platform.pipeline.config import load_pipeline_config
from zeroseg.platform.pipeline.report import fidelity_table, format_outcomes
from zeroseg.platform.pipeline.runner import run_pipeline
from zeroseg.platform.pipeline.smoke import describe, smoke_config
from zeroseg.platform.pipeline.stages import Pipeline
from zeroseg.platform.tuning.sweep import check_address


def cmd_run(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.set)
    if args.methods:
        overrides["methods"] = args.methods
    if args.seeds:
        overrides["seeds"] = args.seeds
    if args.store:
        overrides["store"] = args.store
    return run_command(args.config, overrides, json_output=args.json, verbose=args.verbose,
                       address=args.address, force=args.force, smoke=args.smoke)


def _line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_command(config_path: str | Path, overrides: dict[str, Any], *, json_output: bool = False,
                verbose: bool = False, address: str | None = None, force: bool = False,
                smoke: bool = False) -> int:
    config = load_pipeline_config(config_path, overrides)  # typos fail here, before any work
    if smoke:
        config = smoke_config(config)
        _line(describe(config))
    if address is not None:
        if config.segmenter.distributed.workers == 0:
            raise ConfigError(f"--address {address}: zeroseg run uses a Ray cluster only to "
                              "train the segmenter, and segmenter.distributed.workers is 0 (it "
                              "trains in this process); set it to 1 or more, or leave --address "
                              "out")
        check_address(address)
    started = time.perf_counter()
    pipeline = Pipeline(config, progress=_line, verbose=verbose, ray_address=address)
    pipeline.check_outputs()  # store, work dir: one-line errors now, not after training
    pipeline.check_inputs()  # data files, class vectors: likewise
    total = len(config.methods) * len(config.seeds)
    done = {"n": 0}

    task, metric, label = headline(tasks_of_split(config.evaluation.tasks, pipeline.split.tasks))

    def on_run(outcome: Any) -> None:
        done["n"] += 1
        hm = outcome.metric("test", task, "gzsl", "hm", metric)
        hm_text = f"{label} {'-' if hm is None else f'{100 * hm:.1f}'}"
        if outcome.reused:
            _line(f"[{done['n']}/{total}] {outcome.method} seed {outcome.seed}: already stored "
                  f"as run {outcome.run_id} ({hm_text}); reused, not run again "
                  "(--force re-runs it)")
        else:
            _line(f"[{done['n']}/{total}] {outcome.method} seed {outcome.seed}: "
                  f"{outcome.status} in {outcome.seconds:.0f} s ({hm_text}), stored as run "
                  f"{outcome.run_id}")
        fid = outcome.fidelity()
        if fid:
            _line(f"    {summary_line(fid)}")

    _line(f"zeroseg run {config.name}: {len(config.methods)} method(s) x {len(config.seeds)} "
          f"seed(s), protocols {', '.join(config.evaluation.protocols)}; store "
          f"{pipeline.store_url}")
    outcomes = run_pipeline(pipeline, on_run=on_run, force=force)
    if json_output:
        print(json.dumps([{**_outcome_json(o), "smoke": config.smoke} for o in outcomes],
                         indent=2))
        return 0
    if config.smoke:
        print("SMOKE RUN -- every stage at a minute's size; these numbers mean nothing\n")
    print(format_outcomes(outcomes, protocols=config.evaluation.protocols,
                          settings=config.evaluation.settings))
    fidelity = fidelity_table((o.method, o.fidelity()) for o in outcomes)
    if fidelity:
        print(f"\n{fidelity}")
    print(f"\n{len(outcomes)} runs in {time.perf_counter() - started:.0f} s, stored in "
          f"{pipeline.store_url} (zeroseg results list --store {pipeline.store_url})")
    return 0


#: The figure a run's progress line shows, per task: (task, metric, label).
HEADLINES = (("semantic", "iou", "ZSS HM mIoU"), ("panoptic", "pq", "ZSP HM PQ"),
             ("instance", "ap50", "ZSI HM mAP50"), ("detection", "ap50", "ZSD HM mAP50"))


def headline(tasks: Any) -> tuple[str, str, str]:
    """The first of semantic / panoptic / instance / detection among the scored ``tasks``."""
    return next((h for h in HEADLINES if not tasks or h[0] in tasks), HEADLINES[0])


def _outcome_json(outcome: Any) -> dict[str, Any]:
    protocol = {"test": "test", "val": "validation"}
    metrics: dict[str, dict[str, dict[str, float | None]]] = {}
    for m in outcome.record.metrics:
        if m.subset != "class":
            entry = metrics.setdefault(f"{protocol[m.eval_split]}/{m.task}/{m.setting}",
                                       {"seen": {}, "unseen": {}, "hm": {}})
            entry[m.subset][m.metric] = m.value
    return {
        "method": outcome.method, "seed": outcome.seed, "run_id": outcome.run_id,
        "uid": outcome.uid, "status": outcome.status, "seconds": round(outcome.seconds, 2),
        "reused": outcome.reused, "metrics": metrics,
    }
