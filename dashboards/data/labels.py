"""What every dashboard page shares: labels of methods, metrics, tasks and splits (the
papers' vocabulary), percent formatting, the method order (the registry's table order) and the
shipped reference files. Values in the store are fractions in [0, 1]; display strings are in
percent."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from functools import cache
from importlib.resources import files
from typing import Any

import numpy as np
import pandas as pd

from zeroseg.methods.registry import method_label as registry_label
from zeroseg.methods.registry import registry
from zeroseg.platform.evaluation import PAPER_METRIC_NAMES

log = logging.getLogger(__name__)


# -- vocabulary ---------------------------------------------------------------------------------
TASK_ORDER = ("semantic", "instance", "panoptic", "detection")
#: Our task names <-> the papers' abbreviations (ZSD: zero-shot detection, boxes of the
#: instance predictions).
TASK_ABBREVIATIONS = {"semantic": "ZSS", "instance": "ZSI", "panoptic": "ZSP",
                      "detection": "ZSD"}
PAPER_TASKS = {v: k for k, v in TASK_ABBREVIATIONS.items()}
METRIC_ORDER = tuple(PAPER_METRIC_NAMES.values())
SUBSETS = ("seen", "unseen", "hm")


def method_label(name: Any) -> str:
    """The table label of a registered method (PADing Table 1 names); others as they are."""
    if name is None or (isinstance(name, float) and math.isnan(name)):
        return "-"
    return registry_label(str(name))


@cache
def method_order() -> tuple[str, ...]:
    """Method labels in table order: the registry's (:attr:`MethodSpec.order
    <zeroseg.methods.registry.MethodSpec.order>`), which the papers' rows share."""
    return tuple(spec.label for spec in registry().values())


def metric_label(key: str) -> str:
    return PAPER_METRIC_NAMES.get(key, key)


def split_label(dataset: Any, split: Any) -> str:
    """``dataset/split`` without repeating the dataset (registry splits start with it)."""
    dataset = None if is_missing(dataset) else str(dataset)
    split = None if is_missing(split) else str(split)
    if split and (not dataset or split.startswith(f"{dataset}/")):
        return split
    return "/".join(x for x in (dataset, split) if x) or "-"


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def pct(value: Any, digits: int = 1) -> str:
    """A fraction as a percentage with ``digits`` decimals ("-" when missing)."""
    if is_missing(value):
        return "-"
    return f"{100.0 * float(value):.{digits}f}"


def percent(value: Any) -> float:
    """A fraction as a number in percent (NaN when missing)."""
    return np.nan if is_missing(value) else 100.0 * float(value)


def seed_list(values: pd.Series) -> str:
    """``"0,1,2"``: the sorted distinct seeds of ``values``."""
    seeds = sorted({int(v) for v in values.dropna()})
    return ",".join(map(str, seeds))


def in_order(values: Iterable[Any], order: Sequence[str]) -> list[Any]:
    rank = {v: i for i, v in enumerate(order)}
    return sorted(set(values), key=lambda v: (rank.get(v, len(rank)), str(v)))


# -- reference figures --------------------------------------------------------------------------
def reference_text(name: str) -> str:
    return files("zeroseg.dashboards.reference").joinpath(name).read_text(encoding="utf-8")
