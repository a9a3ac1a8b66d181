"""The split registry: every paper's split, built from the shipped class-list files."""

from __future__ import annotations

import json
import re
from importlib.resources import files

import numpy as np
import pytest

from zeroseg.platform.data.classes import (
    IGNORE_LABEL,
    PROTOCOL_DROP_IMAGES,
    PROTOCOL_IGNORE_PIXELS,
    Split,
)
from zeroseg.platform.data.registry import (
    get_split,
    list_splits,
    split_names,
    split_table,
    spread_holdout,
)
from zeroseg.platform.data.synthetic.vocabulary import synthetic_split
from zeroseg.platform.errors import ConfigError

SPLITS_DIR = files("zeroseg.platform.data").joinpath("splits")

# (name, classes, seen, unseen) as the papers report them (PROTOCOLS.md section 1).
COUNTS = [
    ("coco-panoptic/zsp-119-14", 133, 119, 14),
    ("coco-stuff/spnet-156-15", 171, 156, 15),
    ("coco-stuff/cap2seg-15", 171, 156, 15),
    ("coco2014/zsi-48-17", 65, 48, 17),
    ("coco2014/zsi-65-15", 80, 65, 15),
    ("voc12/spnet-15-5", 20, 15, 5),
    *((f"voc12/zs3-{k}", 21, 21 - k, k) for k in (2, 4, 6, 8, 10)),
    *((f"pascal-context/zs3-{k}", 60, 60 - k, k) for k in (2, 4, 6, 8, 10)),
    ("synthetic/default", 32, 25, 7),
]


def unseen_names(split: Split) -> set[str]:
    return {c.name for c in split.unseen}


def val_names(split: Split) -> set[str]:
    return {c.name for c in split.classes if c.val_unseen}


def panoptic_categories() -> list[dict]:
    return json.loads(SPLITS_DIR.joinpath("panoptic_coco_categories.json").read_text())


@pytest.mark.parametrize(("name", "total", "seen", "unseen"), COUNTS)
def test_split_counts_match_the_papers(name: str, total: int, seen: int, unseen: int) -> None:
    split = get_split(name)
    assert (split.num_classes, len(split.seen), len(split.unseen)) == (total, seen, unseen)
    assert split.source and split.description
    # Every split can produce its validation view: held-out seen classes exist and are seen.
    val = split.validation_view()
    assert len(val.unseen) == sum(c.val_unseen for c in split.classes) > 0
    assert not any(c.unseen and c.val_unseen for c in split.classes)


def test_registry_lists_every_split_once() -> None:
    names = split_names()
    assert names == [s.name for s in list_splits()]
    assert sorted(names) == sorted(n for n, *_ in COUNTS)


def test_zsp_matches_pading_and_panopticapi() -> None:
    split = get_split("coco-panoptic/zsp-119-14")
    assert split.protocol == PROTOCOL_DROP_IMAGES and split.tasks == ("panoptic",)
    cats = panoptic_categories()
    assert [(c.id, c.name, c.isthing) for c in split.classes] == [
        (c["id"], c["name"], bool(c["isthing"])) for c in cats
    ]
    # Contiguous index / COCO id / name of PROTOCOLS.md 1a.
    expected = {19: (21, "cow"), 23: (25, "giraffe"), 28: (33, "suitcase"), 29: (34, "frisbee"),
                36: (41, "skateboard"), 51: (57, "carrot"), 76: (87, "scissors"),
                83: (100, "cardboard"), 97: (145, "playingfield"), 99: (148, "river"),
                100: (149, "road"), 116: (184, "tree-merged"), 119: (187, "sky-other-merged"),
                125: (193, "grass-merged")}
    assert {c.index: (c.id, c.name) for c in split.unseen} == expected
    assert sum(c.isthing for c in split.unseen) == 7
    assert all(c.png_label is None for c in split.classes)
    # Derived validation classes: 7 things + 7 stuff, all seen.
    val = [c for c in split.classes if c.val_unseen]
    assert sum(c.isthing for c in val) == 7 and sum(not c.isthing for c in val) == 7


def test_cocostuff_spnet_split() -> None:
    split = get_split("coco-stuff/spnet-156-15")
    assert split.protocol == PROTOCOL_IGNORE_PIXELS and split.tasks == ("semantic",)
    # PNG id / COCO id / train id of the 15 unseen classes (PROTOCOLS.md 1b).
    expected = {"cow": (20, 21, 156), "giraffe": (24, 25, 157), "suitcase": (32, 33, 158),
                "frisbee": (33, 34, 159), "skateboard": (40, 41, 160), "carrot": (56, 57, 161),
                "scissors": (86, 87, 162), "cardboard": (99, 100, 163), "clouds": (105, 106, 164),
                "grass": (123, 124, 165), "playingfield": (144, 145, 166),
                "river": (147, 148, 167), "road": (148, 149, 168), "tree": (168, 169, 169),
                "wall-concrete": (171, 172, 170)}
    assert {c.name: (c.png_label, c.id, c.index) for c in split.unseen} == expected
    assert val_names(split) == {"motorcycle", "elephant", "baseball bat", "wine glass", "banana",
                                "chair", "keyboard", "refrigerator", "branch", "light", "napkin",
                                "pavement"}
    assert all(c.id == c.png_label + 1 for c in split.classes)
    assert all(c.isthing == (c.id <= 91) for c in split.classes)
    assert sum(c.isthing for c in split.classes) == 80
    # The 11 never-annotated labels are not classes and map to ignore.
    lut = split.png_lut()
    assert lut[20] == 156 and lut[0] == 0
    for unused in (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90, 255):
        assert lut[unused] == IGNORE_LABEL


def test_cap2seg_split_groups_and_label_space() -> None:
    split = get_split("coco-stuff/cap2seg-15")
    spnet = get_split("coco-stuff/spnet-156-15")
    assert {c.png_label for c in split.classes} == {c.png_label for c in spnet.classes}
    assert [c.png_label for c in split.classes] == sorted(c.png_label for c in split.classes)
    groups = {g: {split.by_id(i).name for i in ids} for g, ids in split.groups.items()}
    assert groups == {
        "hard": {"branch", "napkin", "banner", "straw", "bush"},
        "medium": {"tree", "road", "river", "grass", "salad"},
        "easy": {"giraffe", "cow", "frisbee", "suitcase", "fire hydrant"},
    }
    assert set().union(*groups.values()) == unseen_names(split)
    assert val_names(split) == {"wall-brick", "wall-concrete", "wall-other", "wall-panel",
                                "wall-stone", "wall-tile", "wall-wood", "water-other",
                                "waterdrops", "window-blind", "window-other", "wood"}
    # Same ids as the SPNet split for the same class (one COCO-Stuff label space).
    for c in split.classes:
        assert spnet.by_id(c.id).png_label == c.png_label and spnet.by_id(c.id).name == c.name


@pytest.mark.parametrize("name", ["coco2014/zsi-48-17", "coco2014/zsi-65-15"])
def test_zsi_splits(name: str) -> None:
    split = get_split(name)
    assert split.protocol == PROTOCOL_DROP_IMAGES and split.tasks == ("instance",)
    coco = {c["id"]: c["name"] for c in panoptic_categories() if c["isthing"]}
    assert all(coco[c.id] == c.name and c.isthing for c in split.classes)
    # Seen first, then unseen (json order = word-vector column - 1).
    n_seen = len(split.seen)
    assert not any(c.unseen for c in split.classes[:n_seen])
    assert all(c.extra["w2v_column"] == c.index + 1 for c in split.classes)
    assert "zeroseg's choice" in split.description
    val = [c for c in split.classes if c.val_unseen]
    assert len(val) == len(split.unseen) and not any(c.unseen for c in val)


def test_zsi_unseen_classes() -> None:
    s48 = get_split("coco2014/zsi-48-17")
    assert unseen_names(s48) == {"bus", "dog", "cow", "elephant", "umbrella", "tie", "skateboard",
                                 "cup", "knife", "cake", "couch", "keyboard", "sink", "scissors",
                                 "airplane", "cat", "snowboard"}
    assert [c.name for c in s48.unseen][-3:] == ["airplane", "cat", "snowboard"]
    assert "traffic light" not in s48.names and "hair drier" not in s48.names
    s65 = get_split("coco2014/zsi-65-15")
    assert {c.id for c in s65.unseen} == {5, 7, 14, 17, 23, 33, 34, 36, 48, 54, 58, 70, 74, 80,
                                          89}
    assert [c.id for c in s65.seen] == sorted(c.id for c in s65.seen)


def test_voc_spnet_split() -> None:
    split = get_split("voc12/spnet-15-5")
    assert [c.id for c in split.classes] == list(range(1, 21))
    assert unseen_names(split) == {"pottedplant", "sheep", "sofa", "train", "tvmonitor"}
    assert val_names(split) == {"horse", "motorbike", "person"}
    assert split.png_lut()[0] == IGNORE_LABEL  # background is ignored in SPNet
    assert split.png_lut()[16] == 15


def test_zs3_splits_are_nested_prefixes() -> None:
    order = [10, 14, 1, 18, 8, 20, 19, 5, 9, 16]  # PROTOCOLS.md 1d
    previous: set[int] = set()
    for k in (2, 4, 6, 8, 10):
        split = get_split(f"voc12/zs3-{k}")
        assert split.protocol == PROTOCOL_DROP_IMAGES
        assert split.classes[0].name == "__background__" and not split.classes[0].unseen
        assert not split.classes[0].val_unseen
        ids = {c.id for c in split.unseen}
        assert ids == set(order[:k]) and previous < ids
        previous = ids
        assert len(val_names(split)) == min(k, (20 - k) // 2)
        assert split.png_lut()[0] == 0
    context = [10, 14, 18, 8, 4, 32, 3, 20, 1, 38]
    for k in (2, 4, 6, 8, 10):
        split = get_split(f"pascal-context/zs3-{k}")
        assert {c.id for c in split.unseen} == set(context[:k])
    assert get_split("pascal-context/zs3-10").by_id(38).name == "keyboard"


def test_synthetic_split_is_the_vocabulary() -> None:
    assert get_split("synthetic/default") == synthetic_split()


def test_unknown_split_names_the_closest() -> None:
    with pytest.raises(ConfigError, match="zsi-48-17") as err:
        get_split("coco2014/zsi-48-16")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="known"):
        get_split("imagenet")


def test_split_table_rows() -> None:
    rows = split_table()
    assert json.loads(json.dumps(rows)) == rows
    row = next(r for r in rows if r["name"] == "coco-stuff/spnet-156-15")
    assert (row["classes"], row["seen"], row["unseen"], row["val_unseen"]) == (171, 156, 15, 12)
    assert row["protocol"] == PROTOCOL_IGNORE_PIXELS and row["tasks"] == "semantic"
    assert "SPNet" in row["source"]
    assert set(rows[0]) == {"name", "dataset", "tasks", "protocol", "classes", "seen", "unseen",
                            "val_unseen", "source", "description"}


def test_spread_holdout_is_even_and_deterministic() -> None:
    assert spread_holdout(list(range(10)), 5) == [1, 3, 5, 7, 9]
    assert spread_holdout(list(range(48)), 17) == spread_holdout(list(range(48)), 17)
    picked = spread_holdout(list(range(48)), 17)
    assert len(set(picked)) == 17 and np.all(np.diff(picked) >= 2)
    assert spread_holdout(["a", "b"], 0) == []
    with pytest.raises(ValueError):
        spread_holdout([1, 2], 3)


def _named_files(text: str) -> set[str]:
    """File names a SOURCES.md mentions, with "a_{x,y}_b.csv" expanded to a_x_b.csv, a_y_b.csv."""
    names: set[str] = set()
    for token in re.findall(r"[\w.]*(?:\{[\w,]+\}[\w.]*)*", text):
        expanded = [""]
        for part in re.split(r"(\{[\w,]+\})", token):
            options = part[1:-1].split(",") if part.startswith("{") else [part]
            expanded = [e + o for e in expanded for o in options]
        names.update(expanded)
    return names


def test_every_split_file_has_provenance() -> None:
    named = _named_files(SPLITS_DIR.joinpath("SOURCES.md").read_text())
    shipped = sorted(p.name for p in SPLITS_DIR.iterdir() if p.name != "SOURCES.md")
    assert len(shipped) == 23
    assert [n for n in shipped if n not in named] == []
