"""Between a Ray Train job and the process that started it: ``trainer.fit()`` in a thread
(:class:`FitThread`), so that the calling thread -- a sweep trial reports to Tune from its own
thread -- serves rank 0's per-epoch records as they come (:func:`open_channel`), and answers
each with a verdict (go on, or stop: all ranks stop at that epoch)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from zeroseg.methods.registry import StopTrial
from zeroseg.platform.errors import ZerosegError


class FitThread(threading.Thread):
    """``trainer.fit()`` in a thread, so that the calling thread serves the snapshots (a sweep
    trial reports to Tune from its own thread)."""

    def __init__(self, trainer: Any):
        super().__init__(daemon=True, name="zeroseg-fit")
        self.trainer = trainer
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.trainer.fit()
        except BaseException as exc:  # handed to the calling thread
            self.error = exc


def open_channel() -> Any:
    """A Ray actor between rank 0 and this process: rank 0's records one way (``event``:
    ``step`` -- a logged step -- or ``epoch`` -- a snapshot waiting for its verdict, keyed by
    ``key``), the verdicts the other."""
    import ray

    @ray.remote(num_cpus=0)
    class TrainingChannel:
        def __init__(self) -> None:
            self.records: list[dict[str, Any]] = []
            self.verdicts: dict[int, bool] = {}
            self.aborted = False

        def push(self, record: dict[str, Any]) -> None:
            self.records.append(record)

        def read(self, start: int) -> list[dict[str, Any]]:
            return self.records[start:]

        def verdict(self, key: int, stop: bool) -> None:
            self.verdicts[key] = stop

        def abort(self) -> None:
            self.aborted = True

        def wait_verdict(self, key: int) -> bool | None:
            return self.verdicts.get(key, True if self.aborted else None)

    return TrainingChannel.remote()


def serve(channel: Any, job: FitThread, on_record: Callable[[dict[str, Any]], bool]) -> None:
    """Until ``job`` ends: hand each of rank 0's records to ``on_record`` in this thread; an
    ``epoch`` record's verdict is what it returns (True: stop). On an error here the channel is
    aborted (rank 0 may be waiting for a verdict), then the job is waited for."""
    import ray

    seen = 0
    try:
        while True:
            done = not job.is_alive()
            records = ray.get(channel.read.remote(seen))
            seen += len(records)
            for record in records:
                stop = on_record(record)
                if record["event"] == "epoch":
                    channel.verdict.remote(int(record["key"]), bool(stop))
            if done:
                break
            time.sleep(0.2)
    except BaseException:
        channel.abort.remote()
        raise
    finally:
        job.join()
        ray.kill(channel)


def epoch_verdict(channel: Any, rank: int, record: dict[str, Any]) -> bool:
    """On every rank of a Ray Train worker group: rank 0 sends ``record`` (an ``epoch`` record
    with its ``key``) and waits for the verdict; every rank returns it (broadcast from rank 0),
    so all stop at the same epoch."""
    import ray

    stop = torch.zeros(1)
    if rank == 0:
        ray.get(channel.push.remote(record))
        while (verdict := ray.get(channel.wait_verdict.remote(int(record["key"])))) is None:
            time.sleep(0.05)
        stop[0] = float(verdict)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast(stop, src=0)
    return bool(stop[0])


def finished_result(job: FitThread, stopped: bool, what: str, missing: str) -> Any:
    """The Ray Train result of a job :func:`serve` has seen to its end: a one-line
    :class:`ZerosegError` when it failed (``what`` failed: the error's first lines) or reported
    no checkpoint (``missing``); :class:`StopTrial` when a hook stopped it."""
    if job.error is not None:
        exc = job.error
        first = " ".join(str(exc).strip().splitlines()[:2])[:300]
        raise ZerosegError(f"{what} failed ({type(exc).__name__}: {first})") from exc
    if stopped:
        raise StopTrial()
    if job.result.checkpoint is None:
        raise ZerosegError(missing)
    return job.result
