"""PADing (He et al., CVPR 2023): primitive generation with relationship alignment and feature
disentanglement.

Reads top to bottom like the paper's Section 3; equation numbers refer to the paper, ``code``
to the authors' repository (heshuting555/PADing, ``PADing_model.py``, ``transformer.py``,
``train_loop.py``, ``configs/semantic-segmentation/PADing.yaml``).

1. **Primitive cross-modal generator** (Sec. 3.2, Eq. 1, Fig. 3). ``N`` learnable primitives
   ``P``; the class embedding ``a``, projected to the model width (``query_proj``, the code's
   ``fc_projection``), is the query; cross-attention assembles primitives into a feature::

       X' = w_1( softmax(Q K^T / sqrt(d_k)) V + A + Z )                       (Eq. 1)

   The default layer is the authors' post-norm decoder layer (:data:`LAYER_ORDER`), the one that
   produced the paper's numbers: self-attention over the query (one class vector per sample, so
   a linear map of it), LayerNorm, cross-attention to the primitives, the noise ``Z ~ N(0, 1)``,
   LayerNorm, FFN, LayerNorm; a final LayerNorm on the last layer's output instead of ``w_1``.
   The paper's text has the primitives self-attend instead (``primitive_attention: paper``);
   there the query reaches the first cross-attention unnormalised -- per-dimension std about 0.1
   at initialisation against noise of std 1, which drowns the class signal -- so that layout
   LayerNorms the query first (``query_norm``, on by default; off is the pre-issue-13 layout).

2. **Generator loss**: the authors' ``GMMNLoss`` -- ``sqrt`` of the biased MMD^2 summed over
   the bandwidths {2, ..., 80} taken as variances, over the whole batch (Eq. 2 writes MMD^2 over
   {2, ..., 60}; both are switches) -- plus the **class tie** the code adds to it:
   ``0.001 * CE`` of the fake seen features through the classifier trained alongside, seen
   logits only (its gradient reaches the generator, not the classifier). A class-mixed MMD
   cannot tell which class a fake belongs to; the tie does.

3. **Feature disentanglement** (Sec. 3.3). ``E_R`` maps a feature to a semantic-related
   feature ``x^`` scored against the class vectors (Eq. 3: the code's RelationNet -- concat,
   Linear, ReLU, Linear, sigmoid, the sigmoid scores used as CE logits -- seen fakes against
   all classes, unseen fakes against the unseen classes); ``E_U`` maps it to ``x..`` pushed
   towards noise (Eq. 4: the code's softmax KL against a fresh N(0, 1) sample at ``tau``); a
   decoder reconstructs the feature from ``[x^; x..]`` under L1 (Eq. 5). Each term is the mean
   of its seen-group and unseen-group values, as in the code.

4. **Relationship alignment** (Eq. 6): row-wise softmax (at ``tau``) of the cosine
   similarities of ``x^`` (the features themselves without disentanglement) matched by KL to
   those of the class vectors: seen-seen, unseen-unseen, seen-unseen, averaged. The class
   vectors of Eq. 3 and 6 are the generator's own projected, trainable query vectors (code).

5. **Total** (Eq. 7): ``L = L_G + tie + lambda * (w1 * (L_A + L_U) + w2 * L_R + w3 * L_recon)``.

6. **Schedule** (Algorithm 1; code ``train_loop.py``): Adam 5e-4 with poly decay (power 0.9)
   over 2,000 steps (the authors' semantic config), and after every generator step one SGD step
   of the classifier on real queries plus one fake per unseen class from the generator just
   updated, in train mode (:class:`~zeroseg.methods.common.HeadTrainer`).

The switches ``generator_type`` (``gmmn`` / ``primitives``), ``alignment`` and
``disentanglement`` give Table 1 rows 3-6 (:data:`ABLATIONS`).

**Every departure, one table.** ``C``: the authors' code is what produced the paper's numbers,
so the default follows it. ``N``: the paper layout's correction (see 1). ``W``: the segmenter
here is not the authors' (width ``D``, 64 for ``tiny``, instead of 256). ``Z``: no counterpart
on a feature cache / on CPU. :func:`authors_code_config` sets every code value per task.

======================== ================= ========================= ================= ===
switch                   paper             authors' code (semantic)  zeroseg default   why
======================== ================= ========================= ================= ===
primitive_attention      paper             code                      code              C
query_norm (paper)       (raw query)       (LN1 on the query)        true              N
output_head              linear (w_1)      layernorm                 layernorm         C
identical_layer_init     --                true (deep-copied layer)  true              C
dropout                  --                0.3                       0.3               C
noise, noise_std         Z, fixed Gauss.   every layer, N(0, 1)      true, 1.0         C
num_primitives, layers   400, 3            400, 3                    400, 3            C
hidden_dim               d_k (not given)   256                       D                 W
sigmas                   paper {..,60}     code {..,80}              code              C
kernel_scale             std               variance                  variance          C
mmd_form                 squared           sqrt                      sqrt              C
mmd_grouping             batch             batch                     batch             C
batch_size               --                queries of 12 images      128 rows          Z
class_tie_weight         0                 0.001                     0.001             C
class_tie_logits         --                seen ([:, :156])          seen              C
structure_weight         0.002             1e-3                      1e-3              C
w1, w2, w3               1, 1, 1           1, 1 x 0.2, 0.5           1, 0.2, 0.5       C
relation_scorer          dot (x^.a / tau)  relationnet               relationnet       C
relation_classes         all               grouped                   grouped           C
structure_class_vectors  raw               projected                 projected         C
structure_averaging      pooled            per_group                 per_group         C
structure_on_real        true              false                     false             C
kl_direction             paper (vis||sem)  code (sem||vis)           code              C
unrelated_kl             gaussian          sample (T 0.1)            sample (T = tau)  C
encoder_layout           paper             code                      code              C
helper_dropout           --                0.2                       0.2               C
lr                       2e-4              5e-4                      5e-4              C
lr_schedule              --                poly 0.9                  poly              C
steps                    --                2000                      2000              C
classifier.schedule      sequential        interleaved               interleaved       C
classifier.num_choose    --                17 (every unseen)         17                C
classifier.batch_size    --                12 images x 100 queries   12 images x Q     C
classifier.init          --                zero-padded head (*)      segmenter         Z
precision                --                AMP fp16                  fp32              Z
======================== ================= ========================= ================= ===

``classifier.batch_size``: the authors' loop feeds the classifier every query of its 12 images
(1,200 rows for 100 queries); zeroseg takes every query of ``classifier.images_per_step`` = 12
images of the segmenter at hand (Q queries each: 240 rows for ``tiny``'s 20), so that each step
weighs the one fake per unseen class against as many seen rows as the authors' did (a fixed
1,200 rows, the pre-fix default, is 60 images for ``tiny`` and gave GMMN's GZSL unseen mIoU 0.0
on ``small``; 240 rows: 4.6).

(*) The code's padding puts the segmenter's old no-object row on the first unseen class; here
seen rows stay in place, no-object moves to the last row and the unseen rows start at zero.
Not offered: the instance config's word2vec variant of Eq. 3 (seen rows scored against the
seen classes only) and AMP. The pre-issue-13 defaults were the paper column with per-class MMD
grouping (in neither source), Adam 2e-4 unscheduled and the sequential classifier.
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
    POLY_POWER,
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
    TorchClassifier,
    TrainedGenerator,
    check_real_features,
    cosine_similarity_matrix,
    grouped_mmd_loss,
    interleaved_head,
    load_state,
    prepare_class_embeddings,
    resolve_sigmas,
    run_generator_loop,
    seeded,
    softmax_kl,
)
from zeroseg.methods.generative import fit_generative
from zeroseg.methods.gmmn import GMMNGenerator, GMMNNetConfig
from zeroseg.methods.registry import MethodSpec
from zeroseg.platform.config import added_field, from_dict
from zeroseg.platform.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------


def _semantic_classifier() -> ClassifierConfig:
    return ClassifierConfig()  # the authors' semantic values (see ClassifierConfig)


@dataclass
class PADingConfig:
    """Every knob of PADing's generator stage, plus the classifier trained alongside.

    Defaults: the authors' semantic recipe (the module docstring's table says where and why each
    differs from the paper or the code). ``steps``: 2000 (the authors' semantic config; 4000
    instance, 20000 panoptic).
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
    dropout: float = 0.3  # TRANS_DROP_RATE of the semantic config (0.1 panoptic / instance)
    noise: bool = True  # Z in Eq. 1
    noise_std: float = 1.0
    primitive_attention: Literal["paper", "code"] = "code"
    output_head: Literal["linear", "layernorm"] = "layernorm"  # paper: w_1; code: LayerNorm
    gmmn: GMMNNetConfig = field(default_factory=GMMNNetConfig)  # when generator_type == "gmmn"

    # -- disentanglement nets (E_R, E_U, decoder) --------------------------------------------------
    helper_hidden: int | None = None  # None: D
    unrelated_dim: int | None = None  # width of x.. ; None: D
    helper_dropout: float = 0.2  # DROP_OUT_ED (0.1 in the panoptic and instance configs)
    encoder_layout: Literal["paper", "code"] = "code"

    # -- losses ----------------------------------------------------------------------------------
    sigmas: SigmaSpec = "code"
    kernel_scale: KernelScale = "variance"
    mmd_form: MMDForm = "sqrt"
    mmd_grouping: MMDGrouping = "batch"  # see common.MMDGrouping
    classes_per_step: int = 8  # with mmd_grouping="class": classes per step
    structure_weight: float = 1e-3  # lambda in Eq. 7 (paper 0.002; code 1e-3, panoptic 1e-4)
    tau: float = 0.1
    w1: float = 1.0  # alignment + L_U (WEIGHT_1)
    w2: float = 0.2  # L_R (WEIGHT_2 = 1 times the code's fixed 0.2; paper 1)
    w3: float = 0.5  # L_recon (WEIGHT_3; paper 1)
    kl_direction: KLDirection = "code"
    unrelated_kl: Literal["gaussian", "sample"] = "sample"
    structure_on_real: bool = False  # paper: real seen features join Eq. 3-6; code: fakes only
    unseen_per_class: int = 1  # synthetic unseen features per unseen class per step

    # -- optimisation ------------------------------------------------------------------------------
    lr: float = 5e-4  # Adam over generator + helper nets (GENERATOR_LR; paper 2e-4)
    lr_milestones: list[float] = field(default_factory=list)  # lr_schedule step: lr x 0.1 there
    steps: int = 2000
    batch_size: int = 128  # real (matched) embeddings per step
    normalize_class_embeddings: bool = True
    log_every: int = 50
    classifier: ClassifierConfig = field(default_factory=_semantic_classifier)
    seed: int = 0

    # -- issue 13: the authors' recipe, term by term (module docstring table) ----------------------
    query_norm: bool = added_field(True, since="issue 13")  # paper layout: LN on the query
    identical_layer_init: bool = added_field(True, since="issue 13")
    class_tie_weight: float = added_field(1e-3, since="issue 13")
    class_tie_logits: Literal["seen", "all"] = added_field("seen", since="issue 13")
    relation_scorer: Literal["relationnet", "dot"] = added_field("relationnet", since="issue 13")
    relation_classes: Literal["grouped", "all"] = added_field("grouped", since="issue 13")
    structure_class_vectors: Literal["projected", "raw"] = added_field("projected",
                                                                       since="issue 13")
    structure_averaging: Literal["per_group", "pooled"] = added_field("per_group",
                                                                      since="issue 13")
    lr_schedule: Literal["poly", "step"] = added_field("poly", since="issue 13")

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
        for name in ("noise_std", "structure_weight", "w1", "w2", "w3", "class_tie_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if any(not 0 < m < 1 for m in self.lr_milestones):
            raise ConfigError(f"lr_milestones must be fractions in (0, 1), got "
                              f"{self.lr_milestones}")
        if self.lr_milestones and self.lr_schedule != "step":
            raise ConfigError(f"lr_milestones {self.lr_milestones} need lr_schedule: step (the "
                              f"schedule is {self.lr_schedule!r})")
        if not self.query_norm and self.primitive_attention == "code":
            raise ConfigError("query_norm: false applies to primitive_attention: paper only (the "
                              "authors' layer always LayerNorms the query)")
        if self.class_tie_weight > 0 and self.classifier.schedule != "interleaved":
            raise ConfigError("class_tie_weight > 0 ties the fakes to the classifier trained "
                              "alongside; with classifier.schedule: sequential set "
                              "class_tie_weight: 0")
        structure = self.alignment or self.disentanglement
        if (structure and self.generator_type == "gmmn"
                and self.structure_class_vectors == "projected"):
            raise ConfigError("structure_class_vectors: projected uses the primitive "
                              "generator's query projection; with generator_type: gmmn use raw")


#: Table 1 rows 3-6: generator type and the two switches. Row 2 (projection) is
#: :mod:`zeroseg.methods.projection`.
ABLATIONS: dict[str, dict[str, Any]] = {
    "GMMN": {"generator_type": "gmmn", "alignment": False, "disentanglement": False},
    "P-only": {"generator_type": "primitives", "alignment": False, "disentanglement": False},
    "P&A": {"generator_type": "primitives", "alignment": True, "disentanglement": False},
    "PADing": {"generator_type": "primitives", "alignment": True, "disentanglement": True},
}


def ablation_config(name: str, base: PADingConfig | None = None) -> PADingConfig:
    """``base`` (default: the default config) with the switches of Table 1 row ``name``."""
    if name not in ABLATIONS:
        raise ConfigError(f"ablation: unknown row {name!r}; expected one of {list(ABLATIONS)}")
    return dataclasses.replace(base or PADingConfig(), **ABLATIONS[name])


#: Per-task values of the authors' configs (``configs/<task>/PADing.yaml`` and ``config.py``
#: defaults; PROTOCOLS section 4).
_CODE_TASK_VALUES: dict[str, dict[str, Any]] = {
    "panoptic": {"dropout": 0.1, "helper_dropout": 0.1, "structure_weight": 1e-4,
                 "steps": 20000, "lr_schedule": "step",
                 "lr_milestones": [14000 / 20000, 18500 / 20000], "unseen_weight": 5.0,
                 "num_choose": 5, "class_tie_logits": "all"},
    "instance": {"dropout": 0.1, "helper_dropout": 0.1, "structure_weight": 1e-3,
                 "steps": 4000, "lr_schedule": "step", "lr_milestones": [],
                 "unseen_weight": 2.0, "num_choose": 5, "class_tie_logits": "all"},
    "semantic": {"dropout": 0.3, "helper_dropout": 0.2, "structure_weight": 1e-3,
                 "steps": 2000, "lr_schedule": "poly", "lr_milestones": [],
                 "unseen_weight": 5.0, "num_choose": 17, "class_tie_logits": "seen"},
}


def authors_code_config(task: Literal["panoptic", "instance", "semantic"] = "semantic"
                        ) -> PADingConfig:
    """The authors' recipe for ``task``, every term set explicitly (not left to the defaults,
    which follow the semantic config but may move): the decoder layer with query self-attention
    and LayerNorms, final LayerNorm, deep-copied layers, TRANS_DROP_RATE; ``GMMNLoss`` (sigma set
    {2, ..., 80} as variances, square root, whole batch) plus the class tie ``0.001 * CE``
    through the classifier (seen logits on COCO-Stuff's ``[:, :156]``, every logit on the 65- and
    133-class tasks); RelationNet with seen-vs-all / unseen-vs-unseen CE, projected trainable
    class vectors for Eq. 3 and 6, per-group means, fakes only, KL(semantic || visual), the
    sampled-noise KL at T 0.1, Linear-Linear-LReLU encoders, ``WEIGHT_1/2/3`` = 1/1/0.5 with the
    extra 0.2 on the relation CE, STRUCTURE_WEIGHT; Adam 5e-4 with the task's schedule (poly 0.9
    over 2000 steps for semantic, 0.1x at 14000 and 18500 of 20000 for panoptic, constant over
    4000 for instance); the classifier interleaved, SGD 1e-3 / 0.9 / 5e-4, NUM_CHOOSE unseen
    classes with one fake each, CLASS_ECO, no-object 0.1.
    """
    if task not in _CODE_TASK_VALUES:
        raise ConfigError(f"task: expected one of {list(_CODE_TASK_VALUES)}, got {task!r}")
    v = _CODE_TASK_VALUES[task]
    classifier = ClassifierConfig(lr=1e-3, momentum=0.9, weight_decay=5e-4, steps=v["steps"],
                                  batch_size=None, images_per_step=12,
                                  num_choose=v["num_choose"],
                                  fakes_per_class=1, unseen_weight=v["unseen_weight"],
                                  no_object_weight=0.1, sample_in_train_mode=True,
                                  schedule="interleaved")
    return PADingConfig(
        num_primitives=400, layers=3, heads=8, noise=True, noise_std=1.0,
        primitive_attention="code", output_head="layernorm", identical_layer_init=True,
        dropout=v["dropout"], helper_dropout=v["helper_dropout"], encoder_layout="code",
        sigmas="code", kernel_scale="variance", mmd_form="sqrt", mmd_grouping="batch",
        class_tie_weight=1e-3, class_tie_logits=v["class_tie_logits"],
        relation_scorer="relationnet", relation_classes="grouped",
        structure_class_vectors="projected", structure_averaging="per_group",
        structure_on_real=False, kl_direction="code", unrelated_kl="sample", tau=0.1,
        w1=1.0, w2=0.2, w3=0.5, structure_weight=v["structure_weight"], unseen_per_class=1,
        lr=5e-4, lr_schedule=v["lr_schedule"], lr_milestones=list(v["lr_milestones"]),
        steps=v["steps"], classifier=classifier)


# ------------------------------------------------------------------------------------------------
# The primitive generator (Sec. 3.2, Eq. 1)
# ------------------------------------------------------------------------------------------------

#: The authors' decoder layer (``primitive_attention: code``), in order; ``tests`` recompute a
#: layer by hand in exactly this order. Then, after the last layer: ``final_norm``.
LAYER_ORDER: tuple[str, ...] = (
    "self_attn(query)", "+ residual", "norm1", "cross_attn(query -> primitives)", "+ residual",
    "+ noise", "norm2", "ffn", "+ residual", "norm3",
)
#: The paper's layer (``primitive_attention: paper``): the primitives are updated first, the
#: query (LayerNormed once before the first layer with ``query_norm``) reads them.
PAPER_LAYER_ORDER: tuple[str, ...] = (
    "self_attn(primitives)", "+ residual", "norm1(primitives)",
    "cross_attn(query -> primitives)", "+ residual", "+ noise", "norm2", "ffn", "+ residual",
    "norm3",
)


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
    """Class vectors ``[K, d]`` -> synthetic query embeddings ``[K, D]`` (Eq. 1, Fig. 3):
    ``query_proj``, (``query_norm``,) ``layers`` x :class:`PrimitiveLayer`, ``head``."""

    def __init__(self, embed_dim: int, out_dim: int, *, num_primitives: int = 400,
                 layers: int = 3, heads: int = 8, hidden_dim: int | None = None,
                 ffn_dim: int | None = None, dropout: float = 0.1, noise: bool = True,
                 noise_std: float = 1.0, attention: Literal["paper", "code"] = "code",
                 output_head: Literal["linear", "layernorm"] = "layernorm",
                 query_norm: bool = True, identical_init: bool = True):
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
        if identical_init:  # the code deep-copies one initialised layer (_get_clones)
            for layer in list(self.layers)[1:]:
                layer.load_state_dict(self.layers[0].state_dict())
        self.head: nn.Module = (nn.Linear(hidden, out_dim) if output_head == "linear"
                                else nn.LayerNorm(out_dim))  # w_1 (paper) / LayerNorm (code)
        # The paper layout's query reaches the first cross-attention unnormalised; the code
        # layout LayerNorms it in every layer (norm1), so only "paper" needs this.
        self.query_norm: nn.Module | None = (nn.LayerNorm(hidden)
                                             if attention == "paper" and query_norm else None)

    def forward(self, class_vectors: Tensor, rng: torch.Generator | None = None) -> Tensor:
        if class_vectors.dim() != 2 or class_vectors.shape[1] != self.embed_dim:
            raise DataError(f"primitive generator: expected class vectors [K, {self.embed_dim}],"
                            f" got {tuple(class_vectors.shape)}")
        query = self.query_proj(class_vectors)
        if self.query_norm is not None:
            query = self.query_norm(query)
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
    """Eq. 3 (paper): cross-entropy of ``softmax_k(x^_i . a_k / tau)`` against the class of
    ``x_i``, over the classes of ``class_embeddings``, averaged over features."""
    return F.cross_entropy(related @ class_embeddings.t() / tau, labels)


class RelationNet(nn.Module):
    """Eq. 3 (code, ``network_utils.RelationNet``): the score of feature ``s_i`` for class vector
    ``c_k`` is ``sigmoid(fc2(relu(fc1([s_i; c_k]))))``; the ``[N, K]`` scores are used as
    cross-entropy logits as they are (no temperature)."""

    def __init__(self, feature_dim: int, class_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(feature_dim + class_dim, feature_dim)
        self.fc2 = nn.Linear(feature_dim, 1)

    def forward(self, features: Tensor, class_vectors: Tensor) -> Tensor:
        n, k = len(features), len(class_vectors)
        pairs = torch.cat([features.unsqueeze(1).expand(n, k, -1),
                           class_vectors.unsqueeze(0).expand(n, k, -1)], dim=2)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(pairs)))).squeeze(2)


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
    """The generator plus the disentanglement nets (absent when disentanglement is off) and the
    RelationNet (``relation_scorer: relationnet``). ``class_dim``: the width of the class vectors
    of Eq. 3 and 6 (the generator's width when they are its projected queries, else ``d``)."""

    def __init__(self, embed_dim: int, out_dim: int, config: PADingConfig):
        super().__init__()
        self.embed_dim = embed_dim
        self.out_dim = out_dim
        self.generator: nn.Module = build_generator(embed_dim, out_dim, config)
        self.projected = config.structure_class_vectors == "projected"
        self.class_dim = (self.generator.hidden_dim if self.projected
                          and isinstance(self.generator, PrimitiveGenerator) else embed_dim)
        self.related: nn.Module | None = None  # E_R: D -> class_dim
        self.unrelated: nn.Module | None = None  # E_U: D -> unrelated_dim
        self.decoder: nn.Module | None = None  # [x^; x..] -> D
        self.relation: RelationNet | None = None
        if config.disentanglement:
            hidden = config.helper_hidden or out_dim
            u_dim = config.unrelated_dim or out_dim
            self.related = encoder_mlp(out_dim, hidden, self.class_dim, config.helper_dropout,
                                       config.encoder_layout)
            self.unrelated = encoder_mlp(out_dim, hidden, u_dim, config.helper_dropout,
                                         config.encoder_layout)
            self.decoder = decoder_mlp(self.class_dim + u_dim, hidden, out_dim,
                                       config.helper_dropout)
            if config.relation_scorer == "relationnet":
                self.relation = RelationNet(self.class_dim, self.class_dim)

    def class_vectors(self, a: Tensor) -> Tensor:
        """The class vectors of Eq. 3 and 6: the generator's projected queries (trainable: the
        structure losses reach ``query_proj``), or the class embeddings themselves."""
        return self.generator.query_proj(a) if self.projected else a


def build_generator(embed_dim: int, out_dim: int, config: PADingConfig) -> nn.Module:
    if config.generator_type == "gmmn":
        return GMMNGenerator(embed_dim, out_dim, config.gmmn)
    return PrimitiveGenerator(
        embed_dim, out_dim, num_primitives=config.num_primitives, layers=config.layers,
        heads=config.heads, hidden_dim=config.hidden_dim, ffn_dim=config.ffn_dim,
        dropout=config.dropout, noise=config.noise, noise_std=config.noise_std,
        attention=config.primitive_attention, output_head=config.output_head,
        query_norm=config.query_norm, identical_init=config.identical_layer_init)


@dataclass
class LossTerms:
    """One step's losses. ``raw``: each term unweighted; ``weighted``: the summands of Eq. 7
    (``total == sum(weighted.values())``); ``features``: the tensors they were computed from."""

    raw: dict[str, Tensor]
    weighted: dict[str, Tensor]
    total: Tensor
    features: dict[str, Tensor]


def class_tie_loss(fake_seen: Tensor, labels: Tensor, head: nn.Linear, seen_idx: Tensor,
                   logits: Literal["seen", "all"]) -> Tensor:
    """The code's ``cls_loss`` (unweighted): cross-entropy of the fake seen features through the
    classifier trained alongside, over the seen columns (``seen``: COCO-Stuff's ``[:, :156]``)
    or every column (``all``). The classifier's weights enter as constants: the code discards
    this loss's gradient on the classifier (``optimizer_2.zero_grad`` before its own step)."""
    scores = F.linear(fake_seen, head.weight.detach(), head.bias.detach())
    if logits == "all":
        return F.cross_entropy(scores, labels)
    columns = seen_idx.sort().values
    position = torch.full((head.out_features,), -1, dtype=torch.int64)
    position[columns] = torch.arange(len(columns))
    target = position[labels]
    if bool((target < 0).any()):
        raise DataError("class tie: a fake seen label is not a seen class")
    return F.cross_entropy(scores[:, columns], target)


def _group_mean(seen: Tensor, unseen: Tensor, n_seen: int, n_unseen: int,
                averaging: Literal["per_group", "pooled"]) -> Tensor:
    """Two group means combined: their plain mean (code) or weighted by group size (pooled)."""
    if averaging == "per_group":
        return (seen + unseen) / 2.0
    return (seen * n_seen + unseen * n_unseen) / (n_seen + n_unseen)


def relation_loss(model: PADingModel, related: Tensor, labels: Tensor, n_seen: int,
                  class_vectors: Tensor, unseen_idx: Tensor, config: PADingConfig) -> Tensor:
    """Eq. 3 over the seen rows ``related[:n_seen]`` and the unseen rows after them.

    ``relation_classes: grouped`` (code): seen rows scored against every class, unseen rows
    against the unseen classes only (targets = position among them); ``all`` (paper): every row
    against every class. Scores: RelationNet (code) or ``x^ . v / tau`` (paper)."""
    def score(rows: Tensor, vectors: Tensor) -> Tensor:
        if model.relation is not None:
            return model.relation(rows, vectors)
        return rows @ vectors.t() / config.tau

    if config.relation_classes == "all" and config.structure_averaging == "pooled":
        return F.cross_entropy(score(related, class_vectors), labels)  # one mean over all rows
    seen, unseen = related[:n_seen], related[n_seen:]
    seen_labels, unseen_labels = labels[:n_seen], labels[n_seen:]
    ce_seen = F.cross_entropy(score(seen, class_vectors), seen_labels)
    if config.relation_classes == "grouped":
        position = torch.full((len(class_vectors),), -1, dtype=torch.int64)
        position[unseen_idx] = torch.arange(len(unseen_idx))
        ce_unseen = F.cross_entropy(score(unseen, class_vectors[unseen_idx]),
                                    position[unseen_labels])
    else:
        ce_unseen = F.cross_entropy(score(unseen, class_vectors), unseen_labels)
    return _group_mean(ce_seen, ce_unseen, len(seen), len(unseen), config.structure_averaging)


def pading_losses(model: PADingModel, real: Tensor, labels: Tensor, class_embeddings: Tensor,
                  unseen_idx: Tensor, config: PADingConfig,
                  rng: torch.Generator | None = None, *, head: nn.Linear | None = None,
                  seen_idx: Tensor | None = None) -> LossTerms:
    """Eq. 2-7 for one batch of real seen embeddings ``real [N, D]`` with ``labels [N]``.

    Only the enabled terms are computed and reported: ``gen`` always; ``tie`` with
    ``class_tie_weight > 0`` (needs ``head``, the classifier trained alongside; ``seen_idx``
    defaults to every class not unseen); ``rel``, ``unrelated`` and ``recon`` with
    disentanglement; ``align`` (the mean of ``align_ss``, ``align_uu``, ``align_su``) with
    alignment. ``real`` and ``class_embeddings`` are data: no gradient reaches them.
    """
    real = real.detach()
    a = class_embeddings.detach()
    sigmas = resolve_sigmas(config.sigmas)
    structure = config.alignment or config.disentanglement
    unseen_labels = unseen_idx.repeat(config.unseen_per_class)
    # One generator pass for the seen and unseen fakes (the code makes two; the primitives'
    # self-attention of the paper layout does not depend on the queries).
    wanted = torch.cat([labels, unseen_labels]) if structure else labels
    fakes = model.generator(a[wanted], rng)
    fake_seen, fake_unseen = fakes[:len(labels)], fakes[len(labels):]  # X^s', X^u'
    raw: dict[str, Tensor] = {"gen": grouped_mmd_loss(  # Eq. 2
        fake_seen, real, labels, sigmas, grouping=config.mmd_grouping,
        kernel_scale=config.kernel_scale, form=config.mmd_form)}
    if config.class_tie_weight > 0:
        if head is None:
            raise ConfigError("class_tie_weight > 0 needs the classifier trained alongside "
                              "(head=...; classifier.schedule: interleaved)")
        if seen_idx is None:
            keep = torch.ones(len(a), dtype=torch.bool)
            keep[unseen_idx] = False
            seen_idx = torch.nonzero(keep).flatten()
        raw["tie"] = class_tie_loss(fake_seen, labels, head, seen_idx, config.class_tie_logits)
    features: dict[str, Tensor] = {"fake_seen": fake_seen}
    if structure:
        vectors = model.class_vectors(a)  # Eq. 3 / 6 class vectors
        seen = torch.cat([fake_seen, real]) if config.structure_on_real else fake_seen
        seen_labels = torch.cat([labels, labels]) if config.structure_on_real else labels
        n_seen, n_unseen = len(seen), len(fake_unseen)
        features.update(fake_unseen=fake_unseen, unseen_labels=unseen_labels, seen=seen,
                        seen_labels=seen_labels, class_vectors=vectors)
        align_seen, align_unseen = seen, fake_unseen  # Fig. 4a without disentanglement
        if config.disentanglement:
            assert model.related is not None and model.unrelated is not None
            assert model.decoder is not None
            both = torch.cat([seen, fake_unseen])
            both_labels = torch.cat([seen_labels, unseen_labels])
            related = model.related(both)  # x^ = E_R(x)
            unrelated = model.unrelated(both)  # x.. = E_U(x)
            decoded = model.decoder(torch.cat([related, unrelated], dim=1))
            raw["rel"] = relation_loss(model, related, both_labels, n_seen, vectors,
                                       unseen_idx, config)  # Eq. 3
            if config.structure_averaging == "pooled":
                raw["unrelated"] = unrelated_kl_loss(unrelated, config.unrelated_kl, config.tau,
                                                     rng)  # Eq. 4
                raw["recon"] = reconstruction_loss(both, decoded)  # Eq. 5
            else:  # the code: each term per group, then (seen + unseen) / 2
                raw["unrelated"] = _group_mean(
                    unrelated_kl_loss(unrelated[:n_seen], config.unrelated_kl, config.tau, rng),
                    unrelated_kl_loss(unrelated[n_seen:], config.unrelated_kl, config.tau, rng),
                    n_seen, n_unseen, "per_group")
                raw["recon"] = _group_mean(reconstruction_loss(seen, decoded[:n_seen]),
                                           reconstruction_loss(fake_unseen, decoded[n_seen:]),
                                           n_seen, n_unseen, "per_group")
            align_seen, align_unseen = related[:n_seen], related[n_seen:]
            features.update(related=related, unrelated=unrelated, decoded=decoded)
        if config.alignment:
            terms = alignment_losses(align_seen, seen_labels, align_unseen, unseen_labels,
                                     vectors, config.tau, config.kl_direction)  # Eq. 6
            raw.update(terms)
            raw["align"] = (terms["align_ss"] + terms["align_uu"] + terms["align_su"]) / 3.0
    lam = config.structure_weight
    weighted = {"gen": raw["gen"]}  # Eq. 7: L_G + tie + lambda * (L_D + L_A)
    if "tie" in raw:
        weighted["tie"] = config.class_tie_weight * raw["tie"]
    if "align" in raw:
        weighted["align"] = lam * config.w1 * raw["align"]
    if "rel" in raw:
        weighted["rel"] = lam * config.w2 * raw["rel"]
        weighted["unrelated"] = lam * config.w1 * raw["unrelated"]
        weighted["recon"] = lam * config.w3 * raw["recon"]
    total = torch.stack(list(weighted.values())).sum()
    return LossTerms(raw, weighted, total, features)


# ------------------------------------------------------------------------------------------------
# Training (Algorithm 1 steps 3-4)
# ------------------------------------------------------------------------------------------------


@dataclass
class PADingResult:
    generator: TrainedGenerator  # what classifier retraining samples from
    model: PADingModel  # generator + helper nets (for inspection)
    history: list[dict[str, float]]  # every log_every steps: step, lr, raw terms, total, mmd
    classifier: TorchClassifier | None = None  # the head trained alongside (interleaved)


def train_generator(real_embeddings: Any, real_labels: Any, class_embeddings: Any,
                    seen_idx: Any, unseen_idx: Any, config: PADingConfig | None = None,
                    seed: int | None = None, *, on_step: StepCallback | None = None,
                    on_snapshot: SnapshotCallback | None = None,
                    snapshot_every: int | None = None, classifier_data: Any = None,
                    init_weight: Any = None, init_bias: Any = None) -> PADingResult:
    """Train PADing's generator (or an ablation of it) on real seen embeddings, with the
    classifier alongside when ``classifier.schedule`` is ``interleaved``.

    ``real_embeddings [N, D]``: Hungarian-matched query embeddings of training images (PADing's
    "real class embeddings"); ``real_labels [N]``: their contiguous class indices, seen classes
    only (an unseen label raises :class:`~zeroseg.platform.errors.LeakageError`).
    ``class_embeddings [C, d]``: the whole label space, any ``d``. Each step draws
    ``batch_size`` real rows, generates one fake per row and ``unseen_per_class`` per unseen
    class, takes one Adam step on Eq. 7 and then one classifier step. ``classifier_data``:
    ``(query_embeddings [M, D], targets [M])`` for the classifier (every query, target ``C`` =
    no-object; default: the real embeddings, no no-object rows); ``init_weight`` / ``init_bias``
    start it (see :func:`~zeroseg.methods.common.retrain_classifier`). ``on_step(step,
    metrics)`` is called every ``log_every`` steps. ``seed`` defaults to ``config.seed``.
    """
    config = config or PADingConfig()
    seed = config.seed if seed is None else seed
    start = time.perf_counter()
    with seeded(seed) as rng:
        recipe = generator_recipe(real_embeddings, real_labels, class_embeddings, seen_idx,
                                  unseen_idx, config, classifier_data=classifier_data,
                                  init_weight=init_weight, init_bias=init_bias)
        history = run_generator_loop(recipe, rng, AdamStepper(recipe), on_step=on_step,
                                     on_snapshot=on_snapshot, snapshot_every=snapshot_every)
    log.info("PADing generator (%s, alignment=%s, disentanglement=%s) trained: %d steps in "
             "%.1f s, final total %.4f, MMD (sqrt, per class) %.4f", config.generator_type,
             config.alignment, config.disentanglement, config.steps,
             time.perf_counter() - start, history[-1]["total"], history[-1]["mmd"])
    trained = recipe.trained()
    return PADingResult(trained, recipe.model, history, trained.classifier)


def generator_recipe(real_embeddings: Any, real_labels: Any, class_embeddings: Any,
                     seen_idx: Any, unseen_idx: Any, config: PADingConfig, *,
                     classifier_data: Any = None, init_weight: Any = None,
                     init_bias: Any = None) -> GeneratorRecipe:
    """PADing's model (generator + helper nets, initialised from the current RNG), the Eq. 7
    step loss and the interleaved classifier, for
    :func:`~zeroseg.methods.common.run_generator_loop`."""
    config.validate()
    a = prepare_class_embeddings(class_embeddings, config.normalize_class_embeddings)
    roles = ClassRoles.build(len(a), seen_idx, unseen_idx)
    x, y = check_real_features(real_embeddings, real_labels, roles, allow_no_object=False,
                               names=("real_embeddings", "real_labels"))
    model = PADingModel(a.shape[1], x.shape[1], config)
    milestones = sorted({max(1, round(m * config.steps)) for m in config.lr_milestones})
    head = interleaved_head(x, y, roles, config, x.shape[1], classifier_data, init_weight,
                            init_bias)

    def loss(real: Tensor, labels: Tensor, rng: torch.Generator | None
             ) -> tuple[Tensor, dict[str, Tensor]]:
        terms = pading_losses(model, real, labels, a, roles.unseen, config, rng,
                              head=head.linear if head is not None else None,
                              seen_idx=roles.seen)
        return terms.total, terms.raw

    return GeneratorRecipe(kind=config.generator_type, model=model, net=model.generator,
                           class_embeddings=a, x=x, y=y, loss=loss, config=config,
                           milestones=milestones, head=head,
                           poly_power=POLY_POWER if config.lr_schedule == "poly" else None)


# ------------------------------------------------------------------------------------------------
# Saving and loading a trained generator
# ------------------------------------------------------------------------------------------------


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
        if config.primitive_attention == "paper" and "net.query_norm.weight" not in state:
            config.query_norm = False  # written before issue 13: the query was not normalised
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


def _spec(name: str, label: str, row: str, order: int, description: str) -> MethodSpec:
    switches = {k: v for k, v in ABLATIONS[row].items()}
    return MethodSpec(name=name, label=label, config_class=PADingConfig, fit=fit_generative,
                      generator_recipe=generator_recipe, features=("train", "train_all"),
                      fixed=switches, order=order, description=description)


METHODS = [
    _spec("pading-p", "P-only", "P-only", 40,
          "primitive generator with MMD only (PADing Table 1 row 4)"),
    _spec("pading-pa", "P&A", "P&A", 50,
          "primitive generator + relationship alignment (Table 1 row 5)"),
    _spec("pading", "PADing", "PADing", 60,
          "primitive generator + alignment + feature disentanglement (Table 1 row 6)"),
]
