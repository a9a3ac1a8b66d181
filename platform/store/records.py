"""What a run hands to the results store: plain dataclasses, checked before anything is written.

:class:`RunRecord` is one run with its metric rows and curve points; :func:`metrics_from_eval`
turns an :meth:`EvalResult.to_json() <zeroseg.platform.evaluation.EvalResult.to_json>` dict into
metric rows (seen / unseen / HM means and one row per class and metric).
:func:`code_version` and :func:`dataset_folder_fingerprint` fill in the provenance fields.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import socket
import subprocess
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from zeroseg.platform.config import canonical_json, config_hash, to_dict
from zeroseg.platform.errors import ZerosegError
from zeroseg.platform.store.schema import (
    EVAL_SPLITS,
    KINDS,
    SETTINGS,
    STATUSES,
    SUBSETS,
    TASKS,
)

log = logging.getLogger(__name__)

#: The metric a task is ranked by (``zeroseg results list`` shows its seen / unseen / HM).
PRIMARY_METRIC = {"semantic": "iou", "panoptic": "pq", "instance": "ap50", "detection": "ap50"}


class StoreError(ZerosegError):
    """The results store cannot be opened, read or written (one line, naming the store/field)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def _one_of(where: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise StoreError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _check_value(where: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        if hasattr(value, "item") and callable(value.item):  # numpy scalar
            return _check_value(where, value.item())
        raise StoreError(f"{where}: expected a number or null, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise StoreError(f"{where}: expected a finite number or null, got {value!r}")
    return value


@dataclass(frozen=True)
class MetricRecord:
    """One number: ``metric`` of ``task`` in ``setting`` on ``eval_split`` for ``subset``."""

    task: str
    setting: str
    eval_split: str
    subset: str
    metric: str
    value: float | None
    class_name: str | None = None

    def checked(self, where: str = "metric") -> MetricRecord:
        _one_of(f"{where}.task", self.task, TASKS)
        _one_of(f"{where}.setting", self.setting, SETTINGS)
        _one_of(f"{where}.eval_split", self.eval_split, EVAL_SPLITS)
        _one_of(f"{where}.subset", self.subset, SUBSETS)
        if not isinstance(self.metric, str) or not self.metric:
            raise StoreError(f"{where}.metric: expected a non-empty name, got {self.metric!r}")
        if (self.subset == "class") != (self.class_name is not None):
            raise StoreError(f"{where}.class_name: required when subset is 'class' and only then "
                             f"(subset {self.subset!r}, class_name {self.class_name!r})")
        value = _check_value(f"{where}.value", self.value)
        return MetricRecord(self.task, self.setting, self.eval_split, self.subset, self.metric,
                            value, self.class_name)

    @property
    def key(self) -> tuple[str, str, str, str, str | None, str]:
        return (self.task, self.setting, self.eval_split, self.subset, self.class_name,
                self.metric)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "setting": self.setting, "eval_split": self.eval_split,
                "subset": self.subset, "class_name": self.class_name, "metric": self.metric,
                "value": self.value}


@dataclass(frozen=True)
class CurveRecord:
    """One point of a training or validation curve (``name`` at ``step``)."""

    name: str
    step: int
    value: float | None
    recorded_at: datetime | None = None

    def checked(self, where: str = "curve") -> CurveRecord:
        if not isinstance(self.name, str) or not self.name:
            raise StoreError(f"{where}.name: expected a non-empty name, got {self.name!r}")
        if isinstance(self.step, bool) or not isinstance(self.step, int):
            raise StoreError(f"{where}.step: expected an integer, got {self.step!r}")
        value = _check_value(f"{where}.value", self.value)
        return CurveRecord(self.name, self.step, value, self.recorded_at or utcnow())


def metrics_from_eval(result: Mapping[str, Any], eval_split: str, *,
                      per_class: bool = True) -> list[MetricRecord]:
    """Metric rows of one evaluation, from ``EvalResult.to_json()``.

    ``eval_split``: ``"val"`` (validation protocol) or ``"test"``. Every metric gets a seen,
    unseen and HM row in GZSL and an unseen row in ZSL (where seen and HM do not exist); values
    the evaluator left undefined are stored as NULL. With ``per_class`` each class gets one row
    per metric as well.
    """
    where = "evaluation result"
    for key in ("task", "setting", "seen", "unseen", "hm", "per_class"):
        if key not in result:
            raise StoreError(f"{where}: missing {key!r} (expected EvalResult.to_json())")
    task = _one_of(f"{where}.task", result["task"], TASKS)
    setting = _one_of(f"{where}.setting", result["setting"], SETTINGS)
    _one_of("eval_split", eval_split, EVAL_SPLITS)
    metrics = list(result["unseen"])
    subsets = ("seen", "unseen", "hm") if setting == "gzsl" else ("unseen",)
    rows = [MetricRecord(task, setting, eval_split, subset, m, result[subset].get(m))
            for subset in subsets for m in metrics]
    if per_class:
        for name, values in result["per_class"].items():
            rows.extend(MetricRecord(task, setting, eval_split, "class", m, values.get(m), name)
                        for m in metrics)
    return [r.checked(f"{where}.{r.subset}.{r.metric}") for r in rows]


def evaluation_info(result: Mapping[str, Any]) -> dict[str, Any]:
    """How an evaluation was obtained (image count, class counts, protocol options)."""
    return {"split": result.get("split"), "num_images": result.get("num_images"),
            "counts": result.get("counts", {}), "options": result.get("options", {})}


def run_key(*, kind: str, config_hash: str | None, method: str | None, seed: int | None,
            eval_splits: Iterable[str], code_version: str | None,
            source_run_id: int | None = None) -> str:
    """What makes two runs the same run: the same kind of run of the same config (hash) and
    method with the same seed, evaluated on the same protocols (``eval_splits``: ``test`` /
    ``val``) by the same code version -- and, for a reproduction, of the same trial. Stored as
    ``runs.run_key``; at most one finished run per key (see :mod:`.schema`)."""
    doc = {"kind": kind, "config_hash": config_hash, "method": method, "seed": seed,
           "eval_splits": sorted(set(eval_splits)), "code_version": code_version,
           "source_run_id": source_run_id}
    return "run-" + hashlib.sha256(canonical_json(doc).encode()).hexdigest()[:40]


def trial_uid(sweep: str, trial_id: str) -> str:
    """The uid of a sweep trial, derived from its sweep and trial id: a trial reported again
    (a restarted driver, a retried callback) maps to the run already stored."""
    digest = hashlib.sha256(f"{sweep}\0{trial_id}".encode()).hexdigest()
    return f"trial-{digest[:32]}"


@dataclass
class RunRecord:
    """One run, as written by :meth:`Store.record_run` in a single transaction.

    ``uid`` is the idempotency key: writing the same record twice (a retry after a lost reply,
    a restarted trial reporting again) returns the first run's id and writes nothing new.
    ``run_key`` (:func:`run_key`) is the run's identity: a finished run with the same key is
    stored once (:meth:`Store.record_run` reuses or, with ``replace``, replaces it).
    ``config_hash`` and ``code_version`` are filled in when left empty.
    """

    kind: str = "train"
    status: str = "finished"
    method: str | None = None
    dataset: str | None = None
    split: str | None = None
    embedding: str | None = None
    backbone: str | None = None
    tasks: list[str] = field(default_factory=list)  # derived from the metrics when empty
    seed: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    config_hash: str | None = None
    code_version: str | None = None
    code_dirty: bool | None = None
    dataset_fingerprint: str | None = None
    leakage_audit: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    evaluations: dict[str, Any] = field(default_factory=dict)
    sweep: str | None = None
    trial_id: str | None = None
    source_run_id: int | None = None
    name: str | None = None
    host: str | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    error: str | None = None
    metrics: list[MetricRecord] = field(default_factory=list)
    curves: list[CurveRecord] = field(default_factory=list)
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    run_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (a sweep trial sends its record to the driver this way)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("metrics", "curves")}
        for key in ("created_at", "finished_at"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        out = to_dict(out)
        out["metrics"] = [m.to_dict() for m in self.metrics]
        out["curves"] = [[c.name, c.step, c.value] for c in self.curves]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRecord:
        """The record :meth:`to_json` wrote."""
        fields_ = dict(data)
        for key in ("created_at", "finished_at"):
            if fields_.get(key):
                fields_[key] = datetime.fromisoformat(fields_[key])
        fields_["metrics"] = [MetricRecord(m["task"], m["setting"], m["eval_split"],
                                           m["subset"], m["metric"], m["value"],
                                           m.get("class_name"))
                              for m in fields_.get("metrics", [])]
        fields_["curves"] = [CurveRecord(n, int(s), v) for n, s, v in fields_.get("curves", [])]
        return cls(**fields_)

    def add_evaluation(self, result: Mapping[str, Any], eval_split: str, *,
                       per_class: bool = True) -> None:
        """Add the rows of one ``EvalResult.to_json()`` and remember how it was obtained."""
        rows = metrics_from_eval(result, eval_split, per_class=per_class)
        self.metrics.extend(rows)
        key = f"{result['task']}/{result['setting']}/{eval_split}"
        self.evaluations[key] = evaluation_info(result)

    def checked(self) -> RunRecord:
        """Validate every field (one-line :class:`StoreError` naming it) and fill defaults."""
        _one_of("run.kind", self.kind, KINDS)
        _one_of("run.status", self.status, STATUSES)
        if not isinstance(self.uid, str) or not 8 <= len(self.uid) <= 64:
            raise StoreError(f"run.uid: expected a string of 8-64 characters, got {self.uid!r}")
        if self.run_key is not None and (not isinstance(self.run_key, str)
                                         or not 8 <= len(self.run_key) <= 64):
            raise StoreError(f"run.run_key: expected a string of 8-64 characters, got "
                             f"{self.run_key!r}")
        documents = {}
        for name in ("config", "leakage_audit", "artifacts", "evaluations"):
            documents[name] = _json_document(f"run.{name}", getattr(self, name))
        if self.seed is not None and (isinstance(self.seed, bool) or
                                      not isinstance(self.seed, int)):
            raise StoreError(f"run.seed: expected an integer, got {self.seed!r}")
        if self.kind == "trial" and not self.sweep:
            raise StoreError("run.sweep: a trial needs the name of its sweep")
        if self.source_run_id is not None and not isinstance(self.source_run_id, int):
            raise StoreError(f"run.source_run_id: expected a run id, got {self.source_run_id!r}")
        metrics = [m.checked(f"run.metrics[{i}]") for i, m in enumerate(self.metrics)]
        seen: set[tuple[Any, ...]] = set()
        for i, m in enumerate(metrics):
            if m.key in seen:
                raise StoreError(f"run.metrics[{i}]: duplicate row {'/'.join(map(str, m.key))}")
            seen.add(m.key)
        curves = [c.checked(f"run.curves[{i}]") for i, c in enumerate(self.curves)]
        points: set[tuple[str, int]] = set()
        for i, c in enumerate(curves):
            if (c.name, c.step) in points:
                raise StoreError(f"run.curves[{i}]: duplicate point {c.name!r} step {c.step}")
            points.add((c.name, c.step))
        tasks = sorted(set(self.tasks) | {m.task for m in metrics})
        for t in tasks:
            _one_of("run.tasks", t, TASKS)
        version, dirty = (self.code_version, self.code_dirty)
        if version is None:
            version, dirty = code_version()
        duration = _check_value("run.duration_s", self.duration_s)
        return RunRecord(
            **{**self.__dict__, **documents,
               "tasks": tasks,
               "config_hash": self.config_hash or config_hash(documents["config"]),
               "code_version": version, "code_dirty": dirty,
               "host": self.host or socket.gethostname(),
               "created_at": self.created_at or utcnow(),
               "finished_at": self.finished_at or (
                   utcnow() if self.status != "running" else None),
               "duration_s": duration,
               "metrics": metrics, "curves": curves})


def _json_document(where: str, value: Any) -> dict[str, Any]:
    """A JSON-ready mapping (config dataclasses and paths become plain data), or a one-line
    error naming the field."""
    data = to_dict(value)
    if not isinstance(data, dict):
        raise StoreError(f"{where}: expected a mapping, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(data, allow_nan=False, ensure_ascii=False))
    except (TypeError, ValueError) as e:
        raise StoreError(f"{where}: not storable as JSON ({e})") from None


# -- provenance -----------------------------------------------------------------------------------
REPO_ROOT = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=1)
def code_version() -> tuple[str, bool | None]:
    """``(git describe of the working tree, dirty?)``; the package version (dirty unknown)
    when the code does not run from a git checkout or git is not available. A dirty tree's
    version ends in ``+dirty.<sha256 of git diff HEAD>``, so edited code is another version
    (a run's identity, :func:`run_key`, includes it)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # read-only: never take the index lock
    if (REPO_ROOT / ".git").exists():
        try:
            described = subprocess.run(
                ["git", "-C", str(REPO_ROOT), "describe", "--always", "--tags", "--abbrev=12"],
                capture_output=True, text=True, timeout=10, env=env, check=True).stdout.strip()
            status = subprocess.run(
                ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=10, env=env, check=True).stdout
            if described and status.strip():
                diff = subprocess.run(
                    ["git", "-C", str(REPO_ROOT), "diff", "HEAD", "--no-ext-diff", "--binary"],
                    capture_output=True, timeout=30, env=env, check=True).stdout
                return f"{described}+dirty.{hashlib.sha256(diff).hexdigest()[:12]}", True
            if described:
                return described, False
        except (OSError, subprocess.SubprocessError) as e:
            log.debug("git describe failed: %s", e)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"zeroseg-{version('zeroseg')}", None
    except PackageNotFoundError:
        return "zeroseg-unknown", None


def dataset_folder_fingerprint(root: str | os.PathLike, *, content_globs: Iterable[str] = (
        "annotations/*.json",)) -> str:
    """A short, stable identity of a dataset folder: the relative path and size of every file,
    plus the full content of the files matching ``content_globs`` (the annotations, where labels
    change). Two folders with equal fingerprints hold the same annotations and file layout."""
    root = Path(root)
    if not root.is_dir():
        raise StoreError(f"{root}: dataset folder not found (for its fingerprint)")
    content = {p for g in content_globs for p in root.glob(g) if p.is_file()}
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        rel = p.relative_to(root).as_posix()
        h.update(f"{rel}\0{p.stat().st_size}\0".encode())
        if p in content:
            with p.open("rb") as f:
                for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                    h.update(chunk)
    return f"sha256:{h.hexdigest()[:16]}"
