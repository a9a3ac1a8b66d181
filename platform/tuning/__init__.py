"""Sweeps (Ray Tune + Optuna + ASHA) and reproductions of their best configs.

- :mod:`.space`: search spaces as data, validated against the method's config schema;
- :mod:`.sweep`: :func:`run_sweep` (``zeroseg sweep``), the trial function, the store callback;
- :mod:`.reproduce`: :func:`reproduce` (``zeroseg reproduce``).
"""
