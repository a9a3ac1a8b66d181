"""The spatially weighted ranking loss L_RS (paper eq. 17; the authors' ``cal_rank_loss``) on the
shared segmenter's cached query embeddings.

From pixels to queries. The segmenter's score of class ``u`` at pixel ``p`` is
``z(p, u) = sum_q s_q(u) sigmoid(m_q(p))`` (``m_q`` query ``q``'s mask logits; ``s_q(u)`` its
classifier logit for ``u`` with ``rank_score = logit``, or its softmax probability over the
``C + 1`` columns with ``probability``: the semantic inference's pixel score). Every form of
the loss is a weighted sum of ``z`` over the unlabelled pixels ``Y`` (no seen-class GT), with a
weight ``L(p)`` that is constant on each horizontal band of the image, so it is linear in the
per-query band masses the
``train_all`` cache stores (``features.stripe_bands = R``; platform/features/extract.py
``stripe_band_rows``): ``bands[q, j] = sum_{p in band j} sigmoid(m_q(p)) [p in Y] / N`` and
``band_unlabelled[j] = |Y in band j| / N``::

    S(u) = sum_p L(p) z(p, u) [p in Y] / |Y| = sum_q s_q(u) w_q(u),
    w_q(u) = sum_j A(u)_j bands[q, j]

so the mask predictions turn the pixel-level stripe weights into one weight per query, and the
cached features suffice. ``A`` by normalisation (``normalisation``):

- ``code`` (the authors' ``cal_rank_loss``): ``L = p_{k(j)}`` rescaled to mean 1 over ``Y``,
  ``A_j = p_{k(j)} / (sum_j' p_{k(j')} u_j') `` (``u`` = band_unlabelled; ``|Y|`` cancels,
  the code's ``+ 1`` pixel becomes ``eps``);
- ``paper`` (eq. 17): ``S = sum_k p_k mean_{Y_k} z``, ``A_j = p_{k(j)} / sum_{j' in k(j)} u_j'``.

With ``p_k = 1 / K`` (no spatial prior) both are L_R (eq. 16): the plain mean over ``Y``. Band
``j`` of ``R`` lies in stripe ``k(j) = j * K // R`` (``R`` a multiple of ``K``: the same rows as
stripe ``r * K // H``).

Pairs (the code): in a batch of ``B`` images, image ``i`` is paired with ``(i + s) mod B`` for
``s = 1 .. ceil(B / 2) - 1``; label ``+1`` where ``occ_i - occ_j > threshold``, ``-1`` where
``occ_j - occ_i > threshold``, ``0`` otherwise; ``MarginRankingLoss(margin)`` averaged over every
(image, unseen class) entry (``reduction = all``: a 0-label entry adds the constant ``margin``
and no gradient, as in the code) or over the labelled entries only (``valid``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-6


def band_weights(stripes: np.ndarray, band_unlabelled: np.ndarray, normalisation: str
                 ) -> np.ndarray:
    """``A [..., R]`` from stripe priors ``p [..., K]`` and one image's ``u [R]`` (module
    docstring)."""
    k = stripes.shape[-1]
    r = band_unlabelled.shape[-1]
    if r % k:
        raise ValueError(f"{r} bands do not split into {k} stripes")
    stripe_of = np.arange(r) * k // r
    p = stripes[..., stripe_of]  # [..., R]
    if normalisation == "code":
        return p / ((p * band_unlabelled).sum(-1, keepdims=True) + EPS)
    if normalisation == "paper":
        per_stripe = np.zeros(k)
        np.add.at(per_stripe, stripe_of, band_unlabelled)
        return p / (per_stripe[stripe_of] + EPS)
    raise ValueError(f"unknown normalisation {normalisation!r}")


def query_weights(bands: np.ndarray, band_unlabelled: np.ndarray, stripes: np.ndarray,
                  normalisation: str) -> np.ndarray:
    """One image: ``w [Q, U]`` from its queries' ``bands [Q, R]``, its ``band_unlabelled [R]``
    and the unseen classes' stripe priors ``[U, K]``."""
    a = band_weights(stripes, band_unlabelled, normalisation)  # [U, R]
    return (bands @ a.T).astype(np.float32)


def image_scores(probabilities: Tensor, weights: Tensor, image: Tensor, num_images: int
                 ) -> Tensor:
    """``S [B, U]``: per image, ``sum_q s_q(u) w_q(u)`` over its queries. ``probabilities`` and
    ``weights`` are ``[rows, U]``; ``image [rows]`` numbers the rows' images ``0 .. B - 1``."""
    out = torch.zeros(num_images, probabilities.shape[1], dtype=probabilities.dtype)
    return out.index_add(0, image, probabilities * weights)


def ranking_loss(scores: Tensor, occurrence: Tensor, *, threshold: float = 0.2,
                 margin: float = 1.0, reduction: str = "all") -> Tensor:
    """The code's pairwise margin ranking loss (module docstring) of ``scores [B, U]`` given the
    caption occurrence ``[B, U]``, summed over the shifts."""
    b = scores.shape[0]
    total = scores.new_zeros(())
    for shift in range(1, (b + 1) // 2):
        other = (torch.arange(b) + shift) % b
        diff = occurrence - occurrence[other]
        label = (diff > threshold).to(scores.dtype) - (-diff > threshold).to(scores.dtype)
        if reduction == "all":
            total = total + F.margin_ranking_loss(scores, scores[other], label, margin=margin)
        elif reduction == "valid":
            keep = label != 0
            if keep.any():
                total = total + F.margin_ranking_loss(scores[keep], scores[other][keep],
                                                      label[keep], margin=margin)
        else:
            raise ValueError(f"unknown reduction {reduction!r}")
    return total
