"""Exact zero-shot segmentation metrics: seen / unseen / harmonic mean, GZSL and ZSL.

- :mod:`.semantic`: mIoU from a pixel confusion matrix (PADing / ZegFormer / ZS3 protocol);
- :mod:`.panoptic`: PQ / SQ / RQ with panopticapi ``pq_compute`` semantics, PADing's averaging;
- :mod:`.instance`: mAP and Recall@100 at IoU 0.4 / 0.5 / 0.6 with the ZSI / PADing COCOeval;
- :mod:`.summary`: the result object and the seen / unseen / HM rules shared by all three.
"""

from zeroseg.platform.evaluation.instance import evaluate_instance, evaluate_instance_coco
from zeroseg.platform.evaluation.panoptic import PanopticEvaluator, evaluate_panoptic
from zeroseg.platform.evaluation.semantic import SemanticEvaluator, evaluate_semantic
from zeroseg.platform.evaluation.summary import (
    GZSL,
    INSTANCE_METRICS,
    PANOPTIC_METRICS,
    PAPER_METRIC_NAMES,
    SEMANTIC_METRICS,
    SETTINGS,
    ZSL,
    EvalResult,
    harmonic_mean,
    summarize,
)

__all__ = [
    "GZSL",
    "INSTANCE_METRICS",
    "PANOPTIC_METRICS",
    "PAPER_METRIC_NAMES",
    "SEMANTIC_METRICS",
    "SETTINGS",
    "ZSL",
    "EvalResult",
    "PanopticEvaluator",
    "SemanticEvaluator",
    "evaluate_instance",
    "evaluate_instance_coco",
    "evaluate_panoptic",
    "evaluate_semantic",
    "harmonic_mean",
    "summarize",
]
