"""The reproductions page's data (:mod:`zeroseg.dashboards.views.reproductions`): each
reproduced trial's sweep value beside the mean +- std of its reproduction seeds."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from zeroseg.dashboards.data.labels import (
    is_missing,
    method_label,
    percent,
    seed_list,
)
from zeroseg.dashboards.data.sweeps import SweepObjective

log = logging.getLogger(__name__)


# -- reproductions ------------------------------------------------------------------------------
def reproduction_table(reproductions: pd.DataFrame, sources: pd.DataFrame,
                       objectives: Mapping[int, SweepObjective],
                       values: Mapping[int, Any],
                       test_hm: Mapping[int, Any] | None = None) -> tuple[pd.DataFrame,
                                                                           pd.DataFrame]:
    """Each reproduced config against its sweep value.

    ``reproductions`` / ``sources``: run frames; ``objectives``: source run id -> the
    objective its sweep optimised; ``values``: run id -> that objective's value (for sources
    and reproductions); ``test_hm``: run id -> test HM of the objective's task (optional).
    Returns ``(summary, seeds)``: one row per source with the sweep value and the reproduced
    mean / std / min / max over seeds and their difference, and one row per reproduction.
    """
    test_hm = test_hm or {}
    seeds_rows = []
    src = sources.set_index("id") if len(sources) else sources
    for r in reproductions.itertuples(index=False):
        if is_missing(r.source_run_id):
            continue
        source_id = int(r.source_run_id)
        source = src.loc[source_id] if source_id in getattr(src, "index", []) else None
        objective = objectives.get(source_id, SweepObjective())
        seeds_rows.append({
            "source_run_id": source_id,
            "sweep": None if source is None else source.get("sweep"),
            "trial_id": None if source is None else source.get("trial_id"),
            "method": method_label(r.method), "run_id": int(r.id),
            "seed": None if is_missing(r.seed) else int(r.seed), "status": r.status,
            "objective": objective.label,
            "value": percent(values.get(int(r.id))),
            "test_hm": percent(test_hm.get(int(r.id))),
        })
    seeds = pd.DataFrame(seeds_rows, columns=["source_run_id", "sweep", "trial_id", "method",
                                              "run_id", "seed", "status", "objective",
                                              "value", "test_hm"])
    rows = []
    for source_id, group in seeds.groupby("source_run_id", sort=True):
        source_id = int(source_id)
        sweep_value = percent(values.get(source_id))
        vals = group["value"].dropna().astype(float)
        test = group["test_hm"].dropna().astype(float)
        mean = float(vals.mean()) if len(vals) else np.nan
        rows.append({
            "Sweep": group["sweep"].iloc[0] or "-", "Trial": group["trial_id"].iloc[0] or "-",
            "Source run": source_id, "Method": group["method"].iloc[0],
            "Objective": group["objective"].iloc[0], "Sweep value": sweep_value,
            "Reproduced mean": mean,
            "Reproduced std": float(vals.std()) if len(vals) > 1 else np.nan,
            "Min": float(vals.min()) if len(vals) else np.nan,
            "Max": float(vals.max()) if len(vals) else np.nan,
            "Δ (mean − sweep)": mean - sweep_value if not is_missing(sweep_value) else np.nan,
            "Seeds": seed_list(group["seed"]), "Runs": len(group),
            "Test HM mean": float(test.mean()) if len(test) else np.nan,
            "Test HM std": float(test.std()) if len(test) > 1 else np.nan,
        })
    summary = pd.DataFrame(rows, columns=[
        "Sweep", "Trial", "Source run", "Method", "Objective", "Sweep value",
        "Reproduced mean", "Reproduced std", "Min", "Max", "Δ (mean − sweep)", "Seeds", "Runs",
        "Test HM mean", "Test HM std"])
    return summary, seeds
