"""Streamlit glue shared by the pages: which store, cached reads, messages instead of tracebacks.

**Which store.** ``streamlit run app.py -- --store URL`` (what ``zeroseg dashboard --store URL``
runs), else ``$ZEROSEG_STORE``, else ``.zeroseg/results.db`` — the same resolution as every
other ``zeroseg`` command (:func:`zeroseg.platform.store.resolve_url`). The store is opened
read-only; the dashboard never writes.

**Caching.** :func:`revision` asks the store what changed (a few aggregate queries, cached
for :data:`REVISION_TTL_S` seconds); the heavy reads are ``st.cache_data`` functions keyed by
the store URL *and* that revision, so a page is re-read from the database only when new rows
arrived, and a store of 10,000 runs renders from memory on every other rerun.

**Messages.** :func:`page_store` stops a page with one helpful line when the store cannot be
read (not found, not a zeroseg store, older schema: run ``zeroseg results migrate``; empty
store: how to fill it);
:func:`section` shows a one-line warning in place of a part of a page that failed, and logs the
traceback, so one unreadable artifact never takes the page down.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd
import streamlit as st

from zeroseg.dashboards.data import leaderboard
from zeroseg.dashboards.data import reproductions as reproduction_data
from zeroseg.dashboards.data import sweeps as sweep_data
from zeroseg.platform.errors import ZerosegError
from zeroseg.platform.store import Store, StoreError, open_store, queries, resolve_url

log = logging.getLogger(__name__)

REVISION_TTL_S = 3.0
EMPTY_HELP = ("Fill it with `zeroseg run` (a training run), `zeroseg sweep` (a sweep) or "
              "`zeroseg demo`, then reload this page.")


def store_argument(argv: list[str] | None = None) -> str | None:
    """``--store URL`` from the script arguments (after ``--`` of ``streamlit run``)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--store", default=None)
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return args.store


def store_url() -> str:
    """The store's URL (password included: it only keys caches in this process)."""
    return resolve_url(store_argument()).render_as_string(hide_password=False)


@st.cache_resource(show_spinner=False, max_entries=4)
def _cached_store(url: str) -> Store:
    return open_store(url, read_only=True, create=False)


def get_store(url: str) -> Store:
    """The read-only store at ``url``, kept open. A store that cannot be opened (not found yet,
    an older schema) raises; Streamlit does not cache that, so the next rerun tries again and
    the store appears as soon as a run creates it."""
    return _cached_store(url)


@st.cache_data(ttl=REVISION_TTL_S, show_spinner=False, max_entries=16)
def revision(url: str) -> dict[str, tuple[Any, ...]]:
    return queries.revisions(get_store(url))


@st.cache_data(show_spinner="Reading the results store…", max_entries=4)
def labelled_runs(url: str, part: str, rev: tuple[Any, ...]) -> pd.DataFrame:
    """:func:`~zeroseg.dashboards.data.leaderboard.leaderboard_runs` of the store's results
    (``part="results"``: every run but sweep trials) or of its sweep trials (``"trials"``),
    cached per revision of that part."""
    store = get_store(url)
    return leaderboard.leaderboard_runs(queries.summary_frame(store, part), run_list(url, rev))


@st.cache_data(show_spinner=False, max_entries=4)
def leaderboard_rows(url: str, trials: bool, revs: tuple[tuple[Any, ...], ...]
                     ) -> pd.DataFrame:
    """The results' rows (:func:`labelled_runs`), with the sweep trials' when ``trials``;
    ``revs``: the (results, trials) revisions."""
    parts = [labelled_runs(url, "results", revs[0])]
    if trials:
        parts.append(labelled_runs(url, "trials", revs[1]))
    return leaderboard.concat_runs(parts)


@st.cache_data(show_spinner=False, max_entries=4)
def sweeps(url: str, rev: tuple[Any, ...]) -> pd.DataFrame:
    rows = get_store(url).sweeps()
    return pd.DataFrame(rows, columns=["id", "name", "method", "space", "objective", "mode",
                                       "settings", "status", "created_at", "finished_at",
                                       "trials"])


@st.cache_data(show_spinner="Reading the sweep's trials…", max_entries=16)
def sweep_trials(url: str, sweep: str, task: str, setting: str, eval_split: str, subset: str,
                 metric: str, rev: tuple[Any, ...]) -> pd.DataFrame:
    """:func:`sweep_data.trial_table` of one sweep (objective values and knobs)."""
    store = get_store(url)
    trials = queries.runs_frame(store, kind="trial", sweep=sweep, config=True)
    ids = [int(i) for i in trials["id"]]
    values = queries.metric_values(store, ids, task=task, setting=setting,
                                   eval_split=eval_split, subset=subset, metric=metric)
    missing = [i for i in ids if values.get(i) is None]
    last: dict[int, Any] = {}
    if missing:
        curve = queries.curve_frame(store, missing, "val/hm")
        if len(curve):
            last = curve.groupby("run_id")["value"].last().to_dict()
    return sweep_data.trial_table(trials, values, last)


@st.cache_data(show_spinner=False, max_entries=32)
def trial_curves(url: str, run_ids: tuple[int, ...], name: str, rev: tuple[Any, ...]
                 ) -> pd.DataFrame:
    return queries.curve_frame(get_store(url), list(run_ids), name)


@st.cache_data(show_spinner="Computing knob importance…", max_entries=16)
def importance(url: str, sweep: str, table: pd.DataFrame, mode: str, rev: tuple[Any, ...]
               ) -> sweep_data.Importance:
    return sweep_data.knob_importance(table, study_name=sweep, store_url=url, mode=mode)


@st.cache_data(show_spinner=False, max_entries=8)
def run_list(url: str, rev: tuple[Any, ...]) -> pd.DataFrame:
    """Every run's columns (no JSON), newest first."""
    return queries.runs_frame(get_store(url))


@st.cache_data(show_spinner=False, max_entries=32)
def run_detail(url: str, run_id: int, rev: tuple[Any, ...]) -> dict[str, Any]:
    return get_store(url).run(run_id)


@st.cache_data(show_spinner="Reading the reproductions…", max_entries=4)
def reproductions(url: str, rev: tuple[Any, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    store = get_store(url)
    repro = queries.runs_frame(store, kind="reproduction")
    source_ids = sorted({int(i) for i in repro["source_run_id"].dropna()})
    sources = queries.runs_frame(store, ids=source_ids)
    sweep_rows = {s["name"]: s for s in store.sweeps()}
    objectives: dict[int, sweep_data.SweepObjective] = {}
    for s in sources.itertuples(index=False):
        sweep = sweep_rows.get(s.sweep) if isinstance(s.sweep, str) else None
        objectives[int(s.id)] = sweep_data.parse_objective(
            sweep.get("objective") if sweep else None, sweep.get("mode") if sweep else None)
    values: dict[int, Any] = {}
    test_hm: dict[int, Any] = {}
    for objective in set(objectives.values()):
        group = [i for i, o in objectives.items() if o == objective]
        runs = group + [int(r.id) for r in repro.itertuples(index=False)
                        if not pd.isna(r.source_run_id) and int(r.source_run_id) in group]
        values.update(queries.metric_values(
            store, runs, task=objective.task, setting=objective.setting,
            eval_split=objective.eval_split, subset=objective.subset, metric=objective.metric))
        test_hm.update(queries.metric_values(
            store, runs, task=objective.task, setting=objective.setting, eval_split="test",
            subset="hm", metric=objective.metric))
    return reproduction_data.reproduction_table(repro, sources, objectives, values, test_hm)


# -- page scaffolding ---------------------------------------------------------------------------
def page_store() -> tuple[Store, str]:
    """The page's store and URL; stops the page with a one-line message when there is nothing
    to show (unreadable or older store, empty store)."""
    try:
        url = store_url()
        store = get_store(url)
        empty = store.is_empty()
    except ZerosegError as e:
        message = str(e)
        if "zeroseg results migrate" in message:
            st.error(f"This results store was written by an older zeroseg. {message}, then "
                     "reload this page.", icon=":material/upgrade:")
        elif message.endswith(": not found"):
            st.error(f"The results {message}. {EMPTY_HELP}", icon=":material/search_off:")
        else:
            st.error(f"The results store cannot be read: {message}", icon=":material/error:")
        st.stop()
    if empty:
        st.info(f"The results store **{store.display}** is empty: no run recorded yet. "
                f"{EMPTY_HELP}", icon=":material/inbox:")
        st.stop()
    return store, url


@contextmanager
def section(what: str) -> Iterator[None]:
    """Show ``what`` could not be displayed (one line) instead of a traceback."""
    try:
        yield
    except StoreError as e:
        st.warning(f"{what}: could not be shown — {e}", icon=":material/warning:")
    except Exception as e:  # noqa: BLE001 - a page must never show a traceback
        log.exception("dashboard: %s failed", what)
        first = str(e).strip().splitlines()
        st.warning(f"{what}: could not be shown — {type(e).__name__}: "
                   f"{first[0] if first else ''}", icon=":material/warning:")


def not_available(what: str) -> None:
    st.caption(f":material/info: {what}: not available for this run.")


def pct_config(columns: list[str], fmt: str = "%.1f") -> dict[str, Any]:
    return {c: st.column_config.NumberColumn(c, format=fmt) for c in columns}


def store_url_display() -> str:
    """The store as shown to people (password hidden)."""
    url = resolve_url(store_argument())
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return url.render_as_string(hide_password=True)
