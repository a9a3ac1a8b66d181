"""ZSI (methods/zsi): each component against a hand-computed case, the pre-training checks, the
registered ablation rows, and (slow) a 2-step run of the whole detector through the platform.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from zeroseg.methods.registry import get_method
from zeroseg.methods.zsi import ABLATIONS
from zeroseg.methods.zsi.config import ZSIConfig
from zeroseg.methods.zsi.model import (
    BackgroundAwareRPN,
    BackgroundAwareRPNHead,
    SemanticMaskHead,
    ZeroShotBoxPredictor,
    ZSIDetector,
    class_scores,
    unseen_mask_logits,
)
from zeroseg.methods.zsi.roi_pool import roi_align_grid
from zeroseg.methods.zsi.train import anchor_match, check, lr_factor
from zeroseg.platform.errors import ConfigError
from zeroseg.platform.training.model import ModelContext, ModelData

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


def _small(**kwargs) -> ZSIConfig:
    """A detector small enough for a test step in well under a second."""
    config = ZSIConfig(background="zeros", fpn_channels=16, representation_size=32,
                       mask_channels=16, min_size=64, max_size=64, **kwargs)
    config.validate()
    return config


def _detector(config: ZSIConfig, dim: int = 8, seen: int = 5, unseen: int = 3,
              seed: int = 0) -> ZSIDetector:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = ZSIDetector(config, rng.normal(size=(seen, dim)), rng.normal(size=(unseen, dim)),
                        rng.normal(size=dim))
    model.train()
    return model


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    torch.manual_seed(1)
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 10:30, 12:40] = 1
    masks[1, 40:60, 30:50] = 1
    target = {"boxes": torch.tensor([[12.0, 10, 40, 30], [30, 40, 50, 60]]),
              "labels": torch.tensor([2, 4]), "masks": masks}
    return [torch.rand(3, 64, 64), torch.rand(3, 64, 64)], [target, dict(target)]


# -- BA-RPN ----------------------------------------------------------------------------------------
def test_ba_rpn_logits_are_foreground_minus_background_rows_times_t_of_f():
    torch.manual_seed(0)
    background = torch.tensor([1.0, -2.0, 0.5])
    head = BackgroundAwareRPNHead(in_channels=4, word_dim=3, background=background)
    x = torch.randn(2, 4, 5, 6)
    pair_logits, _ = head([x])
    t_of_f = head.to_word(F.relu(head.conv(x)))  # T(f): [2, 3, 5, 6]
    w = head.fg_bg.weight[:, :, 0, 0].detach()  # W_bf: [2A, 3]
    for a in range(3):
        expected = torch.einsum("d,bdhw->bhw", w[2 * a + 1] - w[2 * a], t_of_f)
        got = pair_logits[0][:, 2 * a + 1] - pair_logits[0][:, 2 * a]
        torch.testing.assert_close(got, expected)
    # the background rows start as the background vector, v_b is their mean
    torch.testing.assert_close(w[0::2], background.expand(3, 3))
    with torch.no_grad():
        head.fg_bg.weight[2, :, 0, 0] = torch.tensor([4.0, 4.0, 4.0])
    torch.testing.assert_close(head.background_vector().detach(),
                               (2 * background + torch.tensor([4.0, 4, 4])) / 3)


def test_ba_rpn_loss_is_two_way_softmax_cross_entropy():
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    head = BackgroundAwareRPNHead(4, 3, torch.zeros(3))
    rpn = BackgroundAwareRPN(AnchorGenerator(((16,),), ((0.5, 1.0, 2.0),)), head, 0.7, 0.3,
                             10_000, 1.0, {"training": 100, "testing": 100},
                             {"training": 50, "testing": 50}, 0.7)
    pairs = torch.tensor([[0.2, 1.5], [2.0, -1.0], [0.0, 0.0], [3.0, 1.0]])
    deltas = torch.tensor([[0.1, 0.0, 0.0, 0.0], [1.0, 1, 1, 1], [0, 0, 0, 0.0], [0, 0, 0, 0.0]])
    labels = [torch.tensor([1.0, 0.0, -1.0, 1.0])]  # -1: ignored
    targets = [torch.zeros(4, 4)]
    loss_cls, loss_box = rpn.softmax_loss(pairs, deltas, labels, targets)
    # by hand: -log softmax of the labelled column, mean over the 3 sampled anchors
    p = np.exp([[0.2, 1.5], [2.0, -1.0], [3.0, 1.0]])
    p /= p.sum(1, keepdims=True)
    expected = -np.mean(np.log([p[0, 1], p[1, 0], p[2, 1]]))
    assert float(loss_cls) == pytest.approx(expected, rel=1e-6)
    # SmoothL1 (beta 1/9) over the positives, / 3 sampled: only anchor 0's 0.1 differs, and
    # |0.1| < 1/9 is in the quadratic part, 0.5 x^2 / beta
    assert float(loss_box) == pytest.approx(0.5 * 0.1 ** 2 * 9 / 3, rel=1e-5)


# -- the synchronised background -------------------------------------------------------------------
def test_sync_bg_writes_v_b_into_column_0_of_the_detector_and_the_mask_head():
    model = _detector(_small(sync_bg_det=True, sync_bg_mask=True))
    initial = model.roi_heads.box_predictor.words.vectors[:, 0].clone()
    with torch.no_grad():  # move v_b away from its initial value
        model.rpn.head.fg_bg.weight[0::2] += 0.3
    model(*_batch())
    v_b = model.rpn.head.background_vector().detach()
    assert not torch.allclose(v_b, initial)
    torch.testing.assert_close(model.roi_heads.box_predictor.words.vectors[:, 0], v_b)
    torch.testing.assert_close(model.roi_heads.mask_predictor.words.vectors[:, 0], v_b)
    # the seen columns never change
    assert torch.equal(model.roi_heads.box_predictor.words.vectors[:, 1:],
                       model.roi_heads.mask_predictor.words.vectors[:, 1:])


def test_sync_bg_in_the_detector_only_leaves_the_mask_heads_background():
    model = _detector(_small(sync_bg_det=True, sync_bg_mask=False))
    before = model.roi_heads.mask_predictor.words.vectors[:, 0].clone()
    with torch.no_grad():
        model.rpn.head.fg_bg.weight[0::2] += 0.3
    model(*_batch())
    v_b = model.rpn.head.background_vector().detach()
    torch.testing.assert_close(model.roi_heads.box_predictor.words.vectors[:, 0], v_b)
    assert torch.equal(model.roi_heads.mask_predictor.words.vectors[:, 0], before)


@pytest.mark.parametrize("gradient", ["paper", "code"])
def test_sync_bg_gradient_reaches_v_b_in_the_paper_only(gradient):
    model = _detector(_small(sync_bg_gradient=gradient))
    losses = model(*_batch())
    grad = torch.autograd.grad(losses["loss_classifier"] + losses["loss_mask"],
                               model.rpn.head.fg_bg.weight, allow_unused=True)[0]
    background_grad = 0.0 if grad is None else float(grad[0::2].abs().sum())
    foreground_grad = 0.0 if grad is None else float(grad[1::2].abs().sum())
    assert foreground_grad == 0.0  # the heads read the background rows only
    assert (background_grad > 0) == (gradient == "paper")


# -- the decoders' L_R -----------------------------------------------------------------------------
def test_detector_and_mask_decoders_reconstruction_losses():
    model = _detector(_small(det_reconstruction_weight=0.5, smh_reconstruction_weight=0.25))
    seen: dict[str, torch.Tensor] = {}
    heads = model.roi_heads

    def keep(name):
        return lambda module, args, out: seen.__setitem__(name, out.detach())

    heads.box_head.register_forward_hook(keep("x"))
    heads.box_predictor.decoder.register_forward_hook(keep("t_d"))
    heads.mask_predictor.deconv.register_forward_hook(keep("deconv"))
    heads.mask_predictor.decoder.register_forward_hook(keep("d"))
    losses = model(*_batch())
    x, t_d = seen["x"].numpy(), seen["t_d"].numpy()
    assert x.shape == t_d.shape == (x.shape[0], 32)
    assert float(losses["loss_det_reconstruction"].detach()) == pytest.approx(
        0.5 * np.mean((x - t_d) ** 2), rel=1e-5)
    o = np.maximum(seen["deconv"].numpy(), 0)  # o = ReLU(deconv)
    d = seen["d"].numpy()
    assert o.shape == d.shape and o.shape[1:] == (16, 28, 28)
    assert float(losses["loss_smh_reconstruction"].detach()) == pytest.approx(
        0.25 * np.mean((o - d) ** 2), rel=1e-5)


def test_ablation_rows_without_decoders_have_no_reconstruction_loss():
    model = _detector(_small(det_decoder=False, smh_decoder=False, ba_rpn=False,
                             sync_bg_det=False, sync_bg_mask=False))
    losses = model(*_batch())
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                           "loss_box_reg", "loss_mask"}
    assert model.roi_heads.box_predictor.decoder is None
    assert model.roi_heads.mask_predictor.decoder is None


def test_box_predictor_logits_are_semantic_features_times_fixed_word_vectors():
    torch.manual_seed(0)
    words = torch.randn(3, 4)  # [v_b | W_s], dim 3, S = 3
    head = ZeroShotBoxPredictor(6, words, decoder=True, gradient="code")
    x = torch.randn(5, 6)
    logits, deltas, s, recon = head(x)
    expected_s = x @ head.encoder.weight.t() + head.encoder.bias
    torch.testing.assert_close(s, expected_s)
    torch.testing.assert_close(logits, expected_s @ words)
    assert deltas.shape == (5, 16) and recon.shape == (5, 6)
    assert not head.words.vectors.requires_grad  # W is fixed
    assert "words.vectors" not in dict(head.named_parameters())


def test_mask_head_logits_are_the_encoder_output_through_the_fixed_word_conv():
    torch.manual_seed(0)
    words = torch.randn(3, 4)
    head = SemanticMaskHead(8, 6, words, decoder=False, gradient="code", layout="paper",
                            conv_bug=True)
    x = torch.randn(2, 8, 14, 14)
    logits, o, e, recon = head(x)
    assert o.shape == (2, 6, 28, 28) and e.shape == (2, 3, 28, 28) and recon is None
    torch.testing.assert_close(logits, torch.einsum("ndhw,dk->nkhw", e, words))
    # conv_bug: every conv reads the RoI feature, so o depends on the last conv only
    with torch.no_grad():
        head.convs[0].weight.mul_(7.0)
    torch.testing.assert_close(head(x)[1], o)
    # without the bug the convs run in sequence, and the first one matters
    torch.manual_seed(0)
    chained = SemanticMaskHead(8, 8, words, decoder=False, gradient="code", layout="paper",
                               conv_bug=False)
    before = chained(x)[1]
    with torch.no_grad():
        chained.convs[0].weight.mul_(7.0)
    assert not torch.allclose(chained(x)[1], before)


# -- scoring --------------------------------------------------------------------------------------
def test_unseen_scoring_code_and_paper_by_hand():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(4, 3))
    w_seen = rng.normal(size=(3, 3))  # [v_b | 2 seen]
    w_unseen = np.concatenate([w_seen[:, :1], rng.normal(size=(3, 2))], axis=1)

    def softmax(z):
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    p = softmax(s @ w_seen)
    t = [torch.as_tensor(a) for a in (s, w_seen, w_unseen)]
    seen, unseen = class_scores(*t, "code")
    np.testing.assert_allclose(seen.numpy(), (p @ w_seen.T @ w_seen)[:, 1:], rtol=1e-10)
    np.testing.assert_allclose(unseen.numpy(), (p @ w_seen.T @ w_unseen)[:, 1:], rtol=1e-10)
    seen, unseen = class_scores(*t, "paper")
    np.testing.assert_allclose(seen.numpy(), p[:, 1:], rtol=1e-10)
    np.testing.assert_allclose(unseen.numpy(), softmax(s @ w_unseen)[:, 1:], rtol=1e-10)


def test_unseen_mask_logits_code_and_paper_by_hand():
    rng = np.random.default_rng(1)
    e = rng.normal(size=(2, 3, 4, 4))
    w_seen = rng.normal(size=(3, 3))
    w_unseen = rng.normal(size=(3, 3))
    seen_logits = np.einsum("ndhw,dk->nkhw", e, w_seen)
    t = [torch.as_tensor(a) for a in (seen_logits, e, w_seen, w_unseen)]
    np.testing.assert_allclose(unseen_mask_logits(*t, "paper").numpy(),
                               np.einsum("ndhw,dk->nkhw", e, w_unseen), rtol=1e-10)
    words = np.einsum("nkhw,dk->ndhw", seen_logits, w_seen)
    np.testing.assert_allclose(unseen_mask_logits(*t, "code").numpy(),
                               np.einsum("ndhw,dk->nkhw", words, w_unseen), rtol=1e-10)


def test_detect_gzsl_keeps_seen_and_unseen_groups_and_zsl_unseen_only():
    model = _detector(_small(score_threshold=0.0, detections_per_image=7))
    model.eval()
    image = torch.rand(3, 48, 80)
    gzsl = model.detect([image], "gzsl")[0]
    zsl = model.detect([image], "zsl")[0]
    assert (gzsl["labels"] < 5).sum() == 7 and (gzsl["labels"] >= 5).sum() == 7
    assert len(zsl["labels"]) == 7 and bool((zsl["labels"] >= 5).all())
    assert gzsl["masks"].shape == (14, 1, 48, 80)
    assert float(gzsl["boxes"][:, 2].max()) <= 80 and float(gzsl["boxes"][:, 3].max()) <= 48


# -- RoIAlign without the compiled operator -------------------------------------------------------
def test_grid_roi_align_matches_torchvision_reference_and_its_gradient():
    import torchvision.ops.roi_align  # noqa: F401

    reference = sys.modules["torchvision.ops.roi_align"]._roi_align
    reference = getattr(reference, "__wrapped__", reference)  # the eager pure-PyTorch version
    torch.manual_seed(0)
    features = torch.randn(2, 3, 13, 17, dtype=torch.float64, requires_grad=True)
    boxes = torch.rand(30, 4, dtype=torch.float64) * torch.tensor([60.0, 40, 60, 40])
    boxes[:, 2:] = (boxes[:, :2] + torch.rand(30, 2, dtype=torch.float64) * 40).clamp(
        max=torch.tensor([67.0, 51]))
    rois = torch.cat([torch.randint(0, 2, (30, 1)).double(), boxes], dim=1)
    for scale, size in ((0.25, (7, 7)), (0.125, (14, 14))):
        ours = roi_align_grid(features, rois, size, scale, 2)
        theirs = reference(features, rois, scale, size[0], size[1], 2, False)
        torch.testing.assert_close(ours, theirs)
        torch.testing.assert_close(torch.autograd.grad(ours.sum(), features)[0],
                                   torch.autograd.grad(theirs.sum(), features)[0])


# -- schedule, anchors, checks --------------------------------------------------------------------
def test_lr_schedule_warm_up_and_steps():
    config = ZSIConfig(warmup_iters=500, lr_steps=[8, 11])
    assert lr_factor(0, 100, config) == pytest.approx(1 / 3)
    assert lr_factor(250, 100, config) == pytest.approx(2 / 3)
    assert lr_factor(500, 100, config) == 1.0
    assert lr_factor(799, 100, config) == 1.0
    assert lr_factor(800, 100, config) == pytest.approx(0.1)
    assert lr_factor(1100, 100, config) == pytest.approx(0.01)


def test_anchor_match_by_hand():
    sizes = np.array([[16.0, 16.0], [100.0, 100.0], [16.0, 8.0]])
    best = anchor_match(sizes, [16])
    assert best[0] == pytest.approx(1.0)
    assert best[1] == pytest.approx(256 / 10000)
    # a 2:1 box: the ratio-0.5 anchor is 16/sqrt(.5) x 16*sqrt(.5) = 22.6 x 11.3
    w, h = 16 / np.sqrt(0.5), 16 * np.sqrt(0.5)
    inter = min(w, 16) * min(h, 8)
    assert best[2] == pytest.approx(inter / (w * h + 128 - inter))


def _context(tmp_path: Path, *, dim: int = 8, instances: bool = True,
             box: tuple[float, float] = (24, 24)) -> ModelContext:
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((128, 128, 3), np.uint8)).save(image)
    anns = [{"class_index": 1, "bbox": [10, 10, *box], "segmentation": [], "iscrowd": 0}]
    data = ModelData(num_classes=4, category_ids=[1, 2, 3, 4], things=[True] * 4,
                     seen_idx=np.array([0, 1, 2]), unseen_idx=np.array([3]),
                     class_embeddings=np.random.default_rng(0).normal(size=(4, dim)).astype(
                         np.float32),
                     train_images=[(str(image), str(image))], label_lut=np.arange(256),
                     eval_images=[], stages={}, train_instances=[anns] if instances else None,
                     benchmark="synthetic/test")
    return ModelContext("zsi", None, 0, data)


def test_check_bad_input_as_one_line_errors(tmp_path):
    good = ZSIConfig(background="mean-seen")
    audit = check(good, _context(tmp_path))
    assert audit["background_vector"].startswith("mean-seen") and audit["word_dim"] == 8
    assert audit["objects_matched_by_anchors"] == 1.0
    # 30 px lies between the 24 and 48 px anchors (IoU 0.64 < 0.7): not matchable
    with pytest.raises(ConfigError, match=r"best anchor IoU is 0\.64 < the RPN's 0\.7"):
        check(good, _context(tmp_path, box=(30, 30)))
    with pytest.raises(ConfigError, match=r"^zsi: the class embeddings are 8-d, but word_dim is "
                                          r"300; [^\n]*$"):
        check(ZSIConfig(background="mean-seen", word_dim=300), _context(tmp_path))
    with pytest.raises(ConfigError, match=r"background_file .*300-d vectors .* 8-d"):
        check(ZSIConfig(), _context(tmp_path))  # the shipped 300-d background
    with pytest.raises(ConfigError, match=r"^zsi: benchmark synthetic/test has no instance "
                                          r"annotations"):
        check(good, _context(tmp_path, instances=False))
    with pytest.raises(ConfigError, match=r"^zsi: anchor_sizes \[2, 2, 2, 2\] cannot match any "
                                          r"object of synthetic/test: objects are 24-24 px"):
        check(ZSIConfig(background="mean-seen", anchor_sizes=[2, 2, 2, 2]), _context(tmp_path))


def test_registered_rows_fix_the_component_switches():
    assert ABLATIONS["zsi"] == (True, True, True, True, True)
    baseline = get_method("zsi-baseline")
    config = baseline.build_config({"lr": 0.02})
    assert (config.smh_decoder, config.det_decoder, config.ba_rpn, config.sync_bg_det,
            config.sync_bg_mask) == (False, False, False, False, False)
    assert config.lr == 0.02
    with pytest.raises(ConfigError, match="fixed by method 'zsi'"):
        get_method("zsi").build_config({"ba_rpn": False})
    with pytest.raises(ConfigError, match="need ba_rpn"):
        ZSIConfig(ba_rpn=False).validate()
    assert [get_method(n).kind for n in ABLATIONS] == ["model"] * len(ABLATIONS)



def test_dashboard_labels_zsi_rows_beside_the_papers_zsi_and_pading_rows():
    from zeroseg.dashboards.data.labels import method_label, method_order
    from zeroseg.dashboards.data.leaderboard import paper_results

    papers = paper_results()
    rows = papers[(papers["Split"] == "coco2014/zsi-48-17") & (papers["Task"] == "instance")
                  & (papers["Setting"] == "GZSL") & (papers["Metric"] == "mAP50")]
    assert {"ZSI", "ZSI baseline", "PADing"} <= set(rows["Method"])
    baseline = rows[(rows["Method"] == "ZSI baseline")
                    & rows["Source"].str.contains("ZSI CVPR 2021")]
    assert baseline["Unseen"].tolist() == [3.01]  # Table 4, 48/17 mAP
    assert method_label("zsi-baseline") == "ZSI baseline" and method_label("zsi") == "ZSI"
    order = method_order()
    assert order.index("PADing") < order.index("ZSI baseline") < order.index("ZSI")

# -- the whole detector through the platform (Ray Train + DeepSpeed, evaluation, store) ----------
@pytest.mark.slow
@pytest.mark.ray
def test_zsi_trains_two_steps_through_the_platform_and_is_scored(tmp_path):
    """Two DeepSpeed workers (half a CPU each, as test_method_kinds' two-worker sweep), one
    step per epoch, two epochs: checkpoints, curves, scoring, the store and the audit."""
    from test_method_kinds import tiny_config

    from zeroseg.methods.zsi.train import predict
    from zeroseg.platform.pipeline import Pipeline, pipeline_config_from_dict
    from zeroseg.platform.pipeline.runner import model_data, run_one
    from zeroseg.platform.store import open_store

    doc = tiny_config(tmp_path / "tiny", tmp_path / "work", ["zsi"])
    doc["params"] = {"zsi": {"background": "mean-seen", "epochs": 2, "steps_per_epoch": 1,
                             "batch_size": 2, "warmup_iters": 0}}
    doc["evaluation"]["protocols"] = ["test"]
    doc["method_training"] = {"workers": 2, "cpus_per_worker": 0.5, "zero_stage": 0}
    pipeline = Pipeline(pipeline_config_from_dict(doc), progress=lambda line: None)
    epochs: list[tuple[str, int, object]] = []
    outcome = run_one(pipeline, "zsi", 0, on_epoch=lambda p, e, c: epochs.append((p, e, c)))
    assert outcome.status == "finished", outcome.error
    # every epoch reaches the hooks; a detector is not asked for semantic per-epoch predictions
    assert epochs == [("test", 1, None), ("test", 2, None)]
    test = outcome.protocols["test"]
    state = torch.load(test.output.artifacts["model"], weights_only=True)
    assert "rpn.head.fg_bg.weight" in state  # BA-RPN
    assert {("instance", "gzsl"), ("instance", "zsl")} <= set(test.evaluations)
    for key in (("instance", "gzsl"), ("instance", "zsl")):
        assert "ap50" in test.evaluations[key].unseen
    with open_store(pipeline.store_url) as store:
        run = store.run(outcome.run_id)
    assert run["method"] == "zsi" and run["status"] == "finished"
    assert {c["step"] for c in run["curves"] if c["name"] == "model/loss"} == {1, 2}
    assert {c["name"] for c in run["curves"]} >= {"model/loss_objectness", "model/loss_mask",
                                                  "model/loss_det_reconstruction",
                                                  "model/images_per_second"}
    assert ("test", "instance") in {(m["eval_split"], m["task"]) for m in run["metrics"]}
    audit = run["leakage_audit"]["protocols"]["test"]
    assert audit["method"]["background_vector"].startswith("mean-seen")
    # drop-images: the training images are the leakage filter's kept ones, none with unseen
    ctx = pipeline.context("test", "zero-shot", train_features=False)
    spec = get_method("zsi")
    config = spec.build_config(doc["params"]["zsi"])
    data = model_data(pipeline, spec, config, ctx)
    assert audit["method"]["training_images"] == len(data.train_images) == audit["images_kept"]
    assert audit["images_dropped"] > 0
    unseen = set(data.unseen_idx.tolist())
    assert all(a["class_index"] not in unseen for anns in data.train_instances for a in anns)
    # ZSL predictions are unseen classes only; GZSL has both groups
    context = ModelContext("zsi", config, 0, data)
    zsl = predict(config, context, state, "zsl")
    unseen_ids = {data.category_ids[i] for i in unseen}
    assert zsl.instances and {d["category_id"] for d in zsl.instances} <= unseen_ids
