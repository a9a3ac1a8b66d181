"""The dashboard's data layer: store rows in, pandas DataFrames out, no Streamlit.

One module per page (:mod:`.leaderboard`, :mod:`.sweeps`, :mod:`.reproductions`,
:mod:`.run_detail`) over what they share (:mod:`.labels`); the store is read through
:mod:`zeroseg.platform.store` (its read-only frames: :mod:`zeroseg.platform.store.queries`).
Every page of the app is a thin layout over these functions, so all of it is testable without
a browser.
"""
