"""The stages of a run, each an artifact addressed by the hash of what it depends on.

::

    dataset          data.root (generated from data.synthetic when missing) + its fingerprint
    embeddings       class embeddings of the split (platform/embeddings cache)
    segmenter        per protocol and kind (zero-shot / oracle): WORK/segmenters/<kind>-<hash>/
                     hash = training identity + steps + dataset fingerprint; trained with Ray
                     Train + DeepSpeed (platform/training), resumed from its checkpoints when a
                     previous attempt was interrupted, reused when finished
    features         per segmenter: ``train_all`` over the (leakage-filtered) training images,
                     ``eval`` over the evaluation images (platform/features cache)
    eval dataset     the evaluation images as the protocol scores them (the test split as is;
                     the validation view with the test unseen classes erased)
    method stages    the extra stages a method declares (MethodSpec.stages), per protocol:
                     WORK/stages/<name>-<protocol>-<hash>/, hash = the stage's params and
                     version + dataset fingerprint + label space + class embeddings

:class:`Pipeline` resolves these lazily and keeps them in memory, so the runs of one ``zeroseg
run`` and the trials of a sweep worker share one segmenter, one cache and one copy of the
training features. Methods, inference and evaluation are in :mod:`.runner`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zeroseg.methods.registry import StageInputs, StageSpec
from zeroseg.methods.segmenter.checkpoint import class_head_in_split
from zeroseg.platform.config import config_hash, to_dict
from zeroseg.platform.data.classes import Split
from zeroseg.platform.data.layout import CocoLayout, dataset_layout
from zeroseg.platform.data.leakage import validation_eval_dataset
from zeroseg.platform.data.registry import dataset_split
from zeroseg.platform.data.sources import check_dataset
from zeroseg.platform.data.synthetic.generate import generate
from zeroseg.platform.embeddings import (
    check_embeddings,
    compute_class_embeddings,
    resolve_embedding_config,
)
from zeroseg.platform.errors import ConfigError
from zeroseg.platform.features import ExtractConfig, get_features
from zeroseg.platform.io import atomic_directory, atomic_write_json, check_writable_dir
from zeroseg.platform.pipeline.config import PipelineConfig
from zeroseg.platform.pipeline.evaluate import CachedEvaluation
from zeroseg.platform.store import open_writable_store
from zeroseg.platform.training.config import DataConfig, OutputConfig, SegmenterTrainConfig
from zeroseg.platform.training.ray_runner import run_training, training_annotations_fingerprint

log = logging.getLogger(__name__)

Progress = Callable[[str], None]  # one human-readable line per stage event

SEGMENTER_STAMP = "zeroseg_stage.json"
METHOD_STAGE_STAMP = "zeroseg_stage.json"

#: What each embedding provider's text encoder was (pre)trained on (the leakage audit).
TEXT_ENCODER_PRETRAINING = {
    "attributes": "none: attribute vectors through a fixed random projection (no text model)",
    "word2vec": "text only (word2vec on a text corpus): no images, no pixel labels",
    "file": "the authors' published vectors (word2vec / fastText: text only)",
    "clip": "image-text pairs (CLIP): its pretraining images may contain unseen classes",
}


@dataclass
class SegmenterArtifact:
    kind: str  # "zero-shot" | "oracle"
    protocol: str  # "test" | "validation"
    run_dir: Path
    checkpoint: Path  # RUN_DIR/segmenter (save_segmenter format)
    key: str
    results: dict[str, Any]  # the training's results.json (leakage filter, audit, timing)
    reused: bool


@dataclass
class ProtocolContext:
    """Everything a method run needs on one protocol, resolved once per pipeline."""

    protocol: str
    kind: str  # "zero-shot" | "oracle" (the segmenter's) | "model" (a model method's own)
    label_split: Split  # the test split, or its validation view
    class_embeddings: np.ndarray  # [C, d] rows of label_split
    segmenter: SegmenterArtifact | None  # None for a model method: it trains its own model
    eval_layout: CocoLayout  # what predictions are scored against
    eval_cache: Any | None  # FeatureCache (kind eval); None for a model method
    train_cache: Any | None  # FeatureCache (kind train_all), when a method needs it
    _features: dict[str, Any] = field(default_factory=dict)
    _head: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    _evaluation: Any = None

    def evaluation(self) -> Any:
        """The in-memory evaluation of this protocol (:class:`.evaluate.CachedEvaluation`):
        cached outputs and ground truth read once, shared by every run and trial here."""
        if self._evaluation is None:
            self._evaluation = CachedEvaluation(self.eval_cache, self.eval_layout,
                                                self.label_split)
        return self._evaluation

    def features(self, kind: str) -> Any:
        """TrainFeatures: ``train`` = matched queries (the real class embeddings), ``train_all``
        = every query with its target (matched class or no-object); loaded once."""
        if kind not in ("train", "train_all"):
            raise ConfigError(f"feature kind must be train or train_all, got {kind!r}")
        if self.train_cache is None:
            raise ConfigError("this protocol context was built without training features")
        if kind not in self._features:
            self._features[kind] = self.train_cache.train_features(
                matched_only=kind == "train")
        return self._features[kind]

    def segmenter_head(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._head is None:
            self._head = class_head_in_split(self.segmenter.checkpoint, self.label_split)
        return self._head

    @property
    def embed_dim(self) -> int:
        return int(self.eval_cache.embed_dim)


class Pipeline:
    """Lazily built, memoised stages for one :class:`PipelineConfig`."""

    def __init__(self, config: PipelineConfig, *, progress: Progress | None = None,
                 verbose: bool = False, ray_address: str | None = None):
        self.config = config
        self.work = Path(config.work_dir).expanduser().resolve()
        self.progress = progress or (lambda line: log.info("%s", line))
        self.verbose = verbose
        self.ray_address = ray_address
        self._split: Split | None = None
        self._fingerprint: str | None = None
        self._embeddings: Any = None
        self._contexts: dict[tuple[str, str], ProtocolContext] = {}

    def derive(self, config: PipelineConfig) -> Pipeline:
        """A pipeline for ``config`` that shares this one's resolved stages. ``config`` may
        differ in method params, seeds, name, store and selection note; anything that shapes the
        stages (data, embedding, segmenter, features, work_dir) must be equal."""
        shared = ("data", "embedding", "segmenter", "features", "work_dir")
        changed = [k for k in shared if to_dict(getattr(config, k)) !=
                   to_dict(getattr(self.config, k))]
        other = Pipeline(config, progress=self.progress, verbose=self.verbose,
                         ray_address=self.ray_address)
        if not changed:
            other._split, other._fingerprint = self._split, self._fingerprint
            other._embeddings, other._contexts = self._embeddings, self._contexts
        return other

    # -- paths -------------------------------------------------------------------------------
    @property
    def data_root(self) -> Path:
        return Path(self.config.data.root).expanduser().resolve()

    def layout(self, data_split: str) -> CocoLayout:
        """Where ``data_split`` lives: the COCO layout, or the VOC tree of a VOC benchmark."""
        return dataset_layout(self.data_root, data_split, self.split.dataset)

    @property
    def store_url(self) -> str:
        import os

        return self.config.store or os.environ.get("ZEROSEG_STORE") or str(
            self.work / "results.db")

    def check_outputs(self) -> None:
        """Before the first expensive stage: the work dir (segmenters, caches, runs) and, when
        the dataset is still to be generated, data.root's folder must be writable, and the
        results store must open (found or created, a zeroseg store of this schema version)
        and take a write. Each failure is one line naming the path or store."""
        check_writable_dir(self.work, "work_dir (segmenters, feature caches, runs)")
        if not self.data_root.exists() and self.config.data.synthetic is not None:
            check_writable_dir(self.data_root.parent, "synthetic dataset (data.root)")
        open_writable_store(self.store_url).close()

    def check_inputs(self) -> None:
        """Before the first expensive stage: the annotation files the benchmark's task needs
        (training and evaluation splits, :func:`~zeroseg.platform.data.sources.check_dataset`)
        and a class vector for every class of the split, each a one-line error naming the file
        / provider and what was expected."""
        d = self.config.data
        check_dataset(self.layout(d.train_split), self.split, "training")
        check_dataset(self.layout(d.eval_split), self.split, "evaluation")
        check_embeddings(self.split, self.config.embedding.as_config(),
                         cache_dir=self.work / "cache" / "embeddings")

    # -- dataset and split -------------------------------------------------------------------
    def ensure_dataset(self) -> None:
        d = self.config.data
        if self.data_root.exists():
            return
        if d.synthetic is None:
            raise ConfigError(f"data.root: {self.data_root} not found (give data.synthetic "
                              f"{{size, seed}} to generate the synthetic benchmark there)")

        self.progress(f"generating the synthetic benchmark '{d.synthetic.size}' (seed "
                      f"{d.synthetic.seed}) into {self.data_root}")
        generate(d.synthetic.size, d.synthetic.seed, self.data_root,
                 variant=d.synthetic.variant)

    @property
    def split(self) -> Split:
        if self._split is None:
            self.ensure_dataset()
            d = self.config.data
            self._split = dataset_split(
                d.benchmark, self.data_root, d.train_split,
                missing_hint=", so it is not a synthetic benchmark; for real data run the "
                             "benchmark's config (configs/<split>.yaml, README 'Real data') or "
                             "set data.benchmark to a split of `zeroseg data list`")
        return self._split

    @property
    def dataset_fingerprint(self) -> str:
        if self._fingerprint is None:
            # The files first: a fingerprint taken before the synthetic benchmark exists would
            # hash nothing, and key the segmenters by it (a re-run would not find them).
            self.ensure_dataset()
            d = self.config.data
            self._fingerprint = training_annotations_fingerprint(self.data_root, (d.train_split,
                                                                     d.eval_split), self.split)
        return self._fingerprint

    @property
    def embeddings(self) -> Any:
        """EmbeddingResult for every class of the split (views take their rows)."""
        if self._embeddings is None:
            self._embeddings = compute_class_embeddings(
                self.split, resolve_embedding_config(self.split,
                                                     self.config.embedding.as_config()),
                self.work / "cache" / "embeddings")
            self.progress(f"class embeddings: {self.config.embedding.provider}, "
                          f"{self._embeddings.matrix.shape[0]} x "
                          f"{self._embeddings.matrix.shape[1]} ({self._embeddings.cache_status})")
        return self._embeddings

    def label_split(self, protocol: str) -> Split:
        return self.split if protocol == "test" else self.split.validation_view()

    def embeddings_for(self, label_split: Split) -> np.ndarray:
        full = self.embeddings.matrix
        index = self.split.id_to_index()
        return np.ascontiguousarray(full[[index[c.id] for c in label_split.classes]])

    # -- segmenter ---------------------------------------------------------------------------
    def segmenter_config(self, protocol: str, kind: str, run_dir: Path) -> Any:
        if kind == "oracle" and protocol != "test":
            raise ConfigError("evaluation.protocols: the supervised oracle trains on every "
                              "class; it has no validation protocol (nothing to tune)")
        d, s = self.config.data, self.config.segmenter
        data = DataConfig(root=self.data_root, benchmark=d.benchmark, train_split=d.train_split,
                          eval_split=d.eval_split, oracle=kind == "oracle",
                          validation=protocol == "validation", augment=s.augment,
                          synthetic=d.synthetic, scale_range=s.scale_range,
                          max_images=d.max_images)
        train = dataclasses.replace(s.train, eval=False)  # methods evaluate through the cache
        distributed = s.distributed
        if self.ray_address is not None:
            distributed = dataclasses.replace(distributed, address=self.ray_address)
        return SegmenterTrainConfig(data=data, model=s.model, optim=s.optim, train=train,
                                    distributed=distributed,
                                    output=OutputConfig(run_dir=run_dir))

    def segmenter(self, protocol: str, kind: str) -> SegmenterArtifact:
        probe = self.segmenter_config(protocol, kind, Path("unused"))
        key = config_hash({"identity": probe.resume_identity(), "steps": probe.train.steps,
                           "dataset": self.dataset_fingerprint})
        name = f"{'oracle' if kind == 'oracle' else protocol}-{key}"
        run_dir = self.work / "segmenters" / name
        stamp_path = run_dir / SEGMENTER_STAMP
        checkpoint = run_dir / "segmenter"
        if stamp_path.is_file() and (checkpoint / "model.pt").is_file():
            stamp = json.loads(stamp_path.read_text())
            if stamp.get("key") == key:
                self.progress(f"segmenter ({kind}, {protocol} protocol): reusing {run_dir}")
                return SegmenterArtifact(kind, protocol, run_dir, checkpoint, key,
                                         stamp.get("results", {}), reused=True)
        config = self.segmenter_config(protocol, kind, run_dir)
        self.progress(f"segmenter ({kind}, {protocol} protocol): training "
                      f"{config.train.steps} steps on {config.distributed.workers} worker(s), "
                      f"ZeRO {config.distributed.zero_stage}, {config.distributed.precision}")
        last = {"t": 0.0}

        def on_record(record: dict[str, Any]) -> None:
            import time

            if record.get("event") != "log" or time.monotonic() - last["t"] < 20:
                return
            last["t"] = time.monotonic()
            load = ""
            if "cpu_share" in record:  # a slow window explains itself: CPU it got, machine load
                load = (f" (CPU share {record['cpu_share']:.2f}, load {record['load_per_cpu']:.1f}"
                        f" per CPU)")
            self.progress(f"  segmenter step {record['step']}/{record.get('steps')}: loss "
                          f"{record['loss']:.3f}, {record['images_per_s']:.1f} images/s{load}")

        result = run_training(config, progress=on_record, verbose=self.verbose)
        results = {k: result.results.get(k) for k in (
            "split", "oracle", "validation", "classes_trained", "training_images", "dataset",
            "segmenter", "training", "audit", "leakage", "seconds", "config_hash")}
        atomic_write_json(stamp_path, {"key": key, "results": results}, indent=1)
        training = results.get("training") or {}
        self.progress(f"segmenter ({kind}, {protocol} protocol): done in "
                      f"{results.get('seconds', 0):.0f} s, {training.get('images_per_s', 0):.1f}"
                      f" images/s")
        beyond = training.get("targets_beyond_queries") or {}
        if beyond.get("images"):
            self.progress(f"  warning: {beyond['images']} training images had more targets than "
                          f"the {self.config.segmenter.model.resolved().num_queries} queries "
                          f"({beyond['targets']} targets "
                          f"could not be matched); raise segmenter.model.num_queries")
        return SegmenterArtifact(kind, protocol, run_dir, checkpoint, key, results,
                                 reused=False)

    # -- features ----------------------------------------------------------------------------
    def features(self, segmenter: SegmenterArtifact, kind: str, data_split: str) -> Any:
        f = self.config.features
        config = ExtractConfig(
            checkpoint=segmenter.checkpoint, data=self.data_root, split=data_split,
            benchmark=self.config.data.benchmark,
            view="validation" if segmenter.protocol == "validation" else "test", kind=kind,
            cache_dir=self.work / "cache" / "features", embed_dtype=f.embed_dtype,
            mask_codec=f.mask_codec, shard_size=f.shard_size, batch_size=f.batch_size,
            workers=f.workers, threads_per_worker=f.threads_per_worker, device=f.device,
            max_images=self.config.data.max_images,
            stripe_bands=f.stripe_bands if kind == "train_all" else 0)
        result = get_features(config)
        counts = ", ".join(f"{k} {v}" for k, v in result.cache.counts.items())
        self.progress(f"features {kind} ({segmenter.protocol} protocol, {data_split}): "
                      f"{result.status} ({counts}; {result.seconds:.1f} s)")
        return result.cache

    def eval_layout(self, protocol: str) -> CocoLayout:
        layout = self.layout(self.config.data.eval_split)
        if protocol == "test":
            return layout

        key = config_hash({"dataset": self.dataset_fingerprint, "split": self.split.name})
        return validation_eval_dataset(layout, self.split,
                                       self.work / "data" / f"validation-view-{key}")

    def model_context(self, protocol: str) -> ProtocolContext:
        """The memoised context of a model method on one protocol: the label space, its class
        embeddings and the evaluation data; no segmenter and no feature cache (the method
        trains and runs its own model, so none is built for it)."""
        ctx = self._contexts.get((protocol, "model"))
        if ctx is None:
            label_split = self.label_split(protocol)
            ctx = ProtocolContext(protocol=protocol, kind="model", label_split=label_split,
                                  class_embeddings=self.embeddings_for(label_split),
                                  segmenter=None, eval_layout=self.eval_layout(protocol),
                                  eval_cache=None, train_cache=None)
            self._contexts[(protocol, "model")] = ctx
        return ctx

    def context(self, protocol: str, kind: str, *, train_features: bool = True
                ) -> ProtocolContext:
        """The memoised context of one protocol and segmenter kind."""
        ctx = self._contexts.get((protocol, kind))
        if ctx is None or (train_features and ctx.train_cache is None):
            segmenter = self.segmenter(protocol, kind)
            d = self.config.data
            train_cache = (self.features(segmenter, "train_all", d.train_split)
                           if train_features else None)
            eval_cache = self.features(segmenter, "eval", d.eval_split)
            label_split = self.label_split(protocol)
            ctx = ProtocolContext(protocol=protocol, kind=kind, label_split=label_split,
                                  class_embeddings=self.embeddings_for(label_split),
                                  segmenter=segmenter, eval_layout=self.eval_layout(protocol),
                                  eval_cache=eval_cache, train_cache=train_cache)
            self._contexts[(protocol, kind)] = ctx
        return ctx

    # -- a method's extra stages -------------------------------------------------------------
    def method_stage(self, stage: StageSpec, method_config: Any, ctx: ProtocolContext) -> Path:
        """The folder ``stage`` was built into for ``ctx``'s protocol: built (atomically) on
        first use, found by the hash of its inputs after."""
        split = ctx.label_split
        key = config_hash({
            "stage": stage.name, "version": stage.version,
            "params": to_dict(dict(stage.params(method_config))),
            "dataset": self.dataset_fingerprint,
            "classes": [[c.name, bool(c.unseen)] for c in split.classes],
            "class_embeddings": hashlib.sha256(
                np.ascontiguousarray(ctx.class_embeddings, dtype=np.float32).tobytes()
            ).hexdigest()})
        folder = self.work / "stages" / f"{stage.name}-{ctx.protocol}-{key}"
        stamp = folder / METHOD_STAGE_STAMP
        if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
            self.progress(f"stage {stage.name} ({ctx.protocol} protocol): reusing {folder}")
            return folder
        self.progress(f"stage {stage.name} ({ctx.protocol} protocol): building {folder}")
        inputs = StageInputs(config=method_config, split=split,
                             class_embeddings=ctx.class_embeddings, data_root=self.data_root,
                             train_split=self.config.data.train_split,
                             eval_split=self.config.data.eval_split)
        with atomic_directory(folder, overwrite=True) as tmp:
            stage.build(inputs, tmp)
            atomic_write_json(tmp / METHOD_STAGE_STAMP, {"key": key, "stage": stage.name})
        return folder
