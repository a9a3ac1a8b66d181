"""Outputs honour the process umask: atomic writes and atomic folders end with the permissions a
plain open() / mkdir would give them (mkstemp alone gives 0600, mkdtemp 0700)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from zeroseg.platform.io import (
    atomic_directory,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    current_umask,
    temp_sibling_dir,
)


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)

    def set_mask(mask: int) -> int:
        os.umask(mask)
        return mask

    yield set_mask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _plain_modes(tmp_path: Path) -> tuple[int, int]:
    """What open() and mkdir give under the current umask (the reference)."""
    ref_file = tmp_path / "plain.txt"
    ref_file.write_text("x")
    ref_dir = tmp_path / "plain_dir"
    ref_dir.mkdir()
    return _mode(ref_file), _mode(ref_dir)


@pytest.mark.parametrize("mask,file_mode,dir_mode", [
    (0o022, 0o644, 0o755),
    (0o002, 0o664, 0o775),
    (0o077, 0o600, 0o700),
    (0o027, 0o640, 0o750),
])
def test_atomic_writes_follow_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    assert current_umask() == mask
    assert _plain_modes(tmp_path) == (file_mode, dir_mode)

    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.txt", "hello")
    atomic_write_json(tmp_path / "c.json", {"k": 1})
    for name in ("a.bin", "b.txt", "c.json"):
        assert _mode(tmp_path / name) == file_mode, name
    assert (tmp_path / "c.json").read_text() == '{"k":1}\n'

    # a file the writer creates its parents for: parents as mkdir(parents=True) makes them
    atomic_write_text(tmp_path / "deep" / "er" / "d.txt", "x")
    assert _mode(tmp_path / "deep" / "er" / "d.txt") == file_mode

    out = tmp_path / "built"
    with atomic_directory(out) as tmp:
        (tmp / "inner").mkdir()
        atomic_write_text(tmp / "inner" / "e.txt", "y")
    assert _mode(out) == dir_mode
    assert _mode(out / "inner") == dir_mode
    assert _mode(out / "inner" / "e.txt") == file_mode

    assert _mode(temp_sibling_dir(tmp_path / "other")) == dir_mode


def test_replacing_a_private_file_widens_it_to_the_umask(tmp_path, umask):
    """A file left 0600 (by an earlier version's mkstemp) is rewritten with the umask's bits."""
    umask(0o022)
    path = tmp_path / "results.json"
    path.write_text("{}")
    path.chmod(0o600)
    atomic_write_json(path, {"a": 1})
    assert _mode(path) == 0o644

    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "x").write_text("1")
    os.chmod(tmp_path / "d", 0o700)
    with atomic_directory(tmp_path / "d", overwrite=True) as tmp:
        (tmp / "x").write_text("2")
    assert _mode(tmp_path / "d") == 0o755
    assert (tmp_path / "d" / "x").read_text() == "2"


def test_failed_write_leaves_no_temporary_file(tmp_path, umask):
    umask(0o002)
    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "f.bin", "not bytes")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
