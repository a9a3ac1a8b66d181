"""The dense Mask2Former loss (methods/segmenter/loss.py) against direct computations."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from zeroseg.methods.segmenter.loss import (
    LossWeights,
    _pairwise_costs,
    hungarian_match,
    mask_classification_loss,
    resize_targets,
)


def test_resize_targets_gives_the_covered_fraction_of_each_cell():
    mask = torch.zeros(1, 8, 8)
    mask[0, 0:4, 0:2] = 1  # half of the top-left 4x4 cell
    mask[0, 4:8, 4:8] = 1  # all of the bottom-right cell
    out = resize_targets([mask], (2, 2))[0]
    assert out.tolist() == [[[0.5, 0.0], [0.0, 1.0]]]
    empty = resize_targets([torch.zeros(0, 8, 8)], (2, 2))[0]
    assert empty.shape == (0, 2, 2)


def test_pairwise_costs_equal_the_per_pair_losses():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 16, generator=g)
    targets = (torch.rand(2, 16, generator=g) > 0.5).float()
    targets[1, :5] = 0.25  # soft targets too
    bce, dice = _pairwise_costs(logits, targets)
    for q, n in itertools.product(range(3), range(2)):
        x, t = logits[q], targets[n]
        assert bce[q, n].item() == pytest.approx(
            F.binary_cross_entropy_with_logits(x, t).item(), rel=1e-5)
        p = x.sigmoid()
        expect = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
        assert dice[q, n].item() == pytest.approx(expect.item(), rel=1e-5)


def test_hungarian_match_is_the_cheapest_assignment():
    g = torch.Generator().manual_seed(1)
    w = LossWeights()
    class_logits = torch.randn(1, 4, 6, generator=g)
    mask_logits = torch.randn(1, 4, 3, 3, generator=g) * 3
    targets = [(torch.rand(3, 3, 3, generator=g) > 0.5).float()]
    labels = [torch.tensor([0, 4, 2])]
    rows, cols = hungarian_match(class_logits, mask_logits, labels, targets, w)[0]
    probs = class_logits[0].softmax(-1)

    def cost(q: int, n: int) -> float:
        x, t = mask_logits[0, q].flatten(), targets[0][n].flatten()
        p = x.sigmoid()
        dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
        return float(w.mask_weight * F.binary_cross_entropy_with_logits(x, t)
                     + w.dice_weight * dice - w.class_weight * probs[q, labels[0][n]])

    best = min(itertools.permutations(range(4), 3),
               key=lambda qs: sum(cost(q, n) for n, q in enumerate(qs)))
    got = {int(c): int(r) for r, c in zip(rows, cols, strict=True)}
    assert [got[n] for n in range(3)] == list(best)


def test_loss_of_one_layer_is_the_hand_computed_sum():
    w = LossWeights(class_weight=2.0, mask_weight=5.0, dice_weight=5.0, no_object_weight=0.1)
    # 2 queries, 2 classes + no object; one target of class 1 covering the left column.
    class_logits = torch.tensor([[[0.0, 2.0, 0.0], [0.0, 0.0, 1.0]]])
    mask_logits = torch.tensor([[[[3.0, -3.0], [3.0, -3.0]], [[-1.0, 1.0], [0.0, 0.0]]]])
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    loss, matches = mask_classification_loss([(class_logits, mask_logits)], [target],
                                             [torch.tensor([1])], w)
    (rows, cols), = matches
    assert rows.tolist() == [0] and cols.tolist() == [0]  # query 0 fits the target
    # CE: query 0 -> class 1 (weight 1), query 1 -> no object (weight 0.1); weighted mean.
    ce0 = -torch.log_softmax(class_logits[0, 0], -1)[1]
    ce1 = -torch.log_softmax(class_logits[0, 1], -1)[2]
    ce = (1.0 * ce0 + 0.1 * ce1) / 1.1
    x, t = mask_logits[0, 0].flatten(), target[0].flatten()
    bce = F.binary_cross_entropy_with_logits(x, t)
    p = x.sigmoid()
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    expect = 2.0 * ce + 5.0 * bce + 5.0 * dice  # one target mask
    assert loss.item() == pytest.approx(expect.item(), rel=1e-6)


def test_every_layer_is_supervised_and_an_image_without_targets_is_all_no_object():
    w = LossWeights()
    g = torch.Generator().manual_seed(2)
    layer = (torch.randn(2, 3, 4, generator=g, requires_grad=True),
             torch.randn(2, 3, 4, 4, generator=g, requires_grad=True))
    masks = [torch.zeros(0, 16, 16), (torch.rand(1, 16, 16, generator=g) > 0.5).float()]
    labels = [torch.zeros(0, dtype=torch.long), torch.tensor([2])]
    one, _ = mask_classification_loss([layer], masks, labels, w)
    two, _ = mask_classification_loss([layer, layer], masks, labels, w)
    assert two.item() == pytest.approx(2 * one.item())
    empty, matches = mask_classification_loss([layer], [masks[0]] * 2, [labels[0]] * 2, w)
    assert all(len(r) == 0 for r, _ in matches)
    ce = F.cross_entropy(layer[0].transpose(1, 2), torch.full((2, 3), 3))  # all no object
    assert empty.item() == pytest.approx(w.class_weight * ce.item())
    empty.backward()
    assert layer[1].grad is not None and math.isfinite(float(layer[1].grad.abs().sum()))
