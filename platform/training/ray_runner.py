"""Run segmenter training on Ray Train (``zeroseg train segmenter CONFIG``).

:func:`run_training` does, in order:

1. before Ray starts (cheap, so bad input fails fast): the config is already typed and
   validated; the dataset is generated when ``data.synthetic`` is set and ``data.root`` does not
   exist; the split and the classes to train are resolved; the protocol's leakage filter picks
   the training images (zero-shot runs); a checkpoint to resume (the newest *valid* one of an
   earlier run in the same ``output.run_dir`` -- corrupt, crafted or half-written ones are
   skipped with a warning saying why -- else ``train.resume_from``) is verified, every tensor
   file in it read with ``weights_only=True``, and compared with this config;
2. ``TorchTrainer(train_func)`` with ``ScalingConfig(workers, use_gpu)``,
   ``RunConfig(storage_path=RUN_DIR/ray, name="train", CheckpointConfig(num_to_keep=2),
   FailureConfig(max_failures))``. ``workers: 0`` runs Ray Train's local mode in this process;
3. the final checkpoint's exported model is verified (``load_segmenter``) and copied to
   ``RUN_DIR/segmenter``; rank 0's progress records go to ``RUN_DIR/train_log.jsonl``;
4. with ``train.eval``, the segmenter is evaluated on ``data.eval_split`` (semantic, instance,
   panoptic; seen / unseen / HM, GZSL) and ``RUN_DIR/results.json`` is written atomically.

Re-running the same config in the same run_dir resumes from its newest valid checkpoint (Ray
Train restores the run by name); a different config there is refused before Ray starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zeroseg.methods.segmenter.checkpoint import checkpoint_fingerprint, load_segmenter
from zeroseg.platform.compat import ray_init_address, ray_runtime_env
from zeroseg.platform.config import config_hash, to_dict
from zeroseg.platform.data.classes import PROTOCOL_DROP_IMAGES, Split
from zeroseg.platform.data.layout import CocoLayout, dataset_layout
from zeroseg.platform.data.leakage import filter_training
from zeroseg.platform.data.sources import (
    INSTANCES,
    PANOPTIC,
    SEMANTIC,
    benchmark_sources,
    check_dataset,
    list_images,
)
from zeroseg.platform.data.synthetic.generate import generate
from zeroseg.platform.errors import ConfigError, DataError, ZerosegError
from zeroseg.platform.io import atomic_directory, atomic_write_json, atomic_write_text
from zeroseg.platform.training.checkpoints import (
    EXPORT_DIR,
    CheckpointError,
    check_compatible,
    check_tensor_files,
    newest_valid_checkpoint,
    verify_checkpoint,
)
from zeroseg.platform.training.config import SegmenterTrainConfig
from zeroseg.platform.training.dataset import data_layout, resolve_split
from zeroseg.platform.training.evaluate import evaluate_segmenter
from zeroseg.platform.training.loop import train_func

log = logging.getLogger(__name__)

RUN_NAME = "train"
Progress = Callable[[dict[str, Any]], None]


class TrainingError(ZerosegError):
    """Training failed on the workers (after the allowed restarts)."""


@dataclasses.dataclass
class PreparedRun:
    """Everything resolved on the driver before Ray starts."""

    config: SegmenterTrainConfig  # paths made absolute
    split: Split
    class_ids: list[int]
    class_names: list[str]
    image_ids: list[int]
    dataset: str  # fingerprint of the annotation files
    config_hash: str
    leakage: dict[str, Any] | None
    resume: Path | None  # checkpoint verified for resuming (the run's newest valid, or
    #                      resume_from)
    skipped: list[tuple[Path, str]] = dataclasses.field(default_factory=list)  # and why

    @property
    def run_dir(self) -> Path:
        return self.config.output.run_dir


@dataclasses.dataclass
class TrainingResult:
    run_dir: Path
    segmenter_dir: Path
    summary: dict[str, Any]  # rank 0's return value: start_step, step, loss, images_per_s, ...
    metrics: dict[str, Any]  # the last metrics reported to Ray Train
    log: list[dict[str, Any]]  # rank 0's progress records, every attempt
    results: dict[str, Any]  # what results.json holds
    checkpoint: Path | None  # the final training checkpoint


# -- preparation (driver, before Ray) ------------------------------------------------------------
def _absolute(config: SegmenterTrainConfig) -> SegmenterTrainConfig:
    data = dataclasses.replace(config.data, root=config.data.root.expanduser().resolve())
    train = config.train
    if train.resume_from is not None:
        train = dataclasses.replace(train, resume_from=train.resume_from.expanduser().resolve())
    output = dataclasses.replace(config.output,
                                 run_dir=config.output.run_dir.expanduser().resolve())
    return dataclasses.replace(config, data=data, train=train, output=output)


def ensure_dataset(config: SegmenterTrainConfig) -> None:
    """Generate the synthetic benchmark into data.root if asked to and not there yet."""
    root = config.data.root
    if root.exists():
        return
    if config.data.synthetic is None:
        raise DataError(f"{root}: data.root not found (give data.synthetic {{size, seed}} to "
                        f"generate the synthetic benchmark there)")

    syn = config.data.synthetic
    log.info("generating the synthetic benchmark %r (seed %d) into %s", syn.size, syn.seed, root)
    generate(syn.size, syn.seed, root, variant=syn.variant)


def training_classes(split: Split, oracle: bool, validation: bool) -> list[int]:
    """Category ids of the classifier, in the split's contiguous order: every class for the
    oracle; otherwise the seen classes, without the held-out ones for validation runs."""
    if oracle:
        return [c.id for c in split.classes]
    return [c.id for c in split.classes if not c.unseen and not (validation and c.val_unseen)]


def training_annotations_fingerprint(root: Path, splits: tuple[str, ...],
                                     split: Split | None = None) -> str:
    """sha256 over the annotation files of ``splits`` that ``split``'s benchmark reads (its
    instances / panoptic jsons; for a benchmark of semantic PNGs alone, their names and sizes
    and the VOC image set) and classes.json (``split`` None: every json source)."""
    sources = benchmark_sources(split) if split is not None else (PANOPTIC, INSTANCES)
    dataset = split.dataset if split is not None else None
    digest = hashlib.sha256()
    paths: list[Path] = []
    for data_split in splits:
        layout = dataset_layout(root, data_split, dataset)
        if PANOPTIC in sources:
            paths.append(layout.panoptic_json)
        if INSTANCES in sources:
            paths.append(layout.instances_json)
        if sources == (SEMANTIC,):
            paths += [p for p in (layout.image_set, layout.image_info_json) if p is not None]
            _hash_listing(digest, layout.semantic_pngs)
    paths.append(CocoLayout(root, splits[0]).classes_json)
    for path in paths:
        if not path.is_file():
            continue
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def _hash_listing(digest: Any, folder: Path) -> None:
    """A folder's PNG names and sizes into ``digest`` (reading 118k label maps is not needed
    to notice that they changed)."""
    if not folder.is_dir():
        return
    with os.scandir(folder) as entries:
        listing = sorted((e.name, e.stat().st_size) for e in entries if e.name.endswith(".png"))
    digest.update(folder.name.encode() + b"\0")
    for name, size in listing:
        digest.update(f"{name}:{size}\n".encode())


LOCAL_CHECKPOINTS = "checkpoints"  # RUN_DIR/checkpoints/step_*: local mode (workers: 0)


def run_checkpoints(run_dir: Path, workers: int) -> list[Path]:
    """Every training checkpoint folder of an earlier run in ``run_dir``: Ray Train's
    (``RUN_DIR/ray/train/checkpoint_*``) or local mode's (``RUN_DIR/checkpoints/step_*``),
    complete or not."""
    pattern = (Path(LOCAL_CHECKPOINTS), "step_*") if workers == 0 else (
        Path("ray") / RUN_NAME, "checkpoint_*")
    return [p for p in (run_dir / pattern[0]).glob(pattern[1]) if p.is_dir()]


def latest_checkpoint(run_dir: Path, workers: int = 1) -> Path | None:
    """The newest valid training checkpoint of an earlier run in ``run_dir``, if any."""
    info, _ = newest_valid_checkpoint(run_checkpoints(run_dir, workers))
    return info.path if info else None


def _resume_checkpoint(config: SegmenterTrainConfig, world: int, fingerprint: str,
                       class_ids: list[int]) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The checkpoint to resume (verified, every tensor file read safely, compatible with this
    config) and the ones skipped: the newest valid checkpoint of the run itself, falling back
    past corrupt, crafted or half-written ones; else ``train.resume_from``, which must be
    valid (a one-line error otherwise)."""
    info, skipped = newest_valid_checkpoint(run_checkpoints(config.output.run_dir,
                                                            config.distributed.workers))
    for path, reason in skipped:
        log.warning("resume: skipping checkpoint %s: %s", path, reason)
    if info is None and config.train.resume_from is not None:
        info = verify_checkpoint(config.train.resume_from)
        check_tensor_files(config.train.resume_from)
    if info is None:
        return None, skipped
    check_compatible(info, world_size=world, zero_stage=config.distributed.zero_stage,
                     precision=config.distributed.precision, resume_hash=config.resume_hash(),
                     dataset=fingerprint, class_ids=class_ids,
                     resume_identity=config.resume_identity())
    if info.step > config.train.steps:
        raise CheckpointError(f"{info.path}: checkpoint is at step {info.step}, beyond "
                              f"train.steps {config.train.steps}")
    return info.path, skipped


def prepare(config: SegmenterTrainConfig) -> PreparedRun:
    """Resolve data, classes, training images and the checkpoint to resume (no Ray)."""
    config = _absolute(config)
    if config.distributed.use_gpu and config.distributed.workers == 0:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("distributed.use_gpu: no CUDA device in this process (local mode)")
    ensure_dataset(config)
    split = resolve_split(config)
    d = config.data
    train_layout = data_layout(config, d.train_split, split)
    check_dataset(train_layout, split, "training")
    if config.train.eval:
        check_dataset(data_layout(config, d.eval_split, split), split, "evaluation")
    class_ids = training_classes(split, d.oracle, d.validation)
    names = {c.id: c.name for c in split.classes}

    leakage = None
    image_ids: list[int]
    if d.oracle:
        image_ids = sorted(list_images(train_layout, benchmark_sources(split)))
    else:
        result = filter_training(train_layout, split, validation=d.validation)
        leakage = result.to_dict()
        leakage.pop("kept_image_ids", None)
        image_ids = list(result.kept_image_ids)
        if split.protocol != PROTOCOL_DROP_IMAGES:
            # ignore-pixels keeps every image; excluded classes are simply not targets.
            leakage["note"] = "images kept; segments of excluded classes are not targets"
    if d.max_images is not None:
        image_ids = image_ids[:d.max_images]
    world = max(1, config.distributed.workers)
    if len(image_ids) // world < config.train.batch_size:
        raise ConfigError(f"train.batch_size: {len(image_ids)} training images cannot fill a "
                          f"batch of {config.train.batch_size} on each of {world} workers")
    fingerprint = training_annotations_fingerprint(d.root, (d.train_split, d.eval_split), split)

    # A checkpoint we would resume from must fit this run: check it before Ray starts.
    resume, skipped = _resume_checkpoint(config, world, fingerprint, class_ids)
    return PreparedRun(config=config, split=split, class_ids=class_ids,
                       class_names=[names[c] for c in class_ids], image_ids=image_ids,
                       dataset=fingerprint, config_hash=config_hash(config), leakage=leakage,
                       resume=resume, skipped=skipped)


def loop_config(prepared: PreparedRun, *, progress: Any = None,
                checkpoint_root: Path | None = None,
                fault: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``train_loop_config`` every worker receives (plain data + the progress sink)."""
    out: dict[str, Any] = {
        "config": to_dict(prepared.config),
        "class_ids": prepared.class_ids,
        "class_names": prepared.class_names,
        "image_ids": prepared.image_ids,
        "split": prepared.split.name,
        "dataset": prepared.dataset,
        "config_hash": prepared.config_hash,
        "progress": progress,
        "checkpoint_root": str(checkpoint_root) if checkpoint_root else None,
        "local": prepared.config.distributed.workers == 0,
        "resume": str(prepared.resume) if prepared.resume else None,
    }
    if fault:
        out["fault"] = dict(fault)
    return out


# -- Ray -----------------------------------------------------------------------------------------
def ensure_ray(address: str | None = None, *, verbose: bool = False) -> bool:
    """``ray.init`` unless Ray is already initialised; returns True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env_vars = {"HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}
    ray.init(address=ray_init_address(address), runtime_env=ray_runtime_env({"env_vars": env_vars}),
             include_dashboard=False, log_to_driver=verbose,
             logging_level=logging.INFO if verbose else logging.WARNING)
    return True


def check_resources(config: SegmenterTrainConfig) -> None:
    """Refuse a run the Ray cluster can never place (it would wait forever). Only for a local
    Ray (no ``distributed.address``): a remote cluster may add nodes on demand."""
    import ray

    x = config.distributed
    available = ray.cluster_resources()
    need_cpu = x.workers * x.cpus_per_worker
    need_gpu = x.workers if x.use_gpu else 0
    short = []
    if available.get("CPU", 0) + 1e-9 < need_cpu:
        short.append(f"{need_cpu:g} CPUs (workers x cpus_per_worker), the cluster has "
                     f"{available.get('CPU', 0):g}")
    if available.get("GPU", 0) < need_gpu:
        short.append(f"{need_gpu} GPUs, the cluster has {available.get('GPU', 0):g}")
    if short and x.address is None:
        raise ConfigError(f"distributed.workers: {x.workers} workers need {'; '.join(short)}")
    if short:
        log.warning("the Ray cluster has too few resources now (%s); waiting for more",
                    "; ".join(short))


class _LocalSink:
    """Progress sink for local mode: records go straight to the driver's callback."""

    def __init__(self, callback: Progress | None):
        self.records: list[dict[str, Any]] = []
        self.callback = callback

    def push(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.callback is not None:
            self.callback(record)


def _ray_sink() -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class ProgressSink:
        """Collects rank 0's progress records; the driver polls them."""

        def __init__(self) -> None:
            self.records: list[dict[str, Any]] = []

        def push(self, record: dict[str, Any]) -> None:
            self.records.append(record)

        def read(self, start: int) -> list[dict[str, Any]]:
            return self.records[start:]

    return ProgressSink.remote()


class _Poller(threading.Thread):
    """Polls the Ray progress sink while ``trainer.fit()`` runs in the main thread."""

    def __init__(self, sink: Any, callback: Progress | None, interval: float = 0.5):
        super().__init__(daemon=True, name="zeroseg-progress")
        self.sink, self.callback, self.interval = sink, callback, interval
        self.records: list[dict[str, Any]] = []
        self.stopping = threading.Event()

    def _drain(self) -> None:
        import ray

        new = ray.get(self.sink.read.remote(len(self.records)))
        for record in new:
            self.records.append(record)
            if self.callback is not None:
                try:
                    self.callback(record)
                except Exception:  # a display problem must not stop training
                    log.exception("progress callback failed")

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._drain()
            except Exception:  # the sink may be gone at shutdown
                log.debug("progress poll failed", exc_info=True)
            self.stopping.wait(self.interval)

    def stop(self) -> list[dict[str, Any]]:
        self.stopping.set()
        self.join(timeout=10)
        try:
            self._drain()
        except Exception:
            log.debug("final progress poll failed", exc_info=True)
        return self.records


def _worker_user_error(exc: BaseException) -> ZerosegError | None:
    """The ZerosegError a worker raised, if that is what ended training."""
    failures = getattr(exc, "worker_failures", None) or {}
    for failure in failures.values():
        for candidate in (failure, getattr(failure, "cause", None), failure.__cause__):
            if isinstance(candidate, ZerosegError):
                return candidate
    return None


def _fit(prepared: PreparedRun, progress: Progress | None, fault: dict[str, Any] | None,
         verbose: bool) -> tuple[Any, list[dict[str, Any]]]:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = prepared.config
    dist_cfg = cfg.distributed
    local = dist_cfg.workers == 0
    if local:
        if not verbose:  # local mode logs every report at INFO in this process
            logging.getLogger("ray.train.v2._internal.execution.train_fn_utils").setLevel(
                logging.WARNING)
        sink: Any = _LocalSink(progress)
        poller = None
        checkpoint_root: Path | None = prepared.run_dir / LOCAL_CHECKPOINTS
    else:
        ensure_ray(dist_cfg.address, verbose=verbose)
        check_resources(cfg)
        sink = _ray_sink()
        poller = _Poller(sink, progress)
        checkpoint_root = None
    resources = {"CPU": dist_cfg.cpus_per_worker}
    if dist_cfg.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_func,
        train_loop_config=loop_config(prepared, progress=sink, checkpoint_root=checkpoint_root,
                                      fault=fault),
        scaling_config=ScalingConfig(num_workers=dist_cfg.workers, use_gpu=dist_cfg.use_gpu,
                                     resources_per_worker=None if local else resources),
        run_config=RunConfig(
            name=RUN_NAME, storage_path=str(prepared.run_dir / "ray"),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=dist_cfg.max_failures)),
    )
    if poller is not None:
        poller.start()
    try:
        result = trainer.fit()
    except ZerosegError:
        raise
    except Exception as exc:
        user = _worker_user_error(exc)
        if user is not None:
            raise type(user)(str(user)) from None
        first = str(exc).strip().splitlines()
        raise TrainingError(f"{prepared.run_dir / 'ray' / RUN_NAME}: training failed "
                            f"({type(exc).__name__}: {' '.join(first[:3])[:300]})") from exc
    finally:
        records = poller.stop() if poller is not None else sink.records
        if poller is not None:
            import ray

            ray.kill(sink)
    return result, records


# -- the whole run -------------------------------------------------------------------------------
def run_training(config: SegmenterTrainConfig, *, progress: Progress | None = None,
                 verbose: bool = False, fault: dict[str, Any] | None = None,
                 eval_device: str | None = None) -> TrainingResult:
    """Train (and evaluate) a segmenter as described by ``config``; see the module docstring.

    ``progress(record)`` receives rank 0's records as they come: ``{"event": "start" | "log" |
    "checkpoint", "step", "steps", "loss", "images_per_s", ...}``. ``fault`` (tests only) makes
    one worker kill itself: ``{"rank", "step", "marker"}``.
    """
    started = time.perf_counter()
    prepared = prepare(config)
    cfg = prepared.config
    run_dir = prepared.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if prepared.leakage is not None:
        atomic_write_json(run_dir / "leakage_filter.json", prepared.leakage, indent=2)

    result, records = _fit(prepared, progress, fault, verbose)
    atomic_write_text(run_dir / "train_log.jsonl",
                      "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    if result.checkpoint is None:
        raise TrainingError(f"{run_dir}: training reported no checkpoint")
    final = Path(result.checkpoint.path)
    if not final.is_dir():
        final = Path(result.checkpoint.to_directory())
    info = verify_checkpoint(final)
    if not info.has_export or info.step != cfg.train.steps:
        raise CheckpointError(f"{final}: the last checkpoint (step {info.step}) holds no exported "
                              f"segmenter for step {cfg.train.steps}")
    segmenter_dir = run_dir / EXPORT_DIR
    load_segmenter(final / EXPORT_DIR)  # fails loudly on anything wrong before we copy it
    with atomic_directory(segmenter_dir, overwrite=True) as tmp:
        for item in (final / EXPORT_DIR).iterdir():
            shutil.copy2(item, tmp / item.name)

    summary = dict(result.return_value or {})
    results: dict[str, Any] = {
        "config": to_dict(cfg),
        "config_hash": prepared.config_hash,
        "split": prepared.split.name,
        "oracle": cfg.data.oracle,
        "validation": cfg.data.validation,
        "classes_trained": len(prepared.class_ids),
        "training_images": len(prepared.image_ids),
        "dataset": prepared.dataset,
        "segmenter": {"path": str(segmenter_dir),
                      "fingerprint": checkpoint_fingerprint(segmenter_dir)},
        "training": {**summary, "last_metrics": dict(result.metrics or {}),
                     "attempts": sum(1 for r in records if r.get("event") == "start")},
        "audit": {
            "protocol": prepared.split.protocol,
            "backbone_init": cfg.model.backbone_weights or "random (trained from scratch)",
            "excluded_from_training": [] if cfg.data.oracle else
            (prepared.leakage or {}).get("excluded_classes", []),
            "hyperparameters_chosen_on": "validation split" if cfg.data.validation else
            "fixed config",
        },
        "leakage": prepared.leakage,
        "metrics": {},
    }
    if cfg.train.eval:
        import torch

        device = eval_device or ("cuda" if cfg.distributed.use_gpu and torch.cuda.is_available()
                                 else "cpu")
        layout = data_layout(cfg, cfg.data.eval_split, prepared.split)
        evals = evaluate_segmenter(segmenter_dir, layout, prepared.split,
                                   run_dir / "predictions", device=device)
        results["metrics"] = {task: r.to_json() for task, r in evals.items()}
        results["eval_split"] = cfg.data.eval_split
    results["seconds"] = time.perf_counter() - started
    atomic_write_json(run_dir / "results.json", results, indent=2)
    return TrainingResult(run_dir=run_dir, segmenter_dir=segmenter_dir, summary=summary,
                          metrics=dict(result.metrics or {}), log=records, results=results,
                          checkpoint=final)
