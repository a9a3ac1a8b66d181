"""Benchmark the evaluation metrics on the synthetic benchmark's validation split.

Builds (or reuses) the synthetic dataset, derives predictions by perturbing the GT (shifted and
eroded / dilated masks, swapped classes, dropped segments, spurious detections, random scores),
then prints:

- PQ throughput (images/s), in-process and with the default number of processes, and
  panopticapi's ``pq_compute_single_core`` on the same files when it is installed (numbers
  checked equal); then the in-memory path (what runs and trials use), alternating round by
  round with panopticapi: min and median of each, and the ratios;
- mIoU throughput (images/s);
- instance mAP wall time, ours (hotcoco backend, end to end from the json files) against
  pycocotools' COCOeval run as ZSI runs it, the ratio, and a check that every per-class number
  is equal.

Usage: python benches/bench_eval.py [--size small] [--seed 0] [--data DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def build_dataset(size: str, seed: int, data: Path | None) -> Path:
    """Generate the synthetic benchmark (or reuse ``data`` when it already holds one)."""
    if data is not None and (data / "annotations" / "classes.json").is_file():
        print(f"reusing {data}")
        return data
    from zeroseg.platform.data.synthetic.generate import generate  # may land late: import lazily

    out = data if data is not None else Path(tempfile.mkdtemp(prefix="zeroseg-bench-")) / size
    t0 = time.perf_counter()
    generate(size, seed, out)
    print(f"generated synthetic {size} (seed {seed}) in {time.perf_counter() - t0:.1f} s -> {out}")
    return out


def load_split(root: Path):
    from zeroseg.platform.data.synthetic.generate import load_classes_json

    return load_classes_json(root / "annotations" / "classes.json")


# -- perturbations ----------------------------------------------------------------------------

def shift(a: np.ndarray, dy: int, dx: int, fill: int) -> np.ndarray:
    out = np.full_like(a, fill)
    h, w = a.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = a[ys, xs]
    return out


def erode(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        out &= shift(mask, dy, dx, 0)
    return out


def dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        out |= shift(mask, dy, dx, 0)
    return out


def make_semantic_predictions(root: Path, split, out: Path, rng: np.random.Generator) -> None:
    out.mkdir(parents=True, exist_ok=True)
    labels = np.array([c.png_label for c in split.classes], dtype=np.uint8)
    for path in sorted((root / "stuff_val").glob("*.png")):
        gt = np.asarray(Image.open(path))
        pred = shift(gt, int(rng.integers(-2, 3)), int(rng.integers(-2, 3)), 255)
        for value in np.unique(gt):
            if value != 255 and rng.random() < 0.15:  # swap a class
                pred[pred == value] = rng.choice(labels)
        noise = rng.random(gt.shape) < 0.02
        pred[noise] = rng.choice(labels, size=int(noise.sum()))
        Image.fromarray(pred, mode="L").save(out / path.name)


def make_panoptic_predictions(root: Path, split, out: Path, rng: np.random.Generator) -> None:
    from zeroseg.platform.data.panoptic_png import read_panoptic_png, write_panoptic_png

    out.mkdir(parents=True, exist_ok=True)
    cat_ids = [c.id for c in split.classes]
    doc = json.loads((root / "annotations" / "panoptic_val.json").read_text())
    anns = []
    for ann in doc["annotations"]:
        gt = read_panoptic_png(root / "panoptic_val" / ann["file_name"])
        pred = np.zeros_like(gt)
        infos = []
        next_id = 1
        for s in ann["segments_info"]:
            mask = gt == s["id"]
            r = rng.random()
            if r < 0.1:
                continue  # dropped: VOID
            mask = erode(mask) if r < 0.3 else dilate(mask) if r < 0.5 else mask
            mask = shift(mask, int(rng.integers(-1, 2)), int(rng.integers(-1, 2)), 0)
            pred[mask] = next_id
            cid = s["category_id"] if rng.random() > 0.1 else int(rng.choice(cat_ids))
            infos.append({"id": next_id, "category_id": cid})
            next_id += 1
        present = set(np.unique(pred).tolist())
        infos = [i for i in infos if i["id"] in present]
        write_panoptic_png(out / ann["file_name"], pred)
        anns.append({"image_id": ann["image_id"], "file_name": ann["file_name"],
                     "segments_info": infos})
    (out / "predictions.json").write_text(json.dumps({"annotations": anns}))


def make_instance_results(root: Path, split, out: Path, rng: np.random.Generator) -> None:
    from pycocotools import mask as mask_utils

    cat_ids = [c.id for c in split.classes if c.isthing]
    doc = json.loads((root / "annotations" / "instances_val.json").read_text())
    sizes = {img["id"]: (img["height"], img["width"]) for img in doc["images"]}
    results = []

    def add(image_id: int, cid: int, mask: np.ndarray) -> None:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        results.append({"image_id": image_id, "category_id": cid,
                        "segmentation": {"size": list(mask.shape),
                                         "counts": rle["counts"].decode()},
                        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                        "score": float(np.round(rng.random(), 3))})

    for ann in doc["annotations"]:
        h, w = sizes[ann["image_id"]]
        seg = ann["segmentation"]
        rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg, list) or isinstance(
            seg.get("counts"), list) else seg
        if isinstance(rle, list):
            rle = mask_utils.merge(rle)
        mask = mask_utils.decode(rle).astype(bool)
        if rng.random() < 0.1:
            continue
        mask = shift(mask, int(rng.integers(-3, 4)), int(rng.integers(-3, 4)), 0)
        mask = erode(mask) if rng.random() < 0.3 else mask
        cid = ann["category_id"] if rng.random() > 0.1 else int(rng.choice(cat_ids))
        add(ann["image_id"], cid, mask)
        if rng.random() < 0.2:  # duplicate
            add(ann["image_id"], cid, mask)
    for image_id, (h, w) in sizes.items():  # spurious detections
        for _ in range(int(rng.integers(0, 6))):
            mask = np.zeros((h, w), dtype=bool)
            y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
            mask[y:y + int(rng.integers(4, 30)), x:x + int(rng.integers(4, 30))] = True
            add(image_id, int(rng.choice(cat_ids)), mask)
    out.write_text(json.dumps(results))


# -- timing -----------------------------------------------------------------------------------

def best_of(repeat: int, fn):
    times, value = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return min(times), value


def pycocotools_instance(gt_json: Path, results_json: Path) -> dict:
    """pycocotools COCOeval as the ZSI code runs it (4 area ranges), per class as ZSI reads it."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_json))
        dets = coco.loadRes(str(results_json))
        ev = COCOeval(coco, dets, "segm")
        ev.params.iouThrs = np.linspace(0.4, 0.6, 3)
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
    out = {}
    for k, cid in enumerate(ev.params.catIds):
        vals = {}
        for suffix, t in (("40", 0), ("50", 1), ("60", 2)):
            p = ev.eval["precision"][t, :, k, 0, -1]
            p = p[p > -1]
            vals[f"ap{suffix}"] = float(np.mean(p)) if p.size else None
            r = ev.eval["recall"][t, k, 0, -1]
            vals[f"recall{suffix}"] = float(r) if r > -1 else None
        out[cid] = vals
    return out


def in_memory_pq(layout, split, pred_dir: Path):
    """A function scoring the predictions of ``pred_dir`` in memory, as CachedEvaluation does:
    the GT is read and prepared before (not timed), the predictions are decoded before and
    renumbered 1..P as zeroseg's inference numbers them (the same segments, the same PQ)."""
    from zeroseg.platform.evaluation import PanopticEvaluator
    from zeroseg.platform.evaluation.panoptic import BATCH_IMAGES, read_segment_ids

    gt_doc = json.loads(layout.panoptic_json.read_text())
    pred_doc = json.loads((pred_dir / "predictions.json").read_text())
    preds = {a["image_id"]: a for a in pred_doc["annotations"]}
    categories = [c["id"] for c in gt_doc["categories"]]
    prepare = PanopticEvaluator(split, "gzsl", categories=categories)
    items = []
    for ann in gt_doc["annotations"]:
        gt = prepare.ground_truth(read_segment_ids(layout.panoptic_pngs / ann["file_name"]),
                                  ann["segments_info"])
        pred = preds[ann["image_id"]]
        # zeroseg's inference numbers its segments 1..P in segments_info order: so do these
        ids = read_segment_ids(pred_dir / pred["file_name"])
        lut = {0: 0, **{s["id"]: k + 1 for k, s in enumerate(pred["segments_info"])}}
        values, inverse = np.unique(ids, return_inverse=True)
        ids = np.array([lut[int(v)] for v in values], dtype=np.int32)[inverse].reshape(ids.shape)
        segments = [dict(s, id=k + 1) for k, s in enumerate(pred["segments_info"])]
        items.append((gt, ids, segments))

    def run():
        evaluator = PanopticEvaluator(split, "gzsl", categories=categories)
        for start in range(0, len(items), BATCH_IMAGES):  # as CachedEvaluation feeds it
            evaluator.process_many([(gt, ids, segments, "image")
                                    for gt, ids, segments in items[start:start + BATCH_IMAGES]])
        return evaluator.evaluate()

    return run


def panopticapi_reference(root: Path, pred_dir: Path):
    try:
        from panopticapi.evaluation import pq_compute_single_core
    except ImportError:
        return None
    gt = json.loads((root / "annotations" / "panoptic_val.json").read_text())
    pred = {a["image_id"]: a for a in json.loads(
        (pred_dir / "predictions.json").read_text())["annotations"]}
    pairs = [(a, copy.deepcopy(pred[a["image_id"]])) for a in gt["annotations"]]
    categories = {c["id"]: c for c in gt["categories"]}
    with contextlib.redirect_stdout(io.StringIO()):
        return pq_compute_single_core(0, pairs, str(root / "panoptic_val"), str(pred_dir),
                                      categories)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None,
                        help="dataset folder to reuse or create (default: a temporary folder)")
    parser.add_argument("--repeat", type=int, default=3, help="timings: best of N runs")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = parser.parse_args(argv)

    from zeroseg.platform.data.layout import CocoLayout
    from zeroseg.platform.evaluation import (
        evaluate_instance,
        evaluate_panoptic,
        evaluate_semantic,
    )
    from zeroseg.platform.evaluation._parallel import choose_workers

    root = build_dataset(args.size, args.seed, args.data)
    split = load_split(root)
    layout = CocoLayout(root, "val")
    work = Path(tempfile.mkdtemp(prefix="zeroseg-bench-pred-"))
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    make_semantic_predictions(root, split, work / "semantic", rng)
    make_panoptic_predictions(root, split, work / "panoptic", rng)
    make_instance_results(root, split, work / "instances.json", rng)
    n_images = len(list((root / "stuff_val").glob("*.png")))
    print(f"predictions for {n_images} validation images made in "
          f"{time.perf_counter() - t0:.1f} s")
    ok = True

    # PQ
    with Image.open(next((root / "stuff_val").glob("*.png"))) as first:
        pixels = first.size[0] * first.size[1]
    default_workers = choose_workers(n_images, None, pixels)
    cpus = os.cpu_count() or 1
    t_pq, pq = best_of(args.repeat, lambda: evaluate_panoptic(
        layout, split, work / "panoptic", workers=1))
    t_pq_par, pq_par = best_of(args.repeat, lambda: evaluate_panoptic(
        layout, split, work / "panoptic", workers=cpus))
    print(f"PQ:   {n_images / t_pq:8.1f} images/s in-process ({t_pq:.3f} s); "
          f"{n_images / t_pq_par:8.1f} images/s with {cpus} processes ({t_pq_par:.3f} s); "
          f"workers=None picks {default_workers} for {n_images} images of {pixels} pixels")
    print(f"      seen PQ {100 * pq.seen['pq']:.2f}  unseen PQ {100 * pq.unseen['pq']:.2f}  "
          f"HM {100 * pq.hm['pq']:.2f}")
    ok &= pq.details == pq_par.details
    ref = panopticapi_reference(root, work / "panoptic")  # also imports it: not timed
    run_mem = in_memory_pq(layout, split, work / "panoptic")
    # Side by side: panopticapi and the in-memory path alternate, `repeat` rounds.
    api_times, mem_times, pq_mem = [], [], None
    for _ in range(args.repeat):
        if ref is not None:
            api_times.append(best_of(1, lambda: panopticapi_reference(root, work / "panoptic"))[0])
        t, pq_mem = best_of(1, run_mem)
        mem_times.append(t)
    if ref is None:
        print("      panopticapi not installed: no reference timing")
    else:
        t_api = min(api_times)
        same = all(
            (pq.details[c.name]["tp"], pq.details[c.name]["fp"], pq.details[c.name]["fn"])
            == (ref.pq_per_cat[c.id].tp, ref.pq_per_cat[c.id].fp, ref.pq_per_cat[c.id].fn)
            and abs(pq.details[c.name]["iou_sum"] - ref.pq_per_cat[c.id].iou) < 1e-9
            for c in split.classes)
        ok &= same
        print(f"      panopticapi pq_compute_single_core: {n_images / t_api:8.1f} images/s "
              f"({t_api:.3f} s min, {statistics.median(api_times):.3f} s median of "
              f"{args.repeat}); ours in-process is {t_api / t_pq:.1f}x faster; equal counts "
              f"and IoU sums: {same}")

    # PQ in memory: what runs and trials do (GT prepared once, predictions never on disk)
    t_mem = min(mem_times)
    ok &= pq_mem.details == pq.details
    line = (f"      in memory (GT prepared once, predictions not read from files): "
            f"{n_images / t_mem:8.1f} images/s ({t_mem:.3f} s min, "
            f"{statistics.median(mem_times):.3f} s median); equal to the files: "
            f"{pq_mem.details == pq.details}")
    if ref is not None:
        rounds = [a / m for a, m in zip(api_times, mem_times, strict=True)]
        line += (f"; {t_api / t_mem:.1f}x panopticapi (min / min; per round, alternating: min "
                 f"{min(rounds):.1f}x, median {statistics.median(rounds):.1f}x)")
    print(line)

    # mIoU
    t_sem, sem = best_of(args.repeat, lambda: evaluate_semantic(
        layout, split, work / "semantic", workers=1))
    t_sem_par, sem_par = best_of(args.repeat, lambda: evaluate_semantic(
        layout, split, work / "semantic", workers=cpus))
    ok &= sem.details == sem_par.details
    print(f"mIoU: {n_images / t_sem:8.1f} images/s in-process ({t_sem:.3f} s); "
          f"{n_images / t_sem_par:8.1f} images/s with {cpus} processes ({t_sem_par:.3f} s)")
    print(f"      seen mIoU {100 * sem.seen['iou']:.2f}  unseen mIoU {100 * sem.unseen['iou']:.2f}"
          f"  HM {100 * sem.hm['iou']:.2f}")

    # instance mAP
    results_json = work / "instances.json"
    n_dets = len(json.loads(results_json.read_text()))
    t_ours, ours = best_of(args.repeat, lambda: evaluate_instance(
        layout, split, results_json, backend="hotcoco"))
    t_ours_py, ours_py = best_of(1, lambda: evaluate_instance(
        layout, split, results_json, backend="pycocotools"))
    t_ref, ref_inst = best_of(args.repeat, lambda: pycocotools_instance(
        layout.instances_json, results_json))
    by_id = {c.id: c.name for c in split.classes}
    equal = all(ours.per_class[by_id[cid]] == vals for cid, vals in ref_inst.items())
    equal_py = ours_py.per_class == ours.per_class
    ok &= equal and equal_py
    print(f"mAP:  {n_dets} detections; ours (hotcoco) {t_ours:.3f} s, pycocotools COCOeval "
          f"{t_ref:.3f} s -> {t_ref / t_ours:.1f}x faster; our pycocotools backend "
          f"{t_ours_py:.3f} s")
    print(f"      per-class AP/recall equal to pycocotools: {equal} (pycocotools backend: "
          f"{equal_py})")
    print(f"      seen mAP50 {100 * ours.seen['ap50']:.2f}  unseen mAP50 "
          f"{100 * ours.unseen['ap50']:.2f}  HM {100 * ours.hm['ap50']:.2f}; seen Recall@100 "
          f"{100 * ours.seen['recall50']:.2f}  unseen {100 * ours.unseen['recall50']:.2f}")

    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
        if args.data is None:
            shutil.rmtree(root.parent, ignore_errors=True)
    print("all checks passed" if ok else "CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
