"""The platform's generator trainer: a generative method's recipe, in one process or on Ray Train
+ DeepSpeed (``method_training.workers > 1``).

A generative method declares its recipe on its spec
(:attr:`~zeroseg.methods.registry.MethodSpec.generator_recipe`); :class:`GeneratorTrainer` --
what the runner hands the method as ``inputs.train_generator`` -- looks it up in the registry
by the method's name (an unknown method, or one without a recipe, is a one-line
:class:`~zeroseg.platform.errors.ConfigError`), builds it under the run's seed and runs
:func:`~zeroseg.methods.common.run_generator_loop` on it:

- ``workers: 1``: in this process with Adam (:class:`~zeroseg.methods.common.AdamStepper`);
- ``workers > 1``: :func:`generator_train_func` on every Ray Train worker, the parameter update
  done by a DeepSpeed engine (client ``torch.optim.Adam``, the recipe's lr schedule -- poly or
  milestones -- as its scheduler, ZeRO 0-2, fp32 or bf16 autocast). With the interleaved
  classifier (``classifier.schedule: interleaved``) every rank also trains a head on its own
  batches of the cache's queries (plain SGD, outside the engine: it is not averaged); rank 0's
  head is the one reported. Every rank builds the recipe under the same seed -- identical
  initial weights -- and reads the real features from the feature cache on the shared
  filesystem; rank ``r`` draws its batches from a sampler seeded by ``(seed, r)``, so ``W``
  workers see ``W`` different batches per step and DeepSpeed averages their gradients (an
  effective batch of ``W x batch_size``). Rank 0 reports the trained generator as a Ray Train
  checkpoint (``FailureConfig(method_training.max_failures)``).

Per-epoch snapshots work the same in both modes: the loop calls its snapshot hook every
``snapshot_every`` steps. On workers, rank 0 sends its logged steps and each snapshot (the
generator's and the interleaved head's weights) to a channel actor; this process rebuilds the
snapshot and calls the method's ``on_snapshot`` (per-epoch validation, a sweep's report to ASHA)
in the calling thread while the job runs in another, then sends the verdict back: all ranks
stop at that snapshot when the hook raised :class:`~zeroseg.methods.registry.StopTrial`, which is
raised here once the job has ended.

ZeRO-3 is refused: the step loss reads the module's parameters outside the engine's forward,
which ZeRO-3's partitioning does not allow; the generators are small enough that stages 0-2
suffice.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zeroseg.methods.common import (
    AdamStepper,
    SnapshotCallback,
    StepCallback,
    TrainedGenerator,
    generator_scheduler,
    run_generator_loop,
    seeded,
)
from zeroseg.methods.registry import StopTrial, get_method
from zeroseg.platform.config import from_dict, to_dict
from zeroseg.platform.errors import ConfigError, ZerosegError
from zeroseg.platform.features import FeatureCache
from zeroseg.platform.training import deepspeed_engine as dse
from zeroseg.platform.training.channel import (
    FitThread,
    epoch_verdict,
    finished_result,
    open_channel,
    serve,
)
from zeroseg.platform.training.config import MethodTrainingConfig
from zeroseg.platform.training.loop import seed_everything
from zeroseg.platform.training.ray_runner import ensure_ray

log = logging.getLogger(__name__)

GENERATOR_FILE = "generator.pt"
HEAD_FILE = "classifier.pt"

def generator_recipe_of(method: str) -> Callable[..., Any]:
    """The generator recipe ``method`` declares on its spec; a one-line error for a method
    that is unknown or declares none."""
    spec = get_method(method)
    if spec.generator_recipe is None:
        raise ConfigError(f"method {method!r} declares no generator recipe "
                          f"(MethodSpec.generator_recipe); it has no generator to train")
    return spec.generator_recipe


def _build(method: str, config: Any, features: Callable[[str], Any], class_embeddings: Any,
           seen_idx: Any, unseen_idx: Any, head_init: tuple[Any, Any]) -> Any:
    """The method's recipe on the cache's features (call under :func:`seeded`): the real
    features are the matched queries, the interleaved classifier's data every query."""
    build = generator_recipe_of(method)
    real, queries = features("train"), features("train_all")
    weight, bias = head_init
    return build(real.embeddings, real.class_index, class_embeddings, seen_idx, unseen_idx,
                 config, classifier_data=(queries.embeddings, queries.class_index),
                 init_weight=weight, init_bias=bias)


class EngineStepper:
    """``stepper.step(total)`` through a DeepSpeed engine (gradients all-reduced)."""

    def __init__(self, engine: Any):
        self.engine = engine

    def step(self, total: torch.Tensor) -> None:
        self.engine.backward(total)
        self.engine.step()

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])


def _states(recipe: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    net = {k: v.detach().cpu().clone() for k, v in recipe.net.state_dict().items()}
    head = ({k: v.detach().cpu().clone() for k, v in recipe.head.linear.state_dict().items()}
            if recipe.head is not None else None)
    return net, head


def _load_states(recipe: Any, net: dict[str, Any], head: dict[str, Any] | None,
                 where: str) -> TrainedGenerator:
    recipe.net.load_state_dict(net)
    if recipe.head is not None:
        if head is None:
            raise ZerosegError(f"{where}: distributed generator training reported no "
                               "interleaved classifier")
        recipe.head.linear.load_state_dict(head)
    recipe.model.eval()
    return recipe.trained()


@dataclass
class GeneratorTrainer:
    """``inputs.train_generator`` of a generative method: trains ``method``'s recipe on the
    protocol's training features, in this process or on ``training.workers`` workers."""

    method: str
    features: Callable[[str], Any]  # kind -> TrainFeatures (the runner's context)
    class_embeddings: Any
    seen_idx: Any
    unseen_idx: Any
    seed: int
    training: MethodTrainingConfig
    cache_path: Path | None  # the feature cache the workers read (workers > 1)
    work_dir: Path  # Ray Train's storage for the distributed job: WORK_DIR/ray

    def __call__(self, config: Any, *, on_step: StepCallback | None = None,
                 on_snapshot: SnapshotCallback | None = None, snapshot_every: int | None = None,
                 head_init: tuple[Any, Any] = (None, None)) -> TrainedGenerator:
        generator_recipe_of(self.method)  # fail before any work
        if self.training.distributed:
            return self._distributed(config, on_step, on_snapshot, snapshot_every, head_init)
        started = time.perf_counter()
        with seeded(self.seed) as rng:
            recipe = _build(self.method, config, self.features, self.class_embeddings,
                            self.seen_idx, self.unseen_idx, head_init)
            history = run_generator_loop(recipe, rng, AdamStepper(recipe), on_step=on_step,
                                         on_snapshot=on_snapshot, snapshot_every=snapshot_every)
        log.info("%s generator trained: %d steps in %.1f s, final loss %.4f, MMD (sqrt, per "
                 "class) %.4f", self.method, config.steps, time.perf_counter() - started,
                 history[-1]["total"], history[-1]["mmd"])
        return recipe.trained()

    # -- Ray Train + DeepSpeed ---------------------------------------------------------------
    def _distributed(self, config: Any, on_step: StepCallback | None,
                     on_snapshot: SnapshotCallback | None, snapshot_every: int | None,
                     head_init: tuple[Any, Any]) -> TrainedGenerator:
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        training = self.training
        training.validate()
        if self.cache_path is None:
            raise ConfigError("method_training.workers > 1: the generator's workers read the "
                              "training features from the feature cache, and there is none")
        ensure_ray(None)
        with seeded(self.seed):  # the same architecture on this process, for the snapshots
            recipe = _build(self.method, config, self.features, self.class_embeddings,
                            self.seen_idx, self.unseen_idx, head_init)
        channel = open_channel()
        loop = {"method": self.method, "config": to_dict(config), "cache": str(self.cache_path),
                "class_embeddings": self.class_embeddings, "seen_idx": self.seen_idx,
                "unseen_idx": self.unseen_idx, "seed": int(self.seed),
                "zero_stage": training.zero_stage, "precision": training.precision,
                "cpus_per_worker": training.cpus_per_worker, "use_gpu": training.use_gpu,
                "head_init": head_init, "snapshot_every": snapshot_every,
                "channel": channel}
        resources = training.worker_resources()
        storage = Path(self.work_dir) / "ray"
        trainer = TorchTrainer(
            generator_train_func, train_loop_config=loop,
            scaling_config=ScalingConfig(num_workers=training.workers, use_gpu=training.use_gpu,
                                         resources_per_worker=resources),
            run_config=RunConfig(name="generator", storage_path=str(storage),
                                 failure_config=FailureConfig(
                                     max_failures=training.max_failures)))
        job = FitThread(trainer)
        job.start()
        stopped = False

        def on_record(record: dict[str, Any]) -> bool:
            nonlocal stopped
            if record["event"] == "step" and on_step is not None:
                on_step(int(record["step"]), record["metrics"])
            elif record["event"] == "epoch" and on_snapshot is not None and not stopped:
                snapshot = _load_states(recipe, record["net"], record["head"], str(storage))
                try:
                    on_snapshot(int(record["key"]), snapshot)
                except StopTrial:
                    stopped = True
            return stopped

        serve(channel, job, on_record)
        result = finished_result(job, stopped, f"{storage}: distributed generator training",
                                 f"{storage}: distributed generator training reported no "
                                 "generator")
        with result.checkpoint.as_directory() as directory:
            net = torch.load(Path(directory) / GENERATOR_FILE, map_location="cpu",
                             weights_only=True)
            head_path = Path(directory) / HEAD_FILE
            head = (torch.load(head_path, map_location="cpu", weights_only=True)
                    if head_path.exists() else None)
        return _load_states(recipe, net, head, str(storage))


def generator_train_func(loop: dict[str, Any]) -> None:
    """Per Ray Train worker: build the method's recipe, train with DeepSpeed; rank 0 streams its
    logged steps and snapshots to the channel and reports the final net as a checkpoint."""
    import ray
    import ray.train

    ctx = ray.train.get_context()
    rank, world = int(ctx.get_world_rank()), int(ctx.get_world_size())
    torch.set_num_threads(max(1, int(round(loop["cpus_per_worker"]))))
    dse.select_accelerator(bool(loop["use_gpu"]))
    config_class = get_method(loop["method"]).config_class
    config = from_dict(config_class, loop["config"], where="method_training")
    cache = FeatureCache.open(loop["cache"])
    features = {kind: cache.train_features(matched_only=kind == "train")
                for kind in ("train", "train_all")}
    channel = loop["channel"]
    started = time.perf_counter()
    try:
        with seeded(int(loop["seed"])):
            recipe = _build(loop["method"], config, features.__getitem__,
                            loop["class_embeddings"], loop["seen_idx"], loop["unseen_idx"],
                            tuple(loop["head_init"]))
        optimizer = torch.optim.Adam(recipe.model.parameters(), lr=config.lr)
        scheduler = generator_scheduler(optimizer, recipe)
        engine = dse.initialize_engine(
            recipe.model, optimizer, scheduler,
            dse.engine_config(config.batch_size, int(loop["zero_stage"]), 0.0,
                              loop["precision"]), use_gpu=bool(loop["use_gpu"]))
        seed_everything(int(loop["seed"]), rank)
        rng = torch.Generator().manual_seed(int(loop["seed"]) * 1000 + rank)

        def on_step(step: int, metrics: dict[str, float]) -> None:
            if rank == 0:
                channel.push.remote({"event": "step", "step": step, "metrics": metrics})

        def on_snapshot(step: int, generator: TrainedGenerator) -> None:
            net, head = _states(recipe) if rank == 0 else (None, None)
            if epoch_verdict(channel, rank, {"event": "epoch", "key": step, "net": net,
                                             "head": head}):
                raise StopTrial()

        try:
            history = run_generator_loop(recipe, rng, EngineStepper(engine), on_step=on_step,
                                         on_snapshot=on_snapshot,
                                         snapshot_every=loop["snapshot_every"])
        except StopTrial:
            ray.train.report({"stopped": True, "world_size": world,
                              "seconds": time.perf_counter() - started})
            return
        directory = Path(tempfile.mkdtemp(prefix=f"zeroseg-gen-r{rank}-"))
        try:
            if rank == 0:
                net, head = _states(recipe)
                torch.save(net, directory / GENERATOR_FILE)
                if head is not None:
                    torch.save(head, directory / HEAD_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(str(directory))
            else:
                checkpoint = None
            ray.train.report({"loss": history[-1]["total"], "world_size": world,
                              "seconds": time.perf_counter() - started},
                             checkpoint=checkpoint)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    finally:
        dse.destroy_process_group()
        dse.restore_env()
