"""Leaderboard page: seen / unseen / HM per method, task, metric and split, beside the papers.

Our rows are mean ± std over runs (seeds) of finished runs; the papers' reported figures are
separate rows labelled with paper and table. Filters live in the page's left column; the CSV
and LaTeX downloads hold exactly the rows of the table as shown (also kept in
``st.session_state["leaderboard_csv"]`` / ``["leaderboard_latex"]``).
"""

from __future__ import annotations

import streamlit as st

from zeroseg.dashboards import ui
from zeroseg.dashboards.data import labels as label_data
from zeroseg.dashboards.data import leaderboard

#: Numbers next to the method; the descriptive columns after them (the downloads keep the
#: view's own column order, keys first).
DISPLAY_ORDER = ["Method", "Config", "Metric", "Seen", "Seen ±", "Unseen", "Unseen ±", "HM",
                 "HM ±", "Runs", "Source", "Split", "Embedding", "Backbone", "Task", "Setting",
                 "Eval split", "Seeds"]

st.title("Leaderboard")
st.caption("Seen / unseen / harmonic mean (HM) of each method, in percent: our runs as mean ± "
           "std over runs (seeds), the papers' reported figures in labelled rows beside them. "
           "HM is averaged per run.")

store, url = ui.page_store()
revs = ui.revision(url)

with st.sidebar:
    st.subheader("Leaderboard filters")
    kinds = st.multiselect("Run kinds", ["train", "reproduction", "eval", "trial"],
                           default=list(leaderboard.DEFAULT_KINDS), key="lb_kinds",
                           placeholder="all kinds",
                           help="Sweep trials are model selection, left out by default.")
runs = ui.leaderboard_rows(url, not kinds or "trial" in kinds,
                          (revs["results"], revs["trials"] if "trial" in kinds or not kinds
                           else ("unused",)))
options = leaderboard.filter_options(runs)

with st.sidebar:
    setting = st.radio("Setting", ["gzsl", "zsl"], format_func=str.upper, horizontal=True,
                       key="lb_setting",
                       help="GZSL: seen and unseen classes predicted together; ZSL: unseen "
                            "classes only (no seen / HM).")
    eval_split = st.radio("Evaluation split", ["test", "val"], horizontal=True,
                          key="lb_eval_split",
                          help="test: the split's real unseen classes. val: the validation "
                               "protocol (held-out seen classes play unseen) that sweeps "
                               "select on. The papers report test only.")
    tasks = st.multiselect("Task", options["tasks"], key="lb_tasks",
                           format_func=lambda t: f"{t} ({label_data.TASK_ABBREVIATIONS.get(t, t)})",
                           placeholder="all tasks")
    default_metrics = [m for m in leaderboard.DEFAULT_METRICS if m in options["metrics"]]
    metrics = st.multiselect("Metric", options["metrics"], default=default_metrics,
                             key="lb_metrics", placeholder="all metrics")
    methods = st.multiselect("Method", options["methods"], key="lb_methods",
                             placeholder="all methods")
    splits = st.multiselect("Dataset / split", options["splits"], key="lb_splits",
                            placeholder="all splits")
    embeddings = st.multiselect("Embedding", options["embeddings"], key="lb_embeddings",
                                placeholder="all embeddings")
    backbones = st.multiselect("Backbone", options["backbones"], key="lb_backbones",
                               placeholder="all backbones")
    finished_only = st.checkbox("Finished runs only", value=True, key="lb_finished")
    papers = st.checkbox("Show the papers' figures", value=True, key="lb_papers")

f = leaderboard.LeaderboardFilter(
    setting=setting, eval_split=eval_split, tasks=tuple(tasks), metrics=tuple(metrics),
    methods=tuple(methods), splits=tuple(splits), embeddings=tuple(embeddings),
    backbones=tuple(backbones), kinds=tuple(kinds), finished_only=finished_only, papers=papers)
view = leaderboard.leaderboard_view(runs, f)

ours = int((view["Source"] == leaderboard.OURS).sum()) if len(view) else 0
c1, c2, c3 = st.columns(3)
c1.metric("Rows of ours", ours)
c2.metric("Paper rows", len(view) - ours)
c3.metric("Runs in the store", store.count_runs())

if view.empty:
    st.info("No row matches these filters. Widen them in the sidebar (e.g. evaluation split, "
            "setting or run kinds).", icon=":material/filter_alt_off:")
else:
    if ours == 0:
        st.info("None of our runs matches these filters (or none has finished with metrics "
                "yet): only the papers' figures are shown.", icon=":material/info:")
    st.dataframe(
        view, hide_index=True, placeholder="–", column_order=DISPLAY_ORDER,
        column_config={
            **ui.pct_config(["Seen", "Unseen", "HM"]),
            **ui.pct_config(["Seen ±", "Unseen ±", "HM ±"]),
            "Runs": st.column_config.NumberColumn("Runs", format="%d",
                                                  help="number of runs averaged"),
            "Source": st.column_config.TextColumn(
                "Source", width="medium",
                help="ours = runs in this store; paper: ... = the paper's figure"),
            "Config": st.column_config.TextColumn(
                "Config", width="medium",
                help="- = the method's run config; trial / reproduction of SWEEP/TRIAL "
                     "otherwise (never averaged together)"),
        })
    if eval_split != "test" and papers:
        st.caption("The papers report the test split only: switch the evaluation split to "
                   "test to see their rows.")
caption = f"{setting.upper()}, {eval_split} split"
csv_text = leaderboard.view_to_csv(view)
latex_text = leaderboard.view_to_latex(view, caption=f"zeroseg leaderboard ({caption})")
st.session_state["leaderboard_csv"] = csv_text
st.session_state["leaderboard_latex"] = latex_text
d1, d2 = st.columns(2)
d1.download_button("Download this view as CSV", csv_text, file_name="leaderboard.csv",
                   mime="text/csv", key="lb_csv", icon=":material/download:",
                   on_click="ignore")
d2.download_button("Download this view as LaTeX", latex_text, file_name="leaderboard.tex",
                   mime="text/x-tex", key="lb_latex", icon=":material/download:",
                   on_click="ignore")
with st.expander("LaTeX of this view (booktabs)"):
    st.code(latex_text, language="latex")
