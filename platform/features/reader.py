"""Streaming reads of a feature cache entry (one shard in memory at a time).

Memory: a reader holds one shard's arrays as stored (e.g. ``shard_size`` x Q x h x w float16
mask logits for ``eval``) plus one image decoded to float32; choose ``shard_size`` accordingly
(64 synthetic images at 32 x 32 mask logits are ~2.5 MiB; for COCO at 1/4 of 1024 px, use 8).

- :meth:`FeatureCache.iter_images` (``eval`` caches): one :class:`CachedImage` per image, in the
  cache's image order, with float32 query embeddings, the segmenter's own class logits and the
  decoded mask logits; this is what inference re-runs on with a new classifier.
- :meth:`FeatureCache.iter_train_batches` / :meth:`FeatureCache.train_features` (``train`` /
  ``train_all`` caches): query embeddings with their targets, as :class:`TrainFeatures`; the
  matched rows are PADing's "real class embeddings", all rows (``train_all``) feed classifier
  retraining with no-object targets.

Every shard is checked against the sha256 recorded in ``index.json`` as it is read; a mismatch is
a one-line :class:`~zeroseg.platform.errors.DataError` naming the file.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zeroseg.platform.errors import DataError
from zeroseg.platform.features.cache import (
    INDEX_FILE,
    TRAIN_KINDS,
    check_shard_file,
    decode_masks,
    decode_shard,
    index_digest,
    read_index,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedImage:
    """One image of an ``eval`` cache: everything inference needs, without the backbone."""

    image_id: int
    height: int  # original image size (the masks are upsampled to it at inference)
    width: int
    query_embeddings: np.ndarray  # [Q, D] float32
    class_logits: np.ndarray  # [Q, K+1] float32, the segmenter's own class head
    mask_logits: np.ndarray  # [Q, h, w] float32 (decoded from the stored codec)
    # Aspect-preserving resize only: (mask h, mask w, input h, input w, resized h, resized w),
    # where the image sits in the masks (see methods/segmenter/inference.restore_masks)
    frame: tuple[int, ...] | None = None


@dataclass(frozen=True)
class TrainFeatures:
    """Query embeddings of training images with their targets (rows aligned)."""

    embeddings: np.ndarray  # [M, D] float32
    class_index: np.ndarray  # [M] int64: the split's contiguous index, num_classes = no-object
    category_id: np.ndarray  # [M] int64: dataset category id, 0 = no-object
    image_id: np.ndarray  # [M] int64
    query_index: np.ndarray  # [M] int64
    matched: np.ndarray  # [M] bool: the matcher assigned this query a GT segment
    # Caches extracted with stripe_bands = R only: [M, R] float32, the query's mask mass over
    # unlabelled pixels per horizontal band, and the unlabelled share of each band of its image
    # (platform/features/extract.py stripe_band_rows). None otherwise.
    bands: np.ndarray | None = None
    band_unlabelled: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def select(self, rows: np.ndarray) -> TrainFeatures:
        return TrainFeatures(self.embeddings[rows], self.class_index[rows],
                             self.category_id[rows], self.image_id[rows],
                             self.query_index[rows], self.matched[rows],
                             None if self.bands is None else self.bands[rows],
                             None if self.band_unlabelled is None
                             else self.band_unlabelled[rows])

    @staticmethod
    def concatenate(parts: list[TrainFeatures], dim: int) -> TrainFeatures:
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return TrainFeatures(np.zeros((0, dim), np.float32), empty, empty.copy(),
                                 empty.copy(), empty.copy(), np.zeros(0, dtype=bool))
        return TrainFeatures(*(np.concatenate([getattr(p, f) for p in parts])
                               if all(getattr(p, f) is not None for p in parts) else None
                               for f in ("embeddings", "class_index", "category_id", "image_id",
                                         "query_index", "matched", "bands",
                                         "band_unlabelled")))


class FeatureCache:
    """A complete cache entry on disk (``CACHE_DIR/<key>/``), read shard by shard."""

    def __init__(self, path: Path, index: dict[str, Any]):
        self.path = Path(path)
        self.index = index

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True) -> FeatureCache:
        """Open an entry; with ``verify`` every shard is re-hashed first (DataError if any
        differs from the index). Use :func:`zeroseg.platform.features.get_features` to open the
        entry of given inputs: it also checks that the inputs still match, and rebuilds if not."""
        path = Path(path)
        index = read_index(path)
        for field in ("key", "kind", "shards", "inputs", "counts"):
            if field not in index:
                raise DataError(f"{path / INDEX_FILE}: feature cache index has no '{field}'")
        if verify:
            if index.get("index_sha256") != index_digest(index):
                raise DataError(f"{path / INDEX_FILE}: index was modified after it was written; "
                                "rebuild the cache")
            for shard in index["shards"]:
                reason = check_shard_file(path, shard)
                if reason:
                    raise DataError(f"{path / INDEX_FILE}: {reason}; rebuild the cache")
        return cls(path, index)

    # -- description -------------------------------------------------------------------------
    @property
    def key(self) -> str:
        return str(self.index["key"])

    @property
    def kind(self) -> str:
        return str(self.index["kind"])

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.index["counts"])

    @property
    def num_images(self) -> int:
        return int(self.index["counts"]["images"])

    @property
    def image_ids(self) -> list[int]:
        return [i for s in self.index["shards"] for i in s["image_ids"]]

    @property
    def class_ids(self) -> list[int]:
        """Category ids of the split, in contiguous order (the column order of classifiers)."""
        return list(self.index["split_class_ids"])

    @property
    def no_object_index(self) -> int:
        return int(self.index["no_object_index"])

    @property
    def embed_dim(self) -> int:
        return int(self.index["embed_dim"])

    @property
    def size_bytes(self) -> int:
        return sum(int(s["bytes"]) for s in self.index["shards"])

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        return f"FeatureCache({self.path}, kind={self.kind}, images={self.num_images})"

    # -- raw shards --------------------------------------------------------------------------
    def read_shard(self, number: int) -> dict[str, np.ndarray]:
        shard = self.index["shards"][number]
        path = self.path / shard["file"]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read feature shard ({exc})") from None
        if len(data) != shard["bytes"] or hashlib.sha256(data).hexdigest() != shard["sha256"]:
            raise DataError(f"{path}: feature shard does not match the sha256 in {INDEX_FILE}; "
                            "rebuild the cache")
        return decode_shard(data, str(path))

    def iter_shards(self) -> Iterator[dict[str, np.ndarray]]:
        for number in range(len(self.index["shards"])):
            yield self.read_shard(number)

    # -- eval caches -------------------------------------------------------------------------
    def iter_images(self) -> Iterator[CachedImage]:
        """Per-image records of an ``eval`` cache, in image order, one shard in memory."""
        self._require_kind(("eval",))
        codec = self.index["config"]["mask_codec"]
        for arrays in self.iter_shards():
            mask_arrays = {k: arrays[k] for k in ("mask", "mask_scale") if k in arrays}
            frames = arrays.get("frame")
            for i, image_id in enumerate(arrays["image_id"].tolist()):
                masks = decode_masks({k: v[i] for k, v in mask_arrays.items()}, codec)
                yield CachedImage(
                    image_id=int(image_id), height=int(arrays["height"][i]),
                    width=int(arrays["width"][i]),
                    query_embeddings=arrays["embedding"][i].astype(np.float32),
                    class_logits=arrays["class_logits"][i], mask_logits=masks,
                    frame=tuple(int(v) for v in frames[i]) if frames is not None else None)

    def __iter__(self) -> Iterator[CachedImage]:
        return self.iter_images()

    # -- train caches ------------------------------------------------------------------------
    def iter_train_batches(self, *, matched_only: bool = True) -> Iterator[TrainFeatures]:
        """The rows of a ``train`` / ``train_all`` cache, one shard at a time. ``matched_only``
        keeps the matched queries (the real class embeddings); ``False`` needs ``train_all``."""
        self._require_kind(TRAIN_KINDS)
        if not matched_only and self.kind != "train_all":
            raise DataError(f"{self.path / INDEX_FILE}: a '{self.kind}' cache holds matched "
                            "queries only; extract with kind 'train_all' for all queries")
        for arrays in self.iter_shards():
            part = TrainFeatures(
                embeddings=arrays["embedding"].astype(np.float32),
                class_index=arrays["class_index"].astype(np.int64),
                category_id=arrays["category_id"].astype(np.int64),
                image_id=arrays["image_id"].astype(np.int64),
                query_index=arrays["query_index"].astype(np.int64),
                matched=arrays["matched"].astype(bool),
                bands=arrays["bands"].astype(np.float32) if "bands" in arrays else None,
                band_unlabelled=(arrays["band_unlabelled"].astype(np.float32)
                                 if "band_unlabelled" in arrays else None),
            )
            yield part.select(np.flatnonzero(part.matched)) if matched_only else part

    def train_features(self, *, matched_only: bool = True) -> TrainFeatures:
        """All rows at once (the generator's real features are small: one row per segment)."""
        parts = list(self.iter_train_batches(matched_only=matched_only))
        return TrainFeatures.concatenate(parts, self.embed_dim)

    def _require_kind(self, kinds: tuple[str, ...]) -> None:
        if self.kind not in kinds:
            raise DataError(f"{self.path / INDEX_FILE}: this is a '{self.kind}' cache; "
                            f"expected {' or '.join(kinds)}")
