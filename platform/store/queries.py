"""Bulk, read-only queries of the results store for the dashboard.

:class:`~zeroseg.platform.store.Store`'s readers return one Python dict per row, which is the
right shape for the CLI but slow for a store of 10,000 runs (hundreds of thousands of metric
rows): here the few wide reads the dashboard needs go to the tables in one ``SELECT`` each and
come back as pandas DataFrames. Everything else (one run, its curves, the sweeps table) goes
through the Store's own readers.

Every function checks the store's schema version first (an older store raises the Store's
one-line :class:`~zeroseg.platform.store.StoreError` asking for ``zeroseg results migrate``)
and never writes: the dashboard opens stores with ``read_only=True``.

:func:`revisions` returns cheap fingerprints of what changed in the store; the Streamlit layer
keys its caches on them, so a page re-reads the big tables only when new rows arrived.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Connection, func, select
from sqlalchemy.exc import DBAPIError

from zeroseg.platform.store.records import StoreError
from zeroseg.platform.store.schema import CurvePoint, Metric, Run, Sweep
from zeroseg.platform.store.store import Store

log = logging.getLogger(__name__)

SUBSETS = ("seen", "unseen", "hm")
_CHUNK = 500  # ids per IN (...) list: below SQLite's variable limit, fast on PostgreSQL


def readable(store: Store) -> bool:
    """True when the store exists and holds this code's schema (raises StoreError if older)."""
    if store.engine is None or store.schema_version is None:
        return False
    store.check_version()
    return True


@contextmanager
def _connect(store: Store) -> Iterator[Connection]:
    assert store.engine is not None
    try:
        with store.engine.connect() as conn:
            yield conn
    except DBAPIError as e:
        first = str(getattr(e, "orig", None) or e).strip().splitlines()
        raise StoreError(f"store {store.display}: cannot read "
                         f"({first[0] if first else type(e).__name__})") from None


def _frame(conn: Connection, query: Any, columns: Sequence[str]) -> pd.DataFrame:
    rows = conn.execute(query).all()
    return pd.DataFrame.from_records(rows, columns=list(columns))


def _utc(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    for c in columns:
        if c in frame:
            frame[c] = pd.to_datetime(frame[c], utc=True)
    return frame


def revisions(store: Store) -> dict[str, tuple[Any, ...]]:
    """Fingerprints of the store's contents, one per kind of page data:

    - ``results``: runs other than sweep trials that are not running (count, last update):
      a new result, or metrics added to a finished run, changes it; the heartbeat of a running
      run or a sweep's trials do not (the leaderboard stays cached while a sweep runs);
    - ``trials``: the same for sweep trials;
    - ``live``: any run update, curve point or sweep change (sweep progress, run detail).
    """
    if not readable(store):
        return {"results": ("absent",), "trials": ("absent",), "live": ("absent",)}

    def settled(trials: bool) -> Any:
        kind = Run.kind == "trial" if trials else Run.kind != "trial"
        return select(func.count(Run.id), func.max(Run.updated_at)).where(
            kind, Run.status != "running")

    with _connect(store) as conn:
        results = tuple(map(str, conn.execute(settled(False)).one()))
        trials = tuple(map(str, conn.execute(settled(True)).one()))
        runs = tuple(map(str, conn.execute(select(func.count(Run.id),
                                                  func.max(Run.updated_at))).one()))
        curves = conn.scalar(select(func.max(CurvePoint.id)))
        metrics = conn.scalar(select(func.max(Metric.id)))
        sweeps = tuple(map(str, conn.execute(select(func.count(Sweep.id),
                                                    func.max(Sweep.finished_at))).one()))
    return {"results": results, "trials": trials,
            "live": (runs, curves, metrics, sweeps)}


_SUMMARY_COLUMNS = ["run_id", "task", "setting", "eval_split", "metric", "seen", "unseen", "hm"]


def summary_frame(store: Store, part: str = "all") -> pd.DataFrame:
    """Seen / unseen / HM of every run x task x setting x eval split x metric (one row each:
    ``run_id, task, setting, eval_split, metric, seen, unseen, hm``; fractions, NaN where a
    subset is absent, e.g. seen and HM in ZSL). ``part``: ``"results"`` (every run but sweep
    trials), ``"trials"`` or ``"all"``. Per-class rows are not read; text columns are
    categorical."""
    if part not in ("all", "results", "trials"):
        raise ValueError(f"part: {part!r} is not one of all, results, trials")
    if not readable(store):
        return pd.DataFrame({c: pd.Series(dtype=float if c in SUBSETS else object)
                             for c in _SUMMARY_COLUMNS})
    query = (select(Metric.run_id, Metric.task, Metric.setting, Metric.eval_split,
                    Metric.subset, Metric.metric, Metric.value)
             .join(Run, Run.id == Metric.run_id)
             .where(Metric.subset.in_(SUBSETS), Run.superseded_by.is_(None)))
    if part != "all":
        query = query.where(Run.kind == "trial" if part == "trials" else Run.kind != "trial")
    with _connect(store) as conn:
        rows = conn.execute(query).all()
    # Column-wise construction: much faster than DataFrame.from_records for 10^5-10^6 rows.
    cols = list(zip(*rows, strict=True)) if rows else [()] * 7
    long = pd.DataFrame({
        "run_id": np.array(cols[0], dtype=np.int64),
        **{name: pd.Categorical(np.array(cols[i], dtype=object)) for i, name in
           enumerate(("task", "setting", "eval_split", "subset", "metric"), start=1)},
        "value": np.array([np.nan if v is None else v for v in cols[6]], dtype=float),
    })
    wide = (long.groupby(["run_id", "task", "setting", "eval_split", "metric", "subset"],
                         observed=True, sort=False)["value"].first().unstack("subset"))
    wide = wide.reindex(columns=list(SUBSETS)).reset_index()
    wide.columns.name = None
    return wide[_SUMMARY_COLUMNS]


def runs_frame(store: Store, *, kind: str | None = None, sweep: str | None = None,
               ids: Sequence[int] | None = None, config: bool = False) -> pd.DataFrame:
    """Runs (newest first) as a DataFrame; ``config=True`` adds the JSON config column."""
    cols = ["id", "uid", "name", "kind", "status", "method", "dataset", "split", "embedding",
            "backbone", "seed", "sweep", "trial_id", "source_run_id", "config_hash",
            "code_version", "created_at", "updated_at", "finished_at", "duration_s", "error"]
    if config:
        cols.append("config")
    if not readable(store):
        return pd.DataFrame(columns=cols)
    where = [Run.superseded_by.is_(None)]  # older copies of a run (a migrated v1 store)
    if kind is not None:
        where.append(Run.kind == kind)
    if sweep is not None:
        where.append(Run.sweep == sweep)
    chunks: list[list[int] | None] = [None]
    if ids is not None:
        unique = sorted({int(i) for i in ids})
        chunks = [unique[i:i + _CHUNK] for i in range(0, len(unique), _CHUNK)] or []
    parts = []
    with _connect(store) as conn:
        for chunk in chunks:
            extra = [] if chunk is None else [Run.id.in_(chunk)]
            query = (select(*[getattr(Run, c) for c in cols]).where(*where, *extra)
                     .order_by(Run.id.desc()))
            parts.append(_frame(conn, query, cols))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
    if ids is not None:
        frame = frame.sort_values("id", ascending=False, ignore_index=True)
    return _utc(frame, "created_at", "updated_at", "finished_at")


def metric_values(store: Store, run_ids: Sequence[int], *, task: str, setting: str,
                  eval_split: str, subset: str, metric: str) -> dict[int, float | None]:
    """``run id -> value`` of one metric row (e.g. a sweep's objective) for many runs."""
    if not readable(store) or not run_ids:
        return {}
    unique = sorted({int(i) for i in run_ids})
    out: dict[int, float | None] = {}
    with _connect(store) as conn:
        for i in range(0, len(unique), _CHUNK):
            query = select(Metric.run_id, Metric.value).where(
                Metric.run_id.in_(unique[i:i + _CHUNK]), Metric.task == task,
                Metric.setting == setting, Metric.eval_split == eval_split,
                Metric.subset == subset, Metric.metric == metric,
                Metric.class_name.is_(None))
            out.update({int(r[0]): r[1] for r in conn.execute(query)})
    return out


def curve_frame(store: Store, run_ids: Sequence[int], name: str) -> pd.DataFrame:
    """Points (``run_id, step, value, recorded_at``) of curve ``name`` of many runs."""
    cols = ["run_id", "step", "value", "recorded_at"]
    if not readable(store) or not run_ids:
        return pd.DataFrame(columns=cols)
    unique = sorted({int(i) for i in run_ids})
    parts = []
    with _connect(store) as conn:
        for i in range(0, len(unique), _CHUNK):
            query = (select(CurvePoint.run_id, CurvePoint.step, CurvePoint.value,
                            CurvePoint.recorded_at)
                     .where(CurvePoint.run_id.in_(unique[i:i + _CHUNK]),
                            CurvePoint.name == name)
                     .order_by(CurvePoint.run_id, CurvePoint.step))
            parts.append(_frame(conn, query, cols))
    return _utc(pd.concat(parts, ignore_index=True), "recorded_at")
