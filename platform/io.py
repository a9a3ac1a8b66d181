"""Atomic writes: results, caches and datasets are either complete or absent, never half-written.

Files are written to a temporary sibling and renamed into place (``os.replace`` is atomic on
POSIX within one filesystem). Directories are built in a temporary sibling and renamed likewise.

A temporary sibling is named ``.NAME.PID@HOST.XXXXXXXX.tmp``. A process killed with SIGKILL
cannot remove its own; the next write of the same path removes every such sibling whose
process, on this host, no longer runs (and, from before the owner was recorded in the name,
any ``.NAME.*.tmp`` older than a day). :func:`check_writable_dir` / :func:`check_writable_file`
let a command refuse an output it cannot write, in one line, before its expensive work.

Permissions follow the process umask, as a plain ``open(path, "w")`` / ``mkdir`` would give
them (0644 / 0755 under umask 022, 0664 / 0775 under 002): ``mkstemp`` creates 0600 files and
``mkdtemp`` 0700 folders, which would make outputs in a shared ``work_dir`` unreadable to other
users and nodes, so both are widened to ``0666 & ~umask`` / ``0777 & ~umask`` before they are
renamed into place. A replaced file gets these permissions too (not the old file's).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from zeroseg.platform.errors import DataError, OutputError

LEGACY_TEMP_AGE_S = 24 * 3600  # temporary siblings without an owner in their name

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: the ``Umask``
    line of /proc/self/status); elsewhere set and restored at once under a lock."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The permission bits a new file gets from ``open(path, "w")``: 0o666 & ~umask."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The permission bits a new folder gets from ``mkdir``: 0o777 & ~umask."""
    return 0o777 & ~current_umask()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}@{_host()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of ``path`` left by killed writers (module docstring);
    returns what was removed."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    owned = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)@([A-Za-z0-9-]+)\..+\.tmp$")
    legacy = re.compile(rf"^\.{re.escape(path.name)}\.[A-Za-z0-9_]+\.tmp$")
    removed = []
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return []
    for sibling in siblings:
        stale = False
        match = owned.match(sibling.name)
        if match:
            stale = match.group(2) == _host() and not _alive(int(match.group(1)))
        elif legacy.match(sibling.name):
            with contextlib.suppress(OSError):
                stale = time.time() - sibling.lstat().st_mtime > LEGACY_TEMP_AGE_S
        else:
            continue
        if not stale:
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                sibling.unlink()
        removed.append(sibling)
    return removed


def check_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Make sure files can be created in folder ``path``, or in the folders a later write would
    create it in: the nearest existing one must be a folder that takes a file (a probe file,
    removed at once). Nothing else is created; a one-line :class:`OutputError` naming the path
    and ``what`` it is for otherwise."""
    path = Path(path)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise OutputError(f"{path}: cannot write the {what} there ({existing} is a file, not a "
                          "folder)")
    try:
        fd, probe = tempfile.mkstemp(prefix=".zeroseg-write-probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{path}: cannot write the {what} there ({existing}: "
                          f"{e.strerror or type(e).__name__})") from None
    return path


def check_writable_file(path: str | os.PathLike, what: str) -> Path:
    """Make sure file ``path`` can be written: not a folder, and its folder (or the nearest
    existing one above it) writable; a one-line :class:`OutputError` otherwise."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; the {what} needs a file path")
    check_writable_dir(path.parent, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{path}: cannot write the {what} there (permission denied)")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())  # mkstemp made it 0600
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


def temp_sibling_dir(path: str | os.PathLike) -> Path:
    """A new temporary folder beside ``path`` (its parents created), for building ``path`` in,
    with the permissions ``mkdir`` would give it (not mkdtemp's 0700); stale ones of killed
    writers are removed first (module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, dir_mode())
    return tmp


def replace_dir(tmp: Path, path: Path) -> None:
    """Move the finished folder ``tmp`` to ``path``, replacing what is there."""
    if path.exists():
        old = path.with_name(f".{path.name}.old.{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block succeeds.

    With ``overwrite=False`` an existing non-empty ``path`` is an error raised by the caller's
    checks; here an existing directory is replaced only when ``overwrite`` is true.
    """
    path = Path(path)
    tmp = temp_sibling_dir(path)
    try:
        yield tmp
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists")
        replace_dir(tmp, path)
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
