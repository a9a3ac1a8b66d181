"""``train_func``: the per-worker training loop, the same for 1 or N workers, one or many nodes.

Ray Train's ``TorchTrainer`` runs :func:`train_func` on every worker (or once, in this process,
in its local mode); it never branches on "distributed or not". Per worker:

1. seed python / numpy / torch from ``train.seed`` (the same on every rank, so the initial
   weights agree; DeepSpeed broadcasts rank 0's anyway);
2. build the :class:`~zeroseg.methods.segmenter.model.Segmenter` and the DeepSpeed engine;
3. resume: ``ray.train.get_checkpoint()`` (after a failure, or a re-run in the same run_dir)
   or the checkpoint the driver chose (the run's newest valid one, or ``train.resume_from``);
   it is verified against its manifests and this run's config, and every tensor file is read
   with ``weights_only=True`` before DeepSpeed loads it (through the same safe reader, see
   :mod:`.checkpoints`); training continues at the saved step;
4. train: step ``s`` reads the batch :func:`batch_indices` gives for ``s`` (each rank its slice
   of a seeded per-epoch permutation, DistributedSampler semantics), so the data order after a
   resume is the one an uninterrupted run sees; the random state is re-seeded from
   ``(seed, rank, s)`` before every step (point sampling in the loss, flips), for the same reason;
5. every ``checkpoint_every`` steps every rank writes its DeepSpeed shards into a scratch folder
   and calls ``ray.train.report(metrics, checkpoint=...)``; Ray merges the ranks' folders;
6. the last checkpoint also holds the exported model (``segmenter/``, written by rank 0 with
   :func:`~zeroseg.methods.segmenter.checkpoint.save_segmenter` from the consolidated weights);
   the driver copies it to ``RUN_DIR/segmenter``.

Rank 0 sends progress records (step, loss averaged over ranks, images/s) to the driver through a
small Ray actor (or a callable in local mode).
"""

from __future__ import annotations

import logging
import math
import os
import random
import resource
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from zeroseg.methods.segmenter.checkpoint import save_segmenter
from zeroseg.methods.segmenter.data import SegmentationDataset, collate_segmentation
from zeroseg.methods.segmenter.model import Segmenter
from zeroseg.platform.config import to_dict
from zeroseg.platform.data.sources import target_reader
from zeroseg.platform.errors import ConfigError, ZerosegError
from zeroseg.platform.io import dir_mode
from zeroseg.platform.training import deepspeed_engine as dse
from zeroseg.platform.training.checkpoints import (
    EXPORT_DIR,
    CheckpointError,
    check_compatible,
    check_tensor_files,
    load_training_state,
    newest_valid_checkpoint,
    verify_checkpoint,
    write_info,
    write_manifest,
)
from zeroseg.platform.training.config import SegmenterTrainConfig, train_config_from_dict
from zeroseg.platform.training.dataset import data_layout, resolve_split

log = logging.getLogger(__name__)


class TrainingDiverged(ZerosegError):
    """The training loss became NaN or infinite."""


#: Ray Train's controller polls the workers this often (s); see ``fault`` in :func:`train_func`.
_HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
LOCAL_CHECKPOINTS_KEPT = 2


# -- data order ----------------------------------------------------------------------------------
def steps_per_epoch(num_items: int, batch_size: int, world_size: int) -> int:
    return (num_items // world_size) // batch_size


def batch_indices(step: int, num_items: int, batch_size: int, rank: int, world_size: int,
                  seed: int) -> tuple[list[int], int]:
    """Dataset indices of ``rank``'s batch at global step ``step``, and the epoch.

    Each epoch draws a permutation seeded by ``(seed, epoch)``, drops the tail that does not
    divide by the world size (every rank gets the same number of items) and gives rank ``r``
    items ``r, r + W, r + 2W, ...`` of it; batches are consecutive runs of that slice, the tail
    smaller than a batch is dropped. A pure function of its arguments: resuming at step ``s``
    reads exactly what an uninterrupted run reads.
    """
    per_epoch = steps_per_epoch(num_items, batch_size, world_size)
    if per_epoch < 1:
        raise ConfigError(f"train.batch_size: {num_items} training images cannot fill one batch "
                          f"of {batch_size} on each of {world_size} workers")
    epoch, within = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_items)
    usable = (num_items // world_size) * world_size
    shard = order[rank:usable:world_size]
    return [int(i) for i in shard[within * batch_size:(within + 1) * batch_size]], epoch


class _StepBatches(Sampler[list[tuple[int, int]]]):
    """Batches of (index, epoch) for steps ``start .. stop - 1`` (see :func:`batch_indices`)."""

    def __init__(self, start: int, stop: int, num_items: int, batch_size: int, rank: int,
                 world_size: int, seed: int):
        self.start, self.stop = start, stop
        self.args = (num_items, batch_size, rank, world_size, seed)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.stop):
            indices, epoch = batch_indices(step, *self.args)
            yield [(i, epoch) for i in indices]


class _EpochItems(Dataset):
    """Items addressed by (index, epoch), so seeded augmentation works in DataLoader workers."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, epoch = key
        self.dataset.set_epoch(epoch)
        return self.dataset[index]


# -- seeding -------------------------------------------------------------------------------------
def seed_everything(*entropy: int) -> None:
    """Seed python, numpy and torch from a tuple of non-negative integers."""
    state = np.random.SeedSequence([int(e) for e in entropy]).generate_state(2)
    value = int(state[0]) | (int(state[1]) << 32)
    random.seed(value)
    np.random.seed(int(state[0]))
    torch.manual_seed(value)


# -- progress ------------------------------------------------------------------------------------
def _emit(sink: Any, record: dict[str, Any]) -> None:
    if sink is None:
        return
    push = getattr(sink, "push", None)
    if push is not None and hasattr(push, "remote"):
        push.remote(record)  # a Ray actor (the driver's ProgressSink)
    elif push is not None:
        push(record)
    else:
        sink(record)


# -- the loop ------------------------------------------------------------------------------------
def _context() -> tuple[int, int]:
    import ray.train

    ctx = ray.train.get_context()
    return int(ctx.get_world_rank()), int(ctx.get_world_size())


def _find_resume(loop_config: dict[str, Any], config: SegmenterTrainConfig
                 ) -> tuple[Path | None, Any]:
    """(checkpoint directory, Ray checkpoint object to keep alive) to resume from, if any.

    Ray Train hands back the latest checkpoint it registered (after a worker failure, or when
    the driver re-runs the same run_dir); the driver chose the newest *valid* one before Ray
    started (``loop_config["resume"]``, see ``ray_runner._resume_checkpoint``). Ray's is used
    when it is newer and valid, else it is skipped, with the reason, for the driver's."""
    import ray.train

    chosen = loop_config.get("resume") or config.train.resume_from
    chosen = Path(chosen) if chosen else None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return chosen, None
    local = Path(checkpoint.path)
    if not local.is_dir():  # remote storage (a cluster's shared bucket): download it
        local = Path(checkpoint.to_directory())
    if chosen is not None and local.resolve() == chosen.resolve():
        return chosen, checkpoint
    info, skipped = newest_valid_checkpoint([local])
    if info is None:
        log.warning("resume: skipping Ray Train's latest checkpoint %s: %s", local,
                    skipped[0][1] if skipped else "invalid")
        return chosen, None
    if chosen is not None and verify_checkpoint(chosen).step >= info.step:
        return chosen, None
    return local, checkpoint


def maybe_fail(fault: Mapping[str, Any] | None, rank: int, step: int) -> None:
    """Fault injection for tests: at ``fault['step']`` (a segmenter's step, a model method's
    epoch) the worker of ``fault['rank']`` kills its
    own process once (the marker file makes the retry pass). It first waits long enough for
    Ray Train's controller to register the checkpoints already reported."""
    if not fault or rank != int(fault.get("rank", 0)) or step != int(fault["step"]):
        return
    marker = Path(fault["marker"])
    if marker.exists():
        return
    marker.write_text(f"killed at step {step}\n")
    delay = float(fault.get("delay_s", 2.5 * float(os.environ.get(_HEALTH_CHECK_ENV, "2")) + 1))
    log.warning("fault injection: rank %d kills itself at step %d in %.1f s", rank, step, delay)
    time.sleep(delay)
    os.kill(os.getpid(), signal.SIGKILL)


def _window_load(cpu_seconds: float, wall_seconds: float) -> dict[str, float]:
    """What explains a window's throughput besides the model: the CPU this worker got
    (``cpu_share``: process CPU seconds per wall second and per torch thread; well below 1 means
    it waited, for data, a collective or a CPU someone else held) and the machine's 1-minute
    load average per CPU (``load_per_cpu`` above 1: more runnable processes than CPUs)."""
    threads = max(1, torch.get_num_threads())
    share = cpu_seconds / (wall_seconds * threads) if wall_seconds > 0 else 0.0
    load = os.getloadavg()[0] / max(1, os.cpu_count() or 1)
    return {"cpu_share": round(share, 3), "load_per_cpu": round(load, 2)}


def train_func(loop_config: dict[str, Any]) -> dict[str, Any]:
    """The training loop run by every Ray Train worker (see the module docstring).

    ``loop_config`` (built by :func:`zeroseg.platform.training.ray_runner.prepare`): ``config``
    (the SegmenterTrainConfig as plain data, paths absolute), ``class_ids``, ``class_names``,
    ``image_ids`` (training images after the leakage filter), ``split``, ``dataset``
    (fingerprint), ``config_hash``, optionally ``progress`` (sink), ``checkpoint_root`` (a
    persistent folder for checkpoints), ``local`` (Ray Train's local mode), ``resume`` (the
    checkpoint the driver chose) and ``fault`` (tests).
    """
    config = train_config_from_dict(loop_config["config"], where="train_loop_config")
    dist_cfg = config.distributed
    rank, world = _context()
    sink = loop_config.get("progress") if rank == 0 else None
    class_ids = [int(c) for c in loop_config["class_ids"]]
    threads_before = torch.get_num_threads()
    if not dist_cfg.use_gpu and not loop_config.get("local"):
        # A Ray worker uses the CPUs it reserved (local mode keeps the process's setting).
        torch.set_num_threads(max(1, int(round(dist_cfg.cpus_per_worker))))
    dse.select_accelerator(dist_cfg.use_gpu)

    try:
        return _train(loop_config, config, rank, world, sink, class_ids)
    finally:
        dse.destroy_process_group()
        dse.restore_env()
        torch.set_num_threads(threads_before)


def _train(loop_config: dict[str, Any], config: SegmenterTrainConfig, rank: int, world: int,
           sink: Any, class_ids: list[int]) -> dict[str, Any]:
    import ray.train

    t, dist_cfg = config.train, config.distributed
    seed_everything(t.seed)
    model = Segmenter(config.model, len(class_ids))
    engine = dse.build_engine(model, config)
    device = engine.device

    split = resolve_split(config)
    layout = data_layout(config, config.data.train_split, split)
    dataset = SegmentationDataset(layout, class_ids, loop_config["image_ids"],
                                  image_size=config.model.image_size,
                                  augment=config.data.augment, seed=t.seed,
                                  targets=target_reader(layout, split),
                                  resize=config.model.resize_spec(config.data.scale_range))

    # -- resume ----------------------------------------------------------------------------
    start = 0
    resume_dir, _keep = _find_resume(loop_config, config)
    if resume_dir is not None:
        info = verify_checkpoint(resume_dir)
        check_compatible(info, world_size=world, zero_stage=dist_cfg.zero_stage,
                         precision=dist_cfg.precision, resume_hash=config.resume_hash(),
                         dataset=loop_config["dataset"], class_ids=class_ids,
                         resume_identity=config.resume_identity())
        if info.step > t.steps:
            raise CheckpointError(f"{resume_dir}: checkpoint is at step {info.step}, beyond "
                                  f"train.steps {t.steps}")
        # Every file first: a refusal half-way through DeepSpeed's load would leave the engine
        # half-restored. Then DeepSpeed reads them again, through weights_only=True as well.
        check_tensor_files(resume_dir)
        client = load_training_state(engine, resume_dir, info.tag)
        start = int(client.get("step", info.step))
        log.info("rank %d resumed from %s at step %d", rank, resume_dir, start)
    _emit(sink, {"event": "start", "step": start, "steps": t.steps, "world_size": world,
                 "time": time.time()})

    checkpoint_root = loop_config.get("checkpoint_root")
    meta = {
        "class_ids": class_ids,
        "class_names": list(loop_config["class_names"]),
        "split": loop_config["split"],
        "dataset": loop_config["dataset"],
        "train_config_hash": loop_config["config_hash"],
        "oracle": config.data.oracle,
        "validation": config.data.validation,
        "seed": t.seed,
        "world_size": world,
        "zero_stage": dist_cfg.zero_stage,
        "precision": dist_cfg.precision,
    }

    def save_and_report(step: int, metrics: dict[str, Any], final: bool) -> None:
        if checkpoint_root is not None:  # local mode: keep checkpoints where the run lives
            directory = Path(checkpoint_root) / f"step_{step:08d}"
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
        else:
            directory = Path(tempfile.mkdtemp(prefix=f"zeroseg-ckpt-r{rank}-"))
            directory.chmod(dir_mode())  # Ray copies it with its mode: as mkdir would make it
        try:
            tag = f"step_{step:08d}"
            engine.save_checkpoint(str(directory), tag=tag, client_state={"step": step})
            state = dse.full_state_dict(engine) if final else None  # collective under ZeRO-3
            if rank == 0:
                write_info(directory, {
                    "step": step, "tag": tag, "world_size": world,
                    "zero_stage": dist_cfg.zero_stage, "precision": dist_cfg.precision,
                    "resume_hash": config.resume_hash(),
                    "resume_identity": config.resume_identity(),
                    "dataset": loop_config["dataset"], "class_ids": class_ids,
                    "config": to_dict(config),
                })
                if final:
                    export = Segmenter(config.model, len(class_ids), load_backbone_weights=False)
                    export.load_state_dict(state)
                    save_segmenter(export, directory / EXPORT_DIR, {**meta, "step": step})
            write_manifest(directory, rank)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(
                str(directory)))
        finally:
            if checkpoint_root is None:
                shutil.rmtree(directory, ignore_errors=True)
        if checkpoint_root is not None and rank == 0:
            kept = sorted(Path(checkpoint_root).glob("step_*"))
            for old in kept[:-LOCAL_CHECKPOINTS_KEPT]:
                shutil.rmtree(old, ignore_errors=True)
        _emit(sink, {"event": "checkpoint", "step": step, "final": final, "time": time.time()})

    # -- train -----------------------------------------------------------------------------
    loader = DataLoader(
        _EpochItems(dataset),
        batch_sampler=_StepBatches(start, t.steps, len(dataset), t.batch_size, rank, world,
                                   t.seed),
        num_workers=config.data.num_workers, collate_fn=collate_segmentation,
        pin_memory=torch.device(device).type == "cuda")
    engine.train()
    window_loss = torch.zeros(2, dtype=torch.float64, device=device)  # (sum, count)
    window_start, window_steps = time.perf_counter(), 0
    window_cpu = time.process_time()
    run_start, images_seen = time.perf_counter(), 0
    last_loss: float | None = None  # stays None when a finished run is only re-exported
    metrics: dict[str, Any] = {"step": start, "start_step": start}
    # Images with more targets than queries: Hungarian matching leaves the surplus unmatched
    # (they are never learned); counted (images, targets beyond) and warned about once.
    overfull = torch.zeros(2, dtype=torch.float64, device=device)
    num_queries = int(model.recipe.num_queries)
    for step, batch in zip(range(start, t.steps), loader, strict=True):
        seed_everything(t.seed, rank, step)
        for image_id, classes in zip(batch["image_id"], batch["class_labels"], strict=True):
            if len(classes) > num_queries:
                if not overfull[0]:
                    log.warning("image %s has %d targets, more than the %d queries: %d of them "
                                "cannot be matched (counted in the run summary)", image_id,
                                len(classes), num_queries, len(classes) - num_queries)
                overfull[0] += 1
                overfull[1] += len(classes) - num_queries
        pixels = batch["pixel_values"].to(device, non_blocking=True)
        masks = [m.to(device, non_blocking=True) for m in batch["mask_labels"]]
        labels = [c.to(device, non_blocking=True) for c in batch["class_labels"]]
        out = engine(pixels, masks, labels)
        engine.backward(out.loss)
        engine.step()
        done = step + 1
        window_loss[0] += out.loss.detach().double()
        window_loss[1] += 1
        window_steps += 1
        images_seen += world * t.batch_size
        if done % t.log_every == 0 or done % t.checkpoint_every == 0 or done == t.steps:
            torch.distributed.all_reduce(window_loss)  # every rank, same steps: a collective
            last_loss = float(window_loss[0] / window_loss[1])
            if not math.isfinite(last_loss):
                raise TrainingDiverged(f"optim.lr: the loss is {last_loss} at step {done} "
                                       f"(training diverged; try a lower learning rate)")
            elapsed = time.perf_counter() - window_start
            ips = window_steps * world * t.batch_size / elapsed if elapsed > 0 else 0.0
            metrics = {"step": done, "loss": last_loss, "images_per_s": ips,
                       "start_step": start, "world_size": world,
                       **_window_load(time.process_time() - window_cpu, elapsed)}
            _emit(sink, {"event": "log", **metrics, "steps": t.steps, "time": time.time()})
            window_loss.zero_()
            window_start, window_steps = time.perf_counter(), 0
            window_cpu = time.process_time()
        if done % t.checkpoint_every == 0 or done == t.steps:
            save_and_report(done, metrics, final=done == t.steps)
            window_start = time.perf_counter()  # throughput excludes checkpoint writing
            window_cpu = time.process_time()
        maybe_fail(loop_config.get("fault"), rank, done)
    if start >= t.steps:  # resumed a finished run: export again from the loaded state
        save_and_report(t.steps, {**metrics, "step": t.steps}, final=True)
    seconds = time.perf_counter() - run_start
    # Peak resident memory of every worker process (MiB), gathered on every rank.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    gpu = (torch.cuda.max_memory_allocated(device) / 2**20
           if torch.device(device).type == "cuda" else None)
    peaks: list[Any] = [None] * world
    torch.distributed.all_gather_object(peaks, (peak, gpu))
    torch.distributed.all_reduce(overfull)
    summary = {"start_step": start, "step": t.steps, "world_size": world, "loss": last_loss,
               "seconds": seconds,
               "images_per_s": images_seen / seconds if images_seen and seconds > 0 else 0.0,
               "peak_rss_mib": [round(float(p[0]), 1) for p in peaks],
               "targets_beyond_queries": {"images": int(overfull[0]),
                                          "targets": int(overfull[1])}}
    if gpu is not None:
        summary["peak_gpu_mib"] = [round(float(p[1]), 1) for p in peaks]
    return summary
