"""Search spaces as data (``search_spaces/*.yaml``), validated before anything starts.

A space names the method, the experiment config its trials start from, the objective and the
knobs::

    method: pading
    config: configs/pading_small.yaml   # relative to the space file, or to the working dir
    objective: {task: semantic, metric: iou, setting: gzsl}   # on the validation protocol
    mode: max
    epochs: 4                 # training rounds per trial; ASHA may stop a trial after each
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}   # or {type: fifo}
    searcher: {type: tpe, seed: 0, n_startup_trials: 4}             # or {type: random}
    knobs:
      num_primitives:   {type: int, low: 100, high: 700, step: 100}
      structure_weight: {type: loguniform, low: 1.0e-4, high: 1.0e-1}   # lambda, Eq. 7
      tau:              {type: uniform, low: 0.05, high: 0.5}
      sigmas:           {type: choice, values: [paper, code, [1, 2, 4, 8, 16, 32]]}
      layers:           {type: choice, values: [1, 2, 3]}

Knob names are keys of the method's config (dotted for nested ones, e.g.
``classifier.unseen_weight``), or -- for any other declared knob of the experiment -- a dotted
key of the experiment config itself starting with one of its sections (``evaluation.``,
``segmenter.``, ``features.``, ``embedding.``). Distributions: ``choice`` (values: any YAML
values, lists included), ``uniform`` / ``loguniform`` (low < high; loguniform needs low > 0),
``int`` (integers low <= high, optional ``step`` dividing the range, optional ``log``).

:func:`load_space` checks every knob against the method's config schema: an unknown key names
the known ones, and the lowest and highest value of every knob must build a valid config, so a
sweep never starts with a space that cannot run.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zeroseg.methods.registry import get_method
from zeroseg.platform.config import load_yaml, set_dotted, to_dict
from zeroseg.platform.errors import ConfigError
from zeroseg.platform.evaluation.summary import TASK_METRICS
from zeroseg.platform.pipeline.config import load_pipeline_config, pipeline_config_from_dict
from zeroseg.platform.tuning.objective import Objective

DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int")
PIPELINE_SECTIONS = ("evaluation", "segmenter", "features", "embedding", "data", "threads")
SPACE_KEYS = ("method", "config", "objective", "mode", "epochs", "scheduler", "searcher",
              "knobs", "description", "seed")


@dataclass(frozen=True)
class Knob:
    name: str
    type: str
    low: float | None = None
    high: float | None = None
    step: int | None = None
    log: bool = False
    values: tuple[Any, ...] = ()

    # -- choice values travel as strings (Optuna's categorical needs primitives) --------------
    def labels(self) -> list[Any]:
        return [self.encode(v) for v in self.values]

    @staticmethod
    def encode(value: Any) -> Any:
        if isinstance(value, bool | int | float | str) or value is None:
            return value
        return json.dumps(value)

    def decode(self, label: Any) -> Any:
        for value in self.values:
            if self.encode(value) == label:
                return copy.deepcopy(value)
        raise ConfigError(f"knobs.{self.name}: {label!r} is not one of its values")

    def extremes(self) -> list[Any]:
        """Values that must all build a valid config (both ends of a range, every choice)."""
        if self.type == "choice":
            return list(self.values)
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]

    def to_tune(self) -> Any:
        from ray import tune

        if self.type == "choice":
            return tune.choice(self.labels())
        if self.type == "uniform":
            return tune.uniform(self.low, self.high)
        if self.type == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.log:
            return tune.lograndint(int(self.low), int(self.high) + 1)
        if self.step and self.step > 1:
            return tune.qrandint(int(self.low), int(self.high), int(self.step))
        return tune.randint(int(self.low), int(self.high) + 1)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.type == "choice":
            out["values"] = list(self.values)
        else:
            out.update(low=self.low, high=self.high)
            if self.step:
                out["step"] = self.step
            if self.log:
                out["log"] = True
        return out


@dataclass
class SearchSpace:
    path: Path
    method: str
    config_path: Path
    knobs: dict[str, Knob]
    objective: Objective = field(default_factory=Objective)
    mode: str = "max"
    epochs: int = 4
    scheduler: dict[str, Any] = field(default_factory=lambda: {"type": "asha"})
    searcher: dict[str, Any] = field(default_factory=lambda: {"type": "tpe", "seed": 0})
    seed: int = 0  # the method seed of every trial
    description: str = ""

    def describe(self) -> dict[str, Any]:
        """What the store keeps (``sweeps.space``)."""
        return {"path": str(self.path), "method": self.method, "config": str(self.config_path),
                "objective": self.objective.name, "mode": self.mode, "epochs": self.epochs,
                "scheduler": self.scheduler, "searcher": self.searcher, "seed": self.seed,
                "knobs": {k: v.describe() for k, v in self.knobs.items()}}

    def tune_space(self) -> dict[str, Any]:
        return {name: knob.to_tune() for name, knob in self.knobs.items()}

    def decode(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Tune's sampled values -> the knob values (choices decoded, ints as int)."""
        out = {}
        for name, knob in self.knobs.items():
            if name not in sample:
                raise ConfigError(f"trial config has no value for knob {name!r}")
            value = sample[name]
            if knob.type == "choice":
                value = knob.decode(value)
            elif knob.type == "int":
                value = int(value)
            else:
                value = float(value)
            out[name] = value
        return out

    def apply(self, base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        """The experiment config (plain data) of one trial: ``base`` with the knob values set,
        only this method run, one seed."""
        doc = copy.deepcopy(base)
        doc["methods"] = [self.method]
        doc["seeds"] = [self.seed]
        params = doc.setdefault("params", {}).setdefault(self.method, {})
        for name, value in values.items():
            if is_pipeline_key(name):
                set_dotted(doc, name, value)
            else:
                set_dotted(params, name, value)
        return doc


def is_pipeline_key(name: str) -> bool:
    return name.split(".", 1)[0] in PIPELINE_SECTIONS


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def parse_knob(name: str, spec: Any, where: str) -> Knob:
    at = f"{where}: knobs.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{at}: expected a mapping with 'type', got {spec!r}")
    kind = spec.get("type")
    if kind not in DISTRIBUTIONS:
        raise ConfigError(f"{at}.type: expected one of {', '.join(DISTRIBUTIONS)}, got {kind!r}")
    allowed = {"choice": {"type", "values"}, "uniform": {"type", "low", "high"},
               "loguniform": {"type", "low", "high"},
               "int": {"type", "low", "high", "step", "log"}}[kind]
    extra = sorted(set(spec) - allowed)
    if extra:
        raise ConfigError(f"{at}: unknown field {extra[0]!r} for type {kind} (fields: "
                          f"{', '.join(sorted(allowed))})")
    if kind == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{at}.values: expected a non-empty list")
        labels = [Knob.encode(v) for v in values]
        if len(set(map(str, labels))) != len(labels):
            raise ConfigError(f"{at}.values: duplicate values in {values}")
        return Knob(name, kind, values=tuple(values))
    for key in ("low", "high"):
        if key not in spec:
            raise ConfigError(f"{at}.{key}: required for type {kind}")
    low, high = _number(f"{at}.low", spec["low"]), _number(f"{at}.high", spec["high"])
    if kind == "int":
        if low != int(low) or high != int(high):
            raise ConfigError(f"{at}: int bounds must be integers, got {spec['low']}, "
                              f"{spec['high']}")
        if low > high:
            raise ConfigError(f"{at}: low {int(low)} is above high {int(high)}")
        step = spec.get("step")
        if step is not None:
            if isinstance(step, bool) or not isinstance(step, int) or step < 1:
                raise ConfigError(f"{at}.step: expected a positive integer, got {step!r}")
            if (int(high) - int(low)) % step:
                raise ConfigError(f"{at}.step: {step} does not divide the range "
                                  f"{int(low)}..{int(high)}")
        log = bool(spec.get("log", False))
        if log and low < 1:
            raise ConfigError(f"{at}: log-scaled int ranges need low >= 1, got {int(low)}")
        if log and step not in (None, 1):
            raise ConfigError(f"{at}: step and log cannot be combined")
        return Knob(name, kind, low=low, high=high, step=step, log=log)
    if not low < high:
        raise ConfigError(f"{at}: low {low:g} must be below high {high:g}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{at}: loguniform needs low > 0, got {low:g}")
    return Knob(name, kind, low=low, high=high)


def load_space(path: str | Path, *, config: str | Path | None = None) -> SearchSpace:
    """Read and validate a search space (see the module docstring). ``config`` overrides the
    space's ``config`` (the experiment the trials start from)."""
    path = Path(path)
    where = str(path)
    data = load_yaml(path)
    unknown = sorted(set(data) - set(SPACE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: "
                          f"{', '.join(SPACE_KEYS)}")
    method = data.get("method")
    if not isinstance(method, str):
        raise ConfigError(f"{where}: method: expected a method name (zeroseg methods)")
    spec = get_method(method)
    knobs_doc = data.get("knobs")
    if not isinstance(knobs_doc, dict) or not knobs_doc:
        raise ConfigError(f"{where}: knobs: the search space is empty (expected at least one "
                          f"knob)")
    knobs = {str(name): parse_knob(str(name), s, where) for name, s in knobs_doc.items()}
    fixed = [n for n in knobs if n in spec.fixed]
    if fixed:
        raise ConfigError(f"{where}: knobs.{fixed[0]}: fixed by method {method!r}; it cannot be "
                          f"searched")
    config_value = config if config is not None else data.get("config")
    if not config_value:
        raise ConfigError(f"{where}: config: expected the experiment config the trials start "
                          f"from (e.g. configs/pading_small.yaml)")
    config_path = Path(config_value)
    if config is None and not config_path.is_absolute() and not config_path.exists():
        config_path = path.parent / config_path
    if not config_path.is_file():
        raise ConfigError(f"{where}: config: {config_value} not found")
    objective_doc = data.get("objective") or {}
    if not isinstance(objective_doc, dict):
        raise ConfigError(f"{where}: objective: expected a mapping (task, metric, setting)")
    bad = sorted(set(objective_doc) - {"task", "metric", "setting", "subset"})
    if bad:
        raise ConfigError(f"{where}: objective.{bad[0]}: unknown key (task, metric, setting, "
                          f"subset)")
    objective = Objective(**objective_doc)
    _check_objective(objective, where)
    mode = data.get("mode", "max")
    if mode not in ("max", "min"):
        raise ConfigError(f"{where}: mode: expected max or min, got {mode!r}")
    epochs = data.get("epochs", 4)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"{where}: epochs: expected an integer >= 1, got {epochs!r}")
    scheduler = dict(data.get("scheduler") or {"type": "asha"})
    if scheduler.get("type") not in ("asha", "fifo"):
        raise ConfigError(f"{where}: scheduler.type: expected asha or fifo, got "
                          f"{scheduler.get('type')!r}")
    searcher = dict(data.get("searcher") or {"type": "tpe"})
    if searcher.get("type") not in ("tpe", "random"):
        raise ConfigError(f"{where}: searcher.type: expected tpe or random, got "
                          f"{searcher.get('type')!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"{where}: seed: expected a non-negative integer, got {seed!r}")
    space = SearchSpace(path=path, method=method, config_path=config_path, knobs=knobs,
                        objective=objective, mode=mode, epochs=epochs, scheduler=scheduler,
                        searcher=searcher, seed=seed,
                        description=str(data.get("description", "")))
    validate_against_config(space)
    return space


def _check_objective(objective: Objective, where: str) -> None:
    metrics = TASK_METRICS
    if objective.task not in metrics:
        raise ConfigError(f"{where}: objective.task: expected one of {list(metrics)}, got "
                          f"{objective.task!r}")
    if objective.metric not in metrics[objective.task]:
        raise ConfigError(f"{where}: objective.metric: {objective.task} has "
                          f"{list(metrics[objective.task])}, got {objective.metric!r}")
    if objective.setting not in ("gzsl", "zsl"):
        raise ConfigError(f"{where}: objective.setting: expected gzsl or zsl")
    if objective.subset not in ("hm", "unseen", "seen"):
        raise ConfigError(f"{where}: objective.subset: expected hm, unseen or seen")
    if objective.setting == "zsl" and objective.subset != "unseen":
        raise ConfigError(f"{where}: objective.subset: ZSL has only the unseen mean")


def base_document(space: SearchSpace, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The experiment config the trials start from, as plain data (validated)."""
    config = load_pipeline_config(space.config_path, overrides)
    doc = to_dict(config)
    if "validation" not in config.evaluation.protocols:
        # Sweeps select on the validation protocol, always; the test protocol is recorded.
        doc["evaluation"]["protocols"] = ["validation", *config.evaluation.protocols]
    return doc


def validate_against_config(space: SearchSpace, overrides: dict[str, Any] | None = None) -> None:
    """Every knob's extreme values must give a valid experiment config (typos, types, ranges)."""
    base = base_document(space, overrides)
    sample = {name: knob.extremes()[0] for name, knob in space.knobs.items()}
    for name, knob in space.knobs.items():
        for value in knob.extremes():
            doc = space.apply(base, {**sample, name: value})
            try:
                config = pipeline_config_from_dict(doc, where=f"{space.path}: knobs.{name}")
            except ConfigError as exc:
                raise ConfigError(_knob_error(str(exc), space, name, value)) from None
            if space.objective.task not in config.evaluation.tasks:
                raise ConfigError(f"{space.path}: objective.task {space.objective.task!r} is not "
                                  f"evaluated by {space.config_path} (evaluation.tasks)")
            if space.objective.setting not in config.evaluation.settings:
                raise ConfigError(f"{space.path}: objective.setting "
                                  f"{space.objective.setting!r} is not evaluated by "
                                  f"{space.config_path} (evaluation.settings)")


def _knob_error(message: str, space: SearchSpace, name: str, value: Any) -> str:
    if "unknown key" in message:
        return message
    return f"{message} (value {value!r} of knobs.{name} in {space.path})"
