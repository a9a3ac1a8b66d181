"""``zeroseg eval``: seen / unseen / HM of a prediction folder or results json."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zeroseg.platform import evaluation
from zeroseg.platform.commands.data import command_split
from zeroseg.platform.data.layout import dataset_layout
from zeroseg.platform.errors import ConfigError


def cmd_eval(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers: expected a positive number of processes, got "
                          f"{args.workers}")
    split = command_split(args.gt, args.benchmark)
    layout = dataset_layout(Path(args.gt), args.split, split.dataset)
    pred = Path(args.pred)
    if args.empty_classes is not None and args.task != "panoptic":
        raise ConfigError(f"--empty-classes: only used by panoptic evaluation, not "
                          f"{args.task}")
    if args.task == "semantic":
        result = evaluation.evaluate_semantic(layout, split, pred, args.setting,
                                              workers=args.workers)
    elif args.task == "panoptic":
        result = evaluation.evaluate_panoptic(layout, split, pred, args.setting,
                                              workers=args.workers,
                                              empty_classes=args.empty_classes or "zero")
    else:
        result = evaluation.evaluate_instance(
            layout, split, pred, args.setting,
            iou_type="bbox" if args.task == "detection" else "segm")
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(result.format_table())
    return 0
