"""COCO / COCO-Stuff / VOC readers on small fixtures written in the real on-disk formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from zeroseg.platform.data.classes import IGNORE_LABEL, PROTOCOL_IGNORE_PIXELS, ClassInfo, Split
from zeroseg.platform.data.coco import (
    CocoInstances,
    CocoPanoptic,
    CocoSemantic,
    read_captions,
    read_label_png,
)
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.data.voc import VocSegmentation, read_image_set, read_voc_label
from zeroseg.platform.errors import DataError

H, W = 6, 8


# -- fixture writers (independent of the readers under test) -----------------------------------
def write_json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def box_mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: run lengths over the column-major pixels, starting with zeros."""
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


POLYGON_MASK = box_mask(1, 4, 2, 6)  # the polygon below rasterises to rows 1-3, columns 2-5
RLE_MASK = box_mask(0, 2, 0, 3)
CROWD_MASK = box_mask(3, 6, 4, 8)
CATEGORIES = [{"id": 1, "name": "cat", "supercategory": "animal"},
              {"id": 7, "name": "dog", "supercategory": "animal"}]


def instances_json(path: Path) -> Path:
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": H, "width": W} for i in (3, 1, 2)]
    anns = [
        {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 12.0,
         "bbox": [2, 1, 4, 3], "segmentation": [[2, 1, 6, 1, 6, 4, 2, 4]]},
        {"id": 11, "image_id": 1, "category_id": 7, "iscrowd": 0,
         "segmentation": compressed_rle(RLE_MASK)},  # no bbox/area: computed from the mask
        {"id": 12, "image_id": 3, "category_id": 7, "iscrowd": 1, "area": 12.0,
         "bbox": [4, 3, 4, 3], "segmentation": uncompressed_rle(CROWD_MASK)},
    ]
    return write_json(path, {"images": images, "annotations": anns, "categories": CATEGORIES})


def write_rgb_ids(path: Path, ids: np.ndarray) -> None:
    rgb = np.stack([ids % 256, (ids // 256) % 256, ids // 65536], axis=-1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb, mode="RGB").save(path)


def panoptic_fixture(root: Path) -> tuple[Path, Path, dict[int, np.ndarray]]:
    png_dir = root / "panoptic_train"
    maps = {5: np.zeros((H, W), np.int64), 4: np.zeros((H, W), np.int64)}
    maps[5][:3] = 1
    maps[5][3:, :4] = 300  # needs the G channel
    maps[5][3:, 4:] = 70000  # needs the B channel
    maps[4][:, :2] = 2  # the rest is VOID (0)
    segs = {5: [(1, 1, 0), (300, 7, 0), (70000, 7, 1)], 4: [(2, 1, 0)]}
    for image_id, ids in maps.items():
        write_rgb_ids(png_dir / f"{image_id:012d}.png", ids)
    data = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": H, "width": W} for i in maps],
        "annotations": [
            {"image_id": i, "file_name": f"{i:012d}.png",
             "segments_info": [{"id": s, "category_id": c, "iscrowd": k,
                                "area": int((maps[i] == s).sum()), "bbox": [0, 0, 1, 1]}
                               for s, c, k in segs[i]]}
            for i in maps
        ],
        "categories": [{**c, "isthing": 1} for c in CATEGORIES],
    }
    return write_json(root / "annotations" / "panoptic_train.json", data), png_dir, maps


def write_label_png(path: Path, label: np.ndarray, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(label.astype(np.uint8), mode="L")
    if mode == "P":
        im = im.convert("P")
        # A VOC-like palette: colours are unrelated to the indices, which are the labels.
        im.putpalette([(i * 37) % 256 for i in range(256 * 3)])
    elif mode == "RGB":
        im = im.convert("RGB")
    im.save(path)


# -- COCO instances -----------------------------------------------------------------------------
def test_instances_round_trip(tmp_path: Path) -> None:
    coco = CocoInstances(instances_json(tmp_path / "instances_train.json"))
    assert coco.image_ids == [1, 2, 3] and len(coco) == 3
    records = list(coco)
    assert [r.image_id for r in records] == [1, 2, 3]
    r1, r2, r3 = records
    assert r1.annotation_ids.tolist() == [10, 11]
    assert r1.category_ids.tolist() == [1, 7] and r1.iscrowd.tolist() == [False, False]
    assert r1.masks.shape == (2, H, W) and r1.masks.dtype == np.uint8
    np.testing.assert_array_equal(r1.masks[0], POLYGON_MASK)
    np.testing.assert_array_equal(r1.masks[1], RLE_MASK)
    np.testing.assert_array_equal(r1.boxes_xywh, [[2, 1, 4, 3], [0, 0, 3, 2]])
    np.testing.assert_array_equal(r1.boxes_xyxy(), [[2, 1, 6, 4], [0, 0, 3, 2]])
    assert r1.areas.tolist() == [12.0, 6.0]
    assert len(r2) == 0 and r2.masks.shape == (0, H, W)
    assert r3.iscrowd.tolist() == [True]
    np.testing.assert_array_equal(r3.masks[0], CROWD_MASK)
    assert next(coco.records(masks=False)).masks is None


def test_instances_from_layout(tmp_path: Path) -> None:
    layout = CocoLayout(tmp_path, "train")
    with pytest.raises(DataError, match="instances_train.json"):
        CocoInstances.from_layout(layout)
    instances_json(layout.instances_json)
    assert CocoInstances.from_layout(layout).image_ids == [1, 2, 3]


def _bad_instances(tmp_path: Path, edit) -> Path:
    path = instances_json(tmp_path / "instances_bad.json")
    data = json.loads(path.read_text())
    edit(data)
    return write_json(path, data)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("categories"), "has no 'categories'"),
        (lambda d: d.pop("images"), "has no 'images'"),
        (lambda d: d.pop("annotations"), "has no 'annotations'"),
        (lambda d: d["annotations"][0].update(image_id=99), "unknown image id 99"),
        (lambda d: d["annotations"][1].update(category_id=42), "unknown category id 42"),
        (lambda d: d["images"].append(dict(d["images"][0])), "duplicate image id 3"),
    ],
)
def test_instances_bad_input(tmp_path: Path, edit, message: str) -> None:
    path = _bad_instances(tmp_path, edit)
    with pytest.raises(DataError, match=message) as err:
        CocoInstances(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_instances_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "instances_train.json"
    path.write_text('{"images": [}')
    with pytest.raises(DataError, match="malformed JSON") as err:
        CocoInstances(path)
    assert str(path) in str(err.value)
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="JSON object"):
        CocoInstances(path)


def test_instances_unreadable_segmentation(tmp_path: Path) -> None:
    path = _bad_instances(tmp_path, lambda d: d["annotations"][0].update(segmentation="oops"))
    coco = CocoInstances(path)
    with pytest.raises(DataError, match="annotation 10") as err:
        list(coco)
    assert str(path) in str(err.value)


# -- COCO panoptic ------------------------------------------------------------------------------
def test_panoptic_round_trip(tmp_path: Path) -> None:
    json_path, png_dir, maps = panoptic_fixture(tmp_path)
    pan = CocoPanoptic(json_path, png_dir)
    records = list(pan)
    assert [r.image_id for r in records] == [4, 5]
    for r in records:
        np.testing.assert_array_equal(r.ids, maps[r.image_id])
        assert r.png_path == png_dir / f"{r.image_id:012d}.png"
    segs = records[1].segments
    assert [(s.id, s.category_id, s.iscrowd) for s in segs] == [(1, 1, False), (300, 7, False),
                                                                (70000, 7, True)]
    assert segs[1].area == 12
    layout = CocoLayout(tmp_path, "train")
    assert CocoPanoptic.from_layout(layout).png_dir == png_dir
    assert next(pan.records(read_png=False)).ids is None


def test_panoptic_missing_png(tmp_path: Path) -> None:
    json_path, png_dir, _ = panoptic_fixture(tmp_path)
    (png_dir / "000000000005.png").unlink()
    pan = CocoPanoptic(json_path, png_dir)
    with pytest.raises(DataError, match="000000000005.png"):
        list(pan)


def test_panoptic_png_ids_disagree_with_json(tmp_path: Path) -> None:
    json_path, png_dir, maps = panoptic_fixture(tmp_path)
    ids = maps[4].copy()
    ids[0, 7] = 9  # a segment the json does not list
    write_rgb_ids(png_dir / "000000000004.png", ids)
    with pytest.raises(DataError, match="ids disagree with its json") as err:
        CocoPanoptic(json_path, png_dir).read_ids(4)
    assert "000000000004.png" in str(err.value) and "[9]" in str(err.value)
    # ... and the other way round: a json segment missing from the PNG.
    data = json.loads(json_path.read_text())
    ann4 = next(a for a in data["annotations"] if a["image_id"] == 4)
    ann4["segments_info"].append({"id": 77, "category_id": 1})
    write_json(json_path, data)
    write_rgb_ids(png_dir / "000000000004.png", maps[4])
    with pytest.raises(DataError, match=r"only in json \[77\]"):
        CocoPanoptic(json_path, png_dir).read_ids(4)


def test_panoptic_bad_json(tmp_path: Path) -> None:
    json_path, png_dir, _ = panoptic_fixture(tmp_path)
    data = json.loads(json_path.read_text())
    data["annotations"][1]["segments_info"][0]["category_id"] = 3
    write_json(json_path, data)
    with pytest.raises(DataError, match="unknown category id 3") as err:
        CocoPanoptic(json_path, png_dir)
    assert str(json_path) in str(err.value)
    data["annotations"].pop()
    data["annotations"][0]["segments_info"][0]["category_id"] = 1
    write_json(json_path, data)
    with pytest.raises(DataError, match="no panoptic annotation"):
        CocoPanoptic(json_path, png_dir)


def test_panoptic_png_size_mismatch(tmp_path: Path) -> None:
    json_path, png_dir, maps = panoptic_fixture(tmp_path)
    write_rgb_ids(png_dir / "000000000004.png", maps[4][:, :5])
    with pytest.raises(DataError, match="json says 8x6"):
        CocoPanoptic(json_path, png_dir).read_ids(4)


# -- semantic PNGs ------------------------------------------------------------------------------
def small_split() -> Split:
    classes = (
        ClassInfo(index=0, id=1, name="cat", isthing=True, unseen=False, png_label=0),
        ClassInfo(index=1, id=8, name="dog", isthing=True, unseen=True, png_label=7),
        ClassInfo(index=2, id=21, name="sky", isthing=False, unseen=False, val_unseen=True,
                  png_label=20),
    )
    return Split(name="test/small", dataset="test", tasks=("semantic",),
                 protocol=PROTOCOL_IGNORE_PIXELS, classes=classes)


def test_semantic_round_trip_and_lut(tmp_path: Path) -> None:
    png_dir = tmp_path / "stuff_train"
    labels = {12: np.array([[0, 7, 255], [20, 20, 3]]), 2: np.array([[7, 7, 7], [0, 0, 0]])}
    for image_id, label in labels.items():
        write_label_png(png_dir / f"{image_id:012d}.png", label)
    sem = CocoSemantic(png_dir)
    assert sem.image_ids == [2, 12]
    records = list(sem)
    np.testing.assert_array_equal(records[1].label, labels[12])
    assert records[1].label.dtype == np.uint8
    mapped = CocoSemantic(png_dir, split=small_split()).read(12)
    np.testing.assert_array_equal(mapped, [[0, 1, IGNORE_LABEL], [2, 2, IGNORE_LABEL]])


def test_semantic_from_layout_names_pngs_after_images(tmp_path: Path) -> None:
    layout = CocoLayout(tmp_path, "train")
    instances_json(layout.instances_json)  # images 1, 2, 3 named 0000000000NN.jpg, 6x8
    for image_id in (1, 2, 3):
        write_label_png(layout.semantic_pngs / f"{image_id:012d}.png",
                        np.full((H, W), image_id))
    sem = CocoSemantic.from_layout(layout)
    assert [int(r.label[0, 0]) for r in sem] == [1, 2, 3]
    (layout.semantic_pngs / "000000000002.png").unlink()
    with pytest.raises(DataError, match="000000000002.png"):
        list(CocoSemantic.from_layout(layout))
    write_label_png(layout.semantic_pngs / "000000000002.png", np.zeros((H, 3)))
    with pytest.raises(DataError, match="json says 8x6"):
        CocoSemantic.from_layout(layout).read(2)


def test_semantic_rejects_rgb_and_garbage(tmp_path: Path) -> None:
    rgb = tmp_path / "rgb.png"
    write_label_png(rgb, np.zeros((2, 2)), mode="RGB")
    with pytest.raises(DataError, match="mode RGB") as err:
        read_label_png(rgb)
    assert str(rgb) in str(err.value)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not a png")
    with pytest.raises(DataError, match="junk.png: not a readable PNG"):
        read_label_png(junk)
    (tmp_path / "pngs").mkdir()
    write_label_png(tmp_path / "pngs" / "cat.png", np.zeros((2, 2)))
    with pytest.raises(DataError, match="cat.png"):
        CocoSemantic(tmp_path / "pngs")


# -- captions -----------------------------------------------------------------------------------
def test_captions_round_trip_and_errors(tmp_path: Path) -> None:
    data = {
        "images": [{"id": 9, "file_name": "9.jpg", "height": H, "width": W},
                   {"id": 4, "file_name": "4.jpg", "height": H, "width": W}],
        "annotations": [{"id": 1, "image_id": 9, "caption": "A cat on grass. "},
                        {"id": 2, "image_id": 4, "caption": "two dogs"},
                        {"id": 3, "image_id": 9, "caption": "a sleepy cat"}],
    }
    path = write_json(tmp_path / "captions_train.json", data)
    records = read_captions(path)
    assert [r.image_id for r in records] == [4, 9]
    assert records[1].captions == ("A cat on grass.", "a sleepy cat")
    assert records[1].caption_ids == (1, 3)
    data["annotations"].append({"id": 5, "image_id": 6, "caption": "x"})
    write_json(path, data)
    with pytest.raises(DataError, match="unknown image id 6") as err:
        read_captions(path)
    assert str(path) in str(err.value)
    data["annotations"][-1] = {"id": 5, "image_id": 4}
    write_json(path, data)
    with pytest.raises(DataError, match="string 'caption'"):
        read_captions(path)
    with pytest.raises(DataError, match="captions_val.json: COCO captions json not found"):
        read_captions(tmp_path / "captions_val.json")


# -- VOC 2012 -----------------------------------------------------------------------------------
def voc_tree(root: Path) -> dict[str, np.ndarray]:
    labels = {
        "2008_000002": np.array([[0, 0, 15], [255, 15, 15]]),
        "2007_000032": np.array([[1, 1, 255], [0, 20, 20]]),
        "2009_000001": np.array([[0, 0, 0], [0, 0, 0]]),
    }
    for image_id, label in labels.items():
        write_label_png(root / "SegmentationClass" / f"{image_id}.png", label, mode="P")
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (3, 2), (90, 120, 30)).save(root / "JPEGImages" / f"{image_id}.jpg")
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2008_000002\n2007_000032\n")
    (sets / "val.txt").write_text("2009_000001\n\n")
    return labels


def test_voc_round_trip(tmp_path: Path) -> None:
    labels = voc_tree(tmp_path)
    with Image.open(tmp_path / "SegmentationClass" / "2008_000002.png") as im:
        assert im.mode == "P"  # the fixture really is a palette PNG
    train = VocSegmentation(tmp_path, "train")
    assert train.image_ids == ["2007_000032", "2008_000002"] and len(train) == 2
    for record in train:
        np.testing.assert_array_equal(record.label, labels[record.image_id])
        assert record.image_path.is_file()
    assert VocSegmentation(tmp_path, "val").image_ids == ["2009_000001"]
    # SPNet-style split: background 0 is no class -> ignore; label 15 -> index 14.
    classes = tuple(ClassInfo(index=i - 1, id=i, name=f"c{i}", isthing=True, unseen=i > 15,
                              png_label=i) for i in range(1, 21))
    split = Split(name="t", dataset="voc12", tasks=("semantic",),
                  protocol=PROTOCOL_IGNORE_PIXELS, classes=classes)
    mapped = VocSegmentation(tmp_path, "train", split=split).read("2008_000002")
    np.testing.assert_array_equal(mapped, [[255, 255, 14], [255, 14, 14]])


def test_voc_bad_inputs(tmp_path: Path) -> None:
    voc_tree(tmp_path)
    with pytest.raises(DataError, match="trainval.txt: VOC image set not found"):
        VocSegmentation(tmp_path, "trainval")
    dup = tmp_path / "ImageSets" / "Segmentation" / "dup.txt"
    dup.write_text("a\na\n")
    with pytest.raises(DataError, match="dup.txt: an image id is listed twice"):
        read_image_set(dup)
    rgb = tmp_path / "SegmentationClass" / "2008_000002.png"
    write_label_png(rgb, np.zeros((2, 3)), mode="RGB")
    with pytest.raises(DataError, match="got RGB") as err:
        list(VocSegmentation(tmp_path, "train"))
    assert "2008_000002.png" in str(err.value)
    bad = tmp_path / "bad.png"
    write_label_png(bad, np.array([[0, 21], [254, 255]]), mode="P")
    with pytest.raises(DataError, match=r"bad.png: label values \[21, 254\]"):
        read_voc_label(bad)
    (tmp_path / "JPEGImages" / "2009_000001.jpg").unlink()
    with pytest.raises(DataError, match="2009_000001.jpg"):
        list(VocSegmentation(tmp_path, "val"))
