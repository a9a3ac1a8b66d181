"""On-disk cache of class-embedding matrices.

Layout: ``CACHE_DIR/{provider}-{slot}.npy`` (the float32 matrix) and ``...json`` (the sidecar).

- The **slot** is a hash of the request: provider name and code version, the options that change
  the output, the class names in order and whatever else the provider reads from the split. Two
  requests that differ in any of these never share a file.
- The **key** is a hash of the request *and* the fingerprints of the input files (vectors file,
  checkpoint): size plus a SHA-256 of the content (files up to ``FULL_HASH_LIMIT``) or, for larger
  files, size, modification time and a SHA-256 of evenly spaced samples of the content.
- The sidecar records the key, the request, the input fingerprints, the classes, the shape, a
  SHA-256 of the array and the versions that created it. An entry is used only when every
  recorded field matches the current request and the array matches its hash; otherwise it is
  rebuilt in place (the log says why). Files are written atomically, the array first, so a reader
  never pairs a new sidecar with an old array without noticing.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import os
import platform as _stdlib_platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zeroseg.platform.errors import EmbeddingError
from zeroseg.platform.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
#: files up to this size are hashed in full; larger ones are sampled (plus size and mtime)
FULL_HASH_LIMIT = 64 * 2**20
_EDGE_BYTES = 2**20  # head and tail of a sampled file
_SAMPLE_BYTES = 2**16  # each evenly spaced sample in between
_SAMPLES = 64

_FINGERPRINT_MEMO: dict[tuple[Any, ...], dict[str, Any]] = {}


def canonical_json(obj: Any) -> str:
    """Stable text of a JSON-compatible object (sorted keys, no spaces, no NaN)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def normalize_json(obj: Any) -> Any:
    """What ``obj`` reads back as after a JSON round trip (tuples -> lists, keys -> str)."""
    return json.loads(canonical_json(obj))


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_fingerprint(path: str | os.PathLike, *, role: str = "input",
                     provider: str = "embeddings") -> dict[str, Any]:
    """Size and content hash of a file (sampled for large files, then with mtime)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise EmbeddingError(f"{provider}: {role} file {p} does not exist") from None
    if not p.is_file():
        raise EmbeddingError(f"{provider}: {role} path {p} is not a regular file")
    memo_key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    cached = _FINGERPRINT_MEMO.get(memo_key)
    if cached is not None:
        return dict(cached)
    digest = hashlib.sha256()
    with open(p, "rb") as f:
        if st.st_size <= FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
            result: dict[str, Any] = {"size": st.st_size, "sha256": digest.hexdigest()}
        else:
            offsets = [0, st.st_size - _EDGE_BYTES]
            span = st.st_size - 2 * _EDGE_BYTES - _SAMPLE_BYTES
            offsets[1:1] = [_EDGE_BYTES + span * i // (_SAMPLES - 1) for i in range(_SAMPLES)]
            for offset in offsets:
                f.seek(offset)
                size = _EDGE_BYTES if offset in (0, st.st_size - _EDGE_BYTES) else _SAMPLE_BYTES
                digest.update(f.read(size))
            result = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                      "sampled_sha256": digest.hexdigest()}
    _FINGERPRINT_MEMO[memo_key] = result
    return dict(result)


def array_sha256(matrix: np.ndarray) -> str:
    arr = np.ascontiguousarray(matrix)
    digest = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


def _versions(extra: dict[str, str]) -> dict[str, str]:
    from importlib import metadata

    try:
        zeroseg_version = metadata.version("zeroseg")
    except metadata.PackageNotFoundError:
        zeroseg_version = "unknown"
    return {"zeroseg": zeroseg_version, "numpy": np.__version__,
            "python": _stdlib_platform.python_version(), **extra}


@dataclass(frozen=True)
class CacheLookup:
    matrix: np.ndarray | None  # None: rebuild needed
    reason: str  # why it is a hit or a miss, for the log and the CLI summary


class EmbeddingCache:
    """Content-addressed store of embedding matrices under one directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    @staticmethod
    def slot(request: dict[str, Any]) -> str:
        return sha256_text(canonical_json(request))[:24]

    @staticmethod
    def key(request: dict[str, Any], inputs: dict[str, Any]) -> str:
        return sha256_text(canonical_json(
            {"format": CACHE_FORMAT, "request": request, "inputs": inputs}))

    def paths(self, request: dict[str, Any]) -> tuple[Path, Path]:
        provider = re.sub(r"[^A-Za-z0-9_.-]", "_", str(request.get("provider", "embeddings")))
        stem = f"{provider}-{self.slot(request)}"
        return self.root / f"{stem}.npy", self.root / f"{stem}.json"

    def load(self, request: dict[str, Any], inputs: dict[str, Any]) -> CacheLookup:
        request, inputs = normalize_json(request), normalize_json(inputs)
        npy_path, meta_path = self.paths(request)
        if not meta_path.exists() or not npy_path.exists():
            return CacheLookup(None, "no cache entry")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return CacheLookup(None, f"sidecar {meta_path.name} is unreadable ({exc})")
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            return CacheLookup(None, f"sidecar {meta_path.name} has another cache format")
        if meta.get("request") != request:
            return CacheLookup(None, "recorded request (config/classes) differs")
        recorded_inputs = meta.get("inputs")
        if recorded_inputs != inputs:
            changed = sorted(
                role for role in set(inputs) | set(recorded_inputs or {})
                if (recorded_inputs or {}).get(role) != inputs.get(role)
            )
            return CacheLookup(None, f"input file changed: {', '.join(changed) or 'inputs'}")
        if meta.get("key") != self.key(request, inputs):
            return CacheLookup(None, "recorded key differs")
        try:
            matrix = np.load(npy_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            return CacheLookup(None, f"array {npy_path.name} is unreadable ({exc})")
        if list(matrix.shape) != meta.get("shape") or matrix.dtype != np.float32:
            return CacheLookup(None, f"array {npy_path.name} does not have the recorded shape")
        if array_sha256(matrix) != meta.get("array_sha256"):
            return CacheLookup(None, f"array {npy_path.name} does not match its recorded hash")
        return CacheLookup(matrix, f"cache hit {npy_path}")

    def store(self, request: dict[str, Any], inputs: dict[str, Any], matrix: np.ndarray, *,
              config: dict[str, Any], split_name: str, library_versions: dict[str, str]) -> Path:
        request, inputs = normalize_json(request), normalize_json(inputs)
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        npy_path, meta_path = self.paths(request)
        buffer = io.BytesIO()
        np.save(buffer, matrix, allow_pickle=False)
        atomic_write_bytes(npy_path, buffer.getvalue())
        meta = {
            "format": CACHE_FORMAT,
            "key": self.key(request, inputs),
            "provider": request.get("provider"),
            "split": split_name,
            "config": normalize_json(config),
            "classes": request.get("classes"),
            "dim": int(matrix.shape[1]),
            "shape": list(matrix.shape),
            "dtype": "float32",
            "array_sha256": array_sha256(matrix),
            "request": request,
            "inputs": inputs,
            "created_by": _versions(library_versions),
            "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        atomic_write_json(meta_path, meta, indent=1)
        return npy_path
