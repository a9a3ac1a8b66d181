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
"""

from __future__ import annotations

import json
import logging
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

__all__ = ["CheckpointError", "CheckpointInfo", "check_compatible", "verify_checkpoint",
           "write_info", "write_manifest"]


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
