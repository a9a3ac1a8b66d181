"""Reproductions page: each reproduced config against the value its sweep reported.

A reproduction run points at the trial it re-runs (``source_run_id``); its value is the same
objective the sweep optimised (e.g. validation HM), so the difference between the sweep's
number and the mean over seeds is the selection optimism plus seed noise. Test HM of the
reproductions is shown beside it.
"""

from __future__ import annotations

import streamlit as st

from zeroseg.dashboards import plots, ui

st.title("Reproductions")
store, url = ui.page_store()
revs = ui.revision(url)
summary, seeds = ui.reproductions(url, revs["results"] + revs["trials"])
if summary.empty:
    st.info("No reproduction in this store yet. Re-run the best trials of a sweep with "
            "`zeroseg reproduce SWEEP_NAME --top 3 --seeds 3`.", icon=":material/replay:")
    st.stop()

st.caption("Values in percent. Sweep value: the objective the trial reported during the sweep; "
           "reproduced: mean ± std over the reproduction seeds of the same objective.")
st.dataframe(summary, hide_index=True, placeholder="–",
             column_config=ui.pct_config(["Sweep value", "Reproduced mean", "Reproduced std",
                                          "Min", "Max", "Δ (mean − sweep)", "Test HM mean",
                                          "Test HM std"]))
with ui.section("Seed spread"):
    st.plotly_chart(plots.reproductions(seeds, summary), key="rp_chart")
with st.expander("Every reproduction run"):
    st.dataframe(seeds, hide_index=True, placeholder="–",
                 column_config=ui.pct_config(["value", "test_hm"]))
    st.caption("Open one in Run detail with /run?run=ID.")
