"""The main job on the embedded synthetic benchmark (``zeroseg demo``, run by ``make run``).

What it runs today, end to end, through the same code a real COCO run uses:

1. the synthetic benchmark (generated once per size/seed, reused after);
2. the protocol's leakage filter on the training split, for the test split (unseen classes out)
   and the validation split (held-out seen classes out as well), with counts;
3. class embeddings from the attribute provider (cached), with each unseen class's nearest seen
   class;
4. evaluation of the three tasks on the validation images, seen / unseen / HM, GZSL, of a
   *reference prediction*: the ground-truth masks labelled by a classifier that knows only the
   seen classes (each unseen class is named as its nearest seen class in embedding space). That is
   the best a seen-only classifier can do with perfect masks: the bias towards seen classes that
   zero-shot methods exist to fix, measured exactly.

Training stages (segmenter, generators, sweeps) slot in between steps 3 and 4 as they land.
Everything is written under ``OUT`` atomically; ``OUT/results.json`` gathers the figures.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zeroseg.platform.data.classes import IGNORE_LABEL, Split
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.io import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)

EVAL_SPLIT = "val"


def _stage(title: str) -> None:
    print(f"\n== {title}", flush=True)


def ensure_dataset(root: Path, size: str, seed: int, workers: int | None, quiet: bool) -> Path:
    """Generate the synthetic benchmark into ``root`` unless the same size/seed is already there."""
    from zeroseg.platform.data.synthetic.generate import SIZES, generate
    from zeroseg.platform.progress import progress_bar

    stamp = root / "zeroseg_synth.json"
    if stamp.is_file():
        recorded = json.loads(stamp.read_text())
        if recorded.get("size") == size and recorded.get("seed") == seed:
            print(f"reusing {root} (synthetic '{size}', seed {seed})")
            return root
    spec = SIZES[size] if size in SIZES else None
    total = spec.train + spec.val if spec else 0
    with progress_bar(f"synth {size}", total, enabled=not quiet) as advance:
        summary = generate(size, seed, root, workers=workers, overwrite=True, progress=advance)
    atomic_write_json(stamp, {"size": size, "seed": seed, "summary": summary}, indent=2)
    tr, va = summary["splits"]["train"], summary["splits"]["val"]
    print(f"generated {tr['images']} train / {va['images']} val images "
          f"({summary['image_size']} px) in {summary['seconds']:.1f} s")
    return root


def nearest_seen(split: Split, embeddings: np.ndarray) -> dict[int, int]:
    """Category id of each class -> the id of the most similar *seen* class of the same kind
    (thing or stuff) by cosine similarity; seen classes map to themselves."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    mapping: dict[int, int] = {}
    for c in split.classes:
        if not c.unseen:
            mapping[c.id] = c.id
            continue
        candidates = [s for s in split.seen if s.isthing == c.isthing]
        sims = [float(unit[c.index] @ unit[s.index]) for s in candidates]
        mapping[c.id] = candidates[int(np.argmax(sims))].id
    return mapping


def write_reference_predictions(layout: CocoLayout, split: Split, relabel: dict[int, int],
                                out: Path) -> dict[str, Path]:
    """Ground-truth masks relabelled through ``relabel``, in the three COCO result formats."""
    by_id = {c.id: c for c in split.classes}
    png_relabel = np.arange(256, dtype=np.uint8)
    for cid, target in relabel.items():
        if by_id[cid].png_label is not None:
            png_relabel[by_id[cid].png_label] = by_id[target].png_label
    png_relabel[IGNORE_LABEL] = IGNORE_LABEL

    with atomic_directory(out, overwrite=True) as tmp:
        semantic = tmp / "semantic"
        semantic.mkdir()
        for png in sorted(layout.semantic_pngs.glob("*.png")):
            with Image.open(png) as im:
                labels = np.asarray(im)
            Image.fromarray(png_relabel[labels]).save(semantic / png.name)

        panoptic = tmp / "panoptic"
        panoptic.mkdir()
        gt = json.loads(layout.panoptic_json.read_text())
        annotations = []
        for ann in gt["annotations"]:
            src = layout.panoptic_pngs / ann["file_name"]
            (panoptic / ann["file_name"]).write_bytes(src.read_bytes())
            annotations.append({
                "image_id": ann["image_id"], "file_name": ann["file_name"],
                "segments_info": [{"id": s["id"], "category_id": relabel[s["category_id"]]}
                                  for s in ann["segments_info"]],
            })
        (panoptic / "predictions.json").write_text(json.dumps({"annotations": annotations}))

        instances = json.loads(layout.instances_json.read_text())
        results = [
            {"image_id": a["image_id"], "category_id": relabel[a["category_id"]],
             "segmentation": a["segmentation"], "bbox": a["bbox"], "score": 1.0}
            for a in instances["annotations"] if not a.get("iscrowd", 0)
        ]
        (tmp / "instances_results.json").write_text(json.dumps(results))
    return {"semantic": out / "semantic", "panoptic": out / "panoptic",
            "instance": out / "instances_results.json"}


def run_demo(out: str | Path, *, size: str = "small", seed: int = 0, workers: int | None = None,
             quiet: bool = False) -> dict[str, Any]:
    from zeroseg.platform.data.leakage import filter_training
    from zeroseg.platform.data.synthetic.generate import load_classes_json
    from zeroseg.platform.embeddings import compute_class_embeddings
    from zeroseg.platform.evaluation import (
        evaluate_instance,
        evaluate_panoptic,
        evaluate_semantic,
    )

    out = Path(out)
    started = time.perf_counter()
    results: dict[str, Any] = {"size": size, "seed": seed}

    _stage(f"1/4 synthetic benchmark '{size}' (seed {seed})")
    data = ensure_dataset(out / "data", size, seed, workers, quiet)
    split = load_classes_json(CocoLayout(data, "train").classes_json)
    print(f"split {split.name}: {split.num_classes} classes, {len(split.seen)} seen, "
          f"{len(split.unseen)} unseen ({', '.join(c.name for c in split.unseen)})")

    _stage(f"2/4 leakage filter on the training split ({split.protocol})")
    audit: dict[str, Any] = {}
    for view, validation in (("test", False), ("validation", True)):
        res = filter_training(CocoLayout(data, "train"), split, validation=validation,
                              out_dir=out / "filtered" / view, overwrite=True)
        d = res.to_dict()
        d.pop("kept_image_ids", None)
        audit[view] = d
        print(f"{view:>10}: kept {res.images_kept}/{res.images_total} images, removed "
              f"{res.annotations_removed} instances ({res.crowd_removed} crowd) and "
              f"{res.segments_removed} panoptic segments of {len(res.excluded_classes)} "
              f"excluded classes; checked: no excluded class left")
    results["leakage"] = audit

    _stage("3/4 class embeddings (attributes provider)")
    emb = compute_class_embeddings(split, {"provider": "attributes"}, out / "cache" / "embeddings")
    print(f"{emb.matrix.shape[0]} x {emb.matrix.shape[1]} ({emb.cache_status})")
    relabel = nearest_seen(split, emb.matrix)
    for c in split.unseen:
        print(f"  unseen {c.name!r} -> nearest seen {split.by_id(relabel[c.id]).name!r}")

    _stage("4/4 evaluation on val: seen-only reference prediction (perfect masks, "
           "unseen named as nearest seen class)")
    layout = CocoLayout(data, EVAL_SPLIT)
    preds = write_reference_predictions(layout, split, relabel, out / "predictions" / "reference")
    summary_rows = []
    results["metrics"] = {}
    for task, fn in (("semantic", evaluate_semantic), ("instance", evaluate_instance),
                     ("panoptic", evaluate_panoptic)):
        result = fn(layout, split, preds[task], "gzsl")
        results["metrics"][task] = result.to_json()
        for metric in result.metrics:
            summary_rows.append((task, metric, result.seen.get(metric), result.unseen.get(metric),
                                 result.hm.get(metric)))
    print(format_summary(summary_rows))
    results["seconds"] = time.perf_counter() - started
    atomic_write_json(out / "results.json", results, indent=2)
    print(f"\nresults: {out / 'results.json'}  ({results['seconds']:.0f} s)")
    return results


def format_summary(rows: list[tuple[str, str, float | None, float | None, float | None]]) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:6.1f}"

    lines = [f"{'task':<9} {'metric':<16} {'seen':>6} {'unseen':>6} {'HM':>6}"]
    lines += [f"{t:<9} {m:<16} {pct(s)} {pct(u)} {pct(h)}" for t, m, s, u, h in rows]
    return "\n".join(lines)
