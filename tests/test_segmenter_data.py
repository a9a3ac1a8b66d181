"""The segmenter's dataset: targets straight from the panoptic ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from zeroseg.methods.segmenter import SegmentationDataset, collate_segmentation
from zeroseg.methods.segmenter.data import IMAGENET_MEAN, IMAGENET_STD
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.data.leakage import filter_training
from zeroseg.platform.data.panoptic_png import read_panoptic_png
from zeroseg.platform.data.synthetic.generate import generate, load_classes_json
from zeroseg.platform.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "tiny"
    generate("tiny", 0, root, workers=1)
    return root


@pytest.fixture(scope="module")
def split(data):
    return load_classes_json(CocoLayout(data, "train").classes_json)


def panoptic_gt(data, split_name):
    doc = json.loads((data / "annotations" / f"panoptic_{split_name}.json").read_text())
    return {a["image_id"]: a for a in doc["annotations"]}, {
        im["id"]: im for im in doc["images"]}


def test_targets_are_the_panoptic_segments(data, split):
    layout = CocoLayout(data, "val")
    class_ids = [c.id for c in split.classes]
    dataset = SegmentationDataset(layout, class_ids, image_size=128)
    anns, _ = panoptic_gt(data, "val")
    assert len(dataset) == len(anns) == 32
    checked_crowd = 0
    for index in range(len(dataset)):
        item = dataset[index]
        ann = anns[item["image_id"]]
        expected = [s for s in ann["segments_info"] if not s.get("iscrowd", 0)]
        masks, labels = item["mask_labels"], item["class_labels"]
        assert masks.shape == (len(expected), 128, 128) and masks.dtype == torch.float32
        assert labels.dtype == torch.long
        # same classes, same areas (json area = PNG pixel count), disjoint masks
        assert [class_ids[i] for i in labels.tolist()] == [s["category_id"] for s in expected]
        assert masks.flatten(1).sum(1).tolist() == [s["area"] for s in expected]
        assert float(masks.sum(0).max()) <= 1.0
        ids = read_panoptic_png(layout.panoptic_pngs / ann["file_name"])
        for mask, seg in zip(masks, expected, strict=True):
            assert np.array_equal(mask.numpy() > 0, ids == seg["id"])
        crowd = [s for s in ann["segments_info"] if s.get("iscrowd", 0)]
        for seg in crowd:  # crowd pixels belong to no target
            assert float(masks[:, torch.from_numpy(ids == seg["id"])].sum()) == 0
            checked_crowd += 1
        assert item["orig_size"] == (128, 128)
    assert checked_crowd > 0, "the tiny benchmark should contain a crowd segment"


def test_classes_outside_class_ids_are_not_targets(data, split):
    layout = CocoLayout(data, "train")
    seen = [c.id for c in split.seen]
    unseen = {c.id for c in split.unseen}
    dataset = SegmentationDataset(layout, seen, image_size=128)
    anns, _ = panoptic_gt(data, "train")
    had_unseen = 0
    for index in range(len(dataset)):
        item = dataset[index]
        segs = anns[item["image_id"]]["segments_info"]
        expected = [s for s in segs if not s.get("iscrowd", 0) and s["category_id"] not in unseen]
        assert len(item["class_labels"]) == len(expected)
        assert all(0 <= i < len(seen) for i in item["class_labels"].tolist())
        had_unseen += any(s["category_id"] in unseen for s in segs)
    assert had_unseen > 0


def test_leakage_filter_image_ids(data, split, tmp_path):
    layout = CocoLayout(data, "train")
    result = filter_training(layout, split)
    dataset = SegmentationDataset(layout, [c.id for c in split.seen], result.kept_image_ids,
                                  image_size=128)
    assert len(dataset) == len(result.kept_image_ids) < 64
    assert [dataset[i]["image_id"] for i in range(3)] == result.kept_image_ids[:3]
    with pytest.raises(DataError) as err:
        SegmentationDataset(layout, [1], [1, 2, 999999], image_size=128)
    assert "999999" in str(err.value) and "panoptic_train.json" in str(err.value)


def test_bad_class_ids(data):
    layout = CocoLayout(data, "val")
    with pytest.raises(DataError, match="4242"):
        SegmentationDataset(layout, [1, 4242], image_size=128)
    with pytest.raises(ConfigError, match="unique"):
        SegmentationDataset(layout, [1, 1], image_size=128)


def test_pixels_are_imagenet_normalised(data, split):
    layout = CocoLayout(data, "val")
    dataset = SegmentationDataset(layout, [c.id for c in split.classes], image_size=128)
    item = dataset[0]
    _, images = panoptic_gt(data, "val")
    raw = np.asarray(Image.open(layout.images / images[item["image_id"]]["file_name"]))
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    back = (item["pixel_values"] * std + mean).permute(1, 2, 0).numpy() * 255
    assert np.abs(back - raw).max() < 1e-3


def test_resize_to_another_size(data, split):
    layout = CocoLayout(data, "val")
    dataset = SegmentationDataset(layout, [c.id for c in split.classes], image_size=64)
    item = dataset[1]
    assert item["pixel_values"].shape == (3, 64, 64)
    assert item["mask_labels"].shape[1:] == (64, 64)
    assert set(item["mask_labels"].unique().tolist()) <= {0.0, 1.0}
    assert item["orig_size"] == (128, 128)
    full = SegmentationDataset(layout, [c.id for c in split.classes], image_size=128)[1]
    # nearest-neighbour resize keeps every mask's area within a few pixels (scaled by 1/4)
    small = item["mask_labels"].flatten(1).sum(1)
    big = full["mask_labels"].flatten(1).sum(1)[: len(small)] / 4
    assert torch.allclose(small, big, atol=0.1 * float(big.max()))


def test_flip_augmentation_is_seeded(data, split):
    layout = CocoLayout(data, "val")
    ids = [c.id for c in split.classes]
    plain = SegmentationDataset(layout, ids, image_size=128)
    a = SegmentationDataset(layout, ids, image_size=128, augment=True, seed=3)
    b = SegmentationDataset(layout, ids, image_size=128, augment=True, seed=3)
    flips = []
    for i in range(12):
        x, y, p = a[i], b[i], plain[i]
        assert torch.equal(x["pixel_values"], y["pixel_values"])
        flipped = not torch.equal(x["pixel_values"], p["pixel_values"])
        if flipped:
            assert torch.equal(x["pixel_values"], p["pixel_values"].flip(-1))
            assert torch.equal(x["mask_labels"], p["mask_labels"].flip(-1))
        flips.append(flipped)
    assert 0 < sum(flips) < 12
    a.set_epoch(1)
    assert [not torch.equal(a[i]["pixel_values"], plain[i]["pixel_values"])
            for i in range(12)] != flips


def test_collate(data, split):
    dataset = SegmentationDataset(CocoLayout(data, "val"), [c.id for c in split.classes],
                                  image_size=128)
    batch = collate_segmentation([dataset[0], dataset[1], dataset[2]])
    assert batch["pixel_values"].shape == (3, 3, 128, 128)
    assert len(batch["mask_labels"]) == len(batch["class_labels"]) == 3
    assert batch["image_id"] == [dataset[i]["image_id"] for i in range(3)]
    assert [m.shape[0] for m in batch["mask_labels"]] == [len(c) for c in batch["class_labels"]]
