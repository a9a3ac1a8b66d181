"""Instance segmentation / detection: mAP and Recall@100 with the ZSI / PADing COCOeval protocol.

The ZSI code (shared by PADing, PROTOCOLS.md 3c) runs COCOeval with IoU thresholds
{0.4, 0.5, 0.6} and maxDets [1, 10, 100], per category; per class it reports

- AP at IoU t: the mean over the 101 recall thresholds of ``precision[t, :, k, all, 100]``;
- Recall at IoU t: ``recall[t, k, all, 100]``;

and skips classes that COCOeval marks -1 (no non-crowd GT instance: NaN in their code). The
published "mAP / Recall@100" are the means at IoU 0.5 over seen and unseen classes, HM on top.

Two tasks share this protocol: ``instance`` (ZSI, ``iou_type="segm"``: mask IoU) and
``detection`` (ZSD, ``iou_type="bbox"``: box IoU, ZSI's Table 1 / 4 detection columns). The
result's ``task`` says which (:data:`TASK_OF_IOU_TYPE`).

Metric keys (all with at most 100 detections per image and category, area "all"):
``ap50`` / ``recall50`` (IoU 0.5, the paper numbers), ``ap40`` / ``recall40``, ``ap60`` /
``recall60``.

Categories: the GT json's categories that are classes of the split are evaluated, the others
are not (ZSI's jsons are filtered to the split's 65 / 80 classes; given the standard 80-category
json, ``coco2014/zsi-48-17`` evaluates its 65 and ignores the GT of the 15 others). Detections in
a category outside the split are left out and counted (``counts['detections_outside_split']``).

Settings: GZSL evaluates every category. ZSL keeps only unseen categories, in the GT and in the
detections (detections of seen classes are dropped). COCO AP is computed category by category, so
an unseen class gets the same AP from the same detections in both settings; the ZSL / GZSL gap
comes from the predictions themselves (a ZSL model only predicts unseen classes).

Backends: ``hotcoco`` (Rust, default) and ``pycocotools`` (reference). Both run COCOeval with
the same parameters; the tests check that both give pycocotools' precision and recall to the
last bit on randomised inputs. Only the area range "all" is evaluated: COCOeval evaluates each
area range independently, so the "all" numbers do not depend on the others.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zeroseg.platform.data.classes import Split
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.errors import ConfigError, DataError
from zeroseg.platform.evaluation.summary import (
    INSTANCE_METRICS,
    ZSL,
    EvalResult,
    check_setting,
    summarize,
)
from zeroseg.platform.io import read_json

log = logging.getLogger(__name__)

#: IoU thresholds exactly as the ZSI / PADing ``Params`` builds them.
IOU_THRESHOLDS = np.linspace(0.4, 0.6, int(np.round((0.6 - 0.4) / 0.1)) + 1, endpoint=True)
MAX_DETS = [1, 10, 100]
AREA_ALL = [0.0, 1e5**2]  # COCOeval's "all" area range
IOU_TYPES = ("segm", "bbox")
#: the task an IoU type scores: masks are instance segmentation (ZSI), boxes detection (ZSD)
TASK_OF_IOU_TYPE = {"segm": "instance", "bbox": "detection"}
BACKENDS = ("hotcoco", "pycocotools")
#: metric suffix -> index into IOU_THRESHOLDS
_THRESHOLD_INDEX = {"50": 1, "40": 0, "60": 2}
#: at most this many category ids outside the split are listed in a result's options
OUTSIDE_IDS_SHOWN = 20


def _check_gt(gt: Mapping[str, Any], where: str) -> list[int]:
    """Validate the GT json; returns its category ids (json order)."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise DataError(f"{where}: missing list '{key}' (COCO instances format)")
    cat_ids = []
    for i, cat in enumerate(gt["categories"]):
        cid = cat.get("id") if isinstance(cat, Mapping) else None
        if not isinstance(cid, int) or isinstance(cid, bool):
            raise DataError(f"{where}: category {i} needs an integer 'id', got {cid!r}")
        cat_ids.append(cid)
    known = set(cat_ids)
    images = {img.get("id") for img in gt["images"]}
    ann_ids: set[int] = set()
    for ann in gt["annotations"]:
        aid = ann.get("id")
        # pycocotools stores the matched GT id in a float array and treats 0 as "unmatched".
        if not isinstance(aid, int) or aid <= 0 or aid in ann_ids:
            raise DataError(f"{where}: annotation id {aid!r} must be a unique positive integer")
        ann_ids.add(aid)
        if ann.get("category_id") not in known:
            raise DataError(f"{where}: annotation {aid} has unknown category_id "
                            f"{ann.get('category_id')}")
        if ann.get("image_id") not in images:
            raise DataError(f"{where}: annotation {aid} has image_id {ann.get('image_id')!r}, "
                            f"which is not in 'images'")
        if "area" not in ann or "iscrowd" not in ann:
            raise DataError(f"{where}: annotation {aid} needs 'area' and 'iscrowd'")
    return cat_ids


def _check_results(results: Sequence[Mapping[str, Any]], image_sizes: Mapping[Any, list[int]],
                   iou_type: str, where: str) -> None:
    if not isinstance(results, Sequence) or isinstance(results, (str, bytes)):
        raise DataError(f"{where}: expected a list of detections (COCO results format)")
    has_bbox = None
    for i, det in enumerate(results):
        if not isinstance(det, Mapping):
            raise DataError(f"{where}: detection {i} is not an object")
        if det.get("image_id") not in image_sizes:
            raise DataError(f"{where}: detection {i} has image_id {det.get('image_id')!r}, which "
                            f"is not an image of the GT json")
        cid = det.get("category_id")
        if not isinstance(cid, int) or isinstance(cid, bool):
            raise DataError(f"{where}: detection {i} needs an integer 'category_id', got "
                            f"{cid!r}")
        score = det.get("score")
        if isinstance(score, bool) or not isinstance(score, (int, float)) \
                or not math.isfinite(score):
            raise DataError(f"{where}: detection {i} needs a finite numeric 'score'")
        if iou_type == "segm" and "segmentation" not in det:
            raise DataError(f"{where}: detection {i} has no 'segmentation' (needed for segm IoU)")
        seg = det.get("segmentation")
        if isinstance(seg, Mapping) and list(seg.get("size", [])) != image_sizes[det["image_id"]]:
            raise DataError(f"{where}: detection {i}: RLE size {seg.get('size')} differs from the "
                            f"size {image_sizes[det['image_id']]} of image {det['image_id']}")
        if seg is not None:
            problem = segmentation_problem(seg)
            if problem:
                raise DataError(f"{where}: detection {i} (image {det['image_id']}): invalid "
                                f"segmentation: {problem}")
        bbox = "bbox" in det
        if has_bbox is None:
            has_bbox = bbox
        elif bbox != has_bbox:
            raise DataError(f"{where}: detection {i} {'has' if bbox else 'lacks'} a 'bbox' unlike "
                            f"the first detection (all or none must have one)")
        if iou_type == "bbox" and not bbox and "segmentation" not in det:
            raise DataError(f"{where}: detection {i} has neither 'bbox' nor 'segmentation'")


def _rle_string_counts(text: str) -> list[int] | None:
    """The run lengths of a COCO compressed RLE string (pycocotools' ``rleFrString``: 6-bit
    groups offset by 48, 5 bits of value, a continuation bit, sign-extended, deltas from the
    second-last run after the first three); ``None`` if it is not one."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p >= len(text):
                return None  # ends inside a value
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << 5 * k
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << 5 * k
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def segmentation_problem(seg: Any) -> str | None:
    """Why ``seg`` is not a valid COCO segmentation (an RLE whose runs cover exactly its
    ``size``, or polygons of at least 3 points), or ``None``. hotcoco scores garbage RLE
    ``counts`` as some mask and pycocotools raises on it; both must refuse it first."""
    if isinstance(seg, Mapping):
        size = seg.get("size")
        if not (isinstance(size, list | tuple) and len(size) == 2 and
                all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            return f"RLE 'size' must be [height, width], got {size!r:.40}"
        counts = seg.get("counts")
        if isinstance(counts, str):
            runs = _rle_string_counts(counts)
            if runs is None:
                return f"RLE 'counts' {counts!r:.40} is not a compressed COCO RLE string"
        elif isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                              for v in counts):
            runs = counts
        else:
            return "RLE 'counts' must be a compressed string or a list of integers"
        if any(v < 0 for v in runs) or sum(runs) != size[0] * size[1]:
            return (f"RLE 'counts' runs must be >= 0 and cover {size[0]} x {size[1]} = "
                    f"{size[0] * size[1]} pixels (they cover {sum(runs)})")
        return None
    if isinstance(seg, list) and seg:
        for polygon in seg:
            if not (isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0
                    and all(isinstance(v, int | float) and not isinstance(v, bool)
                            and math.isfinite(v) for v in polygon)):
                return "a polygon must be a list of at least 3 (x, y) pairs of finite numbers"
        return None
    return "expected an RLE object {size, counts} or a list of polygons"


@dataclass
class Detections:
    """COCO results as columns (zeroseg's own inference, in memory): row i is the detection
    ``{image_id, category_id, bbox, score, segmentation}`` of the results json."""

    image_ids: np.ndarray  # [N] int64
    category_ids: np.ndarray  # [N] int64
    boxes: np.ndarray  # [N, 4] float64 xywh
    scores: np.ndarray  # [N] float64
    segmentations: list[dict[str, Any]]  # [N] COCO RLEs

    def __len__(self) -> int:
        return len(self.scores)

    def select(self, rows: np.ndarray) -> Detections:
        return Detections(self.image_ids[rows], self.category_ids[rows], self.boxes[rows],
                          self.scores[rows], [self.segmentations[i] for i in rows.tolist()])

    def entries(self) -> list[dict[str, Any]]:
        """The results-json dicts."""
        return [{"image_id": i, "category_id": c, "segmentation": seg, "bbox": box,
                 "score": score}
                for i, c, seg, box, score in zip(self.image_ids.tolist(),
                                                 self.category_ids.tolist(), self.segmentations,
                                                 self.boxes.tolist(), self.scores.tolist(),
                                                 strict=True)]

    def array(self) -> np.ndarray:
        """[N, 7] rows ``image_id, x, y, w, h, score, category_id`` (COCO's numpy form)."""
        return np.column_stack([self.image_ids, self.boxes, self.scores,
                                self.category_ids]).astype(np.float64)


def _run_pycocotools(gt: Mapping[str, Any], results: list[dict], iou_type: str,
                     cat_ids: list[int], img_ids: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = dict(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.params.iouThrs = IOU_THRESHOLDS.copy()
        ev.params.maxDets = list(MAX_DETS)
        ev.params.areaRng = [list(AREA_ALL)]
        ev.params.areaRngLbl = ["all"]
        ev.params.catIds = list(cat_ids)
        ev.params.imgIds = list(img_ids)
        ev.evaluate()
        ev.accumulate()
    return np.asarray(ev.eval["precision"]), np.asarray(ev.eval["recall"])


def _run_hotcoco(gt: Mapping[str, Any], results: list[dict] | Detections, iou_type: str,
                 cat_ids: list[int], img_ids: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    import hotcoco

    coco_gt = hotcoco.COCO(dict(gt))
    if isinstance(results, Detections):
        coco_dt = coco_gt.load_res(results.array(), segmentation=results.segmentations)
    else:
        coco_dt = coco_gt.load_res(results)
    ev = hotcoco.COCOeval(coco_gt, coco_dt, iou_type)
    params = ev.params
    params.iou_thrs = [float(t) for t in IOU_THRESHOLDS]
    params.max_dets = list(MAX_DETS)
    params.area_rng = [list(AREA_ALL)]
    params.area_rng_lbl = ["all"]
    params.cat_ids = list(cat_ids)
    params.img_ids = list(img_ids)
    ev.params = params
    ev.evaluate()
    ev.accumulate()
    return np.asarray(ev.eval["precision"]), np.asarray(ev.eval["recall"])


def _per_class_from_arrays(precision: np.ndarray, recall: np.ndarray,
                           cat_ids: Sequence[int]) -> dict[int, dict[str, float | None]]:
    """Per category id: AP and recall at IoU .5/.4/.6, area "all", maxDets 100 (ZSI's rule)."""
    out: dict[int, dict[str, float | None]] = {}
    for k, cid in enumerate(cat_ids):
        values: dict[str, float | None] = {}
        for suffix, t in _THRESHOLD_INDEX.items():
            prec = precision[t, :, k, 0, -1]
            prec = prec[prec > -1]
            values[f"ap{suffix}"] = float(np.mean(prec)) if prec.size else None
            rec = float(recall[t, k, 0, -1])
            values[f"recall{suffix}"] = rec if rec > -1 else None
        out[cid] = values
    return out


def _gt_counts(gt: Mapping[str, Any], cat_ids: Sequence[int]) -> dict[int, int]:
    """Non-ignored GT instances per category, as COCOeval counts them for area "all"."""
    counts = dict.fromkeys(cat_ids, 0)
    for ann in gt["annotations"]:
        cid = ann["category_id"]
        if cid in counts and not ann["iscrowd"] and AREA_ALL[0] <= ann["area"] <= AREA_ALL[1]:
            counts[cid] += 1
    return counts


def evaluate_instance_coco(
    gt: Mapping[str, Any] | str | Path,
    results: Sequence[Mapping[str, Any]] | Detections | str | Path,
    split: Split,
    setting: str = "gzsl",
    *,
    iou_type: str = "segm",
    backend: str = "hotcoco",
) -> EvalResult:
    """mAP / Recall@100 of COCO results against a COCO instances GT (dicts or json paths): the
    ``instance`` task on masks (``iou_type="segm"``), ``detection`` on boxes (``"bbox"``; a
    detection without ``bbox`` gets its mask's box, as pycocotools' loadRes does). Results
    given as :class:`Detections` (zeroseg's own inference, in memory) are well-formed by
    construction and not checked detection by detection, as a results json is.

    Only the GT json's categories that are classes of ``split`` are evaluated (e.g. the 65 of
    ``coco2014/zsi-48-17`` in the standard 80-category json): GT annotations of the others are
    ignored, never counted as misses, and detections in a category that is not a class of the
    split (or not in the json) are left out. Both are counted in ``counts``
    (``gt_annotations_outside_split``, ``detections_outside_split``,
    ``detections_outside_gt_categories``) and their ids listed in ``options``; the numbers
    equal pycocotools' COCOeval with ``params.catIds`` set to the evaluated categories."""
    setting = check_setting(setting)
    if iou_type not in IOU_TYPES:
        raise ConfigError(f"iou_type: {iou_type!r} is not one of {', '.join(IOU_TYPES)}")
    if backend not in BACKENDS:
        raise ConfigError(f"backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    gt_where = str(gt) if isinstance(gt, (str, Path)) else "instances GT"
    res_where = str(results) if isinstance(results, (str, Path)) else "instance results"
    if isinstance(gt, (str, Path)):
        gt = read_json(Path(gt), "instances GT json")
    if isinstance(results, (str, Path)):
        results = read_json(Path(results), "instance results json")
    if not isinstance(gt, Mapping):
        raise DataError(f"{gt_where}: expected a COCO instances json object")

    json_cat_ids = _check_gt(gt, gt_where)
    split_ids = split.id_to_index()
    # Only the json's categories that are classes of the split are evaluated (COCOeval's
    # params.catIds, as ZSI's own jsons filtered to the split do); the others' GT is ignored.
    cat_ids = [cid for cid in json_cat_ids if cid in split_ids]
    gt_outside = sorted(cid for cid in json_cat_ids if cid not in split_ids)
    if not cat_ids:
        raise DataError(f"{gt_where}: none of its {len(json_cat_ids)} categories is a class of "
                        f"split {split.name}; expected an instances json of that benchmark")
    image_ids = [img["id"] for img in gt["images"]]
    sizes = {img["id"]: [img.get("height"), img.get("width")] for img in gt["images"]}
    if not isinstance(results, Detections):
        _check_results(results, sizes, iou_type, res_where)
    det_cats = (results.category_ids if isinstance(results, Detections)
                else np.asarray([d["category_id"] for d in results], dtype=np.int64))
    in_split = np.isin(det_cats, np.fromiter(split_ids, dtype=np.int64, count=len(split_ids)))
    in_gt = np.isin(det_cats, np.asarray(cat_ids, dtype=np.int64))
    dets_outside_split = np.unique(det_cats[~in_split])
    n_outside_split = int((~in_split).sum())
    n_outside_gt = int((in_split & ~in_gt).sum())
    if n_outside_split:
        log.warning("%s: left out %d detections in categories %s, which are not classes of "
                    "split %s", res_where, n_outside_split,
                    dets_outside_split[:OUTSIDE_IDS_SHOWN].tolist(), split.name)

    id_to_index = split.id_to_index()
    if setting == ZSL:
        unseen_ids = {c.id for c in split.unseen}
        eval_ids = sorted(cid for cid in cat_ids if cid in unseen_ids)
    else:
        eval_ids = sorted(cat_ids)
    keep = set(eval_ids)
    # pycocotools' loadRes writes 'id', 'area', 'iscrowd' into each detection: it gets
    # shallow copies; hotcoco reads them only.
    if backend == "hotcoco":
        try:
            import hotcoco  # noqa: F401
        except ImportError:
            log.warning("hotcoco is not installed; falling back to pycocotools")
            backend = "pycocotools"
    dets: list[dict[str, Any]] | Detections
    if isinstance(results, Detections):
        dets = results.select(np.flatnonzero(np.isin(results.category_ids, eval_ids)))
        if backend == "pycocotools":
            dets = dets.entries()
    elif backend == "pycocotools":
        dets = [dict(d) for d in results if d["category_id"] in keep]
    else:
        dets = [d for d in results if d["category_id"] in keep]
    img_ids = sorted(set(image_ids))

    if not eval_ids:
        per_id: dict[int, dict[str, float | None]] = {}
    elif len(dets) == 0:
        # No detection at all: AP and recall are 0 where there is GT, undefined elsewhere.
        gt_counts = _gt_counts(gt, eval_ids)
        per_id = {cid: {m: (0.0 if gt_counts[cid] > 0 else None) for m in INSTANCE_METRICS}
                  for cid in eval_ids}
    else:
        run = _run_hotcoco if backend == "hotcoco" else _run_pycocotools
        precision, recall = run(gt, dets, iou_type, eval_ids, img_ids)
        per_id = _per_class_from_arrays(precision, recall, eval_ids)

    per_class = {id_to_index[cid]: values for cid, values in per_id.items()}
    gt_counts = _gt_counts(gt, eval_ids)
    outside = set(gt_outside)
    return summarize(
        TASK_OF_IOU_TYPE[iou_type], split, setting, INSTANCE_METRICS, per_class,
        num_images=len(img_ids),
        counts={"detections": len(dets), "gt_instances": int(sum(gt_counts.values())),
                "detections_outside_split": n_outside_split,
                "detections_outside_gt_categories": n_outside_gt,
                "gt_annotations_outside_split": sum(
                    1 for ann in gt["annotations"] if ann["category_id"] in outside)},
        options={"iou_type": iou_type, "backend": backend,
                 "iou_thresholds": [float(t) for t in IOU_THRESHOLDS], "max_dets": MAX_DETS[-1],
                 "area": "all", "gt_categories_outside_split": gt_outside,
                 "detection_categories_outside_split":
                     dets_outside_split[:OUTSIDE_IDS_SHOWN].tolist()},
        details={id_to_index[cid]: {"gt_instances": n} for cid, n in gt_counts.items()},
        only={id_to_index[cid] for cid in cat_ids},  # the split's categories in the json
    )


def evaluate_instance(layout: CocoLayout, split: Split,
                      results_json: str | Path | Sequence[Mapping[str, Any]],
                      setting: str = "gzsl", *, iou_type: str = "segm",
                      backend: str = "hotcoco") -> EvalResult:
    """mAP / Recall@100 of a COCO results json against ``layout.instances_json``."""
    gt_path = layout.require(layout.instances_json, "instances GT json")
    if isinstance(results_json, (str, Path)) and not Path(results_json).is_file():
        raise DataError(f"{results_json}: instance results json not found")
    return evaluate_instance_coco(gt_path, results_json, split, setting, iou_type=iou_type,
                                  backend=backend)
