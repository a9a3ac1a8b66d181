"""The dataset of a segmenter training run: its split (label space) and where each data split
lives. Read by the driver (:mod:`.ray_runner`) and by every worker (:mod:`.loop`)."""

from __future__ import annotations

from zeroseg.platform.data.classes import Split
from zeroseg.platform.data.layout import CocoLayout, dataset_layout
from zeroseg.platform.data.registry import get_split
from zeroseg.platform.data.synthetic.generate import load_classes_json
from zeroseg.platform.errors import ConfigError
from zeroseg.platform.training.config import SegmenterTrainConfig


def resolve_split(config: SegmenterTrainConfig) -> Split:
    if config.data.benchmark:
        return get_split(config.data.benchmark)

    path = CocoLayout(config.data.root, config.data.train_split).classes_json
    if not path.is_file():
        raise ConfigError(f"{path}: no classes.json in the dataset (not a synthetic benchmark); "
                          f"for real data set data.benchmark to a registry split (see "
                          f"`zeroseg data list`)")
    return load_classes_json(path)


def data_layout(config: SegmenterTrainConfig, data_split: str, split: Split) -> CocoLayout:
    """Where ``data_split`` of the run's dataset lives: the COCO layout, or the VOC tree for the
    VOC / Pascal-Context benchmarks."""
    return dataset_layout(config.data.root, data_split, split.dataset)
