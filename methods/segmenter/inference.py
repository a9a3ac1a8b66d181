"""Semantic, instance and panoptic predictions from per-query masks and class scores.

The segmenter gives, per image, Q mask logits and Q query embeddings. A *classifier* turns the
embeddings into logits over the split's C classes (contiguous order) plus "no object" (last
column): the segmenter's own head, or whatever a zero-shot method trains in its place. Every
function here works from ``class_probs`` = softmax of those logits ([Q, C + 1]) and mask logits
upsampled to the output size ([Q, H, W]), so the same rules serve every method.

The rules are Mask2Former's, with PADing's defaults (PROTOCOLS.md 3b / 3c):

- **semantic** (:func:`semantic_inference`): class score map
  S[c, p] = sum_q P(c | q) * sigmoid(m_q[p]) with the no-object column left out; each pixel
  takes argmax_c S[c, p]. Every pixel gets a class (255 is never predicted).
- **instance** (:func:`instance_inference`): the top ``detections_per_image`` (query, class)
  pairs by P(c | q) > 0 over the allowed classes (the split's thing classes: instance ground truth
  has no stuff, so stuff pairs are excluded *before* the top-k, which only matters on datasets
  with stuff), so one query may appear under several classes. Mask = sigmoid > 0.5; score =
  P(c | q) x (mean sigmoid over the predicted mask). Boxes are the masks' bounding boxes.
- **panoptic** (:func:`panoptic_inference`): a query is kept if its most likely label is not
  "no object" and that probability exceeds ``object_mask_threshold`` (0.8). Each pixel goes to
  the kept query with the largest score x sigmoid(mask). A kept query whose won area is below
  ``overlap_threshold`` (0.8) of its own mask area (sigmoid >= 0.5) is dropped; otherwise its
  segment is the won pixels inside its own mask. All segments of one stuff class merge into one.
  Segment ids count from 1 in order of creation; 0 (VOID) is everything else.

:func:`predict_dataset` runs a model (or cached per-image outputs) over a layout's images and
writes the COCO result formats that :mod:`zeroseg.platform.evaluation` reads::

    OUT/semantic/<image stem>.png         PNG labels of the split (ClassInfo.png_label)
    OUT/panoptic/<image stem>.png         panoptic PNG (id = R + 256 G + 256^2 B)
    OUT/panoptic/predictions.json         {"annotations": [{image_id, file_name, segments_info}]}
    OUT/instances_results.json            COCO results: image_id, category_id, RLE, bbox, score

Each output is replaced atomically: a failed run leaves the previous outputs as they were.

**Same bytes from the model and from the feature cache.** The segmenter's outputs depend, in
their last bits, on the number of torch intra-op threads (oneDNN convolutions and MKL matrix
products split their reductions by thread) and on how images are batched. A feature cache is
extracted with ``threads_per_worker`` threads (part of its key) in batches of ``batch_size``;
:func:`predict_dataset` runs a model with ``threads`` threads (default 1, the cache's default)
in batches of ``batch_size`` (default 8, likewise), so predicting from the model and from a
cache made with the same settings writes byte-identical files, whatever threads the calling
process happens to use.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils
from torch import Tensor

from zeroseg.methods.segmenter.data import normalize_image, read_image
from zeroseg.methods.segmenter.model import Segmenter
from zeroseg.platform.data.classes import Split
from zeroseg.platform.data.coco import ImageInfo, load_json
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.data.panoptic_png import id2rgb
from zeroseg.platform.data.sources import SOURCES, benchmark_sources, list_images
from zeroseg.platform.errors import ConfigError, DataError
from zeroseg.platform.io import atomic_directory, atomic_write_json

log = logging.getLogger(__name__)

#: Per-query logits over the split's classes + no object, from query embeddings [Q, D].
Classifier = Callable[[Tensor], Tensor]
#: One image's segmenter output: (image id, query embeddings [Q, D], mask logits [Q, h, w],
#: frame). ``frame`` is None when the image filled the model's input (squash); otherwise
#: (mask h, mask w, input h, input w, resized h, resized w): the masks' own grid (the rest is
#: padding of a cache), the padded input and the resized image's region in it.
Output = tuple[int, Tensor, Tensor, "tuple[int, ...] | None"]

TASKS = ("semantic", "instance", "panoptic")
SEMANTIC_DIR = "semantic"
PANOPTIC_DIR = "panoptic"
PANOPTIC_JSON = "predictions.json"
INSTANCES_JSON = "instances_results.json"


@dataclass
class InferenceConfig:
    """Post-processing knobs; the defaults are PADing's / Mask2Former's."""

    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    detections_per_image: int = 100

    def validate(self) -> None:
        for name in ("object_mask_threshold", "overlap_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {value}")
        if self.detections_per_image < 1:
            raise ConfigError(f"detections_per_image must be >= 1, got "
                              f"{self.detections_per_image}")


# -- per-image, pure tensor functions ----------------------------------------------------------
def class_probabilities(logits: Tensor) -> Tensor:
    """Softmax over the classes + no object (last dimension)."""
    return logits.float().softmax(-1)


def upsample_masks(mask_logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of mask logits [..., Q, h, w] to [..., Q, H, W]."""
    if tuple(mask_logits.shape[-2:]) == tuple(size):
        return mask_logits.float()
    lead = mask_logits.shape[:-2]
    flat = mask_logits.float().reshape(1, -1, *mask_logits.shape[-2:])
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size)


def restore_masks(mask_logits: Tensor, frame: Sequence[int] | None,
                  size: tuple[int, int]) -> Tensor:
    """Mask logits [..., Q, h, w] at an image's original ``size``. With a ``frame`` (see
    :data:`Output`), as Mask2Former's ``sem_seg_postprocess``: upsample to the padded input,
    crop the resized image's region, resize that to the original size. Without one, the masks
    cover the whole image: one bilinear resize."""
    if frame is None:
        return upsample_masks(mask_logits, size)
    mask_h, mask_w, input_h, input_w, resized_h, resized_w = (int(v) for v in frame)
    padded = upsample_masks(mask_logits[..., :mask_h, :mask_w], (input_h, input_w))
    return upsample_masks(padded[..., :resized_h, :resized_w].contiguous(), size)


def _check(class_probs: Tensor, mask_logits: Tensor) -> None:
    if class_probs.ndim != 2 or mask_logits.ndim != 3 or class_probs.shape[0] != \
            mask_logits.shape[0]:
        raise ValueError(f"expected class_probs [Q, C+1] and mask_logits [Q, H, W], got "
                         f"{tuple(class_probs.shape)} and {tuple(mask_logits.shape)}")


def semantic_inference(class_probs: Tensor, mask_logits: Tensor) -> Tensor:
    """[H, W] long map of contiguous class indices (argmax of sum_q P(c|q) sigmoid(m_q))."""
    _check(class_probs, mask_logits)
    return semantic_maps(class_probs[None], mask_logits.sigmoid()[None])[0]


def semantic_maps(class_probs: Tensor, mask_probs: Tensor) -> Tensor:
    """:func:`semantic_inference` for a batch of same-sized images: ``class_probs``
    [B, Q, C + 1], ``mask_probs`` = sigmoid of the mask logits [B, Q, H, W] -> [B, H, W]. The
    scores are laid out [pixels, classes] so that the argmax reads contiguous memory (first
    maximum on ties, as ``argmax`` over classes always does); a per-image product of a
    transposed view was 1.8x faster than ``bmm`` at 128 px (one thread)."""
    b, q, h, w = mask_probs.shape
    out = torch.empty((b, h * w), dtype=torch.long)
    flat = mask_probs.reshape(b, q, h * w)
    weights = class_probs[:, :, :-1].float()
    for i in range(b):  # one [pixels, Q] x [Q, C] product per image beats a batched one here
        out[i] = (flat[i].T @ weights[i]).argmax(-1)
    return out.reshape(b, h, w)


@dataclass
class QueryMasks:
    """What instance inference needs of one image's query masks, whatever the classifier:
    binary masks (logit > 0) as COCO RLEs with their boxes, and each mask's score (the mean
    sigmoid inside it). Computed once per image; a trial only re-ranks (query, class) pairs."""

    area: Tensor  # [Q] long, pixels of each binary mask
    score: Tensor  # [Q] float, mean sigmoid inside the mask (0 for an empty mask)
    rles: list[dict[str, Any]]  # [Q] COCO RLE ({"size", "counts": str})
    boxes: np.ndarray  # [Q, 4] float64 xywh (pycocotools' toBbox)

    @classmethod
    def of(cls, mask_logits: Tensor) -> QueryMasks:
        """From upsampled mask logits [Q, H, W]."""
        logits = mask_logits.float()
        return cls.from_masks(logits > 0, logits.sigmoid())  # logit > 0: sigmoid > 0.5

    @classmethod
    def from_masks(cls, masks: Tensor, mask_probs: Tensor) -> QueryMasks:
        """From the binary masks (logit > 0) [Q, H, W] and the sigmoid of the logits."""
        area = torch.count_nonzero(masks.flatten(1), dim=1)
        score = (mask_probs * masks).flatten(1).sum(1) / (area + 1e-6)
        if len(masks):
            encoded = mask_utils.encode(np.asfortranarray(
                masks.numpy().astype(np.uint8).transpose(1, 2, 0)))
            boxes = np.asarray(mask_utils.toBbox(encoded), dtype=np.float64).reshape(-1, 4)
        else:
            encoded, boxes = [], np.zeros((0, 4), dtype=np.float64)
        rles = [{"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
                for rle in encoded]
        return cls(area, score, rles, boxes)

    def masks(self, rows: Tensor) -> Tensor:
        """The binary masks of ``rows`` (query indices), decoded: [N, H, W] bool."""
        if not len(rows):
            h, w = self.rles[0]["size"] if self.rles else (0, 0)
            return torch.zeros((0, h, w), dtype=torch.bool)
        chosen = [dict(self.rles[int(q)], counts=self.rles[int(q)]["counts"].encode())
                  for q in rows]
        return torch.from_numpy(mask_utils.decode(chosen).transpose(2, 0, 1).astype(bool))


@dataclass
class InstancePrediction:
    classes: Tensor  # [N] long, contiguous class indices
    scores: Tensor  # [N] float, class prob x mask score, sorted descending
    queries: Tensor  # [N] long, the query each detection comes from
    query_masks: QueryMasks  # every query's mask (RLE), score and box

    @property
    def masks(self) -> Tensor:
        """[N, H, W] bool, one mask per detection."""
        return self.query_masks.masks(self.queries)


def instance_inference(class_probs: Tensor, mask_logits: Tensor, *,
                       allowed: Tensor | None = None, detections_per_image: int = 100,
                       query_masks: QueryMasks | None = None) -> InstancePrediction:
    """Top (query, class) pairs among the ``allowed`` classes (bool [C]; all when None).
    ``query_masks``: :meth:`QueryMasks.of` ``mask_logits``, when the caller has it."""
    _check(class_probs, mask_logits)
    stats = query_masks if query_masks is not None else QueryMasks.of(mask_logits)
    return rank_detections(class_probs, stats, allowed=allowed,
                           detections_per_image=detections_per_image)


def rank_detections(class_probs: Tensor, stats: QueryMasks, *, allowed: Tensor | None = None,
                    detections_per_image: int = 100) -> InstancePrediction:
    """:func:`instance_inference` from the query masks' statistics (no per-pixel work)."""
    num_classes = class_probs.shape[1] - 1
    columns = (torch.arange(num_classes) if allowed is None
               else torch.nonzero(allowed.to(torch.bool).cpu()).flatten())
    columns = columns.to(class_probs.device)
    q = class_probs.shape[0]
    if columns.numel() == 0 or q == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return InstancePrediction(empty, torch.zeros(0), empty, stats)
    probs = class_probs[:, columns].float()  # [Q, A]
    k = min(detections_per_image, probs.numel())
    top, flat_index = probs.flatten().topk(k)  # sorted, largest first
    # A class the classifier rules out (probability 0: a -inf logit, e.g. the seen classes in
    # ZSL) is never detected, whatever the ranking.
    possible = top > 0
    top, flat_index = top[possible], flat_index[possible]
    queries = torch.div(flat_index, columns.numel(), rounding_mode="floor")
    classes = columns[flat_index % columns.numel()]
    scores = top * stats.score[queries]
    order = torch.argsort(scores, descending=True, stable=True)
    return InstancePrediction(classes[order], scores[order], queries[order], stats)


@dataclass
class PanopticSegmentPrediction:
    id: int
    class_index: int
    isthing: bool
    score: float
    query: int


def panoptic_inference(class_probs: Tensor, mask_logits: Tensor, isthing: Tensor, *,
                       object_mask_threshold: float = 0.8, overlap_threshold: float = 0.8,
                       ) -> tuple[Tensor, list[PanopticSegmentPrediction]]:
    """([H, W] int32 segment ids, segments) with PADing's rules (module docstring)."""
    _check(class_probs, mask_logits)
    return panoptic_segments(class_probs, mask_logits.float().sigmoid(), isthing,
                             object_mask_threshold=object_mask_threshold,
                             overlap_threshold=overlap_threshold)


def panoptic_segments(class_probs: Tensor, mask_probs: Tensor, isthing: Tensor, *,
                      object_mask_threshold: float = 0.8, overlap_threshold: float = 0.8,
                      ) -> tuple[Tensor, list[PanopticSegmentPrediction]]:
    """:func:`panoptic_inference` from the masks' sigmoid [Q, H, W]."""
    no_object = class_probs.shape[1] - 1
    h, w = mask_probs.shape[-2:]
    ids = torch.zeros((h, w), dtype=torch.int32)
    segments: list[PanopticSegmentPrediction] = []
    best, label = class_probs.float().max(-1)
    keep = (label != no_object) & (best > object_mask_threshold)
    if not bool(keep.any()):
        return ids, segments
    kept_queries = torch.nonzero(keep).flatten().tolist()
    probs = mask_probs[keep].cpu()  # [K, H, W]
    scores = best[keep].cpu()
    labels = label[keep].cpu()
    owner = (scores[:, None, None] * probs).argmax(0)  # first maximum on ties
    thing = isthing.to(torch.bool).cpu()
    stuff_ids: dict[int, int] = {}
    for k, query in enumerate(kept_queries):
        own = probs[k] >= 0.5
        won = owner == k
        own_area = int(own.sum())
        won_area = int(won.sum())
        visible = won & own
        if own_area == 0 or won_area == 0 or not bool(visible.any()):
            continue
        if won_area / own_area < overlap_threshold:
            continue
        c = int(labels[k])
        if not bool(thing[c]) and c in stuff_ids:
            ids[visible] = stuff_ids[c]  # one segment per stuff class
            continue
        segment_id = len(segments) + 1
        ids[visible] = segment_id
        segments.append(PanopticSegmentPrediction(segment_id, c, bool(thing[c]),
                                                  float(scores[k]), int(query)))
        if not bool(thing[c]):
            stuff_ids[c] = segment_id
    return ids, segments


@dataclass
class InstanceResults:
    """One image's detections in COCO results form, as columns (``entries()`` gives the
    results-json dicts; the in-memory evaluation hands the columns to COCOeval directly)."""

    image_id: int
    category_ids: np.ndarray  # [N] int64, dataset category ids
    scores: np.ndarray  # [N] float64
    boxes: np.ndarray  # [N, 4] float64, xywh
    rles: list[dict[str, Any]]  # [N] COCO RLEs ({"size", "counts": str}), shared per query

    def __len__(self) -> int:
        return len(self.scores)

    def entries(self) -> list[dict[str, Any]]:
        scores, boxes = self.scores.tolist(), self.boxes.tolist()
        return [{"image_id": self.image_id, "category_id": int(c), "segmentation": rle,
                 "bbox": box, "score": score}
                for c, rle, box, score in zip(self.category_ids.tolist(), self.rles, boxes,
                                              scores, strict=True)]


def instance_results(prediction: InstancePrediction, image_id: int,
                     category_ids: Sequence[int]) -> InstanceResults:
    stats = prediction.query_masks
    queries = prediction.queries.numpy()
    lookup = np.asarray(category_ids, dtype=np.int64)
    return InstanceResults(
        image_id=image_id, category_ids=lookup[prediction.classes.numpy()],
        scores=prediction.scores.double().numpy(),
        boxes=stats.boxes[queries] if len(queries) else np.zeros((0, 4)),
        rles=[stats.rles[q] for q in queries.tolist()])


def encode_instances(prediction: InstancePrediction, image_id: int,
                     category_ids: Sequence[int]) -> list[dict[str, Any]]:
    """COCO results entries (RLE segmentation, xywh bbox from the mask) for one image."""
    return instance_results(prediction, image_id, category_ids).entries()


# -- classifiers ---------------------------------------------------------------------------------
def segmenter_classifier(model: Any, class_ids: Sequence[int], split: Split) -> Classifier:
    """The segmenter's own head as a classifier over the split: its K outputs (classifier order
    ``class_ids``, e.g. the seen classes) go to their split columns, no-object to the last
    column, and classes it never learned get -inf (probability 0)."""
    index = split.id_to_index()
    missing = [cid for cid in class_ids if cid not in index]
    if missing:
        raise ConfigError(f"class_ids {missing[:5]} are not classes of split {split.name}")
    if len(class_ids) != model.num_classes:
        raise ConfigError(f"class_ids has {len(class_ids)} ids, the segmenter has "
                          f"{model.num_classes} classes")
    columns = torch.tensor([index[cid] for cid in class_ids] + [split.num_classes])
    total = split.num_classes + 1

    def classify(embeddings: Tensor) -> Tensor:
        logits = model.classify(embeddings)
        out = logits.new_full((*logits.shape[:-1], total), float("-inf"))
        out[..., columns.to(logits.device)] = logits
        return out

    return classify


# -- datasets of images and of cached outputs ----------------------------------------------------
@dataclass(frozen=True)
class LayoutListing:
    images: dict[int, ImageInfo]
    instance_categories: set[int] | None  # category ids of the instances json, if there is one
    panoptic_files: dict[int, str]


def layout_listing(layout: CocoLayout, split: Split | None = None) -> LayoutListing:
    """The images of a layout (listed from ``split``'s benchmark sources, see
    :func:`~zeroseg.platform.data.sources.list_images`), with what inference needs to name and
    restrict its outputs."""
    images = list_images(layout, benchmark_sources(split) if split is not None else SOURCES)
    instance_cats: set[int] | None = None
    if layout.instances_json.is_file():
        data = load_json(layout.instances_json, "COCO instances json", ("categories",))
        instance_cats = {int(c["id"]) for c in data["categories"] if isinstance(c, dict)}
    panoptic_files: dict[int, str] = {}
    if layout.panoptic_json.is_file():
        data = load_json(layout.panoptic_json, "COCO panoptic json", ("annotations",))
        panoptic_files = {int(a["image_id"]): str(a["file_name"]) for a in data["annotations"]
                          if isinstance(a, dict) and "image_id" in a and "file_name" in a}
    return LayoutListing(images, instance_cats, panoptic_files)


class InferenceImages(torch.utils.data.Dataset):
    """A layout's images as the model sees them at inference (``resize``: squashed to its
    square, or shortest edge to ``test_size``), in ascending image id."""

    def __init__(self, layout: CocoLayout, images: Mapping[int, ImageInfo], resize: Any,
                 image_ids: Sequence[int] | None = None):
        self.layout = layout
        self.images = dict(images)
        self.image_ids = sorted(self.images) if image_ids is None else list(image_ids)
        self.resize = resize

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        info = self.images[self.image_ids[index]]
        path = self.layout.images / info.file_name
        image = read_image(path)
        if image.shape[:2] != (info.height, info.width):
            raise DataError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, its "
                            f"annotation says {info.width}x{info.height}")
        pixels = normalize_image(image)
        size = self.resize.inference_size(info.height, info.width)
        if tuple(pixels.shape[-2:]) != size:
            pixels = F.interpolate(pixels[None], size=size, mode="bilinear",
                                   align_corners=False)[0]
        return {"pixel_values": pixels, "image_id": info.id, "resized_size": size}


def _collate_images(items: Sequence[dict[str, Any]], divisibility: int = 32) -> dict[str, Any]:
    sizes = [tuple(it["pixel_values"].shape[-2:]) for it in items]
    if len(set(sizes)) == 1 and all(d % divisibility == 0 for d in sizes[0]):
        pixels = torch.stack([it["pixel_values"] for it in items])
    else:  # pad (bottom / right) to a multiple of ``divisibility``, as Mask2Former does
        height = -(-max(h for h, _ in sizes) // divisibility) * divisibility
        width = -(-max(w for _, w in sizes) // divisibility) * divisibility
        pixels = torch.stack([F.pad(it["pixel_values"], (0, width - w, 0, height - h))
                              for it, (h, w) in zip(items, sizes, strict=True)])
    return {"pixel_values": pixels, "image_id": [it["image_id"] for it in items],
            "resized_size": [it["resized_size"] for it in items]}


def _field(item: Any, name: str) -> Any:
    if isinstance(item, Mapping):
        if name not in item:
            raise DataError(f"cached segmenter output has no '{name}' (expected image_id, "
                            f"query_embeddings [Q, D], mask_logits [Q, h, w])")
        return item[name]
    if not hasattr(item, name):
        raise DataError(f"cached segmenter output has no '{name}' (expected image_id, "
                        f"query_embeddings [Q, D], mask_logits [Q, h, w])")
    return getattr(item, name)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (``None``: leave them)."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _model_outputs(model: Any, layout: CocoLayout, images: Mapping[int, ImageInfo],
                   batch_size: int, device: str | torch.device, num_workers: int,
                   threads: int | None) -> Iterable[Output]:
    resize = model.config.resize_spec()
    squash = resize.mode == "squash"
    dataset = InferenceImages(layout, images, resize)
    # Aspect-preserving resize: one image at a time, padded to its own multiple of 32, as
    # Mask2Former evaluates (and as the feature cache extracts).
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size if squash else 1,
                                         shuffle=False, num_workers=num_workers,
                                         collate_fn=_collate_images)
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            with torch.no_grad(), torch_threads(threads):
                out = model(batch["pixel_values"].to(device))
            mask_size = tuple(out.mask_logits.shape[-2:])
            input_size = tuple(batch["pixel_values"].shape[-2:])
            for i, image_id in enumerate(batch["image_id"]):
                frame = None if squash else (*mask_size, *input_size,
                                             *batch["resized_size"][i])
                yield int(image_id), out.query_embeddings[i], out.mask_logits[i], frame
    finally:
        model.train(was_training)


# -- predictions of images ------------------------------------------------------------------------
@dataclass
class ImagePrediction:
    """What inference predicts for one image, in memory: the writer turns it into COCO result
    files, the platform's in-memory evaluation scores it directly."""

    info: ImageInfo
    semantic: np.ndarray | None = None  # [H, W] contiguous class indices
    instances: InstanceResults | None = None  # COCO results (RLE, bbox, score), as columns
    panoptic: np.ndarray | None = None  # [H, W] int32 segment ids (0 = VOID)
    segments: list[dict[str, Any]] | None = None  # COCO segments_info of ``panoptic``


#: How many float32 elements of upsampled mask logits one chunk of images may hold (16 MiB:
#: temporaries of that size are reused by the allocator instead of being page-faulted in anew).
CHUNK_ELEMENTS = 1 << 22


@dataclass
class UpsampledChunk:
    """Consecutive images of one size, ready for any classifier: their query embeddings, the
    sigmoid of their mask logits upsampled to the original image size (``mask_probs``
    [B, Q, H, W] float32) and, for instance inference, their :class:`QueryMasks`."""

    infos: list[ImageInfo]
    embeddings: list[Tensor]
    mask_probs: Tensor
    query_masks: list[QueryMasks] | None = None

    @property
    def nbytes(self) -> int:
        return self.mask_probs.numel() * self.mask_probs.element_size()


def upsampled_chunks(outputs: Iterable[Output | tuple[int, Tensor, Tensor]],
                     images: Mapping[int, ImageInfo], *, instances: bool = True,
                     where: str = "segmenter outputs",
                     max_elements: int = CHUNK_ELEMENTS) -> Iterator[UpsampledChunk]:
    """Group per-image outputs (:data:`Output`; the frame may be left out) into chunks of
    consecutive same-sized images and bring each chunk's masks to the original size in one
    call (:func:`restore_masks`);
    with ``instances``, also each image's :class:`QueryMasks`. Every image id must be one of
    ``images``, once."""
    done: set[int] = set()
    pending: list[tuple[ImageInfo, Tensor, Tensor]] = []
    pending_frame: tuple[int, ...] | None = None

    def flush() -> UpsampledChunk:
        info = pending[0][0]
        stacked = torch.stack([m for _, _, m in pending])
        logits = restore_masks(stacked, pending_frame, (info.height, info.width))
        positive = logits > 0 if instances else None
        probs = logits.sigmoid_()  # in place: the logits are not needed any more
        queries = ([QueryMasks.from_masks(positive[i], probs[i]) for i in range(len(pending))]
                   if positive is not None else None)
        chunk = UpsampledChunk([i for i, _, _ in pending], [e for _, e, _ in pending], probs,
                               queries)
        pending.clear()
        return chunk

    for output in outputs:
        image_id, embeddings, mask_logits = output[:3]
        frame = tuple(output[3]) if len(output) > 3 and output[3] is not None else None
        info = images.get(image_id)
        if info is None:
            raise DataError(f"{where}: image id {image_id} is not an image of this split")
        if image_id in done:
            raise DataError(f"{where}: image id {image_id} appears twice")
        done.add(image_id)
        if pending:
            first, _, first_masks = pending[0]
            same = ((first.height, first.width) == (info.height, info.width)
                    and first_masks.shape == mask_logits.shape and frame == pending_frame)
            size = (len(pending) + 1) * mask_logits.shape[0] * info.height * info.width
            if not same or size > max_elements:
                yield flush()
        pending.append((info, embeddings, mask_logits.detach().cpu().float()))
        pending_frame = frame
    if pending:
        yield flush()


class Predictor:
    """The three tasks' predictions of a chunk of images, from the classifier's logits and the
    upsampled masks (the rules of the module docstring)."""

    def __init__(self, split: Split, tasks: Sequence[str], config: InferenceConfig,
                 instance_categories: set[int] | None = None):
        self.split = split
        self.tasks = tuple(tasks)
        self.config = config
        self.category_ids = [c.id for c in split.classes]
        self.isthing = torch.tensor([c.isthing for c in split.classes], dtype=torch.bool)
        allowed = [c.isthing and (instance_categories is None or c.id in instance_categories)
                   for c in split.classes]
        self.allowed = torch.tensor(allowed, dtype=torch.bool)

    def check_logits(self, info: ImageInfo, class_logits: Tensor) -> None:
        c = self.split.num_classes
        if class_logits.ndim != 2 or class_logits.shape[1] != c + 1:
            raise ConfigError(f"classifier returned logits of shape {tuple(class_logits.shape)} "
                              f"for image {info.id}; expected [Q, {c + 1}] (split {self.split.name}"
                              f": {c} classes + no object)")

    def predict(self, chunk: UpsampledChunk, classifier: Classifier) -> list[ImagePrediction]:
        logits = []
        for info, embeddings in zip(chunk.infos, chunk.embeddings, strict=True):
            with torch.no_grad():
                one = torch.as_tensor(classifier(embeddings))
            self.check_logits(info, one)
            logits.append(one.detach().cpu())
        probs = torch.stack([class_probabilities(x) for x in logits])  # [B, Q, C + 1]
        sigmoid = chunk.mask_probs
        out = [ImagePrediction(info) for info in chunk.infos]
        if "semantic" in self.tasks:
            for pred, labels in zip(out, semantic_maps(probs, sigmoid).numpy(), strict=True):
                pred.semantic = labels
        if "instance" in self.tasks:
            if chunk.query_masks is None:
                raise ValueError("instance inference needs chunks built with instances=True")
            for pred, p, stats in zip(out, probs, chunk.query_masks, strict=True):
                detections = rank_detections(p, stats, allowed=self.allowed,
                                             detections_per_image=self.config.detections_per_image)
                pred.instances = instance_results(detections, pred.info.id, self.category_ids)
        if "panoptic" in self.tasks:
            cfg = self.config
            for i, pred in enumerate(out):
                ids, segments = panoptic_segments(
                    probs[i], sigmoid[i], self.isthing,
                    object_mask_threshold=cfg.object_mask_threshold,
                    overlap_threshold=cfg.overlap_threshold)
                pred.panoptic = ids.numpy()
                pred.segments = [{"id": seg.id, "category_id": self.category_ids[seg.class_index],
                                  "isthing": seg.isthing, "score": seg.score}
                                 for seg in segments]
        return out


def predict_images(outputs: Iterable[tuple[int, Tensor, Tensor]], classifier: Classifier,
                   images: Mapping[int, ImageInfo], predictor: Predictor, *,
                   where: str = "segmenter outputs") -> Iterator[ImagePrediction]:
    """Per-image predictions of ``outputs`` (``(image_id, query_embeddings, mask_logits)``)."""
    for chunk in upsampled_chunks(outputs, images, instances="instance" in predictor.tasks,
                                  where=where):
        yield from predictor.predict(chunk, classifier)


# -- writing --------------------------------------------------------------------------------------
class _Writer:
    """Writes predictions, one image at a time, as COCO result files (in staging folders)."""

    def __init__(self, split: Split, tasks: Sequence[str], staging: Mapping[str, Path],
                 panoptic_files: Mapping[int, str]):
        self.tasks = tuple(tasks)
        self.staging = staging
        self.panoptic_files = panoptic_files
        if "semantic" in self.tasks:
            self.png_labels = semantic_png_labels(split)
        self.instances: list[dict[str, Any]] = []
        self.panoptic: list[dict[str, Any]] = []
        self.count = 0

    def add(self, pred: ImagePrediction) -> None:
        info = pred.info
        stem = Path(info.file_name).stem
        if pred.semantic is not None:
            Image.fromarray(self.png_labels[pred.semantic]).save(
                self.staging["semantic"] / f"{stem}.png")
        if pred.instances is not None:
            self.instances.extend(pred.instances.entries())
        if pred.panoptic is not None:
            file_name = self.panoptic_files.get(info.id, f"{stem}.png")
            Image.fromarray(id2rgb(pred.panoptic), mode="RGB").save(
                self.staging["panoptic"] / file_name)
            self.panoptic.append({"image_id": info.id, "file_name": file_name,
                                  "segments_info": pred.segments})
        self.count += 1


def semantic_png_labels(split: Split) -> np.ndarray:
    """Contiguous class index -> the class's semantic PNG label (uint8)."""
    missing = [c.name for c in split.classes if c.png_label is None]
    if missing:
        raise ConfigError(f"split {split.name}: classes {missing[:3]} have no semantic "
                          f"PNG label; cannot write semantic predictions")
    lut = np.full(split.num_classes, 255, dtype=np.uint8)
    for c in split.classes:
        lut[c.index] = int(c.png_label)  # type: ignore[arg-type]
    return lut


def cached_outputs(source: Iterable[Any]) -> Iterator[Output]:
    """:data:`Output` of cached per-image outputs (mappings or objects with ``image_id``,
    ``query_embeddings``, ``mask_logits`` and optionally ``frame``)."""
    for it in source:
        frame = it.get("frame") if isinstance(it, Mapping) else getattr(it, "frame", None)
        yield (int(_field(it, "image_id")), torch.as_tensor(_field(it, "query_embeddings")),
               torch.as_tensor(_field(it, "mask_logits")), frame)


def predict_dataset(source: Any, classifier: Classifier | None, layout: CocoLayout, split: Split,
                    out_dir: str | Path, tasks: Sequence[str] = TASKS, *,
                    config: InferenceConfig | None = None, batch_size: int = 8,
                    device: str | torch.device = "cpu", num_workers: int = 0,
                    threads: int | None = 1) -> dict[str, Path]:
    """Predict every image of ``layout`` and write the requested tasks' COCO result files.

    ``source``: a :class:`~zeroseg.methods.segmenter.model.Segmenter` (run here on the layout's
    images), or an iterable of cached per-image outputs (mappings or objects with ``image_id``,
    ``query_embeddings`` [Q, D] and ``mask_logits`` [Q, h, w] at any resolution).
    ``classifier``: query embeddings [Q, D] -> logits [Q, C + 1] over ``split``'s classes in
    contiguous order + no object; ``None`` uses the segmenter's own head, which must then cover
    the split's classes in order (the oracle). A model runs in batches of ``batch_size`` with
    ``threads`` torch threads (``None``: the process's setting), see the module docstring.
    Returns ``{task: path}`` for the evaluators: ``evaluate_semantic(layout, split,
    paths["semantic"])`` and likewise.
    """
    config = config or InferenceConfig()
    config.validate()
    tasks = tuple(dict.fromkeys(tasks))
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ConfigError(f"tasks must be a non-empty subset of {list(TASKS)}, got {list(tasks)}")
    listing = layout_listing(layout, split)
    if isinstance(source, Segmenter):
        if classifier is None:
            if source.num_classes != split.num_classes:
                raise ConfigError(f"classifier: the segmenter has {source.num_classes} classes, "
                                  f"split {split.name} has {split.num_classes}; pass a "
                                  f"classifier (e.g. segmenter_classifier)")
            classifier = source.classify
        outputs: Iterable[Any] = _model_outputs(source, layout, listing.images, batch_size,
                                                device, num_workers, threads)
    else:
        if classifier is None:
            raise ConfigError("classifier: required when predicting from cached outputs")
        outputs = cached_outputs(source)

    out_dir = Path(out_dir)
    targets = {"semantic": out_dir / SEMANTIC_DIR, "panoptic": out_dir / PANOPTIC_DIR,
               "instance": out_dir / INSTANCES_JSON}
    created = not out_dir.exists()
    predictor = Predictor(split, tasks, config, listing.instance_categories)
    predictions = predict_images(outputs, classifier, listing.images, predictor,
                                 where=f"segmenter outputs for {layout.annotations} split "
                                       f"'{layout.split}'")
    try:
        count = write_predictions(predictions, split, listing, tasks, targets)
    except BaseException:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # leave no empty folder behind a failed first run
        raise
    log.info("wrote %s predictions for %d images to %s", "/".join(tasks), count, out_dir)
    return {t: targets[t] for t in tasks}


def write_predictions(predictions: Iterable[ImagePrediction], split: Split,
                      listing: LayoutListing,
                      tasks: Sequence[str], targets: Mapping[str, Path]) -> int:
    """Write per-image predictions as the tasks' COCO result files (each replaced atomically);
    returns the number of images written."""
    with contextlib.ExitStack() as stack:
        staging = {t: stack.enter_context(atomic_directory(targets[t], overwrite=True))
                   for t in tasks if t != "instance"}
        writer = _Writer(split, tasks, staging, listing.panoptic_files)
        for prediction in predictions:
            writer.add(prediction)
        if "panoptic" in tasks:
            atomic_write_json(staging["panoptic"] / PANOPTIC_JSON,
                              {"annotations": writer.panoptic})
        if "instance" in tasks:
            atomic_write_json(targets["instance"], writer.instances)
    return writer.count
