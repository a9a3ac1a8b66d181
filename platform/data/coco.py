"""Readers for COCO-format data on disk: instances, panoptic, COCO-Stuff semantic PNGs, captions.

The same readers serve real COCO and the synthetic benchmark (which writes the same formats).
Every reader checks its input and raises :class:`DataError` with a one-line message naming the
file. Images are visited in ascending image id; per-image data (masks, PNGs) is decoded while
iterating, one image at a time, so a reader never holds a whole dataset's masks.

- :class:`CocoInstances` wraps ``pycocotools.coco.COCO``; its records carry the masks
  (``annToMask``: polygons, RLE and uncompressed crowd RLE), category ids, crowd flags and boxes.
- :class:`CocoPanoptic` reads ``panoptic_*.json`` and the RGB-encoded PNGs and checks that the ids
  in each PNG are exactly the segments its json lists.
- :class:`CocoSemantic` reads single-channel label PNGs (COCO-Stuff: value = 0-based label,
  255 = unlabeled), optionally mapped to a split's contiguous indices.
- :func:`read_captions` reads ``captions_*.json``.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from zeroseg.platform.data.classes import Split
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.data.panoptic_png import read_panoptic_png
from zeroseg.platform.errors import DataError
from zeroseg.platform.io import read_json

log = logging.getLogger(__name__)


# -- shared ------------------------------------------------------------------------------------
def load_json(path: str | Path, what: str, required: Sequence[str] = ()) -> dict[str, Any]:
    """A COCO json object with its list fields (one-line DataErrors otherwise)."""
    return read_json(path, what, expect=dict, required=tuple(required))


@dataclass(frozen=True)
class ImageInfo:
    id: int
    file_name: str
    height: int
    width: int


def _images(path: Path, images: list[Any]) -> dict[int, ImageInfo]:
    out: dict[int, ImageInfo] = {}
    for i, im in enumerate(images):
        try:
            info = ImageInfo(int(im["id"]), str(im["file_name"]), int(im["height"]),
                             int(im["width"]))
        except (KeyError, TypeError, ValueError):
            raise DataError(
                f"{path}: images[{i}] needs integer 'id', 'height', 'width' and a 'file_name'"
            ) from None
        if info.id in out:
            raise DataError(f"{path}: duplicate image id {info.id}")
        out[info.id] = info
    return out


def _category_ids(path: Path, categories: list[Any]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for i, cat in enumerate(categories):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int):
            raise DataError(f"{path}: categories[{i}] needs an integer 'id'")
        if cat["id"] in out:
            raise DataError(f"{path}: duplicate category id {cat['id']}")
        out[cat["id"]] = cat
    return out


# -- instances ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class InstanceRecord:
    """One image's instance annotations; ``masks`` is N x H x W uint8 (empty if not decoded)."""

    image: ImageInfo
    annotation_ids: np.ndarray  # (N,) int64
    category_ids: np.ndarray  # (N,) int64
    iscrowd: np.ndarray  # (N,) bool
    boxes_xywh: np.ndarray  # (N, 4) float64, COCO [x, y, width, height]
    areas: np.ndarray  # (N,) float64
    masks: np.ndarray | None  # (N, H, W) uint8, None when iterated with masks=False

    @property
    def image_id(self) -> int:
        return self.image.id

    def __len__(self) -> int:
        return len(self.annotation_ids)

    def boxes_xyxy(self) -> np.ndarray:
        b = self.boxes_xywh.copy()
        b[:, 2:] += b[:, :2]
        return b


def segmentation_rle(segmentation: Any, height: int, width: int) -> Any:
    """A COCO annotation's ``segmentation`` (polygons, RLE or uncompressed crowd RLE) as one
    compressed RLE, as ``pycocotools.coco.COCO.annToRLE`` does, without a ``COCO`` index."""
    if isinstance(segmentation, list):  # polygons: one RLE per part, merged
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


class CocoInstances:
    """A COCO instances json, loaded with pycocotools and validated."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        data = load_json(self.path, "COCO instances json", ("images", "annotations", "categories"))
        self.images = _images(self.path, data["images"])
        self.categories = _category_ids(self.path, data["categories"])
        for i, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or not all(k in ann for k in ("id", "image_id",
                                                                        "category_id")):
                raise DataError(f"{self.path}: annotations[{i}] needs 'id', 'image_id' and "
                                "'category_id'")
            if "segmentation" not in ann:
                raise DataError(f"{self.path}: annotation {ann['id']} has no 'segmentation'")
            if ann["image_id"] not in self.images:
                raise DataError(f"{self.path}: annotation {ann['id']} refers to unknown image id "
                                f"{ann['image_id']}")
            if ann["category_id"] not in self.categories:
                raise DataError(f"{self.path}: annotation {ann['id']} refers to unknown category "
                                f"id {ann['category_id']}")
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()
        self.image_ids: list[int] = sorted(self.images)
        log.debug("%s: %d images, %d annotations", self.path, len(self.images),
                  len(data["annotations"]))

    @classmethod
    def from_layout(cls, layout: CocoLayout) -> CocoInstances:
        return cls(layout.require(layout.instances_json, "COCO instances json"))

    @property
    def dataset(self) -> dict[str, Any]:
        return self.coco.dataset

    def __len__(self) -> int:
        return len(self.image_ids)

    def annotations(self, image_id: int) -> list[dict[str, Any]]:
        """The raw annotation dicts of one image, in json order."""
        return [self.coco.anns[a] for a in self.coco.getAnnIds(imgIds=[image_id])]

    def record(self, image_id: int, *, masks: bool = True) -> InstanceRecord:
        image = self.images[image_id]
        anns = self.annotations(image_id)
        n = len(anns)
        boxes = np.zeros((n, 4), dtype=np.float64)
        areas = np.zeros(n, dtype=np.float64)
        mask_arr = np.zeros((n, image.height, image.width), dtype=np.uint8) if masks else None
        for i, ann in enumerate(anns):
            try:
                rle = segmentation_rle(ann["segmentation"], image.height, image.width)
                if mask_arr is not None:
                    mask_arr[i] = mask_utils.decode(rle)
            except Exception as e:  # pycocotools raises bare Exceptions / TypeErrors
                raise DataError(f"{self.path}: annotation {ann['id']} has an unreadable "
                                f"segmentation ({e})") from None
            bbox = ann.get("bbox")
            boxes[i] = bbox if bbox is not None and len(bbox) == 4 else mask_utils.toBbox(rle)
            areas[i] = ann["area"] if "area" in ann else float(mask_utils.area(rle))
        return InstanceRecord(
            image=image,
            annotation_ids=np.array([a["id"] for a in anns], dtype=np.int64),
            category_ids=np.array([a["category_id"] for a in anns], dtype=np.int64),
            iscrowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
            boxes_xywh=boxes, areas=areas, masks=mask_arr,
        )

    def records(self, *, masks: bool = True) -> Iterator[InstanceRecord]:
        """Per-image records in ascending image id; masks are decoded one image at a time."""
        for image_id in self.image_ids:
            yield self.record(image_id, masks=masks)

    def __iter__(self) -> Iterator[InstanceRecord]:
        return self.records()


# -- panoptic ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PanopticSegment:
    id: int
    category_id: int
    iscrowd: bool
    area: int | None
    bbox: tuple[float, ...] | None


@dataclass(frozen=True)
class PanopticRecord:
    image: ImageInfo
    png_path: Path
    segments: tuple[PanopticSegment, ...]
    ids: np.ndarray | None  # H x W int64 segment ids (0 = VOID); None if not read

    @property
    def image_id(self) -> int:
        return self.image.id


class CocoPanoptic:
    """A COCO panoptic json and its folder of RGB-encoded PNGs."""

    def __init__(self, json_path: str | Path, png_dir: str | Path):
        self.path = Path(json_path)
        self.png_dir = Path(png_dir)
        data = load_json(self.path, "COCO panoptic json", ("images", "annotations", "categories"))
        self.data = data
        self.images = _images(self.path, data["images"])
        self.categories = _category_ids(self.path, data["categories"])
        self._anns: dict[int, dict[str, Any]] = {}
        for i, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or not all(
                k in ann for k in ("image_id", "file_name", "segments_info")
            ):
                raise DataError(f"{self.path}: annotations[{i}] needs 'image_id', 'file_name' "
                                "and 'segments_info'")
            image_id = ann["image_id"]
            if image_id not in self.images:
                raise DataError(f"{self.path}: annotations[{i}] refers to unknown image id "
                                f"{image_id}")
            if image_id in self._anns:
                raise DataError(f"{self.path}: image {image_id} has two panoptic annotations")
            seen_ids: set[int] = set()
            for seg in ann["segments_info"]:
                if not isinstance(seg, dict) or "id" not in seg or "category_id" not in seg:
                    raise DataError(f"{self.path}: image {image_id}: a segment needs 'id' and "
                                    "'category_id'")
                if seg["category_id"] not in self.categories:
                    raise DataError(f"{self.path}: image {image_id} segment {seg['id']} refers "
                                    f"to unknown category id {seg['category_id']}")
                if seg["id"] in seen_ids or seg["id"] == 0:
                    raise DataError(f"{self.path}: image {image_id}: segment id {seg['id']} is "
                                    "0 or repeated")
                seen_ids.add(seg["id"])
            self._anns[image_id] = ann
        missing = sorted(set(self.images) - set(self._anns))
        if missing:
            raise DataError(f"{self.path}: {len(missing)} images have no panoptic annotation "
                            f"(first: {missing[:5]})")
        self.image_ids: list[int] = sorted(self.images)

    @classmethod
    def from_layout(cls, layout: CocoLayout) -> CocoPanoptic:
        return cls(layout.require(layout.panoptic_json, "COCO panoptic json"), layout.panoptic_pngs)

    def __len__(self) -> int:
        return len(self.image_ids)

    def annotation(self, image_id: int) -> dict[str, Any]:
        return self._anns[image_id]

    def png_path(self, image_id: int) -> Path:
        return self.png_dir / self._anns[image_id]["file_name"]

    def segments(self, image_id: int) -> tuple[PanopticSegment, ...]:
        return tuple(
            PanopticSegment(
                id=int(s["id"]), category_id=int(s["category_id"]),
                iscrowd=bool(s.get("iscrowd", 0)), area=s.get("area"),
                bbox=tuple(s["bbox"]) if s.get("bbox") is not None else None,
            )
            for s in self._anns[image_id]["segments_info"]
        )

    def read_ids(self, image_id: int) -> np.ndarray:
        """The PNG's segment-id map, checked against the json (ids and image size)."""
        image = self.images[image_id]
        png = self.png_path(image_id)
        ids = read_panoptic_png(png)
        if ids.shape != (image.height, image.width):
            raise DataError(f"{png}: panoptic PNG is {ids.shape[1]}x{ids.shape[0]}, the json "
                            f"says {image.width}x{image.height}")
        in_png = set(np.unique(ids).tolist()) - {0}
        in_json = {int(s["id"]) for s in self._anns[image_id]["segments_info"]}
        if in_png != in_json:
            raise DataError(
                f"{png}: panoptic PNG ids disagree with its json {self.path.name}: "
                f"only in PNG {sorted(in_png - in_json)}, only in json {sorted(in_json - in_png)}"
            )
        return ids

    def record(self, image_id: int, *, read_png: bool = True) -> PanopticRecord:
        return PanopticRecord(
            image=self.images[image_id], png_path=self.png_path(image_id),
            segments=self.segments(image_id),
            ids=self.read_ids(image_id) if read_png else None,
        )

    def records(self, *, read_png: bool = True) -> Iterator[PanopticRecord]:
        """Per-image records in ascending image id (PNGs decoded and checked one at a time)."""
        for image_id in self.image_ids:
            yield self.record(image_id, read_png=read_png)

    def __iter__(self) -> Iterator[PanopticRecord]:
        return self.records()


# -- semantic PNGs -----------------------------------------------------------------------------
def read_label_png(path: str | Path) -> np.ndarray:
    """A single-channel label PNG (mode L, or P whose palette index is the label) as HxW uint8."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: label PNG not found")
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode not in ("L", "P"):
                raise DataError(f"{path}: expected a single-channel label PNG (mode L or P), "
                                f"got mode {mode}")
            arr = np.array(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: not a readable PNG ({e})") from None
    return arr


@dataclass(frozen=True)
class SemanticRecord:
    image_id: int
    png_path: Path
    label: np.ndarray  # H x W; PNG values, or contiguous indices when a split maps them


class CocoSemantic:
    """COCO-Stuff-style semantic PNGs: ``<png_dir>/<image file stem>.png``, 255 = unlabeled.

    Image ids come from ``images`` (json image entries: the PNG is named after the image file);
    without them, every ``*.png`` in the folder whose stem is an integer is used with that id
    (COCO-Stuff names its PNGs by zero-padded image id).
    """

    def __init__(self, png_dir: str | Path, images: Iterable[ImageInfo] | None = None, *,
                 split: Split | None = None):
        self.png_dir = Path(png_dir)
        self._lut = split.png_lut().astype(np.uint8) if split is not None else None
        self._sizes: dict[int, tuple[int, int]] = {}
        entries: dict[int, Path] = {}
        if images is not None:
            for im in images:
                entries[im.id] = self.png_dir / f"{Path(im.file_name).stem}.png"
                self._sizes[im.id] = (im.height, im.width)
        else:
            if not self.png_dir.is_dir():
                raise DataError(f"{self.png_dir}: semantic PNG folder not found")
            for p in self.png_dir.glob("*.png"):
                if not p.stem.isdigit():
                    raise DataError(f"{p}: cannot tell the image id (name it <image id>.png or "
                                    "give the json's images)")
                if int(p.stem) in entries:
                    raise DataError(f"{p}: a second PNG for image id {int(p.stem)}")
                entries[int(p.stem)] = p
        self._paths = dict(sorted(entries.items()))
        self.image_ids: list[int] = list(self._paths)

    @classmethod
    def from_layout(cls, layout: CocoLayout, *, split: Split | None = None) -> CocoSemantic:
        """The layout's semantic PNGs, named after the images of its instances or panoptic json."""
        images = layout_images(layout)
        return cls(layout.require(layout.semantic_pngs, "semantic PNG folder"),
                   images.values() if images is not None else None, split=split)

    def __len__(self) -> int:
        return len(self.image_ids)

    def png_path(self, image_id: int) -> Path:
        return self._paths[image_id]

    def read(self, image_id: int) -> np.ndarray:
        path = self._paths[image_id]
        label = read_label_png(path)
        size = self._sizes.get(image_id)
        if size is not None and label.shape != size:
            raise DataError(f"{path}: label PNG is {label.shape[1]}x{label.shape[0]}, the json "
                            f"says {size[1]}x{size[0]}")
        return self._lut[label] if self._lut is not None else label

    def records(self) -> Iterator[SemanticRecord]:
        for image_id in self.image_ids:
            yield SemanticRecord(image_id, self._paths[image_id], self.read(image_id))

    def __iter__(self) -> Iterator[SemanticRecord]:
        return self.records()


def layout_images(layout: CocoLayout) -> dict[int, ImageInfo] | None:
    """The image entries of a layout's instances json, else its panoptic json, else None."""
    for path, what in ((layout.instances_json, "COCO instances json"),
                       (layout.panoptic_json, "COCO panoptic json")):
        if path.is_file():
            return _images(path, load_json(path, what, ("images",))["images"])
    return None


# -- captions ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaptionRecord:
    image: ImageInfo
    captions: tuple[str, ...]
    caption_ids: tuple[int, ...]

    @property
    def image_id(self) -> int:
        return self.image.id


def read_captions(path: str | Path) -> list[CaptionRecord]:
    """A COCO captions json: one record per image (ascending id), captions in json order."""
    path = Path(path)
    data = load_json(path, "COCO captions json", ("images", "annotations"))
    images = _images(path, data["images"])
    by_image: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(
            ann.get("caption"), str
        ):
            raise DataError(f"{path}: annotations[{i}] needs 'image_id' and a string 'caption'")
        if ann["image_id"] not in images:
            raise DataError(f"{path}: caption {ann.get('id', i)} refers to unknown image id "
                            f"{ann['image_id']}")
        by_image[ann["image_id"]].append((int(ann.get("id", i)), ann["caption"].strip()))
    return [
        CaptionRecord(images[i], tuple(c for _, c in by_image[i]), tuple(a for a, _ in by_image[i]))
        for i in sorted(images)
    ]
