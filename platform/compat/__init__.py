"""Compatibility shims applied by every zeroseg entry point and Ray worker."""

from zeroseg.platform.compat.ray_worker import ray_init_address, ray_runtime_env
from zeroseg.platform.compat.torchvision_ops import ensure_torchvision, install_import_hook

__all__ = ["ensure_torchvision", "install_import_hook", "ray_init_address", "ray_runtime_env"]
