"""Pure-PyTorch stand-ins for torchvision's compiled operators, used only when they cannot load.

Why: the PyPI torchvision 0.28.0 wheel is linked against CUDA libraries. With the CPU build of
torch its ``_C`` extension fails to load, and ``import torchvision`` then dies in
``torchvision/_meta_registrations.py`` with ``RuntimeError: operator torchvision::nms does not
exist`` (it registers fake kernels for ``nms``/``qnms`` unconditionally). That takes down
``open_clip``, ``timm`` and transformers' Mask2Former too.

What: :func:`ensure_torchvision` tries to load the compiled extension exactly as torchvision does.
If it loads (a machine with a working torchvision), nothing else happens. If it does not, the
operator schemas torchvision needs at import time are defined with ``torch.library`` and given
pure-PyTorch implementations:

- ``torchvision::nms`` — greedy non-maximum suppression, same semantics as the C++ kernel
  (boxes ``x1, y1, x2, y2``; a box is suppressed when its IoU with a kept, higher-scoring box is
  strictly greater than the threshold; ties in score keep the earlier box);
- ``torchvision::qnms`` — the quantized variant, by dequantizing and running ``nms``.

``torchvision.ops.nms`` (and ``batched_nms``) refuse to run while ``_has_ops()`` is false, so a
post-import hook relaxes that check in ``torchvision.ops.boxes`` alone, whose only other compiled op
(rotated-box IoU) still fails with "no such operator". Every other torchvision op checks
``torchvision.extension._has_ops()`` (false here) and takes its own Python path where it has one
(``roi_align`` does).

Where: every zeroseg entry point calls :func:`ensure_torchvision` before anything can import
torchvision, and Ray workers run it through ``runtime_env["worker_process_setup_hook"]``
(:func:`zeroseg.platform.compat.ray_worker.ray_runtime_env`). It is idempotent and cheap after
the first call.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: Import path of the hook Ray workers run at start-up.

# Outcomes of ensure_torchvision()
NATIVE = "native"  # the compiled extension loaded: nothing was registered
SHIM = "shim"  # the extension could not load: pure-PyTorch ops were registered
ABSENT = "absent"  # torchvision is not installed

_lock = threading.RLock()
_state: str | None = None
_library: Any = None  # the torch.library.Library, kept alive: dropping it unregisters the ops


def _extension_path() -> Path | None:
    """Path of torchvision's compiled ``_C`` extension, found without importing torchvision."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            candidate = Path(folder) / f"_C{suffix}"
            if candidate.exists():
                return candidate
    return Path(spec.submodule_search_locations[0]) / "_C.so"  # missing: loading will fail


def _load_compiled_extension(path: Path) -> bool:
    """Load the extension the way torchvision.extension does; True when it loaded."""
    import torch

    try:
        torch.ops.load_library(str(path))
    except (ImportError, OSError) as exc:
        log.debug("torchvision extension %s did not load: %s", path, exc)
        return False
    return True


def _op_exists(name: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def nms_reference(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS in plain PyTorch; returns kept indices sorted by decreasing score."""
    import torch

    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order].to(torch.float64 if boxes.dtype == torch.float64 else torch.float32)
    x1, y1, x2, y2 = b.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    ix1 = torch.maximum(x1[:, None], x1[None, :])
    iy1 = torch.maximum(y1[:, None], y1[None, :])
    ix2 = torch.minimum(x2[:, None], x2[None, :])
    iy2 = torch.minimum(y2[:, None], y2[None, :])
    inter = (ix2 - ix1).clamp(min=0) * (iy2 - iy1).clamp(min=0)
    iou = inter / (areas[:, None] + areas[None, :] - inter)
    overlaps = (iou > iou_threshold).cpu()
    n = b.shape[0]
    suppressed = torch.zeros(n, dtype=torch.bool)
    keep: list[int] = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i]
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def _qnms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    return nms_reference(dets.dequantize(), scores.dequantize(), iou_threshold)


_BOXES_MODULE = "torchvision.ops.boxes"


def _shim_ops_available() -> None:
    """Replaces ``_assert_has_ops`` in torchvision.ops.boxes: nms is registered by the shim."""


class _BoxesPatcher(importlib.abc.MetaPathFinder):
    """Lets ``torchvision.ops.nms`` use the shim by relaxing its extension check after import."""

    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        if fullname != _BOXES_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                exec_module = spec.loader.exec_module

                def exec_and_patch(module, _exec=exec_module):  # type: ignore[no-untyped-def]
                    _exec(module)
                    module._assert_has_ops = _shim_ops_available

                spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
                return spec
        return None


def _register_shim() -> None:
    import torch

    global _library
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    keys = ["CPU"] + (["CUDA"] if torch.cuda.is_available() else [])
    for key in keys:
        lib.impl("nms", nms_reference, key)
    lib.impl("qnms", _qnms, "QuantizedCPU")
    _library = lib
    if _BOXES_MODULE in sys.modules:
        sys.modules[_BOXES_MODULE]._assert_has_ops = _shim_ops_available
    else:
        sys.meta_path.insert(0, _BoxesPatcher())


def ensure_torchvision(
    load_extension: Callable[[Path], bool] = _load_compiled_extension,
) -> str:
    """Make ``import torchvision`` work; returns ``"native"``, ``"shim"`` or ``"absent"``.

    ``load_extension`` exists for tests of the working-extension path; callers never pass it.
    """
    global _state
    with _lock:
        if _state is not None:
            return _state
        # A pending lazy hook must not fire from inside this call (find_spec below would run it).
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _ApplyOnFirstImport)]
        path = _extension_path()
        if path is None:
            _state = ABSENT
        elif _op_exists("nms") or load_extension(path):
            _state = NATIVE
        else:
            _register_shim()
            _state = SHIM
            log.info("torchvision's compiled ops cannot load here; using pure-PyTorch nms")
        return _state


class _ApplyOnFirstImport(importlib.abc.MetaPathFinder):
    """Runs :func:`ensure_torchvision` the first time anything imports torchvision."""

    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            ensure_torchvision()
        return None


def install_import_hook() -> None:
    """Apply the layer lazily: at the first ``import torchvision`` (used by the CLI, so commands
    that never touch torchvision do not pay for importing torch)."""
    if _state is None and "torchvision" not in sys.modules and not any(
        isinstance(f, _ApplyOnFirstImport) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _ApplyOnFirstImport())
    elif "torchvision" in sys.modules:
        ensure_torchvision()
