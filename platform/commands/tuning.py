"""``zeroseg sweep`` and ``zeroseg reproduce``: progress lines and summaries."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from zeroseg.platform.config import parse_overrides
from zeroseg.platform.errors import ZerosegError
from zeroseg.platform.store import open_store, resolve_url
from zeroseg.platform.tuning.reproduce import format_reproductions, reproduce
from zeroseg.platform.tuning.sweep import SweepError, prepare_job, run_sweep


def cmd_sweep(args: argparse.Namespace) -> int:
    name = args.name or args.resume
    if not name:
        raise ZerosegError("--name: required (or --resume NAME)")
    return sweep_command(args.space, name=name, trials=args.trials,
                         concurrency=args.concurrency, address=args.address,
                         resume=bool(args.resume), config=args.config,
                         overrides=parse_overrides(args.set), store=args.store,
                         searcher=args.searcher, cpus_per_trial=args.cpus_per_trial,
                         verbose=args.verbose)


def cmd_reproduce(args: argparse.Namespace) -> int:
    return reproduce_command(args.name, top=args.top, seeds=args.seeds, trial=args.trial,
                             store=args.store, force=args.force)




def _line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def sweep_command(space: str | None, *, name: str, trials: int, concurrency: int,
                  address: str | None, resume: bool, config: str | None,
                  overrides: dict[str, Any], store: str | None, searcher: str | None,
                  cpus_per_trial: float, verbose: bool) -> int:
    if space is None:
        if not resume:
            raise SweepError("SPACE: give the search space YAML (or --resume NAME)")
        space = _stored_space(name, store, overrides)
    job = prepare_job(space, name, config=config, overrides=overrides, store=store,
                      cpus_per_trial=cpus_per_trial, searcher=searcher)
    _line(f"sweep {name}: {job.space.method}, {len(job.space.knobs)} knobs "
          f"({', '.join(job.space.knobs)}), {trials} trials, {concurrency} at a time, "
          f"objective {job.objective.name} ({job.space.mode}); store {job.store_url}")
    result = run_sweep(job, trials=trials, concurrency=concurrency, address=address,
                       resume=resume, progress=_line, verbose=verbose)
    best = result.best
    best_text = "no finished trial"
    if best:
        best_text = (f"best: trial {best['trial_id']} (run {best['run_id']}) "
                     f"{best['objective']} = {100 * best['value']:.2f}")
    print(f"sweep {name}: {result.trials} trials in the store ({result.finished} finished, "
          f"{result.stopped} stopped early, {result.failed} failed) in {result.seconds:.0f} s; "
          f"{best_text}")
    print(f"reproduce the best: zeroseg reproduce {name} --top 1 --seeds 3 --store "
          f"{job.store_url}")
    return 0


def _stored_space(name: str, store: str | None, overrides: dict[str, Any]) -> str:
    """The space file a stored sweep was started with (``zeroseg sweep --resume NAME``)."""
    with open_store(store, create=False) as opened:
        info = next((s for s in opened.sweeps() if s["name"] == name), None)
    if info is None or not (info.get("space") or {}).get("path"):
        raise SweepError(f"--resume {name}: no such sweep in the store; give SPACE as well")
    path = info["space"]["path"]
    if not Path(path).is_file():
        raise SweepError(f"--resume {name}: its search space {path} is gone; give SPACE")
    return path


def reproduce_command(name: str, *, top: int, seeds: int, trial: str | None,
                      store: str | None, force: bool = False) -> int:
    url = store or str(resolve_url(None).render_as_string(hide_password=False))
    reps = reproduce(url, name, top=top, seeds=seeds, trial=trial, progress=_line, force=force)
    print(format_reproductions(reps))
    runs = [o for rep in reps for o in rep.runs]
    reused = [o.run_id for o in runs if o.reused]
    print(f"{len(runs)} reproduction runs in the store: "
          f"{', '.join(str(o.run_id) for o in runs)}"
          + (f" ({len(reused)} stored before and reused; --force re-runs them)" if reused
             else ""))
    return 0
