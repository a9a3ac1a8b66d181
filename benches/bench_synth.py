"""Time the synthetic benchmark generator.

    python benches/bench_synth.py --sizes small medium [--workers N] [--seed S]

For each size: images generated, seconds, images per second and the output size on disk. The
target for ``small`` is under 60 s on 2 cores; the ratio column compares against it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from zeroseg.platform.data.synthetic.generate import SIZES, generate

#: Budget for the ``small`` size on 2 cores (seconds), from the generator's specification.
SMALL_BUDGET_2_CORES = 60.0


def _disk_mb(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["small"], choices=list(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: all CPUs)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep the outputs under this folder instead of a temporary one")
    args = parser.parse_args(argv)

    workers = args.workers or os.cpu_count() or 1
    base = args.keep or Path(tempfile.mkdtemp(prefix="bench_synth."))
    print(f"cpus={os.cpu_count()} workers={workers} seed={args.seed}")
    print(f"{'size':<8}{'images':>8}{'px':>6}{'seconds':>10}{'images/s':>10}{'MB':>8}"
          f"{'ms/img/worker':>15}")
    try:
        for size in args.sizes:
            out = base / size
            summary = generate(size, args.seed, out, workers=workers, overwrite=True)
            n = sum(s["images"] for s in summary["splits"].values())
            sec = summary["seconds"]
            print(f"{size:<8}{n:>8}{summary['image_size']:>6}{sec:>10.2f}{n / sec:>10.1f}"
                  f"{_disk_mb(out):>8.1f}{1000 * sec * workers / n:>15.2f}")
            if size == "small":
                # Expected time on 2 cores, assuming work scales with the worker count.
                on_two = sec * min(workers, os.cpu_count() or 1) / 2
                print(f"  small on 2 cores ~ {on_two:.1f} s = "
                      f"{on_two / SMALL_BUDGET_2_CORES:.2f} x the {SMALL_BUDGET_2_CORES:.0f} s "
                      "budget")
            if args.keep is None:
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
