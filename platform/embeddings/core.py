"""Class embeddings for a split: provider lookup, validation and the disk cache."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zeroseg.platform.data.classes import Split
from zeroseg.platform.embeddings.cache import EmbeddingCache
from zeroseg.platform.embeddings.providers import EmbeddingConfig
from zeroseg.platform.errors import EmbeddingError

log = logging.getLogger(__name__)

#: a row whose L2 norm is below this counts as all-zero
ZERO_NORM = 1e-12


@dataclass(frozen=True)
class EmbeddingResult:
    matrix: np.ndarray  # float32 [num_classes, dim], the split's contiguous order
    config: EmbeddingConfig
    source: str  # file(s) or provider the vectors came from
    cache_status: str  # "hit", "built" or "disabled"
    cache_reason: str  # why the cache was (not) used
    cache_path: Path | None
    seconds: float


def validate_embeddings(matrix: Any, split: Split, source: str) -> np.ndarray:
    """Check a provider's output and return it as C-contiguous float32.

    Raises :class:`EmbeddingError` naming ``source`` when the shape is not
    [num_classes, dim >= 1], a value is NaN/inf, or a class's vector is all zeros.
    """
    try:
        arr = np.asarray(matrix)
    except (TypeError, ValueError) as exc:
        raise EmbeddingError(f"{source}: embeddings are not a numeric matrix ({exc})") from None
    expected = f"expected [{split.num_classes}, dim] for split {split.name}"
    if arr.ndim != 2 or arr.shape[0] != split.num_classes or arr.shape[1] < 1:
        raise EmbeddingError(f"{source}: embeddings have shape {list(arr.shape)}; {expected}")
    if arr.dtype.kind not in "fiu":
        raise EmbeddingError(f"{source}: embeddings have dtype {arr.dtype}; expected numbers")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, reported below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad.size:
        raise EmbeddingError(
            f"{source}: non-finite values (NaN/inf) in the vector of class "
            f"{split.classes[bad[0]].name!r}{_more(bad)}; expected finite numbers"
        )
    norms = np.linalg.norm(out.astype(np.float64), axis=1)
    zero = np.flatnonzero(norms < ZERO_NORM)
    if zero.size:
        raise EmbeddingError(
            f"{source}: the vector of class {split.classes[zero[0]].name!r}{_more(zero)} is all "
            f"zeros; expected a non-zero vector per class"
        )
    _warn_duplicates(out, split, source)
    return out


def _more(rows: np.ndarray) -> str:
    return f" (and {rows.size - 1} more)" if rows.size > 1 else ""


def _warn_duplicates(matrix: np.ndarray, split: Split, source: str) -> None:
    _, first, counts = np.unique(matrix, axis=0, return_index=True, return_counts=True)
    for row, count in zip(first, counts, strict=True):
        if count > 1:
            log.warning("%s: %d classes share the vector of %r; they cannot be told apart",
                        source, count, split.classes[row].name)


def compute_class_embeddings(split: Split, config: Mapping[str, Any] | EmbeddingConfig,
                             cache_dir: str | os.PathLike | None = None) -> EmbeddingResult:
    """Like :func:`get_class_embeddings`, with where the vectors came from and the cache status."""
    start = time.perf_counter()
    cfg = EmbeddingConfig.coerce(config)
    provider = cfg.create_provider()
    source = provider.source()
    fingerprint = provider.fingerprint(split)  # checks that input files exist
    inputs = fingerprint.pop("inputs")
    cache = EmbeddingCache(cache_dir) if cache_dir is not None else None
    cache_path: Path | None = None
    reason = "no cache directory given"
    if cache is not None:
        lookup = cache.load(fingerprint, inputs)
        reason = lookup.reason
        if lookup.matrix is not None:
            try:
                matrix = validate_embeddings(lookup.matrix, split, source)
            except EmbeddingError as exc:
                reason = f"cached array is invalid ({exc})"
            else:
                log.debug("embeddings for %s from %s: %s", split.name, cfg.provider, reason)
                return EmbeddingResult(matrix, cfg, source, "hit", reason,
                                       cache.paths(fingerprint)[0], time.perf_counter() - start)
        log.info("embeddings for %s from %s: building (%s)", split.name, cfg.provider, reason)
    matrix = validate_embeddings(provider.embed(split), split, source)
    status = "disabled"
    if cache is not None:
        cache_path = cache.store(fingerprint, inputs, matrix, config=cfg.to_dict(),
                                 split_name=split.name,
                                 library_versions=provider.library_versions())
        status = "built"
    return EmbeddingResult(matrix, cfg, source, status, reason, cache_path,
                           time.perf_counter() - start)


def get_class_embeddings(split: Split, config: Mapping[str, Any] | EmbeddingConfig,
                         cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """float32 [num_classes, dim] class embeddings in ``split``'s contiguous class order.

    ``config`` is ``{"provider": NAME, **options}`` or an :class:`EmbeddingConfig`. With a
    ``cache_dir`` the matrix is cached on disk and reused while the provider, its options, the
    class names and the input files are unchanged; ``None`` computes it every time.
    """
    return compute_class_embeddings(split, config, cache_dir).matrix
