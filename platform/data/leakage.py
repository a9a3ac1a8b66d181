"""Keep unseen classes out of training (DESIGN.md section 3; reference PROTOCOLS.md section 2).

Two protocols, recorded on every :class:`~zeroseg.platform.data.classes.Split`:

- ``drop-images`` (PADing ZSP/ZSI, ZSI, ZS3 stage 1): an image with **any** unseen instance,
  panoptic segment (crowd included) or semantic pixel is dropped from training. The filtered
  instances/panoptic jsons keep every category, as PADing's ``get_zsp_json.py`` does. Annotations
  of categories the split does not contain (the 15 COCO classes outside ZSI 48/17) are removed
  without dropping their image.
- ``ignore-pixels`` (SPNet, ZegFormer, PADing ZSS, Cap2Seg): every image is kept; unseen pixels of
  semantic PNGs become ``IGNORE_LABEL`` (:func:`remap_semantic`, applied when the PNGs are
  loaded), unseen instance annotations are removed, and unseen panoptic segments are removed from
  the json and painted VOID (0) in rewritten PNGs.

With ``validation=True`` the split's held-out seen classes (``val_unseen``) are excluded as well,
so a model tuned on the validation split never trains on the classes it is validated on.

:func:`filter_training` ends by scanning its own output with :func:`assert_no_unseen`; outputs
are built in a temporary folder and renamed into place only when everything, the scan included,
succeeded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zeroseg.platform.data.classes import (
    IGNORE_LABEL,
    PROTOCOL_DROP_IMAGES,
    PROTOCOLS,
    ClassInfo,
    Split,
)
from zeroseg.platform.data.coco import (
    CocoInstances,
    CocoPanoptic,
    CocoSemantic,
    ImageInfo,
    load_json,
)
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.data.panoptic_png import write_panoptic_png
from zeroseg.platform.data.sources import (
    INSTANCES,
    PANOPTIC,
    SEMANTIC,
    benchmark_sources,
    list_images,
)
from zeroseg.platform.errors import ConfigError, DataError, LeakageError
from zeroseg.platform.io import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)

KEPT_IDS_FILE = "kept_image_ids.json"
RESULT_FILE = "leakage_filter.json"


# -- which classes stay out ----------------------------------------------------------------------
def excluded_classes(split: Split, validation: bool = False) -> list[ClassInfo]:
    """Classes that must not appear in training: unseen, plus ``val_unseen`` for validation."""
    if validation:
        split.validation_view()  # ConfigError if the split has no held-out seen classes
        return [c for c in split.classes if c.unseen or c.val_unseen]
    return split.unseen


def unseen_png_lut(split: Split, validation: bool = False) -> np.ndarray:
    """256-entry uint8 table: PNG value -> same value, or IGNORE_LABEL for an excluded class."""
    lut = np.arange(256, dtype=np.uint8)
    for c in excluded_classes(split, validation):
        if c.png_label is not None:
            lut[c.png_label] = IGNORE_LABEL
    return lut


def remap_semantic(label: np.ndarray, split: Split, validation: bool = False) -> np.ndarray:
    """A semantic label map (PNG values) with every unseen pixel set to IGNORE_LABEL.

    Values stay in PNG space (map to contiguous indices with ``split.png_lut()`` afterwards); the
    dtype is preserved.
    """
    label = np.asarray(label)
    if label.dtype.kind not in "ui":
        raise ValueError(f"semantic labels must be integers, got dtype {label.dtype}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError("semantic labels must lie in 0..255")
    return unseen_png_lut(split, validation).astype(label.dtype)[label]


# -- result ------------------------------------------------------------------------------------
@dataclass
class FilterResult:
    """What :func:`filter_training` removed; ``to_dict()`` is the run's leakage audit entry."""

    protocol: str
    split: str
    validation: bool
    excluded_classes: list[str]
    sources: list[str]  # inputs scanned: "instances", "panoptic", "semantic"
    images_total: int = 0
    images_kept: int = 0
    images_dropped: int = 0
    annotations_total: int = 0
    annotations_removed: int = 0  # instance annotations removed (all of a dropped image's)
    segments_total: int = 0
    segments_removed: int = 0  # panoptic segments removed
    crowd_removed: int = 0  # crowd annotations + crowd segments among the removed ones
    outside_split_removed: int = 0  # annotations of categories the split does not contain
    unseen_pixels_ignored: int = 0  # ignore-pixels: semantic pixels set to IGNORE_LABEL
    unseen_pixels_dropped: int = 0  # drop-images: unseen semantic pixels in dropped images
    kept_image_ids: list[int] = field(default_factory=list)
    # class name -> {"images", "annotations", "crowd", "segments", "pixels"} removed
    removed_per_class: dict[str, dict[str, int]] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    # left out as outside the split: "instances category 12" / "panoptic category 184" ->
    # annotations / segments, "semantic label 12" -> pixels
    outside_split: dict[str, int] = field(default_factory=dict)
    audit: dict[str, int] = field(default_factory=dict)  # what assert_no_unseen scanned
    # The filtered jsons in memory (also when nothing is written); not part of the audit.
    instances: dict[str, Any] | None = field(default=None, repr=False)
    panoptic: dict[str, Any] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("instances")
        d.pop("panoptic")
        if not d["outside_split"]:  # absent when nothing was outside (audits stay as before)
            d.pop("outside_split")
        d["removed_per_class"] = {k: dict(sorted(v.items()))
                                  for k, v in sorted(self.removed_per_class.items())}
        return d


# -- the scan ----------------------------------------------------------------------------------
JsonSource = Path | str | tuple[str, Mapping[str, Any]]


def _json_source(source: JsonSource, what: str) -> tuple[str, Mapping[str, Any]]:
    if isinstance(source, tuple):
        name, data = source
        if "annotations" not in data:
            raise DataError(f"{name}: {what} has no 'annotations'")
        return name, data
    return str(source), load_json(source, what, ("annotations",))


def _fmt_counts(counts: Mapping[str, int], unit: str = "") -> str:
    return ", ".join(f"{name} x{n}{unit}" for name, n in sorted(counts.items()))


def assert_no_unseen(
    split: Split,
    *,
    validation: bool = False,
    instances: JsonSource | None = None,
    panoptic: JsonSource | None = None,
    semantic: Iterable[tuple[str, np.ndarray]] | None = None,
) -> dict[str, int]:
    """Scan a training set and raise LeakageError if an excluded (unseen) class is still in it.

    ``instances`` / ``panoptic``: a json path, or ``(name, dict)`` for one in memory.
    ``semantic``: ``(file name, label map in PNG values)`` pairs, after any remapping.
    Returns what was scanned (counts), for the leakage audit. The error names each offending
    file, the classes and their counts.
    """
    excluded = excluded_classes(split, validation)
    names = {c.id: c.name for c in excluded}
    with_png = [c for c in excluded if c.png_label is not None]
    png_labels = np.array([c.png_label for c in with_png], dtype=np.int64)
    png_names = [c.name for c in with_png]
    problems: list[str] = []
    scanned: Counter[str] = Counter()

    if instances is not None:
        name, data = _json_source(instances, "COCO instances json")
        bad: Counter[str] = Counter()
        images: set[int] = set()
        for ann in data["annotations"]:
            scanned["annotations"] += 1
            if ann["category_id"] in names:
                bad[names[ann["category_id"]]] += 1
                images.add(ann["image_id"])
        if bad:
            problems.append(f"{name}: {sum(bad.values())} annotations of unseen classes "
                            f"({_fmt_counts(bad)}) in images {sorted(images)[:5]}")

    if panoptic is not None:
        name, data = _json_source(panoptic, "COCO panoptic json")
        bad = Counter()
        images = set()
        for ann in data["annotations"]:
            for seg in ann["segments_info"]:
                scanned["segments"] += 1
                if seg["category_id"] in names:
                    bad[names[seg["category_id"]]] += 1
                    images.add(ann["image_id"])
        if bad:
            problems.append(f"{name}: {sum(bad.values())} segments of unseen classes "
                            f"({_fmt_counts(bad)}) in images {sorted(images)[:5]}")

    if semantic is not None:
        offending: list[str] = []
        n_bad = 0
        for name, label in semantic:
            scanned["label_maps"] += 1
            if not len(png_labels):
                continue
            counts = np.bincount(np.asarray(label).ravel(), minlength=256)[png_labels]
            if counts.any():
                n_bad += 1
                if len(offending) < 3:
                    found = {png_names[i]: int(n) for i, n in enumerate(counts) if n}
                    offending.append(f"{name}: {_fmt_counts(found, ' px')}")
        if n_bad:
            problems.append(f"{n_bad} semantic label maps contain unseen pixels, e.g. "
                            + "; ".join(offending))

    if problems:
        view = " (validation)" if validation else ""
        raise LeakageError(f"unseen classes of split {split.name}{view} in training data: "
                           + "; ".join(problems))
    return dict(scanned)


# -- the filter --------------------------------------------------------------------------------
@contextlib.contextmanager
def _staging(out_dir: Path | None, overwrite: bool) -> Iterator[Path | None]:
    """A temporary sibling of ``out_dir`` that replaces it only if the block succeeds."""
    if out_dir is None:
        yield None
        return
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: output path exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"{out_dir}: output folder is not empty (pass overwrite=True)")
    with atomic_directory(out_dir, overwrite=True) as tmp:
        yield tmp


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def filter_training(
    layout: CocoLayout,
    split: Split,
    *,
    protocol: str | None = None,
    validation: bool = False,
    out_dir: Path | None = None,
    overwrite: bool = False,
    sources: Sequence[str] | None = None,
) -> FilterResult:
    """Filter a training set so that no excluded class remains, and say what was removed.

    Reads the benchmark's annotation sources (``sources``, default
    :func:`~zeroseg.platform.data.sources.benchmark_sources`: a COCO-Stuff split its semantic
    PNGs only, a COCO 2014 split its instances json only) where the layout has them.
    Annotations, segments and label values of categories the split does not contain (the
    80-category json under a 65-class split) are removed and counted in ``outside_split``,
    never fatal. ``protocol`` defaults to ``split.protocol``. With ``out_dir`` the
    filtered ``instances_<split>.json`` / ``panoptic_<split>.json`` (and, for ignore-pixels, the
    rewritten ``panoptic_<split>/`` PNG folder), ``kept_image_ids.json`` and the audit
    ``leakage_filter.json`` are written there atomically. Semantic PNGs are never rewritten:
    drop-images lists the kept images, ignore-pixels remaps at load time (:func:`remap_semantic`).
    The output is checked with :func:`assert_no_unseen` before anything is committed.
    """
    protocol = protocol or split.protocol
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    excluded = excluded_classes(split, validation)
    excluded_ids = {c.id for c in excluded}
    split_ids = {c.id for c in split.classes}
    class_names = {c.id: c.name for c in split.classes}
    excluded_png = {c.png_label: c.name for c in excluded if c.png_label is not None}
    drop = protocol == PROTOCOL_DROP_IMAGES

    wanted = tuple(sources) if sources is not None else benchmark_sources(split)
    inst = (CocoInstances(layout.instances_json)
            if INSTANCES in wanted and layout.instances_json.is_file() else None)
    pan = (CocoPanoptic.from_layout(layout)
           if PANOPTIC in wanted and layout.panoptic_json.is_file() else None)
    sem = None
    if SEMANTIC in wanted and layout.semantic_pngs.is_dir():
        images: Iterable[ImageInfo]
        if inst is not None or pan is not None:
            images = (inst or pan).images.values()  # type: ignore[union-attr]
        else:
            images = list_images(layout, (SEMANTIC,), require_images=False).values()
        sem = CocoSemantic(layout.semantic_pngs, images)
    found = [n for n, s in (("instances", inst), ("panoptic", pan), ("semantic", sem)) if s]
    if not found:
        looked = {INSTANCES: layout.instances_json, PANOPTIC: layout.panoptic_json,
                  SEMANTIC: layout.semantic_pngs}
        raise DataError(f"{layout.root}: no training annotations for split '{layout.split}' "
                        f"(benchmark {split.name} reads "
                        f"{', '.join(str(looked[w]) for w in wanted)})")
    if inst is not None and pan is not None and set(inst.images) != set(pan.images):
        raise DataError(f"{layout.panoptic_json}: its images differ from {layout.instances_json}")

    result = FilterResult(protocol=protocol, split=split.name, validation=validation,
                          excluded_classes=[c.name for c in excluded], sources=found)
    per_class: dict[str, Counter[str]] = defaultdict(Counter)
    all_ids: set[int] = set()
    for s in (inst, pan, sem):
        if s is not None:
            all_ids.update(s.image_ids)

    def category_name(data: CocoInstances | CocoPanoptic, cid: int) -> str:
        return class_names.get(cid) or str(data.categories[cid].get("name", f"category {cid}"))

    # "instances category 12" / "panoptic category 184" -> annotations / segments;
    # "semantic label 12" -> pixels
    outside: Counter[str] = Counter()
    # 1. Which images contain an excluded class (any source), and semantic pixel counts.
    reasons: dict[int, set[str]] = defaultdict(set)
    if inst is not None:
        for ann in inst.dataset["annotations"]:
            if ann["category_id"] in excluded_ids:
                reasons[ann["image_id"]].add(class_names[ann["category_id"]])
    if pan is not None:
        for image_id in pan.image_ids:
            for seg in pan.segments(image_id):
                if seg.category_id in excluded_ids:
                    reasons[image_id].add(class_names[seg.category_id])
    pixel_counts: dict[int, dict[str, int]] = {}
    if sem is not None:
        png_keys = np.array(list(excluded_png), dtype=np.int64)
        in_split = np.zeros(256, dtype=bool)
        in_split[[c.png_label for c in split.classes if c.png_label is not None]] = True
        in_split[IGNORE_LABEL] = True
        for image_id in sem.image_ids:
            histogram = np.bincount(sem.read(image_id).ravel(), minlength=256)
            for value in np.flatnonzero(histogram * ~in_split).tolist():
                outside[f"semantic label {value}"] += int(histogram[value])
            counts = histogram[png_keys]
            hits = {excluded_png[int(k)]: int(n) for k, n in zip(png_keys, counts, strict=True)
                    if n}
            if hits:
                pixel_counts[image_id] = hits
                reasons[image_id].update(hits)

    dropped = set(reasons) if drop else set()
    kept = sorted(all_ids - dropped)
    kept_set = set(kept)
    result.images_total = len(all_ids)
    result.images_kept = len(kept)
    result.images_dropped = len(dropped)
    result.kept_image_ids = kept
    for image_id in dropped:
        for name in reasons[image_id]:
            per_class[name]["images"] += 1
    for found in pixel_counts.values():
        for name, n in found.items():
            per_class[name]["pixels"] += n
            if drop:
                result.unseen_pixels_dropped += n
            else:
                result.unseen_pixels_ignored += n

    # 2. Instances: drop-images removes a dropped image's annotations; ignore-pixels removes the
    # excluded classes' annotations; both remove categories outside the split.
    if inst is not None:
        data = inst.dataset
        kept_anns = []
        for ann in data["annotations"]:
            cid = ann["category_id"]
            gone = ann["image_id"] not in kept_set or cid in excluded_ids
            if not gone and cid not in split_ids:
                result.outside_split_removed += 1
                outside[f"instances category {cid}"] += 1
                per_class[category_name(inst, cid)]["annotations"] += 1
                continue
            if gone:
                result.annotations_removed += 1
                per_class[category_name(inst, cid)]["annotations"] += 1
                if ann.get("iscrowd", 0):
                    result.crowd_removed += 1
                    per_class[category_name(inst, cid)]["crowd"] += 1
            else:
                kept_anns.append(ann)
        result.annotations_total = len(data["annotations"])
        result.instances = {
            **{k: v for k, v in data.items() if k not in ("images", "annotations")},
            "images": [im for im in data["images"] if im["id"] in kept_set],
            "annotations": kept_anns,
        }

    # 3. Panoptic: the same, per segment; ignore-pixels also paints removed segments VOID.
    repaint: dict[int, set[int]] = {}
    if pan is not None:
        anns_out = []
        for image_id in pan.image_ids:
            ann = pan.annotation(image_id)
            result.segments_total += len(ann["segments_info"])
            if image_id not in kept_set:
                removed, segs = list(ann["segments_info"]), []
            else:
                beyond = [s for s in ann["segments_info"] if s["category_id"] not in split_ids]
                for seg in beyond:
                    result.outside_split_removed += 1
                    outside[f"panoptic category {seg['category_id']}"] += 1
                removed = [s for s in ann["segments_info"] if s["category_id"] in excluded_ids]
                segs = [s for s in ann["segments_info"]
                        if s["category_id"] not in excluded_ids and s["category_id"] in split_ids]
                anns_out.append({**ann, "segments_info": segs})
                if removed or beyond:
                    repaint[image_id] = {int(s["id"]) for s in removed + beyond}
            for s in removed:
                name = category_name(pan, s["category_id"])
                result.segments_removed += 1
                per_class[name]["segments"] += 1
                if s.get("iscrowd", 0):
                    result.crowd_removed += 1
                    per_class[name]["crowd"] += 1
        result.panoptic = {
            **{k: v for k, v in pan.data.items() if k not in ("images", "annotations")},
            "images": [im for im in pan.data["images"] if im["id"] in kept_set],
            "annotations": anns_out,
        }
    result.removed_per_class = {k: dict(v) for k, v in per_class.items()}
    result.outside_split = dict(sorted(outside.items()))
    if outside:
        log.info("%s: %d annotations / label values of categories outside %s left out (%s)",
                 layout.root, sum(outside.values()), split.name,
                 ", ".join(f"{k}: {v}" for k, v in list(result.outside_split.items())[:5]))

    # 4. Write (staged), check the output, commit.
    remap = not drop
    with _staging(out_dir, overwrite) as tmp:
        final = Path(out_dir) if out_dir is not None else None
        inst_src: JsonSource | None = None
        pan_src: JsonSource | None = None
        if result.instances is not None:
            inst_src = (f"filtered {layout.instances_json}", result.instances)
        if result.panoptic is not None:
            pan_src = (f"filtered {layout.panoptic_json}", result.panoptic)
        if tmp is not None and final is not None:
            if result.instances is not None:
                inst_src = tmp / layout.instances_json.name
                atomic_write_json(inst_src, result.instances)
                result.outputs["instances"] = str(final / layout.instances_json.name)
            if result.panoptic is not None and pan is not None:
                pan_src = tmp / layout.panoptic_json.name
                if repaint:
                    png_out = tmp / layout.panoptic_pngs.name
                    png_out.mkdir()
                    for image_id in pan.image_ids:
                        src, dst = pan.png_path(image_id), png_out / pan.png_path(image_id).name
                        if image_id in repaint:
                            ids = pan.read_ids(image_id)
                            ids[np.isin(ids, list(repaint[image_id]))] = 0
                            write_panoptic_png(dst, ids)
                        else:
                            _link_or_copy(src, dst)
                    result.outputs["panoptic_pngs"] = str(final / layout.panoptic_pngs.name)
                atomic_write_json(pan_src, result.panoptic)
                result.outputs["panoptic"] = str(final / layout.panoptic_json.name)
            atomic_write_json(tmp / KEPT_IDS_FILE, kept)
            result.outputs["kept_image_ids"] = str(final / KEPT_IDS_FILE)
        elif repaint:
            log.info("%d panoptic PNGs would need unseen segments painted VOID; pass out_dir to "
                     "write them", len(repaint))

        semantic_scan = None
        if sem is not None and excluded_png:
            semantic_scan = (
                (str(sem.png_path(i)),
                 remap_semantic(sem.read(i), split, validation) if remap else sem.read(i))
                for i in sem.image_ids if i in kept_set
            )
        result.audit = assert_no_unseen(split, validation=validation, instances=inst_src,
                                        panoptic=pan_src, semantic=semantic_scan)
        if tmp is not None and final is not None:
            result.outputs["result"] = str(final / RESULT_FILE)
            atomic_write_json(tmp / RESULT_FILE, result.to_dict(), indent=1)
    log.info("%s on %s (%s%s): kept %d of %d images, removed %d annotations, %d segments, "
             "%d unseen pixels ignored", protocol, layout.root, split.name,
             ", validation" if validation else "", result.images_kept, result.images_total,
             result.annotations_removed, result.segments_removed, result.unseen_pixels_ignored)
    return result


# -- the evaluation split seen through the validation view --------------------------------------
VALIDATION_EVAL_STAMP = "zeroseg_validation_view.json"


def validation_eval_dataset(layout: CocoLayout, split: Split, out_root: Path) -> CocoLayout:
    """The evaluation images of ``layout`` as the validation protocol sees them.

    On the validation protocol the held-out seen classes play "unseen" and the test split's
    unseen classes must not count at all (DESIGN.md section 3). This writes, under ``out_root``,
    a COCO-layout copy of the split in which the test unseen classes are erased -- their
    instance annotations removed, their panoptic segments painted VOID, their semantic pixels
    set to IGNORE_LABEL, their categories dropped from the jsons -- so that predictions there
    are neither rewarded nor penalised (SPNet's and Cap2Seg's ``val_cls`` protocol on the
    validation images). Images are linked, not copied. The folder is built atomically and
    reused while its stamp matches ``split`` and the source annotation files; the result is
    checked by :func:`assert_no_unseen` (no test unseen class left).
    """
    import hashlib
    import json

    split.validation_view()  # ConfigError when the split has no held-out seen classes
    sources = [p for p in (layout.instances_json, layout.panoptic_json, layout.image_set)
               if p is not None and p.is_file()]
    digest = hashlib.sha256()
    for p in sources:
        digest.update(p.name.encode() + b"\0" + p.read_bytes())
    digest.update(json.dumps([[c.id, c.name, c.unseen, c.val_unseen] for c in split.classes])
                  .encode())
    stamp = {"format": 1, "split": split.name, "source": str(layout.root),
             "data_split": layout.split, "sha256": digest.hexdigest()}
    out_root = Path(out_root)
    target = CocoLayout(out_root, layout.split)
    stamp_path = out_root / VALIDATION_EVAL_STAMP
    if stamp_path.is_file():
        try:
            if json.loads(stamp_path.read_text()) == stamp:
                return target
        except (OSError, ValueError):
            pass
        log.warning("%s: stale validation-view dataset, rebuilding", out_root)
    unseen_ids = {c.id for c in split.unseen}
    unseen_png = {c.png_label for c in split.unseen if c.png_label is not None}
    with atomic_directory(out_root, overwrite=True) as tmp:
        annotations = tmp / "annotations"
        result = filter_training(layout, split, protocol="ignore-pixels", validation=False,
                                 out_dir=annotations)
        for name in (KEPT_IDS_FILE, RESULT_FILE):
            (annotations / name).unlink(missing_ok=True)
        for path in annotations.glob("*.json"):
            data = json.loads(path.read_text())
            data["categories"] = [c for c in data.get("categories", [])
                                  if c.get("id") not in unseen_ids]
            atomic_write_json(path, data)
        repainted = annotations / layout.panoptic_pngs.name
        if repainted.is_dir():
            os.replace(repainted, tmp / layout.panoptic_pngs.name)
        elif layout.panoptic_pngs.is_dir():
            os.symlink(layout.panoptic_pngs.resolve(), tmp / layout.panoptic_pngs.name)
        os.symlink(layout.images.resolve(), tmp / layout.split)
        if layout.semantic_pngs.is_dir():
            out_sem = tmp / f"stuff_{layout.split}"
            out_sem.mkdir()
            lut = np.arange(256, dtype=np.uint8)
            for value in unseen_png:
                lut[value] = IGNORE_LABEL
            from PIL import Image

            if layout.image_set is not None:  # a VOC tree: this split's images only
                listed = list_images(layout, (SEMANTIC,), require_images=False)
                pngs = [layout.semantic_pngs / f"{Path(i.file_name).stem}.png"
                        for i in listed.values()]
                # the copy is a COCO layout: its images are listed in image_info_{split}.json
                atomic_write_json(annotations / layout.image_info_json.name, {"images": [
                    {"id": i.id, "file_name": i.file_name, "height": i.height,
                     "width": i.width} for i in listed.values()]})
            else:
                pngs = sorted(layout.semantic_pngs.glob("*.png"))
            for png in pngs:
                with Image.open(png) as im:
                    labels = np.asarray(im)
                Image.fromarray(lut[labels]).save(out_sem / png.name)
        if layout.classes_json.is_file():
            shutil.copy2(layout.classes_json, annotations / layout.classes_json.name)
        atomic_write_json(tmp / VALIDATION_EVAL_STAMP, stamp, indent=1)
    log.info("validation view of %s/%s: %d images, test unseen classes erased (%d segments, "
             "%d annotations) -> %s", layout.root, layout.split, result.images_total,
             result.segments_removed, result.annotations_removed, out_root)
    return target
