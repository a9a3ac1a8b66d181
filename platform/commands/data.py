"""``zeroseg data synth / list / filter / convert-context``, and the split a command works on."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from zeroseg.platform.data.classes import Split
from zeroseg.platform.data.layout import dataset_layout
from zeroseg.platform.data.leakage import filter_training
from zeroseg.platform.data.registry import dataset_split, split_table
from zeroseg.platform.data.synthetic.generate import SIZES, generate
from zeroseg.platform.data.voc import convert_mmseg_context
from zeroseg.platform.errors import ZerosegError
from zeroseg.platform.progress import progress_bar


def command_split(gt: str | None, benchmark: str | None) -> Split:
    """The split to use: ``--benchmark NAME`` from the registry, else the dataset's classes.json."""
    if not benchmark and not gt:
        raise ZerosegError("--benchmark: required when no dataset folder (--gt) is given")
    return dataset_split(benchmark, gt or "", missing_hint="; pass --benchmark NAME (see "
                                                           "`zeroseg data list`)")


def cmd_data_synth(args: argparse.Namespace) -> int:
    spec = SIZES.get(args.size)
    total = (spec.train + spec.val) if spec is not None else 0
    with progress_bar(f"synth {args.size}", total, enabled=not args.quiet) as advance:
        summary = generate(args.size, args.seed, args.out, workers=args.workers,
                           overwrite=args.overwrite, progress=advance, variant=args.variant)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote synthetic benchmark '{args.size}' (seed {args.seed}) to {args.out}")
        for key, value in summary.items():
            print(f"  {key}: {value}")
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    rows = split_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = ["name", "dataset", "tasks", "protocol", "classes", "seen", "unseen", "val_unseen"]
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    print(f"\n{len(rows)} splits. Sources: `zeroseg data list --json` (field 'source').")
    return 0


def _cell(value: object) -> str:
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def cmd_data_filter(args: argparse.Namespace) -> int:
    split = command_split(args.gt, args.benchmark)
    layout = dataset_layout(Path(args.gt), args.split, split.dataset)
    result = filter_training(layout, split, protocol=args.protocol, validation=args.validation,
                             out_dir=Path(args.out) if args.out else None)
    report = result.to_dict()
    report.pop("kept_image_ids", None)
    print(json.dumps(report, indent=2))
    return 0


def cmd_data_convert_context(args: argparse.Namespace) -> int:
    count = convert_mmseg_context(Path(args.src), Path(args.out))
    print(f"{count} label PNGs rewritten with ZS3's Pascal-Context ids into {args.out}")
    return 0
