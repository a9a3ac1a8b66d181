"""Evaluation on real-format COCO files: the 80-category COCO 2014 instances json under the
65-class ZSI 48/17 split (checked against pycocotools' COCOeval on the same files, run the way
the ZSI authors run it), and PQ on real COCO panoptic samples with both ``--empty-classes``
averagings."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from zeroseg.platform.cli import main
from zeroseg.platform.data.classes import ClassInfo, Split
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.data.registry import get_split, split_file
from zeroseg.platform.evaluation.instance import evaluate_instance
from zeroseg.platform.evaluation.panoptic import PanopticEvaluator, evaluate_panoptic
from zeroseg.platform.evaluation.summary import harmonic_mean

REAL_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "real_samples"
ZSI = "coco2014/zsi-48-17"
ZSP = "coco-panoptic/zsp-119-14"
#: COCO thing categories that are classes of neither ZSI 48/17's seen nor unseen set
OUTSIDE_48_17 = {10, 11, 13, 14, 37, 39, 40, 43, 46, 58, 64, 67, 77, 88, 89}


def coco_things() -> list[dict]:
    cats = json.loads(split_file("panoptic_coco_categories.json").read_text())
    return [{"id": c["id"], "name": c["name"], "supercategory": c["supercategory"]}
            for c in cats if c["isthing"]]


# -- instances: an 80-category COCO 2014 json --------------------------------------------------

def polygon(rng, h: int, w: int) -> list[float]:
    """A convex-ish polygon (8 points around a random centre) inside an h x w image."""
    cx, cy = rng.uniform(0.25 * w, 0.75 * w), rng.uniform(0.25 * h, 0.75 * h)
    rx, ry = rng.uniform(0.1 * w, 0.3 * w), rng.uniform(0.1 * h, 0.3 * h)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 8))
    xs = np.clip(cx + rx * np.cos(angles), 0, w - 1)
    ys = np.clip(cy + ry * np.sin(angles), 0, h - 1)
    return [round(float(v), 2) for xy in zip(xs, ys, strict=True) for v in xy]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: column-major run lengths starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def instances_fixture(seed: int) -> tuple[dict, list[dict]]:
    """A COCO 2014 instances json with all 80 categories (polygons, crowd RLE, non-square and
    portrait images), and detections in split classes and in categories outside the split."""
    rng = np.random.default_rng(seed)
    split = get_split(ZSI)
    sizes = [(48, 64), (72, 40), (50, 90), (36, 60), (80, 56)]  # (h, w): none square
    images = [{"id": 42 + 7 * i, "file_name": f"COCO_val2014_{42 + 7 * i:012d}.jpg",
               "height": h, "width": w} for i, (h, w) in enumerate(sizes)]
    seen = [c.id for c in split.seen][:8]
    unseen = [c.id for c in split.unseen][:5]
    outside = sorted(OUTSIDE_48_17)[:5]
    anns, dets = [], []
    for img in images:
        h, w = img["height"], img["width"]
        for cid in rng.choice(seen + unseen + outside, size=6, replace=True).tolist():
            poly = polygon(rng, h, w)
            rle = mask_utils.merge(mask_utils.frPyObjects([poly], h, w))
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": cid,
                         "segmentation": [poly], "area": float(mask_utils.area(rle)),
                         "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0})
            # a detection near it (sometimes of the wrong class), and a random one
            for det_poly, det_cid in ((polygon(rng, h, w) if rng.random() < 0.3 else poly, cid),
                                      (polygon(rng, h, w), int(rng.choice(seen + outside)))):
                m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([det_poly], h, w)))
                if rng.random() < 0.5:  # jitter: shift by a pixel or two
                    m = np.roll(m, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
                r = mask_utils.encode(np.asfortranarray(m))
                dets.append({"image_id": img["id"], "category_id": det_cid,
                             "segmentation": {"size": r["size"],
                                              "counts": r["counts"].decode("ascii")},
                             "bbox": mask_utils.toBbox(r).tolist(),
                             "score": round(float(rng.uniform(0.05, 1.0)), 3)})
        # crowd regions (uncompressed RLE, as COCO stores them): one in a split class, one
        # outside; a detection lying on each
        for cid in (seen[0], outside[0]):
            m = np.zeros((h, w), dtype=np.uint8)
            y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
            m[y0:y0 + h // 3, x0:x0 + w // 3] = 1
            r = mask_utils.frPyObjects(uncompressed_rle(m), h, w)
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": cid,
                         "segmentation": uncompressed_rle(m), "area": float(m.sum()),
                         "bbox": mask_utils.toBbox(r).tolist(), "iscrowd": 1})
            enc = mask_utils.encode(np.asfortranarray(m))
            dets.append({"image_id": img["id"], "category_id": cid,
                         "segmentation": {"size": enc["size"],
                                          "counts": enc["counts"].decode("ascii")},
                         "bbox": mask_utils.toBbox(enc).tolist(), "score": 0.5})
    gt = {"info": {"description": "COCO 2014 (test fixture)"}, "images": images,
          "annotations": anns, "categories": coco_things()}
    return gt, dets


def zsi_reference(gt: dict, dets_path: Path, tmp: Path, keep: set[int],
                  iou_type: str = "segm") -> dict:
    """pycocotools COCOeval as the ZSI authors run it: on a json filtered to the split's
    categories (their instances_val2014_gzsi_48_17.json), iouThrs {.4, .5, .6}, maxDets
    [1, 10, 100], per class AP over the recall thresholds and recall at maxDets 100."""
    filtered = copy.deepcopy(gt)
    filtered["categories"] = [c for c in gt["categories"] if c["id"] in keep]
    filtered["annotations"] = [a for a in gt["annotations"] if a["category_id"] in keep]
    path = tmp / f"filtered_{len(keep)}.json"
    path.write_text(json.dumps(filtered))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
        coco_dt = coco.loadRes(str(dets_path))
        ev = COCOeval(coco, coco_dt, iou_type)
        ev.params.iouThrs = np.linspace(0.4, 0.6, 3)
        ev.params.maxDets = [1, 10, 100]
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
        out[cid] = values
    return out


@pytest.fixture(params=[0, 1])
def coco2014(request, tmp_path) -> tuple[Path, Path, dict, list[dict]]:
    gt, dets = instances_fixture(request.param)
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(gt))
    res = tmp_path / "results.json"
    res.write_text(json.dumps(dets))
    return root, res, gt, dets


def test_fixture_is_real_format(coco2014):
    _, _, gt, dets = coco2014
    assert len(gt["categories"]) == 80
    assert any(a["iscrowd"] and isinstance(a["segmentation"]["counts"], list)
               for a in gt["annotations"])
    assert any(isinstance(a["segmentation"], list) for a in gt["annotations"])
    assert all(img["height"] != img["width"] for img in gt["images"])
    assert any(img["height"] > img["width"] for img in gt["images"])
    assert {a["category_id"] for a in gt["annotations"]} & OUTSIDE_48_17
    assert {d["category_id"] for d in dets} & OUTSIDE_48_17


@pytest.mark.parametrize("backend", ["hotcoco", "pycocotools"])
def test_80_category_json_equals_pycocotools_on_the_split_classes(coco2014, tmp_path, backend):
    root, res, gt, dets = coco2014
    split = get_split(ZSI)
    split_ids = {c.id for c in split.classes}
    ref = zsi_reference(gt, res, tmp_path, split_ids)
    assert len(ref) == 65
    defined = [v for vals in ref.values() for v in vals.values() if v is not None]
    assert len(defined) > 20 and any(0 < v < 1 for v in defined)  # a non-trivial fixture

    r = evaluate_instance(CocoLayout(root, "val2014"), split, res, backend=backend)
    assert r.per_class == {split.by_id(cid).name: v for cid, v in ref.items()}  # exact floats
    seen_ref = [ref[c.id]["ap50"] for c in split.seen if ref[c.id]["ap50"] is not None]
    unseen_ref = [ref[c.id]["ap50"] for c in split.unseen if ref[c.id]["ap50"] is not None]
    assert r.seen["ap50"] == pytest.approx(sum(seen_ref) / len(seen_ref), abs=1e-15)
    assert r.unseen["ap50"] == pytest.approx(sum(unseen_ref) / len(unseen_ref), abs=1e-15)
    assert r.hm["ap50"] == pytest.approx(harmonic_mean(r.seen["ap50"], r.unseen["ap50"]))

    outside_dets = sum(d["category_id"] not in split_ids for d in dets)
    outside_gt = sum(a["category_id"] not in split_ids for a in gt["annotations"])
    assert outside_dets > 0 and outside_gt > 0
    assert r.counts["detections_outside_split"] == outside_dets
    assert r.counts["detections"] == len(dets) - outside_dets
    assert r.counts["gt_annotations_outside_split"] == outside_gt
    assert r.options["gt_categories_outside_split"] == sorted(OUTSIDE_48_17)
    assert set(r.options["detection_categories_outside_split"]) == \
        {d["category_id"] for d in dets} - split_ids
    # the GT of outside categories is not a miss: no outside class is reported at all
    assert not set(r.per_class) & {c["name"] for c in gt["categories"]
                                   if c["id"] in OUTSIDE_48_17}

    # ZSL: the json filtered to the unseen classes (the authors' *_unseen_48_17.json)
    unseen_ids = {c.id for c in split.unseen}
    ref_z = zsi_reference(gt, res, tmp_path, unseen_ids)
    z = evaluate_instance(CocoLayout(root, "val2014"), split, res, "zsl", backend=backend)
    assert z.per_class == {split.by_id(cid).name: v for cid, v in ref_z.items()}


def test_cli_eval_instance_on_the_80_category_json(coco2014, capsys):
    root, res, _, dets = coco2014
    argv = ["eval", "instance", "--gt", str(root), "--split", "val2014", "--pred", str(res),
            "--benchmark", ZSI]
    assert main(argv) == 0
    out = capsys.readouterr().out
    n = sum(d["category_id"] in OUTSIDE_48_17 for d in dets)
    assert f"note: left out {n} detections in categories" in out
    assert "which are not classes of split coco2014/zsi-48-17" in out
    assert "note: ignored" in out and "GT annotations" in out
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["counts"]["detections_outside_split"] == n
    assert len(doc["per_class"]) == 65


def test_cli_eval_detection_scores_the_boxes_as_zsi_does(coco2014, tmp_path, capsys):
    """`zeroseg eval detection`: ZSD, the same results json on box IoU, equal to the authors'
    COCOeval with iouType bbox on their split-filtered json."""
    root, res, gt, _ = coco2014
    split = get_split(ZSI)
    argv = ["eval", "detection", "--gt", str(root), "--split", "val2014", "--pred", str(res),
            "--benchmark", ZSI, "--json"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["task"] == "detection" and doc["options"]["iou_type"] == "bbox"
    ref = zsi_reference(gt, res, tmp_path, {c.id for c in split.classes}, "bbox")
    assert doc["per_class"] == {split.by_id(cid).name: v for cid, v in ref.items()}
    segm = zsi_reference(gt, res, tmp_path, {c.id for c in split.classes})
    assert ref != segm  # the fixture's boxes and masks do not score alike


def test_in_memory_detections_on_the_80_category_json(coco2014):
    """The pipeline's in-memory path (Detections) with the 80-category json: same numbers."""
    from zeroseg.platform.evaluation.instance import Detections, evaluate_instance_coco

    _, _, gt, dets = coco2014
    split = get_split(ZSI)
    ours = [d for d in dets if d["category_id"] not in OUTSIDE_48_17]  # split classes only
    columns = Detections(
        np.array([d["image_id"] for d in ours], dtype=np.int64),
        np.array([d["category_id"] for d in ours], dtype=np.int64),
        np.array([d["bbox"] for d in ours], dtype=np.float64).reshape(-1, 4),
        np.array([d["score"] for d in ours], dtype=np.float64),
        [d["segmentation"] for d in ours])
    a = evaluate_instance_coco(gt, dets, split)
    b = evaluate_instance_coco(gt, columns, split)
    assert a.per_class == b.per_class
    assert b.counts["detections_outside_split"] == 0


# -- panoptic: real COCO samples, --empty-classes ---------------------------------------------

needs_samples = pytest.mark.skipif(not REAL_SAMPLES.is_dir(),
                                   reason=f"real COCO samples not found at {REAL_SAMPLES}")


def panoptic_tree(tmp: Path, edit=None) -> tuple[CocoLayout, Path]:
    """README layout with the two real val2017 panoptic samples; the GT copied as the
    prediction (``edit(pred_annotations, pred_dir)`` may change it)."""
    root = tmp / "coco"
    (root / "annotations").mkdir(parents=True)
    shutil.copy(REAL_SAMPLES / "panoptic_examples.json",
                root / "annotations" / "panoptic_val2017.json")
    shutil.copytree(REAL_SAMPLES / "panoptic_examples", root / "panoptic_val2017")
    pred = tmp / "pred"
    shutil.copytree(REAL_SAMPLES / "panoptic_examples", pred)
    anns = json.loads((REAL_SAMPLES / "panoptic_examples.json").read_text())["annotations"]
    if edit is not None:
        edit(anns, pred)
    (pred / "predictions.json").write_text(json.dumps({"annotations": anns}))
    return CocoLayout(root, "val2017"), pred


def present_classes(split: Split) -> tuple[int, int]:
    """(seen, unseen) classes with a non-crowd segment in the samples."""
    doc = json.loads((REAL_SAMPLES / "panoptic_examples.json").read_text())
    ids = {s["category_id"] for a in doc["annotations"] for s in a["segments_info"]
           if not s["iscrowd"]}
    return (sum(c.id in ids for c in split.seen), sum(c.id in ids for c in split.unseen))


@needs_samples
def test_gt_as_prediction_exclude_gives_100_and_zero_the_documented_value(tmp_path):
    layout, pred = panoptic_tree(tmp_path)
    split = get_split(ZSP)
    n_seen, n_unseen = present_classes(split)
    assert (n_seen, n_unseen) == (5, 3)  # person, truck, horse, sports ball, gravel; tree...

    exclude = evaluate_panoptic(layout, split, pred, empty_classes="exclude", workers=1)
    assert exclude.hm["pq"] == 1.0 and exclude.seen["pq"] == 1.0 and exclude.unseen["pq"] == 1
    assert exclude.counts["seen_classes_in_mean"] == n_seen
    assert exclude.options["empty_classes"] == "exclude"

    zero = evaluate_panoptic(layout, split, pred, workers=1)  # the default: PADing's
    assert zero.options["empty_classes"] == "zero"
    seen, unseen = n_seen / 119, n_unseen / 14  # absent classes count as PQ 0
    assert zero.seen["pq"] == pytest.approx(seen, abs=1e-12)
    assert zero.unseen["pq"] == pytest.approx(unseen, abs=1e-12)
    assert zero.hm["pq"] == pytest.approx(2 * seen * unseen / (seen + unseen), abs=1e-12)
    assert round(100 * zero.hm["pq"], 1) == 7.0  # the "HM 7.0"
    assert zero.counts["empty_classes"] == exclude.counts["empty_classes"] == 133 - 8

    # the in-memory evaluator (the pipeline's) gives the same with the same choice
    from zeroseg.platform.data.panoptic_png import read_panoptic_png

    doc = json.loads(layout.panoptic_json.read_text())
    for policy, expected in (("exclude", exclude), ("zero", zero)):
        ev = PanopticEvaluator(split, empty_classes=policy,
                               categories=[c["id"] for c in doc["categories"]])
        for a in doc["annotations"]:
            ids = read_panoptic_png(layout.panoptic_pngs / a["file_name"])
            ev.process(ids, a["segments_info"], ids, a["segments_info"])
        r = ev.evaluate()
        assert (r.hm, r.options["empty_classes"]) == (expected.hm, policy)


@needs_samples
def test_cli_empty_classes_is_printed_and_recorded(tmp_path, capsys):
    layout, pred = panoptic_tree(tmp_path)
    argv = ["eval", "panoptic", "--gt", str(layout.root), "--split", "val2017", "--pred",
            str(pred), "--benchmark", ZSP, "--workers", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "note: empty classes: zero: a class with no TP, FP or FN" in out
    assert "counts as PQ/SQ/RQ 0" in out and "[125 such classes here]" in out
    hm_row = next(line for line in out.splitlines() if line.startswith("HM "))
    assert hm_row.split()[1] == "7.0"

    assert main([*argv, "--empty-classes", "exclude"]) == 0
    out = capsys.readouterr().out
    assert "note: empty classes: exclude: a class with no TP, FP or FN" in out
    assert "left out of the seen and unseen means" in out
    hm_row = next(line for line in out.splitlines() if line.startswith("HM "))
    assert hm_row.split()[1] == "100.0"

    assert main([*argv, "--empty-classes", "exclude", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["options"]["empty_classes"] == "exclude" and doc["hm"]["pq"] == 1.0

    with pytest.raises(SystemExit):  # argparse refuses other values
        main([*argv, "--empty-classes", "nan"])
    capsys.readouterr()
    inst = ["eval", "instance", "--gt", str(layout.root), "--split", "val2017", "--pred",
            str(pred), "--empty-classes", "zero", "--benchmark", ZSP]
    assert main(inst) == 2
    assert "--empty-classes: only used by panoptic" in capsys.readouterr().err


def split_without(split: Split, ids: set[int]) -> Split:
    kept = [c for c in split.classes if c.id not in ids]
    classes = tuple(ClassInfo(index=i, id=c.id, name=c.name, isthing=c.isthing,
                              unseen=c.unseen) for i, c in enumerate(kept))
    return Split(name="test/zsp-without", dataset=split.dataset, tasks=split.tasks,
                 protocol=split.protocol, classes=classes)


@needs_samples
def test_panoptic_categories_outside_the_split_are_void_not_errors(tmp_path):
    """A GT json category that is not a class of the split is not evaluated: its GT segments
    are VOID (a prediction lying on one is not a false positive) and its predicted segments are
    dropped; both counted. The file path and the pipeline's in-memory path agree."""
    def sports_ball_as_person(anns, _pred):
        for s in anns[0]["segments_info"]:
            if s["category_id"] == 37:
                s["category_id"] = 1

    layout, pred = panoptic_tree(tmp_path, sports_ball_as_person)
    full = get_split(ZSP)
    r_full = evaluate_panoptic(layout, full, pred, empty_classes="exclude", workers=1)
    assert r_full.details["person"]["fp"] == 1  # the relabelled ball is a false person
    assert r_full.per_class["person"]["pq"] < 1

    narrow = split_without(full, {37, 125})  # sports ball and gravel are not classes
    r = evaluate_panoptic(layout, narrow, pred, empty_classes="exclude", workers=1)
    assert r.details["person"]["fp"] == 0  # lies on VOID now: ignored, as panopticapi does
    assert r.per_class["person"]["pq"] == 1.0
    assert "sports ball" not in r.per_class and "gravel" not in r.per_class
    assert r.counts["gt_segments_outside_split"] == 2  # one ball, one gravel
    assert r.counts["pred_segments_outside_split"] == 1  # gravel (the ball is now "person")
    assert r.options["gt_categories_outside_split"] == [37, 125]
    assert "ignored 2 GT segments (as VOID)" in r.format_table()

    # the pipeline's in-memory scorer accepts the same json (it used to refuse it)
    from zeroseg.platform.data.panoptic_png import read_panoptic_png
    from zeroseg.platform.pipeline.evaluate import _Scores

    gt_doc = json.loads(layout.panoptic_json.read_text())
    data = SimpleNamespace(split=narrow, _png_lut=narrow.png_lut(), layout=layout,
                           panoptic_json=lambda: gt_doc)
    scores = _Scores(data, ["panoptic"], "gzsl", empty_classes="exclude")
    pred_doc = json.loads((pred / "predictions.json").read_text())
    for g, p in zip(gt_doc["annotations"], pred_doc["annotations"], strict=True):
        gt = scores.panoptic.ground_truth(read_panoptic_png(layout.panoptic_pngs / g["file_name"]),
                                          g["segments_info"])
        scores.panoptic.process_ground_truth(gt, read_panoptic_png(pred / p["file_name"]),
                                             p["segments_info"])
    m = scores.results()["panoptic"]
    assert m.per_class == r.per_class and m.details == r.details
    assert m.counts["gt_segments_outside_split"] == 2
    assert m.counts["pred_segments_outside_split"] == 1
