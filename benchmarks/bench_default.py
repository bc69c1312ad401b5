r"""Benchmark: ldiff's default (``mmps``) against the user's ``dps-sum``: cost per step and
quality per guided evaluation, on the shipped Kolmogorov prior and the demo's frames.

Every setting runs through :func:`ldiff.compare.run` (``trainer.predict`` of the
:class:`~ldiff.lit.inference.InferenceModule`, the demo's path) on the same held-out
frames, observations and initial noise, side by side in one process:

- the default, ``mmps`` with the shipped Gaussian fit, at 16, 32, 64 and 128 predictor
  steps, no corrector;
- ``dps-sum`` (gamma 1e-2) at the demo's 32 steps, and at SDA's own setting, 256
  predictor steps with one Langevin correction each (tau 0.5): 512 guided evaluations;
- optionally (``--known-above``) ``mmps`` at 32 steps with other thresholds of the
  known-covariance regime, ``inf`` meaning the network's own covariance at every t.

**Guided evaluations** per sample: predictor steps x (1 + corrections). Each costs one
forward pass and one vector-Jacobian product for ``dps-sum``; for ``mmps`` one forward and
up to ``maxiter + 1`` = 4 VJPs where sigma/mu <= ``known_above``, one forward and no VJP
above it. **Seconds per guided evaluation** is the wall time of the run over the
evaluations (batch = items x K samples), the cost ratio of the two strategies per step.

Columns: vorticity correlation of the K-sample mean and of single samples against the
truth, a sample's residual in noise stds, diverged/flat counts, seconds.

Usage: ``python -m benchmarks.bench_default [--items 3 --samples 4 --operators 4 16]``;
writes ``benchmarks/results/default.md``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from benchmarks import machine_line, markdown_table

HERE = Path(__file__).resolve().parent
DEFAULT = {"class_path": "ldiff.guidance.mmps.MMPS", "init_args": {"covariance": "checkpoints/kolmogorov/gaussian.pt"}}
DPS_SUM = {"class_path": "ldiff.guidance.dps_sum.DPSSum", "init_args": {"gamma": 0.01}}
SETTINGS = [
    ("mmps (default)", DEFAULT, 16, 0, 1.0),
    ("mmps (default)", DEFAULT, 32, 0, 1.0),
    ("mmps (default)", DEFAULT, 64, 0, 1.0),
    ("mmps (default)", DEFAULT, 128, 0, 1.0),
    ("dps-sum", DPS_SUM, 32, 0, 1.0),
    ("dps-sum, SDA's setting", DPS_SUM, 256, 1, 0.5),
]


def run(items: int, samples: int, strides: list[int], out: Path, settings=SETTINGS) -> list[dict]:
    from ldiff.compare import run as compare

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, strategy, steps, corrections, tau in settings:
            config = {
                "checkpoint": "checkpoints/kolmogorov/prior.ckpt",
                "data": {"test": "checkpoints/kolmogorov/heldout.nc", "items": items, "batch_size": items},
                "std": 0.1,
                "samples": samples,
                "sampler": {"steps": steps, "corrections": corrections, "tau": tau},
                "seed": 0,
                "operators": {f"sub{s}": {"class_path": "ldiff.observe.Subsample", "init_args": {"stride": s}} for s in strides},
                "strategies": {"s": strategy},
                "wandb": {"mode": "disabled"},
            }
            path = Path(tmp) / f"{steps}-{corrections}.yaml"
            path.write_text(yaml.safe_dump(config))
            start = time.perf_counter()
            for row in compare(str(path), output=str(Path(tmp) / "run"), progress=False):
                evaluations = steps * (1 + corrections)
                rows.append({
                    "setting": name, "steps": steps, "corrections": corrections, "evaluations": evaluations,
                    "operator": row["operator"], "n_obs": row["n_obs"],
                    "corr_mean": row["vorticity_corr_mean"], "corr_sample": row["vorticity_corr"],
                    "residual": row["residual_ratio"], "diverged": row["diverged"], "flat": row["flat"],
                    "seconds": row["seconds"], "ms_per_evaluation": 1000 * row["seconds"] / evaluations,
                })
            print(f"{name}, {steps} steps + {corrections}: {time.perf_counter() - start:.0f} s", flush=True)
    columns = ("setting", "steps", "corrections", "evaluations", "operator", "n_obs", "corr_mean", "corr_sample", "residual", "diverged", "flat", "seconds", "ms_per_evaluation")
    report = [
        "# The default (mmps) against dps-sum: quality per guided evaluation",
        "",
        machine_line(),
        "",
        f"Shipped Kolmogorov prior, {items} held-out frames x K = {samples} samples, noise std 0.1, "
        "`python -m benchmarks.bench_default` (see its docstring for the columns). Each "
        f"operator runs in its own `trainer.predict` on a batch of {items * samples} samples.",
        "",
        markdown_table(columns, [[row[c] for c in columns] for row in rows]),
        "",
    ]
    out.write_text("\n".join(report))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--operators", type=int, nargs="+", default=[4, 16], help="subsampling strides")
    parser.add_argument("--known-above", type=float, nargs="*", default=[], metavar="SIGMA_BAR",
                        help="also run mmps at 32 steps with these known_above thresholds (inf: the network's covariance at every t)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "default.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    extra = [(f"mmps, known_above {k:g}", {"class_path": DEFAULT["class_path"], "init_args": {**DEFAULT["init_args"], "known_above": k}}, 32, 0, 1.0)
             for k in args.known_above]
    run(args.items, args.samples, args.operators, args.out, SETTINGS + extra)
    print(args.out)


if __name__ == "__main__":
    main()
