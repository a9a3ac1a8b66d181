"""Mask2Former's set-prediction loss, computed densely at the mask resolution.

Mask2Former (Cheng et al., CVPR 2022, section 3.3 and its ``criterion.py``) matches the final
layer's Q predictions to the N targets with the Hungarian algorithm on the cost

    C[q, n] = class_weight * -p_q(c_n) + mask_weight * BCE(m_q, t_n) + dice_weight * Dice(m_q, t_n)

and then applies cross-entropy on the classes (the "no object" class weighted by
``no_object_weight``, unmatched queries labelled "no object"), and binary cross-entropy + dice on
the matched masks, each normalised by the number of target masks. Every intermediate layer's
predictions get the same loss with their own matching (deep supervision).

Mask2Former computes the mask terms on ``K = 12,544`` points: uniformly sampled for the matching
and importance-sampled (uncertain points) for the loss, both read from the mask logits at 1/4
resolution with ``grid_sample`` and from the targets at full resolution. That saves memory at
COCO sizes (a 1/4-resolution mask of a 1024 px image has 65,536 pixels). When the mask
logits have no more pixels than the point budget -- the 128 px synthetic benchmark has 32 x 32 =
1,024 -- sampling costs more than it saves, and reads each pixel about twice at random. This
module instead takes *every* pixel of the mask-resolution grid, with the targets area-averaged
to that grid (a soft target: the fraction of each cell the target covers, so a 3 px object is
not lost or inflated by nearest-neighbour resizing). ``loss_points`` in the segmenter config
chooses between the two: ``dense`` (this module) or a point count (transformers' Mask2Former
loss, the paper's recipe).

The matching runs on the cost matrices of the whole batch at once (one matrix product per term,
then ``scipy.optimize.linear_sum_assignment`` per image), and the terms of all layers are summed
into one scalar; :func:`mask_classification_loss` also returns the matched pairs of the final
layer, which the feature cache uses to label query embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class LossWeights:
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1


def resize_targets(masks: Sequence[Tensor], size: tuple[int, int]) -> list[Tensor]:
    """Binary target masks [N, H, W] -> the fraction of each cell of an ``size`` grid that
    they cover ([N, h, w] float). Area averaging when H, W are multiples of h, w (exact
    coverage); bilinear (antialiased) otherwise."""
    out = []
    for m in masks:
        m = m.float()
        if len(m) == 0 or tuple(m.shape[-2:]) == tuple(size):
            out.append(m.reshape(len(m), *size) if len(m) == 0 else m)
            continue
        h, w = m.shape[-2:]
        if h % size[0] == 0 and w % size[1] == 0:
            out.append(F.avg_pool2d(m[None], (h // size[0], w // size[1]))[0])
        else:
            out.append(F.interpolate(m[None], size=size, mode="bilinear", align_corners=False,
                                     antialias=True)[0].clamp_(0, 1))
    return out


def _pairwise_costs(mask_logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Mean BCE and dice between every prediction [Q, P] and every target [N, P]."""
    p = mask_logits.shape[-1]
    pos = F.softplus(-mask_logits)  # -log sigmoid(x)
    neg = F.softplus(mask_logits)  # -log (1 - sigmoid(x))
    bce = (pos @ targets.T + neg @ (1 - targets).T) / p
    prob = mask_logits.sigmoid()
    numerator = 2 * prob @ targets.T
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    dice = 1 - (numerator + 1) / (denominator + 1)
    return bce, dice


@torch.no_grad()
def hungarian_match(class_logits: Tensor, mask_logits: Tensor, class_labels: Sequence[Tensor],
                    targets: Sequence[Tensor], weights: LossWeights
                    ) -> list[tuple[Tensor, Tensor]]:
    """Per image (query indices, target indices), one-to-one, minimising Mask2Former's cost.
    ``mask_logits`` [B, Q, h, w], ``targets`` per image [N_i, h, w] soft masks."""
    b, q = class_logits.shape[:2]
    # Imported here: scipy.optimize takes 0.4 s to import, and everything that imports the
    # pipeline (the CLI, every sweep trial's worker) imports this module without matching.
    from scipy.optimize import linear_sum_assignment

    probs = class_logits.float().softmax(-1)
    flat = mask_logits.float().flatten(2)
    out: list[tuple[Tensor, Tensor]] = []
    for i in range(b):
        n = len(class_labels[i])
        if n == 0:
            empty = torch.zeros(0, dtype=torch.long)
            out.append((empty, empty))
            continue
        bce, dice = _pairwise_costs(flat[i], targets[i].flatten(1).float())
        cost = (weights.mask_weight * bce + weights.dice_weight * dice
                - weights.class_weight * probs[i][:, class_labels[i]])
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        out.append((torch.as_tensor(rows, dtype=torch.long),
                    torch.as_tensor(cols, dtype=torch.long)))
    return out


def _layer_loss(class_logits: Tensor, mask_logits: Tensor, class_labels: Sequence[Tensor],
                targets: Sequence[Tensor], weights: LossWeights, num_masks: float,
                ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    b, q, k1 = class_logits.shape
    matches = hungarian_match(class_logits, mask_logits, class_labels, targets, weights)
    device = class_logits.device
    # Classes: matched queries take their target's class, the rest "no object" (index K).
    target_classes = torch.full((b, q), k1 - 1, dtype=torch.long, device=device)
    batch_idx = torch.cat([torch.full((len(r),), i, dtype=torch.long)
                           for i, (r, _) in enumerate(matches)]).to(device)
    query_idx = torch.cat([r for r, _ in matches]).to(device)
    if len(query_idx):
        target_classes[batch_idx, query_idx] = torch.cat(
            [class_labels[i].to(device)[c] for i, (_, c) in enumerate(matches)])
    class_w = torch.ones(k1, device=device, dtype=class_logits.dtype)
    class_w[-1] = weights.no_object_weight
    loss_ce = F.cross_entropy(class_logits.transpose(1, 2), target_classes, weight=class_w)
    if not len(query_idx):
        zero = mask_logits.sum() * 0
        return weights.class_weight * loss_ce + zero, matches
    pred = mask_logits[batch_idx, query_idx].flatten(1)
    tgt = torch.cat([targets[i][c] for i, (_, c) in enumerate(matches)]).flatten(1).to(pred)
    loss_mask = F.binary_cross_entropy_with_logits(pred, tgt, reduction="none").mean(1).sum()
    prob = pred.sigmoid()
    dice = 1 - (2 * (prob * tgt).sum(1) + 1) / (prob.sum(1) + tgt.sum(1) + 1)
    loss = (weights.class_weight * loss_ce
            + weights.mask_weight * loss_mask / num_masks
            + weights.dice_weight * dice.sum() / num_masks)
    return loss, matches


def mask_classification_loss(layers: Sequence[tuple[Tensor, Tensor]],
                             mask_labels: Sequence[Tensor], class_labels: Sequence[Tensor],
                             weights: LossWeights, *, num_masks: float | None = None
                             ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """Sum of Mask2Former's loss over ``layers`` = [(class_logits [B, Q, K+1], mask_logits
    [B, Q, h, w]), ...], the final layer last; targets ``mask_labels`` per image [N_i, H, W]
    (binary, any resolution that is a multiple of h, w), ``class_labels`` per image [N_i].
    ``num_masks`` (default: the targets of this batch, at least 1) normalises the mask terms;
    data-parallel training passes the mean over workers. Returns the loss and the final
    layer's matches."""
    size = tuple(layers[-1][1].shape[-2:])
    targets = resize_targets(mask_labels, size)
    if num_masks is None:
        num_masks = float(max(1, sum(len(c) for c in class_labels)))
    total: Tensor | None = None
    matches: list[tuple[Tensor, Tensor]] = []
    for class_logits, mask_logits in layers:
        loss, matches = _layer_loss(class_logits, mask_logits, class_labels, targets, weights,
                                    num_masks)
        total = loss if total is None else total + loss
    assert total is not None
    return total, matches


def matched_pairs(matches: Sequence[tuple[Tensor, Tensor]]) -> list[np.ndarray]:
    """The matches as [n_i, 2] int arrays (query, target) per image."""
    return [np.stack([r.numpy(), c.numpy()], 1) if len(r) else np.zeros((0, 2), np.int64)
            for r, c in matches]
