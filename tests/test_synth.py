"""The synthetic benchmark generator: COCO formats, label consistency, roles, determinism."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from zeroseg.platform.data.classes import IGNORE_LABEL
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.data.panoptic_png import read_panoptic_png
from zeroseg.platform.data.synthetic.generate import SIZES, generate, load_classes_json
from zeroseg.platform.data.synthetic.vocabulary import (
    MENTION_PROBABILITY,
    PALETTES,
    synthetic_split,
)
from zeroseg.platform.errors import ConfigError, DataError

SPLITS = ("train", "val")
SEED = 0


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "tiny"
    calls: list[tuple[int, int]] = []
    summary = generate("tiny", SEED, root, workers=1, progress=lambda d, t: calls.append((d, t)))
    summary["_progress"] = calls
    return root, summary


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _panoptic(root: Path, split: str) -> dict:
    return _json(CocoLayout(root, split).panoptic_json)


# -- layout ------------------------------------------------------------------------------------


def test_layout_is_exactly_the_coco_layout(synth):
    root, _ = synth
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["annotations", "train", "val", "panoptic_train", "panoptic_val", "stuff_train",
         "stuff_val"])
    expected_json = {f"{k}_{s}.json" for k in ("instances", "panoptic", "captions")
                     for s in SPLITS} | {"classes.json"}
    assert {p.name for p in (root / "annotations").iterdir()} == expected_json
    spec = SIZES["tiny"]
    for split in SPLITS:
        layout = CocoLayout(root, split)
        images = _json(layout.instances_json)["images"]
        assert len(images) == getattr(spec, split)
        stems = sorted(Path(im["file_name"]).stem for im in images)
        assert sorted(p.stem for p in layout.images.iterdir()) == stems
        assert all(p.suffix == ".jpg" for p in layout.images.iterdir())
        assert sorted(p.stem for p in layout.panoptic_pngs.iterdir()) == stems
        assert sorted(p.stem for p in layout.semantic_pngs.iterdir()) == stems
        for kind in (layout.panoptic_json, layout.captions_json):
            assert _json(kind)["images"] == images
        for im in images[:5]:
            with Image.open(layout.images / im["file_name"]) as pil:
                assert pil.format == "JPEG" and pil.mode == "RGB"
                assert pil.size == (im["width"], im["height"]) == (spec.image_size,) * 2
    train_ids = {im["id"] for im in _json(CocoLayout(root, "train").instances_json)["images"]}
    val_ids = {im["id"] for im in _json(CocoLayout(root, "val").instances_json)["images"]}
    assert not train_ids & val_ids


def test_no_temporary_leftovers_and_progress(synth):
    root, summary = synth
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]
    total = SIZES["tiny"].train + SIZES["tiny"].val
    assert summary["_progress"][-1] == (total, total)
    assert len(summary["_progress"]) == total


# -- instances ---------------------------------------------------------------------------------


def test_instances_load_in_pycocotools_and_masks_match_panoptic(synth):
    root, summary = synth
    thing_ids = {c.id for c in synthetic_split().classes if c.isthing}
    for split in SPLITS:
        layout = CocoLayout(root, split)
        coco = COCO(str(layout.instances_json))
        assert {c["id"] for c in coco.loadCats(coco.getCatIds())} == thing_ids
        panoptic = {a["image_id"]: a for a in _panoptic(root, split)["annotations"]}
        n_instances = n_crowd = 0
        for image_id in coco.getImgIds():
            pan = read_panoptic_png(layout.panoptic_pngs / panoptic[image_id]["file_name"])
            things = {s["id"]: s for s in panoptic[image_id]["segments_info"]
                      if s["category_id"] in thing_ids}
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=None))
            assert len(anns) == len(things)
            unmatched = dict(things)
            for ann in anns:
                mask = coco.annToMask(ann).astype(bool)
                assert isinstance(ann["segmentation"]["counts"], str)
                assert ann["area"] == float(mask.sum()) and isinstance(ann["area"], float)
                matches = [sid for sid in unmatched if np.array_equal(pan == sid, mask)]
                assert len(matches) == 1, f"image {image_id}: annotation {ann['id']} unmatched"
                seg = unmatched.pop(matches[0])
                assert seg["category_id"] == ann["category_id"]
                assert seg["iscrowd"] == ann["iscrowd"]
                assert [float(v) for v in seg["bbox"]] == ann["bbox"]
                if ann["iscrowd"]:
                    n_crowd += 1
                else:
                    n_instances += 1
                    assert ann["area"] >= 20  # tiny visible parts are dropped
            assert not unmatched
            assert sum(1 for a in anns if not a["iscrowd"]) <= 5
        assert n_instances == summary["splits"][split]["instances"]
        assert n_crowd == summary["splits"][split]["crowd_instances"]
        ids = [a["id"] for a in coco.dataset["annotations"]]
        assert len(set(ids)) == len(ids)


def test_crowd_annotations_present(synth):
    root, summary = synth
    crowd = [a for s in SPLITS for a in _json(CocoLayout(root, s).instances_json)["annotations"]
             if a["iscrowd"] == 1]
    assert crowd, "the tiny dataset must exercise crowd annotations"
    assert sum(summary["splits"][s]["crowd_instances"] for s in SPLITS) == len(crowd)
    # One crowd annotation covers a cluster of small shapes: its RLE is a single annotation
    # whose area exceeds a single small member's.
    assert all(a["area"] >= 60 for a in crowd)
    # Only a few percent of images carry a crowd.
    total = SIZES["tiny"].train + SIZES["tiny"].val
    assert len({a["image_id"] for a in crowd}) <= 0.08 * total


# -- panoptic / semantic -----------------------------------------------------------------------


def test_panoptic_png_ids_match_segments_info(synth):
    root, _ = synth
    for split in SPLITS:
        layout = CocoLayout(root, split)
        doc = _panoptic(root, split)
        cats = doc["categories"]
        assert len(cats) == 32 and sum(c["isthing"] for c in cats) == 20
        assert all(len(c["color"]) == 3 for c in cats)
        cat_ids = {c["id"] for c in cats}
        for ann in doc["annotations"]:
            pan = read_panoptic_png(layout.panoptic_pngs / ann["file_name"])
            ids, counts = np.unique(pan, return_counts=True)
            in_png = {int(i): int(n) for i, n in zip(ids, counts, strict=True) if i != 0}
            info = {s["id"]: s for s in ann["segments_info"]}
            assert len(info) == len(ann["segments_info"])
            assert set(in_png) == set(info)
            for sid, seg in info.items():
                assert seg["area"] == in_png[sid] and isinstance(seg["area"], int)
                assert seg["category_id"] in cat_ids
                ys, xs = np.nonzero(pan == sid)
                assert seg["bbox"] == [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                       int(ys.max() - ys.min() + 1)]
            # At most one segment per stuff class (COCO panoptic).
            stuff = [s["category_id"] for s in ann["segments_info"]
                     if not next(c for c in cats if c["id"] == s["category_id"])["isthing"]]
            assert len(stuff) == len(set(stuff)) and 1 <= len(stuff) <= 3


def test_semantic_equals_panoptic_through_categories_and_void(synth):
    root, summary = synth
    split_classes = synthetic_split()
    void_pixels = 0
    for split in SPLITS:
        layout = CocoLayout(root, split)
        for ann in _panoptic(root, split)["annotations"]:
            pan = read_panoptic_png(layout.panoptic_pngs / ann["file_name"])
            with Image.open(layout.semantic_pngs / ann["file_name"]) as pil:
                assert pil.mode == "L"
                sem = np.asarray(pil)
            expected = np.full(pan.shape, IGNORE_LABEL, dtype=np.uint8)
            for seg in ann["segments_info"]:
                expected[pan == seg["id"]] = split_classes.by_id(seg["category_id"]).png_label
            np.testing.assert_array_equal(sem, expected)
            np.testing.assert_array_equal(pan == 0, sem == IGNORE_LABEL)
            void_pixels += int((pan == 0).sum())
        assert summary["splits"][split]["void_pixels"] > 0
    assert void_pixels == sum(summary["splits"][s]["void_pixels"] for s in SPLITS)
    total_pixels = (SIZES["tiny"].train + SIZES["tiny"].val) * SIZES["tiny"].image_size ** 2
    assert void_pixels < 0.02 * total_pixels  # a few pixels, not whole regions


def test_stuff_position_priors(synth):
    root, _ = synth
    split = synthetic_split()
    for s in SPLITS:
        layout = CocoLayout(root, s)
        for ann in _panoptic(root, s)["annotations"]:
            pan = read_panoptic_png(layout.panoptic_pngs / ann["file_name"])
            tops, bottoms = [], []
            for seg in ann["segments_info"]:
                cls = split.by_id(seg["category_id"])
                if cls.isthing:
                    continue
                rows = np.nonzero(pan == seg["id"])[0]
                position = PALETTES[cls.attributes["palette"]][1]
                (tops if position == "top" else bottoms).append(rows.mean())
            assert len(tops) <= 1
            assert all(t < b for t in tops for b in bottoms)


# -- classes, roles, seen / unseen -------------------------------------------------------------


def _image_classes(root: Path, split: str) -> list[set[int]]:
    return [{s["category_id"] for s in a["segments_info"]}
            for a in _panoptic(root, split)["annotations"]]


def test_unseen_frequency_train_and_val(synth):
    root, summary = synth
    split = synthetic_split()
    unseen = {c.id for c in split.unseen}
    train = _image_classes(root, "train")
    free = sum(1 for classes in train if not classes & unseen)
    assert free >= 0.6 * len(train)
    assert free <= 0.8 * len(train)  # but unseen classes do occur in train (ignore protocols)
    assert summary["splits"]["train"]["unseen_images"] == len(train) - free
    # The validation protocol also keeps the held-out seen classes out of training: at least
    # 40% of the train images must survive it, and those classes must still be trainable seen
    # classes for the test split (present in some train images).
    held_out = {c.id for c in split.classes if c.val_unseen}
    assert sum(1 for classes in train if not classes & (unseen | held_out)) >= 0.4 * len(train)
    assert all(any(cid in classes for classes in train) for cid in held_out)
    val = _image_classes(root, "val")
    present = Counter(cid for classes in val for cid in classes)
    assert all(present[cid] >= 1 for cid in unseen)
    val_unseen = {c.id for c in split.classes if c.val_unseen}
    assert all(present[cid] >= 1 for cid in val_unseen)
    assert summary["splits"]["val"]["images_per_class"] == {
        c.name: present[c.id] for c in split.classes}


def test_classes_json_roles_match_vocabulary(synth):
    root, summary = synth
    doc = _json(root / "annotations" / "classes.json")
    split = synthetic_split()
    assert (doc["benchmark"], doc["split"], doc["size"], doc["seed"], doc["image_size"]) == (
        "synthetic", split.name, "tiny", SEED, 128)
    assert set(doc["attributes"]) >= {"colour", "shape", "texture", "palette"}
    assert [c["id"] for c in doc["categories"]] == [c.id for c in split.classes]
    for cat, cls in zip(doc["categories"], split.classes, strict=True):
        assert cat["name"] == cls.name and bool(cat["isthing"]) == cls.isthing
        assert cat["role"] == ("unseen" if cls.unseen else "seen")
        assert cat["val_role"] == ("excluded" if cls.unseen else
                                   "unseen" if cls.val_unseen else "seen")
        assert cat["png_label"] == cls.png_label == cls.id - 1
        assert cat["attributes"] == cls.attributes
        assert cat["color"] == cls.extra["color"]
        assert cat["caption_group"] == cls.extra["caption_group"]
        for key, value in cat["attributes"].items():
            assert value in doc["attributes"][key]
    assert sorted(doc["splits"]["test"]["unseen"]) == sorted(c.id for c in split.unseen)
    assert sorted(doc["splits"]["val"]["unseen"]) == sorted(
        c.id for c in split.classes if c.val_unseen)
    assert not set(doc["splits"]["val"]["seen"]) & set(doc["splits"]["test"]["unseen"])


def test_load_classes_json_round_trip(synth):
    root, _ = synth
    loaded = load_classes_json(root / "annotations" / "classes.json")
    reference = synthetic_split()
    assert loaded == reference
    assert loaded.groups == reference.groups
    for a, b in zip(loaded.classes, reference.classes, strict=True):
        assert a.attributes == b.attributes and a.extra == b.extra
    assert [c.name for c in loaded.validation_view().unseen] == [
        c.name for c in reference.validation_view().unseen]


def test_load_classes_json_rejects_malformed(synth, tmp_path):
    root, _ = synth
    good = _json(root / "annotations" / "classes.json")
    path = tmp_path / "classes.json"

    def check(doc: object, pattern: str) -> None:
        path.write_text(json.dumps(doc))
        with pytest.raises(DataError, match=pattern) as info:
            load_classes_json(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)

    missing = json.loads(json.dumps(good))
    del missing["categories"][3]["role"]
    check(missing, r"categories\[3\].*role")
    bad_role = json.loads(json.dumps(good))
    bad_role["categories"][0]["role"] = "unseen"  # contradicts val_role and the splits
    check(bad_role, "val_role")
    bad_split = json.loads(json.dumps(good))
    bad_split["splits"]["test"]["unseen"] = bad_split["splits"]["test"]["unseen"][1:]
    check(bad_split, r"splits\.test\.unseen")
    bad_type = json.loads(json.dumps(good))
    bad_type["categories"][0]["id"] = "1"
    check(bad_type, r"categories\[0\]\.id")
    check([1, 2], "JSON object")
    path.write_text("{not json")
    with pytest.raises(DataError, match="malformed JSON"):
        load_classes_json(path)
    with pytest.raises(DataError, match="not found"):
        load_classes_json(tmp_path / "missing.json")


# -- captions ----------------------------------------------------------------------------------


def test_captions_mention_present_classes(synth):
    root, _ = synth
    split = synthetic_split()
    names = {c.id: c.name for c in split.classes}
    mentioned: Counter[str] = Counter()
    opportunities: Counter[str] = Counter()
    hints = 0
    for s in SPLITS:
        doc = _json(CocoLayout(root, s).captions_json)
        present = dict(zip([im["id"] for im in doc["images"]], _image_classes(root, s),
                           strict=True))
        per_image = Counter(a["image_id"] for a in doc["annotations"])
        assert set(per_image) == set(present)
        assert all(3 <= n <= 5 for n in per_image.values())
        ids = [a["id"] for a in doc["annotations"]]
        assert len(set(ids)) == len(ids)
        for ann in doc["annotations"]:
            text = ann["caption"].lower()
            assert text and text[-1] == "."
            for cid, name in names.items():
                named = re.search(rf"\b{name}s?\b", text) is not None
                if cid not in present[ann["image_id"]]:
                    assert not named, f"caption {ann['id']} names absent class {name!r}"
                    continue
                group = split.by_id(cid).extra["caption_group"]
                opportunities[group] += 1
                mentioned[group] += named
            hints += bool(re.search(r"lawn|meadow|beach|dunes|clouds|round|boxy|pointy|spiky|"
                                    r"sparkly|speckled|stripy|rippled", text))
    rate = {g: mentioned[g] / opportunities[g] for g in opportunities}
    assert rate["easy"] > rate["medium"] > rate["hard"] > 0
    for group, p in MENTION_PROBABILITY.items():
        assert abs(rate[group] - p) < 0.12, (group, rate[group])
    assert hints > 0


# -- determinism, errors -----------------------------------------------------------------------


def test_same_seed_identical_across_worker_counts(synth, tmp_path):
    root, summary = synth
    other = tmp_path / "again"
    again = generate("tiny", SEED, other, workers=2)
    assert _tree_digest(other) == _tree_digest(root)
    assert again["splits"] == summary["splits"]
    info = _json(other / "annotations" / "instances_train.json")["info"]
    assert not any("date" in key for key in info)


def test_different_seed_gives_different_images(synth, tmp_path):
    root, _ = synth
    other = tmp_path / "seed1"
    generate("tiny", SEED + 1, other, workers=1)
    assert _tree_digest(other) != _tree_digest(root)
    first = sorted((root / "train").iterdir())[0].name
    a = np.asarray(Image.open(root / "train" / first), dtype=np.int16)
    b = np.asarray(Image.open(other / "train" / first), dtype=np.int16)
    assert np.abs(a - b).mean() > 5
    assert load_classes_json(other / "annotations" / "classes.json") == synthetic_split()


def test_bad_arguments_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="huge"):
        generate("huge", 0, tmp_path / "x")
    with pytest.raises(ConfigError, match="seed"):
        generate("tiny", -1, tmp_path / "x")
    with pytest.raises(ConfigError, match="workers"):
        generate("tiny", 0, tmp_path / "x", workers=0)
    assert not (tmp_path / "x").exists()


def test_existing_output_is_not_modified(tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    before = _tree_digest(out)
    with pytest.raises(DataError, match=re.escape(str(out))):
        generate("tiny", 0, out, workers=1)
    assert _tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]
    summary = generate("tiny", 0, out, workers=1, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert (out / "annotations" / "classes.json").is_file()
    assert summary["splits"]["train"]["images"] == SIZES["tiny"].train


def test_empty_existing_directory_is_filled(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    generate("tiny", 3, out, workers=1)
    assert (out / "annotations" / "panoptic_val.json").is_file()
