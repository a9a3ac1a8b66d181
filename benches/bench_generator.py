"""Time PADing's generator training: synthetic features per second.

    python benches/bench_generator.py [--primitives 100 400 700] [--layers 1 3]
                                      [--losses full|mmd] [--dim 256] [--embed-dim 512]
                                      [--batch 128] [--steps 20] [--threads 2]
                                      [--clock wall|cpu]

For every (number of primitives, number of layers) pair, one :func:`train_generator` run on
random data shaped like the paper's COCO panoptic setting (133 classes, 119 seen / 14 unseen,
256-d query embeddings, 512-d CLIP class embeddings). Reported per row: milliseconds per step
and synthetic features per second (``batch`` seen fakes + one fake per unseen class per step
when alignment or disentanglement is on), after ``--warmup`` steps; the ratio column compares
with the paper's default (400 primitives, 3 layers). ``--losses mmd`` times the P-only row of
Table 1 (MMD only); ``full`` the whole of Eq. 7.

``--trial-config configs/pading_small.yaml`` times one full PADing trial (generator,
classifier retraining, inference and evaluation on both protocols) from that config's cached
segmenters and feature caches.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from zeroseg.methods.pading import PADingConfig, ablation_config, train_generator

NUM_CLASSES, NUM_UNSEEN = 133, 14
DEFAULT_ROW = (400, 3)


def full_trial_seconds(config_path: Path, method: str = "pading") -> dict[str, float]:
    """Wall time of one PADing trial from the cached stages of an experiment config (the
    segmenters and feature caches are built first, untimed, if missing): the validation
    protocol (generator, classifier, inference + evaluation of the configured tasks) and the
    test protocol, as a sweep trial runs them. Returns seconds per protocol and in total."""
    from zeroseg.platform.pipeline import Pipeline, load_pipeline_config
    from zeroseg.platform.pipeline.runner import run_one

    config = load_pipeline_config(config_path)
    pipeline = Pipeline(config, progress=lambda line: print(f"  {line}", file=sys.stderr))
    for protocol in config.evaluation.protocols:
        pipeline.context(protocol, "zero-shot")  # untimed: what every trial reuses
    started = time.perf_counter()
    outcome = run_one(pipeline, method, 0, record=False)
    out = {protocol: pr.seconds for protocol, pr in outcome.protocols.items()}
    out["total"] = time.perf_counter() - started
    return out


def measure(primitives: int, layers: int, args: argparse.Namespace) -> tuple[float, float]:
    """(milliseconds per step, synthetic features per second) after the warm-up steps."""
    g = np.random.default_rng(0)
    seen = np.arange(NUM_CLASSES - NUM_UNSEEN)
    unseen = np.arange(NUM_CLASSES - NUM_UNSEEN, NUM_CLASSES)
    labels = g.choice(seen, size=4096)
    real = g.normal(size=(4096, args.dim)).astype(np.float32)
    class_emb = g.normal(size=(NUM_CLASSES, args.embed_dim)).astype(np.float32)
    row = "PADing" if args.losses == "full" else "P-only"
    steps = args.warmup + args.steps
    cfg = ablation_config(row, PADingConfig(num_primitives=primitives, layers=layers,
                                            batch_size=args.batch, steps=steps, log_every=1))
    stamps: list[float] = []
    train_generator(real, labels, class_emb, seen, unseen, cfg, seed=0,
                    on_step=lambda step, metrics: stamps.append(args.clock_fn()))
    seconds = stamps[-1] - stamps[args.warmup - 1]
    per_step = args.batch + (NUM_UNSEEN * cfg.unseen_per_class if args.losses == "full" else 0)
    return 1000 * seconds / args.steps, per_step * args.steps / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--primitives", type=int, nargs="+", default=[100, 400, 700])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--losses", choices=["full", "mmd"], default="full")
    parser.add_argument("--dim", type=int, default=256, help="segmenter embedding width D")
    parser.add_argument("--embed-dim", type=int, default=512, help="class embedding width d")
    parser.add_argument("--batch", type=int, default=128, help="real embeddings per step")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: this process's CPU time (with --threads 1, a figure that "
                             "other processes on a shared machine disturb less)")
    parser.add_argument("--trial-config", type=Path, default=None,
                        help="time one full PADing trial on this experiment config's cached "
                             "stages (e.g. configs/pading_small.yaml)")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")
    torch.set_num_threads(args.threads)
    args.clock_fn = time.perf_counter if args.clock == "wall" else time.process_time
    if args.trial_config is not None:
        times = full_trial_seconds(args.trial_config)
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in times.items() if k != "total")
        print(f"one full PADing trial from the cache: {times['total']:.1f} s ({parts})")
        return 0

    print(f"cpus={os.cpu_count()} threads={args.threads} clock={args.clock} "
          f"losses={args.losses} D={args.dim} "
          f"d={args.embed_dim} batch={args.batch} steps={args.steps} (+{args.warmup} warm-up)")
    print(f"{'primitives':>10}{'layers':>8}{'ms/step':>10}{'features/s':>12}{'ratio':>8}")
    rows = [(p, n) for p in args.primitives for n in args.layers]
    results = {row: measure(*row, args) for row in rows}
    reference = results.get(DEFAULT_ROW)
    for (p, n), (ms, fps) in results.items():
        ratio = f"{fps / reference[1]:>8.2f}" if reference else f"{'-':>8}"
        print(f"{p:>10}{n:>8}{ms:>10.1f}{fps:>12.0f}{ratio}")
    if reference:
        print(f"ratio: features/s relative to the paper's default ({DEFAULT_ROW[0]} primitives, "
              f"{DEFAULT_ROW[1]} layers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
