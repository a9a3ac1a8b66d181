"""Pixel decoders that can stand in for transformers' Mask2Former multi-scale deformable one.

Mask2Former's pixel decoder turns the backbone's four feature maps (strides 4, 8, 16, 32) into
per-pixel *mask features* at stride 4 (what query embeddings are dotted with to give masks) and
three multi-scale feature maps that the transformer decoder's masked-attention layers read in
turn. The paper's choice is six layers of multi-scale deformable attention (MSDeformAttn) over
strides 8-32 followed by an FPN step to stride 4; its ablation (Table 4e) also trains an FPN
(MaskFormer's pixel decoder) at 1-2 PQ less on COCO.

:class:`FPNPixelDecoder` is that FPN: a 1x1 lateral convolution per stage, a top-down path with
nearest-neighbour upsampling, a 3x3 convolution + GroupNorm + ReLU per level, and a 1x1 mask
projection at stride 4. On a CPU it is far cheaper than MSDeformAttn, whose ``grid_sample`` over
every position of three levels is 40% of a tiny segmenter's step; at the 128 px synthetic
benchmark it also learns faster per CPU-second (``benches/bench_learning.py``).

``attention_order`` (FPN only) decides which maps the masked-attention layers read, in turn:
``coarse-first`` (Mask2Former: strides 32, 16, 8, 32, ...) or ``fine-first`` (strides 4, 8, 16,
4, ...). With two or three layers at 128 px, coarse-first lets the first layer see a 13 px object
as a fraction of one stride-32 cell (masked attention then falls back to attending everywhere),
so the query cannot read the object's shape; fine-first reads it at stride 4, where attending
over 32 x 32 positions still costs little.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

ATTENTION_ORDERS = ("coarse-first", "fine-first")


def _decoder_output(mask_features: Tensor, multi_scale: Sequence[Tensor]) -> Any:
    from transformers.models.mask2former.modeling_mask2former import (
        Mask2FormerPixelDecoderOutput,
    )

    return Mask2FormerPixelDecoderOutput(mask_features=mask_features,
                                         multi_scale_features=tuple(multi_scale),
                                         attentions=None)


class FPNPixelDecoder(nn.Module):
    """MaskFormer's FPN pixel decoder, with transformers' pixel-decoder interface: ``forward``
    takes the backbone's feature maps (strides 4, 8, 16, 32) and returns
    ``Mask2FormerPixelDecoderOutput`` with ``mask_features`` (stride 4, ``mask_dim`` channels)
    and the three maps of strides 32, 16, 8 (``coarse-first``) or 4, 8, 16 (``fine-first``)."""

    def __init__(self, in_channels: Sequence[int], dim: int, mask_dim: int, *,
                 attention_order: str = "coarse-first", groups: int = 32):
        super().__init__()
        if attention_order not in ATTENTION_ORDERS:
            raise ValueError(f"attention_order must be one of {ATTENTION_ORDERS}")
        if len(in_channels) != 4:
            raise ValueError(f"expected 4 backbone stages, got {len(in_channels)}")
        self.attention_order = attention_order
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, dim, 1, bias=False), nn.GroupNorm(groups, dim))
            for c in in_channels)
        self.output = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, bias=False),
                          nn.GroupNorm(groups, dim), nn.ReLU())
            for _ in in_channels)
        self.mask_projection = nn.Conv2d(dim, mask_dim, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)  # as detectron2's c2_xavier_fill
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, features: Sequence[Tensor], output_hidden_states: bool = False,
                **_: Any) -> Any:
        x = self.output[-1](self.lateral[-1](features[-1]))
        levels = [x]  # strides 32, 16, 8, 4
        for i in range(len(features) - 2, -1, -1):
            lateral = self.lateral[i](features[i])
            x = self.output[i](lateral + F.interpolate(x, size=lateral.shape[-2:],
                                                       mode="nearest"))
            levels.append(x)
        multi_scale = levels[:3] if self.attention_order == "coarse-first" else levels[:0:-1]
        return _decoder_output(self.mask_projection(levels[-1]), multi_scale)
