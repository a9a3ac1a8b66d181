"""What every zeroseg Ray worker process runs at start-up (``worker_process_setup_hook``).

:func:`ray_runtime_env` names :func:`setup_ray_worker` as the hook; Ray runs it in every worker
and actor of the job (Ray Train's workers and controller, Tune's trials, their helpers):

- :func:`~zeroseg.platform.compat.torchvision_ops.ensure_torchvision`, so ``import
  torchvision`` works there as in the driver;
- Ray Train's ``PlacementGroupCleaner`` (a detached actor beside each training run) asks Ray's
  State API once a second whether the run's controller is alive. zeroseg starts Ray without
  the dashboard that serves that API (``include_dashboard=False``: seconds and memory saved),
  so every ask fails and logs "Failed to query Ray Train Controller actor state ... Continuing
  to monitor": one line per second of training (46 in a 2-worker test run with a worker
  killed), on the driver's terminal with ``-v`` or in a Ray job. The cleaner cannot do
  anything without the API; its warnings are dropped, its errors still show.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from zeroseg.platform.compat.torchvision_ops import ensure_torchvision

WORKER_SETUP_HOOK = "zeroseg.platform.compat.ray_worker.setup_ray_worker"
#: Ray loggers whose warnings are noise in zeroseg's Ray (see the module docstring).
QUIET_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def setup_ray_worker() -> None:
    ensure_torchvision()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def ray_init_address(address: str | None = None) -> str | None:
    """The ``address`` zeroseg passes to ``ray.init``.

    An explicit address wins; inside a Ray job (``RAY_ADDRESS`` set by ``ray job submit``) Ray
    connects to that cluster. Otherwise zeroseg starts its own local Ray ("local"): left to
    itself, ``ray.init()`` would join whatever cluster ``/tmp/ray/ray_current_cluster`` names --
    another user's ``ray start``, a test's two-node cluster, or one that has since died
    ("Failed to connect to Ray cluster at ...").
    """
    if address:
        return address
    if os.environ.get("RAY_ADDRESS"):
        return None
    return "local"


def ray_runtime_env(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Ray ``runtime_env`` whose workers run :func:`setup_ray_worker` at start-up."""
    env = dict(extra or {})
    env["worker_process_setup_hook"] = WORKER_SETUP_HOOK
    return env
