"""Start the dashboard: ``python -m streamlit run app.py`` on the results store.

:func:`main` is what ``zeroseg dashboard [--store URL] [--port P] [--host H]`` calls. It runs
Streamlit in a child process (headless, usage statistics off, bound to 127.0.0.1 unless
``host`` says otherwise) and returns its exit code; Ctrl-C stops it and returns 0.

``python -m zeroseg.dashboards.launch --store URL --port P`` is ``zeroseg dashboard --store URL
--port P``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from zeroseg.platform.errors import ZerosegError
from zeroseg.platform.store import open_store

log = logging.getLogger(__name__)

APP = Path(__file__).resolve().parent / "app.py"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501


def command(store: str | None, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST
            ) -> list[str]:
    """The ``streamlit run`` command line for ``store`` (None: ``$ZEROSEG_STORE`` or the
    default store, resolved by the app)."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ZerosegError(f"--port: expected a TCP port 1-65535, got {port!r}")
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP),
           "--server.headless", "true", "--server.address", host, "--server.port", str(port),
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
           "--global.developmentMode", "false", "--client.toolbarMode", "viewer"]
    if store:
        cmd += ["--", "--store", str(store)]
    return cmd


def start(store: str | None, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST, *,
          env: dict[str, str] | None = None, **popen: object) -> subprocess.Popen:
    """Start the server and return its process (the caller stops it)."""
    # A malformed URL, a store that is not found, not a zeroseg store or of another schema
    # version is a one-line StoreError here, before the server starts.
    open_store(store, read_only=True).close()
    env = {**os.environ, **(env or {}), "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    log.info("dashboard: http://%s:%d (store %s)", host, port, store or "default")
    return subprocess.Popen(command(store, port, host), env=env, **popen)  # noqa: S603


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """Stop a server started by :func:`start` (SIGTERM, then SIGKILL); returns its code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def main(store: str | None, port: int = DEFAULT_PORT, host: str = DEFAULT_HOST) -> int:
    """Run the dashboard until it exits, Ctrl-C or SIGTERM (both stop the Streamlit child
    too, so no server is left behind); returns its exit code (0 when stopped)."""
    proc = start(store, port, host)

    def forward(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop(proc)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            stop(proc)


if __name__ == "__main__":  # the options are zeroseg dashboard's (zeroseg.platform.commands)
    from zeroseg.platform.cli import main as zeroseg_main

    sys.exit(zeroseg_main(["dashboard", *sys.argv[1:]]))
