"""Cap2Seg (Zhou et al., ACM MM 2020): image captions as weak supervision for the unseen classes.

An inference engine reads each training image's captions and predicts, per class, whether it
occurs (contextual entailment: BERT over ``[CLS] caption [SEP] class name [SEP]``, head H_o)
and roughly where (a distribution over ``K`` horizontal stripes: head H_s, plus a local
pixel-level branch and their fusion; :mod:`.engine`, trained and read off by the cached
``priors`` stage, :mod:`.priors`). The segmenter is then trained with cross-entropy on the seen
classes plus ``lambda`` times a ranking loss L_RS that orders training images by their
stripe-weighted unseen-class scores over unlabelled pixels wherever their caption occurrences
differ by more than a threshold (:mod:`.ranking`, whose docstring says exactly how the mask
predictions turn the pixel-level stripe weights into per-query weights of the cached features).

In zeroseg the segmenter is the shared one and its query embeddings are cached, so "the
segmenter" trained here is SPNet's part of it: the projection classifier
(:mod:`zeroseg.methods.projection`: fixed normalised class embeddings, a learned projection of
the visual side, CE over the seen classes). The projection baseline is the SPNet row; the rows
registered here add the ranking loss:

- ``cap2seg-ce``: L_R (eq. 16), occurrence from contextual entailment, no spatial prior;
- ``cap2seg-global``: L_RS with the global (H_s) stripes;
- ``cap2seg``: L_RS with the fused stripes ``(global + local) / 2`` (the full method).

**Every switch, one table** (paper = ACM MM 2020 text; code = github.com/tgy97/cap2seg at
c4b9733: ``train.py``, ``run_classifier_append_multi_soft_withpixel.py``, the run scripts):

======================== ================ ================= ================== ====================
switch                   paper            authors' code     zeroseg default    why
======================== ================ ================= ================== ====================
stripes (K)              5                3 (num_soft)      3                  code (what ran)
engine.lr (Adam)         3e-5             5e-5              5e-4               Z: BERT from scratch
engine.checkpoint        BERT-base        BERT-base         none (config)      no weights offline
engine hidden/layers     768 / 12         768 / 12          64 / 2             Z: from scratch
engine.images_per_step   batch 128 pairs  128 pairs         16 (x ~8 pairs)    ~128 pairs per step
engine.epochs            5                5 (run scripts)   5                  both
engine.max_length        24               24                24                 both
negatives                as many absent   random.choice     as many absent     code (replacement)
L_s                      -q_hat log q     CE vs GT hist     -q log q_hat       code (eq. 5 typo)
engine.n_sub             20               1 (consistency)   20                 paper
engine.local_readout     softmax of sums  mean of the row   softmax            paper: a distribution
engine.consistency_w.    1 (eq. 6+9+11)   1 (consist_scale) 1.0                both
rank_weight (lambda)     0.01             0.005             0.005              code
margin                   -- (eq. 16 lin.) 1 (MarginRanking) 1.0                code
pair_threshold           --               0.2               0.2                code
rank_images (B)          --               5 (BATCH_SIZE)    5                  code
normalisation            per stripe (17)  rescale over Y    code               code
pair_reduction           --               mean, all pairs   all                code
rank_score               f.w_u (pixel)    f.w_u (pixel)     logit              code (linear score)
occurrence               entailment       entailment        entailment         both
spatial_prior            fused            fused (loc)       fused (cap2seg)    both
calibration_gamma        0.4 (SPNet)      none (eval.py)    0.0                code
======================== ================ ================= ================== ====================

``Z``: zeroseg's choice where neither source applies (the synthetic benchmark's engine is
trained from scratch; ``configs/coco_stuff_cap2seg_15.yaml`` sets the paper's 3e-5 with a local
BERT checkpoint). The rank score is carried to the queries through their masks
(:mod:`.ranking`). ``rank_score``: ``logit`` ranks ``sum_q z_q(u) w_q(u)`` with ``z_q`` the
classifier's logit (cosine / temperature), linear like the code's ``f . w_u``;
``probability`` ranks ``sum_q P_q(u) w_q(u)`` (the semantic inference's pixel score), where the
code's margin of 1 exceeds any difference of scores in [0, 1], so every pair stays inside the
hinge. ``calibration_gamma`` > 0 subtracts gamma from the seen classes' softmax probabilities
of each query (SPNet's calibration, applied to queries: the classifier returns
``log max(p - gamma [seen], 1e-8)``).

Needs ``features.stripe_bands`` (a multiple of ``K``; 15 fits K = 3 and 5) in the experiment
config, so that the ``train_all`` cache carries each query's mask mass over unlabelled pixels per
band, and a dataset with captions and semantic label PNGs (the synthetic benchmark's caption
variant: ``zeroseg data synth --variant cap2seg``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from zeroseg.methods.cap2seg.engine import fuse
from zeroseg.methods.cap2seg.priors import build_priors, load_priors
from zeroseg.methods.cap2seg.ranking import image_scores, query_weights, ranking_loss
from zeroseg.methods.common import TorchClassifier, save_state
from zeroseg.methods.projection import ProjectionConfig, train_projection
from zeroseg.methods.registry import (
    MethodHooks,
    MethodInputs,
    MethodOutput,
    MethodSpec,
    StageSpec,
)
from zeroseg.platform.config import added_field, to_dict
from zeroseg.platform.errors import ConfigError, DataError
from zeroseg.platform.io import read_json

SpatialPrior = Literal["none", "global", "local", "fused"]


@dataclass
class EngineConfig:
    """The inference engine (the ``priors`` stage's parameters)."""

    checkpoint: str | None = None  # a local pretrained BERT directory (COCO); None: from config
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 256
    max_length: int = 24
    lr: float = 5e-4
    epochs: int = 5
    images_per_step: int = 16
    n_sub: int = 20  # source pixels of the local branch
    n_targets: int = 64  # target pixels per image and step (local branch training)
    local_hidden: int = 128
    local_layers: int = 2
    consistency_weight: float = 1.0
    # eq. 10 / the code's row mean (an added field: the engine's stage key is unchanged at
    # its default)
    local_readout: Literal["softmax", "mean"] = added_field("softmax", since="issue 18")
    inference_batch: int = 2048  # (caption, class) pairs per forward pass at read-off
    max_images: int | None = None  # train the engine on the first N images only (tests)
    log_every: int = 50
    seed: int = 0

    def validate(self) -> None:
        for name in ("hidden_size", "layers", "heads", "intermediate_size", "epochs",
                     "images_per_step", "n_sub", "n_targets", "local_hidden", "local_layers",
                     "inference_batch", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"engine.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length < 8:
            raise ConfigError(f"engine.max_length must be >= 8, got {self.max_length}")
        if self.hidden_size % self.heads:
            raise ConfigError("engine.hidden_size must be a multiple of engine.heads")
        if not self.lr > 0 or self.consistency_weight < 0:
            raise ConfigError("engine.lr must be > 0 and engine.consistency_weight >= 0")


@dataclass
class Cap2SegConfig(ProjectionConfig):
    """The projection classifier's knobs plus Cap2Seg's (module docstring's table)."""

    stripes: int = 3
    occurrence: Literal["entailment", "exact"] = "entailment"
    spatial_prior: SpatialPrior = "fused"
    rank_weight: float = 0.005
    margin: float = 1.0
    pair_threshold: float = 0.2
    rank_images: int = 5
    normalisation: Literal["code", "paper"] = "code"
    pair_reduction: Literal["all", "valid"] = "all"
    rank_score: Literal["logit", "probability"] = "logit"
    calibration_gamma: float = 0.0
    engine: EngineConfig = field(default_factory=EngineConfig)

    def validate(self) -> None:
        super().validate()
        self.engine.validate()
        if self.stripes < 1:
            raise ConfigError(f"stripes must be >= 1, got {self.stripes}")
        if self.rank_weight < 0 or self.margin < 0 or self.pair_threshold < 0:
            raise ConfigError("rank_weight, margin and pair_threshold must be >= 0")
        if self.rank_images < 3:
            raise ConfigError(f"rank_images must be >= 3 (pairs need shifts), got "
                              f"{self.rank_images}")
        if not 0 <= self.calibration_gamma < 1:
            raise ConfigError(f"calibration_gamma must be in [0, 1), got "
                              f"{self.calibration_gamma}")


def stage_params(config: Cap2SegConfig) -> dict[str, Any]:
    """What the ``priors`` stage depends on: the stripes and the engine, nothing of the
    ranking loss (every variant and every ranking knob share one engine)."""
    return {"stripes": config.stripes, "engine": to_dict(config.engine)}


def select_stripes(priors: dict[str, np.ndarray], prior: str, stripes: int) -> np.ndarray:
    """``[N, C, K]`` stripe priors: uniform (``none``), global, local or fused."""
    if prior == "none":
        n, c = priors["occurrence"].shape
        return np.full((n, c, stripes), 1.0 / stripes, np.float32)
    if prior == "fused":
        return fuse(priors["global"], priors["local"])
    return priors[prior]


class CalibratedHead(nn.Module):
    """SPNet's calibration on query scores: ``log max(softmax(z) - gamma [seen], 1e-8)``."""

    def __init__(self, module: nn.Module, seen: Tensor, gamma: float):
        super().__init__()
        self.module = module
        self.register_buffer("offset", seen.to(torch.float32) * gamma)

    def forward(self, x: Tensor) -> Tensor:
        p = torch.softmax(self.module(x), dim=1) - self.offset
        return p.clamp_min(1e-8).log()


@dataclass
class RankingData:
    """Everything the ranking loss needs, aligned with the training feature rows."""

    x: Tensor  # [M, D] query embeddings
    weights: Tensor  # [M, U] per-query weights w_q(u)
    image_of_row: np.ndarray  # [M] image number 0..I-1
    rows_of_image: list[np.ndarray]
    occurrence: Tensor  # [I, U]


def ranking_data(features: Any, priors: dict[str, np.ndarray], unseen: np.ndarray,
                 config: Cap2SegConfig) -> RankingData:
    if features.bands is None or features.band_unlabelled is None:
        raise ConfigError("cap2seg: the train_all features carry no stripe bands; set "
                          "features.stripe_bands (a multiple of stripes, e.g. 15) in the "
                          "experiment config")
    if features.bands.shape[1] % config.stripes:
        raise ConfigError(f"cap2seg: features.stripe_bands = {features.bands.shape[1]} is not a "
                          f"multiple of stripes = {config.stripes}")
    row_of_prior = {int(i): n for n, i in enumerate(priors["image_id"].tolist())}
    order = np.argsort(features.image_id, kind="stable")
    ids, starts = np.unique(features.image_id[order], return_index=True)
    missing = [int(i) for i in ids if int(i) not in row_of_prior]
    if missing:
        raise DataError(f"cap2seg: training image {missing[0]} has features but no caption "
                        f"priors ({len(missing)} such images)")
    prior_rows = np.asarray([row_of_prior[int(i)] for i in ids])
    key = "occurrence" if config.occurrence == "entailment" else "exact"
    occurrence = priors[key][prior_rows][:, unseen]
    stripes = select_stripes(priors, config.spatial_prior, config.stripes)[prior_rows][:, unseen]
    weights = np.zeros((len(features), len(unseen)), np.float32)
    image_of_row = np.zeros(len(features), np.int64)
    rows_of_image = []
    ends = np.append(starts[1:], len(order))
    for n, (a, b) in enumerate(zip(starts, ends, strict=True)):
        rows = order[a:b]
        rows_of_image.append(rows)
        image_of_row[rows] = n
        weights[rows] = query_weights(features.bands[rows], features.band_unlabelled[rows[0]],
                                      stripes[n], config.normalisation)
    return RankingData(torch.as_tensor(np.asarray(features.embeddings, np.float32)),
                       torch.as_tensor(weights), image_of_row, rows_of_image,
                       torch.as_tensor(occurrence, dtype=torch.float32))


def ranking_step(data: RankingData, unseen: Tensor, config: Cap2SegConfig,
                 generator: torch.Generator):
    """The ``extra_loss`` of :func:`train_projection`: ``lambda * L_RS`` on ``rank_images``
    random training images."""
    def step(module: nn.Module, _step: int) -> tuple[Tensor, dict[str, Any]]:
        pick = torch.randperm(len(data.rows_of_image), generator=generator)[:config.rank_images]
        rows = np.concatenate([data.rows_of_image[int(i)] for i in pick])
        local = torch.as_tensor(np.concatenate([np.full(len(data.rows_of_image[int(i)]), n)
                                                for n, i in enumerate(pick)]))
        logits = module(data.x[rows])
        per_query = (logits if config.rank_score == "logit" else
                     torch.softmax(logits, dim=1))[:, unseen]
        scores = image_scores(per_query, data.weights[rows], local, len(pick))
        loss = ranking_loss(scores, data.occurrence[pick], threshold=config.pair_threshold,
                            margin=config.margin, reduction=config.pair_reduction)
        return config.rank_weight * loss, {"rank": loss}
    return step


def _fit(config: Cap2SegConfig, inputs: MethodInputs, hooks: MethodHooks) -> MethodOutput:
    queries = inputs.features("train_all")
    folder = inputs.stages["priors"]
    unseen = inputs.unseen_idx
    extra = None
    if config.rank_weight > 0 and len(unseen):
        data = ranking_data(queries, load_priors(folder), unseen, config)
        extra = ranking_step(data, torch.as_tensor(unseen), config,
                             torch.Generator().manual_seed(int(inputs.seed) + 7919))
    epochs = max(1, int(hooks.epochs))
    every = max(1, math.ceil(config.steps / epochs)) if epochs > 1 else None
    seen = torch.zeros(inputs.num_classes + 1, dtype=torch.bool)
    seen[torch.as_tensor(inputs.seen_idx)] = True

    def wrap(classifier: TorchClassifier) -> TorchClassifier:
        if config.calibration_gamma <= 0:
            return classifier
        return TorchClassifier(CalibratedHead(classifier.module, seen, config.calibration_gamma),
                               classifier.num_classes, classifier.in_dim)

    def on_step(step: int, metrics: dict[str, float]) -> None:
        for name in ("loss", "ce", "rank"):
            if name in metrics:
                hooks.curve(f"classifier/{name}", step, metrics[name])

    result = train_projection(
        queries.embeddings, queries.class_index, inputs.class_embeddings, inputs.seen_idx,
        unseen, config, inputs.seed, on_step=on_step,
        on_snapshot=lambda step, clf: hooks.epoch(step // every, wrap(clf)),
        snapshot_every=every, extra_loss=extra)
    classifier = wrap(result.classifier)
    path = inputs.work_dir / "cap2seg.pt"
    save_state(path, dict(result.module.state_dict()),
               {"format": 1, "kind": "cap2seg", "config": to_dict(config)})
    hooks.epoch(epochs, classifier)
    diagnostics = read_json(folder / "diagnostics.json", "cap2seg diagnostics", expect=dict)
    diagnostics.pop("engine_history", None)
    audit = read_json(folder / "audit.json", "cap2seg audit", expect=dict)
    return MethodOutput(
        classifier=classifier, artifacts={"classifier": str(path), "priors": str(folder)},
        info={"classifier_rows": len(queries), "steps": int(config.steps),
              "caption_priors": diagnostics, "caption_audit": audit})


def _spec(name: str, label: str, order: int, fixed: dict[str, Any], description: str
          ) -> MethodSpec:
    return MethodSpec(name=name, label=label, config_class=Cap2SegConfig, fit=_fit,
                      features=("train_all",), order=order, fixed=fixed,
                      stages=(StageSpec("priors", build=build_priors, params=stage_params),),
                      description=description)


METHODS = [
    _spec("cap2seg-ce", "Cap2Seg CE", 65, {"spatial_prior": "none"},
          "projection + ranking loss L_R from caption occurrence (contextual entailment)"),
    _spec("cap2seg-global", "Cap2Seg CE+spatial", 66, {"spatial_prior": "global"},
          "projection + L_RS weighted by the global (BERT) stripe priors"),
    _spec("cap2seg", "Cap2Seg", 67, {},
          "projection + L_RS weighted by the fused (global + local) stripe priors"),
]
