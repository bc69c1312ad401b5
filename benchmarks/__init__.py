"""Performance benchmarks of ``ldiff``: what every benchmark shares.

Each benchmark module measures one question of issue 7 and returns a Markdown report;
``python -m benchmarks.run`` runs them all and writes ``benchmarks/results/*.md``.

**What is reported.** Ratios of times measured side by side in one process (a guided
step against a forward pass of the same network on the same batch, ``ldiff`` against a
hand-written loop), never an absolute time alone: absolute times depend on the machine,
ratios much less.

**The clock.** With one intra-op thread (``OMP_NUM_THREADS=1``, the default of the
command) a benchmark times the CPU time of its own process (:func:`time.process_time`),
which other jobs on a shared machine barely disturb, where wall time would count their
share of the cores as ours. With more threads it times wall-clock (:func:`time.perf_counter`),
since CPU time would add the threads up. Every timing is the minimum over repetitions
run in interleaved rounds (A, B, A, B, ...): the minimum is the run least disturbed, and
interleaving exposes A and B to the same conditions.

**Networks.** :class:`NetSpec` builds the U-Nets of issue 7: the shipped Kolmogorov
prior, an SDA-size Kolmogorov network and the user's IBPM-size network.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ldiff.diffusion.schedules import Schedule
from ldiff.nets.unet import UNet, num_parameters


@dataclass(frozen=True)
class NetSpec:
    """A U-Net and the fields it works on.

    Attributes:
        name: label in the tables.
        in_channels: ``C`` (``2 T`` for ``T`` frames of ``(u, v)``).
        size: ``(H, W)`` of the fields.
        widths: channels per level.
        blocks: residual blocks per level.
        padding: the U-Net's padding mode.
    """

    name: str
    in_channels: int
    size: tuple[int, int]
    widths: tuple[int, ...]
    blocks: int
    padding: str = "circular"

    @property
    def field_shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return (self.in_channels, *self.size)

    def unet(self, checkpointing: bool = False, seed: int = 0) -> UNet:
        """The U-Net, with its zero-initialised output convolution drawn at random instead
        so that its output is not identically zero."""
        torch.manual_seed(seed)
        net = UNet(
            self.in_channels,
            widths=self.widths,
            blocks_per_level=self.blocks,
            padding=self.padding,
            checkpointing=checkpointing,
        )
        torch.nn.init.normal_(net.head[-1].weight, std=1e-2)
        return net

    def prior(self, schedule: Schedule, checkpointing: bool = False) -> WhiteNoiseSkip:
        """The U-Net as an untrained stand-in for a prior: frozen, in eval mode, plus the
        white-noise skip of :class:`WhiteNoiseSkip`."""
        return WhiteNoiseSkip(self.unet(checkpointing), schedule).eval().requires_grad_(False)

    def parameters(self) -> int:
        """Number of parameters of the network."""
        return num_parameters(self.unet())

    def label(self) -> str:
        """``name (C x H x W, widths, M params)`` for table headers."""
        c, h, w = self.field_shape
        widths = ", ".join(map(str, self.widths))
        return (
            f"{self.name} ({c} x {h} x {w}, widths [{widths}] x {self.blocks} blocks, "
            f"{self.parameters() / 1e6:.1f}M params)"
        )


class WhiteNoiseSkip(nn.Module):
    r"""A random epsilon network plus the exact epsilon of a white, unit-variance prior:
    :math:`\hat\varepsilon = \text{net}(x_t, t) + \sigma x_t / (\mu^2 + \sigma^2)`.

    An untrained U-Net predicts :math:`\hat\varepsilon \approx 0`, so its Tweedie estimate
    :math:`x_t/\mu` is ~1000 times too large at ``t = 1`` and every guided sampler diverges
    at once. A trained network on normalised data predicts about the skip term there, and
    so does this one, so that samplers run as they would with a trained prior. The skip
    costs one multiply-add on top of the network: timings are the network's.

    ``forward(x_t: (B, C, H, W), t: (B,) or scalar, cond=None) -> (B, C, H, W)``.
    """

    def __init__(self, net: nn.Module, schedule: Schedule):
        super().__init__()
        self.net = net
        self.schedule = schedule

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        mu, sigma = self.schedule.coefficients(torch.as_tensor(t), x_t)
        return torch.addcmul(self.net(x_t, t, cond), sigma / (mu**2 + sigma**2), x_t)


KOLMOGOROV = NetSpec("kolmogorov (shipped prior)", 2, (64, 64), (32, 64, 128), 2)
"""The network of ``configs/prior/kolmogorov.yaml``."""

KOLMOGOROV_SDA = NetSpec("kolmogorov (SDA-size)", 10, (64, 64), (96, 192, 384), 3)
"""SDA's Kolmogorov network size: 5 frames of (u, v), 23.3M parameters (SDA: 22.9M)."""

IBPM = NetSpec("IBPM-size", 32, (199, 399), (64, 128, 256), 2, "reflect")
"""The user's network: 16 frames of (u, v) of the cylinder wake, 7.3M parameters."""

TINY = NetSpec("tiny", 2, (16, 16), (8, 16), 1)
"""A network for ``--quick`` runs and the tests."""

TINY_BOUNDED = NetSpec("tiny-bounded", 4, (15, 23), (8, 16), 1, "reflect")
"""An odd-sized, bounded tiny network (the IBPM case in miniature)."""


def clock() -> Callable[[], float]:
    """The benchmarks' clock: process CPU time on one thread, wall time otherwise."""
    return time.process_time if torch.get_num_threads() == 1 else time.perf_counter


def clock_name() -> str:
    """How :func:`clock` measures, for the report headers."""
    if torch.get_num_threads() == 1:
        return "CPU time of the benchmark process (1 intra-op thread)"
    return f"wall-clock time ({torch.get_num_threads()} intra-op threads)"


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` takes on :func:`clock`."""
    now = clock()
    start = now()
    fn()
    return now() - start


def interleaved_minimum(functions: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Time every function once per round for ``repeats`` rounds; return each one's
    minimum in seconds."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    best = {name: math.inf for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            best[name] = min(best[name], timed(fn))
    return best


def run_child(module: str, args: list[str], env: dict[str, str]) -> dict:
    """Run ``python -m module *args`` from the repository root with environment ``env``
    and return the JSON object on its last line of output."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=root, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{module} {' '.join(args)} failed with exit status {out.returncode}:\n{tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else :func:`platform.processor`."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line() -> str:
    """One line naming the machine, the threads, torch, the date and the load."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    today = datetime.date.today().isoformat()
    return (
        f"Machine: {cpu_model()}, {os.cpu_count()} logical cores, {torch.get_num_threads()} "
        f"intra-op thread(s), torch {torch.__version__}, Python {platform.python_version()}; "
        f"{today}; load average {load} (1, 5, 15 min) when the report was written. "
        f"Clock: {clock_name()}."
    )


def number(value: float) -> str:
    """A float for a table: integers from 100 up, one decimal from 10, else 3 digits."""
    if not math.isfinite(value):
        return str(value)
    size = abs(value)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table; float cells go through :func:`number`, others through ``str``."""
    if any(len(row) != len(columns) for row in rows):
        raise ValueError(f"every row needs {len(columns)} cells ({', '.join(columns)})")

    def cell(value: object) -> str:
        return number(value) if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
