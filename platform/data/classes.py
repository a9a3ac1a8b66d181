"""The class vocabulary of a benchmark split: which classes exist and which are seen or unseen.

A :class:`Split` is the one object the rest of zeroseg passes around to know the label space.
Classes are kept in *contiguous order* (index 0..C-1); that order is the column order of every
classifier, embedding matrix and confusion matrix. Each class also carries its dataset ids:

- ``id``: the category id used in the dataset's json files (COCO category id; VOC label);
- ``png_label``: the value of the class in semantic PNGs (COCO-Stuff: id - 1; VOC: id);
  255 is always "unlabeled / ignore".

Roles: ``unseen`` classes are the test split's zero-shot classes. ``val_unseen`` are *seen* classes
held out to play the unseen role on the validation split, so hyperparameters are never chosen on
the test split's unseen classes (DESIGN.md section 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zeroseg.platform.errors import ConfigError

IGNORE_LABEL = 255

#: How a protocol keeps unseen classes out of training (DESIGN.md section 3).
PROTOCOL_DROP_IMAGES = "drop-images"  # any unseen pixel/instance (crowd included) drops the image
PROTOCOL_IGNORE_PIXELS = "ignore-pixels"  # keep images, unseen pixels become IGNORE_LABEL
PROTOCOLS = (PROTOCOL_DROP_IMAGES, PROTOCOL_IGNORE_PIXELS)


@dataclass(frozen=True)
class ClassInfo:
    index: int  # contiguous index 0..C-1
    id: int  # category id in the dataset's json
    name: str
    isthing: bool
    unseen: bool  # unseen on the test split
    val_unseen: bool = False  # a seen class held out as "unseen" on the validation split
    png_label: int | None = None  # value in semantic PNGs; None if the dataset has none
    attributes: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Split:
    """Seen/unseen partition of one benchmark's label space."""

    name: str  # registry key, e.g. "coco-panoptic/zsp-119-14"
    dataset: str  # coco-panoptic, coco-stuff, coco2014, voc12, pascal-context, synthetic
    tasks: tuple[str, ...]  # subset of ("semantic", "instance", "panoptic")
    protocol: str  # PROTOCOL_DROP_IMAGES or PROTOCOL_IGNORE_PIXELS for the training filter
    classes: tuple[ClassInfo, ...]
    source: str = ""  # where the split comes from (paper / repository)
    description: str = ""
    groups: dict[str, tuple[int, ...]] = field(default_factory=dict, compare=False, hash=False)
    # ``groups``: named subsets of unseen class ids (e.g. Cap2Seg's hard/medium/easy).

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(
                f"split {self.name}: protocol {self.protocol!r} is not one of {PROTOCOLS}")
        for i, c in enumerate(self.classes):
            if c.index != i:
                raise ConfigError(
                    f"split {self.name}: class {c.name!r} has index {c.index}, expected {i}")
            if c.unseen and c.val_unseen:
                raise ConfigError(
                    f"split {self.name}: class {c.name!r} is both unseen and val_unseen")
        ids = [c.id for c in self.classes]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"split {self.name}: duplicate category ids")

    # -- views -------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def seen(self) -> list[ClassInfo]:
        return [c for c in self.classes if not c.unseen]

    @property
    def unseen(self) -> list[ClassInfo]:
        return [c for c in self.classes if c.unseen]

    @property
    def seen_mask(self) -> np.ndarray:
        return np.array([not c.unseen for c in self.classes], dtype=bool)

    @property
    def unseen_mask(self) -> np.ndarray:
        return ~self.seen_mask

    def by_id(self, category_id: int) -> ClassInfo:
        for c in self.classes:
            if c.id == category_id:
                return c
        raise ConfigError(f"split {self.name}: unknown category id {category_id}")

    def by_name(self, name: str) -> ClassInfo:
        for c in self.classes:
            if c.name == name:
                return c
        raise ConfigError(
            f"split {self.name}: unknown class name {name!r} "
            f"(known: {', '.join(self.names[:8])}, ...)"
        )

    def id_to_index(self) -> dict[int, int]:
        return {c.id: c.index for c in self.classes}

    def png_lut(self) -> np.ndarray:
        """256-entry lookup table: semantic PNG value -> contiguous index (IGNORE_LABEL if none)."""
        lut = np.full(256, IGNORE_LABEL, dtype=np.int64)
        for c in self.classes:
            if c.png_label is not None:
                lut[c.png_label] = c.index
        return lut

    def validation_view(self) -> Split:
        """The validation split: ``val_unseen`` classes play the unseen role; the test split's
        unseen classes are removed altogether (they must not influence model selection)."""
        kept = [c for c in self.classes if not c.unseen]
        if not any(c.val_unseen for c in kept):
            raise ConfigError(f"split {self.name}: no validation (held-out seen) classes defined")
        classes = tuple(
            ClassInfo(
                index=i, id=c.id, name=c.name, isthing=c.isthing, unseen=c.val_unseen,
                val_unseen=False, png_label=c.png_label, attributes=c.attributes, extra=c.extra,
            )
            for i, c in enumerate(kept)
        )
        return Split(
            name=f"{self.name}:val", dataset=self.dataset, tasks=self.tasks, protocol=self.protocol,
            classes=classes, source=self.source,
            description=f"validation view of {self.name}: held-out seen classes play unseen",
        )
