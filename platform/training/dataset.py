"""The dataset of a segmenter training run: its split (label space) and where each data split
lives. Read by the driver (:mod:`.ray_runner`) and by every worker (:mod:`.loop`)."""

from __future__ import annotations

from zeroseg.platform.data.classes import Split
from zeroseg.platform.data.layout import CocoLayout, dataset_layout
from zeroseg.platform.data.registry import dataset_split
from zeroseg.platform.training.config import SegmenterTrainConfig


def resolve_split(config: SegmenterTrainConfig) -> Split:
    """The run's split: ``data.benchmark`` from the registry, else the synthetic dataset's
    ``classes.json``."""
    return dataset_split(config.data.benchmark, config.data.root, config.data.train_split,
                         missing_hint=" (not a synthetic benchmark); for real data set "
                                      "data.benchmark to a registry split (see `zeroseg data "
                                      "list`)")


def data_layout(config: SegmenterTrainConfig, data_split: str, split: Split) -> CocoLayout:
    """Where ``data_split`` of the run's dataset lives: the COCO layout, or the VOC tree for the
    VOC / Pascal-Context benchmarks."""
    return dataset_layout(config.data.root, data_split, split.dataset)
