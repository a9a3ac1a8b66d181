"""Sweeps (Ray Tune + Optuna + ASHA) and reproductions of their best configs.

- :mod:`.objective`: what a sweep optimises and where its Optuna study lives (torch-free);
- :mod:`.space`: search spaces as data, validated against the method's config schema;
- :mod:`.sweep`: :func:`run_sweep` (``zeroseg sweep``), the trial function, the store callback;
- :mod:`.reproduce`: :func:`reproduce` (``zeroseg reproduce``).
"""
