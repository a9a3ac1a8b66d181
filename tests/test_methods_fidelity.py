"""Generator fidelity diagnostics (methods/fidelity.py): the numbers against hand-computed
cases, and -- on the tiny synthetic benchmark's validation protocol -- that they separate a
trained generator from a random one, and that the default PADing generator's fakes of the
held-out classes are class-separable after a short training.

"The tiny synthetic benchmark" here is its label space (the 32 attribute-composition classes,
held-out seen classes playing unseen: 20 train, 5 held out), its ``attributes`` class
embeddings, and real features built the way the segmenter's are structured: a LayerNormed sum
of one vector per attribute (colour, shape / texture, palette) plus noise. A segmenter is not
trained here (that is tests/test_pipeline.py, minutes); these features keep the test to
seconds and deterministic.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zeroseg.methods.common import TrainedGenerator
from zeroseg.methods.fidelity import fidelity, nearest_mean_accuracy, variance_ratio
from zeroseg.methods.gmmn import GMMNConfig, train_gmmn
from zeroseg.methods.pading import PADingConfig, build_generator, train_generator
from zeroseg.platform.errors import DataError


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# -- the numbers ------------------------------------------------------------------------------


def test_variance_ratio_and_nearest_mean_by_hand():
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [12.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1])
    # class means 1 and 11 (grand mean 6): between = 25; within = 1
    assert variance_ratio(x, y) == pytest.approx(25.0)
    means = torch.tensor([[1.0, 0.0], [11.0, 0.0]])
    assert nearest_mean_accuracy(x, y, means, [0, 1]) == {0: 1.0, 1: 1.0}
    swapped = means.flip(0)  # the fakes of class 0 sit where class 1 is
    assert nearest_mean_accuracy(x, y, swapped, [0, 1]) == {0: 0.0, 1: 0.0}


class _Fixed(torch.nn.Module):
    """A 'generator' that returns given class centres plus noise."""

    def __init__(self, centres: torch.Tensor, spread: float):
        super().__init__()
        self.centres, self.spread = centres, spread
        self.out_dim, self.embed_dim = centres.shape[1], centres.shape[1]

    def forward(self, class_vectors, rng=None):
        noise = torch.randn(class_vectors.shape, generator=rng)
        return class_vectors + self.spread * noise


def _gen(centres: torch.Tensor, spread: float) -> TrainedGenerator:
    return TrainedGenerator(_Fixed(centres, spread), centres, "test")


def test_fidelity_of_perfect_and_misplaced_fakes():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=g) * 3
    y = torch.tensor([1, 1, 1, 2, 2, 2, 3, 3, 3])
    x = centres[y] + 0.3 * torch.randn(9, 8, generator=g)
    good = fidelity(_gen(centres, 0.3), x, y, [1, 2, 3], class_names=["a", "b", "c", "d"])
    assert good["ncm_accuracy"] == 1.0 and good["chance"] == pytest.approx(1 / 3)
    assert [r["name"] for r in good["per_class"]] == ["b", "c", "d"]
    assert [r["real"] for r in good["per_class"]] == [3, 3, 3]
    assert good["variance_ratio"] > 10
    shuffled = centres[[0, 2, 3, 1]]  # every class generated at another class's place
    bad = fidelity(_gen(shuffled, 0.3), x, y, [1, 2, 3])
    assert bad["ncm_accuracy"] == 0.0 and bad["mmd"] > good["mmd"] + 0.3


def test_fidelity_refuses_bad_inputs_in_one_line():
    centres = torch.zeros(3, 4)
    x, y = torch.zeros(4, 4), torch.tensor([1, 1, 2, 2])
    for args, needle in [((x[:, :3], y, [1, 2]), "width 3 differs"),
                         ((x, y, [1]), "class 2 is not one of the held-out classes"),
                         ((x[:2], y[:2], [1, 2]), "at least two held-out classes"),
                         ((x, y[:3], [1, 2]), "4 embeddings but 3 labels")]:
        with pytest.raises(DataError, match=needle) as info:
            fidelity(_gen(centres, 0.1), *args)
        assert "\n" not in str(info.value)


# -- on the tiny synthetic benchmark's validation protocol -------------------------------------


@pytest.fixture(scope="module")
def tiny_validation():
    from zeroseg.platform.data.synthetic.vocabulary import synthetic_split
    from zeroseg.platform.embeddings import get_class_embeddings

    split = synthetic_split().validation_view()
    a = get_class_embeddings(split, {"provider": "attributes", "dim": 64, "noise": 0.1})
    g = np.random.default_rng(0)
    attrs = sorted({f"{k}={v}" for c in split.classes for k, v in c.attributes.items()
                    if k != "position"})
    vectors = {name: g.normal(size=32) for name in attrs}
    xs, ys = [], []
    for c in split.classes:
        parts = [f"{k}={v}" for k, v in c.attributes.items() if k != "position"]
        x = sum(vectors[p] for p in parts) + 0.5 * np.sqrt(len(parts)) * g.normal(size=(40, 32))
        xs.append((x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True))  # LayerNormed
        ys.append(np.full(40, c.index))
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys)
    seen = np.array([c.index for c in split.classes if not c.unseen])
    held = np.array([c.index for c in split.classes if c.unseen])  # the held-out classes
    train = np.isin(y, seen)
    return {"a": a, "x": x[train], "y": y[train], "seen": seen, "held": held,
            "x_held": x[~train], "y_held": y[~train]}


#: The default PADing config at the tiny benchmark's size (64 primitives, 4 heads for a width
#: of 32): a short training of 800 steps (the authors run 2000).
SHORT = dict(steps=800, num_primitives=64, heads=4, batch_size=64, log_every=100)


def _segmenter_like_head(data) -> tuple[torch.Tensor, torch.Tensor]:
    """What the pipeline starts the classifier from (``init="segmenter"``): a head that
    classifies the seen classes, zero rows for the held-out ones and no-object."""
    x, y = torch.as_tensor(data["x"]), torch.as_tensor(data["y"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = torch.nn.Linear(x.shape[1], len(data["a"]) + 1)
        opt = torch.optim.Adam(head.parameters(), lr=1e-2)
        for _ in range(200):
            loss = torch.nn.functional.cross_entropy(head(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    w, b = head.weight.detach().clone(), head.bias.detach().clone()
    w[data["held"]], b[data["held"]] = 0.0, 0.0
    w[-1], b[-1] = 0.0, 0.0
    return w, b


def _untrained(cfg: PADingConfig, data) -> TrainedGenerator:
    from zeroseg.methods.common import prepare_class_embeddings

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_generator(data["a"].shape[1], data["x"].shape[1], cfg).eval()
    return TrainedGenerator(net, prepare_class_embeddings(data["a"], True), "primitives")


@pytest.fixture(scope="module")
def default_pading(tiny_validation):
    d = tiny_validation
    cfg = PADingConfig(**SHORT)
    w, b = _segmenter_like_head(d)
    trained = train_generator(d["x"], d["y"], d["a"], d["seen"], d["held"], cfg, seed=0,
                              init_weight=w, init_bias=b)
    return cfg, trained


def test_default_pading_fakes_are_class_separable(tiny_validation, default_pading):
    """Done-when of issue 13: the default generator's fakes of the held-out classes, after a
    short training, sit with their own class: real held-out embeddings are labelled by the
    nearest fake class mean at >= 0.75 (chance 0.2; seeds 0, 1, 2 give 1.00, 0.97, 0.83),
    which an untrained generator of the same config does not reach (0.58). The default's
    class-mixed MMD leaves the class to the 0.001-weighted tie: at 300 steps seeds 1 and 2 are
    still at 0.47 and 0.77."""
    d = tiny_validation
    cfg, trained = default_pading
    assert cfg.primitive_attention == "code" and cfg.mmd_grouping == "batch"  # the defaults
    fid = fidelity(trained.generator, d["x_held"], d["y_held"], d["held"])
    rand = fidelity(_untrained(cfg, d), d["x_held"], d["y_held"], d["held"])
    assert fid["classes"] == 5 and fid["chance"] == pytest.approx(0.2)
    assert fid["ncm_accuracy"] >= 0.75
    assert rand["ncm_accuracy"] < 0.75


def test_the_diagnostic_separates_trained_from_random_generators(tiny_validation,
                                                                 default_pading):
    d = tiny_validation
    cfg, trained = default_pading
    gmmn = train_gmmn(d["x"], d["y"], d["a"], d["seen"], d["held"],
                      GMMNConfig(steps=300, batch_size=64, log_every=100), seed=0)
    for generator, untrained in ((trained.generator, _untrained(cfg, d)),
                                 (gmmn.generator, None)):
        fid = fidelity(generator, d["x_held"], d["y_held"], d["held"])
        if untrained is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                from zeroseg.methods.gmmn import GMMNGenerator

                net = GMMNGenerator(d["a"].shape[1], d["x"].shape[1]).eval()
            untrained = TrainedGenerator(net, generator.class_embeddings, "gmmn")
        rand = fidelity(untrained, d["x_held"], d["y_held"], d["held"])
        assert fid["ncm_accuracy"] >= rand["ncm_accuracy"] + 0.25
        assert fid["mmd"] < rand["mmd"]
        assert fid["variance_ratio"] > rand["variance_ratio"]


def test_unnormalised_paper_query_drowns_the_class_signal(tiny_validation):
    """The issue's diagnosis, measured: with the paper layout and a raw query the fakes hardly
    depend on the class (between/within variance near 0); query_norm restores it."""
    d = tiny_validation
    ratios = {}
    for norm in (False, True):
        cfg = PADingConfig(**{**SHORT, "steps": 300}, primitive_attention="paper",
                           query_norm=norm)
        result = train_generator(d["x"], d["y"], d["a"], d["seen"], d["held"], cfg, seed=0)
        ratios[norm] = fidelity(result.generator, d["x_held"], d["y_held"],
                                d["held"])["variance_ratio"]
    assert ratios[False] < 0.05
    assert ratios[True] > 4 * ratios[False]
