"""The method registry: a method is a name, a config class and a ``fit`` function.

The platform (``zeroseg run``, sweeps, reproductions) knows nothing about any method: it builds
the inputs a method declares it needs -- the class embeddings, the segmenter's training features
from the feature cache, its own class head -- calls the method's :attr:`MethodSpec.fit` and runs
inference and evaluation on the classifier it returns. Adding a method is one module in
``methods/`` with a module-level ``METHODS`` list of :class:`MethodSpec` (found by
:func:`registry`, which imports every module of this package that defines one) and one search
space in ``search_spaces/``.

Contract of ``fit(config, inputs, hooks) -> MethodOutput``:

- ``config``: an instance of ``spec.config_class`` (validated) with ``spec.defaults`` applied
  under the user's values;
- ``inputs``: :class:`MethodInputs` -- the label space (the test split, or the validation view
  whose "unseen" classes are held-out seen classes), its class embeddings, lazy access to the
  training features, the segmenter's head and the seed (and, on the validation protocol, the
  held-out classes' real embeddings, for diagnostics only);
- ``hooks.on_epoch(epoch, classifier)``: call it after each of ``hooks.epochs`` training rounds
  with the classifier as it is then (per-epoch validation, ASHA early stopping); it may raise
  :class:`StopTrial`, which the method lets propagate. ``hooks.on_curve(name, step, value)``
  records training curves.
- ``MethodOutput.classifier``: query embeddings ``[Q, D]`` -> logits ``[Q, C + 1]`` over the
  label space + no-object (``None``: the segmenter's own head, which must cover every class).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from zeroseg.platform.errors import ConfigError

log = logging.getLogger(__name__)

#: Which segmenter a method starts from: trained on the seen classes, or on every class.
SegmenterKind = Literal["zero-shot", "oracle"]
#: Feature-cache kinds a method reads: matched query embeddings, or all queries.
FeatureKind = Literal["train", "train_all"]


class StopTrial(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Raised by an ``on_epoch`` hook to end training early (a scheduler's decision)."""


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
    # Where method stages train (platform/training/generator.py MethodTrainingConfig): workers
    # > 1 runs a generator on Ray Train + DeepSpeed, reading train_cache from the filesystem.
    training: Any = None
    train_cache: Path | None = None
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


@dataclass(frozen=True)
class MethodSpec:
    name: str  # registry key, also the store's runs.method
    label: str  # how tables name it (PADing Table 1 labels)
    config_class: type | None  # None: the method has no knobs
    fit: Fit
    segmenter: SegmenterKind = "zero-shot"
    features: tuple[FeatureKind, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)  # applied under user values
    fixed: Mapping[str, Any] = field(default_factory=dict)  # what defines it (ablation switches)
    description: str = ""
    order: int = 100  # position in tables (Table 1 order)

    def build_config(self, params: Mapping[str, Any] | None, where: str = "params") -> Any:
        """The method's typed config from ``defaults`` + ``params`` (dotted keys allowed);
        unknown keys and wrong types fail naming the key."""
        from zeroseg.platform.config import from_dict, set_dotted

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
    import zeroseg.methods as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name in ("registry", "common") or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"zeroseg.methods.{info.name}")
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
