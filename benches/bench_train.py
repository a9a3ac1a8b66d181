"""Benchmark segmenter training on Ray Train + DeepSpeed: throughput and memory.

For every combination of Ray workers (default 1 and 2) and ZeRO stage (default 0 and 2) it runs
``zeroseg.platform.training.run_training`` on the synthetic benchmark (no evaluation, one
checkpoint at the end) and prints:

- steady-state training throughput in images/s (all workers together), measured from rank 0's
  per-step records after ``--warmup`` steps, so start-up, the first steps and the final
  checkpoint are excluded;
- peak resident memory of each worker process (MiB; ``getrusage``), and peak GPU memory
  allocated on ``--device cuda``;
- the ratios 2 workers / 1 worker (per ZeRO stage) and ZeRO 2 / ZeRO 0 (per worker count);
- on CPU, the FLOP bound: forward + backward FLOPs of one training image
  (``torch.utils.flop_counter``) against this machine's fp32 matmul peak (2048^2 ``torch.mm``,
  one thread) times the CPUs the workers use, and each row's images/s as a fraction of it.

The batch is the same **per worker** (``--batch-size``), so N workers process N times as many
images per step: the 2w/1w ratio is the data-parallel speed-up, 2.0 at best.

On a CPU-only machine (default): ``--size tiny`` at 128 px, gloo. On a GPU machine, e.g.:
``python benches/bench_train.py --device cuda --size r50 --image-size 512 --data-size large``.
Timings are only comparable on an otherwise idle machine.

Usage: python benches/bench_train.py [--workers 1 2] [--zero 0 2] [--steps 12] [--warmup 3]
       [--batch-size 4] [--size tiny] [--image-size 128] [--data-size tiny] [--data DIR]
       [--precision fp32] [--device cpu] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def steady_throughput(records: list[dict[str, Any]], warmup: int, batch: int) -> float:
    """Images/s over rank 0's records after ``warmup`` steps (the last attempt only). Each
    "log" record covers the steps since the previous record and reports their images/s."""
    starts = [i for i, r in enumerate(records) if r.get("event") == "start"]
    first = starts[-1] if starts else 0
    previous = int(records[first].get("step", 0)) if starts else 0
    images = seconds = 0.0
    for r in records[first:]:
        if r.get("event") != "log":
            continue
        window = (r["step"] - previous) * r["world_size"] * batch
        previous = r["step"]
        if r["step"] <= warmup or r["images_per_s"] <= 0:
            continue
        images += window
        seconds += window / r["images_per_s"]
    return images / seconds if seconds else float("nan")


def run_one(root: Path, run_dir: Path, args: argparse.Namespace, workers: int, zero: int
            ) -> dict[str, Any]:
    from zeroseg.platform.training.config import train_config_from_dict
    from zeroseg.platform.training.ray_runner import run_training

    model: dict[str, Any] = {"size": args.size, "image_size": args.image_size}
    config = train_config_from_dict({
        "data": {"root": str(root), "num_workers": args.data_workers},
        "model": model,
        "train": {"steps": args.steps, "batch_size": args.batch_size, "seed": 0,
                  "checkpoint_every": args.steps, "log_every": 1, "eval": False},
        "distributed": {"workers": workers, "zero_stage": zero, "precision": args.precision,
                        "use_gpu": args.device == "cuda", "cpus_per_worker": args.cpus_per_worker},
        "output": {"run_dir": str(run_dir)},
    }, where="bench_train")
    t0 = time.perf_counter()
    result = run_training(config)
    wall = time.perf_counter() - t0
    summary = result.summary
    return {
        "workers": workers, "zero_stage": zero,
        "global_batch": workers * args.batch_size,
        "images_per_s": steady_throughput(result.log, args.warmup, args.batch_size),
        "peak_rss_mib": summary.get("peak_rss_mib", []),
        "peak_gpu_mib": summary.get("peak_gpu_mib"),
        "final_loss": summary.get("loss"),
        "wall_s": wall,
    }


def flop_bound(args: argparse.Namespace, cpus: int) -> tuple[float, float, float]:
    """(GFLOP per training image, single-thread matmul GFLOP/s, images/s bound on ``cpus``)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from zeroseg.methods.segmenter import Segmenter, SegmenterConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = Segmenter(SegmenterConfig(size=args.size, image_size=args.image_size), 25)
        b, s = args.batch_size, args.image_size
        x = torch.randn(b, 3, s, s)
        masks = [(torch.rand(3, s, s) > 0.5).float() for _ in range(b)]
        labels = [torch.tensor([0, 1, 2]) for _ in range(b)]
        with FlopCounterMode(display=False) as counter:
            model(x, masks, labels).loss.backward()
        per_image = counter.get_total_flops() / b
        a = torch.randn(2048, 2048)
        a @ a
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - t)
        peak = 2 * 2048**3 / best
    finally:
        torch.set_num_threads(threads)
    return per_image / 1e9, peak / 1e9, cpus * peak / per_image


def ensure_data(args: argparse.Namespace) -> Path:
    if args.data is not None and (args.data / "annotations" / "classes.json").is_file():
        return args.data
    from zeroseg.platform.data.synthetic.generate import generate

    out = args.data or Path(tempfile.mkdtemp(prefix="zeroseg-bench-train-")) / args.data_size
    t0 = time.perf_counter()
    generate(args.data_size, 0, out)
    print(f"generated synthetic {args.data_size} in {time.perf_counter() - t0:.1f} s -> {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--zero", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=4, help="images per worker and step")
    parser.add_argument("--size", default="tiny", choices=["tiny", "r50", "swin-t"],
                        help="segmenter size")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--data-size", default="tiny", choices=["tiny", "small", "medium", "large"])
    parser.add_argument("--data", type=Path, default=None, help="reuse this synthetic dataset")
    parser.add_argument("--data-workers", type=int, default=0, help="DataLoader processes")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")

    from zeroseg.platform.training.ray_runner import ensure_ray

    root = ensure_data(args)
    ensure_ray(None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="zeroseg-bench-runs-") as tmp:
        for zero in args.zero:
            for workers in args.workers:
                row = run_one(root, Path(tmp) / f"w{workers}-z{zero}", args, workers, zero)
                rows.append(row)
                print(f"workers {workers} ZeRO {zero}: {row['images_per_s']:.2f} images/s, "
                      f"peak RSS/worker {row['peak_rss_mib']} MiB ({row['wall_s']:.0f} s wall)",
                      flush=True)

    print(f"\nsegmenter {args.size} @ {args.image_size} px, {args.precision}, {args.device}, "
          f"{args.batch_size} images per worker and step, {args.steps} steps "
          f"({args.warmup} warm-up), synthetic {args.data_size}")
    head = f"{'workers':>7} {'ZeRO':>4} {'batch':>5} {'images/s':>9} {'RSS/worker MiB':>15}"
    gpu = any(r["peak_gpu_mib"] for r in rows)
    print(head + (f" {'GPU/worker MiB':>15}" if gpu else ""))
    for r in rows:
        line = (f"{r['workers']:>7} {r['zero_stage']:>4} {r['global_batch']:>5} "
                f"{r['images_per_s']:>9.2f} {max(r['peak_rss_mib'] or [0]):>15.0f}")
        if gpu:
            line += f" {max(r['peak_gpu_mib'] or [0]):>15.0f}"
        print(line)

    def find(workers: int, zero: int) -> dict[str, Any] | None:
        return next((r for r in rows if r["workers"] == workers and r["zero_stage"] == zero),
                    None)

    if args.device == "cpu":
        cpus = int(round(max(args.workers) * args.cpus_per_worker))
        gflop, peak, bound = flop_bound(args, cpus)
        print(f"\nFLOP bound: {gflop:.3f} GFLOP per training image (forward + backward), "
              f"matmul peak {peak:.0f} GFLOP/s per thread -> {bound:.0f} images/s on {cpus} "
              f"CPUs")
        for r in rows:
            used = r["workers"] * args.cpus_per_worker
            print(f"  {r['workers']} worker(s) ZeRO {r['zero_stage']}: {r['images_per_s']:.1f} "
                  f"images/s = 1/{bound * used / cpus / r['images_per_s']:.2f} of the bound "
                  f"for {used:g} CPU(s)")

    print("\nratios")
    lo, hi = min(args.workers), max(args.workers)
    for zero in args.zero:
        a, b = find(lo, zero), find(hi, zero)
        if a and b and lo != hi:
            speedup = b["images_per_s"] / a["images_per_s"]
            print(f"  ZeRO {zero}: {hi}w/{lo}w throughput {speedup:.2f}"
                  f"  (ideal {hi / lo:.1f}), peak RSS/worker "
                  f"{max(b['peak_rss_mib']) / max(a['peak_rss_mib']):.2f}")
    z0, z1 = min(args.zero), max(args.zero)
    for workers in args.workers:
        a, b = find(workers, z0), find(workers, z1)
        if a and b and z0 != z1:
            text = (f"  {workers} worker(s): Z{z1}/Z{z0} throughput "
                    f"{b['images_per_s'] / a['images_per_s']:.2f}, peak RSS/worker "
                    f"{max(b['peak_rss_mib']) / max(a['peak_rss_mib']):.2f}")
            if gpu and a["peak_gpu_mib"] and b["peak_gpu_mib"]:
                text += f", peak GPU/worker {max(b['peak_gpu_mib']) / max(a['peak_gpu_mib']):.2f}"
            print(text)
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                        "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
