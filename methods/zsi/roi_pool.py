"""RoIAlign for machines without torchvision's compiled operators (CPU torch + the CUDA wheel).

Where torchvision's ``_C`` extension does not load (platform/compat/torchvision_ops.py),
``torchvision.ops.roi_align`` takes its pure-PyTorch path, which ``torch.compile``\\ s itself on
first use (12-40 s per process, each Ray worker included) and then ran at about 1.3 s per
multi-scale call of a 4-image, 512-RoI batch on 2 cores -- 80 % of a tiny ZSI training step.
:func:`roi_align_grid` computes the same RoIAlign (``aligned=False``, a fixed sampling ratio:
Mask R-CNN's 2) with one ``grid_sample`` per image; :class:`PortableMultiScaleRoIAlign` uses it
only when the compiled operator is absent and torchvision's own pooler otherwise (CUDA with a
working torchvision). The tests check it against torchvision's reference implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from zeroseg.platform.compat.torchvision_ops import ensure_torchvision

ensure_torchvision()

from torchvision.extension import _has_ops  # noqa: E402
from torchvision.ops import MultiScaleRoIAlign  # noqa: E402
from torchvision.ops.poolers import (  # noqa: E402
    _convert_to_roi_format,
    _filter_input,
    _setup_scales,
)


def roi_align_grid(features: Tensor, rois: Tensor, output_size: tuple[int, int],
                   spatial_scale: float, sampling_ratio: int) -> Tensor:
    """RoIAlign of ``rois`` ``[K, 5]`` (batch index, x1, y1, x2, y2 in image pixels) on
    ``features`` ``[N, C, H, W]`` -> ``[K, C, PH, PW]``, as torchvision's with
    ``aligned=False`` and ``sampling_ratio > 0``: each bin averages ``sampling_ratio^2``
    bilinear samples; a sample beyond one pixel outside the map is 0, one within it reads the
    clamped border."""
    if sampling_ratio <= 0:
        raise ValueError("roi_align_grid needs a fixed sampling_ratio > 0")
    ph, pw = output_size
    sr = sampling_ratio
    n, c, h, w = features.shape
    out = features.new_zeros((len(rois), c, ph, pw))
    if len(rois) == 0:
        return out
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale for i in range(1, 5))
    roi_w = (x2 - x1).clamp(min=1.0)
    roi_h = (y2 - y1).clamp(min=1.0)
    steps_x = (torch.arange(pw * sr, device=rois.device, dtype=rois.dtype) + 0.5) / sr
    steps_y = (torch.arange(ph * sr, device=rois.device, dtype=rois.dtype) + 0.5) / sr
    xs = x1[:, None] + steps_x[None] * (roi_w / pw)[:, None]  # [K, PW * sr]
    ys = y1[:, None] + steps_y[None] * (roi_h / ph)[:, None]  # [K, PH * sr]
    batch = rois[:, 0].long()
    for image in range(n):
        rows = torch.where(batch == image)[0]
        if len(rows) == 0:
            continue
        k = len(rows)
        gx = xs[rows][:, None, :].expand(k, ph * sr, pw * sr)
        gy = ys[rows][:, :, None].expand(k, ph * sr, pw * sr)
        valid = (gx >= -1) & (gx <= w) & (gy >= -1) & (gy <= h)
        grid = torch.stack([gx * (2.0 / max(w - 1, 1)) - 1, gy * (2.0 / max(h - 1, 1)) - 1],
                           dim=-1).reshape(1, k * ph * sr, pw * sr, 2)
        sampled = F.grid_sample(features[image:image + 1], grid.to(features.dtype),
                                mode="bilinear", padding_mode="border", align_corners=True)
        sampled = sampled * valid.reshape(1, 1, k * ph * sr, pw * sr).to(sampled.dtype)
        # RoIs are stacked along the rows in blocks of ph * sr: sr x sr pooling never mixes two
        pooled = F.avg_pool2d(sampled, sr)  # [1, C, k * ph, pw]
        out[rows] = pooled.reshape(c, k, ph, pw).permute(1, 0, 2, 3)
    return out


class PortableMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's multi-scale RoIAlign (same level mapping), through
    :func:`roi_align_grid` when the compiled ``roi_align`` is unavailable."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> Tensor:
        if _has_ops():
            return super().forward(x, boxes, image_shapes)
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes) if len(features) > 1 else torch.zeros(
            len(rois), dtype=torch.int64, device=rois.device)
        out = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            rows = torch.where(levels == level)[0]
            if len(rows):
                out[rows] = roi_align_grid(feature, rois[rows], tuple(self.output_size), scale,
                                           self.sampling_ratio)
        return out
