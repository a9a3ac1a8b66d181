"""Progress display for long CLI loops (rich), silent when not on a terminal or disabled."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(description: str, total: int, *, enabled: bool = True
                 ) -> Iterator[Callable[[int, int], None]]:
    """Yield ``update(done, total)``; shows a rich bar on a terminal (stderr)."""
    if not enabled or not sys.stderr.isatty():
        yield lambda done, total: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total or None)

        def update(done: int, new_total: int) -> None:
            bar.update(task, completed=done, total=new_total or None)

        yield update
