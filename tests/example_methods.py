"""One small method of each kind of the method contract (``methods/registry.py``), registered by
the tests (``ZEROSEG_METHOD_MODULES=example_methods`` with ``tests/`` on the path, so that Ray
workers find them too) and run, swept and reproduced through the real platform
(``tests/test_method_kinds.py``):

- ``example-nearest`` (classifier): a linear map of the query embeddings onto the class
  embeddings, trained on the seen classes; logits = scaled cosine similarity;
- ``example-priors`` (classifier + an extra stage): the same, plus a per-class logit bias built
  by its ``priors`` stage (cached by the hash of the stage's params and inputs);
- ``example-pixels`` (model): a per-pixel linear classifier over RGB (+ x, y) that owns its
  training (Ray Train + DeepSpeed through the platform's context) and returns COCO predictions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch import nn

from zeroseg.methods.common import TorchClassifier, prepare_class_embeddings, save_state
from zeroseg.methods.registry import (
    MethodHooks,
    MethodInputs,
    MethodOutput,
    MethodSpec,
    ModelSpec,
    Predictions,
    StageInputs,
    StageSpec,
)


# -- a classifier method --------------------------------------------------------------------------
@dataclass
class NearestConfig:
    steps: int = 30
    lr: float = 0.05
    temperature: float = 0.1


class NearestHead(nn.Module):
    """Query embeddings ``[Q, D]`` -> ``[Q, C + 1]``: cosine to each class embedding after a
    learned map ``D -> d``, divided by the temperature, plus a learned no-object score."""

    def __init__(self, embed_dim: int, class_embeddings: torch.Tensor, temperature: float,
                 bias: torch.Tensor | None = None):
        super().__init__()
        self.map = nn.Linear(embed_dim, class_embeddings.shape[1])
        self.no_object = nn.Linear(embed_dim, 1)
        self.register_buffer("classes", class_embeddings)
        self.register_buffer("bias", bias if bias is not None
                             else torch.zeros(class_embeddings.shape[0]))
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sims = F.normalize(self.map(x), dim=1) @ self.classes.t() / self.temperature
        return torch.cat([sims + self.bias, self.no_object(x)], dim=1)


def _fit_nearest(config: NearestConfig, inputs: MethodInputs, hooks: MethodHooks,
                 bias: torch.Tensor | None = None) -> MethodOutput:
    queries = inputs.features("train_all")
    x = torch.as_tensor(np.asarray(queries.embeddings, dtype=np.float32))
    y = torch.as_tensor(np.asarray(queries.class_index, dtype=np.int64))
    classes = prepare_class_embeddings(inputs.class_embeddings, True)
    head = NearestHead(x.shape[1], classes, config.temperature, bias)
    columns = torch.cat([torch.as_tensor(inputs.seen_idx), torch.tensor([inputs.num_classes])])
    column_of = torch.full((inputs.num_classes + 1,), -1, dtype=torch.int64)
    column_of[columns] = torch.arange(len(columns))
    optimizer = torch.optim.Adam(head.parameters(), lr=config.lr)
    epochs = max(1, hooks.epochs)
    per_epoch = max(1, math.ceil(config.steps / epochs))
    classifier = TorchClassifier(head, inputs.num_classes, x.shape[1])
    for epoch in range(1, epochs + 1):
        head.train()
        for step in range((epoch - 1) * per_epoch + 1, min(config.steps, epoch * per_epoch) + 1):
            loss = F.cross_entropy(head(x)[:, columns], column_of[y])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            hooks.curve("classifier/loss", step, float(loss.detach()))
        classifier = TorchClassifier(head, inputs.num_classes, x.shape[1])  # eval mode
        hooks.epoch(epoch, classifier)
    path = inputs.work_dir / "nearest.pt"
    save_state(path, dict(head.state_dict()), {"format": 1, "kind": "example-nearest"})
    return MethodOutput(classifier=classifier, artifacts={"classifier": str(path)})


# -- a classifier method with an extra stage ------------------------------------------------------
@dataclass
class PriorsConfig(NearestConfig):
    unseen_prior: float = 1.0  # the stage's parameter: logit bias of the unseen classes


#: Every build of the ``priors`` stage in this process (the caching test counts them).
PRIOR_BUILDS: list[Path] = []


def _build_priors(stage: StageInputs, folder: Path) -> None:
    prior = np.array([stage.config.unseen_prior if c.unseen else 0.0
                      for c in stage.split.classes], dtype=np.float32)
    np.save(folder / "prior.npy", prior)
    (folder / "classes.json").write_text(json.dumps([c.name for c in stage.split.classes]))
    PRIOR_BUILDS.append(folder)


def _fit_priors(config: PriorsConfig, inputs: MethodInputs, hooks: MethodHooks
                ) -> MethodOutput:
    prior = torch.as_tensor(np.load(inputs.stages["priors"] / "prior.npy"))
    output = _fit_nearest(config, inputs, hooks, bias=prior)
    output.info["priors"] = str(inputs.stages["priors"])
    return output


# -- a model method -------------------------------------------------------------------------------
@dataclass
class PixelsConfig:
    epochs: int = 2
    steps_per_epoch: int = 10
    lr: float = 0.05
    pixels_per_step: int = 2048


def _pixel_features(image: np.ndarray) -> torch.Tensor:
    """``[H * W, 5]``: RGB in [0, 1] and the pixel's x, y in [0, 1]."""
    h, w = image.shape[:2]
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    rgb = image.reshape(-1, 3).astype(np.float32) / 255.0
    return torch.as_tensor(np.concatenate([rgb, xx.reshape(-1, 1), yy.reshape(-1, 1)], axis=1),
                           dtype=torch.float32)


def _pixels_train(context: Any) -> None:
    """Per worker: sample labelled pixels of the training images, train the linear model
    through the platform's DeepSpeed engine, report after every epoch."""
    config = context.config
    seen = set(int(i) for i in context.seen_idx)
    xs, ys = [], []
    for image, labels in context.training_images():
        feats = _pixel_features(image)
        flat = torch.as_tensor(labels.reshape(-1).astype(np.int64))
        keep = torch.as_tensor(np.isin(flat.numpy(), list(seen)))
        xs.append(feats[keep])
        ys.append(flat[keep])
    x, y = torch.cat(xs), torch.cat(ys)
    model = nn.Linear(5, context.num_classes)
    if context.state is not None:
        model.load_state_dict(context.state)
    engine = context.engine(model, torch.optim.SGD(model.parameters(), lr=config.lr),
                            micro_batch=config.pixels_per_step)
    unseen = torch.as_tensor(context.unseen_idx)
    for epoch in range(context.start_epoch + 1, config.epochs + 1):
        # Seeded per epoch: a run resumed at an epoch draws what the uninterrupted one drew.
        rng = torch.Generator().manual_seed((context.seed * 1000 + context.rank) * 1000 + epoch)
        for _ in range(config.steps_per_epoch):
            rows = torch.randint(len(x), (config.pixels_per_step,), generator=rng)
            logits = engine(x[rows])
            logits[:, unseen] = -1e4  # never trained on: kept out of the softmax
            loss = F.cross_entropy(logits, y[rows])
            engine.backward(loss)
            engine.step()
        context.report(epoch, {"loss": float(loss)},
                       {k: v.detach().cpu() for k, v in model.state_dict().items()})


def _pixels_predict(config: PixelsConfig, context: Any, state: dict[str, torch.Tensor],
                    setting: str) -> Predictions:
    """Every evaluation image in the three COCO result formats: the semantic label map, one
    instance (RLE) per thing class present, one panoptic segment per class present; ZSL keeps
    the unseen columns only."""
    model = nn.Linear(5, context.num_classes)
    model.load_state_dict(state)
    allowed = torch.zeros(context.num_classes, dtype=torch.bool)
    allowed[torch.as_tensor(context.unseen_idx if setting == "zsl" else
                            np.arange(context.num_classes))] = True
    predictions = Predictions()
    with torch.no_grad():
        for image_id, image in context.evaluation_images():
            logits = model(_pixel_features(image))
            logits[:, ~allowed] = float("-inf")
            scores, labels = logits.softmax(1).max(1)
            label_map = labels.reshape(image.shape[:2]).numpy()
            predictions.semantic[image_id] = label_map
            segment_ids = np.zeros(label_map.shape, np.int32)
            segments = []
            for index in np.unique(label_map).tolist():
                region = label_map == index
                category = context.category_ids[index]
                segment_ids[region] = len(segments) + 1
                segments.append({"id": len(segments) + 1, "category_id": category})
                if context.things[index]:
                    rle = mask_utils.encode(np.asfortranarray(region.astype(np.uint8)))
                    rle["counts"] = rle["counts"].decode("ascii")
                    score = float(scores.reshape(label_map.shape)[torch.as_tensor(region)].mean())
                    predictions.instances.append({"image_id": image_id, "category_id": category,
                                                  "segmentation": rle, "score": score})
            predictions.panoptic[image_id] = (segment_ids, segments)
    return predictions


METHODS = [
    MethodSpec(name="example-nearest", label="Nearest (example)", config_class=NearestConfig,
               fit=_fit_nearest, features=("train_all",), order=900,
               description="tests: a classifier method"),
    MethodSpec(name="example-priors", label="Priors (example)", config_class=PriorsConfig,
               fit=_fit_priors, features=("train_all",), order=901,
               stages=(StageSpec("priors", build=_build_priors,
                                 params=lambda c: {"unseen_prior": c.unseen_prior}),),
               description="tests: a classifier method with an extra stage"),
    MethodSpec(name="example-pixels", label="Pixels (example)", config_class=PixelsConfig,
               fit=None, kind="model", model=ModelSpec(train=_pixels_train,
                                                       predict=_pixels_predict),
               order=902, description="tests: a model method"),
]
