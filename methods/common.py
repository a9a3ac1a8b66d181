"""Pieces shared by the generative zero-shot methods (GMMN, PADing) and the projection baseline.

Everything here works on in-memory tensors; wiring to the feature cache and the segmenter's
inference happens elsewhere. Contents, top to bottom:

- **Kernel MMD** (PADing Eq. 2, ZS3Net's GMMN loss) over a set of bandwidths, with the sigma
  presets of the paper and of the authors' code (:data:`SIGMA_PRESETS`).
- **Cosine similarity** matrices and the **softmax KL** used by PADing's relationship alignment
  (Eq. 6) -- in the paper's direction or the code's.
- **Input checks** shared by every trainer: shapes, class-index ranges and the leakage rule (real
  training embeddings never carry an unseen class: :class:`~zeroseg.platform.errors.LeakageError`).
- **Classifier retraining** (PADing Algorithm 1 step 4, also ZS3Net's last stage): a new linear
  head ``D -> C + 1`` trained on real seen query embeddings (no-object included) plus synthetic
  unseen embeddings drawn from a trained generator, with a larger weight on the unseen classes.
- :class:`TorchClassifier`: the callable the segmenter's inference takes (query embeddings
  ``[Q, D]`` -> logits ``[Q, C + 1]``, the last column being no-object).

Conventions: class indices are the split's contiguous indices ``0..C-1``; ``C`` is no-object.
Class embeddings are ``float32 [C, d]`` in that order (``d`` need not equal the segmenter's
embedding width ``D``). Randomness comes from the ``seed`` argument only: module initialisation
and dropout run under a forked, seeded global RNG (the caller's RNG state is left untouched),
batches and noise come from a local :class:`torch.Generator`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeroseg.platform.config import added_field, to_dict
from zeroseg.platform.errors import ConfigError, DataError, LeakageError
from zeroseg.platform.io import atomic_write_bytes

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# Kernel MMD (PADing Eq. 2; ZS3Net / GMMN)
# ------------------------------------------------------------------------------------------------

#: Bandwidth sets. PADing's paper lists {2, 5, 10, 20, 40, 60}; the PADing and ZS3Net code use
#: {2, 5, 10, 20, 40, 80}. In both codebases the value ``v`` enters the kernel as
#: ``exp(-d^2 / (2 v))``, i.e. it acts as sigma^2 (see ``kernel_scale``).
SIGMA_PRESETS: dict[str, tuple[float, ...]] = {
    "paper": (2.0, 5.0, 10.0, 20.0, 40.0, 60.0),
    "code": (2.0, 5.0, 10.0, 20.0, 40.0, 80.0),
}

#: How a config names its bandwidths: a preset name or an explicit list.
SigmaSpec = Literal["paper", "code"] | list[float]

#: ``variance``: ``k = exp(-d^2 / (2 v))`` for each listed ``v`` (what both codebases compute);
#: ``std``: ``k = exp(-d^2 / (2 s^2))`` for each listed ``s`` (Eq. 2 read literally).
KernelScale = Literal["variance", "std"]

#: ``squared``: sum over bandwidths of the (biased) MMD^2 estimate, Eq. 2 with its sums taken as
#: means; ``sqrt``: the square root of that sum (the GMMN loss of the PADing / ZS3Net code).
MMDForm = Literal["squared", "sqrt"]


def resolve_sigmas(spec: str | Sequence[float]) -> tuple[float, ...]:
    """The bandwidth values of a preset name or an explicit list (each > 0)."""
    if isinstance(spec, str):
        if spec not in SIGMA_PRESETS:
            raise ConfigError(f"sigmas: unknown preset {spec!r}; expected one of "
                              f"{sorted(SIGMA_PRESETS)} or a list of positive numbers")
        return SIGMA_PRESETS[spec]
    values = tuple(float(v) for v in spec)
    if not values:
        raise ConfigError("sigmas: expected at least one bandwidth")
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ConfigError(f"sigmas: bandwidths must be finite and > 0, got {bad[0]!r}")
    return values


def multi_bandwidth_kernel(x: Tensor, y: Tensor, sigmas: Sequence[float],
                           kernel_scale: KernelScale = "variance") -> Tensor:
    """``sum_v exp(-||x_i - y_j||^2 / (2 v))`` as an ``[len(x), len(y)]`` matrix.

    With ``kernel_scale="std"`` each listed value ``s`` is squared first (``v = s^2``).
    """
    sq_dist = torch.cdist(x, y, p=2.0).pow(2)
    total = torch.zeros_like(sq_dist)
    for s in sigmas:
        v = float(s) ** 2 if kernel_scale == "std" else float(s)
        total = total + torch.exp(-sq_dist / (2.0 * v))
    return total


def mmd_loss(fake: Tensor, real: Tensor, sigmas: Sequence[float], *,
             kernel_scale: KernelScale = "variance", form: MMDForm = "squared") -> Tensor:
    """Kernel MMD between synthetic and real features (PADing Eq. 2).

    Per bandwidth, the biased estimate ``mean k(r, r') + mean k(f, f') - 2 mean k(r, f)`` (Eq. 2
    writes sums; the means make the loss independent of the batch size and give every sample the
    right weight when ``len(fake) != len(real)``), summed over the bandwidths. ``form="sqrt"``
    returns the square root of that sum, as the authors' GMMN loss does.
    """
    if fake.dim() != 2 or real.dim() != 2 or fake.shape[1] != real.shape[1]:
        raise DataError(f"mmd_loss: expected fake [M, D] and real [N, D], got "
                        f"{tuple(fake.shape)} and {tuple(real.shape)}")
    if len(fake) == 0 or len(real) == 0:
        raise DataError("mmd_loss: both feature sets must be non-empty")
    k_rr = multi_bandwidth_kernel(real, real, sigmas, kernel_scale).mean()
    k_ff = multi_bandwidth_kernel(fake, fake, sigmas, kernel_scale).mean()
    k_rf = multi_bandwidth_kernel(real, fake, sigmas, kernel_scale).mean()
    mmd2 = k_rr + k_ff - 2.0 * k_rf
    if form == "sqrt":
        # The biased estimate is >= 0 in exact arithmetic; clamp the rounding error so the
        # square root (and its gradient) stays finite.
        return torch.sqrt(torch.clamp(mmd2, min=1e-12))
    return mmd2


#: ``class``: the MMD is taken between the real and synthetic features of each class in the step
#: and averaged over those classes (ZS3Net compares one class at a time); ``batch``: one MMD
#: between the whole real and synthetic batches (Eq. 2 read literally). Over a batch that mixes
#: classes the MMD cannot tell which class a synthetic feature belongs to -- generating class
#: A's features for class B and vice versa scores the same -- so ``batch`` relies on the other
#: terms (or, in the authors' code, an extra classification loss) to tie features to classes.
MMDGrouping = Literal["class", "batch"]


def grouped_mmd_loss(fake: Tensor, real: Tensor, labels: Tensor, sigmas: Sequence[float], *,
                     grouping: MMDGrouping = "class", kernel_scale: KernelScale = "variance",
                     form: MMDForm = "squared") -> Tensor:
    """:func:`mmd_loss` over the whole batch (``batch``) or averaged over the classes present
    (``class``); ``fake`` and ``real`` rows share ``labels`` (one fake per real row)."""
    if grouping == "batch":
        return mmd_loss(fake, real, sigmas, kernel_scale=kernel_scale, form=form)
    if not (len(fake) == len(real) == len(labels)) or len(labels) == 0:
        raise DataError(f"grouped_mmd_loss: expected one label per fake and real row, got "
                        f"{len(fake)}, {len(real)} and {len(labels)}")
    # One kernel matrix per pair of sets over the whole batch; each class's block means are
    # diag(W^T K W) with W the one-hot membership matrix scaled by 1 / class count.
    _, group = torch.unique(labels, return_inverse=True)
    onehot = F.one_hot(group).to(fake.dtype)
    w = onehot / onehot.sum(dim=0, keepdim=True)

    def block_means(k: Tensor) -> Tensor:
        return (w * (k @ w)).sum(dim=0)

    mmd2 = (block_means(multi_bandwidth_kernel(real, real, sigmas, kernel_scale))
            + block_means(multi_bandwidth_kernel(fake, fake, sigmas, kernel_scale))
            - 2.0 * block_means(multi_bandwidth_kernel(real, fake, sigmas, kernel_scale)))
    if form == "sqrt":
        mmd2 = torch.sqrt(torch.clamp(mmd2, min=1e-12))
    return mmd2.mean()


#: The one form in which every generator's MMD is logged (curve :data:`MMD_CURVE`, history key
#: ``mmd``) and diagnosed (:mod:`zeroseg.methods.fidelity`), whatever its training loss: per
#: class, the square root of the biased MMD^2 summed over the authors' bandwidths {2, ..., 80}
#: taken as variances -- the value of the authors' ``GMMNLoss`` on one class -- averaged over
#: classes. (A loss value is not comparable across methods: PADing's default takes the MMD over
#: a class-mixed batch, GMMN's per class, an MMD^2 form would not be square-rooted.)
LOG_SIGMAS: tuple[float, ...] = SIGMA_PRESETS["code"]
MMD_CURVE = "generator/mmd_sqrt_per_class"


def per_class_mmd(fake: Tensor, fake_labels: Tensor, real: Tensor, real_labels: Tensor,
                  classes: Sequence[int]) -> Tensor:
    """``[len(classes)]``: for each class, ``sqrt(sum_v MMD^2_v)`` between its fakes and its real
    rows (:data:`LOG_SIGMAS` as variances). Every class needs at least one row of each."""
    values = []
    for c in classes:
        f, r = fake[fake_labels == c], real[real_labels == c]
        if len(f) == 0 or len(r) == 0:
            raise DataError(f"per_class_mmd: class {c} has {len(f)} synthetic and {len(r)} real "
                            "rows; both must be non-empty")
        values.append(mmd_loss(f, r, LOG_SIGMAS, kernel_scale="variance", form="sqrt"))
    return torch.stack(values)


# ------------------------------------------------------------------------------------------------
# Similarities and the alignment KL (PADing Eq. 6)
# ------------------------------------------------------------------------------------------------

#: ``paper``: KL(P_visual || P_semantic), the order Eq. 6 writes; ``code``: KL(P_semantic ||
#: P_visual), what the authors' ``kl_loss(pred, target)`` computes.
KLDirection = Literal["paper", "code"]


def cosine_similarity_matrix(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """``[len(a), len(b)]`` cosine similarities: rows L2-normalised, then a matrix product."""
    return F.normalize(a, dim=1, eps=eps) @ F.normalize(b, dim=1, eps=eps).t()


def softmax_kl(pred: Tensor, target: Tensor, tau: float,
               direction: KLDirection = "paper") -> Tensor:
    """KL divergence between row-wise softmax distributions at temperature ``tau``.

    ``P = softmax(pred / tau)`` and ``T = softmax(target / tau)`` along the last axis.
    ``direction="paper"`` gives ``KL(P || T)``, ``"code"`` gives ``KL(T || P)``. The sum over all
    entries is divided by the number of entries (the authors' normalisation), so the value is the
    mean per-row KL divided by the number of columns.
    """
    if pred.shape != target.shape:
        raise DataError(f"softmax_kl: pred {tuple(pred.shape)} and target "
                        f"{tuple(target.shape)} differ in shape")
    log_p = F.log_softmax(pred / tau, dim=-1)
    log_t = F.log_softmax(target / tau, dim=-1)
    if direction == "paper":
        terms = log_p.exp() * (log_p - log_t)
    else:
        terms = log_t.exp() * (log_t - log_p)
    return terms.sum() / terms.numel()


# ------------------------------------------------------------------------------------------------
# Input checks
# ------------------------------------------------------------------------------------------------


def as_float_tensor(x: Any, name: str, *, dim: int | None = None) -> Tensor:
    """``x`` (array or tensor) as a detached float32 CPU tensor, checking rank and finiteness."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    t = t.detach().to(dtype=torch.float32, device="cpu")
    if dim is not None and t.dim() != dim:
        raise DataError(f"{name}: expected a {dim}-d array, got shape {tuple(t.shape)}")
    if t.numel() and not torch.isfinite(t).all():
        raise DataError(f"{name}: contains NaN or infinite values")
    return t


def as_index_tensor(x: Any, name: str) -> Tensor:
    """``x`` as a 1-d int64 CPU tensor (integer input only)."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).detach().cpu()
    if t.dim() != 1:
        raise DataError(f"{name}: expected a 1-d array of class indices, got shape "
                        f"{tuple(t.shape)}")
    if t.is_floating_point() or t.dtype == torch.bool:
        raise DataError(f"{name}: expected integer class indices, got dtype {t.dtype}")
    return t.to(torch.int64)


@dataclass(frozen=True)
class ClassRoles:
    """Seen and unseen contiguous class indices of a label space with ``num_classes`` classes."""

    num_classes: int
    seen: Tensor  # int64 [S]
    unseen: Tensor  # int64 [U]

    @staticmethod
    def build(num_classes: int, seen_idx: Any, unseen_idx: Any) -> ClassRoles:
        seen = as_index_tensor(seen_idx, "seen_idx")
        unseen = as_index_tensor(unseen_idx, "unseen_idx")
        for name, idx in (("seen_idx", seen), ("unseen_idx", unseen)):
            if idx.numel() == 0:
                raise DataError(f"{name}: expected at least one class index")
            if int(idx.min()) < 0 or int(idx.max()) >= num_classes:
                raise DataError(f"{name}: class indices must lie in [0, {num_classes}), got "
                                f"{int(idx.min())}..{int(idx.max())}")
            if idx.unique().numel() != idx.numel():
                raise DataError(f"{name}: contains duplicate class indices")
        both = np.intersect1d(seen.numpy(), unseen.numpy())
        if both.size:
            raise DataError(f"seen_idx/unseen_idx: class {int(both[0])} is listed as both seen "
                            "and unseen")
        return ClassRoles(num_classes, seen, unseen)

    def unseen_mask(self) -> Tensor:
        mask = torch.zeros(self.num_classes, dtype=torch.bool)
        mask[self.unseen] = True
        return mask

    def seen_mask(self) -> Tensor:
        mask = torch.zeros(self.num_classes, dtype=torch.bool)
        mask[self.seen] = True
        return mask


def check_real_features(embeddings: Any, labels: Any, roles: ClassRoles, *,
                        allow_no_object: bool, names: tuple[str, str]) -> tuple[Tensor, Tensor]:
    """Validate real training embeddings ``[N, D]`` and their labels ``[N]``.

    Labels must be class indices in ``[0, C)`` (or ``C`` = no-object when ``allow_no_object``),
    and none may be an unseen class: real features come from seen-class images only, so an unseen
    label means the training set leaked (:class:`LeakageError`). Labels of classes that are
    neither seen nor unseen (e.g. removed from a validation view) are refused as well.
    """
    emb_name, lab_name = names
    x = as_float_tensor(embeddings, emb_name, dim=2)
    y = as_index_tensor(labels, lab_name)
    if len(x) != len(y):
        raise DataError(f"{emb_name}/{lab_name}: {len(x)} embeddings but {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{emb_name}: no real training features of a seen class (the training "
                        f"images left by the leakage filter hold no target of a seen class)")
    top = roles.num_classes + (1 if allow_no_object else 0)
    if int(y.min()) < 0 or int(y.max()) >= top:
        what = f"[0, {roles.num_classes}]" if allow_no_object else f"[0, {roles.num_classes})"
        raise DataError(f"{lab_name}: class indices must lie in {what}, got "
                        f"{int(y.min())}..{int(y.max())}")
    is_class = y < roles.num_classes
    leaked = roles.unseen_mask()[y[is_class]]
    if bool(leaked.any()):
        cls = int(y[is_class][leaked][0])
        raise LeakageError(f"{lab_name}: {int(leaked.sum())} real training embeddings are "
                           f"labelled with unseen class {cls}; real features must contain seen "
                           "classes only")
    orphan = ~roles.seen_mask()[y[is_class]]
    if bool(orphan.any()):
        cls = int(y[is_class][orphan][0])
        raise DataError(f"{lab_name}: class {cls} is neither in seen_idx nor in unseen_idx")
    return x, y


def prepare_class_embeddings(class_embeddings: Any, normalize: bool) -> Tensor:
    """float32 ``[C, d]`` class embeddings, L2-normalised per row when ``normalize`` (the paper
    normalises CLIP and word2vec vectors)."""
    a = as_float_tensor(class_embeddings, "class_embeddings", dim=2)
    if len(a) == 0:
        raise DataError("class_embeddings: expected at least one class")
    if normalize:
        norms = a.norm(dim=1, keepdim=True)
        if bool((norms == 0).any()):
            row = int(torch.nonzero(norms.flatten() == 0)[0])
            raise DataError(f"class_embeddings: row {row} is all zeros; cannot normalise")
        a = a / norms
    return a


# ------------------------------------------------------------------------------------------------
# Seeding and batching
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[torch.Generator]:
    """Run a block with the global torch RNG seeded (restored afterwards) and yield a local
    generator seeded the same way, for batches and noise."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rng = torch.Generator().manual_seed(seed)
        yield rng


class EpochSampler:
    """Index batches of size ``batch_size`` over ``n`` rows: a fresh permutation per epoch, so
    every row is visited once per epoch (the last batch of an epoch wraps into the next)."""

    def __init__(self, n: int, batch_size: int, rng: torch.Generator):
        self.n = n
        self.batch_size = min(batch_size, n)
        self.rng = rng
        self._perm = torch.randperm(n, generator=rng)
        self._pos = 0

    def next(self) -> Tensor:
        parts: list[Tensor] = []
        need = self.batch_size
        while need > 0:
            if self._pos >= self.n:
                self._perm = torch.randperm(self.n, generator=self.rng)
                self._pos = 0
            take = self._perm[self._pos:self._pos + need]
            self._pos += len(take)
            need -= len(take)
            parts.append(take)
        return torch.cat(parts)


class ClassBalancedSampler:
    """Batches of ``classes_per_step`` classes (drawn at random among the labels present) with
    ``batch_size // classes_per_step`` rows each, drawn without replacement within a class when
    it has enough rows and with replacement otherwise."""

    def __init__(self, labels: Tensor, batch_size: int, classes_per_step: int,
                 rng: torch.Generator):
        self.rng = rng
        self.classes = torch.unique(labels)
        self.rows = [torch.nonzero(labels == c).flatten() for c in self.classes]
        self.k = min(classes_per_step, len(self.classes))
        self.per_class = max(1, batch_size // self.k)

    def next(self) -> Tensor:
        picked = torch.randperm(len(self.classes), generator=self.rng)[:self.k]
        parts = []
        for i in picked.tolist():
            rows = self.rows[i]
            if len(rows) >= self.per_class:
                take = torch.randperm(len(rows), generator=self.rng)[:self.per_class]
            else:
                take = torch.randint(len(rows), (self.per_class,), generator=self.rng)
            parts.append(rows[take])
        return torch.cat(parts)


def generator_sampler(labels: Tensor, batch_size: int, grouping: MMDGrouping,
                      classes_per_step: int, rng: torch.Generator
                      ) -> EpochSampler | ClassBalancedSampler:
    """The batch sampler a generator trainer uses for its MMD grouping."""
    if grouping == "class":
        return ClassBalancedSampler(labels, batch_size, classes_per_step, rng)
    return EpochSampler(len(labels), batch_size, rng)


# ------------------------------------------------------------------------------------------------
# Trained generators (the interface classifier retraining consumes)
# ------------------------------------------------------------------------------------------------


class FeatureGenerator(Protocol):
    """A conditional feature generator: class vectors ``[K, d]`` -> features ``[K, D]``."""

    out_dim: int

    def __call__(self, class_vectors: Tensor, rng: torch.Generator | None = None) -> Tensor: ...


@dataclass
class TrainedGenerator:
    """A generator network with the (normalised) class embeddings it was trained with."""

    net: nn.Module  # a FeatureGenerator module
    class_embeddings: Tensor  # float32 [C, d], as fed to the network
    kind: str  # "gmmn" | "primitives"
    config: dict[str, Any] = field(default_factory=dict)  # to_dict of the training config
    # The head trained alongside (classifier.schedule "interleaved"), as it was at this point.
    classifier: TorchClassifier | None = None

    @property
    def num_classes(self) -> int:
        return int(self.class_embeddings.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.net.out_dim)

    def sample(self, labels: Tensor, rng: torch.Generator | None = None, *,
               train_mode: bool = False) -> Tensor:
        """Synthetic features ``[K, D]`` for class indices ``labels [K]``, without gradient.

        ``train_mode=True`` keeps dropout active (the authors draw the classifier's fakes from the
        generator while it trains); noise is drawn either way.
        """
        was_training = self.net.training
        self.net.train(train_mode)
        try:
            with torch.no_grad():
                return self.net(self.class_embeddings[labels], rng)
        finally:
            self.net.train(was_training)


# ------------------------------------------------------------------------------------------------
# The generator training loop, shared by GMMN and PADing, in one process or on DeepSpeed engines
# ------------------------------------------------------------------------------------------------

#: ``loss(real [B, D], labels [B], rng) -> (total, {term: value})`` of one step.
StepLoss = Callable[[Tensor, Tensor, "torch.Generator | None"], tuple[Tensor, dict[str, Tensor]]]


@dataclass
class GeneratorRecipe:
    """Everything a generator's training loop needs, built by the method under the seed (so
    the initial weights are the same wherever the loop runs)."""

    kind: str  # "gmmn" | "primitives"
    model: nn.Module  # every trained part (the generator, plus PADing's helper nets)
    net: nn.Module  # the generator itself (what is exported and sampled)
    class_embeddings: Tensor  # [C, d], as fed to the generator
    x: Tensor  # real embeddings [N, D]
    y: Tensor  # their class indices [N]
    loss: StepLoss
    config: Any  # the method config: steps, batch_size, lr, mmd_grouping, classes_per_step, ...
    milestones: list[int] = field(default_factory=list)  # steps where the lr drops 10x
    poly_power: float | None = None  # set: lr x (1 - t / steps)^power instead of milestones
    head: HeadTrainer | None = None  # the interleaved classifier (one step per generator step)

    def trained(self) -> TrainedGenerator:
        return TrainedGenerator(net=self.net, class_embeddings=self.class_embeddings,
                                kind=self.kind, config=to_dict(self.config),
                                classifier=self.head.snapshot() if self.head else None)


#: detectron2's ``WarmupPolyLR`` power (the authors' semantic schedule).
POLY_POWER = 0.9


def poly_factor(step: int, total: int, power: float = POLY_POWER) -> float:
    """The poly schedule's lr factor after ``step`` optimiser steps of ``total``:
    ``(1 - step / total)^power``, 0 from ``total`` on (detectron2's constant ending 0)."""
    return max(0.0, 1.0 - step / total) ** power


def generator_scheduler(optimizer: torch.optim.Optimizer, recipe: GeneratorRecipe) -> Any:
    """The recipe's lr schedule, stepped once per optimiser step: poly, or x 0.1 at the
    milestones (none: constant)."""
    if recipe.poly_power is not None:
        total, power = int(recipe.config.steps), float(recipe.poly_power)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: poly_factor(step, total, power))
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, recipe.milestones, gamma=0.1)


class AdamStepper:
    """One process: Adam on the recipe's parameters and the recipe's lr schedule."""

    def __init__(self, recipe: GeneratorRecipe):
        self.optimizer = torch.optim.Adam(recipe.model.parameters(), lr=recipe.config.lr)
        self.scheduler = generator_scheduler(self.optimizer, recipe)

    def step(self, total: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.scheduler.step()

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


class MMDProbe:
    """The logged MMD (:data:`MMD_CURVE`): a fixed probe of real seen rows -- up to
    ``classes`` classes with up to ``rows`` rows each, drawn once under a fixed seed, the same for
    every run on the same features -- and, at each logging step, one fake per probe row from the
    generator in eval mode with a fixed noise seed; the value is the mean over the probe's classes
    of :func:`per_class_mmd`. It draws nothing from the training's random streams and leaves the
    generator's mode as it found it, so logging does not change training."""

    def __init__(self, y: Tensor, classes: int = 8, rows: int = 32, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        present = torch.unique(y)
        chosen = present[torch.randperm(len(present), generator=g)[:classes]].sort().values
        parts = []
        for c in chosen.tolist():
            members = torch.nonzero(y == c).flatten()
            parts.append(members[torch.randperm(len(members), generator=g)[:rows]])
        self.rows = torch.cat(parts)
        self.classes = chosen.tolist()
        self.seed = seed

    def measure(self, net: nn.Module, class_embeddings: Tensor, x: Tensor, y: Tensor) -> Tensor:
        labels, real = y[self.rows], x[self.rows]
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                fake = net(class_embeddings[labels],
                           torch.Generator().manual_seed(self.seed + 1))
                return per_class_mmd(fake, labels, real, labels, self.classes).mean()
        finally:
            net.train(was_training)


def run_generator_loop(recipe: GeneratorRecipe, rng: torch.Generator, stepper: Any, *,
                       on_step: StepCallback | None = None,
                       on_snapshot: SnapshotCallback | None = None,
                       snapshot_every: int | None = None) -> list[dict[str, float]]:
    """``config.steps`` steps: a batch from the MMD grouping's sampler, the recipe's loss,
    ``stepper.step(total)``, then (interleaved schedule) one step of the recipe's classifier on
    fakes of the generator just updated; history every ``log_every`` steps, with the logged
    MMD (:class:`MMDProbe`) and the classifier's loss (``head``); snapshots as documented at
    :data:`SnapshotCallback`. Returns the history."""
    config = recipe.config
    sampler = generator_sampler(recipe.y, config.batch_size, config.mmd_grouping,
                                config.classes_per_step, rng)
    probe = MMDProbe(recipe.y)
    history: list[dict[str, float]] = []
    recipe.model.train()
    for step in range(1, config.steps + 1):
        rows = sampler.next()
        total, raw = recipe.loss(recipe.x[rows], recipe.y[rows], rng)
        stepper.step(total)
        values: dict[str, float | Tensor] = {"lr": stepper.lr(), **raw, "total": total}
        if recipe.head is not None:
            values["head"] = recipe.head.step_from(recipe.net, recipe.class_embeddings)
        if step % config.log_every == 0 or step == config.steps:
            values["mmd"] = probe.measure(recipe.net, recipe.class_embeddings, recipe.x,
                                          recipe.y)
        record_step(history, on_step, step, config.steps, config.log_every, values)
        if on_snapshot is not None and snapshot_due(step, config.steps, snapshot_every):
            recipe.model.eval()
            with frozen_rng():
                on_snapshot(step, recipe.trained())
            recipe.model.train()
    recipe.model.eval()
    return history


# ------------------------------------------------------------------------------------------------
# Classifier retraining (PADing Algorithm 1 step 4)
# ------------------------------------------------------------------------------------------------


@dataclass
class ClassifierConfig:
    """The new linear head ``D -> C + 1`` (PADing ``new_fc``) and when it trains.

    Defaults are the paper's / authors' values (PROTOCOLS section 4): SGD lr 1e-3, momentum 0.9,
    weight decay 5e-4, unscheduled; unseen CE weight ``CLASS_ECO`` = 5; no-object weight 0.1;
    ``NUM_CHOOSE`` unseen classes per step, one fake each (17 -- every unseen class -- in the
    authors' semantic config, the default here; 5 in their panoptic and instance configs); a
    batch of 12 images x 100 queries.

    ``schedule``: ``interleaved`` (default, the authors' ``train_loop.py``, also ZS3Net's) takes
    one classifier step after every generator step, with fakes of the generator just updated, in
    train mode (``sample_in_train_mode`` is not consulted: a training generator is in train mode);
    ``steps`` is then the generator's. ``sequential`` (Algorithm 1 read literally) trains the
    generator first, then ``steps`` classifier steps from the frozen generator. The head starts
    from the segmenter's class head, seen rows in place, no-object last and the unseen rows zero
    (``init="segmenter"``; the authors' zero-padding moves the old no-object row onto the first
    unseen class instead); a head started from scratch needs a higher learning rate or more steps.
    """

    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    steps: int = 2000  # sequential schedule only; interleaved: one per generator step
    # Real query rows per step. None (the default): every query of ``images_per_step`` images,
    # as the authors' loop feeds the queries of its IMS_PER_BATCH = 12 images (12 x 100 = 1,200
    # rows for their 100-query Mask2Former): with a segmenter of fewer queries a fixed 1,200
    # rows would be several times the authors' images per step, and so several times the seen
    # rows that each step's fakes (one per unseen class) are weighed against.
    batch_size: int | None = None
    num_choose: int = 17  # unseen classes drawn per step (all of them when >= their number)
    fakes_per_class: int = 1  # synthetic embeddings per drawn unseen class
    unseen_weight: float = 5.0  # CLASS_ECO: CE weight of the unseen classes
    no_object_weight: float = 0.1  # CE weight of the no-object column
    sample_in_train_mode: bool = True  # draw fakes with the generator's dropout active
    # Where the head starts: the segmenter's own head, zero-padded for the classes it never saw
    # (the authors' preprocess_pretrained_weight.py), or nn.Linear's random initialisation.
    init: Literal["segmenter", "random"] = "segmenter"
    log_every: int = 50
    schedule: Literal["interleaved", "sequential"] = added_field("interleaved", since="issue 13")
    images_per_step: int = added_field(12, since="issue 13")  # IMS_PER_BATCH (batch_size None)

    def validate(self) -> None:
        for name in ("steps", "batch_size", "num_choose", "fakes_per_class", "log_every",
                     "images_per_step"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "unseen_weight", "no_object_weight"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")


class TorchClassifier:
    """The classifier callable the segmenter's inference takes: query embeddings ``[Q, D]`` ->
    logits ``[Q, C + 1]`` (no-object last). Accepts a numpy array (returns numpy float32) or a
    tensor (returns a float32 tensor on the input's device); runs the module in eval mode
    without gradient."""

    def __init__(self, module: nn.Module, num_classes: int, in_dim: int):
        self.module = module.eval()
        self.num_classes = num_classes
        self.in_dim = in_dim

    def __call__(self, query_embeddings: np.ndarray | Tensor) -> np.ndarray | Tensor:
        is_numpy = not isinstance(query_embeddings, Tensor)
        x = torch.as_tensor(np.asarray(query_embeddings, dtype=np.float32) if is_numpy
                            else query_embeddings)
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise DataError(f"classifier: expected query embeddings [Q, {self.in_dim}], got "
                            f"{tuple(x.shape)}")
        device = next(self.module.parameters()).device
        with torch.no_grad():
            logits = self.module(x.to(device=device, dtype=torch.float32))
        return logits.cpu().numpy() if is_numpy else logits.to(x.device)


@dataclass
class ClassifierResult:
    linear: nn.Linear  # D -> C + 1, no-object last
    classifier: TorchClassifier
    history: list[dict[str, float]]


def class_weights(roles: ClassRoles, unseen_weight: float, no_object_weight: float) -> Tensor:
    """CE weights over ``C + 1`` columns: 1 for seen, ``unseen_weight`` for unseen classes,
    ``no_object_weight`` for no-object (classes in neither role keep 1; they never appear)."""
    w = torch.ones(roles.num_classes + 1)
    w[roles.unseen] = unseen_weight
    w[roles.num_classes] = no_object_weight
    return w


StepCallback = Callable[[int, dict[str, float]], None]

#: ``on_snapshot(step, snapshot)``: called every ``snapshot_every`` steps *before* the last one
#: with the model as it is at that step (a :class:`TrainedGenerator` for generators, a
#: :class:`TorchClassifier` for the projection baseline), so a caller can evaluate intermediate
#: states (per-epoch validation for early stopping). The hook must not change the model; the
#: trainers restore train mode and the random state after it, so training goes on exactly as
#: it would without the hook.
SnapshotCallback = Callable[[int, Any], None]


def record_step(history: list[dict[str, float]], on_step: StepCallback | None, step: int,
                total: int, every: int, values: dict[str, float | Tensor]) -> None:
    """On a logging step (every ``every`` and the last), append ``values`` (with ``step``; scalar
    tensors read out only then) to ``history`` and pass them to ``on_step``."""
    if step % every and step != total:
        return
    metrics = {"step": float(step)}
    metrics.update({k: float(v.detach()) if isinstance(v, Tensor) else float(v)
                    for k, v in values.items()})
    history.append(metrics)
    if on_step is not None:
        on_step(step, metrics)


def snapshot_due(step: int, total: int, every: int | None) -> bool:
    """Whether ``step`` (1-based) is an intermediate snapshot step."""
    return bool(every) and step < total and step % int(every) == 0


@contextlib.contextmanager
def frozen_rng() -> Iterator[None]:
    """Run a block (a snapshot hook) without consuming the global torch random state."""
    with torch.random.fork_rng(devices=[]):
        yield


#: Mask2Former's NUM_OBJECT_QUERIES in the authors' configs.
AUTHORS_QUERIES_PER_IMAGE = 100


def classifier_rows(config: ClassifierConfig, image_id: Any) -> ClassifierConfig:
    """``config`` with ``batch_size`` resolved: as given, or every query of
    ``images_per_step`` images, the queries per image read off the training rows' image ids."""
    if config.batch_size is not None:
        return config
    ids = np.asarray(image_id)
    images = len(np.unique(ids))
    if images == 0:
        raise DataError("classifier: no training queries to take a batch from")
    per_image = max(1, round(len(ids) / images))
    return dataclasses.replace(config, batch_size=config.images_per_step * per_image)


class HeadTrainer:
    """PADing's ``new_fc`` and its SGD (Algorithm 1 step 4; ``forward_train_classifier`` of the
    authors' code). Each :meth:`step` takes ``batch_size`` real query rows (no-object included)
    and, for ``num_choose`` unseen classes drawn at random, ``fakes_per_class`` synthetic rows
    (detached), and takes one SGD step on the weighted cross-entropy over all ``C + 1`` columns
    (:func:`class_weights`). Batches, class draws and the fakes' noise come from ``rng``."""

    def __init__(self, x: Tensor, y: Tensor, roles: ClassRoles, config: ClassifierConfig,
                 rng: torch.Generator, init_weight: Any = None, init_bias: Any = None):
        self.x, self.y, self.roles, self.config, self.rng = x, y, roles, config, rng
        self.linear = nn.Linear(x.shape[1], roles.num_classes + 1)
        _maybe_init_linear(self.linear, init_weight, init_bias)
        self.optimizer = torch.optim.SGD(self.linear.parameters(), lr=config.lr,
                                         momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        rows = config.batch_size  # resolved by classifier_rows on the platform's path
        if rows is None:  # bare rows, images unknown: the authors' 100 queries per image
            rows = config.images_per_step * AUTHORS_QUERIES_PER_IMAGE
        self.sampler = EpochSampler(len(x), rows, rng)
        self.weights = class_weights(roles, config.unseen_weight, config.no_object_weight)
        self.choose = min(config.num_choose, len(roles.unseen))
        self.linear.train()

    def step(self, sample: Callable[[Tensor], Tensor]) -> Tensor:
        """One step; ``sample(labels)`` returns the fakes ``[K, D]`` for class indices
        ``labels``. Returns the (detached) loss."""
        rows = self.sampler.next()
        n_unseen = len(self.roles.unseen)
        picked = self.roles.unseen[torch.randperm(n_unseen, generator=self.rng)[:self.choose]]
        fake_labels = picked.repeat_interleave(self.config.fakes_per_class)
        fakes = sample(fake_labels).detach()
        inputs = torch.cat([self.x[rows], fakes])
        labels = torch.cat([self.y[rows], fake_labels])
        loss = F.cross_entropy(self.linear(inputs), labels, weight=self.weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def step_from(self, net: nn.Module, class_embeddings: Tensor) -> Tensor:
        """One interleaved step: fakes of the training generator ``net`` as it is now (train
        mode: dropout on, as the authors' loop draws them), without gradient."""
        def sample(labels: Tensor) -> Tensor:
            with torch.no_grad():
                return net(class_embeddings[labels], self.rng)

        return self.step(sample)

    def snapshot(self) -> TorchClassifier:
        """The head as it is now (a copy: training goes on)."""
        return TorchClassifier(copy.deepcopy(self.linear), self.roles.num_classes,
                               self.linear.in_features)


def head_trainer(query_embeddings: Any, targets: Any, roles: ClassRoles,
                 config: ClassifierConfig, rng: torch.Generator, *, out_dim: int,
                 init_weight: Any = None, init_bias: Any = None) -> HeadTrainer:
    """A :class:`HeadTrainer` on checked query embeddings ``[M, D]`` and targets ``[M]`` (class
    index or ``C`` = no-object; an unseen class is leakage)."""
    config.validate()
    x, y = check_real_features(query_embeddings, targets, roles, allow_no_object=True,
                               names=("query_embeddings", "targets"))
    if x.shape[1] != out_dim:
        raise DataError(f"query_embeddings: width {x.shape[1]} differs from the generator's "
                        f"output width {out_dim}")
    return HeadTrainer(x, y, roles, config, rng, init_weight, init_bias)


def interleaved_head(x: Tensor, y: Tensor, roles: ClassRoles, config: Any, out_dim: int,
                     classifier_data: Any, init_weight: Any, init_bias: Any
                     ) -> HeadTrainer | None:
    """The classifier trained alongside the generator (``classifier.schedule: interleaved``),
    on ``classifier_data`` or else the real rows; its random stream is seeded from the global
    RNG (the caller runs under :func:`~zeroseg.methods.common.seeded`)."""
    if config.classifier.schedule != "interleaved":
        return None
    queries, targets = classifier_data if classifier_data is not None else (x, y)
    head_seed = int(torch.randint(0, 2**62, (1,)))
    return head_trainer(queries, targets, roles, config.classifier,
                        torch.Generator().manual_seed(head_seed), out_dim=out_dim,
                        init_weight=init_weight, init_bias=init_bias)


def retrain_classifier(query_embeddings: Any, targets: Any, generator: TrainedGenerator,
                       unseen_idx: Any, config: ClassifierConfig | None = None, seed: int = 0, *,
                       seen_idx: Any = None, init_weight: Any = None, init_bias: Any = None,
                       on_step: StepCallback | None = None) -> ClassifierResult:
    """Train a new linear head on real seen query embeddings plus synthetic unseen ones from a
    frozen generator (``classifier.schedule: sequential``; see :class:`HeadTrainer`).

    ``query_embeddings [M, D]`` are the segmenter's query embeddings of training images (all
    queries, PADing's ``train_all`` cache) with ``targets [M]``: the matched class index, or
    ``C`` for no-object. Fakes are drawn with the generator's dropout active when
    ``sample_in_train_mode``; the head is minimised by SGD with momentum.

    ``seen_idx`` defaults to every class not in ``unseen_idx``. ``init_weight [C + 1, D]`` /
    ``init_bias [C + 1]`` start the head from given values (the segmenter's class head, zero rows
    for the classes it never saw); otherwise ``nn.Linear``'s default initialisation under
    ``seed``.
    """
    config = config or ClassifierConfig()
    config.validate()
    num_classes = generator.num_classes
    unseen = as_index_tensor(unseen_idx, "unseen_idx")
    if seen_idx is None:
        keep = torch.ones(num_classes, dtype=torch.bool)
        keep[unseen.clamp(0, num_classes - 1)] = False
        seen_idx = torch.nonzero(keep).flatten()
    roles = ClassRoles.build(num_classes, seen_idx, unseen)
    history: list[dict[str, float]] = []
    with seeded(seed) as rng:
        head = head_trainer(query_embeddings, targets, roles, config, rng,
                            out_dim=generator.out_dim, init_weight=init_weight,
                            init_bias=init_bias)
        for step in range(1, config.steps + 1):
            loss = head.step(lambda labels: generator.sample(
                labels, rng, train_mode=config.sample_in_train_mode))
            record_step(history, on_step, step, config.steps, config.log_every, {"loss": loss})
    linear = head.linear.eval()
    log.info("classifier retrained: %d steps, final loss %.4f", config.steps,
             history[-1]["loss"] if history else float("nan"))
    return ClassifierResult(linear, TorchClassifier(linear, num_classes, linear.in_features),
                            history)


def _maybe_init_linear(linear: nn.Linear, weight: Any, bias: Any) -> None:
    if weight is None and bias is None:
        return
    with torch.no_grad():
        if weight is not None:
            w = as_float_tensor(weight, "init_weight", dim=2)
            if tuple(w.shape) != tuple(linear.weight.shape):
                raise DataError(f"init_weight: expected shape {tuple(linear.weight.shape)}, got "
                                f"{tuple(w.shape)}")
            linear.weight.copy_(w)
        if bias is not None:
            b = as_float_tensor(bias, "init_bias", dim=1)
            if tuple(b.shape) != tuple(linear.bias.shape):
                raise DataError(f"init_bias: expected shape {tuple(linear.bias.shape)}, got "
                                f"{tuple(b.shape)}")
            linear.bias.copy_(b)


# ------------------------------------------------------------------------------------------------
# Saving and loading weights (never unpickled: weights_only=True)
# ------------------------------------------------------------------------------------------------


def save_state(path: str | Path, state: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write tensors plus JSON-like metadata to ``path`` atomically (``torch.save``)."""
    buffer = io.BytesIO()
    torch.save({"state": {k: v.detach().cpu() for k, v in state.items()}, "meta": meta}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read what :func:`save_state` wrote (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: weights file not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file: one line, no traceback for the user
        raise DataError(f"{path}: not a zeroseg weights file ({type(exc).__name__})") from None
    if not isinstance(blob, dict) or "state" not in blob or "meta" not in blob:
        raise DataError(f"{path}: not a zeroseg weights file (expected keys 'state' and 'meta')")
    return blob["state"], blob["meta"]


def save_classifier(path: str | Path, linear: nn.Linear) -> None:
    """Write a retrained head (``D -> C + 1``) atomically."""
    meta = {"format": 1, "kind": "linear", "in_dim": int(linear.in_features),
            "num_classes": int(linear.out_features) - 1}
    save_state(path, dict(linear.state_dict()), meta)


def save_generator(path: str | Path, generator: TrainedGenerator) -> None:
    """Write a trained generator (weights, class embeddings, config) atomically."""
    state = {f"net.{k}": v for k, v in generator.net.state_dict().items()}
    state["class_embeddings"] = generator.class_embeddings
    meta = {"format": 1, "kind": generator.kind, "embed_dim": int(generator.net.embed_dim),
            "out_dim": int(generator.out_dim), "config": generator.config}
    save_state(path, state, meta)


def load_classifier(path: str | Path) -> TorchClassifier:
    """The classifier callable of a head written by :func:`save_classifier`."""
    state, meta = load_state(path)
    if meta.get("format") != 1 or meta.get("kind") != "linear":
        raise DataError(f"{path}: not a zeroseg classifier file (format/kind)")
    linear = nn.Linear(int(meta["in_dim"]), int(meta["num_classes"]) + 1)
    try:
        linear.load_state_dict(state)
    except RuntimeError as exc:
        raise DataError(f"{path}: weights do not match the recorded shape "
                        f"({str(exc).splitlines()[0]})") from None
    return TorchClassifier(linear, int(meta["num_classes"]), int(meta["in_dim"]))
