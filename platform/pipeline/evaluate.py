"""Scoring a classifier on a protocol's cached segmenter outputs, in memory.

A run (and every sweep trial) changes the classifier, never the segmenter: its evaluation
re-labels the eval feature cache's query embeddings and runs inference and the evaluators.
:class:`CachedEvaluation` does that without a round trip through files: the cached mask logits
are decoded and upsampled to each image's size once (and kept while they fit in
``memory_budget``), the ground truth of every task is read once (idem), and each trial's
predictions go straight from :class:`~zeroseg.methods.segmenter.inference.Predictor` into the
evaluators' ``process``. The predictions are the very objects the file writer would write, and
the evaluators are the ones that read the files, so the metrics are the file path's, exactly
(``tests/test_pipeline.py`` checks it).

What is written, per ``evaluation.keep_predictions``: ``all`` -- the three tasks' COCO result
files, as ``zeroseg eval`` reads them; ``sample`` (default) -- the semantic PNGs of the first
:data:`SAMPLE_IMAGES` images whose ground truth holds an unseen class (what the dashboard shows);
``none`` -- nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from zeroseg.methods.registry import Predictions
from zeroseg.methods.segmenter.inference import (
    INSTANCES_JSON,
    PANOPTIC_DIR,
    SEMANTIC_DIR,
    ImagePrediction,
    InferenceConfig,
    InstanceResults,
    Predictor,
    UpsampledChunk,
    cached_outputs,
    layout_listing,
    upsampled_chunks,
    write_predictions,
)
from zeroseg.platform.data.classes import Split
from zeroseg.platform.data.coco import load_json, read_label_png, segmentation_rle
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.errors import ConfigError, DataError
from zeroseg.platform.evaluation import PanopticEvaluator, SemanticEvaluator
from zeroseg.platform.evaluation.instance import Detections, evaluate_instance_coco
from zeroseg.platform.evaluation.panoptic import BATCH_IMAGES, read_segment_ids
from zeroseg.platform.evaluation.semantic import check_histogram, joint_histogram
from zeroseg.platform.evaluation.summary import predicted_tasks, tasks_of_split

log = logging.getLogger(__name__)

KEEP_PREDICTIONS = ("all", "sample", "none")
SAMPLE_IMAGES = 8
#: Smallest region (pixels of the semantic ground truth) that yields a real unseen embedding.
HELDOUT_MIN_PIXELS = 16
#: Bytes of upsampled mask logits and ground truth kept in memory per protocol.
MEMORY_BUDGET = 1 << 30


class _Memo:
    """Values kept while their total size fits a budget; beyond it, recomputed on each use."""

    def __init__(self, budget: int):
        self.budget = budget
        self.used = 0
        self.values: dict[Any, Any] = {}

    def get(self, key: Any, compute: Callable[[], Any], nbytes: Callable[[Any], int]) -> Any:
        if key in self.values:
            return self.values[key]
        value = compute()
        size = nbytes(value)
        if self.used + size <= self.budget:
            self.values[key] = value
            self.used += size
        return value


class CachedEvaluation:
    """The evaluation of one protocol: its eval cache, its ground truth, in memory."""

    def __init__(self, cache: Any, layout: CocoLayout, split: Split, *,
                 memory_budget: int = MEMORY_BUDGET):
        self.cache = cache
        self.layout = layout
        self.split = split
        self.listing = layout_listing(layout, split)
        self._memo = _Memo(memory_budget)
        self._chunks: list[UpsampledChunk] | None = None
        self._panoptic_json: dict[str, Any] | None = None
        self._instances_json: dict[str, Any] | None = None
        self._instances_by_image_id: dict[int, list[dict[str, Any]]] | None = None
        self._png_lut = split.png_lut()
        self._unseen_queries: tuple[np.ndarray, np.ndarray] | None = None

    # -- cached outputs ----------------------------------------------------------------------
    def chunks(self) -> Iterator[UpsampledChunk]:
        """The cache's images in chunks, mask logits upsampled; kept after the first full pass
        when they fit the memory budget."""
        if self._chunks is not None:
            yield from self._chunks
            return
        kept: list[UpsampledChunk] | None = []
        instances = not self.split.tasks or "instance" in self.split.tasks
        for chunk in upsampled_chunks(cached_outputs(self.cache.iter_images()),
                                      self.listing.images, instances=instances,
                                      where=f"feature cache {self.cache.path}"):
            if kept is not None:
                if self._memo.used + chunk.nbytes <= self._memo.budget:
                    kept.append(chunk)
                    self._memo.used += chunk.nbytes
                else:
                    self._memo.used -= sum(c.nbytes for c in kept)
                    kept = None
            yield chunk
        if kept is not None:
            self._chunks = kept

    # -- ground truth ------------------------------------------------------------------------
    def semantic_gt(self, image_id: int) -> np.ndarray:
        info = self.listing.images[image_id]
        path = self.layout.semantic_pngs / f"{Path(info.file_name).stem}.png"
        return self._memo.get(("semantic", image_id), lambda: read_label_png(path),
                              lambda a: a.nbytes)

    def panoptic_json(self) -> dict[str, Any]:
        if self._panoptic_json is None:
            path = self.layout.require(self.layout.panoptic_json, "panoptic GT json")
            data = load_json(path, "panoptic GT json", ("annotations", "categories"))
            data["_by_image"] = {a["image_id"]: a for a in data["annotations"]}
            self._panoptic_json = data
        return self._panoptic_json

    def panoptic_gt(self, image_id: int, evaluator: PanopticEvaluator) -> Any:
        """The image's GT as ``evaluator`` reads it (a GroundTruth: ids, segments, rows)."""
        ann = self.panoptic_json()["_by_image"].get(image_id)
        if ann is None:
            raise DataError(f"{self.layout.panoptic_json}: no GT annotation for image {image_id}")
        path = self.layout.panoptic_pngs / ann["file_name"]
        return self._memo.get(
            ("panoptic", image_id),
            lambda: evaluator.ground_truth(read_segment_ids(path), ann.get("segments_info", []),
                                           f"{path} (image {image_id})"),
            lambda gt: gt.ids.nbytes + gt.rows.nbytes)

    def instances_json(self) -> dict[str, Any]:
        if self._instances_json is None:
            path = self.layout.require(self.layout.instances_json, "instances GT json")
            self._instances_json = load_json(path, "instances GT json",
                                             ("images", "annotations", "categories"))
        return self._instances_json

    def unseen_image_ids(self, limit: int) -> set[int]:
        """The first ``limit`` images (in cache order; without a cache, a model method's, in
        image id order) whose semantic GT has an unseen class."""
        unseen = np.zeros(256, dtype=bool)
        for c in self.split.unseen:
            if c.png_label is not None:
                unseen[c.png_label] = True
        out: set[int] = set()
        order = self.cache.image_ids if self.cache is not None else sorted(self.listing.images)
        for image_id in order:
            if len(out) >= limit:
                break
            if unseen[self.semantic_gt(image_id)].any():
                out.add(image_id)
        return out

    def region_source(self) -> str:
        """Where :meth:`class_regions` reads class pixels: ``semantic`` PNGs (semantic
        benchmarks, the synthetic one), else the ``panoptic`` PNGs and json, else the
        ``instances`` json's masks (things only), else ``none``."""
        if self.layout.semantic_pngs.is_dir():
            return "semantic"
        if self.layout.panoptic_json.is_file() and self.layout.panoptic_pngs.is_dir():
            return "panoptic"
        if self.layout.instances_json.is_file():
            return "instances"
        return "none"

    def class_regions(self, image_id: int, classes: np.ndarray) -> dict[int, np.ndarray]:
        """The pixels of each class of ``classes`` (split indices) present in the image's ground
        truth, as flat boolean masks: every segment or instance of a class counts as one region
        (what a semantic PNG holds), read from :meth:`region_source`."""
        wanted = set(classes.tolist())
        source = self.region_source()
        if source == "semantic":
            gt = self._png_lut[self.semantic_gt(image_id)].reshape(-1)
            return {c: gt == c for c in np.intersect1d(np.unique(gt), classes).tolist()}
        index = self.split.id_to_index()
        out: dict[int, np.ndarray] = {}
        if source == "panoptic":
            ann = self.panoptic_json()["_by_image"].get(image_id)
            if ann is None:
                raise DataError(f"{self.layout.panoptic_json}: no GT annotation for image "
                                f"{image_id}")
            ids = read_segment_ids(self.layout.panoptic_pngs / ann["file_name"]).reshape(-1)
            parts = ((index.get(int(s["category_id"])), lambda s=s: ids == int(s["id"]))
                     for s in ann.get("segments_info", []))
        elif source == "instances":
            info = self.listing.images[image_id]
            parts = ((index.get(int(a["category_id"])), lambda a=a: mask_utils.decode(
                segmentation_rle(a["segmentation"], info.height, info.width)
            ).reshape(-1).astype(bool)) for a in self._instances_by_image().get(image_id, []))
        else:
            return out
        for c, pixels in parts:
            if c in wanted:
                region = pixels()
                out[c] = out[c] | region if c in out else region
        return out

    def _instances_by_image(self) -> dict[int, list[dict[str, Any]]]:
        """The instances json's annotations per image id, in json order (memoised)."""
        if self._instances_by_image_id is None:
            by_image: dict[int, list[dict[str, Any]]] = {}
            for ann in self.instances_json()["annotations"]:
                by_image.setdefault(int(ann["image_id"]), []).append(ann)
            self._instances_by_image_id = by_image
        return self._instances_by_image_id

    def unseen_query_embeddings(self, min_pixels: int = HELDOUT_MIN_PIXELS
                                ) -> tuple[np.ndarray, np.ndarray]:
        """Real query embeddings of the split's unseen classes: for every image and every unseen
        class covering at least ``min_pixels`` pixels of its ground truth (semantic PNGs, else
        panoptic segments, else instance masks: :meth:`class_regions`), the query whose
        (sigmoid, upsampled) mask has the highest Dice with that class's pixels. This is
        Hungarian matching without its class term, which a segmenter that never saw the class
        cannot supply (every instance of a class in an image counts as one region). Returns
        ``(embeddings [N, D] float32, class indices [N])``; on the validation protocol these are
        the held-out seen classes, what :mod:`zeroseg.methods.fidelity` compares fakes with.
        Memoised."""
        if self._unseen_queries is not None:
            return self._unseen_queries
        dim = int(self.cache.embed_dim)
        if self.region_source() == "none":
            log.info("%s: no semantic, panoptic or instance ground truth; no held-out regions "
                     "for the fidelity diagnostics", self.layout.root)
            self._unseen_queries = (np.zeros((0, dim), np.float32), np.zeros(0, np.int64))
            return self._unseen_queries
        unseen = np.array(sorted(c.index for c in self.split.unseen), dtype=np.int64)
        rows: list[np.ndarray] = []
        labels: list[int] = []
        for chunk in self.chunks():
            for info, embeddings, probs in zip(chunk.infos, chunk.embeddings, chunk.mask_probs,
                                               strict=True):
                regions = self.class_regions(info.id, unseen)
                if not regions:
                    continue
                flat = probs.reshape(probs.shape[0], -1).numpy()
                mass = flat.sum(1)
                for c in sorted(regions):
                    region = regions[c]
                    area = int(region.sum())
                    if area < min_pixels:
                        continue
                    dice = 2 * flat[:, region].sum(1) / (mass + area)
                    rows.append(np.asarray(embeddings[int(dice.argmax())], dtype=np.float32))
                    labels.append(c)
        self._unseen_queries = (np.stack(rows) if rows else np.zeros((0, dim), np.float32),
                                np.asarray(labels, dtype=np.int64))
        return self._unseen_queries

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self, classifier: Callable[[Any], Any], tasks: Sequence[str],
                 settings: Sequence[str], inference: InferenceConfig, *,
                 setting_classifier: Callable[[Any, Split, str], Any],
                 out_dir: Path | None = None, keep: str = "sample",
                 empty_classes: str = "zero",
                 ) -> dict[tuple[str, str], Any]:
        """``{(task, setting): EvalResult}`` of ``classifier`` on every image of the cache;
        predictions written under ``out_dir/<setting>/`` as ``keep`` says. ``empty_classes``:
        the panoptic averaging of classes without TP, FP or FN (``"zero"``: PADing's, the
        default; ``"exclude"``: panopticapi's), recorded in the panoptic result's options."""
        if keep not in KEEP_PREDICTIONS:
            raise ConfigError(f"evaluation.keep_predictions: expected one of "
                              f"{list(KEEP_PREDICTIONS)}, got {keep!r}")
        split = self.split
        tasks = tasks_of_split(tasks, split.tasks)
        results: dict[tuple[str, str], Any] = {}
        for setting in settings:
            predictor = Predictor(split, predicted_tasks(tasks), inference,
                                  self.listing.instance_categories)
            clf = setting_classifier(classifier, split, setting)
            predictions = (p for chunk in self.chunks() for p in predictor.predict(chunk, clf))
            results.update(self._score(predictions, tasks, setting, out_dir, keep,
                                       empty_classes))
        return results

    def evaluate_predictions(self, predict: Callable[[str], Predictions], tasks: Sequence[str],
                             settings: Sequence[str], *, out_dir: Path | None = None,
                             keep: str = "sample", empty_classes: str = "zero"
                             ) -> dict[tuple[str, str], Any]:
        """As :meth:`evaluate`, for a model method's own predictions: ``predict(setting)``
        gives its COCO results (:class:`~zeroseg.methods.registry.Predictions`) of the
        evaluation images, scored by the same evaluators."""
        if keep not in KEEP_PREDICTIONS:
            raise ConfigError(f"evaluation.keep_predictions: expected one of "
                              f"{list(KEEP_PREDICTIONS)}, got {keep!r}")
        tasks = tasks_of_split(tasks, self.split.tasks)
        results: dict[tuple[str, str], Any] = {}
        for setting in settings:
            images = self.image_predictions(predict(setting), predicted_tasks(tasks))
            results.update(self._score(images, tasks, setting, out_dir, keep, empty_classes))
        return results

    def image_predictions(self, predictions: Predictions, tasks: Sequence[str]
                          ) -> Iterator[ImagePrediction]:
        """``predictions`` per evaluation image, as inference would have produced them
        (``tasks``: the predicted ones, :func:`predicted_tasks`)."""
        by_image: dict[int, list[dict[str, Any]]] = {}
        for entry in predictions.instances:
            by_image.setdefault(int(entry["image_id"]), []).append(entry)
        unknown = sorted(set(by_image) - set(self.listing.images))
        if unknown:
            raise DataError(f"model predictions: instance results for image {unknown[0]}, which "
                            f"is not an evaluation image")
        for image_id, info in sorted(self.listing.images.items()):
            semantic = predictions.semantic.get(image_id)
            if "semantic" in tasks:
                if semantic is None:
                    raise DataError(f"model predictions: no semantic label map for evaluation "
                                    f"image {image_id}")
                if semantic.shape != (info.height, info.width):
                    raise DataError(f"model predictions: image {image_id}'s label map is "
                                    f"{semantic.shape}, the image {(info.height, info.width)}")
            panoptic, segments = predictions.panoptic.get(
                image_id, (np.zeros((info.height, info.width), np.int32), []))
            entries = by_image.get(image_id, [])
            rles = [e["segmentation"] for e in entries]
            boxes = [e.get("bbox") or mask_utils.toBbox(e["segmentation"]).tolist()
                     for e in entries]
            instances = InstanceResults(
                image_id, np.array([int(e["category_id"]) for e in entries], np.int64),
                np.array([float(e["score"]) for e in entries], np.float64),
                np.array(boxes, np.float64).reshape(-1, 4), rles)
            yield ImagePrediction(info, semantic=semantic,
                                  instances=instances if "instance" in tasks else None,
                                  panoptic=panoptic if "panoptic" in tasks else None,
                                  segments=segments if "panoptic" in tasks else None)

    def _score(self, predictions: Iterable[ImagePrediction], tasks: Sequence[str], setting: str,
               out_dir: Path | None, keep: str, empty_classes: str) -> dict[tuple[str, str], Any]:
        sink = _Scores(self, tasks, setting, empty_classes)
        target = out_dir / setting if out_dir is not None else None
        if keep == "all" and target is not None:
            write_predictions(sink.feed(predictions), self.split, self.listing,
                              predicted_tasks(tasks), _targets(target))
        elif keep == "sample" and target is not None and "semantic" in tasks:
            sample = self.unseen_image_ids(SAMPLE_IMAGES)
            kept = [p for p in sink.feed(predictions) if p.info.id in sample]
            only = [ImagePrediction(p.info, semantic=p.semantic) for p in kept]
            write_predictions(only, self.split, self.listing, ["semantic"], _targets(target))
        else:
            for _ in sink.feed(predictions):
                pass
        return {(task, setting): r for task, r in sink.results().items()}

    def semantic_miou(self, classifier: Callable[[Any], Any] | Predictions) -> Any:
        """GZSL semantic EvalResult only (the per-epoch objective of sweeps), of a classifier
        or of a model method's GZSL predictions."""
        sink = _Scores(self, ["semantic"], "gzsl")
        if isinstance(classifier, Predictions):
            predictions: Iterable[ImagePrediction] = self.image_predictions(classifier,
                                                                            ["semantic"])
        else:
            predictor = Predictor(self.split, ["semantic"], InferenceConfig())
            predictions = (p for chunk in self.chunks()
                           for p in predictor.predict(chunk, classifier))
        for _ in sink.feed(predictions):
            pass
        return sink.results()["semantic"]


def _targets(out: Path) -> dict[str, Path]:
    return {"semantic": out / SEMANTIC_DIR, "panoptic": out / PANOPTIC_DIR,
            "instance": out / INSTANCES_JSON}


class _Scores:
    """The evaluators of one setting, fed one prediction at a time."""

    def __init__(self, data: CachedEvaluation, tasks: Sequence[str], setting: str,
                 empty_classes: str = "zero"):
        self.data = data
        self.tasks = tuple(tasks)
        self.setting = setting
        split = data.split
        self.semantic = (SemanticEvaluator(split, setting, gt_values=data._png_lut)
                         if "semantic" in tasks else None)
        self.panoptic = None
        if "panoptic" in tasks:
            # Categories of the GT json outside the split are not evaluated (their segments
            # count as VOID, and are counted in the result), as evaluate_panoptic does.
            categories = [int(c["id"]) for c in data.panoptic_json()["categories"]]
            self.panoptic = PanopticEvaluator(split, setting, categories=categories,
                                              empty_classes=empty_classes,
                                              where=str(data.layout.panoptic_json))
        self.instances: list[Any] = []  # InstanceResults per image
        self._pending: list[Any] = []  # panoptic images waiting for a batch
        self.count = 0

    def _flush(self) -> None:
        if self.panoptic is not None and self._pending:
            self.panoptic.process_many(self._pending)
        self._pending = []

    def feed(self, predictions: Iterable[ImagePrediction]) -> Iterator[ImagePrediction]:
        for p in predictions:
            image_id = p.info.id
            name = f"image {image_id}"
            if self.semantic is not None:
                # Counted per image, checked once on the sum (results() does): the labels of a
                # prediction are valid by construction, the GT's are the GT's.
                self.semantic.add_histogram(joint_histogram(
                    self.data.semantic_gt(image_id), p.semantic.astype(np.uint8), name), 1)
            if self.panoptic is not None:
                gt = self.data.panoptic_gt(image_id, self.panoptic)
                self._pending.append((gt, p.panoptic, p.segments, name))
                if len(self._pending) >= BATCH_IMAGES:
                    self._flush()
            if p.instances is not None:
                self.instances.append(p.instances)
            self.count += 1
            yield p

    def results(self) -> dict[str, Any]:
        self._flush()
        out: dict[str, Any] = {}
        options = {"evaluated": "in memory"}
        if self.semantic is not None:
            check_histogram(self.semantic.histogram, self.semantic._rows, self.semantic._cols,
                            f"{self.data.layout.semantic_pngs} (in-memory evaluation)")
            out["semantic"] = self.semantic.evaluate(options=options)
        if "instance" in self.tasks or "detection" in self.tasks:
            parts = self.instances
            detections = Detections(
                np.concatenate([np.full(len(p), p.image_id, np.int64) for p in parts]
                               or [np.zeros(0, np.int64)]),
                np.concatenate([p.category_ids for p in parts] or [np.zeros(0, np.int64)]),
                np.concatenate([p.boxes for p in parts] or [np.zeros((0, 4))]),
                np.concatenate([p.scores for p in parts] or [np.zeros(0)]),
                [rle for p in parts for rle in p.rles])
            for task, iou_type in (("instance", "segm"), ("detection", "bbox")):
                if task in self.tasks:
                    out[task] = evaluate_instance_coco(self.data.instances_json(), detections,
                                                       self.data.split, self.setting,
                                                       iou_type=iou_type)
        if self.panoptic is not None:
            out["panoptic"] = self.panoptic.evaluate(options=options)
        return out
