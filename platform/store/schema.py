"""The results store's tables (SQLAlchemy 2.x ORM), shared by SQLite and PostgreSQL.

One row of ``runs`` is one experiment: a training run, a sweep trial, a reproduction of a stored
trial, or a plain evaluation. Its numbers live in ``metrics`` (long format: one value per task x
setting x evaluation split x subset x metric, per class when ``subset == "class"``) and its
training / validation curves in ``curves``. Sweeps are rows of ``sweeps``; a trial points at its
sweep by name. ``schema_version`` holds one row per schema version applied; the highest is the
store's version, checked every time a store is opened.

Vocabulary (checked in Python before anything is written, and again by CHECK constraints):

- ``runs.kind``: ``train`` | ``trial`` | ``reproduction`` | ``eval``;
- ``runs.status``: ``running`` | ``finished`` | ``failed`` | ``stopped`` (stopped early by a
  scheduler, or interrupted);
- ``metrics.task``: ``semantic`` | ``instance`` | ``panoptic`` | ``detection`` (ZSD, schema v3);
- ``metrics.eval_split``: ``val`` (the validation protocol: held-out *seen* classes play the
  unseen role; what sweeps select on) | ``test`` (the split's real unseen classes);
- ``metrics.subset``: ``seen`` | ``unseen`` | ``hm`` (class means and their harmonic mean) |
  ``class`` (one class, named by ``class_name``).

Run identity (schema v2): ``runs.run_key`` is what makes two runs the same run -- kind, config
hash, method, seed, evaluation protocols, code version and, for a reproduction, its trial
(:func:`~zeroseg.platform.store.records.run_key`). At most one *finished* run has a given key
(a partial unique index), so a re-run or a second process cannot store it twice; runs of other
statuses with that key are replaced by the next attempt. Stores migrated from v1 keep the
copies a re-run had stored before: the newest keeps the key, older ones get
``superseded_by`` = its id and readers leave them out.

A value is NULL where the metric is undefined (e.g. a class absent from ground truth and
prediction); values are fractions in [0, 1], as :mod:`zeroseg.platform.evaluation` returns them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

#: The schema this code reads and writes. Bump it with a step in :mod:`.migrations`.
SCHEMA_VERSION = 3

KINDS = ("train", "trial", "reproduction", "eval")
STATUSES = ("running", "finished", "failed", "stopped")
TASKS = ("semantic", "instance", "panoptic", "detection")  # detection: schema v3
SETTINGS = ("gzsl", "zsl")
EVAL_SPLITS = ("val", "test")
SUBSETS = ("seen", "unseen", "hm", "class")
SWEEP_STATUSES = ("running", "finished", "failed", "stopped")
RUN_KEY_INDEX = "uq_runs_run_key_finished"


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def task_check(tasks: tuple[str, ...]) -> str:
    """The CHECK on ``metrics.task`` (v3 widened it: :mod:`.migrations`)."""
    return _in("task", tasks)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class SchemaVersion(Base):
    __tablename__ = "schema_version"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    applied_at: Mapped[datetime]
    zeroseg_version: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(Text, default="")


class Sweep(Base):
    __tablename__ = "sweeps"
    __table_args__ = (CheckConstraint(_in("status", SWEEP_STATUSES), name="ck_sweeps_status"),
                      CheckConstraint("mode IS NULL OR mode IN ('max', 'min')",
                                      name="ck_sweeps_mode"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    method: Mapped[str | None] = mapped_column(String(100))
    space: Mapped[dict[str, Any] | None]  # the search space, as loaded from search_spaces/
    objective: Mapped[str | None] = mapped_column(String(200))  # e.g. "val/semantic/gzsl/hm/iou"
    mode: Mapped[str | None] = mapped_column(String(3))  # "max" | "min"
    settings: Mapped[dict[str, Any] | None]  # searcher, scheduler, samples, concurrency, ...
    status: Mapped[str] = mapped_column(String(16), default="running")
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(_in("kind", KINDS), name="ck_runs_kind"),
        CheckConstraint(_in("status", STATUSES), name="ck_runs_status"),
        Index("ix_runs_method_dataset_split", "method", "dataset", "split"),
        # A trial is stored once per sweep (NULLs are distinct: other runs are not affected).
        UniqueConstraint("sweep", "trial_id", name="uq_runs_sweep_trial"),
        Index("ix_runs_created", "created_at"),
        Index("ix_runs_kind_status", "kind", "status"),
        Index("ix_runs_config_hash", "config_hash"),
        Index("ix_runs_source", "source_run_id"),
        # One finished run per identity (v2): a re-run or a concurrent process cannot store it
        # twice; unfinished attempts (failed, stopped, running) are not constrained.
        Index(RUN_KEY_INDEX, "run_key", unique=True, sqlite_where=text("status = 'finished'"),
              postgresql_where=text("status = 'finished'")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Client-generated idempotency key: a retried write of the same run finds this and stops.
    uid: Mapped[str] = mapped_column(String(64), unique=True)
    # What the run is (records.run_key); NULL for runs without an identity (sweep trials are
    # identified by sweep + trial_id, plain evaluations have none).
    run_key: Mapped[str | None] = mapped_column(String(64))
    # Set on an older copy of a run (stores migrated from v1): the id of the run that replaced
    # it. Readers leave such rows out.
    superseded_by: Mapped[int | None] = mapped_column(Integer)
    name: Mapped[str | None] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    method: Mapped[str | None] = mapped_column(String(100))
    dataset: Mapped[str | None] = mapped_column(String(100))
    split: Mapped[str | None] = mapped_column(String(100))  # benchmark split, registry name
    embedding: Mapped[str | None] = mapped_column(String(100))
    backbone: Mapped[str | None] = mapped_column(String(100))
    tasks: Mapped[str | None] = mapped_column(String(100))  # comma-separated, sorted
    seed: Mapped[int | None] = mapped_column(Integer)
    config: Mapped[dict[str, Any] | None]
    config_hash: Mapped[str | None] = mapped_column(String(64))
    code_version: Mapped[str | None] = mapped_column(String(100))
    code_dirty: Mapped[bool | None] = mapped_column(Boolean)
    dataset_fingerprint: Mapped[str | None] = mapped_column(String(100))
    leakage_audit: Mapped[dict[str, Any] | None]
    artifacts: Mapped[dict[str, Any] | None]
    # How each evaluation was obtained: "task/setting/eval_split" -> num_images, counts, options.
    evaluations: Mapped[dict[str, Any] | None]
    sweep: Mapped[str | None] = mapped_column(
        String(200), ForeignKey("sweeps.name", ondelete="SET NULL"))
    trial_id: Mapped[str | None] = mapped_column(String(100))
    source_run_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("runs.id", ondelete="SET NULL"))
    host: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    duration_s: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)

    metrics: Mapped[list[Metric]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True)
    curves: Mapped[list[CurvePoint]] = relationship(
        back_populates="run", cascade="all, delete-orphan", passive_deletes=True)


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (
        CheckConstraint(task_check(TASKS), name="ck_metrics_task"),
        CheckConstraint(_in("setting", SETTINGS), name="ck_metrics_setting"),
        CheckConstraint(_in("eval_split", EVAL_SPLITS), name="ck_metrics_eval_split"),
        CheckConstraint(_in("subset", SUBSETS), name="ck_metrics_subset"),
        CheckConstraint("(subset = 'class') = (class_name IS NOT NULL)",
                        name="ck_metrics_class_name"),
        Index("ix_metrics_run", "run_id", "task", "setting", "eval_split"),
        Index("ix_metrics_lookup", "task", "metric", "subset", "setting", "eval_split"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(Integer, ForeignKey("runs.id", ondelete="CASCADE"))
    task: Mapped[str] = mapped_column(String(16))
    setting: Mapped[str] = mapped_column(String(8))
    eval_split: Mapped[str] = mapped_column(String(8))
    subset: Mapped[str] = mapped_column(String(8))
    class_name: Mapped[str | None] = mapped_column(String(200))
    metric: Mapped[str] = mapped_column(String(32))
    value: Mapped[float | None] = mapped_column(Float)

    run: Mapped[Run] = relationship(back_populates="metrics")


class CurvePoint(Base):
    __tablename__ = "curves"
    __table_args__ = (UniqueConstraint("run_id", "name", "step", name="uq_curves_point"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(Integer, ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))  # e.g. "train/loss", "val/semantic/hm/iou"
    step: Mapped[int] = mapped_column(Integer)  # epoch or iteration, as the writer chose
    value: Mapped[float | None] = mapped_column(Float)
    recorded_at: Mapped[datetime | None]

    run: Mapped[Run] = relationship(back_populates="curves")


TABLES = ("schema_version", "sweeps", "runs", "metrics", "curves")
