"""``zeroseg results list / table / sweeps / show / export / migrate``: the results store from
the command line."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from zeroseg.platform.commands.parser import TASK_ORDER
from zeroseg.platform.io import check_writable_file
from zeroseg.platform.pipeline.report import (
    fidelity_table,
    format_tables,
    newest_per_seed,
    store_rows,
)
from zeroseg.platform.store import PRIMARY_METRIC, SCHEMA_VERSION, Store, open_store, resolve_url

PAPER_NAMES = {"iou": "mIoU", "pq": "PQ", "sq": "SQ", "rq": "RQ", "ap50": "mAP50",
               "recall50": "Recall@100"}


def _open(args: argparse.Namespace, *, read_only: bool = True) -> Store:
    return open_store(args.store, read_only=read_only)


def _run_filters(args: argparse.Namespace) -> dict[str, Any]:
    filters = {k: getattr(args, k, None) for k in
               ("method", "dataset", "split", "kind", "status", "sweep")}
    filters = {k: v for k, v in filters.items() if v is not None}
    if getattr(args, "run", None):
        filters["ids"] = [args._store.resolve_run(r) for r in args.run]
    return filters


def _where(run: dict[str, Any]) -> str:
    """``dataset/split`` without repeating the dataset (registry splits start with it)."""
    dataset, split = run.get("dataset"), run.get("split")
    if split and (not dataset or str(split).startswith(f"{dataset}/")):
        return str(split)
    return "/".join(str(x) for x in (dataset, split) if x) or "-"


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
              for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.1f}"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def _empty_message(store) -> str:
    return f"store {store.display} is empty: no run recorded yet"


# -- list ---------------------------------------------------------------------------------------
def cmd_results_list(args: argparse.Namespace) -> int:
    store = _open(args)
    args._store = store
    runs = store.runs(limit=args.limit, **_run_filters(args))
    if args.json:
        summary = store.primary_metrics([r["id"] for r in runs], eval_split=args.eval_split)
        print(json.dumps([_jsonable({**r, "primary": summary.get(r["id"], {})}) for r in runs],
                         indent=2))
        return 0
    if not runs:
        print(_empty_message(store) if store.is_empty() else
              f"no run in store {store.display} matches the filters")
        return 0
    summary = store.primary_metrics([r["id"] for r in runs], eval_split=args.eval_split)
    tasks = [t for t in TASK_ORDER if any(t in summary.get(r["id"], {}) for r in runs)]
    columns = ["id", "created", "kind", "status", "method", "dataset/split", "seed"] + [
        f"{t} {PAPER_NAMES.get(PRIMARY_METRIC[t], PRIMARY_METRIC[t])} S/U/HM" for t in tasks]
    val_marked = False
    rows = []
    for r in runs:
        cells = [str(r["id"]), r["created_at"].strftime("%Y-%m-%d %H:%M"), r["kind"],
                 r["status"], r["method"] or "-", _where(r),
                 "-" if r["seed"] is None else str(r["seed"])]
        for t in tasks:
            entry = summary.get(r["id"], {}).get(t)
            if entry is None:
                cells.append("-")
                continue
            mark = "*" if entry["eval_split"] == "val" and args.eval_split is None else ""
            val_marked = val_marked or bool(mark)
            cells.append("/".join(_pct(entry.get(k)) for k in ("seen", "unseen", "hm")) + mark)
        rows.append(cells)
    print(_table(columns, rows))
    total = store.count_runs()
    notes = [f"{len(runs)} run(s) shown, {total} in {store.display}; GZSL, values in %"
             + (f", {args.eval_split} split" if args.eval_split else ", test split")]
    if val_marked:
        notes.append("* validation split (held-out seen classes): the run has no test metrics")
    print("\n".join(notes))
    return 0


# -- table --------------------------------------------------------------------------------------
def cmd_results_table(args: argparse.Namespace) -> int:
    """PADing-Table-1-style seen / unseen / HM, mean +- std over the matching runs (seeds)."""
    store = _open(args)
    args._store = store
    filters = _run_filters(args)
    filters.setdefault("status", "finished")
    frame = store.metrics_frame(per_class=False, eval_split=args.eval_split, **filters)
    # Without --kind / --sweep a row is a config's seeds: a sweep's trials (other knobs each)
    # and reproductions (the best trial's knobs) would mix other configs into the mean.
    tuned: dict[str, set[int]] = {}
    if "kind" not in filters and "sweep" not in filters:
        tuned = {kind: {r["id"] for r in store.runs(kind=kind, **filters)}
                 for kind in ("trial", "reproduction")}
        left_out = set().union(*tuned.values())
        frame = [r for r in frame if r["run_id"] not in left_out]
    rows, older = newest_per_seed(frame)
    if args.methods:
        rows = [r for r in rows if r["method"] in args.methods]
    if not rows:
        print(_empty_message(store) if store.is_empty() else
              f"no finished run with {args.eval_split} metrics in store {store.display} matches "
              "the filters")
        return 0
    methods = args.methods or list(dict.fromkeys(r["method"] for r in rows))  # run order
    protocol = "test" if args.eval_split == "test" else "validation"
    tables = format_tables(store_rows(rows), methods, protocols=[protocol],
                           settings=args.settings, over="runs")
    print(tables or f"(no {args.eval_split} / {' / '.join(args.settings)} results)")
    runs = list(dict.fromkeys((r["run_id"], r["method"]) for r in rows))
    fidelity = fidelity_table(
        (method, ((store.run(run_id).get("artifacts") or {}).get("fidelity") or {}).get("val"))
        for run_id, method in runs)
    if fidelity:
        print(f"\n{fidelity}")
    if any(tuned.values()):
        print(f"\n{len(tuned['trial'])} sweep trial(s) and {len(tuned['reproduction'])} "
              "reproduction(s) left out: they ran other knobs than the config's (--kind trial, "
              "--kind reproduction or --sweep NAME shows them)")
    if older:
        print(f"\n{older} older run(s) of a config and seed that has a newer run (another code "
              "version) left out: each seed counts once")
    return 0


# -- sweeps -------------------------------------------------------------------------------------
def cmd_results_sweeps(args: argparse.Namespace) -> int:
    store = _open(args)
    sweeps = store.sweeps()
    if args.json:
        print(json.dumps(_jsonable(sweeps), indent=2))
        return 0
    if not sweeps:
        print(f"no sweep in store {store.display}")
        return 0
    rows = [[s["name"], s["method"] or "-", s["status"], str(s["trials"]),
             s["objective"] or "-", s["mode"] or "-", s["created_at"].strftime("%Y-%m-%d %H:%M")]
            for s in sweeps]
    print(_table(["name", "method", "status", "trials", "objective", "mode", "created"], rows))
    return 0


# -- show ---------------------------------------------------------------------------------------
def _format_metrics(metrics: list[dict[str, Any]], classes: bool) -> list[str]:
    blocks: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for m in metrics:
        blocks.setdefault((m["task"], m["setting"], m["eval_split"]), []).append(m)
    lines = []
    for (task, setting, eval_split), rows in blocks.items():
        names = list(dict.fromkeys(m["metric"] for m in rows))
        table: dict[tuple[str, str], dict[str, float | None]] = {}
        for m in rows:
            if m["subset"] == "class" and not classes:
                continue
            table.setdefault((m["subset"], m["class_name"] or ""), {})[m["metric"]] = m["value"]
        order = {"seen": 0, "unseen": 1, "hm": 2, "class": 3}
        keys = sorted(table, key=lambda k: (order[k[0]], 0))
        body = [[s if s != "class" else c, *(_pct(table[(s, c)].get(n)) for n in names)]
                for s, c in keys]
        lines.append(f"  {task} {setting.upper()} on {eval_split} (values in %)")
        lines += ["    " + line for line in _table(
            ["subset / class", *(PAPER_NAMES.get(n, n) for n in names)], body).splitlines()]
    return lines


def cmd_results_show(args: argparse.Namespace) -> int:
    store = _open(args)
    run = store.run(args.run)
    if args.json:
        print(json.dumps(_jsonable(run), indent=2))
        return 0

    def v(key: str) -> str:
        value = run.get(key)
        if value is None or value == []:
            return "-"
        if isinstance(value, datetime):
            return value.strftime("%Y-%m-%d %H:%M:%S UTC")
        if isinstance(value, list):
            return ",".join(map(str, value))
        return str(value)

    dirty = {True: " (dirty)", False: "", None: ""}[run.get("code_dirty")]
    lines = [
        f"run {run['id']}  uid {run['uid']}  {run['kind']}  {run['status']}"
        + (f"  name {run['name']}" if run.get("name") else ""),
        f"  method {v('method')}  dataset {v('dataset')}  split {v('split')}  "
        f"embedding {v('embedding')}  backbone {v('backbone')}",
        f"  tasks {v('tasks')}  seed {v('seed')}  sweep {v('sweep')}  trial {v('trial_id')}  "
        f"source run {v('source_run_id')}",
        f"  code {v('code_version')}{dirty}  config hash {v('config_hash')}  "
        f"dataset fingerprint {v('dataset_fingerprint')}",
        f"  host {v('host')}  created {v('created_at')}  finished {v('finished_at')}  "
        f"duration {v('duration_s')} s",
    ]
    if run.get("superseded_by"):
        lines.append(f"  superseded by run {run['superseded_by']}: an older copy of the same "
                     "run, left out of lists, tables and the dashboard")
    if run.get("error"):
        lines.append(f"  error: {run['error']}")
    for key, title in (("config", "config"), ("leakage_audit", "leakage audit"),
                       ("artifacts", "artifacts"), ("evaluations", "evaluations")):
        value = run.get(key) or {}
        if not value:
            lines.append(f"{title}: (none recorded)")
            continue
        lines.append(f"{title}:")
        lines += ["  " + line for line in json.dumps(value, indent=2).splitlines()]
    if run["metrics"]:
        lines.append(f"metrics ({len(run['metrics'])} rows):")
        lines += _format_metrics(run["metrics"], classes=not args.no_classes)
    else:
        lines.append("metrics: (none recorded)")
    if run["curves"]:
        by_name: dict[str, list[dict[str, Any]]] = {}
        for p in run["curves"]:
            by_name.setdefault(p["name"], []).append(p)
        lines.append("curves:")
        for name, points in by_name.items():
            last = points[-1]
            lines.append(f"  {name}: {len(points)} points, last {last['value']} at step "
                         f"{last['step']}")
    print("\n".join(lines))
    return 0


# -- export / migrate ---------------------------------------------------------------------------
def cmd_results_export(args: argparse.Namespace) -> int:
    store = _open(args)
    check_writable_file(args.csv, "CSV export (--csv)")
    args._store = store
    filters = _run_filters(args)
    n = store.export_csv(args.csv, per_class=not args.no_classes, metric_task=args.task,
                         setting=args.setting, eval_split=args.eval_split, metric=args.metric,
                         **filters)
    print(f"wrote {n} metric rows to {args.csv}"
          + (f" ({_empty_message(store)})" if store.is_empty() else ""))
    return 0


def cmd_results_migrate(args: argparse.Namespace) -> int:
    store = Store(resolve_url(args.store), create=False, check_version=False)
    done = store.migrate()
    if done:
        print(f"migrated store {store.display} to schema v{SCHEMA_VERSION} "
              f"(applied {', '.join(f'v{v}' for v in done)})")
    else:
        print(f"store {store.display} is up to date (schema v{SCHEMA_VERSION})")
    return 0
