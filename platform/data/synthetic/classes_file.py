"""``annotations/classes.json`` of a generated synthetic dataset: the label space and its roles.

The file records every class with its attributes and roles, so code that only has a dataset on
disk can rebuild the :class:`Split` it was generated with (:func:`load_classes_json`)::

    {"benchmark": "synthetic", "split": "synthetic/default", "size": "tiny", "seed": 0,
     "image_size": 128, "attributes": {"colour": [...], "shape": [...], ...},
     "categories": [{"id", "name", "isthing", "role", "val_role", "png_label", "attributes",
                     "color", "caption_group"}, ...],
     "splits": {"test": {"seen": [ids], "unseen": [ids]}, "val": {"seen": [ids], "unseen": [ids]}}}

``role`` is the test split's role; ``val_role`` is "unseen" for classes held out for validation,
"excluded" for the test split's unseen classes (absent from the validation view) and "seen"
otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zeroseg.platform.data.classes import (
    IGNORE_LABEL,
    PROTOCOL_DROP_IMAGES,
    PROTOCOL_IGNORE_PIXELS,
    PROTOCOLS,
    ClassInfo,
    Split,
)
from zeroseg.platform.data.synthetic.vocabulary import (
    CAP2SEG_SPLIT_NAME,
    CAPTION_GROUPS,
    COLOURS,
    PALETTES,
    SHAPES,
    TEXTURES,
    synthetic_split,
)
from zeroseg.platform.errors import DataError
from zeroseg.platform.io import read_json

BENCHMARK = "synthetic"
ROLES = ("seen", "unseen")
VAL_ROLES = ("seen", "unseen", "excluded")


def attribute_values() -> dict[str, list[str]]:
    """Every attribute of the vocabulary and its values, in a fixed order."""
    return {
        "colour": list(COLOURS),
        "shape": list(SHAPES),
        "texture": list(TEXTURES),
        "palette": list(PALETTES),
        "position": sorted({position for _, position in PALETTES.values()}, reverse=True),
    }


def _val_role(c: ClassInfo) -> str:
    if c.unseen:
        return "excluded"
    return "unseen" if c.val_unseen else "seen"


def classes_document(split: Split, *, size: str, seed: int, image_size: int,
                     variant: str = "default") -> dict[str, Any]:
    """The classes.json content for ``split`` (the synthetic vocabulary). The caption variant
    adds ``variant`` and ``protocol`` (ignore-pixels) and names the split ``synthetic/cap2seg``;
    the default document is unchanged."""
    categories = [
        {
            "id": c.id, "name": c.name, "isthing": int(c.isthing),
            "role": "unseen" if c.unseen else "seen", "val_role": _val_role(c),
            "png_label": c.png_label, "attributes": dict(c.attributes),
            "color": list(c.extra["color"]), "caption_group": c.extra["caption_group"],
        }
        for c in split.classes
    ]
    extra = ({} if variant == "default" else
             {"variant": variant, "protocol": PROTOCOL_IGNORE_PIXELS})
    return {
        "benchmark": BENCHMARK,
        "split": split.name if variant == "default" else CAP2SEG_SPLIT_NAME, **extra,
        "size": size, "seed": seed,
        "image_size": image_size, "attributes": attribute_values(), "categories": categories,
        "splits": {
            "test": {"seen": [c.id for c in split.classes if not c.unseen],
                     "unseen": [c.id for c in split.classes if c.unseen]},
            "val": {"seen": [c.id for c in split.classes if not c.unseen and not c.val_unseen],
                    "unseen": [c.id for c in split.classes if c.val_unseen]},
        },
    }


def _field(obj: Any, key: str, kind: type | tuple[type, ...], where: str, path: Path) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{path}: {where}: missing field {key!r}")
    value = obj[key]
    # bool is an int subclass: never accept it where a number is expected, and vice versa.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        names = "/".join(k.__name__ for k in _as_tuple(kind))
        raise DataError(f"{path}: {where}.{key}: expected {names}, got {type(value).__name__}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def load_classes_json(path: str | Path) -> Split:
    """Rebuild the :class:`Split` of a generated synthetic dataset from its classes.json.

    Checks the file's own consistency (fields and types, roles against the ``splits`` lists,
    unique ids and PNG labels); any problem is a one-line :class:`DataError`.
    """
    path = Path(path)
    doc = read_json(path, "classes.json", expect=dict)
    benchmark = _field(doc, "benchmark", str, "top level", path)
    if benchmark != BENCHMARK:
        raise DataError(f"{path}: benchmark: expected {BENCHMARK!r}, got {benchmark!r}")
    name = _field(doc, "split", str, "top level", path)
    protocol = doc.get("protocol", PROTOCOL_DROP_IMAGES)
    if protocol not in PROTOCOLS:
        raise DataError(f"{path}: protocol: expected one of {PROTOCOLS}, got {protocol!r}")
    categories = _field(doc, "categories", list, "top level", path)
    splits = _field(doc, "splits", dict, "top level", path)
    if not categories:
        raise DataError(f"{path}: categories: expected a non-empty list")

    classes: list[ClassInfo] = []
    for i, cat in enumerate(categories):
        where = f"categories[{i}]"
        cid = _field(cat, "id", int, where, path)
        cname = _field(cat, "name", str, where, path)
        isthing = _field(cat, "isthing", (int, bool), where, path)
        role = _field(cat, "role", str, where, path)
        val_role = _field(cat, "val_role", str, where, path)
        png_label = _field(cat, "png_label", int, where, path)
        attributes = _field(cat, "attributes", dict, where, path)
        color = _field(cat, "color", list, where, path)
        group = _field(cat, "caption_group", str, where, path)
        if role not in ROLES:
            raise DataError(f"{path}: {where}.role: expected one of {ROLES}, got {role!r}")
        if val_role not in VAL_ROLES:
            raise DataError(f"{path}: {where}.val_role: expected one of {VAL_ROLES}, "
                            f"got {val_role!r}")
        if (role == "unseen") != (val_role == "excluded"):
            raise DataError(f"{path}: {where}.val_role: expected 'excluded' exactly for unseen "
                            f"classes, got {val_role!r} for role {role!r}")
        if isthing not in (0, 1):
            raise DataError(f"{path}: {where}.isthing: expected 0 or 1, got {isthing!r}")
        if not 0 <= png_label < IGNORE_LABEL:
            raise DataError(f"{path}: {where}.png_label: expected 0..{IGNORE_LABEL - 1}, "
                            f"got {png_label}")
        if len(color) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in color):
            raise DataError(f"{path}: {where}.color: expected three integers 0..255")
        if group not in CAPTION_GROUPS:
            raise DataError(f"{path}: {where}.caption_group: expected one of {CAPTION_GROUPS}, "
                            f"got {group!r}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()):
            raise DataError(f"{path}: {where}.attributes: expected string keys and values")
        classes.append(ClassInfo(
            index=i, id=cid, name=cname, isthing=bool(isthing), unseen=role == "unseen",
            val_unseen=val_role == "unseen", png_label=png_label, attributes=dict(attributes),
            extra={"color": list(color), "caption_group": group},
        ))

    ids = [c.id for c in classes]
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: categories: duplicate category ids")
    labels = [c.png_label for c in classes]
    if len(set(labels)) != len(labels):
        raise DataError(f"{path}: categories: duplicate png_label values")
    expected = {
        "test": {"seen": [c.id for c in classes if not c.unseen],
                 "unseen": [c.id for c in classes if c.unseen]},
        "val": {"seen": [c.id for c in classes if not c.unseen and not c.val_unseen],
                "unseen": [c.id for c in classes if c.val_unseen]},
    }
    for split_name, roles in expected.items():
        listed = _field(splits, split_name, dict, "splits", path)
        for role_name, want in roles.items():
            got = _field(listed, role_name, list, f"splits.{split_name}", path)
            if sorted(got) != sorted(want):
                raise DataError(f"{path}: splits.{split_name}.{role_name}: expected ids {want} "
                                f"(from the categories' roles), got {got}")

    # The default vocabulary's descriptive fields, when the file was generated from it.
    reference = synthetic_split()
    same_name = name == reference.name
    return Split(
        name=name, dataset=BENCHMARK, tasks=reference.tasks, protocol=protocol,
        classes=tuple(classes),
        source=reference.source if same_name else f"zeroseg synthetic benchmark ({path})",
        description=reference.description if same_name else "",
        groups={g: tuple(c.id for c in classes if c.unseen and c.extra["caption_group"] == g)
                for g in CAPTION_GROUPS},
    )
