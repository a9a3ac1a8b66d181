"""Package layout: ``platform/`` lives in the zeroseg namespace and never shadows the stdlib."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CODE_FOLDERS = {"platform": "zeroseg.platform", "methods": "zeroseg.methods",
                "dashboards": "zeroseg.dashboards"}


def test_code_folders_have_no_top_level_init():
    for folder in CODE_FOLDERS:
        assert (REPO / folder).is_dir()
        assert not (REPO / folder / "__init__.py").exists(), folder


def test_stdlib_platform_wins_from_the_repo_root():
    proc = subprocess.run(
        [sys.executable, "-c",
         "import platform; print(platform.system()); print(platform.__file__)"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    system, origin = proc.stdout.split()
    assert system  # the stdlib function ran
    assert not Path(origin).resolve().is_relative_to(REPO)  # and the module is not ours


def test_every_subpackage_is_installed_under_zeroseg():
    # Every folder holding Python code maps to an importable zeroseg module path.
    import importlib

    for folder, namespace in CODE_FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            name = ".".join((namespace, *rel.parts))
            module = importlib.import_module(name)
            assert Path(module.__file__).resolve() == init.resolve(), name


def test_layout_has_the_design_top_level():
    for entry in ("pyproject.toml", "ray_cluster.yaml", "platform", "methods", "dashboards",
                  "search_spaces", "tests", "benches", "constraints.txt", "Makefile", "README.md",
                  ".ci/run"):
        assert (REPO / entry).exists(), entry


def test_constraints_pin_torch_cpu_and_torchvision():
    pins = (REPO / "constraints.txt").read_text()
    assert "torch==2.13.0" in pins and "torchvision==0.28.0" in pins
    import torch

    assert torch.__version__.startswith("2.13.0")


@pytest.mark.ray
def test_ray_worker_with_repo_working_dir_sees_stdlib_platform_and_working_torchvision():
    import ray

    from zeroseg.platform.compat import ray_runtime_env

    runtime_env = ray_runtime_env({
        "working_dir": str(REPO),
        "excludes": [".venv", ".git", "runs", "*.egg-info"],
    })
    ray.init(address="local", num_cpus=1, include_dashboard=False, runtime_env=runtime_env,
             log_to_driver=False, configure_logging=False)
    try:
        @ray.remote
        def probe():
            import os
            import platform

            import torch
            from torchvision.ops import nms

            import zeroseg.platform.errors  # noqa: F401  (the package, from the worker)

            boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
            kept = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5).tolist()
            return platform.system(), os.getcwd(), kept

        system, cwd, kept = ray.get(probe.remote())
        assert system == "Linux"
        assert kept == [0, 2]
        assert (Path(cwd) / "platform").is_dir()  # the repo really was the working dir
    finally:
        ray.shutdown()
