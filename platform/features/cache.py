"""On-disk feature cache: segment embeddings (and mask logits) extracted once per segmenter + split.

A cache entry is one directory, ``CACHE_DIR/<key>/``::

    shard-00000.npz ... shard-NNNNN.npz    the arrays, a fixed number of images per shard
    index.json                             key, inputs, config, counts, per-shard ids + sha256

**Key.** ``key = config_hash({format, checkpoint fingerprint, dataset fingerprint, split,
extraction config})`` (:func:`cache_key`). The checkpoint fingerprint hashes the segmenter's
``model.pt`` and ``meta.json``; the dataset fingerprint hashes the split's annotation jsons and
``classes.json`` (images and PNGs are taken as immutable, as the annotation files name them); the
split fingerprint hashes the class list with its roles. Performance knobs that do not change the
bytes written (number of workers, threads, device) are not part of the key; they are recorded.

**Never silently reused.** :func:`check_entry` re-reads ``index.json``, compares its recorded
key and inputs with the ones computed from the current files and re-hashes every shard; any
difference is a reason to rebuild (the reason is logged and returned). Readers verify each
shard's sha256 again as they load it and raise :class:`~zeroseg.platform.errors.DataError` on a
mismatch.

**Atomic.** Shards are written into a temporary sibling directory, ``index.json`` last, and the
directory is renamed into place (:class:`CacheWriter`); an exception leaves neither the directory
nor an index. Concurrent extractions of the same key serialise on a lock file
(:func:`entry_lock`); the second one finds the finished entry and reuses it.

**Shards** are ``.npz`` files written by :func:`encode_shard` with fixed zip timestamps, so the
same arrays give byte-identical files; they are read with ``np.load(..., allow_pickle=False)``.
Arrays per kind (``M`` embedding rows, ``n`` images, ``Q`` queries, ``D`` embedding width):

- ``train`` / ``train_all``: ``image_id [M]``, ``query_index [M]``, ``embedding [M, D]``,
  ``class_index [M]`` (the split's contiguous index; ``C`` = no-object), ``category_id [M]``
  (0 = no-object), ``matched [M]``; per image ``images [n]`` and ``num_targets [n]`` (GT segments
  the matcher saw). ``train`` keeps only matched queries (PADing's real class embeddings);
  ``train_all`` keeps all ``Q`` queries of every image (PADing's classifier retraining).
- ``eval``: ``image_id [n]``, ``height [n]``, ``width [n]`` (original image size),
  ``embedding [n, Q, D]``, ``class_logits [n, Q, K+1]`` (the segmenter's own head, float32, in
  its classifier order: ``index.json['checkpoint']['class_ids']`` + no-object) and
  the mask logits at the model's output resolution ``[n, Q, h, w]`` in the configured codec
  (:func:`encode_masks`): ``float32`` (exact), ``float16`` (relative error <= 2^-11, i.e.
  |error| <= 4.9e-4 * |logit|), or ``int8`` with a float32 scale per query
  (``mask_scale [n, Q]``; |error| <= max|logit of that query| / 254).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zeroseg.platform.config import config_hash
from zeroseg.platform.data.classes import Split
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.data.sources import INSTANCES, PANOPTIC, SEMANTIC, benchmark_sources
from zeroseg.platform.errors import ConfigError, DataError
from zeroseg.platform.io import (
    atomic_write_json,
    read_json,
    replace_dir,
    sha256_file,
    temp_sibling_dir,
)

log = logging.getLogger(__name__)

#: bump when what an extraction writes changes meaning; part of every key
CACHE_FORMAT = 1
INDEX_FILE = "index.json"
KINDS = ("train", "train_all", "eval")
TRAIN_KINDS = ("train", "train_all")
MASK_CODECS = ("float32", "float16", "int8")
EMBED_DTYPES = ("float32", "float16")
KEY_LENGTH = 24
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: same arrays, same bytes


# -- fingerprints and key ----------------------------------------------------------------------
_FILE_MEMO: dict[tuple[Any, ...], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (memoised per path, size, mtime and inode)."""
    p = Path(path)
    st = p.stat()
    memo = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if memo not in _FILE_MEMO:
        _FILE_MEMO[memo] = sha256_file(p)
    return _FILE_MEMO[memo]


def split_fingerprint(split: Split) -> dict[str, Any]:
    """The parts of a split that change what a cache holds: classes in order, with roles."""
    classes = [[c.id, c.name, c.isthing, c.unseen, c.val_unseen] for c in split.classes]
    return {"name": split.name, "protocol": split.protocol, "num_classes": split.num_classes,
            "classes_sha256": config_hash(classes, length=64)}


def annotation_files_fingerprint(layout: CocoLayout, split: Split | None = None) -> dict[str, Any]:
    """SHA-256 of the annotation files ``split``'s benchmark reads (its instances / panoptic
    jsons; for semantic PNGs alone, their names and sizes and the image listing) and
    ``classes.json``; ``split`` None: the panoptic and instances jsons."""
    sources = benchmark_sources(split) if split is not None else (PANOPTIC, INSTANCES)
    files: dict[str, str] = {}
    candidates = [layout.panoptic_json if PANOPTIC in sources else None,
                  layout.instances_json if INSTANCES in sources else None,
                  layout.classes_json]
    if sources == (SEMANTIC,):
        candidates += [layout.image_set, layout.image_info_json]
        if layout.semantic_pngs.is_dir():
            with os.scandir(layout.semantic_pngs) as entries:
                listing = sorted(f"{e.name}:{e.stat().st_size}" for e in entries
                                 if e.name.endswith(".png"))
            files[layout.semantic_pngs.name + "/"] = hashlib.sha256(
                "\n".join(listing).encode()).hexdigest()
    for path in candidates:
        if path is not None and path.is_file():
            files[path.name] = file_sha256(path)
    needed = {PANOPTIC: layout.panoptic_json, INSTANCES: layout.instances_json,
              SEMANTIC: layout.semantic_pngs}[sources[0]]
    if not (needed.name in files or needed.name + "/" in files):
        raise DataError(f"{needed}: not found (dataset root {layout.root}, split "
                        f"{layout.split}); the feature cache of "
                        f"{split.name if split else 'this dataset'} needs it")
    return {"split": layout.split, "files": files}


def cache_key(inputs: Mapping[str, Any]) -> str:
    """The cache key of an extraction: a hash of its inputs (see :func:`cache_inputs`)."""
    return config_hash({"format": CACHE_FORMAT, **inputs}, length=KEY_LENGTH)


def cache_inputs(checkpoint_fingerprint: str, dataset: Mapping[str, Any], split: Split,
                 config: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the key covers, as recorded in ``index.json['inputs']``."""
    return _normalize({"checkpoint": checkpoint_fingerprint, "dataset": dict(dataset),
                       "split": split_fingerprint(split), "config": dict(config)})


def _normalize(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True))


# -- shard encoding ----------------------------------------------------------------------------
def encode_shard(arrays: Mapping[str, np.ndarray], *, compress: bool = True) -> bytes:
    """An ``.npz`` file's bytes; deterministic (fixed member order and timestamps), no pickle."""
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", compression=method) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = method
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(arrays[name]),
                                          allow_pickle=False)
    return buffer.getvalue()


def decode_shard(data: bytes, where: str) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file's bytes (``allow_pickle=False``)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{where}: not a readable feature shard ({exc})") from None


def encode_masks(masks: np.ndarray, codec: str) -> dict[str, np.ndarray]:
    """Mask logits ``[n, Q, h, w]`` in a storage codec (see the module docstring)."""
    masks = np.asarray(masks, dtype=np.float32)
    if codec == "float32":
        return {"mask": masks}
    if codec == "float16":
        return {"mask": masks.astype(np.float16)}
    if codec == "int8":
        peak = np.abs(masks).reshape(*masks.shape[:2], -1).max(axis=2)
        scale = (np.maximum(peak, np.float32(1e-12)) / np.float32(127.0)).astype(np.float32)
        quantised = np.rint(masks / scale[..., None, None])
        return {"mask": np.clip(quantised, -127, 127).astype(np.int8), "mask_scale": scale}
    raise ConfigError(f"mask_codec must be one of {list(MASK_CODECS)}, got {codec!r}")


def decode_masks(arrays: Mapping[str, np.ndarray], codec: str) -> np.ndarray:
    """float32 mask logits back from :func:`encode_masks`' arrays."""
    masks = arrays["mask"]
    if codec == "int8":
        return masks.astype(np.float32) * arrays["mask_scale"][..., None, None]
    return masks.astype(np.float32)


def mask_tolerance(masks: np.ndarray, codec: str) -> np.ndarray:
    """The documented worst-case absolute error of ``codec`` on each value of ``masks``."""
    masks = np.abs(np.asarray(masks, dtype=np.float32))
    if codec == "float32":
        return np.zeros_like(masks)
    if codec == "float16":
        # round-to-nearest: relative error 2^-11 for normal numbers, plus the subnormal spacing
        return masks * 2.0**-11 + 2.0**-25
    peak = masks.reshape(*masks.shape[:2], -1).max(axis=2)
    return np.broadcast_to((np.maximum(peak, 1e-12) / 127.0 / 2.0)[..., None, None] * 1.0001,
                           masks.shape)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.npz"


# -- checking an entry -------------------------------------------------------------------------
def read_index(entry: Path) -> dict[str, Any]:
    return read_json(entry / INDEX_FILE, "feature cache index", expect=dict)


def index_digest(index: Mapping[str, Any]) -> str:
    """SHA-256 of an index's content (all fields but ``index_sha256`` itself): any edit of
    ``index.json`` after it was written is detected."""
    body = {k: v for k, v in index.items() if k != "index_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_entry(entry: Path, key: str, inputs: Mapping[str, Any]) -> str | None:
    """``None`` when ``entry`` is a complete cache of exactly these inputs, else why not."""
    if not entry.is_dir():
        return "no cache entry"
    try:
        index = read_index(entry)
    except DataError as exc:
        return f"index unreadable ({exc})"
    if index.get("format") != CACHE_FORMAT:
        return f"index format {index.get('format')!r} is not {CACHE_FORMAT}"
    if index.get("index_sha256") != index_digest(index):
        return "index.json was modified after it was written (its sha256 differs)"
    if index.get("key") != key:
        return f"index records key {index.get('key')!r}, inputs give {key}"
    recorded = index.get("inputs")
    current = _normalize(dict(inputs))
    if recorded != current:
        changed = sorted(k for k in set(current) | set(recorded or {})
                         if (recorded or {}).get(k) != current.get(k))
        return f"recorded inputs differ ({', '.join(changed) or 'inputs'})"
    if cache_key(recorded) != key:
        return "recorded inputs do not hash to the key"
    shards = index.get("shards")
    if not isinstance(shards, list):
        return "index has no shard list"
    names = {s.get("file") for s in shards if isinstance(s, dict)}
    extra = sorted(p.name for p in entry.iterdir() if p.name not in names | {INDEX_FILE})
    if extra:
        return f"unexpected files in the entry ({', '.join(extra[:3])})"
    for shard in shards:
        reason = check_shard_file(entry, shard)
        if reason:
            return reason
    return None


def check_shard_file(entry: Path, shard: Any) -> str | None:
    if not isinstance(shard, dict) or not isinstance(shard.get("file"), str):
        return "index has a malformed shard record"
    path = entry / shard["file"]
    if not path.is_file():
        return f"shard {shard['file']} is missing"
    if path.stat().st_size != shard.get("bytes"):
        return f"shard {shard['file']} has {path.stat().st_size} bytes, index says " \
               f"{shard.get('bytes')}"
    if sha256_file(path) != shard.get("sha256"):
        return f"shard {shard['file']} does not match its recorded sha256"
    return None


# -- writing an entry --------------------------------------------------------------------------
@contextlib.contextmanager
def entry_lock(cache_dir: Path, key: str) -> Iterator[None]:
    """An exclusive lock per key (``CACHE_DIR/.<key>.lock``), held while checking and building."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f".{key}.lock"
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class ShardRecord:
    index: int
    file: str
    image_ids: list[int]
    rows: int  # embedding rows (train kinds) or images (eval)
    bytes: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "file": self.file, "image_ids": self.image_ids,
                "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}


class CacheWriter:
    """Builds ``CACHE_DIR/<key>/`` in a temporary sibling; :meth:`commit` writes the index last
    and renames the directory into place. Leaving the ``with`` block without :meth:`commit`
    (an exception, a kill) removes the temporary directory."""

    def __init__(self, cache_dir: Path, key: str):
        self.cache_dir = Path(cache_dir)
        self.key = key
        self.final = self.cache_dir / key
        self.tmp: Path | None = None
        self.shards: dict[int, ShardRecord] = {}

    def __enter__(self) -> CacheWriter:
        self.tmp = temp_sibling_dir(self.final)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tmp is not None and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def add_shard(self, index: int, data: bytes, image_ids: Sequence[int], rows: int) -> None:
        assert self.tmp is not None, "CacheWriter used outside its with block"
        if index in self.shards:
            raise ValueError(f"shard {index} written twice")
        name = shard_name(index)
        with (self.tmp / name).open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self.shards[index] = ShardRecord(index, name, [int(i) for i in image_ids], int(rows),
                                         len(data), hashlib.sha256(data).hexdigest())

    def commit(self, index: dict[str, Any]) -> Path:
        assert self.tmp is not None, "CacheWriter used outside its with block"
        expected = list(range(len(self.shards)))
        if sorted(self.shards) != expected:
            raise ValueError(f"shards {sorted(self.shards)} are not 0..{len(self.shards) - 1}")
        index = dict(index)
        index["shards"] = [self.shards[i].to_json() for i in expected]
        index["created_at"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        index["index_sha256"] = index_digest(index)
        atomic_write_json(self.tmp / INDEX_FILE, index, indent=1)
        replace_dir(self.tmp, self.final)
        self.tmp = None
        return self.final
