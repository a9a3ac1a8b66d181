"""The segmenter's own classifier as a method: the supervised upper bound and the seen-only floor.

- ``supervised`` (PADing Table 1 row 1): the segmenter trained on **every** class, unseen ones
  included (the oracle). Its unseen figures are what a zero-shot method could at best reach with
  this segmenter; it breaks the zero-shot rules on purpose and its leakage audit says so.
- ``seen-only``: the zero-shot segmenter (seen classes only) with its own head. Unseen classes
  get probability 0, so every unseen figure is 0: the floor the zero-shot methods start from.

Neither trains anything: the classifier is the segmenter's head, read from its checkpoint and
laid out over the split's columns (classes it never learned get -inf).

**Every switch, one table.** There are none to choose: both rows are the segmenter itself.

=============== ======================== =================== ======================= =====
row             paper (PADing Table 1)   authors' code       zeroseg                 why
=============== ======================== =================== ======================= =====
supervised      trained on all classes   Mask2Former, all    oracle segmenter's head same
seen-only       --                       --                  zero-shot segmenter     floor
=============== ======================== =================== ======================= =====
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from zeroseg.methods.registry import MethodHooks, MethodInputs, MethodOutput, MethodSpec


class HeadClassifier:
    """Query embeddings ``[Q, D]`` -> logits ``[Q, C + 1]`` of a linear head in split layout;
    rows marked unknown score -inf."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, known: np.ndarray):
        self.weight = torch.as_tensor(weight, dtype=torch.float32)
        self.bias = torch.as_tensor(bias, dtype=torch.float32)
        self.unknown = torch.as_tensor(~known)

    def __call__(self, embeddings: Any) -> Any:
        is_numpy = not isinstance(embeddings, torch.Tensor)
        x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32) if is_numpy else embeddings)
        logits = x.float() @ self.weight.t() + self.bias
        logits[..., self.unknown] = float("-inf")
        return logits.numpy() if is_numpy else logits


def _fit(config: Any, inputs: MethodInputs, hooks: MethodHooks) -> MethodOutput:
    weight, bias, known = inputs.segmenter_head()
    classifier = HeadClassifier(weight, bias, known)
    for epoch in range(1, max(1, hooks.epochs) + 1):
        hooks.epoch(epoch, classifier)
    return MethodOutput(classifier=classifier,
                        info={"classes_known": int(known[:-1].sum())})


METHODS = [
    MethodSpec(name="supervised", label="Supervised", config_class=None, fit=_fit,
               segmenter="oracle", order=10,
               description="the segmenter trained on all classes (unseen included): upper bound"),
    MethodSpec(name="seen-only", label="Seen-only", config_class=None, fit=_fit, order=15,
               description="the zero-shot segmenter's own head (unseen classes score 0)"),
]
