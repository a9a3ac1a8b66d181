"""Datasets, benchmark splits, readers and the leakage-safe training filters."""
