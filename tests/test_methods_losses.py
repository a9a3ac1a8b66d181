"""The losses of the generative methods against direct computations on small tensors, the
ablation switches, gradient flow and the generators' shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zeroseg.methods.common import (
    SIGMA_PRESETS,
    ClassifierConfig,
    cosine_similarity_matrix,
    grouped_mmd_loss,
    mmd_loss,
    resolve_sigmas,
    softmax_kl,
)
from zeroseg.methods.gmmn import GMMNConfig, GMMNGenerator, GMMNNetConfig
from zeroseg.methods.pading import (
    ABLATIONS,
    PADingConfig,
    PADingModel,
    PrimitiveGenerator,
    ablation_config,
    alignment_losses,
    authors_code_config,
    pading_losses,
    reconstruction_loss,
    related_classification_loss,
    unrelated_kl_loss,
)
from zeroseg.platform.config import from_dict, to_dict
from zeroseg.platform.errors import ConfigError


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small tensors: one thread each, so two xdist workers do not oversubscribe two cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _t(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# -- direct (slow, obvious) reference computations --------------------------------------------


def _k(x: np.ndarray, y: np.ndarray, sigmas, scale: str) -> float:
    d2 = float(((x - y) ** 2).sum())
    return sum(math.exp(-d2 / (2 * (s * s if scale == "std" else s))) for s in sigmas)


def _mmd2_direct(fake: np.ndarray, real: np.ndarray, sigmas, scale: str = "variance") -> float:
    m, n = len(fake), len(real)
    rr = sum(_k(real[i], real[j], sigmas, scale) for i in range(n) for j in range(n)) / n ** 2
    ff = sum(_k(fake[i], fake[j], sigmas, scale) for i in range(m) for j in range(m)) / m ** 2
    rf = sum(_k(real[i], fake[j], sigmas, scale) for i in range(n) for j in range(m)) / (n * m)
    return rr + ff - 2 * rf


def _softmax(row: np.ndarray, tau: float) -> np.ndarray:
    e = np.exp((row - row.max()) / tau)
    return e / e.sum()


def _kl_direct(pred: np.ndarray, target: np.ndarray, tau: float, direction: str) -> float:
    total = 0.0
    for i in range(pred.shape[0]):
        p, t = _softmax(pred[i], tau), _softmax(target[i], tau)
        first, second = (p, t) if direction == "paper" else (t, p)
        total += sum(first[j] * math.log(first[j] / second[j]) for j in range(len(p)))
    return total / pred.size


def _cos_direct(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((len(a), len(b)))
    for i in range(len(a)):
        for j in range(len(b)):
            out[i, j] = a[i] @ b[j] / (np.linalg.norm(a[i]) * np.linalg.norm(b[j]))
    return out


# -- MMD ---------------------------------------------------------------------------------------


def test_sigma_presets_and_lists():
    assert resolve_sigmas("paper") == (2.0, 5.0, 10.0, 20.0, 40.0, 60.0)
    assert resolve_sigmas("code") == (2.0, 5.0, 10.0, 20.0, 40.0, 80.0)
    assert resolve_sigmas([1, 3.5]) == (1.0, 3.5)
    for bad, needle in [("papr", "unknown preset"), ([], "at least one"), ([2, -1], "> 0")]:
        with pytest.raises(ConfigError, match=needle):
            resolve_sigmas(bad)


@pytest.mark.parametrize("scale", ["variance", "std"])
@pytest.mark.parametrize("sigmas", [SIGMA_PRESETS["paper"], SIGMA_PRESETS["code"], (0.7, 3.0)])
def test_mmd_matches_double_loop(sigmas, scale):
    fake, real = _t(5, 4, seed=1, scale=2.0), _t(7, 4, seed=2, scale=2.0) + 1.0  # M != N
    got = mmd_loss(fake, real, sigmas, kernel_scale=scale)
    want = _mmd2_direct(fake.double().numpy(), real.double().numpy(), sigmas, scale)
    assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert want > 1e-3  # the sets differ: a meaningful, non-zero value
    root = mmd_loss(fake, real, sigmas, kernel_scale=scale, form="sqrt")
    assert root.item() == pytest.approx(math.sqrt(want), rel=1e-5)


def test_mmd_std_scale_squares_the_bandwidth():
    fake, real = _t(4, 3, seed=3), _t(4, 3, seed=4)
    assert mmd_loss(fake, real, [3.0], kernel_scale="std").item() == pytest.approx(
        mmd_loss(fake, real, [9.0], kernel_scale="variance").item(), rel=1e-6)


def test_mmd_is_zero_for_identical_sets_and_positive_otherwise():
    x = _t(6, 5, seed=5)
    assert mmd_loss(x, x.clone(), resolve_sigmas("paper")).item() == pytest.approx(0, abs=1e-5)
    assert mmd_loss(x + 0.5, x, resolve_sigmas("paper")).item() > 1e-3


def test_grouped_mmd_is_the_mean_of_per_class_mmds():
    fake, real = _t(9, 4, seed=6, scale=2.0), _t(9, 4, seed=7, scale=2.0)
    labels = torch.tensor([3, 0, 3, 3, 0, 7, 7, 0, 3])
    sig = SIGMA_PRESETS["code"]
    per_class = [_mmd2_direct(fake[labels == c].double().numpy(),
                              real[labels == c].double().numpy(), sig) for c in (0, 3, 7)]
    got = grouped_mmd_loss(fake, real, labels, sig, grouping="class")
    assert got.item() == pytest.approx(np.mean(per_class), rel=1e-5)
    got_sqrt = grouped_mmd_loss(fake, real, labels, sig, grouping="class", form="sqrt")
    assert got_sqrt.item() == pytest.approx(np.mean(np.sqrt(per_class)), rel=1e-5)
    whole = grouped_mmd_loss(fake, real, labels, sig, grouping="batch")
    assert whole.item() == pytest.approx(
        _mmd2_direct(fake.double().numpy(), real.double().numpy(), sig), rel=1e-5)


def test_a_class_permutation_fools_the_batch_mmd_not_the_per_class_one():
    real = _t(6, 4, seed=8, scale=2.0)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    swapped = real[[3, 4, 5, 0, 1, 2]]  # class 0 gets class 1's features and vice versa
    sig = SIGMA_PRESETS["paper"]
    assert grouped_mmd_loss(swapped, real, labels, sig, grouping="batch").item() == (
        pytest.approx(0, abs=1e-5))
    assert grouped_mmd_loss(swapped, real, labels, sig, grouping="class").item() > 1e-2


# -- similarity and KL (Eq. 6) ---------------------------------------------------------------


def test_cosine_similarity_matrix():
    a, b = _t(4, 6, seed=8), _t(3, 6, seed=9)
    np.testing.assert_allclose(cosine_similarity_matrix(a, b).numpy(),
                               _cos_direct(a.double().numpy(), b.double().numpy()), atol=1e-6)


@pytest.mark.parametrize("direction", ["paper", "code"])
@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_softmax_kl_matches_direct(direction, tau):
    pred, target = _t(3, 5, seed=10), _t(3, 5, seed=11)
    got = softmax_kl(pred, target, tau, direction).item()
    want = _kl_direct(pred.double().numpy(), target.double().numpy(), tau, direction)
    assert got == pytest.approx(want, rel=1e-4)
    assert softmax_kl(pred, pred.clone(), tau, direction).item() == pytest.approx(0, abs=1e-6)


def test_kl_directions_differ():
    pred, target = _t(3, 5, seed=12), _t(3, 5, seed=13)
    assert abs(softmax_kl(pred, target, 0.5, "paper").item()
               - softmax_kl(pred, target, 0.5, "code").item()) > 1e-4


def test_alignment_terms_match_direct():
    a = torch.nn.functional.normalize(_t(6, 4, seed=14), dim=1)
    seen, unseen = _t(5, 7, seed=15), _t(3, 7, seed=16)
    ys, yu = torch.tensor([0, 1, 1, 2, 0]), torch.tensor([3, 4, 5])
    tau = 0.1
    got = alignment_losses(seen, ys, unseen, yu, a, tau, "paper")
    A, S, U = a.double().numpy(), seen.double().numpy(), unseen.double().numpy()
    pairs = {"align_ss": (S, S, ys, ys), "align_uu": (U, U, yu, yu), "align_su": (S, U, ys, yu)}
    for key, (x1, x2, l1, l2) in pairs.items():
        want = _kl_direct(_cos_direct(x1, x2), _cos_direct(A[l1.numpy()], A[l2.numpy()]), tau,
                          "paper")
        assert got[key].item() == pytest.approx(want, rel=1e-4), key


# -- disentanglement terms (Eq. 3-5) ---------------------------------------------------------


def test_related_classification_matches_eq3():
    related, a = _t(4, 3, seed=17), _t(5, 3, seed=18)
    labels = torch.tensor([0, 4, 2, 2])
    tau = 0.1
    total = 0.0
    for i in range(4):
        scores = [float(related[i] @ a[k]) / tau for k in range(5)]
        top = max(scores)
        log_z = top + math.log(sum(math.exp(s - top) for s in scores))
        total += log_z - scores[int(labels[i])]
    got = related_classification_loss(related, labels, a, tau).item()
    assert got == pytest.approx(total / 4, rel=1e-5)


def test_unrelated_kl_gaussian_matches_eq4():
    u = _t(4, 6, seed=19, scale=2.0) + 0.5
    want = 0.0
    for row in u.double().numpy():
        m, v = row.mean(), row.var()
        want += 0.5 * (v + m * m - 1 - math.log(v))
    assert unrelated_kl_loss(u, "gaussian", 0.1).item() == pytest.approx(want / 4, rel=1e-5)
    standard = torch.tensor([[1.0, -1.0, 1.0, -1.0]])  # mean 0, variance 1
    assert unrelated_kl_loss(standard, "gaussian", 0.1).item() == pytest.approx(0, abs=1e-6)


def test_unrelated_kl_sample_is_the_codes_softmax_kl_against_fresh_noise():
    u = _t(3, 5, seed=20)
    got = unrelated_kl_loss(u, "sample", 0.1, torch.Generator().manual_seed(4)).item()
    eps = torch.randn(3, 5, generator=torch.Generator().manual_seed(4))
    want = 0.5 * _kl_direct(u.double().numpy(), eps.double().numpy(), 0.1, "code")
    assert got == pytest.approx(want, rel=1e-4)


def test_reconstruction_matches_eq5():
    x, r = _t(3, 4, seed=21), _t(3, 4, seed=22)
    want = sum(abs(float(x[i, j] - r[i, j])) for i in range(3) for j in range(4)) / 12
    assert reconstruction_loss(x, r).item() == pytest.approx(want, rel=1e-6)


# -- Eq. 7 and the ablation switches -----------------------------------------------------------

C, D_EMB, D_FEAT = 7, 5, 16
SEEN, UNSEEN = torch.arange(5), torch.tensor([5, 6])


#: The paper column of the module table (the pre-issue-13 defaults, per-class MMD aside): the
#: formulas the tests below recompute by hand. The code column is tests/test_methods_faithful.py.
PAPER_TERMS = dict(relation_scorer="dot", relation_classes="all", structure_class_vectors="raw",
                   structure_averaging="pooled", structure_on_real=True, kl_direction="paper",
                   unrelated_kl="gaussian", class_tie_weight=0.0, sigmas="paper",
                   mmd_form="squared", mmd_grouping="class", encoder_layout="paper")


def _small(**kw) -> PADingConfig:
    base = dict(num_primitives=6, layers=2, heads=4, batch_size=8, steps=1,
                structure_weight=0.3, w1=0.7, w2=1.3, w3=0.4, **PAPER_TERMS)
    base.update(kw)
    return PADingConfig(**base)


def _batch():
    a = torch.nn.functional.normalize(_t(C, D_EMB, seed=30), dim=1)
    real = _t(8, D_FEAT, seed=31)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    return a, real, labels


EXPECTED_KEYS = {
    "GMMN": {"gen"},
    "P-only": {"gen"},
    "P&A": {"gen", "align", "align_ss", "align_uu", "align_su"},
    "PADing": {"gen", "align", "align_ss", "align_uu", "align_su", "rel", "unrelated", "recon"},
}


@pytest.mark.parametrize("row", list(ABLATIONS))
def test_each_switch_keeps_exactly_its_terms(row):
    cfg = ablation_config(row, _small())
    torch.manual_seed(0)
    model = PADingModel(D_EMB, D_FEAT, cfg)
    a, real, labels = _batch()
    terms = pading_losses(model, real, labels, a, UNSEEN, cfg, torch.Generator().manual_seed(0))
    assert set(terms.raw) == EXPECTED_KEYS[row]
    assert terms.total.item() == pytest.approx(sum(v.item() for v in terms.weighted.values()),
                                               rel=1e-6)
    lam = cfg.structure_weight
    expected = terms.raw["gen"].item()
    if cfg.alignment:
        expected += lam * cfg.w1 * np.mean([terms.raw[k].item()
                                            for k in ("align_ss", "align_uu", "align_su")])
    if cfg.disentanglement:
        expected += lam * (cfg.w1 * terms.raw["unrelated"].item()
                           + cfg.w2 * terms.raw["rel"].item() + cfg.w3 * terms.raw["recon"].item())
    assert terms.total.item() == pytest.approx(expected, rel=1e-5)
    has_helpers = model.related is not None
    assert has_helpers == cfg.disentanglement
    assert isinstance(model.generator,
                      GMMNGenerator if row == "GMMN" else PrimitiveGenerator)


def test_disentanglement_without_alignment():
    cfg = _small(alignment=False, disentanglement=True)
    model = PADingModel(D_EMB, D_FEAT, cfg)
    a, real, labels = _batch()
    terms = pading_losses(model, real, labels, a, UNSEEN, cfg, torch.Generator().manual_seed(0))
    assert set(terms.raw) == {"gen", "rel", "unrelated", "recon"}


@pytest.mark.parametrize("on_real", [True, False])
def test_full_loss_terms_recomputed_from_their_features(on_real):
    """Every PADing term equals the direct formula applied to the features it saw: E_R on the
    seen (real + synthetic, or synthetic only) and unseen features, alignment on E_R's output."""
    cfg = _small(structure_on_real=on_real, unseen_per_class=2)
    torch.manual_seed(1)
    model = PADingModel(D_EMB, D_FEAT, cfg).eval()  # no dropout: the nets are deterministic
    a, real, labels = _batch()
    terms = pading_losses(model, real, labels, a, UNSEEN, cfg, torch.Generator().manual_seed(2))
    f = terms.features
    n_seen = 16 if on_real else 8
    assert len(f["seen"]) == n_seen and len(f["fake_unseen"]) == 4
    assert f["unseen_labels"].tolist() == [5, 6, 5, 6]
    if on_real:
        assert torch.equal(f["seen"][8:], real) and torch.equal(f["seen_labels"][8:], labels)
    with torch.no_grad():
        both = torch.cat([f["seen"], f["fake_unseen"]])
        both_labels = torch.cat([f["seen_labels"], f["unseen_labels"]])
        related = model.related(both)
        unrelated = model.unrelated(both)
        decoded = model.decoder(torch.cat([related, unrelated], 1))
        checks = {
            "rel": related_classification_loss(related, both_labels, a, cfg.tau),
            "unrelated": unrelated_kl_loss(unrelated, "gaussian", cfg.tau),
            "recon": (both - decoded).abs().mean(),
            "gen": grouped_mmd_loss(f["fake_seen"], real, labels, resolve_sigmas("paper")),
        }
        checks.update(alignment_losses(related[:n_seen], f["seen_labels"], related[n_seen:],
                                       f["unseen_labels"], a, cfg.tau, "paper"))
    for key, value in checks.items():
        assert terms.raw[key].item() == pytest.approx(value.item(), rel=1e-5), key


def test_alignment_without_disentanglement_uses_the_features_themselves():
    cfg = ablation_config("P&A", _small())
    model = PADingModel(D_EMB, D_FEAT, cfg).eval()
    a, real, labels = _batch()
    terms = pading_losses(model, real, labels, a, UNSEEN, cfg, torch.Generator().manual_seed(3))
    f = terms.features
    direct = alignment_losses(f["seen"], f["seen_labels"], f["fake_unseen"], f["unseen_labels"],
                              a, cfg.tau, "paper")
    for key, value in direct.items():
        assert terms.raw[key].item() == pytest.approx(value.item(), rel=1e-6)


# -- gradients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("row", ["P-only", "PADing"])
def test_gradients_reach_the_primitives_not_the_inputs(row):
    cfg = ablation_config(row, _small())
    model = PADingModel(D_EMB, D_FEAT, cfg)
    a, real, labels = _batch()
    real.requires_grad_(True)
    a.requires_grad_(True)
    terms = pading_losses(model, real, labels, a, UNSEEN, cfg, torch.Generator().manual_seed(0))
    terms.total.backward()
    gen = model.generator
    assert gen.primitives.grad is not None and gen.primitives.grad.abs().sum() > 0
    assert gen.query_proj.weight.grad.abs().sum() > 0
    assert real.grad is None and a.grad is None
    if row == "PADing":
        for net in (model.related, model.unrelated, model.decoder):
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_structure_terms_alone_reach_the_primitives():
    """Alignment and disentanglement shape the generator, not only the helper nets."""
    cfg = _small()
    model = PADingModel(D_EMB, D_FEAT, cfg)
    a, real, labels = _batch()
    terms = pading_losses(model, real, labels, a, UNSEEN, cfg, torch.Generator().manual_seed(0))
    (terms.weighted["align"] + terms.weighted["rel"]).backward()
    assert model.generator.primitives.grad.abs().sum() > 0


# -- generators --------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["paper", "code"])
@pytest.mark.parametrize("hidden,head", [(None, "linear"), (32, "linear"), (None, "layernorm")])
def test_primitive_generator_outputs_the_segmenter_width(attention, hidden, head):
    gen = PrimitiveGenerator(D_EMB, 24, num_primitives=10, layers=2, heads=4, hidden_dim=hidden,
                             attention=attention, output_head=head)
    out = gen(_t(5, D_EMB, seed=40), torch.Generator().manual_seed(0))
    assert out.shape == (5, 24) and torch.isfinite(out).all()
    assert gen.primitives.shape == (10, hidden or 24)


def test_gmmn_generator_outputs_the_segmenter_width():
    gen = GMMNGenerator(D_EMB, 24, GMMNNetConfig(hidden_dim=12))
    assert gen(_t(5, D_EMB, seed=41)).shape == (5, 24)
    with pytest.raises(Exception, match="expected class vectors"):
        gen(_t(5, D_EMB + 1, seed=41))


def test_layernorm_head_needs_the_embedding_width():
    with pytest.raises(ConfigError, match="hidden_dim == the embedding width"):
        PrimitiveGenerator(D_EMB, 24, hidden_dim=32, heads=4, output_head="layernorm")


def test_noise_makes_samples_differ_and_can_be_switched_off():
    v = _t(3, D_EMB, seed=42)
    noisy = PrimitiveGenerator(D_EMB, 16, num_primitives=8, layers=1, heads=4).eval()
    o1 = noisy(v, torch.Generator().manual_seed(1))
    o2 = noisy(v, torch.Generator().manual_seed(2))
    assert (o1 - o2).abs().max() > 1e-3
    assert torch.equal(o1, noisy(v, torch.Generator().manual_seed(1)))
    quiet = PrimitiveGenerator(D_EMB, 16, num_primitives=8, layers=1, heads=4, noise=False).eval()
    assert torch.equal(quiet(v, torch.Generator().manual_seed(1)),
                       quiet(v, torch.Generator().manual_seed(2)))


def test_code_attention_over_one_query_is_a_linear_map():
    """PROTOCOLS' reading of the authors' generator: self-attention over a length-1 query
    sequence attends to itself with weight 1, so it is out_proj(v_proj(q))."""
    gen = PrimitiveGenerator(D_EMB, 16, num_primitives=8, layers=1, heads=4,
                             attention="code").eval()  # no attention dropout
    attn = gen.layers[0].self_attn
    q = _t(4, 16, seed=43).unsqueeze(1)
    got, _ = attn(q, q, q, need_weights=False)
    w_v = attn.in_proj_weight[32:]
    b_v = attn.in_proj_bias[32:]
    want = attn.out_proj(q.squeeze(1) @ w_v.t() + b_v)
    torch.testing.assert_close(got.squeeze(1), want)


def test_paper_attention_relates_the_primitives():
    """In the paper's reading the primitives attend to each other: changing one primitive
    changes what every query reads, through the self-attention."""
    torch.manual_seed(0)
    gen = PrimitiveGenerator(D_EMB, 16, num_primitives=8, layers=1, heads=4, noise=False,
                             attention="paper").eval()
    layer = gen.layers[0]
    q = _t(2, 16, seed=44)
    _, p_before = layer(q, gen.primitives, None)
    bumped = gen.primitives.detach().clone()
    bumped[0] += 1.0
    _, p_after = layer(q, bumped, None)
    assert (p_after[1:] - p_before[1:]).abs().max() > 1e-4  # the others moved too


@pytest.mark.parametrize("attention", ["paper", "code"])
def test_frozen_sampling_reuses_the_primitives_and_gives_the_same_numbers(attention):
    """Sampling fakes from a frozen generator (eval, no grad) computes each layer's primitives
    once; the outputs equal the layer-by-layer computation, and an optimiser step (in-place
    parameter update) invalidates the cache."""
    torch.manual_seed(0)
    gen = PrimitiveGenerator(D_EMB, 16, num_primitives=12, layers=2, heads=4,
                             attention=attention).eval()
    v = _t(5, D_EMB, seed=45)

    def by_hand(rng: torch.Generator) -> torch.Tensor:
        query, primitives = gen.query_proj(v), gen.primitives
        if gen.query_norm is not None:
            query = gen.query_norm(query)
        for layer in gen.layers:
            z = torch.randn(query.shape, generator=rng) * gen.noise_std
            query, primitives = layer(query, primitives, z)
        return gen.head(query)

    with torch.no_grad():
        want = by_hand(torch.Generator().manual_seed(3))
        first = gen(v, torch.Generator().manual_seed(3))
        cache = gen.__dict__["_memory_cache"]
        again = gen(v, torch.Generator().manual_seed(3))
        assert gen.__dict__["_memory_cache"] is cache  # reused, not recomputed
    assert torch.equal(first, want) and torch.equal(again, want)

    gen.train()
    loss = gen(v, torch.Generator().manual_seed(4)).square().sum()
    loss.backward()
    torch.optim.SGD(gen.parameters(), lr=0.5).step()
    gen.eval()
    with torch.no_grad():
        moved = gen(v, torch.Generator().manual_seed(3))
        assert torch.equal(moved, by_hand(torch.Generator().manual_seed(3)))
    assert not torch.equal(moved, want)


# -- configs -----------------------------------------------------------------------------------


def test_config_round_trip_and_errors():
    cfg = from_dict(PADingConfig, {"sigmas": [1, 2], "num_primitives": 100,
                                   "classifier": {"unseen_weight": 2}, "gmmn": {"noise": "normal"}})
    assert cfg.sigmas == [1.0, 2.0] and cfg.classifier.unseen_weight == 2.0
    assert from_dict(PADingConfig, to_dict(cfg)) == cfg
    assert from_dict(PADingConfig, {"sigmas": "code"}).sigmas == "code"
    assert from_dict(GMMNConfig, {"net": {"dropout": 0.4}}).net.dropout == 0.4
    for data, needle in [
        ({"sigmas": "papr"}, "sigmas"),
        ({"num_primitve": 3}, "did you mean 'num_primitives'"),
        ({"generator_type": "gan"}, "generator_type must be one of"),
        ({"layers": 0}, "layers must be >= 1"),
        ({"classifier": {"momentum": 1.5}}, "momentum must be in"),
        ({"lr_milestones": [1.5]}, "lr_milestones"),
        ({"dropout": 1.0}, "dropout must be in"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            from_dict(PADingConfig, data, where="pading.yaml")


def test_defaults_are_the_authors_semantic_recipe():
    """The default config is authors_code_config('semantic'), field for field (the term-by-term
    sources are in tests/test_methods_faithful.py)."""
    assert PADingConfig() == authors_code_config("semantic")
    cfg = PADingConfig()
    assert (cfg.num_primitives, cfg.layers, cfg.structure_weight, cfg.tau, cfg.lr, cfg.steps) == (
        400, 3, 1e-3, 0.1, 5e-4, 2000)
    assert resolve_sigmas(cfg.sigmas) == SIGMA_PRESETS["code"]
    assert cfg.classifier == ClassifierConfig()
    assert (cfg.classifier.lr, cfg.classifier.momentum, cfg.classifier.weight_decay,
            cfg.classifier.schedule) == (1e-3, 0.9, 5e-4, "interleaved")
    assert authors_code_config("instance").classifier.unseen_weight == 2.0
    with pytest.raises(ConfigError, match="unknown row"):
        ablation_config("P&D")
    with pytest.raises(ConfigError, match="task"):
        authors_code_config("video")  # type: ignore[arg-type]


@pytest.mark.parametrize("data, needle", [
    ({"lr_milestones": [0.5]}, "lr_milestones .* need lr_schedule: step"),
    ({"query_norm": False}, "query_norm: false applies to primitive_attention: paper"),
    ({"classifier": {"schedule": "sequential"}}, "with classifier.schedule: sequential set "
                                                  "class_tie_weight: 0"),
    ({"generator_type": "gmmn"}, "structure_class_vectors: projected"),
    ({"class_tie_weight": -1}, "class_tie_weight must be >= 0"),
    ({"relation_scorer": "mlp"}, "relation_scorer must be one of"),
    ({"classifier": {"schedule": "alternate"}}, "schedule must be one of"),
])
def test_issue13_switches_refuse_bad_combinations_in_one_line(data, needle):
    with pytest.raises(ConfigError, match=needle) as info:
        from_dict(PADingConfig, data, where="pading.yaml").validate()
    assert "\n" not in str(info.value)


def test_new_switches_at_their_defaults_leave_the_config_document_unchanged():
    """Issue-13 fields are added_field: at their defaults they are not in to_dict, so a config
    that does not mention them keeps its document and hash; set, they are recorded."""
    doc = to_dict(PADingConfig())
    for name in ("query_norm", "identical_layer_init", "class_tie_weight", "class_tie_logits",
                 "relation_scorer", "relation_classes", "structure_class_vectors",
                 "structure_averaging", "lr_schedule"):
        assert name not in doc
    assert "schedule" not in doc["classifier"]
    changed = to_dict(PADingConfig(relation_scorer="dot", classifier=ClassifierConfig(
        schedule="sequential"), class_tie_weight=0.0))
    assert changed["relation_scorer"] == "dot" and changed["classifier"]["schedule"] == (
        "sequential")
    assert from_dict(PADingConfig, changed) == PADingConfig(
        relation_scorer="dot", classifier=ClassifierConfig(schedule="sequential"),
        class_tie_weight=0.0)
