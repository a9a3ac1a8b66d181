"""The method registry: a method is a name, a config class, a kind and a ``fit`` function.

The platform (``zeroseg run``, sweeps, reproductions) knows nothing about any method: it builds
the inputs a method declares it needs -- the class embeddings, the segmenter's training features
from the feature cache, its own class head, the extra stages it lists -- calls the method's
:attr:`MethodSpec.fit` and runs inference and evaluation on what it returns. Adding a method is
one module in ``methods/`` with a module-level ``METHODS`` list of :class:`MethodSpec` (found by
:func:`registry`, which imports every module of this package that defines one, and the modules
named in ``$ZEROSEG_METHOD_MODULES``) and one search space in ``search_spaces/``. No method
imports Ray, DeepSpeed, ``zeroseg.platform.training`` or the store, and a method writes files
only under ``inputs.work_dir`` (or the folder a stage's ``build`` is handed).

Contract of ``fit(config, inputs, hooks) -> MethodOutput``:

- ``config``: an instance of ``spec.config_class`` (validated) with ``spec.defaults`` applied
  under the user's values;
- ``inputs``: :class:`MethodInputs` -- the label space (the test split, or the validation view
  whose "unseen" classes are held-out seen classes), its class embeddings, lazy access to the
  training features, the segmenter's head, the seed, the outputs of the method's extra stages
  (``inputs.stages[name]``: the folder the stage wrote) and, for a generative method, the
  platform's generator trainer (``inputs.train_generator``); on the validation protocol, the
  held-out classes' real embeddings, for diagnostics only;
- ``hooks.on_epoch(epoch, classifier)``: call it after each of ``hooks.epochs`` training rounds
  with the classifier as it is then (per-epoch validation, ASHA early stopping); it may raise
  :class:`StopTrial`, which the method lets propagate. ``hooks.on_curve(name, step, value)``
  records training curves.

Three kinds of method, each with a worked example below (and a tested one in
``tests/example_methods.py``):

**Classifier methods** (``kind="classifier"``, the default: projection, GMMN, PADing).
``MethodOutput.classifier`` maps query embeddings ``[Q, D]`` to logits ``[Q, C + 1]`` over the
label space + no-object; the platform runs the segmenter's inference with it and evaluates::

    @dataclass
    class NearestConfig:
        temperature: float = 0.1

    def _fit(config, inputs, hooks):
        queries = inputs.features("train_all")  # every query embedding with its target
        head = ...  # an nn.Module [Q, D] -> [Q, C + 1] from inputs.class_embeddings, trained
        classifier = TorchClassifier(head, inputs.num_classes, inputs.embed_dim)
        hooks.epoch(hooks.epochs, classifier)
        return MethodOutput(classifier=classifier)

    METHODS = [MethodSpec(name="nearest", label="Nearest", config_class=NearestConfig,
                          fit=_fit, features=("train_all",))]

A *generative* classifier method also declares its generator recipe
(``generator_recipe=...``, see :func:`zeroseg.methods.gmmn.generator_recipe`): the network, the
step loss and what each step samples. Its ``fit`` is
:func:`zeroseg.methods.generative.fit_generative`, which asks ``inputs.train_generator`` for the
generator; the platform (``platform/training/generator.py``) trains the spec's recipe in this
process or on ``method_training.workers`` Ray Train + DeepSpeed workers, with per-epoch
snapshots in both cases::

    METHODS = [MethodSpec(name="gmmn", label="GMMN", config_class=GMMNConfig,
                          fit=fit_generative, generator_recipe=generator_recipe,
                          features=("train", "train_all"))]

**Model methods** (``kind="model"``, e.g. a detector with its own network). The method owns a
model: ``model=ModelSpec(train=..., predict=...)`` (see :class:`ModelSpec`). The platform runs
``train(context)`` on every worker of a Ray Train job (``method_training.workers``; a DeepSpeed
engine, Ray Train checkpoints and ``FailureConfig`` as the segmenter has; ``context.report(epoch,
metrics, state)`` after each epoch checkpoints rank 0's state and lets a sweep's ASHA stop the
trial). ``predict(config, context, state, setting)`` then turns the last state into COCO results
(:class:`Predictions`: instance segmentation results with RLE masks, semantic label maps,
panoptic segment maps + segments) that the platform scores with its evaluators::

    def _train(context):
        model = TinyNet(...)
        if context.state is not None:
            model.load_state_dict(context.state)  # resumed after a worker failure
        engine = context.engine(model, torch.optim.Adam(model.parameters(), lr=1e-3))
        for epoch in range(context.start_epoch + 1, context.config.epochs + 1):
            ...  # steps on context.training_images()
            context.report(epoch, {"loss": loss}, model.state_dict())

    def _predict(config, context, state, setting):
        ...  # the model on context.evaluation_images()
        return Predictions(semantic={image_id: label_map, ...})

    METHODS = [MethodSpec(name="tiny-det", label="TinyDet", config_class=TinyConfig, fit=None,
                          kind="model", model=ModelSpec(train=_train, predict=_predict))]

(``tests/example_methods.py``'s ``example-pixels`` is a complete one.)

**Extra stages** (any kind). A method lists the stages it needs (``stages=(StageSpec(...),)``);
the platform builds each one into a folder keyed by the hash of its config (``stage.params(
config)``), the dataset fingerprint, the label space and the class embeddings -- like the
segmenters and feature caches, written atomically and reused when unchanged -- and hands the
folder to ``fit`` as ``inputs.stages[stage.name]``::

    def _priors(stage_inputs, folder):
        np.save(folder / "priors.npy", ...)

    METHODS = [MethodSpec(..., stages=(StageSpec("priors", build=_priors,
                                                 params=lambda c: {"k": c.k}),))]
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from zeroseg.platform.config import from_dict, set_dotted
from zeroseg.platform.errors import ConfigError

log = logging.getLogger(__name__)

#: Which segmenter a method starts from: trained on the seen classes, or on every class.
SegmenterKind = Literal["zero-shot", "oracle"]
#: Feature-cache kinds a method reads: matched query embeddings, or all queries.
FeatureKind = Literal["train", "train_all"]
#: ``classifier``: fit returns a classifier over the segmenter's query embeddings; ``model``:
#: the method trains its own model (:class:`ModelSpec`) and returns COCO predictions.
MethodKind = Literal["classifier", "model"]
#: Modules (importable names, comma-separated) whose ``METHODS`` join the registry besides
#: this package's own: methods kept outside ``methods/`` (the tests' examples).
EXTRA_MODULES_ENV = "ZEROSEG_METHOD_MODULES"


class StopTrial(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Raised by an ``on_epoch`` hook to end training early (a scheduler's decision)."""


#: ``train_generator(config, *, on_step, on_snapshot, snapshot_every, head_init)`` -> the
#: trained generator (:class:`~zeroseg.methods.common.TrainedGenerator`), given by the platform
#: to a method whose spec has a ``generator_recipe``.
TrainGenerator = Callable[..., Any]


@dataclass
class MethodInputs:
    """What the platform hands a method (everything in the label space's contiguous order)."""

    split: Any  # zeroseg.platform.data.classes.Split: the label space (test or validation view)
    class_embeddings: np.ndarray  # float32 [C, d]
    features: Callable[[str], Any]  # kind -> TrainFeatures (loaded once, on first use)
    # () -> (weight [C+1, D], bias [C+1], known [C+1]): the segmenter's head in split columns
    segmenter_head: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]]
    embed_dim: int  # D, the segmenter's query-embedding width
    seed: int
    work_dir: Path  # where the method writes its artifacts (weights)
    # The folder each extra stage of the spec was built into (StageSpec.name -> folder).
    stages: dict[str, Path] = field(default_factory=dict)
    # Generative methods: the platform's trainer of the spec's generator recipe (one process
    # or Ray Train + DeepSpeed workers, per-epoch snapshots either way). None otherwise.
    train_generator: TrainGenerator | None = None
    # Validation protocol only: () -> (embeddings [N, D], class indices [N]), real query
    # embeddings of the held-out classes (the view's "unseen" ones) in the evaluation images,
    # for the generator fidelity diagnostics (methods/fidelity.py). None elsewhere.
    heldout: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def seen_idx(self) -> np.ndarray:
        return np.array([c.index for c in self.split.classes if not c.unseen], dtype=np.int64)

    @property
    def unseen_idx(self) -> np.ndarray:
        return np.array([c.index for c in self.split.classes if c.unseen], dtype=np.int64)

    @property
    def num_classes(self) -> int:
        return int(self.split.num_classes)


@dataclass
class MethodHooks:
    """Callbacks from a method's training to the platform."""

    epochs: int = 1  # training rounds; on_epoch is called after each
    on_epoch: Callable[[int, Any], None] | None = None
    on_curve: Callable[[str, int, float], None] | None = None

    def epoch(self, epoch: int, classifier: Any) -> None:
        if self.on_epoch is not None:
            self.on_epoch(epoch, classifier)

    def curve(self, name: str, step: int, value: float) -> None:
        if self.on_curve is not None:
            self.on_curve(name, step, float(value))


@dataclass
class MethodOutput:
    classifier: Any  # a Classifier callable, or None for the segmenter's own head
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> file written
    synthetic: tuple[np.ndarray, np.ndarray] | None = None  # unseen fakes [K, D], labels [K]
    info: dict[str, Any] = field(default_factory=dict)  # anything worth storing with the run


Fit = Callable[[Any, MethodInputs, MethodHooks], MethodOutput]


@dataclass
class Predictions:
    """A model method's predictions on the evaluation images, in COCO result formats.

    - ``semantic``: image id -> ``[H, W]`` label map of contiguous class indices of the label
      space (what a semantic PNG holds once mapped; every evaluation image needs one when the
      semantic task is scored);
    - ``instances``: COCO instance-segmentation results, ``{"image_id", "category_id"`` (the
      dataset's category id), ``"segmentation"`` (an RLE), ``"score"``, optionally ``"bbox"``
      (xywh; derived from the RLE when absent) ``}``;
    - ``panoptic``: image id -> (``[H, W]`` int32 segment ids, 0 = VOID; the COCO
      ``segments_info`` list with ``id`` and ``category_id``).
    """

    semantic: dict[int, np.ndarray] = field(default_factory=dict)
    instances: list[dict[str, Any]] = field(default_factory=list)
    panoptic: dict[int, tuple[np.ndarray, list[dict[str, Any]]]] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """A model method's own model (``kind="model"``).

    ``train(context)`` runs on every Ray Train worker (platform/training/model.py
    :class:`~zeroseg.platform.training.model.ModelContext`: ``rank``, ``world_size``,
    ``config``, ``seed``, the label space's indices, ``training_images()`` -- leakage-filtered
    training images with their semantic labels, unseen classes already ignored --
    ``engine(model, optimizer)``, the resumed ``state`` and ``start_epoch``, and
    ``report(epoch, metrics, state)`` after each epoch, which checkpoints rank 0's ``state``
    and may raise :class:`StopTrial`; ``training_instances(i)`` gives image i's boxes, classes
    and masks where the benchmark has instances). ``check(config, context)``, when set, runs
    before training and fails bad input early. ``predict(config, context, state, setting)`` turns a
    state into :class:`Predictions` of ``context.evaluation_images()`` for a setting (``gzsl``:
    every class; ``zsl``: unseen classes only)."""

    train: Callable[[Any], None]
    predict: Callable[[Any, Any, Mapping[str, Any], str], Predictions]
    # ``check(config, context)``: run in the driver before training starts; raises a one-line
    # ConfigError for input the method cannot train on (e.g. no instance annotations); the
    # mapping it returns (what it found, e.g. where a vector came from) joins the run's audit.
    check: Callable[[Any, Any], Mapping[str, Any] | None] | None = None
    # The tasks ``predict`` produces; the platform scores these among evaluation.tasks (a
    # detector has no semantic label maps).
    tasks: tuple[str, ...] = ("semantic", "instance", "panoptic")


@dataclass
class StageInputs:
    """What the platform hands a stage's ``build``."""

    config: Any  # the method's config
    split: Any  # the label space (test split or validation view)
    class_embeddings: np.ndarray  # float32 [C, d]
    data_root: Path  # the dataset (read only)
    train_split: str  # its training split's folder name
    eval_split: str = "val"  # its evaluation split's folder name (diagnostics only)


@dataclass(frozen=True)
class StageSpec:
    """An extra stage a method needs (e.g. caption priors): ``build(inputs, folder)`` writes its
    output into ``folder``; the platform keys the folder by the hash of ``params(config)``, the
    stage's ``version``, the dataset fingerprint, the label space and the class embeddings, writes
    it atomically and reuses it while they are unchanged."""

    name: str
    build: Callable[[StageInputs, Path], None]
    params: Callable[[Any], Mapping[str, Any]] = lambda config: {}
    version: str = "1"


@dataclass(frozen=True)
class MethodSpec:
    name: str  # registry key, also the store's runs.method
    label: str  # how tables name it (PADing Table 1 labels)
    config_class: type | None  # None: the method has no knobs
    fit: Fit | None  # None for a model method (model.train / model.predict instead)
    segmenter: SegmenterKind = "zero-shot"
    features: tuple[FeatureKind, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)  # applied under user values
    fixed: Mapping[str, Any] = field(default_factory=dict)  # what defines it (ablation switches)
    description: str = ""
    order: int = 100  # position in tables (Table 1 order)
    kind: MethodKind = "classifier"
    stages: tuple[StageSpec, ...] = ()  # extra stages, built before fit
    # A generative method's recipe: ``(real [N, D], labels [N], class_embeddings [C, d],
    # seen_idx, unseen_idx, config, *, classifier_data, init_weight, init_bias)`` ->
    # GeneratorRecipe (methods/common.py), built under the run's seed. The platform trains it.
    generator_recipe: Callable[..., Any] | None = None
    model: ModelSpec | None = None  # kind "model": its training and prediction

    def __post_init__(self) -> None:
        if (self.kind == "model") != (self.model is not None):
            raise ConfigError(f"method {self.name!r}: a model method (kind 'model') needs "
                              f"model=ModelSpec(...), and only a model method has one")
        if self.kind == "classifier" and self.fit is None:
            raise ConfigError(f"method {self.name!r}: a classifier method needs fit")

    def build_config(self, params: Mapping[str, Any] | None, where: str = "params") -> Any:
        """The method's typed config from ``defaults`` + ``params`` (dotted keys allowed);
        unknown keys and wrong types fail naming the key."""
        if self.config_class is None:
            if params:
                raise ConfigError(f"{where}: method {self.name!r} takes no parameters, got "
                                  f"{sorted(params)}")
            return None
        clash = sorted(k for k, v in (params or {}).items()
                       if k in self.fixed and v != self.fixed[k])
        if clash:
            raise ConfigError(f"{where}.{clash[0]}: fixed by method {self.name!r} "
                              f"({', '.join(f'{k}={v}' for k, v in self.fixed.items())}); choose "
                              f"another method instead")
        data: dict[str, Any] = {}
        for source in (self.defaults, params or {}, self.fixed):
            for key, value in source.items():
                set_dotted(data, key, value)
        config = from_dict(self.config_class, data, where=where)
        validate = getattr(config, "validate", None)
        if validate is not None:
            try:
                validate()
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        return config


_REGISTRY: dict[str, MethodSpec] = {}
_LOADED = False


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method (modules usually list theirs in ``METHODS`` instead)."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ConfigError(f"method {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _discover() -> None:
    global _LOADED
    if _LOADED:
        return
    package = importlib.import_module("zeroseg.methods")
    names = [f"zeroseg.methods.{info.name}"
             for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name)
             if info.name not in ("registry", "common", "generative")
             and not info.name.startswith("_")]
    names += [n.strip() for n in os.environ.get(EXTRA_MODULES_ENV, "").split(",") if n.strip()]
    for name in names:
        module = importlib.import_module(name)
        for spec in getattr(module, "METHODS", ()):
            register(spec)
    _LOADED = True


def registry() -> dict[str, MethodSpec]:
    """Every registered method, in table order."""
    _discover()
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (kv[1].order, kv[0])))


def get_method(name: str) -> MethodSpec:
    """The method called ``name``, or a one-line error listing the known ones."""
    methods = registry()
    if name not in methods:
        raise ConfigError(f"method: unknown method {name!r}; known methods: "
                          f"{', '.join(methods)}")
    return methods[name]


def method_label(name: str) -> str:
    spec = registry().get(name)
    return spec.label if spec is not None else name
