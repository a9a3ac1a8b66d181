"""Panoptic quality (PQ / SQ / RQ) with panopticapi's ``pq_compute`` semantics, vectorised.

Per image (PROTOCOLS.md section 8, re-implemented from the documented semantics):

1. PNG colours give segment ids (R + 256 G + 256^2 B); id 0 is VOID. Predicted areas are
   counted in the PNG; GT areas come from the GT json's ``area`` (the PNG count when absent).
   A predicted id in the PNG but not in ``segments_info`` (or the reverse), an unknown
   ``category_id``, a missing PNG and a GT image without a prediction are errors.
2. One ``np.bincount`` over (GT segment, predicted segment) pairs gives every intersection
   (for a batch of images: over the runs of equal pairs, weighted by their lengths).
3. Match: same category, non-crowd GT, and IoU > 0.5 *strictly*, where
   IoU = inter / (pred_area + gt_area - inter - pred_on_void): predicted pixels on VOID leave
   the union. IoU > 0.5 makes a match unique, so there is no assignment step.
4. FN: every unmatched non-crowd GT segment. Crowd segments are never FN; per category the last
   crowd segment of ``segments_info`` is the category's crowd region.
5. FP: an unmatched prediction, unless (its VOID pixels + its pixels on the same category's
   crowd region) > half its area, in which case it is ignored.

GT ids that appear in the PNG but not in ``segments_info`` are neither segments nor VOID (as in
panopticapi). Per category: PQ = sum(IoU) / (TP + FP/2 + FN/2), SQ = sum(IoU) / TP (0 when
TP = 0), RQ = TP / (TP + FP/2 + FN/2).

Classes with TP + FP + FN = 0: ``empty_classes="zero"`` (default, PADing's published protocol:
``panoptic_evaluation_gzero.py`` averages panopticapi's per-class table, where such a class has
PQ 0, over all 119 seen / 14 unseen classes; PROTOCOLS 3b) reports 0 and keeps them in the seen /
unseen means; ``"exclude"`` (panopticapi's All / Things / Stuff averages) reports ``None`` and
leaves them out. On a subset of images, where many classes are absent, the two differ a lot.

Categories of the GT json that are not classes of the split are not evaluated: their GT segments
are treated like VOID (as seen classes in ZSL, below) and predicted segments of them are dropped;
both are counted (``counts['gt_segments_outside_split']``, ``['pred_segments_outside_split']``).

ZSL: only unseen categories are evaluated. GT segments of seen categories (crowd included)
become VOID, and predicted segments of seen categories are dropped (their pixels become
unlabelled prediction). So a prediction lying mostly on seen objects is ignored rather than
counted as FP, exactly as a prediction on VOID, and a seen-class prediction over an unseen
object is a miss for that object. This mirrors semantic ZSL, where only unseen-GT pixels count.

Accumulation is deterministic: per-image IoU sums are added in GT-json image order whatever the
number of worker processes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zeroseg.platform.data.classes import Split
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.errors import ConfigError, DataError
from zeroseg.platform.evaluation._parallel import choose_workers, ordered_map, split_chunks
from zeroseg.platform.evaluation.summary import (
    PANOPTIC_METRICS,
    ZSL,
    EvalResult,
    check_setting,
    summarize,
)
from zeroseg.platform.io import read_json

log = logging.getLogger(__name__)

VOID = 0
EMPTY_CLASS_POLICIES = ("zero", "exclude")
#: Images scored together by :func:`pq_batch_stats` (bounds its padded [B, G, P] tables).
BATCH_IMAGES = 64


# -- per-image core --------------------------------------------------------------------------

@dataclass(frozen=True)
class Segments:
    """The ``segments_info`` of one image as arrays (json order)."""

    ids: np.ndarray  # int64 segment ids (non-zero, unique)
    cats: np.ndarray  # int64 contiguous class indices
    crowd: np.ndarray  # bool
    area: np.ndarray  # int64 json area, -1 where the json gives none


@dataclass
class ImageStats:
    """TP / FP / FN counts and IoU sums of one image, per contiguous class index."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    iou: np.ndarray


#: PNG ids have 24 bits: a per-thread table over all of them maps a pixel to its segment with one
#: gather (int16: 32 MiB, allocated on first use; only the entries of the current image are set).
_ID_SPACE = 1 << 24
_TABLE_LIMIT = np.iinfo(np.int16).max
#: A batch's pixel buffers (:func:`batch_intersections`) are kept per thread up to this many
#: pixels (64 images of 256 x 256: 12 MiB with int16 keys).
_BATCH_SCRATCH_PIXELS = 64 * 256 * 256


class _Scratch(threading.local):
    """Per-thread lookup table and pixel buffers, reused from image to image (fresh multi-MB
    temporaries would be page-faulted in again for every image)."""

    def __init__(self) -> None:
        self.table: np.ndarray | None = None
        self.small = np.empty(0, dtype=np.int16)
        self.key = np.empty(0, dtype=np.intp)
        self.batch_keys = np.empty(0, dtype=np.uint8)
        self.batch_flags = np.empty(0, dtype=bool)

    def id_table(self) -> np.ndarray:
        if self.table is None:
            self.table = np.full(_ID_SPACE, -1, dtype=np.int16)
        return self.table

    def buffers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(int16 buffer, intp buffer) of at least ``n`` elements, as length-n views."""
        if self.small.size < n:
            self.small = np.empty(n, dtype=np.int16)
            self.key = np.empty(n, dtype=np.intp)
        return self.small[:n], self.key[:n]

    def batch(self, n: int, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
        """(keys of ``dtype``, bool flags), ``n`` elements each, for one batch of pixels: kept
        from batch to batch up to :data:`_BATCH_SCRATCH_PIXELS`, fresh above."""
        itemsize = np.dtype(dtype).itemsize
        if n > _BATCH_SCRATCH_PIXELS:
            return np.empty(n, dtype=dtype), np.empty(n, dtype=bool)
        if self.batch_keys.size < n * itemsize:
            self.batch_keys = np.empty(n * itemsize, dtype=np.uint8)
            self.batch_flags = np.empty(n, dtype=bool)
        return self.batch_keys[:n * itemsize].view(dtype), self.batch_flags[:n]


_scratch = _Scratch()


def _table_ok(flat: np.ndarray, seg_ids: np.ndarray) -> bool:
    if seg_ids.size + 2 > _TABLE_LIMIT:
        return False
    if seg_ids.size and (seg_ids.min() < 0 or seg_ids.max() >= _ID_SPACE):
        return False
    return flat.size == 0 or (int(flat.min()) >= 0 and int(flat.max()) < _ID_SPACE)


def _gather(flat: np.ndarray, seg_ids: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out[i] = 1 + position of flat[i] in seg_ids, 0 for VOID, -1 for ids listed nowhere."""
    table = _scratch.id_table()
    table[seg_ids] = np.arange(1, seg_ids.size + 1, dtype=np.int16)
    table[VOID] = 0
    try:
        np.take(table, flat, out=out, mode="clip")  # in range: checked by _table_ok
    finally:
        table[seg_ids] = -1
        table[VOID] = -1
    return out


def _searchsorted_index(flat: np.ndarray, seg_ids: np.ndarray) -> np.ndarray:
    """Same mapping as :func:`_gather` for any id range: a sorted lookup with VOID in it."""
    keys = np.concatenate(([VOID], seg_ids)).astype(np.int64)
    flat = flat.astype(np.int64, copy=False)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    pos = np.searchsorted(sorted_keys, flat)
    np.minimum(pos, sorted_keys.size - 1, out=pos)
    index = order[pos]
    index[sorted_keys[pos] != flat] = -1
    return index


def gt_rows(gt_ids: np.ndarray, gt_seg: np.ndarray) -> np.ndarray:
    """Per GT pixel (flat), its row of the intersection table: 0 = VOID, 1..G = the segments
    in ``segments_info`` order, G + 1 = ids listed nowhere. A new array (int16 or intp), so
    a caller may keep it to score many predictions against one ground truth."""
    flat = gt_ids.ravel()
    if _table_ok(flat, gt_seg):
        rows = _gather(flat, gt_seg, np.empty(flat.size, dtype=np.int16))
    else:
        rows = _searchsorted_index(flat, gt_seg)
    np.copyto(rows, gt_seg.size + 1, where=rows < 0)  # listed nowhere: not a segment, not VOID
    return rows


def _pair_keys(gt_ids: np.ndarray, gt_seg: np.ndarray, pred_ids: np.ndarray,
               pred_seg: np.ndarray, where: str, rows: np.ndarray | None = None) -> np.ndarray:
    """Per pixel: gt_row * (P + 1) + pred_col, with GT rows as :func:`gt_rows` gives them
    (``rows``: already computed) and prediction columns 0 = VOID, 1..P = segments."""
    g, p = gt_seg.size, pred_seg.size
    pred_flat = pred_ids.ravel()
    small, key = _scratch.buffers(pred_flat.size)
    if p and pred_seg[0] == 1 and pred_seg[-1] == p and (np.diff(pred_seg) == 1).all() \
            and pred_flat.min(initial=0) >= 0 and pred_flat.max(initial=0) <= p:
        np.copyto(key, pred_flat, casting="unsafe")  # ids 1..P in order: ids are the columns
    elif not p and not pred_flat.any():
        key.fill(0)
    else:
        if _table_ok(pred_flat, pred_seg):
            pred_index = _gather(pred_flat, pred_seg, small)
        else:
            pred_index = _searchsorted_index(pred_flat, pred_seg)
        if pred_index.min(initial=0) < 0:
            missing = np.unique(pred_flat[pred_index < 0])[:5].tolist()
            raise DataError(f"{where}: segment ids {missing} are in the prediction PNG but not "
                            f"in its segments_info")
        np.copyto(key, pred_index, casting="unsafe")
    gt_index = gt_rows(gt_ids, gt_seg) if rows is None else rows
    # key += gt_index * (p + 1), without an intp temporary
    if (g + 2) * (p + 1) <= _TABLE_LIMIT and gt_index.dtype == np.int16:
        scaled = np.multiply(gt_index, p + 1, out=small, casting="unsafe")
        key += scaled
    else:
        key += gt_index.astype(np.intp) * (p + 1)
    return key


def read_segment_ids(path: str | Path) -> np.ndarray:
    """A panoptic PNG as an HxW int32 id map (R + 256 G + 256^2 B)."""
    try:
        with Image.open(path) as im:
            if im.mode != "RGB":
                im = im.convert("RGB")
            width, height = im.size
            raw = im.tobytes("raw", "RGBX")  # 4 bytes a pixel: little-endian R, G, B, pad
    except FileNotFoundError:
        raise DataError(f"{path}: panoptic PNG not found") from None
    except (OSError, SyntaxError) as e:
        raise DataError(f"{path}: not a readable PNG ({e})") from None
    ids = np.frombuffer(raw, dtype="<u4").reshape(height, width) & 0xFFFFFF
    return ids.view(np.int32)


def pq_image_stats(
    gt_ids: np.ndarray,
    gt: Segments,
    pred_ids: np.ndarray,
    pred: Segments,
    evaluated: np.ndarray,
    where: str = "image",
    rows: np.ndarray | None = None,
) -> ImageStats:
    """PQ statistics of one image.

    ``gt_ids`` / ``pred_ids``: HxW segment-id maps. ``evaluated``: bool per class, False for
    classes dropped by the setting (seen classes in ZSL). ``rows``: :func:`gt_rows` of the
    GT, when the caller keeps it (it scores many predictions against one ground truth).
    """
    num_classes = evaluated.size
    if gt_ids.shape != pred_ids.shape:
        raise DataError(f"{where}: prediction size {pred_ids.shape[:2]} differs from the GT size "
                        f"{gt_ids.shape[:2]}")
    g, p = gt.ids.size, pred.ids.size

    key = _pair_keys(gt_ids, gt.ids, pred_ids, pred.ids, where, rows)
    inter = np.bincount(key, minlength=(g + 2) * (p + 1)).reshape(g + 2, p + 1)
    pred_area = inter.sum(axis=0)[1:]
    if (pred_area == 0).any():
        missing = pred.ids[pred_area == 0][:5].tolist()
        raise DataError(f"{where}: segment ids {missing} are in segments_info but not in the "
                        f"prediction PNG")
    gt_area = np.where(gt.area >= 0, gt.area, inter.sum(axis=1)[1:g + 1])

    gt_keep = evaluated[gt.cats] if g else np.zeros(0, dtype=bool)
    pred_keep = evaluated[pred.cats] if p else np.zeros(0, dtype=bool)
    # Predicted pixels on VOID, where dropped GT segments (ZSL) count as VOID.
    void = inter[0, 1:] + inter[1:g + 1, 1:][~gt_keep].sum(axis=0)
    pair = inter[1:g + 1, 1:]  # (G, P) intersections of listed segments

    candidate = ((pair > 0) & (gt.cats[:, None] == pred.cats[None, :])
                 & ~gt.crowd[:, None] & gt_keep[:, None] & pred_keep[None, :])
    union = pred_area[None, :] + gt_area[:, None] - pair - void[None, :]
    if (candidate & (union <= 0)).any():
        bad = gt.ids[(candidate & (union <= 0)).any(axis=1)][0]
        raise DataError(f"{where}: the json area of GT segment {int(bad)} is smaller than its "
                        f"overlap with a prediction")
    iou = np.zeros(pair.shape, dtype=np.float64)
    np.divide(pair, union, out=iou, where=candidate)
    match = candidate & (iou > 0.5)

    gi, pi = np.nonzero(match)
    matched_cats = gt.cats[gi]
    tp = np.bincount(matched_cats, minlength=num_classes)
    # bincount adds the weights in input order: the same sum on every run
    iou_sum = np.bincount(matched_cats, weights=iou[gi, pi], minlength=num_classes)

    missed = gt_keep & ~gt.crowd & ~match.any(axis=1)
    fn = np.bincount(gt.cats[missed], minlength=num_classes)

    # The crowd region of a category: its last crowd segment in segments_info order.
    fp = np.zeros(num_classes, dtype=np.int64)
    unmatched = pred_keep & ~match.any(axis=0)
    if unmatched.any():
        crowd_row = np.full(num_classes, -1, dtype=np.int64)
        for j in np.nonzero(gt.crowd & gt_keep)[0].tolist():
            crowd_row[gt.cats[j]] = j
        cols = np.nonzero(unmatched)[0]
        rows = crowd_row[pred.cats[cols]]
        on_crowd = np.zeros(len(cols), dtype=pair.dtype)
        hit = rows >= 0  # an image without GT segments has no crowd region to look up
        on_crowd[hit] = pair[rows[hit], cols[hit]]
        ignored = (void[cols] + on_crowd) / pred_area[cols] > 0.5
        fp = np.bincount(pred.cats[cols[~ignored]], minlength=num_classes)
    return ImageStats(tp=tp, fp=fp, fn=fn, iou=iou_sum)


@dataclass(frozen=True)
class PQItem:
    """One image for :func:`pq_batch_stats`: what :func:`pq_image_stats` takes."""

    gt_ids: np.ndarray
    gt: Segments
    pred_ids: np.ndarray
    pred: Segments
    where: str = "image"
    rows: np.ndarray | None = None  # gt_rows(gt_ids, gt.ids), when kept


def _pred_columns(pred_ids: np.ndarray, pred_seg: np.ndarray, consecutive: bool,
                  where: str) -> np.ndarray:
    """Per predicted pixel (flat), its column of the intersection table: 0 = VOID, 1..P = the
    segments in ``segments_info`` order. Ids 1..P in that order (``consecutive``: zeroseg's
    inference numbers them so) are their own columns -- the map itself, after one check of its
    range; other ids go through a lookup (an int16 scratch buffer: use it before the next
    call)."""
    flat = pred_ids.ravel()
    kind = flat.dtype.kind
    if consecutive and kind in "iub":
        # Viewed unsigned, a negative id is a huge one: one max bounds both ends.
        unsigned = flat.view(np.uint8) if kind == "b" else (
            flat.view(flat.dtype.str.replace("i", "u")) if kind == "i" else flat)
        if flat.size == 0 or int(unsigned.max()) <= pred_seg.size:
            return flat
    small, _ = _scratch.buffers(flat.size)
    if _table_ok(flat, pred_seg):
        index = _gather(flat, pred_seg, small)
    else:
        index = _searchsorted_index(flat, pred_seg)
    if index.min(initial=0) < 0:
        missing = np.unique(flat[index < 0])[:5].tolist()
        raise DataError(f"{where}: segment ids {missing} are in the prediction PNG but not in "
                        f"its segments_info")
    return index


def _consecutive(ids: list[np.ndarray], counts: np.ndarray) -> list[bool]:
    """Per image: are its segment ids 1..P in order?"""
    n = len(ids)
    total = int(counts.sum())
    if total == 0:
        return [True] * n
    image = np.repeat(np.arange(n), counts)
    position = np.arange(1, total + 1) - np.repeat(np.cumsum(counts) - counts, counts)
    off = np.bincount(image[np.concatenate(ids) != position], minlength=n)
    return (off == 0).tolist()


#: Run-length counting (:func:`batch_intersections`) while at most this share of the pixels
#: start a run; past it, one ``bincount`` over every pixel is the cheaper count.
RUNS_MAX_SHARE = 0.25


def batch_intersections(items: Sequence[PQItem], g_of: np.ndarray, p_of: np.ndarray,
                        method: str = "auto") -> np.ndarray:
    """``inter[b, r, c]``: pixels of image ``b`` in GT row ``r`` and prediction column ``c``,
    on one table layout for the batch, ``[B, gmax + 2, pmax + 1]``: row 0 VOID, rows 1..G the
    GT segments, row G + 1 the ids listed nowhere (a padding row for images with fewer segments
    than ``gmax``), column 0 VOID, columns 1..P the predicted segments.

    Every pixel gets the key ``row * (pmax + 1) + col`` (int16 while the table allows). Label
    maps are piecewise constant, so the keys are counted by runs: where a key differs from the
    previous pixel's (or an image starts), a run starts, and the table is one ``bincount`` of
    the run keys weighted by the run lengths -- a few percent of the pixels instead of all of
    them. ``method``: ``"runs"``, ``"pixels"`` (one ``bincount`` over every pixel) or ``"auto"``
    (runs unless more than :data:`RUNS_MAX_SHARE` of the pixels start one). Both give the same
    integers."""
    n = len(items)
    gmax, pmax = int(g_of.max()), int(p_of.max())
    width = pmax + 1
    block = (gmax + 2) * width
    sizes = np.array([it.gt_ids.size for it in items], dtype=np.int64)
    bounds = np.concatenate(([0], np.cumsum(sizes)))
    total = int(bounds[-1])
    dtype = (np.int16 if block <= np.iinfo(np.int16).max else
             np.int32 if block <= np.iinfo(np.int32).max else np.intp)
    if method not in ("auto", "runs", "pixels"):
        raise ValueError(f"method: {method!r}")
    consecutive = _consecutive([it.pred.ids for it in items], p_of)
    keys, start = _scratch.batch(total, dtype)
    edges = bounds.tolist()
    for b, it in enumerate(items):
        if it.gt_ids.shape != it.pred_ids.shape:
            raise DataError(f"{it.where}: prediction size {it.pred_ids.shape[:2]} differs from "
                            f"the GT size {it.gt_ids.shape[:2]}")
        lo, hi = edges[b], edges[b + 1]
        out = keys[lo:hi]
        rows = gt_rows(it.gt_ids, it.gt.ids) if it.rows is None else it.rows.ravel()
        cols = _pred_columns(it.pred_ids, it.pred.ids, consecutive[b], it.where)
        np.multiply(rows, width, out=out, dtype=dtype, casting="unsafe")  # < block: fits
        np.add(out, cols, out=out, dtype=dtype, casting="unsafe")  # cols: 0..P, checked
        if hi > lo and method != "pixels":  # run starts, while the keys are in cache
            start[lo] = True  # every image starts a run
            np.not_equal(out[1:], out[:-1], out=start[lo + 1:hi])
    minlength = n * block
    if method != "pixels" and total:
        if method == "runs" or np.count_nonzero(start) <= RUNS_MAX_SHARE * total:
            starts = start.nonzero()[0]
            lengths = np.empty_like(starts)
            np.subtract(starts[1:], starts[:-1], out=lengths[:-1])
            lengths[-1] = total - starts[-1]
            runs_of = np.diff(np.searchsorted(starts, bounds))  # runs per image
            run_keys = np.repeat(np.arange(0, n * block, block, dtype=np.intp), runs_of)
            run_keys += keys[starts]
            # float64 weights: integer sums, exact below 2**53 pixels
            counts = np.bincount(run_keys, weights=lengths, minlength=minlength)
            return counts.astype(np.int64).reshape(n, gmax + 2, width)
    wide = keys.astype(np.intp)
    for b in range(1, n):
        wide[edges[b]:edges[b + 1]] += b * block
    flat = np.bincount(wide, minlength=minlength)
    return flat.reshape(n, gmax + 2, width)


def pq_batch_stats(items: Sequence[PQItem], evaluated: np.ndarray) -> list[ImageStats]:
    """:func:`pq_image_stats` of many images at once, the same numbers to the last bit.

    The intersections of all images come from one ``bincount`` straight into a table padded to
    the batch's largest segment counts, ``[B, G, P]`` (:func:`batch_intersections`), and the
    matching runs on that table instead of some twenty small numpy calls per image. Per image
    and class, IoU sums are added in the per-image order (row-major over (GT, pred) pairs), so
    every sum equals :func:`pq_image_stats`' exactly.
    """
    tp, fp, fn, iou_sum = pq_batch_arrays(items, evaluated)
    return [ImageStats(tp=tp[b], fp=fp[b], fn=fn[b], iou=iou_sum[b]) for b in range(len(items))]


def pq_batch_arrays(items: Sequence[PQItem], evaluated: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`pq_batch_stats` as ``[B, C]`` arrays: TP, FP, FN, IoU sums."""
    num_classes = evaluated.size
    n = len(items)
    if n == 0:
        empty = np.zeros((0, num_classes), dtype=np.int64)
        return empty, empty, empty, np.zeros((0, num_classes))
    g_of = np.array([it.gt.ids.size for it in items], dtype=np.int64)
    p_of = np.array([it.pred.ids.size for it in items], dtype=np.int64)
    inter = batch_intersections(items, g_of, p_of)
    gmax, pmax = inter.shape[1] - 2, inter.shape[2] - 1

    def padded(arrays: list[np.ndarray], counts: np.ndarray, length: int, fill: Any,
               dtype: Any) -> np.ndarray:
        out = np.full((n, length), fill, dtype=dtype)
        if length:
            out[np.arange(length)[None, :] < counts[:, None]] = np.concatenate(arrays)
        return out

    gt_cats = padded([it.gt.cats for it in items], g_of, gmax, 0, np.int64)
    gt_crowd = padded([it.gt.crowd for it in items], g_of, gmax, False, bool)
    json_area = padded([it.gt.area for it in items], g_of, gmax, -1, np.int64)
    pred_cats = padded([it.pred.cats for it in items], p_of, pmax, 0, np.int64)
    gt_valid = np.arange(gmax)[None, :] < g_of[:, None]
    pred_valid = np.arange(pmax)[None, :] < p_of[:, None]

    pred_area = inter.sum(axis=1)[:, 1:]
    absent = pred_valid & (pred_area == 0)
    if absent.any():
        b = int(np.nonzero(absent.any(axis=1))[0][0])
        missing = items[b].pred.ids[absent[b, :int(p_of[b])]][:5].tolist()
        raise DataError(f"{items[b].where}: segment ids {missing} are in segments_info but not "
                        f"in the prediction PNG")
    gt_area = (json_area if (json_area >= 0).all() else
               np.where(json_area >= 0, json_area, inter[:, 1:gmax + 1].sum(axis=2)))
    gt_keep = gt_valid & evaluated[gt_cats]
    pred_keep = pred_valid & evaluated[pred_cats]
    pair = inter[:, 1:gmax + 1, 1:]  # (B, G, P) intersections of listed segments
    # Predicted pixels on VOID, where dropped GT segments (ZSL) count as VOID; a padding row
    # (where an image with fewer segments keeps its ids listed nowhere) is neither.
    dropped = gt_valid & ~gt_keep
    void = inter[:, 0, 1:]
    if dropped.any():
        void = void + (pair * dropped[:, :, None]).sum(axis=1)
    candidate = ((pair > 0) & (gt_cats[:, :, None] == pred_cats[:, None, :])
                 & (gt_keep & ~gt_crowd)[:, :, None] & pred_keep[:, None, :])
    union = pred_area[:, None, :] + gt_area[:, :, None] - pair - void[:, None, :]
    bad = candidate & (union <= 0)
    if bad.any():
        b, gi, _ = (int(v[0]) for v in np.nonzero(bad))
        raise DataError(f"{items[b].where}: the json area of GT segment "
                        f"{int(items[b].gt.ids[gi])} is smaller than its overlap with a "
                        f"prediction")
    iou = np.zeros(pair.shape, dtype=np.float64)
    np.divide(pair, union, out=iou, where=candidate)
    match = candidate & (iou > 0.5)

    def per_image(b_index: np.ndarray, cats: np.ndarray,
                  weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(b_index * num_classes + cats, weights=weights,
                           minlength=n * num_classes).reshape(n, num_classes)

    bi, gi, pi = np.nonzero(match)  # row-major: per image, the order pq_image_stats sums in
    matched_cats = gt_cats[bi, gi]
    tp = per_image(bi, matched_cats)
    iou_sum = per_image(bi, matched_cats, iou[bi, gi, pi])
    missed = gt_keep & ~gt_crowd & ~match.any(axis=2)
    mb, mg = np.nonzero(missed)
    fn = per_image(mb, gt_cats[mb, mg])

    # The crowd region of a category: its last crowd segment in segments_info order.
    unmatched = pred_keep & ~match.any(axis=1)
    ub, up = np.nonzero(unmatched)
    on_crowd = np.zeros(len(ub), dtype=pair.dtype)
    if len(ub) and gmax:
        crowd = (gt_crowd & gt_keep)[ub] & (gt_cats[ub] == pred_cats[ub, up][:, None])
        last = gmax - 1 - np.argmax(crowd[:, ::-1], axis=1)
        hit = crowd.any(axis=1)
        on_crowd[hit] = pair[ub[hit], last[hit], up[hit]]
    ignored = (void[ub, up] + on_crowd) / pred_area[ub, up] > 0.5
    keep_fp = ~ignored
    fp = per_image(ub[keep_fp], pred_cats[ub, up][keep_fp])
    return tp, fp, fn, iou_sum


@dataclass
class PQStats:
    """Per-class TP / FP / FN counts and IoU sums over a set of images."""

    num_classes: int
    tp: np.ndarray = field(init=False)
    fp: np.ndarray = field(init=False)
    fn: np.ndarray = field(init=False)
    iou: np.ndarray = field(init=False)
    num_images: int = 0

    def __post_init__(self) -> None:
        self.tp = np.zeros(self.num_classes, dtype=np.int64)
        self.fp = np.zeros(self.num_classes, dtype=np.int64)
        self.fn = np.zeros(self.num_classes, dtype=np.int64)
        self.iou = np.zeros(self.num_classes, dtype=np.float64)

    def add(self, image: ImageStats) -> None:
        """Add one image's counts (arrays longer than ``num_classes``, e.g. with the bucket of
        categories outside the split, are cut: those classes are never evaluated)."""
        n = self.num_classes
        self.tp += image.tp[:n]
        self.fp += image.fp[:n]
        self.fn += image.fn[:n]
        self.iou += image.iou[:n]
        self.num_images += 1

    def add_batch(self, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray,
                  iou: np.ndarray) -> None:
        """Add the ``[B, C]`` arrays of :func:`pq_batch_arrays`: the same sums as :meth:`add`
        image by image (the IoU sums are added one image at a time, in order; classes past
        ``num_classes`` are cut, as there)."""
        n = self.num_classes
        self.tp += tp[:, :n].sum(axis=0)
        self.fp += fp[:, :n].sum(axis=0)
        self.fn += fn[:, :n].sum(axis=0)
        for row in iou[:, :n]:
            self.iou += row
        self.num_images += len(iou)

    def per_class(self, empty_classes: str = "zero") -> dict[int, dict[str, float | None]]:
        """PQ / SQ / RQ per class index (see the module docstring for ``empty_classes``)."""
        if empty_classes not in EMPTY_CLASS_POLICIES:
            raise ConfigError(f"empty_classes: {empty_classes!r} is not one of "
                              f"{', '.join(EMPTY_CLASS_POLICIES)}")
        out: dict[int, dict[str, float | None]] = {}
        for c in range(self.num_classes):
            tp, fp, fn = int(self.tp[c]), int(self.fp[c]), int(self.fn[c])
            iou = float(self.iou[c])
            if tp + fp + fn == 0:
                value = 0.0 if empty_classes == "zero" else None
                out[c] = {"pq": value, "sq": value, "rq": value}
                continue
            denominator = tp + 0.5 * fp + 0.5 * fn
            out[c] = {"pq": iou / denominator, "sq": iou / tp if tp != 0 else 0.0,
                      "rq": tp / denominator}
        return out


def _segments(infos: Sequence[Mapping[str, Any]], id_to_index: Mapping[int, int],
              where: str, *, gt: bool) -> Segments:
    ids, cats, crowd, area = [], [], [], []
    seen_ids: set[int] = set()
    for info in infos:
        try:
            sid, cid = int(info["id"]), int(info["category_id"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where}: every segments_info entry needs integer 'id' and "
                            f"'category_id'") from None
        if sid == VOID:
            raise DataError(f"{where}: segment id 0 is reserved for VOID")
        if sid in seen_ids:
            raise DataError(f"{where}: segment id {sid} appears twice in segments_info")
        seen_ids.add(sid)
        if cid not in id_to_index:
            kind = "GT" if gt else "predicted"
            raise DataError(f"{where}: {kind} segment {sid} has unknown category_id {cid} "
                            f"(expected one of the GT json's categories)")
        ids.append(sid)
        cats.append(id_to_index[cid])
        crowd.append(bool(info.get("iscrowd", 0)) if gt else False)
        area.append(int(info["area"]) if gt and "area" in info else -1)
    return Segments(ids=np.asarray(ids, dtype=np.int64), cats=np.asarray(cats, dtype=np.int64),
                    crowd=np.asarray(crowd, dtype=bool), area=np.asarray(area, dtype=np.int64))


@dataclass(frozen=True)
class GroundTruth:
    """One image's panoptic GT as the evaluator reads it
    (:meth:`PanopticEvaluator.ground_truth`)."""

    ids: np.ndarray  # [H, W] segment ids
    segments: Segments
    rows: np.ndarray  # gt_rows(ids, segments.ids)


def _evaluated_mask(split: Split, setting: str) -> np.ndarray:
    if setting == ZSL:
        return split.unseen_mask.copy()
    return np.ones(split.num_classes, dtype=bool)


def _scored_mask(split: Split, setting: str) -> np.ndarray:
    """:func:`_evaluated_mask` plus one never-evaluated class (index ``num_classes``): the
    bucket of GT json categories that are not classes of the split."""
    return np.append(_evaluated_mask(split, setting), False)


def category_index(split: Split, categories: Sequence[int] | None,
                   where: str) -> tuple[dict[int, int], list[int]]:
    """``({category id: class index}, outside ids)`` for the GT json's ``categories``: classes
    of the split map to their index, the others (sorted in ``outside``) to the bucket index
    ``split.num_classes``, which is never evaluated. DataError when no category is a class."""
    known = split.id_to_index()
    if categories is None:
        return dict(known), []
    outside = sorted({int(c) for c in categories if int(c) not in known})
    mapping = {int(c): known.get(int(c), split.num_classes) for c in categories}
    if categories and len(outside) == len(mapping):
        raise DataError(f"{where}: none of its {len(mapping)} categories is a class of split "
                        f"{split.name}; expected the panoptic json of that benchmark")
    return mapping, outside


class PanopticEvaluator:
    """PQ accumulator with detectron2's ``reset / process / evaluate`` interface.

    ``process`` takes in-memory segment-id maps and COCO ``segments_info`` lists (category ids
    are the split's dataset ids), for predictions that never touch the disk.
    """

    def __init__(self, split: Split, setting: str = "gzsl", *, empty_classes: str = "zero",
                 categories: Sequence[int] | None = None, where: str = "panoptic GT json"):
        """``categories``: the GT json's category ids (default: the split's); those that are
        not classes of the split are accepted and not evaluated (module docstring)."""
        self.split = split
        self.setting = check_setting(setting)
        if empty_classes not in EMPTY_CLASS_POLICIES:
            raise ConfigError(f"empty_classes: {empty_classes!r} is not one of "
                              f"{', '.join(EMPTY_CLASS_POLICIES)}")
        self.empty_classes = empty_classes
        self._id_to_index, self.outside = category_index(split, categories, where)
        self._evaluated = _scored_mask(split, self.setting)
        self.reset()

    def reset(self) -> None:
        self.stats = PQStats(self.split.num_classes)
        self.gt_segments_outside = 0
        self.pred_segments_outside = 0

    def process(self, gt_ids: np.ndarray, gt_segments: Sequence[Mapping[str, Any]],
                pred_ids: np.ndarray, pred_segments: Sequence[Mapping[str, Any]],
                name: str = "image") -> None:
        gt = self.ground_truth(gt_ids, gt_segments, name)
        self.process_ground_truth(gt, pred_ids, pred_segments, name)

    def ground_truth(self, gt_ids: np.ndarray, gt_segments: Sequence[Mapping[str, Any]],
                     name: str = "image") -> GroundTruth:
        """One image's GT prepared for :meth:`process_ground_truth` (keep it to score many
        predictions against it)."""
        gt_ids = np.asarray(gt_ids)
        segments = _segments(gt_segments, self._id_to_index, f"{name} (GT)", gt=True)
        self.gt_segments_outside += int((segments.cats == self.split.num_classes).sum())
        return GroundTruth(gt_ids, segments, gt_rows(gt_ids, segments.ids))

    def process_ground_truth(self, gt: GroundTruth, pred_ids: np.ndarray,
                             pred_segments: Sequence[Mapping[str, Any]],
                             name: str = "image") -> None:
        self.process_many([(gt, pred_ids, pred_segments, name)])

    def process_many(self, images: Sequence[tuple[GroundTruth, np.ndarray,
                                                  Sequence[Mapping[str, Any]], str]]) -> None:
        """Add several images ``(GroundTruth, pred_ids, pred_segments, name)`` at once
        (:func:`pq_batch_stats`: the same numbers as one at a time, faster)."""
        items = [PQItem(gt.ids, gt.segments, np.asarray(pred_ids),
                        _segments(segments, self._id_to_index, f"{name} (prediction)",
                                  gt=False), name, gt.rows)
                 for gt, pred_ids, segments, name in images]
        if items:
            cats = np.concatenate([it.pred.cats for it in items])
            self.pred_segments_outside += int(np.count_nonzero(cats == self.split.num_classes))
        self.stats.add_batch(*pq_batch_arrays(items, self._evaluated))

    def evaluate(self, options: Mapping[str, Any] | None = None) -> EvalResult:
        """The result; the GT segments counted are those of the GroundTruth objects this
        evaluator built (a GroundTruth kept and scored again is counted once)."""
        return panoptic_result(
            self.stats, self.split, self.setting, self.empty_classes, options=options,
            only={i for i in self._id_to_index.values() if i < self.split.num_classes},
            outside=(self.outside, self.gt_segments_outside, self.pred_segments_outside))


def panoptic_result(stats: PQStats, split: Split, setting: str, empty_classes: str = "zero",
                    options: Mapping[str, Any] | None = None,
                    only: set[int] | None = None,
                    outside: tuple[list[int], int, int] = ([], 0, 0)) -> EvalResult:
    """Per-class PQ / SQ / RQ and the seen / unseen / HM means; ``only``: the class indices to
    report (the GT json's categories), all classes of the split when None; ``outside``: (GT json
    category ids that are not classes of the split, GT segments and predicted segments of
    them), recorded in the result."""
    per_class = stats.per_class(empty_classes)
    evaluated = _evaluated_mask(split, setting)
    reported = evaluated.copy()
    if only is not None:
        reported &= np.isin(np.arange(split.num_classes), list(only))
    details = {c: {"tp": int(stats.tp[c]), "fp": int(stats.fp[c]), "fn": int(stats.fn[c]),
                   "iou_sum": float(stats.iou[c])}
               for c in range(split.num_classes) if evaluated[c]}
    empty = int(((stats.tp + stats.fp + stats.fn) == 0)[reported].sum())
    outside_ids, gt_outside, pred_outside = outside
    counts = {"tp": int(stats.tp[evaluated].sum()), "fp": int(stats.fp[evaluated].sum()),
              "fn": int(stats.fn[evaluated].sum()), "empty_classes": empty}
    more_options: dict[str, Any] = {}
    if outside_ids or gt_outside or pred_outside:
        counts.update(gt_segments_outside_split=gt_outside,
                      pred_segments_outside_split=pred_outside)
        more_options["gt_categories_outside_split"] = list(outside_ids)
    return summarize(
        "panoptic", split, setting, PANOPTIC_METRICS, per_class, num_images=stats.num_images,
        counts=counts,
        options={"empty_classes": empty_classes, **(options or {}), **more_options},
        details=details, only=only,
    )


# -- files -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _ImageTask:
    image_id: Any
    gt_png: str
    pred_png: str
    gt: Segments
    pred: Segments


@dataclass(frozen=True)
class _Chunk:
    tasks: tuple[_ImageTask, ...]
    evaluated: np.ndarray


def _panoptic_chunk(chunk: _Chunk) -> list[ImageStats]:
    out: list[ImageStats] = []
    for start in range(0, len(chunk.tasks), BATCH_IMAGES):
        items = [PQItem(read_segment_ids(task.gt_png), task.gt, read_segment_ids(task.pred_png),
                        task.pred, f"{task.pred_png} (image {task.image_id})")
                 for task in chunk.tasks[start:start + BATCH_IMAGES]]
        out.extend(pq_batch_stats(items, chunk.evaluated))
    return out


def resolve_prediction(pred_path: str | Path,
                       pred_json: str | Path | None = None) -> tuple[Path, Path]:
    """(prediction json, prediction PNG folder) from a folder or a json path.

    A folder holds the PNGs and a single ``*.json`` (or ``pred_json`` names it). A json path
    takes its PNGs from the sibling folder of the same stem (panopticapi's convention) when that
    exists, else from the json's own folder.
    """
    pred_path = Path(pred_path)
    if pred_path.is_dir():
        if pred_json is not None:
            return Path(pred_json), pred_path
        candidates = sorted(pred_path.glob("*.json"))
        if len(candidates) != 1:
            raise DataError(f"{pred_path}: expected exactly one prediction *.json in the folder, "
                            f"found {len(candidates)} (name it explicitly)")
        return candidates[0], pred_path
    if pred_path.is_file():
        if pred_json is not None:
            raise ConfigError(f"pred_json: give either a prediction folder with pred_json or a "
                              f"json file, not both ({pred_path})")
        stem_dir = pred_path.with_suffix("")
        return pred_path, stem_dir if stem_dir.is_dir() else pred_path.parent
    raise DataError(f"{pred_path}: prediction folder or json not found")


def evaluate_panoptic(layout: CocoLayout, split: Split, pred_path: str | Path,
                      setting: str = "gzsl", *, pred_json: str | Path | None = None,
                      workers: int | None = None, empty_classes: str = "zero") -> EvalResult:
    """PQ / SQ / RQ of COCO-panoptic predictions against the layout's panoptic GT.

    ``pred_path``: a folder with the predicted PNGs and one json
    ``{"annotations": [{"image_id", "file_name", "segments_info": [{"id", "category_id"}]}]}``
    (or the json itself). ``workers``: processes (None: chosen from the number of images).
    ``empty_classes``: ``"zero"`` (PADing, default) or ``"exclude"`` (panopticapi), see the
    module docstring.
    """
    setting = check_setting(setting)
    if empty_classes not in EMPTY_CLASS_POLICIES:
        raise ConfigError(f"empty_classes: {empty_classes!r} is not one of "
                          f"{', '.join(EMPTY_CLASS_POLICIES)}")
    gt_json_path = layout.require(layout.panoptic_json, "panoptic GT json")
    gt_dir = layout.require(layout.panoptic_pngs, "panoptic GT PNG folder")
    pred_json_path, pred_dir = resolve_prediction(pred_path, pred_json)

    gt_json = read_json(gt_json_path, "panoptic GT json")
    gt_categories = [int(c["id"]) for c in gt_json.get("categories", [])]
    id_to_index, outside = category_index(split, gt_categories, str(gt_json_path))
    bucket = split.num_classes

    pred_doc = read_json(pred_json_path, "panoptic prediction json")
    pred_anns = pred_doc.get("annotations") if isinstance(pred_doc, dict) else pred_doc
    if not isinstance(pred_anns, list):
        raise DataError(f"{pred_json_path}: expected {{\"annotations\": [...]}} in COCO panoptic "
                        f"result format")
    pred_by_image: dict[Any, Mapping[str, Any]] = {}
    for ann in pred_anns:
        if not isinstance(ann, Mapping) or "image_id" not in ann:
            raise DataError(f"{pred_json_path}: every annotation needs an 'image_id'")
        if ann["image_id"] in pred_by_image:
            raise DataError(f"{pred_json_path}: image {ann['image_id']} has two annotations")
        pred_by_image[ann["image_id"]] = ann

    tasks: list[_ImageTask] = []
    gt_outside = pred_outside = 0
    for gt_ann in gt_json.get("annotations", []):
        image_id = gt_ann["image_id"]
        pred_ann = pred_by_image.get(image_id)
        if pred_ann is None:
            raise DataError(f"{pred_json_path}: no prediction for GT image {image_id} "
                            f"({gt_ann.get('file_name')})")
        file_name = pred_ann.get("file_name", gt_ann["file_name"])
        pred_png = pred_dir / file_name
        if not pred_png.is_file():
            raise DataError(f"{pred_png}: prediction PNG of image {image_id} not found")
        where = f"{pred_json_path} (image {image_id})"
        task = _ImageTask(
            image_id=image_id, gt_png=str(gt_dir / gt_ann["file_name"]), pred_png=str(pred_png),
            gt=_segments(gt_ann.get("segments_info", []), id_to_index,
                         f"{gt_json_path} (image {image_id})", gt=True),
            pred=_segments(pred_ann.get("segments_info", []), id_to_index, where, gt=False),
        )
        gt_outside += int((task.gt.cats == bucket).sum())
        pred_outside += int((task.pred.cats == bucket).sum())
        tasks.append(task)
    if not tasks:
        raise DataError(f"{gt_json_path}: no GT annotations")

    evaluated = _scored_mask(split, setting)
    sizes = [int(img.get("height", 0)) * int(img.get("width", 0))
             for img in gt_json.get("images", [])]
    n_workers = choose_workers(len(tasks), workers,
                               max(sizes) if sizes and min(sizes) > 0 else 640 * 480)
    chunks = [_Chunk(tuple(c), evaluated) for c in split_chunks(tasks, n_workers)]
    stats = PQStats(split.num_classes)
    for image_stats in ordered_map(_panoptic_chunk, chunks, n_workers):
        for one in image_stats:  # image order: deterministic sums for any number of workers
            stats.add(one)
    log.info("panoptic %s: %d images evaluated with %d process(es)", setting, stats.num_images,
             n_workers)
    return panoptic_result(stats, split, setting, empty_classes, options={
        "gt_json": str(gt_json_path), "pred_json": str(pred_json_path), "workers": n_workers},
        only={i for i in id_to_index.values() if i < bucket},
        outside=(outside, gt_outside, pred_outside))
