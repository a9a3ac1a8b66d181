"""Sweeps page: live progress, best-so-far, knobs vs objective, importance, reproduce commands.

The objective is the sweep's own (``sweeps.objective``, e.g. ``val/semantic/gzsl/hm/iou``: the
validation HM that sweeps select on). A trial still running shows the last point of its
``val/hm`` curve. Turn on auto-refresh to follow a running sweep.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from zeroseg.dashboards import plots, ui
from zeroseg.dashboards.data import labels as label_data
from zeroseg.dashboards.data import sweeps as sweep_data

st.title("Sweeps")
store, url = ui.page_store()
sweeps = ui.sweeps(url, ui.revision(url)["live"])
if sweeps.empty:
    st.info("No sweep in this store yet. Start one with `zeroseg sweep SEARCH_SPACE.yaml`.",
            icon=":material/tune:")
    st.stop()

names = list(sweeps["name"])
top = st.columns([3, 1])
name = top[0].selectbox("Sweep", names, key="sw_name",
                        format_func=lambda n: f"{n} ({sweeps.set_index('name').loc[n, 'status']})")
auto = top[1].toggle("Auto-refresh (10 s)", key="sw_auto",
                     help="Re-read the store every 10 seconds while this page is open.")


def render() -> None:
    rev = ui.revision(url)["live"]
    sweep = ui.sweeps(url, rev).set_index("name").loc[name]
    settings = sweep["settings"] if isinstance(sweep["settings"], dict) else {}
    objective = sweep_data.parse_objective(sweep["objective"], sweep["mode"])
    label = objective.label
    table = ui.sweep_trials(url, name, objective.task, objective.setting, objective.eval_split,
                            objective.subset, objective.metric, rev)

    st.caption(f"method **{label_data.method_label(sweep['method'])}** · objective **{label}** "
               f"(`{objective.key}`, {objective.mode}) · searcher "
               f"{settings.get('searcher', '-')} · scheduler {settings.get('scheduler', '-')} "
               f"· status **{sweep['status']}**")
    counts = sweep_data.status_counts(table, settings.get("trials") or settings.get("samples"))
    cols = st.columns(5)
    for col, key in zip(cols, ("running", "finished", "stopped", "failed", "planned"),
                        strict=True):
        col.metric("stopped early" if key == "stopped" else key, counts[key])
    done = counts["finished"] + counts["stopped"] + counts["failed"]
    st.progress(min(1.0, done / counts["planned"]) if counts["planned"] else 0.0,
                text=f"{done} of {counts['planned']} trials done ({counts['running']} running)")
    if table.empty:
        st.info("This sweep has no trial in the store yet.")
        return

    with ui.section("Best so far"):
        best = sweep_data.best_so_far(table, objective.mode)
        if best.empty:
            st.info("No trial has reported the objective yet.")
        else:
            st.plotly_chart(plots.best_so_far(best, label), key="sw_best")

    knobs = [c.removeprefix("knob:") for c in sweep_data.knob_columns(table)]
    if not knobs:
        st.info("The trials record no knobs (config['params']): knob charts not available.")
    else:
        with ui.section("Parallel coordinates"):
            st.plotly_chart(plots.parallel_coordinates(table, label), key="sw_parcoords")
        left, right = st.columns(2)
        with left, ui.section("Number of primitives"):
            if "num_primitives" in knobs:
                st.plotly_chart(plots.primitives(sweep_data.by_knob(table, "num_primitives"),
                                                 sweep_data.primitives_table(), label),
                                key="sw_primitives")
            else:
                st.caption("The sweep does not vary num_primitives (PADing's Table 3 "
                           "ablation): chart not available.")
        with right, ui.section("Knob importance"):
            imp = ui.importance(url, name, table, objective.mode, rev)
            if imp.values:
                st.plotly_chart(plots.importance(imp.values, imp.method), key="sw_importance")
            st.caption(f"{imp.method}: {imp.note}")
        effect_knobs = [k for k in ("sigmas", "structure_weight") if k in knobs]
        cols = st.columns(max(1, len(effect_knobs)))
        for col, knob in zip(cols, effect_knobs, strict=False):
            with col, ui.section(f"Effect of {knob}"):
                title = {"sigmas": "sigma set", "structure_weight": "lambda (structure_weight)"}
                st.markdown(f"**{title[knob]}**")
                st.plotly_chart(plots.knob_effect(table, knob, label), key=f"sw_effect_{knob}")
        other = st.selectbox("Effect of another knob", knobs, key="sw_knob")
        with ui.section(f"Effect of {other}"):
            st.plotly_chart(plots.knob_effect(table, other, label), key="sw_effect_any")

    shown = table.copy()
    shown["objective"] = shown["objective"] * 100.0
    shown = shown.sort_values("objective", ascending=objective.mode == "min",
                              na_position="last", kind="stable")
    with ui.section("Trials"):
        st.subheader("Trials")
        st.dataframe(shown.drop(columns=["updated_at"]), hide_index=True, placeholder="–",
                     column_config={"objective": st.column_config.NumberColumn(
                         f"{label} (%)", format="%.1f")})

    with ui.section("Reproduce"):
        st.subheader("Reproduce")
        ranked = shown.dropna(subset=["objective"])
        trial_ids = list(ranked["trial_id"].astype(str)) or list(table["trial_id"].astype(str))
        trial = st.selectbox("Trial", trial_ids, key="sw_trial",
                             help="Trials ranked by the objective, best first.")
        st.code(sweep_data.reproduce_commands(name, trial, seeds=3), language="bash")
        st.caption("The top trials, three seeds each:")
        st.code(sweep_data.reproduce_commands(name, top=3, seeds=3), language="bash")

    with ui.section("Trial curves"):
        ids = tuple(int(i) for i in shown["run_id"].head(50))
        curves = ui.trial_curves(url, ids, "val/hm", rev)
        if len(curves):
            labels = {int(r.run_id): f"trial {r.trial_id} ({r.status})"
                      for r in table.itertuples(index=False)}
            st.plotly_chart(plots.trial_curves(curves, labels, "val/hm"), key="sw_curves")
        else:
            st.caption("No trial recorded a val/hm curve.")


if auto:
    st.fragment(run_every=10)(render)()
else:
    render()

st.caption(f"Store {store.display}; read {pd.Timestamp.now(tz='UTC'):%H:%M:%S} UTC.")
