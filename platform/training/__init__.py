"""Distributed training on Ray Train + DeepSpeed: the segmenter (``zeroseg train segmenter``), the
generative methods' generators and the model methods' own models.

- :mod:`.config`: the typed config (:class:`SegmenterTrainConfig`), validated before Ray starts;
- :mod:`.loop`: :func:`train_func`, the per-worker loop (same code for 1 or N workers);
- :mod:`.deepspeed_engine`: the DeepSpeed engine (ZeRO 0-3, fp32 / bf16 autocast, AdamW);
- :mod:`.checkpoints`: training checkpoints with per-rank manifests, verified before loading;
- :mod:`.ray_runner`: :func:`run_training`, the driver (data, leakage filter, TorchTrainer,
  export, evaluation, ``results.json``);
- :mod:`.evaluate`: seen / unseen / HM of a trained segmenter's own classifier;
- :mod:`.dataset`: the run's split and where each data split lives (driver and workers);
- :mod:`.generator`: a generative method's recipe (declared on its spec), trained in one
  process or on Ray Train + DeepSpeed workers, per-epoch snapshots either way;
- :mod:`.model`: a model method's own ``train`` on Ray Train + DeepSpeed workers;
- :mod:`.channel`: rank 0's per-epoch records to the calling thread, its verdicts back.

Heavy modules (ray, deepspeed, transformers) load when used, not at import.
"""

from zeroseg.platform.training.config import (
    DataConfig,
    DistributedConfig,
    OptimConfig,
    OutputConfig,
    SegmenterTrainConfig,
    SyntheticDataConfig,
    TrainLoopConfig,
    load_train_config,
    train_config_from_dict,
)

__all__ = [
    "DataConfig",
    "DistributedConfig",
    "OptimConfig",
    "OutputConfig",
    "SegmenterTrainConfig",
    "SyntheticDataConfig",
    "TrainLoopConfig",
    "load_train_config",
    "run_training",
    "train_config_from_dict",
    "train_func",
]


def __getattr__(name: str):  # lazy: ray / deepspeed only when asked for
    if name == "run_training":
        from zeroseg.platform.training.ray_runner import run_training

        return run_training
    if name == "train_func":
        from zeroseg.platform.training.loop import train_func

        return train_func
    raise AttributeError(name)
