"""Training / evaluation items for the segmenter, from a benchmark's own annotations.

Targets (:mod:`zeroseg.platform.data.sources`) are what Mask2Former trains on for the
benchmark's task: panoptic segments (ZSP and the synthetic benchmark), instance masks (COCO 2014
ZSI) or one mask per class of a semantic label map (COCO-Stuff, VOC). A target whose category
is not in ``class_ids`` (unseen classes, categories outside the split) and crowd regions are no
target: their pixels are covered by no mask. Which *images* to use (e.g. the leakage filter's
``kept_image_ids``) is the caller's choice through ``image_ids``.

Resizing (:class:`Resize`, from the segmenter config):

- ``squash``: every image to ``size`` x ``size`` (bilinear; masks nearest), ignoring the aspect
  ratio -- the synthetic benchmark is square at 128 px, so nothing is resampled there;
- ``shortest-edge`` (Mask2Former): at training, large-scale jitter -- the image is scaled to fit
  inside ``s * size`` squared (``s`` uniform in ``scale_range``, keeping the aspect ratio), then
  cropped at a random offset to ``size`` x ``size`` or padded there (right / bottom); at
  inference (``train=False``), the shortest edge becomes ``test_size`` unless the longest would
  exceed ``max_size``. Padding is 0 after normalisation (the mean colour) and belongs to no
  target; batches pad to a multiple of ``divisibility`` (:func:`collate_segmentation`), and each
  item says which region holds the image (``resized_size``), so predictions go back to the
  original size exactly as Mask2Former's ``sem_seg_postprocess`` does: upsample to the padded
  input, crop the image region, resize to the original size.

A segment that vanishes in the resize is dropped. Augmentation (``augment=True``): a horizontal
flip with probability 1/2 and the jitter's scale and crop, drawn from a generator seeded with
``(seed, epoch, index)``, so a run is reproducible whatever the number of data workers; call
:meth:`SegmentationDataset.set_epoch` at the start of each epoch.

Normalisation: pixel values in [0, 1] minus the ImageNet mean, divided by the ImageNet std.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from zeroseg.platform.data.layout import CocoLayout
from zeroseg.platform.data.sources import PanopticTargets
from zeroseg.platform.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("squash", "shortest-edge")


@dataclass(frozen=True)
class Resize:
    """How images reach the model (see the module docstring)."""

    mode: str = "squash"
    size: int = 128  # squash: the side; shortest-edge: the training crop's side
    test_size: int = 128  # shortest-edge, inference: the shortest edge
    max_size: int = 1333  # shortest-edge, inference: the longest edge at most
    scale_range: tuple[float, float] = (1.0, 1.0)  # shortest-edge, training: the jitter
    divisibility: int = 32  # batches pad to a multiple of this

    def __post_init__(self) -> None:
        if self.mode not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {list(RESIZE_MODES)}, got {self.mode!r}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ConfigError(f"scale_range must be [low, high] with 0 < low <= high, got "
                              f"{list(self.scale_range)}")
        if min(self.size, self.test_size, self.max_size) < 1:
            raise ConfigError("image sizes must be >= 1")

    def inference_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an image of that size is resized to for inference."""
        if self.mode == "squash":
            return self.size, self.size
        scale = self.test_size / min(height, width)
        if max(height, width) * scale > self.max_size:
            scale = self.max_size / max(height, width)
        return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


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


def resize_pair(pixels: Tensor, masks: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Image [3, H, W] bilinear and boolean masks [N, H, W] nearest to ``size``."""
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels, masks
    pixels = F.interpolate(pixels[None], size=size, mode="bilinear", align_corners=False)[0]
    if len(masks):
        masks = F.interpolate(masks[None].float(), size=size, mode="nearest")[0] > 0.5
    else:
        masks = torch.zeros((0, *size), dtype=torch.bool)
    return pixels, masks


class SegmentationDataset(Dataset):
    """Images with their targets, as Mask2Former wants them.

    Items: ``pixel_values`` float [3, h, w] (normalised; [3, S, S] when training or squashing),
    ``mask_labels`` float [N, h, w], ``class_labels`` long [N] (indices into ``class_ids``),
    ``image_id`` int, ``orig_size`` (height, width) of the image on disk and ``resized_size``
    (the region of ``pixel_values`` that holds the image; the rest is padding).
    """

    def __init__(self, layout: CocoLayout, class_ids: Sequence[int],
                 image_ids: Sequence[int] | None = None, *, image_size: int,
                 augment: bool = False, seed: int = 0, targets: Any = None,
                 resize: Resize | None = None, train: bool = True):
        self.layout = layout
        self.targets = targets if targets is not None else PanopticTargets(layout, None)
        self.class_ids = [int(c) for c in class_ids]
        if len(set(self.class_ids)) != len(self.class_ids):
            raise ConfigError("class_ids: category ids must be unique")
        known = getattr(self.targets, "categories", None)
        unknown = [c for c in self.class_ids if known is not None and c not in known]
        if unknown:
            raise DataError(f"{self.targets.path}: class ids {unknown[:5]} are not categories "
                            f"of this {self.targets.source} annotation")
        self._index = {cid: i for i, cid in enumerate(self.class_ids)}
        images = self.targets.images
        if image_ids is None:
            self.image_ids = sorted(images)
        else:
            self.image_ids = [int(i) for i in image_ids]
            missing = [i for i in self.image_ids if i not in images]
            if missing:
                raise DataError(f"{self.targets.path}: image ids {missing[:5]} are not in this "
                                f"{self.targets.source} annotation ({len(missing)} missing)")
        if image_size < 1:
            raise ConfigError(f"image_size must be >= 1, got {image_size}")
        self.resize = resize or Resize(size=int(image_size), test_size=int(image_size))
        self.image_size = int(image_size)
        self.augment = augment
        self.train = train
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.image_ids)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id = self.image_ids[index]
        info = self.targets.images[image_id]
        image = read_image(self.layout.images / info.file_name)
        if image.shape[:2] != (info.height, info.width):
            raise DataError(f"{self.layout.images / info.file_name}: image is "
                            f"{image.shape[1]}x{image.shape[0]}, its annotation says "
                            f"{info.width}x{info.height}")
        all_masks, categories = self.targets.targets(image_id)
        keep = [i for i, c in enumerate(categories.tolist()) if c in self._index]
        labels = [self._index[int(categories[i])] for i in keep]
        mask_t = (torch.from_numpy(all_masks[keep]) if keep
                  else torch.zeros((0, info.height, info.width), dtype=torch.bool))
        pixels = normalize_image(image)
        rng = self._rng(index) if self.augment else None
        flip = bool(rng.random() < 0.5) if rng is not None else False
        pixels, mask_t, resized = self._geometry(pixels, mask_t, rng)
        label_t = torch.tensor(labels, dtype=torch.long)
        present = mask_t.flatten(1).any(1) if len(mask_t) else torch.zeros(0, dtype=torch.bool)
        mask_t, label_t = mask_t[present], label_t[present]
        if flip:
            pixels = pixels.flip(-1)
            mask_t = mask_t.flip(-1)
            if self.resize.mode != "squash":  # the image region sits left: flip it back there
                width = resized[1]
                pixels = torch.roll(pixels, width - pixels.shape[-1], dims=-1)
                mask_t = torch.roll(mask_t, width - mask_t.shape[-1], dims=-1)
        return {"pixel_values": pixels.contiguous(), "mask_labels": mask_t.float().contiguous(),
                "class_labels": label_t, "image_id": image_id,
                "orig_size": (info.height, info.width), "resized_size": resized}

    def _geometry(self, pixels: Tensor, masks: Tensor, rng: np.random.Generator | None
                  ) -> tuple[Tensor, Tensor, tuple[int, int]]:
        r = self.resize
        h, w = pixels.shape[-2:]
        if r.mode == "squash":
            pixels, masks = resize_pair(pixels, masks, (r.size, r.size))
            return pixels, masks, (r.size, r.size)
        if not self.train:
            size = r.inference_size(h, w)
            pixels, masks = resize_pair(pixels, masks, size)
            return pixels, masks, size
        # Large-scale jitter: fit inside (s * size)^2, then crop or pad to size x size.
        lo, hi = r.scale_range
        s = float(rng.uniform(lo, hi)) if rng is not None and hi > lo else lo
        scale = min(s * r.size / h, s * r.size / w)
        size = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
        pixels, masks = resize_pair(pixels, masks, size)
        top = left = 0
        if size[0] > r.size:
            top = int(rng.integers(0, size[0] - r.size + 1)) if rng is not None else 0
        if size[1] > r.size:
            left = int(rng.integers(0, size[1] - r.size + 1)) if rng is not None else 0
        pixels = pixels[:, top:top + r.size, left:left + r.size]
        masks = masks[:, top:top + r.size, left:left + r.size]
        valid = (pixels.shape[-2], pixels.shape[-1])
        pad = (0, r.size - valid[1], 0, r.size - valid[0])
        if pad[1] or pad[3]:
            pixels = F.pad(pixels, pad)
            masks = F.pad(masks, pad)
        return pixels, masks, valid


def collate_segmentation(items: Sequence[dict[str, Any]], divisibility: int = 32
                         ) -> dict[str, Any]:
    """Pad the images (and masks) to the batch's largest size, rounded up to a multiple of
    ``divisibility``, and stack them; masks and labels stay per-image lists (their counts
    differ)."""
    height = max(it["pixel_values"].shape[-2] for it in items)
    width = max(it["pixel_values"].shape[-1] for it in items)
    height = int(math.ceil(height / divisibility) * divisibility)
    width = int(math.ceil(width / divisibility) * divisibility)

    def pad(x: Tensor) -> Tensor:
        dh, dw = height - x.shape[-2], width - x.shape[-1]
        return F.pad(x, (0, dw, 0, dh)) if dh or dw else x

    return {
        "pixel_values": torch.stack([pad(it["pixel_values"]) for it in items]),
        "mask_labels": [pad(it["mask_labels"]) for it in items],
        "class_labels": [it["class_labels"] for it in items],
        "image_id": [it["image_id"] for it in items],
        "orig_size": [it["orig_size"] for it in items],
        "resized_size": [it.get("resized_size", it["pixel_values"].shape[-2:]) for it in items],
    }
