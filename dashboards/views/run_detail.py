"""Run detail page: one run's provenance, leakage audit, metrics, curves and pictures.

Pick the run in the sidebar (newest first) or open ``/run?run=ID`` (an id or a uid prefix).
Every part degrades to a one-line "not available for this run" note when the run lacks the
field or the file it points at is gone.
"""

from __future__ import annotations

import streamlit as st

from zeroseg.dashboards import media, plots, ui
from zeroseg.dashboards.data import labels as label_data
from zeroseg.dashboards.data import run_detail
from zeroseg.platform.errors import ZerosegError

MAX_CHOICES = 1000  # newest runs offered in the sidebar; others open by /run?run=ID

st.title("Run detail")
store, url = ui.page_store()
rev = ui.revision(url)["live"]
runs = ui.run_list(url, rev)

labels = {int(r.id): (f"{r.id} · {r.kind} · {label_data.method_label(r.method)} · "
                      f"{label_data.split_label(r.dataset, r.split)} · seed "
                      f"{'-' if r.seed is None or r.seed != r.seed else int(r.seed)} · "
                      f"{r.status}") for r in runs.itertuples(index=False)}
ids = list(labels)[:MAX_CHOICES]
wanted = st.query_params.get("run")
index = 0
if wanted:
    try:
        found = store.resolve_run(wanted)
        if found not in ids:
            ids.insert(0, found)
            labels.setdefault(found, str(found))
        index = ids.index(found)
    except ZerosegError:
        st.warning(f"Run {wanted!r} from the address is not in this store; showing the newest "
                   "run instead.")
with st.sidebar:
    run_id = st.selectbox("Run", ids, index=index, format_func=labels.get, key="rd_run")
st.query_params["run"] = str(run_id)

run = ui.run_detail(url, int(run_id), rev)
dirty = {True: " (uncommitted changes)", False: "", None: ""}[run.get("code_dirty")]
st.subheader(f"Run {run['id']} — {label_data.method_label(run.get('method'))} "
             f"({run.get('kind')}, {run.get('status')})")
if run.get("error"):
    st.error(f"This run failed: {run['error'].strip().splitlines()[0]}")

facts = {
    "method": run.get("method"), "dataset / split": label_data.split_label(run.get("dataset"),
                                                                      run.get("split")),
    "embedding": run.get("embedding"), "backbone": run.get("backbone"),
    "tasks": ", ".join(run.get("tasks") or []) or None, "seed": run.get("seed"),
    "sweep / trial": f"{run.get('sweep')} / {run.get('trial_id')}" if run.get("sweep") else None,
    "reproduces run": run.get("source_run_id"),
    "code version": f"{run.get('code_version')}{dirty}" if run.get("code_version") else None,
    "config hash": run.get("config_hash"),
    "dataset fingerprint": run.get("dataset_fingerprint"),
    "host": run.get("host"), "created": run.get("created_at"),
    "duration": f"{run['duration_s']:.0f} s" if run.get("duration_s") else None,
    "uid": run.get("uid"),
}
left, right = st.columns([3, 2])
with left:
    st.markdown("**Results (percent)**")
    with ui.section("Results"):
        head = run_detail.headline_table(run.get("metrics") or [])
        if head.empty:
            ui.not_available("Metrics")
        else:
            st.dataframe(head, hide_index=True, placeholder="–",
                         column_config=ui.pct_config(["Seen", "Unseen", "HM"]))
    st.markdown("**Provenance**")
    st.dataframe({"field": list(facts), "value": ["-" if v is None else str(v)
                                                  for v in facts.values()]},
                 hide_index=True, placeholder="–")
with right:
    st.markdown("**Leakage audit**")
    with ui.section("Leakage audit"):
        audit = run.get("leakage_audit") or {}
        if not audit:
            ui.not_available("Leakage audit")
        else:
            for line in run_detail.audit_warnings(audit):
                st.error(line, icon=":material/gpp_bad:")
            if audit.get("passed") is True:
                st.success("Leakage audit passed.", icon=":material/verified_user:")
            st.dataframe(run_detail.audit_table(audit), hide_index=True, placeholder="–",
                         column_config={"Check": st.column_config.TextColumn(width="medium"),
                                        "Value": st.column_config.TextColumn(width="large")})

with st.expander("Config"):
    if run.get("config"):
        st.json(run["config"], expanded=2)
    else:
        ui.not_available("Config")

roles_result = media.class_roles(run)
roles = roles_result.value

st.subheader("Per-class metrics")
with ui.section("Per-class metrics"):
    metrics = [m for m in (run.get("metrics") or []) if m.get("subset") == "class"]
    if not metrics:
        ui.not_available("Per-class metrics")
    else:
        combos = sorted({(m["task"], m["setting"], m["eval_split"], m["metric"])
                         for m in metrics}, key=lambda c: (c[2] != "test", c))
        combo = st.selectbox(
            "Evaluation", combos, key="rd_class_combo",
            format_func=lambda c: f"{c[0]} {label_data.metric_label(c[3])} · {c[1].upper()} · "
                                  f"{c[2]}")
        table = run_detail.per_class_table(metrics, roles.unseen, task=combo[0], setting=combo[1],
                                     eval_split=combo[2], metric=combo[3])
        if combo[2] == "val":
            st.caption("Validation split: held-out seen classes play unseen; the colours "
                       "show the test split's roles.")
        st.plotly_chart(plots.per_class(table, label_data.metric_label(combo[3])),
                        key="rd_per_class")
        st.dataframe(table, hide_index=True, placeholder="–",
                     column_config=ui.pct_config(["Value"]))
        groups = run_detail.group_miou_table(metrics, run.get("artifacts"))
        if groups is not None:
            st.markdown("**Unseen-class mIoU per caption group** (semantic IoU, percent)")
            st.dataframe(groups, hide_index=True, placeholder="–",
                         column_config=ui.pct_config([c for c in groups.columns
                                                      if c not in ("Setting", "Eval split")]))
    for note in roles_result.notes:
        st.caption(f":material/info: {note}")

captions = run_detail.caption_priors_tables(run.get("artifacts"))
if captions is not None:
    st.subheader("Caption priors (Cap2Seg's inference engine)")
    with ui.section("Caption priors"):
        eval_split, by_group, by_class = captions
        st.markdown(f"**Occurrence and stripe priors on the {eval_split} images** (unseen "
                    "classes of the run's label space)")
        st.dataframe(by_group, hide_index=True, placeholder="–")
        st.dataframe(by_class, hide_index=True, placeholder="–")
        st.caption("Occurrence mAP (percent) ranks the evaluation images by the engine's "
                   "occurrence score for each unseen class: exact word match of the class "
                   "name in a caption vs contextual entailment (Cap2Seg Table 1). Stripe "
                   "cosine compares the predicted vertical distribution with the ground "
                   "truth's where the class is present (Table 3).")

st.subheader("Training curves")
with ui.section("Training curves"):
    curves = run_detail.curves_table(run.get("curves") or [])
    if curves.empty:
        ui.not_available("Training curves")
    else:
        st.plotly_chart(plots.curves(curves), key="rd_curves")

st.subheader("Real seen vs synthetic unseen embeddings (PCA), and the generator's fidelity")
emb_col, fid_col = st.columns([3, 2])
with emb_col, ui.section("Embeddings"):
    result = media.embedding_points(run, roles)
    if result.value is not None:
        st.plotly_chart(plots.embeddings(result.value), key="rd_embeddings")
        st.caption("PADing's Figure 5 uses t-SNE; this is a PCA (two principal components) of "
                   "the same features.")
    for note in result.notes:
        st.info(note, icon=":material/info:")
with fid_col, ui.section("Generator fidelity"):
    st.markdown("**Generator fidelity** (validation protocol: held-out seen classes play "
                "unseen)")
    tables = run_detail.fidelity_tables(run.get("artifacts"))
    if tables is None:
        ui.not_available("Generator fidelity")
    else:
        summary, per_class = tables
        st.dataframe(summary, hide_index=True)
        st.dataframe(per_class, hide_index=True, placeholder="–",
                     column_config={"MMD": st.column_config.NumberColumn(format="%.3f"),
                                    "NCM accuracy": st.column_config.NumberColumn(
                                        format="%.2f")})
        st.caption("The generator's fakes of each held-out class against that class's real "
                   "query embeddings: MMD (lower is closer), the share of real embeddings "
                   "whose nearest fake class mean is their own class (chance = 1 / classes), "
                   "and between / within-class variance (near 0: the fakes ignore the class).")

st.subheader("Qualitative predictions on unseen classes")
with ui.section("Qualitative predictions"):
    examples = media.qualitative_examples(run, roles)
    for ex in examples.value or []:
        st.markdown(f"**{ex.stem}** — unseen classes in the ground truth: "
                    f"{', '.join(ex.unseen_present)}")
        c1, c2, c3 = st.columns(3)
        c1.image(ex.image, caption="image", width="stretch")
        c2.image(ex.ground_truth, caption="ground truth (unseen classes tinted strongly)",
                 width="stretch")
        c3.image(ex.prediction, caption="prediction", width="stretch")
    for note in examples.notes:
        st.info(note, icon=":material/info:")
