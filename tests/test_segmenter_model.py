"""The segmenter model (transformers' Mask2Former built offline), its backbone-weight loading and
its checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from zeroseg.methods.segmenter import (
    Segmenter,
    SegmenterConfig,
    checkpoint_fingerprint,
    load_segmenter,
    save_segmenter,
)
from zeroseg.methods.segmenter.checkpoint import CheckpointError
from zeroseg.methods.segmenter.model import load_backbone_weights_file
from zeroseg.platform.config import from_dict
from zeroseg.platform.errors import ConfigError, ZerosegError

K = 5  # training classes of the small test models


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def tiny() -> Segmenter:
    torch.manual_seed(0)
    return Segmenter(SegmenterConfig(), K)


def targets(batch: int, size: int = 128, seed: int = 0) -> tuple[list, list]:
    """Rectangular masks with random classes, 1..3 per image."""
    g = torch.Generator().manual_seed(seed)
    masks, labels = [], []
    for _ in range(batch):
        n = int(torch.randint(1, 4, (1,), generator=g))
        m = torch.zeros(n, size, size)
        for j in range(n):
            y, x = torch.randint(0, size // 2, (2,), generator=g).tolist()
            m[j, y:y + size // 3, x:x + size // 3] = 1
        masks.append(m)
        labels.append(torch.randint(0, K, (n,), generator=g))
    return masks, labels


# -- config ------------------------------------------------------------------------------------
def test_sizes_resolve_their_defaults():
    tiny = SegmenterConfig().resolved()
    assert (tiny.num_queries, tiny.hidden_dim, tiny.decoder_layers) == (20, 64, 3)
    r50 = SegmenterConfig(size="r50", num_queries=50).resolved()
    assert (r50.num_queries, r50.hidden_dim, r50.decoder_layers) == (50, 256, 10)
    assert r50.train_num_points == 12544
    # the real sizes train with Mask2Former's recipe, the tiny one with its CPU recipe
    recipe = ("pixel_decoder", "attention_order", "mask_loss", "class_weight",
              "semantic_weight")
    assert [getattr(r50, k) for k in recipe] == ["msdeform", "coarse-first", "points", 2.0, 0.0]
    assert [getattr(tiny, k) for k in recipe] == ["fpn", "fine-first", "dense", 5.0, 1.0]
    mixed = SegmenterConfig(size="r50", pixel_decoder="fpn", semantic_weight=0.5).resolved()
    assert (mixed.pixel_decoder, mixed.semantic_weight, mixed.mask_loss) == ("fpn", 0.5, "points")


@pytest.mark.parametrize("data, key", [
    ({"size": "vit-h"}, "size"),
    ({"image_size": 100}, "image_size"),
    ({"backbone_weights": "w.pt"}, "backbone_weights"),
    ({"num_queries": 0}, "num_queries"),
    ({"hidden_dim": 66}, "hidden_dim"),
    ({"queries": 10}, "queries"),
    ({"pixel_decoder": "deformable"}, "pixel_decoder"),
    ({"mask_loss": "sampled"}, "mask_loss"),
    ({"pixel_decoder": "msdeform", "attention_order": "fine-first"}, "attention_order"),
    ({"semantic_weight": -1.0}, "semantic_weight"),
])
def test_bad_configs_name_the_field(data, key):
    with pytest.raises(ConfigError) as err:
        from_dict(SegmenterConfig, data, where="seg.yaml")
    message = one_line(err)
    assert "seg.yaml" in message and key in message


# -- tiny model --------------------------------------------------------------------------------
def test_tiny_size_and_shapes(tiny):
    params = sum(p.numel() for p in tiny.parameters())
    assert 1.4e6 < params < 1.8e6, params
    assert tiny.embed_dim == 64 and tiny.num_queries == 20
    tiny.eval()
    with torch.no_grad():
        out = tiny(torch.randn(2, 3, 128, 128))
    assert out.loss is None
    assert out.class_logits.shape == (2, 20, K + 1)
    assert out.mask_logits.shape == (2, 20, 32, 32)
    assert out.query_embeddings.shape == (2, 20, 64)


@pytest.mark.parametrize("order, strides", [("coarse-first", (32, 16, 8)),
                                            ("fine-first", (4, 8, 16))])
def test_fpn_pixel_decoder_levels(order, strides):
    from zeroseg.methods.segmenter.pixel_decoder import FPNPixelDecoder

    decoder = FPNPixelDecoder([8, 16, 32, 64], 32, 24, attention_order=order)
    features = [torch.randn(2, c, 64 // s, 64 // s) for c, s in zip((8, 16, 32, 64),
                                                                       (4, 8, 16, 32),
                                                                       strict=True)]
    out = decoder(features)
    assert out.mask_features.shape == (2, 24, 16, 16)  # stride 4 of a 64 px input
    assert [64 // f.shape[-1] for f in out.multi_scale_features] == list(strides)
    assert all(f.shape[1] == 32 for f in out.multi_scale_features)


def test_msdeform_model_keeps_transformers_pixel_decoder():
    model = Segmenter(SegmenterConfig(pixel_decoder="msdeform", attention_order="coarse-first",
                                      mask_loss="points", train_num_points=256), K)
    decoder = model.mask2former.model.pixel_level_module.decoder
    assert type(decoder).__name__ == "Mask2FormerPixelDecoder"
    masks, labels = targets(1)
    out = model(torch.randn(1, 3, 128, 128), masks, labels)
    assert torch.isfinite(out.loss)


def test_semantic_auxiliary_loss_is_per_pixel_ce_on_target_centres(tiny):
    # a 2 x 2 stride-4 grid of an 8 px image: cell (0, 0) centre (2, 2) is in target 0,
    # cell (1, 1) centre (6, 6) in target 1, the other two cells are covered by no target
    masks = torch.zeros(2, 8, 8)
    masks[0, 0:4, 0:4] = 1
    masks[1, 5:8, 5:8] = 1
    labels = torch.tensor([3, 1])
    g = torch.Generator().manual_seed(0)
    features = torch.randn(1, tiny.embed_dim, 2, 2, generator=g)
    loss = tiny._semantic_loss(features, [masks], [labels])
    logits = tiny.semantic_head(features)[0]  # [K, 2, 2]
    expect = (F.cross_entropy(logits[:, 0, 0][None], torch.tensor([3]))
              + F.cross_entropy(logits[:, 1, 1][None], torch.tensor([1]))) / 2
    torch.testing.assert_close(loss, expect)
    none = tiny._semantic_loss(features, [torch.zeros(0, 8, 8)], [torch.zeros(0).long()])
    assert none.item() == 0.0


def test_class_head_reads_the_query_embeddings(tiny):
    tiny.eval()
    with torch.no_grad():
        out = tiny(torch.randn(2, 3, 128, 128))
        again = tiny.classify(out.query_embeddings)
    torch.testing.assert_close(again, out.class_logits, rtol=0, atol=1e-6)
    # the embedding is the decoder's final LayerNorm output (unit scale at initialisation)
    std = out.query_embeddings.std(-1)
    assert torch.allclose(std, torch.ones_like(std), atol=0.05)


def test_loss_is_finite_and_reaches_the_backbone():
    torch.manual_seed(1)
    model = Segmenter(SegmenterConfig(), K)
    model.train()
    masks, labels = targets(2)
    out = model(torch.randn(2, 3, 128, 128), masks, labels)
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    patch = model.backbone.embedder.embedder.convolution.weight  # the ResNet stem
    assert patch.grad is not None and patch.grad.abs().sum() > 0
    assert model.class_head.weight.grad.abs().sum() > 0
    # images without any target are fine (everything is "no object")
    model.zero_grad()
    empty = model(torch.randn(2, 3, 128, 128), [torch.zeros(0, 128, 128)] * 2,
                  [torch.zeros(0, dtype=torch.long)] * 2)
    assert torch.isfinite(empty.loss)
    empty.loss.backward()
    assert model.class_head.weight.grad.abs().sum() > 0


def test_training_reduces_the_loss_on_a_fixed_batch():
    torch.manual_seed(2)
    model = Segmenter(SegmenterConfig(), K)
    masks, labels = targets(2, seed=3)
    x = torch.randn(2, 3, 128, 128)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        torch.manual_seed(0)  # same sampled points every step
        loss = model(x, masks, labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses


def test_match_is_one_to_one(tiny):
    masks, labels = targets(3, seed=5)
    tiny.eval()
    with torch.no_grad():
        out = tiny(torch.randn(3, 3, 128, 128))
    matches = tiny.match(out, masks, labels)
    assert len(matches) == 3
    for (queries, tgt), lab in zip(matches, labels, strict=True):
        assert len(queries) == len(tgt) == len(lab)
        assert len(set(queries.tolist())) == len(queries)
        assert sorted(tgt.tolist()) == list(range(len(lab)))
        assert int(queries.max()) < tiny.num_queries


def test_match_prefers_the_query_that_predicts_the_target(tiny):
    # Hand-made outputs: query 7 predicts target 0 perfectly, query 3 target 1; the matcher must
    # find exactly these pairs (its mask costs are on random points, so use large regions).
    q, h = tiny.num_queries, 32
    mask_logits = torch.full((1, q, h, h), -8.0)
    mask_logits[0, 7, :16] = 8.0
    mask_logits[0, 3, 16:] = 8.0
    class_logits = torch.zeros(1, q, K + 1)
    class_logits[0, 7, 2] = 6.0
    class_logits[0, 3, 4] = 6.0
    from zeroseg.methods.segmenter import SegmenterOutput

    out = SegmenterOutput(None, class_logits, mask_logits, torch.zeros(1, q, tiny.embed_dim))
    target = torch.zeros(2, 128, 128)
    target[0, :64] = 1
    target[1, 64:] = 1
    (queries, tgt), = tiny.match(out, [target], [torch.tensor([2, 4])])
    assert dict(zip(tgt.tolist(), queries.tolist(), strict=True)) == {0: 7, 1: 3}


# -- real sizes and backbone weights -----------------------------------------------------------
@pytest.fixture(scope="module")
def timm():
    from zeroseg.platform.compat import ensure_torchvision

    ensure_torchvision()
    return pytest.importorskip("timm")


@pytest.fixture(scope="module")
def r50() -> Segmenter:
    torch.manual_seed(0)
    return Segmenter(SegmenterConfig(size="r50", image_size=64), 3)


def test_real_sizes_build_offline(r50):
    swin = Segmenter(SegmenterConfig(size="swin-t", image_size=64), 3)
    for model, params in ((r50, (40e6, 50e6)), (swin, (44e6, 52e6))):
        n = sum(p.numel() for p in model.parameters())
        assert params[0] < n < params[1], (model.config.size, n)
        assert model.num_queries == 100 and model.embed_dim == 256
        assert len(model.mask2former.model.transformer_module.decoder.layers) == 9
    swin.eval()
    with torch.no_grad():
        out = swin(torch.randn(1, 3, 64, 64))
    assert out.class_logits.shape == (1, 100, 4) and out.mask_logits.shape == (1, 100, 16, 16)


def test_backbone_weights_in_transformers_keys_load_exactly(r50, tmp_path):
    path = tmp_path / "r50_backbone.pt"
    torch.save({f"backbone.{k}": v for k, v in r50.backbone.state_dict().items()}, path)
    model = Segmenter(SegmenterConfig(size="r50", image_size=64, backbone_weights=str(path)), 3)
    for key, value in r50.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    # the rest of the model is not touched by the backbone file
    assert not torch.equal(model.class_head.weight, r50.class_head.weight)


def test_timm_resnet50_weights_give_timm_features(tmp_path, timm):
    torch.manual_seed(0)
    ref = timm.create_model("resnet50", pretrained=False).eval()
    for module in ref.modules():  # non-trivial batch-norm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "timm_r50.pt"
    torch.save(ref.state_dict(), path)
    model = Segmenter(SegmenterConfig(size="r50", image_size=64, backbone_weights=str(path)),
                      3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = model.backbone(x).feature_maps
        theirs = ref.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_timm_swin_t_weights_give_timm_features(tmp_path, timm):
    torch.manual_seed(0)
    # transformers' Swin backbone shifts windows at every resolution, as Mask2Former's own Swin
    # does; timm's classifier stops shifting once the map fits in one window unless asked to.
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False,
                            always_partition=True).eval()
    path = tmp_path / "timm_swin.pt"
    torch.save({"state_dict": ref.state_dict()}, path)
    model = Segmenter(SegmenterConfig(size="swin-t", image_size=224,
                                      backbone_weights=str(path)), 3).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ours = model.backbone(x).feature_maps
        theirs = ref.forward_intermediates(x, indices=4, intermediates_only=True)
    for a, b in zip(ours, theirs, strict=True):
        # transformers normalises each stage output (fresh LayerNorm: weight 1, bias 0)
        b = F.layer_norm(b.permute(0, 2, 3, 1), (b.shape[1],)).permute(0, 3, 1, 2)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_bad_backbone_weights_are_one_line_errors(r50, tmp_path):
    good = r50.backbone.state_dict()
    cases = {}
    partial = dict(good)
    removed = "encoder.stages.3.layers.2.layer.2.convolution.weight"
    del partial[removed]
    cases["partial.pt"] = (partial, removed)
    extra = dict(good)
    extra["decoder.something.weight"] = torch.zeros(1)
    cases["extra.pt"] = (extra, "decoder.something.weight")
    wrong = dict(good)
    wrong["embedder.embedder.convolution.weight"] = torch.zeros(64, 3, 3, 3)
    cases["shape.pt"] = (wrong, "embedder.embedder.convolution.weight")
    timm_style = {"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(1)}
    cases["timm.pt"] = (timm_style, "timm key style")
    for name, (sd, _) in cases.items():
        torch.save(sd, tmp_path / name)
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    cases["garbage.pt"] = (None, "not a readable")
    torch.save({"a": [1, 2]}, tmp_path / "notensors.pt")
    cases["notensors.pt"] = (None, "state dict")
    cases["missing.pt"] = (None, "not found")
    before = {k: v.clone() for k, v in good.items()}
    for name, (_, needle) in cases.items():
        path = tmp_path / name
        with pytest.raises(ConfigError) as err:
            load_backbone_weights_file(r50.backbone, path, "r50")
        message = one_line(err)
        assert str(path) in message and needle in message, message
    for key, value in r50.backbone.state_dict().items():  # nothing was half-loaded
        assert torch.equal(value, before[key]), key
    # through the config, the same error stops the model from being built
    with pytest.raises(ConfigError, match="partial.pt"):
        Segmenter(SegmenterConfig(size="r50", image_size=64,
                                  backbone_weights=str(tmp_path / "partial.pt")), 3)


# -- checkpoints -------------------------------------------------------------------------------
META = {"class_ids": [11, 12, 13, 14, 15], "class_names": list("abcde"), "split": "synthetic",
        "dataset": "fp", "train_config_hash": "h", "step": 7}


@pytest.fixture()
def saved(tiny, tmp_path):
    directory = tmp_path / "segmenter"
    save_segmenter(tiny, directory, META)
    return directory


def test_checkpoint_round_trip_is_exact(tiny, saved):
    model, meta = load_segmenter(saved)
    assert meta["num_classes"] == K and meta["class_ids"] == META["class_ids"]
    assert meta["step"] == 7 and meta["config"]["size"] == "tiny"
    ours, theirs = tiny.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    tiny.eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        a, b = tiny(x), model(x)
    assert torch.equal(a.mask_logits, b.mask_logits)
    assert torch.equal(a.query_embeddings, b.query_embeddings)
    assert sorted(p.name for p in saved.iterdir()) == ["meta.json", "model.pt"]


def test_fingerprint_follows_the_contents(tiny, saved, tmp_path):
    first = checkpoint_fingerprint(saved)
    assert first == checkpoint_fingerprint(saved)
    other = tmp_path / "other"
    save_segmenter(tiny, other, {**META, "step": 8})
    assert checkpoint_fingerprint(other) != first
    model, _ = load_segmenter(saved)
    with torch.no_grad():
        model.class_head.bias.add_(1.0)
    save_segmenter(model, other, META)
    assert checkpoint_fingerprint(other) != first


def test_save_refuses_bad_meta(tiny, tmp_path):
    with pytest.raises(ValueError):
        save_segmenter(tiny, tmp_path / "x", {"class_ids": [1, 2]})
    with pytest.raises(ValueError):
        save_segmenter(tiny, tmp_path / "x", {**META, "num_classes": 3})
    assert not (tmp_path / "x").exists()


def _meta(directory):
    return json.loads((directory / "meta.json").read_text())


def _write_meta(directory, meta):
    (directory / "meta.json").write_text(json.dumps(meta))


def test_truncated_weights_are_detected(saved):
    path = saved / "model.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_segmenter(saved)
    assert "model.pt" in one_line(err) and "checksum" in str(err.value)
    meta = _meta(saved)  # without the checksum, torch.load itself fails
    del meta["model_sha256"]
    _write_meta(saved, meta)
    with pytest.raises(CheckpointError) as err:
        load_segmenter(saved)
    assert "model.pt" in one_line(err) and "not a readable state dict" in str(err.value)


@pytest.mark.parametrize("change, needle", [
    (lambda m: m.update(num_classes=6, class_ids=list(range(6))), "class_predictor"),
    (lambda m: m["config"].update(hidden_dim=128), "shape"),
    (lambda m: m["config"].update(num_queries=25), "queries"),
    (lambda m: m["config"].update(size="r50"), "missing keys"),
])
def test_mismatched_meta_is_a_one_line_error(saved, change, needle):
    meta = _meta(saved)
    change(meta)
    _write_meta(saved, meta)
    with pytest.raises(CheckpointError) as err:
        load_segmenter(saved)
    message = one_line(err)
    assert "model.pt" in message and needle in message, message


@pytest.mark.parametrize("edit, needle", [
    (lambda d: (d / "meta.json").write_text("{not json"), "malformed JSON"),
    (lambda d: (d / "meta.json").unlink(), "not found"),
    (lambda d: (d / "model.pt").unlink(), "not found"),
    (lambda d: _write_meta(d, {**_meta(d), "format": "other"}), "format"),
    (lambda d: _write_meta(d, {**_meta(d), "class_ids": [1]}), "class_ids"),
    (lambda d: _write_meta(d, {**_meta(d), "config": {**_meta(d)["config"], "size": "huge"}}),
     "config.size"),
])
def test_corrupt_checkpoint_is_a_one_line_error(saved, edit, needle):
    edit(saved)
    with pytest.raises(ZerosegError) as err:
        load_segmenter(saved)
    message = one_line(err)
    assert str(saved) in message and needle in message, message


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError) as err:
        load_segmenter(tmp_path / "nope")
    assert "nope" in one_line(err)


def test_save_unwraps_a_ddp_style_wrapper(tiny, tmp_path):
    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    save_segmenter(Wrapper(tiny), tmp_path / "w", META)
    model, _ = load_segmenter(tmp_path / "w")
    assert torch.equal(model.class_head.weight, tiny.class_head.weight)
