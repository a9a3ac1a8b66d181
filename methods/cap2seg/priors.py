"""The ``priors`` stage: train Cap2Seg's inference engine on the training split's captions and
seen-class labels, then write every training image's occurrence and stripe priors for every
class of the label space (what the ranking loss reads), and the engine's diagnostics on the
evaluation images (occurrence mAP per caption group, exact match vs entailment; stripe cosine of
the global / local / fused distributions).

What it reads, for the leakage audit: the captions of every training image (they may name
unseen classes: that is Cap2Seg's setting, weak supervision from captions) and the training
label maps with every pixel of an unseen class, or of a class outside the label space, turned
into "unlabelled" when they are read (the engine's targets are seen classes only, as the
ignore-pixels protocol). Evaluation images' full labels are read for the diagnostics only.

Files written into the stage folder::

    train.npz      image_id [N], occurrence [N, C] (entailment, max over captions),
                   exact [N, C] (exact word match, max over captions), global [N, C, K],
                   local [N, C, K] (stripe distributions; mean over captions for global)
    eval.npz       the same for the evaluation images, plus present [N, C] and truth [N, C, K]
    engine.pt      the engine's weights (save_state; read back with weights_only=True)
    vocab.json     the word-level vocabulary
    diagnostics.json
    audit.json     what was read (images, captions, unseen class names the captions contain)
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zeroseg.methods.cap2seg.engine import (
    GlobalBranch,
    LocalBranch,
    bert_config,
    consistency_loss,
    fuse,
    grid_positions,
    grid_to_stripes,
    local_loss,
    occurrence_loss,
    stripe_loss,
)
from zeroseg.methods.cap2seg.text import PretrainedTokenizer, WordVocab, exact_match, words
from zeroseg.methods.common import save_state, seeded
from zeroseg.methods.registry import StageInputs
from zeroseg.platform.data.coco import read_label_png
from zeroseg.platform.data.layout import dataset_layout
from zeroseg.platform.data.sources import list_images
from zeroseg.platform.errors import DataError
from zeroseg.platform.io import atomic_write_bytes, atomic_write_json, read_json

log = logging.getLogger(__name__)

#: Side of the label grid the local branch samples pixels from (labels are nearest-resized).
LABEL_GRID = 32


@dataclass
class ImageData:
    """Captions and labels of a set of images, in one label space of ``C`` classes."""

    image_ids: np.ndarray  # [N]
    captions: list[list[str]]  # per image
    labels: np.ndarray  # [N, G, G] int16 class index, -1 = unlabelled
    present: np.ndarray  # [N, C] bool (classes whose pixels were read)
    truth: np.ndarray  # [N, C, K] float32 normalised row-stripe histograms (0 when absent)


def _label_lut(split: Any, keep_unseen: bool) -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int16)
    for c in split.classes:
        if c.png_label is not None and (keep_unseen or not c.unseen):
            lut[c.png_label] = c.index
    return lut


def stripe_histograms(label: np.ndarray, num_classes: int, k: int) -> np.ndarray:
    """``[C, K]``: per class, its pixels per horizontal stripe (row ``r`` of ``H`` in stripe
    ``r * K // H``), normalised to sum 1 (eq. 4); zero rows for absent classes."""
    h = label.shape[0]
    stripe = (np.arange(h) * k // h)[:, None].repeat(label.shape[1], 1)
    valid = label >= 0
    counts = np.zeros((num_classes, k), dtype=np.float64)
    np.add.at(counts, (label[valid].astype(np.int64), stripe[valid]), 1)
    total = counts.sum(1, keepdims=True)
    return (counts / np.maximum(total, 1)).astype(np.float32)


def read_images(root: Path, data_split: str, split: Any, k: int, *, keep_unseen: bool,
                max_images: int | None = None) -> ImageData:
    """Captions and labels of ``data_split``'s images (ascending id) in ``split``'s label
    space; ``keep_unseen`` False turns unseen classes' pixels into unlabelled on reading."""
    layout = dataset_layout(Path(root), data_split)
    path = layout.require(layout.captions_json, "COCO captions json")
    captions: dict[int, list[str]] = defaultdict(list)
    for ann in read_json(path, "COCO captions json", expect=dict).get("annotations", []):
        captions[int(ann["image_id"])].append(str(ann["caption"]))
    images = list_images(layout)
    ids = sorted(i for i in images if captions.get(i))
    if max_images is not None:
        ids = ids[:max_images]
    if not ids:
        raise DataError(f"{path}: no image of {data_split} has a caption")
    lut = _label_lut(split, keep_unseen)
    folder = layout.require(layout.semantic_pngs, "semantic label PNG folder")
    c = split.num_classes
    labels = np.full((len(ids), LABEL_GRID, LABEL_GRID), -1, dtype=np.int16)
    present = np.zeros((len(ids), c), dtype=bool)
    truth = np.zeros((len(ids), c, k), dtype=np.float32)
    for n, image_id in enumerate(ids):
        label = lut[read_label_png(folder / f"{Path(images[image_id].file_name).stem}.png")]
        h, w = label.shape
        rows = (np.arange(LABEL_GRID) * h + h // 2) // LABEL_GRID
        cols = (np.arange(LABEL_GRID) * w + w // 2) // LABEL_GRID
        labels[n] = label[np.ix_(rows, cols)]
        truth[n] = stripe_histograms(label, c, k)
        present[n] = truth[n].sum(1) > 0
    return ImageData(np.asarray(ids, dtype=np.int64), [captions[i] for i in ids], labels,
                     present, truth)


def _positions(cells: np.ndarray) -> np.ndarray:
    """Flat cell indices of the label grid -> (x, y) in [0, 1]."""
    return np.stack([(cells % LABEL_GRID + 0.5) / LABEL_GRID,
                     (cells // LABEL_GRID + 0.5) / LABEL_GRID], axis=-1).astype(np.float32)


def _sample_sources(rng: np.random.Generator, labels: np.ndarray, exclude: int, n: int
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """``n`` labelled cells (with replacement) of classes other than ``exclude``: (positions
    [n, 2], classes [n]); None when the image has none."""
    flat = labels.reshape(-1)
    cells = np.flatnonzero((flat >= 0) & (flat != exclude))
    if len(cells) == 0:
        return None
    pick = cells[rng.integers(len(cells), size=n)]
    return _positions(pick), flat[pick].astype(np.int64)


@dataclass
class Engine:
    vocab: Any  # WordVocab, or the checkpoint's PretrainedTokenizer
    global_branch: GlobalBranch
    local_branch: LocalBranch
    history: list[dict[str, float]]


def train_engine(data: ImageData, split: Any, class_embeddings: np.ndarray, config: Any,
                 seed: int) -> Engine:
    """Jointly train both branches on the seen classes (L_o + L_s + L_p + w L_consist; eqs. 6,
    9, 11). One step: ``images_per_step`` (image, caption) pairs; each pair asks about every
    present seen class and as many absent seen classes drawn at random (with replacement, as
    the authors' ``np.random.choice(neg, len(label))``); the local branch plays one present
    seen class ``u'`` per image as unknown, from sources of the other classes."""
    e = config.engine
    k = config.stripes
    seen = np.array([c.index for c in split.classes if not c.unseen], dtype=np.int64)
    names = [c.name for c in split.classes]
    words_ = torch.nn.functional.normalize(torch.as_tensor(class_embeddings, dtype=torch.float32),
                                           dim=1)
    texts = [t for caps in data.captions for t in caps] + names
    vocab: Any = (PretrainedTokenizer(e.checkpoint) if e.checkpoint else WordVocab.build(texts))
    history: list[dict[str, float]] = []
    with seeded(seed):
        rng = np.random.default_rng(seed)
        glob = GlobalBranch(bert_config(len(vocab), hidden_size=e.hidden_size, layers=e.layers,
                                        heads=e.heads, intermediate_size=e.intermediate_size,
                                        max_length=e.max_length), k, e.checkpoint)
        local = LocalBranch(words_.shape[1], e.local_hidden, e.local_layers)
        params = list(glob.parameters()) + list(local.parameters())
        optimizer = torch.optim.Adam(params, lr=e.lr)
        pairs = [(i, j) for i, caps in enumerate(data.captions) for j in range(len(caps))]
        seen_present = data.present[:, seen]
        grid = grid_positions(k)
        steps_per_epoch = math.ceil(len(pairs) / e.images_per_step)
        step = 0
        start = time.perf_counter()
        glob.train()
        local.train()
        for _epoch in range(e.epochs):
            order = rng.permutation(len(pairs))
            for b in range(steps_per_epoch):
                batch = [pairs[p] for p in order[b * e.images_per_step:
                                                 (b + 1) * e.images_per_step]]
                caps, descs, occ, rows, stripe_t = [], [], [], [], []
                local_items = []
                for i, j in batch:
                    pos = seen[seen_present[i]]
                    if len(pos) == 0:
                        continue
                    absent = np.setdiff1d(seen, pos)
                    neg = (rng.choice(absent, len(pos)) if len(absent) else
                           np.zeros(0, dtype=np.int64))
                    first = len(caps)
                    for c in pos.tolist() + neg.tolist():
                        caps.append(data.captions[i][j])
                        descs.append(names[c])
                        occ.append(c in set(pos.tolist()))
                    rows += list(range(first, first + len(pos)))
                    stripe_t.append(data.truth[i, pos])
                    u = int(rng.choice(pos))
                    sources = _sample_sources(rng, data.labels[i], u, e.n_sub)
                    if sources is not None:
                        local_items.append((i, u, first + pos.tolist().index(u), sources))
                if not caps:
                    continue
                ids, types, mask = (torch.as_tensor(a) for a in
                                    vocab.encode(caps, descs, e.max_length))
                occ_logits, stripe_logits = glob(ids, types, mask)
                loss_o = occurrence_loss(occ_logits, torch.as_tensor(occ))
                loss_s = stripe_loss(stripe_logits[rows],
                                     torch.as_tensor(np.concatenate(stripe_t)))
                loss = loss_o + loss_s
                metrics = {"occurrence": float(loss_o.detach()), "stripes": float(loss_s.detach())}
                if local_items:
                    loss_p, loss_c = _local_losses(local_items, data, local, words_, grid, k,
                                                   stripe_logits, rng, e.n_targets,
                                                   e.local_readout)
                    loss = loss + loss_p + e.consistency_weight * loss_c
                    metrics.update(local=float(loss_p.detach()), consistency=float(loss_c.detach()))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                if step % e.log_every == 0 or step == 1:
                    history.append({"step": step, "loss": float(loss.detach()), **metrics})
        log.info("cap2seg engine: %d steps in %.1f s", step, time.perf_counter() - start)
    glob.eval()
    local.eval()
    return Engine(vocab, glob, local, history)


def _local_losses(items: list[Any], data: ImageData, local: LocalBranch, words_: torch.Tensor,
                  grid: torch.Tensor, k: int, stripe_logits: torch.Tensor,
                  rng: np.random.Generator, n_targets: int, readout: str
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    src_pos, src_cls, tgt_pos, tgt_hit, classes, rows = [], [], [], [], [], []
    for i, u, row, (pos, cls) in items:
        flat = data.labels[i].reshape(-1)
        cells = np.flatnonzero(flat >= 0)
        pick = cells[rng.integers(len(cells), size=n_targets)]
        src_pos.append(pos)
        src_cls.append(cls)
        tgt_pos.append(_positions(pick))
        tgt_hit.append(flat[pick] == u)
        classes.append(u)
        rows.append(row)
    src_pos_t = torch.as_tensor(np.stack(src_pos))
    src_words = words_[torch.as_tensor(np.stack(src_cls))]
    target_word = words_[torch.as_tensor(classes)]
    probability = local(src_pos_t, src_words, torch.as_tensor(np.stack(tgt_pos)), target_word)
    loss_p = local_loss(probability, torch.as_tensor(np.stack(tgt_hit)))
    cells = local(src_pos_t, src_words, grid[None].expand(len(items), -1, -1), target_word)
    local_stripes = grid_to_stripes(cells, k, readout)
    global_stripes = torch.softmax(stripe_logits[torch.as_tensor(rows)], dim=-1)
    return loss_p, consistency_loss(local_stripes, global_stripes)


@torch.no_grad()
def predict(engine: Engine, data: ImageData, split: Any, class_embeddings: np.ndarray,
            config: Any, seed: int) -> dict[str, np.ndarray]:
    """Every image x class: occurrence (sigmoid of H_o, max over captions), exact match (max
    over captions), global stripes (softmax of H_s, mean over captions), local stripes (eq. 10
    on the ``K x K`` grid, from ``n_sub`` sources of the image's labelled pixels)."""
    e = config.engine
    k = config.stripes
    names = [c.name for c in split.classes]
    c = len(names)
    n = len(data.image_ids)
    occurrence = np.zeros((n, c), np.float32)
    exact = np.zeros((n, c), np.float32)
    glob = np.zeros((n, c, k), np.float32)
    local = np.full((n, c, k), 1.0 / k, np.float32)
    words_ = torch.nn.functional.normalize(torch.as_tensor(class_embeddings, dtype=torch.float32),
                                           dim=1)
    grid = grid_positions(k)
    rng = np.random.default_rng(seed + 1)
    chunk = max(1, e.inference_batch // max(1, c * 5))
    for start in range(0, n, chunk):
        images = range(start, min(n, start + chunk))
        caps, descs, owner = [], [], []
        for i in images:
            for caption in data.captions[i]:
                caps += [caption] * c
                descs += names
                owner.append(i)
        ids, types, mask = (torch.as_tensor(a) for a in
                            engine.vocab.encode(caps, descs, e.max_length))
        occ_logits, stripe_logits = engine.global_branch(ids, types, mask)
        occ = torch.sigmoid(occ_logits).reshape(-1, c).numpy()
        stripes = torch.softmax(stripe_logits, -1).reshape(-1, c, k).numpy()
        owner_a = np.asarray(owner)
        for i in images:
            rows = owner_a == i
            occurrence[i] = occ[rows].max(0)
            glob[i] = stripes[rows].mean(0)
            exact[i] = [max(exact_match(t, name) for t in data.captions[i]) for name in names]
            sources = _sample_sources(rng, data.labels[i], -2, e.n_sub)
            if sources is None:
                continue
            pos, cls = sources
            cells = engine.local_branch(
                torch.as_tensor(pos)[None].expand(c, -1, -1), words_[torch.as_tensor(cls)][None]
                .expand(c, -1, -1), grid[None].expand(c, -1, -1), words_)
            local[i] = grid_to_stripes(cells, k, e.local_readout).numpy()
    return {"image_id": data.image_ids, "occurrence": occurrence, "exact": exact,
            "global": glob, "local": local}


# -- diagnostics ----------------------------------------------------------------------------------
def average_precision(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Non-interpolated AP: the mean precision at each positive, scores in descending order
    (ties broken by position, stable). None without positives."""
    positive = np.asarray(positive, bool)
    if not positive.any():
        return None
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    hits = positive[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def stripe_cosine(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of ``[..., K]`` distributions."""
    num = (pred * truth).sum(-1)
    den = np.linalg.norm(pred, axis=-1) * np.linalg.norm(truth, axis=-1)
    return num / np.maximum(den, 1e-12)


def class_group(split: Any, c: Any) -> str:
    """A class's caption group: the split's named groups, else its ``caption_group``, else
    "all"."""
    for name, ids in (split.groups or {}).items():
        if c.id in ids:
            return str(name)
    return str((c.extra or {}).get("caption_group", "all"))


def diagnostics(priors: dict[str, np.ndarray], present: np.ndarray, truth: np.ndarray,
                split: Any) -> dict[str, Any]:
    """Occurrence AP of every unseen class over the images (entailment vs exact match), mAP per
    caption group and overall; stripe cosine (global / local / fused) over the (image, unseen
    class) pairs where the class is present, per group and overall."""
    unseen = [c for c in split.classes if c.unseen]
    per_class, grouped = [], defaultdict(lambda: defaultdict(list))
    fused = fuse(priors["global"], priors["local"])
    for c in unseen:
        hit = present[:, c.index]
        row: dict[str, Any] = {"class": c.name, "group": class_group(split, c),
                               "images": int(hit.sum())}
        for name, scores in (("entailment", priors["occurrence"]), ("exact", priors["exact"])):
            row[f"ap_{name}"] = average_precision(scores[:, c.index], hit)
        for name, stripes in (("global", priors["global"]), ("local", priors["local"]),
                              ("fused", fused)):
            cos = stripe_cosine(stripes[hit, c.index], truth[hit, c.index])
            row[f"cosine_{name}"] = float(cos.mean()) if len(cos) else None
            grouped[row["group"]][f"cos_{name}"] += cos.tolist()
            grouped["all"][f"cos_{name}"] += cos.tolist()
        for name in ("entailment", "exact"):
            if row[f"ap_{name}"] is not None:
                grouped[row["group"]][f"ap_{name}"].append(row[f"ap_{name}"])
                grouped["all"][f"ap_{name}"].append(row[f"ap_{name}"])
        per_class.append(row)
    groups = {}
    for group, values in grouped.items():
        groups[group] = {
            **{f"map_{n}": (100 * float(np.mean(values[f"ap_{n}"])) if values[f"ap_{n}"]
                            else None) for n in ("entailment", "exact")},
            **{f"cosine_{n}": (float(np.mean(values[f"cos_{n}"])) if values[f"cos_{n}"]
                               else None) for n in ("global", "local", "fused")}}
    return {"images": int(len(present)), "per_class": per_class, "groups": groups}


def unseen_names_in_captions(captions: list[list[str]], split: Any) -> dict[str, int]:
    """Per unseen class: how many training images have a caption naming it (exact match)."""
    out = {}
    for c in split.classes:
        if c.unseen:
            out[c.name] = sum(1 for caps in captions if any(exact_match(t, c.name) for t in caps))
    return out


# -- the stage ------------------------------------------------------------------------------------
def build_priors(stage: StageInputs, folder: Path) -> None:
    """The ``priors`` stage's ``build`` (see the module docstring)."""
    config = stage.config
    split = stage.split
    k = config.stripes
    e = config.engine
    train = read_images(stage.data_root, stage.train_split, split, k, keep_unseen=False)
    if train.present[:, [c.index for c in split.classes if c.unseen]].any():
        raise DataError("cap2seg priors: an unseen class reached the engine's training labels")
    fit_on = train if e.max_images is None else _first(train, e.max_images)
    engine = train_engine(fit_on, split, stage.class_embeddings, config, e.seed)
    train_priors = predict(engine, train, split, stage.class_embeddings, config, e.seed)
    _write_npz(folder / "train.npz", train_priors)
    evaluation = read_images(stage.data_root, stage.eval_split, split, k, keep_unseen=True)
    eval_priors = predict(engine, evaluation, split, stage.class_embeddings, config, e.seed)
    _write_npz(folder / "eval.npz", {**eval_priors, "present": evaluation.present,
                                    "truth": evaluation.truth})
    diag = diagnostics(eval_priors, evaluation.present, evaluation.truth, split)
    diag["engine_history"] = engine.history[-5:]
    atomic_write_json(folder / "diagnostics.json", diag, indent=1)
    atomic_write_json(folder / "vocab.json", engine.vocab.describe())
    save_state(folder / "engine.pt",
               {**{f"global.{n}": v for n, v in engine.global_branch.state_dict().items()},
                **{f"local.{n}": v for n, v in engine.local_branch.state_dict().items()}},
               {"format": 1, "kind": "cap2seg-engine", "stripes": k})
    atomic_write_json(folder / "audit.json", {
        "training_images_read": int(len(train.image_ids)),
        "engine_training_images": int(len(fit_on.image_ids)),
        "training_captions_read": int(sum(len(c) for c in train.captions)),
        "training_labels": "seen classes only: unseen pixels read as unlabelled",
        "training_captions_may_name_unseen_classes": True,
        "unseen_names_in_training_captions": unseen_names_in_captions(train.captions, split),
        "evaluation_images_read_for_diagnostics": int(len(evaluation.image_ids)),
    }, indent=1)


def _first(data: ImageData, n: int) -> ImageData:
    """The first ``n`` images of ``data``."""
    return ImageData(data.image_ids[:n], data.captions[:n], data.labels[:n], data.present[:n],
                     data.truth[:n])


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_priors(folder: Path, name: str = "train") -> dict[str, np.ndarray]:
    with np.load(Path(folder) / f"{name}.npz", allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


__all__ = ["build_priors", "load_priors", "read_images", "train_engine", "predict",
           "diagnostics", "average_precision", "stripe_cosine", "stripe_histograms", "words"]
