"""Run methods on the cached stages, evaluate the three tasks, write the results store.

One *run* is one method with one seed: on each protocol of ``evaluation.protocols`` the method
is fitted on that protocol's features (:class:`~zeroseg.methods.registry.MethodInputs`), its
classifier re-labels the cached query embeddings of the evaluation images, the segmenter's
inference writes the three COCO result formats, and the evaluators score them in every setting
(GZSL: all classes; ZSL: the classifier restricted to the unseen classes). The run is then
written to the results store in one transaction with its config, config hash, code version,
dataset fingerprint, seed, metrics, curves, leakage audit and artifact paths.

A run is identified by (kind, config hash, method, seed, protocols, code version; for a
reproduction, its trial): :func:`identity_key`. A run whose identity is already stored as
finished is not run again -- its stored record comes back as a ``reused`` outcome -- unless
``force``, which re-runs it and replaces the stored one (:meth:`Store.record_run`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zeroseg.methods.common import seeded
from zeroseg.methods.registry import (
    MethodHooks,
    MethodInputs,
    MethodOutput,
    MethodSpec,
    StopTrial,
    get_method,
)
from zeroseg.platform.data.classes import IGNORE_LABEL
from zeroseg.platform.data.leakage import filter_training, unseen_png_lut
from zeroseg.platform.data.sources import benchmark_sources, list_images
from zeroseg.platform.errors import LeakageError, ZerosegError
from zeroseg.platform.evaluation.summary import predicted_task
from zeroseg.platform.io import atomic_write_bytes
from zeroseg.platform.pipeline.config import EVAL_SPLIT, run_config_hash, run_identity
from zeroseg.platform.pipeline.stages import TEXT_ENCODER_PRETRAINING, Pipeline, ProtocolContext
from zeroseg.platform.store import (
    CurveRecord,
    MetricRecord,
    RunRecord,
    code_version,
    open_store,
    run_key,
)
from zeroseg.platform.training.config import DRIVER_CPUS
from zeroseg.platform.training.generator import GeneratorTrainer
from zeroseg.platform.training.model import ModelContext, ModelData, train_model
from zeroseg.platform.training.ray_runner import ensure_ray

log = logging.getLogger(__name__)

#: The sweep objective's curve: validation HM of the first task, per epoch.
OBJECTIVE_CURVE = "val/hm"


# -- classifiers for the two settings -------------------------------------------------------------
class RestrictedClassifier:
    """A classifier whose columns outside ``allowed`` (+ no-object) score -inf: ZSL predicts
    unseen classes only."""

    def __init__(self, classifier: Callable[[Any], Any], allowed: np.ndarray, num_classes: int):
        self.classifier = classifier
        mask = np.ones(num_classes + 1, dtype=bool)
        mask[np.asarray(allowed, dtype=np.int64)] = False
        mask[num_classes] = False
        self.blocked = torch.as_tensor(mask)

    def __call__(self, embeddings: Any) -> Any:
        logits = torch.as_tensor(self.classifier(embeddings)).float().clone()
        logits[..., self.blocked] = float("-inf")
        return logits


def setting_classifier(classifier: Callable[[Any], Any], split: Any, setting: str
                       ) -> Callable[[Any], Any]:
    if setting == "gzsl":
        return classifier
    unseen = np.array([c.index for c in split.classes if c.unseen], dtype=np.int64)
    return RestrictedClassifier(classifier, unseen, split.num_classes)


# -- evaluation -----------------------------------------------------------------------------------
def evaluate_classifier(ctx: ProtocolContext, classifier: Callable[[Any], Any], out_dir: Path,
                        tasks: Sequence[str], settings: Sequence[str], inference: Any,
                        keep: str = "sample", empty_classes: str = "zero"
                        ) -> dict[tuple[str, str], Any]:
    """Score ``classifier`` on the protocol's cached evaluation images, every task and setting,
    in memory (:mod:`.evaluate`); predictions are kept in ``out_dir/<setting>/`` as ``keep``
    says. Returns ``{(task, setting): EvalResult}``."""
    return ctx.evaluation().evaluate(classifier, tasks, settings, inference,
                                     setting_classifier=setting_classifier, out_dir=out_dir,
                                     keep=keep, empty_classes=empty_classes)


# -- one run --------------------------------------------------------------------------------------
@dataclass
class ProtocolResult:
    protocol: str
    evaluations: dict[tuple[str, str], Any]  # (task, setting) -> EvalResult
    output: Any  # MethodOutput
    predictions: Path
    seconds: float


@dataclass
class RunOutcome:
    method: str
    seed: int
    uid: str
    status: str
    protocols: dict[str, ProtocolResult] = field(default_factory=dict)
    run_id: int | None = None
    error: str | None = None
    seconds: float = 0.0
    record: Any = None  # the RunRecord written (for a reused run: the stored one's metrics)
    reused: bool = False  # the run was stored before: nothing ran (see identity_key)

    def fidelity(self) -> dict[str, Any] | None:
        """The generator fidelity diagnostics of the validation protocol, if the run has them
        (:mod:`zeroseg.methods.fidelity`)."""
        found = ((self.record.artifacts or {}).get("fidelity") or {}).get("val") \
            if self.record is not None else None
        return found

    def metric(self, protocol: str, task: str, setting: str, subset: str, metric: str
               ) -> float | None:
        pr = self.protocols.get(protocol)
        if pr is not None:
            if (task, setting) not in pr.evaluations:
                return None
            return getattr(pr.evaluations[(task, setting)], subset).get(metric)
        if self.record is None:
            return None
        key = (task, setting, EVAL_SPLIT[protocol], subset, None, metric)
        return next((m.value for m in self.record.metrics if m.key == key), None)


def identity_key(pipeline: Pipeline, method: str, seed: int, *, kind: str = "train",
                 source_run_id: int | None = None, protocols: Sequence[str] | None = None
                 ) -> str | None:
    """The run's identity in the store (:func:`~zeroseg.platform.store.run_key`); ``None`` for
    a sweep trial, which its sweep and trial id identify."""
    if kind == "trial":
        return None
    spec = get_method(method)
    protocols = run_protocols(spec, protocols or pipeline.config.evaluation.protocols)
    return run_key(kind=kind, config_hash=run_config_hash(pipeline.config, method),
                   method=method, seed=seed, eval_splits=[EVAL_SPLIT[p] for p in protocols],
                   code_version=code_version()[0],
                   source_run_id=source_run_id if kind == "reproduction" else None)


def stored_outcome(store: Any, key: str | None, method: str, seed: int) -> RunOutcome | None:
    """The outcome of a finished run already stored under ``key``, if there is one."""
    found = store.finished_run(key) if key else None
    if found is None:
        return None
    run = store.run(found["id"])
    fidelity = (run.get("artifacts") or {}).get("fidelity")
    record = RunRecord(kind=run["kind"], status="finished", method=method, seed=seed,
                       uid=run["uid"], run_key=key, source_run_id=run["source_run_id"],
                       artifacts={"fidelity": fidelity} if fidelity else {},
                       metrics=[MetricRecord(m["task"], m["setting"], m["eval_split"],
                                             m["subset"], m["metric"], m["value"],
                                             m["class_name"]) for m in run["metrics"]])
    return RunOutcome(method=method, seed=seed, uid=run["uid"], status="finished",
                      run_id=int(run["id"]), seconds=float(run["duration_s"] or 0.0),
                      record=record, reused=True)


EpochCallback = Callable[[str, int, Any], None]  # (protocol, epoch, classifier)


def run_one(pipeline: Pipeline, method: str, seed: int, *, kind: str = "train",
            uid: str | None = None, sweep: str | None = None, trial_id: str | None = None,
            source_run_id: int | None = None, protocols: Sequence[str] | None = None,
            epochs: int | Mapping[str, int] = 1, on_epoch: EpochCallback | None = None,
            record: bool = True, store: Any = None, keep_failed: bool = False,
            force: bool = False, run_key: str | None = None) -> RunOutcome:
    """Fit ``method`` with ``seed`` on each protocol, evaluate, build the store record
    (``outcome.record``) and, with ``record``, write it -- unless the same run (its
    :func:`identity_key`) is stored as finished already: then nothing runs and the stored
    run comes back (``outcome.reused``); ``force`` re-runs it and replaces the stored one.
    ``on_epoch(protocol, epoch, classifier)`` sees every training round's classifier
    (``epochs`` rounds, or per protocol);
    it may raise :class:`~zeroseg.methods.registry.StopTrial`, which ends the run as
    ``stopped`` (still recorded, with what it evaluated). A failed run is recorded and then
    raised (without ``record``: raised at once), unless ``keep_failed``: then the outcome says
    ``failed`` and carries its record. Method stages run with ``config.threads`` torch threads,
    so the same config and seed give the same numbers. ``run_key``: the identity the caller
    computed (:func:`run_many` passes the driver's to its tasks)."""
    config = pipeline.config
    spec = get_method(method)
    method_config = config.method_config(method)
    protocols = run_protocols(spec, protocols or config.evaluation.protocols)
    key = run_key or identity_key(pipeline, method, seed, kind=kind,
                                  source_run_id=source_run_id, protocols=protocols)
    if record and not force and key is not None:
        with _opened(pipeline, store) as opened:
            stored = stored_outcome(opened, key, method, seed)
        if stored is not None:
            return stored
    uid = uid or uuid.uuid4().hex
    run_dir = pipeline.work / "runs" / uid
    curves: list[tuple[str, int, float]] = []
    outcome = RunOutcome(method=method, seed=seed, uid=uid, status="finished")
    started = time.perf_counter()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(config.threads)
        for protocol in protocols:
            ctx = run_context(pipeline, spec, protocol)
            prefix = "" if protocol == "test" else f"{EVAL_SPLIT[protocol]}/"
            rounds = epochs.get(protocol, 1) if isinstance(epochs, Mapping) else epochs
            hooks = MethodHooks(
                epochs=rounds,
                on_epoch=(lambda e, c, p=protocol: on_epoch(p, e, c)) if on_epoch else None,
                on_curve=lambda n, s, v, pre=prefix: curves.append((pre + n, s, v)))
            outcome.protocols[protocol] = _fit_and_evaluate(pipeline, spec, method_config, ctx,
                                                            seed, run_dir, hooks)
    except StopTrial:
        outcome.status = "stopped"
    except ZerosegError as exc:
        outcome.status, outcome.error = "failed", str(exc)
        if not record and not keep_failed:
            raise
    finally:
        torch.set_num_threads(threads)
    outcome.seconds = time.perf_counter() - started
    outcome.record = build_record(pipeline, spec, method_config, outcome, curves, kind=kind,
                                  sweep=sweep, trial_id=trial_id, source_run_id=source_run_id,
                                  run_key=key)
    if record:
        outcome.run_id = write_record(pipeline, outcome.record, store, replace=force)
    if outcome.status == "failed" and not keep_failed:
        raise ZerosegError(outcome.error or f"run of {method} failed")
    return outcome


def run_protocols(spec: MethodSpec, protocols: Sequence[str]) -> list[str]:
    """The protocols a run of ``spec`` fits (an oracle segmenter exists for ``test`` only)."""
    if spec.segmenter == "oracle":
        return [p for p in protocols if p == "test"] or ["test"]
    return list(protocols)


def run_context(pipeline: Pipeline, spec: MethodSpec, protocol: str) -> ProtocolContext:
    """The shared stages (segmenter, feature caches, class embeddings) a run of ``spec`` reads
    on ``protocol``, built on first use and found by their inputs' hash after. A model method
    reads no segmenter or cache: its context has the label space and evaluation data only."""
    if spec.kind == "model":
        return pipeline.model_context(protocol)
    return pipeline.context(protocol, "oracle" if spec.segmenter == "oracle" else "zero-shot",
                            train_features=bool(spec.features))


def _fit_and_evaluate(pipeline: Pipeline, spec: MethodSpec, method_config: Any,
                      ctx: ProtocolContext, seed: int, run_dir: Path, hooks: MethodHooks
                      ) -> ProtocolResult:
    started = time.perf_counter()
    work = run_dir / ctx.protocol
    work.mkdir(parents=True, exist_ok=True)
    if spec.kind == "model":
        return _train_and_evaluate_model(pipeline, spec, method_config, ctx, seed, run_dir,
                                         hooks)
    if spec.features:
        check_no_leakage(ctx)
    inputs = method_inputs(pipeline, spec, method_config, ctx, seed, work)
    with seeded(seed):
        output = spec.fit(method_config, inputs, hooks)
    if output.classifier is None:
        raise ZerosegError(f"method {spec.name} returned no classifier")
    if output.synthetic is not None:
        fakes, labels = output.synthetic
        path = work / "synthetic_unseen.npz"
        buffer = io.BytesIO()
        np.savez_compressed(buffer, embeddings=fakes, class_index=labels)
        atomic_write_bytes(path, buffer.getvalue())
        output.artifacts["synthetic_unseen"] = str(path)
    evaluation = pipeline.config.evaluation
    predictions = run_dir / "predictions" / ctx.protocol
    results = evaluate_classifier(ctx, output.classifier, predictions, evaluation.tasks,
                                  evaluation.settings, evaluation.inference,
                                  evaluation.keep_predictions, evaluation.empty_classes)
    return ProtocolResult(ctx.protocol, results, output, predictions,
                          time.perf_counter() - started)


def _train_and_evaluate_model(pipeline: Pipeline, spec: MethodSpec, method_config: Any,
                              ctx: ProtocolContext, seed: int, run_dir: Path,
                              hooks: MethodHooks) -> ProtocolResult:
    """A model method: its ``train`` on Ray Train (per-epoch GZSL predictions to
    ``hooks.on_epoch``, metrics as ``model/<name>`` curves), its predictions of the last state
    scored by the platform's evaluators in every task and setting."""
    started = time.perf_counter()
    work = run_dir / ctx.protocol
    data = model_data(pipeline, spec, method_config, ctx)
    context = ModelContext(spec.name, method_config, seed, data)
    # Bad input: a one-line error before training; what the check found joins the audit.
    audit = dict(spec.model.check(method_config, context) or {}) if spec.model.check else {}

    def on_epoch(epoch: int, state: dict[str, Any]) -> None:
        # The per-epoch probe (a sweep's) is the GZSL semantic evaluation: a method without
        # semantic predictions (a detector) is not asked to predict every epoch for it.
        predicted = "semantic" in spec.model.tasks
        hooks.epoch(epoch, spec.model.predict(method_config, context, state, "gzsl")
                    if predicted else None)

    epochs = getattr(method_config, "epochs", None)

    def on_metrics(epoch: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            hooks.curve(f"model/{name}", epoch, value)
        headline = [k for k in ("loss", "images_per_second") if k in metrics] or list(metrics)[:3]
        shown = ", ".join(f"{name.replace('_', ' ')} {metrics[name]:.4g}" for name in headline)
        pipeline.progress(f"  {spec.name} ({ctx.protocol} protocol, seed {seed}) epoch "
                          f"{epoch}{f'/{epochs}' if epochs else ''}: {shown}")

    with seeded(seed):
        state = train_model(spec.name, method_config, seed, data,
                            pipeline.config.method_training, work / "ray",
                            on_epoch=on_epoch if hooks.on_epoch is not None else None,
                            on_metrics=on_metrics)
    path = work / "model.pt"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    evaluation = pipeline.config.evaluation
    predictions = run_dir / "predictions" / ctx.protocol
    results = ctx.evaluation().evaluate_predictions(
        lambda setting: spec.model.predict(method_config, context, state, setting),
        [t for t in evaluation.tasks if predicted_task(t) in spec.model.tasks],
        evaluation.settings,
        out_dir=predictions, keep=evaluation.keep_predictions,
        empty_classes=evaluation.empty_classes)
    output = MethodOutput(classifier=None, artifacts={"model": str(path)},
                          info={"training_images": len(data.train_images),
                                "training_filter": data.leakage,
                                **({"audit": audit} if audit else {})})
    return ProtocolResult(ctx.protocol, results, output, predictions,
                          time.perf_counter() - started)


def model_data(pipeline: Pipeline, spec: MethodSpec, method_config: Any, ctx: ProtocolContext
               ) -> ModelData:
    """What a model method's workers read: the protocol's leakage-filtered training images
    (labels mapped to the label space, every excluded class ignored), the evaluation images,
    the label space and the method's stages."""
    split, label_split = pipeline.split, ctx.label_split
    validation = ctx.protocol == "validation"
    layout = pipeline.layout(pipeline.config.data.train_split)
    filtered = filter_training(layout, split, validation=validation)
    leakage = filtered.to_dict()
    leakage.pop("kept_image_ids", None)
    kept = set(filtered.kept_image_ids)
    images = list_images(layout, benchmark_sources(split))
    kept_ids = [image_id for image_id in sorted(images) if image_id in kept]
    if pipeline.config.data.max_images is not None:  # the first N after the filter (--smoke)
        kept_ids = kept_ids[:pipeline.config.data.max_images]
    train = [(str(layout.images / images[image_id].file_name),
              str(layout.semantic_pngs / f"{Path(images[image_id].file_name).stem}.png"))
             for image_id in kept_ids]
    lut = label_split.png_lut()[unseen_png_lut(split, validation)]
    unseen = _indices(label_split, unseen=True)
    lut[np.isin(lut, unseen)] = IGNORE_LABEL
    listing = ctx.evaluation().listing
    evaluation = [(image_id, str(ctx.eval_layout.images / info.file_name))
                  for image_id, info in sorted(listing.images.items())]
    stages = {stage.name: pipeline.method_stage(stage, method_config, ctx)
              for stage in spec.stages}
    return ModelData(num_classes=int(label_split.num_classes),
                     category_ids=[int(c.id) for c in label_split.classes],
                     things=[bool(c.isthing) for c in label_split.classes],
                     seen_idx=_indices(label_split, unseen=False), unseen_idx=unseen,
                     class_embeddings=ctx.class_embeddings, train_images=train, label_lut=lut,
                     eval_images=evaluation, stages=stages,
                     train_instances=_instances_per_image(filtered.instances, label_split,
                                                          kept_ids),
                     benchmark=split.name, leakage=leakage)


def _instances_per_image(instances: dict[str, Any] | None, label_split: Any,
                         image_ids: Sequence[int]) -> list[list[dict[str, Any]]] | None:
    """The leakage-filtered instances json as one annotation list per training image, with the
    label space's contiguous class index (annotations of excluded classes never reach here:
    drop-images removed their images; ignore-pixels removed the annotations)."""
    if instances is None:
        return None
    index = {int(c.id): int(c.index) for c in label_split.classes if not c.unseen}
    per_image: dict[int, list[dict[str, Any]]] = {i: [] for i in image_ids}
    for ann in instances.get("annotations", []):
        rows = per_image.get(int(ann["image_id"]))
        if rows is not None and int(ann["category_id"]) in index:
            rows.append({"class_index": index[int(ann["category_id"])], "bbox": ann["bbox"],
                         "segmentation": ann["segmentation"],
                         "iscrowd": int(ann.get("iscrowd", 0))})
    return [per_image[i] for i in image_ids]


def method_inputs(pipeline: Pipeline, spec: MethodSpec, method_config: Any, ctx: ProtocolContext,
                  seed: int, work: Path) -> MethodInputs:
    """What ``spec``'s fit receives on ``ctx``'s protocol: the shared stages, its own extra
    stages (built or reused) and, for a generative method, the platform's generator trainer."""
    stages = {stage.name: pipeline.method_stage(stage, method_config, ctx)
              for stage in spec.stages}
    trainer = None
    if spec.generator_recipe is not None:
        trainer = GeneratorTrainer(
            method=spec.name, features=ctx.features, class_embeddings=ctx.class_embeddings,
            seen_idx=_indices(ctx.label_split, unseen=False),
            unseen_idx=_indices(ctx.label_split, unseen=True), seed=seed,
            training=pipeline.config.method_training,
            cache_path=ctx.train_cache.path if ctx.train_cache is not None else None,
            work_dir=work)
    return MethodInputs(split=ctx.label_split, class_embeddings=ctx.class_embeddings,
                        features=ctx.features, segmenter_head=ctx.segmenter_head,
                        embed_dim=ctx.embed_dim, seed=seed, work_dir=work, stages=stages,
                        train_generator=trainer,
                        heldout=(ctx.evaluation().unseen_query_embeddings
                                 if ctx.protocol == "validation" else None))


def _indices(split: Any, *, unseen: bool) -> np.ndarray:
    return np.array([c.index for c in split.classes if c.unseen == unseen], dtype=np.int64)


# -- the store record -----------------------------------------------------------------------------
def leakage_audit(pipeline: Pipeline, spec: MethodSpec, outcome: RunOutcome) -> dict[str, Any]:
    """The run's leakage audit (DESIGN.md section 3), flat for the dashboard, per protocol in
    ``protocols``."""
    config = pipeline.config
    provider = config.embedding.provider
    per_protocol: dict[str, Any] = {}
    oracle = spec.segmenter == "oracle"
    passed = not oracle
    images = {}
    for protocol in outcome.protocols:
        ctx = run_context(pipeline, spec, protocol)
        info = outcome.protocols[protocol].output.info or {}
        if ctx.segmenter is not None:
            seg = ctx.segmenter.results or {}
            leak = seg.get("leakage") or {}
            entry = {"segmenter": str(ctx.segmenter.checkpoint),
                     "segmenter_classes": seg.get("classes_trained")}
        else:  # a model method: its own model, trained on the filter's output
            leak = info.get("training_filter") or {}
            entry = {"model": spec.name}
        scanned = leak.get("audit") or {}
        entry.update({
            "excluded_from_training": leak.get("excluded_classes", []),
            "images_total": leak.get("images_total"),
            "images_kept": leak.get("images_kept"),
            "images_dropped": leak.get("images_dropped"),
            "annotations_scanned": scanned.get("annotations"),
            "segments_scanned": scanned.get("segments"),
            "unseen_pixels_ignored": leak.get("unseen_pixels_ignored"),
        })
        if info.get("audit"):  # a model method's own record (what its check found)
            entry["method"] = info["audit"]
        if ctx.train_cache is not None:
            features = ctx.train_cache.index.get("leakage", {})
            entry["feature_cache_filter"] = features.get("filter")
            entry["feature_images"] = ctx.train_cache.counts.get("images")
        if info.get("caption_audit"):  # a caption-supervised method (Cap2Seg) read them
            entry["training_captions"] = info["caption_audit"]
        per_protocol[protocol] = entry
        if protocol == "test":
            images = {k: entry[k] for k in ("images_total", "images_kept", "images_dropped")}
    backbone = config.segmenter.model.backbone_weights
    audit = {
        "protocol": pipeline.split.protocol,
        **images,
        # Checked, not assumed: the leakage filter re-scans its own output (LeakageError
        # otherwise) and every method refuses real features labelled with an unseen class.
        "unseen_instances_in_training": None if oracle else 0,
        "unseen_pixels_in_training": None if oracle else 0,
        "text_encoder": provider,
        "text_encoder_pretraining": TEXT_ENCODER_PRETRAINING.get(provider, "unknown"),
        "backbone_init": f"local file {backbone}" if backbone else
        "random initialisation (trained from scratch on the training split)",
        "hyperparameters_chosen_on": config.selected_by,
        "passed": passed,
        "protocols": per_protocol,
    }
    captions = (per_protocol.get("test") or {}).get("training_captions")
    if captions:
        # Cap2Seg's setting: captions of training images are weak supervision and may name
        # unseen classes; their pixels stay out of every training target.
        audit["training_captions_read"] = True
        audit["unseen_names_in_training_captions"] = captions.get(
            "unseen_names_in_training_captions")
    if oracle:
        audit["note"] = ("supervised upper bound: the segmenter is trained on every class, "
                         "unseen ones included, on purpose; not a zero-shot result")
    if "test" in config.selected_by.lower() and "validation" not in config.selected_by.lower():
        audit["passed"] = False
        audit["note"] = "hyperparameters were chosen on the test split"
    return audit


def build_record(pipeline: Pipeline, spec: MethodSpec, method_config: Any, outcome: RunOutcome,
                 curves: Iterable[tuple[str, int, float]], *, kind: str, sweep: str | None,
                 trial_id: str | None, source_run_id: int | None,
                 run_key: str | None = None) -> Any:
    config = pipeline.config
    split = pipeline.split
    artifacts: dict[str, Any] = {
        "work_dir": str(pipeline.work), "dataset_root": str(pipeline.data_root),
        "eval_data_split": config.data.eval_split, "class_names": split.names,
        "unseen_classes": [c.name for c in split.unseen],
        "predictions": {}, "features": {}, "segmenter": {}, "method": {},
    }
    if split.groups:  # named groups of unseen classes (Cap2Seg's hard / medium / easy)
        artifacts["class_groups"] = {group: [split.by_id(i).name for i in ids]
                                     for group, ids in split.groups.items()}
    for protocol, pr in outcome.protocols.items():
        ctx = run_context(pipeline, spec, protocol)
        split_key = EVAL_SPLIT[protocol]
        artifacts["predictions"][split_key] = str(pr.predictions / "gzsl")
        if ctx.segmenter is not None:
            artifacts["segmenter"][split_key] = str(ctx.segmenter.checkpoint)
        if ctx.eval_cache is not None:
            artifacts["features"][f"eval:{split_key}"] = str(ctx.eval_cache.path)
        if ctx.train_cache is not None:
            artifacts["features"]["train" if protocol == "test" else
                                  f"train:{split_key}"] = str(ctx.train_cache.path)
        artifacts["method"][split_key] = dict(pr.output.artifacts)
        if "fidelity" in pr.output.info:  # validation protocol only
            artifacts.setdefault("fidelity", {})[split_key] = pr.output.info["fidelity"]
        if "caption_priors" in pr.output.info:  # Cap2Seg's occurrence / stripe diagnostics
            artifacts.setdefault("caption_priors", {})[split_key] = \
                pr.output.info["caption_priors"]
        if protocol == "test" and "synthetic_unseen" in pr.output.artifacts:
            artifacts["synthetic_unseen"] = pr.output.artifacts["synthetic_unseen"]
        if protocol == "validation":
            artifacts["validation_dataset_root"] = str(ctx.eval_layout.root)
    record = RunRecord(
        uid=outcome.uid, run_key=run_key, kind=kind, status=outcome.status, method=spec.name,
        dataset=split.dataset, split=split.name, embedding=config.embedding.provider,
        backbone=config.segmenter.model.size, seed=outcome.seed,
        config={**run_identity(config, spec.name), "seed": outcome.seed},
        config_hash=run_config_hash(config, spec.name),
        dataset_fingerprint=pipeline.dataset_fingerprint,
        leakage_audit=leakage_audit(pipeline, spec, outcome), artifacts=artifacts,
        sweep=sweep, trial_id=trial_id, source_run_id=source_run_id, name=config.name,
        duration_s=outcome.seconds, error=outcome.error,
        curves=[CurveRecord(n, int(s), v if math.isfinite(v) else None)
                for n, s, v in _dedupe(curves)])
    for protocol, pr in outcome.protocols.items():
        for result in pr.evaluations.values():
            record.add_evaluation(result.to_json(), EVAL_SPLIT[protocol],
                                  per_class=config.evaluation.per_class)
    return record


def _dedupe(curves: Iterable[tuple[str, int, float]]) -> list[tuple[str, int, float]]:
    points: dict[tuple[str, int], float] = {}
    for name, step, value in curves:
        points[(name, int(step))] = float(value)
    return [(n, s, v) for (n, s), v in points.items()]


@contextlib.contextmanager
def _opened(pipeline: Pipeline, store: Any = None) -> Iterator[Any]:
    """``store``, or the pipeline's store opened for the block."""
    if store is not None:
        yield store
        return
    with open_store(pipeline.store_url) as opened:
        yield opened


def write_record(pipeline: Pipeline, record: Any, store: Any = None, *,
                 replace: bool = False) -> int:
    """Store ``record`` (a finished run of a stored identity: the stored id, or with
    ``replace``, replaced); returns the run id."""
    with _opened(pipeline, store) as opened:
        return opened.record_run(record, replace=replace)


# -- several runs at once -------------------------------------------------------------------------
@dataclass(frozen=True)
class RunJob:
    """One run for :func:`run_many`: ``method`` with ``seed`` under ``config``."""
    config: Any  # PipelineConfig
    method: str
    seed: int
    kind: str = "train"
    source_run_id: int | None = None


def driver_cpus(method: str, training_workers: int, threads: float) -> float:
    """The Ray CPUs the process of one run (a sweep trial, a side-by-side run) asks for:
    ``threads`` when it trains in that process; :data:`DRIVER_CPUS` when a Ray Train job does
    (a model method; ``method_training.workers > 1``), whose workers ask for their own: were
    the driver to hold a CPU as well, two drivers on two CPUs would leave their workers none;
    the workers ask for DRIVER_CPUS less in all (``MethodTrainingConfig.worker_resources``)."""
    if get_method(method).kind == "model" or training_workers > 1:
        return DRIVER_CPUS
    return threads


def ray_train_slots(method: str, training: Any, cluster_cpus: float) -> int | None:
    """How many runs of ``method`` that each drive their own Ray Train job (``training``: its
    MethodTrainingConfig) may run side by side on ``cluster_cpus``: as many as their workers'
    CPUs fit, at least 1; ``None`` for a run that trains in its own process. More would each
    hold a driver and wait for workers that cannot all be placed."""
    if driver_cpus(method, training.workers, 1.0) != DRIVER_CPUS:
        return None
    return max(1, int((cluster_cpus + 1e-9) // (training.workers * training.cpus_per_worker)))


def _run_job(job: RunJob, run_key: str | None) -> RunOutcome:
    """A Ray task: one run on the stages already built (see :func:`run_many`), not stored;
    ``run_key``: its identity as the driver computed it."""
    pipeline = Pipeline(job.config, progress=lambda line: None)
    outcome = run_one(pipeline, job.method, job.seed, kind=job.kind,
                      source_run_id=job.source_run_id, record=False, keep_failed=True,
                      run_key=run_key)
    for result in outcome.protocols.values():
        result.output = None  # the fitted modules stay in the worker; the record has the paths
    return outcome


def run_many(pipeline: Pipeline, jobs: Sequence[RunJob], *,
             on_run: Callable[[RunOutcome], None] | None = None,
             force: bool = False) -> list[RunOutcome]:
    """Run ``jobs`` side by side as Ray tasks (on ``pipeline.ray_address``, or a local Ray), as
    many at once as the cluster has CPUs for (each asks for its config's ``threads``).

    A job whose run is stored as finished already comes back from the store (``reused``)
    without running, unless ``force``. The shared stages every other job reads are built
    first, here, once; the tasks only read them. Each run is written to the store by this
    process as it ends (``on_run`` then sees it), so a driver stopped half-way keeps the runs
    that ended. Outcomes come back in the jobs' order; when a run failed, the first failure is
    raised after all have ended (and been stored). A single job runs in this process. Numbers
    do not depend on how runs are spread: each run sets its own seed and ``threads``."""
    import ray

    pipelines = [pipeline.derive(job.config) for job in jobs]  # each shares the built stages
    keys = [identity_key(derived, job.method, job.seed, kind=job.kind,
                         source_run_id=job.source_run_id)
            for derived, job in zip(pipelines, jobs, strict=True)]
    outcomes: list[RunOutcome | None] = [None] * len(jobs)
    if not force:
        with _opened(pipeline) as store:
            for i, job in enumerate(jobs):
                outcomes[i] = stored_outcome(store, keys[i], job.method, job.seed)
    for outcome in outcomes:
        if outcome is not None and on_run is not None:
            on_run(outcome)
    todo = [i for i, outcome in enumerate(outcomes) if outcome is None]
    if len(todo) <= 1:
        for i in todo:
            job = jobs[i]
            outcomes[i] = run_one(pipelines[i], job.method, job.seed, kind=job.kind,
                                  source_run_id=job.source_run_id, force=force,
                                  run_key=keys[i])
            if on_run is not None:
                on_run(outcomes[i])
        return [o for o in outcomes if o is not None]
    for i in todo:
        spec = get_method(jobs[i].method)
        for protocol in run_protocols(spec, jobs[i].config.evaluation.protocols):
            run_context(pipelines[i], spec, protocol)
    ensure_ray(pipeline.ray_address)
    task = ray.remote(_run_job)
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    slots = {i: ray_train_slots(jobs[i].method, jobs[i].config.method_training, cpus)
             for i in todo}
    waiting, pending = list(todo), {}

    def submit() -> None:  # every run that fits now; Ray Train drivers only as slots allow
        for i in list(waiting):
            busy = sum(1 for j in pending.values() if slots[j] is not None)
            if slots[i] is not None and busy >= slots[i]:
                continue
            waiting.remove(i)
            pending[task.options(num_cpus=driver_cpus(
                jobs[i].method, jobs[i].config.method_training.workers,
                jobs[i].config.threads)).remote(jobs[i], keys[i])] = i

    try:
        submit()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready[0])
            outcome = ray.get(ready[0])
            outcome.run_id = write_record(pipelines[index], outcome.record, replace=force)
            outcomes[index] = outcome
            if on_run is not None:
                on_run(outcome)
            submit()
    finally:
        for ref in pending:  # stopped (Ctrl-C) or a task crashed: end the others
            ray.cancel(ref, force=True)
    failed = next((o for o in outcomes if o is not None and o.status == "failed"), None)
    if failed is not None:
        raise ZerosegError(failed.error or f"run of {failed.method} failed")
    return [o for o in outcomes if o is not None]


# -- a whole config -------------------------------------------------------------------------------
def run_pipeline(pipeline: Pipeline, *, on_run: Callable[[RunOutcome], None] | None = None,
                 force: bool = False) -> list[RunOutcome]:
    """Every method x seed of the config, in order; each run is stored as it finishes, a run
    stored before is reused (``force``: re-run and replaced)."""
    outcomes = []
    for method in pipeline.config.methods:
        for seed in pipeline.config.seeds:
            outcome = run_one(pipeline, method, seed, force=force)
            outcomes.append(outcome)
            if on_run is not None:
                on_run(outcome)
    return outcomes


def clear_run_artifacts(pipeline: Pipeline, uid: str) -> None:
    """Remove a run's folder (predictions, weights): e.g. an early-stopped sweep trial."""
    shutil.rmtree(pipeline.work / "runs" / uid, ignore_errors=True)


def check_no_leakage(ctx: ProtocolContext) -> None:
    """Refuse real training features labelled with an unseen class of the label space."""
    if ctx.train_cache is None:
        return
    feats = ctx.features("train")
    unseen = np.array([c.unseen for c in ctx.label_split.classes] + [False])
    bad = unseen[feats.class_index]
    if bad.any():
        raise LeakageError(f"{ctx.train_cache.path}: {int(bad.sum())} training features are "
                           f"labelled with unseen classes")
