"""The generative methods' ``fit`` (GMMN, PADing and its ablations): generator, then classifier.

A generative method declares its generator recipe on its spec
(:attr:`~zeroseg.methods.registry.MethodSpec.generator_recipe`) and fits with
:func:`fit_generative`; the platform trains the recipe (``inputs.train_generator``: in this
process, or on Ray Train + DeepSpeed workers) and this module turns the trained generator into
the classifier the platform evaluates.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zeroseg.methods.common import (
    MMD_CURVE,
    ClassifierResult,
    TrainedGenerator,
    classifier_rows,
    retrain_classifier,
    save_classifier,
    save_generator,
    seeded,
)
from zeroseg.methods.fidelity import fidelity
from zeroseg.methods.registry import MethodHooks, MethodInputs, MethodOutput
from zeroseg.platform.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Synthetic unseen embeddings kept per unseen class (the dashboard's Fig. 5 view).
SYNTHETIC_PER_CLASS = 64


def fit_generative(config: Any, inputs: MethodInputs, hooks: MethodHooks) -> MethodOutput:
    """Algorithm 1 steps 3-4 for a method whose spec declares a generator recipe.

    The platform trains the generator (``inputs.train_generator``) on the matched query
    embeddings (``train`` cache); the classifier trains on every query (``train_all``),
    no-object included. With ``classifier.schedule: interleaved`` the head trains inside the
    generator's loop, one step per generator step, and comes back with the generator; with
    ``sequential`` it is retrained from the frozen generator afterwards. Training is cut into
    ``hooks.epochs`` rounds; after each, the classifier as it is then (interleaved) or retrained
    from the generator as it is then (sequential) goes to ``hooks.on_epoch`` (the last round's
    classifier is the output) -- in one process and on several workers alike.

    On the validation protocol (``inputs.heldout`` given: real query embeddings of the held-out
    classes) the run's generator fidelity is measured (:func:`zeroseg.methods.fidelity.fidelity`)
    and returned in ``info["fidelity"]``.
    """
    if inputs.train_generator is None:
        raise ConfigError("a generative method needs the platform's generator trainer "
                          "(MethodSpec.generator_recipe unset?)")
    real = inputs.features("train")
    queries = inputs.features("train_all")
    config = dataclasses.replace(config, classifier=classifier_rows(config.classifier,
                                                                    queries.image_id))
    seen_idx, unseen_idx = inputs.seen_idx, inputs.unseen_idx
    init_w = init_b = None
    if config.classifier.init == "segmenter":
        init_w, init_b, _ = inputs.segmenter_head()
    interleaved = config.classifier.schedule == "interleaved"
    epochs = max(1, int(hooks.epochs))
    every = max(1, math.ceil(config.steps / epochs)) if epochs > 1 else None

    def classifier_for(generator: TrainedGenerator) -> ClassifierResult:
        return retrain_classifier(queries.embeddings, queries.class_index, generator, unseen_idx,
                                  config.classifier, inputs.seed, seen_idx=seen_idx,
                                  init_weight=init_w, init_bias=init_b)

    def on_snapshot(step: int, generator: TrainedGenerator) -> None:
        head = generator.classifier if interleaved else classifier_for(generator).classifier
        hooks.epoch(step // every, head)

    head_curve: list[tuple[int, float]] = []

    def on_step(step: int, metrics: dict[str, float]) -> None:
        hooks.curve("generator/loss", step, metrics.get("total", metrics.get("gen", math.nan)))
        if "mmd" in metrics:
            hooks.curve(MMD_CURVE, step, metrics["mmd"])
        if "head" in metrics:
            head_curve.append((step, metrics["head"]))

    generator = inputs.train_generator(config, on_step=on_step, on_snapshot=on_snapshot,
                                       snapshot_every=every, head_init=(init_w, init_b))
    if interleaved:
        if generator.classifier is None:
            raise DataError("the interleaved schedule returned no classifier")
        linear = generator.classifier.module
        head = ClassifierResult(linear, generator.classifier,
                                [{"step": float(s), "loss": v} for s, v in head_curve])
        classifier_steps = int(config.steps)
    else:
        head = classifier_for(generator)
        classifier_steps = int(config.classifier.steps)
    for point in head.history:
        hooks.curve("classifier/loss", int(point["step"]), point["loss"])
    work = Path(inputs.work_dir)
    save_generator(work / "generator.pt", generator)
    save_classifier(work / "classifier.pt", head.linear)
    with seeded(inputs.seed + 1) as rng:
        labels = torch.as_tensor(unseen_idx).repeat_interleave(SYNTHETIC_PER_CLASS)
        fakes = generator.sample(labels, rng).numpy()
    info: dict[str, Any] = {"real_features": len(real), "classifier_rows": len(queries),
                            "classifier_rows_per_step": int(config.classifier.batch_size),
                            "generator_steps": int(config.steps),
                            "classifier_steps": classifier_steps,
                            "classifier_schedule": config.classifier.schedule}
    if inputs.heldout is not None:
        x_h, y_h = inputs.heldout()
        names = [c.name for c in inputs.split.classes]
        found = len(np.unique(np.asarray(y_h)))
        if found >= 2:
            info["fidelity"] = fidelity(generator, x_h, y_h, unseen_idx, class_names=names,
                                        seed=inputs.seed)
        else:  # a diagnostic, never a reason to fail the run
            log.warning("fidelity diagnostics not computed: real embeddings of %d held-out "
                        "classes in the evaluation images (at least 2 needed)", found)
    hooks.epoch(epochs, head.classifier)
    return MethodOutput(
        classifier=head.classifier,
        artifacts={"generator": str(work / "generator.pt"),
                   "classifier": str(work / "classifier.pt")},
        synthetic=(fakes.astype(np.float32), labels.numpy().astype(np.int64)),
        info=info)
