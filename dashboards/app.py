"""The zeroseg dashboard: ``streamlit run dashboards/app.py -- --store URL``.

Started by ``zeroseg dashboard [--store URL] [--port P]`` (:func:`zeroseg.dashboards.launch.main`),
bound to 127.0.0.1 unless told otherwise. The store comes from ``--store`` after ``--``, else
``$ZEROSEG_STORE``, else ``.zeroseg/results.db``; it is opened read-only.

Four pages (``st.navigation``, one script each in ``views/``):

1. Leaderboard — methods x tasks x splits, seen / unseen / HM, beside the papers; CSV / LaTeX.
2. Sweeps — live progress, best so far, knobs vs HM, primitives, importance, reproduce commands.
3. Run detail — provenance, leakage audit, per-class metrics, curves, embeddings, predictions.
4. Reproductions — reproduced configs against their sweep values, with the seed spread.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from zeroseg.dashboards import ui

VIEWS = Path(__file__).resolve().parent / "views"

st.set_page_config(page_title="zeroseg dashboard", page_icon=":material/insights:",
                   layout="wide")
pages = [
    st.Page(VIEWS / "leaderboard.py", title="Leaderboard", icon=":material/leaderboard:",
            url_path="leaderboard", default=True),
    st.Page(VIEWS / "sweeps.py", title="Sweeps", icon=":material/tune:", url_path="sweeps"),
    st.Page(VIEWS / "run_detail.py", title="Run detail", icon=":material/description:",
            url_path="run"),
    st.Page(VIEWS / "reproductions.py", title="Reproductions", icon=":material/replay:",
            url_path="reproductions"),
]
page = st.navigation(pages)
with st.sidebar:
    try:
        st.caption(f"Results store: `{ui.store_url_display()}` (read-only)")
    except Exception as e:  # noqa: BLE001 - the page itself explains an unusable store
        st.caption(f"Results store: not resolvable ({type(e).__name__})")
page.run()
