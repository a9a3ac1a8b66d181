"""Cap2Seg's inference engine: the global branch (BERT over a contextual entailment question,
occurrence head H_o and stripe head H_s) and the local branch (a pixel-level MLP), with their
losses (paper eqs. 5, 6, 9, 10, 11) and the fusion of their stripe distributions.

Global: ``phi([CLS] caption [SEP] class name [SEP])`` is BERT's pooled output; ``H_o`` is a
linear layer to one occurrence logit, ``H_s`` a linear layer to ``K`` stripe logits (softmax ->
``V_hat``). Local: ``M(pos(s), pos(t), w_cs, w_u)`` an MLP, ``P(c_t = u | x) = mean_s
sigmoid(M(...))`` over ``n_sub`` source pixels of known classes (eq. 8); read off on a
``K x K`` grid of target cells, stripe ``k``'s distribution is ``softmax_k(sum of the cells in
stripe k)`` (eq. 10). Fused: ``(V_hat + Y_hat) / 2``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeroseg.platform.compat import ensure_torchvision


def bert_config(vocab_size: int, *, hidden_size: int, layers: int, heads: int,
                intermediate_size: int, max_length: int) -> Any:
    """A small BertConfig for an engine trained from scratch (nothing downloaded)."""
    ensure_torchvision()  # transformers imports torchvision; its compiled ops may not load
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=intermediate_size,
                      max_position_embeddings=max(max_length, 8), type_vocab_size=2)


class GlobalBranch(nn.Module):
    """BERT + H_o + H_s. ``checkpoint``: a local directory with a pretrained BERT
    (``BertModel.from_pretrained(path, local_files_only=True)``, e.g. for COCO); otherwise the
    model is built from ``config`` with random weights."""

    def __init__(self, config: Any, stripes: int, checkpoint: str | None = None):
        super().__init__()
        ensure_torchvision()
        from transformers import BertModel

        if checkpoint:
            self.bert = BertModel.from_pretrained(checkpoint, local_files_only=True)
        else:
            self.bert = BertModel(config)
        hidden = self.bert.config.hidden_size
        self.occurrence = nn.Linear(hidden, 1)  # H_o
        self.stripes = nn.Linear(hidden, stripes)  # H_s

    def forward(self, input_ids: Tensor, token_type_ids: Tensor, attention_mask: Tensor
                ) -> tuple[Tensor, Tensor]:
        """(occurrence logits [N], stripe logits [N, K])."""
        pooled = self.bert(input_ids=input_ids, token_type_ids=token_type_ids,
                           attention_mask=attention_mask).pooler_output
        return self.occurrence(pooled).squeeze(-1), self.stripes(pooled)


class LocalBranch(nn.Module):
    """``M(pos(s), pos(t), w_cs, w_u)`` -> a logit (eq. 7): an MLP over the stacked input."""

    def __init__(self, embed_dim: int, hidden: int = 128, layers: int = 2):
        super().__init__()
        dims = [4 + 2 * embed_dim] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            blocks += [nn.Linear(a, b), nn.ReLU()]
        self.mlp = nn.Sequential(*blocks, nn.Linear(dims[-1], 1))

    def forward(self, src_pos: Tensor, src_words: Tensor, tgt_pos: Tensor, target_word: Tensor
                ) -> Tensor:
        """``P(c_t = u | x)`` for every target: the mean over sources of sigmoid(M).

        ``src_pos [B, S, 2]``, ``src_words [B, S, d]`` (the source pixels' class vectors),
        ``tgt_pos [B, T, 2]``, ``target_word [B, d]`` (the class u asked about) -> ``[B, T]``.
        """
        b, s, _ = src_pos.shape
        t = tgt_pos.shape[1]
        d = src_words.shape[-1]
        x = torch.cat([src_pos[:, :, None].expand(b, s, t, 2),
                       tgt_pos[:, None].expand(b, s, t, 2),
                       src_words[:, :, None].expand(b, s, t, d),
                       target_word[:, None, None].expand(b, s, t, d)], dim=-1)
        return torch.sigmoid(self.mlp(x).squeeze(-1)).mean(1)


# -- losses ---------------------------------------------------------------------------------------
def occurrence_loss(logits: Tensor, present: Tensor) -> Tensor:
    """L_o: binary cross-entropy of the occurrence logits against 1 (present) / 0 (absent)."""
    return F.binary_cross_entropy_with_logits(logits, present.to(logits.dtype))


def stripe_loss(logits: Tensor, target: Tensor) -> Tensor:
    """L_s: cross-entropy ``-sum_k q_k log q_hat_k`` of the predicted stripe distribution
    ``softmax(logits)`` against the normalised ground-truth histogram ``target`` (rows sum to
    1), averaged over rows (present classes only)."""
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def local_loss(probability: Tensor, is_class: Tensor) -> Tensor:
    """L_p (eq. 9): BCE of ``P(c_t = u' | x)`` against ``I(c_t = u')`` at the target pixels."""
    return F.binary_cross_entropy(probability.clamp(1e-6, 1 - 1e-6), is_class.to(probability.dtype))


def grid_positions(k: int) -> Tensor:
    """Centres of a ``k x k`` grid in [0, 1]^2, row-major (stripe = row): ``[k * k, 2]`` as
    (x, y)."""
    centres = (torch.arange(k, dtype=torch.float32) + 0.5) / k
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)


def grid_to_stripes(grid: Tensor, k: int, readout: str = "softmax") -> Tensor:
    """``[..., k * k]`` cell probabilities (row-major) -> ``[..., k]`` per stripe (row):
    ``softmax`` = eq. 10, the softmax of each row's sum; ``mean`` = the authors' code
    (``consistency_pixel_location``: ``pred.view(b, k, k).mean(2)``), each row's mean
    probability, not normalised."""
    rows = grid.reshape(*grid.shape[:-1], k, k)
    if readout == "softmax":
        return torch.softmax(rows.sum(-1), dim=-1)
    if readout == "mean":
        return rows.mean(-1)
    raise ValueError(f"unknown local read-off {readout!r}")


def consistency_loss(local_stripes: Tensor, global_stripes: Tensor) -> Tensor:
    """L_consist (eq. 11): the L2 distance between the two stripe distributions, averaged."""
    return (local_stripes - global_stripes).pow(2).sum(-1).clamp_min(1e-12).sqrt().mean()


def fuse(global_stripes: Any, local_stripes: Any) -> Any:
    """``V*_hat = (V_hat + Y_hat) / 2`` (the semi-global branch at deployment)."""
    return (global_stripes + local_stripes) / 2
