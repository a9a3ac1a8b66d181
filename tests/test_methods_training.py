"""The training routines on a toy zero-shot problem: features are a fixed linear map of the class
embedding plus noise, so a generator that learns the map on seen classes can synthesise unseen
classes' features. Checks behaviour (unseen classes recovered, the projection baseline's bias
towards seen classes), determinism, input validation and saving/loading."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from zeroseg.methods.common import (
    ClassifierConfig,
    ClassRoles,
    TorchClassifier,
    class_weights,
    load_classifier,
    retrain_classifier,
    save_classifier,
    save_generator,
)
from zeroseg.methods.gmmn import GMMNConfig, train_gmmn
from zeroseg.methods.pading import (
    PADingConfig,
    ablation_config,
    load_generator,
    train_generator,
)
from zeroseg.methods.projection import ProjectionConfig, train_projection
from zeroseg.platform.errors import DataError, LeakageError


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small tensors: one thread each, so two xdist workers do not oversubscribe two cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@dataclass
class Toy:
    a: np.ndarray  # [C, d] class embeddings
    seen: np.ndarray
    unseen: np.ndarray
    x: np.ndarray  # real matched embeddings of seen classes
    y: np.ndarray
    x_all: np.ndarray  # + no-object queries (target C), for classifiers
    y_all: np.ndarray
    x_test: np.ndarray  # every class, seen and unseen
    y_test: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.a)


def make_toy(seed: int, C: int = 12, U: int = 3, d: int = 8, D: int = 16, per_class: int = 60,
             noise: float = 0.3) -> Toy:
    g = np.random.default_rng(seed)
    a = g.normal(size=(C, d)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    projection = (1.5 * g.normal(size=(d, D))).astype(np.float32)
    seen, unseen = np.arange(C - U), np.arange(C - U, C)

    def draw() -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(C), per_class)
        x = a[y] @ projection + noise * g.normal(size=(len(y), D))
        return x.astype(np.float32), y

    x, y = draw()
    x_test, y_test = draw()
    keep = np.isin(y, seen)
    no_object = (2.0 * g.normal(size=(200, D))).astype(np.float32)
    x_all = np.concatenate([x[keep], no_object])
    y_all = np.concatenate([y[keep], np.full(len(no_object), C)])
    return Toy(a, seen, unseen, x[keep], y[keep], x_all, y_all, x_test, y_test)


def accuracies(toy: Toy, classifier: TorchClassifier) -> tuple[float, float, float]:
    """(seen accuracy, unseen accuracy, share of unseen queries labelled with a seen class),
    argmax over the C classes (GZSL)."""
    pred = classifier(toy.x_test)[:, :toy.num_classes].argmax(1)
    s = np.isin(toy.y_test, toy.seen)
    return (float((pred[s] == toy.y_test[s]).mean()), float((pred[~s] == toy.y_test[~s]).mean()),
            float(np.isin(pred[~s], toy.seen).mean()))


FAST_CLASSIFIER = ClassifierConfig(steps=200, batch_size=256, lr=0.05, num_choose=3,
                                   fakes_per_class=20, log_every=50, schedule="sequential")


@pytest.fixture(scope="module")
def toy() -> Toy:
    return make_toy(2)


@pytest.fixture(scope="module")
def gmmn_classifier(toy):
    cfg = GMMNConfig(steps=300, batch_size=64, lr=3e-3, log_every=10, classes_per_step=8,
                     classifier=FAST_CLASSIFIER)
    gen = train_gmmn(toy.x, toy.y, toy.a, toy.seen, toy.unseen, cfg, seed=0)
    result = retrain_classifier(toy.x_all, toy.y_all, gen.generator, toy.unseen,
                                cfg.classifier, seed=0)
    return gen, result


def test_retrained_classifier_recovers_unseen_classes(toy, gmmn_classifier):
    gen, result = gmmn_classifier
    seen_acc, unseen_acc, unseen_as_seen = accuracies(toy, result.classifier)
    assert seen_acc >= 0.9
    assert unseen_acc >= 0.8  # chance is 1/12
    assert unseen_as_seen <= 0.15
    assert result.linear.weight.shape == (toy.num_classes + 1, toy.x.shape[1])
    assert gen.history[-1]["gen"] < 0.4 * gen.history[0]["gen"]  # the MMD fell


def test_without_synthetic_features_unseen_classes_are_never_predicted(toy, gmmn_classifier):
    """A control: the same retraining with the synthetic features' weight near zero leaves the
    unseen classes unpredicted, so the recovery above comes from the synthetic features."""
    gen, _ = gmmn_classifier
    muted = dataclasses.replace(FAST_CLASSIFIER, fakes_per_class=1, unseen_weight=1e-6)
    result = retrain_classifier(toy.x_all, toy.y_all, gen.generator, toy.unseen, muted, seed=0)
    _, unseen_acc, unseen_as_seen = accuracies(toy, result.classifier)
    assert unseen_acc <= 0.2 and unseen_as_seen >= 0.8


def test_projection_predicts_over_all_classes_and_is_biased_to_seen(toy, gmmn_classifier):
    cfg = ProjectionConfig(steps=200, batch_size=256, lr=1e-2)
    result = train_projection(toy.x_all, toy.y_all, toy.a, toy.seen, toy.unseen, cfg, seed=0)
    logits = result.classifier(toy.x_test)
    assert logits.shape == (len(toy.x_test), toy.num_classes + 1) and np.isfinite(logits).all()
    # A query projected exactly onto an unseen class embedding is labelled with that class:
    # the unseen classes are part of the inference classifier.
    module = result.module
    u = int(toy.unseen[0])
    target = torch.as_tensor(toy.a[u]) - module.visual.bias.detach()
    q = torch.linalg.lstsq(module.visual.weight.detach(), target.unsqueeze(1)).solution.T
    assert int(result.classifier(q).argmax(1)) == u
    # The bias: real unseen queries mostly land on seen classes; the generative method's
    # retrained classifier does not make that error.
    seen_acc, unseen_acc, unseen_as_seen = accuracies(toy, result.classifier)
    _, gen_unseen_acc, gen_unseen_as_seen = accuracies(toy, gmmn_classifier[1].classifier)
    assert seen_acc >= 0.8
    assert unseen_as_seen >= 0.5
    assert unseen_acc <= seen_acc - 0.4
    assert gen_unseen_acc >= unseen_acc + 0.4
    assert gen_unseen_as_seen <= unseen_as_seen - 0.4


def test_pading_generator_learns_class_conditional_features(toy):
    # The toy's features are not LayerNormed (the segmenter's are): a linear output head; the
    # per-class MMD makes 200 steps enough (the default's class-mixed MMD leaves the class to
    # the tie and needs longer: tests/test_methods_fidelity.py).
    cfg = PADingConfig(steps=200, num_primitives=16, layers=1, heads=4, batch_size=64, lr=3e-3,
                       log_every=50, output_head="linear", mmd_grouping="class")
    calls: list[int] = []
    result = train_generator(toy.x, toy.y, toy.a, toy.seen, toy.unseen, cfg, seed=0,
                             on_step=lambda step, metrics: calls.append(step))
    assert calls == [50, 100, 150, 200]
    first, last = result.history[0], result.history[-1]
    assert set(first) == {"step", "lr", "gen", "tie", "rel", "unrelated", "recon", "align",
                          "align_ss", "align_uu", "align_su", "total", "head", "mmd"}
    assert last["gen"] ** 2 < 0.5 * first["gen"] ** 2  # the loss is sqrt(MMD^2): MMD^2 halved
    assert last["mmd"] < first["mmd"]
    # Synthetic seen features sit with their own class: nearest real class mean is correct.
    means = np.stack([toy.x[toy.y == c].mean(0) for c in toy.seen])
    labels = torch.as_tensor(np.repeat(toy.seen, 20))
    fake = result.generator.sample(labels, torch.Generator().manual_seed(1)).numpy()
    assert fake.shape == (len(labels), toy.x.shape[1])
    nearest = toy.seen[((fake[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)]
    assert (nearest == labels.numpy()).mean() >= 0.8


def test_training_is_deterministic_and_leaves_the_global_rng_alone(toy):
    cfg = ablation_config("P&A", PADingConfig(steps=6, num_primitives=8, layers=1, heads=4,
                                              batch_size=32, log_every=2))
    state = torch.random.get_rng_state()
    r1 = train_generator(toy.x, toy.y, toy.a, toy.seen, toy.unseen, cfg, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    r2 = train_generator(toy.x, toy.y, toy.a, toy.seen, toy.unseen, cfg, seed=3)
    r3 = train_generator(toy.x, toy.y, toy.a, toy.seen, toy.unseen, cfg, seed=4)
    assert r1.history == r2.history
    assert torch.equal(r1.model.generator.primitives, r2.model.generator.primitives)
    assert not torch.equal(r1.model.generator.primitives, r3.model.generator.primitives)


def test_classifier_callable_takes_numpy_and_tensors(toy, gmmn_classifier):
    clf = gmmn_classifier[1].classifier
    x = toy.x_test[:5]
    out_np = clf(x)
    out_t = clf(torch.as_tensor(x))
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_allclose(out_np, out_t.numpy())
    with pytest.raises(DataError, match=r"expected query embeddings \[Q, 16\]"):
        clf(toy.x_test[:5, :3])


def test_classifier_class_weights_and_initialisation(toy, gmmn_classifier):
    roles = ClassRoles.build(12, toy.seen, toy.unseen)
    w = class_weights(roles, 5.0, 0.1)
    assert w[toy.unseen].tolist() == [5.0] * 3 and w[12].item() == pytest.approx(0.1)
    assert w[toy.seen].tolist() == [1.0] * 9
    gen = gmmn_classifier[0].generator
    init_w = torch.zeros(13, 16)
    init_b = torch.arange(13, dtype=torch.float32)
    one = ClassifierConfig(steps=1, lr=1e-9, batch_size=8)
    result = retrain_classifier(toy.x_all, toy.y_all, gen, toy.unseen, one, seed=0,
                                init_weight=init_w, init_bias=init_b)
    torch.testing.assert_close(result.linear.bias.detach(), init_b, atol=1e-6, rtol=0)
    with pytest.raises(DataError, match="init_weight: expected shape"):
        retrain_classifier(toy.x_all, toy.y_all, gen, toy.unseen, one, init_weight=init_w[:3])


def test_unseen_labels_in_real_features_are_leakage(toy, gmmn_classifier):
    leaked = toy.y.copy()
    leaked[5] = toy.unseen[1]
    cfg = PADingConfig(steps=1, num_primitives=4, layers=1, heads=4)
    with pytest.raises(LeakageError, match="real_labels: 1 real training embeddings are "
                                           "labelled with unseen class 10"):
        train_generator(toy.x, leaked, toy.a, toy.seen, toy.unseen, cfg)
    with pytest.raises(LeakageError, match="real_labels"):
        train_gmmn(toy.x, leaked, toy.a, toy.seen, toy.unseen, GMMNConfig(steps=1))
    targets = toy.y_all.copy()
    targets[0] = toy.unseen[0]
    with pytest.raises(LeakageError, match="targets"):
        retrain_classifier(toy.x_all, targets, gmmn_classifier[0].generator, toy.unseen,
                           ClassifierConfig(steps=1))
    with pytest.raises(LeakageError, match="targets"):
        train_projection(toy.x_all, targets, toy.a, toy.seen, toy.unseen,
                         ProjectionConfig(steps=1))


@pytest.mark.parametrize("change,needle", [
    (lambda t: {"real_embeddings": t.x[:, :, None]}, "real_embeddings: expected a 2-d array"),
    (lambda t: {"real_labels": t.y[:-1]}, "540 embeddings but 539 labels"),
    (lambda t: {"real_labels": t.y.astype(np.float32)}, "expected integer class indices"),
    (lambda t: {"real_labels": np.where(t.y == 0, 12, t.y)}, r"must lie in \[0, 12\)"),
    (lambda t: {"class_embeddings": t.a[:5]}, r"seen_idx: class indices must lie in \[0, 5\)"),
    (lambda t: {"unseen_idx": np.array([9, 10, 11, 0])}, "class 0 is listed as both"),
    (lambda t: {"real_embeddings": np.where(t.x > 3, np.nan, t.x)}, "NaN"),
    (lambda t: {"seen_idx": t.seen[1:]}, "class 0 is neither in seen_idx nor in unseen_idx"),
])
def test_bad_inputs_name_the_argument(toy, change, needle):
    args = {"real_embeddings": toy.x, "real_labels": toy.y, "class_embeddings": toy.a,
            "seen_idx": toy.seen, "unseen_idx": toy.unseen}
    args.update(change(toy))
    cfg = PADingConfig(steps=1, num_primitives=4, layers=1, heads=4)
    with pytest.raises(DataError, match=needle):
        train_generator(config=cfg, **args)


def test_generator_save_and_load_round_trip(toy, tmp_path, gmmn_classifier):
    cfg = PADingConfig(steps=2, num_primitives=8, layers=2, heads=4, batch_size=16)
    trained = train_generator(toy.x, toy.y, toy.a, toy.seen, toy.unseen, cfg, seed=0).generator
    for gen, name in ((trained, "pading.pt"), (gmmn_classifier[0].generator, "gmmn.pt")):
        save_generator(tmp_path / name, gen)
        back = load_generator(tmp_path / name)
        assert back.kind == gen.kind
        labels = torch.as_tensor(toy.unseen)
        torch.testing.assert_close(back.sample(labels, torch.Generator().manual_seed(0)),
                                   gen.sample(labels, torch.Generator().manual_seed(0)))
    save_classifier(tmp_path / "head.pt", gmmn_classifier[1].linear)
    head = load_classifier(tmp_path / "head.pt")
    np.testing.assert_array_equal(head(toy.x_test[:4]), gmmn_classifier[1].classifier(
        toy.x_test[:4]))
    with pytest.raises(DataError, match="not a zeroseg classifier file"):
        load_classifier(tmp_path / "gmmn.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="bad.pt: not a zeroseg weights file"):
        load_generator(tmp_path / "bad.pt")
