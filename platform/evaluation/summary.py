"""Seen / unseen / harmonic-mean aggregation shared by every zeroseg metric.

Every evaluator produces per-class values and hands them to :func:`summarize`, which returns an
:class:`EvalResult`. All values are fractions in [0, 1] (tables print them as percentages).

Conventions
-----------
- **Settings.** ``"gzsl"``: the model predicts over all classes and every class of the split is
  reported. ``"zsl"``: only the unseen classes are evaluated (how each task restricts its inputs
  is documented in its module); ``seen`` and ``hm`` then hold ``None`` for every metric.
- **Undefined classes.** A per-class value is ``None`` (JSON ``null``) when the metric is
  undefined for that class; ``None`` values are left out of the seen and unseen means. Which
  classes are undefined is each task's rule:

  - semantic: a class whose union (GT pixels + predicted pixels) is empty;
  - panoptic: by default (``empty_classes="zero"``, PADing's ``panoptic_evaluation_gzero.py``,
    which averages panopticapi's per-class table, where such a class is 0; PROTOCOLS 3b) a class
    with TP + FP + FN = 0 counts as 0 and *is* in the means; with ``empty_classes="exclude"``
    (panopticapi's own averages) it is ``None`` and left out. The choice is in
    ``options['empty_classes']`` and printed under the table (:data:`EMPTY_CLASS_MEANINGS`);
  - instance: a class without (non-crowd) GT instances (NaN in COCOeval), skipped as in the
    ZSI / PADing GZSI code.

- **Means.** seen = plain mean over the seen classes with a defined value, unseen likewise
  (``None`` when no class of the group has a value).
- **Harmonic mean.** HM = 2 S U / (S + U); 0 when S + U = 0; ``None`` when S or U is ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from zeroseg.platform.data.classes import ClassInfo, Split
from zeroseg.platform.errors import ConfigError

GZSL = "gzsl"
ZSL = "zsl"
SETTINGS = (GZSL, ZSL)

#: Metric keys of each task, in table order.
SEMANTIC_METRICS = ("iou",)
PANOPTIC_METRICS = ("pq", "sq", "rq")
INSTANCE_METRICS = ("ap50", "recall50", "ap40", "recall40", "ap60", "recall60")

#: The tasks zeroseg scores. ``detection`` (ZSD) is scored from the instance predictions' boxes
#: with the instance protocol (box IoU instead of mask IoU); the other three are predicted as such.
TASKS = ("semantic", "instance", "panoptic", "detection")
#: The metric keys of each task.
TASK_METRICS = {"semantic": SEMANTIC_METRICS, "instance": INSTANCE_METRICS,
                "panoptic": PANOPTIC_METRICS, "detection": INSTANCE_METRICS}


def predicted_task(task: str) -> str:
    """The predictions a task is scored from (``detection``: the instance predictions)."""
    return "instance" if task == "detection" else task


def predicted_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """The predictions ``tasks`` need, in order, each once."""
    return tuple(dict.fromkeys(predicted_task(t) for t in tasks))


def tasks_of_split(tasks: Sequence[str], split_tasks: Sequence[str]) -> list[str]:
    """``tasks`` the split defines (``split_tasks`` empty: all of them); detection is defined
    wherever instance segmentation is (a split's instances have boxes)."""
    return [t for t in tasks if not split_tasks or predicted_task(t) in split_tasks]

#: How the papers (and ``shared/reference/paper_results.csv``) name the class means of our keys.
PAPER_METRIC_NAMES = {
    "iou": "mIoU",
    "pq": "PQ",
    "sq": "SQ",
    "rq": "RQ",
    "ap50": "mAP50",
    "recall50": "Recall@100",
    "ap40": "mAP40",
    "recall40": "Recall@100@0.4",
    "ap60": "mAP60",
    "recall60": "Recall@100@0.6",
}


#: What each ``empty_classes`` choice of the panoptic evaluator means (printed with results).
EMPTY_CLASS_MEANINGS = {
    "zero": "a class with no TP, FP or FN (absent from both GT and predictions) counts as "
            "PQ/SQ/RQ 0 in the seen and unseen means (PADing's averaging)",
    "exclude": "a class with no TP, FP or FN (absent from both GT and predictions) is left out "
               "of the seen and unseen means (panopticapi's averaging)",
}


def check_setting(setting: str) -> str:
    """Normalise ``setting`` (case-insensitive) or raise a one-line :class:`ConfigError`."""
    value = str(setting).strip().lower()
    if value not in SETTINGS:
        raise ConfigError(f"setting: {setting!r} is not one of {', '.join(SETTINGS)}")
    return value


def evaluated_classes(split: Split, setting: str) -> list[ClassInfo]:
    """The classes a setting reports: all of them (GZSL) or the unseen ones (ZSL)."""
    setting = check_setting(setting)
    if setting == GZSL:
        return list(split.classes)
    unseen = split.unseen
    if not unseen:
        raise ConfigError(
            f"split {split.name}: setting zsl needs unseen classes, the split has none")
    return unseen


def harmonic_mean(seen: float | None, unseen: float | None) -> float | None:
    """HM = 2 S U / (S + U); 0 when S + U = 0; ``None`` when either side is undefined."""
    if seen is None or unseen is None:
        return None
    total = seen + unseen
    if total == 0:
        return 0.0
    return 2.0 * seen * unseen / total


def class_mean(values: Iterable[float | None]) -> float | None:
    """Plain mean of the defined values (``None`` left out); ``None`` when nothing is defined."""
    defined = [float(v) for v in values if v is not None]
    if not defined:
        return None
    return math.fsum(defined) / len(defined)


def _clean(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return None
    return value


@dataclass
class EvalResult:
    """Per-class values, seen / unseen / HM means and how they were obtained."""

    task: str  # "semantic" | "panoptic" | "instance" | "detection"
    setting: str  # "gzsl" | "zsl"
    split: str
    metrics: tuple[str, ...]
    per_class: dict[str, dict[str, float | None]]  # class name -> metric -> value
    unseen_classes: frozenset[str]
    seen: dict[str, float | None]
    unseen: dict[str, float | None]
    hm: dict[str, float | None]
    num_images: int = 0
    counts: dict[str, Any] = field(default_factory=dict)  # how many classes/images/... counted
    options: dict[str, Any] = field(default_factory=dict)  # protocol choices of this run
    details: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-class raw counts

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: ``per_class``, ``seen``, ``unseen``, ``hm`` plus run descriptors."""
        return {
            "per_class": {name: dict(vals) for name, vals in self.per_class.items()},
            "seen": dict(self.seen),
            "unseen": dict(self.unseen),
            "hm": dict(self.hm),
            "task": self.task,
            "setting": self.setting,
            "split": self.split,
            "num_images": int(self.num_images),
            "counts": _jsonable(self.counts),
            "options": _jsonable(self.options),
            "details": _jsonable(self.details),
        }

    def notes(self) -> list[str]:
        """One line per protocol choice or left-out input worth knowing when reading the
        numbers (printed under :meth:`format_table`); everything here is also in ``counts`` /
        ``options``."""
        c, o = self.counts, self.options
        out = []
        policy = o.get("empty_classes")
        if policy in EMPTY_CLASS_MEANINGS:
            n = c.get("empty_classes")
            here = f" [{n} such classes here]" if n is not None else ""
            out.append(f"empty classes: {policy}: {EMPTY_CLASS_MEANINGS[policy]}{here}")
        if c.get("gt_annotations_outside_split"):
            out.append(f"ignored {c['gt_annotations_outside_split']} GT annotations of the "
                       f"json's categories {_ids(o.get('gt_categories_outside_split'))}, which "
                       f"are not classes of split {self.split}")
        if c.get("gt_segments_outside_split"):
            out.append(f"ignored {c['gt_segments_outside_split']} GT segments (as VOID) of the "
                       f"json's categories {_ids(o.get('gt_categories_outside_split'))}, which "
                       f"are not classes of split {self.split}")
        if c.get("detections_outside_split"):
            out.append(f"left out {c['detections_outside_split']} detections in categories "
                       f"{_ids(o.get('detection_categories_outside_split'))}, which are not "
                       f"classes of split {self.split}")
        if c.get("detections_outside_gt_categories"):
            out.append(f"left out {c['detections_outside_gt_categories']} detections in classes "
                       f"of the split that the GT json does not list")
        if c.get("pred_segments_outside_split"):
            out.append(f"left out {c['pred_segments_outside_split']} predicted segments in "
                       f"categories that are not classes of split {self.split}")
        return out

    def format_table(self, digits: int = 1) -> str:
        """Human-readable table: one row per class (role marked), then seen / unseen / HM."""
        headers = [PAPER_METRIC_NAMES.get(m, m) for m in self.metrics]
        names = list(self.per_class)
        width = max([len("class"), len("unseen mean"), *(len(n) for n in names)])
        cols = [max(len(h), digits + 5) for h in headers]

        def fmt(value: float | None, w: int) -> str:
            text = "-" if value is None else f"{100.0 * value:.{digits}f}"
            return text.rjust(w)

        def row(label: str, role: str, values: Sequence[float | None]) -> str:
            cells = "  ".join(fmt(v, w) for v, w in zip(values, cols, strict=True))
            return f"{label.ljust(width)}  {role.ljust(6)}  {cells}"

        head = f"{'class'.ljust(width)}  {'role'.ljust(6)}  " + "  ".join(
            h.rjust(w) for h, w in zip(headers, cols, strict=True))
        rule = "-" * len(head)
        lines = [f"{self.task} {self.setting.upper()} on {self.split} "
                 f"({self.num_images} images; values in %)", head, rule]
        for name in names:
            role = "unseen" if name in self.unseen_classes else "seen"
            lines.append(row(name, role, [self.per_class[name].get(m) for m in self.metrics]))
        lines.append(rule)
        n_seen = self.counts.get("seen_classes_in_mean")
        n_unseen = self.counts.get("unseen_classes_in_mean")
        lines.append(row("seen mean", f"n={n_seen}" if n_seen is not None else "",
                         [self.seen.get(m) for m in self.metrics]))
        lines.append(row("unseen mean", f"n={n_unseen}" if n_unseen is not None else "",
                         [self.unseen.get(m) for m in self.metrics]))
        lines.append(row("HM", "", [self.hm.get(m) for m in self.metrics]))
        lines += [f"note: {n}" for n in self.notes()]
        return "\n".join(lines)


def _ids(ids: Any) -> str:
    return str(list(ids)) if isinstance(ids, (list, tuple)) and ids else "(see options)"


def _jsonable(obj: Any) -> Any:
    """Plain Python types only; NaN becomes ``None`` (JSON has no NaN)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        obj = obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def summarize(
    task: str,
    split: Split,
    setting: str,
    metrics: Sequence[str],
    per_class: Mapping[int, Mapping[str, float | None]],
    *,
    num_images: int = 0,
    counts: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    details: Mapping[int, Mapping[str, Any]] | None = None,
    only: Collection[int] | None = None,
) -> EvalResult:
    """Build an :class:`EvalResult` from per-class values keyed by contiguous class index.

    Classes of the setting (all for GZSL, unseen for ZSL) missing from ``per_class`` count as
    undefined (``None``). NaN values are treated as ``None``. ``only``: class indices the task
    covers at all (e.g. the thing classes of an instances json); the others are not reported.
    """
    setting = check_setting(setting)
    classes = evaluated_classes(split, setting)
    if only is not None:
        keep = set(only)
        classes = [c for c in classes if c.index in keep]
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise ConfigError(f"split {split.name}: class names are not unique")
    metrics = tuple(metrics)

    table: dict[str, dict[str, float | None]] = {}
    for c in classes:
        values = per_class.get(c.index, {})
        table[c.name] = {m: _clean(values.get(m)) for m in metrics}

    def group_mean(group: list[ClassInfo], metric: str) -> float | None:
        return class_mean(table[c.name][metric] for c in group)

    seen_group = [c for c in classes if not c.unseen]
    unseen_group = [c for c in classes if c.unseen]
    unseen_mean = {m: group_mean(unseen_group, m) for m in metrics}
    if setting == ZSL:
        seen_mean: dict[str, float | None] = {m: None for m in metrics}
        hm: dict[str, float | None] = {m: None for m in metrics}
    else:
        seen_mean = {m: group_mean(seen_group, m) for m in metrics}
        hm = {m: harmonic_mean(seen_mean[m], unseen_mean[m]) for m in metrics}

    # How many classes entered each mean (the first metric decides; all metrics of one task
    # share the rule for undefined classes).
    first = metrics[0]
    all_counts: dict[str, Any] = {
        "classes": len(classes),
        "seen_classes_in_mean": 0 if setting == ZSL else sum(
            table[c.name][first] is not None for c in seen_group),
        "unseen_classes_in_mean": sum(table[c.name][first] is not None for c in unseen_group),
    }
    all_counts.update(counts or {})
    by_name = {c.index: c.name for c in classes}
    return EvalResult(
        task=task, setting=setting, split=split.name, metrics=metrics, per_class=table,
        unseen_classes=frozenset(c.name for c in unseen_group),
        seen=seen_mean, unseen=unseen_mean, hm=hm, num_images=int(num_images),
        counts=all_counts, options=dict(options or {}),
        details={by_name[i]: dict(v) for i, v in (details or {}).items() if i in by_name},
    )
