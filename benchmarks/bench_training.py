r"""Benchmark: training throughput of the prior, with and without the weight average (EMA).

One training iteration is what ``ScorePrior`` does per batch (:mod:`ldiff.lit.prior`):
the epsilon loss of the online network (:func:`ldiff.diffusion.denoise.epsilon_loss`),
its backward pass, gradient clipping at norm 1 (the configs' ``gradient_clip_val``),
an AdamW step, then the EMA update of the averaged copy
(:func:`ldiff.lit.ema.update_average`). Both parts are timed separately in every
iteration, so "without EMA" and "with EMA" come from the same iterations: samples per
second are ``batch / step`` and ``batch / (step + EMA)``. Lightning's own per-batch work
(logging, callbacks) is not included.

Configurations: the network, batch size, optimiser and EMA decay of
``configs/prior/kolmogorov.yaml`` on 64 x 64 fields, and a cylinder-wake network of the
user's IBPM size (16 frames of (u, v), 199 x 399, widths 64, 128, 256, 2 blocks). Each
also with ``UNet(checkpointing=True)``, which trades time for memory.

bf16 mixed precision (``trainer.precision: bf16-mixed``) is a GPU setting; it is not
measured on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from benchmarks import IBPM, TINY, NetSpec, clock, machine_line, markdown_table, number
from ldiff.diffusion.denoise import epsilon_loss
from ldiff.diffusion.schedules import CosineSchedule
from ldiff.lit.ema import averaged_copy, update_average

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "prior" / "kolmogorov.yaml"
CLIP = 1.0


@dataclass(frozen=True)
class TrainingSpec:
    """A network, its fields and the optimiser settings of a training run."""

    net: NetSpec
    batch: int
    lr: float
    weight_decay: float
    ema_decay: float
    eta: float


def kolmogorov_config(path: Path = CONFIG) -> TrainingSpec:
    """The training set-up of ``configs/prior/kolmogorov.yaml`` (fields are 64 x 64)."""
    config = yaml.safe_load(path.read_text())
    model = config["model"]
    net = model["net"]["init_args"]
    spec = NetSpec(
        "kolmogorov config",
        net["in_channels"],
        (64, 64),
        tuple(net["widths"]),
        net["blocks_per_level"],
        net.get("padding", "circular"),
    )
    eta = model["schedule"]["init_args"]["eta"]
    return TrainingSpec(spec, config["data"]["batch_size"], model["lr"], model["weight_decay"], model["ema_decay"], eta)


CYLINDER = TrainingSpec(IBPM, 1, 1e-3, 1e-3, 0.999, 1e-3)
"""The user's cylinder-wake set-up (IBPM size); batch 1 keeps a CPU step to seconds."""


@dataclass
class Throughput:
    """Seconds per optimiser step and per EMA update (minimum over iterations)."""

    spec: TrainingSpec
    checkpointing: bool
    step: float
    ema: float

    def samples_per_second(self, with_ema: bool) -> float:
        return self.spec.batch / (self.step + (self.ema if with_ema else 0.0))


def throughput(spec: TrainingSpec, checkpointing: bool, iterations: int) -> Throughput:
    """Train ``iterations`` + 1 iterations on random fields (the first is not timed)."""
    net = spec.net.unet(checkpointing).train()
    average = averaged_copy(net)
    optimizer = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    schedule = CosineSchedule(spec.eta)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((spec.batch, *spec.net.field_shape), generator=generator)
    now = clock()
    step = ema = float("inf")
    for i in range(iterations + 1):
        start = now()
        optimizer.zero_grad(set_to_none=True)
        epsilon_loss(net, x, schedule, generator=generator).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)
        optimizer.step()
        middle = now()
        update_average(average, net, spec.ema_decay)
        end = now()
        if i > 0:
            step, ema = min(step, middle - start), min(ema, end - middle)
    return Throughput(spec, checkpointing, step, ema)


def report(results: list[Throughput], note: str) -> str:
    rows = []
    for r in results:
        rows.append([
            r.spec.net.label(),
            str(r.spec.batch),
            "yes" if r.checkpointing else "no",
            number(r.step),
            number(1e3 * r.ema),
            number(r.samples_per_second(False)),
            number(r.samples_per_second(True)),
            f"{100 * r.ema / (r.step + r.ema):.1f} %",
        ])
    columns = ["network", "batch", "checkpointing", "step (s)", "EMA update (ms)", "samples/s, no EMA", "samples/s, EMA", "EMA share"]
    parts = [
        "# Training throughput",
        "",
        machine_line(),
        "",
        "One iteration of `ScorePrior` (epsilon loss, backward, clipping, AdamW) and the EMA update, "
        "timed apart in the same iterations (minimum over iterations), float32 "
        "(`benchmarks/bench_training.py`). bf16 mixed precision is GPU-only: not measured here (no GPU). "
        + note,
        "",
        markdown_table(columns, rows),
    ]
    return "\n".join(parts) + "\n"


def run(quick: bool = False) -> str:
    """Measure and return the report (``quick``: a tiny network, seconds)."""
    if quick:
        tiny = TrainingSpec(TINY, 4, 1e-3, 1e-3, 0.999, 1e-3)
        results = [throughput(tiny, ckpt, 2) for ckpt in (False, True)]
        return report(results, "Quick run: a tiny network, for a smoke test only.")
    kolmogorov = kolmogorov_config()
    results = [throughput(kolmogorov, ckpt, 3) for ckpt in (False, True)]
    results += [throughput(CYLINDER, ckpt, 2) for ckpt in (False, True)]
    note = (
        f"`{CONFIG.relative_to(CONFIG.parents[2])}`: batch {kolmogorov.batch}, lr {kolmogorov.lr}, "
        f"EMA decay {kolmogorov.ema_decay}. Cylinder wake (IBPM size): batch {CYLINDER.batch}, "
        f"EMA decay {CYLINDER.ema_decay}."
    )
    return report(results, note)
