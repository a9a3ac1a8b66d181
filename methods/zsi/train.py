"""ZSI's ``train(context)`` (per Ray Train worker), ``predict`` and the pre-training ``check``.

The model is imported lazily (torchvision is heavy and the registry imports this package).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zeroseg.methods.registry import Predictions
from zeroseg.methods.zsi.config import ZSIConfig
from zeroseg.platform.embeddings.files import read_vector_file, shipped_files
from zeroseg.platform.errors import ConfigError

#: The RPN's positive IoU (mmdet ``rpn.assigner.pos_iou_thr``): an anchor shape whose best IoU
#: with an object is below it can only ever match that object as a low-quality match.
RPN_POSITIVE_IOU = 0.7
#: Training images whose sizes the anchor check reads (their headers only).
ANCHOR_CHECK_IMAGES = 2000


# -- vectors ---------------------------------------------------------------------------------------
def background_vector(config: ZSIConfig, class_embeddings: np.ndarray, seen_idx: np.ndarray
                      ) -> tuple[np.ndarray, str]:
    """The initial background vector ``[dim]`` and where it came from (for the audit)."""
    dim = class_embeddings.shape[1]
    if config.background == "zeros":
        return np.zeros(dim, np.float32), "zeros"
    if config.background == "mean-seen":
        return class_embeddings[seen_idx].mean(0).astype(np.float32), "mean of the seen classes"
    name = str(config.background_file)
    shipped = shipped_files().get(name)
    path = shipped.vectors_path if shipped is not None else Path(name)
    if shipped is None and not path.is_file():
        raise ConfigError(f"background_file: {name!r} is neither a shipped vectors file "
                          f"({', '.join(sorted(shipped_files()))}) nor an existing file")
    table = read_vector_file(path)
    if table.shape[0] != dim:
        raise ConfigError(f"background_file {path}: {table.shape[0]}-d vectors (rows), but the "
                          f"class embeddings are {dim}-d; choose background 'zeros' or "
                          f"'mean-seen' for embeddings without a background vector")
    return table[:, 0].astype(np.float32), f"column 0 of {path}"


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def word_vectors(config: ZSIConfig, context: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(seen [S, dim], unseen [U, dim], background [dim])`` in label-space order."""
    emb = np.asarray(context.class_embeddings, np.float32)
    seen, unseen = emb[context.seen_idx], emb[context.unseen_idx]
    bg, _ = background_vector(config, emb, context.seen_idx)
    if config.normalize_word_vectors:
        seen, unseen, bg = _normalize(seen), _normalize(unseen), _normalize(bg)
    return seen, unseen, bg


def build_model(config: ZSIConfig, context: Any) -> Any:
    from zeroseg.methods.zsi.model import ZSIDetector

    seen, unseen, bg = word_vectors(config, context)
    return ZSIDetector(config, seen, unseen, bg)


# -- the checks before training --------------------------------------------------------------------
def check(config: ZSIConfig, context: Any) -> dict[str, Any]:
    """Bad input as one-line errors before any worker starts: word vectors of another width
    than ``word_dim``, a benchmark without instance annotations, no training image, anchors
    that cannot match any object of the training set."""
    dim = int(np.asarray(context.class_embeddings).shape[1])
    if config.word_dim is not None and dim != config.word_dim:
        raise ConfigError(f"zsi: the class embeddings are {dim}-d, but word_dim is "
                          f"{config.word_dim}; set word_dim to {dim} or use {config.word_dim}-d "
                          f"vectors")
    _, background = background_vector(config, np.asarray(context.class_embeddings, np.float32),
                                      context.seen_idx)
    data = context.data
    if data.train_instances is None:
        raise ConfigError(f"zsi: benchmark {data.benchmark or '?'} has no instance annotations "
                          f"(ZSI trains on boxes and masks: use an instance benchmark such as "
                          f"coco2014/zsi-48-17 or the synthetic one)")
    if not data.train_images:
        raise ConfigError(f"zsi: no training image left after the leakage filter "
                          f"({data.benchmark})")
    sizes = object_sizes(config, data)
    if len(sizes) == 0:
        raise ConfigError(f"zsi: the training images of {data.benchmark} have no seen "
                          f"instance to train on")
    best = anchor_match(sizes, config.resolved("anchor_sizes"))
    if float(best.max()) < RPN_POSITIVE_IOU:
        raise ConfigError(
            f"zsi: anchor_sizes {list(config.resolved('anchor_sizes'))} cannot match any object "
            f"of {data.benchmark}: objects are {sizes.min():.0f}-{sizes.max():.0f} px after "
            f"resizing, the best anchor IoU is {best.max():.2f} < the RPN's "
            f"{RPN_POSITIVE_IOU}")
    return {"background_vector": f"{config.background}: {background}",
            "word_dim": dim, "training_images": len(data.train_images),
            "training_instances": int(sum(len(a) for a in data.train_instances)),
            "object_size_px": [round(float(sizes.min()), 1), round(float(sizes.max()), 1)],
            "objects_matched_by_anchors": round(float((best >= RPN_POSITIVE_IOU).mean()), 4)}


def object_sizes(config: ZSIConfig, data: Any) -> np.ndarray:
    """``[N, 2]`` (w, h) of the non-crowd training objects, in the network's resized pixels
    (torchvision's resize: shorter side to min_size, longer side at most max_size)."""
    from PIL import Image

    min_size, max_size = int(config.resolved("min_size")), int(config.resolved("max_size"))
    out = []
    for (image, _), anns in list(zip(data.train_images, data.train_instances,
                                     strict=True))[:ANCHOR_CHECK_IMAGES]:
        boxes = [a["bbox"][2:] for a in anns if not a.get("iscrowd")]
        if not boxes:
            continue
        with Image.open(image) as img:
            w, h = img.size
        scale = min(min_size / min(w, h), max_size / max(w, h))
        out.extend([[bw * scale, bh * scale] for bw, bh in boxes])
    return np.asarray(out, np.float64).reshape(-1, 2)


def anchor_match(sizes: np.ndarray, anchor_sizes: Any,
                 ratios: tuple[float, ...] = (0.5, 1.0, 2.0)) -> np.ndarray:
    """Per object (w, h): the best IoU of its box with any anchor shape centred on it."""
    anchors = []
    for s in anchor_sizes:
        for r in ratios:  # torchvision: h = s * sqrt(r), w = s / sqrt(r)
            anchors.append((s / math.sqrt(r), s * math.sqrt(r)))
    a = np.asarray(anchors, np.float64)[None]  # [1, K, 2]
    o = sizes[:, None]  # [N, 1, 2]
    inter = np.minimum(a, o).prod(-1)
    union = a.prod(-1) + o.prod(-1) - inter
    return (inter / np.maximum(union, 1e-9)).max(1)


# -- training --------------------------------------------------------------------------------------
def lr_factor(step: int, steps_per_epoch: int, config: ZSIConfig) -> float:
    """mmdet's ``step`` policy with linear warm-up: ``warmup_ratio`` -> 1 over
    ``warmup_iters`` iterations, x0.1 at each epoch of ``lr_steps``."""
    epoch = step // max(1, steps_per_epoch)
    factor = 0.1 ** sum(1 for s in config.lr_steps if epoch >= s)
    if step < config.warmup_iters:
        k = (1 - step / config.warmup_iters) * (1 - config.warmup_ratio)
        factor *= 1 - k
    return factor


def _batch(context: Any, indices: np.ndarray, seen_column: np.ndarray, rng: np.random.Generator,
           flip: float) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images, targets = [], []
    for index in indices:
        rgb, boxes, labels, masks = context.training_instances(int(index))
        image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255.0
        boxes_t, masks_t = torch.as_tensor(boxes), torch.as_tensor(masks)
        if rng.random() < flip:
            width = image.shape[-1]
            image, masks_t = image.flip(-1), masks_t.flip(-1)
            boxes_t = torch.stack([width - boxes_t[:, 2], boxes_t[:, 1], width - boxes_t[:, 0],
                                   boxes_t[:, 3]], dim=1)
        keep = (boxes_t[:, 2] > boxes_t[:, 0]) & (boxes_t[:, 3] > boxes_t[:, 1])
        images.append(image)
        targets.append({"boxes": boxes_t[keep],
                        "labels": torch.as_tensor(seen_column[labels])[keep],
                        "masks": masks_t[keep]})
    return images, targets


def steps_per_epoch(config: ZSIConfig, num_images: int, world_size: int) -> int:
    if config.steps_per_epoch is not None:
        return config.steps_per_epoch
    return max(1, math.ceil(num_images / world_size) // config.batch_size)


def train(context: Any) -> None:
    """Per worker: SGD with momentum through the platform's DeepSpeed engine (gradient clip
    35, warm-up + step schedule), each worker on its share of a per-epoch permutation of the
    training images; a report (mean losses, images/s) and a checkpoint after every epoch."""
    config: ZSIConfig = context.config
    model = build_model(config, context)
    if context.state is not None:
        model.load_state_dict(context.state)
    model.train()
    seen_column = np.zeros(context.num_classes, np.int64)
    seen_column[context.seen_idx] = np.arange(1, len(context.seen_idx) + 1)
    num_images = len(context.data.train_images)
    steps = steps_per_epoch(config, num_images, context.world_size)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                momentum=config.momentum, weight_decay=config.weight_decay)
    offset = context.start_epoch * steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step + offset, steps, config))
    engine = context.engine(model, optimizer, scheduler, micro_batch=config.batch_size,
                            grad_clip=config.grad_clip)
    rng = np.random.default_rng([context.seed, context.rank, context.start_epoch])
    for epoch in range(context.start_epoch + 1, config.epochs + 1):
        order = np.random.default_rng([context.seed, epoch]).permutation(num_images)
        mine = order[context.rank::context.world_size]
        sums: dict[str, float] = {}
        started = time.perf_counter()
        for step in range(steps):
            rows = mine[(step * config.batch_size + np.arange(config.batch_size)) % len(mine)]
            images, targets = _batch(context, rows, seen_column, rng, config.flip)
            losses = engine(images, targets)
            loss = sum(losses.values())
            engine.backward(loss)
            engine.step()
            for name, value in {"loss": loss, **losses}.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
        seconds = time.perf_counter() - started
        metrics = {k: v / steps for k, v in sums.items()}
        metrics["images_per_second"] = steps * config.batch_size / max(seconds, 1e-9)
        context.report(epoch, metrics, {k: v.detach().cpu() for k, v in
                                        model.state_dict().items()})


# -- prediction ------------------------------------------------------------------------------------
def predict(config: ZSIConfig, context: Any, state: Any, setting: str) -> Predictions:
    """COCO instance results of every evaluation image (RLE masks at ``mask_threshold``,
    xywh boxes); GZSL: seen and unseen NMSed separately, ZSL: unseen classes only."""
    from pycocotools import mask as mask_utils

    model = build_model(config, context)
    model.load_state_dict(state)
    model.eval()
    label_space = np.concatenate([context.seen_idx, context.unseen_idx])
    predictions = Predictions()
    for image_id, rgb in context.evaluation_images():
        image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255.0
        det = model.detect([image], setting)[0]
        masks = (det["masks"][:, 0] > config.mask_threshold).numpy().astype(np.uint8)
        for box, score, label, mask in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                           det["labels"].tolist(), masks, strict=True):
            index = int(label_space[label])  # labels: 0..S-1 seen, S.. unseen
            rle = mask_utils.encode(np.asfortranarray(mask))
            rle["counts"] = rle["counts"].decode("ascii")
            x1, y1, x2, y2 = box
            predictions.instances.append({
                "image_id": int(image_id), "category_id": int(context.category_ids[index]),
                "segmentation": rle, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return predictions
