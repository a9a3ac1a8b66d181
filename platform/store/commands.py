"""``zeroseg results list / table / sweeps / show / export / migrate``: the results store from
the command line.

Registered by :func:`add_results_parser` from :mod:`zeroseg.platform.cli`. SQLAlchemy is
imported only when a ``results`` command runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

PAPER_NAMES = {"iou": "mIoU", "pq": "PQ", "sq": "SQ", "rq": "RQ", "ap50": "mAP50",
               "recall50": "Recall@100"}
TASK_ORDER = ("semantic", "instance", "panoptic")


def _open(args: argparse.Namespace, *, read_only: bool = True):  # -> Store
    from zeroseg.platform.store import open_store

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
    from zeroseg.platform.store import PRIMARY_METRIC

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
    from zeroseg.platform.pipeline.report import (
        fidelity_table,
        format_tables,
        newest_per_seed,
        store_rows,
    )

    store = _open(args)
    args._store = store
    filters = _run_filters(args)
    filters.setdefault("status", "finished")
    rows, older = newest_per_seed(store.metrics_frame(per_class=False,
                                                      eval_split=args.eval_split, **filters))
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
    from zeroseg.platform.io import check_writable_file

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
    from zeroseg.platform.store import resolve_url, schema
    from zeroseg.platform.store.store import Store

    store = Store(resolve_url(args.store), create=False, check_version=False)
    done = store.migrate()
    if done:
        print(f"migrated store {store.display} to schema v{schema.SCHEMA_VERSION} "
              f"(applied {', '.join(f'v{v}' for v in done)})")
    else:
        print(f"store {store.display} is up to date (schema v{schema.SCHEMA_VERSION})")
    return 0


# -- parser -------------------------------------------------------------------------------------
def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None,
                   help="SQLite file or database URL (default: $ZEROSEG_STORE or "
                        ".zeroseg/results.db)")


def _filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method")
    p.add_argument("--dataset")
    p.add_argument("--split", help="benchmark split, e.g. synthetic/default")
    p.add_argument("--kind", choices=["train", "trial", "reproduction", "eval"])
    p.add_argument("--status", choices=["running", "finished", "failed", "stopped"])
    p.add_argument("--sweep", help="sweep name")


def add_results_parser(sub: Any) -> None:
    """Add ``results`` and its actions to the ``zeroseg`` subcommands."""
    res = sub.add_parser("results", help="the results store: list, show, export runs",
                         description="Runs, metrics and curves recorded in the results store "
                                     "(SQLite file by default, PostgreSQL by URL).")
    res_sub = res.add_subparsers(dest="results_command", required=True, metavar="ACTION")

    lst = res_sub.add_parser(
        "list", help="one line per run with seen / unseen / HM of each task",
        description="Runs, newest first, with the seen / unseen / HM (GZSL) of each task's "
                    "primary metric: mIoU (semantic), mAP50 (instance), PQ (panoptic).")
    _store_arg(lst)
    _filter_args(lst)
    lst.add_argument("--limit", type=int, default=50, help="at most N runs (default 50)")
    lst.add_argument("--eval-split", choices=["val", "test"], default=None,
                     help="metrics of this split (default: test, else val marked *)")
    lst.add_argument("--json", action="store_true", help="print the runs as JSON")
    lst.set_defaults(func=cmd_results_list)

    table = res_sub.add_parser(
        "table", help="PADing-Table-1-style seen / unseen / HM per method, mean +- std",
        description="One row per method, seen / unseen / HM of every task's metrics (ZSS mIoU, "
                    "ZSI mAP@0.5 and Recall@100, ZSP PQ/SQ/RQ) in percent, as mean +- std over "
                    "the finished runs that match the filters (the seeds of an experiment; "
                    "each config and seed counts once: its newest run).")
    _store_arg(table)
    _filter_args(table)
    table.add_argument("--methods", nargs="+", metavar="METHOD",
                       help="these methods, in this order (default: all, in run order)")
    table.add_argument("--eval-split", choices=["val", "test"], default="test",
                       help="test (default) or val: the validation split's held-out classes")
    table.add_argument("--settings", nargs="+", choices=["gzsl", "zsl"], default=["gzsl", "zsl"])
    table.set_defaults(func=cmd_results_table)

    sweeps = res_sub.add_parser(
        "sweeps", help="one line per sweep: method, status, trials, objective",
        description="The sweeps of the store, newest first (`zeroseg reproduce NAME` re-runs "
                    "the best trials of one).")
    _store_arg(sweeps)
    sweeps.add_argument("--json", action="store_true", help="print the sweeps as JSON")
    sweeps.set_defaults(func=cmd_results_sweeps)

    show = res_sub.add_parser(
        "show", help="one run: config, leakage audit, artifacts, metrics",
        description="Everything recorded for one run. RUN is its id or (a unique prefix of) "
                    "its uid.")
    show.add_argument("run", metavar="RUN")
    _store_arg(show)
    show.add_argument("--json", action="store_true", help="print the run as JSON (exact values)")
    show.add_argument("--no-classes", action="store_true", help="hide per-class rows")
    show.set_defaults(func=cmd_results_show)

    exp = res_sub.add_parser(
        "export", help="write the metrics as long-format CSV",
        description="One CSV row per run x task x setting x eval split x subset (x class) x "
                    "metric, with the run's columns; written atomically.")
    exp.add_argument("--csv", required=True, metavar="PATH", help="output CSV file")
    _store_arg(exp)
    _filter_args(exp)
    exp.add_argument("--run", action="append", metavar="RUN", help="only this run (repeatable)")
    exp.add_argument("--task", choices=list(TASK_ORDER))
    exp.add_argument("--setting", choices=["gzsl", "zsl"])
    exp.add_argument("--eval-split", choices=["val", "test"])
    exp.add_argument("--metric", help="only this metric, e.g. iou, pq, ap50")
    exp.add_argument("--no-classes", action="store_true", help="leave out per-class rows")
    exp.set_defaults(func=cmd_results_export)

    mig = res_sub.add_parser(
        "migrate", help="upgrade a store to this zeroseg's schema",
        description="Apply the schema migrations a store written by an older zeroseg needs, "
                    "in one transaction.")
    _store_arg(mig)
    mig.set_defaults(func=cmd_results_migrate)
