"""The projection baseline (PADing Table 1 row 2; ZegFormer-seg / SPNet style).

A classifier whose weights are the class embeddings: each query embedding ``x`` is mapped into
the class-embedding space by a learned linear projection and scored against every class by
cosine similarity at a temperature::

    logit_k(x) = cos(W x + b, a_k) / temperature,   k = 0..C-1
    logit_C(x) = cos(W x + b, n) / temperature      (n: a learned no-object vector)

with ``a_k`` the (L2-normalised, frozen) class embeddings -- optionally passed through a learned
linear map of their own (``text_projection``), the "projected class embeddings". It is trained
on the segmenter's query embeddings of training images (matched class or no-object) with a
softmax over the *seen* classes and no-object only; at inference the unseen classes' embeddings
join the classifier and every query is labelled among all ``C`` classes + no-object. Nothing
pushes unseen scores up during training, so queries of unseen classes tend to be labelled with
a seen class: the bias towards seen classes that the generative methods address.

**Every switch, one table.** PADing's Table 1 names this row but gives no recipe, and its
repository has no projection baseline, so the ``code`` column is SPNet's idea (fixed class
vectors, a learned projection of the visual feature) rather than a line-by-line source; the
values are zeroseg's, chosen a priori and swept by ``search_spaces/projection.yaml``.

========================== ================= ===================== =================== =====
switch                     paper (PADing T1) code                  zeroseg default     why
========================== ================= ===================== =================== =====
class side                 class embeddings  fixed word vectors    frozen, L2-normed   SPNet
text_projection            --                --                    false               Z
temperature                --                --                    0.01                Z
no-object column           --                --                    learned vector n    Z
no_object_weight           --                --                    0.1                 P
lr, weight_decay           --                --                    1e-3, 1e-4 (AdamW)  Z
steps, batch_size          --                --                    2000, 1200 rows     Z
normalize_class_embeddings --                --                    true                Z
training softmax           seen only         seen only             seen + no-object    SPNet
========================== ================= ===================== =================== =====

``Z``: zeroseg's choice where neither source gives one. ``P``: PADing's NO_OBJECT_WEIGHT, as
its classifier uses. ``SPNet``: the setting SPNet's projection baseline defines.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeroseg.methods.common import (
    ClassRoles,
    EpochSampler,
    SnapshotCallback,
    StepCallback,
    TorchClassifier,
    check_real_features,
    class_weights,
    frozen_rng,
    prepare_class_embeddings,
    record_step,
    save_state,
    seeded,
    snapshot_due,
)
from zeroseg.methods.registry import MethodHooks, MethodInputs, MethodOutput, MethodSpec
from zeroseg.platform.config import to_dict
from zeroseg.platform.errors import ConfigError

log = logging.getLogger(__name__)

#: ``(module, step) -> (loss tensor, {name: value})``: a loss added to the cross-entropy.
ExtraLoss = Callable[[nn.Module, int], tuple[Tensor, dict[str, Any]]]


@dataclass
class ProjectionConfig:
    """Knobs of the projection classifier. ZegFormer scores with cosine similarity at a
    temperature of 0.01; AdamW as for the segmenter's own head."""

    temperature: float = 0.01
    text_projection: bool = False  # learn a d x d map on the class side as well
    lr: float = 1e-3
    weight_decay: float = 1e-4
    steps: int = 2000
    batch_size: int = 1200  # query embeddings per step (12 images x 100 queries)
    no_object_weight: float = 0.1
    normalize_class_embeddings: bool = True
    log_every: int = 50
    seed: int = 0

    def validate(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("temperature", "lr", "no_object_weight"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")


class ProjectionClassifier(nn.Module):
    """Query embeddings ``[Q, D]`` -> logits ``[Q, C + 1]`` over all classes + no-object."""

    def __init__(self, in_dim: int, class_embeddings: Tensor, temperature: float,
                 text_projection: bool):
        super().__init__()
        embed_dim = class_embeddings.shape[1]
        self.register_buffer("class_embeddings", class_embeddings.clone())  # frozen a_k
        self.visual = nn.Linear(in_dim, embed_dim)  # W x + b
        self.text: nn.Module = nn.Linear(embed_dim, embed_dim) if text_projection else (
            nn.Identity())
        self.no_object = nn.Parameter(torch.randn(embed_dim) / embed_dim ** 0.5)
        self.temperature = temperature

    def class_weights(self) -> Tensor:
        """The classifier's weight rows: the (projected) class embeddings, then no-object."""
        return torch.cat([self.text(self.class_embeddings), self.no_object.unsqueeze(0)])

    def forward(self, x: Tensor) -> Tensor:
        v = F.normalize(self.visual(x), dim=1)
        w = F.normalize(self.class_weights(), dim=1)
        return v @ w.t() / self.temperature


@dataclass
class ProjectionResult:
    module: ProjectionClassifier
    classifier: TorchClassifier
    history: list[dict[str, float]]


def train_projection(query_embeddings: Any, targets: Any, class_embeddings: Any, seen_idx: Any,
                     unseen_idx: Any, config: ProjectionConfig | None = None,
                     seed: int | None = None, *, on_step: StepCallback | None = None,
                     on_snapshot: SnapshotCallback | None = None,
                     snapshot_every: int | None = None,
                     extra_loss: ExtraLoss | None = None) -> ProjectionResult:
    """Train the projection classifier on seen classes; it predicts over seen + unseen.

    ``query_embeddings [M, D]`` with ``targets [M]`` (class index, or ``C`` = no-object; no
    unseen class, else :class:`~zeroseg.platform.errors.LeakageError`), ``class_embeddings
    [C, d]``. During training the unseen columns are left out of the softmax (they are not part
    of the training classifier); the returned classifier scores all ``C + 1`` columns.
    """
    config = config or ProjectionConfig()
    config.validate()
    seed = config.seed if seed is None else seed
    a = prepare_class_embeddings(class_embeddings, config.normalize_class_embeddings)
    roles = ClassRoles.build(len(a), seen_idx, unseen_idx)
    x, y = check_real_features(query_embeddings, targets, roles, allow_no_object=True,
                               names=("query_embeddings", "targets"))
    num_classes = len(a)
    train_columns = torch.cat([roles.seen.sort().values, torch.tensor([num_classes])])
    # Targets re-indexed into the training columns (seen classes + no-object).
    column_of = torch.full((num_classes + 1,), -1, dtype=torch.int64)
    column_of[train_columns] = torch.arange(len(train_columns))
    y_train = column_of[y]
    weights = class_weights(roles, 1.0, config.no_object_weight)[train_columns]
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    with seeded(seed) as rng:
        module = ProjectionClassifier(x.shape[1], a, config.temperature, config.text_projection)
        optimizer = torch.optim.AdamW(module.parameters(), lr=config.lr,
                                      weight_decay=config.weight_decay)
        sampler = EpochSampler(len(x), config.batch_size, rng)
        module.train()
        for step in range(1, config.steps + 1):
            rows = sampler.next()
            logits = module(x[rows])[:, train_columns]
            loss = F.cross_entropy(logits, y_train[rows], weight=weights)
            metrics = {"loss": loss}
            if extra_loss is not None:
                added, more = extra_loss(module, step)
                metrics = {"loss": loss + added, "ce": loss, **more}
                loss = loss + added
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            record_step(history, on_step, step, config.steps, config.log_every, metrics)
            if on_snapshot is not None and snapshot_due(step, config.steps, snapshot_every):
                with frozen_rng():
                    on_snapshot(step, TorchClassifier(module, num_classes, x.shape[1]))
                module.train()  # TorchClassifier switched it to eval mode
    module.eval()
    log.info("projection classifier trained: %d steps in %.1f s, final loss %.4f",
             config.steps, time.perf_counter() - start, history[-1]["loss"])
    return ProjectionResult(module, TorchClassifier(module, num_classes, x.shape[1]), history)


# ------------------------------------------------------------------------------------------------
# Registry entry (PADing Table 1 row 2)
# ------------------------------------------------------------------------------------------------


def _fit(config: ProjectionConfig, inputs: MethodInputs, hooks: MethodHooks) -> MethodOutput:
    queries = inputs.features("train_all")
    epochs = max(1, int(hooks.epochs))
    every = max(1, math.ceil(config.steps / epochs)) if epochs > 1 else None
    result = train_projection(
        queries.embeddings, queries.class_index, inputs.class_embeddings, inputs.seen_idx,
        inputs.unseen_idx, config, inputs.seed,
        on_step=lambda step, m: hooks.curve("classifier/loss", step, m["loss"]),
        on_snapshot=lambda step, clf: hooks.epoch(step // every, clf), snapshot_every=every)
    path = inputs.work_dir / "projection.pt"
    save_state(path, dict(result.module.state_dict()),
               {"format": 1, "kind": "projection", "config": to_dict(config)})
    hooks.epoch(epochs, result.classifier)
    return MethodOutput(classifier=result.classifier, artifacts={"classifier": str(path)},
                        info={"classifier_rows": len(queries), "steps": int(config.steps)})


METHODS = [MethodSpec(name="projection", label="Projection", config_class=ProjectionConfig,
                      fit=_fit, features=("train_all",), order=20,
                      description="classifier = projected class embeddings, trained on seen "
                                  "classes (ZegFormer-seg / SPNet style)")]
