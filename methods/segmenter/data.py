"""Training / evaluation items for the segmenter, from a COCO panoptic json and its PNGs.

Targets are the panoptic segments (things and stuff alike, as Mask2Former's panoptic training
uses them): every non-crowd segment whose category is one of ``class_ids`` becomes one binary
mask with its classifier index (the position of its category id in ``class_ids``). Segments of
other categories and crowd regions are not targets; their pixels are simply not covered by any
target mask. Which *images* to use (e.g. the leakage filter's ``kept_image_ids``) is the caller's
choice through ``image_ids``.

Resizing: images are resized to a square ``image_size`` x ``image_size`` (bilinear; masks with
nearest neighbour), ignoring the aspect ratio. It is the simplest mapping that inference can undo
exactly: predictions are resized straight back to the original height and width. The synthetic
benchmark is already square at 128 px, so nothing is resampled there. A segment that vanishes
in the resize is dropped.

Augmentation (``augment=True``): a horizontal flip with probability 1/2, decided by a generator
seeded with ``(seed, epoch, index)``, so a run is reproducible whatever the number of data
workers; call :meth:`SegmentationDataset.set_epoch` at the start of each epoch.

Normalisation: pixel values in [0, 1] minus the ImageNet mean, divided by the ImageNet std.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from zeroseg.platform.data.coco import CocoPanoptic
from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_image(image: np.ndarray) -> Tensor:
    """HxWx3 uint8 RGB -> [3, H, W] float, ImageNet-normalised."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def read_image(path: Any) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: not a readable image ({e})") from None


class SegmentationDataset(Dataset):
    """Images with their panoptic targets, as Mask2Former wants them.

    Items: ``pixel_values`` float [3, S, S] (normalised), ``mask_labels`` float [N, S, S],
    ``class_labels`` long [N] (indices into ``class_ids``), ``image_id`` int and ``orig_size``
    (height, width) of the image on disk.
    """

    def __init__(self, layout: CocoLayout, class_ids: Sequence[int],
                 image_ids: Sequence[int] | None = None, *, image_size: int,
                 augment: bool = False, seed: int = 0):
        self.layout = layout
        self.panoptic = CocoPanoptic.from_layout(layout)
        self.class_ids = [int(c) for c in class_ids]
        if len(set(self.class_ids)) != len(self.class_ids):
            raise ConfigError("class_ids: category ids must be unique")
        unknown = [c for c in self.class_ids if c not in self.panoptic.categories]
        if unknown:
            raise DataError(f"{self.panoptic.path}: class ids {unknown[:5]} are not categories "
                            f"of this panoptic json")
        self._index = {cid: i for i, cid in enumerate(self.class_ids)}
        if image_ids is None:
            self.image_ids = list(self.panoptic.image_ids)
        else:
            self.image_ids = [int(i) for i in image_ids]
            missing = [i for i in self.image_ids if i not in self.panoptic.images]
            if missing:
                raise DataError(f"{self.panoptic.path}: image ids {missing[:5]} are not in this "
                                f"panoptic json ({len(missing)} missing)")
        if image_size < 1:
            raise ConfigError(f"image_size must be >= 1, got {image_size}")
        self.image_size = int(image_size)
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.image_ids)

    def _flip(self, index: int) -> bool:
        if not self.augment:
            return False
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return bool(rng.random() < 0.5)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.image_ids[index]
        info = self.panoptic.images[image_id]
        image = read_image(self.layout.images / info.file_name)
        if image.shape[:2] != (info.height, info.width):
            raise DataError(f"{self.layout.images / info.file_name}: image is "
                            f"{image.shape[1]}x{image.shape[0]}, the json says "
                            f"{info.width}x{info.height}")
        ids = self.panoptic.read_ids(image_id)
        masks, labels = [], []
        for seg in self.panoptic.segments(image_id):
            if seg.iscrowd or seg.category_id not in self._index:
                continue
            masks.append(ids == seg.id)
            labels.append(self._index[seg.category_id])
        s = self.image_size
        pixels = normalize_image(image)
        mask_t = (torch.from_numpy(np.stack(masks)) if masks
                  else torch.zeros((0, info.height, info.width), dtype=torch.bool))
        if (info.height, info.width) != (s, s):
            pixels = F.interpolate(pixels[None], size=(s, s), mode="bilinear",
                                   align_corners=False)[0]
            if len(mask_t):
                mask_t = F.interpolate(mask_t[None].float(), size=(s, s), mode="nearest")[0] > 0.5
            else:
                mask_t = torch.zeros((0, s, s), dtype=torch.bool)
        label_t = torch.tensor(labels, dtype=torch.long)
        keep = mask_t.flatten(1).any(1) if len(mask_t) else torch.zeros(0, dtype=torch.bool)
        mask_t, label_t = mask_t[keep], label_t[keep]
        if self._flip(index):
            pixels = pixels.flip(-1)
            mask_t = mask_t.flip(-1)
        return {"pixel_values": pixels.contiguous(), "mask_labels": mask_t.float().contiguous(),
                "class_labels": label_t, "image_id": image_id,
                "orig_size": (info.height, info.width)}


def collate_segmentation(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack the images; masks and labels stay per-image lists (their counts differ)."""
    return {
        "pixel_values": torch.stack([it["pixel_values"] for it in items]),
        "mask_labels": [it["mask_labels"] for it in items],
        "class_labels": [it["class_labels"] for it in items],
        "image_id": [it["image_id"] for it in items],
        "orig_size": [it["orig_size"] for it in items],
    }
