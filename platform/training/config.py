"""The typed config of ``zeroseg train segmenter`` (YAML in, validated before Ray starts).

Sections (every key optional except ``data.root``)::

    data:         root, benchmark, train_split, eval_split, oracle, validation, augment,
                  num_workers, synthetic {size, seed}, scale_range
    model:        SegmenterConfig (methods/segmenter/model.py)
    optim:        lr, weight_decay, betas, grad_clip, schedule constant|poly, poly_power,
                  warmup_steps
    train:        steps, batch_size (per worker), seed, checkpoint_every, log_every, eval,
                  resume_from
    distributed:  workers (0 = Ray Train's local mode, in this process), use_gpu,
                  cpus_per_worker, zero_stage 0-3, precision fp32|bf16, max_failures, address
    output:       run_dir

Unknown keys and wrong types fail in :func:`zeroseg.platform.config.from_dict` naming the dotted
key; :meth:`SegmenterTrainConfig.validate` checks ranges and combinations, also naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from zeroseg.methods.segmenter.model import SegmenterConfig
from zeroseg.platform.config import added_field, config_hash, from_dict, load_config, to_dict
from zeroseg.platform.errors import ConfigError

SyntheticSize = Literal["tiny", "small", "medium", "large"]


@dataclass
class SyntheticDataConfig:
    """Generate the synthetic benchmark into ``data.root`` when that folder does not exist."""

    size: SyntheticSize = "tiny"
    seed: int = 0
    # "cap2seg": the caption variant (platform/data/synthetic/generate.py): Cap2Seg's split with
    # the ignore-pixels protocol, placement priors, position phrases, stripe histograms.
    variant: Literal["default", "cap2seg"] = added_field("default", since="issue 18")


@dataclass
class DataConfig:
    root: Path
    benchmark: str | None = None  # registry split name; None: the dataset's classes.json
    train_split: str = "train"
    eval_split: str = "val"
    oracle: bool = False  # train on every class (the supervised upper bound)
    validation: bool = False  # also keep the held-out seen (val_unseen) classes out of training
    augment: bool = False  # horizontal flips, seeded (SegmentationDataset)
    num_workers: int = 0  # DataLoader processes per training worker
    synthetic: SyntheticDataConfig | None = None
    # shortest-edge resize: large-scale jitter's scale range (Mask2Former: [0.1, 2.0])
    scale_range: tuple[float, float] = added_field((1.0, 1.0), since="issue 12")
    max_images: int | None = added_field(None, since="issue 12")  # first N after the filter


@dataclass
class OptimConfig:
    """torch.optim.AdamW (DeepSpeed's client optimizer); Mask2Former's defaults."""

    lr: float = 1e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 0.01  # global-norm clipping by DeepSpeed (0 disables it)
    schedule: Literal["constant", "poly"] = "poly"  # lr * (1 - step / steps) ** poly_power
    poly_power: float = 0.9
    warmup_steps: int = 0  # linear warm-up from 0 to lr over these steps


@dataclass
class TrainLoopConfig:
    steps: int = 100
    batch_size: int = 4  # images per worker and step
    seed: int = 0
    checkpoint_every: int = 50
    log_every: int = 10
    eval: bool = True  # evaluate the three tasks on data.eval_split at the end
    resume_from: Path | None = None  # a checkpoint directory of an earlier run (same config)


@dataclass
class DistributedConfig:
    workers: int = 1  # Ray Train workers; 0 runs train_func in this process (local mode)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0  # Ray CPUs per worker; also its torch threads on CPU
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3
    precision: Literal["fp32", "bf16"] = "fp32"
    max_failures: int = 0  # worker-group restarts from the last checkpoint (-1: unlimited)
    address: str | None = None  # Ray cluster address (None: start or reuse a local Ray)


@dataclass
class OutputConfig:
    run_dir: Path = Path("runs/segmenter")


@dataclass
class SegmenterTrainConfig:
    data: DataConfig
    model: SegmenterConfig = field(default_factory=SegmenterConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def validate(self) -> None:
        d, o, t, x = self.data, self.optim, self.train, self.distributed
        _positive("train.steps", t.steps)
        _positive("train.batch_size", t.batch_size)
        _positive("train.checkpoint_every", t.checkpoint_every)
        _positive("train.log_every", t.log_every)
        if t.seed < 0:
            raise ConfigError(f"train.seed must be >= 0, got {t.seed}")
        if d.max_images is not None and d.max_images < 1:
            raise ConfigError(f"data.max_images must be >= 1, got {d.max_images}")
        lo, hi = d.scale_range
        if not 0 < lo <= hi:
            raise ConfigError(f"data.scale_range must be [low, high] with 0 < low <= high, got "
                              f"{list(d.scale_range)}")
        if not o.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {o.lr}")
        if o.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {o.weight_decay}")
        if not all(0.0 <= b < 1.0 for b in o.betas):
            raise ConfigError(f"optim.betas must lie in [0, 1), got {list(o.betas)}")
        if o.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps must be >= 0, got {o.warmup_steps}")
        if o.poly_power <= 0:
            raise ConfigError(f"optim.poly_power must be > 0, got {o.poly_power}")
        if o.grad_clip < 0:
            raise ConfigError(f"optim.grad_clip must be >= 0 (0 disables it), got {o.grad_clip}")
        if x.workers < 0:
            raise ConfigError(f"distributed.workers must be >= 0 (0: local mode), got "
                              f"{x.workers}")
        if x.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"distributed.zero_stage must be 0, 1, 2 or 3, got {x.zero_stage}")
        if x.max_failures < -1:
            raise ConfigError(f"distributed.max_failures must be >= -1 (-1: unlimited), got "
                              f"{x.max_failures}")
        if not x.cpus_per_worker > 0:
            raise ConfigError(f"distributed.cpus_per_worker must be > 0, got {x.cpus_per_worker}")
        if d.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {d.num_workers}")
        if d.oracle and d.validation:
            raise ConfigError("data.validation: the oracle trains on every class; the "
                              "validation hold-out only applies to zero-shot (oracle: false) runs")
        if d.synthetic is not None and d.benchmark is not None:
            raise ConfigError(f"data.benchmark: data.synthetic generates the synthetic benchmark, "
                              f"which defines its own classes; for {d.benchmark} on real data "
                              f"set data.synthetic to null (--set data.synthetic=null)")
        if d.train_split == d.eval_split:
            raise ConfigError(f"data.eval_split must differ from data.train_split "
                              f"({d.train_split!r})")

    # -- identities ------------------------------------------------------------------------------
    def resume_identity(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed: everything that shapes the training
        trajectory (not the step budget, logging, evaluation, retries or where files go)."""
        data = to_dict(self)
        data["train"] = {k: v for k, v in data["train"].items()
                         if k not in ("steps", "checkpoint_every", "log_every", "eval",
                                      "resume_from")}
        # The dataset is identified by its content (the fingerprint stored beside this hash),
        # not by where it lives.
        data["data"] = {k: v for k, v in data["data"].items()
                        if k not in ("root", "synthetic", "eval_split", "num_workers")}
        data["distributed"] = {k: v for k, v in data["distributed"].items()
                               if k not in ("max_failures", "address", "cpus_per_worker")}
        data.pop("output")
        return data

    def resume_hash(self) -> str:
        return config_hash(self.resume_identity())


def _positive(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{key} must be >= 1, got {value}")


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None
                      ) -> SegmenterTrainConfig:
    """Read and validate a training config; ``overrides`` are dotted keys (``train.steps``)."""
    return load_config(SegmenterTrainConfig, path, overrides)


def train_config_from_dict(data: dict[str, Any], where: str = "config") -> SegmenterTrainConfig:
    return from_dict(SegmenterTrainConfig, data, where=where)


#: The Ray CPUs held by the process that starts a method's Ray Train job when that process is
#: itself a Ray task or a Tune trial (platform/pipeline/runner.driver_cpus; STACK.md: a zero
#: share is refused). The job's workers ask for that much less in all, so that ``workers x
#: cpus_per_worker`` still fits beside it: 2 workers of 1 CPU in a trial on 2 CPUs.
DRIVER_CPUS = 0.01


@dataclass
class MethodTrainingConfig:
    """Where the method stages train (``method_training`` of a pipeline config). ``workers: 1``
    (default): generators in the calling process; ``workers > 1``: a Ray Train job of that many
    workers with DeepSpeed (platform/training/generator.py). A model method's ``train``
    (platform/training/model.py) always runs on Ray Train, ``workers`` of them."""

    workers: int = 1
    zero_stage: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    # Ray Train's FailureConfig: restarts of a failed job (from its last checkpoint)
    max_failures: int = added_field(0, since="issue 16")

    def worker_resources(self) -> dict[str, float]:
        """One Ray Train worker's resources: ``cpus_per_worker`` less its share of
        :data:`DRIVER_CPUS` (its torch threads stay ``round(cpus_per_worker)``), a GPU when
        ``use_gpu``."""
        cpus = max(self.cpus_per_worker - DRIVER_CPUS / self.workers, self.cpus_per_worker / 2)
        return {"CPU": cpus, **({"GPU": 1} if self.use_gpu else {})}

    def validate(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"method_training.workers must be >= 1, got {self.workers}")
        if self.zero_stage not in (0, 1, 2):
            raise ConfigError(f"method_training.zero_stage must be 0, 1 or 2 (generators are "
                              f"small; ZeRO-3 is not supported), got {self.zero_stage}")
        if not self.cpus_per_worker > 0:
            raise ConfigError(f"method_training.cpus_per_worker must be > 0, got "
                              f"{self.cpus_per_worker}")
        if self.max_failures < 0:
            raise ConfigError(f"method_training.max_failures must be >= 0, got "
                              f"{self.max_failures}")

    @property
    def distributed(self) -> bool:
        return self.workers > 1
