"""The code against the authors' recipe, term by term (issue 13).

Sources: the PADing repository (heshuting555/PADing: ``PADing/PADing_model.py`` = PM,
``PADing/modeling/transformer_decoder/transformer.py`` = TR, ``PADing/utils/network_utils.py`` =
NU, ``engine_ours/train_loop.py`` = TL, ``engine_ours/defaults.py`` = DF, ``PADing/config.py`` =
CF, ``configs/<task>/PADing.yaml`` = Y) and ZS3 (valeoai/ZS3: ``zs3/train_pascal_GMMN.py`` = ZT,
``zs3/modeling/gmmn.py`` = ZG, ``zs3/utils/loss.py`` = ZL). Every expected value below is written
out by hand from those files, not read from our code.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zeroseg.methods.common import (
    LOG_SIGMAS,
    SIGMA_PRESETS,
    AdamStepper,
    ClassifierConfig,
    MMDProbe,
    per_class_mmd,
    poly_factor,
    run_generator_loop,
    seeded,
)
from zeroseg.methods.gmmn import GMMNConfig, train_gmmn
from zeroseg.methods.gmmn import generator_recipe as gmmn_recipe
from zeroseg.methods.pading import (
    LAYER_ORDER,
    PAPER_LAYER_ORDER,
    PADingConfig,
    PADingModel,
    PrimitiveGenerator,
    RelationNet,
    authors_code_config,
    class_tie_loss,
    generator_recipe,
    pading_losses,
    reconstruction_loss,
    relation_loss,
    train_generator,
    unrelated_kl_loss,
)
from zeroseg.platform.config import to_dict
from zeroseg.platform.errors import ConfigError


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _t(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


# -- authors_code_config(), term by term --------------------------------------------------------

#: The semantic recipe: (value, where it is in the authors' code). Every PADingConfig field
#: must be listed here or in NOT_IN_THE_CODE, so a new knob cannot slip past this test.
SEMANTIC = {
    "generator_type": ("primitives", "PM L147-150: TransformerDecoder over nn.Embedding"),
    "alignment": (True, "PM L367, L386-392"),
    "disentanglement": (True, "PM L356-360, L377-381"),
    "num_primitives": (400, "Y TRANS_MEMORY_NUM_QUERY 400"),
    "layers": (3, "Y TRANS_NUM_LAYER 3"),
    "heads": (8, "PM L148: TransformerDecoderLayer(256, 8, ...)"),
    "ffn_dim": (None, "PM L148: 1024 = 4 x 256 (None: 4 x width)"),
    "dropout": (0.3, "Y semantic TRANS_DROP_RATE 0.3"),
    "noise": (True, "CF NOISE True; TR L287-288"),
    "noise_std": (1.0, "TR L288: torch.randn"),
    "primitive_attention": ("code", "TR L262-293: self-attn over the query, memory = primitives"),
    "query_norm": (True, "TR L273: norm1 on the query before the cross-attention"),
    "output_head": ("layernorm", "PM L149-150: decoder_norm, no linear"),
    "identical_layer_init": (True, "TR L108, L360-361: _get_clones deep-copies one layer"),
    "helper_dropout": (0.2, "CF DROP_OUT_ED 0.2 (semantic yaml leaves it)"),
    "encoder_layout": ("code", "NU Encoder: Linear, Linear, LeakyReLU, Dropout"),
    "sigmas": ("code", "PM L117-118: GMMNLoss(sigma=[2, 5, 10, 20, 40, 80])"),
    "kernel_scale": ("variance", "NU L68-78: exp(... / v), v acts as sigma^2"),
    "mmd_form": ("sqrt", "NU L81: torch.sqrt(loss)"),
    "mmd_grouping": ("batch", "PM L342-349: one MMD over every matched query"),
    "class_tie_weight": (1e-3, "PM L353-354: 0.001 * cls_criterion(new_fc(...))"),
    "class_tie_logits": ("seen", "PM L353: [:, :156] = COCO-Stuff's seen logits"),
    "structure_weight": (1e-3, "Y semantic STRUCTURE_WEIGHT 1e-3"),
    "tau": (0.1, "PM L718-722: kl_loss T = 0.1"),
    "w1": (1.0, "CF WEIGHT_1 1"),
    "w2": (0.2, "CF WEIGHT_2 1 x PM L393: relation_loss = 0.2 * ..."),
    "w3": (0.5, "Y WEIGHT_3 0.5"),
    "relation_scorer": ("relationnet", "NU L85-100 RelationNet; PM L362, L383"),
    "relation_classes": ("grouped", "PM L362-364 (all classes), L383-385 (unseen only)"),
    "structure_class_vectors": ("projected", "PM L344, L372: fc_projection(vec), trainable"),
    "structure_averaging": ("per_group", "PM L393-395: (seen + unseen) / 2"),
    "structure_on_real": (False, "PM L356-390: fakes only in E_R / E_U / D / alignment"),
    "kl_direction": ("code", "PM L718-722: kl_div(log pred, log target) = KL(target || pred)"),
    "unrelated_kl": ("sample", "PM L359, L365: kl_loss(unrelated, N(0, 1) sample)"),
    "unseen_per_class": (1, "PM L371-375: one fake per unseen class"),
    "lr": (5e-4, "Y semantic GENERATOR_LR 5e-4"),
    "lr_schedule": ("poly", "Base-COCOStuff-171.yaml WarmupPolyLR, DF L403 (generator only)"),
    "lr_milestones": ([], "poly: no milestones"),
    "steps": (2000, "Y semantic MAX_ITER 2000"),
}
SEMANTIC_CLASSIFIER = {
    "schedule": ("interleaved", "TL L478-501: classifier step after every generator step"),
    "lr": (1e-3, "Y BASE_LR 1e-3; DF L378-393 SGD"),
    "momentum": (0.9, "DF L378-393"),
    "weight_decay": (5e-4, "DF L378-393"),
    "num_choose": (17, "CF NUM_CHOOSE 17 (semantic yaml leaves it): every unseen class"),
    "fakes_per_class": (1, "PM L431-449: one fake per chosen class"),
    "unseen_weight": (5.0, "Y CLASS_ECO 5"),
    "no_object_weight": (0.1, "PM L452-457 NO_OBJECT_WEIGHT 0.1"),
    "sample_in_train_mode": (True, "TL L455: the model stays in train mode"),
    "batch_size": (None, "rows per step: every query of images_per_step images"),
    "images_per_step": (12, "IMS_PER_BATCH 12 (x 100 queries = 1,200 rows in the code)"),
    "steps": (2000, "one per generator step"),
}
#: zeroseg's own, each a row of the module table (or not a recipe value).
NOT_IN_THE_CODE = {"hidden_dim", "helper_hidden", "unrelated_dim", "classes_per_step", "gmmn",
                   "batch_size", "normalize_class_embeddings", "log_every", "classifier", "seed"}
TASKS = {
    "panoptic": {"dropout": 0.1, "helper_dropout": 0.1, "structure_weight": 1e-4,
                 "steps": 20000, "lr_schedule": "step", "lr_milestones": [0.7, 0.925],
                 "class_tie_logits": "all", "classifier.num_choose": 5,
                 "classifier.unseen_weight": 5.0, "classifier.steps": 20000},
    "instance": {"dropout": 0.1, "helper_dropout": 0.1, "structure_weight": 1e-3,
                 "steps": 4000, "lr_schedule": "step", "lr_milestones": [],
                 "class_tie_logits": "all", "classifier.num_choose": 5,
                 "classifier.unseen_weight": 2.0, "classifier.steps": 4000},
}


def test_every_config_field_is_accounted_for():
    fields = {f.name for f in dataclasses.fields(PADingConfig)}
    assert fields == set(SEMANTIC) | NOT_IN_THE_CODE
    classifier = {f.name for f in dataclasses.fields(ClassifierConfig)}
    assert classifier == set(SEMANTIC_CLASSIFIER) | {"init", "log_every"}


@pytest.mark.parametrize("task", ["semantic", "panoptic", "instance"])
def test_authors_code_config_term_by_term(task):
    cfg = authors_code_config(task)
    expected = {k: v for k, (v, _) in SEMANTIC.items()}
    expected.update({f"classifier.{k}": v for k, (v, _) in SEMANTIC_CLASSIFIER.items()})
    expected.update(TASKS.get(task, {}))
    for key, want in expected.items():
        obj, name = (cfg.classifier, key.split(".", 1)[1]) if key.startswith("classifier.") \
            else (cfg, key)
        got = getattr(obj, name)
        if isinstance(want, float):
            assert got == pytest.approx(want), key
        else:
            assert got == want, key
    cfg.validate()


def test_default_is_the_semantic_recipe_and_its_document_is_unchanged_by_new_fields():
    assert PADingConfig() == authors_code_config("semantic")
    assert "class_tie_weight" not in to_dict(PADingConfig())  # added_field at its default


# -- the generator layer, against the documented order ---------------------------------------


def _by_hand(layer, query: torch.Tensor, primitives: torch.Tensor, noise: torch.Tensor,
             order: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the named steps of ``order`` one by one (eval mode: dropout is the identity)."""
    state = {"q": query, "p": primitives, "residual": None}

    def attend(attn, q, kv):
        out, _ = attn(q.unsqueeze(0), kv.unsqueeze(0), kv.unsqueeze(0), need_weights=False)
        return out.squeeze(0)

    for step in order:
        q, p = state["q"], state["p"]
        if step == "self_attn(query)":  # each sample's own length-1 sequence
            state["residual"] = q
            out, _ = layer.self_attn(q.unsqueeze(1), q.unsqueeze(1), q.unsqueeze(1),
                                     need_weights=False)
            state["q"] = out.squeeze(1)
        elif step == "self_attn(primitives)":
            state["residual_p"] = p
            state["p"] = attend(layer.self_attn, p, p)
        elif step == "norm1(primitives)":
            state["p"] = layer.norm1(state["p"])
        elif step == "cross_attn(query -> primitives)":
            state["residual"] = q
            state["q"] = attend(layer.cross_attn, q, p)
        elif step == "ffn":
            state["residual"] = q
            state["q"] = layer.ffn(q)
        elif step == "+ residual":
            if "residual_p" in state:  # the primitives' residual, once
                state["p"] = state["p"] + state.pop("residual_p")
            else:
                state["q"] = state["q"] + state["residual"]
        elif step == "+ noise":
            state["q"] = state["q"] + noise
        elif step in ("norm1", "norm2", "norm3"):
            state["q"] = getattr(layer, step)(state["q"])
        else:
            raise AssertionError(f"unknown step {step!r}")
    return state["q"], state["p"]


@pytest.mark.parametrize("attention, order", [("code", LAYER_ORDER),
                                              ("paper", PAPER_LAYER_ORDER)])
def test_layer_follows_the_documented_order(attention, order):
    torch.manual_seed(0)
    gen = PrimitiveGenerator(6, 16, num_primitives=9, layers=1, heads=4, attention=attention,
                             dropout=0.3).eval()
    layer = gen.layers[0]
    q, p, z = _t(5, 16, seed=1), _t(9, 16, seed=2), _t(5, 16, seed=3)
    want_q, want_p = _by_hand(layer, q, p, z, order)
    got_q, got_p = layer(q, p, z)
    torch.testing.assert_close(got_q, want_q)
    torch.testing.assert_close(got_p, want_p if attention == "paper" else p)
    # a permuted order gives other numbers: the test can fail
    swapped = list(order)
    i, j = swapped.index("+ noise"), swapped.index("norm2")
    swapped[i], swapped[j] = swapped[j], swapped[i]
    assert not torch.allclose(_by_hand(layer, q, p, z, tuple(swapped))[0], got_q)


def test_module_docstring_lists_the_order_and_the_table():
    import zeroseg.methods.pading as module

    doc = module.__doc__
    assert "self-attention over the query" in doc and "final LayerNorm" in doc
    for switch in ("primitive_attention", "query_norm", "output_head", "mmd_grouping",
                   "class_tie_weight", "relation_scorer", "classifier.schedule", "lr_schedule"):
        assert switch in doc, switch


def test_generator_ends_with_a_layernorm_and_copies_its_first_layer():
    torch.manual_seed(0)
    gen = PrimitiveGenerator(6, 16, num_primitives=9, layers=3, heads=4).eval()
    out = gen(_t(7, 6, seed=4), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.mean(1), torch.zeros(7), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(1, unbiased=False), torch.ones(7), atol=1e-3, rtol=0)
    first = gen.layers[0].state_dict()
    for layer in gen.layers[1:]:
        for name, value in layer.state_dict().items():
            assert torch.equal(value, first[name]), name
    torch.manual_seed(0)
    apart = PrimitiveGenerator(6, 16, num_primitives=9, layers=2, heads=4, identical_init=False)
    assert not torch.equal(apart.layers[0].cross_attn.in_proj_weight,
                           apart.layers[1].cross_attn.in_proj_weight)


def test_query_norm_puts_the_paper_query_on_the_noise_scale():
    """The issue's diagnosis: in the paper layout the first cross-attention reads the raw
    projected query (std ~0.1 per entry at initialisation, against noise of std 1);
    query_norm gives it unit scale, as the authors' norm1 does."""
    torch.manual_seed(0)
    a = F.normalize(_t(12, 64, seed=5), dim=1)
    seen: dict[str, torch.Tensor] = {}
    for norm in (False, True):
        gen = PrimitiveGenerator(64, 64, num_primitives=20, layers=1, heads=4,
                                 attention="paper", query_norm=norm).eval()
        layer = gen.layers[0]
        original = layer.read

        def record(query, primitives, noise, _norm=norm, _original=original):
            seen[str(_norm)] = query.detach()
            return _original(query, primitives, noise)

        layer.read = record
        gen(a, torch.Generator().manual_seed(0))
    assert seen["False"].std(1).mean() < 0.3
    assert seen["True"].std(1).mean() == pytest.approx(1.0, abs=0.05)


# -- loss terms against hand-computed cases ----------------------------------------------------


def _gmmn_loss_as_the_authors_write_it(gen: torch.Tensor, real: torch.Tensor,
                                       sigmas=(2, 5, 10, 20, 40, 80)) -> float:
    """The authors' GMMNLoss written out: X = [gen; real], the scale vector s = [-1/M...;
    +1/N...] (sign immaterial: it enters as s s^T), kernel exp((XX^T - X2/2 - X2^T/2) / v)."""
    x = torch.cat([gen, real]).double()
    xx = x @ x.t()
    x2 = (x * x).sum(1, keepdim=True)
    exponent = xx - 0.5 * x2 - 0.5 * x2.t()
    s = torch.cat([torch.full((len(gen), 1), -1.0 / len(gen)),
                   torch.full((len(real), 1), 1.0 / len(real))]).double()
    total = sum(float((s @ s.t() * torch.exp(exponent / v)).sum()) for v in sigmas)
    return math.sqrt(total)


def test_logged_mmd_is_the_authors_gmmn_loss_per_class():
    gen, real = _t(6, 5, seed=6, scale=2.0), _t(6, 5, seed=7, scale=2.0) + 0.5
    assert LOG_SIGMAS == SIGMA_PRESETS["code"] == (2.0, 5.0, 10.0, 20.0, 40.0, 80.0)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    got = per_class_mmd(gen, labels, real, labels, [0, 1])
    for k in (0, 1):
        want = _gmmn_loss_as_the_authors_write_it(gen[labels == k], real[labels == k])
        assert got[k].item() == pytest.approx(want, rel=1e-5)


def _tiny_model(**kw):
    cfg = dataclasses.replace(PADingConfig(num_primitives=6, layers=1, heads=4, steps=1,
                                           batch_size=8), **kw)
    torch.manual_seed(0)
    return cfg, PADingModel(5, 16, cfg).eval()


SEEN7, UNSEEN7 = torch.tensor([0, 2, 3, 5, 6]), torch.tensor([1, 4])


def test_class_tie_is_the_codes_cls_loss_on_seen_logits_with_no_gradient_to_the_head():
    fake = _t(6, 16, seed=8).requires_grad_(True)
    labels = torch.tensor([0, 2, 6, 5, 3, 0])
    head = torch.nn.Linear(16, 8)  # 7 classes + no-object
    got = class_tie_loss(fake, labels, head, SEEN7, "seen")
    logits = (fake @ head.weight.t() + head.bias)[:, [0, 2, 3, 5, 6]].detach().double()
    target = [0, 1, 4, 3, 2, 0]  # positions of the labels among the seen columns
    want = np.mean([float(torch.logsumexp(logits[i], 0) - logits[i, target[i]])
                    for i in range(6)])
    assert got.item() == pytest.approx(want, rel=1e-5)
    all_logits = (fake @ head.weight.t() + head.bias).detach()
    assert class_tie_loss(fake, labels, head, SEEN7, "all").item() == pytest.approx(
        F.cross_entropy(all_logits, labels).item(), rel=1e-6)
    got.backward()
    assert fake.grad.abs().sum() > 0 and head.weight.grad is None


def test_class_tie_enters_the_total_unscaled_by_lambda():
    cfg, model = _tiny_model(structure_weight=0.5)
    a = F.normalize(_t(7, 5, seed=9), dim=1)
    real, labels = _t(8, 16, seed=10), torch.tensor([0, 2, 3, 5, 6, 0, 2, 3])
    head = torch.nn.Linear(16, 8)
    terms = pading_losses(model, real, labels, a, UNSEEN7, cfg,
                          torch.Generator().manual_seed(0), head=head, seen_idx=SEEN7)
    assert terms.weighted["tie"].item() == pytest.approx(1e-3 * terms.raw["tie"].item())
    with pytest.raises(Exception, match="needs the classifier trained alongside"):
        pading_losses(model, real, labels, a, UNSEEN7, cfg, torch.Generator().manual_seed(0))


def test_relationnet_scores_are_sigmoid_mlp_of_concatenated_pairs():
    torch.manual_seed(0)
    net = RelationNet(4, 3)
    s, c = _t(2, 4, seed=11), _t(5, 3, seed=12)
    got = net(s, c)
    assert got.shape == (2, 5)
    for i in range(2):
        for k in range(5):
            h = F.relu(net.fc1(torch.cat([s[i], c[k]])))
            assert got[i, k].item() == pytest.approx(torch.sigmoid(net.fc2(h)).item(), rel=1e-6)


def test_relation_loss_grouped_per_group_is_the_codes():
    """Seen rows: CE over every class; unseen rows: CE over the unseen classes only, targets =
    position among them; relation = (seen + unseen) / 2, scores used as logits as they are."""
    cfg, model = _tiny_model()
    vectors = _t(7, 16, seed=13)
    related = _t(5, 16, seed=14)
    labels = torch.tensor([0, 3, 6, 1, 4])  # 3 seen rows, then the unseen ones
    got = relation_loss(model, related, labels, 3, vectors, UNSEEN7, cfg).item()
    with torch.no_grad():
        scores_s = model.relation(related[:3], vectors)
        scores_u = model.relation(related[3:], vectors[UNSEEN7])
    ce_s = np.mean([float(torch.logsumexp(scores_s[i], 0) - scores_s[i, labels[i]])
                    for i in range(3)])
    ce_u = np.mean([float(torch.logsumexp(scores_u[i], 0) - scores_u[i, i]) for i in range(2)])
    assert got == pytest.approx((ce_s + ce_u) / 2, rel=1e-5)
    pooled = dataclasses.replace(cfg, structure_averaging="pooled")
    assert relation_loss(model, related, labels, 3, vectors, UNSEEN7, pooled).item() == (
        pytest.approx((3 * ce_s + 2 * ce_u) / 5, rel=1e-5))


def test_structure_terms_are_per_group_means_over_fakes_with_projected_vectors():
    cfg, model = _tiny_model(unrelated_kl="gaussian")  # deterministic E_U term
    a = F.normalize(_t(7, 5, seed=15), dim=1)
    real, labels = _t(8, 16, seed=16), torch.tensor([0, 2, 3, 5, 6, 0, 2, 3])
    head = torch.nn.Linear(16, 8)
    terms = pading_losses(model, real, labels, a, UNSEEN7, cfg,
                          torch.Generator().manual_seed(1), head=head, seen_idx=SEEN7)
    f = terms.features
    assert torch.equal(f["seen"], f["fake_seen"])  # fakes only
    torch.testing.assert_close(f["class_vectors"], model.generator.query_proj(a))
    with torch.no_grad():
        related = model.related(torch.cat([f["seen"], f["fake_unseen"]]))
        unrelated = model.unrelated(torch.cat([f["seen"], f["fake_unseen"]]))
        decoded = model.decoder(torch.cat([related, unrelated], 1))
    n = 8
    want_recon = (reconstruction_loss(f["seen"], decoded[:n])
                  + reconstruction_loss(f["fake_unseen"], decoded[n:])) / 2
    want_unrel = (unrelated_kl_loss(unrelated[:n], "gaussian", 0.1)
                  + unrelated_kl_loss(unrelated[n:], "gaussian", 0.1)) / 2
    assert terms.raw["recon"].item() == pytest.approx(want_recon.item(), rel=1e-5)
    assert terms.raw["unrelated"].item() == pytest.approx(want_unrel.item(), rel=1e-5)
    lam = cfg.structure_weight
    assert terms.weighted["rel"].item() == pytest.approx(lam * 0.2 * terms.raw["rel"].item())
    assert terms.weighted["recon"].item() == pytest.approx(lam * 0.5 * terms.raw["recon"].item())
    # the structure losses train the projection that makes the class vectors
    model.train()
    model.zero_grad()
    terms = pading_losses(model, real, labels, a, UNSEEN7, cfg,
                          torch.Generator().manual_seed(1), head=head, seen_idx=SEEN7)
    (terms.weighted["rel"] + terms.weighted["align"]).backward()
    assert model.generator.query_proj.weight.grad.abs().sum() > 0


# -- the schedule -------------------------------------------------------------------------------


def _data(seed: int = 0, classes: int = 7, per: int = 12, dim: int = 16):
    g = np.random.default_rng(seed)
    centres = g.normal(size=(classes, dim)) * 2
    y = np.repeat(np.arange(classes), per)
    x = (centres[y] + 0.3 * g.normal(size=(len(y), dim))).astype(np.float32)
    a = g.normal(size=(classes, 6)).astype(np.float32)
    seen = np.array([c for c in range(classes) if c not in (1, 4)])
    keep = np.isin(y, seen)
    return x[keep], y[keep], a, seen, np.array([1, 4])


def test_poly_learning_rate_at_start_half_and_end():
    x, y, a, seen, unseen = _data()
    cfg = PADingConfig(num_primitives=6, layers=1, heads=4, steps=8, batch_size=16, log_every=1)
    result = train_generator(x, y, a, seen, unseen, cfg, seed=0)
    lrs = [h["lr"] for h in result.history]  # the lr after each step's update
    assert lrs[3] == pytest.approx(5e-4 * (1 - 4 / 8) ** 0.9, rel=1e-6)  # half way
    assert lrs[-1] == 0.0  # the end
    assert poly_factor(0, 8) == 1.0 and poly_factor(4, 8) == pytest.approx(0.5 ** 0.9)
    step = dataclasses.replace(cfg, lr_schedule="step", lr_milestones=[0.5])
    lrs = [h["lr"] for h in train_generator(x, y, a, seen, unseen, step, seed=0).history]
    assert lrs[2] == pytest.approx(5e-4) and lrs[4] == pytest.approx(5e-5)


@pytest.mark.parametrize("method", ["pading", "gmmn"])
def test_interleaved_schedule_steps_the_classifier_after_each_generator_step(method):
    """Per step: the generator's update, then one classifier step on fakes of the generator
    just updated (train mode), one per unseen class; the head trains as many steps as the
    generator."""
    x, y, a, seen, unseen = _data()
    events: list[tuple] = []
    if method == "pading":
        cfg = PADingConfig(num_primitives=6, layers=1, heads=4, steps=3, batch_size=16,
                           log_every=1)
        build = generator_recipe
    else:
        cfg = GMMNConfig(steps=3, batch_size=16, log_every=1)
        build = gmmn_recipe
    with seeded(0) as rng:
        recipe = build(x, y, a, seen, unseen, cfg)
        head = recipe.head
        stepper = AdamStepper(recipe)
        inner_step = stepper.step

        def gen_step(total):
            inner_step(total)
            events.append(("generator", [p.clone() for p in recipe.net.parameters()]))

        stepper.step = gen_step
        inner_sample = head.step

        def head_step(sample):
            def watched(labels):
                fakes = sample(labels)
                params = [p.clone() for p in recipe.net.parameters()]
                events.append(("head", params, labels.tolist(), recipe.net.training))
                return fakes
            return inner_sample(watched)

        head.step = head_step
        history = run_generator_loop(recipe, rng, stepper)
    assert [e[0] for e in events] == ["generator", "head"] * 3
    for g, h in zip(events[0::2], events[1::2], strict=True):
        assert all(torch.equal(p, q) for p, q in zip(g[1], h[1], strict=True))  # just updated
        assert sorted(h[2]) == [1, 4] and h[3] is True  # one per unseen class, train mode
    assert len(history) == 3 and all("head" in h and "mmd" in h for h in history)


def test_mmd_probe_does_not_change_training():
    x, y, a, seen, unseen = _data()
    cfg = PADingConfig(num_primitives=6, layers=1, heads=4, steps=6, batch_size=16)
    rare = dataclasses.replace(cfg, log_every=6)
    often = dataclasses.replace(cfg, log_every=1)
    one = train_generator(x, y, a, seen, unseen, rare, seed=2)
    two = train_generator(x, y, a, seen, unseen, often, seed=2)
    assert one.history[-1] == two.history[-1]
    for (k, p), (_, q) in zip(one.model.state_dict().items(), two.model.state_dict().items(),
                              strict=True):
        assert torch.equal(p, q), k
    probe = MMDProbe(torch.as_tensor(y), classes=3, rows=4)
    assert len(probe.classes) == 3 and len(probe.rows) == 12


# -- GMMN against ZS3Net ------------------------------------------------------------------------

GMMN_ZS3 = {
    "net.hidden_dim": (256, "ZT L602-605: Linear(600, 256)"),
    "net.dropout": (0.5, "ZG L17-32: Dropout(0.5)"),
    "net.noise": ("uniform", "ZT L216: torch.rand"),
    "net.leaky_slope": (0.2, "ZG: LeakyReLU(0.2)"),
    "sigmas": ("code", "ZT L79-81: GMMNLoss(sigma=[2, 5, 10, 20, 40, 80])"),
    "kernel_scale": ("variance", "ZL L84-115: exp(... / v)"),
    "mmd_form": ("sqrt", "ZL: torch.sqrt(loss)"),
    "mmd_grouping": ("class", "ZT L209-240: one MMD per (image, class)"),
    "classes_per_step": (1, "ZT L209-240: one Adam step per class"),
    "batch_size": (128, "ZT: batch_size_generator 128 pairs"),
    "lr": (2e-4, "ZT L65-67, L606: Adam 2e-4, no scheduler"),
    "classifier.schedule": ("interleaved", "ZT L261-267: a classifier step per iteration"),
}


def test_gmmn_defaults_follow_zs3net():
    cfg = GMMNConfig()
    for key, (want, _) in GMMN_ZS3.items():
        obj = cfg
        for part in key.split(".")[:-1]:
            obj = getattr(obj, part)
        assert getattr(obj, key.split(".")[-1]) == want, key


def test_gmmn_logs_the_same_mmd_form_and_trains_a_head_alongside():
    x, y, a, seen, unseen = _data()
    result = train_gmmn(x, y, a, seen, unseen, GMMNConfig(steps=4, batch_size=16, log_every=2),
                        seed=0)
    assert [h["step"] for h in result.history] == [2.0, 4.0]
    assert all(h["mmd"] > 0 and h["head"] > 0 for h in result.history)
    assert result.generator.classifier is not None
    sequential = GMMNConfig(steps=2, batch_size=16,
                            classifier=ClassifierConfig(schedule="sequential"))
    assert train_gmmn(x, y, a, seen, unseen, sequential, seed=0).generator.classifier is None


@pytest.mark.parametrize("path, task", [("coco_stuff_spnet_156_15.yaml", "semantic"),
                                        ("coco_panoptic_zsp_119_14.yaml", "panoptic"),
                                        ("coco2014_zsi_48_17.yaml", "instance"),
                                        ("coco2014_zsi_65_15.yaml", "instance")])
def test_paper_benchmark_configs_run_the_authors_recipe_of_their_task(path, task):
    """configs/<benchmark>.yaml's PADing is authors_code_config(task) (the classifier's own
    step count is not used by the interleaved schedule)."""
    from pathlib import Path

    from zeroseg.platform.pipeline.config import load_pipeline_config

    config = load_pipeline_config(Path(__file__).resolve().parents[1] / "configs" / path)
    got = config.method_config("pading")
    want = authors_code_config(task)
    assert dataclasses.replace(got, classifier=dataclasses.replace(
        got.classifier, steps=want.classifier.steps)) == want


def test_classifier_batch_is_the_queries_of_twelve_images_of_the_segmenter_at_hand():
    from zeroseg.methods.common import classifier_rows

    tiny = np.repeat(np.arange(30), 20)  # 30 images x 20 queries (the tiny segmenter)
    assert classifier_rows(ClassifierConfig(), tiny).batch_size == 12 * 20
    authors = np.repeat(np.arange(30), 100)  # Mask2Former's 100 queries: the code's 1,200 rows
    assert classifier_rows(ClassifierConfig(), authors).batch_size == 1200
    assert classifier_rows(ClassifierConfig(images_per_step=2), tiny).batch_size == 40
    assert classifier_rows(ClassifierConfig(batch_size=500), tiny).batch_size == 500
    with pytest.raises(ConfigError, match="images_per_step must be >= 1"):
        ClassifierConfig(images_per_step=0).validate()
