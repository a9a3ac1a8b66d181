"""DeepSpeed as the training engine (recipes measured in shared/STACK.md).

- The accelerator is chosen before DeepSpeed is imported: ``DS_ACCELERATOR=cpu`` unless a GPU is
  used (CPU: gloo; GPU: NCCL).
- Inside a Ray Train worker torch.distributed is already initialised by Ray and DeepSpeed reuses
  that process group. Outside a launcher (Ray Train's local mode, a debugger) a single process
  gets ``RANK=0 WORLD_SIZE=1 ...`` and a free port, or DeepSpeed would look for MPI.
- The optimizer is the client's ``torch.optim.AdamW`` (DeepSpeed's compiled CPU Adam costs a
  33 s, 4 GB build); ZeRO stage, micro-batch and gradient clipping come from our config.
- ``precision: bf16`` is DeepSpeed's ``torch_autocast`` mode: fp32 master weights, the forward
  pass under ``torch.autocast(bfloat16)`` and bf16 gradient communication for Linear/Conv
  weights. DeepSpeed's ``bf16`` mode (casting the module's weights to bf16) does not run
  transformers' Mask2Former: its deformable attention's ``grid_sample`` receives fp32 offsets.
- DeepSpeed's CPU shared-memory all-reduce extension is not built: only its inference all-reduce
  (tensor-parallel inference) uses it, ZeRO's collectives go through torch.distributed, and the
  JIT build costs about 70 s on a fresh machine before the first step (see :func:`_skip_shm_comm`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

import torch

from zeroseg.platform.training.config import SegmenterTrainConfig

log = logging.getLogger(__name__)


def select_accelerator(use_gpu: bool) -> str:
    """Set ``DS_ACCELERATOR`` for this process (before ``import deepspeed``) and return it."""
    wanted = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    os.environ.setdefault("DS_ACCELERATOR", wanted)
    return os.environ["DS_ACCELERATOR"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_WORLD_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
               "MASTER_PORT")
_defined_here: dict[str, str | None] = {}  # env values before ensure_single_process_env


def ensure_single_process_env() -> None:
    """Without a process group or a launcher's environment, describe a one-process world
    (fresh port); :func:`restore_env` puts the environment back afterwards."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    if "WORLD_SIZE" in os.environ and not _defined_here:
        return  # a launcher (torchrun, Ray) defined the world
    values = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    for key in _WORLD_KEYS:
        _defined_here.setdefault(key, os.environ.get(key))
        os.environ[key] = values[key]


def restore_env() -> None:
    """Undo :func:`ensure_single_process_env` (a later run in this process starts clean)."""
    for key, value in _defined_here.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _defined_here.clear()


def engine_config(micro_batch: int, zero_stage: int, grad_clip: float,
                  precision: str) -> dict[str, Any]:
    """A DeepSpeed config dict: micro-batch, ZeRO stage, clipping, fp32 or bf16 autocast."""
    zero: dict[str, Any] = {"stage": zero_stage}
    if zero_stage == 3:
        # Export gathers the full weights on rank 0 (GatheredParameters), nothing else needed.
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "zero_optimization": zero,
        "gradient_clipping": grad_clip,
        "steps_per_print": 1 << 30,  # our own progress reporting
        "wall_clock_breakdown": False,
    }
    if precision == "bf16":
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    return ds


def deepspeed_config(config: SegmenterTrainConfig) -> dict[str, Any]:
    """The DeepSpeed config dict for one segmenter training run."""
    return engine_config(config.train.batch_size, config.distributed.zero_stage,
                         config.optim.grad_clip, config.distributed.precision)


def initialize_engine(model: torch.nn.Module, optimizer: Any, scheduler: Any,
                      ds_config: dict[str, Any], *, use_gpu: bool) -> Any:
    """``deepspeed.initialize`` with a client optimizer and scheduler (stepped by DeepSpeed
    with the optimizer, kept in its checkpoints), over gloo on CPU or NCCL on GPU."""
    select_accelerator(use_gpu)
    ensure_single_process_env()
    import deepspeed

    backend = "nccl" if os.environ["DS_ACCELERATOR"] == "cuda" else "gloo"
    _skip_shm_comm()
    deepspeed.init_distributed(dist_backend=backend)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=model.parameters(), optimizer=optimizer,
        lr_scheduler=scheduler, config=ds_config)
    return engine


def _skip_shm_comm() -> None:
    """Mark DeepSpeed's ``deepspeed_shm_comm`` op incompatible in this process, so creating the
    communication backend does not JIT-compile it (``~/.cache/torch_extensions``, ~70 s on
    first use). The op serves ``inference_all_reduce`` only; training never calls it."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def build_engine(model: torch.nn.Module, config: SegmenterTrainConfig) -> Any:
    """The segmenter's engine: client AdamW, warm-up + poly schedule (:func:`lr_factor`)."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.optim.lr, betas=tuple(config.optim.betas),
        weight_decay=config.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config))
    return initialize_engine(model, optimizer, scheduler, deepspeed_config(config),
                             use_gpu=config.distributed.use_gpu)


def lr_factor(step: int, config: SegmenterTrainConfig) -> float:
    """Multiplier of optim.lr at ``step`` (0-based): linear warm-up, then constant or poly
    decay to 0 at train.steps (Mask2Former's semantic schedule)."""
    o = config.optim
    factor = 1.0
    if o.warmup_steps and step < o.warmup_steps:
        factor = (step + 1) / o.warmup_steps
    if o.schedule == "poly":
        factor *= max(0.0, 1.0 - step / config.train.steps) ** o.poly_power
    return factor


@contextlib.contextmanager
def _gathered(engine: Any) -> Iterator[None]:
    """Full parameters on every rank for the duration of the block (ZeRO-3 partitions them)."""
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        params = list(engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            yield
    else:
        yield


def full_state_dict(engine: Any) -> dict[str, torch.Tensor] | None:
    """The consolidated fp32 weights on CPU, on rank 0 (``None`` elsewhere).

    Collective under ZeRO-3: every rank must call it. Under ZeRO 0-2 every rank holds the full
    fp32 module weights after each step; under ZeRO-3 they are gathered for the copy.
    """
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    with _gathered(engine):
        if rank != 0:
            return None
        return {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype)
                .clone() for k, v in engine.module.state_dict().items()}


def destroy_process_group() -> None:
    """End the process group when done (an occasional rank abort at exit otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            import deepspeed.comm as ds_comm

            ds_comm.destroy_process_group()
        if dist.is_initialized():
            dist.destroy_process_group()
