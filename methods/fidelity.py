"""Fidelity diagnostics of a trained feature generator, to look at before trusting it.

A generative zero-shot method is only as good as its fakes of the unseen classes, and those
cannot be compared with real unseen features without leaking the test classes. The validation
protocol has what is needed: its "unseen" classes are held-out *seen* classes, whose real query
embeddings exist (the segmenter of that protocol never trained on them, so they are what an
unseen object looks like to it). :func:`fidelity` compares the generator's fakes of those classes
with their real embeddings:

- ``mmd`` (per class, and the mean): ``sqrt(sum_v MMD^2_v)`` between the class's fakes and its
  real embeddings, over the authors' bandwidths as variances -- the one logged form of
  :data:`zeroseg.methods.common.MMD_CURVE`. Lower is closer.
- ``ncm_accuracy`` (per class, and the balanced mean): each real held-out embedding is labelled
  with the class whose *fakes' mean* is nearest (Euclidean); the share labelled correctly.
  Chance is ``1 / K`` for ``K`` held-out classes. This is what a classifier trained on the fakes
  can at best hope for in a nearest-mean sense: fakes in the wrong place score near chance.
- ``variance_ratio``: between-class over within-class variance of the fakes (mean squared
  distance of the class means to their mean, over the mean squared distance of a fake to its
  class mean). Near 0: the fakes do not depend on the class (noise drowns the class signal).
  ``real_variance_ratio`` is the same on the real held-out embeddings, for scale.

Computed under a fixed seed, generator in eval mode; nothing here feeds back into training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zeroseg.methods.common import (
    TrainedGenerator,
    as_float_tensor,
    as_index_tensor,
    per_class_mmd,
)
from zeroseg.platform.errors import DataError

#: Fakes drawn per held-out class.
FAKES_PER_CLASS = 64


def variance_ratio(x: Tensor, y: Tensor) -> float:
    """Between-class / within-class variance of rows ``x`` with labels ``y`` (every class
    weighted equally): ``mean_c |mu_c - mu|^2 / mean_c mean_{i in c} |x_i - mu_c|^2``."""
    classes = torch.unique(y)
    if len(classes) < 2:
        raise DataError("variance_ratio: needs at least two classes")
    means = torch.stack([x[y == c].mean(0) for c in classes])
    within = torch.stack([(x[y == c] - means[k]).pow(2).sum(1).mean()
                          for k, c in enumerate(classes)]).mean()
    between = (means - means.mean(0)).pow(2).sum(1).mean()
    return float(between / within.clamp(min=1e-12))


def nearest_mean_accuracy(x: Tensor, y: Tensor, means: Tensor, classes: Sequence[int]
                          ) -> dict[int, float]:
    """Per class of ``y``: the share of its rows whose nearest row of ``means`` (one per entry of
    ``classes``) is its own class's."""
    nearest = torch.as_tensor(classes)[torch.cdist(x, means).argmin(1)]
    return {int(c): float((nearest[y == c] == c).float().mean()) for c in torch.unique(y)}


def fidelity(generator: TrainedGenerator, real_x: Any, real_y: Any, classes: Any, *,
             class_names: Sequence[str] | None = None, fakes_per_class: int = FAKES_PER_CLASS,
             seed: int = 0) -> dict[str, Any]:
    """The diagnostics of the module docstring for ``generator`` on the classes ``classes``
    (the held-out classes' indices in the generator's label space), given their real embeddings
    ``real_x [N, D]`` with labels ``real_y [N]``. Classes without a real embedding are listed
    with ``real: 0`` and left out of the means; at least two must have one.

    Returns plain data: ``per_class`` (class, name, real, mmd, ncm_accuracy), the means, the
    chance level, both variance ratios and the counts.
    """
    x = as_float_tensor(real_x, "heldout embeddings", dim=2)
    y = as_index_tensor(real_y, "heldout labels")
    wanted = as_index_tensor(classes, "heldout classes").tolist()
    if len(x) != len(y):
        raise DataError(f"heldout embeddings/labels: {len(x)} embeddings but {len(y)} labels")
    if x.shape[1] != generator.out_dim:
        raise DataError(f"heldout embeddings: width {x.shape[1]} differs from the generator's "
                        f"output width {generator.out_dim}")
    stray = sorted(set(y.tolist()) - set(wanted))
    if stray:
        raise DataError(f"heldout labels: class {stray[0]} is not one of the held-out classes "
                        f"{wanted}")
    present = [c for c in wanted if bool((y == c).any())]
    if len(present) < 2:
        raise DataError(f"fidelity: real embeddings of at least two held-out classes are needed, "
                        f"got {len(present)} (classes {wanted})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        labels = torch.as_tensor(wanted).repeat_interleave(fakes_per_class)
        fakes = generator.sample(labels, torch.Generator().manual_seed(seed))
    mmd = per_class_mmd(fakes, labels, x, y, present)
    means = torch.stack([fakes[labels == c].mean(0) for c in wanted])
    accuracy = nearest_mean_accuracy(x, y, means, wanted)
    names = list(class_names) if class_names is not None else None
    rows = []
    for c in wanted:
        k = present.index(c) if c in present else None
        rows.append({"class": int(c), "name": names[c] if names else str(c),
                     "real": int((y == c).sum()),
                     "mmd": float(mmd[k]) if k is not None else None,
                     "ncm_accuracy": accuracy.get(int(c))})
    keep = torch.isin(y, torch.as_tensor(present))
    return {
        "protocol": "validation",
        "per_class": rows,
        "mmd": float(mmd.mean()),
        "ncm_accuracy": float(np.mean([accuracy[c] for c in present])),
        "chance": 1.0 / len(wanted),
        "variance_ratio": variance_ratio(fakes, labels),
        "real_variance_ratio": variance_ratio(x[keep], y[keep]),
        "classes": len(wanted),
        "real_rows": int(keep.sum()),
        "fakes_per_class": int(fakes_per_class),
    }


def summary_line(fid: dict[str, Any]) -> str:
    """One line: the means and ratios of a :func:`fidelity` result."""
    def num(v: Any, digits: int = 2) -> str:
        return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"

    return (f"fidelity (validation, {fid['classes']} held-out classes, {fid['real_rows']} real "
            f"rows): MMD {num(fid['mmd'], 3)}, nearest-fake-mean accuracy "
            f"{num(fid['ncm_accuracy'])} (chance {num(fid['chance'])}), between/within "
            f"{num(fid['variance_ratio'], 3)} (real {num(fid['real_variance_ratio'], 3)})")
