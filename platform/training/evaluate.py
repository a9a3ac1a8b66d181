"""Evaluate a trained segmenter with its own classifier: semantic / instance / panoptic, GZSL.

The segmenter's head covers the classes it was trained on (the seen classes of a zero-shot run,
every class for the oracle). :func:`~zeroseg.methods.segmenter.inference.segmenter_classifier`
places its K outputs in the split's C + 1 contiguous columns and gives the classes it never
learned -inf, so a zero-shot segmenter scores 0 on unseen classes: the "seen only" baseline the
zero-shot methods start from. The oracle's unseen figures are the upper bound.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from zeroseg.methods.segmenter.checkpoint import load_segmenter
from zeroseg.methods.segmenter.inference import predict_dataset, segmenter_classifier
from zeroseg.platform.data.classes import Split
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.evaluation import (
    EvalResult,
    evaluate_instance,
    evaluate_panoptic,
    evaluate_semantic,
)

log = logging.getLogger(__name__)

EVAL_TASKS = ("semantic", "instance", "panoptic")


def evaluate_segmenter(segmenter_dir: str | Path, layout: CocoLayout, split: Split,
                       out_dir: str | Path, *, tasks: tuple[str, ...] = EVAL_TASKS,
                       device: str | torch.device = "cpu", batch_size: int = 8,
                       setting: str = "gzsl") -> dict[str, EvalResult]:
    """Predict ``layout``'s images with the exported segmenter (its own head) and evaluate.

    Predictions go to ``out_dir`` (``semantic/``, ``panoptic/``, ``instances_results.json``).
    Tasks the split does not define are skipped.
    """
    tasks = tuple(t for t in tasks if t in split.tasks) if split.tasks else tasks
    model, meta = load_segmenter(segmenter_dir, map_location=device)
    classifier = segmenter_classifier(model, [int(c) for c in meta["class_ids"]], split)
    # All the process's threads: nothing compares these bytes with a feature cache's.
    paths = predict_dataset(model, classifier, layout, split, out_dir, tasks,
                            batch_size=batch_size, device=device, threads=None)
    evaluators: dict[str, Any] = {"semantic": evaluate_semantic, "instance": evaluate_instance,
                                  "panoptic": evaluate_panoptic}
    results = {}
    for task in tasks:
        results[task] = evaluators[task](layout, split, paths[task], setting)
        log.info("%s: %s", task, results[task].to_json().get("hm"))
    return results
