"""Shared test set-up: quiet, offline, deterministic; one Ray instance per test module."""

import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(autouse=True, scope="module")
def _one_ray_per_module():
    """A module that started Ray (a sweep, a distributed generator) shuts it down when it is
    done, so the next module in the same test process can start its own."""
    yield
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
