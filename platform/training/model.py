"""Model methods (``kind="model"``): the method's own ``train`` on Ray Train + DeepSpeed.

:func:`train_model` runs :func:`model_train_func` on ``method_training.workers`` Ray Train
workers -- one worker or several, the same function -- with ``CheckpointConfig(num_to_keep=2)``
and ``FailureConfig(method_training.max_failures)`` as the segmenter's training has. Each worker
builds a :class:`ModelContext` and calls the spec's ``model.train(context)``; the method
trains through ``context.engine(model, optimizer)`` (a DeepSpeed engine: ZeRO 0-2, fp32 or
bf16) and calls ``context.report(epoch, metrics, state)`` after each epoch: every rank reports
to Ray Train, rank 0 with a checkpoint of ``state`` (a restarted job resumes from it:
``context.state`` and ``context.start_epoch``), and rank 0 sends the epoch to this process,
where ``on_epoch(epoch, state)`` runs in the calling thread (a sweep's per-epoch report, see
:mod:`.channel`); when it raises :class:`~zeroseg.methods.registry.StopTrial` every rank stops
at that epoch and :func:`train_model` raises it once the job has ended.

The training data a context reads is the platform's: the leakage-filtered training images of
the protocol with their semantic labels in the label space's contiguous indices, every unseen
class (and anything outside the label space) already mapped to the ignore label.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from zeroseg.methods.registry import StopTrial, get_method
from zeroseg.platform.config import from_dict, to_dict
from zeroseg.platform.data.coco import read_label_png, segmentation_rle
from zeroseg.platform.errors import ConfigError
from zeroseg.platform.training import deepspeed_engine as dse
from zeroseg.platform.training.channel import (
    FitThread,
    epoch_verdict,
    finished_result,
    open_channel,
    serve,
)
from zeroseg.platform.training.config import MethodTrainingConfig
from zeroseg.platform.training.loop import maybe_fail, seed_everything
from zeroseg.platform.training.ray_runner import ensure_ray

STATE_FILE = "state.pt"
META_FILE = "epoch.json"


@dataclass
class ModelData:
    """Plain data every worker receives: the label space and the images, as files."""

    num_classes: int
    category_ids: list[int]  # contiguous index -> the dataset's category id
    things: list[bool]  # contiguous index -> a thing class (instances) or stuff
    seen_idx: np.ndarray
    unseen_idx: np.ndarray
    class_embeddings: np.ndarray
    train_images: list[tuple[str, str]]  # (image file, semantic label PNG), leakage-filtered
    label_lut: np.ndarray  # 256: PNG value -> contiguous index, unseen / unknown -> ignore
    eval_images: list[tuple[int, str]]  # (image id, image file)
    stages: dict[str, Path]
    # Per training image (same order as train_images): its instance annotations after the
    # leakage filter, ``{"class_index", "bbox" (xywh), "segmentation", "iscrowd"}`` with the
    # label space's contiguous index; None when the benchmark has no instance annotations.
    train_instances: list[list[dict[str, Any]]] | None = None
    benchmark: str = ""  # the split's name, for messages
    # The leakage filter's record of the training set (FilterResult.to_dict without the kept
    # ids), as a segmenter run records its own: the run's audit.
    leakage: dict[str, Any] | None = None


class ModelContext:
    """What a model method's ``train`` (on each worker) and ``predict`` (in the run's process)
    see; see :class:`~zeroseg.methods.registry.ModelSpec`."""

    def __init__(self, method: str, config: Any, seed: int, data: ModelData, *, rank: int = 0,
                 world_size: int = 1, channel: Any = None, training: MethodTrainingConfig
                 | None = None, state: Mapping[str, Any] | None = None, start_epoch: int = 0,
                 fault: Mapping[str, Any] | None = None):
        self.method, self.config, self.seed, self.data = method, config, seed, data
        self.rank, self.world_size = rank, world_size
        self.state, self.start_epoch = state, start_epoch
        self._channel, self._training = channel, training or MethodTrainingConfig()
        self._fault = fault  # tests: a worker that kills itself after an epoch's report
        self._started = time.perf_counter()

    # -- the label space and the data ----------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def category_ids(self) -> list[int]:
        return self.data.category_ids

    @property
    def things(self) -> list[bool]:
        return self.data.things

    @property
    def seen_idx(self) -> np.ndarray:
        return self.data.seen_idx

    @property
    def unseen_idx(self) -> np.ndarray:
        return self.data.unseen_idx

    @property
    def class_embeddings(self) -> np.ndarray:
        return self.data.class_embeddings

    @property
    def stages(self) -> dict[str, Path]:
        return self.data.stages

    def training_images(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(RGB [H, W, 3] uint8, labels [H, W] int64)`` of each training image (leakage
        filtered; unseen classes are the ignore label)."""
        for image, label in self.data.train_images:
            rgb = np.asarray(Image.open(image).convert("RGB"))
            yield rgb, self.data.label_lut[read_label_png(label)]

    def training_instances(self, index: int
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Training image ``index``'s ``(RGB [H, W, 3] uint8, boxes [N, 4] float32 xyxy,
        class indices [N] int64, masks [N, H, W] uint8)``: its non-crowd instances (leakage
        filtered: an image with an unseen instance is not among the training images)."""
        from pycocotools import mask as mask_utils

        if self.data.train_instances is None:
            raise ConfigError(f"benchmark {self.data.benchmark}: no instance annotations to "
                              f"train on")
        rgb = np.asarray(Image.open(self.data.train_images[index][0]).convert("RGB"))
        h, w = rgb.shape[:2]
        anns = [a for a in self.data.train_instances[index] if not a.get("iscrowd")]
        boxes = np.array([[x, y, x + bw, y + bh] for x, y, bw, bh in
                          (a["bbox"] for a in anns)], np.float32).reshape(-1, 4)
        labels = np.array([a["class_index"] for a in anns], np.int64)
        masks = np.zeros((len(anns), h, w), np.uint8)
        for i, a in enumerate(anns):
            masks[i] = mask_utils.decode(segmentation_rle(a["segmentation"], h, w))
        return rgb, boxes, labels, masks

    def evaluation_images(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(image id, RGB [H, W, 3] uint8)`` of each evaluation image."""
        for image_id, image in self.data.eval_images:
            yield image_id, np.asarray(Image.open(image).convert("RGB"))

    # -- training --------------------------------------------------------------------------------
    def engine(self, model: torch.nn.Module, optimizer: Any, scheduler: Any = None, *,
               micro_batch: int = 1, grad_clip: float = 0.0) -> Any:
        """A DeepSpeed engine over ``model`` (gradients averaged over the workers)."""
        t = self._training
        return dse.initialize_engine(model, optimizer, scheduler,
                                     dse.engine_config(micro_batch, t.zero_stage, grad_clip,
                                                       t.precision), use_gpu=t.use_gpu)

    def report(self, epoch: int, metrics: Mapping[str, float], state: Mapping[str, Any]
               ) -> None:
        """After epoch ``epoch``: a Ray Train report (rank 0's with a checkpoint of ``state``),
        then the run's verdict; raises :class:`StopTrial` on every rank when it says stop."""
        import ray.train

        values = {k: float(v) for k, v in metrics.items()}
        record = {"event": "epoch", "key": int(epoch), "metrics": values,
                  "state": _to_bytes(state) if self.rank == 0 else None}
        directory = Path(tempfile.mkdtemp(prefix=f"zeroseg-model-r{self.rank}-"))
        try:
            checkpoint = None
            if self.rank == 0:
                (directory / STATE_FILE).write_bytes(record["state"])
                (directory / META_FILE).write_text(json.dumps({"epoch": int(epoch)}))
                checkpoint = ray.train.Checkpoint.from_directory(str(directory))
            ray.train.report({**values, "epoch": int(epoch),
                              "seconds": time.perf_counter() - self._started},
                             checkpoint=checkpoint)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        if epoch_verdict(self._channel, self.rank, record):
            raise StopTrial()
        maybe_fail(self._fault, self.rank, int(epoch))


def _to_bytes(state: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() if isinstance(v, torch.Tensor) else v
                for k, v in state.items()}, buffer)
    return buffer.getvalue()


def _from_bytes(blob: bytes) -> dict[str, Any]:
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def model_train_func(loop: dict[str, Any]) -> None:
    """Per Ray Train worker: the method's ``train`` with a :class:`ModelContext` (resumed from
    the job's last checkpoint after a restart)."""
    import ray.train

    ctx = ray.train.get_context()
    rank, world = int(ctx.get_world_rank()), int(ctx.get_world_size())
    training: MethodTrainingConfig = loop["training"]
    torch.set_num_threads(max(1, int(round(training.cpus_per_worker))))
    dse.select_accelerator(training.use_gpu)
    spec = get_method(loop["method"])
    config = (from_dict(spec.config_class, loop["config"], where="method_training")
              if spec.config_class is not None else None)
    state, start = None, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = _from_bytes((Path(directory) / STATE_FILE).read_bytes())
            start = int(json.loads((Path(directory) / META_FILE).read_text())["epoch"])
    seed_everything(int(loop["seed"]), rank)
    context = ModelContext(loop["method"], config, int(loop["seed"]), loop["data"], rank=rank,
                           world_size=world, channel=loop["channel"], training=training,
                           state=state, start_epoch=start, fault=loop.get("fault"))
    try:
        spec.model.train(context)
    except StopTrial:
        pass
    finally:
        dse.destroy_process_group()
        dse.restore_env()


def train_model(method: str, config: Any, seed: int, data: ModelData,
                training: MethodTrainingConfig, storage: Path, *,
                on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
                on_metrics: Callable[[int, dict[str, float]], None] | None = None,
                fault: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``method``'s ``train`` on ``training.workers`` Ray Train workers; returns the last
    reported state. ``on_epoch(epoch, state)`` sees each epoch's state in this thread (it may
    raise StopTrial: the job stops there and StopTrial is raised here); ``on_metrics(epoch,
    metrics)`` each epoch's metrics. A worker that dies is restarted (up to
    ``training.max_failures`` times) from the last checkpoint: ``state`` and ``start_epoch``
    of its context. ``fault`` (tests): ``{"rank", "step" (an epoch), "marker"}``, that worker
    kills its process once after reporting that epoch."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    spec = get_method(method)
    if spec.model is None:
        raise ConfigError(f"method {method!r} is not a model method (MethodSpec.model unset)")
    training.validate()
    ensure_ray(None)
    channel = open_channel()
    loop = {"method": method, "config": to_dict(config) if config is not None else None,
            "seed": int(seed), "data": data, "training": training, "channel": channel,
            "fault": fault}
    resources = training.worker_resources()
    trainer = TorchTrainer(
        model_train_func, train_loop_config=loop,
        scaling_config=ScalingConfig(num_workers=training.workers, use_gpu=training.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name="model", storage_path=str(storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=training.max_failures)))
    job = FitThread(trainer)
    job.start()
    stopped = False

    def on_record(record: dict[str, Any]) -> bool:
        nonlocal stopped
        if on_metrics is not None:
            on_metrics(int(record["key"]), record["metrics"])
        if on_epoch is not None and not stopped:
            try:
                on_epoch(int(record["key"]), _from_bytes(record["state"]))
            except StopTrial:
                stopped = True
        return stopped

    serve(channel, job, on_record)
    result = finished_result(job, stopped, f"{storage}: training of {method}",
                             f"{storage}: training of {method} reported no state")
    with result.checkpoint.as_directory() as directory:
        return _from_bytes((Path(directory) / STATE_FILE).read_bytes())
