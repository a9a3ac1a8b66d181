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
from typing import Any

from zeroseg.platform.compat.torchvision_ops import ensure_torchvision

WORKER_SETUP_HOOK = "zeroseg.platform.compat.ray_worker.setup_ray_worker"
#: Ray loggers whose warnings are noise in zeroseg's Ray (see the module docstring).
QUIET_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)


def setup_ray_worker() -> None:
    ensure_torchvision()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def ray_runtime_env(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Ray ``runtime_env`` whose workers run :func:`setup_ray_worker` at start-up."""
    env = dict(extra or {})
    env["worker_process_setup_hook"] = WORKER_SETUP_HOOK
    return env
