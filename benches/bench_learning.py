"""Learning per CPU-minute: the segmenter's val mIoU and PQ against the CPU-seconds it trained.

Every change to the segmenter's recipe is judged by where this curve lands, not by steps. For
each (recipe, kind) the bench trains one segmenter on the synthetic benchmark with the
platform's model, loss, optimiser and data pipeline (AdamW, linear warm-up, poly decay over the
whole budget, global-norm clipping, seeded flips, 8 images per step as the main job's 2 workers
x 4), in a plain single-thread loop, and evaluates it on the val split at ``--eval-at``
CPU-minutes (evaluation time is not counted). CPU-seconds are the process's own
(``time.process_time``, data loading included), so a curve does not depend on what else runs:
15 CPU-minutes are 7.5 minutes of wall time on two free cores.

Kinds:

- ``zero-shot``: the test protocol's segmenter (seen classes only, training images through the
  split's leakage filter); reported: **seen** mIoU / PQ in GZSL with its own head (what the
  zero-shot methods build on);
- ``oracle``: every class, every image; reported: mIoU / PQ over all classes (the upper bound).

Recipes (``SegmenterConfig`` overrides of the ``tiny`` size):

- ``paper``: Mask2Former's recipe, as zeroseg trained the tiny size up to stop 10
  (MSDeformAttn pixel decoder, coarse-first attention, 2,048 sampled points, class weight 2,
  no auxiliary loss);
- ``tiny``: the ``tiny`` size's own defaults (FPN, fine-first, dense mask loss, class weight 5,
  per-pixel auxiliary loss).

The curves of two recipes run side by side (``--jobs 2`` single-thread processes), so their
ratios come from one run of the machine. The summary gives, per curve, the CPU-seconds to the
first evaluation at or above ``--target`` (default 40, seen mIoU for zero-shot) and the value at
the last point. Everything is written to ``--out/learning.json``.

    python benches/bench_learning.py --data /tmp/synth-small --minutes 15 --eval-at 3 6 9 12 15
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RECIPES: dict[str, dict[str, Any]] = {
    "paper": {"pixel_decoder": "msdeform", "attention_order": "coarse-first",
              "mask_loss": "points", "train_num_points": 2048, "class_weight": 2.0,
              "semantic_weight": 0.0},
    "tiny": {},
}
KINDS = ("zero-shot", "oracle")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("/tmp/zeroseg-bench-small"),
                   help="synthetic 'small' benchmark root (generated with seed 0 if missing)")
    p.add_argument("--out", type=Path, default=Path("/tmp/zeroseg-bench-learning"))
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    p.add_argument("--minutes", type=float, default=15.0, help="CPU-minutes per curve")
    p.add_argument("--eval-at", type=float, nargs="+", default=[3, 6, 9, 12, 15])
    p.add_argument("--target", type=float, default=40.0, help="mIoU the summary times")
    p.add_argument("--jobs", type=int, default=2, help="curves trained at once")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--curve", nargs=2, metavar=("RECIPE", "KIND"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


# -- one curve (a subprocess) -------------------------------------------------------------------
def train_curve(args: argparse.Namespace, recipe: str, kind: str) -> dict[str, Any]:
    import torch

    from zeroseg.methods.segmenter import (
        SegmentationDataset,
        Segmenter,
        SegmenterConfig,
        collate_segmentation,
        predict_dataset,
    )
    from zeroseg.methods.segmenter.inference import segmenter_classifier
    from zeroseg.platform.data.layout import CocoLayout
    from zeroseg.platform.data.leakage import filter_training
    from zeroseg.platform.data.synthetic.generate import load_classes_json
    from zeroseg.platform.evaluation import evaluate_panoptic, evaluate_semantic
    from zeroseg.platform.training.loop import seed_everything
    from zeroseg.platform.training.ray_runner import training_classes

    torch.set_num_threads(1)
    seed_everything(args.seed)
    train, val = CocoLayout(args.data, "train"), CocoLayout(args.data, "val")
    split = load_classes_json(train.classes_json)
    class_ids = training_classes(split, oracle=kind == "oracle", validation=False)
    image_ids = None if kind == "oracle" else filter_training(train, split).kept_image_ids
    config = SegmenterConfig(size="tiny", **RECIPES[recipe])
    model = Segmenter(config, len(class_ids))
    dataset = SegmentationDataset(train, class_ids, image_ids, image_size=config.image_size,
                                  augment=True, seed=args.seed)
    classifier = segmenter_classifier(model, class_ids, split)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    generator = torch.Generator().manual_seed(args.seed)
    budget = args.minutes * 60.0
    eval_at = sorted(m * 60.0 for m in args.eval_at)
    curve: list[dict[str, Any]] = []
    out = args.out / f"{recipe}-{kind}"

    def evaluate(trained: float, step: int) -> None:
        model.eval()
        t = time.perf_counter()
        paths = predict_dataset(model, classifier, val, split, out / "pred",
                                ("semantic", "panoptic"), batch_size=16)
        sem = evaluate_semantic(val, split, paths["semantic"], "gzsl")
        pan = evaluate_panoptic(val, split, paths["panoptic"], "gzsl")
        model.train()
        if kind == "oracle":
            ious = [v["iou"] for v in sem.per_class.values() if v["iou"] is not None]
            pqs = [v["pq"] for v in pan.per_class.values() if v["pq"] is not None]
            miou, pq = sum(ious) / len(ious), sum(pqs) / len(pqs)
        else:
            miou, pq = sem.seen["iou"], pan.seen["pq"]
        row = {"cpu_s": round(trained, 1), "step": step, "miou": round(100 * miou, 2),
               "pq": round(100 * pq, 2), "eval_s": round(time.perf_counter() - t, 1)}
        curve.append(row)
        print(f"{recipe:>6} {kind:>9}  {trained / 60:5.1f} CPU-min  step {step:5d}  "
              f"mIoU {row['miou']:5.1f}  PQ {row['pq']:5.1f}", flush=True)

    trained, step, epoch = 0.0, 0, 0
    model.train()
    while trained < budget:
        dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True,
                                             drop_last=True, generator=generator,
                                             collate_fn=collate_segmentation)
        start = time.process_time()
        for batch in loader:
            frac = min(trained / budget, 1.0)
            warm = min(1.0, (step + 1) / args.warmup) if args.warmup else 1.0
            for group in optimizer.param_groups:
                group["lr"] = args.lr * warm * (1 - frac) ** 0.9
            loss = model(batch["pixel_values"], batch["mask_labels"], batch["class_labels"]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            now = time.process_time()
            trained += now - start
            if eval_at and trained >= eval_at[0]:
                eval_at.pop(0)
                evaluate(trained, step)
            start = time.process_time()
            if trained >= budget:
                break
        epoch += 1
    if not curve or curve[-1]["step"] != step:
        evaluate(trained, step)
    return {"recipe": recipe, "kind": kind, "config": RECIPES[recipe], "curve": curve}


# -- the driver -----------------------------------------------------------------------------------
def first_reaching(curve: list[dict[str, Any]], target: float) -> float | None:
    return next((row["cpu_s"] for row in curve if row["miou"] >= target), None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.curve:
        result = train_curve(args, *args.curve)
        path = args.out / f"{args.curve[0]}-{args.curve[1]}.json"
        path.write_text(json.dumps(result, indent=1))
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.data / "annotations" / "classes.json").is_file():
        from zeroseg.platform.data.synthetic.generate import generate

        generate("small", 0, args.data)
    jobs = [(r, k) for k in args.kinds for r in args.recipes]
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    running: list[subprocess.Popen] = []
    for recipe, kind in jobs:
        while len(running) >= args.jobs:
            running[0].wait()
            running = [p for p in running if p.poll() is None]
        running.append(subprocess.Popen([sys.executable, __file__, *passthrough,
                                         "--curve", recipe, kind]))
    failed = sum(p.wait() != 0 for p in running)
    results = []
    for recipe, kind in jobs:
        path = args.out / f"{recipe}-{kind}.json"
        if path.is_file():
            results.append(json.loads(path.read_text()))
    (args.out / "learning.json").write_text(json.dumps({"args": {k: str(v) for k, v in
                                                                  vars(args).items()},
                                                         "curves": results}, indent=1))
    print(f"\nval mIoU / PQ (seen classes for zero-shot, all classes for the oracle), "
          f"single-thread CPU-minutes, batch {args.batch_size}")
    print(f"{'kind':>9} {'recipe':>6} {'CPU-min to mIoU ' + str(args.target):>22} "
          f"{'last CPU-min':>12} {'mIoU':>6} {'PQ':>6}")
    for r in results:
        reach = first_reaching(r["curve"], args.target)
        last = r["curve"][-1]
        print(f"{r['kind']:>9} {r['recipe']:>6} "
              f"{(f'{reach / 60:.1f}' if reach is not None else 'not reached'):>22} "
              f"{last['cpu_s'] / 60:>12.1f} {last['miou']:>6.1f} {last['pq']:>6.1f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
