"""The torchvision compatibility layer: inert where torchvision works, a working nms where not."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO,
        timeout=300,
    )


def extension_loads_here() -> bool:
    proc = run_python("""
        from zeroseg.platform.compat import torchvision_ops as t
        print(t._load_compiled_extension(t._extension_path()))
    """)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().endswith("True")


BROKEN = not extension_loads_here()


@pytest.mark.skipif(not BROKEN, reason="torchvision's extension loads on this machine")
def test_plain_import_fails_without_the_layer():
    # The precondition the layer exists for: without it, torchvision cannot be imported here.
    proc = run_python("import torchvision")
    assert proc.returncode != 0
    assert "torchvision::nms" in proc.stderr


@pytest.mark.skipif(not BROKEN, reason="torchvision's extension loads on this machine")
def test_shim_makes_torchvision_open_clip_and_mask2former_import_and_nms_exact():
    proc = run_python("""
        import torch
        from zeroseg.platform.compat import ensure_torchvision
        assert ensure_torchvision() == "shim"
        assert ensure_torchvision() == "shim"  # idempotent
        import torchvision
        from torchvision.ops import nms, batched_nms, box_iou

        def brute(boxes, scores, thr):
            order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
            keep = []
            for i in order:
                if all(float(box_iou(boxes[i:i+1], boxes[k:k+1])) <= thr for k in keep):
                    keep.append(i)
            return keep

        g = torch.Generator().manual_seed(0)
        for trial in range(30):
            n = int(torch.randint(0, 40, (1,), generator=g))
            xy = torch.rand(n, 2, generator=g) * 50
            wh = torch.rand(n, 2, generator=g) * 30 + 1
            boxes = torch.cat([xy, xy + wh], 1)
            scores = torch.rand(n, generator=g)
            if n > 3:
                scores[1] = scores[2]  # a tie
                boxes[3] = boxes[0]  # a duplicate box (IoU 1)
            for thr in (0.3, 0.5, 0.7):
                assert nms(boxes, scores, thr).tolist() == brute(boxes, scores, thr), (trial, thr)
        idx = torch.randint(0, 3, (20,), generator=g)
        b = torch.rand(20, 4, generator=g) * 10; b[:, 2:] += b[:, :2] + 1
        s = torch.rand(20, generator=g)
        kept = batched_nms(b, s, idx, 0.5)
        for c in range(3):  # batched = per-class nms
            m = (idx == c).nonzero().flatten()
            assert sorted(kept[idx[kept] == c].tolist()) == sorted(m[nms(b[m], s[m], 0.5)].tolist())
        assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0
        from torchvision.ops import roi_align
        out = roi_align(torch.arange(16.).reshape(1, 1, 4, 4), [torch.tensor([[0., 0., 4., 4.]])],
                        (1, 1), aligned=True)
        assert abs(float(out) - 7.5) < 1e-5  # the mean of 0..15 via torchvision's Python path
        import open_clip, timm  # noqa: F401
        from transformers import Mask2FormerForUniversalSegmentation  # noqa: F401
        print("OK")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")


def test_layer_does_nothing_when_the_extension_loads():
    # Stand-in for a machine whose compiled extension loads: the loader registers the schema the
    # way torchvision's _C does and reports success; the layer must then leave it alone.
    proc = run_python("""
        import torch
        from zeroseg.platform.compat import torchvision_ops as t

        native = torch.library.Library("torchvision", "DEF")
        def load(path):
            native.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            native.impl("nms", lambda d, s, thr: torch.tensor([-7]), "CPU")
            return True

        assert t.ensure_torchvision(load_extension=load) == "native"
        assert t._library is None
        assert torch.ops.torchvision.nms(torch.zeros(1, 4), torch.zeros(1), 0.5).tolist() == [-7]
        import sys
        assert not any(isinstance(f, t._BoxesPatcher) for f in sys.meta_path)
        print("OK")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")


def test_ray_runtime_env_names_the_hook():
    import logging

    from zeroseg.platform.compat import ray_runtime_env
    from zeroseg.platform.compat.ray_worker import QUIET_LOGGERS, WORKER_SETUP_HOOK

    env = ray_runtime_env({"env_vars": {"A": "1"}})
    assert env["worker_process_setup_hook"] == WORKER_SETUP_HOOK
    assert env["env_vars"] == {"A": "1"}
    module, _, name = WORKER_SETUP_HOOK.rpartition(".")
    hook = getattr(__import__(module, fromlist=[name]), name)
    cleaner = logging.getLogger(QUIET_LOGGERS[0])
    level = cleaner.level
    try:
        hook()  # what a Ray worker runs: torchvision usable, the cleaner's warnings dropped
        import torchvision  # noqa: F401

        assert not cleaner.isEnabledFor(logging.WARNING)
        assert cleaner.isEnabledFor(logging.ERROR)
    finally:
        cleaner.setLevel(level)


@pytest.mark.skipif(not BROKEN, reason="torchvision's extension loads on this machine")
def test_cli_import_hook_applies_the_layer_lazily_at_first_torchvision_import():
    proc = run_python("""
        import sys
        from zeroseg.platform.compat import install_import_hook
        install_import_hook()
        assert "torch" not in sys.modules  # nothing heavy until torchvision is wanted
        import torch
        import torchvision.ops
        from zeroseg.platform.compat import torchvision_ops as t
        assert t._state == "shim"
        assert torchvision.ops.nms(torch.tensor([[0., 0, 2, 2], [0, 0, 2, 2.1]]),
                                   torch.tensor([0.5, 0.6]), 0.5).tolist() == [1]
        print("OK")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")


def test_direct_call_after_the_lazy_hook_is_installed_does_not_deadlock():
    # The CLI installs the lazy hook; library code may then call ensure_torchvision() directly.
    proc = run_python("""
        from zeroseg.platform.compat import ensure_torchvision, install_import_hook
        install_import_hook()
        print(ensure_torchvision())
        import torchvision  # noqa: F401
        print("OK")
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")
