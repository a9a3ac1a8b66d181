"""mAP / Recall@100 at IoU 0.4 / 0.5 / 0.6: hand-computed AP, and pycocotools on random inputs.

The reference is pycocotools' COCOeval run the way the ZSI / PADing code runs it (iouThrs
{0.4, 0.5, 0.6}, maxDets [1, 10, 100], its four default area ranges), per-class values read as
their ``coco_utils.py`` reads them. Both of our backends must give those numbers exactly.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from zeroseg.platform.data.classes import PROTOCOL_DROP_IMAGES, ClassInfo, Split
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.errors import DataError
from zeroseg.platform.evaluation.instance import evaluate_instance, evaluate_instance_coco

BACKENDS = ("hotcoco", "pycocotools")
H, W = 40, 48


def tiny_split(n: int = 5, unseen: tuple[int, ...] = (2, 4)) -> Split:
    classes = tuple(ClassInfo(index=i, id=i + 1, name=f"c{i + 1}", isthing=True,
                              unseen=(i + 1) in unseen) for i in range(n))
    return Split(name="test/inst", dataset="synthetic", tasks=("instance",),
                 protocol=PROTOCOL_DROP_IMAGES, classes=classes)


def rect_mask(x: int, y: int, w: int, h: int) -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[y:y + h, x:x + w] = 1
    return m


def rle(mask: np.ndarray) -> dict:
    r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": r["counts"].decode()}


def mask_bbox(mask: np.ndarray) -> list[float]:
    """[x, y, w, h] of the mask's extent (what pycocotools' toBbox gives)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
            float(ys.max() - ys.min() + 1)]


def gt_ann(aid: int, image_id: int, cid: int, box: tuple[int, int, int, int], crowd: int = 0,
           mask: np.ndarray | None = None) -> dict:
    m = rect_mask(*box) if mask is None else mask
    r = rle(m)
    return {"id": aid, "image_id": image_id, "category_id": cid, "segmentation": r,
            "area": float(m.sum()), "bbox": mask_bbox(m), "iscrowd": crowd}


def det(image_id: int, cid: int, box: tuple[int, int, int, int], score: float,
        mask: np.ndarray | None = None) -> dict:
    m = rect_mask(*box) if mask is None else mask
    return {"image_id": image_id, "category_id": cid, "score": score, "segmentation": rle(m),
            "bbox": mask_bbox(m)}


def gt_doc(anns: list[dict], n_images: int = 2, n_cats: int = 5) -> dict:
    return {"images": [{"id": i + 1, "height": H, "width": W, "file_name": f"{i + 1}.png"}
                       for i in range(n_images)],
            "annotations": anns,
            "categories": [{"id": c + 1, "name": f"c{c + 1}"} for c in range(n_cats)]}


# -- hand-computed ---------------------------------------------------------------------------

def hand_fixture() -> tuple[dict, list[dict]]:
    anns = [
        # class 1: one GT per image
        gt_ann(1, 1, 1, (0, 0, 10, 10)),
        gt_ann(2, 2, 1, (20, 20, 10, 10)),
        # class 2 (unseen): one GT; its only detection covers half of it (IoU exactly 0.5)
        gt_ann(3, 1, 2, (20, 0, 10, 10)),
        # class 3: only a crowd GT -> no instance to find, AP undefined
        gt_ann(4, 2, 3, (0, 20, 10, 10), crowd=1),
        # class 4 (unseen): GT without any detection
        gt_ann(5, 2, 4, (30, 0, 10, 10)),
        # class 5: no GT (it gets detections)
    ]
    dets = [
        det(1, 1, (0, 0, 10, 10), 0.9),  # TP (IoU 1)
        det(1, 1, (0, 0, 10, 10), 0.8),  # duplicate of the same GT -> FP
        det(2, 1, (20, 20, 10, 10), 0.7),  # TP
        det(1, 2, (20, 0, 10, 5), 0.9),  # IoU = 50 / 100 = 0.5 exactly
        det(2, 3, (0, 20, 10, 10), 0.6),  # on the crowd GT: ignored, neither TP nor FP
        det(1, 5, (0, 0, 5, 5), 0.5),  # class without GT
    ]
    return gt_doc(anns), dets


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_ap_and_recall_by_hand(backend, iou_type):
    gt, dets = hand_fixture()
    r = evaluate_instance_coco(gt, dets, tiny_split(), iou_type=iou_type, backend=backend)
    # class 1, detections by score: TP, FP, TP over 2 GT.
    #   recall    = 1/2, 1/2, 2/2
    #   precision = 1/1, 1/2, 2/3 -> made non-increasing from the right: 1, 2/3, 2/3
    #   101 recall thresholds 0, .01, ..., 1: the 51 up to 0.50 are reached at the first
    #   detection (precision 1), the 50 above at the third (2/3).
    #   AP = (51 * 1 + 50 * 2/3) / 101 ; recall = 1
    ap1 = (51 * 1 + 50 * (2 / 3)) / 101
    c1 = r.per_class["c1"]
    assert c1["ap50"] == pytest.approx(ap1, abs=1e-12)
    assert c1["ap40"] == pytest.approx(ap1, abs=1e-12)  # all IoUs are 1 or 0 here
    assert c1["ap60"] == pytest.approx(ap1, abs=1e-12)
    assert c1["recall50"] == 1.0
    # class 2: IoU exactly 0.5. A match needs IoU >= threshold: TP at 0.4 and 0.5 (AP 1,
    # recall 1); at 0.6 it is an FP and the GT is missed (AP 0, recall 0). (COCOeval's precision
    # is tp / (tp + fp + eps), hence 1 - 1e-16 rather than 1.)
    c2 = r.per_class["c2"]
    assert (c2["ap40"], c2["ap50"], c2["ap60"]) == pytest.approx((1.0, 1.0, 0.0), abs=1e-12)
    assert (c2["recall40"], c2["recall50"], c2["recall60"]) == (1.0, 1.0, 0.0)
    # class 3: only crowd GT -> undefined (skipped, as ZSI skips NaN classes)
    assert r.per_class["c3"] == dict.fromkeys(r.metrics)
    # class 4: GT but no detection -> 0
    assert r.per_class["c4"]["ap50"] == 0.0 and r.per_class["c4"]["recall50"] == 0.0
    # class 5: detections but no GT -> undefined
    assert r.per_class["c5"]["ap50"] is None
    # seen = {c1, c3, c5} -> only c1 defined; unseen = {c2, c4} -> (1 + 0) / 2
    assert r.seen["ap50"] == pytest.approx(ap1, abs=1e-12)
    assert r.unseen["ap50"] == pytest.approx(0.5, abs=1e-12)
    assert r.hm["ap50"] == pytest.approx(2 * ap1 * 0.5 / (ap1 + 0.5), abs=1e-12)
    assert r.unseen["recall60"] == 0.0 and r.hm["recall60"] == 0.0  # HM with a zero side
    assert r.counts["seen_classes_in_mean"] == 1 and r.counts["unseen_classes_in_mean"] == 2


def test_more_than_100_detections_per_image_and_class():
    # One GT; 120 detections of its class in the same image. The correct one has the lowest
    # score, so it is the 120th and falls outside the 100 kept: AP = recall = 0.
    anns = [gt_ann(1, 1, 1, (0, 0, 10, 10))]
    dets = [det(1, 1, (30, 30, 5, 5), 0.9 - i * 0.001) for i in range(119)]
    dets.append(det(1, 1, (0, 0, 10, 10), 0.01))
    for backend in BACKENDS:
        r = evaluate_instance_coco(gt_doc(anns), dets, tiny_split(), backend=backend)
        assert r.per_class["c1"]["recall50"] == 0.0 and r.per_class["c1"]["ap50"] == 0.0
    # With 99 wrong detections the correct one is kept, at rank 100:
    # recall 1; precision at that point 1/100, which is the interpolated precision for every
    # recall threshold -> AP = 0.01
    r = evaluate_instance_coco(gt_doc(anns), dets[:99] + dets[-1:], tiny_split())
    assert r.per_class["c1"]["recall50"] == 1.0
    assert r.per_class["c1"]["ap50"] == pytest.approx(0.01, abs=1e-12)


def test_empty_predictions():
    gt, _ = hand_fixture()
    r = evaluate_instance_coco(gt, [], tiny_split())
    # classes with non-crowd GT -> 0; crowd-only and GT-less classes -> undefined
    assert [r.per_class[f"c{i}"]["ap50"] for i in range(1, 6)] == [0.0, 0.0, None, 0.0, None]
    assert r.hm["ap50"] == 0.0 and r.counts["detections"] == 0


def test_zsl_keeps_unseen_only_and_their_values():
    gt, dets = hand_fixture()
    dets.append(det(2, 4, (30, 0, 10, 10), 0.3))  # a TP for unseen class 4
    g = evaluate_instance_coco(gt, dets, tiny_split(), "gzsl")
    z = evaluate_instance_coco(gt, dets, tiny_split(), "zsl")
    assert list(z.per_class) == ["c2", "c4"]
    assert z.seen["ap50"] is None and z.hm["ap50"] is None
    # COCO AP is per category: an unseen class gets the same numbers in both settings
    for name in ("c2", "c4"):
        assert z.per_class[name] == g.per_class[name]
    assert z.per_class["c4"]["ap50"] == pytest.approx(1.0, abs=1e-12)
    assert z.counts["detections"] == 2  # seen-class detections were dropped


def test_layout_entry_point(tmp_path):
    gt, dets = hand_fixture()
    layout = CocoLayout(tmp_path, "val")
    layout.annotations.mkdir(parents=True)
    layout.instances_json.write_text(json.dumps(gt))
    res = tmp_path / "results.json"
    res.write_text(json.dumps(dets))
    a = evaluate_instance(layout, tiny_split(), res)
    b = evaluate_instance_coco(gt, dets, tiny_split())
    assert a.to_json()["per_class"] == b.to_json()["per_class"]
    with pytest.raises(DataError, match="not found"):
        evaluate_instance(layout, tiny_split(), tmp_path / "nope.json")


def test_input_errors():
    gt, dets = hand_fixture()
    split = tiny_split()
    with pytest.raises(DataError, match="image_id 99"):
        evaluate_instance_coco(gt, dets + [dict(dets[0], image_id=99)], split)
    # a detection outside the split is left out and counted, not fatal (pycocotools does not
    # evaluate a category it is not given)
    base = evaluate_instance_coco(gt, dets, split)
    r = evaluate_instance_coco(gt, dets + [dict(dets[0], category_id=42)], split)
    assert r.per_class == base.per_class
    assert r.counts["detections_outside_split"] == 1
    assert r.options["detection_categories_outside_split"] == [42]
    assert base.counts["detections_outside_split"] == 0
    with pytest.raises(DataError, match="integer 'category_id'"):
        evaluate_instance_coco(gt, dets + [dict(dets[0], category_id="3")], split)
    no_score = dict(dets[0])
    del no_score["score"]
    with pytest.raises(DataError, match="score"):
        evaluate_instance_coco(gt, [no_score], split)
    bad_gt = copy.deepcopy(gt)
    bad_gt["annotations"][0]["id"] = 0  # pycocotools would silently miscount matches to it
    with pytest.raises(DataError, match="unique positive integer"):
        evaluate_instance_coco(bad_gt, dets, split)
    wide_gt = copy.deepcopy(gt)  # a json category outside the split: not evaluated
    wide_gt["categories"].append({"id": 77, "name": "alien"})
    assert evaluate_instance_coco(wide_gt, dets, split).per_class == base.per_class
    alien_gt = copy.deepcopy(gt)  # no category of the split at all: the wrong json
    alien_gt["categories"] = [{"id": 77, "name": "alien"}]
    alien_gt["annotations"] = []
    with pytest.raises(DataError, match="none of its 1 categories is a class of split"):
        evaluate_instance_coco(alien_gt, dets, split)


# -- randomised comparison with pycocotools --------------------------------------------------

def random_fixture(seed: int, n_images: int = 7, n_cats: int = 6):
    """Several images and classes; crowd GT; a class without GT; images without detections;
    duplicate detections; score ties; over 100 detections of one class in one image."""
    rng = np.random.default_rng(seed)
    anns, dets = [], []
    aid = 1

    def random_mask():
        x, y = int(rng.integers(0, W - 4)), int(rng.integers(0, H - 4))
        m = rect_mask(x, y, int(rng.integers(3, W - x + 1)), int(rng.integers(3, H - y + 1)))
        if rng.random() < 0.4:
            m &= (rng.random((H, W)) < 0.8).astype(np.uint8)
        return m

    for image in range(1, n_images + 1):
        objects = []
        for _ in range(int(rng.integers(0, 8))):
            cid = int(rng.integers(1, n_cats))  # the last category never has GT
            m = random_mask()
            if m.sum() == 0:
                continue
            anns.append(gt_ann(aid, image, cid, (0, 0, 0, 0), crowd=int(rng.random() < 0.15),
                               mask=m))
            objects.append((cid, m))
            aid += 1
        if image == 1:
            continue  # no detections at all in this image
        n_det = 130 if image == 2 else int(rng.integers(0, 25))
        for _ in range(n_det):
            if objects and rng.random() < 0.6:
                cid, m = objects[int(rng.integers(len(objects)))]
                if rng.random() < 0.5:
                    m = m & (rng.random((H, W)) < 0.7).astype(np.uint8)
                if rng.random() < 0.3:
                    cid = int(rng.integers(1, n_cats + 1))
            else:
                cid, m = int(rng.integers(1, n_cats + 1)), random_mask()
            if image == 2 and rng.random() < 0.9:
                cid = 1  # > 100 detections of class 1 in image 2
            dets.append(det(image, cid, (0, 0, 0, 0), float(np.round(rng.random(), 2)), mask=m))
        if dets and rng.random() < 0.5:
            dets.append(dict(dets[-1]))  # an exact duplicate
    return gt_doc(anns, n_images, n_cats), dets


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: column-major run lengths, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.int64)
    edges = np.nonzero(np.diff(flat))[0] + 1
    bounds = np.concatenate(([0], edges, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0, *runs]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": runs}


def with_polygons(gt: dict, dets: list[dict], seed: int) -> tuple[dict, list[dict]]:
    """Real COCO's encodings: float polygons (sometimes two parts) for regular GT, uncompressed
    RLE for crowd GT, and some polygon detections."""
    rng = np.random.default_rng(seed + 1000)
    gt = copy.deepcopy(gt)
    for ann in gt["annotations"]:
        if ann["iscrowd"]:
            seg = ann["segmentation"]
            m = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
            ann["segmentation"] = uncompressed_rle(m)
            continue
        # the outline of the GT's box, corners jittered to non-integer coordinates
        x, y, w, h = ann["bbox"]
        corners = np.array([x, y, x + w, y, x + w, y + h, x, y + h], dtype=np.float64)
        poly = corners + rng.uniform(-0.6, 0.6, corners.size)
        parts = [poly.tolist()]
        if rng.random() < 0.2:  # a second, small part
            parts.append((rng.uniform(0, 6, 6) + [x, y, x, y, x, y]).tolist())
        ann["segmentation"] = parts
        ann["area"] = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(parts, H, W))))
    dets = copy.deepcopy(dets)
    for d in dets[::7]:
        d["segmentation"] = [rng.uniform(0, min(H, W), 8).tolist()]
    return gt, dets


def pycocotools_reference(gt: dict, dets: list[dict], iou_type: str, cat_ids=None):
    """pycocotools COCOeval with the ZSI parameters, read as ZSI's coco_utils.py reads it."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        coco_dt = coco.loadRes(copy.deepcopy(dets))
        ev = COCOeval(coco, coco_dt, iou_type)
        ev.params.iouThrs = np.linspace(0.4, 0.6, 3)
        ev.params.maxDets = [1, 10, 100]
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
    out = {}
    for k, cid in enumerate(ev.params.catIds):
        values = {}
        for suffix, t in (("40", 0), ("50", 1), ("60", 2)):
            p = ev.eval["precision"][t, :, k, 0, -1]
            p = p[p > -1]
            values[f"ap{suffix}"] = float(np.mean(p)) if p.size else None
            rec = ev.eval["recall"][t, k, 0, -1]
            values[f"recall{suffix}"] = float(rec) if rec > -1 else None
        out[f"c{cid}"] = values
    return out


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_equals_pycocotools_on_random_inputs(seed, iou_type):
    gt, dets = random_fixture(seed)
    if seed % 2:
        gt, dets = with_polygons(gt, dets, seed)
    split = tiny_split(6, unseen=(2, 5))
    assert max(sum(1 for d in dets if d["image_id"] == 2 and d["category_id"] == c)
               for c in range(1, 7)) > 100
    ref = pycocotools_reference(gt, dets, iou_type)
    defined = [v for vals in ref.values() for v in vals.values() if v is not None]
    assert len(defined) > 10 and any(0 < v < 1 for v in defined)  # a non-trivial fixture
    for backend in BACKENDS:
        r = evaluate_instance_coco(gt, dets, split, iou_type=iou_type, backend=backend)
        assert r.per_class == ref, backend  # exact: same floats, not approximately
    # ZSL equals COCOeval restricted to the unseen categories (with seen detections removed)
    unseen = [2, 5]
    ref_z = pycocotools_reference(gt, [d for d in dets if d["category_id"] in unseen], iou_type,
                                  cat_ids=unseen)
    for backend in BACKENDS:
        z = evaluate_instance_coco(gt, dets, split, "zsl", iou_type=iou_type, backend=backend)
        assert z.per_class == ref_z, backend


@pytest.mark.parametrize("seed", range(3))
def test_detections_as_columns_equal_the_results_json(seed):
    """The in-memory form of zeroseg's own predictions (Detections) scores exactly as the same
    detections in a results json, for both backends and both settings."""
    from zeroseg.platform.evaluation.instance import Detections

    gt, dets = random_fixture(seed)
    split = tiny_split(6, unseen=(2, 5))
    columns = Detections(
        np.array([d["image_id"] for d in dets], dtype=np.int64),
        np.array([d["category_id"] for d in dets], dtype=np.int64),
        np.array([d["bbox"] for d in dets], dtype=np.float64).reshape(-1, 4),
        np.array([d["score"] for d in dets], dtype=np.float64),
        [d["segmentation"] for d in dets])
    assert columns.entries() == json.loads(json.dumps(dets))
    for backend in BACKENDS:
        for setting in ("gzsl", "zsl"):
            a = evaluate_instance_coco(gt, dets, split, setting, backend=backend)
            b = evaluate_instance_coco(gt, columns, split, setting, backend=backend)
            assert a.per_class == b.per_class and a.counts == b.counts, (backend, setting)


def test_only_the_instances_json_categories_are_reported():
    # The split has a 6th class (say a stuff class) that the instances json does not list:
    # it is not an instance class, so it is neither reported nor in a mean.
    gt, dets = hand_fixture()
    r = evaluate_instance_coco(gt, dets, tiny_split(6, unseen=(2, 4, 6)))
    assert list(r.per_class) == ["c1", "c2", "c3", "c4", "c5"]
    assert r.counts["unseen_classes_in_mean"] == 2


def test_rle_of_the_wrong_size_is_rejected():
    gt, dets = hand_fixture()
    bad = dict(dets[0], segmentation=rle(np.ones((H + 1, W), dtype=np.uint8)))
    with pytest.raises(DataError, match="RLE size"):
        evaluate_instance_coco(gt, dets + [bad], tiny_split())
