"""Three-task inference: hand-computed cases for the per-image rules, and file round trips
through platform/evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from zeroseg.methods.segmenter import (
    InferenceConfig,
    Segmenter,
    SegmenterConfig,
    instance_inference,
    panoptic_inference,
    predict_dataset,
    segmenter_classifier,
    semantic_inference,
)
from zeroseg.methods.segmenter.inference import encode_instances, upsample_masks
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.data.panoptic_png import read_panoptic_png
from zeroseg.platform.data.synthetic.generate import generate, load_classes_json
from zeroseg.platform.errors import ConfigError, DataError
from zeroseg.platform.evaluation import evaluate_instance, evaluate_panoptic, evaluate_semantic


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def masks_from_sigmoids(values: list[list[float]]) -> torch.Tensor:
    """[Q, W] sigmoid values -> [Q, 1, W] mask logits."""
    return torch.tensor([[logit(v) for v in row] for row in values]).unsqueeze(1)


# -- semantic ----------------------------------------------------------------------------------
def test_semantic_sums_class_probability_times_mask():
    probs = torch.tensor([[0.6, 0.1, 0.3],    # query 0: mostly class 0
                          [0.1, 0.7, 0.2],    # query 1: mostly class 1
                          [0.0, 0.0, 1.0]])   # query 2: no object, whatever its mask
    masks = masks_from_sigmoids([[0.9, 0.3, 0.5],
                                 [0.2, 0.8, 0.5],
                                 [0.99, 0.99, 0.99]])
    # pixel 0: c0 = .6*.9 + .1*.2 = .56, c1 = .1*.9 + .7*.2 = .23 -> 0
    # pixel 1: c0 = .6*.3 + .1*.8 = .26, c1 = .1*.3 + .7*.8 = .59 -> 1
    # pixel 2: c0 = .6*.5 + .1*.5 = .35, c1 = .1*.5 + .7*.5 = .40 -> 1
    assert semantic_inference(probs, masks).tolist() == [[0, 1, 1]]


def test_semantic_two_weak_queries_beat_one_stronger():
    probs = torch.tensor([[0.5, 0.0, 0.5], [0.5, 0.0, 0.5], [0.0, 0.8, 0.2]])
    masks = masks_from_sigmoids([[0.9], [0.9], [0.9]])
    # class 0: .5*.9 * 2 = .9 > class 1: .8*.9 = .72, although no query prefers class 0 as much
    assert semantic_inference(probs, masks).tolist() == [[0]]


# -- instance ----------------------------------------------------------------------------------
def test_instance_top_pairs_scores_and_boxes():
    # classes 0, 1 are things, 2 is stuff (not allowed)
    probs = torch.tensor([[0.50, 0.20, 0.25, 0.05],
                          [0.10, 0.60, 0.20, 0.10]])
    mask_logits = torch.tensor([[[2.0, -1.0], [0.5, -3.0]],    # query 0: left column
                                [[-2.0, 3.0], [-1.0, 1.0]]])   # query 1: right column
    allowed = torch.tensor([True, True, False])
    pred = instance_inference(probs, mask_logits, allowed=allowed, detections_per_image=3)
    sig = torch.sigmoid
    ms0 = float((sig(torch.tensor(2.0)) + sig(torch.tensor(0.5))) / 2)
    ms1 = float((sig(torch.tensor(3.0)) + sig(torch.tensor(1.0))) / 2)
    # pairs by class probability: (q1,c1) .6, (q0,c0) .5, (q0,c1) .2 [(q1,c0) .1 is 4th;
    # stuff pairs never count]; final score = prob x mean sigmoid inside the binary mask
    assert pred.queries.tolist() == [1, 0, 0]
    assert pred.classes.tolist() == [1, 0, 1]
    torch.testing.assert_close(pred.scores, torch.tensor([0.6 * ms1, 0.5 * ms0, 0.2 * ms0]))
    assert pred.masks[0].tolist() == [[False, True], [False, True]]
    assert pred.masks[1].tolist() == [[True, False], [True, False]]

    entries = encode_instances(pred, 42, [7, 8, 9])
    assert [e["category_id"] for e in entries] == [8, 7, 8]
    assert [e["bbox"] for e in entries] == [[1, 0, 1, 2], [0, 0, 1, 2], [0, 0, 1, 2]]
    assert all(e["image_id"] == 42 for e in entries)
    from pycocotools import mask as mask_utils

    rle = dict(entries[0]["segmentation"], counts=entries[0]["segmentation"]["counts"].encode())
    assert mask_utils.decode(rle).tolist() == [[0, 1], [0, 1]]
    json.dumps(entries)  # plain JSON


def test_instance_keeps_at_most_the_requested_number():
    torch.manual_seed(0)
    probs = torch.rand(20, 6).softmax(-1)
    pred = instance_inference(probs, torch.randn(20, 8, 8), detections_per_image=100)
    assert len(pred.scores) == 100  # 20 queries x 5 classes
    assert torch.all(pred.scores[:-1] >= pred.scores[1:])
    pairs = set(zip(pred.queries.tolist(), pred.classes.tolist(), strict=True))
    assert len(pairs) == 100
    none = instance_inference(probs, torch.randn(20, 8, 8), allowed=torch.zeros(5, dtype=bool))
    assert len(none.scores) == 0 and none.masks.shape == (0, 8, 8)


# -- panoptic ----------------------------------------------------------------------------------
def _onehot(cls: int, p: float, num: int = 4) -> list[float]:
    row = [(1 - p) / (num - 1)] * num
    row[cls] = p
    return row


def test_panoptic_rules_by_hand():
    # classes: 0, 1 things; 2 stuff; column 3 = no object. One row of 12 pixels.
    width = 12
    isthing = torch.tensor([True, True, False])
    queries = [  # (class probabilities, pixels where the mask is on)
        (_onehot(0, 0.90), range(0, 5)),     # q0: thing c0, pixels 0-4
        (_onehot(0, 0.95), range(5, 7)),     # q1: another c0 instance, 5-6
        (_onehot(2, 0.85), range(7, 9)),     # q2: stuff c2, 7-8
        (_onehot(2, 0.90), range(9, 11)),    # q3: stuff c2 again, 9-10 -> merged with q2
        (_onehot(3, 0.85), range(0, 12)),    # q4: "no object" wins -> dropped
        (_onehot(1, 0.70), range(0, 12)),    # q5: best score 0.7 <= 0.8 -> dropped
        (_onehot(1, 0.90), range(4, 7)),     # q6: c1 over 4-6, wins only pixel 4 -> dropped
    ]
    probs = torch.tensor([q[0] for q in queries])
    mask_logits = torch.full((len(queries), 1, width), -4.0)
    for k, (_, pixels) in enumerate(queries):
        mask_logits[k, 0, list(pixels)] = 4.0
    mask_logits[6, 0, 4:7] = 6.0  # q6 is very sure: .9 * sigmoid(6) = .898 > .9 * sigmoid(4)
    ids, segments = panoptic_inference(probs, mask_logits, isthing)
    # q0 keeps 4 of its 5 pixels: 4/5 = 0.8 is not below the overlap threshold -> kept, but
    # pixel 4 (won by q6, which is dropped: 1 of 3 pixels) becomes VOID; pixel 11 is nobody's.
    assert ids.tolist() == [[1, 1, 1, 1, 0, 2, 2, 3, 3, 3, 3, 0]]
    assert [(s.id, s.class_index, s.isthing, s.query) for s in segments] == [
        (1, 0, True, 0), (2, 0, True, 1), (3, 2, False, 2)]
    assert ids.dtype == torch.int32

    # a stricter overlap threshold drops q0 as well
    ids, segments = panoptic_inference(probs, mask_logits, isthing, overlap_threshold=0.81)
    assert ids.tolist() == [[0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 0]]
    # a lower object threshold lets q5 (c1, all pixels) in: it wins nowhere -> still dropped,
    # and nothing else changes
    ids, _ = panoptic_inference(probs, mask_logits, isthing, object_mask_threshold=0.5)
    assert ids.tolist() == [[1, 1, 1, 1, 0, 2, 2, 3, 3, 3, 3, 0]]


def test_panoptic_nothing_kept():
    probs = torch.tensor([_onehot(3, 0.9), _onehot(0, 0.5)])
    ids, segments = panoptic_inference(probs, torch.ones(2, 4, 4), torch.tensor([True] * 3))
    assert segments == [] and int(ids.abs().sum()) == 0


def test_upsample_masks():
    x = torch.randn(2, 5, 8, 8)
    up = upsample_masks(x, (32, 16))
    assert up.shape == (2, 5, 32, 16)
    torch.testing.assert_close(up.mean(), x.mean(), atol=0.05, rtol=0)
    assert upsample_masks(x[0], (8, 8)).shape == (5, 8, 8)


# -- files and the evaluators ------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "tiny"
    generate("tiny", 0, root, workers=1)
    return root


@pytest.fixture(scope="module")
def split(data):
    return load_classes_json(CocoLayout(data, "val").classes_json)


def perfect_outputs(layout, split, pad: int = 2):
    """Per image: one query per GT panoptic segment (crowd included), class logit 10 on its
    class, mask logit +10 inside / -10 outside; plus ``pad`` confident no-object queries."""
    doc = json.loads(layout.panoptic_json.read_text())
    index = split.id_to_index()
    c = split.num_classes
    for ann in doc["annotations"]:
        ids = read_panoptic_png(layout.panoptic_pngs / ann["file_name"])
        segs = ann["segments_info"]
        q = len(segs) + pad
        logits = torch.zeros(q, c + 1)
        masks = torch.full((q, *ids.shape), -10.0)
        for k, seg in enumerate(segs):
            logits[k, index[seg["category_id"]]] = 10.0
            masks[k][torch.from_numpy(ids == seg["id"])] = 10.0
        logits[len(segs):, c] = 10.0
        yield {"image_id": ann["image_id"], "query_embeddings": logits, "mask_logits": masks}


def test_perfect_predictions_score_one(data, split, tmp_path):
    layout = CocoLayout(data, "val")
    paths = predict_dataset(perfect_outputs(layout, split), lambda e: e, layout, split,
                            tmp_path / "pred")
    assert paths == {"semantic": tmp_path / "pred" / "semantic",
                     "instance": tmp_path / "pred" / "instances_results.json",
                     "panoptic": tmp_path / "pred" / "panoptic"}
    sem = evaluate_semantic(layout, split, paths["semantic"], "gzsl")
    assert sem.seen["iou"] == 1.0 and sem.unseen["iou"] == 1.0
    pan = evaluate_panoptic(layout, split, paths["panoptic"], "gzsl")
    assert pan.seen["pq"] == 1.0 and pan.unseen["pq"] == 1.0
    assert pan.counts["fp"] == 0 and pan.counts["fn"] == 0
    inst = evaluate_instance(layout, split, paths["instance"], "gzsl")
    assert inst.seen["ap50"] == 1.0 and inst.unseen["ap50"] == 1.0
    assert inst.seen["recall50"] == 1.0 and inst.unseen["recall50"] == 1.0
    # the instance file holds only thing classes, at most 100 per image
    results = json.loads(paths["instance"].read_text())
    things = {c.id for c in split.classes if c.isthing}
    assert {r["category_id"] for r in results} <= things
    per_image = {}
    for r in results:
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
    assert max(per_image.values()) <= 100


def test_a_wrong_class_is_measured_as_wrong(data, split, tmp_path):
    # Swap two seen classes in the classifier: their semantic IoU must drop to 0.
    layout = CocoLayout(data, "val")
    a, b = split.seen[0].index, split.seen[1].index
    perm = torch.arange(split.num_classes + 1)
    perm[a], perm[b] = b, a
    paths = predict_dataset(perfect_outputs(layout, split), lambda e: e[:, perm], layout, split,
                            tmp_path / "pred", tasks=("semantic",))
    assert list(paths) == ["semantic"] and not (tmp_path / "pred" / "panoptic").exists()
    sem = evaluate_semantic(layout, split, paths["semantic"], "gzsl")
    names = split.names
    assert sem.per_class[names[a]]["iou"] == 0.0 and sem.per_class[names[b]]["iou"] == 0.0
    assert sem.per_class[split.seen[2].name]["iou"] == 1.0
    assert sem.unseen["iou"] == 1.0


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return Segmenter(SegmenterConfig(), 25)


def test_seen_only_segmenter_never_predicts_unseen(data, split, tiny_model, tmp_path):
    layout = CocoLayout(data, "val")
    seen_ids = [c.id for c in split.seen]
    assert len(seen_ids) == tiny_model.num_classes
    classifier = segmenter_classifier(tiny_model, seen_ids, split)
    config = InferenceConfig(object_mask_threshold=0.0)  # keep everything the head says
    paths = predict_dataset(tiny_model, classifier, layout, split, tmp_path / "pred",
                            config=config, batch_size=16)
    unseen = split.unseen
    unseen_png = {c.png_label for c in unseen}
    sem_files = sorted(paths["semantic"].glob("*.png"))
    assert len(sem_files) == len(list(layout.semantic_pngs.glob("*.png"))) == 32
    for f in sem_files:
        labels = np.asarray(Image.open(f))
        assert labels.shape == (128, 128)
        assert not set(np.unique(labels).tolist()) & unseen_png
    unseen_ids = {c.id for c in unseen}
    results = json.loads(paths["instance"].read_text())
    assert results and not {r["category_id"] for r in results} & unseen_ids
    pan = json.loads((paths["panoptic"] / "predictions.json").read_text())
    assert len(pan["annotations"]) == 32
    cats = {s["category_id"] for a in pan["annotations"] for s in a["segments_info"]}
    assert cats and not cats & unseen_ids
    # all three files are valid inputs of the evaluators; unseen classes score 0
    for fn, task, metric in ((evaluate_semantic, "semantic", "iou"),
                             (evaluate_panoptic, "panoptic", "pq"),
                             (evaluate_instance, "instance", "ap50")):
        result = fn(layout, split, paths[task], "gzsl")
        assert result.unseen[metric] == 0.0
        assert 0.0 <= result.seen[metric] <= 1.0


def test_segmenter_classifier_columns(split, tiny_model):
    seen_ids = [c.id for c in split.seen]
    classifier = segmenter_classifier(tiny_model, seen_ids, split)
    emb = torch.randn(20, tiny_model.embed_dim)
    out = classifier(emb)
    own = tiny_model.classify(emb)
    assert out.shape == (20, split.num_classes + 1)
    for k, cid in enumerate(seen_ids):
        assert torch.equal(out[:, split.by_id(cid).index], own[:, k])
    assert torch.equal(out[:, -1], own[:, -1])
    assert torch.isinf(out[:, [c.index for c in split.unseen]]).all()
    with pytest.raises(ConfigError):
        segmenter_classifier(tiny_model, seen_ids[:-1], split)
    with pytest.raises(ConfigError):
        segmenter_classifier(tiny_model, seen_ids[:-1] + [99999], split)


def test_failed_run_leaves_previous_outputs(data, split, tmp_path):
    layout = CocoLayout(data, "val")
    out = tmp_path / "pred"
    predict_dataset(perfect_outputs(layout, split), lambda e: e, layout, split, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = []

    def failing(e):
        calls.append(1)
        if len(calls) > 5:
            raise RuntimeError("classifier broke")
        return torch.zeros_like(e)

    with pytest.raises(RuntimeError, match="classifier broke"):
        predict_dataset(perfect_outputs(layout, split), failing, layout, split, out)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]


def test_bad_inputs_are_clear_errors(data, split, tmp_path):
    layout = CocoLayout(data, "val")
    with pytest.raises(ConfigError, match=r"\[Q, 33\]"):
        predict_dataset(perfect_outputs(layout, split), lambda e: e[:, :10], layout, split,
                        tmp_path / "a")
    bogus = [{"image_id": 5, "query_embeddings": torch.zeros(3, 33),
              "mask_logits": torch.zeros(3, 32, 32)}]
    with pytest.raises(DataError, match="image id 5"):
        predict_dataset(bogus, lambda e: e, layout, split, tmp_path / "b")
    with pytest.raises(DataError, match="mask_logits"):
        predict_dataset([{"image_id": 1, "query_embeddings": torch.zeros(3, 33)}],
                        lambda e: e, layout, split, tmp_path / "c")
    with pytest.raises(ConfigError, match="tasks"):
        predict_dataset([], lambda e: e, layout, split, tmp_path / "d", tasks=("depth",))
    with pytest.raises(ConfigError, match="overlap_threshold"):
        predict_dataset([], lambda e: e, layout, split, tmp_path / "e",
                        config=InferenceConfig(overlap_threshold=2.0))
    assert not any((tmp_path / n).exists() for n in "abcde")
