"""Per-image work spread over processes, results returned in input order.

Workers are started with the ``spawn`` method: evaluation may run inside a process that already
holds torch / Ray threads, and forking such a process can deadlock. Spawning costs about a second
per worker, so small jobs stay in-process (see :func:`choose_workers`). As with any spawned
pool, a script that evaluates with several workers needs an ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from zeroseg.platform.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

#: Pixels (GT and prediction PNG pairs) one worker should get before another process pays for
#: its start-up (about a second): some 100 COCO-sized images.
MIN_PIXELS_PER_WORKER = 30_000_000


def choose_workers(num_items: int, workers: int | None, pixels_per_item: int = 640 * 480) -> int:
    """``workers=None``: one process per CPU, but each with at least ``MIN_PIXELS_PER_WORKER``
    pixels to evaluate (so small jobs run in-process). An explicit number is used as given."""
    if workers is not None:
        if isinstance(workers, bool) or int(workers) < 1:
            raise ConfigError(f"workers: expected a positive integer, got {workers}")
        return int(workers)
    cpus = os.cpu_count() or 1
    return max(1, min(cpus, num_items * max(pixels_per_item, 1) // MIN_PIXELS_PER_WORKER))


def ordered_map(fn: Callable[[T], R], items: Sequence[T], workers: int) -> Iterator[R]:
    """``map(fn, items)``, over ``workers`` spawned processes when ``workers > 1``.

    Results come back in the order of ``items`` whatever the number of workers, so callers that
    accumulate them sequentially get the same numbers for any ``workers``.
    """
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield fn(item)
        return
    workers = min(workers, len(items))
    log.info("running %d tasks on %d processes", len(items), workers)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        yield from pool.map(fn, items)


def split_chunks(items: Sequence[T], workers: int, per_worker: int = 4) -> list[list[T]]:
    """Consecutive chunks of ``items``: one chunk in-process, ``per_worker`` chunks per worker
    otherwise (so a slow chunk does not leave the other processes idle)."""
    n = 1 if workers <= 1 else min(len(items), workers * per_worker)
    n = max(n, 1)
    size, extra = divmod(len(items), n)
    out: list[list[T]] = []
    start = 0
    for i in range(n):
        stop = start + size + (1 if i < extra else 0)
        out.append(list(items[start:stop]))
        start = stop
    return out
