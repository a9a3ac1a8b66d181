"""Segmenter checkpoints: a directory with ``model.pt`` (the state dict) and ``meta.json``.

``meta.json`` holds what it takes to rebuild and interpret the model::

    format            "zeroseg-segmenter-1"
    config            SegmenterConfig as plain data (to_dict)
    num_classes       K, the classifier's outputs without "no object"
    class_ids         category ids in classifier order (len K)
    model_sha256      checksum of model.pt (a truncated or swapped file is detected on load)
    parameters        number of parameters; torch / transformers versions
    + whatever the caller passes: class_names, split, dataset, train_config_hash, step, ...

The directory is written atomically (built in a temporary sibling, renamed into place). Loading
reads ``model.pt`` with ``weights_only=True`` and checks it against ``meta.json``: a missing
file, malformed json, wrong checksum, missing / unexpected keys or a shape that does not fit the
config is a one-line :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from zeroseg.methods.segmenter.model import Segmenter, SegmenterConfig, key_mismatch
from zeroseg.platform.config import from_dict, to_dict
from zeroseg.platform.errors import DataError, ZerosegError
from zeroseg.platform.io import atomic_directory, dumps_json, read_json, sha256_file

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "zeroseg-segmenter-1"
MODEL_FILE = "model.pt"
META_FILE = "meta.json"
RESERVED_META = ("format", "config", "num_classes", "model_sha256", "parameters", "versions")


class CheckpointError(DataError):
    """A segmenter checkpoint is missing, corrupt or does not match its metadata."""


def _unwrap(model: Any) -> Segmenter:
    """The Segmenter inside a DDP / DeepSpeed wrapper (``.module``), or the model itself."""
    seen = 0
    while not isinstance(model, Segmenter) and hasattr(model, "module") and seen < 4:
        model = model.module
        seen += 1
    if not isinstance(model, Segmenter):
        raise TypeError(f"save_segmenter needs a Segmenter, got {type(model).__name__}")
    return model


def save_segmenter(model: Any, directory: str | Path, meta: Mapping[str, Any]) -> None:
    """Write ``directory`` (replaced atomically if it exists) with ``model.pt`` and
    ``meta.json``. ``meta`` must give ``class_ids`` (K category ids, classifier order)."""
    model = _unwrap(model)
    directory = Path(directory)
    meta = dict(meta)
    clash = [k for k in RESERVED_META if k in meta]
    if clash:
        raise ValueError(f"meta keys {clash} are written by save_segmenter itself")
    class_ids = meta.get("class_ids")
    if not isinstance(class_ids, list | tuple) or len(class_ids) != model.num_classes:
        raise ValueError(f"meta['class_ids'] must list the {model.num_classes} category ids of "
                         f"the classifier, got {class_ids!r:.80}")
    import transformers

    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    with atomic_directory(directory, overwrite=True) as tmp:
        torch.save(state, tmp / MODEL_FILE)
        doc = {
            "format": CHECKPOINT_FORMAT,
            "config": to_dict(model.config),
            "num_classes": model.num_classes,
            **{k: (list(v) if k == "class_ids" else v) for k, v in meta.items()},
            "model_sha256": sha256_file(tmp / MODEL_FILE),
            "parameters": sum(p.numel() for p in model.parameters()),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        }
        (tmp / META_FILE).write_text(dumps_json(doc, indent=2) + "\n", encoding="utf-8")
    log.info("saved segmenter (%d classes) to %s", model.num_classes, directory)


def read_meta(directory: str | Path) -> dict[str, Any]:
    """``meta.json`` of a checkpoint directory, checked for the fields loading needs."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: segmenter checkpoint directory not found")
    path = directory / META_FILE
    try:
        meta = read_json(path, "segmenter checkpoint metadata", expect=dict)
    except DataError as e:
        raise CheckpointError(str(e)) from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: format is {meta.get('format')!r}, expected "
                              f"{CHECKPOINT_FORMAT!r}")
    num_classes = meta.get("num_classes")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise CheckpointError(f"{path}: num_classes must be a positive integer, got "
                              f"{num_classes!r}")
    class_ids = meta.get("class_ids")
    if not isinstance(class_ids, list) or len(class_ids) != num_classes:
        raise CheckpointError(f"{path}: class_ids must list {num_classes} category ids")
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path}: config must be a mapping")
    return meta


def load_segmenter(directory: str | Path, map_location: str | torch.device = "cpu",
                   ) -> tuple[Segmenter, dict[str, Any]]:
    """Rebuild a segmenter from its checkpoint directory; returns (model in eval mode, meta).
    The backbone-weights file named in the config is not read again (model.pt has them)."""
    directory = Path(directory)
    meta = read_meta(directory)
    meta_path = directory / META_FILE
    try:
        config = from_dict(SegmenterConfig, meta["config"], where=str(meta_path),
                           prefix="config")
    except ZerosegError as e:
        raise CheckpointError(str(e)) from None
    model_path = directory / MODEL_FILE
    if not model_path.is_file():
        raise CheckpointError(f"{model_path}: segmenter weights not found")
    expected_sha = meta.get("model_sha256")
    if expected_sha is not None and sha256_file(model_path) != expected_sha:
        raise CheckpointError(f"{model_path}: contents do not match the checksum in "
                              f"{META_FILE} (truncated or replaced file)")
    try:
        state = torch.load(model_path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip / unpickling errors of many kinds
        first = str(e).splitlines()[0][:120] if str(e) else ""
        raise CheckpointError(f"{model_path}: not a readable state dict "
                              f"({type(e).__name__}: {first})") from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{model_path}: expected a state dict, got {type(state).__name__}")
    model = Segmenter(config, meta["num_classes"], load_backbone_weights=False)
    expected = model.state_dict()
    mismatch = key_mismatch(expected, state)
    if mismatch:
        raise CheckpointError(f"{model_path}: does not fit the model described by {META_FILE}: "
                              f"{mismatch}")
    for key, value in expected.items():
        got = state[key]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(value.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckpointError(f"{model_path}: {key} has shape {shape}, the model described "
                                  f"by {META_FILE} expects {tuple(value.shape)}")
    model.load_state_dict(state, strict=True)
    model.to(map_location)
    model.eval()
    return model, meta


def checkpoint_fingerprint(directory: str | Path, length: int = 16) -> str:
    """Content hash of a checkpoint: sha256 over model.pt's bytes, then meta.json's bytes."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for name in (MODEL_FILE, META_FILE):
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path}: segmenter checkpoint file not found")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()[:length]


def class_head_in_split(directory: str | Path, split: Any) -> tuple[Any, Any, Any]:
    """The checkpoint's class head laid out over ``split``'s columns: ``weight [C + 1, D]``,
    ``bias [C + 1]`` (float32 numpy) and ``known [C + 1]`` (bool: the rows it has). The rows
    of the classes it was trained on sit at their split index, no-object last, every other row
    is zero -- the starting point PADing's authors give the retrained classifier (their
    ``preprocess_pretrained_weight.py`` zero-pads ``class_embed``).
    Classes of the checkpoint that ``split`` does not have (held-out ones in a validation
    view) are dropped."""
    import numpy as np

    directory = Path(directory)
    meta = read_meta(directory)
    model_path = directory / MODEL_FILE
    try:
        state = torch.load(model_path, map_location="cpu", weights_only=True)
        weight = state["mask2former.class_predictor.weight"].float().numpy()
        bias = state["mask2former.class_predictor.bias"].float().numpy()
    except Exception as e:  # missing file or key, unreadable zip
        raise CheckpointError(f"{model_path}: cannot read the class head "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    index = split.id_to_index()
    c = split.num_classes
    out_w = np.zeros((c + 1, weight.shape[1]), dtype=np.float32)
    out_b = np.zeros(c + 1, dtype=np.float32)
    known = np.zeros(c + 1, dtype=bool)
    for row, cid in enumerate(meta["class_ids"]):
        if int(cid) in index:
            out_w[index[int(cid)]] = weight[row]
            out_b[index[int(cid)]] = bias[row]
            known[index[int(cid)]] = True
    out_w[c], out_b[c], known[c] = weight[-1], bias[-1], True
    return out_w, out_b, known
