"""GMMN feature generator (ZS3Net, Bucher et al. 2019), at object level.

ZS3Net's generator maps a class embedding plus random noise to a visual feature with a small MLP,
trained with kernel maximum mean discrepancy (MMD) between the features it generates for a batch
of labels and the real features carrying those labels. Here the features are the segmenter's
per-query embeddings (PADing's object-level setting, Table 1 row 3 "Baseline"), not DeepLab
pixels. ``code`` below is valeoai/ZS3 (``zs3/modeling/gmmn.py``, ``zs3/train_pascal_GMMN.py``,
``zs3/utils/loss.py``); the PADing repository has a GMMN module (dropout 0.4) that it never
instantiates, so its Table 1 baseline recipe is not public and ZS3Net's is followed.

Network (``modeling/gmmn.py``)::

    [a (d) || z (noise_dim)] -> Linear(d + noise_dim, hidden) -> LeakyReLU(0.2) -> Dropout(p)
                             -> Linear(hidden, D)

with ``z ~ U[0, 1)``, ``hidden = 256``, ``p = 0.5``, Xavier-initialised weights and biases 0.01.
Loss: ZS3Net's ``GMMNLoss`` -- the square root of the biased MMD^2 summed over the bandwidths
{2, 5, 10, 20, 40, 80} taken as variances -- on one class at a time: each Adam step takes one
class's ``batch_size`` (128) real embeddings and as many fakes, as ZS3Net takes one step per
(image, class) on 128 random pixel pairs of that class. After every generator step the
classifier takes one step (ZS3Net: one per iteration) on fakes of the generator in train mode
(:class:`~zeroseg.methods.common.HeadTrainer`). Logged MMD: :data:`~zeroseg.methods.common.\
MMD_CURVE`, the same form as every generator's.

**Every departure, one table.** ``Z``: ZS3Net works on DeepLab pixels; at object level there is
no counterpart (its classifier is a pixel-level 1x1 conv re-initialised with U[0, 1) weights,
SGD 0.07 with poly decay, unseen weight 100, trained on whole fake feature maps laid on the
unseen classes' ground truth; here every generative method shares PADing's object-level
classifier, so Table 1 compares generators). ``S``: no schedule to follow at object level.

====================== ================ ============================= ================== ===
switch                 paper (ZS3Net)   code (ZS3)                    zeroseg default    why
====================== ================ ============================= ================== ===
net.hidden_dim         --               256                           256                code
net.dropout            --               0.5 (PADing's copy: 0.4)      0.5                code
net.noise              --               U[0, 1) (torch.rand)          uniform            code
net.noise_dim          --               300 (= word2vec width)        d                  code
sigmas, kernel_scale   --               {2, .., 80} as variances      code, variance     code
mmd_form               --               sqrt                          sqrt               code
mmd_grouping           per class        per (image, class)            class              code
classes_per_step       --               1 (one step per class)        1                  code
batch_size             --               128 pixel pairs per class     128 rows           code
lr                     --               Adam 2e-4, unscheduled        2e-4               code
steps                  --               30 epochs of VOC              2000               S
classifier.schedule    --               interleaved                   interleaved        code
classifier (the rest)  --               pixel-level, see ``Z``        PADing's (object)  Z
classifier.batch_size  --               8 images' feature maps        12 images' queries Z
====================== ================ ============================= ================== ===

ZS3Net draws the 128 pairs with replacement and with the same indices for fakes and reals;
here a class's rows are drawn without replacement when it has 128 (with replacement otherwise),
one fake each. The pre-issue-13 default took 8 classes x 16 rows per step (``classes_per_step:
8``) and trained the classifier afterwards (``classifier.schedule: sequential``).
PADing's trainer (:func:`zeroseg.methods.pading.train_generator`) can also drive this network
(``generator_type="gmmn"``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from zeroseg.methods.common import (
    AdamStepper,
    ClassifierConfig,
    ClassRoles,
    GeneratorRecipe,
    KernelScale,
    MMDForm,
    MMDGrouping,
    SigmaSpec,
    SnapshotCallback,
    StepCallback,
    TrainedGenerator,
    check_real_features,
    grouped_mmd_loss,
    interleaved_head,
    prepare_class_embeddings,
    resolve_sigmas,
    run_generator_loop,
    seeded,
)
from zeroseg.methods.generative import fit_generative
from zeroseg.methods.registry import MethodSpec
from zeroseg.platform.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class GMMNNetConfig:
    """Architecture of the GMMN generator (ZS3Net defaults)."""

    hidden_dim: int = 256
    noise_dim: int | None = None  # None: the class-embedding width (ZS3Net: 300 = word2vec)
    noise: Literal["uniform", "normal"] = "uniform"  # ZS3Net: torch.rand, i.e. U[0, 1)
    dropout: float = 0.5  # ZS3Net 0.5; PADing's unused GMMN module has 0.4
    leaky_slope: float = 0.2

    def validate(self) -> None:
        if self.hidden_dim < 1:
            raise ConfigError(f"hidden_dim must be >= 1, got {self.hidden_dim}")
        if self.noise_dim is not None and self.noise_dim < 1:
            raise ConfigError(f"noise_dim must be >= 1 (or null), got {self.noise_dim}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class GMMNConfig:
    """ZS3Net's GMMN method at object level: generator training + classifier retraining.

    Defaults: ZS3Net's (the module docstring's table). A step takes ``classes_per_step``
    classes with ``batch_size // classes_per_step`` embeddings each and averages their MMDs
    (``mmd_grouping="class"``; ``batch``: one MMD over a class-mixed batch). ZS3Net's schedule
    has no object-level counterpart: ``steps`` = 2000 is PADing's semantic budget, not a tuned
    value.
    """

    net: GMMNNetConfig = field(default_factory=GMMNNetConfig)
    sigmas: SigmaSpec = "code"
    kernel_scale: KernelScale = "variance"
    mmd_form: MMDForm = "sqrt"
    mmd_grouping: MMDGrouping = "class"
    classes_per_step: int = 1  # with mmd_grouping="class" (ZS3Net: one class per step)
    lr: float = 2e-4  # Adam, ZS3Net
    steps: int = 2000
    batch_size: int = 128
    normalize_class_embeddings: bool = True
    log_every: int = 50
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    seed: int = 0

    def validate(self) -> None:
        self.net.validate()
        self.classifier.validate()
        resolve_sigmas(self.sigmas)
        for name in ("steps", "batch_size", "classes_per_step", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")


class GMMNGenerator(nn.Module):
    """``[a || z] -> Linear -> LeakyReLU -> Dropout -> Linear``: class vector to feature."""

    def __init__(self, embed_dim: int, out_dim: int, config: GMMNNetConfig | None = None):
        super().__init__()
        config = config or GMMNNetConfig()
        config.validate()
        self.embed_dim = embed_dim
        self.out_dim = out_dim
        self.noise_dim = config.noise_dim or embed_dim
        self.noise = config.noise
        self.fc1 = nn.Linear(embed_dim + self.noise_dim, config.hidden_dim)
        self.act = nn.LeakyReLU(config.leaky_slope)
        self.drop = nn.Dropout(config.dropout)
        self.fc2 = nn.Linear(config.hidden_dim, out_dim)
        for layer in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.constant_(layer.bias, 0.01)

    def forward(self, class_vectors: Tensor, rng: torch.Generator | None = None) -> Tensor:
        if class_vectors.dim() != 2 or class_vectors.shape[1] != self.embed_dim:
            raise DataError(f"GMMN generator: expected class vectors [K, {self.embed_dim}], got "
                            f"{tuple(class_vectors.shape)}")
        shape = (class_vectors.shape[0], self.noise_dim)
        if self.noise == "uniform":
            z = torch.rand(shape, generator=rng, dtype=class_vectors.dtype)
        else:
            z = torch.randn(shape, generator=rng, dtype=class_vectors.dtype)
        h = self.drop(self.act(self.fc1(torch.cat([class_vectors, z], dim=1))))
        return self.fc2(h)


@dataclass
class GMMNResult:
    generator: TrainedGenerator
    history: list[dict[str, float]]


def train_gmmn(real_embeddings: Any, real_labels: Any, class_embeddings: Any, seen_idx: Any,
               unseen_idx: Any, config: GMMNConfig | None = None, seed: int | None = None, *,
               on_step: StepCallback | None = None, on_snapshot: SnapshotCallback | None = None,
               snapshot_every: int | None = None, classifier_data: Any = None,
               init_weight: Any = None, init_bias: Any = None) -> GMMNResult:
    """Train a GMMN generator with multi-bandwidth MMD on real seen embeddings.

    ``real_embeddings [N, D]`` are matched query embeddings of training images with their
    contiguous class indices ``real_labels [N]`` (seen classes only: an unseen label raises
    :class:`~zeroseg.platform.errors.LeakageError`). ``class_embeddings [C, d]`` cover the whole
    label space; ``unseen_idx`` are the classes the generator will later be asked for.
    ``classifier_data`` / ``init_weight`` / ``init_bias``: the interleaved classifier's data and
    start (see :func:`zeroseg.methods.pading.train_generator`). ``seed`` defaults to
    ``config.seed``.
    """
    config = config or GMMNConfig()
    seed = config.seed if seed is None else seed
    start = time.perf_counter()
    with seeded(seed) as rng:
        recipe = generator_recipe(real_embeddings, real_labels, class_embeddings, seen_idx,
                                  unseen_idx, config, classifier_data=classifier_data,
                                  init_weight=init_weight, init_bias=init_bias)
        history = run_generator_loop(recipe, rng, AdamStepper(recipe), on_step=on_step,
                                     on_snapshot=on_snapshot, snapshot_every=snapshot_every)
    log.info("GMMN trained: %d steps in %.1f s, final loss %.4f, MMD (sqrt, per class) %.4f",
             config.steps, time.perf_counter() - start, history[-1]["gen"],
             history[-1]["mmd"])
    return GMMNResult(recipe.trained(), history)


def generator_recipe(real_embeddings: Any, real_labels: Any, class_embeddings: Any,
                     seen_idx: Any, unseen_idx: Any, config: GMMNConfig, *,
                     classifier_data: Any = None, init_weight: Any = None,
                     init_bias: Any = None) -> GeneratorRecipe:
    """The GMMN network (initialised from the current RNG), its MMD step loss and the
    interleaved classifier."""
    config.validate()
    a = prepare_class_embeddings(class_embeddings, config.normalize_class_embeddings)
    roles = ClassRoles.build(len(a), seen_idx, unseen_idx)
    x, y = check_real_features(real_embeddings, real_labels, roles, allow_no_object=False,
                               names=("real_embeddings", "real_labels"))
    sigmas = resolve_sigmas(config.sigmas)
    net = GMMNGenerator(a.shape[1], x.shape[1], config.net)

    def loss(real: Tensor, labels: Tensor, rng: torch.Generator | None
             ) -> tuple[Tensor, dict[str, Tensor]]:
        fake = net(a[labels], rng)
        mmd = grouped_mmd_loss(fake, real, labels, sigmas, grouping=config.mmd_grouping,
                               kernel_scale=config.kernel_scale, form=config.mmd_form)
        return mmd, {"gen": mmd}

    head = interleaved_head(x, y, roles, config, x.shape[1], classifier_data, init_weight,
                            init_bias)
    return GeneratorRecipe(kind="gmmn", model=net, net=net, class_embeddings=a, x=x, y=y,
                           loss=loss, config=config, head=head)


# ------------------------------------------------------------------------------------------------
# Registry entry (PADing Table 1 row 3, "Baseline": ZS3Net's generator at object level)
# ------------------------------------------------------------------------------------------------


METHODS = [MethodSpec(name="gmmn", label="GMMN", config_class=GMMNConfig, fit=fit_generative,
                      generator_recipe=generator_recipe, features=("train", "train_all"),
                      order=30,
                      description="ZS3Net's GMMN generator (MMD) + classifier retraining")]
