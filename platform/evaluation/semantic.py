"""Semantic segmentation: per-class IoU from a pixel confusion matrix, seen / unseen / HM.

Protocol (PROTOCOLS.md 3a, PADing / ZegFormer / ZS3):

- GT pixels labelled 255 (``IGNORE_LABEL``) are left out of every count.
- The prediction may name any class of the split (GZSL: argmax over all classes), or 255 for
  "no prediction"; a 255 prediction on a labelled pixel is a miss for the GT class and a false
  positive for nobody.
- IoU_c = TP_c / (GT_c + Pred_c - TP_c), where GT_c counts the labelled pixels of class c and
  Pred_c the pixels predicted as c *among the counted pixels*.
- A class with an empty union (never in the GT, never predicted) is undefined: ``None`` in the
  table, left out of the means. A class predicted but absent from the GT has IoU 0 and counts
  (the confusion-matrix mIoU of ZS3 and detectron2's ``mIoU`` denominator do the same).
- ZSL: only pixels whose GT class is unseen are counted; per-class values and the mean cover
  the unseen classes. Predicting a seen class on such a pixel is an error (a miss for the unseen
  class), while predictions on seen-GT pixels are not counted at all.

Counting: per image, one ``np.bincount`` gives the 256 x 256 histogram of (GT value, predicted
value) pairs; the summed histogram is mapped through value -> class tables into the confusion
matrix (one row per class plus a row for pixels that are not counted, one column per class plus
a "no prediction" column). Counts are integers, so the result is the same for any number of
worker processes.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from zeroseg.platform.data.classes import IGNORE_LABEL, Split
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.data.voc import read_image_set
from zeroseg.platform.errors import ConfigError, DataError
from zeroseg.platform.evaluation._parallel import (
    choose_workers,
    ordered_map,
    split_chunks,
)
from zeroseg.platform.evaluation.summary import (
    SEMANTIC_METRICS,
    ZSL,
    EvalResult,
    check_setting,
    summarize,
)

log = logging.getLogger(__name__)

_INVALID = -1


def _row_lut(split: Split, setting: str, gt_values: np.ndarray) -> np.ndarray:
    """8-bit GT value -> confusion-matrix row: the class index, C for "not counted" (255,
    values mapped to 255, or a seen class in ZSL), ``_INVALID`` for values mapped to it."""
    c = split.num_classes
    counted = split.unseen_mask if setting == ZSL else np.ones(c, dtype=bool)
    rows = np.full(256, _INVALID, dtype=np.int64)
    for value, index in enumerate(np.asarray(gt_values).tolist()):
        if index == IGNORE_LABEL:
            rows[value] = c
        elif 0 <= index < c:
            rows[value] = index if counted[index] else c
    return rows


def _col_lut(split: Split, pred_values: np.ndarray) -> np.ndarray:
    """8-bit predicted value -> confusion-matrix column: the class index, C for "no prediction"
    (255 only), ``_INVALID`` for anything else."""
    c = split.num_classes
    cols = np.full(256, _INVALID, dtype=np.int64)
    for value, index in enumerate(np.asarray(pred_values).tolist()):
        if 0 <= index < c:
            cols[value] = index
    cols[IGNORE_LABEL] = c
    return cols


def _index_values(c: int) -> np.ndarray:
    """Value -> index table of arrays that hold contiguous indices (255 = ignore / none)."""
    values = np.full(256, _INVALID, dtype=np.int64)
    values[:c] = np.arange(c)
    values[IGNORE_LABEL] = IGNORE_LABEL
    return values


def _as_uint8(values: np.ndarray, what: str) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype == np.uint8:
        return values
    if values.size and (values.min() < 0 or values.max() > 255):
        bad = values[(values < 0) | (values > 255)].flat[0]
        raise DataError(f"{what}: label {int(bad)} is outside 0..255")
    return values.astype(np.uint8)


class _Scratch(threading.local):
    """A per-thread pixel buffer reused from image to image (a fresh multi-MB temporary would
    be page-faulted in again for every image)."""

    def __init__(self) -> None:
        self.key = np.empty(0, dtype=np.intp)

    def buffer(self, n: int) -> np.ndarray:
        if self.key.size < n:
            self.key = np.empty(n, dtype=np.intp)
        return self.key[:n]


_scratch = _Scratch()


def joint_histogram(gt: np.ndarray, pred: np.ndarray, what: str = "image") -> np.ndarray:
    """256 x 256 pixel counts of (GT value, predicted value) for one image.

    Counting raw 8-bit values needs no lookup per pixel; the values are mapped to classes once,
    on the summed histogram (:func:`confusion_from_histogram`).
    """
    if gt.shape != pred.shape:
        raise DataError(f"{what}: prediction size {pred.shape} differs from the GT size {gt.shape}")
    gt8 = _as_uint8(gt, f"{what} (GT)").ravel()
    pred8 = _as_uint8(pred, f"{what} (prediction)").ravel()
    key = _scratch.buffer(gt8.size)
    np.copyto(key, gt8, casting="unsafe")
    key <<= 8
    key |= pred8
    return np.bincount(key, minlength=256 * 256).reshape(256, 256)


def check_histogram(hist: np.ndarray, rows: np.ndarray, cols: np.ndarray, what: str) -> None:
    """One-line DataError for a GT or predicted value that is no class (nor 255)."""
    bad_gt = np.nonzero(hist[rows < 0].any(axis=1))[0]
    if bad_gt.size:
        raise DataError(f"{what}: GT label {int(np.nonzero(rows < 0)[0][bad_gt[0]])} is not a "
                        f"class of the split (nor 255)")
    bad_pred = np.nonzero(hist[:, cols < 0].any(axis=0))[0]
    if bad_pred.size:
        raise DataError(f"{what}: predicted label {int(np.nonzero(cols < 0)[0][bad_pred[0]])} is "
                        f"not a class of the split (nor 255)")


def confusion_from_histogram(hist: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                             num_classes: int) -> np.ndarray:
    """(C+1) x (C+1) confusion matrix (last row: not counted; last column: no prediction)."""
    n = num_classes + 1
    confusion = np.zeros((n, n), dtype=np.int64)
    valid_r, valid_c = np.nonzero(rows >= 0)[0], np.nonzero(cols >= 0)[0]
    np.add.at(confusion, (rows[valid_r][:, None], cols[valid_c][None, :]),
              hist[np.ix_(valid_r, valid_c)])
    return confusion


class SemanticEvaluator:
    """mIoU accumulator with detectron2's ``reset / process / evaluate`` interface.

    ``process`` takes arrays of *contiguous class indices* (0..C-1, 255 = ignore / no
    prediction); :func:`evaluate_semantic` reads PNGs holding dataset PNG labels instead.
    """

    def __init__(self, split: Split, setting: str = "gzsl", *,
                 gt_values: np.ndarray | None = None, pred_values: np.ndarray | None = None):
        """``gt_values`` / ``pred_values``: optional 256-entry tables from the arrays' values
        to contiguous class indices (255: ignore / no prediction; -1: an invalid value). By
        default the arrays hold contiguous indices."""
        self.split = split
        self.setting = check_setting(setting)
        c = split.num_classes
        if c >= IGNORE_LABEL:
            raise ConfigError(
                f"split {split.name}: {c} classes; semantic evaluation needs fewer than 255")
        self._rows = _row_lut(split, self.setting,
                              _index_values(c) if gt_values is None else gt_values)
        self._cols = _col_lut(split, _index_values(c) if pred_values is None else pred_values)
        self.reset()

    def reset(self) -> None:
        self.histogram = np.zeros((256, 256), dtype=np.int64)
        self.num_images = 0

    def process(self, gt: np.ndarray, pred: np.ndarray, name: str = "image") -> None:
        """Add one image: ``gt`` and ``pred`` are HxW arrays of class indices or 255."""
        hist = joint_histogram(gt, pred, name)
        check_histogram(hist, self._rows, self._cols, name)
        self.histogram += hist
        self.num_images += 1

    def add_histogram(self, histogram: np.ndarray, num_images: int) -> None:
        """Merge counts accumulated elsewhere (another process or evaluator)."""
        self.histogram += np.asarray(histogram, dtype=np.int64)
        self.num_images += int(num_images)

    @property
    def confusion(self) -> np.ndarray:
        """(C+1) x (C+1): rows GT class (last: not counted), columns prediction (last: none)."""
        return confusion_from_histogram(self.histogram, self._rows, self._cols,
                                        self.split.num_classes)

    def evaluate(self, options: dict | None = None) -> EvalResult:
        return semantic_result(self.confusion, self.split, self.setting, self.num_images,
                               options=options)


def semantic_result(confusion: np.ndarray, split: Split, setting: str, num_images: int,
                    options: dict | None = None) -> EvalResult:
    """Per-class IoU and seen / unseen / HM from a (C+1) x (C+1) confusion matrix."""
    c = split.num_classes
    counted = confusion[:c, :]  # rows of counted GT pixels, "no prediction" column included
    tp = np.diagonal(counted).astype(np.int64)
    gt_pixels = counted.sum(axis=1)
    pred_pixels = counted[:, :c].sum(axis=0)
    union = gt_pixels + pred_pixels - tp
    per_class: dict[int, dict[str, float | None]] = {}
    details: dict[int, dict[str, int]] = {}
    for i in range(c):
        iou = float(tp[i]) / float(union[i]) if union[i] > 0 else None
        per_class[i] = {"iou": iou}
        details[i] = {"tp": int(tp[i]), "gt_pixels": int(gt_pixels[i]),
                      "pred_pixels": int(pred_pixels[i])}
    return summarize(
        "semantic", split, setting, SEMANTIC_METRICS, per_class, num_images=num_images,
        counts={"pixels": int(gt_pixels.sum()),
                "unpredicted_pixels": int(counted[:, c].sum())},
        options={"ignore_label": IGNORE_LABEL, "empty_union": "undefined", **(options or {})},
        details=details,
    )


# -- reading PNG folders ---------------------------------------------------------------------

def _read_label_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DataError(f"{path}: expected a single-channel label PNG, got mode {im.mode}")
            return np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"{path}: label PNG not found") from None
    except (OSError, SyntaxError) as e:
        raise DataError(f"{path}: not a readable PNG ({e})") from None


@dataclass(frozen=True)
class _SemanticChunk:
    pairs: tuple[tuple[str, str], ...]  # (GT PNG, prediction PNG)
    rows: np.ndarray
    cols: np.ndarray


def _semantic_chunk(chunk: _SemanticChunk) -> np.ndarray:
    total = np.zeros((256, 256), dtype=np.int64)
    for gt_path, pred_path in chunk.pairs:
        hist = joint_histogram(_read_label_png(Path(gt_path)), _read_label_png(Path(pred_path)),
                               pred_path)
        check_histogram(hist, chunk.rows, chunk.cols, pred_path)
        total += hist
    return total


def evaluate_semantic(layout: CocoLayout, split: Split, pred_dir: str | Path,
                      setting: str = "gzsl", *, workers: int | None = None) -> EvalResult:
    """mIoU of a folder of predicted label PNGs against the layout's semantic PNGs.

    Every GT PNG in ``layout.semantic_pngs`` (of a VOC tree: every image of its image set)
    needs a prediction PNG of the same file name in
    ``pred_dir`` holding the split's PNG labels (``ClassInfo.png_label``) or 255. GT values that
    are not a class of the split are unlabeled (ignored); predicted values that are neither a
    class nor 255 are an error.
    """
    setting = check_setting(setting)
    if split.num_classes >= IGNORE_LABEL:
        raise ConfigError(
            f"split {split.name}: {split.num_classes} classes; semantic PNGs hold fewer than 255")
    gt_dir = layout.require(layout.semantic_pngs, "semantic PNG folder")
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: prediction folder not found (expected PNGs named as in "
                        f"{gt_dir})")
    if layout.image_set is not None:  # a VOC tree: the label folder holds every split's PNGs

        gt_files = [gt_dir / f"{stem}.png" for stem in read_image_set(layout.image_set)]
        missing = [p for p in gt_files if not p.is_file()]
        if missing:
            raise DataError(f"{missing[0]}: GT PNG of an image of {layout.image_set} not found")
    else:
        gt_files = sorted(p for p in gt_dir.iterdir() if p.suffix == ".png")
    if not gt_files:
        raise DataError(f"{gt_dir}: no semantic PNGs found")
    pairs = []
    for gt_file in gt_files:
        pred_file = pred_dir / gt_file.name
        if not pred_file.is_file():
            raise DataError(f"{pred_file}: prediction PNG missing for GT {gt_file.name}")
        pairs.append((str(gt_file), str(pred_file)))

    # PNG value -> contiguous index. Values the split does not know are unlabeled in the GT
    # (png_lut maps them to 255) and an error in a prediction.
    png_lut = split.png_lut()
    pred_values = png_lut.copy()
    pred_values[png_lut == IGNORE_LABEL] = _INVALID
    evaluator = SemanticEvaluator(split, setting, gt_values=png_lut, pred_values=pred_values)

    with Image.open(gt_files[0]) as first:  # the header only: image size for the work estimate
        pixels = first.size[0] * first.size[1]
    n_workers = choose_workers(len(pairs), workers, pixels)
    chunks = [_SemanticChunk(tuple(chunk), evaluator._rows, evaluator._cols)
              for chunk in split_chunks(pairs, n_workers)]
    for chunk, hist in zip(chunks, ordered_map(_semantic_chunk, chunks, n_workers), strict=True):
        evaluator.add_histogram(hist, len(chunk.pairs))
    log.info("semantic %s: %d images evaluated", setting, evaluator.num_images)
    return evaluator.evaluate(options={"gt_dir": str(gt_dir), "pred_dir": str(pred_dir)})
