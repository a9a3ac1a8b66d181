"""Tables of seen / unseen / HM: one run, or many runs aggregated as mean +- std over seeds.

The layout follows PADing's Table 1: one row per method, and for each task its metrics as
seen / unseen / HM columns (ZSS mIoU; ZSI mAP@0.5 and Recall@100; ZSP PQ, SQ, RQ), in percent.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from zeroseg.methods.registry import method_label

#: (task, metric, heading) columns of the table, in PADing's order.
TABLE_METRICS: tuple[tuple[str, str, str], ...] = (
    ("semantic", "iou", "ZSS mIoU"),
    ("instance", "ap50", "ZSI mAP@0.5"),
    ("instance", "recall50", "ZSI Recall@100"),
    ("detection", "ap50", "ZSD mAP@0.5"),
    ("detection", "recall50", "ZSD Recall@100"),
    ("panoptic", "pq", "ZSP PQ"),
    ("panoptic", "sq", "ZSP SQ"),
    ("panoptic", "rq", "ZSP RQ"),
)
SUBSETS = ("seen", "unseen", "hm")


def aggregate(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std or None for one value, count) of the defined values."""
    defined = [v for v in values if v is not None and math.isfinite(v)]
    if not defined:
        return None, None, 0
    mean = statistics.fmean(defined)
    std = statistics.stdev(defined) if len(defined) > 1 else None
    return mean, std, len(defined)


def cell(mean: float | None, std: float | None, *, width: int = 11) -> str:
    if mean is None:
        return "-".rjust(width)
    text = f"{100 * mean:.1f}" + (f"±{100 * std:.1f}" if std is not None else "")
    return text.rjust(width)


def method_table(rows: Iterable[tuple[str, str, str, str, str, str, float | None]],
                 *, protocol: str = "test", setting: str = "gzsl",
                 methods: Sequence[str] | None = None, title: str | None = None) -> str:
    """``rows``: (method, protocol, task, setting, subset, metric, value), one per run and
    number; prints mean +- std over the runs of each method (seeds)."""
    values: dict[tuple[str, str, str, str], list[float | None]] = defaultdict(list)
    present: dict[str, None] = {}
    for method, prot, task, sett, subset, metric, value in rows:
        if prot != protocol or sett != setting:
            continue
        present.setdefault(method, None)
        values[(method, task, metric, subset)].append(value)
    order = [m for m in (methods if methods is not None else present) if m in present]
    columns = [(t, m, h) for t, m, h in TABLE_METRICS
               if any((meth, t, m, "unseen") in values for meth in order)]
    if not columns:
        return f"(no {protocol} / {setting} results)"
    lines = []
    if title:
        lines.append(title)
    label_w = max(12, *(len(method_label(m)) for m in order))
    subsets = SUBSETS if setting == "gzsl" else ("unseen",)
    for start in range(0, len(columns), 3):  # three metrics per block keep lines < 120 chars
        block = columns[start:start + 3]
        head1 = " " * label_w + " n " + "".join(
            f" | {h:^{11 * len(subsets) + len(subsets) - 1}}" for _, _, h in block)
        head2 = "method".ljust(label_w) + "   " + "".join(
            " | " + " ".join(s.rjust(11) for s in subsets) for _ in block)
        lines += [head1, head2, "-" * len(head2)]
        for method in order:
            counts = [aggregate(values.get((method, t, m, "unseen"), []))[2] for t, m, _ in block]
            n = max(counts) if counts else 0
            parts = []
            for task, metric, _ in block:
                parts.append(" | " + " ".join(
                    cell(*aggregate(values.get((method, task, metric, s), []))[:2])
                    for s in subsets))
            lines.append(method_label(method).ljust(label_w) + f" {n:>2}" + "".join(parts))
        lines.append("")
    return "\n".join(lines).rstrip()


def outcome_rows(outcomes: Iterable[Any]) -> list[tuple[str, str, str, str, str, str,
                                                         float | None]]:
    """Table rows from :class:`~zeroseg.platform.pipeline.runner.RunOutcome` objects (their
    store records' rows: the same for a run that ran and one reused from the store)."""
    protocol = {"test": "test", "val": "validation"}
    return [(outcome.method, protocol[m.eval_split], m.task, m.setting, m.subset, m.metric,
             m.value) for outcome in outcomes for m in outcome.record.metrics
            if m.subset in SUBSETS]


def table_title(protocol: str, setting: str, over: str = "seeds") -> str:
    """The heading of one table: setting, which split's unseen classes, units."""
    name = ("test split (unseen = the split's unseen classes)" if protocol == "test"
            else "validation split (unseen = held-out seen classes)")
    return f"{setting.upper()}, {name}, % (mean±std over {over})"


def format_tables(rows: Sequence[tuple[str, str, str, str, str, str, float | None]],
                  methods: Sequence[str], *, protocols: Sequence[str] = ("test",),
                  settings: Sequence[str] = ("gzsl", "zsl"), over: str = "seeds") -> str:
    """One :func:`method_table` per protocol x setting that has results, blank-line apart."""
    blocks = []
    for protocol in protocols:
        for setting in settings:
            table = method_table(rows, protocol=protocol, setting=setting, methods=methods,
                                 title=table_title(protocol, setting, over))
            if not table.startswith("(no"):
                blocks.append(table)
    return "\n\n".join(blocks)


def format_outcomes(outcomes: Sequence[Any], *, protocols: Sequence[str] = ("test",),
                    settings: Sequence[str] = ("gzsl", "zsl")) -> str:
    return format_tables(outcome_rows(outcomes), list(dict.fromkeys(o.method for o in outcomes)),
                         protocols=protocols, settings=settings)


def newest_per_seed(frame: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The store's metric rows of one run per (kind, method, config hash, seed, source trial):
    the newest. A seed measured twice -- the same config re-run under another code version,
    whose run identity differs -- is one sample, not two (it would make n = 2, std 0). Returns
    the rows kept and how many runs were left out."""
    rows = list(frame)

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["kind"], r["method"], r["config_hash"], r["seed"], r["source_run_id"])

    newest: dict[tuple[Any, ...], int] = {}
    for r in rows:
        newest[key(r)] = max(newest.get(key(r), r["run_id"]), r["run_id"])
    kept = [r for r in rows if newest[key(r)] == r["run_id"]]
    return kept, len({r["run_id"] for r in rows}) - len({r["run_id"] for r in kept})


def store_rows(frame: Iterable[dict[str, Any]]) -> list[tuple[str, str, str, str, str, str,
                                                               float | None]]:
    """Table rows from the store's metric rows (``eval_split`` val -> validation protocol)."""
    protocol = {"test": "test", "val": "validation"}
    return [(r["method"], protocol[r["eval_split"]], r["task"], r["setting"], r["subset"],
             r["metric"], r["value"]) for r in frame if r["subset"] in SUBSETS]


def fidelity_table(entries: Iterable[tuple[str, dict[str, Any] | None]]) -> str:
    """The generator fidelity diagnostics (:mod:`zeroseg.methods.fidelity`, validation protocol)
    per method, mean +- std over its runs; ``entries``: (method, the run's fidelity or None).
    Empty when no run has them."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for method, fid in entries:
        if fid:
            found[method].append(fid)
    if not found:
        return ""

    def stat(values: list[dict[str, Any]], key: str, digits: int) -> str:
        mean, std, _ = aggregate([v.get(key) for v in values])
        if mean is None:
            return "-"
        return f"{mean:.{digits}f}" + (f"±{std:.{digits}f}" if std is not None else "")

    label_w = max(12, *(len(method_label(m)) for m in found))
    head = (f"{'method'.ljust(label_w)}  n | {'MMD':>13} | {'NCM accuracy':>11} {'chance':>6} | "
            f"{'between/within':>15} {'real':>6}")
    lines = ["Generator fidelity on the validation protocol (held-out classes; MMD: sqrt, per "
             "class; NCM: real embeddings vs the fakes' class means), mean±std over runs",
             head, "-" * len(head)]
    for method, values in found.items():
        lines.append(
            f"{method_label(method).ljust(label_w)} {len(values):>2} | "
            f"{stat(values, 'mmd', 3):>13} | {stat(values, 'ncm_accuracy', 2):>11} "
            f"{stat(values, 'chance', 2):>6} | {stat(values, 'variance_ratio', 3):>15} "
            f"{stat(values, 'real_variance_ratio', 2):>6}")
    return "\n".join(lines)
