"""PQ / SQ / RQ: hand-computed cases (strict 0.5, VOID, crowd, empty), ZSL, files, references.

Two references check the vectorised evaluator on random images: a plain per-pair loop written
here from PROTOCOLS.md section 8, and (when installed) panopticapi's own
``pq_compute_single_core`` (PyPI ``panopticapi-lite``, a packaging of cocodataset/panopticapi).
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from zeroseg.platform.data.classes import PROTOCOL_DROP_IMAGES, ClassInfo, Split
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.data.panoptic_png import write_panoptic_png
from zeroseg.platform.errors import DataError
from zeroseg.platform.evaluation.panoptic import PanopticEvaluator, evaluate_panoptic

CAT, DOG, SKY, SEA = 1, 2, 3, 5  # category ids; cat and sky seen, dog and sea unseen


def tiny_split() -> Split:
    spec = [("cat", CAT, True, False), ("dog", DOG, True, True), ("sky", SKY, False, False),
            ("sea", SEA, False, True)]
    classes = tuple(
        ClassInfo(index=i, id=cid, name=n, isthing=t, unseen=u)
        for i, (n, cid, t, u) in enumerate(spec)
    )
    return Split(name="test/tiny", dataset="synthetic", tasks=("panoptic",),
                 protocol=PROTOCOL_DROP_IMAGES, classes=classes)


def seg(sid: int, cid: int, crowd: int = 0, gt_ids: np.ndarray | None = None) -> dict:
    info = {"id": sid, "category_id": cid, "iscrowd": crowd}
    if gt_ids is not None:
        info["area"] = int(np.sum(gt_ids == sid))
    return info


def pq_of(gt_ids, gt_segs, pred_ids, pred_segs, setting="gzsl", empty_classes="zero"):
    ev = PanopticEvaluator(tiny_split(), setting, empty_classes=empty_classes)
    gt_ids, pred_ids = np.asarray(gt_ids), np.asarray(pred_ids)
    gt_segs = [dict(s, area=int(np.sum(gt_ids == s["id"]))) for s in gt_segs]
    ev.process(gt_ids, gt_segs, pred_ids, pred_segs)
    return ev.evaluate()


# -- hand-computed cases ---------------------------------------------------------------------

def test_iou_exactly_half_is_not_a_match():
    # GT: one cat segment of 4 pixels. Prediction: cat on 2 of them, VOID elsewhere.
    # IoU = 2 / (2 + 4 - 2 - 0) = 0.5, and the rule is IoU > 0.5: no match.
    r = pq_of([[1, 1, 1, 1]], [seg(1, CAT)], [[7, 7, 0, 0]], [seg(7, CAT)])
    # -> FN 1 (the GT) and FP 1 (the prediction, 0 of its 2 pixels on VOID)
    assert r.details["cat"] == {"tp": 0, "fp": 1, "fn": 1, "iou_sum": 0.0}
    assert r.per_class["cat"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}


def test_iou_above_half_matches():
    # Prediction on 3 of the 4 GT pixels: IoU = 3 / (3 + 4 - 3) = 0.75 -> TP
    r = pq_of([[1, 1, 1, 1]], [seg(1, CAT)], [[7, 7, 7, 0]], [seg(7, CAT)])
    # PQ = 0.75 / (1 + 0 + 0) = 0.75, SQ = 0.75 / 1, RQ = 1 / 1
    assert r.details["cat"]["tp"] == 1
    assert r.per_class["cat"] == {"pq": 0.75, "sq": 0.75, "rq": 1.0}


def test_predicted_pixels_on_void_leave_the_union():
    # GT: 3 cat pixels then 3 VOID; prediction: one cat segment over all 6.
    # IoU = 3 / (6 + 3 - 3 - 3) = 1.0 (without the VOID rule it would be 3/6 = 0.5: no match)
    r = pq_of([[1, 1, 1, 0, 0, 0]], [seg(1, CAT)], [[7, 7, 7, 7, 7, 7]], [seg(7, CAT)])
    assert r.per_class["cat"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0}


def test_fp_ignored_only_when_more_than_half_on_void():
    # GT: cat on 2 pixels, VOID on 3. Prediction: cat exact (TP, IoU 1), dog on the 3 VOID.
    # dog: 3 of 3 pixels on VOID > half -> ignored, so dog has TP + FP + FN = 0.
    r = pq_of([[1, 1, 0, 0, 0]], [seg(1, CAT)], [[7, 7, 8, 8, 8]], [seg(7, CAT), seg(8, DOG)])
    assert r.details["dog"] == {"tp": 0, "fp": 0, "fn": 0, "iou_sum": 0.0}
    assert r.per_class["cat"]["pq"] == 1.0
    # Exactly half on VOID is not more than half: sky GT on 2 pixels, VOID on 2, dog on all 4.
    # dog: 2 / 4 = 0.5 on VOID -> FP; sky: FN.  dog PQ = 0 / (0 + 0.5) = 0
    r = pq_of([[3, 3, 0, 0]], [seg(3, SKY)], [[8, 8, 8, 8]], [seg(8, DOG)])
    assert r.details["dog"]["fp"] == 1 and r.details["sky"]["fn"] == 1


def test_empty_classes_zero_for_pading_excluded_for_panopticapi():
    gt, segs = [[1, 1, 0, 0, 0]], [seg(1, CAT)]
    pred, psegs = [[7, 7, 8, 8, 8]], [seg(7, CAT), seg(8, DOG)]
    pading = pq_of(gt, segs, pred, psegs)
    # cat PQ 1; dog, sky, sea have TP + FP + FN = 0 -> 0 and counted (PADing's plain mean)
    assert pading.per_class["dog"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert pading.seen["pq"] == 0.5  # (cat 1 + sky 0) / 2
    assert pading.unseen["pq"] == 0.0 and pading.hm["pq"] == 0.0
    api = pq_of(gt, segs, pred, psegs, empty_classes="exclude")
    # panopticapi's averages leave them out: seen = cat only; unseen undefined
    assert api.per_class["dog"] == {"pq": None, "sq": None, "rq": None}
    assert api.seen["pq"] == 1.0 and api.unseen["pq"] is None and api.hm["pq"] is None


def test_crowd_regions():
    # GT: cat crowd (id 3) on 3 pixels, a non-crowd cat (id 1) on 2 pixels, 1 dog pixel.
    gt = [[3, 3, 3, 1, 1, 2]]
    segs = [seg(3, CAT, crowd=1), seg(1, CAT), seg(2, DOG)]
    # pred 7 = cat on the crowd region: never matched (crowd), 3 of 3 pixels on the cat crowd
    #   -> ignored, not FP.
    # pred 8 = cat on pixels 3, 4 (GT 1) and pixel 5 (dog GT):
    #   IoU with GT 1 = 2 / (3 + 2 - 2 - 0) = 2/3 -> TP
    # The crowd segment is never an FN; the dog GT is missed -> FN.
    pred = [[7, 7, 7, 8, 8, 8]]
    r = pq_of(gt, segs, pred, [seg(7, CAT), seg(8, CAT)])
    assert r.details["cat"] == {"tp": 1, "fp": 0, "fn": 0, "iou_sum": pytest.approx(2 / 3)}
    assert r.per_class["cat"]["pq"] == pytest.approx(2 / 3, abs=1e-15)
    assert r.details["dog"] == {"tp": 0, "fp": 0, "fn": 1, "iou_sum": 0.0}
    # A crowd region helps only predictions of its own category: pred 7 as dog is an FP.
    r = pq_of(gt, segs, pred, [seg(7, DOG), seg(8, CAT)])
    assert r.details["dog"] == {"tp": 0, "fp": 1, "fn": 1, "iou_sum": 0.0}
    # dog PQ = 0 / (0 + 0.5 + 0.5) = 0 ; RQ = 0


def test_empty_prediction_gives_fn_only():
    gt = [[1, 1, 2, 2], [3, 3, 0, 0]]
    r = pq_of(gt, [seg(1, CAT), seg(2, DOG), seg(3, SKY)], [[0, 0, 0, 0], [0, 0, 0, 0]], [])
    for name in ("cat", "dog", "sky"):
        assert r.details[name]["fn"] == 1 and r.details[name]["fp"] == 0
        assert r.per_class[name]["pq"] == 0.0
    assert r.hm["pq"] == 0.0


def test_image_without_any_gt_segment():
    # All VOID (e.g. a validation-view image whose only segments were test-unseen classes):
    # a prediction lying wholly on VOID is ignored, not an FP, and nothing breaks.
    r = pq_of([[0, 0, 0, 0]], [], [[7, 7, 0, 0]], [seg(7, CAT)])
    assert r.details["cat"] == {"tp": 0, "fp": 0, "fn": 0, "iou_sum": 0.0}


def test_pq_sq_rq_by_hand_over_two_images():
    ev = PanopticEvaluator(tiny_split())
    # image 1: cat GT (4 px) matched with IoU 3/4; sky GT (4 px) matched exactly.
    g1 = np.array([[1, 1, 1, 1], [4, 4, 4, 4]])
    p1 = np.array([[7, 7, 7, 0], [9, 9, 9, 9]])
    ev.process(g1, [seg(1, CAT, gt_ids=g1), seg(4, SKY, gt_ids=g1)], p1,
               [seg(7, CAT), seg(9, SKY)])
    # image 2: cat GT on 2 px, VOID on 2 px; a cat prediction over all 4 px.
    g2 = np.array([[1, 1, 0, 0]])
    p2 = np.array([[5, 5, 5, 5]])
    ev.process(g2, [seg(1, CAT, gt_ids=g2)], p2, [seg(5, CAT)])
    r = ev.evaluate()
    # image 2: 2 of the prediction's 4 pixels are on VOID -> union = 4 + 2 - 2 - 2 = 2,
    # IoU = 2 / 2 = 1 -> TP (without the VOID rule: 2 / 4 = 0.5, no match)
    # cat: TP 2 (IoU 0.75 and 1.0), FP 0, FN 0 -> PQ = 1.75 / 2, SQ = 0.875, RQ = 1
    assert r.details["cat"]["tp"] == 2
    assert r.per_class["cat"] == pytest.approx({"pq": 0.875, "sq": 0.875, "rq": 1.0}, abs=1e-15)
    assert r.per_class["sky"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0}
    # seen = (0.875 + 1) / 2; unseen = (dog 0 + sea 0) / 2 -> HM 0
    assert r.seen["pq"] == pytest.approx(0.9375, abs=1e-15) and r.hm["pq"] == 0.0
    assert r.num_images == 2


def test_zsl_seen_gt_becomes_void_and_seen_predictions_are_dropped():
    # GT: cat (seen) on 2 px, dog (unseen) on 3 px. Pred: dog on 4 px (2 cat + 2 dog),
    # cat on the last dog pixel.
    gt = [[1, 1, 2, 2, 2]]
    segs = [seg(1, CAT), seg(2, DOG)]
    pred = [[7, 7, 7, 7, 8]]
    psegs = [seg(7, DOG), seg(8, CAT)]
    g = pq_of(gt, segs, pred, psegs, "gzsl")
    # GZSL: dog IoU = 2 / (4 + 3 - 2 - 0) = 0.4 -> no match: dog FN 1, FP 1; cat FN 1, FP 1
    assert g.details["dog"] == {"tp": 0, "fp": 1, "fn": 1, "iou_sum": 0.0}
    assert g.details["cat"] == {"tp": 0, "fp": 1, "fn": 1, "iou_sum": 0.0}
    z = pq_of(gt, segs, pred, psegs, "zsl")
    # ZSL: the cat GT is VOID and the cat prediction is gone.
    # dog IoU = 2 / (4 + 3 - 2 - 2) = 2/3 -> TP; the dog pixel under the dropped cat prediction
    # is simply not covered.  dog PQ = SQ = 2/3, RQ = 1
    assert z.details["dog"]["tp"] == 1 and z.details["dog"]["fn"] == 0
    assert z.per_class["dog"]["pq"] == pytest.approx(2 / 3, abs=1e-15)
    assert list(z.per_class) == ["dog", "sea"] and z.seen["pq"] is None


def test_zsl_prediction_on_seen_objects_is_ignored_not_fp():
    # A dog prediction lying entirely on a cat (seen) object: FP in GZSL, ignored in ZSL.
    gt, segs = [[1, 1, 1, 2]], [seg(1, CAT), seg(2, DOG)]
    pred, psegs = [[7, 7, 7, 0]], [seg(7, DOG)]
    assert pq_of(gt, segs, pred, psegs, "gzsl").details["dog"]["fp"] == 1
    assert pq_of(gt, segs, pred, psegs, "zsl").details["dog"] == {
        "tp": 0, "fp": 0, "fn": 1, "iou_sum": 0.0}


def test_prediction_errors():
    gt, segs = [[1, 1, 0]], [seg(1, CAT)]
    with pytest.raises(DataError, match=r"\[9\] are in the prediction PNG"):
        pq_of(gt, segs, [[7, 9, 0]], [seg(7, CAT)])
    with pytest.raises(DataError, match=r"\[8\] are in segments_info but not in the prediction"):
        pq_of(gt, segs, [[7, 7, 0]], [seg(7, CAT), seg(8, CAT)])
    with pytest.raises(DataError, match="unknown category_id 42"):
        pq_of(gt, segs, [[7, 7, 0]], [seg(7, 42)])
    with pytest.raises(DataError, match="segment id 7 appears twice"):
        pq_of(gt, segs, [[7, 7, 0]], [seg(7, CAT), seg(7, DOG)])
    with pytest.raises(DataError, match="size"):
        pq_of(gt, segs, [[7, 7]], [seg(7, CAT)])
    # ids 1..P in order (the fast path) with a pixel outside them, above or below
    for bad, ids in ((2, [1, 2, 0]), (-1, [1, -1, 0])):
        with pytest.raises(DataError, match=rf"\[{bad}\] are in the prediction PNG"):
            pq_of(gt, segs, np.array([ids], dtype=np.int32), [seg(1, CAT)])


# -- random images: a per-pair loop reference and panopticapi ----------------------------------

def loop_reference(gt_ids, gt_segs, pred_ids, pred_segs):
    """PROTOCOLS.md section 8 followed literally, one (GT, prediction) pair at a time."""
    stats = defaultdict(lambda: [0, 0, 0, 0.0])  # category id -> tp, fp, fn, iou sum
    gt_by_id = {s["id"]: s for s in gt_segs}
    pred_by_id = {s["id"]: dict(s) for s in pred_segs}
    inter: dict[tuple[int, int], int] = defaultdict(int)
    for g, p in zip(gt_ids.ravel().tolist(), pred_ids.ravel().tolist(), strict=True):
        inter[(g, p)] += 1
    for pid, s in pred_by_id.items():
        s["area"] = int(np.sum(pred_ids == pid))
    matched_gt, matched_pred = set(), set()
    for (g, p), n in inter.items():
        if g not in gt_by_id or p not in pred_by_id or gt_by_id[g]["iscrowd"]:
            continue
        if gt_by_id[g]["category_id"] != pred_by_id[p]["category_id"]:
            continue
        union = pred_by_id[p]["area"] + gt_by_id[g]["area"] - n - inter.get((0, p), 0)
        if n / union > 0.5:
            st = stats[gt_by_id[g]["category_id"]]
            st[0] += 1
            st[3] += n / union
            matched_gt.add(g)
            matched_pred.add(p)
    crowd_of = {}
    for g, s in gt_by_id.items():
        if g in matched_gt:
            continue
        if s["iscrowd"]:
            crowd_of[s["category_id"]] = g
            continue
        stats[s["category_id"]][2] += 1
    for p, s in pred_by_id.items():
        if p in matched_pred:
            continue
        on_ignored = inter.get((0, p), 0)
        if s["category_id"] in crowd_of:
            on_ignored += inter.get((crowd_of[s["category_id"]], p), 0)
        if on_ignored / s["area"] > 0.5:
            continue
        stats[s["category_id"]][1] += 1
    return stats


def random_image(rng, h=24, w=32, n_segments=7):
    """GT and a perturbed prediction: rectangles of random classes, crowd, VOID, unlisted ids."""
    cats = [CAT, DOG, SKY, SEA]
    gt = np.zeros((h, w), dtype=np.int64)
    gt_segs = []
    for k in range(n_segments):
        sid = int(rng.integers(1, 2**24 - 1))
        y, x = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
        gt[y:y + int(rng.integers(2, h)), x:x + int(rng.integers(2, w))] = sid
        gt_segs.append({"id": sid, "category_id": int(rng.choice(cats)),
                        "iscrowd": int(rng.random() < 0.2 and k % 2 == 0)})
    if rng.random() < 0.3:  # an id painted in the PNG but missing from segments_info
        gt[0, :3] = 2**24 - 1
    gt_segs = [dict(s, area=int(np.sum(gt == s["id"]))) for s in gt_segs if np.any(gt == s["id"])]
    pred = gt.copy()
    pred = np.roll(pred, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
    noise = rng.random((h, w)) < 0.05
    pred[noise] = 0
    ids = {}
    pred_segs = []
    for s in gt_segs:
        if rng.random() < 0.15:  # dropped segment -> VOID
            pred[pred == s["id"]] = 0
            continue
        new = int(rng.integers(1, 2**24 - 1))
        while new in ids.values():
            new = int(rng.integers(1, 2**24 - 1))
        ids[s["id"]] = new
        cid = s["category_id"] if rng.random() > 0.2 else int(rng.choice(cats))
        pred_segs.append({"id": new, "category_id": cid})
    remap = np.zeros_like(pred)
    for old, new in ids.items():
        remap[pred == old] = new
    remap[rng.random((h, w)) < 0.02] = 0
    present = set(np.unique(remap).tolist())
    pred_segs = [s for s in pred_segs if s["id"] in present]
    return gt, gt_segs, remap, pred_segs


def test_random_images_match_the_loop_reference():
    rng = np.random.default_rng(7)
    split = tiny_split()
    for setting in ("gzsl", "zsl"):
        ev = PanopticEvaluator(split, setting)
        totals = defaultdict(lambda: [0, 0, 0, 0.0])
        unseen = {DOG, SEA}
        for _ in range(60):
            gt, gt_segs, pred, pred_segs = random_image(rng)
            ev.process(gt, gt_segs, pred, pred_segs)
            if setting == "zsl":  # the documented ZSL rule, applied to the inputs
                gt = gt.copy()
                for s in gt_segs:
                    if s["category_id"] not in unseen:
                        gt[gt == s["id"]] = 0
                gt_segs = [s for s in gt_segs if s["category_id"] in unseen]
                pred = pred.copy()
                for s in pred_segs:
                    if s["category_id"] not in unseen:
                        pred[pred == s["id"]] = 0
                pred_segs = [s for s in pred_segs if s["category_id"] in unseen]
            for cid, st in loop_reference(gt, gt_segs, pred, pred_segs).items():
                for i in range(4):
                    totals[cid][i] += st[i]
        r = ev.evaluate()
        for c in split.classes:
            if setting == "zsl" and not c.unseen:
                continue
            tp, fp, fn, iou = totals[c.id]
            d = r.details[c.name]
            assert (d["tp"], d["fp"], d["fn"]) == (tp, fp, fn), c.name
            assert d["iou_sum"] == pytest.approx(iou, rel=1e-12, abs=1e-12)
            if tp + fp + fn:
                assert r.per_class[c.name]["pq"] == pytest.approx(
                    iou / (tp + 0.5 * fp + 0.5 * fn), rel=1e-12)
        assert sum(totals[c][0] for c in totals) > 20  # the fixture does produce matches


@pytest.mark.parametrize("setting", ["gzsl", "zsl"])
def test_batched_stats_equal_one_image_at_a_time_to_the_last_bit(setting):
    """pq_batch_stats (what evaluations use) against pq_image_stats, image by image, on random
    images (crowd, VOID, unlisted ids, dropped and relabelled segments), with images without
    GT segments and without predictions mixed in; predicted ids 1..P in order as zeroseg's
    inference writes them take the fast path, random ones the general one."""
    from zeroseg.platform.evaluation.panoptic import (
        PQItem,
        _evaluated_mask,
        _segments,
        pq_batch_stats,
        pq_image_stats,
    )

    rng = np.random.default_rng(11)
    split = tiny_split()
    index = split.id_to_index()
    evaluated = _evaluated_mask(split, setting)
    items = []
    for k in range(40):
        gt, gt_segs, pred, pred_segs = random_image(rng, n_segments=int(rng.integers(0, 9)))
        if k % 5 == 0:  # zeroseg's own predictions: ids 1..P in segments order
            order = {s["id"]: j + 1 for j, s in enumerate(pred_segs)}
            pred = np.vectorize(lambda v, order=order: order.get(v, 0))(pred)
            pred_segs = [dict(s, id=order[s["id"]]) for s in pred_segs]
        if k % 7 == 3:
            pred, pred_segs = np.zeros_like(pred), []
        items.append(PQItem(gt, _segments(gt_segs, index, "gt", gt=True), pred,
                            _segments(pred_segs, index, "pred", gt=False), f"image {k}"))
    batched = pq_batch_stats(items, evaluated)
    single = [pq_image_stats(it.gt_ids, it.gt, it.pred_ids, it.pred, evaluated, it.where)
              for it in items]
    for b, one in zip(batched, single, strict=True):
        for field in ("tp", "fp", "fn"):
            assert getattr(b, field).tolist() == getattr(one, field).tolist()
        assert b.iou.tolist() == one.iou.tolist()  # exact: the same additions in the same order
    assert sum(int(one.tp.sum()) for one in single) > 20


def mixed_batch(rng):
    """Images of three sizes (one without pixels), noisy predictions, ids 1..P and random."""
    from zeroseg.platform.evaluation.panoptic import PQItem, _segments

    index = tiny_split().id_to_index()
    items = []
    for k in range(30):
        h, w = ((24, 32), (17, 9), (40, 40))[k % 3]
        gt, gt_segs, pred, pred_segs = random_image(rng, h, w, int(rng.integers(0, 9)))
        if k % 4 == 1:  # salt and pepper: most pixels start a run
            noise = rng.random(pred.shape) < 0.5
            pred[noise] = 0
            present = set(np.unique(pred).tolist())
            pred_segs = [s for s in pred_segs if s["id"] in present]
        if k % 5 == 2:  # a block of GT ids listed nowhere under predicted segments
            gt = gt.copy()
            gt[:h // 2, :w // 2] = 2**24 - 1
        if k % 2 == 0:  # zeroseg's own predictions: ids 1..P in segments order
            order = {s["id"]: j + 1 for j, s in enumerate(pred_segs)}
            pred = np.vectorize(lambda v, order=order: order.get(v, 0))(pred).astype(np.int32)
            pred_segs = [dict(s, id=order[s["id"]]) for s in pred_segs]
        items.append(PQItem(gt, _segments(gt_segs, index, "gt", gt=True), pred,
                            _segments(pred_segs, index, "pred", gt=False), f"image {k}"))
    empty = np.zeros((0, 5), dtype=np.int32)
    items.insert(7, PQItem(empty, _segments([], index, "gt", gt=True), empty,
                           _segments([], index, "pred", gt=False), "empty image"))
    return items


@pytest.mark.parametrize("method", ["runs", "pixels", "auto"])
def test_batch_intersections_count_runs_and_pixels_alike(method):
    """The batch's intersection table, counted by runs of equal keys or pixel by pixel, equals
    a plain count image by image (images of several sizes, one without pixels)."""
    from zeroseg.platform.evaluation.panoptic import batch_intersections, gt_rows

    items = mixed_batch(np.random.default_rng(5))
    g_of = np.array([it.gt.ids.size for it in items])
    p_of = np.array([it.pred.ids.size for it in items])
    inter = batch_intersections(items, g_of, p_of, method=method)
    assert inter.shape == (len(items), g_of.max() + 2, p_of.max() + 1)
    for b, it in enumerate(items):
        rows = gt_rows(it.gt_ids, it.gt.ids).astype(np.intp)
        lut = {0: 0, **{int(v): j + 1 for j, v in enumerate(it.pred.ids)}}
        cols = np.array([lut[int(v)] for v in it.pred_ids.ravel()], dtype=np.intp)
        expected = np.zeros_like(inter[b])
        np.add.at(expected, (rows, cols), 1)
        assert (inter[b] == expected).all(), b


@pytest.mark.parametrize("setting", ["gzsl", "zsl"])
@pytest.mark.parametrize("share", [0.0, 1.0])
def test_batched_stats_of_mixed_sizes_equal_one_image_at_a_time(share, setting, monkeypatch):
    """pq_batch_stats on images of several sizes, counted pixel by pixel (share 0) or by runs
    (share 1), against pq_image_stats: the same numbers to the last bit."""
    from zeroseg.platform.evaluation import panoptic

    monkeypatch.setattr(panoptic, "RUNS_MAX_SHARE", share)
    items = mixed_batch(np.random.default_rng(9))
    evaluated = panoptic._evaluated_mask(tiny_split(), setting)
    batched = panoptic.pq_batch_stats(items, evaluated)
    for it, b in zip(items, batched, strict=True):
        one = panoptic.pq_image_stats(it.gt_ids, it.gt, it.pred_ids, it.pred, evaluated,
                                      it.where)
        for field in ("tp", "fp", "fn", "iou"):
            assert getattr(b, field).tolist() == getattr(one, field).tolist()
    assert sum(int(b.tp.sum()) for b in batched) > 10


def write_dataset(root, rng, n_images=12):
    """A GT layout (panoptic json + PNGs) and a prediction folder (PNGs + one json)."""
    layout = CocoLayout(root / "data", "val")
    pred_dir = root / "pred"
    pred_dir.mkdir(parents=True)
    gt_anns, pred_anns, images = [], [], []
    for i in range(n_images):
        gt, gt_segs, pred, pred_segs = random_image(rng)
        name = f"{i:06d}.png"
        write_panoptic_png(layout.panoptic_pngs / name, gt)
        write_panoptic_png(pred_dir / name, pred)
        images.append({"id": 100 + i, "file_name": name, "height": gt.shape[0],
                       "width": gt.shape[1]})
        gt_anns.append({"image_id": 100 + i, "file_name": name, "segments_info": gt_segs})
        pred_anns.append({"image_id": 100 + i, "file_name": name, "segments_info": pred_segs})
    categories = [{"id": c.id, "name": c.name, "isthing": int(c.isthing)}
                  for c in tiny_split().classes]
    layout.annotations.mkdir(parents=True, exist_ok=True)
    layout.panoptic_json.write_text(json.dumps(
        {"images": images, "annotations": gt_anns, "categories": categories}))
    (pred_dir / "predictions.json").write_text(json.dumps({"annotations": pred_anns}))
    return layout, pred_dir


def test_files_parallel_equals_serial_and_in_memory(tmp_path):
    layout, pred_dir = write_dataset(tmp_path, np.random.default_rng(1))
    serial = evaluate_panoptic(layout, tiny_split(), pred_dir, workers=1)
    parallel = evaluate_panoptic(layout, tiny_split(), pred_dir / "predictions.json", workers=3)
    assert serial.to_json()["per_class"] == parallel.to_json()["per_class"]
    assert serial.details == parallel.details
    assert serial.num_images == 12
    # and equal to feeding the same arrays to the in-memory evaluator
    gt_doc = json.loads(layout.panoptic_json.read_text())
    pred_doc = json.loads((pred_dir / "predictions.json").read_text())
    from zeroseg.platform.data.panoptic_png import read_panoptic_png
    ev = PanopticEvaluator(tiny_split())
    for g, p in zip(gt_doc["annotations"], pred_doc["annotations"], strict=True):
        ev.process(read_panoptic_png(layout.panoptic_pngs / g["file_name"]), g["segments_info"],
                   read_panoptic_png(pred_dir / p["file_name"]), p["segments_info"])
    assert ev.evaluate().details == serial.details


def test_matches_panopticapi_pq_compute(tmp_path):
    pan = pytest.importorskip("panopticapi.evaluation")
    layout, pred_dir = write_dataset(tmp_path, np.random.default_rng(5), n_images=25)
    gt_doc = json.loads(layout.panoptic_json.read_text())
    pred_doc = json.loads((pred_dir / "predictions.json").read_text())
    categories = {c["id"]: c for c in gt_doc["categories"]}
    pairs = list(zip(gt_doc["annotations"], pred_doc["annotations"], strict=True))
    stat = pan.pq_compute_single_core(0, pairs, str(layout.panoptic_pngs), str(pred_dir),
                                      categories)
    ours = evaluate_panoptic(layout, tiny_split(), pred_dir, workers=1)
    ours_api = evaluate_panoptic(layout, tiny_split(), pred_dir, workers=1,
                                 empty_classes="exclude")
    averages, per_class = stat.pq_average(categories, isthing=None)
    for c in tiny_split().classes:
        ref = stat.pq_per_cat[c.id]
        d = ours.details[c.name]
        assert (d["tp"], d["fp"], d["fn"]) == (ref.tp, ref.fp, ref.fn), c.name
        assert d["iou_sum"] == pytest.approx(ref.iou, rel=1e-12, abs=1e-12)
        for m in ("pq", "sq", "rq"):
            assert ours.per_class[c.name][m] == pytest.approx(per_class[c.id][m], abs=1e-12)
    # panopticapi's All average excludes classes with TP + FP + FN = 0, like "exclude"
    included = [c.name for c in tiny_split().classes
                if ours_api.per_class[c.name]["pq"] is not None]
    assert len(included) == averages["n"]
    mean_pq = sum(ours_api.per_class[n]["pq"] for n in included) / len(included)
    assert mean_pq == pytest.approx(averages["pq"], abs=1e-12)


def test_file_errors(tmp_path):
    layout, pred_dir = write_dataset(tmp_path, np.random.default_rng(2), n_images=3)
    pred_json = pred_dir / "predictions.json"
    doc = json.loads(pred_json.read_text())

    def with_doc(new_doc):
        pred_json.write_text(json.dumps(new_doc))

    with_doc({"annotations": doc["annotations"][1:]})
    with pytest.raises(DataError, match="no prediction for GT image 100"):
        evaluate_panoptic(layout, tiny_split(), pred_dir, workers=1)
    bad = json.loads(json.dumps(doc))
    bad["annotations"][0]["file_name"] = "missing.png"
    with_doc(bad)
    with pytest.raises(DataError, match="missing.png"):
        evaluate_panoptic(layout, tiny_split(), pred_dir, workers=1)
    bad = json.loads(json.dumps(doc))
    bad["annotations"][1]["segments_info"][0]["category_id"] = 99
    with_doc(bad)
    with pytest.raises(DataError, match="unknown category_id 99"):
        evaluate_panoptic(layout, tiny_split(), pred_dir, workers=1)
    bad = json.loads(json.dumps(doc))
    bad["annotations"][2]["segments_info"] = bad["annotations"][2]["segments_info"][1:]
    with_doc(bad)
    with pytest.raises(DataError, match="in the prediction PNG but not in its segments_info"):
        evaluate_panoptic(layout, tiny_split(), pred_dir, workers=1)
    with_doc(doc)
    (pred_dir / "other.json").write_text("{}")
    with pytest.raises(DataError, match="exactly one prediction"):
        evaluate_panoptic(layout, tiny_split(), pred_dir, workers=1)
    r = evaluate_panoptic(layout, tiny_split(), pred_dir, pred_json=pred_json, workers=1)
    assert r.num_images == 3


def test_classes_missing_from_the_gt_json_are_not_reported(tmp_path):
    layout, pred_dir = write_dataset(tmp_path, np.random.default_rng(4), n_images=3)
    doc = json.loads(layout.panoptic_json.read_text())
    doc["categories"] = [c for c in doc["categories"] if c["id"] != SEA]
    for ann in doc["annotations"]:
        ann["segments_info"] = [s for s in ann["segments_info"] if s["category_id"] != SEA]
    layout.panoptic_json.write_text(json.dumps(doc))
    pred = json.loads((pred_dir / "predictions.json").read_text())
    for ann in pred["annotations"]:
        for s in ann["segments_info"]:
            if s["category_id"] == SEA:
                s["category_id"] = DOG
    (pred_dir / "predictions.json").write_text(json.dumps(pred))
    r = evaluate_panoptic(layout, tiny_split(), pred_dir, workers=1)
    assert list(r.per_class) == ["cat", "dog", "sky"]
    assert r.counts["unseen_classes_in_mean"] == 1


def test_large_ids_and_many_segments_take_the_general_path():
    # Ids beyond the 24 bits of a PNG (possible for in-memory maps) and more segments than the
    # compact lookup handles must give the same counts as the loop reference.
    rng = np.random.default_rng(11)
    cats = [CAT, DOG, SKY, SEA]
    gt = np.arange(1, 601).reshape(20, 30) * 3  # one-pixel segments...
    gt[:, :10] = gt[:, :1]  # ...except 20 ten-pixel ones in the first columns: 420 segments
    gt_segs = [{"id": int(i), "category_id": int(rng.choice(cats)), "iscrowd": 0,
                "area": int(np.sum(gt == i))} for i in np.unique(gt)]
    pred = np.where(rng.random(gt.shape) < 0.1, 0, gt + 2**30)
    cat_of = {s["id"]: s["category_id"] for s in gt_segs}
    pred_segs = [{"id": int(i), "category_id": cat_of[int(i) - 2**30]}
                 for i in np.unique(pred) if i != 0]
    ev = PanopticEvaluator(tiny_split())
    ev.process(gt, gt_segs, pred, pred_segs)
    r = ev.evaluate()
    ref = loop_reference(gt, gt_segs, pred, pred_segs)
    for c in tiny_split().classes:
        tp, fp, fn, iou = ref[c.id]
        d = r.details[c.name]
        assert (d["tp"], d["fp"], d["fn"]) == (tp, fp, fn)
        assert d["iou_sum"] == pytest.approx(iou, rel=1e-12)
    assert sum(r.details[n]["tp"] for n in r.details) > 100
