"""mIoU: hand-computed confusion counts, ignore / no-prediction pixels, ZSL vs GZSL, PNG folders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from zeroseg.platform.data.classes import PROTOCOL_DROP_IMAGES, ClassInfo, Split
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.errors import DataError
from zeroseg.platform.evaluation.semantic import SemanticEvaluator, evaluate_semantic

X = 255  # ignore (GT) / no prediction (prediction)


def tiny_split() -> Split:
    # index: name (role, PNG label) -> 0 cat (seen, 0), 1 dog (unseen, 1), 2 sky (seen, 2),
    # 3 sea (unseen, 4). PNG label 3 is not a class of the split.
    spec = [("cat", False, 0), ("dog", True, 1), ("sky", False, 2), ("sea", True, 4)]
    classes = tuple(
        ClassInfo(index=i, id=i + 1, name=n, isthing=i < 2, unseen=u, png_label=p)
        for i, (n, u, p) in enumerate(spec)
    )
    return Split(name="test/tiny", dataset="synthetic", tasks=("semantic",),
                 protocol=PROTOCOL_DROP_IMAGES, classes=classes)


GT = np.array([[0, 0, 1, 1],
               [2, 2, X, 1]])
PRED = np.array([[0, 1, 1, 1],
                 [2, 0, 0, X]])


def run(gt: np.ndarray, pred: np.ndarray, setting: str = "gzsl"):
    ev = SemanticEvaluator(tiny_split(), setting)
    ev.process(gt, pred)
    return ev.evaluate()


def test_gzsl_iou_by_hand():
    r = run(GT, PRED)
    # The GT-255 pixel (1,2) is left out everywhere, so its prediction "cat" is not counted.
    # cat: GT {(0,0),(0,1)} = 2; predicted cat on counted pixels {(0,0),(1,1)} = 2; TP 1
    #      IoU = 1 / (2 + 2 - 1) = 1/3
    assert r.per_class["cat"]["iou"] == pytest.approx(1 / 3, abs=1e-15)
    # dog: GT {(0,2),(0,3),(1,3)} = 3; predicted {(0,1),(0,2),(0,3)} = 3; TP 2 -> 2 / 4
    #      (1,3) is "no prediction": a miss for dog, a false positive for nobody
    assert r.per_class["dog"]["iou"] == pytest.approx(0.5, abs=1e-15)
    # sky: GT 2, predicted 1, TP 1 -> 1 / 2
    assert r.per_class["sky"]["iou"] == pytest.approx(0.5, abs=1e-15)
    # sea: never in GT, never predicted -> empty union -> undefined, left out of the mean
    assert r.per_class["sea"]["iou"] is None
    # seen = (1/3 + 1/2) / 2 = 5/12; unseen = dog only = 1/2; HM = 2*(5/12)(1/2)/(11/12) = 5/11
    assert r.seen["iou"] == pytest.approx(5 / 12, abs=1e-15)
    assert r.unseen["iou"] == pytest.approx(0.5, abs=1e-15)
    assert r.hm["iou"] == pytest.approx(5 / 11, abs=1e-15)
    assert r.counts["pixels"] == 7 and r.counts["unpredicted_pixels"] == 1
    assert r.details["dog"] == {"tp": 2, "gt_pixels": 3, "pred_pixels": 3}


def test_class_predicted_but_absent_from_gt_counts_as_zero():
    pred = PRED.copy()
    pred[1, 0] = 3  # sky pixel predicted "sea": sea has no GT, union 1, TP 0
    r = run(GT, pred)
    assert r.per_class["sea"]["iou"] == 0.0
    # sky: GT 2, predicted 0, TP 0 -> 0
    assert r.per_class["sky"]["iou"] == 0.0
    # unseen = (dog 0.5 + sea 0) / 2
    assert r.unseen["iou"] == pytest.approx(0.25, abs=1e-15)
    assert r.counts["unseen_classes_in_mean"] == 2


def test_zsl_counts_unseen_gt_pixels_only():
    r = run(GT, PRED, "zsl")
    # Counted pixels: GT dog at (0,2),(0,3),(1,3) with predictions dog, dog, none.
    # dog: GT 3, predicted 2, TP 2 -> 2/3 (the dog prediction at (0,1) lies on cat GT: ignored)
    assert list(r.per_class) == ["dog", "sea"]
    assert r.per_class["dog"]["iou"] == pytest.approx(2 / 3, abs=1e-15)
    assert r.per_class["sea"]["iou"] is None
    assert r.unseen["iou"] == pytest.approx(2 / 3, abs=1e-15)
    assert r.seen["iou"] is None and r.hm["iou"] is None
    assert r.counts["pixels"] == 3


def test_seen_prediction_on_unseen_pixel_is_an_error_in_zsl_and_gzsl_differs():
    pred = PRED.copy()
    pred[0, 2] = 0  # a dog pixel predicted "cat" (a seen class)
    z = run(GT, pred, "zsl")
    # ZSL dog: GT 3, predicted dog on counted pixels {(0,3)} = 1, TP 1 -> 1 / 3
    assert z.per_class["dog"]["iou"] == pytest.approx(1 / 3, abs=1e-15)
    g = run(GT, pred, "gzsl")
    # GZSL dog: predicted {(0,1),(0,3)} = 2, TP 1 -> 1 / (3 + 2 - 1) = 1/4
    assert g.per_class["dog"]["iou"] == pytest.approx(0.25, abs=1e-15)
    # GZSL cat: GT 2, predicted {(0,0),(1,1),(0,2)} = 3, TP 1 -> 1/4
    assert g.per_class["cat"]["iou"] == pytest.approx(0.25, abs=1e-15)


def test_all_unpredicted_and_perfect():
    empty = run(GT, np.full_like(GT, X))
    # every GT class has TP 0 and a non-empty union -> IoU 0; sea undefined
    assert [empty.per_class[n]["iou"] for n in ("cat", "dog", "sky", "sea")] == [0, 0, 0, None]
    assert empty.hm["iou"] == 0.0
    perfect = run(GT, np.where(GT == X, 0, GT))
    assert perfect.seen["iou"] == 1.0 and perfect.unseen["iou"] == 1.0 and perfect.hm["iou"] == 1


def test_accumulates_over_images_like_one_big_image():
    rng = np.random.default_rng(0)
    ev = SemanticEvaluator(tiny_split())
    gts, preds = [], []
    for _ in range(5):
        g = rng.choice([0, 1, 2, 3, X], size=(7, 9))
        p = rng.choice([0, 1, 2, 3, X], size=(7, 9))
        ev.process(g, p)
        gts.append(g)
        preds.append(p)
    whole = SemanticEvaluator(tiny_split())
    whole.process(np.concatenate(gts), np.concatenate(preds))
    a, b = ev.evaluate(), whole.evaluate()
    assert a.per_class == b.per_class and ev.num_images == 5
    # and against a direct per-class computation
    g, p = np.concatenate(gts), np.concatenate(preds)
    for i, name in enumerate(["cat", "dog", "sky", "sea"]):
        valid = g != X
        tp = np.sum(valid & (g == i) & (p == i))
        union = np.sum(valid & ((g == i) | (p == i)))
        assert a.per_class[name]["iou"] == pytest.approx(tp / union, abs=1e-15)


def test_invalid_labels_raise():
    ev = SemanticEvaluator(tiny_split())
    with pytest.raises(DataError, match="predicted label 7"):
        ev.process(GT, np.where(PRED == 1, 7, PRED))
    with pytest.raises(DataError, match="GT label 9"):
        ev.process(np.where(GT == 1, 9, GT), PRED)
    with pytest.raises(DataError, match="size"):
        ev.process(GT, PRED[:, :3])


# -- PNG folders -------------------------------------------------------------------------------

def write_png(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode="L").save(path)


def to_png_labels(indices: np.ndarray) -> np.ndarray:
    lut = np.array([0, 1, 2, 4], dtype=np.uint8)  # index -> PNG label of tiny_split
    return np.where(indices == X, X, lut[np.where(indices == X, 0, indices)])


def make_folders(tmp_path, n_images: int = 6, seed: int = 0):
    """Random GT / prediction PNGs; returns the layout, the prediction folder and the arrays as
    contiguous indices (what the in-memory evaluator takes)."""
    rng = np.random.default_rng(seed)
    layout = CocoLayout(tmp_path / "data", "val")
    pred_dir = tmp_path / "pred"
    arrays = []
    for i in range(n_images):
        g = rng.choice([0, 1, 2, 3, X], size=(11, 13))
        p = rng.choice([0, 1, 2, 3, X], size=(11, 13))
        gpng = to_png_labels(g)
        gpng[0, 0] = 3  # a PNG value the split does not know: unlabeled in the GT
        g[0, 0] = X
        write_png(layout.semantic_pngs / f"{i:04d}.png", gpng)
        write_png(pred_dir / f"{i:04d}.png", to_png_labels(p))
        arrays.append((g, p))
    return layout, pred_dir, arrays


def test_png_folders_match_in_memory_evaluation(tmp_path):
    layout, pred_dir, arrays = make_folders(tmp_path)
    for setting in ("gzsl", "zsl"):
        ev = SemanticEvaluator(tiny_split(), setting)
        for g, p in arrays:
            ev.process(g, p)
        r = evaluate_semantic(layout, tiny_split(), pred_dir, setting, workers=1)
        assert r.per_class == ev.evaluate().per_class
        assert r.details == ev.evaluate().details
        assert r.num_images == 6
    assert set(r.per_class) == {"dog", "sea"}


def test_png_folders_parallel_equals_serial(tmp_path):
    layout, pred_dir, _ = make_folders(tmp_path, n_images=8, seed=3)
    serial = evaluate_semantic(layout, tiny_split(), pred_dir, workers=1)
    parallel = evaluate_semantic(layout, tiny_split(), pred_dir, workers=2)
    assert parallel.to_json()["per_class"] == serial.to_json()["per_class"]
    assert parallel.details == serial.details


def test_png_folder_errors(tmp_path):
    layout, pred_dir, _ = make_folders(tmp_path, n_images=2)
    bad = tmp_path / "bad"
    with pytest.raises(DataError, match="0000.png"):
        evaluate_semantic(layout, tiny_split(), bad.mkdir() or bad)
    write_png(bad / "0000.png", np.full((11, 13), 3))  # PNG label 3 is no class
    write_png(bad / "0001.png", np.zeros((11, 13)))
    with pytest.raises(DataError, match="predicted label 3"):
        evaluate_semantic(layout, tiny_split(), bad, workers=1)
    write_png(bad / "0000.png", np.zeros((5, 13)))
    with pytest.raises(DataError, match="size"):
        evaluate_semantic(layout, tiny_split(), bad, workers=1)
