"""What a sweep trial costs: from the feature cache in memory vs re-running the segmenter.

A sweep trial of a zero-shot method changes the classifier, not the segmenter. Three ways to
score one new classifier on the synthetic benchmark's validation split (semantic, instance and
panoptic, GZSL), timed side by side in one process:

- **segmenter**: run the segmenter over the images, write the three COCO result formats,
  evaluate the files (what a trial costs without a cache);
- **cache, files**: the same from the ``eval`` feature cache (no backbone), still through files;
- **cache, in memory**: what runs and trials do now (:class:`CachedEvaluation`): cached outputs
  upsampled once and ground truth read once, predictions scored without touching the disk. The
  first trial pays for that (reported separately); the figure is a later trial.

It checks that the three give the same per-class numbers (``--mask-codec float32``; the
segmenter runs with the extraction's thread count, so its outputs are bit-identical) and prints
the ratios, plus the one-off extraction and the number of trials after which it has paid off.

``--checkpoint DIR`` scores a trained segmenter (``RUN_DIR/segmenter``); without it a randomly
initialised tiny segmenter is used (the timing of a random one is not representative of the
predictions' counts: fewer segments and detections pass the thresholds).

Usage: python benches/bench_feature_cache.py [--size small] [--data DIR] [--checkpoint DIR]
       [--mask-codec float32] [--repeat 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TASKS = ("semantic", "instance", "panoptic")


def build_dataset(size: str, seed: int, data: Path | None, work: Path) -> Path:
    if data is not None and (data / "annotations" / "classes.json").is_file():
        print(f"reusing {data}")
        return data
    from zeroseg.platform.data.synthetic.generate import generate

    out = data if data is not None else work / f"synth-{size}"
    t0 = time.perf_counter()
    generate(size, seed, out)
    print(f"generated synthetic {size} (seed {seed}) in {time.perf_counter() - t0:.1f} s")
    return out


def make_checkpoint(split: Any, directory: Path, seed: int) -> Path:
    import torch

    from zeroseg.methods.segmenter import Segmenter, SegmenterConfig, save_segmenter

    torch.manual_seed(seed)
    seen = [c.id for c in split.seen]
    model = Segmenter(SegmenterConfig(size="tiny", image_size=128), len(seen))
    save_segmenter(model, directory, {"class_ids": seen, "split": split.name, "step": 0})
    return directory


def evaluate_files(layout: Any, split: Any, paths: dict[str, Path]) -> dict[str, Any]:
    from zeroseg.platform import evaluation

    fns = {"semantic": evaluation.evaluate_semantic, "panoptic": evaluation.evaluate_panoptic,
           "instance": evaluation.evaluate_instance}
    return {task: fns[task](layout, split, path, "gzsl").to_json()["per_class"]
            for task, path in paths.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small", "medium"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None, help="existing synthetic dataset")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a trained segmenter (save_segmenter folder)")
    parser.add_argument("--mask-codec", default="float32", choices=["float32", "float16", "int8"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeat", type=int, default=3, help="trials timed per way (best)")
    args = parser.parse_args()

    import torch

    from zeroseg.methods.segmenter import load_segmenter, predict_dataset
    from zeroseg.platform.data.layout import CocoLayout
    from zeroseg.platform.data.synthetic.generate import load_classes_json
    from zeroseg.platform.features import ExtractConfig, get_features
    from zeroseg.platform.pipeline.evaluate import CachedEvaluation
    from zeroseg.platform.pipeline.runner import setting_classifier

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="zeroseg-bench-features-"))
    try:
        root = build_dataset(args.size, args.seed, args.data, work)
        split = load_classes_json(root / "annotations" / "classes.json")
        layout = CocoLayout(root, "val")
        ckpt = args.checkpoint or make_checkpoint(split, work / "segmenter", args.seed)
        model, _ = load_segmenter(ckpt)

        t0 = time.perf_counter()
        cache = get_features(ExtractConfig(
            checkpoint=ckpt, data=root, split="val", kind="eval", cache_dir=work / "cache",
            mask_codec=args.mask_codec, batch_size=args.batch_size,
            threads_per_worker=args.threads)).cache
        extract_s = time.perf_counter() - t0
        print(f"extracted {cache.num_images} val images in {extract_s:.1f} s "
              f"({cache.size_bytes / 2**20:.1f} MiB, mask codec {args.mask_codec})")

        torch.manual_seed(args.seed + 1)
        head = torch.nn.Linear(cache.embed_dim, split.num_classes + 1)  # the trial's classifier

        def best(fn: Any) -> tuple[float, Any]:
            times, out = [], None
            for _ in range(args.repeat):
                t = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t)
            return min(times), out

        def through_files(source: Any, name: str) -> dict[str, Any]:
            paths = predict_dataset(source, head, layout, split, work / name, tasks=TASKS,
                                    batch_size=args.batch_size)
            return evaluate_files(layout, split, paths)

        t_model, m_model = best(lambda: through_files(model, "segmenter"))
        t_files, m_files = best(lambda: through_files(cache, "cache"))
        memory = CachedEvaluation(cache, layout, split)

        def in_memory() -> dict[str, Any]:
            results = memory.evaluate(head, TASKS, ["gzsl"], _inference(),
                                      setting_classifier=setting_classifier, keep="none")
            return {task: r.to_json()["per_class"] for (task, _), r in results.items()}

        t = time.perf_counter()
        m_first = in_memory()
        t_first = time.perf_counter() - t
        t_memory, m_memory = best(in_memory)

        same = m_model == m_files == m_memory == m_first
        n = cache.num_images
        print(f"\nval images: {n}; torch threads: {args.threads}; tasks: {', '.join(TASKS)}; "
              f"checkpoint: {'trained' if args.checkpoint else 'random'}")
        print(f"per-class metrics identical (segmenter / cache files / cache in memory): {same}")
        print(f"{'one trial, end to end':<34}{'seconds':>9}{'vs segmenter':>14}")
        rows = [("segmenter + files", t_model), ("cache + files", t_files),
                ("cache in memory (first trial)", t_first), ("cache in memory", t_memory)]
        for label, seconds in rows:
            print(f"{label:<34}{seconds:>9.2f}{t_model / seconds:>13.1f}x")
        saved = t_model - t_memory
        if saved > 0:
            print(f"one-off extraction {extract_s:.1f} s pays off after "
                  f"{extract_s / saved:.1f} trials")
        if not same and args.mask_codec == "float32":
            raise SystemExit("the three ways disagree")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _inference() -> Any:
    from zeroseg.methods.segmenter.inference import InferenceConfig

    return InferenceConfig()


if __name__ == "__main__":
    main()
