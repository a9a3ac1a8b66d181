"""Class embeddings from a per-class vector file: the authors' files shipped with zeroseg, or yours.

Select a shipped file by name (``{"provider": "file", "name": "cocostuff_word2vec"}``; the list
is :func:`shipped_files`, described in ``vectors/manifest.json`` and ``vectors/SOURCES.md``) or
give a ``path`` and a ``layout``:

``rows_by_png_label``    one vector per row; row r belongs to the class with ``png_label == r``
``rows_by_id``           one vector per row; row r belongs to the class with ``id == r``
``rows_in_split_order``  one vector per row, in the split's contiguous class order
``columns_in_split_order``                  one vector per column, split order
``columns_in_split_order_with_background``  column 0 is background, then split order

Derived shipped files (``derived_from`` in the manifest) are computed from another shipped file
through a table: ``coco_panoptic_word2vec`` / ``coco_panoptic_fasttext`` give the 133 COCO
panoptic classes (``coco-panoptic/zsp-119-14``, which has no author vectors: PADing used CLIP)
the mean of their COCO-Stuff classes' L2-normalised vectors, L2-normalised, through the COCO
panoptic merge table ``vectors/panoptic133_to_cocostuff182.csv`` (:func:`merged_vectors`).

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

import csv
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
    default_for: tuple[str, ...] = ()  # splits whose default provider is this file
    derived_from: str | None = None  # shipped file the vectors are computed from (via path)

    @property
    def vectors_path(self) -> Path:
        """The file holding the numbers (the base file of a derived one)."""
        if self.derived_from is None:
            return self.path
        return shipped_files()[self.derived_from].path


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
            source=dict(entry["source"]), default_for=tuple(entry.get("default_for", ())),
            derived_from=entry.get("derived_from"),
        )
    return out


#: columns of the merge table ``vectors/panoptic133_to_cocostuff182.csv``
MERGE_COLUMNS = ("panoptic_id", "panoptic_name", "cocostuff_png_labels_0based")


def merged_vectors(base: np.ndarray, table: Path) -> tuple[np.ndarray, list[int], list[str]]:
    """Vectors of merged classes from per-label vectors: ``(matrix, ids, names)`` in table
    order. Each row of ``table`` (csv with :data:`MERGE_COLUMNS`) lists the 0-based rows of
    ``base`` it merges (space-separated); its vector is the mean of those rows, each
    L2-normalised first, then L2-normalised (the prompt-ensemble rule of PADing's CLIP
    vectors, applied to word vectors)."""
    try:
        with table.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise EmbeddingError(f"merge table {table}: cannot read it ({exc})") from None
    missing = [c for c in MERGE_COLUMNS if not rows or c not in rows[0]]
    if missing:
        raise EmbeddingError(f"merge table {table}: no column {missing[0]!r}; expected a csv "
                             f"with columns {', '.join(MERGE_COLUMNS)}")
    out = np.empty((len(rows), base.shape[1]), dtype=np.float64)
    ids, names = [], []
    for i, row in enumerate(rows):
        where = f"merge table {table}, line {i + 2}"
        try:
            members = [int(v) for v in row["cocostuff_png_labels_0based"].split()]
            ids.append(int(row["panoptic_id"]))
        except ValueError:
            raise EmbeddingError(f"{where}: expected an integer panoptic_id and space-separated "
                                 f"integer labels") from None
        if not members or min(members) < 0 or max(members) >= base.shape[0]:
            raise EmbeddingError(f"{where}: labels {members} must be rows 0..{base.shape[0] - 1}"
                                 f" of the vectors file")
        vecs = base[members]
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        if (norms == 0).any():
            raise EmbeddingError(f"{where}: a merged label's vector is all zeros")
        mean = (vecs / norms).mean(axis=0)
        out[i] = mean / np.linalg.norm(mean)
        names.append(row["panoptic_name"])
    return out, ids, names


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


def default_file_for(split_name: str) -> ShippedFile | None:
    """The shipped file that is ``split_name``'s default (manifest ``default_for``), if any;
    a validation view (``NAME:val``) has its split's default."""
    base = split_name.split(":", 1)[0]
    for shipped in shipped_files().values():
        if base in shipped.default_for:
            return shipped
    return None


def _default_hint(split: Split) -> str:
    shipped = default_file_for(split.name)
    if shipped is None:
        return ""
    return f" (for {split.name.split(':', 1)[0]}: provider file with name={shipped.name})"


def _norm_name(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@register_provider
class FileProvider(EmbeddingProvider):
    name = "file"
    config_class = FileConfig
    config: FileConfig
    missing_hint = " (expected a per-class vectors file: .csv/.txt of numbers or .npy)"

    def input_files(self) -> dict[str, Path]:
        shipped = self.config.shipped()
        if shipped is not None and shipped.derived_from is not None:
            return {"vectors": shipped.vectors_path, "merge_table": shipped.path}
        return {"vectors": self.config.resolved_path()}

    def source(self) -> str:
        shipped = self.config.shipped()
        if shipped is not None and shipped.derived_from is not None:
            return f"{shipped.vectors_path} merged by {shipped.path}"
        return str(self.config.resolved_path())

    def key_material(self, split: Split) -> dict[str, Any]:
        material = super().key_material(split)
        material["class_ids"] = [[c.id, c.png_label] for c in split.classes]
        shipped = self.config.shipped()
        if shipped is not None and shipped.derived_from is not None:
            material["derived"] = {"from": shipped.derived_from,
                                   "rule": "mean of L2-normalised member rows, L2-normalised"}
        return material

    def embed(self, split: Split) -> np.ndarray:
        cfg = self.config
        path = cfg.resolved_path()
        layout = cfg.resolved_layout()
        shipped = cfg.shipped()
        if shipped is not None and shipped.derived_from is not None:
            table, ids, names = merged_vectors(read_vector_file(shipped.vectors_path), path)
            if ids != list(shipped.ids or ()) or names != list(shipped.names):
                raise EmbeddingError(f"merge table {path}: its classes differ from the manifest "
                                     f"entry {shipped.name}; expected the shipped table")
            path = shipped.vectors_path  # name the numbers' file in the messages below
        else:
            table = read_vector_file(path, cfg.delimiter)
        by_columns = layout.startswith("columns")
        vectors = table.T if by_columns else table
        axis = "rows" if by_columns else "columns"  # what one vector's values run along
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
                        f"vectors file {path}: does not cover class {c.name!r} of split "
                        f"{split.name}: the class has no {attr}, by which layout {layout} finds "
                        f"its row; expected a vectors file covering every class of the split"
                        f"{_default_hint(split)}")
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
                first = (f"; the first class without one is {split.classes[count].name!r}"
                         if count < split.num_classes else "")
                raise EmbeddingError(
                    f"vectors file {path}: {count} class {kind}{background}; layout {layout} "
                    f"expects one per class of split {split.name} ({split.num_classes}){first}")
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
