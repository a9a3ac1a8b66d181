"""PADing (He et al., CVPR 2023): primitive generation with relationship alignment and feature
disentanglement.

Reads top to bottom like the paper's Section 3; equation numbers refer to the paper.

1. **Primitive cross-modal generator** (Sec. 3.2, Eq. 1, Fig. 3). ``N`` learnable primitives
   ``P`` (fine-grained attributes); the class embedding ``a``, projected to the model width, is the
   query ``Q``; cross-attention assembles primitives into a feature::

       X' = w_1( softmax(Q K^T / sqrt(d_k)) V + A + Z )                       (Eq. 1)

   with ``K``, ``V`` linear maps of the primitives, ``A`` the (projected) semantic embedding
   (the residual) and ``Z ~ N(0, noise_std^2)``. ``layers`` such blocks are stacked, each a
   post-norm transformer layer: attention, cross-attention (+ noise), feed-forward.

   *"A self-attention is first performed on these primitives"*: the paper runs self-attention
   over the primitives, so the attributes are related to each other before the queries read
   them (``primitive_attention="paper"``, the default: in every layer the primitives attend to
   each other and the updated primitives are carried to the next layer). PROTOCOLS' reading of
   the authors' code is a standard transformer decoder whose self-attention runs over the query
   sequence -- one class vector per sample, so it reduces to a linear map of the query -- with
   the primitives as fixed memory (``primitive_attention="code"``).

2. **Generator loss**: kernel MMD between real and synthetic seen features (Eq. 2), summed over
   a set of bandwidths (:func:`zeroseg.methods.common.mmd_loss`). By default it is taken per
   class and averaged (``mmd_grouping="class"``, batches of ``classes_per_step`` classes): an
   MMD over a batch that mixes classes is blind to which class a synthetic feature belongs to,
   and the authors' code ties features to classes with an extra classification loss through the
   classifier it trains at the same time (not offered, see below). ``mmd_grouping="batch"`` is
   Eq. 2 taken literally over the whole batch.

3. **Feature disentanglement** (Sec. 3.3). ``E_R`` maps a feature (real or synthetic) to a
   semantic-related feature ``x^`` classified against the class embeddings at temperature tau
   (Eq. 3); ``E_U`` maps it to a semantic-unrelated feature ``x..`` pushed towards N(0, 1) by a
   KL term (Eq. 4); a decoder reconstructs the feature from ``[x^; x..]`` under L1 (Eq. 5).
   ``E_R`` outputs the class-embedding width ``d`` so that Eq. 3's product ``x^ . a_k`` is
   defined on the raw (L2-normalised) class embeddings.

4. **Relationship alignment** (Eq. 6): the cosine-similarity distributions (softmax at tau) of
   visual features -- ``x^`` with disentanglement, the features themselves without (Fig. 4a) --
   are matched by KL to those of the class embeddings: seen-seen, unseen-unseen and seen-unseen
   (intra- and inter-group alignment).

5. **Total** (Eq. 7): ``L = L_G + lambda * (L_D + L_A)`` with ``L_D = L_R + L_U + L_recon``;
   the weights ``w1`` (alignment and ``L_U``), ``w2`` (``L_R``) and ``w3`` (``L_recon``) are the
   authors' ``WEIGHT_1/2/3`` and are all 1 in the paper.

The switches ``generator_type`` (``gmmn`` / ``primitives``), ``alignment`` and
``disentanglement`` give Table 1 rows 3-6 (:data:`ABLATIONS`). Classifier retraining
(Algorithm 1 step 4) is :func:`zeroseg.methods.common.retrain_classifier`, run after
:func:`train_generator` (the paper's order; the authors' code interleaves one classifier step
after every generator step, which is not offered).

Paper versus code (PROTOCOLS section 4): the defaults follow the paper; the code's choices are
options, collected by :func:`authors_code_config`. Not offered: the code's RelationNet scorer and
its trainable projected class vectors as alignment targets (the paper uses the class embeddings
themselves), the per-group averaging of each term (here one mean over all features), the
generator-step classification loss ``0.001 * CE(new_fc(e_f))`` and mixed precision.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeroseg.methods.common import (
    AdamStepper,
    ClassifierConfig,
    ClassRoles,
    GeneratorRecipe,
    KernelScale,
    KLDirection,
    MMDForm,
    MMDGrouping,
    SigmaSpec,
    SnapshotCallback,
    StepCallback,
    TrainedGenerator,
    check_real_features,
    cosine_similarity_matrix,
    grouped_mmd_loss,
    load_state,
    resolve_sigmas,
    run_generator_loop,
    save_state,
    seeded,
    softmax_kl,
)
from zeroseg.methods.gmmn import GMMNGenerator, GMMNNetConfig, prepare_class_embeddings
from zeroseg.platform.config import from_dict
from zeroseg.platform.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------


@dataclass
class PADingConfig:
    """Every knob of PADing's generator stage, plus the classifier retraining that follows.

    Defaults are the paper's (Sec. 4.1, Table 3) where it gives one, else the authors' config
    defaults (PROTOCOLS section 4). ``steps``: the authors train for 20000 iterations on COCO
    panoptic (4000 instance, 2000 semantic), one classifier step after each; at 400 primitives
    and 3 layers a step costs about 0.2-0.4 s of one CPU core (``benches/bench_generator.py``),
    so runs on the synthetic benchmark set far fewer steps in their configs.
    """

    # -- Table 1 switches ------------------------------------------------------------------------
    generator_type: Literal["primitives", "gmmn"] = "primitives"
    alignment: bool = True  # Eq. 6
    disentanglement: bool = True  # Eq. 3-5

    # -- primitive generator (Eq. 1) ---------------------------------------------------------------
    num_primitives: int = 400  # Table 3
    layers: int = 3
    heads: int = 8
    hidden_dim: int | None = None  # model width d_k; None: the segmenter's embedding width D
    ffn_dim: int | None = None  # None: 4 * hidden_dim (the authors: 1024 for 256)
    dropout: float = 0.1  # TRANS_DROP_RATE (0.3 in the authors' semantic config)
    noise: bool = True  # Z in Eq. 1
    noise_std: float = 1.0
    primitive_attention: Literal["paper", "code"] = "paper"
    output_head: Literal["linear", "layernorm"] = "linear"  # paper: w_1; code: final LayerNorm
    gmmn: GMMNNetConfig = field(default_factory=GMMNNetConfig)  # when generator_type == "gmmn"

    # -- disentanglement nets (E_R, E_U, decoder) --------------------------------------------------
    helper_hidden: int | None = None  # None: D
    unrelated_dim: int | None = None  # width of x.. ; None: D
    helper_dropout: float = 0.2  # DROP_OUT_ED (0.1 in the panoptic and instance configs)
    encoder_layout: Literal["paper", "code"] = "paper"

    # -- losses ----------------------------------------------------------------------------------
    sigmas: SigmaSpec = "paper"
    kernel_scale: KernelScale = "variance"
    mmd_form: MMDForm = "squared"
    mmd_grouping: MMDGrouping = "class"  # see common.MMDGrouping; "batch" is Eq. 2 literally
    classes_per_step: int = 8  # with mmd_grouping="class": classes per step
    structure_weight: float = 0.002  # lambda in Eq. 7 (code: STRUCTURE_WEIGHT 1e-4 / 1e-3)
    tau: float = 0.1
    w1: float = 1.0  # alignment + L_U
    w2: float = 1.0  # L_R
    w3: float = 1.0  # L_recon
    kl_direction: KLDirection = "paper"
    unrelated_kl: Literal["gaussian", "sample"] = "gaussian"
    structure_on_real: bool = True  # paper: real seen features join Eq. 3-6; code: fakes only
    unseen_per_class: int = 1  # synthetic unseen features per unseen class per step

    # -- optimisation ------------------------------------------------------------------------------
    lr: float = 2e-4  # Adam over generator + helper nets (code configs: 5e-4)
    lr_milestones: list[float] = field(default_factory=list)  # fractions of steps, lr x 0.1
    steps: int = 20000
    batch_size: int = 128  # real (matched) embeddings per step
    normalize_class_embeddings: bool = True
    log_every: int = 50
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    seed: int = 0

    def validate(self) -> None:
        self.gmmn.validate()
        self.classifier.validate()
        resolve_sigmas(self.sigmas)
        for name in ("num_primitives", "layers", "heads", "steps", "batch_size", "log_every",
                     "unseen_per_class", "classes_per_step"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("hidden_dim", "ffn_dim", "helper_hidden", "unrelated_dim"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1 (or null), got {value}")
        for name in ("dropout", "helper_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("lr", "tau"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("noise_std", "structure_weight", "w1", "w2", "w3"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if any(not 0 < m < 1 for m in self.lr_milestones):
            raise ConfigError(f"lr_milestones must be fractions in (0, 1), got "
                              f"{self.lr_milestones}")


#: Table 1 rows 3-6: generator type and the two switches. Row 2 (projection) is
#: :mod:`zeroseg.methods.projection`.
ABLATIONS: dict[str, dict[str, Any]] = {
    "GMMN": {"generator_type": "gmmn", "alignment": False, "disentanglement": False},
    "P-only": {"generator_type": "primitives", "alignment": False, "disentanglement": False},
    "P&A": {"generator_type": "primitives", "alignment": True, "disentanglement": False},
    "PADing": {"generator_type": "primitives", "alignment": True, "disentanglement": True},
}


def ablation_config(name: str, base: PADingConfig | None = None) -> PADingConfig:
    """``base`` (default: the paper's config) with the switches of Table 1 row ``name``."""
    if name not in ABLATIONS:
        raise ConfigError(f"ablation: unknown row {name!r}; expected one of {list(ABLATIONS)}")
    return dataclasses.replace(base or PADingConfig(), **ABLATIONS[name])


#: Per-task values of the authors' configs (PROTOCOLS section 4).
_CODE_TASK_VALUES: dict[str, dict[str, Any]] = {
    "panoptic": {"dropout": 0.1, "helper_dropout": 0.1, "structure_weight": 1e-4,
                 "steps": 20000, "lr_milestones": [14000 / 20000, 18500 / 20000],
                 "unseen_weight": 5.0, "num_choose": 5},
    "instance": {"dropout": 0.1, "helper_dropout": 0.1, "structure_weight": 1e-3,
                 "steps": 4000, "lr_milestones": [], "unseen_weight": 2.0, "num_choose": 5},
    "semantic": {"dropout": 0.3, "helper_dropout": 0.2, "structure_weight": 1e-3,
                 "steps": 2000, "lr_milestones": [], "unseen_weight": 5.0, "num_choose": 17},
}


def authors_code_config(task: Literal["panoptic", "instance", "semantic"] = "panoptic"
                        ) -> PADingConfig:
    """The config closest to what the authors' code runs for ``task``.

    Sigma set {2, ..., 80} as variances, square-rooted MMD over the whole batch,
    KL(semantic || visual), the sampled-noise KL for ``E_U``, structure losses on synthetic
    features only, decoder-style attention over the query, final LayerNorm output, encoders
    without an activation between their linears, ``WEIGHT_1/2/3`` = 1/1/0.5 with the code's
    extra 0.2 on the relation CE, Adam 5e-4 and the per-task values of PROTOCOLS section 4 (the
    poly schedule of the semantic config is not reproduced). The remaining differences are
    listed in this module's docstring.
    """
    if task not in _CODE_TASK_VALUES:
        raise ConfigError(f"task: expected one of {list(_CODE_TASK_VALUES)}, got {task!r}")
    v = _CODE_TASK_VALUES[task]
    classifier = ClassifierConfig(steps=v["steps"], unseen_weight=v["unseen_weight"],
                                  num_choose=v["num_choose"])
    return PADingConfig(
        sigmas="code", kernel_scale="variance", mmd_form="sqrt", mmd_grouping="batch",
        kl_direction="code", unrelated_kl="sample", structure_on_real=False,
        primitive_attention="code", output_head="layernorm", encoder_layout="code", w1=1.0,
        w2=0.2, w3=0.5, lr=5e-4, dropout=v["dropout"], helper_dropout=v["helper_dropout"],
        structure_weight=v["structure_weight"], steps=v["steps"],
        lr_milestones=list(v["lr_milestones"]), classifier=classifier)


# ------------------------------------------------------------------------------------------------
# The primitive generator (Sec. 3.2, Eq. 1)
# ------------------------------------------------------------------------------------------------


class PrimitiveLayer(nn.Module):
    """One post-norm block: attention, cross-attention from the query to the primitives with the
    noise ``Z`` added to the residual sum, feed-forward."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float,
                 attention: Literal["paper", "code"]):
        super().__init__()
        self.attention = attention
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(ffn_dim, dim))
        self.norm3 = nn.LayerNorm(dim)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)
        self.drop3 = nn.Dropout(dropout)

    def forward(self, query: Tensor, primitives: Tensor, noise: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        """``query [K, dim]``, ``primitives [N, dim]`` -> updated ``(query, primitives)``."""
        primitives = self.update_primitives(primitives)
        return self.read(query, primitives, noise), primitives

    def update_primitives(self, primitives: Tensor) -> Tensor:
        """The primitives this layer's queries read: with ``paper`` attention, after the
        self-attention among them (a relationship graph over the attributes); unchanged with
        ``code`` attention. Independent of the query."""
        if self.attention != "paper":
            return primitives
        p = primitives.unsqueeze(0)
        attended, _ = self.self_attn(p, p, p, need_weights=False)
        return self.norm1(primitives + self.drop1(attended.squeeze(0)))

    def read(self, query: Tensor, primitives: Tensor, noise: Tensor | None) -> Tensor:
        """The query's update from the (already updated) primitives of this layer."""
        if self.attention != "paper":
            # Decoder-style: self-attention over each sample's own length-1 query sequence.
            q = query.unsqueeze(1)
            attended, _ = self.self_attn(q, q, q, need_weights=False)
            query = self.norm1(query + self.drop1(attended.squeeze(1)))
        # Cross-attention (Eq. 1): every query reads the same primitives, so the K queries form
        # one sequence attending to one memory (the keys and values are computed once).
        memory = primitives.unsqueeze(0)
        read, _ = self.cross_attn(query.unsqueeze(0), memory, memory, need_weights=False)
        h = query + self.drop2(read.squeeze(0))  # softmax(QK^T/sqrt(d_k)) V + A
        if noise is not None:
            h = h + noise  # + Z
        query = self.norm2(h)
        return self.norm3(query + self.drop3(self.ffn(query)))


class PrimitiveGenerator(nn.Module):
    """Class vectors ``[K, d]`` -> synthetic query embeddings ``[K, D]`` (Eq. 1, Fig. 3)."""

    def __init__(self, embed_dim: int, out_dim: int, *, num_primitives: int = 400,
                 layers: int = 3, heads: int = 8, hidden_dim: int | None = None,
                 ffn_dim: int | None = None, dropout: float = 0.1, noise: bool = True,
                 noise_std: float = 1.0, attention: Literal["paper", "code"] = "paper",
                 output_head: Literal["linear", "layernorm"] = "linear"):
        super().__init__()
        hidden = hidden_dim or out_dim
        if hidden % heads:
            raise ConfigError(f"hidden_dim {hidden} must be divisible by heads {heads}")
        if output_head == "layernorm" and hidden != out_dim:
            raise ConfigError(f"output_head 'layernorm' needs hidden_dim == the embedding width "
                              f"{out_dim}, got {hidden}")
        self.embed_dim = embed_dim
        self.out_dim = out_dim
        self.hidden_dim = hidden
        self.noise = noise
        self.noise_std = noise_std
        self.query_proj = nn.Linear(embed_dim, hidden)  # a -> A, the query
        self.primitives = nn.Parameter(torch.randn(num_primitives, hidden))  # P
        self.layers = nn.ModuleList(
            PrimitiveLayer(hidden, heads, ffn_dim or 4 * hidden, dropout, attention)
            for _ in range(layers))
        self.head: nn.Module = (nn.Linear(hidden, out_dim) if output_head == "linear"
                                else nn.LayerNorm(out_dim))  # w_1 (paper) / LayerNorm (code)

    def forward(self, class_vectors: Tensor, rng: torch.Generator | None = None) -> Tensor:
        if class_vectors.dim() != 2 or class_vectors.shape[1] != self.embed_dim:
            raise DataError(f"primitive generator: expected class vectors [K, {self.embed_dim}],"
                            f" got {tuple(class_vectors.shape)}")
        query = self.query_proj(class_vectors)
        memories = self._frozen_memories()
        primitives = self.primitives
        for i, layer in enumerate(self.layers):
            z = None
            if self.noise:
                z = torch.randn(query.shape, generator=rng, dtype=query.dtype) * self.noise_std
            primitives = layer.update_primitives(primitives) if memories is None else memories[i]
            query = layer.read(query, primitives, z)
        return self.head(query)

    def _frozen_memories(self) -> list[Tensor] | None:
        """Each layer's primitives, computed once and reused while the generator is frozen
        (eval mode, no gradient: sampling fakes for the classifier). They do not depend on the
        query, so the cache gives the same numbers; it is keyed by the parameters' identities
        and in-place versions, so an optimiser step or a loaded state invalidates it."""
        if self.training or torch.is_grad_enabled():
            return None
        key = tuple((id(p), p._version) for p in self.parameters())
        cached = self.__dict__.get("_memory_cache")
        if cached is None or cached[0] != key:
            memories, primitives = [], self.primitives
            for layer in self.layers:
                primitives = layer.update_primitives(primitives)
                memories.append(primitives)
            cached = (key, memories)
            self.__dict__["_memory_cache"] = cached
        return cached[1]


# ------------------------------------------------------------------------------------------------
# Disentanglement nets and the loss terms (Sec. 3.3, Eq. 3-6)
# ------------------------------------------------------------------------------------------------


def encoder_mlp(in_dim: int, hidden: int, out_dim: int, dropout: float,
                layout: Literal["paper", "code"]) -> nn.Sequential:
    """E_R / E_U. Paper: "an MLP with one hidden layer, LeakyReLU activation and dropout";
    code: two linears with no activation between them, then LeakyReLU and dropout."""
    if layout == "paper":
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2), nn.Dropout(dropout),
                             nn.Linear(hidden, out_dim))
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.Linear(hidden, out_dim),
                         nn.LeakyReLU(0.2), nn.Dropout(dropout))


def decoder_mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    """The decoder: "two stacked single MLP layers followed by LeakyReLU and dropout"."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2), nn.Dropout(dropout),
                         nn.Linear(hidden, out_dim), nn.LeakyReLU(0.2), nn.Dropout(dropout))


def related_classification_loss(related: Tensor, labels: Tensor, class_embeddings: Tensor,
                                tau: float) -> Tensor:
    """Eq. 3: cross-entropy of ``softmax_k(x^_i . a_k / tau)`` against the class of ``x_i``,
    over all classes of the label space, averaged over features."""
    return F.cross_entropy(related @ class_embeddings.t() / tau, labels)


def unrelated_kl_loss(unrelated: Tensor, mode: Literal["gaussian", "sample"], tau: float,
                      rng: torch.Generator | None = None) -> Tensor:
    """Eq. 4: push the semantic-unrelated features towards N(0, 1).

    ``gaussian`` (default): each feature's entries are taken as samples of a Gaussian with their
    mean ``m_i`` and (biased) variance ``s_i^2``; the closed form ``KL(N(m_i, s_i^2) || N(0, 1))
    = (s_i^2 + m_i^2 - 1 - log s_i^2) / 2`` is averaged over features. ``sample`` (the authors'
    code): ``0.5 * KL(softmax(e / tau) || softmax(x.. / tau))`` row-wise, with ``e`` a fresh
    N(0, 1) sample of the same shape.
    """
    if mode == "gaussian":
        mean = unrelated.mean(dim=1)
        var = unrelated.var(dim=1, unbiased=False).clamp(min=1e-6)
        return (0.5 * (var + mean.pow(2) - 1.0 - var.log())).mean()
    eps = torch.randn(unrelated.shape, generator=rng, dtype=unrelated.dtype)
    return 0.5 * softmax_kl(unrelated, eps, tau, direction="code")


def reconstruction_loss(features: Tensor, reconstructed: Tensor) -> Tensor:
    """Eq. 5: L1 distance between a feature and its reconstruction, averaged per element."""
    return (features - reconstructed).abs().mean()


def alignment_losses(seen: Tensor, seen_labels: Tensor, unseen: Tensor, unseen_labels: Tensor,
                     class_embeddings: Tensor, tau: float,
                     direction: KLDirection = "paper") -> dict[str, Tensor]:
    """Eq. 6 for the three pairs of groups: the row-wise softmax (at ``tau``) of the visual
    cosine similarities against that of the class embeddings' similarities, by KL."""
    a_s = class_embeddings[seen_labels]
    a_u = class_embeddings[unseen_labels]
    return {
        "align_ss": softmax_kl(cosine_similarity_matrix(seen, seen),
                               cosine_similarity_matrix(a_s, a_s), tau, direction),
        "align_uu": softmax_kl(cosine_similarity_matrix(unseen, unseen),
                               cosine_similarity_matrix(a_u, a_u), tau, direction),
        "align_su": softmax_kl(cosine_similarity_matrix(seen, unseen),
                               cosine_similarity_matrix(a_s, a_u), tau, direction),
    }


# ------------------------------------------------------------------------------------------------
# The model and Eq. 7
# ------------------------------------------------------------------------------------------------


class PADingModel(nn.Module):
    """The generator plus the disentanglement nets (absent when disentanglement is off)."""

    def __init__(self, embed_dim: int, out_dim: int, config: PADingConfig):
        super().__init__()
        self.embed_dim = embed_dim
        self.out_dim = out_dim
        self.generator: nn.Module = build_generator(embed_dim, out_dim, config)
        self.related: nn.Module | None = None  # E_R: D -> d
        self.unrelated: nn.Module | None = None  # E_U: D -> unrelated_dim
        self.decoder: nn.Module | None = None  # [x^; x..] -> D
        if config.disentanglement:
            hidden = config.helper_hidden or out_dim
            u_dim = config.unrelated_dim or out_dim
            self.related = encoder_mlp(out_dim, hidden, embed_dim, config.helper_dropout,
                                       config.encoder_layout)
            self.unrelated = encoder_mlp(out_dim, hidden, u_dim, config.helper_dropout,
                                         config.encoder_layout)
            self.decoder = decoder_mlp(embed_dim + u_dim, hidden, out_dim, config.helper_dropout)


def build_generator(embed_dim: int, out_dim: int, config: PADingConfig) -> nn.Module:
    if config.generator_type == "gmmn":
        return GMMNGenerator(embed_dim, out_dim, config.gmmn)
    return PrimitiveGenerator(
        embed_dim, out_dim, num_primitives=config.num_primitives, layers=config.layers,
        heads=config.heads, hidden_dim=config.hidden_dim, ffn_dim=config.ffn_dim,
        dropout=config.dropout, noise=config.noise, noise_std=config.noise_std,
        attention=config.primitive_attention, output_head=config.output_head)


@dataclass
class LossTerms:
    """One step's losses. ``raw``: each term unweighted; ``weighted``: the summands of Eq. 7
    (``total == sum(weighted.values())``); ``features``: the tensors they were computed from."""

    raw: dict[str, Tensor]
    weighted: dict[str, Tensor]
    total: Tensor
    features: dict[str, Tensor]


def pading_losses(model: PADingModel, real: Tensor, labels: Tensor, class_embeddings: Tensor,
                  unseen_idx: Tensor, config: PADingConfig,
                  rng: torch.Generator | None = None) -> LossTerms:
    """Eq. 2-7 for one batch of real seen embeddings ``real [N, D]`` with ``labels [N]``.

    Only the enabled terms are computed and reported: ``gen`` always; ``rel``, ``unrelated`` and
    ``recon`` with disentanglement; ``align`` (the mean of ``align_ss``, ``align_uu``,
    ``align_su``) with alignment. ``real`` and ``class_embeddings`` are data: no gradient
    reaches them.
    """
    real = real.detach()
    a = class_embeddings.detach()
    sigmas = resolve_sigmas(config.sigmas)
    structure = config.alignment or config.disentanglement
    unseen_labels = unseen_idx.repeat(config.unseen_per_class)
    # One generator pass for the seen and unseen fakes: the primitives' self-attention does not
    # depend on the queries, so it is computed once per step.
    wanted = torch.cat([labels, unseen_labels]) if structure else labels
    fakes = model.generator(a[wanted], rng)
    fake_seen, fake_unseen = fakes[:len(labels)], fakes[len(labels):]  # X^s', X^u'
    raw: dict[str, Tensor] = {"gen": grouped_mmd_loss(  # Eq. 2
        fake_seen, real, labels, sigmas, grouping=config.mmd_grouping,
        kernel_scale=config.kernel_scale, form=config.mmd_form)}
    features: dict[str, Tensor] = {"fake_seen": fake_seen}
    if structure:
        seen = torch.cat([fake_seen, real]) if config.structure_on_real else fake_seen
        seen_labels = torch.cat([labels, labels]) if config.structure_on_real else labels
        features.update(fake_unseen=fake_unseen, unseen_labels=unseen_labels, seen=seen,
                        seen_labels=seen_labels)
        align_seen, align_unseen = seen, fake_unseen  # Fig. 4a without disentanglement
        if config.disentanglement:
            assert model.related is not None and model.unrelated is not None
            assert model.decoder is not None
            both = torch.cat([seen, fake_unseen])
            both_labels = torch.cat([seen_labels, unseen_labels])
            related = model.related(both)  # x^ = E_R(x)
            unrelated = model.unrelated(both)  # x.. = E_U(x)
            raw["rel"] = related_classification_loss(related, both_labels, a, config.tau)  # Eq.3
            raw["unrelated"] = unrelated_kl_loss(unrelated, config.unrelated_kl, config.tau,
                                                 rng)  # Eq. 4
            decoded = model.decoder(torch.cat([related, unrelated], dim=1))
            raw["recon"] = reconstruction_loss(both, decoded)  # Eq. 5
            align_seen, align_unseen = related[:len(seen)], related[len(seen):]
            features.update(related=related, unrelated=unrelated, decoded=decoded)
        if config.alignment:
            terms = alignment_losses(align_seen, seen_labels, align_unseen, unseen_labels, a,
                                     config.tau, config.kl_direction)  # Eq. 6
            raw.update(terms)
            raw["align"] = (terms["align_ss"] + terms["align_uu"] + terms["align_su"]) / 3.0
    lam = config.structure_weight
    weighted = {"gen": raw["gen"]}  # Eq. 7: L_G + lambda * (L_D + L_A)
    if "align" in raw:
        weighted["align"] = lam * config.w1 * raw["align"]
    if "rel" in raw:
        weighted["rel"] = lam * config.w2 * raw["rel"]
        weighted["unrelated"] = lam * config.w1 * raw["unrelated"]
        weighted["recon"] = lam * config.w3 * raw["recon"]
    total = torch.stack(list(weighted.values())).sum()
    return LossTerms(raw, weighted, total, features)


# ------------------------------------------------------------------------------------------------
# Training (Algorithm 1 step 3)
# ------------------------------------------------------------------------------------------------


@dataclass
class PADingResult:
    generator: TrainedGenerator  # what classifier retraining samples from
    model: PADingModel  # generator + helper nets (for inspection)
    history: list[dict[str, float]]  # every log_every steps: step, lr, raw terms, total


def train_generator(real_embeddings: Any, real_labels: Any, class_embeddings: Any,
                    seen_idx: Any, unseen_idx: Any, config: PADingConfig | None = None,
                    seed: int | None = None, *, on_step: StepCallback | None = None,
                    on_snapshot: SnapshotCallback | None = None,
                    snapshot_every: int | None = None) -> PADingResult:
    """Train PADing's generator (or an ablation of it) on real seen embeddings.

    ``real_embeddings [N, D]``: Hungarian-matched query embeddings of training images (PADing's
    "real class embeddings"); ``real_labels [N]``: their contiguous class indices, seen classes
    only (an unseen label raises :class:`~zeroseg.platform.errors.LeakageError`).
    ``class_embeddings [C, d]``: the whole label space, any ``d``. Each step draws
    ``batch_size`` real rows, generates one fake per row and ``unseen_per_class`` per unseen
    class, and takes one Adam step on Eq. 7. ``on_step(step, metrics)`` is called every
    ``log_every`` steps. ``seed`` defaults to ``config.seed``.
    """
    config = config or PADingConfig()
    seed = config.seed if seed is None else seed
    start = time.perf_counter()
    with seeded(seed) as rng:
        recipe = generator_recipe(real_embeddings, real_labels, class_embeddings, seen_idx,
                                  unseen_idx, config)
        history = run_generator_loop(recipe, rng, AdamStepper(recipe), on_step=on_step,
                                     on_snapshot=on_snapshot, snapshot_every=snapshot_every)
    log.info("PADing generator (%s, alignment=%s, disentanglement=%s) trained: %d steps in "
             "%.1f s, final total %.4f", config.generator_type, config.alignment,
             config.disentanglement, config.steps, time.perf_counter() - start,
             history[-1]["total"])
    return PADingResult(recipe.trained(), recipe.model, history)


def generator_recipe(real_embeddings: Any, real_labels: Any, class_embeddings: Any,
                     seen_idx: Any, unseen_idx: Any, config: PADingConfig) -> GeneratorRecipe:
    """PADing's model (generator + helper nets, initialised from the current RNG) and the
    Eq. 7 step loss, for :func:`~zeroseg.methods.common.run_generator_loop`."""
    config.validate()
    a = prepare_class_embeddings(class_embeddings, config.normalize_class_embeddings)
    roles = ClassRoles.build(len(a), seen_idx, unseen_idx)
    x, y = check_real_features(real_embeddings, real_labels, roles, allow_no_object=False,
                               names=("real_embeddings", "real_labels"))
    model = PADingModel(a.shape[1], x.shape[1], config)
    milestones = sorted({max(1, round(m * config.steps)) for m in config.lr_milestones})

    def loss(real: Tensor, labels: Tensor, rng: torch.Generator | None
             ) -> tuple[Tensor, dict[str, Tensor]]:
        terms = pading_losses(model, real, labels, a, roles.unseen, config, rng)
        return terms.total, terms.raw

    return GeneratorRecipe(kind=config.generator_type, model=model, net=model.generator,
                           class_embeddings=a, x=x, y=y, loss=loss, config=config,
                           milestones=milestones)



# ------------------------------------------------------------------------------------------------
# Saving and loading a trained generator
# ------------------------------------------------------------------------------------------------


def save_generator(path: str | Path, generator: TrainedGenerator) -> None:
    """Write a trained generator (weights, class embeddings, config) atomically."""
    state = {f"net.{k}": v for k, v in generator.net.state_dict().items()}
    state["class_embeddings"] = generator.class_embeddings
    meta = {"format": 1, "kind": generator.kind, "embed_dim": int(generator.net.embed_dim),
            "out_dim": int(generator.out_dim), "config": generator.config}
    save_state(path, state, meta)


def load_generator(path: str | Path) -> TrainedGenerator:
    """Read a generator written by :func:`save_generator` (``weights_only`` loading)."""
    state, meta = load_state(path)
    if meta.get("format") != 1 or meta.get("kind") not in ("gmmn", "primitives"):
        raise DataError(f"{path}: not a zeroseg generator file (format/kind)")
    cfg = meta["config"]
    if meta["kind"] == "gmmn":
        net_cfg = from_dict(GMMNNetConfig, cfg.get("net", cfg.get("gmmn", {})), where=str(path))
        net: nn.Module = GMMNGenerator(meta["embed_dim"], meta["out_dim"], net_cfg)
    else:
        config = from_dict(PADingConfig, cfg, where=str(path))
        net = build_generator(meta["embed_dim"], meta["out_dim"], config)
    net_state = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    try:
        net.load_state_dict(net_state)
    except RuntimeError as exc:
        raise DataError(f"{path}: weights do not match the recorded config "
                        f"({str(exc).splitlines()[0]})") from None
    net.eval()
    return TrainedGenerator(net=net, class_embeddings=state["class_embeddings"],
                            kind=meta["kind"], config=cfg)


# ------------------------------------------------------------------------------------------------
# Registry entries: PADing and its Table 1 ablations (rows 4-6; row 3 is methods/gmmn.py)
# ------------------------------------------------------------------------------------------------


def _fit(config: PADingConfig, inputs: Any, hooks: Any) -> Any:
    from zeroseg.methods.common import fit_generative

    return fit_generative(train_generator, config, inputs, hooks, save_generator, "pading")


def _spec(name: str, label: str, row: str, order: int, description: str) -> Any:
    from zeroseg.methods.registry import MethodSpec

    switches = {k: v for k, v in ABLATIONS[row].items()}
    return MethodSpec(name=name, label=label, config_class=PADingConfig, fit=_fit,
                      features=("train", "train_all"), fixed=switches, order=order,
                      description=description)


METHODS = [
    _spec("pading-p", "P-only", "P-only", 40,
          "primitive generator with MMD only (PADing Table 1 row 4)"),
    _spec("pading-pa", "P&A", "P&A", 50,
          "primitive generator + relationship alignment (Table 1 row 5)"),
    _spec("pading", "PADing", "PADing", 60,
          "primitive generator + alignment + feature disentanglement (Table 1 row 6)"),
]
