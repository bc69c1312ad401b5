"""Run the performance benchmarks of issue 7 and write their reports.

Usage::

    python -m benchmarks.run            # full run, under 10 minutes on a 2-core CPU
    python -m benchmarks.run --quick    # tiny networks, under 2 minutes: a smoke test

The full run writes ``benchmarks/results/{guidance,reference,memory,training}.md``; the
quick run writes the same files to a temporary folder (``--out`` chooses another).
``--kolmogorov`` also runs ``benchmarks/bench_kolmogorov.py`` (the data generator against
jax-cfd, which it needs installed), writing ``benchmarks/results/kolmogorov.md``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import bench_guidance, bench_memory, bench_reference, bench_training

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
QUICK_RESULTS = Path(tempfile.gettempdir()) / "ldiff-benchmarks-quick"

BENCHMARKS = {
    "guidance": bench_guidance.run,
    "reference": bench_reference.run,
    "memory": bench_memory.run,
    "training": bench_training.run,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny networks: a smoke test of the benchmark code")
    parser.add_argument("--out", type=Path, help=f"folder of the reports (default {RESULTS}, or {QUICK_RESULTS} with --quick)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads; 1 times CPU time, more wall time (default 1)")
    parser.add_argument("--kolmogorov", action="store_true", help="also run bench_kolmogorov.py (needs jax-cfd)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for name, run in BENCHMARKS.items():
        began = time.perf_counter()
        path = out / f"{name}.md"
        path.write_text(run(args.quick))
        print(f"{name}: {path} ({time.perf_counter() - began:.0f} s)", flush=True)
    if args.kolmogorov:
        subprocess.run([sys.executable, str(HERE / "bench_kolmogorov.py"), "--threads", str(args.threads)], check=True)
    print(f"all benchmarks: {time.perf_counter() - start:.0f} s wall", flush=True)


if __name__ == "__main__":
    main()
