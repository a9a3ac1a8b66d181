"""The segmenter: transformers' Mask2Former, built from a config (never downloaded), with the
per-query class embedding exposed.

Mask2Former (Cheng et al., CVPR 2022) predicts, for each of Q learned queries, a mask (a dot
product of the query's mask embedding with per-pixel features at 1/4 resolution) and a class
distribution over the K training classes plus "no object". The class head is one linear layer
reading the *query embedding*: the last decoder layer's output after the decoder's final
LayerNorm. Zero-shot methods (PADing, ZS3-style generators) replace that head; the masks stay.

Named sizes (:data:`SIZES`):

- ``tiny``: a small 4-stage ResNet (basic blocks, one per stage, 32/64/128/256 channels) for
  the 128 px synthetic benchmark on CPU; hidden 64, 20 queries, 2 masked-attention layers. Its
  recipe departs from Mask2Former's where a bench showed it learns faster per CPU-second
  (``benches/bench_learning.py``; the switches below): an FPN pixel decoder, masked attention
  fine-first, the mask terms on every pixel of the stride-4 grid, class weight 5, and a
  per-pixel auxiliary classification loss. About 1.57 M parameters.
- ``r50``: ResNet-50 backbone; hidden 256, 100 queries, Mask2Former's 9 masked-attention layers
  (transformers' ``decoder_layers=10`` counts the prediction made from the initial queries), a
  6-layer MSDeformAttn pixel decoder, 12,544 sampled points: the paper's recipe.
- ``swin-t``: Swin-T (embed 96, depths 2/2/6/2, heads 3/6/12/24, window 7), same head as r50.

``decoder_layers`` is transformers' ``Mask2FormerConfig.decoder_layers``: N gives N - 1
masked-attention layers (and N sets of auxiliary predictions, all supervised by the loss).

Backbone weights (real sizes) come from a local file only (:func:`load_backbone_weights`).

Switches (``None`` in :class:`SegmenterConfig` takes the size's value):

====================  ==========================  ==================  =====================
switch                Mask2Former (paper, code)   ``tiny``            ``r50`` / ``swin-t``
====================  ==========================  ==================  =====================
pixel_decoder         ``msdeform`` (6 layers)     ``fpn``             ``msdeform``
attention_order       ``coarse-first`` (32,16,8)  ``fine-first``      ``coarse-first``
                                                  (4, 8, 16)
mask_loss             ``points`` (12,544 points)  ``dense``           ``points``
class_weight          2.0                         5.0                 2.0
semantic_weight       0 (no such loss)            1.0                 0
resize                ``shortest-edge`` (LSJ)     ``squash``          ``shortest-edge``
test_size             800 (COCO), max 1333        image_size          800
====================  ==========================  ==================  =====================

Why the tiny departs (oracle on the synthetic ``small`` benchmark, 1 thread, 6 CPU-minutes,
val mIoU over all classes): transformers' recipe 40.5 (at 6 of an 8-minute schedule); FPN +
dense mask loss 50.8; + fine-first 52.6; + class weight 5 53.9; + per-pixel auxiliary loss 59.3.
Stuff reaches ~95 IoU early in every variant; what lags is the *shape* of things (red circle vs
red square): a query only learns it through one classification term, and a stride-32 cell is
larger than most objects. The per-pixel loss (``semantic_weight``) gives the backbone and the
pixel decoder a dense classification signal (a 1x1 convolution over the mask features, trained
with cross-entropy on the training classes, pixels of no target ignored); it is a training aid
only and never used at inference.

The loss (:mod:`.loss` for ``dense``; transformers' ``Mask2FormerLoss`` for ``points``):
Hungarian matching on each layer (cost = class_weight * -p(class) + mask_weight * sigmoid-CE +
dice_weight * dice), then CE with ``no_object_weight`` on the "no object" class, sigmoid-CE and
dice on the matched masks, on every layer (deep supervision).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeroseg.methods.segmenter.data import RESIZE_MODES, Resize
from zeroseg.methods.segmenter.loss import (
    LossWeights,
    hungarian_match,
    mask_classification_loss,
    resize_targets,
)
from zeroseg.methods.segmenter.pixel_decoder import ATTENTION_ORDERS, FPNPixelDecoder
from zeroseg.platform.compat import ensure_torchvision
from zeroseg.platform.config import added_field
from zeroseg.platform.errors import ConfigError

log = logging.getLogger(__name__)

SizeName = Literal["tiny", "r50", "swin-t"]
REAL_SIZES = ("r50", "swin-t")
STAGES = ["stage1", "stage2", "stage3", "stage4"]


@dataclass(frozen=True)
class _SizeSpec:
    """Per-size defaults (the ``None`` fields of :class:`SegmenterConfig` resolve to these)."""

    num_queries: int
    hidden_dim: int
    decoder_layers: int
    train_num_points: int
    encoder_layers: int  # deformable-attention layers of the pixel decoder
    encoder_feedforward_dim: int
    dim_feedforward: int  # transformer decoder FFN
    num_attention_heads: int
    pixel_decoder: str  # "msdeform" (Mask2Former) | "fpn"
    attention_order: str  # "coarse-first" (Mask2Former) | "fine-first" (fpn only)
    mask_loss: str  # "points" (Mask2Former, train_num_points) | "dense"
    class_weight: float
    semantic_weight: float  # per-pixel auxiliary CE on the mask features (0: none)
    resize: str  # "squash" | "shortest-edge" (methods/segmenter/data.py)
    test_size: int | None  # shortest edge at inference; None: image_size


PIXEL_DECODERS = ("msdeform", "fpn")
MASK_LOSSES = ("points", "dense")
_PAPER = {"pixel_decoder": "msdeform", "attention_order": "coarse-first", "mask_loss": "points",
          "class_weight": 2.0, "semantic_weight": 0.0, "resize": "shortest-edge",
          "test_size": 800}

SIZES: dict[str, _SizeSpec] = {
    "tiny": _SizeSpec(num_queries=20, hidden_dim=64, decoder_layers=3, train_num_points=2048,
                      encoder_layers=2, encoder_feedforward_dim=256, dim_feedforward=256,
                      num_attention_heads=4, pixel_decoder="fpn", attention_order="fine-first",
                      mask_loss="dense", class_weight=5.0, semantic_weight=1.0,
                      resize="squash", test_size=None),
    "r50": _SizeSpec(num_queries=100, hidden_dim=256, decoder_layers=10, train_num_points=12544,
                     encoder_layers=6, encoder_feedforward_dim=1024, dim_feedforward=2048,
                     num_attention_heads=8, **_PAPER),
    "swin-t": _SizeSpec(num_queries=100, hidden_dim=256, decoder_layers=10,
                        train_num_points=12544, encoder_layers=6, encoder_feedforward_dim=1024,
                        dim_feedforward=2048, num_attention_heads=8, **_PAPER),
}


@dataclass
class SegmenterConfig:
    """What a segmenter is; ``None`` fields take the size's default (:data:`SIZES`)."""

    size: SizeName = "tiny"
    image_size: int = 128  # squash: the input side; shortest-edge: the training crop's side
    num_queries: int | None = None
    hidden_dim: int | None = None
    decoder_layers: int | None = None
    backbone_weights: str | None = None  # local state-dict file; real sizes only
    no_object_weight: float = 0.1
    class_weight: float | None = None
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    train_num_points: int | None = None  # mask_loss "points" only
    pixel_decoder: Literal["msdeform", "fpn"] | None = None
    attention_order: Literal["coarse-first", "fine-first"] | None = None
    mask_loss: Literal["points", "dense"] | None = None
    semantic_weight: float | None = None
    # How images reach the model (methods/segmenter/data.py); None: the size's default.
    resize: Literal["squash", "shortest-edge"] | None = added_field(None, since="issue 12")
    test_size: int | None = added_field(None, since="issue 12")  # shortest edge at inference
    max_size: int = added_field(1333, since="issue 12")  # longest edge at inference, at most

    def validate(self) -> None:
        if self.size not in SIZES:
            raise ConfigError(f"size must be one of {list(SIZES)}, got {self.size!r}")
        if self.image_size < 32 or self.image_size % 32:
            raise ConfigError(f"image_size must be a positive multiple of 32, got "
                              f"{self.image_size}")
        for name in ("num_queries", "hidden_dim", "decoder_layers", "train_num_points"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.decoder_layers is not None and self.decoder_layers < 2:
            raise ConfigError(f"decoder_layers must be >= 2 (N gives N - 1 masked-attention "
                              f"layers), got {self.decoder_layers}")
        if self.hidden_dim is not None and self.hidden_dim % self.spec.num_attention_heads:
            raise ConfigError(f"hidden_dim must be a multiple of {self.spec.num_attention_heads} "
                              f"(attention heads of size {self.size!r}), got {self.hidden_dim}")
        if self.backbone_weights is not None and self.size not in REAL_SIZES:
            raise ConfigError(f"backbone_weights is only for the real sizes {list(REAL_SIZES)}; "
                              f"size {self.size!r} is always trained from scratch")
        for name in ("no_object_weight", "class_weight", "mask_weight", "dice_weight",
                     "semantic_weight"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        r = self.resolved()
        if r.pixel_decoder not in PIXEL_DECODERS:
            raise ConfigError(f"pixel_decoder must be one of {list(PIXEL_DECODERS)}, got "
                              f"{r.pixel_decoder!r}")
        if r.attention_order not in ATTENTION_ORDERS:
            raise ConfigError(f"attention_order must be one of {list(ATTENTION_ORDERS)}, got "
                              f"{r.attention_order!r}")
        if r.pixel_decoder == "msdeform" and r.attention_order != "coarse-first":
            raise ConfigError("attention_order: the msdeform pixel decoder has strides 8-32 "
                              "only; fine-first needs pixel_decoder: fpn")
        if r.resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {list(RESIZE_MODES)}, got {r.resize!r}")
        if r.test_size is not None and r.test_size < 32:
            raise ConfigError(f"test_size must be >= 32, got {r.test_size}")
        if self.max_size < 32:
            raise ConfigError(f"max_size must be >= 32, got {self.max_size}")
        if r.mask_loss not in MASK_LOSSES:
            raise ConfigError(f"mask_loss must be one of {list(MASK_LOSSES)}, got "
                              f"{r.mask_loss!r}")

    @property
    def spec(self) -> _SizeSpec:
        return SIZES[self.size]

    def resolved(self) -> SegmenterConfig:
        """A copy with every ``None`` replaced by the size's default."""
        spec = self.spec
        return dataclasses.replace(
            self,
            num_queries=self.num_queries or spec.num_queries,
            hidden_dim=self.hidden_dim or spec.hidden_dim,
            decoder_layers=self.decoder_layers or spec.decoder_layers,
            train_num_points=self.train_num_points or spec.train_num_points,
            **{name: spec_value if getattr(self, name) is None else getattr(self, name)
               for name, spec_value in (("pixel_decoder", spec.pixel_decoder),
                                        ("attention_order", spec.attention_order),
                                        ("mask_loss", spec.mask_loss),
                                        ("class_weight", spec.class_weight),
                                        ("semantic_weight", spec.semantic_weight),
                                        ("resize", spec.resize),
                                        ("test_size", spec.test_size))},
        )

    def resize_spec(self, scale_range: tuple[float, float] = (1.0, 1.0)) -> Resize:
        """How images reach this model (training jitter ``scale_range``)."""
        r = self.resolved()
        return Resize(mode=str(r.resize), size=r.image_size,
                      test_size=int(r.test_size or r.image_size), max_size=r.max_size,
                      scale_range=(float(scale_range[0]), float(scale_range[1])))

    def loss_weights(self) -> LossWeights:
        r = self.resolved()
        return LossWeights(class_weight=float(r.class_weight), mask_weight=r.mask_weight,
                           dice_weight=r.dice_weight, no_object_weight=r.no_object_weight)


def _backbone_config(config: SegmenterConfig) -> Any:
    from transformers import ResNetConfig, SwinConfig

    if config.size == "tiny":
        return ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128, 256],
                            depths=[1, 1, 1, 1], layer_type="basic", out_features=STAGES)
    if config.size == "swin-t":
        return SwinConfig(image_size=config.image_size, embed_dim=96, depths=[2, 2, 6, 2],
                          num_heads=[3, 6, 12, 24], window_size=7, drop_path_rate=0.3,
                          out_features=STAGES)
    # ResNet-50 (v1.5: stride on the 3x3 convolution, as torchvision and timm).
    return ResNetConfig(embedding_size=64, hidden_sizes=[256, 512, 1024, 2048],
                        depths=[3, 4, 6, 3], layer_type="bottleneck", out_features=STAGES)


def mask2former_config(config: SegmenterConfig, num_classes: int) -> Any:
    """transformers' ``Mask2FormerConfig`` for a segmenter config with ``num_classes`` classes."""
    from transformers import Mask2FormerConfig

    c = config.resolved()
    spec = c.spec
    # transformers warns that only Swin is "supported"; its ResNet backbone works (tested).
    logging.getLogger("transformers.models.mask2former.configuration_mask2former").setLevel(
        logging.ERROR)
    return Mask2FormerConfig(
        backbone_config=_backbone_config(c),
        num_labels=num_classes,
        hidden_dim=c.hidden_dim,
        feature_size=c.hidden_dim,
        mask_feature_size=c.hidden_dim,
        num_queries=c.num_queries,
        decoder_layers=c.decoder_layers,
        encoder_layers=spec.encoder_layers,
        encoder_feedforward_dim=spec.encoder_feedforward_dim,
        dim_feedforward=spec.dim_feedforward,
        num_attention_heads=spec.num_attention_heads,
        no_object_weight=c.no_object_weight,
        class_weight=c.class_weight,
        mask_weight=c.mask_weight,
        dice_weight=c.dice_weight,
        train_num_points=c.train_num_points,
        use_auxiliary_loss=True,
    )


@dataclass
class SegmenterOutput:
    """One forward pass. ``mask_logits`` are at 1/4 of the input resolution."""

    loss: Tensor | None
    class_logits: Tensor  # [B, Q, K + 1], last column = no object
    mask_logits: Tensor  # [B, Q, H/4, W/4]
    query_embeddings: Tensor  # [B, Q, D], what the class head reads


class Segmenter(nn.Module):
    """Mask2Former with ``num_classes`` training classes (+ no object) and exposed query
    embeddings. ``num_classes`` counts the classes the classifier is *trained* on: the seen
    classes for zero-shot training, all classes for the supervised oracle."""

    def __init__(self, config: SegmenterConfig, num_classes: int, *,
                 load_backbone_weights: bool = True):
        super().__init__()

        ensure_torchvision()
        from transformers import Mask2FormerForUniversalSegmentation

        config.validate()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.config = config
        self.num_classes = num_classes
        self.mask2former = Mask2FormerForUniversalSegmentation(
            mask2former_config(config, num_classes))
        resolved = config.resolved()
        self.recipe = resolved
        self.loss_weights = config.loss_weights()
        hidden = int(resolved.hidden_dim)
        if resolved.pixel_decoder == "fpn":
            pixel = self.mask2former.model.pixel_level_module
            pixel.decoder = FPNPixelDecoder(pixel.encoder.channels, hidden, hidden,
                                            attention_order=str(resolved.attention_order))
        # The per-pixel auxiliary classifier (training only; see the module docstring).
        self.semantic_head = (nn.Conv2d(hidden, num_classes, 1) if resolved.semantic_weight
                              else None)
        if config.backbone_weights is not None and load_backbone_weights:
            load_backbone_weights_file(self.backbone, config.backbone_weights, config.size)

    # -- parts ---------------------------------------------------------------------------------
    @property
    def backbone(self) -> nn.Module:
        return self.mask2former.model.pixel_level_module.encoder

    @property
    def class_head(self) -> nn.Linear:
        return self.mask2former.class_predictor

    @property
    def embed_dim(self) -> int:
        return int(self.mask2former.config.hidden_dim)

    @property
    def num_queries(self) -> int:
        return int(self.mask2former.config.num_queries)

    # -- computation ---------------------------------------------------------------------------
    def forward(self, pixel_values: Tensor, mask_labels: list[Tensor] | None = None,
                class_labels: list[Tensor] | None = None) -> SegmenterOutput:
        """``pixel_values`` [B, 3, H, W] normalised; with ``mask_labels`` (float [N_i, H, W])
        and ``class_labels`` (long [N_i], indices < num_classes) the loss is computed."""
        if (mask_labels is None) != (class_labels is None):
            raise ValueError("give both mask_labels and class_labels, or neither")
        if mask_labels is not None:
            mask_labels = [m.to(pixel_values) for m in mask_labels]
            class_labels = [c.to(pixel_values.device, torch.long) for c in class_labels]
        points = mask_labels is not None and self.recipe.mask_loss == "points"
        out = self.mask2former(pixel_values=pixel_values,
                               mask_labels=mask_labels if points else None,
                               class_labels=class_labels if points else None,
                               output_auxiliary_logits=mask_labels is not None and not points)
        embeddings = self.mask2former.model.transformer_module.decoder.layernorm(
            out.transformer_decoder_last_hidden_state)
        loss = out.loss
        if mask_labels is not None and not points:
            layers = [(a["class_queries_logits"], a["masks_queries_logits"])
                      for a in out.auxiliary_logits]
            layers.append((out.class_queries_logits, out.masks_queries_logits))
            loss, _ = mask_classification_loss(layers, mask_labels, class_labels,
                                               self.loss_weights)
        if mask_labels is not None and self.semantic_head is not None:
            loss = loss + self.recipe.semantic_weight * self._semantic_loss(
                out.pixel_decoder_last_hidden_state, mask_labels, class_labels)
        return SegmenterOutput(loss=loss, class_logits=out.class_queries_logits,
                               mask_logits=out.masks_queries_logits,
                               query_embeddings=embeddings)

    def _semantic_loss(self, mask_features: Tensor, mask_labels: list[Tensor],
                       class_labels: list[Tensor]) -> Tensor:
        """Per-pixel CE of the auxiliary head on the stride-4 grid: each cell takes the class of
        the target covering its centre pixel; cells of no target are ignored."""
        assert self.semantic_head is not None
        h, w = mask_features.shape[-2:]
        labels = torch.full((len(mask_labels), h, w), -100, dtype=torch.long,
                            device=mask_features.device)
        for i, (masks, classes) in enumerate(zip(mask_labels, class_labels, strict=True)):
            if not len(classes):
                continue
            sy, sx = masks.shape[-2] // h, masks.shape[-1] // w
            centres = masks[:, sy // 2::sy, sx // 2::sx][:, :h, :w] > 0.5  # [N, h, w]
            covered = centres.any(0)
            labels[i][covered] = classes[centres.float().argmax(0)[covered]]
        logits = self.semantic_head(mask_features)
        total = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
        return total / (labels != -100).sum().clamp(min=1)

    def classify(self, query_embeddings: Tensor) -> Tensor:
        """The model's own class head: [..., D] -> [..., K + 1] logits."""
        return self.class_head(query_embeddings)

    @torch.no_grad()
    def match(self, output: SegmenterOutput, mask_labels: list[Tensor],
              class_labels: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """Hungarian matching of the final layer's predictions to the targets, with the loss's
        own matcher: per image (query indices, target indices), one-to-one."""
        device = output.mask_logits.device
        masks = [m.to(device, output.mask_logits.dtype) for m in mask_labels]
        classes = [c.to(device, torch.long) for c in class_labels]
        if self.recipe.mask_loss == "dense":
            targets = resize_targets(masks, tuple(output.mask_logits.shape[-2:]))
            return hungarian_match(output.class_logits, output.mask_logits, classes, targets,
                                   self.loss_weights)
        return self.mask2former.criterion.matcher(output.mask_logits, output.class_logits,
                                                  masks, classes)


# -- backbone weights -------------------------------------------------------------------------
def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and len(obj) <= 3:
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise ConfigError(f"{path}: backbone_weights must hold a state dict (str -> tensor)")
    return dict(obj)


def _timm_resnet_to_hf(sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """timm / torchvision ResNet keys -> transformers ResNetBackbone keys; returns (mapped,
    ignored classifier keys)."""
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    stem = {"conv1.weight": "embedder.embedder.convolution.weight"}
    for key, value in sd.items():
        if key in stem:
            out[stem[key]] = value
            continue
        m = re.fullmatch(r"bn1\.(.+)", key)
        if m:
            out[f"embedder.embedder.normalization.{m[1]}"] = value
            continue
        m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn)(\d)\.(.+)", key)
        if m:
            stage, block, kind, index, rest = int(m[1]) - 1, m[2], m[3], int(m[4]) - 1, m[5]
            part = "convolution" if kind == "conv" else "normalization"
            out[f"encoder.stages.{stage}.layers.{block}.layer.{index}.{part}.{rest}"] = value
            continue
        m = re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.([01])\.(.+)", key)
        if m:
            part = "convolution" if m[3] == "0" else "normalization"
            out[f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.{part}.{m[4]}"] = value
            continue
        if key.startswith("fc."):
            ignored.append(key)
            continue
        out[key] = value  # unknown: reported as unexpected by the strict check
    return out, ignored


def _timm_swin_to_hf(sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """timm Swin keys -> transformers SwinBackbone keys. timm >= 0.9 keeps each patch-merging
    layer at the *start* of the next stage (``layers.{i+1}.downsample``); older timm and
    transformers keep it at the end of the stage (``layers.{i}.downsample``). Both are read."""
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    merge_at_start = any(k.startswith("layers.3.downsample.") for k in sd)
    block_parts = {"norm1": "layernorm_before", "norm2": "layernorm_after",
                   "attn.proj": "attention.o_proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
                   "attn.relative_position_bias_table":
                       "attention.relative_position_bias.relative_position_bias_table"}
    for key, value in sd.items():
        m = re.fullmatch(r"patch_embed\.(proj|norm)\.(weight|bias)", key)
        if m:
            part = "patch_embeddings.projection" if m[1] == "proj" else "norm"
            out[f"swin.embeddings.{part}.{m[2]}"] = value
            continue
        m = re.fullmatch(r"layers\.(\d)\.blocks\.(\d+)\.(.+)", key)
        if m:
            prefix = f"swin.encoder.layers.{m[1]}.blocks.{m[2]}"
            rest = m[3]
            q = re.fullmatch(r"attn\.qkv\.(weight|bias)", rest)
            if q:
                for name, chunk in zip(("q_proj", "k_proj", "v_proj"),
                                       value.chunk(3, dim=0), strict=True):
                    out[f"{prefix}.attention.{name}.{q[1]}"] = chunk.clone()
                continue
            if rest in ("attn.relative_position_index", "attn_mask"):
                ignored.append(key)  # buffers rebuilt from the config
                continue
            for src, dst in block_parts.items():
                if rest.startswith(src + "."):
                    out[f"{prefix}.{dst}{rest[len(src):]}"] = value
                    break
                if rest == src:
                    out[f"{prefix}.{dst}"] = value
                    break
            else:
                out[key] = value
            continue
        m = re.fullmatch(r"layers\.(\d)\.downsample\.(.+)", key)
        if m:
            stage = int(m[1]) - 1 if merge_at_start else int(m[1])
            out[f"swin.encoder.layers.{stage}.downsample.{m[2]}"] = value
            continue
        m = re.fullmatch(r"norm\.(weight|bias)", key)
        if m:
            out[f"swin.layernorm.{m[1]}"] = value
            continue
        if key.startswith("head."):
            ignored.append(key)
            continue
        out[key] = value
    return out, ignored


def _looks_like_timm(sd: Mapping[str, Tensor], size: str) -> bool:
    if size == "r50":
        return "conv1.weight" in sd and "layer1.0.conv1.weight" in sd
    return "patch_embed.proj.weight" in sd


def key_mismatch(expected: Mapping[str, Any], given: Mapping[str, Any],
                 allowed_missing: set[str] | frozenset[str] = frozenset()) -> str | None:
    """``None`` when ``given`` has exactly ``expected``'s keys (bar ``allowed_missing``), else
    a short description: how many keys are missing / unexpected and the first of each."""
    missing = [k for k in expected if k not in given and k not in allowed_missing]
    unexpected = [k for k in given if k not in expected]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (first: {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
    return "; ".join(parts) or None


def load_backbone_weights_file(backbone: nn.Module, path: str | Path, size: str) -> None:
    """Load a local backbone state dict into a transformers backbone, strictly.

    Accepted key styles: transformers' own backbone keys (``ResNetBackbone`` / ``SwinBackbone``
    ``state_dict()``), optionally under a ``backbone.`` prefix, and timm-style ResNet-50 / Swin-T
    keys (torchvision's ResNet-50 uses timm's names). Classifier keys (``fc.*``, ``head.*``) are
    ignored. For timm Swin, the per-stage output LayerNorms (``hidden_states_norms.*``) have no
    counterpart and keep their fresh initialisation, as in Mask2Former's own Swin backbone. Any
    other missing or unexpected key, or a shape mismatch, is a ConfigError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: backbone_weights file not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle refused by weights_only, ...
        raise ConfigError(f"{path}: not a readable torch state dict "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    sd = _unwrap_state_dict(raw, path)
    if sd and all(k.startswith("backbone.") for k in sd):
        sd = {k[len("backbone."):]: v for k, v in sd.items()}
    allowed_missing: set[str] = set()
    style = "transformers"
    if _looks_like_timm(sd, size):
        style = "timm"
        sd, ignored = (_timm_resnet_to_hf if size == "r50" else _timm_swin_to_hf)(sd)
        if ignored:
            log.info("%s: ignoring %d classifier/buffer keys (%s, ...)", path, len(ignored),
                     ignored[0])
        if size == "swin-t":
            allowed_missing = {k for k in backbone.state_dict()
                               if k.startswith("hidden_states_norms.")}
    expected = backbone.state_dict()
    mismatch = key_mismatch(expected, sd, allowed_missing)
    if mismatch:
        raise ConfigError(f"{path}: backbone weights ({style} key style) do not fit the {size} "
                          f"backbone: {mismatch}")
    wrong = [k for k, v in sd.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        k = wrong[0]
        raise ConfigError(f"{path}: backbone weight {k} has shape {tuple(sd[k].shape)}, the {size} "
                          f"backbone expects {tuple(expected[k].shape)} ({len(wrong)} mismatches)")
    backbone.load_state_dict(sd, strict=not allowed_missing)
    log.info("loaded %d backbone tensors (%s keys) from %s", len(sd), style, path)
