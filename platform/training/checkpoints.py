"""Training checkpoints: DeepSpeed's sharded state plus what it takes to trust and resume it.

A checkpoint directory (one per ``ray.train.report``; Ray merges the ranks' files into one)::

    zeroseg_checkpoint.json       rank 0: step, DeepSpeed tag, world size, ZeRO stage, precision,
                                  the config's resume hash, dataset fingerprint, class ids
    zeroseg_manifest_rank<R>.json each rank: size and sha256 of every file that rank wrote
    <tag>/ ... latest             DeepSpeed's ``save_checkpoint`` output (model, optimizer shards)
    segmenter/                    the final checkpoint only: the exported model (save_segmenter)

:func:`verify_checkpoint` reads the info file and checks every rank's files against its
manifest, so a missing, truncated or altered shard is a one-line :class:`CheckpointError` naming
the file, before DeepSpeed is asked to load anything. :func:`check_compatible` compares a
checkpoint with the run that wants to resume it and names the first field that differs.

**No code from a checkpoint.** The manifests are written by the checkpoint about itself: they
catch a truncated or corrupt file, not a crafted one (whoever can write the folder can recompute
them). What makes resuming safe is how the files are read: :func:`load_tensor_file` is
``torch.load(weights_only=True)`` with exactly three harmless DeepSpeed types allowed (below);
:func:`check_tensor_files` reads every ``.pt`` file of a checkpoint that way before anything is
handed to DeepSpeed, and :func:`load_training_state` replaces DeepSpeed's checkpoint engine
(whose ``load`` is ``torch.load(weights_only=False)``) by one that reads through
:func:`load_tensor_file` too, so the bytes DeepSpeed restores from are never unpickled with
arbitrary globals either (no window between our check and its read). A file that needs any
other global is a one-line :class:`CheckpointError` naming the file and the global; nothing in
it runs. Ray Train's own run state (``checkpoint_manager_snapshot.json``) is JSON.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zeroseg.methods.segmenter.checkpoint import CheckpointError
from zeroseg.platform.errors import DataError
from zeroseg.platform.io import atomic_write_json, read_json, sha256_file

log = logging.getLogger(__name__)

INFO_FILE = "zeroseg_checkpoint.json"
MANIFEST_PREFIX = "zeroseg_manifest_rank"
EXPORT_DIR = "segmenter"
FORMAT = "zeroseg-train-checkpoint-1"

__all__ = ["CheckpointError", "CheckpointInfo", "check_compatible", "check_tensor_files",
           "load_tensor_file", "load_training_state", "newest_valid_checkpoint",
           "verify_checkpoint", "write_info", "write_manifest"]


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    tag: str
    world_size: int
    zero_stage: int
    precision: str
    resume_hash: str
    dataset: str
    class_ids: list[int]
    has_export: bool
    raw: dict[str, Any]


def _is_manifest(path: Path) -> bool:
    return path.name.startswith(MANIFEST_PREFIX) and path.suffix == ".json"


def write_info(directory: Path, info: dict[str, Any]) -> None:
    atomic_write_json(directory / INFO_FILE, {"format": FORMAT, **info}, indent=2)


def write_manifest(directory: Path, rank: int) -> None:
    """Record size and sha256 of every file this rank wrote into ``directory`` (call last)."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and not _is_manifest(p)):
        rel = path.relative_to(directory).as_posix()
        files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    atomic_write_json(directory / f"{MANIFEST_PREFIX}{rank}.json", {"rank": rank, "files": files},
                      indent=1)


def _field(doc: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    value = doc.get(key)
    if isinstance(value, bool) and kind is int or not isinstance(value, kind):
        raise CheckpointError(f"{path}: field '{key}' is missing or not a "
                              f"{getattr(kind, '__name__', kind)}")
    return value


def verify_checkpoint(directory: str | Path) -> CheckpointInfo:
    """Read a training checkpoint's info and check its files against the ranks' manifests."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: training checkpoint directory not found")
    info_path = directory / INFO_FILE
    try:
        doc = read_json(info_path, "training checkpoint info", expect=dict)
    except DataError as e:
        raise CheckpointError(str(e)) from None
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"{info_path}: format is {doc.get('format')!r}, expected {FORMAT!r}")
    world = _field(doc, "world_size", int, info_path)
    for rank in range(world):
        manifest_path = directory / f"{MANIFEST_PREFIX}{rank}.json"
        try:
            manifest = read_json(manifest_path, f"checkpoint manifest of rank {rank}", expect=dict)
        except DataError as e:
            raise CheckpointError(str(e)) from None
        files = manifest.get("files")
        if not isinstance(files, dict):
            raise CheckpointError(f"{manifest_path}: 'files' must be a mapping")
        for rel, entry in files.items():
            path = directory / rel
            if not path.is_file():
                raise CheckpointError(f"{path}: checkpoint file missing (listed by rank {rank})")
            if not isinstance(entry, dict):
                raise CheckpointError(f"{manifest_path}: entry of {rel} must be a mapping")
            size = path.stat().st_size
            if size != entry.get("size"):
                raise CheckpointError(f"{path}: {size} bytes, the manifest of rank {rank} says "
                                      f"{entry.get('size')} (truncated or replaced file)")
            if sha256_file(path) != entry.get("sha256"):
                raise CheckpointError(f"{path}: contents do not match the sha256 in "
                                      f"{manifest_path.name} (corrupt file)")
    class_ids = _field(doc, "class_ids", list, info_path)
    return CheckpointInfo(
        path=directory,
        step=_field(doc, "step", int, info_path),
        tag=_field(doc, "tag", str, info_path),
        world_size=world,
        zero_stage=_field(doc, "zero_stage", int, info_path),
        precision=_field(doc, "precision", str, info_path),
        resume_hash=_field(doc, "resume_hash", str, info_path),
        dataset=_field(doc, "dataset", str, info_path),
        class_ids=[int(c) for c in class_ids],
        has_export=(directory / EXPORT_DIR).is_dir(),
        raw=doc,
    )


def check_compatible(info: CheckpointInfo, *, world_size: int, zero_stage: int, precision: str,
                     resume_hash: str, dataset: str, class_ids: list[int],
                     resume_identity: dict[str, Any] | None = None) -> None:
    """Raise a CheckpointError naming the first thing that differs between a checkpoint and
    the run that wants to resume from it."""
    where = info.path / INFO_FILE
    pairs = [("world_size (distributed.workers)", info.world_size, world_size),
             ("zero_stage (distributed.zero_stage)", info.zero_stage, zero_stage),
             ("precision (distributed.precision)", info.precision, precision),
             ("class_ids (data.oracle / data.validation / split)", info.class_ids, class_ids),
             ("dataset fingerprint", info.dataset, dataset)]
    for name, have, want in pairs:
        if have != want:
            shown = (f"{len(have)} classes" if isinstance(have, list) else repr(have),
                     f"{len(want)} classes" if isinstance(want, list) else repr(want))
            if isinstance(have, list) and len(have) == len(want):
                shown = ("other ids", "these ids")
            raise CheckpointError(f"{where}: checkpoint has {name} {shown[0]}, this run "
                                  f"{shown[1]}; resume with the same settings or start a new "
                                  f"output.run_dir")
    if info.resume_hash != resume_hash:
        detail = ""
        stored = info.raw.get("resume_identity")
        if isinstance(stored, dict) and resume_identity is not None:
            key = _first_difference(stored, json.loads(json.dumps(resume_identity)))
            if key:
                detail = f" (first difference: {key})"
        raise CheckpointError(f"{where}: checkpoint was written by a different training "
                              f"config{detail}; resume with the same config or start a new "
                              f"output.run_dir")


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if key not in a or key not in b:
                return dotted
            found = _first_difference(a[key], b[key], dotted)
            if found:
                return found
        return None
    return None if a == b else (prefix or "<root>")


# -- reading tensor files without running code ----------------------------------------------------
def _deepspeed_safe_globals() -> list[Any]:
    """The only non-tensor types DeepSpeed 0.19 writes into the checkpoints zeroseg makes (found
    by loading ZeRO 0-3, fp32 and bf16 checkpoints with ``weights_only=True``): the ZeRO
    optimizer's static loss scaler (a float and a bool), the ZeRO stage (an int enum) and a
    tensor fragment's (numel, start) pair. Unpickling them sets attributes; it runs no code."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load_tensor_file(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` allowing only :func:`_deepspeed_safe_globals`;
    a file that needs anything else (a crafted pickle) is a :class:`CheckpointError`."""
    import torch

    path = Path(path)
    try:
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = _GLOBAL.findall(str(e))
        needs = f"it needs {found[0]}, " if found else ""
        raise CheckpointError(f"{path}: refused, not a plain tensor file ({needs}which "
                              f"zeroseg never unpickles; nothing in it was run)") from None
    except Exception as e:  # a truncated zip, a file that is no torch file at all
        first = str(e).splitlines()[0][:160] if str(e) else ""
        raise CheckpointError(f"{path}: not a readable tensor file ({type(e).__name__}: "
                              f"{first})") from None


def check_tensor_files(directory: str | Path) -> None:
    """Read every ``.pt`` file under a checkpoint directory with :func:`load_tensor_file`
    (one at a time, then dropped): the first that is refused or unreadable is the error."""
    for path in sorted(Path(directory).rglob("*.pt")):
        if path.is_file():
            load_tensor_file(path)


def load_training_state(engine: Any, directory: Path, tag: str) -> dict[str, Any]:
    """Restore a DeepSpeed engine (module, optimizer, scheduler) from a verified checkpoint
    and return the client state, reading every file with :func:`load_tensor_file`."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        """DeepSpeed's torch checkpoint engine, loading with ``weights_only=True``."""

        def load(self, path: str, map_location: Any = None) -> Any:
            return load_tensor_file(path, map_location=map_location)

    if engine.load_universal_checkpoint():  # reads its files with torch.load directly
        raise CheckpointError(f"{directory}: DeepSpeed universal checkpoints are not loaded")
    if type(engine.checkpoint_engine) is not TorchCheckpointEngine:
        raise CheckpointError(f"{directory}: DeepSpeed is configured with the checkpoint "
                              f"engine {type(engine.checkpoint_engine).__name__}, which zeroseg "
                              f"cannot make load without unpickling")
    engine.checkpoint_engine = WeightsOnlyCheckpointEngine(engine._config)
    try:
        load_path, client = engine.load_checkpoint(str(directory), tag=tag)
    except CheckpointError:
        raise
    except Exception as e:  # DeepSpeed raises many kinds on unreadable shards
        first = str(e).splitlines()[0][:160] if str(e) else ""
        raise CheckpointError(f"{directory / tag}: DeepSpeed cannot load the checkpoint "
                              f"({type(e).__name__}: {first})") from None
    if load_path is None:
        raise CheckpointError(f"{directory / tag}: DeepSpeed found no checkpoint to load")
    return dict(client or {})


# -- which checkpoint to resume ------------------------------------------------------------------
def _recorded_step(directory: Path) -> int | None:
    try:
        step = json.loads((directory / INFO_FILE).read_text()).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def newest_valid_checkpoint(directories: list[Path]) -> tuple[CheckpointInfo | None,
                                                             list[tuple[Path, str]]]:
    """The newest of ``directories`` (by the step its info file records) that verifies against
    its manifests and whose tensor files all load safely, and the ones skipped on the way with
    the reason (an interrupted write leaves a folder without info file or manifest; a corrupt
    or crafted file is refused). Folders whose info file cannot be read sort last."""
    ordered = sorted(directories, key=lambda d: (_recorded_step(d) is not None,
                                                 _recorded_step(d) or -1, d.name), reverse=True)
    skipped: list[tuple[Path, str]] = []
    for directory in ordered:
        try:
            info = verify_checkpoint(directory)
            check_tensor_files(directory)
        except CheckpointError as e:
            skipped.append((directory, str(e)))
            continue
        return info, skipped
    return None, skipped
