"""COCO panoptic PNG encoding: segment id = R + 256 * G + 256^2 * B; id 0 is VOID."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from zeroseg.platform.errors import DataError
from zeroseg.platform.io import atomic_write_bytes


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 array, got shape {rgb.shape}")
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    out = np.empty(ids.shape + (3,), dtype=np.uint8)
    out[..., 0] = ids % 256
    out[..., 1] = (ids // 256) % 256
    out[..., 2] = (ids // (256 * 256)) % 256
    return out


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """Read a panoptic PNG as an HxW int64 array of segment ids (one-line error if unreadable)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: panoptic PNG not found")
    try:
        with Image.open(path) as im:
            if im.mode != "RGB":
                im = im.convert("RGB")
            arr = np.asarray(im)
    except (OSError, SyntaxError) as e:
        raise DataError(f"{path}: not a readable PNG ({e})") from None
    return rgb2id(arr)


def write_panoptic_png(path: str | Path, ids: np.ndarray) -> bytes:
    """Encode segment ids as an RGB PNG; returns the PNG bytes (caller writes atomically)."""
    import io

    buf = io.BytesIO()
    Image.fromarray(id2rgb(ids), mode="RGB").save(buf, format="PNG")
    data = buf.getvalue()
    if path is not None:
        atomic_write_bytes(path, data)
    return data
