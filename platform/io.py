"""Atomic writes: results, caches and datasets are either complete or absent, never half-written.

Files are written to a temporary sibling and renamed into place (``os.replace`` is atomic on
POSIX within one filesystem). Directories are built in a temporary sibling and renamed likewise.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zeroseg.platform.errors import DataError


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any, *, indent: int | None = None) -> str:
    """Deterministic JSON: same object, same bytes (keys keep their order: COCO order matters).
    NaN is refused: JSON has none, and a NaN metric is a bug to surface, not to write."""
    separators = None if indent is not None else (",", ":")
    return json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False,
                      separators=separators)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = None) -> None:
    atomic_write_text(path, dumps_json(obj, indent=indent) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block succeeds.

    With ``overwrite=False`` an existing non-empty ``path`` is an error raised by the caller's
    checks; here an existing directory is replaced only when ``overwrite`` is true.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} already exists")
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: str | os.PathLike, what: str, *, expect: type | None = None,
              required: tuple[str, ...] | list[str] = ()) -> Any:
    """Read a json file; a missing file, malformed JSON, a top level of the wrong type or a
    missing list field is a one-line :class:`DataError` naming the file and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON in {what} ({e.msg} at line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read {what} ({e})") from None
    if required:
        expect = dict
    if expect is not None and not isinstance(data, expect):
        raise DataError(f"{path}: {what} must be a JSON {'object' if expect is dict else 'list'}, "
                        f"got {type(data).__name__}")
    for key in required:
        if key not in data:
            raise DataError(f"{path}: {what} has no '{key}' (expected keys: {', '.join(required)})")
        if not isinstance(data[key], list):
            raise DataError(f"{path}: '{key}' must be a list in {what}")
    return data
