"""ZSI's network on torchvision's Mask R-CNN: BA-RPN, the zero-shot box predictor with T_e / T_d,
the semantic mask head (SMH) and the synchronised background (package docstring: the switches).

Class columns inside the network: 0 = background, 1..S = the seen classes in label-space order
(``seen_idx``); the unseen classes exist only at inference, as the columns of ``W_u``.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zeroseg.methods.zsi.config import RECIPES, ZSIConfig
from zeroseg.methods.zsi.roi_pool import PortableMultiScaleRoIAlign, roi_align_grid
from zeroseg.platform.compat.torchvision_ops import ensure_torchvision
from zeroseg.platform.errors import ConfigError

ensure_torchvision()

from torchvision.models.detection import MaskRCNN  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402
from torchvision.models.detection.backbone_utils import BackboneWithFPN  # noqa: E402
from torchvision.models.detection.roi_heads import (  # noqa: E402
    RoIHeads,
    paste_masks_in_image,
)
from torchvision.models.detection.rpn import (  # noqa: E402
    RegionProposalNetwork,
    concat_box_prediction_layers,
    permute_and_flatten,  # noqa: E402
)
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet  # noqa: E402
from torchvision.ops import FrozenBatchNorm2d  # noqa: E402
from torchvision.ops import boxes as box_ops  # noqa: E402
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool  # noqa: E402

ANCHOR_RATIOS = (0.5, 1.0, 2.0)  # A = 3 anchors per location


# -- BA-RPN ----------------------------------------------------------------------------------------
class BackgroundAwareRPNHead(nn.Module):
    """conv3x3 -> ReLU -> T (1x1 to the word dim) -> W_bf (1x1, dim -> 2A, no bias).

    Channel ``2a`` is anchor a's background logit, ``2a + 1`` its foreground logit (mmdet's
    softmax layout); the background rows start as the background word vector and their mean is
    the learned background vector v_b."""

    def __init__(self, in_channels: int, word_dim: int, background: torch.Tensor,
                 num_anchors: int = len(ANCHOR_RATIOS)):
        super().__init__()
        self.num_anchors = num_anchors
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.to_word = nn.Conv2d(in_channels, word_dim, 1)  # T
        self.fg_bg = nn.Conv2d(word_dim, 2 * num_anchors, 1, bias=False)  # W_bf
        self.bbox_pred = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.to_word, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.fg_bg.weight, std=1.0)  # mmcv normal_init's default std
        with torch.no_grad():
            self.fg_bg.weight[0::2, :, 0, 0] = background.to(self.fg_bg.weight)

    def background_vector(self) -> torch.Tensor:
        """v_b: the mean of W_bf's background rows ``[dim]`` (differentiable)."""
        return self.fg_bg.weight[0::2, :, 0, 0].mean(0)

    def forward(self, features: list[torch.Tensor]
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            logits.append(self.fg_bg(self.to_word(t)))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


class BackgroundAwareRPN(RegionProposalNetwork):
    """torchvision's RPN with 2-way (background, foreground) softmax logits per anchor.

    Proposals are ranked by the foreground logit minus the background logit, whose sigmoid is
    the 2-way softmax's foreground probability; the loss is the 2-way softmax cross-entropy."""

    def forward(self, images: Any, features: OrderedDict[str, torch.Tensor],
                targets: list[dict[str, torch.Tensor]] | None = None
                ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        feats = list(features.values())
        pair_logits, deltas = self.head(feats)
        anchors = self.anchor_generator(images, feats)
        num_images = len(anchors)
        objectness = [p[:, 1::2] - p[:, 0::2] for p in pair_logits]  # fg - bg, [B, A, H, W]
        num_anchors_per_level = [o[0].numel() for o in objectness]
        flat_objectness, flat_deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = self.box_coder.decode(flat_deltas.detach(), anchors).view(num_images, -1, 4)
        boxes, _ = self.filter_proposals(proposals, flat_objectness, images.image_sizes,
                                         num_anchors_per_level)
        losses: dict[str, torch.Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("BA-RPN needs targets in training")
            labels, matched = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = self.box_coder.encode(matched, anchors)
            pairs = torch.cat([permute_and_flatten(p, p.shape[0], p.shape[1] // 2, 2,
                                                   p.shape[2], p.shape[3])
                               for p in pair_logits], dim=1).reshape(-1, 2)
            loss_cls, loss_box = self.softmax_loss(pairs, flat_deltas, labels,
                                                   regression_targets)
            losses = {"loss_objectness": loss_cls, "loss_rpn_box_reg": loss_box}
        return boxes, losses

    def softmax_loss(self, pairs: torch.Tensor, deltas: torch.Tensor,
                     labels: list[torch.Tensor], regression_targets: list[torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """2-way softmax CE on the sampled anchors + SmoothL1 (beta 1/9) on the positives, both
        averaged over the sampled anchors (mmdet's ``avg_factor``)."""
        pos, neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos, dim=0))[0]
        neg = torch.where(torch.cat(neg, dim=0))[0]
        sampled = torch.cat([pos, neg], dim=0)
        labels_flat = torch.cat(labels, dim=0)
        targets = torch.cat(regression_targets, dim=0)
        loss_box = F.smooth_l1_loss(deltas[pos], targets[pos], beta=1 / 9,
                                    reduction="sum") / max(1, sampled.numel())
        loss_cls = F.cross_entropy(pairs[sampled], labels_flat[sampled].long())
        return loss_cls, loss_box


class SigmoidRPNHead(nn.Module):
    """The plain RPN head (torchvision's: conv3x3, 1 sigmoid logit per anchor) for the rows of
    the ablations without BA-RPN."""

    def __init__(self, in_channels: int, num_anchors: int = len(ANCHOR_RATIOS)):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: list[torch.Tensor]
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


# -- the synchronised background ---------------------------------------------------------------
class WordVectors(nn.Module):
    """The fixed ``[v_b | W]`` matrix ``[dim, 1 + K]`` of a classifier (never trained).

    :meth:`matrix` returns it with column 0 synchronised to ``background`` when one is given:
    ``gradient="paper"`` builds ``[v_b | W]`` from v_b itself, so the loss reaches BA-RPN's
    background rows; ``"code"`` copies v_b's values into the buffer (``.data``), so v_b learns
    from the RPN loss only and the buffer keeps the last value (saved with the state)."""

    def __init__(self, vectors: torch.Tensor, gradient: str):
        super().__init__()
        self.register_buffer("vectors", vectors.clone())
        self.gradient = gradient

    def matrix(self, background: torch.Tensor | None = None) -> torch.Tensor:
        if background is None:
            return self.vectors
        if self.gradient == "code":
            with torch.no_grad():
                self.vectors[:, 0] = background.detach()
            return self.vectors
        return torch.cat([background[:, None], self.vectors[:, 1:]], dim=1)


# -- the zero-shot detector ----------------------------------------------------------------------
class ZeroShotBoxPredictor(nn.Module):
    """RoI feature x -> T_e -> s; logits ``s @ [v_b | W_s]``; class-specific box deltas from x;
    optional decoder T_d with ``L_R = weight * MSE(x, T_d(s))``."""

    def __init__(self, in_features: int, word_vectors: torch.Tensor, *, decoder: bool,
                 gradient: str):
        super().__init__()
        word_dim, columns = word_vectors.shape
        self.encoder = nn.Linear(in_features, word_dim)  # T_e
        self.decoder = nn.Linear(word_dim, in_features) if decoder else None  # T_d
        self.bbox_pred = nn.Linear(in_features, 4 * columns)
        self.words = WordVectors(word_vectors, gradient)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.bbox_pred.bias)
        nn.init.normal_(self.encoder.weight, std=0.01)
        nn.init.zeros_(self.encoder.bias)

    def forward(self, x: torch.Tensor, background: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(logits [N, 1 + S], box deltas [N, 4 (1 + S)], s [N, dim], T_d(s) or None)``."""
        s = self.encoder(x)
        logits = s @ self.words.matrix(background)
        recon = self.decoder(s) if self.decoder is not None else None
        return logits, self.bbox_pred(x), s, recon


class SemanticMaskHead(nn.Module):
    """14x14 RoI feature -> 4 convs -> 2x deconv -> o; encoder E to the word dim; fixed 1x1 conv
    ``[v_b | W_s]`` -> per-class mask logits; decoder D back to o's channels.

    ``layout="code"``: E = 3x3 conv + ReLU, 3x3 conv; D = two 3x3 convs (the authors'
    ``convT`` / ``kernel_semantic`` / ``d_kernel_semantic`` / ``dconvT``). ``"paper"``: E and D
    are single 1x1 convs. ``conv_bug``: each of the 4 convs is applied to the input, so only the
    last one shapes o (the authors' loop)."""

    def __init__(self, in_channels: int, channels: int, word_vectors: torch.Tensor, *,
                 decoder: bool, gradient: str, layout: str, conv_bug: bool):
        super().__init__()
        word_dim = word_vectors.shape[0]
        self.convs = nn.ModuleList([nn.Conv2d(in_channels if i == 0 or conv_bug else channels,
                                              channels, 3, padding=1) for i in range(4)])
        self.conv_bug = conv_bug
        self.deconv = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        if layout == "code":
            self.encoder = nn.Sequential(nn.Conv2d(channels, word_dim, 3, padding=1), nn.ReLU(),
                                         nn.Conv2d(word_dim, word_dim, 3, padding=1))
            self.decoder = (nn.Sequential(nn.Conv2d(word_dim, word_dim, 3, padding=1),
                                          nn.Conv2d(word_dim, channels, 3, padding=1))
                            if decoder else None)
        else:
            self.encoder = nn.Conv2d(channels, word_dim, 1)
            self.decoder = nn.Conv2d(word_dim, channels, 1) if decoder else None
        self.words = WordVectors(word_vectors, gradient)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """o: the deconvolved mask feature ``[N, channels, 28, 28]``."""
        if self.conv_bug:  # each conv reads x: only the last one's output reaches o
            return F.relu(self.deconv(F.relu(self.convs[-1](x))))
        h = x
        for conv in self.convs:
            h = F.relu(conv(h))
        return F.relu(self.deconv(h))

    def forward(self, x: torch.Tensor, background: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(mask logits [N, 1 + S, 28, 28], o, E(o), D(E(o)) or None)``."""
        o = self.features(x)
        e = self.encoder(o)
        logits = torch.einsum("ndhw,dk->nkhw", e, self.words.matrix(background))
        recon = self.decoder(e) if self.decoder is not None else None
        return logits, o, e, recon


def mask_targets(gt_masks: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Binary ``size x size`` targets of ``gt_masks`` ``[N, H, W]`` inside ``boxes``: the mask
    resampled bilinearly to the box grid and thresholded at 0.5, as mmdet v1's ``mask_target``
    (crop, resize, > 0.5) gives them (torchvision keeps the soft values)."""
    rois = torch.cat([torch.arange(len(boxes), dtype=boxes.dtype)[:, None], boxes], dim=1)
    sampled = roi_align_grid(gt_masks[:, None].to(boxes.dtype), rois, (size, size), 1.0, 2)
    return (sampled[:, 0] >= 0.5).to(boxes.dtype)


def mask_loss(mask_logits: torch.Tensor, proposals: list[torch.Tensor],
              gt_masks: list[torch.Tensor], gt_labels: list[torch.Tensor],
              matched: list[torch.Tensor]) -> torch.Tensor:
    """Per-class BCE: each positive RoI's logits of its ground-truth class (column
    ``label``, 0 = background) against its binary target."""
    size = mask_logits.shape[-1]
    targets = torch.cat([mask_targets(m[i], p, size) for m, p, i in
                         zip(gt_masks, proposals, matched, strict=True)])
    labels = torch.cat([lab[i] for lab, i in zip(gt_labels, matched, strict=True)])
    chosen = mask_logits[torch.arange(len(labels)), labels]
    return F.binary_cross_entropy_with_logits(chosen, targets)


class ZSIRoIHeads(RoIHeads):
    """torchvision's RoI heads with the zero-shot predictors: training losses (CE, SmoothL1,
    per-class BCE, both L_R) with the synchronised background; inference in
    :meth:`ZSIDetector.detect`."""

    def __init__(self, *args: Any, config: ZSIConfig, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.cfg = config

    def losses(self, features: OrderedDict[str, torch.Tensor], proposals: list[torch.Tensor],
               image_shapes: list[tuple[int, int]], targets: list[dict[str, torch.Tensor]],
               background: torch.Tensor | None) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(
            proposals, targets)
        x = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        logits, deltas, s, recon = self.box_predictor(
            x, background if cfg.sync_bg_det else None)
        labels_cat = torch.cat(labels, dim=0)
        targets_cat = torch.cat(regression_targets, dim=0)
        losses = {"loss_classifier": F.cross_entropy(logits, labels_cat)}
        pos = torch.where(labels_cat > 0)[0]
        deltas = deltas.reshape(deltas.shape[0], -1, 4)
        losses["loss_box_reg"] = F.smooth_l1_loss(
            deltas[pos, labels_cat[pos]], targets_cat[pos], beta=cfg.rcnn_smooth_l1_beta,
            reduction="sum") / max(1, labels_cat.numel())
        if recon is not None:
            losses["loss_det_reconstruction"] = (cfg.det_reconstruction_weight
                                                 * F.mse_loss(recon, x))
        # the mask branch on the positive proposals
        mask_proposals, pos_matched = [], []
        for p, m, lab in zip(proposals, matched_idxs, labels, strict=True):
            keep = torch.where(lab > 0)[0]
            mask_proposals.append(p[keep])
            pos_matched.append(m[keep])
        mask_x = self.mask_roi_pool(features, mask_proposals, image_shapes)
        mask_logits, o, _, mask_recon = self.mask_predictor(
            mask_x, background if cfg.sync_bg_mask else None)
        gt_masks = [t["masks"] for t in targets]
        gt_labels = [t["labels"] for t in targets]
        if sum(len(p) for p in mask_proposals) == 0:
            losses["loss_mask"] = mask_logits.sum() * 0
        else:
            losses["loss_mask"] = mask_loss(mask_logits, mask_proposals, gt_masks,
                                            gt_labels, pos_matched)
        if mask_recon is not None:
            losses["loss_smh_reconstruction"] = (cfg.smh_reconstruction_weight
                                                 * (F.mse_loss(mask_recon, o) if o.numel()
                                                    else mask_recon.sum() * 0))
        return losses


# -- the detector ------------------------------------------------------------------------------
def build_backbone(config: ZSIConfig) -> BackboneWithFPN:
    recipe = RECIPES[config.recipe]
    layers = recipe["resnet_layers"]
    block = BasicBlock if config.recipe == "tiny" else Bottleneck
    norm = FrozenBatchNorm2d if recipe["frozen_batchnorm"] else nn.BatchNorm2d
    resnet = ResNet(block, layers, norm_layer=norm)
    if config.backbone_weights:
        load_resnet_weights(resnet, config.backbone_weights)
    trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][:recipe["trainable_layers"]]
    if recipe["trainable_layers"] == 5:
        trainable.append("bn1")
    for name, parameter in resnet.named_parameters():
        if all(not name.startswith(layer) for layer in trainable):
            parameter.requires_grad_(False)
    returned = recipe["returned_layers"]
    widths = [64 * block.expansion * 2 ** (i - 1) for i in returned]
    return BackboneWithFPN(resnet, {f"layer{k}": str(v) for v, k in enumerate(returned)},
                           widths, int(config.resolved("fpn_channels")),
                           extra_blocks=LastLevelMaxPool())


def load_resnet_weights(resnet: nn.Module, path: str) -> None:
    """A local torchvision ResNet state dict (``weights_only`` loading; ``fc.*`` ignored);
    a missing file, a pickle or mismatching keys are one-line errors."""
    if not Path(path).is_file():
        raise ConfigError(f"{path}: backbone_weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"{path}: not a readable torch state dict ({type(e).__name__})"
                          ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = resnet.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ConfigError(f"{path}: not a torchvision ResNet state dict of this depth "
                          f"(missing {missing[:2]}, unexpected {list(unexpected)[:2]})")


def class_scores(s: torch.Tensor, w_seen: torch.Tensor, w_unseen: torch.Tensor, scoring: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Seen ``[N, S]`` and unseen ``[N, U]`` scores of semantic features ``s`` ``[N, dim]``
    (``w_seen = [v_b | W_s]``, ``w_unseen = [v_b | W_u]``, background columns dropped after).

    ``paper``: softmax(s [v_b|W_s]) and softmax(s [v_b|W_u]); ``code`` (ConSE-like): the seen
    probabilities p = softmax(s [v_b|W_s]) projected back to the word space and scored again,
    ``(p W_s^T) W_s`` and ``(p W_s^T) [v_b|W_u]`` (bbox_head_semantic.py)."""
    probs = (s @ w_seen).softmax(1)
    if scoring == "paper":
        return probs[:, 1:], (s @ w_unseen).softmax(1)[:, 1:]
    words = probs @ w_seen.t()
    return (words @ w_seen)[:, 1:], (words @ w_unseen)[:, 1:]


def unseen_mask_logits(seen_logits: torch.Tensor, e: torch.Tensor, w_seen: torch.Tensor,
                       w_unseen: torch.Tensor, scoring: str) -> torch.Tensor:
    """The SMH's ``[v_b | W_u]`` mask logits ``[N, 1 + U, h, w]``: ``paper``: the encoder
    output E(o) through the fixed 1x1 conv ``[v_b | W_u]``; ``code``: the seen logits through
    ``W_s^T`` (``con_vec_t``) and then ``[v_b | W_u]`` (``conv_vec_unseen``)."""
    if scoring == "paper":
        return torch.einsum("ndhw,dk->nkhw", e, w_unseen)
    words = torch.einsum("nkhw,dk->ndhw", seen_logits, w_seen)
    return torch.einsum("ndhw,dk->nkhw", words, w_unseen)


class ZSIDetector(MaskRCNN):
    """Mask R-CNN with ZSI's heads. ``seen_vectors`` ``[S, dim]`` and ``unseen_vectors``
    ``[U, dim]`` are the (normalised) class word vectors, ``background`` ``[dim]`` the initial
    background vector."""

    def __init__(self, config: ZSIConfig, seen_vectors: np.ndarray, unseen_vectors: np.ndarray,
                 background: np.ndarray):
        backbone = build_backbone(config)
        channels = backbone.out_channels
        seen = torch.as_tensor(np.asarray(seen_vectors, np.float32))
        unseen = torch.as_tensor(np.asarray(unseen_vectors, np.float32))
        bg = torch.as_tensor(np.asarray(background, np.float32))
        word_dim = seen.shape[1]
        w_seen = torch.cat([bg[:, None], seen.t()], dim=1)  # [dim, 1 + S]
        sizes = tuple((int(s),) for s in config.resolved("anchor_sizes"))
        anchors = AnchorGenerator(sizes, (ANCHOR_RATIOS,) * len(sizes))
        names = [str(i) for i in range(len(sizes) - 1)]
        rep = int(config.resolved("representation_size"))
        from torchvision.models.detection.faster_rcnn import TwoMLPHead

        recipe = RECIPES[config.recipe]
        super().__init__(
            backbone, num_classes=None,
            min_size=int(config.resolved("min_size")), max_size=int(config.resolved("max_size")),
            rpn_anchor_generator=anchors,
            rpn_head=(BackgroundAwareRPNHead(channels, word_dim, bg) if config.ba_rpn
                      else SigmoidRPNHead(channels)),
            rpn_pre_nms_top_n_train=recipe["rpn_pre_nms_top_n_train"],
            rpn_post_nms_top_n_train=recipe["rpn_post_nms_top_n_train"],
            rpn_pre_nms_top_n_test=recipe["rpn_pre_nms_top_n_test"],
            rpn_post_nms_top_n_test=recipe["rpn_post_nms_top_n_test"],
            rpn_batch_size_per_image=recipe["rpn_batch_size_per_image"],
            box_roi_pool=PortableMultiScaleRoIAlign(names, 7, 2),
            box_head=TwoMLPHead(channels * 7 * 7, rep),
            box_predictor=ZeroShotBoxPredictor(rep, w_seen, decoder=config.det_decoder,
                                               gradient=config.sync_bg_gradient),
            box_batch_size_per_image=recipe["box_batch_size_per_image"],
            box_score_thresh=config.score_threshold, box_nms_thresh=config.nms_threshold,
            box_detections_per_img=config.detections_per_image,
            mask_roi_pool=PortableMultiScaleRoIAlign(names, 14, 2),
            mask_head=nn.Identity(),
            mask_predictor=SemanticMaskHead(
                channels, int(config.resolved("mask_channels")), w_seen,
                decoder=config.smh_decoder, gradient=config.sync_bg_gradient,
                layout=config.smh_layout, conv_bug=config.mask_conv_bug))
        if config.ba_rpn:
            rpn = self.rpn
            self.rpn = BackgroundAwareRPN(
                rpn.anchor_generator, rpn.head, 0.7, 0.3, rpn.fg_bg_sampler.batch_size_per_image,
                0.5, dict(rpn._pre_nms_top_n), dict(rpn._post_nms_top_n), rpn.nms_thresh)
        heads = self.roi_heads
        self.roi_heads = ZSIRoIHeads(
            heads.box_roi_pool, heads.box_head, heads.box_predictor, 0.5, 0.5,
            heads.fg_bg_sampler.batch_size_per_image, 0.25, None, config.score_threshold,
            config.nms_threshold, config.detections_per_image,
            mask_roi_pool=heads.mask_roi_pool, mask_head=heads.mask_head,
            mask_predictor=heads.mask_predictor, config=config)
        self.cfg = config
        self.register_buffer("unseen_vectors", unseen.t().contiguous())  # [dim, U]

    # -- training ---------------------------------------------------------------------------------
    def background_vector(self) -> torch.Tensor | None:
        return self.rpn.head.background_vector() if self.cfg.ba_rpn else None

    def forward(self, images: list[torch.Tensor],  # type: ignore[override]
                targets: list[dict[str, torch.Tensor]] | None = None
                ) -> dict[str, torch.Tensor]:
        """Training: the loss dict (every term already weighted)."""
        if not self.training or targets is None:
            raise ValueError("ZSIDetector.forward is the training step; use detect()")
        images, targets = self.transform(images, targets)
        features = self.backbone(images.tensors)
        proposals, losses = self.rpn(images, features, targets)
        losses.update(self.roi_heads.losses(features, proposals, images.image_sizes, targets,
                                            self.background_vector()))
        return losses

    # -- inference --------------------------------------------------------------------------------
    @torch.no_grad()
    def detect(self, images: list[torch.Tensor], setting: str) -> list[dict[str, torch.Tensor]]:
        """Per image: ``boxes`` (xyxy, image pixels), ``labels`` (0..S-1 seen, S..S+U-1
        unseen), ``scores``, ``masks`` ``[K, 1, H, W]`` probabilities. ``setting="gzsl"``: seen
        and unseen groups each scored, NMSed and cut to ``detections_per_image`` separately,
        then concatenated; ``"zsl"``: the unseen group only."""
        cfg = self.cfg
        original = [tuple(img.shape[-2:]) for img in images]
        batch, _ = self.transform(images)
        features = self.backbone(batch.tensors)
        proposals, _ = self.rpn(batch, features)
        bg = self.background_vector()
        heads = self.roi_heads
        x = heads.box_head(heads.box_roi_pool(features, proposals, batch.image_sizes))
        _, deltas, s, _ = heads.box_predictor(x, bg if cfg.sync_bg_det else None)
        w_seen = heads.box_predictor.words.matrix(bg if cfg.sync_bg_det else None).detach()
        w_unseen = torch.cat([w_seen[:, :1], self.unseen_vectors], dim=1)
        num_seen = w_seen.shape[1] - 1
        seen, unseen = class_scores(s, w_seen, w_unseen, cfg.scoring)
        groups = []
        if setting == "gzsl":
            groups.append((seen, torch.arange(1, num_seen + 1), 0))
        if unseen.shape[1]:
            groups.append((unseen, torch.arange(1, unseen.shape[1] + 1).clamp(max=num_seen),
                           num_seen))
        boxes_per_column = heads.box_coder.decode(deltas, proposals).reshape(
            len(x), num_seen + 1, 4)
        counts = [len(p) for p in proposals]
        out = []
        start = 0
        for i, count in enumerate(counts):
            rows = slice(start, start + count)
            start += count
            kept_boxes, kept_scores, kept_labels = [], [], []
            for scores, columns, offset in groups:
                if cfg.unseen_box_deltas == "proposal" and offset:
                    boxes = proposals[i][:, None, :].expand(-1, len(columns), 4)
                else:
                    boxes = boxes_per_column[rows][:, columns]
                boxes = box_ops.clip_boxes_to_image(boxes, batch.image_sizes[i])
                sc = scores[rows]
                labels = torch.arange(sc.shape[1]).expand_as(sc)
                boxes, sc, labels = boxes.reshape(-1, 4), sc.reshape(-1), labels.reshape(-1)
                keep = torch.where(sc > cfg.score_threshold)[0]
                boxes, sc, labels = boxes[keep], sc[keep], labels[keep]
                keep = box_ops.remove_small_boxes(boxes, 1e-2)
                boxes, sc, labels = boxes[keep], sc[keep], labels[keep]
                keep = box_ops.batched_nms(boxes, sc, labels, cfg.nms_threshold)
                keep = keep[:cfg.detections_per_image]
                kept_boxes.append(boxes[keep])
                kept_scores.append(sc[keep])
                kept_labels.append(labels[keep] + offset)
            out.append({"boxes": torch.cat(kept_boxes), "scores": torch.cat(kept_scores),
                        "labels": torch.cat(kept_labels)})
        self._masks(features, out, batch.image_sizes, bg, w_unseen)
        for det, size, orig in zip(out, batch.image_sizes, original, strict=True):
            ratio = torch.tensor([orig[1] / size[1], orig[0] / size[0]] * 2)
            det["boxes"] = det["boxes"] * ratio
            det["masks"] = paste_masks_in_image(det.pop("mask_probs"), det["boxes"], orig)
        return out

    def _masks(self, features: OrderedDict[str, torch.Tensor], detections: list[dict],
               image_sizes: list[tuple[int, int]], bg: torch.Tensor | None,
               w_unseen: torch.Tensor) -> None:
        cfg = self.cfg
        heads = self.roi_heads
        predictor = heads.mask_predictor
        mask_x = heads.mask_roi_pool(features, [d["boxes"] for d in detections], image_sizes)
        seen_logits, _, e, _ = predictor(mask_x, bg if cfg.sync_bg_mask else None)
        w_seen = predictor.words.matrix(bg if cfg.sync_bg_mask else None).detach()
        num_seen = w_seen.shape[1] - 1
        unseen_logits = unseen_mask_logits(seen_logits, e, w_seen, w_unseen, cfg.scoring)
        labels = torch.cat([d["labels"] for d in detections])
        rows = torch.arange(len(labels))
        is_seen = labels < num_seen
        chosen = torch.empty((len(labels), *seen_logits.shape[-2:]))
        chosen[is_seen] = seen_logits[rows[is_seen], labels[is_seen] + 1]
        chosen[~is_seen] = unseen_logits[rows[~is_seen], labels[~is_seen] - num_seen + 1]
        probs = chosen.sigmoid()[:, None]
        start = 0
        for d in detections:
            d["mask_probs"] = probs[start:start + len(d["labels"])]
            start += len(d["labels"])
