"""Shared test set-up: quiet, offline, deterministic; one Ray instance per test module."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def run_read_only(folder: str | os.PathLike, argv: list[str], **kwargs
                  ) -> subprocess.CompletedProcess:
    """Run ``argv`` with ``folder`` on a read-only file system: a read-only bind mount in a
    private mount namespace (``unshare -m``, as root: permission bits do not stop root), else
    (another user) with the folder's write bits removed for the duration. Skips the test when
    neither is possible."""
    folder = str(folder)
    if os.geteuid() == 0:
        if shutil.which("unshare") is None:
            pytest.skip("read-only file system: needs unshare (util-linux) when run as root")
        wrapped = ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"',
                   folder, *argv]
        result = subprocess.run(wrapped, **kwargs)
        if result.returncode != 0 and "mount" in (result.stderr or "") and \
                "Read-only" not in (result.stderr or ""):
            pytest.skip(f"read-only file system: unshare/mount refused ({result.stderr[:200]})")
        return result
    modes = {p: p.stat().st_mode for p in [Path(folder), *Path(folder).rglob("*")]}
    try:
        for path, mode in modes.items():
            path.chmod(mode & ~0o222)
        return subprocess.run(argv, **kwargs)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)


def kill_ray_leftovers(marker: str) -> None:
    """End the Ray processes a killed driver leaves behind (STACK.md), by PID: those whose
    command line holds ``marker`` (the RAY_TMPDIR the test gave that driver)."""
    import signal

    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    for line in out.splitlines()[1:]:
        pid, _, args = line.strip().partition(" ")
        if marker in args and ("ray" in args or "raylet" in args or "gcs_server" in args):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


@pytest.fixture(autouse=True, scope="module")
def _one_ray_per_module():
    """A module that started Ray (a sweep, a distributed generator) shuts it down when it is
    done, so the next module in the same test process can start its own."""
    yield
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
