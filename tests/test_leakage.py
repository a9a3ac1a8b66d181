"""Leakage-safe training filters on a small COCO-format dataset with unseen classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from zeroseg.platform.data.classes import (
    IGNORE_LABEL,
    PROTOCOL_DROP_IMAGES,
    PROTOCOL_IGNORE_PIXELS,
    ClassInfo,
    Split,
)
from zeroseg.platform.data.coco import CocoInstances, CocoPanoptic, read_label_png
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.data.leakage import (
    FilterResult,
    assert_no_unseen,
    excluded_classes,
    filter_training,
    remap_semantic,
)
from zeroseg.platform.data.panoptic_png import read_panoptic_png
from zeroseg.platform.data.registry import get_split
from zeroseg.platform.errors import ConfigError, DataError, LeakageError

S = 4  # images are S x S

# id, name, isthing, unseen, val_unseen, png label
CLASSES = [
    (1, "cat", True, False, False, 0),
    (2, "dog", True, True, False, 1),
    (3, "cow", True, False, True, 2),
    (4, "sky", False, False, False, 3),
    (5, "grass", False, True, False, 4),
]
PNG = {cid: png for cid, *_, png in CLASSES}
BIRD = 9  # a category of the json that the split does not contain

# image id -> segments (segment id, category id, iscrowd, rows); pixel (3, 3) of image 1 is void.
IMAGES: dict[int, list[tuple[int, int, int, slice]]] = {
    1: [(1, 1, 0, slice(0, 2)), (2, 4, 0, slice(2, 4))],
    2: [(1, 1, 0, slice(0, 1)), (2, 2, 0, slice(1, 3)), (3, 4, 0, slice(3, 4))],
    3: [(1, 2, 1, slice(0, 2)), (2, 4, 0, slice(2, 4))],  # only an unseen *crowd* thing
    4: [(1, 3, 0, slice(0, 3)), (2, 4, 0, slice(3, 4))],  # a held-out (validation) class
    5: [(1, 1, 0, slice(0, 1)), (2, 5, 0, slice(1, 4))],  # unseen stuff only
}
DOG_PIXELS = 2 * S + 2 * S  # images 2 and 3
GRASS_PIXELS = 3 * S  # image 5


def small_split() -> Split:
    classes = tuple(
        ClassInfo(index=i, id=cid, name=name, isthing=thing, unseen=unseen, val_unseen=val,
                  png_label=png)
        for i, (cid, name, thing, unseen, val, png) in enumerate(CLASSES)
    )
    return Split(name="test/five", dataset="test", tasks=("semantic", "instance", "panoptic"),
                 protocol=PROTOCOL_DROP_IMAGES, classes=classes)


def region(rows: slice) -> np.ndarray:
    m = np.zeros((S, S), dtype=np.uint8)
    m[rows] = 1
    return m


def rle(mask: np.ndarray) -> dict:
    enc = mask_utils.encode(np.asfortranarray(mask))
    return {"size": enc["size"], "counts": enc["counts"].decode("ascii")}


def write_dataset(root: Path, *, semantic: bool = True, jsons: bool = True) -> CocoLayout:
    """Instances json (things + a bird outside the split), panoptic json + PNGs, semantic PNGs."""
    layout = CocoLayout(root, "train")
    layout.annotations.mkdir(parents=True, exist_ok=True)
    layout.panoptic_pngs.mkdir(parents=True, exist_ok=True)
    layout.semantic_pngs.mkdir(parents=True, exist_ok=True)
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": S, "width": S} for i in IMAGES]
    categories = [{"id": cid, "name": name, "isthing": int(thing)}
                  for cid, name, thing, *_ in CLASSES] + [{"id": BIRD, "name": "bird",
                                                           "isthing": 1}]
    anns, pan_anns = [], []
    for image_id, segs in IMAGES.items():
        ids = np.zeros((S, S), dtype=np.int64)
        label = np.full((S, S), IGNORE_LABEL, dtype=np.uint8)
        infos = []
        for seg_id, cid, crowd, rows in segs:
            ids[rows] = seg_id
            label[rows] = PNG[cid]
            infos.append({"id": seg_id, "category_id": cid, "iscrowd": crowd,
                          "area": int(region(rows).sum()), "bbox": [0, 0, S, S]})
            if next(c for c in CLASSES if c[0] == cid)[2]:  # things get instance annotations
                anns.append({"id": 100 + len(anns), "image_id": image_id, "category_id": cid,
                             "iscrowd": crowd, "segmentation": rle(region(rows)),
                             "area": float(region(rows).sum()), "bbox": [0, 0, S, S]})
        if image_id == 1:
            ids[3, 3], label[3, 3] = 0, IGNORE_LABEL
            infos[1]["area"] -= 1
            anns.append({"id": 100 + len(anns), "image_id": 1, "category_id": BIRD,
                         "iscrowd": 0, "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]],
                         "area": 4.0, "bbox": [0, 0, 2, 2]})
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
        Image.fromarray(rgb, mode="RGB").save(layout.panoptic_pngs / f"{image_id:012d}.png")
        if semantic:
            Image.fromarray(label, mode="L").save(layout.semantic_pngs / f"{image_id:012d}.png")
        pan_anns.append({"image_id": image_id, "file_name": f"{image_id:012d}.png",
                         "segments_info": infos})
    if jsons:
        layout.instances_json.write_text(json.dumps(
            {"images": images, "annotations": anns, "categories": categories}))
        layout.panoptic_json.write_text(json.dumps(
            {"images": images, "annotations": pan_anns, "categories": categories[:-1]}))
    return layout


@pytest.fixture
def layout(tmp_path: Path) -> CocoLayout:
    return write_dataset(tmp_path / "data")


# -- drop-images --------------------------------------------------------------------------------
def test_drop_images_counts(layout: CocoLayout, tmp_path: Path) -> None:
    split = small_split()
    out = tmp_path / "filtered"
    r = filter_training(layout, split, out_dir=out)
    assert r.protocol == PROTOCOL_DROP_IMAGES and r.split == "test/five" and not r.validation
    assert r.excluded_classes == ["dog", "grass"]
    assert r.sources == ["instances", "panoptic", "semantic"]
    assert (r.images_total, r.images_kept, r.images_dropped) == (5, 2, 3)
    assert r.kept_image_ids == [1, 4]  # image 3 (an unseen crowd only) is dropped too
    # Instances: 7 in all; images 2, 3, 5 held 4 (one crowd); the bird of image 1 is outside.
    assert (r.annotations_total, r.annotations_removed, r.outside_split_removed) == (7, 4, 1)
    # Panoptic: images 2, 3, 5 held 7 segments (one crowd).
    assert (r.segments_total, r.segments_removed) == (11, 7)
    assert r.crowd_removed == 2
    assert r.unseen_pixels_dropped == DOG_PIXELS + GRASS_PIXELS and r.unseen_pixels_ignored == 0
    assert r.removed_per_class["dog"] == {"images": 2, "annotations": 2, "crowd": 2,
                                          "segments": 2, "pixels": DOG_PIXELS}
    assert r.removed_per_class["grass"] == {"images": 1, "segments": 1, "pixels": GRASS_PIXELS}
    assert r.removed_per_class["bird"] == {"annotations": 1}
    assert r.removed_per_class["sky"] == {"segments": 2}  # images 2 and 3
    assert "cow" not in r.removed_per_class
    assert r.audit == {"annotations": 2, "segments": 4, "label_maps": 2}

    # Written outputs: filtered jsons (categories unchanged), kept ids, the audit.
    inst = json.loads((out / "instances_train.json").read_text())
    assert [im["id"] for im in inst["images"]] == [1, 4]
    assert sorted(a["category_id"] for a in inst["annotations"]) == [1, 3]
    assert len(inst["categories"]) == 6
    pan = json.loads((out / "panoptic_train.json").read_text())
    assert [a["image_id"] for a in pan["annotations"]] == [1, 4]
    assert len(pan["categories"]) == 5
    assert json.loads((out / "kept_image_ids.json").read_text()) == [1, 4]
    audit = json.loads((out / "leakage_filter.json").read_text())
    assert audit == json.loads(json.dumps(r.to_dict()))
    assert audit["outputs"]["instances"] == str(out / "instances_train.json")
    assert sorted(p.name for p in out.iterdir()) == [
        "instances_train.json", "kept_image_ids.json", "leakage_filter.json", "panoptic_train.json"]
    # The outputs are valid COCO files for the readers (the PNG folder is the original one).
    assert CocoInstances(out / "instances_train.json").image_ids == [1, 4]
    assert [r.image_id for r in CocoPanoptic(out / "panoptic_train.json", layout.panoptic_pngs)] \
        == [1, 4]


def test_drop_images_validation_also_removes_val_classes(layout: CocoLayout) -> None:
    r = filter_training(layout, small_split(), validation=True)
    assert r.validation and r.excluded_classes == ["dog", "cow", "grass"]
    assert r.kept_image_ids == [1]
    assert r.removed_per_class["cow"]["images"] == 1
    assert r.removed_per_class["cow"]["pixels"] == 3 * S
    assert r.instances is not None and {a["category_id"] for a in r.instances["annotations"]} == {1}
    assert not r.outputs  # nothing written without out_dir
    # The test-split filter keeps the validation class's image.
    assert 4 in filter_training(layout, small_split()).kept_image_ids


def test_drop_images_from_semantic_pngs_alone(tmp_path: Path) -> None:
    layout = write_dataset(tmp_path / "data", jsons=False)
    r = filter_training(layout, small_split())
    assert r.sources == ["semantic"]
    assert r.kept_image_ids == [1, 4] and r.images_dropped == 3
    assert r.unseen_pixels_dropped == DOG_PIXELS + GRASS_PIXELS


def test_filter_with_a_registered_split(tmp_path: Path) -> None:
    """ZSI 48/17: cow unseen, person seen, traffic light in neither list (removed, image kept)."""
    split = get_split("coco2014/zsi-48-17")
    layout = CocoLayout(tmp_path, "train2014")
    layout.annotations.mkdir(parents=True)
    images = [{"id": i, "file_name": f"{i}.jpg", "height": S, "width": S} for i in (1, 2)]
    seg = [[0, 0, 2, 0, 2, 2, 0, 2]]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": seg},
            {"id": 2, "image_id": 1, "category_id": 10, "iscrowd": 0, "segmentation": seg},
            {"id": 3, "image_id": 2, "category_id": 21, "iscrowd": 0, "segmentation": seg}]
    cats = [{"id": 1, "name": "person"}, {"id": 10, "name": "traffic light"},
            {"id": 21, "name": "cow"}]
    layout.instances_json.write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": cats}))
    r = filter_training(layout, split)
    assert r.kept_image_ids == [1] and r.outside_split_removed == 1
    assert r.removed_per_class == {"cow": {"images": 1, "annotations": 1},
                                   "traffic light": {"annotations": 1}}
    assert [a["id"] for a in r.instances["annotations"]] == [1]


# -- ignore-pixels ------------------------------------------------------------------------------
def test_ignore_pixels_counts_and_rewrites(layout: CocoLayout, tmp_path: Path) -> None:
    split = small_split()
    out = tmp_path / "filtered"
    r = filter_training(layout, split, protocol=PROTOCOL_IGNORE_PIXELS, out_dir=out)
    assert (r.images_total, r.images_kept, r.images_dropped) == (5, 5, 0)
    assert r.kept_image_ids == [1, 2, 3, 4, 5]
    assert r.unseen_pixels_ignored == DOG_PIXELS + GRASS_PIXELS
    assert r.unseen_pixels_dropped == 0
    assert (r.annotations_removed, r.outside_split_removed, r.segments_removed) == (2, 1, 3)
    assert r.crowd_removed == 2
    assert r.removed_per_class["grass"] == {"segments": 1, "pixels": GRASS_PIXELS}
    assert r.audit == {"annotations": 4, "segments": 8, "label_maps": 5}
    # Panoptic: unseen segments left the json and are VOID in the rewritten PNGs.
    pan = CocoPanoptic(out / "panoptic_train.json", out / "panoptic_train")
    ids = {rec.image_id: rec.ids for rec in pan}  # reading checks PNG ids == json ids
    assert (ids[2][1:3] == 0).all() and (ids[3][:2] == 0).all() and (ids[5][1:] == 0).all()
    np.testing.assert_array_equal(ids[1], read_panoptic_png(layout.panoptic_pngs /
                                                            "000000000001.png"))
    assert r.outputs["panoptic_pngs"] == str(out / "panoptic_train")


def test_remap_semantic_ignores_exactly_the_unseen_pixels(layout: CocoLayout) -> None:
    split = small_split()
    for image_id in IMAGES:
        label = read_label_png(layout.semantic_pngs / f"{image_id:012d}.png")
        remapped = remap_semantic(label, split)
        unseen = np.isin(label, [PNG[2], PNG[5]])
        assert remapped.dtype == label.dtype
        np.testing.assert_array_equal(remapped[unseen], IGNORE_LABEL)
        np.testing.assert_array_equal(remapped[~unseen], label[~unseen])
        val = remap_semantic(label, split, validation=True)
        np.testing.assert_array_equal(val == IGNORE_LABEL,
                                      np.isin(label, [1, 2, 4, IGNORE_LABEL]))
    assert remap_semantic(np.array([[4, 0]], dtype=np.int64), split).tolist() == [[255, 0]]
    with pytest.raises(ValueError):
        remap_semantic(np.zeros((2, 2), dtype=np.float32), split)
    with pytest.raises(ValueError):
        remap_semantic(np.array([300]), split)


def test_ignore_pixels_validation(layout: CocoLayout) -> None:
    r = filter_training(layout, small_split(), protocol=PROTOCOL_IGNORE_PIXELS, validation=True)
    assert r.unseen_pixels_ignored == DOG_PIXELS + GRASS_PIXELS + 3 * S
    assert r.images_kept == 5 and r.removed_per_class["cow"]["annotations"] == 1


# -- the scan -----------------------------------------------------------------------------------
def test_assert_no_unseen_fails_on_unfiltered_data(layout: CocoLayout) -> None:
    split = small_split()
    with pytest.raises(LeakageError) as err:
        assert_no_unseen(split, instances=layout.instances_json)
    msg = str(err.value)
    assert str(layout.instances_json) in msg and "dog x2" in msg and "\n" not in msg
    with pytest.raises(LeakageError, match=r"panoptic_train.json: 3 segments .*dog x2, grass x1"):
        assert_no_unseen(split, panoptic=layout.panoptic_json)
    labels = [(p.name, read_label_png(p)) for p in sorted(layout.semantic_pngs.glob("*.png"))]
    with pytest.raises(LeakageError, match=r"3 semantic label maps .*000000000002.png: dog x8 px"):
        assert_no_unseen(split, semantic=labels)
    # Validation: cow's image 4 is a leak for the validation split only.
    only4 = [labels[3]]
    assert assert_no_unseen(split, semantic=only4) == {"label_maps": 1}
    with pytest.raises(LeakageError, match=r"\(validation\).*cow x12 px"):
        assert_no_unseen(split, semantic=only4, validation=True)


def test_assert_no_unseen_passes_on_filtered_data(layout: CocoLayout, tmp_path: Path) -> None:
    split = small_split()
    out = tmp_path / "filtered"
    filter_training(layout, split, out_dir=out)
    kept = json.loads((out / "kept_image_ids.json").read_text())
    labels = [(f"{i}", read_label_png(layout.semantic_pngs / f"{i:012d}.png")) for i in kept]
    scanned = assert_no_unseen(split, instances=out / "instances_train.json",
                               panoptic=out / "panoptic_train.json", semantic=labels)
    assert scanned == {"annotations": 2, "segments": 4, "label_maps": 2}
    remapped = [(p.name, remap_semantic(read_label_png(p), split))
                for p in layout.semantic_pngs.glob("*.png")]
    assert assert_no_unseen(split, semantic=remapped)["label_maps"] == 5


# -- errors and atomic output -------------------------------------------------------------------
def test_outputs_are_atomic(layout: CocoLayout, tmp_path: Path) -> None:
    out = tmp_path / "filtered"
    out.mkdir()
    (out / "previous.json").write_text("{}")
    with pytest.raises(ConfigError, match="not empty"):
        filter_training(layout, small_split(), out_dir=out)
    # Image 5's panoptic PNG needs repainting under ignore-pixels; corrupt it so the filter fails
    # after it already wrote the instances json and linked other PNGs into its staging folder.
    (layout.panoptic_pngs / "000000000005.png").write_bytes(b"broken")
    with pytest.raises(DataError, match="000000000005.png"):
        filter_training(layout, small_split(), protocol=PROTOCOL_IGNORE_PIXELS, out_dir=out,
                        overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["previous.json"]  # old output untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "filtered"]  # no leftovers
    fresh = tmp_path / "fresh"
    with pytest.raises(DataError):
        filter_training(layout, small_split(), protocol=PROTOCOL_IGNORE_PIXELS, out_dir=fresh)
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "filtered"]


def test_overwrite_replaces_previous_output(layout: CocoLayout, tmp_path: Path) -> None:
    out = tmp_path / "filtered"
    out.mkdir()
    (out / "previous.json").write_text("{}")
    filter_training(layout, small_split(), out_dir=out, overwrite=True)
    assert not (out / "previous.json").exists() and (out / "leakage_filter.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "filtered"]


def test_bad_arguments(layout: CocoLayout, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="protocol 'drop-all'"):
        filter_training(layout, small_split(), protocol="drop-all")
    no_val = get_split("coco-stuff/spnet-156-15")
    no_val = Split(name="x", dataset="x", tasks=("semantic",), protocol=PROTOCOL_DROP_IMAGES,
                   classes=tuple(ClassInfo(index=c.index, id=c.id, name=c.name, isthing=c.isthing,
                                           unseen=c.unseen, png_label=c.png_label)
                                 for c in no_val.classes))
    with pytest.raises(ConfigError, match="no validation"):
        filter_training(layout, no_val, validation=True)
    with pytest.raises(DataError, match="no training annotations"):
        filter_training(CocoLayout(tmp_path / "empty", "train"), small_split())
    assert [c.name for c in excluded_classes(small_split(), True)] == ["dog", "cow", "grass"]


def test_panoptic_category_outside_split_is_left_out_and_counted(layout: CocoLayout,
                                                                  tmp_path: Path) -> None:
    data = json.loads(layout.panoptic_json.read_text())
    data["categories"].append({"id": BIRD, "name": "bird", "isthing": 1})
    first = data["annotations"][0]
    first["segments_info"][0]["category_id"] = BIRD
    layout.panoptic_json.write_text(json.dumps(data))
    result = filter_training(layout, small_split(), protocol="ignore-pixels",
                             out_dir=tmp_path / "out")
    assert result.outside_split["panoptic category 9"] == 1
    assert result.to_dict()["outside_split"] == result.outside_split
    kept = {a["image_id"]: a for a in result.panoptic["annotations"]}[first["image_id"]]
    assert BIRD not in {s["category_id"] for s in kept["segments_info"]}
    # ... and its pixels are VOID in the rewritten PNG, so no segment id is left unexplained
    from zeroseg.platform.data.coco import CocoPanoptic

    out = CocoPanoptic(tmp_path / "out" / layout.panoptic_json.name,
                       tmp_path / "out" / layout.panoptic_pngs.name)
    ids = out.read_ids(first["image_id"])
    assert first["segments_info"][0]["id"] not in set(np.unique(ids).tolist())


def test_result_is_json_serialisable(layout: CocoLayout) -> None:
    r = filter_training(layout, small_split())
    d = r.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert "instances" not in d and "panoptic" not in d
    assert set(d) == {f for f in FilterResult.__dataclass_fields__} - {"instances", "panoptic"}
