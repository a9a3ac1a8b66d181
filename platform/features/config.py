"""The extraction config (``zeroseg extract CONFIG``), validated by :mod:`zeroseg.platform.config`.

Example (``configs/extract_tiny.yaml``)::

    checkpoint: runs/tiny/segmenter      # a directory written by save_segmenter
    data: data/tiny                      # dataset root (COCO layout)
    split: train                         # dataset split to extract
    kind: train                          # train | train_all | eval
    cache_dir: .zeroseg/cache/features

Which fields make the cache key: see :meth:`ExtractConfig.key_config`. ``workers`` only changes
how fast the same bytes are produced (shards are byte-identical for any number of workers); it
and ``device`` are recorded in the index but not hashed. ``threads_per_worker`` is hashed: the
segmenter's outputs differ in their last bits with the number of torch threads (see
:mod:`zeroseg.methods.segmenter.inference`), like with ``batch_size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from zeroseg.platform.errors import ConfigError


@dataclass
class ExtractConfig:
    checkpoint: Path  # segmenter checkpoint directory (save_segmenter)
    data: Path  # dataset root in the COCO layout
    split: str = "train"  # dataset split, e.g. train / val (train2017 / val2017 for COCO)
    benchmark: str | None = None  # registry split name; default: the dataset's classes.json
    # Which label space the stored class indices refer to: the test split, or its validation
    # view (held-out seen classes play unseen; the test split's unseen classes are removed).
    view: Literal["test", "validation"] = "test"
    # train: Hungarian-matched query embeddings with their GT class (PADing's real features);
    # train_all: every query of every training image, target = matched class or no-object;
    # eval: all queries + mask logits + the segmenter's class logits, for re-running inference.
    kind: Literal["train", "train_all", "eval"] = "train"
    cache_dir: Path = Path(".zeroseg/cache/features")
    # Train kinds only. auto: derived from the classes the checkpoint was trained on (seen ->
    # the test protocol's filter; seen minus held-out -> the validation filter; all -> none).
    leakage_filter: Literal["auto", "test", "validation", "none"] = "auto"
    image_ids: list[int] | None = None  # a subset of the split's (allowed) images
    max_images: int | None = None  # the first N images (ascending id) after filtering
    embed_dtype: Literal["float32", "float16"] = "float32"
    mask_codec: Literal["float32", "float16", "int8"] = "float16"  # eval only
    compress: bool = True  # deflate the shard members
    shard_size: int = 64  # images per shard
    batch_size: int = 8  # images per forward pass
    seed: int = 0  # seeds the matcher's random points, per batch
    workers: int = 1  # 1: in this process; N > 1: N Ray actors
    threads_per_worker: int = 1  # torch threads in each worker
    device: str = "cpu"
    rebuild: bool = False  # rebuild even when a valid cache entry exists
    # Train kinds only, 0 = off: also store, per query, its predicted mask's mass over the
    # image's unlabelled pixels (no GT segment) in this many horizontal bands of the model's
    # input frame ("bands" [M, R]) and the unlabelled share of each band ("band_unlabelled"
    # [M, R], the image's, repeated per query): what a spatially weighted loss over unlabelled
    # pixels (Cap2Seg's L_RS) needs without the masks. Left out of the key when 0.
    stripe_bands: int = 0

    def validate(self) -> None:
        for name in ("shard_size", "batch_size", "workers", "threads_per_worker"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError(f"max_images must be >= 1, got {self.max_images}")
        if self.image_ids is not None:
            if not self.image_ids:
                raise ConfigError("image_ids must not be empty (leave it out for all images)")
            if len(set(self.image_ids)) != len(self.image_ids):
                raise ConfigError("image_ids has duplicates")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.stripe_bands < 0:
            raise ConfigError(f"stripe_bands must be >= 0, got {self.stripe_bands}")
        if self.stripe_bands and self.kind != "train_all":
            raise ConfigError(f"stripe_bands: stored for kind train_all only, not {self.kind!r}")

    def key_config(self, leakage_filter: str) -> dict[str, Any]:
        """The extraction settings the cache key covers (``leakage_filter`` resolved)."""
        train = self.kind != "eval"
        key: dict[str, Any] = {
            "kind": self.kind,
            "view": self.view,
            "leakage_filter": leakage_filter if train else "none",
            "image_ids": sorted(self.image_ids) if self.image_ids is not None else None,
            "max_images": self.max_images,
            "embed_dtype": self.embed_dtype,
            "mask_codec": None if train else self.mask_codec,
            "compress": self.compress,
            "shard_size": self.shard_size,
            "batch_size": self.batch_size,
            "threads": self.threads_per_worker,
            "seed": self.seed,
        }
        if train and self.stripe_bands:  # absent at 0: every existing key stays as it was
            key["stripe_bands"] = self.stripe_bands
        return key
