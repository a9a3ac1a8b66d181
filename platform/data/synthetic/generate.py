"""Generate the synthetic benchmark in COCO's formats (``zeroseg data synth``).

Output (the :class:`~zeroseg.platform.data.layout.CocoLayout` contract)::

    OUT/annotations/{instances,panoptic,captions}_{train,val}.json
    OUT/annotations/classes.json
    OUT/{train,val}/<stem>.jpg           images
    OUT/panoptic_{train,val}/<stem>.png  panoptic PNGs (id = R + 256 G + 256^2 B, 0 = VOID)
    OUT/stuff_{train,val}/<stem>.png     semantic PNGs ('L', png_label, 255 = unlabeled)

Every file depends only on ``(size, seed)``: image ``i`` of a split is drawn from a generator
seeded by ``SeedSequence(seed, spawn_key=(split, i))``, the images are rendered in any number of
worker processes and merged in index order, and the json files carry no timestamps.

Which train images contain unseen classes, and which images get a crowd, is decided by a
stratified schedule (a seeded offset plus a fixed stride), so the fractions hold exactly in any
prefix of a split, even at the ``tiny`` size. On the validation split each image also features
one class taken from a seeded cycle over all classes, so every class appears there.
"""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from zeroseg.platform.data.panoptic_png import rgb2id
from zeroseg.platform.data.synthetic.captions import make_captions
from zeroseg.platform.data.synthetic.classes_file import classes_document, load_classes_json
from zeroseg.platform.data.synthetic.render import (
    Rendered,
    label_maps,
    render_scene,
    sample_scene,
    vocabulary,
)
from zeroseg.platform.data.synthetic.vocabulary import VARIANTS, synthetic_split
from zeroseg.platform.errors import ConfigError, DataError
from zeroseg.platform.io import atomic_directory, check_writable_dir, dumps_json

__all__ = ["SIZES", "SizeSpec", "generate", "load_classes_json", "SPLITS"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SizeSpec:
    train: int  # number of training images
    val: int  # number of validation images
    image_size: int  # side of the square images, pixels


SIZES: dict[str, SizeSpec] = {
    "tiny": SizeSpec(train=64, val=32, image_size=128),
    "small": SizeSpec(train=2000, val=500, image_size=128),
    "medium": SizeSpec(train=8000, val=1000, image_size=128),
    "large": SizeSpec(train=20000, val=2000, image_size=512),
}
SPLITS = ("train", "val")
SPLIT_CODES = {"train": 0, "val": 1}
#: Image ids: train images are 1..N, validation images start above this offset (unique ids).
VAL_IMAGE_ID_OFFSET = 1_000_000
#: Fraction of training images that contain at least one (test-)unseen class.
UNSEEN_IMAGE_FRACTION = 0.32
# Train images that may contain the held-out seen (validation-unseen) classes: the validation
# protocol drops images with unseen OR held-out classes, and still keeps about half the split.
VAL_UNSEEN_IMAGE_FRACTION = 0.25
#: Fraction of images (both splits) with a crowd cluster.
CROWD_IMAGE_FRACTION = 0.03
JPEG_QUALITY = 95
INFO_VERSION = "zeroseg-synthetic-1"


# -- per-image work ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    root: str  # the temporary output directory
    size: str
    seed: int
    image_size: int
    variant: str = "default"


@dataclass(frozen=True)
class _Schedule:
    unseen_offset: float
    crowd_offset: float
    val_unseen_offset: float
    featured: tuple[int, ...]  # a permutation of class indices (validation cycle)


@functools.lru_cache(maxsize=8)
def _schedule(seed: int, split: str) -> _Schedule:
    seq = np.random.SeedSequence(seed, spawn_key=(SPLIT_CODES[split],))
    words = seq.generate_state(3)
    rng = np.random.default_rng(seq)
    featured = tuple(int(i) for i in rng.permutation(len(vocabulary().classes)))
    return _Schedule(float(words[0]) / 2**32, float(words[1]) / 2**32,
                     float(words[2]) / 2**32, featured)


def _stratified(index: int, fraction: float, offset: float) -> bool:
    """True for about ``fraction`` of indices, spread evenly: exactly floor(n*f + offset) of
    the first n indices."""
    return math.floor((index + 1) * fraction + offset) > math.floor(index * fraction + offset)


def image_id(split: str, index: int) -> int:
    return index + 1 + (VAL_IMAGE_ID_OFFSET if split == "val" else 0)


def _segment_ids(rendered: Rendered) -> list[int]:
    """Unique non-zero panoptic ids, near each category's colour (readable PNGs)."""
    classes = vocabulary().classes
    used: set[int] = set()
    ids = []
    for seg in rendered.segments:
        base = np.asarray(classes[seg.class_index].extra["color"], dtype=np.int64)
        step = 0
        while True:
            rgb = (base + step * np.array([3, 5, 7])) % 256
            sid = int(rgb2id(rgb.reshape(1, 1, 3))[0, 0])
            if sid != 0 and sid not in used:
                break
            step += 1
        used.add(sid)
        ids.append(sid)
    return ids


def _bbox(mask: np.ndarray) -> list[int]:
    rows, cols = mask.any(axis=1), mask.any(axis=0)
    y0, x0 = int(rows.argmax()), int(cols.argmax())
    y1, x1 = len(rows) - int(rows[::-1].argmax()), len(cols) - int(cols[::-1].argmax())
    return [x0, y0, x1 - x0, y1 - y0]


def _id_rgb(ids: np.ndarray) -> np.ndarray:
    """Panoptic ids (< 2^24) as RGB bytes, R the lowest byte: the bytes of little-endian uint32."""
    return np.ascontiguousarray(ids.astype("<u4").view(np.uint8).reshape(*ids.shape, 4)[..., :3])


def _png_bytes(array: np.ndarray) -> bytes:
    buf = BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _render_image(job: _Job, split: str, index: int) -> dict[str, Any]:
    """Render image ``index`` of ``split``, write its three image files, return its records."""
    voc = vocabulary()
    schedule = _schedule(job.seed, split)
    image_seq, caption_seq = np.random.SeedSequence(
        job.seed, spawn_key=(SPLIT_CODES[split], index)).spawn(2)
    rng = np.random.default_rng(image_seq)
    crowd = _stratified(index, CROWD_IMAGE_FRACTION, schedule.crowd_offset)
    if split == "train":
        # Unseen and held-out classes enter only the scheduled images, each with one forced in.
        bearing = _stratified(index, UNSEEN_IMAGE_FRACTION, schedule.unseen_offset)
        bearing_val = _stratified(index, VAL_UNSEEN_IMAGE_FRACTION, schedule.val_unseen_offset)
        excluded = (frozenset() if bearing else voc.unseen) | (
            frozenset() if bearing_val else voc.val_unseen)
        forced_pool = sorted(voc.unseen) if bearing else sorted(voc.val_unseen)
        forced = (int(forced_pool[int(rng.integers(len(forced_pool)))])
                  if bearing or bearing_val else None)
        scene = sample_scene(rng, job.image_size, excluded=excluded, forced=forced, crowd=crowd,
                             variant=job.variant)
    else:
        forced = schedule.featured[index % len(schedule.featured)]
        scene = sample_scene(rng, job.image_size, excluded=frozenset(), forced=forced,
                             crowd=crowd, variant=job.variant)
    rendered = render_scene(scene, rng, job.image_size)
    seg_ids = _segment_ids(rendered)
    pan, sem = label_maps(rendered, seg_ids)

    iid = image_id(split, index)
    stem = f"{iid:012d}"
    root = Path(job.root)
    jpeg = BytesIO()
    Image.fromarray(rendered.image).save(jpeg, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    (root / split / f"{stem}.jpg").write_bytes(jpeg.getvalue())
    (root / f"panoptic_{split}" / f"{stem}.png").write_bytes(_png_bytes(_id_rgb(pan)))
    (root / f"stuff_{split}" / f"{stem}.png").write_bytes(_png_bytes(sem))

    instances: list[dict[str, Any]] = []
    segments_info: list[dict[str, Any]] = []
    things: Counter[int] = Counter()
    crowds: list[int] = []
    stuff: list[int] = []
    for seg, sid in zip(rendered.segments, seg_ids, strict=True):
        cls = voc.classes[seg.class_index]
        segments_info.append({"id": sid, "category_id": cls.id, "area": int(seg.mask.sum()),
                              "bbox": _bbox(seg.mask), "iscrowd": int(seg.iscrowd)})
        if not seg.isthing:
            stuff.append(seg.class_index)
            continue
        rle = mask_utils.encode(np.asfortranarray(seg.mask.astype(np.uint8)))
        instances.append({
            "category_id": cls.id,
            "segmentation": {"size": [int(v) for v in rle["size"]],
                             "counts": rle["counts"].decode("ascii")},
            "area": float(mask_utils.area(rle)),
            "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            "iscrowd": int(seg.iscrowd),
        })
        if seg.iscrowd:
            crowds.append(seg.class_index)
        else:
            things[seg.class_index] += 1

    extra: dict[str, Any] = {}
    if job.variant == "default":
        captions = make_captions(np.random.default_rng(caption_seq), things, crowds, stuff)
    else:
        rows = _thing_rows(rendered)
        captions = make_captions(np.random.default_rng(caption_seq), things, crowds, stuff,
                                 variant=job.variant, rows=rows)
        extra["stripes"] = _stripe_histograms(sem, split)
    return {
        **extra,
        "image": {"id": iid, "file_name": f"{stem}.jpg", "width": job.image_size,
                  "height": job.image_size},
        "png": f"{stem}.png",
        "instances": instances,
        "segments_info": segments_info,
        "captions": captions,
        "classes": sorted({voc.classes[s.class_index].id for s in rendered.segments}),
        "void_pixels": int(rendered.void.sum()),
    }


def _thing_rows(rendered: Rendered) -> dict[int, float]:
    """Thing class index -> the mean vertical centre of its segments, as a fraction of the
    image height (0 = top)."""
    rows: dict[int, list[float]] = {}
    for seg in rendered.segments:
        if seg.isthing and seg.mask.any():
            rows.setdefault(seg.class_index, []).append(
                float(np.nonzero(seg.mask)[0].mean()) / seg.mask.shape[0])
    return {c: float(np.mean(v)) for c, v in rows.items()}


#: Horizontal bands of the ground-truth stripe histograms (15: Cap2Seg's K = 3 and K = 5 are
#: sums of consecutive bands).
STRIPE_BANDS = 15


def _stripe_histograms(sem: np.ndarray, split: str) -> dict[str, list[float]]:
    """Class id -> its pixels per horizontal band (row ``r`` in band ``r * 15 // H``),
    normalised to sum 1; on the training split seen classes only (Cap2Seg's engine trains on
    seen classes; an unseen class's location is never written for training images)."""
    voc = vocabulary()
    h = sem.shape[0]
    band = np.arange(h) * STRIPE_BANDS // h
    out = {}
    for value in np.unique(sem).tolist():
        if value >= len(voc.classes):
            continue  # 255: unlabelled
        cls = voc.classes[value]
        if split == "train" and cls.unseen:
            continue
        counts = np.bincount(band, weights=(sem == value).sum(1), minlength=STRIPE_BANDS)
        out[str(cls.id)] = [round(float(v), 6) for v in counts / counts.sum()]
    return out


_WORKER_JOB: _Job | None = None


def _init_worker(job: _Job) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job


def _work(task: tuple[str, int]) -> dict[str, Any]:
    assert _WORKER_JOB is not None, "worker not initialised"
    return _render_image(_WORKER_JOB, *task)


# -- json documents ----------------------------------------------------------------------------


def _info(size: str, seed: int) -> dict[str, Any]:
    return {"description": f"zeroseg synthetic benchmark (size {size}, seed {seed})",
            "version": INFO_VERSION, "contributor": "zeroseg", "url": ""}


def _split_documents(size: str, seed: int, records: list[dict[str, Any]]
                     ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    classes = synthetic_split().classes
    info = _info(size, seed)
    images = [r["image"] for r in records]
    instances, panoptic, captions = [], [], []
    for r in records:
        iid = r["image"]["id"]
        for ann in r["instances"]:
            instances.append({"id": len(instances) + 1, "image_id": iid, **ann})
        panoptic.append({"image_id": iid, "file_name": r["png"],
                         "segments_info": r["segments_info"]})
        for text in r["captions"]:
            captions.append({"id": len(captions) + 1, "image_id": iid, "caption": text})
    thing_categories = [{"id": c.id, "name": c.name, "supercategory": c.attributes["shape"]}
                        for c in classes if c.isthing]
    panoptic_categories = [
        {"id": c.id, "name": c.name,
         "supercategory": c.attributes["shape"] if c.isthing else c.attributes["palette"],
         "isthing": int(c.isthing), "color": list(c.extra["color"])}
        for c in classes
    ]
    return (
        {"info": info, "licenses": [], "images": images, "annotations": instances,
         "categories": thing_categories},
        {"info": info, "licenses": [], "images": images, "annotations": panoptic,
         "categories": panoptic_categories},
        {"info": info, "licenses": [], "images": images, "annotations": captions},
    )


def _split_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    split = synthetic_split()
    unseen = {c.id for c in split.classes if c.unseen}
    val_unseen = {c.id for c in split.classes if c.val_unseen}
    per_class: Counter[str] = Counter()
    for r in records:
        per_class.update(split.by_id(cid).name for cid in r["classes"])
    return {
        "images": len(records),
        "instances": sum(1 for r in records for a in r["instances"] if not a["iscrowd"]),
        "crowd_instances": sum(1 for r in records for a in r["instances"] if a["iscrowd"]),
        "segments": sum(len(r["segments_info"]) for r in records),
        "captions": sum(len(r["captions"]) for r in records),
        "unseen_images": sum(1 for r in records if unseen & set(r["classes"])),
        "val_unseen_images": sum(1 for r in records if val_unseen & set(r["classes"])),
        "void_pixels": sum(r["void_pixels"] for r in records),
        "images_per_class": {c.name: per_class[c.name] for c in split.classes},
    }


# -- entry point -------------------------------------------------------------------------------


def _check_out(out: Path, overwrite: bool) -> None:
    check_writable_dir(out.parent, "synthetic benchmark")
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"{out}: output path exists and is not a directory")
    if not overwrite and any(out.iterdir()):
        raise DataError(f"{out}: output directory exists and is not empty "
                        "(pass overwrite=True / --overwrite to replace it)")


def generate(size: str, seed: int, out: str | Path, *, workers: int | None = None,
             overwrite: bool = False, progress: Callable[[int, int], None] | None = None,
             variant: str = "default") -> dict[str, Any]:
    """Write the synthetic benchmark of ``size`` (a key of :data:`SIZES`) drawn with ``seed``.

    The whole directory ``out`` is built in a temporary sibling and renamed into place, so it is
    either complete or absent. ``workers`` processes render images (default: all CPUs; 1 renders
    in this process); the files are identical for any number of workers. ``progress(done,
    total)`` is called after each image. Returns a summary: per-split counts of images,
    instances, crowd instances, panoptic segments, captions, images with unseen classes, and
    the seconds taken.

    ``variant`` ``cap2seg`` (opt-in; ``default`` writes exactly what it always wrote): shape
    placement priors, thing-stuff affinities and position / relation phrases in the captions
    (render.py, captions.py), the split ``synthetic/cap2seg`` with the ignore-pixels protocol in
    classes.json, and ``annotations/stripes_{split}.json``: per image, every class's normalised
    15-band vertical histogram (seen classes only on the training split).
    """
    if size not in SIZES:
        raise ConfigError(f"size: unknown synthetic size {size!r}; expected one of "
                          f"{', '.join(SIZES)}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed: expected a non-negative integer, got {seed!r}")
    seed = int(seed)
    if variant not in VARIANTS:
        raise ConfigError(f"variant: unknown synthetic variant {variant!r}; expected one of "
                          f"{', '.join(VARIANTS)}")
    if workers is None:
        workers = os.cpu_count() or 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers: expected a positive integer, got {workers!r}")
    spec = SIZES[size]
    out = Path(out)
    _check_out(out, overwrite)

    start = time.perf_counter()
    tasks = [(split, i) for split in SPLITS for i in range(getattr(spec, split))]
    total = len(tasks)
    workers = min(workers, total)
    with atomic_directory(out, overwrite=out.exists()) as tmp:
        for split in SPLITS:
            for folder in (split, f"panoptic_{split}", f"stuff_{split}"):
                (tmp / folder).mkdir(parents=True)
        (tmp / "annotations").mkdir()
        job = _Job(root=str(tmp), size=size, seed=seed, image_size=spec.image_size,
                   variant=variant)
        records: list[dict[str, Any]] = []
        if workers == 1:
            results = (_render_image(job, split, i) for split, i in tasks)
            records = _collect(results, total, progress)
        else:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload([__name__])
            chunk = max(1, min(32, total // (workers * 8)))
            with ctx.Pool(workers, initializer=_init_worker, initargs=(job,)) as pool:
                records = _collect(pool.imap(_work, tasks, chunksize=chunk), total, progress)

        summary: dict[str, Any] = {"size": size, "seed": seed, "image_size": spec.image_size,
                                   "workers": workers, "splits": {}}
        offset = 0
        for split in SPLITS:
            n = getattr(spec, split)
            split_records = records[offset:offset + n]
            offset += n
            docs = _split_documents(size, seed, split_records)
            for kind, doc in zip(("instances", "panoptic", "captions"), docs, strict=True):
                (tmp / "annotations" / f"{kind}_{split}.json").write_text(
                    dumps_json(doc) + "\n", encoding="utf-8")
            summary["splits"][split] = _split_summary(split_records)
            if variant != "default":
                (tmp / "annotations" / f"stripes_{split}.json").write_text(dumps_json({
                    "bands": STRIPE_BANDS, "seen_only": split == "train",
                    "images": [{"image_id": r["image"]["id"], "classes": r["stripes"]}
                               for r in split_records]}) + "\n", encoding="utf-8")
        classes = classes_document(synthetic_split(), size=size, seed=seed,
                                   image_size=spec.image_size, variant=variant)
        if variant != "default":
            summary["variant"] = variant
        (tmp / "annotations" / "classes.json").write_text(
            dumps_json(classes, indent=1) + "\n", encoding="utf-8")
    summary["seconds"] = round(time.perf_counter() - start, 3)
    summary["out"] = str(out)
    logger.info("synthetic %s (seed %d): %d images in %.1f s -> %s", size, seed, total,
                summary["seconds"], out)
    return summary


def _collect(results: Any, total: int, progress: Callable[[int, int], None] | None
             ) -> list[dict[str, Any]]:
    records = []
    for record in results:
        records.append(record)
        if progress is not None:
            progress(len(records), total)
    return records
