"""Generator training (GMMN, PADing) on Ray Train + DeepSpeed (``method_training.workers > 1``).

The same :func:`~zeroseg.methods.common.run_generator_loop` as in one process, with the
parameter update done by a DeepSpeed engine (client ``torch.optim.Adam``, the recipe's lr
schedule -- poly or milestones -- as its scheduler, ZeRO 0-2, fp32 or bf16 autocast) on every
Ray Train worker. With the interleaved classifier (``classifier.schedule: interleaved``) every
rank also trains a head on its own batches of the cache's queries (plain SGD, outside the
engine: it is not averaged); rank 0's head is the one reported. Every rank builds the
recipe under the same seed -- identical initial weights -- and reads the real features from the
feature cache on the shared filesystem; rank ``r`` draws its batches from a sampler seeded by
``(seed, r)``, so ``W`` workers see ``W`` different batches per step and DeepSpeed averages
their gradients (an effective batch of ``W x batch_size``). Rank 0 reports the trained
generator as a Ray Train checkpoint; the caller retrains the classifier from it in its own
process (a linear head: seconds).

Per-epoch snapshots are not available in this mode: a sweep trial reports its objective once,
at the end (ASHA then acts on whole trials). ZeRO-3 is refused: the step loss reads the module's
parameters outside the engine's forward, which ZeRO-3's partitioning does not allow; the
generators are small enough that stages 0-2 suffice.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from zeroseg.platform.errors import ConfigError, ZerosegError

log = logging.getLogger(__name__)

GENERATOR_FILE = "generator.pt"
HEAD_FILE = "classifier.pt"


@dataclass
class MethodTrainingConfig:
    """Where the method stages train. ``workers: 1`` (default): in the calling process;
    ``workers > 1``: a Ray Train job of that many workers with DeepSpeed (generators only)."""

    workers: int = 1
    zero_stage: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"
    cpus_per_worker: float = 1.0
    use_gpu: bool = False

    def validate(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"method_training.workers must be >= 1, got {self.workers}")
        if self.zero_stage not in (0, 1, 2):
            raise ConfigError(f"method_training.zero_stage must be 0, 1 or 2 (generators are "
                              f"small; ZeRO-3 is not supported), got {self.zero_stage}")
        if not self.cpus_per_worker > 0:
            raise ConfigError(f"method_training.cpus_per_worker must be > 0, got "
                              f"{self.cpus_per_worker}")

    @property
    def distributed(self) -> bool:
        return self.workers > 1


class EngineStepper:
    """``stepper.step(total)`` through a DeepSpeed engine (gradients all-reduced)."""

    def __init__(self, engine: Any):
        self.engine = engine

    def step(self, total: torch.Tensor) -> None:
        self.engine.backward(total)
        self.engine.step()

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])


def _recipe_builder(kind: str) -> Any:
    if kind == "gmmn":
        from zeroseg.methods.gmmn import GMMNConfig, generator_recipe

        return GMMNConfig, generator_recipe
    from zeroseg.methods.pading import PADingConfig, generator_recipe

    return PADingConfig, generator_recipe


def generator_train_func(loop: dict[str, Any]) -> dict[str, Any]:
    """Per Ray Train worker: build the recipe, train with DeepSpeed, rank 0 reports the net."""
    import ray.train

    from zeroseg.methods.common import generator_scheduler, run_generator_loop, seeded
    from zeroseg.platform.config import from_dict
    from zeroseg.platform.features import FeatureCache
    from zeroseg.platform.training import deepspeed_engine as dse
    from zeroseg.platform.training.loop import seed_everything

    ctx = ray.train.get_context()
    rank, world = int(ctx.get_world_rank()), int(ctx.get_world_size())
    torch.set_num_threads(max(1, int(round(loop["cpus_per_worker"]))))
    dse.select_accelerator(bool(loop["use_gpu"]))
    config_class, build = _recipe_builder(loop["kind"])
    config = from_dict(config_class, loop["config"], where="method_training")
    cache = FeatureCache.open(loop["cache"])
    features = cache.train_features(matched_only=True)
    started = time.perf_counter()
    try:
        with seeded(int(loop["seed"])):
            recipe = build(features.embeddings, features.class_index, loop["class_embeddings"],
                           loop["seen_idx"], loop["unseen_idx"], config,
                           **_head_inputs(config, cache, loop.get("head_init")))
        optimizer = torch.optim.Adam(recipe.model.parameters(), lr=config.lr)
        scheduler = generator_scheduler(optimizer, recipe)
        engine = dse.initialize_engine(
            recipe.model, optimizer, scheduler,
            dse.engine_config(config.batch_size, int(loop["zero_stage"]), 0.0,
                              loop["precision"]), use_gpu=bool(loop["use_gpu"]))
        seed_everything(int(loop["seed"]), rank)
        rng = torch.Generator().manual_seed(int(loop["seed"]) * 1000 + rank)
        history = run_generator_loop(recipe, rng, EngineStepper(engine))
        directory = Path(tempfile.mkdtemp(prefix=f"zeroseg-gen-r{rank}-"))
        try:
            if rank == 0:
                state = {k: v.detach().cpu() for k, v in recipe.net.state_dict().items()}
                torch.save(state, directory / GENERATOR_FILE)
                if recipe.head is not None:
                    torch.save({k: v.detach().cpu()
                                for k, v in recipe.head.linear.state_dict().items()},
                               directory / HEAD_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(str(directory))
            else:
                checkpoint = None
            ray.train.report({"loss": history[-1]["total"], "world_size": world,
                              "seconds": time.perf_counter() - started},
                             checkpoint=checkpoint)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return {"history": history}
    finally:
        dse.destroy_process_group()
        dse.restore_env()


def _head_inputs(config: Any, cache: Any, head_init: Any) -> dict[str, Any]:
    """The interleaved classifier's data (every query of the cache) and start, as the recipe
    builders take them; nothing with the sequential schedule."""
    if config.classifier.schedule != "interleaved":
        return {}
    queries = cache.train_features(matched_only=False)
    weight, bias = head_init if head_init is not None else (None, None)
    return {"classifier_data": (queries.embeddings, queries.class_index),
            "init_weight": weight, "init_bias": bias}


def train_generator_distributed(kind: str, config: Any, inputs: Any, training: Any,
                                cache_path: str | Path, *, head_init: Any = None
                                ) -> tuple[Any, list[dict[str, float]]]:
    """Train ``kind``'s generator on ``training.workers`` Ray Train workers; returns the
    :class:`~zeroseg.methods.common.TrainedGenerator` (loaded on this process, with rank 0's
    interleaved classifier) and the history the run reported. ``head_init``: ``(weight, bias)``
    the interleaved classifier starts from (``None``: ``nn.Linear``'s initialisation)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from zeroseg.methods.common import seeded
    from zeroseg.platform.config import to_dict
    from zeroseg.platform.training.ray_runner import ensure_ray

    training.validate()
    ensure_ray(None)
    _, build = _recipe_builder(kind)
    loop = {"kind": kind, "config": to_dict(config), "cache": str(cache_path),
            "class_embeddings": inputs.class_embeddings, "seen_idx": inputs.seen_idx,
            "unseen_idx": inputs.unseen_idx, "seed": int(inputs.seed),
            "zero_stage": training.zero_stage, "precision": training.precision,
            "cpus_per_worker": training.cpus_per_worker, "use_gpu": training.use_gpu,
            "head_init": head_init}
    resources = {"CPU": training.cpus_per_worker}
    if training.use_gpu:
        resources["GPU"] = 1
    storage = Path(inputs.work_dir) / "ray"
    trainer = TorchTrainer(
        generator_train_func, train_loop_config=loop,
        scaling_config=ScalingConfig(num_workers=training.workers, use_gpu=training.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name="generator", storage_path=str(storage)))
    try:
        result = trainer.fit()
    except Exception as exc:
        first = " ".join(str(exc).strip().splitlines()[:2])[:300]
        raise ZerosegError(f"{storage}: distributed generator training failed "
                           f"({type(exc).__name__}: {first})") from exc
    if result.checkpoint is None:
        raise ZerosegError(f"{storage}: distributed generator training reported no generator")
    with result.checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / GENERATOR_FILE, map_location="cpu",
                           weights_only=True)
        head_path = Path(directory) / HEAD_FILE
        head_state = (torch.load(head_path, map_location="cpu", weights_only=True)
                      if head_path.exists() else None)
    from zeroseg.platform.features import FeatureCache

    cache = FeatureCache.open(cache_path)
    features = cache.train_features(matched_only=True)
    with seeded(int(inputs.seed)):  # the same architecture, then the trained weights
        recipe = build(features.embeddings, features.class_index, inputs.class_embeddings,
                       inputs.seen_idx, inputs.unseen_idx, config,
                       **_head_inputs(config, cache, head_init))
    recipe.net.load_state_dict(state)
    recipe.net.eval()
    if recipe.head is not None:
        if head_state is None:
            raise ZerosegError(f"{storage}: distributed generator training reported no "
                               "interleaved classifier")
        recipe.head.linear.load_state_dict(head_state)
    history = [{"step": float(config.steps), "total": float(result.metrics.get("loss", 0.0))}]
    return recipe.trained(), history

