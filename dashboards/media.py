"""Files a run points at, turned into pictures: class roles, embedding projections, overlays.

Everything here reads the paths recorded in ``runs.artifacts`` and never fails with a
traceback: a missing or unreadable file becomes a one-line note that the page shows instead
(``Result.notes``).

- :func:`class_roles`: class names in contiguous order, which are unseen, and a colour each,
  from the run's artifacts (``class_names`` / ``unseen_classes``), the dataset's
  ``annotations/classes.json`` or the split registry, whichever is available first;
- :func:`embedding_points`: real seen-class embeddings from the feature cache
  (``artifacts["features"]["train"]``) and synthetic unseen-class features from the generator
  (``artifacts["synthetic_unseen"]``, an ``.npz`` with ``embeddings`` and ``class_index``),
  projected to 2-D by PCA (numpy SVD; scikit-learn's t-SNE is not a dependency) — the shape of
  PADing's Figure 5;
- :func:`qualitative_examples`: image / ground truth / prediction overlays of a few test images
  that contain unseen classes.
"""

from __future__ import annotations

import colorsys
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zeroseg.platform.data.registry import get_split
from zeroseg.platform.data.synthetic.generate import load_classes_json
from zeroseg.platform.errors import ZerosegError
from zeroseg.platform.features import FeatureCache

log = logging.getLogger(__name__)

IGNORE_LABEL = 255
MAX_POINTS_PER_CLASS = 200  # keeps the scatter light for caches with many segments


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` well-separated RGB colours (golden-ratio hues)."""
    out = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.65, 0.95)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


@dataclass
class ClassRoles:
    names: list[str] = field(default_factory=list)  # contiguous index order
    unseen: set[str] = field(default_factory=set)
    colours: list[tuple[int, int, int]] = field(default_factory=list)
    png_labels: list[int | None] = field(default_factory=list)  # value in semantic PNGs
    source: str = ""

    def lut(self) -> np.ndarray:
        """Semantic PNG value -> contiguous index (-1 for unlabelled / unknown)."""
        lut = np.full(256, -1, dtype=np.int64)
        for i, label in enumerate(self.png_labels):
            if label is not None and 0 <= label < 256:
                lut[label] = i
        return lut


@dataclass
class Result:
    """What a media helper produced, and the notes to show where it could not."""

    value: Any = None
    notes: list[str] = field(default_factory=list)


def _artifacts(run: dict[str, Any]) -> dict[str, Any]:
    value = run.get("artifacts")
    return value if isinstance(value, dict) else {}


def class_roles(run: dict[str, Any]) -> Result:
    """:class:`ClassRoles` of a run's split (see the module docstring for the sources)."""
    arts = _artifacts(run)
    notes: list[str] = []
    split = None
    root = arts.get("dataset_root")
    if root:
        path = Path(root) / "annotations" / "classes.json"
        if path.is_file():
            try:
                split = load_classes_json(path)
            except ZerosegError as e:
                notes.append(f"classes of the dataset not readable: {_one_line(e)}")
    if split is None and run.get("split"):
        try:
            split = get_split(str(run["split"]))
        except ZerosegError as e:
            log.debug("split %s not in the registry: %s", run.get("split"), e)
    roles = ClassRoles()
    if split is not None:
        roles.names = [c.name for c in split.classes]
        roles.unseen = {c.name for c in split.classes if c.unseen}
        roles.png_labels = [c.png_label for c in split.classes]
        # One distinct colour per class (a dataset's own render colours can repeat, e.g. the
        # synthetic benchmark paints every "red ..." class red).
        roles.colours = palette(len(split.classes))
        roles.source = f"split {split.name}"
    names = arts.get("class_names")
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        if roles.names and names != roles.names:
            notes.append("the run's class_names differ from its split's classes; "
                         "using the run's")
            roles.png_labels = [None] * len(names)
            roles.colours = palette(len(names))
        elif not roles.names:
            roles.png_labels = list(range(len(names)))
            roles.colours = palette(len(names))
        roles.names = list(names)
        roles.source = roles.source or "run artifacts"
    unseen = arts.get("unseen_classes")
    if isinstance(unseen, list) and unseen:
        roles.unseen = {str(u) for u in unseen}
    if not roles.names:
        notes.append("class names not available for this run (no class_names artifact, no "
                     "classes.json in the dataset root, split not in the registry)")
    return Result(roles, notes)


# -- embeddings ---------------------------------------------------------------------------------
def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project rows of ``x`` onto their first two principal components; returns the 2-D points
    and the fraction of variance each component explains."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        return np.zeros((0, 2)), np.zeros(2)
    centred = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(2, vt.shape[0])
    points = centred @ vt[:k].T
    if k < 2:
        points = np.pad(points, ((0, 0), (0, 2 - k)))
    var = s ** 2
    explained = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    return points, np.pad(explained, (0, 2 - len(explained)))


def _subsample(emb: np.ndarray, idx: np.ndarray, per_class: int, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    for c in np.unique(idx):
        rows = np.flatnonzero(idx == c)
        if len(rows) > per_class:
            rows = np.sort(rng.choice(rows, per_class, replace=False))
        keep.append(rows)
    rows = np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)
    return emb[rows], idx[rows]


def _real_features(path: str) -> tuple[np.ndarray, np.ndarray]:
    feats = FeatureCache.open(path, verify=False).train_features()
    return feats.embeddings, feats.class_index


def _synthetic_features(path: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        for key in ("embeddings", "class_index"):
            if key not in z:
                raise ZerosegError(f"{path}: no array {key!r} (expected embeddings [K,D] and "
                                   "class_index [K])")
        emb, idx = np.asarray(z["embeddings"], np.float32), np.asarray(z["class_index"])
    if emb.ndim != 2 or idx.shape != (emb.shape[0],):
        raise ZerosegError(f"{path}: embeddings {emb.shape} and class_index {idx.shape} do not "
                           "match (expected [K,D] and [K])")
    return emb, idx.astype(np.int64)


def embedding_points(run: dict[str, Any], roles: ClassRoles | None = None) -> Result:
    """A DataFrame ``x, y, class, role, kind`` (kind: "real seen" / "synthetic unseen") of the
    run's embeddings projected by PCA, and notes for what is missing. ``value`` is None when
    nothing could be read; ``value.attrs["explained"]`` holds the components' variance."""
    arts = _artifacts(run)
    roles = roles or class_roles(run).value or ClassRoles()
    notes: list[str] = []
    parts: list[tuple[str, np.ndarray, np.ndarray]] = []
    features = arts.get("features")
    real = features.get("train") if isinstance(features, dict) else None
    if not real:
        notes.append("real seen-class embeddings: not available for this run (no "
                     "artifacts.features.train)")
    elif not Path(real).exists():
        notes.append(f"real seen-class embeddings: feature cache {real} is missing (deleted or "
                     "on another machine); re-create it with `zeroseg extract`")
    else:
        try:
            emb, idx = _real_features(real)
            unseen_idx = {i for i, n in enumerate(roles.names) if n in roles.unseen}
            keep = (idx < len(roles.names)) if roles.names else np.ones(len(idx), bool)
            keep &= ~np.isin(idx, list(unseen_idx))
            parts.append(("real seen", emb[keep], idx[keep]))
        except (ZerosegError, OSError, ValueError, KeyError) as e:
            notes.append(f"real seen-class embeddings: feature cache {real} not readable "
                         f"({_one_line(e)})")
    synth = arts.get("synthetic_unseen")
    if not synth:
        notes.append("synthetic unseen-class features: not available for this run (no "
                     "artifacts.synthetic_unseen)")
    elif not Path(synth).is_file():
        notes.append(f"synthetic unseen-class features: {synth} is missing")
    else:
        try:
            emb, idx = _synthetic_features(synth)
            parts.append(("synthetic unseen", emb, idx))
        except (ZerosegError, OSError, ValueError) as e:
            notes.append(f"synthetic unseen-class features: {synth} not readable "
                         f"({_one_line(e)})")
    if not parts:
        return Result(None, notes)
    dims = {p[1].shape[1] for p in parts if p[1].ndim == 2 and len(p[1])}
    if len(dims) > 1:
        notes.append(f"real and synthetic features have different widths {sorted(dims)}; "
                     "showing the synthetic ones only")
        parts = [p for p in parts if p[0] == "synthetic unseen"]
    sampled = [(kind, *_subsample(e, i, MAX_POINTS_PER_CLASS)) for kind, e, i in parts]
    sampled = [s for s in sampled if len(s[1])]
    if not sampled:
        notes.append("no embedding rows to show")
        return Result(None, notes)
    points, explained = pca_2d(np.concatenate([s[1] for s in sampled]))
    kinds = np.concatenate([[s[0]] * len(s[1]) for s in sampled])
    idx = np.concatenate([s[2] for s in sampled])

    def name(i: int) -> str:
        return roles.names[i] if 0 <= i < len(roles.names) else f"class {i}"

    frame = pd.DataFrame({"x": points[:, 0], "y": points[:, 1], "kind": kinds,
                          "class": [name(int(i)) for i in idx],
                          "role": ["unseen" if name(int(i)) in roles.unseen else "seen"
                                   for i in idx]})
    frame.attrs["explained"] = [float(v) for v in explained]
    return Result(frame, notes)


# -- qualitative predictions --------------------------------------------------------------------
@dataclass
class Example:
    stem: str
    image: np.ndarray  # [H, W, 3] uint8
    ground_truth: np.ndarray  # overlay
    prediction: np.ndarray  # overlay
    unseen_present: list[str]


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def overlay(image: np.ndarray, labels: np.ndarray, roles: ClassRoles, *,
            alpha: float = 0.45, unseen_alpha: float = 0.8) -> np.ndarray:
    """``image`` with each labelled pixel tinted by its class colour (255 / unknown left);
    unseen classes are tinted more strongly so they stand out."""
    if labels.shape != image.shape[:2]:
        return image
    lut = roles.lut()
    index = lut[np.clip(labels.astype(np.int64), 0, 255)]
    colours = np.array(roles.colours or [(0, 0, 0)], dtype=np.float64)
    unseen = np.array([n in roles.unseen for n in roles.names] or [False])
    out = image.astype(np.float64).copy()
    mask = index >= 0
    a = np.where(unseen[index[mask] % len(unseen)], unseen_alpha, alpha)[:, None]
    out[mask] = (1 - a) * out[mask] + a * colours[index[mask] % len(colours)]
    return out.clip(0, 255).astype(np.uint8)


def upscale(image: np.ndarray, min_side: int = 256) -> np.ndarray:
    """Nearest-neighbour enlargement of small images (labels stay crisp, no blur)."""
    side = min(image.shape[:2])
    if side <= 0 or side >= min_side:
        return image
    k = int(np.ceil(min_side / side))
    return np.repeat(np.repeat(image, k, axis=0), k, axis=1)


def qualitative_examples(run: dict[str, Any], roles: ClassRoles, *, limit: int = 3,
                         prediction_split: str = "test") -> Result:
    """Up to ``limit`` test images whose ground truth contains unseen classes, as
    :class:`Example` overlays of the ground truth and of the run's semantic prediction."""
    arts = _artifacts(run)
    notes: list[str] = []
    preds = arts.get("predictions")
    pred_dir = preds.get(prediction_split) if isinstance(preds, dict) else None
    root = arts.get("dataset_root")
    data_split = arts.get("eval_data_split") or "val"
    if not pred_dir:
        return Result([], [f"qualitative predictions: not available for this run (no "
                           f"artifacts.predictions.{prediction_split})"])
    semantic = Path(pred_dir) / "semantic"
    if not semantic.is_dir():
        return Result([], [f"qualitative predictions: {semantic} is missing"])
    if not root or not Path(root).is_dir():
        return Result([], [f"qualitative predictions: dataset root {root or '(not recorded)'} "
                           "is missing"])
    if not roles.names or all(p is None for p in roles.png_labels):
        return Result([], ["qualitative predictions: the class label values are unknown "
                           "for this run"])
    images_dir, gt_dir = Path(root) / str(data_split), Path(root) / f"stuff_{data_split}"
    lut = roles.lut()
    unseen_idx = {i for i, n in enumerate(roles.names) if n in roles.unseen}
    examples: list[Example] = []
    candidates = sorted(semantic.glob("*.png"))
    for pred_path in candidates:
        if len(examples) >= limit:
            break
        gt_path = gt_dir / pred_path.name
        found = [p for p in images_dir.glob(f"{pred_path.stem}.*") if p.is_file()]
        if not gt_path.is_file() or not found:
            continue
        try:
            gt, pred, image = _read_png(gt_path), _read_png(pred_path), _read_rgb(found[0])
        except OSError as e:
            notes.append(f"{pred_path.name}: not readable ({_one_line(e)})")
            continue
        if gt.ndim != 2 or pred.shape != gt.shape or image.shape[:2] != gt.shape:
            continue
        present = sorted({int(i) for i in np.unique(lut[gt]) if int(i) in unseen_idx})
        if not present:
            continue
        examples.append(Example(pred_path.stem, upscale(image),
                                upscale(overlay(image, gt, roles)),
                                upscale(overlay(image, pred, roles)),
                                [roles.names[i] for i in present]))
    if not examples:
        notes.append(f"qualitative predictions: none of the {len(candidates)} predicted images "
                     f"in {semantic} has unseen classes in its ground truth ({gt_dir})")
    return Result(examples, notes)
