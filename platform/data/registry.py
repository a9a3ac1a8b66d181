"""Every benchmark split the papers use, built from the class-list files shipped in ``splits/``.

The class lists are data (``splits/*.csv|txt|json``, provenance in ``splits/SOURCES.md``); this
module only reads them, checks them against the counts the papers report and against each other,
and turns them into :class:`~zeroseg.platform.data.classes.Split` objects. A file that disagrees
with its paper makes :func:`list_splits` fail loudly instead of training on a wrong split.

Decisions (also written into each split's ``description``):

- **COCO-Stuff label spaces.** Both COCO-Stuff splits use the 171 classes that COCO-Stuff 164k
  annotates. ``cocostuff_labels.txt`` has 182 classes; 11 of them (street sign, hat, ...) never
  occur in the PNGs. SPNet's and Cap2Seg's *seen* lists still contain those 11 labels (their
  classifiers have 182 outputs); zeroseg drops them, which removes no unseen or validation class
  (checked below). ``id`` = COCO category id, ``png_label`` = id - 1 (0-based PNG value).
  ``spnet-156-15`` keeps PADing's train-id order (156 seen, then 15 unseen); ``cap2seg-15`` uses
  ascending PNG-label order.
- **VOC background.** SPNet lists background in none of its class files, so in ``voc12/spnet-15-5``
  background is not a class: ``png_lut`` maps label 0 to ignore. ZS3 trains and evaluates
  background as a seen class, so ``voc12/zs3-*`` has 21 classes with background at index 0.
- **Derived validation classes.** ZSP, ZSI and ZS3 define no held-out seen classes. zeroseg picks
  them by :func:`spread_holdout`: within each stratum (things / stuff for ZSP, all thing classes
  for ZSI, the non-background classes for ZS3) it holds out as many seen classes as the stratum has
  unseen ones, at most half the stratum's seen classes, evenly spaced over the contiguous order.
  The rule has no randomness, so the choice is the same on every machine.
"""

from __future__ import annotations

import csv
import difflib
import functools
import json
import logging
import re
from collections.abc import Callable, Sequence
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeVar

from zeroseg.platform.data.classes import (
    PROTOCOL_DROP_IMAGES,
    PROTOCOL_IGNORE_PIXELS,
    ClassInfo,
    Split,
)
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.data.synthetic.classes_file import load_classes_json
from zeroseg.platform.data.synthetic.vocabulary import synthetic_split
from zeroseg.platform.errors import ConfigError, DataError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Where each split comes from (paper + repository@commit); see splits/SOURCES.md.
SOURCE_PADING = "PADing (He et al., CVPR 2023), github.com/heshuting555/PADing@5d81719c96a2"
SOURCE_PANOPTICAPI = "github.com/cocodataset/panopticapi@7bb4655548f9"
SOURCE_SPNET = "SPNet (Xian et al., CVPR 2019), github.com/subhc/SPNet@292ff5ac4944"
SOURCE_ZEGFORMER = (
    "ZegFormer (Ding et al., CVPR 2022), github.com/dingjiansw101/ZegFormer@8cb9e8fbddfb"
)
SOURCE_CAP2SEG = "Cap2Seg (Zhou et al., ACM MM 2020), github.com/tgy97/cap2seg@c4b973308cbb"
SOURCE_ZSI = (
    "ZSI (Zheng et al., CVPR 2021), "
    "github.com/zhengye1995/Zero-shot-Instance-Segmentation@6b25b318d782"
)
SOURCE_ZS3 = "ZS3Net (Bucher et al., NeurIPS 2019), github.com/valeoai/ZS3@6031f4a0be1a"

ZEROSEG_VAL_NOTE = (
    "validation classes are zeroseg's choice (the authors define none): held-out seen classes "
    "evenly spaced over the class order, as many as unseen per stratum, at most half of it"
)

# COCO category ids 1..91 are things, 92..182 stuff (COCO-Stuff numbering).
COCO_LAST_THING_ID = 91


# -- reading the split files -------------------------------------------------------------------
def split_file(name: str) -> Traversable:
    """A file of the ``splits/`` package data folder (DataError if it is missing)."""
    path = files("zeroseg.platform.data").joinpath("splits", name)
    if not path.is_file():
        raise DataError(f"splits/{name}: split file not found in the zeroseg package data")
    return path


def _text(name: str) -> str:
    return split_file(name).read_text(encoding="utf-8")


def _csv_rows(name: str) -> list[list[str]]:
    """Data rows of a csv with a header line."""
    rows = [r for r in csv.reader(_text(name).splitlines()) if r]
    if not rows:
        raise DataError(f"splits/{name}: empty csv")
    return rows[1:]


def _ids(name: str) -> list[int]:
    """A ``*_cls.csv`` file: one integer id per line."""
    out: list[int] = []
    for lineno, line in enumerate(_text(name).splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(int(line.strip()))
        except ValueError:
            raise DataError(f"splits/{name}:{lineno}: expected an integer, got {line!r}") from None
    return out


def _labels(name: str) -> dict[int, str]:
    """A labels file: ``number<TAB>name`` per line."""
    out: dict[int, str] = {}
    for lineno, line in enumerate(_text(name).splitlines(), 1):
        if not line.strip():
            continue
        number, sep, label = line.partition("\t")
        if not sep or not number.strip().isdigit():
            raise DataError(f"splits/{name}:{lineno}: expected 'number<TAB>name', got {line!r}")
        out[int(number)] = label.strip()
    return out


def _unseen_orders(name: str) -> dict[int, list[str]]:
    """A ZS3 ``*_unseen_order.txt`` file: ``K unseen: a,b,...`` per line."""
    out: dict[int, list[str]] = {}
    for lineno, line in enumerate(_text(name).splitlines(), 1):
        if not line.strip():
            continue
        m = re.fullmatch(r"\s*(\d+)\s+unseen:\s*(.+)", line)
        if not m:
            raise DataError(f"splits/{name}:{lineno}: expected 'K unseen: name,name,...'")
        names = [n.strip() for n in m.group(2).split(",") if n.strip()]
        if len(names) != int(m.group(1)):
            raise DataError(
                f"splits/{name}:{lineno}: {m.group(1)} unseen announced, {len(names)} listed"
            )
        out[int(m.group(1))] = names
    return out


def _check(cond: bool, message: str) -> None:
    """A consistency check of the shipped files (DataError, never stripped like ``assert``)."""
    if not cond:
        raise DataError(message)


# -- deterministic validation classes ----------------------------------------------------------
def spread_holdout(candidates: Sequence[T], k: int) -> list[T]:
    """``k`` items evenly spaced over ``candidates`` (the middle of each of ``k`` equal bins).

    Deterministic and order-preserving: item ``floor((2i + 1) * n / (2k))`` for ``i < k``.
    """
    n = len(candidates)
    if k < 0 or k > n:
        raise ValueError(f"cannot hold out {k} of {n} candidates")
    return [candidates[((2 * i + 1) * n) // (2 * k)] for i in range(k)]


def _derived_val_ids(strata: Sequence[tuple[Sequence[int], int]]) -> set[int]:
    """Held-out ids: per stratum (seen candidate ids, number of unseen), ``min(U, n // 2)``."""
    out: set[int] = set()
    for candidates, num_unseen in strata:
        out.update(spread_holdout(list(candidates), min(num_unseen, len(candidates) // 2)))
    return out


# -- split builders ----------------------------------------------------------------------------
def _panoptic_categories() -> list[dict[str, Any]]:
    try:
        cats = json.loads(_text("panoptic_coco_categories.json"))
    except json.JSONDecodeError as e:
        raise DataError(f"splits/panoptic_coco_categories.json: malformed JSON ({e.msg})") from None
    return list(cats)


def _coco_panoptic_zsp() -> Split:
    fname = "coco_panoptic_zsp_119_14.csv"
    rows = _csv_rows(fname)
    cats = _panoptic_categories()
    _check(len(rows) == 133 and len(cats) == 133, f"splits/{fname}: expected 133 classes")
    unseen_json = set(json.loads(_text("mscoco_unseen_classes.json")))
    seen_things: list[int] = []
    seen_stuff: list[int] = []
    parsed = []
    for i, (row, cat) in enumerate(zip(rows, cats, strict=True)):
        index, cid, name, isthing, role = int(row[0]), int(row[1]), row[2], row[3] == "1", row[4]
        _check(index == i, f"splits/{fname}: row {i + 1} has contiguous id {index}, expected {i}")
        _check(
            (cid, name, isthing) == (cat["id"], cat["name"], bool(cat["isthing"])),
            f"splits/{fname}: row {i + 1} ({cid}, {name}) disagrees with panoptic_coco_categories",
        )
        _check(role in ("seen", "unseen"), f"splits/{fname}: row {i + 1}: bad split {role!r}")
        _check((role == "unseen") == (name in unseen_json),
               f"splits/{fname}: {name} unseen flag disagrees with mscoco_unseen_classes.json")
        parsed.append((index, cid, name, isthing, role == "unseen"))
        if role == "seen":
            (seen_things if isthing else seen_stuff).append(cid)
    unseen = [p for p in parsed if p[4]]
    n_unseen_things = sum(1 for p in unseen if p[3])
    _check(len(unseen) == 14 and n_unseen_things == 7,
           f"splits/{fname}: expected 14 unseen classes (7 things + 7 stuff)")
    val = _derived_val_ids([(seen_things, n_unseen_things),
                            (seen_stuff, len(unseen) - n_unseen_things)])
    classes = tuple(
        ClassInfo(index=i, id=cid, name=name, isthing=th, unseen=un, val_unseen=cid in val)
        for i, cid, name, th, un in parsed
    )
    return Split(
        name="coco-panoptic/zsp-119-14", dataset="coco-panoptic", tasks=("panoptic",),
        protocol=PROTOCOL_DROP_IMAGES, classes=classes,
        source=f"{SOURCE_PADING}; category ids from {SOURCE_PANOPTICAPI}",
        description=(
            "PADing zero-shot panoptic (ZSP), COCO panoptic 2017: 119 seen / 14 unseen "
            "(7 things + 7 stuff); training drops every image with an unseen segment. "
            + ZEROSEG_VAL_NOTE
        ),
    )


def _cocostuff_names() -> dict[int, str]:
    """COCO-Stuff names by 0-based PNG label (0..181)."""
    labels = _labels("cocostuff_labels.txt")
    _check(labels.get(0) == "unlabeled" and len(labels) == 183,
           "splits/cocostuff_labels.txt: expected 'unlabeled' + 182 classes")
    return {cid - 1: name for cid, name in labels.items() if cid > 0}


def _coco_stuff_spnet() -> Split:
    fname = "cocostuff171_spnet_156_15.csv"
    rows = _csv_rows(fname)
    names = _cocostuff_names()
    val_labels = set(_ids("cocostuff_spnet_val_cls.csv"))
    _check(len(rows) == 171, f"splits/{fname}: expected 171 classes, found {len(rows)}")
    _check(len(val_labels) == 12, "splits/cocostuff_spnet_val_cls.csv: expected 12 classes")
    classes = []
    for i, row in enumerate(rows):
        train_id, png, cid, name, role = int(row[0]), int(row[1]), int(row[2]), row[3], row[4]
        _check(train_id == i, f"splits/{fname}: row {i + 1} has train id {train_id}, expected {i}")
        _check(cid == png + 1 and names.get(png) == name,
               f"splits/{fname}: row {i + 1} ({png}, {cid}, {name}) disagrees with the labels")
        unseen = role == "unseen"
        _check(not (unseen and png in val_labels), f"splits/{fname}: {name} is unseen and val")
        classes.append(ClassInfo(
            index=i, id=cid, name=name, isthing=cid <= COCO_LAST_THING_ID, unseen=unseen,
            val_unseen=png in val_labels, png_label=png,
        ))
    n_unseen = sum(c.unseen for c in classes)
    _check(n_unseen == 15 and all(c.unseen for c in classes[156:]),
           f"splits/{fname}: expected train ids 156..170 to be the 15 unseen classes")
    _check(sum(c.val_unseen for c in classes) == 12,
           "splits/cocostuff_spnet_val_cls.csv: a validation class is not among the 171")
    return Split(
        name="coco-stuff/spnet-156-15", dataset="coco-stuff", tasks=("semantic",),
        protocol=PROTOCOL_IGNORE_PIXELS, classes=tuple(classes),
        source=f"{SOURCE_PADING}; = {SOURCE_ZEGFORMER}; = {SOURCE_SPNET} (split npys)",
        description=(
            "zero-shot semantic segmentation (ZSS), COCO-Stuff 164k, 171 classes in PADing's "
            "train-id order: 156 seen / 15 unseen; training keeps every image and ignores "
            "unseen pixels. Validation classes: SPNet's 12 seen-val classes."
        ),
    )


def _coco_stuff_cap2seg() -> Split:
    names = _cocostuff_names()
    spnet_used = {int(r[1]) for r in _csv_rows("cocostuff171_spnet_156_15.csv")}
    seen = _ids("cocostuff_cap2seg_seen_cls.csv")
    val = _ids("cocostuff_cap2seg_val_cls.csv")
    novel = _ids("cocostuff_cap2seg_novel_cls.csv")
    groups = {g: _ids(f"cocostuff_cap2seg_novel_{g}.csv") for g in ("hard", "medium", "easy")}
    _check((len(seen), len(val), len(novel)) == (155, 12, 15),
           "splits/cocostuff_cap2seg_*_cls.csv: expected 155 seen, 12 val, 15 novel labels")
    _check(sorted(seen + val + novel) == list(range(182)),
           "splits/cocostuff_cap2seg_*_cls.csv: seen, val and novel must partition labels 0..181")
    _check(sorted(sum(groups.values(), [])) == sorted(novel),
           "splits/cocostuff_cap2seg_novel_{hard,medium,easy}.csv must partition the novel list")
    unused = set(range(182)) - spnet_used
    _check(len(unused) == 11 and unused <= set(seen),
           "cap2seg: the 11 labels COCO-Stuff never annotates must all be in the seen list")
    val_set, novel_set = set(val), set(novel)
    classes = tuple(
        ClassInfo(
            index=i, id=png + 1, name=names[png], isthing=png + 1 <= COCO_LAST_THING_ID,
            unseen=png in novel_set, val_unseen=png in val_set, png_label=png,
        )
        for i, png in enumerate(sorted(spnet_used))
    )
    return Split(
        name="coco-stuff/cap2seg-15", dataset="coco-stuff", tasks=("semantic",),
        protocol=PROTOCOL_IGNORE_PIXELS, classes=classes,
        source=f"{SOURCE_CAP2SEG} (data/datasets/cocostuff/split, the default split)",
        description=(
            "Cap2Seg default split, COCO-Stuff 164k: 171 annotated classes in PNG-label order "
            "(the 11 never-annotated labels of the 182 are dropped), 156 seen / 15 novel in "
            "hard/medium/easy groups; validation classes: Cap2Seg val_cls (wall-brick ... wood)."
        ),
        groups={g: tuple(png + 1 for png in ids) for g, ids in groups.items()},
    )


def _coco2014_zsi(num_seen: int, num_unseen: int) -> Split:
    fname = f"coco2014_zsi_{num_seen}_{num_unseen}.csv"
    rows = _csv_rows(fname)
    coco_names = {c["id"]: c["name"] for c in _panoptic_categories() if c["isthing"]}
    _check(len(rows) == num_seen + num_unseen,
           f"splits/{fname}: expected {num_seen + num_unseen} classes, found {len(rows)}")
    parsed = []
    for i, row in enumerate(rows):
        index, cid, name, role, column = int(row[0]), int(row[1]), row[2], row[3], int(row[4])
        _check(index == i and column == i + 1,
               f"splits/{fname}: row {i + 1}: expected contiguous id {i} and w2v column {i + 1}")
        _check(coco_names.get(cid) == name,
               f"splits/{fname}: row {i + 1}: COCO id {cid} is not {name!r}")
        _check(role == ("seen" if i < num_seen else "unseen"),
               f"splits/{fname}: row {i + 1}: expected the {num_seen} seen classes first")
        parsed.append((cid, name, role == "unseen", column))
    val = _derived_val_ids([([p[0] for p in parsed[:num_seen]], num_unseen)])
    classes = tuple(
        ClassInfo(index=i, id=cid, name=name, isthing=True, unseen=unseen,
                  val_unseen=cid in val, extra={"w2v_column": column})
        for i, (cid, name, unseen, column) in enumerate(parsed)
    )
    return Split(
        name=f"coco2014/zsi-{num_seen}-{num_unseen}", dataset="coco2014", tasks=("instance",),
        protocol=PROTOCOL_DROP_IMAGES, classes=classes,
        source=f"{SOURCE_ZSI}; {SOURCE_PADING}",
        description=(
            f"zero-shot instance segmentation / detection (ZSI/ZSD), COCO 2014: {num_seen} seen "
            f"/ {num_unseen} unseen in json order (seen first); training drops every image with "
            "an unseen instance. " + ZEROSEG_VAL_NOTE
        ),
    )


def _voc_labels() -> dict[int, str]:
    labels = _labels("voc12_labels.txt")
    _check(sorted(labels) == list(range(21)) and labels[0] == "__background__",
           "splits/voc12_labels.txt: expected labels 0 (background) .. 20")
    return labels


def _voc12_spnet() -> Split:
    labels = _voc_labels()
    seen = _ids("voc12_spnet_seen_cls.csv")
    val = _ids("voc12_spnet_val_cls.csv")
    novel = _ids("voc12_spnet_novel_cls.csv")
    _check((len(seen), len(val), len(novel)) == (12, 3, 5),
           "splits/voc12_spnet_*_cls.csv: expected 12 seen, 3 val, 5 novel classes")
    _check(sorted(seen + val + novel) == list(range(1, 21)),
           "splits/voc12_spnet_*_cls.csv: seen, val and novel must partition labels 1..20")
    classes = tuple(
        ClassInfo(index=label - 1, id=label, name=labels[label], isthing=True,
                  unseen=label in novel, val_unseen=label in val, png_label=label)
        for label in range(1, 21)
    )
    return Split(
        name="voc12/spnet-15-5", dataset="voc12", tasks=("semantic",),
        protocol=PROTOCOL_IGNORE_PIXELS, classes=classes, source=SOURCE_SPNET,
        description=(
            "SPNet PASCAL VOC 2012: 15 seen (12 + 3 seen-val) / 5 novel; background is in no "
            "class list, so it is not a class here (label 0 maps to ignore); training keeps "
            "every image and ignores unseen pixels."
        ),
    )


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


# ZS3's unseen-order files name two VOC classes differently from voc12_labels.txt.
_VOC_ALIASES = {"airplane": "aeroplane", "tv": "tvmonitor"}


def _zs3(dataset: str, labels: dict[int, str], order_file: str, k: int, things: set[int]) -> Split:
    orders = _unseen_orders(order_file)
    _check(sorted(orders) == [2, 4, 6, 8, 10], f"splits/{order_file}: expected 2,4,6,8,10 unseen")
    by_name = {_normalise(n): label for label, n in labels.items()}
    longest = orders[10]
    for size, names in orders.items():
        _check(names == longest[:size],
               f"splits/{order_file}: the {size}-unseen list is not a prefix of the 10-unseen one")
    unseen_ids = []
    for name in orders[k]:
        key = _normalise(_VOC_ALIASES.get(name, name))
        _check(key in by_name, f"splits/{order_file}: unknown class name {name!r}")
        unseen_ids.append(by_name[key])
    candidates = [label for label in sorted(labels) if label != 0 and label not in unseen_ids]
    val = _derived_val_ids([(candidates, k)])
    classes = tuple(
        ClassInfo(index=label, id=label, name=labels[label], isthing=label in things,
                  unseen=label in unseen_ids, val_unseen=label in val, png_label=label)
        for label in sorted(labels)
    )
    pretty = {"voc12": "PASCAL VOC 2012", "pascal-context": "Pascal-Context"}[dataset]
    return Split(
        name=f"{dataset}/zs3-{k}", dataset=dataset, tasks=("semantic",),
        protocol=PROTOCOL_DROP_IMAGES, classes=classes, source=SOURCE_ZS3,
        description=(
            f"ZS3Net {pretty}, {len(labels)} classes with background (a seen class): "
            f"{len(labels) - k} seen / {k} unseen ({', '.join(orders[k])}); training (stage 1) "
            "drops every image with an unseen pixel. " + ZEROSEG_VAL_NOTE
        ),
    )


def _voc12_zs3(k: int) -> Split:
    return _zs3("voc12", _voc_labels(), "voc12_zs3_unseen_order.txt", k, set(range(1, 21)))


def _pascal_context_zs3(k: int) -> Split:
    labels = _labels("pascal_context_zs3_labels.txt")
    _check(sorted(labels) == list(range(60)) and labels[0] == "background",
           "splits/pascal_context_zs3_labels.txt: expected labels 0 (background) .. 59")
    # Pascal-Context has no official thing/stuff flag: the 20 VOC object classes are things.
    return _zs3("pascal-context", labels, "pascal_context_zs3_unseen_order.txt", k,
                set(range(1, 21)))


_BUILDERS: tuple[Callable[[], Split], ...] = (
    _coco_panoptic_zsp,
    _coco_stuff_spnet,
    _coco_stuff_cap2seg,
    functools.partial(_coco2014_zsi, 48, 17),
    functools.partial(_coco2014_zsi, 65, 15),
    _voc12_spnet,
    *(functools.partial(_voc12_zs3, k) for k in (2, 4, 6, 8, 10)),
    *(functools.partial(_pascal_context_zs3, k) for k in (2, 4, 6, 8, 10)),
    synthetic_split,
)


@functools.cache
def _registry() -> dict[str, Split]:
    out: dict[str, Split] = {}
    for build in _BUILDERS:
        split = build()
        if split.name in out:
            raise ConfigError(f"split registry: duplicate split name {split.name!r}")
        out[split.name] = split
    log.debug("built %d splits from the package's split files", len(out))
    return out


# -- public API --------------------------------------------------------------------------------
def list_splits() -> list[Split]:
    """Every registered split, in a fixed order (COCO panoptic, COCO-Stuff, COCO 2014, VOC, ...)."""
    return list(_registry().values())


def split_names() -> list[str]:
    return list(_registry())


def as_split(split: str | Split) -> Split:
    """``split`` itself, or the split registered under that name."""
    if isinstance(split, Split):
        return split
    if not isinstance(split, str):
        raise ConfigError(f"split: expected a split name or Split, got {type(split).__name__}")
    return get_split(split)


def dataset_split(benchmark: str | None, root: str | Path, data_split: str = "train", *,
                  missing_hint: str) -> Split:
    """The split a dataset folder is used with: the registry's ``benchmark``, else the one the
    dataset was generated with (its ``classes.json``: the synthetic benchmark). Neither: a
    one-line :class:`ConfigError`, ``missing_hint`` saying how to name a split."""
    if benchmark:
        return get_split(benchmark)
    path = CocoLayout(Path(root), data_split).classes_json
    if not path.is_file():
        raise ConfigError(f"{path}: no classes.json in the dataset{missing_hint}")
    return load_classes_json(path)


def get_split(name: str) -> Split:
    """The split registered as ``name`` (ConfigError naming the closest known names if unknown)."""
    splits = _registry()
    if name in splits:
        return splits[name]
    close = difflib.get_close_matches(name, list(splits), n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(splits)}"
    raise ConfigError(f"split {name!r} is not registered; {hint}")


def split_table() -> list[dict[str, Any]]:
    """One row per split for ``zeroseg data list`` (JSON-serialisable)."""
    return [
        {
            "name": s.name,
            "dataset": s.dataset,
            "tasks": ",".join(s.tasks),
            "protocol": s.protocol,
            "classes": s.num_classes,
            "seen": len(s.seen),
            "unseen": len(s.unseen),
            "val_unseen": sum(c.val_unseen for c in s.classes),
            "source": s.source,
            "description": s.description,
        }
        for s in list_splits()
    ]
