"""The dashboard's pages: Streamlit scripts run by ``st.navigation`` in ``app.py`` (not meant
to be imported)."""
