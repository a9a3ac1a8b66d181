"""``zeroseg sweep`` and ``zeroseg reproduce``.

The bodies (:mod:`zeroseg.platform.tuning.command`, progress lines and summaries) still live in
``platform/tuning/command.py``, outside this branch's half of issue 16; they move here with the
method contract's half.
"""

from __future__ import annotations

import argparse

from zeroseg.platform.config import parse_overrides
from zeroseg.platform.errors import ZerosegError
from zeroseg.platform.tuning.command import reproduce_command, sweep_command


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
