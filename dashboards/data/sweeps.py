"""The sweeps page's data (:mod:`zeroseg.dashboards.views.sweeps`): the objective a sweep
recorded, its trials as a table, best-so-far, per-knob summaries, knob importance (Optuna's
evaluator on the sweep's study, else eta squared), the reproduce commands."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zeroseg.dashboards.data.labels import (
    TASK_ABBREVIATIONS,
    is_missing,
    metric_label,
    reference_text,
)
from zeroseg.platform.store import PRIMARY_METRIC, resolve_url
from zeroseg.platform.tuning.objective import Objective
from zeroseg.platform.tuning.objective import optuna_storage_url as tuning_optuna_storage_url

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def primitives_table() -> pd.DataFrame:
    """PADing's Table 3: unseen PQ (percent) against the number of primitives."""

    return pd.read_csv(io.StringIO(reference_text("pading_primitives_table3.csv")))


# -- sweeps -------------------------------------------------------------------------------------
#: What a sweep optimises by default (:class:`zeroseg.platform.tuning.objective.Objective` owns it).
_DEFAULT = Objective()


@dataclass(frozen=True)
class SweepObjective:
    """The objective a stored sweep recorded, ``eval_split/task/setting/subset/metric`` (the
    :attr:`~zeroseg.platform.tuning.objective.Objective.name` of its space), and its mode."""

    eval_split: str = _DEFAULT.name.split("/")[0]
    task: str = _DEFAULT.task
    setting: str = _DEFAULT.setting
    subset: str = _DEFAULT.subset
    metric: str = _DEFAULT.metric
    mode: str = "max"

    @property
    def key(self) -> str:
        return "/".join((self.eval_split, self.task, self.setting, self.subset, self.metric))

    @property
    def label(self) -> str:
        subset = {"hm": "HM", "seen": "seen", "unseen": "unseen"}.get(self.subset, self.subset)
        return (f"{self.eval_split} {subset} {metric_label(self.metric)} "
                f"({TASK_ABBREVIATIONS.get(self.task, self.task)}, {self.setting.upper()})")


def parse_objective(text: str | None, mode: str | None = None) -> SweepObjective:
    """``"val/semantic/gzsl/hm/iou"`` -> :class:`SweepObjective`; missing parts take the
    defaults (validation HM of the task's primary metric, GZSL)."""
    mode = mode if mode in ("max", "min") else "max"
    parts = [p for p in str(text or "").strip().split("/") if p]
    if len(parts) == 5:
        return SweepObjective(*parts, mode=mode)
    task = next((p for p in parts if p in PRIMARY_METRIC), _DEFAULT.task)
    return SweepObjective(task=task, metric=PRIMARY_METRIC[task], mode=mode)


def knob_value(value: Any) -> Any:
    """A knob as one plottable value: numbers stay, lists (e.g. sigma sets) become
    ``"2,5,10"``, mappings their JSON."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float):
        return value
    if isinstance(value, list | tuple):
        return ",".join(f"{v:g}" if isinstance(v, int | float) else str(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True)
    return None if value is None else str(value)


def trial_params(config: Any) -> dict[str, Any]:
    """The knobs a sweep varied, flattened to plottable values: ``config["knobs"]`` (what the
    sweep's space sampled, dotted names) or, for older records, ``config["params"]``."""
    if not isinstance(config, Mapping):
        return {}
    params = config.get("knobs")
    if not isinstance(params, Mapping) or not params:
        params = config.get("params")
    if not isinstance(params, Mapping):
        return {}
    return {str(k): knob_value(v) for k, v in params.items()}


def trial_table(trials: pd.DataFrame, objective_values: Mapping[int, Any],
                curve_last: Mapping[int, Any] | None = None) -> pd.DataFrame:
    """One row per trial: id, status, times, the objective (fraction) and each knob as a
    ``knob:NAME`` column. Running trials without a final metric take the last point of their
    objective curve (``objective_from`` says which)."""
    curve_last = curve_last or {}
    rows = []
    for t in trials.itertuples(index=False):
        value = objective_values.get(int(t.id))
        source = "metric"
        if is_missing(value) and not is_missing(curve_last.get(int(t.id))):
            value, source = curve_last[int(t.id)], "curve"
        elif is_missing(value):
            value, source = np.nan, "-"
        row = {"run_id": int(t.id), "trial_id": t.trial_id, "status": t.status,
               "created_at": t.created_at, "finished_at": t.finished_at,
               "updated_at": t.updated_at, "duration_s": t.duration_s,
               "objective": value, "objective_from": source}
        row.update({f"knob:{k}": v for k, v in trial_params(getattr(t, "config", None)).items()})
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["run_id", "trial_id", "status", "created_at",
                                     "finished_at", "updated_at", "duration_s", "objective",
                                     "objective_from"])
    frame["objective"] = pd.to_numeric(frame["objective"], errors="coerce")
    return frame


def knob_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("knob:")]


def is_numeric_knob(series: pd.Series) -> bool:
    values = series.dropna()
    return bool(len(values)) and all(
        isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
        for v in values)


def status_counts(table: pd.DataFrame, planned: Any = None) -> dict[str, int]:
    """Trials per status (running / finished / stopped / failed), plus the planned total."""
    counts = {s: 0 for s in ("running", "finished", "stopped", "failed")}
    for status, n in table["status"].value_counts().items() if len(table) else []:
        counts[str(status)] = int(n)
    try:
        counts["planned"] = int(planned) if planned is not None else len(table)
    except (TypeError, ValueError):
        counts["planned"] = len(table)
    counts["planned"] = max(counts["planned"], len(table))
    return counts


def best_so_far(table: pd.DataFrame, mode: str = "max") -> pd.DataFrame:
    """Trials that reported the objective (finished or stopped early; a running trial's
    curve is not a result) in completion order, with the best value so far (``best``), in
    percent."""
    if table.empty:
        return pd.DataFrame(columns=["time", "run_id", "trial_id", "status", "objective",
                                     "best"])
    done = table[(table["objective_from"] == "metric") & table["objective"].notna()].copy()
    done["time"] = done["finished_at"].where(done["finished_at"].notna(), done["updated_at"])
    done = done.sort_values(["time", "run_id"], kind="stable")
    done["objective"] = done["objective"] * 100.0
    done["best"] = done["objective"].cummax() if mode == "max" else done["objective"].cummin()
    return done[["time", "run_id", "trial_id", "status", "objective", "best"]].reset_index(
        drop=True)


def by_knob(table: pd.DataFrame, knob: str) -> pd.DataFrame:
    """Objective (percent) per value of one knob: mean, best, number of trials."""
    column = knob if knob.startswith("knob:") else f"knob:{knob}"
    if column not in table:
        return pd.DataFrame(columns=["value", "mean", "best", "trials"])
    rows = table.dropna(subset=["objective", column])
    if rows.empty:
        return pd.DataFrame(columns=["value", "mean", "best", "trials"])
    grouped = rows.groupby(column)["objective"]
    out = pd.DataFrame({"mean": grouped.mean() * 100.0, "best": grouped.max() * 100.0,
                        "trials": grouped.size()}).reset_index().rename(
        columns={column: "value"})
    return out.sort_values("value", kind="stable").reset_index(drop=True)


def eta_squared(table: pd.DataFrame, *, bins: int = 4) -> dict[str, float]:
    """Knob importance without Optuna: the share of the objective's variance explained by each
    knob on its own (eta squared; numeric knobs with many values are cut into quantile bins),
    normalised to sum to 1."""
    rows = table.dropna(subset=["objective"])
    y = rows["objective"].astype(float)
    total = float(((y - y.mean()) ** 2).sum())
    out: dict[str, float] = {}
    if len(rows) < 2 or total <= 0:
        return out
    for column in knob_columns(rows):
        x = rows[column]
        if x.isna().all():
            continue
        if is_numeric_knob(x) and x.nunique() > bins:
            x = pd.qcut(x.astype(float), q=bins, duplicates="drop")
        groups = y.groupby(x.astype(str))
        between = float((groups.size() * (groups.mean() - y.mean()) ** 2).sum())
        out[column.removeprefix("knob:")] = between / total
    norm = sum(out.values())
    if norm > 0:
        out = {k: v / norm for k, v in out.items()}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


@dataclass
class Importance:
    values: dict[str, float] = field(default_factory=dict)
    method: str = ""
    note: str = ""


def optuna_storage_url(store_url: str | None) -> str | None:
    """The sweep's Optuna storage (where
    :func:`zeroseg.platform.tuning.objective.optuna_storage_url` puts it: next to a SQLite
    results store), opened read-only; ``None`` for other databases or when the file does not
    exist."""
    if not store_url:
        return None
    url = resolve_url(store_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    path = Path(tuning_optuna_storage_url(url.database).removeprefix("sqlite:///"))
    if not path.is_file():
        return None
    return f"sqlite:///file:{path}?mode=ro&uri=true"


def knob_importance(table: pd.DataFrame, *, study_name: str, store_url: str | None,
                    mode: str = "max") -> Importance:
    """Knob importance from Optuna's evaluator (``optuna.importance.get_param_importances``)
    on the sweep's study when it has at least two finished trials; otherwise eta squared over
    the store's trials (:func:`eta_squared`), with a note saying why."""
    storage = optuna_storage_url(store_url)
    reason = "no Optuna study file next to the results store"
    if storage is not None:
        try:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            study = optuna.load_study(study_name=study_name, storage=storage)
            finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            if len(finished) >= 2:
                values = optuna.importance.get_param_importances(study)
                return Importance(dict(values), "Optuna (optuna.importance."
                                  "get_param_importances)",
                                  f"{len(finished)} completed trials of study {study_name!r}")
            reason = f"the Optuna study has {len(finished)} completed trial(s), needs 2"
        except KeyError:
            reason = f"no Optuna study named {study_name!r}"
        except Exception as e:  # a corrupt or foreign file must not break the page
            reason = f"the Optuna study could not be read ({type(e).__name__}: " \
                     f"{str(e).splitlines()[0] if str(e) else ''})"
    values = eta_squared(table)
    note = f"{reason}; computed from the store's trials instead"
    if not values:
        note = f"{reason}; and fewer than two trials with an objective value in the store"
    return Importance(values, "variance explained by each knob alone (eta squared)", note)


def reproduce_commands(sweep: str, trial_id: Any = None, *, top: int = 3, seeds: int = 3
                       ) -> str:
    """The ``zeroseg reproduce`` command line to copy."""
    if trial_id is not None and not is_missing(trial_id):
        return f"zeroseg reproduce {sweep} --trial {trial_id} --seeds {seeds}"
    return f"zeroseg reproduce {sweep} --top {top} --seeds {seeds}"
