"""The run detail page's data (:mod:`zeroseg.dashboards.views.run_detail`): leakage audit,
headline and per-class metrics, curves, generator fidelity."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from zeroseg.dashboards.data.labels import (
    SUBSETS,
    TASK_ORDER,
    is_missing,
    metric_label,
    percent,
)
from zeroseg.platform.evaluation import PAPER_METRIC_NAMES

log = logging.getLogger(__name__)


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
            "Seen": percent(v.get("seen")), "Unseen": percent(v.get("unseen")),
            "HM": percent(v.get("hm"))}
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
             "Value": percent(m.get("value"))}
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
        if is_missing(value):
            return "-"
        return f"{int(value)}" if digits == 0 else f"{float(value):.{digits}f}"

    summary = pd.DataFrame([(label, fmt(fid.get(key), digits))
                            for label, key, digits in FIDELITY_SUMMARY],
                           columns=["Measure", "Value"])
    rows = [(r.get("name"), r.get("real"), r.get("mmd"), r.get("ncm_accuracy"))
            for r in fid.get("per_class") or []]
    per_class = pd.DataFrame(rows, columns=["Class", "Real", "MMD", "NCM accuracy"])
    return summary, per_class


# -- caption priors (Cap2Seg) and per-group mIoU --------------------------------------------------
#: Columns of the caption-priors group table: (label, key, scale).
CAPTION_COLUMNS = (
    ("Occurrence mAP, exact match", "map_exact"),
    ("Occurrence mAP, entailment", "map_entailment"),
    ("Stripe cosine, global", "cosine_global"),
    ("Stripe cosine, local", "cosine_local"),
    ("Stripe cosine, fused", "cosine_fused"),
)
GROUP_ORDER = ("hard", "medium", "easy", "all")


def caption_priors_tables(artifacts: Any) -> tuple[str, pd.DataFrame, pd.DataFrame] | None:
    """A caption-supervised run's diagnostics (``artifacts["caption_priors"]``, written by
    methods/cap2seg on the evaluation images; the test split's, else the validation view's):
    (eval split, one row per caption group with occurrence mAP (exact match vs entailment,
    percent) and stripe cosine (global / local / fused), one row per unseen class); ``None``
    when the run has none."""
    found = (artifacts or {}).get("caption_priors") if isinstance(artifacts, Mapping) else None
    if not isinstance(found, Mapping) or not found:
        return None
    split = "test" if "test" in found else sorted(found)[0]
    diag = found[split]
    if not isinstance(diag, Mapping):
        return None
    groups = diag.get("groups") or {}
    order = {g: i for i, g in enumerate(GROUP_ORDER)}
    rows = [{"Group": g, **{label: values.get(key) for label, key in CAPTION_COLUMNS}}
            for g, values in sorted(groups.items(), key=lambda kv: (order.get(kv[0], 9), kv[0]))]
    per_class = pd.DataFrame(
        [{"Class": r.get("class"), "Group": r.get("group"), "Images": r.get("images"),
          "AP exact": r.get("ap_exact"), "AP entailment": r.get("ap_entailment"),
          "Cosine global": r.get("cosine_global"), "Cosine local": r.get("cosine_local"),
          "Cosine fused": r.get("cosine_fused")} for r in diag.get("per_class") or []],
        columns=["Class", "Group", "Images", "AP exact", "AP entailment", "Cosine global",
                 "Cosine local", "Cosine fused"])
    return split, pd.DataFrame(rows, columns=["Group", *[c for c, _ in CAPTION_COLUMNS]]), \
        per_class


def group_miou_table(metrics: Sequence[Mapping[str, Any]], artifacts: Any) -> pd.DataFrame | None:
    """Semantic mIoU (percent) of the unseen classes of each caption group of the run's split
    (``artifacts["class_groups"]``: group -> class names, recorded for splits that define
    groups, e.g. Cap2Seg's hard / medium / easy), per setting and evaluation split, from the
    per-class IoU rows; ``None`` when the split has no groups or no per-class rows."""
    groups = (artifacts or {}).get("class_groups") if isinstance(artifacts, Mapping) else None
    if not isinstance(groups, Mapping) or not groups:
        return None
    values: dict[tuple[str, str], dict[str, float]] = {}
    for m in metrics:
        if (m.get("subset") == "class" and m.get("task") == "semantic"
                and m.get("metric") == "iou" and m.get("value") is not None):
            values.setdefault((m["setting"], m["eval_split"]), {})[m["class_name"]] = m["value"]
    rows = []
    for (setting, split), per_class in sorted(values.items(), key=lambda kv: (
            kv[0][1] != "test", kv[0][0])):
        row = {"Setting": setting.upper(), "Eval split": split}
        for group, names in groups.items():
            got = [per_class[n] for n in names if n in per_class]
            row[group] = percent(sum(got) / len(got)) if got else None
        rows.append(row)
    if not rows:
        return None
    return pd.DataFrame(rows, columns=["Setting", "Eval split", *groups])
