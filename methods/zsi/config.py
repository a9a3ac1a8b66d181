"""ZSI's knobs: the paper/code switches, the component switches of its ablations, the recipes.

Every field that the paper and the authors' code disagree on is a named switch; the table with
the reasons is the package docstring (:mod:`zeroseg.methods.zsi`). ``None`` in a recipe-sized
field takes the recipe's value (:data:`RECIPES`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from zeroseg.platform.errors import ConfigError

#: Network sizes: ``tiny`` for the 128 px synthetic benchmark (trained from scratch on CPU),
#: ``r50`` / ``r101`` the authors' Mask R-CNN ResNet + FPN at COCO sizes (1333 x 800).
RECIPES: dict[str, dict[str, object]] = {
    "tiny": {
        "resnet_layers": [1, 1, 1, 1], "fpn_channels": 64, "representation_size": 256,
        "mask_channels": 64, "min_size": 128, "max_size": 128, "trainable_layers": 5,
        "frozen_batchnorm": False,
        # FPN levels of strides 8 / 16 / 32 / 64 (layers 2-4 + max-pool): one size per level,
        # 12-96 px, for objects of 13-45 px (the synthetic benchmark's 5th-95th percentiles).
        "returned_layers": [2, 3, 4], "anchor_sizes": [12, 24, 48, 96],
        "rpn_pre_nms_top_n_train": 1000, "rpn_post_nms_top_n_train": 500,
        "rpn_pre_nms_top_n_test": 500, "rpn_post_nms_top_n_test": 300,
        "box_batch_size_per_image": 128, "rpn_batch_size_per_image": 256,
    },
    "r50": {
        "resnet_layers": [3, 4, 6, 3], "fpn_channels": 256, "representation_size": 1024,
        "mask_channels": 256, "min_size": 800, "max_size": 1333, "trainable_layers": 3,
        "frozen_batchnorm": True,
        # mmdet v1 Mask R-CNN: anchor scale 8 x strides 4..64 = 32..512, ratios 0.5 / 1 / 2.
        "returned_layers": [1, 2, 3, 4], "anchor_sizes": [32, 64, 128, 256, 512],
        "rpn_pre_nms_top_n_train": 2000, "rpn_post_nms_top_n_train": 2000,
        "rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 1000,
        "box_batch_size_per_image": 512, "rpn_batch_size_per_image": 256,
    },
}
RECIPES["r101"] = dict(RECIPES["r50"], resnet_layers=[3, 4, 23, 3])

#: The paper's ablation rows (Table 1 / Table 4 / Table 5): component switches fixed by each
#: registered method (methods/zsi/__init__.py).
COMPONENTS = ("smh_decoder", "det_decoder", "ba_rpn", "sync_bg_det", "sync_bg_mask")


@dataclass
class ZSIConfig:
    # -- size ------------------------------------------------------------------------------------
    recipe: Literal["tiny", "r50", "r101"] = "tiny"
    backbone_weights: str | None = None  # local torchvision ResNet state dict (r50 / r101)
    # None: the recipe's value
    fpn_channels: int | None = None
    representation_size: int | None = None  # box head FCs; T_d reconstructs this width
    mask_channels: int | None = None
    anchor_sizes: list[int] | None = None
    min_size: int | None = None
    max_size: int | None = None
    # -- the paper's components (the ablations fix these) ---------------------------------------
    smh_decoder: bool = True  # SMH decoder D and its L_R
    det_decoder: bool = True  # detector decoder T_d and its L_R
    ba_rpn: bool = True  # background-aware RPN (else torchvision's sigmoid RPN)
    sync_bg_det: bool = True  # v_b written into column 0 of the detector's W
    sync_bg_mask: bool = True  # v_b written into column 0 of the SMH's fixed 1x1 conv
    # -- paper / code switches (the package docstring's table) ----------------------------------
    sync_bg_gradient: Literal["paper", "code"] = "code"
    smh_layout: Literal["paper", "code"] = "code"
    mask_conv_bug: bool = True  # code: each of the 4 convs sees the input (only the last acts)
    scoring: Literal["paper", "code"] = "code"
    unseen_box_deltas: Literal["code", "proposal"] = "code"
    background: Literal["file", "zeros", "mean-seen"] = "file"
    background_file: str | None = "coco2014_w2v_withbg_48_17"  # shipped name or a path
    normalize_word_vectors: bool = True  # paper: l2-normalised word2vec
    word_dim: int | None = None  # expected embedding width (None: whatever the provider gives)
    # -- losses ----------------------------------------------------------------------------------
    det_reconstruction_weight: float = 0.5
    smh_reconstruction_weight: float = 0.5
    rcnn_smooth_l1_beta: float = 1.0  # mmdet v1 bbox head SmoothL1 beta (RPN: 1/9)
    # -- optimisation (the authors' 48/17 recipe; 65/15: lr 0.0075, warm-up 7000) ---------------
    epochs: int = 12
    lr_steps: list[int] = field(default_factory=lambda: [8, 11])
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float = 35.0
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3.0
    batch_size: int = 2  # images per worker per step (authors: 2 per GPU x 4 GPUs = 8)
    steps_per_epoch: int | None = None  # None: one pass over the worker's share of the images
    flip: float = 0.5
    # -- inference -------------------------------------------------------------------------------
    score_threshold: float = 0.05
    nms_threshold: float = 0.5
    detections_per_image: int = 100  # per group (GZSI: seen and unseen each)
    mask_threshold: float = 0.5

    def resolved(self, name: str) -> object:
        value = getattr(self, name, None)
        return RECIPES[self.recipe][name] if value is None else value

    def validate(self) -> None:
        if self.recipe not in RECIPES:
            raise ConfigError(f"recipe: expected one of {list(RECIPES)}, got {self.recipe!r}")
        if self.backbone_weights is not None and self.recipe == "tiny":
            raise ConfigError("backbone_weights: recipe 'tiny' is trained from scratch; "
                              "local weights are for r50 / r101")
        if (self.sync_bg_det or self.sync_bg_mask) and not self.ba_rpn:
            raise ConfigError("sync_bg_det / sync_bg_mask need ba_rpn: the synchronised "
                              "background is the mean of BA-RPN's background rows")
        if self.background == "file" and not self.background_file:
            raise ConfigError("background 'file' needs background_file (a shipped vectors "
                              "file name or a path whose column 0 is the background)")
        anchors = self.resolved("anchor_sizes")
        levels = len(RECIPES[self.recipe]["returned_layers"]) + 1  # + the max-pool level
        if len(anchors) != levels:
            raise ConfigError(f"anchor_sizes: recipe {self.recipe!r} has {levels} FPN levels, "
                              f"got {len(anchors)} sizes")
        if any(int(a) <= 0 for a in anchors):
            raise ConfigError(f"anchor_sizes must be positive, got {anchors}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        for name in ("lr", "det_reconstruction_weight", "smh_reconstruction_weight",
                     "weight_decay", "grad_clip", "warmup_iters"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.flip <= 1:
            raise ConfigError(f"flip must lie in [0, 1], got {self.flip}")
