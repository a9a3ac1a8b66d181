"""The leaderboard page's data (:mod:`zeroseg.dashboards.views.leaderboard`).

- :func:`leaderboard_runs`, :func:`leaderboard_view`: one row per method x task x metric x split
  x embedding x backbone x setting x evaluation split, with the mean and standard deviation
  (sample std, ``ddof=1``) over runs of the seen, unseen and harmonic-mean class means, the
  number of runs and their seeds. HM is averaged per run (the mean of each run's HM, not the HM
  of the means). Values are shown in percent, like the papers. The papers' own figures
  (:func:`paper_results`, shipped in ``reference/``) join as clearly labelled rows.
- :func:`view_to_csv`, :func:`view_to_latex`: exactly the rows of the current view, as CSV and
  as a booktabs LaTeX table.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from zeroseg.dashboards.data.labels import (
    METRIC_ORDER,
    PAPER_TASKS,
    SUBSETS,
    TASK_ORDER,
    in_order,
    is_missing,
    method_label,
    method_order,
    metric_label,
    reference_text,
    split_label,
)

log = logging.getLogger(__name__)


#: The metrics the leaderboard shows by default (paper names): ZSS mIoU; ZSI and ZSD mAP@0.5 and
#: Recall@100; ZSP PQ / SQ / RQ.
DEFAULT_METRICS = ("mIoU", "mAP50", "Recall@100", "PQ", "SQ", "RQ")
#: Paper spellings of the same quantity as one of our metric names.
PAPER_METRIC_ALIASES = {"Recall@100@0.5": "Recall@100"}
PAPER_METHOD_ALIASES = {"GMMN baseline": "GMMN",
                        "baseline": "ZSI baseline"}  # ZSI Table 4 (methods/zsi: zsi-baseline)
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

#: Columns of the leaderboard view, in order (``±`` columns are standard deviations).
VIEW_KEYS = ["Source", "Method", "Config", "Task", "Metric", "Split", "Embedding", "Backbone",
             "Setting", "Eval split"]
VIEW_VALUES = ["Seen", "Seen ±", "Unseen", "Unseen ±", "HM", "HM ±"]
VIEW_COLUMNS = VIEW_KEYS + VIEW_VALUES + ["Runs", "Seeds"]


@lru_cache(maxsize=1)
def paper_results() -> pd.DataFrame:
    """The papers' reported figures (``reference/paper_results.csv``) in the view's
    vocabulary: one row per paper row, values in percent, ``Source`` naming paper and table."""

    raw = pd.read_csv(io.StringIO(reference_text("paper_results.csv")),
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


# -- leaderboard --------------------------------------------------------------------------------
def config_label(kind: Any, sweep: Any, trial_id: Any, source_run_id: Any,
                 sources: Mapping[int, str] | None = None) -> str:
    """Which configuration a run ran: ``-`` for a plain run (its method's config), ``trial
    SWEEP/ID`` for a sweep trial, ``reproduction of SWEEP/ID`` for a reproduction (``sources``
    maps a source run id to its ``SWEEP/ID``). Runs of different configs are never averaged."""
    if kind == "trial":
        return f"trial {sweep}/{trial_id}"
    if kind == "reproduction":
        src = -1 if is_missing(source_run_id) else int(source_run_id)
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
        r[c] = [("-" if is_missing(v) else str(v)) for v in r[c]]
    r["seed"] = pd.array([None if is_missing(v) else int(v) for v in r["seed"]], dtype="Int64")
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
        "tasks": in_order(both("task", "Task"), TASK_ORDER),
        "metrics": in_order(both("Metric", "Metric"), METRIC_ORDER),
        "methods": in_order(both("Method", "Method"), method_order()),
        "splits": sorted(set(both("Split", "Split"))),
        "embeddings": sorted(set(both("embedding", "Embedding"))),
        "backbones": sorted(set(both("backbone", "Backbone"))),
        "kinds": sorted({str(v) for v in ours["kind"].dropna().unique()}) if "kind" in ours
        else [],
    }


def _select(frame: pd.DataFrame, column: str, values: tuple[str, ...]) -> pd.DataFrame:
    return frame[frame[column].isin(values)] if values else frame


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
    method = {m: i for i, m in enumerate(method_order())}
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
    if is_missing(mean):
        return "--"
    text = f"{float(mean):.1f}"
    if not is_missing(std):
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
                  "--" if is_missing(runs) else str(int(runs))]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    fixed = [f"{c}: {view[c].iloc[0]}" for c in constant if len(view)]
    text = "; ".join(latex_escape(x) for x in [caption, *fixed] if x)
    text = (f"{text}. " if text else "") + r"Values in \%, mean $\pm$ std over runs."
    lines += [r"\caption{" + text + "}", r"\label{" + label + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"
