"""Trial-time saving of the feature cache.

A sweep trial of a zero-shot method changes the classifier, not the segmenter. With an ``eval``
feature cache, re-classifying the validation split needs no backbone: read the cached query
embeddings and mask logits, apply the new classifier, run inference, evaluate. Without it, every
trial runs the segmenter forward again. This script times both on the synthetic benchmark's
validation split, for the same (new, seeded linear) classifier and checks that the two give
byte-identical predictions (``mask_codec: float32``) or reports how many pixels differ (lossy
codecs). It prints:

- the one-off extraction time (what the cache costs);
- per trial, *outputs only*: iterate the cache + classify vs segmenter forward + classify;
- per trial, *end to end*: the above + inference (semantic / instance / panoptic) + evaluation;
- the ratios (segmenter / cache) and the number of trials after which the cache has paid off.

A randomly initialised tiny segmenter is used (timing does not depend on training).

Usage: python benches/bench_feature_cache.py [--size small] [--data DIR] [--tasks semantic ...]
       [--mask-codec float16] [--repeat 1]
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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


def make_checkpoint(split, directory: Path, seed: int) -> Path:
    import torch

    from zeroseg.methods.segmenter import Segmenter, SegmenterConfig, save_segmenter

    torch.manual_seed(seed)
    seen = [c.id for c in split.seen]
    model = Segmenter(SegmenterConfig(size="tiny", image_size=128), len(seen))
    save_segmenter(model, directory, {"class_ids": seen, "split": split.name, "step": 0})
    return directory


def evaluate(layout, split, paths: dict[str, Path]) -> dict[str, dict]:
    from zeroseg.platform import evaluation

    fns = {"semantic": evaluation.evaluate_semantic, "panoptic": evaluation.evaluate_panoptic,
           "instance": evaluation.evaluate_instance}
    return {task: fns[task](layout, split, path, "gzsl").to_json()["hm"]
            for task, path in paths.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small", "medium"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None, help="existing synthetic dataset")
    parser.add_argument("--tasks", nargs="+", default=["semantic", "instance", "panoptic"])
    parser.add_argument("--mask-codec", default="float32", choices=["float32", "float16", "int8"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="trials timed per variant (best)")
    args = parser.parse_args()

    import torch

    from zeroseg.methods.segmenter import load_segmenter, predict_dataset
    from zeroseg.platform.data.layout import CocoLayout
    from zeroseg.platform.data.synthetic.generate import load_classes_json
    from zeroseg.platform.features import ExtractConfig, get_features

    threads = args.threads or (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="zeroseg-bench-features-"))
    try:
        root = build_dataset(args.size, args.seed, args.data, work)
        split = load_classes_json(root / "annotations" / "classes.json")
        layout = CocoLayout(root, "val")
        ckpt = make_checkpoint(split, work / "segmenter", args.seed)
        model, meta = load_segmenter(ckpt)

        t0 = time.perf_counter()
        result = get_features(ExtractConfig(
            checkpoint=ckpt, data=root, split="val", kind="eval", cache_dir=work / "cache",
            mask_codec=args.mask_codec, batch_size=args.batch_size, threads_per_worker=threads))
        extract_s = time.perf_counter() - t0
        cache = result.cache
        print(f"extracted {cache.num_images} val images in {extract_s:.1f} s "
              f"({cache.size_bytes / 2**20:.1f} MiB, mask codec {args.mask_codec})")

        torch.manual_seed(args.seed + 1)
        head = torch.nn.Linear(cache.embed_dim, split.num_classes + 1)  # the trial's classifier

        def outputs_from_cache() -> None:
            for record in cache.iter_images():
                with torch.no_grad():
                    head(torch.from_numpy(record.query_embeddings))

        def outputs_from_segmenter() -> None:
            from zeroseg.methods.segmenter.inference import InferenceImages
            from zeroseg.platform.data.coco import CocoPanoptic

            images = InferenceImages(layout, CocoPanoptic.from_layout(layout).images, 128)
            for start in range(0, len(images), args.batch_size):
                batch = [images[i] for i in range(start, min(start + args.batch_size,
                                                             len(images)))]
                with torch.no_grad():
                    out = model(torch.stack([b["pixel_values"] for b in batch]))
                    head(out.query_embeddings)

        def best(fn) -> float:
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            return min(times)

        out_cache_s = best(outputs_from_cache)
        out_model_s = best(outputs_from_segmenter)

        paths: dict[str, dict[str, Path]] = {}
        metrics: dict[str, dict] = {}

        def trial(name: str, source) -> None:
            paths[name] = predict_dataset(source, head, layout, split, work / name,
                                          tasks=args.tasks, batch_size=args.batch_size)
            metrics[name] = evaluate(layout, split, paths[name])

        trial_cache_s = best(lambda: trial("cache", cache))
        trial_model_s = best(lambda: trial("segmenter", model))

        same = True
        if "semantic" in args.tasks:
            pngs = sorted(Path(paths["segmenter"]["semantic"]).glob("*.png"))
            differ = sum(not filecmp.cmp(p, Path(paths["cache"]["semantic"]) / p.name,
                                         shallow=False) for p in pngs)
            same = differ == 0
            print(f"semantic PNGs that differ between the two: {differ} of {len(pngs)}")
        print(f"metrics equal: {metrics['cache'] == metrics['segmenter']} "
              f"(HM: {metrics['cache']})")

        n = cache.num_images
        print(f"\nval images: {n}; torch threads: {threads}; batch {args.batch_size}; "
              f"tasks: {', '.join(args.tasks)}")
        print(f"{'per trial':<32}{'segmenter':>12}{'cache':>12}{'ratio':>9}")
        print(f"{'outputs (+ classifier)':<32}{out_model_s:>11.2f}s{out_cache_s:>11.2f}s"
              f"{out_model_s / out_cache_s:>8.1f}x")
        print(f"{'end to end (+ inference, eval)':<32}{trial_model_s:>11.2f}s"
              f"{trial_cache_s:>11.2f}s{trial_model_s / trial_cache_s:>8.1f}x")
        saved = trial_model_s - trial_cache_s
        if saved > 0:
            print(f"one-off extraction {extract_s:.1f} s pays off after "
                  f"{extract_s / saved:.1f} trials")
        if not same and args.mask_codec == "float32":
            raise SystemExit("predictions from the cache differ from the segmenter's")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
