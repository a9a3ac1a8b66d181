"""Real-format dataset trees for tests, built from the two real COCO val2017 images and their
real panoptic annotations in ``fixtures/real_samples`` (panopticapi's sample data).

Each view crops and resizes one real image (and its panoptic PNG, nearest) to a small,
non-square size -- landscape and portrait -- so that trees stay fast to train on while keeping
real pixels, real segment layouts and the real 133 panoptic categories. From the views:

- :func:`coco_panoptic_tree`: ``annotations/panoptic_{split}.json`` (133 categories) +
  ``panoptic_{split}/`` PNGs, images ``{split}/%012d.jpg``;
- :func:`coco_stuff_tree`: ``stuff_{split}/%012d.png`` COCO-Stuff label maps (things: id - 1;
  stuff by name, a merged class as its main class, e.g. tree-merged as tree; VOID: 255), no
  json at all;
- :func:`coco2014_tree`: ``annotations/instances_{split}.json`` with all 80 COCO categories,
  polygons, RLEs and a crowd RLE, images ``COCO_{split}_%012d.jpg``;
- :func:`voc_tree`: ``JPEGImages/``, ``SegmentationClass/`` (palette PNGs, 0 background, 255
  borders), ``ImageSets/Segmentation/{train,val}.txt``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

#: A copy of ``shared/reference/real_samples`` (panopticapi's sample data, its licence beside)
REAL = Path(__file__).resolve().parent / "fixtures" / "real_samples"

# (real image index, crop box as fractions (top, left, bottom, right), output (height, width))
VIEWS = {
    "train": [(0, (0.0, 0.0, 1.0, 1.0), (86, 128)), (1, (0.0, 0.0, 1.0, 1.0), (72, 128)),
              (0, (0.0, 0.3, 1.0, 0.7), (112, 64)), (1, (0.0, 0.2, 1.0, 0.6), (120, 80)),
              (0, (0.2, 0.0, 1.0, 0.8), (96, 104)), (1, (0.1, 0.3, 0.9, 1.0), (80, 96))],
    "val": [(1, (0.0, 0.0, 1.0, 1.0), (90, 160)), (0, (0.0, 0.5, 1.0, 0.9), (128, 72)),
            (0, (0.1, 0.1, 0.9, 0.9), (100, 100))],
}
VOC_NAMES = {"person": 15, "car": 7, "bus": 6, "bicycle": 2, "motorcycle": 14, "dog": 12,
             "cat": 8, "chair": 9, "bird": 3, "boat": 4, "bottle": 5, "train": 19, "cow": 10,
             "horse": 13, "sheep": 17, "airplane": 1, "couch": 18, "tv": 20,
             "potted plant": 16, "dining table": 11,
             "truck": 7}  # the samples have no VOC car: their truck stands in for it


@dataclass
class View:
    image: np.ndarray  # [H, W, 3] uint8
    ids: np.ndarray  # [H, W] panoptic segment ids (0 VOID)
    segments: list[dict]  # real segments_info entries present in the view


def _real() -> tuple[dict, list[tuple[np.ndarray, np.ndarray, dict]]]:
    data = json.loads((REAL / "panoptic_examples.json").read_text())
    out = []
    for ann in data["annotations"]:
        info = next(i for i in data["images"] if i["id"] == ann["image_id"])
        image = np.array(Image.open(REAL / "input_images" / info["file_name"]).convert("RGB"))
        rgb = np.array(Image.open(REAL / "panoptic_examples" / ann["file_name"]), dtype=np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        out.append((image, ids, ann))
    return data, out


def views(kind: str) -> list[View]:
    _, real = _real()
    result = []
    for index, (top, left, bottom, right), (h, w) in VIEWS[kind]:
        image, ids, ann = real[index]
        H, W = ids.shape
        box = (int(left * W), int(top * H), int(right * W), int(bottom * H))
        img = Image.fromarray(image).crop(box).resize((w, h), Image.BILINEAR)
        small = np.array(Image.fromarray(ids.astype(np.int32)).crop(box)
                         .resize((w, h), Image.NEAREST), dtype=np.int64)
        present = set(np.unique(small).tolist())
        segs = [s for s in ann["segments_info"] if s["id"] in present]
        result.append(View(np.array(img), small, segs))
    return result


def categories() -> list[dict]:
    return _real()[0]["categories"]


def _write_jpg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


def _bbox(mask: np.ndarray) -> list[float]:
    rows, cols = np.nonzero(mask)
    return [float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1),
            float(rows.max() - rows.min() + 1)]


def coco_panoptic_tree(root: Path, *, splits: tuple[str, str] = ("train2017", "val2017"),
                       void_categories: set[int] = frozenset(), void_in: int = 4) -> Path:
    """COCO panoptic layout; segments of ``void_categories`` are painted VOID in the first
    ``void_in`` training views (so a drop-images filter keeps them)."""
    for kind, split in zip(("train", "val"), splits, strict=True):
        images, anns = [], []
        png_dir = root / f"panoptic_{split}"
        png_dir.mkdir(parents=True, exist_ok=True)
        for k, view in enumerate(views(kind)):
            image_id = 1000 * (kind == "val") + k + 1
            name = f"{image_id:012d}"
            ids = view.ids.copy()
            segs = []
            for s in view.segments:
                if kind == "train" and k < void_in and s["category_id"] in void_categories:
                    ids[ids == s["id"]] = 0
                    continue
                m = ids == s["id"]
                segs.append({"id": s["id"], "category_id": s["category_id"],
                             "iscrowd": s.get("iscrowd", 0), "area": int(m.sum()),
                             "bbox": _bbox(m)})
            _write_jpg(root / split / f"{name}.jpg", view.image)
            rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
            Image.fromarray(rgb).save(png_dir / f"{name}.png")
            h, w = ids.shape
            images.append({"id": image_id, "file_name": f"{name}.jpg", "height": h, "width": w})
            anns.append({"image_id": image_id, "file_name": f"{name}.png", "segments_info": segs})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"panoptic_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": anns, "categories": categories()}))
    return root


def coco_stuff_tree(root: Path, *, splits: tuple[str, str] = ("train2017", "val2017")) -> Path:
    """COCO-Stuff semantic PNGs (the 171-class label space of ``coco-stuff/*``) and images."""
    from zeroseg.platform.data.registry import get_split

    stuff = get_split("coco-stuff/spnet-156-15")
    by_name = {c.name: c.png_label for c in stuff.classes}
    cats = {c["id"]: c for c in categories()}
    for kind, split in zip(("train", "val"), splits, strict=True):
        for k, view in enumerate(views(kind)):
            name = f"{1000 * (kind == 'val') + k + 1:012d}"
            label = np.full(view.ids.shape, 255, dtype=np.uint8)
            for s in view.segments:
                cat = cats[s["category_id"]]
                # merged panoptic stuff (tree-merged) as its main COCO-Stuff class (tree)
                value = (s["category_id"] - 1 if cat["isthing"] else
                         by_name.get(cat["name"], by_name.get(cat["name"].replace("-merged", ""))))
                if value is not None:
                    label[view.ids == s["id"]] = value
            _write_jpg(root / split / f"{name}.jpg", view.image)
            (root / f"stuff_{split}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(label).save(root / f"stuff_{split}" / f"{name}.png")
    return root


def coco2014_tree(root: Path, *, splits: tuple[str, str] = ("train2014", "val2014")) -> Path:
    """The 80-category COCO 2014 instances json (polygons, RLEs, a crowd RLE) and images."""
    things = [c for c in categories() if c["isthing"]]
    thing_ids = {c["id"] for c in things}
    for kind, split in zip(("train", "val"), splits, strict=True):
        images, anns = [], []
        for k, view in enumerate(views(kind)):
            image_id = 1000 * (kind == "val") + k + 1
            file_name = f"COCO_{split}_{image_id:012d}.jpg"
            _write_jpg(root / split / file_name, view.image)
            h, w = view.ids.shape
            images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
            for j, s in enumerate(s for s in view.segments if s["category_id"] in thing_ids):
                m = view.ids == s["id"]
                crowd = int(s.get("iscrowd", 0)) or int(j == 0 and k == 1)  # one crowd at least
                ann = {"id": len(anns) + 1 + 10000 * (kind == "val"), "image_id": image_id,
                       "category_id": s["category_id"], "iscrowd": crowd,
                       "area": float(m.sum()), "bbox": _bbox(m)}
                if crowd or j % 2:
                    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                    if crowd:  # crowd regions are stored uncompressed, as in COCO
                        flat = m.T.ravel().astype(np.int64)
                        change = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]]))
                        ann["segmentation"] = {"size": [h, w],
                                               "counts": np.diff(np.r_[0, change]).tolist()}
                    else:
                        ann["segmentation"] = {"size": [h, w],
                                               "counts": rle["counts"].decode("ascii")}
                else:  # polygon: the mask's bounding box outline
                    x, y, bw, bh = ann["bbox"]
                    ann["segmentation"] = [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
                anns.append(ann)
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": anns,
             "categories": [{"id": c["id"], "name": c["name"], "supercategory":
                             c.get("supercategory", "")} for c in things]}))
    return root


def voc_tree(root: Path) -> Path:
    """A VOC 2012 tree: JPEGImages, palette SegmentationClass PNGs, ImageSets."""
    cats = {c["id"]: c["name"] for c in categories()}
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:21] = np.random.default_rng(0).integers(0, 255, (21, 3))
    palette[255] = 224
    for kind in ("train", "val"):
        names = []
        for k, view in enumerate(views(kind)):
            name = f"2007_{1000 * (kind == 'val') + k + 1:06d}"
            label = np.zeros(view.ids.shape, dtype=np.uint8)
            for s in view.segments:
                value = VOC_NAMES.get(cats[s["category_id"]].replace("-merged", ""))
                if value is not None:
                    m = view.ids == s["id"]
                    label[m] = value
                    edge = m ^ np.pad(m, 1)[2:, 1:-1]  # a 1-px "difficult" border: 255
                    label[edge & m] = 255
            _write_jpg(root / "JPEGImages" / f"{name}.jpg", view.image)
            png = Image.fromarray(label, mode="P")
            png.putpalette(palette.ravel().tolist())
            (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
            png.save(root / "SegmentationClass" / f"{name}.png")
            names.append(name)
        (sets / f"{kind}.txt").write_text("\n".join(names) + "\n")
    return root
