"""ZSI (Zheng et al., CVPR 2021): zero-shot instance segmentation and detection, a model method.

A Mask R-CNN (torchvision's, :mod:`.model`) whose classifier and mask head are tied to word
vectors: RoI features are encoded (T_e) into the word space and scored against the fixed
``[v_b | W_s]``; the semantic mask head (SMH) encodes the mask feature into the word space and
scores every pixel with a fixed 1x1 conv of the same vectors; decoders T_d / D reconstruct the
visual features (``L_R``, weight 0.5); the background-aware RPN (BA-RPN) scores anchors with
``W_bf`` (rows 2a: background, 2a+1: foreground) on ``T(f)`` and its background rows' mean
v_b is written into column 0 of the detector's and the SMH's ``W`` every forward (Sync-bg).
Unseen classes are scored through ``W_u`` at inference; GZSI NMSes the seen and the unseen
detections separately (at most 100 each).

Registered rows (the component switches each row fixes; every other knob is shared):

=================  ==============================================  ===== ===== == ==== ====
method             paper row                                       SMH-D Det-D BA sync sync
                                                                                  det  mask
=================  ==============================================  ===== ===== == ==== ====
zsi-baseline       Table 1 row 2 = Table 4 "baseline" = T5 "RPN"   -     -     -  -    -
zsi-smh-decoder    Table 1 row 3 (+ SMH decoder)                   x     -     -  -    -
zsi-det-decoder    Table 1 row 4 (+ detector decoder)              x     x     -  -    -
zsi                Table 1 row 5, Table 4 "ours" (+ BA-RPN, Sync)  x     x     x  x    x
zsi-t5-ba-rpn      Table 5 "BA-RPN" (no decoders)                  -     -     x  -    -
zsi-t5-sync-det    Table 5 "BA-RPN & Sync-bg in det"               -     -     x  x    -
zsi-t5-sync-mask   Table 5 "BA-RPN & Sync-bg in mask"              -     -     x  -    x
zsi-t5-sync        Table 5 "BA-RPN & Sync-bg"                      -     -     x  x    x
=================  ==============================================  ===== ===== == ==== ====

``zsi-sweep`` fixes BA-RPN only: the decoders and the Sync-bg placement are knobs of
``search_spaces/zsi.yaml`` (BA-RPN itself is compared by the rows above: Sync-bg needs it).

Table 1 row 1 (the zero-shot detector without a mask head; ZSD only) is not registered: the
platform scores a model method's masks, and a detector without masks has none.

Paper / authors' code (``zhengye1995/Zero-shot-Instance-Segmentation``, PROTOCOLS.md section 7)
disagreements, each a switch of :class:`~.config.ZSIConfig`. The published numbers came from the
authors' code, so its choice is the default wherever it ran:

=================== ====================== ====================== ========= =====================
switch              paper                  authors' code          default   why
=================== ====================== ====================== ========= =====================
sync_bg_gradient    ``paper``: detector    ``code``: v_b copied   code      the published numbers
                    and SMH losses reach   under no_grad; learns            came from the code
                    v_b (Alg. 1 step 6)    from the RPN only
scoring             ``paper``: seen        ``code``: ConSE-like   code      idem
                    softmax(s W_s),        softmax(s [v_b|W_s])
                    unseen softmax(s       W_s^T [v_b|W_u]; SMH
                    [v_b|W_u]); SMH        seen logits -> W_s^T
                    unseen E(o) W_u        -> [v_b|W_u]
representation_size T_d outputs 2048       1024: T_d rebuilds     1024      idem
                                           the box head's RoI
                                           feature
smh_layout          ``paper``: E, D single ``code``: E 3x3 conv + code      idem
                    1x1 convs              ReLU + 3x3; D two 3x3
mask_conv_bug       4 mask convs in        each conv sees the RoI True      idem (only the last
                    sequence               feature: last one acts           conv is computed)
sync_bg_mask        Sync-bg in the SMH     off in the 48/17 train True      the paper, the 65/15
                                           config, on in 65/15               and GZSI test configs
unseen_box_deltas   not described          unseen j uses seen     code      idem
                                           column j's deltas;
                                           ``proposal``: none
background          "background" word      column 0 of            file      the authors' vectors;
                    vector                 ``*_withbg`` files               ``zeros`` /
                                                                            ``mean-seen`` where
                                                                            the embeddings have
                                                                            none (audited)
(vocabulary)        s W directly           T_e through a fixed    --        not a switch: the
                                           4,071-word matrix                matrix is missing
                                                                            from the mirror, and
                                                                            T_e is linear anyway
=================== ====================== ====================== ========= =====================

Under ``scoring: code`` prefer ``background: zeros`` to ``mean-seen``: a proposal whose softmax
sits on the background column scores ``v_b . w_k`` for every seen class k, which the mean of the
seen vectors makes large for all of them (measured: every background proposal of a short run on
``small`` scored 0.667 for one class), while the authors' "background" word vector is far from
the class vectors.

Not switches (both agree): BA-RPN's W_bf is bias-free, 3 anchors per location (ratios 0.5/1/2),
2-way softmax CE + SmoothL1 beta 1/9; the box head's SmoothL1 beta is 1.0 (mmdet v1,
``rcnn_smooth_l1_beta``); L_R = 0.5 MSE in both heads; SGD lr 0.01 (65/15: 0.0075), momentum
0.9, wd 1e-4, gradient clip 35, linear warm-up from 1/3 over 500 (65/15: 7000) iterations, x0.1
at epochs 8 and 11 of 12, 8 images per step, flip 0.5; inference score > 0.05, NMS 0.5, 100
per image (per group in GZSI), masks at 0.5. W_bf's foreground rows start ``N(0, 1)`` (mmcv
``normal_init``'s default) and its background rows as the background vector.

Recipes (:data:`~.config.RECIPES`): ``tiny`` (ResNet of BasicBlocks [1, 1, 1, 1] + 64-ch FPN on
strides 8-64, anchors 12-96 px for the synthetic benchmark's 13-45 px objects, trained from
scratch) and ``r50`` / ``r101`` (the authors' Mask R-CNN at 1333 x 800; ImageNet weights from a
local torchvision state dict, ``backbone_weights``, stem + layer1 frozen as mmdet's
``frozen_stages=1``).

Training data: the platform's leakage-filtered training images (the drop-images protocol of
ZSI's benchmark: an image with any unseen instance is not trained on) with their instances
(``ModelContext.training_instances``). Bad input fails before training (:func:`.train.check`).
"""

from __future__ import annotations

from zeroseg.methods.registry import MethodSpec, ModelSpec
from zeroseg.methods.zsi.config import COMPONENTS, ZSIConfig
from zeroseg.methods.zsi.train import check, predict, train

#: Component switches of each registered row: (smh_decoder, det_decoder, ba_rpn, sync_bg_det,
#: sync_bg_mask).
ABLATIONS: dict[str, tuple[bool, bool, bool, bool, bool]] = {
    "zsi-baseline": (False, False, False, False, False),
    "zsi-smh-decoder": (True, False, False, False, False),
    "zsi-det-decoder": (True, True, False, False, False),
    "zsi": (True, True, True, True, True),
    "zsi-t5-ba-rpn": (False, False, True, False, False),
    "zsi-t5-sync-det": (False, False, True, True, False),
    "zsi-t5-sync-mask": (False, False, True, False, True),
    "zsi-t5-sync": (False, False, True, True, True),
}

_ROWS = {
    "zsi-baseline": ("ZSI baseline", 70, "zero-shot Mask R-CNN: ZSD + SMH encoder (Table 4)"),
    "zsi-smh-decoder": ("ZSI +SMH dec", 71, "+ SMH decoder (Table 1 row 3)"),
    "zsi-det-decoder": ("ZSI +Det dec", 72, "+ detector decoder (Table 1 row 4)"),
    "zsi": ("ZSI", 73, "+ BA-RPN & Sync-bg: the full method (Table 1 row 5)"),
    "zsi-t5-ba-rpn": ("ZSI BA-RPN", 74, "Table 5: BA-RPN without Sync-bg, no decoders"),
    "zsi-t5-sync-det": ("ZSI Sync det", 75, "Table 5: BA-RPN & Sync-bg in the detector"),
    "zsi-t5-sync-mask": ("ZSI Sync mask", 76, "Table 5: BA-RPN & Sync-bg in the SMH"),
    "zsi-t5-sync": ("ZSI Sync (no dec)", 77, "Table 5: BA-RPN & Sync-bg everywhere"),
}

#: The row search_spaces/zsi.yaml sweeps: BA-RPN on (Sync-bg needs its v_b), the decoders and
#: the Sync-bg placement free (knobs), like every other switch.
SWEEP_ROW = "zsi-sweep"

_MODEL = ModelSpec(train=train, predict=predict, check=check, tasks=("instance",))

METHODS = [
    MethodSpec(name=name, label=label, config_class=ZSIConfig, fit=None, kind="model",
               model=_MODEL, fixed=dict(zip(COMPONENTS, ABLATIONS[name], strict=True)),
               order=order, description=description)
    for name, (label, order, description) in _ROWS.items()
] + [MethodSpec(name=SWEEP_ROW, label="ZSI (swept)", config_class=ZSIConfig, fit=None,
                kind="model", model=_MODEL, fixed={"ba_rpn": True}, order=79,
                description="BA-RPN on; decoders and Sync-bg placement free (sweeps)")]
