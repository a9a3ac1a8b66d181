"""The dashboard's data layer: store rows in, pandas DataFrames out, no Streamlit.

Every page of the app is a thin layout over the functions here, so all of it is testable
without a browser:

- **Leaderboard** (:func:`leaderboard_runs`, :func:`leaderboard_view`): one row per method x task x
  metric x split x embedding x backbone x setting x evaluation split, with the mean and standard
  deviation (sample std, ``ddof=1``) over runs of the seen, unseen and harmonic-mean class
  means, the number of runs and their seeds. HM is averaged per run (the mean of each run's HM,
  not the HM of the means). Values are shown in percent, like the papers. The papers' own
  figures (:func:`paper_results`, shipped in ``reference/``) join as clearly labelled rows.
- **Exports** (:func:`view_to_csv`, :func:`view_to_latex`): exactly the rows of the current
  view, as CSV and as a booktabs LaTeX table.
- **Sweeps** (:func:`parse_objective`, :func:`trial_table`, :func:`best_so_far`,
  :func:`knob_importance`, ...), **reproductions** (:func:`reproduction_table`) and **run
  detail** helpers (:func:`audit_table`, :func:`per_class_table`, ...).

Values in the store are fractions in [0, 1]; everything this module returns for display is in
percent unless a column says otherwise.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from typing import Any

import numpy as np
import pandas as pd

from zeroseg.methods.registry import method_label as registry_label
from zeroseg.platform.evaluation import PAPER_METRIC_NAMES
from zeroseg.platform.store import PRIMARY_METRIC, resolve_url

log = logging.getLogger(__name__)

# -- vocabulary ---------------------------------------------------------------------------------
#: Registry method names -> the labels the papers use (unknown names are shown as they are).
METHOD_ORDER = ("Supervised", "Projection", "GMMN", "P-only", "P&A", "PADing")
TASK_ORDER = ("semantic", "instance", "panoptic", "detection")
#: Our task names <-> the papers' abbreviations (ZSD, zero-shot detection, is paper-only).
TASK_ABBREVIATIONS = {"semantic": "ZSS", "instance": "ZSI", "panoptic": "ZSP",
                      "detection": "ZSD"}
PAPER_TASKS = {v: k for k, v in TASK_ABBREVIATIONS.items()}
#: The metrics the leaderboard shows by default (paper names): ZSS mIoU; ZSI mAP@0.5 and
#: Recall@100; ZSP PQ / SQ / RQ.
DEFAULT_METRICS = ("mIoU", "mAP50", "Recall@100", "PQ", "SQ", "RQ")
METRIC_ORDER = tuple(PAPER_METRIC_NAMES.values())
#: Paper spellings of the same quantity as one of our metric names.
PAPER_METRIC_ALIASES = {"Recall@100@0.5": "Recall@100"}
PAPER_METHOD_ALIASES = {"GMMN baseline": "GMMN"}
PAPER_TITLES = {"pading_cvpr2023": "PADing CVPR 2023", "zsi_cvpr2021": "ZSI CVPR 2021",
                "cap2seg_mm2020": "Cap2Seg ACM MM 2020"}
#: (paper dataset, paper split) -> the registry split it corresponds to; others are shown as
#: ``dataset/split (paper)``.
PAPER_SPLITS = {
    ("coco-panoptic", "119/14"): "coco-panoptic/zsp-119-14",
    ("coco-stuff", "156/15"): "coco-stuff/spnet-156-15",
    ("coco-stuff", "cap2seg-167/15"): "coco-stuff/cap2seg-15",
    ("coco2014", "48/17"): "coco2014/zsi-48-17",
    ("coco2014", "65/15"): "coco2014/zsi-65-15",
    ("pascal-voc12", "spnet-15/5"): "voc12/spnet-15-5",
    ("pascal-voc12", "zs3-14/6"): "voc12/zs3-6",
}
OURS = "ours"
#: Run kinds the leaderboard counts by default (sweep trials are model selection, not results).
DEFAULT_KINDS = ("train", "reproduction", "eval")
SUBSETS = ("seen", "unseen", "hm")

#: Columns of the leaderboard view, in order (``±`` columns are standard deviations).
VIEW_KEYS = ["Source", "Method", "Config", "Task", "Metric", "Split", "Embedding", "Backbone",
             "Setting", "Eval split"]
VIEW_VALUES = ["Seen", "Seen ±", "Unseen", "Unseen ±", "HM", "HM ±"]
VIEW_COLUMNS = VIEW_KEYS + VIEW_VALUES + ["Runs", "Seeds"]


def method_label(name: Any) -> str:
    """The table label of a registered method (PADing Table 1 names); others as they are."""
    if name is None or (isinstance(name, float) and math.isnan(name)):
        return "-"
    return registry_label(str(name))


def metric_label(key: str) -> str:
    return PAPER_METRIC_NAMES.get(key, key)


def split_label(dataset: Any, split: Any) -> str:
    """``dataset/split`` without repeating the dataset (registry splits start with it)."""
    dataset = None if _missing(dataset) else str(dataset)
    split = None if _missing(split) else str(split)
    if split and (not dataset or split.startswith(f"{dataset}/")):
        return split
    return "/".join(x for x in (dataset, split) if x) or "-"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def pct(value: Any, digits: int = 1) -> str:
    """A fraction as a percentage with ``digits`` decimals ("-" when missing)."""
    if _missing(value):
        return "-"
    return f"{100.0 * float(value):.{digits}f}"


def _order(values: Iterable[Any], order: Sequence[str]) -> list[Any]:
    rank = {v: i for i, v in enumerate(order)}
    return sorted(set(values), key=lambda v: (rank.get(v, len(rank)), str(v)))


# -- reference figures --------------------------------------------------------------------------
def _reference_text(name: str) -> str:
    return files("zeroseg.dashboards.reference").joinpath(name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def paper_results() -> pd.DataFrame:
    """The papers' reported figures (``reference/paper_results.csv``) in the view's
    vocabulary: one row per paper row, values in percent, ``Source`` naming paper and table."""
    import io

    raw = pd.read_csv(io.StringIO(_reference_text("paper_results.csv")),
                      dtype={"table": str, "split": str})
    out = pd.DataFrame({
        "Source": [f"paper: {PAPER_TITLES.get(s, s)}, Table {t}"
                   for s, t in zip(raw["source"], raw["table"], strict=True)],
        "Method": [PAPER_METHOD_ALIASES.get(m, m) for m in raw["method"]],
        "Config": "-",
        "Task": [PAPER_TASKS.get(t, t.lower()) for t in raw["task"]],
        "Metric": [PAPER_METRIC_ALIASES.get(m, m) for m in raw["metric"]],
        "Split": [PAPER_SPLITS.get((d, s), f"{d}/{s} (paper)")
                  for d, s in zip(raw["dataset"], raw["split"], strict=True)],
        "Embedding": raw["embedding"].astype(str),
        "Backbone": raw["backbone"].astype(str),
        "Setting": raw["setting"].str.upper(),
        "Eval split": "test",
        "Seen": raw["seen"].astype(float), "Seen ±": np.nan,
        "Unseen": raw["unseen"].astype(float), "Unseen ±": np.nan,
        "HM": raw["hm"].astype(float), "HM ±": np.nan,
        "Runs": np.nan, "Seeds": "",
    })
    return out[VIEW_COLUMNS]


@lru_cache(maxsize=1)
def primitives_table() -> pd.DataFrame:
    """PADing's Table 3: unseen PQ (percent) against the number of primitives."""
    import io

    return pd.read_csv(io.StringIO(_reference_text("pading_primitives_table3.csv")))


# -- leaderboard --------------------------------------------------------------------------------
def config_label(kind: Any, sweep: Any, trial_id: Any, source_run_id: Any,
                 sources: Mapping[int, str] | None = None) -> str:
    """Which configuration a run ran: ``-`` for a plain run (its method's config), ``trial
    SWEEP/ID`` for a sweep trial, ``reproduction of SWEEP/ID`` for a reproduction (``sources``
    maps a source run id to its ``SWEEP/ID``). Runs of different configs are never averaged."""
    if kind == "trial":
        return f"trial {sweep}/{trial_id}"
    if kind == "reproduction":
        src = -1 if _missing(source_run_id) else int(source_run_id)
        return f"reproduction of {(sources or {}).get(src, f'run {src}')}"
    return "-"


#: Columns of :func:`leaderboard_runs` (one row per run x task x setting x eval split x metric).
RUN_TABLE_COLUMNS = ["run_id", "kind", "status", "method", "dataset", "split", "embedding",
                     "backbone", "seed", "sweep", "trial_id", "source_run_id", "task", "setting",
                     "eval_split", "metric", "seen", "unseen", "hm", "Method", "Config",
                     "Split", "Metric"]
_CATEGORIES = ["kind", "status", "method", "embedding", "backbone", "task", "setting",
               "eval_split", "metric", "Method", "Config", "Split", "Metric"]


def source_names(runs: pd.DataFrame) -> dict[int, str]:
    """``run id -> "SWEEP/TRIAL"`` of the runs that reproductions point at (``runs`` must
    hold them: the dashboard reads every run's columns anyway)."""
    wanted = {int(v) for v in runs["source_run_id"].dropna()} if len(runs) else set()
    rows = runs[runs["id"].isin(wanted)] if wanted else runs.iloc[0:0]
    return {int(r.id): f"{r.sweep}/{r.trial_id}" if isinstance(r.sweep, str) else f"run {r.id}"
            for r in rows.itertuples(index=False)}


def older_copies(runs: pd.DataFrame) -> set[int]:
    """Ids of finished runs that have a newer finished run of the same kind, method, config
    hash, seed and source (a seed re-run under another code version): like ``zeroseg results
    table`` (:func:`~zeroseg.platform.pipeline.report.newest_per_seed`), the leaderboard counts
    each seed once."""
    keys = ["kind", "method", "config_hash", "seed", "source_run_id", "sweep", "trial_id"]
    if "config_hash" not in runs:
        return set()
    finished = runs[runs["status"] == "finished"].sort_values("id")
    newest = finished.drop_duplicates(keys, keep="last")
    return {int(i) for i in finished["id"]} - {int(i) for i in newest["id"]}


def leaderboard_runs(summary: pd.DataFrame, runs: pd.DataFrame,
                     sources: Mapping[int, str] | None = None) -> pd.DataFrame:
    """One row per run x task x setting x eval split x metric with its ``seen`` / ``unseen``
    / ``hm`` fractions, the run's columns and the view's labels.

    ``summary``: :func:`~zeroseg.dashboards.queries.summary_frame`; ``runs``:
    :func:`~zeroseg.dashboards.queries.runs_frame`; ``sources``: see :func:`config_label`
    (default: :func:`source_names` of ``runs``).
    Labels are computed once per run, and the text columns are categorical, so filtering and
    grouping a store of 10,000 runs takes milliseconds.
    """
    if summary.empty or runs.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in RUN_TABLE_COLUMNS})
    r = runs[["id", "kind", "status", "method", "dataset", "split", "embedding", "backbone",
              "seed", "sweep", "trial_id", "source_run_id"]].rename(columns={"id": "run_id"})
    r = r[~r["run_id"].isin(older_copies(runs))].copy()
    sources = source_names(runs) if sources is None else sources
    r["Method"] = [method_label(m) for m in r["method"]]
    r["Split"] = [split_label(d, sp) for d, sp in zip(r["dataset"], r["split"], strict=True)]
    r["Config"] = [config_label(k, sw, t, src, sources) for k, sw, t, src in zip(
        r["kind"], r["sweep"], r["trial_id"], r["source_run_id"], strict=True)]
    for c in ("method", "embedding", "backbone"):
        r[c] = [("-" if _missing(v) else str(v)) for v in r[c]]
    r["seed"] = pd.array([None if _missing(v) else int(v) for v in r["seed"]], dtype="Int64")
    out = summary.merge(r, on="run_id", how="inner", validate="many_to_one")
    names = {m: metric_label(m) for m in out["metric"].unique()}
    out["Metric"] = out["metric"].map(names)
    out = out.dropna(subset=list(SUBSETS), how="all")
    for c in _CATEGORIES:
        out[c] = out[c].astype(str).astype("category")
    return out[RUN_TABLE_COLUMNS].reset_index(drop=True)


def concat_runs(parts: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate :func:`leaderboard_runs` frames, keeping the text columns categorical."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in RUN_TABLE_COLUMNS})
    if len(parts) == 1:
        return parts[0]
    out = pd.concat(parts, ignore_index=True)
    for c in _CATEGORIES:
        out[c] = out[c].astype(str).astype("category")
    return out


@dataclass(frozen=True)
class LeaderboardFilter:
    """What the leaderboard shows. Empty tuples mean "all"."""

    setting: str = "gzsl"
    eval_split: str = "test"
    tasks: tuple[str, ...] = ()
    metrics: tuple[str, ...] = DEFAULT_METRICS
    methods: tuple[str, ...] = ()  # display labels
    splits: tuple[str, ...] = ()  # split labels (:func:`split_label`)
    embeddings: tuple[str, ...] = ()
    backbones: tuple[str, ...] = ()
    kinds: tuple[str, ...] = DEFAULT_KINDS
    finished_only: bool = True
    papers: bool = True


def filter_options(labelled: pd.DataFrame, papers: pd.DataFrame | None = None
                   ) -> dict[str, list[str]]:
    """Choices for each leaderboard filter: what our runs (and the papers) contain."""
    papers = paper_results() if papers is None else papers
    ours = labelled

    def both(ours_col: str, paper_col: str) -> list[str]:
        values = [str(v) for v in ours[ours_col].dropna().unique()] if ours_col in ours else []
        return values + [str(v) for v in papers[paper_col].dropna().unique()]

    return {
        "tasks": _order(both("task", "Task"), TASK_ORDER),
        "metrics": _order(both("Metric", "Metric"), METRIC_ORDER),
        "methods": _order(both("Method", "Method"), METHOD_ORDER),
        "splits": sorted(set(both("Split", "Split"))),
        "embeddings": sorted(set(both("embedding", "Embedding"))),
        "backbones": sorted(set(both("backbone", "Backbone"))),
        "kinds": sorted({str(v) for v in ours["kind"].dropna().unique()}) if "kind" in ours
        else [],
    }


def _select(frame: pd.DataFrame, column: str, values: tuple[str, ...]) -> pd.DataFrame:
    return frame[frame[column].isin(values)] if values else frame


def _seeds(values: pd.Series) -> str:
    seeds = sorted({int(v) for v in values.dropna()})
    return ",".join(map(str, seeds))


def aggregate(labelled: pd.DataFrame, f: LeaderboardFilter) -> pd.DataFrame:
    """Our rows of the view: mean / std over runs, percent (see the module docstring)."""
    rows = labelled
    rows = rows[(rows["setting"] == f.setting) & (rows["eval_split"] == f.eval_split)]
    if f.finished_only:
        rows = rows[rows["status"] == "finished"]
    rows = _select(rows, "kind", f.kinds)
    rows = _select(rows, "task", f.tasks)
    rows = _select(rows, "Metric", f.metrics)
    rows = _select(rows, "Method", f.methods)
    rows = _select(rows, "Split", f.splits)
    rows = _select(rows, "embedding", f.embeddings)
    rows = _select(rows, "backbone", f.backbones)
    if rows.empty:
        return pd.DataFrame(columns=VIEW_COLUMNS)
    keys = ["Method", "Config", "task", "Metric", "Split", "embedding", "backbone"]
    grouped = rows.groupby(keys, sort=False, dropna=False, observed=True)
    stats = grouped[list(SUBSETS)].agg(["mean", "std"]) * 100.0
    out = pd.DataFrame({
        "Source": OURS,
        "Method": [k[0] for k in stats.index],
        "Config": [k[1] for k in stats.index],
        "Task": [k[2] for k in stats.index],
        "Metric": [k[3] for k in stats.index],
        "Split": [k[4] for k in stats.index],
        "Embedding": [str(k[5]) for k in stats.index],
        "Backbone": [str(k[6]) for k in stats.index],
        "Setting": f.setting.upper(),
        "Eval split": f.eval_split,
    })
    for subset, name in zip(SUBSETS, ("Seen", "Unseen", "HM"), strict=True):
        out[name] = stats[(subset, "mean")].to_numpy()
        out[f"{name} ±"] = stats[(subset, "std")].to_numpy()
    out["Runs"] = grouped.size().to_numpy().astype(float)
    out["Seeds"] = _group_seeds(grouped.ngroup().to_numpy(), rows["seed"], len(out))
    return out[VIEW_COLUMNS]


def _group_seeds(group: np.ndarray, seeds: pd.Series, n: int) -> list[str]:
    """``"0,1,2"`` per group: the sorted distinct seeds of its rows (vectorised)."""
    seed = seeds.to_numpy(dtype=float, na_value=np.nan)
    keep = ~np.isnan(seed)
    pairs = np.unique(np.stack([group[keep], seed[keep]], axis=1), axis=0) if keep.any() \
        else np.zeros((0, 2))
    out: list[list[str]] = [[] for _ in range(n)]
    for g, v in pairs:
        out[int(g)].append(str(int(v)))
    return [",".join(v) for v in out]


def paper_rows(f: LeaderboardFilter, papers: pd.DataFrame | None = None) -> pd.DataFrame:
    """The papers' figures that match ``f`` (they report the test split only)."""
    papers = paper_results() if papers is None else papers
    if not f.papers or f.eval_split != "test":
        return papers.iloc[0:0]
    rows = papers[papers["Setting"] == f.setting.upper()]
    for column, values in (("Task", f.tasks), ("Metric", f.metrics), ("Method", f.methods),
                           ("Split", f.splits), ("Embedding", f.embeddings),
                           ("Backbone", f.backbones)):
        rows = _select(rows, column, values)
    return rows


def sort_view(view: pd.DataFrame) -> pd.DataFrame:
    """Papers' row order: task, split (ours first), metric, then our rows before the papers',
    methods in the papers' order."""
    if view.empty:
        return view.reset_index(drop=True)
    task = {t: i for i, t in enumerate(TASK_ORDER)}
    metric = {m: i for i, m in enumerate(METRIC_ORDER)}
    method = {m: i for i, m in enumerate(METHOD_ORDER)}
    our_splits = set(view.loc[view["Source"] == OURS, "Split"])
    key = pd.DataFrame({
        "task": view["Task"].map(lambda t: task.get(t, len(task))),
        "paper_split": ~view["Split"].isin(our_splits),
        "split": view["Split"],
        "metric": view["Metric"].map(lambda m: metric.get(m, len(metric))),
        "embedding": view["Embedding"],
        "paper": view["Source"] != OURS,
        "source": view["Source"],
        "method": view["Method"].map(lambda m: method.get(m, len(method))),
        "name": view["Method"],
        "config": view["Config"],
    }, index=view.index)
    order = key.sort_values(list(key.columns), kind="stable").index
    return view.loc[order].reset_index(drop=True)


def leaderboard_view(labelled: pd.DataFrame, f: LeaderboardFilter,
                     papers: pd.DataFrame | None = None) -> pd.DataFrame:
    """The rows the leaderboard shows for filter ``f``: ours, then the papers' beside them."""
    parts = [p for p in (aggregate(labelled, f), paper_rows(f, papers)) if not p.empty]
    if not parts:
        return pd.DataFrame(columns=VIEW_COLUMNS)
    view = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    view = view[VIEW_COLUMNS].copy()
    view["Runs"] = view["Runs"].astype("Int64")  # the papers' rows have none
    return sort_view(view)


# -- exports ------------------------------------------------------------------------------------
def view_to_csv(view: pd.DataFrame) -> str:
    """The view as CSV: the same rows and columns, percentages with two decimals."""
    return view.to_csv(index=False, float_format="%.2f", lineterminator="\n")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX_SPECIAL))


def latex_escape(text: Any) -> str:
    return _LATEX_RE.sub(lambda m: _LATEX_SPECIAL[m.group(0)], str(text))


def _cell(mean: Any, std: Any) -> str:
    if _missing(mean):
        return "--"
    text = f"{float(mean):.1f}"
    if not _missing(std):
        text += rf" $\pm$ {float(std):.1f}"
    return text


def view_to_latex(view: pd.DataFrame, *, caption: str = "", label: str = "tab:zeroseg"
                  ) -> str:
    """A booktabs table of exactly the view's rows (``\\usepackage{booktabs}``).

    Columns with one value across all rows move into the caption, so a filtered view reads like
    a paper table. Cells are ``mean $\\pm$ std`` in percent with one decimal.
    """
    keys = [c for c in VIEW_KEYS if c in view]
    constant = [c for c in keys if view[c].astype(str).nunique() <= 1] if len(view) > 1 else []
    shown = [c for c in keys if c not in constant]
    header = shown + ["Seen", "Unseen", "HM", "Runs"]
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{" + "l" * len(shown)
             + "rrrr}", r"\toprule", " & ".join(latex_escape(h) for h in header) + r" \\",
             r"\midrule"]
    columns = [view[c].tolist() for c in shown + VIEW_VALUES + ["Runs"]]
    for values in zip(*columns, strict=True):
        keys, (s, s_sd, u, u_sd, h, h_sd, runs) = values[:len(shown)], values[len(shown):]
        cells = [latex_escape(v) for v in keys]
        cells += [_cell(s, s_sd), _cell(u, u_sd), _cell(h, h_sd),
                  "--" if _missing(runs) else str(int(runs))]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    fixed = [f"{c}: {view[c].iloc[0]}" for c in constant if len(view)]
    text = "; ".join(latex_escape(x) for x in [caption, *fixed] if x)
    text = (f"{text}. " if text else "") + r"Values in \%, mean $\pm$ std over runs."
    lines += [r"\caption{" + text + "}", r"\label{" + label + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# -- sweeps -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Objective:
    """A sweep's objective, ``eval_split/task/setting/subset/metric``."""

    eval_split: str = "val"
    task: str = "semantic"
    setting: str = "gzsl"
    subset: str = "hm"
    metric: str = "iou"
    mode: str = "max"

    @property
    def key(self) -> str:
        return "/".join((self.eval_split, self.task, self.setting, self.subset, self.metric))

    @property
    def label(self) -> str:
        subset = {"hm": "HM", "seen": "seen", "unseen": "unseen"}.get(self.subset, self.subset)
        return (f"{self.eval_split} {subset} {metric_label(self.metric)} "
                f"({TASK_ABBREVIATIONS.get(self.task, self.task)}, {self.setting.upper()})")


def parse_objective(text: str | None, mode: str | None = None) -> Objective:
    """``"val/semantic/gzsl/hm/iou"`` -> :class:`Objective`; missing parts take the
    defaults (validation HM of the task's primary metric, GZSL)."""
    mode = mode if mode in ("max", "min") else "max"
    parts = [p for p in str(text or "").strip().split("/") if p]
    if len(parts) == 5:
        return Objective(*parts, mode=mode)
    task = next((p for p in parts if p in PRIMARY_METRIC), "semantic")
    return Objective(task=task, metric=PRIMARY_METRIC[task], mode=mode)


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
        if _missing(value) and not _missing(curve_last.get(int(t.id))):
            value, source = curve_last[int(t.id)], "curve"
        elif _missing(value):
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
    """The Optuna storage next to a SQLite results store (``PATH/optuna.db``), opened
    read-only; ``None`` for other databases or when the file does not exist."""
    if not store_url:
        return None
    from pathlib import Path

    url = resolve_url(store_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    path = Path(url.database).parent / "optuna.db"
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
    if trial_id is not None and not _missing(trial_id):
        return f"zeroseg reproduce {sweep} --trial {trial_id} --seeds {seeds}"
    return f"zeroseg reproduce {sweep} --top {top} --seeds {seeds}"


# -- reproductions ------------------------------------------------------------------------------
def reproduction_table(reproductions: pd.DataFrame, sources: pd.DataFrame,
                       objectives: Mapping[int, Objective],
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
        if _missing(r.source_run_id):
            continue
        source_id = int(r.source_run_id)
        source = src.loc[source_id] if source_id in getattr(src, "index", []) else None
        objective = objectives.get(source_id, Objective())
        seeds_rows.append({
            "source_run_id": source_id,
            "sweep": None if source is None else source.get("sweep"),
            "trial_id": None if source is None else source.get("trial_id"),
            "method": method_label(r.method), "run_id": int(r.id),
            "seed": None if _missing(r.seed) else int(r.seed), "status": r.status,
            "objective": objective.label,
            "value": _pct_float(values.get(int(r.id))),
            "test_hm": _pct_float(test_hm.get(int(r.id))),
        })
    seeds = pd.DataFrame(seeds_rows, columns=["source_run_id", "sweep", "trial_id", "method",
                                              "run_id", "seed", "status", "objective",
                                              "value", "test_hm"])
    rows = []
    for source_id, group in seeds.groupby("source_run_id", sort=True):
        source_id = int(source_id)
        sweep_value = _pct_float(values.get(source_id))
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
            "Δ (mean − sweep)": mean - sweep_value if not _missing(sweep_value) else np.nan,
            "Seeds": _seeds(group["seed"]), "Runs": len(group),
            "Test HM mean": float(test.mean()) if len(test) else np.nan,
            "Test HM std": float(test.std()) if len(test) > 1 else np.nan,
        })
    summary = pd.DataFrame(rows, columns=[
        "Sweep", "Trial", "Source run", "Method", "Objective", "Sweep value",
        "Reproduced mean", "Reproduced std", "Min", "Max", "Δ (mean − sweep)", "Seeds", "Runs",
        "Test HM mean", "Test HM std"])
    return summary, seeds


def _pct_float(value: Any) -> float:
    return np.nan if _missing(value) else 100.0 * float(value)


# -- run detail ---------------------------------------------------------------------------------
AUDIT_LABELS = {
    "protocol": "training filter protocol",
    "images_total": "training images (total)",
    "images_kept": "training images kept",
    "images_dropped": "training images dropped (unseen present)",
    "unseen_instances_in_training": "unseen instances seen in training",
    "unseen_pixels_in_training": "unseen pixels seen in training",
    "text_encoder": "text encoder",
    "text_encoder_pretraining": "text encoder pretraining",
    "backbone_init": "backbone initialisation",
    "hyperparameters_chosen_on": "hyperparameters chosen on",
    "passed": "audit passed",
}


def audit_table(audit: Any) -> pd.DataFrame:
    """The leakage audit as a two-column table (known keys first, with readable names)."""
    if not isinstance(audit, Mapping) or not audit:
        return pd.DataFrame(columns=["Check", "Value"])
    keys = [k for k in AUDIT_LABELS if k in audit] + sorted(k for k in audit
                                                            if k not in AUDIT_LABELS)

    def show(v: Any) -> str:
        if isinstance(v, bool):
            return "yes" if v else "NO"
        if isinstance(v, Mapping | list):
            return json.dumps(v, sort_keys=True)
        return "-" if v is None else str(v)

    return pd.DataFrame({"Check": [AUDIT_LABELS.get(k, k.replace("_", " ")) for k in keys],
                         "Value": [show(audit[k]) for k in keys]})


def audit_warnings(audit: Any) -> list[str]:
    """Lines to highlight: a failed audit or unseen data that reached training."""
    if not isinstance(audit, Mapping):
        return []
    out = []
    if audit.get("passed") is False:
        out.append("the leakage audit FAILED for this run")
    for key in ("unseen_instances_in_training", "unseen_pixels_in_training"):
        value = audit.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            out.append(f"{AUDIT_LABELS[key]}: {value}")
    return out


def headline_table(metrics: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Seen / unseen / HM (percent) of every task, metric, setting and eval split of a run."""
    rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for m in metrics:
        if m.get("subset") not in SUBSETS:
            continue
        key = (m["task"], m["setting"], m["eval_split"], m["metric"])
        rows.setdefault(key, {})[m["subset"]] = m.get("value")
    order = {t: i for i, t in enumerate(TASK_ORDER)}
    metric_rank = {k: i for i, k in enumerate(PAPER_METRIC_NAMES)}
    out = [{"Task": t, "Setting": s.upper(), "Eval split": e, "Metric": metric_label(k),
            "Seen": _pct_float(v.get("seen")), "Unseen": _pct_float(v.get("unseen")),
            "HM": _pct_float(v.get("hm"))}
           for (t, s, e, k), v in sorted(rows.items(), key=lambda kv: (
               order.get(kv[0][0], 9), kv[0][2] != "test", kv[0][1],
               metric_rank.get(kv[0][3], 99)))]
    return pd.DataFrame(out, columns=["Task", "Setting", "Eval split", "Metric", "Seen",
                                      "Unseen", "HM"])


def per_class_table(metrics: Sequence[Mapping[str, Any]], unseen: Iterable[str],
                    *, task: str, setting: str, eval_split: str, metric: str) -> pd.DataFrame:
    """Per-class values (percent) of one metric, with each class's role (seen / unseen)."""
    unseen = set(unseen)
    rows = [{"Class": m["class_name"],
             "Role": "unseen" if m["class_name"] in unseen else "seen",
             "Value": _pct_float(m.get("value"))}
            for m in metrics
            if m.get("subset") == "class" and m["task"] == task and m["setting"] == setting
            and m["eval_split"] == eval_split and m["metric"] == metric]
    frame = pd.DataFrame(rows, columns=["Class", "Role", "Value"])
    return frame.sort_values(["Role", "Value"], ascending=[True, False],
                             kind="stable").reset_index(drop=True)


def curves_table(curves: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([{"curve": c["name"], "step": c["step"], "value": c["value"]}
                         for c in curves], columns=["curve", "step", "value"])


# -- generator fidelity (validation protocol) ---------------------------------------------------
#: The summary rows of a run's fidelity diagnostics: (label, key, digits).
FIDELITY_SUMMARY = (
    ("MMD (sqrt, per class, mean)", "mmd", 3),
    ("nearest-fake-mean accuracy (balanced)", "ncm_accuracy", 2),
    ("chance", "chance", 2),
    ("between / within variance of the fakes", "variance_ratio", 3),
    ("between / within variance of the real embeddings", "real_variance_ratio", 3),
    ("held-out classes", "classes", 0),
    ("real held-out embeddings", "real_rows", 0),
    ("fakes per class", "fakes_per_class", 0),
)


def fidelity_tables(artifacts: Any) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """A run's generator fidelity diagnostics (``artifacts["fidelity"]["val"]``, written by
    methods/fidelity.py on the validation protocol): a summary table (Measure, Value) and one
    row per held-out class (Class, Real, MMD, NCM accuracy); ``None`` when the run has none."""
    fid = ((artifacts or {}).get("fidelity") or {}).get("val") if isinstance(
        artifacts, Mapping) else None
    if not isinstance(fid, Mapping):
        return None

    def fmt(value: Any, digits: int) -> str:
        if _missing(value):
            return "-"
        return f"{int(value)}" if digits == 0 else f"{float(value):.{digits}f}"

    summary = pd.DataFrame([(label, fmt(fid.get(key), digits))
                            for label, key, digits in FIDELITY_SUMMARY],
                           columns=["Measure", "Value"])
    rows = [(r.get("name"), r.get("real"), r.get("mmd"), r.get("ncm_accuracy"))
            for r in fid.get("per_class") or []]
    per_class = pd.DataFrame(rows, columns=["Class", "Real", "MMD", "NCM accuracy"])
    return summary, per_class
