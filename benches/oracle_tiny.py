"""Supervised-oracle feasibility on the synthetic benchmark (issue 3, item 5).

The oracle is the segmenter trained on ALL classes (seen and unseen) of the synthetic split; its
unseen metrics are the upper bound for zero-shot methods. This script trains it with a plain
single-process PyTorch loop (AdamW, the ``tiny`` size by default; the distributed trainer lives
in ``zeroseg.platform.training``) for a wall-clock budget, and at a few points measures mIoU over
all classes on the validation split with the segmenter's semantic inference and
``evaluate_semantic``. The target: at least 60 mIoU within about 15 CPU-minutes.

    python benches/oracle_tiny.py --data /tmp/s1_small --minutes 15 --eval-at 3 6 9 12 15

Training time excludes evaluation and includes data loading. ``--clock wall`` (default) counts
wall-clock seconds; on a machine shared with other jobs, ``--clock cpu`` counts this process's
CPU seconds (summed over its threads, so 15 CPU-minutes with 2 busy threads are about 7.5
minutes of wall time on two free cores). Both clocks are recorded. The curve is printed as it
goes and written to ``--out/curve.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from zeroseg.methods.segmenter import (  # noqa: E402
    SegmentationDataset,
    Segmenter,
    SegmenterConfig,
    collate_segmentation,
    predict_dataset,
    save_segmenter,
)
from zeroseg.platform.data.layout import CocoLayout  # noqa: E402
from zeroseg.platform.data.synthetic.generate import generate, load_classes_json  # noqa: E402
from zeroseg.platform.evaluation import evaluate_panoptic, evaluate_semantic  # noqa: E402
from zeroseg.platform.io import atomic_write_json  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/tmp/s1_small", help="synthetic benchmark root "
                   "(generated with size 'small', seed 0 if missing)")
    p.add_argument("--out", default="/tmp/s1_oracle", help="checkpoint, predictions, curve")
    p.add_argument("--minutes", type=float, default=15.0, help="training wall-clock budget")
    p.add_argument("--eval-at", type=float, nargs="+", default=[3, 6, 9, 12, 15],
                   help="training minutes at which to evaluate")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="what the budget counts: wall seconds or process CPU seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="tiny")
    p.add_argument("--queries", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--decoder-layers", type=int, default=None)
    p.add_argument("--points", type=int, default=None, help="train_num_points")
    p.add_argument("--panoptic", action="store_true", help="also report PQ at the end")
    return p.parse_args(argv)


def evaluate(model: Segmenter, layout: CocoLayout, split, out: Path, panoptic: bool) -> dict:
    tasks = ("semantic", "panoptic") if panoptic else ("semantic",)
    paths = predict_dataset(model, None, layout, split, out, tasks, batch_size=16)
    result = evaluate_semantic(layout, split, paths["semantic"], "gzsl")
    ious = [v["iou"] for v in result.per_class.values() if v["iou"] is not None]
    metrics = {"miou_all": sum(ious) / len(ious), "miou_seen": result.seen["iou"],
               "miou_unseen": result.unseen["iou"]}
    if panoptic:
        pq = evaluate_panoptic(layout, split, paths["panoptic"], "gzsl")
        values = [v["pq"] for v in pq.per_class.values() if v["pq"] is not None]
        metrics["pq_all"] = sum(values) / len(values)
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = Path(args.data)
    if not (data / "annotations" / "classes.json").is_file():
        generate("small", 0, data)
    train_layout, val_layout = CocoLayout(data, "train"), CocoLayout(data, "val")
    split = load_classes_json(train_layout.classes_json)
    class_ids = [c.id for c in split.classes]  # the oracle: every class, split order

    config = SegmenterConfig(size=args.size, num_queries=args.queries, hidden_dim=args.hidden,
                             decoder_layers=args.decoder_layers, train_num_points=args.points)
    model = Segmenter(config, len(class_ids))
    params = sum(p.numel() for p in model.parameters())
    dataset = SegmentationDataset(train_layout, class_ids, image_size=config.image_size,
                                  augment=True, seed=args.seed)
    loader_gen = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr,
                                  weight_decay=args.weight_decay)
    budget = args.minutes * 60.0
    # Poly decay over the expected number of steps; re-estimated from the measured speed.
    print(f"oracle: {config.size} {params / 1e6:.2f} M params, {len(dataset)} train images, "
          f"{len(class_ids)} classes, batch {args.batch_size}, lr {args.lr}, "
          f"{args.threads} threads, budget {args.minutes} min", flush=True)

    out = Path(args.out)
    curve: list[dict] = []
    eval_at = sorted(m * 60.0 for m in args.eval_at)
    trained = 0.0
    wall = 0.0
    step = 0

    def clock() -> float:
        if args.clock == "cpu":
            return time.process_time()
        return time.perf_counter()

    epoch = 0
    model.train()
    while trained < budget:
        dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                             drop_last=True, generator=loader_gen,
                                             collate_fn=collate_segmentation)
        t0, w0 = clock(), time.perf_counter()
        for batch in loader:
            frac = min(trained / budget, 1.0)
            for group in optimizer.param_groups:
                group["lr"] = args.lr * (1 - frac) ** 0.9
            outputs = model(batch["pixel_values"], batch["mask_labels"], batch["class_labels"])
            optimizer.zero_grad(set_to_none=True)
            outputs.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            now, wnow = clock(), time.perf_counter()
            trained += now - t0  # data loading included, evaluation excluded
            wall += wnow - w0
            t0, w0 = now, wnow
            if not math.isfinite(float(outputs.loss.detach())):
                print(f"step {step}: loss is {float(outputs.loss)}", flush=True)
                return 1
            if step % 50 == 0:
                loss = float(outputs.loss.detach())
                print(f"step {step:5d}  {trained / 60:5.1f} min  loss {loss:7.3f}", flush=True)
            if eval_at and trained >= eval_at[0]:
                eval_at.pop(0)
                t1 = time.perf_counter()
                model.eval()
                metrics = evaluate(model, val_layout, split, out / "pred", False)
                model.train()
                t0, w0 = clock(), time.perf_counter()
                row = {"step": step, "minutes": round(trained / 60, 2),
                       "wall_minutes": round(wall / 60, 2), "epoch": epoch,
                       "images_seen": step * args.batch_size,
                       **{k: round(100 * v, 2) for k, v in metrics.items()},
                       "eval_seconds": round(w0 - t1, 1)}
                curve.append(row)
                print("EVAL " + json.dumps(row), flush=True)
                atomic_write_json(out / "curve.json", {"args": vars(args), "params": params,
                                                       "curve": curve}, indent=2)
            if trained >= budget:
                break
        epoch += 1
    if not curve or curve[-1]["step"] != step or args.panoptic:
        model.eval()
        metrics = evaluate(model, val_layout, split, out / "pred", args.panoptic)
        row = {"step": step, "minutes": round(trained / 60, 2),
               "wall_minutes": round(wall / 60, 2), "epoch": epoch,
               "images_seen": step * args.batch_size,
               **{k: round(100 * v, 2) for k, v in metrics.items()}}
        curve.append(row)
        print("EVAL " + json.dumps(row), flush=True)
    atomic_write_json(out / "curve.json", {"args": vars(args), "params": params,
                                           "curve": curve}, indent=2)
    save_segmenter(model, out / "segmenter",
                   {"class_ids": class_ids, "class_names": [c.name for c in split.classes],
                    "split": split.name, "step": step, "oracle": True})
    print(f"final mIoU (all classes) {curve[-1]['miou_all']:.1f} after {step} steps, "
          f"{trained / 60:.1f} training minutes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
