"""``zeroseg train segmenter``.

The body (:func:`~zeroseg.platform.training.command.train_segmenter_command`, with its progress
display and printing) still lives in ``platform/training/command.py``, outside this branch's
half of issue 16; it moves here with the method contract's half.
"""

from __future__ import annotations

import argparse

from zeroseg.platform.config import parse_overrides
from zeroseg.platform.training.command import train_segmenter_command


def cmd_train_segmenter(args: argparse.Namespace) -> int:
    return train_segmenter_command(args.config, parse_overrides(args.set), address=args.address,
                                   quiet=args.quiet, json_output=args.json, verbose=args.verbose,
                                   store=args.store)
