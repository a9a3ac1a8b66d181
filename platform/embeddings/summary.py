"""A split's class embeddings computed (or reused), written and summarised: the body of
``zeroseg embed`` (:mod:`zeroseg.platform.commands.embed` prints the summary)."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zeroseg.platform.data.classes import Split
from zeroseg.platform.data.registry import as_split
from zeroseg.platform.embeddings.core import compute_class_embeddings
from zeroseg.platform.embeddings.providers import EmbeddingConfig
from zeroseg.platform.errors import ConfigError
from zeroseg.platform.io import atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".npy", ".csv", ".txt")


@dataclass(frozen=True)
class EmbedSummary:
    split: str
    provider: str
    config: dict[str, Any]
    source: str
    num_classes: int
    num_unseen: int
    dim: int
    cache_status: str  # "hit", "built", "disabled"
    cache_reason: str
    cache_path: str | None
    out_path: str | None
    seconds: float
    norm_min: float
    norm_mean: float
    norm_max: float
    # each unseen class's most similar seen class (cosine), a quick check of the mapping
    unseen_nearest_seen: list[tuple[str, str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        lines = [
            f"split      {self.split} ({self.num_classes} classes, {self.num_unseen} unseen)",
            f"provider   {self.provider}  source: {self.source}",
            f"matrix     {self.num_classes} x {self.dim} float32, row norms "
            f"{self.norm_min:.3g} / {self.norm_mean:.3g} / {self.norm_max:.3g} (min/mean/max)",
            f"cache      {self.cache_status}"
            + (f" {self.cache_path}" if self.cache_path else "")
            + (f" ({self.cache_reason})" if self.cache_status != "hit" else ""),
        ]
        if self.out_path:
            lines.append(f"written    {self.out_path}")
        if self.unseen_nearest_seen:
            lines.append("unseen -> nearest seen class (cosine):")
            lines += [f"  {u} -> {s} ({sim:.3f})" for u, s, sim in self.unseen_nearest_seen]
        lines.append(f"time       {self.seconds:.2f} s")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _nearest_seen(matrix: np.ndarray, split: Split) -> list[tuple[str, str, float]]:
    seen = np.flatnonzero(split.seen_mask)
    unseen = np.flatnonzero(split.unseen_mask)
    if not seen.size or not unseen.size:
        return []
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    sims = unit[unseen] @ unit[seen].T
    best = sims.argmax(axis=1)
    return [(split.classes[u].name, split.classes[seen[b]].name, float(sims[i, b]))
            for i, (u, b) in enumerate(zip(unseen, best, strict=True))]


def write_embeddings(path: str | os.PathLike, matrix: np.ndarray, split: Split,
                     config: Mapping[str, Any]) -> Path:
    """Write ``matrix`` as .npy or comma-separated text, with a json sidecar naming the rows."""
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise ConfigError(f"out: {out} must end with one of {', '.join(OUTPUT_SUFFIXES)}")
    if suffix == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(matrix, dtype=np.float32), allow_pickle=False)
        atomic_write_bytes(out, buffer.getvalue())
    else:
        text = "\n".join(",".join(repr(float(v)) for v in row) for row in matrix) + "\n"
        atomic_write_text(out, text)
    atomic_write_json(out.with_name(out.name + ".json"), {
        "split": split.name, "config": dict(config), "shape": list(matrix.shape),
        "classes": [{"index": c.index, "id": c.id, "name": c.name, "unseen": c.unseen}
                    for c in split.classes],
    }, indent=1)
    return out


def embed_command(split_name_or_split: str | Split, config: Mapping[str, Any] | EmbeddingConfig,
                  cache_dir: str | os.PathLike | None,
                  out_path: str | os.PathLike | None = None) -> EmbedSummary:
    """Compute a split's class embeddings (through the cache), optionally write them, summarise.

    ``out_path`` ending in ``.npy`` gets the float32 matrix, ``.csv``/``.txt`` comma-separated
    rows in the split's class order; either way ``<out_path>.json`` names the rows. The returned
    summary's ``format()`` is what ``zeroseg embed`` prints.
    """
    the_split = as_split(split_name_or_split)
    result = compute_class_embeddings(the_split, config, cache_dir)
    matrix = result.matrix
    written = None
    if out_path is not None:
        written = str(write_embeddings(out_path, matrix, the_split, result.config.to_dict()))
    norms = np.linalg.norm(matrix.astype(np.float64), axis=1)
    summary = EmbedSummary(
        split=the_split.name, provider=result.config.provider, config=result.config.to_dict(),
        source=result.source, num_classes=the_split.num_classes,
        num_unseen=int(the_split.unseen_mask.sum()), dim=int(matrix.shape[1]),
        cache_status=result.cache_status, cache_reason=result.cache_reason,
        cache_path=str(result.cache_path) if result.cache_path else None, out_path=written,
        seconds=round(result.seconds, 3), norm_min=float(norms.min()),
        norm_mean=float(norms.mean()), norm_max=float(norms.max()),
        unseen_nearest_seen=_nearest_seen(matrix, the_split),
    )
    log.info("embeddings for %s: %s x %s via %s (cache %s)", summary.split, summary.num_classes,
             summary.dim, summary.provider, summary.cache_status)
    return summary
