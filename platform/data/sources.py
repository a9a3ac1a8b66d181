"""What a benchmark reads: its annotation sources, its images, and per-image training targets.

Each benchmark is annotated in one format, and its readers open only that one (a COCO-Stuff run
never parses the 448 MB instances json next to its PNGs):

=====================  ==============  ====================================================
benchmark              source          files (per data split, e.g. ``train2017``)
=====================  ==============  ====================================================
coco-panoptic (ZSP)    ``panoptic``    ``annotations/panoptic_{split}.json`` + ``panoptic_{split}/``
coco-stuff (ZSS)       ``semantic``    ``stuff_{split}/*.png`` (COCO-Stuff labels, 255 unlabeled)
coco2014 (ZSI / ZSD)   ``instances``   ``annotations/instances_{split}.json``
voc12, pascal-context  ``semantic``    the VOC tree: ``SegmentationClass*/``, ``ImageSets``
synthetic (3 tasks)    all three       as the synthetic benchmark writes them
=====================  ==============  ====================================================

The first source of :func:`benchmark_sources` gives the segmenter's training targets
(:class:`TargetReader`): panoptic segments, instance masks or one mask per class of a semantic
label map -- what Mask2Former trains on for that task. Crowd segments and crowd instances are no
targets (Mask2Former's dataset mappers drop them; COCOeval ignores them). Categories outside the
benchmark's split are no targets either and are counted (:attr:`TargetReader.outside`), never
fatal: the 80-category COCO 2014 json under a 65-class split, for instance.

Images are listed (:func:`list_images`) from the benchmark's own source: the instances or
panoptic json, else a COCO ``image_info_{split}.json``, else the VOC image set, else the
semantic PNG folder (ids from the file names, sizes from the PNG headers).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from zeroseg.platform.data.classes import IGNORE_LABEL, Split
from zeroseg.platform.data.coco import (
    CocoInstances,
    CocoPanoptic,
    ImageInfo,
    _images,
    load_json,
    read_label_png,
)
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.data.voc import read_image_set
from zeroseg.platform.errors import DataError

log = logging.getLogger(__name__)

PANOPTIC, SEMANTIC, INSTANCES = "panoptic", "semantic", "instances"
SOURCES = (PANOPTIC, SEMANTIC, INSTANCES)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


TASK_SOURCE = {"panoptic": PANOPTIC, "instance": INSTANCES, "semantic": SEMANTIC}


def benchmark_sources(split: Split) -> tuple[str, ...]:
    """The annotation sources of ``split``'s benchmark; the first gives training targets.

    A paper benchmark has one task and reads that task's annotations only; a split with several
    tasks (the synthetic benchmark, which ships all three formats) reads all of them, panoptic
    first."""
    if len(split.tasks) == 1:
        return (TASK_SOURCE[split.tasks[0]],)
    return (PANOPTIC, INSTANCES, SEMANTIC)


def source_files(layout: CocoLayout, source: str) -> list[tuple[Path, str]]:
    """The files one source needs, with what each is (for one-line errors)."""
    if source == PANOPTIC:
        return [(layout.panoptic_json, "COCO panoptic json"),
                (layout.panoptic_pngs, "panoptic PNG folder")]
    if source == INSTANCES:
        return [(layout.instances_json, "COCO instances json")]
    return [(layout.semantic_pngs, "semantic label PNG folder")]


def require_sources(layout: CocoLayout, split: Split, what: str) -> None:
    """A one-line DataError naming the first file of the benchmark's sources that is missing,
    and the images folder."""
    for source in benchmark_sources(split):
        for path, kind in source_files(layout, source):
            if not path.exists():
                raise DataError(f"{path}: {kind} not found; {split.name} ({what}) reads its "
                                f"{source} annotations there (dataset root {layout.root}, split "
                                f"{layout.split})")
    if not layout.images.is_dir():
        raise DataError(f"{layout.images}: image folder not found (dataset root {layout.root}, "
                        f"split {layout.split})")


#: How many images :func:`check_dataset` opens to compare their size with the annotation.
SIZE_SAMPLE = 16


def check_dataset(layout: CocoLayout, split: Split, what: str) -> dict[int, ImageInfo]:
    """Before any training: the benchmark's files are there (:func:`require_sources`), its json
    is of the right task (a panoptic json has ``segments_info``, an instances json
    ``segmentation``s), every listed image is in the image folder (a json of another year or
    split names files that are not), and the first :data:`SIZE_SAMPLE` images have the size their
    annotation says. Each problem is one DataError naming the file and what was expected.
    Returns the images."""
    require_sources(layout, split, what)
    sources = benchmark_sources(split)
    expected = {PANOPTIC: (layout.panoptic_json, "segments_info", "COCO panoptic json"),
                INSTANCES: (layout.instances_json, "segmentation", "COCO instances json")}
    for source in sources:
        if source not in expected:
            continue
        path, key, kind = expected[source]
        data = load_json(path, kind, ("images", "annotations", "categories"))
        first = next((a for a in data["annotations"] if isinstance(a, dict)), None)
        if first is not None and key not in first:
            other = "instances" if source == PANOPTIC else "panoptic"
            raise DataError(f"{path}: annotations have no '{key}': expected a {kind}, this looks "
                            f"like a {other} json")
    images = list_images(layout, sources)
    with os.scandir(layout.images) as entries:
        present = {e.name for e in entries}
    missing = [info.file_name for info in images.values() if info.file_name not in present]
    if missing:
        raise DataError(f"{layout.images / missing[0]}: image not found ({len(missing)} of "
                        f"{len(images)} images of split '{layout.split}' missing; is the "
                        f"annotation of another year or split?)")
    for info in list(images.values())[:SIZE_SAMPLE]:
        path = layout.images / info.file_name
        try:
            with Image.open(path) as im:
                width, height = im.size
        except (OSError, SyntaxError) as e:
            raise DataError(f"{path}: not a readable image ({e})") from None
        if (height, width) != (info.height, info.width):
            raise DataError(f"{path}: image is {width}x{height}, its annotation says "
                            f"{info.width}x{info.height}")
    return images


# -- images ----------------------------------------------------------------------------------------
def _find_image(folder: Path, stem: str) -> str | None:
    for suffix in IMAGE_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return f"{stem}{suffix}"
    return None


def voc_image_id(stem: str) -> int:
    """A VOC image name as an integer id: ``2007_000032`` -> 2007000032 (digits only)."""
    digits = stem.replace("_", "")
    if not digits.isdigit():
        raise DataError(f"{stem}: expected a VOC image name of digits and '_' (e.g. 2007_000032)")
    return int(digits)


def _png_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
    except FileNotFoundError:
        raise DataError(f"{path}: label PNG not found") from None
    except (OSError, SyntaxError) as e:
        raise DataError(f"{path}: not a readable PNG ({e})") from None
    return height, width


def list_images(layout: CocoLayout, sources: Sequence[str] = SOURCES, *,
                require_images: bool = True) -> dict[int, ImageInfo]:
    """The images of ``layout``, from the first of these that exists among ``sources``: the
    instances json, the panoptic json, then (no json annotation source) ``image_info_{split}
    .json``, the VOC image set, the semantic PNG folder. Listed from labels, an image must
    exist in the image folder unless ``require_images`` is False (the leakage filter reads
    labels only; the image is then assumed to be ``<stem>.jpg``)."""
    for source, path, what in ((INSTANCES, layout.instances_json, "COCO instances json"),
                               (PANOPTIC, layout.panoptic_json, "COCO panoptic json")):
        if source in sources and path.is_file():
            return _images(path, load_json(path, what, ("images",))["images"])
    if layout.image_info_json.is_file():
        path = layout.image_info_json
        return _images(path, load_json(path, "COCO image info json", ("images",))["images"])
    if SEMANTIC not in sources:
        raise DataError(f"{layout.annotations}: no annotation json of {list(sources)} for split "
                        f"'{layout.split}' (needed to list its images)")
    if layout.image_set is not None:
        stems = read_image_set(layout.image_set)
        to_id = voc_image_id
    else:
        folder = layout.require(layout.semantic_pngs, "semantic label PNG folder")
        stems = sorted(p.stem for p in folder.glob("*.png"))
        for stem in stems:
            if not stem.isdigit():
                raise DataError(f"{folder / stem}.png: cannot tell the image id (name the PNGs "
                                f"<image id>.png, or list the images in {layout.image_info_json})")
        to_id = int
    out: dict[int, ImageInfo] = {}
    for stem in stems:
        file_name = _find_image(layout.images, stem)
        if file_name is None and not require_images:
            file_name = f"{stem}.jpg"
        if file_name is None:
            raise DataError(f"{layout.images / stem}.jpg: image of label "
                            f"{layout.semantic_pngs / stem}.png not found")
        height, width = _png_size(layout.semantic_pngs / f"{stem}.png")
        image_id = to_id(stem)
        if image_id in out:
            raise DataError(f"{layout.semantic_pngs / stem}.png: a second image with id "
                            f"{image_id}")
        out[image_id] = ImageInfo(image_id, file_name, height, width)
    if not out:
        raise DataError(f"{layout.semantic_pngs}: no label PNGs for split '{layout.split}'")
    return dict(sorted(out.items()))


# -- training targets ------------------------------------------------------------------------------
class TargetReader(Protocol):
    """Per-image training targets of one annotation source."""

    source: str
    path: Path  # the annotation file or folder (for messages)
    images: Mapping[int, ImageInfo]
    categories: set[int]  # the category ids the annotation defines
    outside: Counter[str]  # left out as outside the split so far ("panoptic category 184")

    def targets(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(masks [N, H, W] bool, category ids [N] int64) of one image, crowd left out."""
        ...


class PanopticTargets:
    """Non-crowd panoptic segments (``split``: None takes every category of the json)."""

    source = PANOPTIC

    def __init__(self, layout: CocoLayout, split: Split | None):
        self.panoptic = CocoPanoptic.from_layout(layout)
        self.path = self.panoptic.path
        self.images = self.panoptic.images
        self.categories = set(self.panoptic.categories)
        self._known = self.categories if split is None else {c.id for c in split.classes}
        self.outside: Counter[str] = Counter()

    def targets(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        ids = self.panoptic.read_ids(image_id)
        masks, cats = [], []
        for seg in self.panoptic.segments(image_id):
            if seg.category_id not in self._known:
                self.outside[f"panoptic category {seg.category_id}"] += 1
                continue
            if seg.iscrowd:
                continue
            masks.append(ids == seg.id)
            cats.append(seg.category_id)
        return _stack(masks, cats, ids.shape)


class InstanceTargets:
    """Non-crowd instance masks (polygons and RLE decoded by pycocotools)."""

    source = INSTANCES

    def __init__(self, layout: CocoLayout, split: Split | None):
        self.instances = CocoInstances(layout.require(layout.instances_json,
                                                      "COCO instances json"))
        self.path = self.instances.path
        self.images = self.instances.images
        self.categories = set(self.instances.categories)
        self._known = self.categories if split is None else {c.id for c in split.classes}
        self.outside: Counter[str] = Counter()

    def targets(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        record = self.instances.record(image_id)
        keep = []
        for i, cid in enumerate(record.category_ids.tolist()):
            if cid not in self._known:
                self.outside[f"instances category {cid}"] += 1
            elif not record.iscrowd[i]:
                keep.append(i)
        masks = record.masks[keep].astype(bool) if record.masks is not None else None
        info = record.image
        if masks is None or not keep:
            return _stack([], [], (info.height, info.width))
        return masks, record.category_ids[keep].astype(np.int64)


class SemanticTargets:
    """One mask per class present in a semantic label map (255 and values of no class of the
    split are unlabeled: in no mask)."""

    source = SEMANTIC

    def __init__(self, layout: CocoLayout, split: Split,
                 images: Mapping[int, ImageInfo] | None = None):
        self.layout = layout
        self.path = layout.require(layout.semantic_pngs, "semantic label PNG folder")
        self.images = dict(images) if images is not None else list_images(layout, (SEMANTIC,))
        self._category = np.full(256, -1, dtype=np.int64)
        for c in split.classes:
            if c.png_label is not None:
                self._category[c.png_label] = c.id
        self.categories = {c.id for c in split.classes if c.png_label is not None}
        self.outside: Counter[str] = Counter()

    def label_map(self, image_id: int) -> np.ndarray:
        info = self.images[image_id]
        path = self.path / f"{Path(info.file_name).stem}.png"
        label = read_label_png(path)
        if label.shape != (info.height, info.width):
            raise DataError(f"{path}: label PNG is {label.shape[1]}x{label.shape[0]}, its image "
                            f"listing says {info.width}x{info.height}")
        return label

    def targets(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        label = self.label_map(image_id)
        values = np.flatnonzero(np.bincount(label.ravel(), minlength=256))
        masks, cats = [], []
        for v in values.tolist():
            if v == IGNORE_LABEL:
                continue
            cid = int(self._category[v])
            if cid < 0:
                self.outside[f"semantic label {v}"] += 1  # no class of the split: unlabeled
                continue
            masks.append(label == v)
            cats.append(cid)
        return _stack(masks, cats, label.shape)


def _stack(masks: list[np.ndarray], cats: list[int], shape: tuple[int, ...]
           ) -> tuple[np.ndarray, np.ndarray]:
    if not masks:
        return np.zeros((0, *shape[:2]), dtype=bool), np.zeros(0, dtype=np.int64)
    return np.stack(masks), np.asarray(cats, dtype=np.int64)


def target_reader(layout: CocoLayout, split: Split) -> TargetReader:
    """The training targets of ``split``'s benchmark (its first source) on ``layout``."""
    source = benchmark_sources(split)[0]
    if source == PANOPTIC:
        return PanopticTargets(layout, split)
    if source == INSTANCES:
        return InstanceTargets(layout, split)
    return SemanticTargets(layout, split)


def describe_outside(reader: TargetReader, split: Split) -> dict[str, Any]:
    """What a reader skipped as outside the split (for the leakage audit)."""
    return {"source": reader.source, "outside_split": dict(sorted(reader.outside.items())),
            "count": int(sum(reader.outside.values())), "split": split.name}
