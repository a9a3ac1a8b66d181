"""Cap2Seg (methods/cap2seg): the engine's losses, the local branch and the prior fusion, the
ranking loss against hand-computed cases and against the pixel-level formula it replaces, the
synthetic caption variant (the default output unchanged), the priors stage, and a run through
the platform."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from zeroseg.methods.cap2seg import CalibratedHead, select_stripes
from zeroseg.methods.cap2seg.engine import (
    LocalBranch,
    consistency_loss,
    fuse,
    grid_positions,
    grid_to_stripes,
    local_loss,
    occurrence_loss,
    stripe_loss,
)
from zeroseg.methods.cap2seg.priors import (
    average_precision,
    read_images,
    stripe_cosine,
    stripe_histograms,
)
from zeroseg.methods.cap2seg.ranking import (
    band_weights,
    image_scores,
    query_weights,
    ranking_loss,
)
from zeroseg.methods.cap2seg.text import WordVocab, exact_match
from zeroseg.methods.registry import get_method
from zeroseg.platform.errors import ConfigError

# sha256 of the tiny default benchmark's annotation files (seed 0), generated before the caption
# variant existed: the default output must stay byte-identical.
DEFAULT_TINY_ANNOTATIONS = {
    "captions_train.json": "8b38c4e4c305b97a97c949ea6ba04864e39990ac62cfba87e74c7158f14dcbbc",
    "captions_val.json": "8359204a6fd9e298f62353addefd996e47b27474f38cc2d2559f49558b344628",
    "classes.json": "5320980db62a602ddb824d5a19cdfa954a309352422a7a5495e369c3f3fa8963",
    "instances_train.json": "5b8808056e4a47e287ddd8dd563702dcbb0618994d7b1cfc69519a82827fc918",
    "instances_val.json": "11322a9652128ced544b384070f53de3baf71a8c90f7f13e0064190c5fa5085b",
    "panoptic_train.json": "f14a67b91379eb6885bacc80a2660ac0c8868179c7e57cf1ae2844efa9607850",
    "panoptic_val.json": "1cd8931f698b2c2cc949002e21d00bfcaa4ca6c9f46c294dd6f5fb9306fb0a2a",
}


# -- text -----------------------------------------------------------------------------------------
def test_pairs_are_cls_caption_sep_class_sep_and_truncated_to_max_length():
    vocab = WordVocab.build(["two red stars on a lawn", "red star"])
    ids, types = vocab.pair("Two red stars on a lawn", "red star", 24)
    tok = [vocab.tokens[i] for i in ids]
    assert tok[:10] == ["[CLS]", "two", "red", "stars", "on", "a", "lawn", "[SEP]", "red", "star"]
    assert tok[10] == "[SEP]" and set(tok[11:]) == {"[PAD]"} and len(ids) == 24
    assert types[:8] == [0] * 8 and types[8:11] == [1, 1, 1]
    long_ids, _ = vocab.pair(" ".join(["lawn"] * 40), "red star", 24)
    assert len(long_ids) == 24 and [vocab.tokens[i] for i in long_ids[-3:]] == [
        "red", "star", "[SEP]"]  # the caption is cut, the class name kept
    assert vocab.ids("a purple thing") == [vocab.index["a"], 1, 1]  # unknown words -> [UNK]


def test_exact_match_takes_plurals_and_whole_names_only():
    assert exact_match("Two red stars under a sky.", "red star")
    assert exact_match("A red star.", "red star")
    assert not exact_match("A red circle and a star.", "red star")
    assert not exact_match("Something fiery and spiky.", "red star")
    assert exact_match("under a striped sky", "striped sky")


# -- engine losses --------------------------------------------------------------------------------
def test_occurrence_loss_is_bce_against_present_and_absent():
    logits = torch.tensor([0.0, 2.0, -1.0])
    present = torch.tensor([True, False, False])
    expected = (math.log(2) + math.log(1 + math.e ** 2) + math.log(1 + math.e ** -1)) / 3
    assert float(occurrence_loss(logits, present)) == pytest.approx(expected, rel=1e-6)


def test_stripe_loss_is_cross_entropy_to_the_gt_histogram_and_minimal_there():
    target = torch.tensor([[0.2, 0.5, 0.3]])
    at_target = torch.log(target).requires_grad_(True)
    loss = stripe_loss(at_target, target)
    entropy = -(target * torch.log(target)).sum()
    assert float(loss.detach()) == pytest.approx(float(entropy), rel=1e-6)
    loss.backward()
    assert at_target.grad.abs().max() < 1e-6  # softmax(logits) = q: the minimum
    assert float(stripe_loss(torch.zeros(1, 3), target)) > float(entropy)
    # A one-hot histogram: -log softmax of that stripe.
    one_hot = torch.tensor([[0.0, 1.0, 0.0]])
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    assert float(stripe_loss(logits, one_hot)) == pytest.approx(
        float(-torch.log_softmax(logits, 1)[0, 1]), rel=1e-6)


def test_gt_stripe_histograms_count_rows_per_stripe():
    label = np.full((6, 4), -1, dtype=np.int16)
    label[0, :] = 0  # class 0: 4 pixels in stripe 0
    label[5, :2] = 0  # and 2 in stripe 2
    label[2:4, :] = 1  # class 1: 8 pixels in stripe 1
    hist = stripe_histograms(label, 3, 3)
    np.testing.assert_allclose(hist[0], [4 / 6, 0, 2 / 6], rtol=1e-6)
    np.testing.assert_allclose(hist[1], [0, 1, 0])
    assert hist[2].sum() == 0


# -- local branch and fusion ----------------------------------------------------------------------
def test_local_branch_averages_sigmoids_over_sources():
    torch.manual_seed(0)
    branch = LocalBranch(embed_dim=3, hidden=8, layers=1)
    src_pos, src_words = torch.rand(2, 4, 2), torch.randn(2, 4, 3)
    tgt_pos, target = torch.rand(2, 5, 2), torch.randn(2, 3)
    out = branch(src_pos, src_words, tgt_pos, target)
    assert out.shape == (2, 5)
    b, t = 1, 3
    manual = torch.stack([torch.sigmoid(branch.mlp(torch.cat(
        [src_pos[b, s], tgt_pos[b, t], src_words[b, s], target[b]]))) for s in range(4)]).mean()
    assert float(out[b, t]) == pytest.approx(float(manual), rel=1e-5)
    hit = torch.tensor([[True] * 5, [False] * 5])
    bce = torch.nn.functional.binary_cross_entropy(out, hit.float())
    assert float(local_loss(out, hit)) == pytest.approx(float(bce), rel=1e-5)


def test_grid_read_off_consistency_and_fusion():
    pos = grid_positions(3)
    assert pos.shape == (9, 2)
    np.testing.assert_allclose(pos[:3, 1].numpy(), [1 / 6] * 3, rtol=1e-6)  # row 0 = stripe 0
    np.testing.assert_allclose(pos[[0, 3, 6], 0].numpy(), [1 / 6] * 3, rtol=1e-6)
    cells = torch.tensor([[0.9, 0.9, 0.9, 0.1, 0.1, 0.1, 0.0, 0.0, 0.0]])
    stripes = grid_to_stripes(cells, 3)
    np.testing.assert_allclose(stripes.numpy(), torch.softmax(torch.tensor([[2.7, 0.3, 0.0]]),
                                                              1).numpy(), rtol=1e-6)  # eq. 10
    np.testing.assert_allclose(grid_to_stripes(cells, 3, "mean").numpy(), [[0.9, 0.1, 0.0]],
                               rtol=1e-6)  # the authors' code: each row's mean
    a, b = torch.tensor([[0.5, 0.3, 0.2]]), torch.tensor([[0.2, 0.3, 0.5]])
    assert float(consistency_loss(a, b)) == pytest.approx(math.sqrt(0.18), rel=1e-5)  # eq. 11
    np.testing.assert_allclose(fuse(a, b).numpy(), [[0.35, 0.3, 0.35]], rtol=1e-6)


def test_select_stripes_none_global_local_fused():
    priors = {"occurrence": np.zeros((2, 4), np.float32),
              "global": np.random.default_rng(0).dirichlet(np.ones(3), (2, 4)).astype(np.float32),
              "local": np.random.default_rng(1).dirichlet(np.ones(3), (2, 4)).astype(np.float32)}
    np.testing.assert_allclose(select_stripes(priors, "none", 3), 1 / 3)
    assert select_stripes(priors, "global", 3) is priors["global"]
    assert select_stripes(priors, "local", 3) is priors["local"]
    np.testing.assert_allclose(select_stripes(priors, "fused", 3),
                               (priors["global"] + priors["local"]) / 2)


# -- ranking loss ---------------------------------------------------------------------------------
def test_ranking_loss_matches_a_hand_computed_case():
    # B = 4: one shift (i -> i + 1 mod 4). Occurrence differences 0.8, -0.4, 0.05, -0.45 with
    # threshold 0.2: labels +1, -1, 0, -1. Margin 1: max(0, -y (x1 - x2) + 1) =
    # 1.5, 0, 1 (label 0: the constant margin), 0.5.
    scores = torch.tensor([[0.5], [1.0], [2.5], [0.0]], requires_grad=True)
    occurrence = torch.tensor([[0.9], [0.1], [0.5], [0.45]])
    loss = ranking_loss(scores, occurrence, threshold=0.2, margin=1.0, reduction="all")
    assert float(loss) == pytest.approx(3.0 / 4)
    assert float(ranking_loss(scores, occurrence, threshold=0.2, margin=1.0,
                              reduction="valid")) == pytest.approx(2.0 / 3)
    loss.backward()
    # d/dx: entry 0 pushes x0 up, x1 down; entry 3 (y = -1: x3 below x0) pushes x3 down, x0 up
    np.testing.assert_allclose(scores.grad.numpy().ravel(), [-0.5, 0.25, 0.0, 0.25])
    # B = 5: shifts 1 and 2 (the code's range(1, int((b + 1) / 2)))
    five = ranking_loss(torch.arange(5.0)[:, None], torch.tensor([[0.0]] * 5), margin=1.0)
    assert float(five) == pytest.approx(2.0)  # every label 0: margin per shift


def _pixel_score(masks, probs, unlabelled, stripes, normalisation):
    """The authors' pixel-level formula on one image: masks [Q, H, W] (sigmoid), probs [Q]
    (P_q(u)), unlabelled [H, W] bool, stripes [K]."""
    h = masks.shape[1]
    k = len(stripes)
    z = (probs[:, None, None] * masks).sum(0)  # z(p, u)
    loc = np.asarray(stripes)[np.arange(h) * k // h][:, None] * np.ones(masks.shape[1:])
    y = unlabelled
    if normalisation == "code":
        loc = loc / ((loc * y).sum() / y.sum())
        return float((loc * z * y).sum() / y.sum())
    total = 0.0
    stripe = np.arange(h) * k // h
    for s in range(k):
        rows = stripe == s
        if y[rows].any():  # a stripe without unlabelled pixels adds nothing
            total += stripes[s] * (z[rows] * y[rows]).sum() / y[rows].sum()
    return total


@pytest.mark.parametrize("normalisation", ["code", "paper"])
def test_query_weights_reproduce_the_pixel_level_weighted_mean(normalisation):
    """The cached per-query band masses (the extractor's stripe_band_rows) and the stripe
    priors give exactly the pixel-level stripe-weighted mean over unlabelled pixels."""
    from zeroseg.platform.features.extract import stripe_band_rows

    rng = np.random.default_rng(0)
    q, h, w, k = 3, 6, 4, 3
    logits = rng.normal(size=(1, q, h, w)).astype(np.float32)
    gt = np.zeros((2, h, w), dtype=bool)
    gt[0, :2, :] = True  # a seen segment at the top
    gt[1, 3:, :2] = True  # and one bottom left; the rest is unlabelled
    rows = stripe_band_rows(torch.as_tensor(logits), [torch.as_tensor(gt)], 6)
    assert rows["bands"].shape == (q, 6) and rows["band_unlabelled"].shape == (q, 6)
    stripes = np.array([[0.2, 0.5, 0.3]])
    weights = query_weights(rows["bands"], rows["band_unlabelled"][0], stripes, normalisation)
    probs = rng.random(q).astype(np.float32)
    got = float(image_scores(torch.as_tensor(probs[:, None]), torch.as_tensor(weights),
                             torch.zeros(q, dtype=torch.int64), 1)[0, 0])
    masks = 1 / (1 + np.exp(-logits[0]))
    want = _pixel_score(masks, probs, ~gt.any(0), stripes[0], normalisation)
    assert got == pytest.approx(want, rel=1e-4)
    # Uniform priors: both normalisations are the plain mean over the unlabelled pixels (L_R).
    uniform = query_weights(rows["bands"], rows["band_unlabelled"][0], np.full((1, k), 1 / k),
                            "code")
    plain = float((probs[:, None, None] * masks).sum(0)[~gt.any(0)].mean())
    assert float((probs[:, None] * uniform).sum()) == pytest.approx(plain, rel=1e-4)


def test_band_weights_need_bands_that_split_into_stripes():
    with pytest.raises(ValueError, match="do not split"):
        band_weights(np.full((1, 5), 0.2), np.ones(6) / 6, "code")


# -- calibration, config --------------------------------------------------------------------------
def test_calibration_subtracts_gamma_from_seen_probabilities():
    head = CalibratedHead(torch.nn.Identity(), torch.tensor([True, False, False]), 0.4)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.3, 0.3, 0.4]]))
    p = head(logits).exp()
    np.testing.assert_allclose(p.numpy(), [[0.1, 0.3, 0.2], [1e-8, 0.3, 0.4]], rtol=1e-5)


def test_variants_fix_their_spatial_prior_and_share_one_stage_key():
    from zeroseg.methods.cap2seg import stage_params

    ce, glob, full = (get_method(n) for n in ("cap2seg-ce", "cap2seg-global", "cap2seg"))
    assert ce.build_config({}).spatial_prior == "none"
    assert glob.build_config({}).spatial_prior == "global"
    assert full.build_config({}).spatial_prior == "fused"
    with pytest.raises(ConfigError, match="fixed by method 'cap2seg-ce'"):
        ce.build_config({"spatial_prior": "fused"})
    keys = {json.dumps(stage_params(s.build_config({"rank_weight": 0.01})), sort_keys=True)
            for s in (ce, glob, full)}
    assert len(keys) == 1  # the engine is trained once for the whole ladder
    assert stage_params(full.build_config({"stripes": 5})) != stage_params(full.build_config({}))
    with pytest.raises(ConfigError, match="rank_images"):
        full.build_config({"rank_images": 2})


# -- occurrence / stripe diagnostics --------------------------------------------------------------
def test_average_precision_and_stripe_cosine():
    assert average_precision(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0])) == \
        pytest.approx((1 + 2 / 3) / 2)
    assert average_precision(np.array([0.1, 0.2]), np.array([0, 0])) is None
    np.testing.assert_allclose(stripe_cosine(np.array([[1.0, 0, 0], [0.5, 0.5, 0]]),
                                             np.array([[1.0, 0, 0], [0, 0, 1.0]])), [1.0, 0.0])


# -- the synthetic caption variant ----------------------------------------------------------------
@pytest.fixture(scope="module")
def variant_data(tmp_path_factory):
    from zeroseg.platform.data.synthetic.generate import generate

    base = tmp_path_factory.mktemp("cap2seg-data")
    generate("tiny", 0, base / "default", workers=1)
    generate("tiny", 0, base / "cap2seg", workers=1, variant="cap2seg")
    return base


def test_default_synthetic_annotations_are_byte_identical(variant_data):
    got = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
           for p in sorted((variant_data / "default" / "annotations").iterdir())}
    assert got == DEFAULT_TINY_ANNOTATIONS


def test_caption_variant_has_positions_priors_and_seen_only_training_histograms(variant_data):
    from zeroseg.platform.data.synthetic.classes_file import load_classes_json

    root = variant_data / "cap2seg"
    split = load_classes_json(root / "annotations" / "classes.json")
    assert split.name == "synthetic/cap2seg" and split.protocol == "ignore-pixels"
    captions = [a["caption"] for a in json.loads(
        (root / "annotations" / "captions_train.json").read_text())["annotations"]]
    positional = ("at the top", "high up", "in the middle", "halfway down", "near the bottom",
                  "low down", "above the")
    assert sum(any(p in c for p in positional) for c in captions) > len(captions) // 3
    unseen_ids = {str(c.id) for c in split.classes if c.unseen}
    train = json.loads((root / "annotations" / "stripes_train.json").read_text())
    assert train["bands"] == 15 and train["seen_only"] is True
    assert not any(unseen_ids & set(im["classes"]) for im in train["images"])
    val = json.loads((root / "annotations" / "stripes_val.json").read_text())
    assert any(unseen_ids & set(im["classes"]) for im in val["images"])
    # Stars are placed high, triangles low: their mean histogram centres differ.
    centre = {"star": [], "triangle": []}
    for im in train["images"] + val["images"]:
        for cid, hist in im["classes"].items():
            shape = split.by_id(int(cid)).attributes.get("shape")
            if shape in centre:
                centre[shape].append(float(np.dot(hist, np.arange(15))))
    assert np.mean(centre["star"]) < 6 < np.mean(centre["triangle"])
    # The engine's training reader never sees an unseen class's pixels.
    data = read_images(root, "train", split, 3, keep_unseen=False)
    assert not data.present[:, [c.index for c in split.classes if c.unseen]].any()
    assert (root / "annotations" / "classes.json").read_text() != (
        variant_data / "default" / "annotations" / "classes.json").read_text()


# -- the priors stage and a run through the platform ----------------------------------------------
@pytest.mark.slow
def test_priors_stage_writes_priors_diagnostics_and_the_audit(variant_data, tmp_path):
    from zeroseg.methods.cap2seg.priors import build_priors, load_priors
    from zeroseg.methods.registry import StageInputs
    from zeroseg.platform.data.synthetic.classes_file import load_classes_json

    root = variant_data / "cap2seg"
    split = load_classes_json(root / "annotations" / "classes.json")
    config = get_method("cap2seg").build_config({"engine": {"epochs": 1, "max_images": 24}})
    embeddings = np.random.default_rng(0).normal(size=(split.num_classes, 8)).astype(np.float32)
    build_priors(StageInputs(config, split, embeddings, root, "train", "val"), tmp_path)
    train = load_priors(tmp_path, "train")
    n = 64  # every training image gets priors; the engine trained on the first 24
    assert train["occurrence"].shape == (n, split.num_classes)
    assert train["global"].shape == train["local"].shape == (n, split.num_classes, 3)
    np.testing.assert_allclose(train["global"].sum(-1), 1, rtol=1e-5)
    np.testing.assert_allclose(train["local"].sum(-1), 1, rtol=1e-5)
    diag = json.loads((tmp_path / "diagnostics.json").read_text())
    assert {"hard", "medium", "easy", "all"} <= set(diag["groups"])
    assert all(0 <= g["map_exact"] <= 100 for g in diag["groups"].values()
               if g["map_exact"] is not None)
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert audit["training_captions_may_name_unseen_classes"] is True
    assert audit["engine_training_images"] == 24 and audit["training_images_read"] == n
    assert set(audit["unseen_names_in_training_captions"]) == {
        c.name for c in split.classes if c.unseen}
    from zeroseg.methods.common import load_state

    state, meta = load_state(tmp_path / "engine.pt")
    assert meta["kind"] == "cap2seg-engine" and any(k.startswith("global.bert.") for k in state)


def _platform_config(root, work) -> dict:
    return {
        "name": "cap2seg-smoke", "methods": ["projection", "cap2seg"],
        "data": {"root": str(root), "synthetic": {"size": "tiny", "seed": 0,
                                                  "variant": "cap2seg"}},
        "embedding": {"provider": "attributes", "options": {"dim": 32}},
        "segmenter": {"model": {"size": "tiny", "train_num_points": 1024},
                      "optim": {"lr": 0.001, "grad_clip": 1.0},
                      "train": {"steps": 10, "batch_size": 4, "checkpoint_every": 10},
                      "distributed": {"workers": 0, "zero_stage": 0}},
        "features": {"batch_size": 16, "shard_size": 32, "stripe_bands": 15},
        "evaluation": {"protocols": ["validation", "test"], "settings": ["gzsl", "zsl"]},
        "params": {"cap2seg": {"steps": 30, "log_every": 10,
                               "engine": {"epochs": 1, "max_images": 32}}},
        "work_dir": str(work),
    }


@pytest.mark.slow
def test_cap2seg_runs_through_the_platform_and_stores_its_diagnostics(variant_data, tmp_path):
    import shutil

    from zeroseg.platform.pipeline import Pipeline, pipeline_config_from_dict
    from zeroseg.platform.pipeline.runner import run_one
    from zeroseg.platform.store import open_store

    root = tmp_path / "data"
    shutil.copytree(variant_data / "cap2seg", root)
    pipeline = Pipeline(pipeline_config_from_dict(_platform_config(root, tmp_path / "work")))
    outcome = run_one(pipeline, "cap2seg", 0)
    assert outcome.status == "finished", outcome.error
    with open_store(pipeline.store_url) as store:
        run = store.run(outcome.run_id)
    artifacts = run["artifacts"]
    assert set(artifacts["caption_priors"]) == {"val", "test"}
    assert {"hard", "medium", "easy"} <= set(artifacts["caption_priors"]["test"]["groups"])
    assert set(artifacts["class_groups"]) == {"hard", "medium", "easy"}
    audit = run["leakage_audit"]
    assert audit["protocol"] == "ignore-pixels" and audit["training_captions_read"] is True
    assert audit["protocols"]["test"]["training_captions"][
        "training_captions_may_name_unseen_classes"] is True
    ranks = [c for c in run["curves"] if c["name"] == "classifier/rank"]
    assert ranks and all(c["value"] is not None and c["value"] >= 0 for c in ranks)
    from zeroseg.dashboards.data.run_detail import caption_priors_tables, group_miou_table

    split, by_group, by_class = caption_priors_tables(artifacts)
    assert split == "test" and list(by_group["Group"])[:3] == ["hard", "medium", "easy"]
    assert len(by_class) == sum(1 for c in pipeline.split.classes if c.unseen)
    groups = group_miou_table(run["metrics"], artifacts)
    assert groups is not None and {"hard", "medium", "easy"} <= set(groups.columns)
    # Without stripe bands in the features the method says what to set.
    doc = _platform_config(root, tmp_path / "work")
    doc["features"].pop("stripe_bands")
    other = pipeline.derive(pipeline_config_from_dict(doc))
    from zeroseg.platform.errors import ZerosegError

    with pytest.raises(ZerosegError, match="features.stripe_bands"):
        run_one(other, "cap2seg", 0, record=False)


def test_engine_fine_tunes_a_local_bert_checkpoint_with_its_tokenizer(variant_data, tmp_path):
    """The COCO path: ``engine.checkpoint`` = a local pretrained BERT folder (model + WordPiece
    tokenizer), loaded without the network; here one saved from a small config."""
    from zeroseg.methods.cap2seg.engine import bert_config
    from zeroseg.methods.cap2seg.priors import train_engine
    from zeroseg.methods.cap2seg.text import words
    from zeroseg.platform.data.synthetic.classes_file import load_classes_json

    root = variant_data / "cap2seg"
    split = load_classes_json(root / "annotations" / "classes.json")
    data = read_images(root, "train", split, 3, keep_unseen=False, max_images=8)
    corpus = sorted({w for caps in data.captions for t in caps for w in words(t)}
                    | {w for c in split.classes for w in words(c.name)})
    from zeroseg.platform.compat import ensure_torchvision

    ensure_torchvision()  # transformers imports torchvision
    from transformers import BertModel, BertTokenizer

    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *corpus])})
    config = bert_config(len(tokenizer), hidden_size=16, layers=1, heads=2,
                         intermediate_size=32, max_length=24)
    BertModel(config).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    method_config = get_method("cap2seg").build_config(
        {"engine": {"checkpoint": str(tmp_path / "bert"), "epochs": 1, "lr": 3.0e-5}})
    engine = train_engine(data, split, np.eye(split.num_classes, dtype=np.float32),
                          method_config, 0)
    assert engine.global_branch.bert.config.hidden_size == 16  # the checkpoint's, not ours
    ids, types, _ = engine.vocab.encode([data.captions[0][0]], ["red star"], 24)
    tokens = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    first_sep = tokens.index("[SEP]")
    assert tokens[0] == "[CLS]" and len(tokens) == 24
    assert tokens[first_sep + 1:first_sep + 4] == ["red", "star", "[SEP]"]
    assert types[0][first_sep + 1] == 1 and types[0][first_sep] == 0
    assert engine.history


@pytest.mark.slow
@pytest.mark.ray
def test_cap2seg_is_swept_on_the_validation_view_and_reproduced(variant_data, tmp_path):
    """Two trials through Ray Tune (the objective on the Cap2Seg split's validation view: its
    held-out seen classes play unseen), then the best one reproduced exactly."""
    import shutil

    import yaml

    from zeroseg.platform.store import open_store
    from zeroseg.platform.tuning.reproduce import reproduce
    from zeroseg.platform.tuning.sweep import prepare_job, run_sweep

    root = tmp_path / "data"
    shutil.copytree(variant_data / "cap2seg", root)
    doc = _platform_config(root, tmp_path / "work")
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(doc))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "method": "cap2seg", "config": str(config), "epochs": 2,
        "objective": {"task": "semantic", "metric": "iou", "setting": "gzsl"},
        "searcher": {"type": "tpe", "seed": 0, "n_startup_trials": 2},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "knobs": {"rank_weight": {"type": "loguniform", "low": 0.001, "high": 0.1},
                  "spatial_prior": {"type": "choice", "values": ["global", "fused"]}}}))
    store = tmp_path / "sweep.db"
    result = run_sweep(prepare_job(space, "cap2seg-sweep", store=str(store)), trials=2,
                       concurrency=1)
    assert result.trials == 2
    with open_store(store) as opened:
        trials = [opened.run(r["id"]) for r in opened.runs(superseded=True)
                  if r["sweep"] == "cap2seg-sweep"]
    assert len(trials) == 2 and {t["method"] for t in trials} == {"cap2seg"}
    for trial in trials:
        assert "val" in trial["artifacts"]["caption_priors"]
    reps = reproduce(str(store), "cap2seg-sweep", top=1, seeds=1)
    assert len(reps) == 1 and reps[0].exact is True, reps[0].mismatches


def test_dashboard_tables_of_caption_priors_and_group_miou():
    from zeroseg.dashboards.data.run_detail import caption_priors_tables, group_miou_table

    assert caption_priors_tables({}) is None and caption_priors_tables(None) is None
    diag = {"groups": {"all": {"map_exact": 40.0, "map_entailment": 55.0},
                       "easy": {"map_exact": 70.0, "map_entailment": 80.0},
                       "hard": {"map_exact": 5.0, "map_entailment": 20.0}},
            "per_class": [{"class": "red star", "group": "hard", "images": 3,
                           "ap_exact": 0.05, "ap_entailment": 0.2}]}
    split, by_group, by_class = caption_priors_tables({"caption_priors": {"val": diag}})
    assert split == "val" and list(by_group["Group"]) == ["hard", "easy", "all"]
    assert by_group.loc[0, "Occurrence mAP, entailment"] == 20.0
    assert by_class.loc[0, "Class"] == "red star"
    metrics = [{"subset": "class", "task": "semantic", "metric": "iou", "setting": "gzsl",
                "eval_split": "test", "class_name": name, "value": value}
               for name, value in (("red star", 0.1), ("blue circle", 0.3), ("wavy sand", 0.5))]
    groups = group_miou_table(metrics, {"class_groups": {"hard": ["red star", "blue circle"],
                                                         "easy": ["wavy sand"]}})
    assert groups.loc[0, "hard"] == pytest.approx(20.0) and groups.loc[0, "easy"] == \
        pytest.approx(50.0)
    assert group_miou_table(metrics, {}) is None


def test_stripe_bands_enter_the_feature_key_only_when_on():
    from zeroseg.platform.features.config import ExtractConfig

    base = ExtractConfig(checkpoint=Path("ckpt"), data=Path("data"), kind="train_all")
    assert "stripe_bands" not in base.key_config("test")  # every existing key unchanged
    on = ExtractConfig(checkpoint=Path("ckpt"), data=Path("data"), kind="train_all",
                       stripe_bands=15)
    assert on.key_config("test") == {**base.key_config("test"), "stripe_bands": 15}
    with pytest.raises(ConfigError, match="train_all only"):
        ExtractConfig(checkpoint=Path("ckpt"), data=Path("data"), kind="eval",
                      stripe_bands=15).validate()
