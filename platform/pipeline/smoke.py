"""``zeroseg run CONFIG --smoke``: every stage of any config at a minute's size.

A multi-day config (an R50 segmenter on COCO at 512 px, 90k steps) is checked end to end in a
minute: the same stages, the same code paths (Ray Train + DeepSpeed, the leakage filter, the
feature cache, each method, inference at original sizes, the store), shrunk:

=====================  ============================================================
segmenter              4 steps of 2 images per worker, at most 1 worker, 1 CPU each; images of
                       at most 128 px (crop) and shortest edge 128 / longest 224 at inference
data                   the first 8 training images (after the leakage filter) and 8
                       evaluation images
methods                every ``steps`` / ``epochs`` knob (generator, classifier, projection, a
                       model method's epochs) at most 5; a model method's image size knobs
                       (``min_size`` / ``max_size``, ZSI's) at most 128 / 224; its Ray Train
                       job (``method_training``) at most 1 worker of 1 CPU
seeds                  the first one only
devices                a GPU config on a machine without CUDA runs on the CPU (fp32)
work_dir / store       ``WORK_DIR/smoke`` and its own ``results.db``: nothing real is touched
=====================  ============================================================

The architecture is kept (an R50 config smokes an R50), so a shape or weight-file problem
shows. Its runs are labelled everywhere: the config name ends in ``-smoke`` and the stored
identity has ``smoke: true`` (a smoke run is never reused as a real one, nor the reverse).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from zeroseg.platform.config import from_dict, set_dotted, to_dict
from zeroseg.platform.pipeline.config import PipelineConfig

SMOKE_STEPS = 4
SMOKE_BATCH = 2
SMOKE_IMAGES = 8
SMOKE_METHOD_STEPS = 5
SMOKE_CROP = 128
SMOKE_TEST_SIZE = 128
SMOKE_MAX_SIZE = 224
STEP_KNOBS = ("steps", "epochs")
#: image-size knobs of a method config (a model method's own resize) -> their smoke bound
SIZE_KNOBS = {"min_size": SMOKE_TEST_SIZE, "max_size": SMOKE_MAX_SIZE}


def _shrunk_knobs(config: Any, prefix: str = "") -> dict[str, int]:
    """Dotted paths of the step-count and image-size knobs of a method config above their
    smoke size, with that size (a size left to a recipe, ``None``, is read from it)."""
    out: dict[str, int] = {}
    if not dataclasses.is_dataclass(config):
        return out
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_shrunk_knobs(value, f"{prefix}{f.name}."))
        elif f.name in STEP_KNOBS and isinstance(value, int) and value > SMOKE_METHOD_STEPS:
            out[f"{prefix}{f.name}"] = SMOKE_METHOD_STEPS
        elif f.name in SIZE_KNOBS:
            if value is None and callable(getattr(config, "resolved", None)):
                value = config.resolved(f.name)  # left to the method's recipe
            if isinstance(value, int) and value > SIZE_KNOBS[f.name]:
                out[f"{prefix}{f.name}"] = SIZE_KNOBS[f.name]
    return out


def smoke_config(config: PipelineConfig) -> PipelineConfig:
    """``config`` at a minute's size (see the module docstring); validated like any config."""
    seg = config.segmenter
    resolved = seg.model.resolved()
    model = dataclasses.replace(seg.model, image_size=min(seg.model.image_size, SMOKE_CROP))
    if resolved.resize == "shortest-edge":
        model = dataclasses.replace(
            model, test_size=min(int(resolved.test_size or model.image_size), SMOKE_TEST_SIZE),
            max_size=min(seg.model.max_size, SMOKE_MAX_SIZE))
    import torch

    distributed = dataclasses.replace(seg.distributed, workers=min(seg.distributed.workers, 1),
                                      cpus_per_worker=1)
    features = dataclasses.replace(config.features, batch_size=min(config.features.batch_size, 4),
                                   shard_size=min(config.features.shard_size, SMOKE_IMAGES))
    method_training = dataclasses.replace(
        config.method_training, workers=min(config.method_training.workers, 1),
        cpus_per_worker=1)
    if not torch.cuda.is_available():  # a GPU config smoked on a CPU machine: on the CPU
        if distributed.use_gpu:
            distributed = dataclasses.replace(distributed, use_gpu=False, precision="fp32")
        if method_training.use_gpu:
            method_training = dataclasses.replace(method_training, use_gpu=False,
                                                  precision="fp32")
        features = dataclasses.replace(features, device="cpu")
    segmenter = dataclasses.replace(
        seg, model=model,
        optim=dataclasses.replace(seg.optim, warmup_steps=0),
        train=dataclasses.replace(seg.train, steps=SMOKE_STEPS,
                                  batch_size=min(seg.train.batch_size, SMOKE_BATCH),
                                  checkpoint_every=SMOKE_STEPS, log_every=1),
        distributed=distributed)
    images = min(config.data.max_images or SMOKE_IMAGES, SMOKE_IMAGES)
    params: dict[str, dict[str, Any]] = {}
    for name in sorted(set(config.methods) | set(config.params)):
        method_config = config.method_config(name)
        if method_config is None:  # a method without knobs (seen-only, supervised)
            continue
        knobs = to_dict(method_config)
        for dotted, value in _shrunk_knobs(method_config).items():
            set_dotted(knobs, dotted, value)
        params[name] = knobs
    work = config.work_dir / "smoke"

    smoke = dataclasses.replace(
        config, name=f"{config.name or 'run'}-smoke", seeds=config.seeds[:1],
        data=dataclasses.replace(config.data, max_images=images), segmenter=segmenter,
        features=features, method_training=method_training,
        params=params, work_dir=work, store=str(work / "results.db"), smoke=True)
    return from_dict(PipelineConfig, to_dict(smoke), where="--smoke")  # validated throughout


def describe(config: PipelineConfig) -> str:
    """One line for the terminal: what the smoke run is."""
    return (f"SMOKE RUN of {config.name.removesuffix('-smoke')}: every stage at a minute's size "
            f"({SMOKE_STEPS} segmenter steps, {config.data.max_images} images, method steps <= "
            f"{SMOKE_METHOD_STEPS}); its numbers mean nothing; work dir {config.work_dir}, "
            f"store {config.store}")
