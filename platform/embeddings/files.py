"""Class embeddings from a per-class vector file: the authors' files shipped with zeroseg, or yours.

Select a shipped file by name (``{"provider": "file", "name": "cocostuff_word2vec"}``; the list
is :func:`shipped_files`, described in ``vectors/manifest.json`` and ``vectors/SOURCES.md``) or
give a ``path`` and a ``layout``:

``rows_by_png_label``    one vector per row; row r belongs to the class with ``png_label == r``
``rows_by_id``           one vector per row; row r belongs to the class with ``id == r``
``rows_in_split_order``  one vector per row, in the split's contiguous class order
``columns_in_split_order``                  one vector per column, split order
``columns_in_split_order_with_background``  column 0 is background, then split order

For the ``*_in_split_order`` layouts, ``ids`` may list the category id of each class vector in
file order (after the background); classes are then found by id, so any split whose classes are
among those ids works (e.g. a validation view). Without ``ids`` the file must have exactly one
vector per class of the split.

Text files hold numbers separated by ``delimiter`` (``","`` by default, ``null`` for
whitespace), one row per line, no header; ``.npy`` files hold a 2-D array (never pickles).
A ragged row, a wrong dimension (``dim``), too few rows for the split, or a NaN/inf anywhere in
the file raises :class:`EmbeddingError` naming the file and what was expected.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zeroseg.platform.data.classes import Split
from zeroseg.platform.embeddings.config import ProviderConfig, option
from zeroseg.platform.embeddings.providers import EmbeddingProvider, register_provider
from zeroseg.platform.errors import ConfigError, EmbeddingError

log = logging.getLogger(__name__)

VECTORS_DIR = Path(__file__).resolve().parent / "vectors"
MANIFEST = VECTORS_DIR / "manifest.json"

LAYOUTS = (
    "rows_by_png_label",
    "rows_by_id",
    "rows_in_split_order",
    "columns_in_split_order",
    "columns_in_split_order_with_background",
)


@dataclass(frozen=True)
class ShippedFile:
    name: str
    path: Path
    layout: str
    dim: int
    vectors: int  # number of class vectors (background excluded)
    names: tuple[str, ...]  # class name of every vector in file order (background included)
    ids: tuple[int, ...] | None
    splits: tuple[str, ...]
    description: str
    source: dict[str, str]


@functools.cache
def shipped_files() -> dict[str, ShippedFile]:
    """The per-class vector files that ship with zeroseg, by name."""
    data = json.loads(MANIFEST.read_text(encoding="utf-8"))
    out = {}
    for name, entry in data["files"].items():
        out[name] = ShippedFile(
            name=name, path=VECTORS_DIR / entry["file"], layout=entry["layout"],
            dim=int(entry["dim"]), vectors=int(entry["vectors"]), names=tuple(entry["names"]),
            ids=tuple(entry["ids"]) if entry.get("ids") is not None else None,
            splits=tuple(entry["splits"]), description=entry["description"],
            source=dict(entry["source"]),
        )
    return out


@dataclass(frozen=True)
class FileConfig(ProviderConfig):
    name: str | None = option(None, doc="the name of a shipped vectors file")
    path: str | None = option(None, doc="the path of a vectors file (.csv/.txt numbers or .npy)")
    layout: str | None = option(None, choices=LAYOUTS, doc="how vectors map to classes")
    ids: tuple[int, ...] | None = option(
        None, doc="category id of each class vector in file order (after the background)")
    dim: int | None = option(None, minimum=1, doc="the expected vector dimension")
    delimiter: str | None = option(",", doc="column separator of text files (null: whitespace)")
    normalize: bool = option(False, doc="L2-normalise every class vector")

    def check(self) -> None:
        where = "embeddings.file"
        if (self.name is None) == (self.path is None):
            raise ConfigError(f"{where}: set exactly one of 'name' (a shipped file: "
                              f"{', '.join(sorted(shipped_files()))}) or 'path'")
        if self.name is not None:
            if self.name not in shipped_files():
                raise ConfigError(f"{where}.name: unknown shipped file {self.name!r} (known: "
                                  f"{', '.join(sorted(shipped_files()))})")
            for key in ("layout", "ids"):
                if getattr(self, key) is not None:
                    raise ConfigError(f"{where}.{key}: a shipped file ({self.name}) has its own "
                                      f"{key}; use 'path' to read the file another way")
        elif self.layout is None:
            raise ConfigError(f"{where}.layout: required with 'path' (expected one of "
                              f"{', '.join(LAYOUTS)})")
        if self.ids is not None and not self.resolved_layout().endswith(
                ("in_split_order", "in_split_order_with_background")):
            raise ConfigError(f"{where}.ids: only used with the *_in_split_order layouts")
        if self.ids is not None and len(set(self.ids)) != len(self.ids):
            raise ConfigError(f"{where}.ids: category ids must be distinct")
        if self.delimiter == "":
            raise ConfigError(f"{where}.delimiter: expected a separator or null (whitespace)")

    def shipped(self) -> ShippedFile | None:
        return shipped_files()[self.name] if self.name is not None else None

    def resolved_path(self) -> Path:
        shipped = self.shipped()
        return shipped.path if shipped is not None else Path(str(self.path))

    def resolved_layout(self) -> str:
        shipped = self.shipped()
        return shipped.layout if shipped is not None else str(self.layout)

    def resolved_ids(self) -> tuple[int, ...] | None:
        shipped = self.shipped()
        return shipped.ids if shipped is not None else self.ids


def read_vector_file(path: Path, delimiter: str | None = ",") -> np.ndarray:
    """A numeric 2-D array from a delimited text file or a .npy file, strictly checked."""
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise EmbeddingError(f"vectors file {path}: not a readable .npy array ({exc}); "
                                 f"expected a 2-D numeric array") from None
        if arr.ndim != 2 or arr.dtype.kind not in "fiu":
            raise EmbeddingError(f"vectors file {path}: holds a {arr.ndim}-D {arr.dtype} array; "
                                 f"expected a 2-D numeric array")
        arr = arr.astype(np.float64)
        bad = np.argwhere(~np.isfinite(arr))
        if bad.size:
            r, c = bad[0]
            raise EmbeddingError(f"vectors file {path}: non-finite value {arr[r, c]} at row {r}, "
                                 f"column {c}; expected finite numbers")
        return arr
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EmbeddingError(f"vectors file {path}: not UTF-8 text; expected rows of numbers "
                             f"separated by {delimiter or 'whitespace'!r} or a .npy file") from None
    rows: list[list[float]] = []
    width = first_line = 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        tokens = line.split(delimiter) if delimiter is not None else line.split()
        try:
            values = [float(t) for t in tokens]
        except ValueError:
            col = next(j for j, t in enumerate(tokens, start=1) if not _is_number(t))
            raise EmbeddingError(
                f"vectors file {path}, line {line_no}, column {col}: {tokens[col - 1].strip()!r} "
                f"is not a number; expected numbers separated by {delimiter or 'whitespace'!r} "
                f"and no header") from None
        if not rows:
            width, first_line = len(values), line_no
        elif len(values) != width:
            raise EmbeddingError(f"vectors file {path}, line {line_no}: {len(values)} values; "
                                 f"expected {width} like line {first_line}")
        for j, v in enumerate(values, start=1):
            if not np.isfinite(v):
                raise EmbeddingError(f"vectors file {path}, line {line_no}, column {j}: "
                                     f"non-finite value {v}; expected finite numbers")
        rows.append(values)
    if not rows:
        raise EmbeddingError(f"vectors file {path}: is empty; expected rows of numbers")
    return np.asarray(rows, dtype=np.float64)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _norm_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@register_provider
class FileProvider(EmbeddingProvider):
    name = "file"
    config_class = FileConfig
    config: FileConfig
    missing_hint = " (expected a per-class vectors file: .csv/.txt of numbers or .npy)"

    def input_files(self) -> dict[str, Path]:
        return {"vectors": self.config.resolved_path()}

    def source(self) -> str:
        return str(self.config.resolved_path())

    def key_material(self, split: Split) -> dict[str, Any]:
        material = super().key_material(split)
        material["class_ids"] = [[c.id, c.png_label] for c in split.classes]
        return material

    def embed(self, split: Split) -> np.ndarray:
        cfg = self.config
        path = cfg.resolved_path()
        layout = cfg.resolved_layout()
        table = read_vector_file(path, cfg.delimiter)
        by_columns = layout.startswith("columns")
        vectors = table.T if by_columns else table
        axis = "rows" if by_columns else "columns"  # what one vector's values run along
        shipped = cfg.shipped()
        expected_dim = cfg.dim if cfg.dim is not None else (shipped.dim if shipped else None)
        if expected_dim is not None and vectors.shape[1] != expected_dim:
            raise EmbeddingError(
                f"vectors file {path}: {vectors.shape[1]} {axis} per vector; expected dim "
                f"{expected_dim} (layout {layout})")
        offset = 1 if layout.endswith("with_background") else 0
        count = vectors.shape[0] - offset
        if shipped is not None and count != shipped.vectors:
            raise EmbeddingError(
                f"vectors file {path}: {count} class vectors; expected {shipped.vectors} "
                f"(shipped file {shipped.name}, layout {layout})")
        rows = self._rows(split, layout, count, offset, path)
        if shipped is not None:
            self._check_names(split, rows, shipped)
        out = vectors[rows]
        if cfg.normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out = out / np.where(norms > 0, norms, 1.0)
        return out.astype(np.float32)

    def _rows(self, split: Split, layout: str, count: int, offset: int, path: Path) -> list[int]:
        kind = "columns" if layout.startswith("columns") else "rows"
        if layout in ("rows_by_png_label", "rows_by_id"):
            attr = "png_label" if layout == "rows_by_png_label" else "id"
            rows = []
            for c in split.classes:
                value = getattr(c, attr)
                if value is None or value < 0:
                    raise EmbeddingError(
                        f"vectors file {path}: class {c.name!r} of split {split.name} has no "
                        f"{attr}; layout {layout} needs one per class")
                if value >= count:
                    need = max(getattr(k, attr) or 0 for k in split.classes) + 1
                    raise EmbeddingError(
                        f"vectors file {path}: {count} rows, but class {c.name!r} needs row "
                        f"{value} ({attr}); expected at least {need} rows for split {split.name}")
                rows.append(value)
            return rows
        ids = self.config.resolved_ids()
        background = " after the background" if offset else ""
        if ids is None:
            if count != split.num_classes:
                raise EmbeddingError(
                    f"vectors file {path}: {count} class {kind}{background}; layout {layout} "
                    f"expects one per class of split {split.name} ({split.num_classes})")
            return [offset + c.index for c in split.classes]
        if len(ids) != count:
            raise EmbeddingError(
                f"vectors file {path}: {count} class {kind}{background}, but ids lists "
                f"{len(ids)}; expected one id per class vector")
        position = {cid: offset + i for i, cid in enumerate(ids)}
        missing = [c for c in split.classes if c.id not in position]
        if missing:
            raise EmbeddingError(
                f"vectors file {path}: {len(missing)} classes of split {split.name} are not "
                f"among the file's {count} class ids (first: {missing[0].name!r}, id "
                f"{missing[0].id}); expected a split over those ids")
        return [position[c.id] for c in split.classes]

    @staticmethod
    def _check_names(split: Split, rows: list[int], shipped: ShippedFile) -> None:
        """Guard against a shipped file used with the wrong split: names must mostly agree."""
        differ = [(c.name, shipped.names[r]) for c, r in zip(split.classes, rows, strict=True)
                  if _norm_name(c.name) != _norm_name(shipped.names[r])]
        if not differ:
            return
        examples = ", ".join(f"{a!r} vs {b!r}" for a, b in differ[:3])
        if 2 * len(differ) > split.num_classes:
            raise EmbeddingError(
                f"vectors file {shipped.path}: {len(differ)} of {split.num_classes} class names "
                f"of split {split.name} differ from the file's ({examples}); expected a split "
                f"like {', '.join(shipped.splits)}")
        log.warning("shipped vectors %s: %d class names of split %s differ from the file's "
                    "(%s); using the vectors by position", shipped.name, len(differ), split.name,
                    examples)
