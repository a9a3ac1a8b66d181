"""``zeroseg train segmenter CONFIG``: the progress display, the stored run and the printed
summary."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zeroseg.platform.config import parse_overrides
from zeroseg.platform.errors import ConfigError
from zeroseg.platform.io import check_writable_dir
from zeroseg.platform.store import RunRecord, code_version, open_store, open_writable_store, run_key
from zeroseg.platform.training.config import load_train_config
from zeroseg.platform.training.ray_runner import run_training
from zeroseg.platform.tuning.sweep import check_address


def cmd_train_segmenter(args: argparse.Namespace) -> int:
    return train_segmenter_command(args.config, parse_overrides(args.set), address=args.address,
                                   quiet=args.quiet, json_output=args.json, verbose=args.verbose,
                                   store=args.store)




class _Display:
    """Rank 0's records as a rich progress bar on a terminal, else one line per record."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar: Any = None
        self.task: Any = None

    @contextlib.contextmanager
    def active(self) -> Iterator[_Display]:
        if self.quiet or not sys.stderr.isatty():
            yield self
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, transient=False) as bar:
            self.bar = bar
            self.task = bar.add_task("train", total=None, info="starting workers")
            yield self
        self.bar = None

    def __call__(self, record: dict[str, Any]) -> None:
        if self.quiet:
            return
        event = record.get("event")
        step, steps = record.get("step"), record.get("steps")
        if event == "log":
            info = f"loss {record['loss']:.3f}  {record['images_per_s']:.1f} img/s"
            if "cpu_share" in record:
                info += f"  cpu {record['cpu_share']:.2f} load {record['load_per_cpu']:.1f}"
        elif event == "start":
            info = (f"resumed at step {step}" if step else
                    f"started, {record.get('world_size')} worker(s)")
        elif event == "checkpoint":
            info = f"checkpoint at step {step}"
        else:
            return
        if self.bar is not None:
            kwargs: dict[str, Any] = {"info": info}
            if steps:
                kwargs["total"] = steps
            if step is not None:
                kwargs["completed"] = step
            self.bar.update(self.task, **kwargs)
        elif event != "checkpoint":
            total = f"/{steps}" if steps else ""
            print(f"step {step}{total}  {info}", flush=True)


def record_training(result: Any, config: Any, store_url: str | None
                    ) -> tuple[int, bool] | None:
    """Store a trained segmenter's own-head evaluation as a run: ``supervised`` for the oracle,
    ``seen-only`` for a zero-shot segmenter (its unseen figures are 0 by construction).
    Returns (run id, whether that run was stored before: a re-run of the same run_dir)."""
    results = result.results
    if not results.get("metrics"):
        return None
    split_name = results.get("split") or ""
    audit = {**(results.get("audit") or {}), "passed": not config.data.oracle,
             "unseen_instances_in_training": None if config.data.oracle else 0}
    leak = results.get("leakage") or {}
    audit.update({k: leak.get(k) for k in ("images_total", "images_kept", "images_dropped")})
    method = "supervised" if config.data.oracle else "seen-only"
    key = run_key(kind="train", config_hash=results.get("config_hash"), method=method,
                  seed=config.train.seed, eval_splits=["test"], code_version=code_version()[0])
    record = RunRecord(
        kind="train", status="finished", method=method, run_key=key,
        dataset=split_name.split("/")[0] or None, split=split_name or None,
        backbone=config.model.size, seed=config.train.seed, config=results["config"],
        config_hash=results.get("config_hash"), dataset_fingerprint=results.get("dataset"),
        leakage_audit=audit, name=f"train segmenter {config.output.run_dir.name}",
        artifacts={"segmenter": results["segmenter"]["path"],
                   "predictions": {"test": str(result.run_dir / "predictions")},
                   "dataset_root": str(config.data.root),
                   "eval_data_split": results.get("eval_split")},
        duration_s=results.get("seconds"))
    for evaluation in results["metrics"].values():
        record.add_evaluation(evaluation, "test")
    url = store_url or str(Path(result.run_dir) / "results.db")
    with open_store(url) as store:
        stored = store.finished_run(key)
        return (int(stored["id"]), True) if stored else (store.record_run(record), False)


def train_segmenter_command(config_path: str | Path, overrides: dict[str, Any], *,
                            address: str | None = None, quiet: bool = False,
                            json_output: bool = False, verbose: bool = False,
                            store: str | None = None) -> int:
    config = load_train_config(config_path, overrides)  # typos fail here, before Ray
    if address is not None:
        if config.distributed.workers == 0:
            raise ConfigError(f"--address {address}: distributed.workers is 0 (training runs "
                              "in this process); set it to 1 or more, or leave --address out")
        check_address(address)
        config = dataclasses.replace(config, distributed=dataclasses.replace(
            config.distributed, address=address))
    # Outputs before any work: the run folder and, with train.eval, the store the run goes to.
    check_writable_dir(config.output.run_dir, "training run folder (output.run_dir)")
    if config.train.eval:
        open_writable_store(store or str(config.output.run_dir / "results.db")).close()
    display = _Display(quiet or json_output)
    with display.active():
        result = run_training(config, progress=display, verbose=verbose)
    stored = record_training(result, config, store)
    if json_output:
        print(json.dumps(result.results, indent=2))
        return 0
    training = result.results["training"]
    kind = "oracle (all classes)" if config.data.oracle else "zero-shot (seen classes only)"
    loss = training.get("loss")
    loss_text = "-" if loss is None else f"{loss:.3f}"
    print(f"trained {kind} segmenter: {training.get('step')} steps on "
          f"{training.get('world_size')} worker(s), ZeRO {config.distributed.zero_stage}, "
          f"{config.distributed.precision}; final loss {loss_text}, "
          f"{training.get('images_per_s', 0.0):.1f} images/s")
    if training.get("start_step"):
        print(f"resumed from step {training['start_step']}")
    print(f"segmenter: {result.segmenter_dir}")
    if result.results.get("metrics"):
        rows = result.results["metrics"]
        print()
        print(_table_from_json(rows, f"{result.results.get('eval_split')} split, GZSL, "
                                     f"the segmenter's own classifier (%)"))
    print(f"\nresults: {result.run_dir / 'results.json'}")
    if stored is not None:
        where = store or result.run_dir / "results.db"
        print(f"already stored as run {stored[0]} in {where} (reused)" if stored[1] else
              f"stored as run {stored[0]} in {where}")
    return 0


def _table_from_json(metrics: dict[str, Any], title: str) -> str:
    def pct(v: Any) -> str:
        return f"{'-':>6}" if v is None else f"{100 * float(v):6.1f}"

    lines = [title, f"{'task':<9} {'metric':<10} {'seen':>6} {'unseen':>6} {'HM':>6}"]
    for task, doc in metrics.items():
        seen, unseen, hm = doc.get("seen") or {}, doc.get("unseen") or {}, doc.get("hm") or {}
        for metric in list(dict.fromkeys([*seen, *unseen, *hm])):
            lines.append(f"{task:<9} {metric:<10} {pct(seen.get(metric))} "
                         f"{pct(unseen.get(metric))} {pct(hm.get(metric))}")
    return "\n".join(lines)
