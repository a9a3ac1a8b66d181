"""Extract a feature cache from a segmenter checkpoint (``zeroseg extract CONFIG``).

:func:`get_features` is the entry point: it computes the cache key from the current inputs
(checkpoint fingerprint, dataset fingerprint, split, extraction config), reuses the entry when
:func:`~zeroseg.platform.features.cache.check_entry` finds it complete and unchanged, and
otherwise (re)builds it, logging why.

Building: the image list (for training kinds, only the images the split's leakage filter keeps)
is cut into shards of ``shard_size`` images in ascending image id. Each shard is processed by a
:class:`ShardExtractor`, which loads the checkpoint once and runs the segmenter in batches of
``batch_size`` within the shard, with the matcher's random points seeded per batch from
``(seed, first image id of the batch)``. The shard's bytes therefore depend on the shard alone,
not on which worker ran it: ``workers=1`` runs the extractor in this process (no Ray),
``workers=N`` runs N Ray actors (one checkpoint load each) and gives byte-identical shards.
Actors return the shard bytes and the driver writes them, so workers need no shared filesystem;
at most one shard per actor is in flight, which bounds the driver's memory.

The segmenter (``zeroseg.methods.segmenter``: torch, the model) is imported by the functions that
load it: ``zeroseg.platform.features`` also serves readers of finished caches (the dashboard, the
methods' training data), which need neither.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zeroseg.platform.compat import ensure_torchvision, ray_init_address, ray_runtime_env
from zeroseg.platform.data.classes import Split
from zeroseg.platform.data.layout import CocoLayout, dataset_layout
from zeroseg.platform.data.leakage import filter_training
from zeroseg.platform.data.registry import dataset_split
from zeroseg.platform.data.sources import (
    benchmark_sources,
    list_images,
    require_sources,
    target_reader,
)
from zeroseg.platform.errors import ConfigError, DataError, ZerosegError
from zeroseg.platform.features.cache import (
    CACHE_FORMAT,
    CacheWriter,
    annotation_files_fingerprint,
    cache_inputs,
    cache_key,
    check_entry,
    encode_masks,
    encode_shard,
    entry_lock,
)
from zeroseg.platform.features.config import ExtractConfig
from zeroseg.platform.features.reader import FeatureCache

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ExtractResult:
    cache: FeatureCache
    key: str
    status: str  # "built" or "reused"
    reason: str  # why it was (re)built, or "cache hit"
    seconds: float

    @property
    def path(self) -> Path:
        return self.cache.path

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "status": self.status, "reason": self.reason,
                "path": str(self.path), "kind": self.cache.kind, "counts": self.cache.counts,
                "shards": len(self.cache.index["shards"]), "bytes": self.cache.size_bytes,
                "seconds": round(self.seconds, 3)}

    def format(self) -> str:
        d = self.to_dict()
        counts = ", ".join(f"{k} {v}" for k, v in d["counts"].items())
        return "\n".join([
            f"feature cache {d['key']} ({d['kind']}): {d['status']} ({d['reason']})",
            f"  path: {d['path']}",
            f"  counts: {counts}",
            f"  size: {d['shards']} shards, {d['bytes'] / 2**20:.2f} MiB",
            f"  time: {d['seconds']:.1f} s",
        ])


# -- inputs ------------------------------------------------------------------------------------
def read_checkpoint_meta(checkpoint: Path) -> tuple[str, dict[str, Any]]:
    """The checkpoint's fingerprint and checked ``meta.json`` (the model itself is not loaded)."""
    from zeroseg.methods.segmenter.checkpoint import checkpoint_fingerprint, read_meta

    meta = read_meta(checkpoint)
    return checkpoint_fingerprint(checkpoint), meta


def resolve_leakage_filter(config: ExtractConfig, split: Split, class_ids: Sequence[int],
                           where: str) -> str:
    """``test`` / ``validation`` / ``none`` for a training extraction (``auto`` resolved from
    the classes the checkpoint was trained on)."""
    if config.kind == "eval":
        return "none"
    if config.leakage_filter != "auto":
        return config.leakage_filter
    trained = set(class_ids)
    excluded = {c.id for c in split.classes} - trained
    unseen = {c.id for c in split.classes if c.unseen}
    held_out = {c.id for c in split.classes if c.val_unseen}
    if not excluded:
        log.warning("%s: the segmenter was trained on every class of %s (an oracle); its "
                    "training features are extracted without a leakage filter", where, split.name)
        return "none"
    if excluded == unseen:
        return "test"
    if held_out and excluded == unseen | held_out:
        return "validation"
    raise ConfigError(f"{where}: the checkpoint's classes exclude {len(excluded)} classes of "
                      f"{split.name}, which are neither its unseen classes nor unseen + held-out; "
                      "set leakage_filter to test, validation or none")


def select_images(config: ExtractConfig, layout: CocoLayout, split: Split,
                  leakage_filter: str) -> tuple[list[int], dict[int, tuple[int, int]],
                                                dict[str, Any]]:
    """Image ids to extract (ascending), their (height, width), and the leakage audit."""
    require_sources(layout, split, "feature extraction")
    images = list_images(layout, benchmark_sources(split))
    sizes = {i: (info.height, info.width) for i, info in images.items()}
    allowed = sorted(sizes)
    audit: dict[str, Any] = {"filter": leakage_filter}
    if leakage_filter in ("test", "validation"):
        result = filter_training(layout, split, validation=leakage_filter == "validation")
        allowed = sorted(result.kept_image_ids)
        audit.update({"protocol": result.protocol, "excluded_classes": result.excluded_classes,
                      "images_total": result.images_total, "images_kept": result.images_kept,
                      "images_dropped": result.images_dropped})
    if config.image_ids is not None:
        allowed_set = set(allowed)
        refused = [i for i in config.image_ids if i not in allowed_set]
        if refused:
            why = "dropped by the leakage filter or " if leakage_filter != "none" else ""
            raise ConfigError(f"image_ids: {len(refused)} ids are {why}not images of "
                              f"{layout.root} split {layout.split} (first: {refused[:5]})")
        allowed = sorted(config.image_ids)
    if config.max_images is not None:
        allowed = allowed[:config.max_images]
    if not allowed:
        raise DataError(f"{layout.root}: no images of split {layout.split} left to extract")
    return allowed, sizes, audit


# -- the per-shard work ------------------------------------------------------------------------
@dataclass(frozen=True)
class ExtractionJob:
    """Everything a worker needs, picklable (sent once to each Ray actor)."""

    checkpoint: str
    root: str
    data_split: str
    kind: str
    label_split: Split  # the label space of the stored class indices
    embed_dtype: str
    mask_codec: str
    compress: bool
    batch_size: int
    seed: int
    threads: int
    device: str
    image_ids: tuple[int, ...]  # every image of the extraction (the dataset view is built once)
    stripe_bands: int = 0  # train kinds: per-query mask mass over unlabelled pixels per band


def batch_seed(seed: int, first_image_id: int) -> int:
    digest = hashlib.sha256(f"zeroseg-features:{seed}:{first_image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class ShardExtractor:
    """Loads the checkpoint once; turns a list of image ids into one shard's bytes."""

    def __init__(self, job: ExtractionJob):
        ensure_torchvision()
        import torch

        from zeroseg.methods.segmenter.checkpoint import load_segmenter
        from zeroseg.methods.segmenter.data import SegmentationDataset

        self.job = job
        self.torch = torch
        if job.threads:
            torch.set_num_threads(job.threads)
        self.model, self.meta = load_segmenter(Path(job.checkpoint))
        self.model.eval().to(job.device)
        self.class_ids = [int(c) for c in self.meta["class_ids"]]
        id_to_index = job.label_split.id_to_index()
        missing = [c for c in self.class_ids if c not in id_to_index]
        if missing:
            raise ConfigError(f"{job.checkpoint}: the segmenter classifies category ids "
                              f"{missing[:5]} that split {job.label_split.name} does not have")
        # classifier index -> (split contiguous index, category id)
        self.to_split = np.array([id_to_index[c] for c in self.class_ids], dtype=np.int64)
        self.to_category = np.array(self.class_ids, dtype=np.int64)
        self.no_object = job.label_split.num_classes
        self.image_size = int(self.meta["config"]["image_size"])
        self.resize = self.model.config.resize_spec()
        self.layout = dataset_layout(Path(job.root), job.data_split, job.label_split.dataset)
        self._dataset_cls = SegmentationDataset
        self._dataset: Any = None
        self._positions: dict[int, int] = {}

    def _items(self, image_ids: Sequence[int]) -> list[dict[str, Any]]:
        if self._dataset is None:  # built once per worker, over the extraction's images

            # Images as at inference (no jitter, no crop), targets of the benchmark's source.
            self._dataset = self._dataset_cls(
                self.layout, self.class_ids, list(self.job.image_ids),
                image_size=self.image_size, augment=False, resize=self.resize, train=False,
                targets=target_reader(self.layout, self.job.label_split))
            self._positions = {image_id: pos for pos, image_id in enumerate(self.job.image_ids)}
        items = [self._dataset[self._positions[i]] for i in image_ids]
        got = [int(item["image_id"]) for item in items]
        if got != list(image_ids):
            raise DataError(f"{self.layout.root}: the dataset returned images {got[:5]} "
                            f"for {list(image_ids)[:5]}")
        return items

    def process(self, number: int, image_ids: Sequence[int],
                sizes: Sequence[tuple[int, int]]) -> tuple[int, bytes, dict[str, Any]]:
        """Shard ``number``: returns (number, npz bytes, {rows, embed_dim, num_queries, ...})."""
        from zeroseg.methods.segmenter.data import collate_segmentation

        torch = self.torch
        job = self.job
        parts: list[dict[str, np.ndarray]] = []
        # Aspect-preserving resize: one image at a time, padded to its own multiple of 32, as
        # Mask2Former evaluates (batch padding would change what the model sees).
        step = job.batch_size if self.resize.mode == "squash" else 1
        for start in range(0, len(image_ids), step):
            ids = list(image_ids[start:start + step])
            batch = collate_segmentation(self._items(ids))
            torch.manual_seed(batch_seed(job.seed, ids[0]))
            with torch.inference_mode():
                output = self.model(batch["pixel_values"].to(job.device))
                if job.kind == "eval":
                    parts.append(self._eval_rows(ids, sizes[start:start + len(ids)], output,
                                                 batch))
                else:
                    masks = [m.to(job.device) for m in batch["mask_labels"]]
                    labels = [c.to(job.device) for c in batch["class_labels"]]
                    matches = self.model.match(output, masks, labels)
                    part = self._train_rows(ids, output, labels, matches)
                    if job.stripe_bands:  # train_all only (ExtractConfig.validate)
                        part.update(stripe_band_rows(output.mask_logits, masks,
                                                     job.stripe_bands))
                    parts.append(part)
        if job.kind == "eval" and self.resize.mode != "squash":
            _pad_masks_to_common_grid(parts)
        arrays = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        info: dict[str, Any] = {
            "rows": len(image_ids) if job.kind == "eval" else int(arrays["image_id"].shape[0]),
            "embed_dim": int(output.query_embeddings.shape[-1]),
            "num_queries": int(output.query_embeddings.shape[-2]),
            "targets": int(arrays["num_targets"].sum()) if "num_targets" in arrays else 0,
            "matched": int(arrays["matched"].sum()) if "matched" in arrays else 0,
        }
        if job.kind == "eval":
            info["mask_shape"] = [int(d) for d in arrays["mask"].shape[-2:]]
        return number, encode_shard(arrays, compress=job.compress), info

    def _eval_rows(self, ids: list[int], sizes: Sequence[tuple[int, int]],
                   output: Any, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        embed = output.query_embeddings.detach().float().cpu().numpy()
        rows = {
            "image_id": np.asarray(ids, dtype=np.int64),
            "height": np.asarray([s[0] for s in sizes], dtype=np.int32),
            "width": np.asarray([s[1] for s in sizes], dtype=np.int32),
            "embedding": embed.astype(self.job.embed_dtype),
            "class_logits": output.class_logits.detach().float().cpu().numpy(),
        }
        rows.update(encode_masks(output.mask_logits.detach().float().cpu().numpy(),
                                 self.job.mask_codec))
        if self.resize.mode != "squash":  # where the image sits in the model's input
            mask_h, mask_w = output.mask_logits.shape[-2:]
            input_h, input_w = batch["pixel_values"].shape[-2:]
            rows["frame"] = np.asarray([[mask_h, mask_w, input_h, input_w, *resized]
                                        for resized in batch["resized_size"]], dtype=np.int32)
        return rows

    def _train_rows(self, ids: list[int], output: Any, labels: list[Any],
                    matches: list[tuple[Any, Any]]) -> dict[str, np.ndarray]:
        embed = output.query_embeddings.detach().float().cpu().numpy()
        num_queries = embed.shape[1]
        keep_all = self.job.kind == "train_all"
        out: dict[str, list[np.ndarray]] = {k: [] for k in (
            "image_id", "query_index", "embedding", "class_index", "category_id", "matched")}
        for b, image_id in enumerate(ids):
            q_idx = matches[b][0].cpu().numpy().astype(np.int64)
            t_idx = matches[b][1].cpu().numpy().astype(np.int64)
            order = np.argsort(q_idx, kind="stable")
            q_idx, t_idx = q_idx[order], t_idx[order]
            cls = labels[b].cpu().numpy().astype(np.int64)[t_idx]
            queries = np.arange(num_queries) if keep_all else q_idx
            split_index = np.full(len(queries), self.no_object, dtype=np.int64)
            category = np.zeros(len(queries), dtype=np.int64)
            matched = np.zeros(len(queries), dtype=bool)
            pos = queries.searchsorted(q_idx) if keep_all else np.arange(len(q_idx))
            split_index[pos] = self.to_split[cls]
            category[pos] = self.to_category[cls]
            matched[pos] = True
            out["image_id"].append(np.full(len(queries), image_id, dtype=np.int64))
            out["query_index"].append(queries.astype(np.int64))
            out["embedding"].append(embed[b, queries].astype(self.job.embed_dtype))
            out["class_index"].append(split_index)
            out["category_id"].append(category)
            out["matched"].append(matched)
        arrays = {k: np.concatenate(v) for k, v in out.items()}
        arrays["embedding"] = arrays["embedding"].reshape(-1, embed.shape[2])
        arrays["images"] = np.asarray(ids, dtype=np.int64)
        arrays["num_targets"] = np.asarray([len(c) for c in labels], dtype=np.int64)
        return arrays


def stripe_band_rows(mask_logits: Any, gt_masks: list[Any], bands: int
                     ) -> dict[str, np.ndarray]:
    """Per query of a batch: its mask's mass over the image's unlabelled pixels in ``bands``
    horizontal bands, and the unlabelled share of each band (ExtractConfig.stripe_bands).

    ``mask_logits [B, Q, h, w]`` (the segmenter's, at its mask resolution), ``gt_masks[b]
    [n, H, W]`` (the GT segments of seen classes in the input frame: a pixel in none of them
    is unlabelled, as Cap2Seg's ``label == -1``). The unlabelled map is area-averaged to ``h x
    w``; mask row ``r`` lies in band ``r * bands // h``. With ``u`` the unlabelled share of a
    mask cell and ``N = h * w``: ``bands[q, j] = sum_{cells in band j} sigmoid(m_q) * u / N``,
    ``band_unlabelled[j] = sum_{cells in band j} u / N``; rows in the ``train_all`` order (every
    query of image 0, then image 1, ...)."""
    import torch
    import torch.nn.functional as F

    b, q, h, w = mask_logits.shape
    band_of_row = torch.arange(h, device=mask_logits.device) * bands // h
    onehot = F.one_hot(band_of_row, bands).to(torch.float32)  # [h, R]
    mass, unlabelled = [], []
    for i in range(b):
        gt = gt_masks[i]
        labelled = gt.any(0) if len(gt) else torch.zeros(gt.shape[-2:], dtype=torch.bool,
                                                         device=gt.device)
        u = F.interpolate((~labelled).to(torch.float32)[None, None], size=(h, w),
                          mode="area")[0, 0].to(mask_logits.device)
        per_row = (mask_logits[i].float().sigmoid() * u).sum(-1) / (h * w)  # [Q, h]
        mass.append((per_row @ onehot).cpu().numpy().astype(np.float32))
        share = ((u.sum(-1) / (h * w)) @ onehot).cpu().numpy().astype(np.float32)
        unlabelled.append(np.repeat(share[None], q, axis=0))
    return {"bands": np.concatenate(mass), "band_unlabelled": np.concatenate(unlabelled)}


def _pad_masks_to_common_grid(parts: list[dict[str, np.ndarray]]) -> None:
    """Pad each part's stored masks (bottom / right, zeros) to the shard's largest mask grid;
    each image's ``frame`` says which part is its own."""
    height = max(p["mask"].shape[-2] for p in parts)
    width = max(p["mask"].shape[-1] for p in parts)
    for p in parts:
        dh, dw = height - p["mask"].shape[-2], width - p["mask"].shape[-1]
        if dh or dw:
            pad = [(0, 0)] * (p["mask"].ndim - 2) + [(0, dh), (0, dw)]
            p["mask"] = np.pad(p["mask"], pad)


# -- running the shards ------------------------------------------------------------------------
Shard = tuple[int, list[int], list[tuple[int, int]]]


ShardResult = tuple[int, bytes, dict[str, Any]]


def _run_in_process(job: ExtractionJob, shards: list[Shard]) -> Iterator[ShardResult]:
    import torch

    previous = torch.get_num_threads()
    try:
        extractor = ShardExtractor(job)
        for shard in shards:
            yield extractor.process(*shard)
    finally:
        torch.set_num_threads(previous)


def _run_on_ray(job: ExtractionJob, shards: list[Shard], workers: int) -> Iterator[ShardResult]:
    import ray
    from ray.util import ActorPool

    runtime_env = ray_runtime_env({"env_vars": {"HF_HUB_OFFLINE": "1"}})
    started = False
    if not ray.is_initialized():
        ray.init(address=ray_init_address(),
                 num_cpus=max(workers * job.threads, os.cpu_count() or 1),
                 include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env=runtime_env)
        started = True
    actors: list[Any] = []
    try:
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        per_actor = min(float(job.threads), cpus / workers)
        if per_actor < job.threads:
            log.warning("Ray has %.0f CPUs for %d workers x %d threads; each actor gets %.2f",
                        cpus, workers, job.threads, per_actor)
        remote = ray.remote(ShardExtractor).options(num_cpus=per_actor, runtime_env=runtime_env)
        actors = [remote.remote(job) for _ in range(workers)]
        pool = ActorPool(actors)
        try:
            yield from pool.map_unordered(lambda actor, shard: actor.process.remote(*shard),
                                          shards)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ZerosegError):
                raise type(cause)(str(cause)) from None
            raise
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()


# -- the entry point ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ExtractionPlan:
    """What an extraction reads and where its cache entry lives (computed without building)."""

    config: ExtractConfig
    split: Split  # the benchmark split (leakage filter, dataset fingerprint)
    label_split: Split  # the label space of stored class indices (split or its validation view)
    layout: CocoLayout
    meta: dict[str, Any]  # the checkpoint's meta.json
    leakage_filter: str  # resolved: test / validation / none
    inputs: dict[str, Any]  # what the key hashes (recorded in index.json)
    key: str

    @property
    def entry(self) -> Path:
        return Path(self.config.cache_dir) / self.key


def plan_extraction(config: ExtractConfig) -> ExtractionPlan:
    """Resolve the inputs of ``config`` and compute its cache key (reads only small files)."""
    split = dataset_split(config.benchmark, config.data,
                          missing_hint="; set 'benchmark' to a split name (see `zeroseg data "
                                       "list`)")
    label_split = split.validation_view() if config.view == "validation" else split
    layout = dataset_layout(Path(config.data), config.split, split.dataset)
    fingerprint, meta = read_checkpoint_meta(config.checkpoint)
    leakage = resolve_leakage_filter(config, split, meta["class_ids"], str(config.checkpoint))
    inputs = cache_inputs(fingerprint, annotation_files_fingerprint(layout, split), split,
                          config.key_config(leakage))
    inputs["label_split"] = cache_inputs(fingerprint, {}, label_split, {})["split"]
    return ExtractionPlan(config, split, label_split, layout, meta, leakage, inputs,
                          cache_key(inputs))


def feature_key(config: ExtractConfig) -> str:
    """The cache key ``config`` addresses with the current files."""
    return plan_extraction(config).key


def get_features(config: ExtractConfig, *, progress: Progress | None = None) -> ExtractResult:
    """The feature cache of ``config``'s inputs: reused when valid, else (re)built."""
    started = time.perf_counter()
    plan = plan_extraction(config)
    key, entry = plan.key, plan.entry
    with entry_lock(Path(config.cache_dir), key):
        reason = "rebuild requested" if config.rebuild else check_entry(entry, key, plan.inputs)
        if reason is None:
            log.info("feature cache %s: reusing %s", key, entry)
            return ExtractResult(FeatureCache.open(entry, verify=False), key, "reused",
                                 "cache hit", time.perf_counter() - started)
        if entry.exists():  # replaced atomically by the new entry; kept if the build fails
            log.warning("feature cache %s: rebuilding (%s)", key, reason)
        else:
            log.info("feature cache %s: building (%s)", key, reason)
        _build(plan, progress)
    cache = FeatureCache.open(entry, verify=False)
    return ExtractResult(cache, key, "built", reason, time.perf_counter() - started)


def _build(plan: ExtractionPlan, progress: Progress | None) -> Path:
    config, layout, split, label_split = plan.config, plan.layout, plan.split, plan.label_split
    leakage, meta, key, inputs = plan.leakage_filter, plan.meta, plan.key, plan.inputs
    image_ids, sizes, audit = select_images(config, layout, split, leakage)
    shards: list[Shard] = []
    for number, start in enumerate(range(0, len(image_ids), config.shard_size)):
        ids = image_ids[start:start + config.shard_size]
        shards.append((number, ids, [sizes[i] for i in ids]))
    job = ExtractionJob(
        checkpoint=str(Path(config.checkpoint).resolve()), root=str(Path(config.data).resolve()),
        data_split=config.split, kind=config.kind, label_split=label_split,
        embed_dtype=config.embed_dtype, mask_codec=config.mask_codec, compress=config.compress,
        batch_size=config.batch_size, seed=config.seed, threads=config.threads_per_worker,
        device=config.device, image_ids=tuple(image_ids), stripe_bands=config.stripe_bands)
    workers = min(config.workers, len(shards))
    started = time.perf_counter()
    done_images = 0
    totals = {"rows": 0, "targets": 0, "matched": 0}
    shape: dict[str, Any] = {}
    with CacheWriter(Path(config.cache_dir), key) as writer:
        results = (_run_in_process(job, shards) if workers == 1
                   else _run_on_ray(job, shards, workers))
        for number, data, info in results:
            writer.add_shard(number, data, shards[number][1], info["rows"])
            done_images += len(shards[number][1])
            for name in totals:
                totals[name] += info[name]
            shape = {k: info[k] for k in ("embed_dim", "num_queries", "mask_shape") if k in info}
            if progress is not None:
                progress(done_images, len(image_ids))
        counts = {"images": len(image_ids), "shards": len(shards), "rows": totals["rows"]}
        if config.kind != "eval":
            counts.update(targets=totals["targets"], matched=totals["matched"])
        index = {
            "format": CACHE_FORMAT, "key": key, "kind": config.kind, "inputs": inputs,
            "config": key_config_with_paths(config, leakage),
            "split": split.name, "label_split": label_split.name,
            "split_class_ids": [c.id for c in label_split.classes],
            "split_class_names": label_split.names,
            "no_object_index": label_split.num_classes,
            "checkpoint": {"path": str(config.checkpoint), "class_ids": meta["class_ids"],
                           "config": meta["config"],
                           **{k: meta[k] for k in ("split", "step", "train_config_hash")
                              if k in meta}},
            **shape,
            "counts": counts, "leakage": audit,
            "runtime": {"workers": workers, "threads_per_worker": config.threads_per_worker,
                        "device": config.device,
                        "seconds": round(time.perf_counter() - started, 3)},
            "created_by": _versions(),
        }
        return writer.commit(index)


def key_config_with_paths(config: ExtractConfig, leakage: str) -> dict[str, Any]:
    return {**config.key_config(leakage), "data": str(config.data), "data_split": config.split,
            "benchmark": config.benchmark}


def _versions() -> dict[str, str]:
    import platform as stdlib_platform
    from importlib import metadata

    out = {"cache_format": str(CACHE_FORMAT), "numpy": np.__version__,
           "python": stdlib_platform.python_version()}
    for dist in ("zeroseg", "torch", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "unknown"
    return out
