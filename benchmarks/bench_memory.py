r"""Benchmark: peak memory of one guided evaluation, with and without activation checkpointing.

**What is measured.** One ``dps-sum`` guided evaluation (a forward pass that keeps its
graph, then one vector-Jacobian product through the U-Net) on a batch of IBPM-size
samples, each configuration in a fresh Python process so that no allocation of another
configuration is counted. After the set-up (network, observations, initial state, and a
first evaluation on a 32 x 32 crop that loads the kernels) the process's resident-set
high-water mark is reset to its current resident set (``/proc/self/clear_refs``); its
growth during the evaluation (``VmHWM`` minus ``VmRSS`` before, ``/proc/self/status``)
is the evaluation's peak. (``getrusage``'s ``ru_maxrss`` would not do: Linux carries it
over from the parent through ``fork`` and ``exec``.) Linux only.
For a cross-check without the allocator in the way, the bytes the forward pass keeps for
the backward pass are tallied exactly with ``torch.autograd.graph.saved_tensors_hooks``
(unique storages, the network's weights excluded).

The child processes run with ``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB, so that the
resident set follows the live tensors rather than what glibc's heap keeps after a free.

**Activation checkpointing** (``UNet(checkpointing=True)``) keeps only each residual
block's input and recomputes the block in the backward pass: less memory for one more
forward pass of the blocks.

**Largest batch in 16 GiB.** Extrapolated, not measured: the peak grows linearly with
the batch, so the slope between batch 1 and batch 2 is the memory of one more sample,
and the largest batch is :math:`\lfloor (16\,\mathrm{GiB} - W) / \text{slope} \rfloor`
with :math:`W` the weights' bytes. On a GPU the allocator, cuDNN workspaces and the CUDA
context change the constant, not the slope much.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from benchmarks import IBPM, NetSpec, machine_line, markdown_table, number, run_child
from benchmarks.bench_guidance import forward_vjp, setup
from ldiff.guidance.base import Diagnostics
from ldiff.guidance.dps_sum import DPSSum

QUICK = NetSpec("small-bounded", 4, (95, 191), (8, 16), 1, "reflect")
"""A small network on fields large enough for the allocator to show the activations."""

SPECS = {spec.name: spec for spec in (IBPM, QUICK)}
BUDGET = 16 * 2**30
"""16 GiB, the memory of a common GPU."""

MiB = 2**20

MMAP_THRESHOLD = 2**17
"""glibc serves every allocation from this size (128 KiB) up with its own ``mmap`` and
returns it on ``free``: with a fixed threshold the resident set follows the live tensors,
where glibc's default (a threshold that grows with the blocks freed) keeps freed memory
in its heap and adds it to the peak."""


@dataclass
class Peak:
    """One configuration's memory of one guided evaluation, in bytes."""

    spec: str
    batch: int
    checkpointing: bool
    peak: int
    saved: int
    weights: int


def resident() -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` of this process in bytes: its resident set now and its high-water
    mark, from ``/proc/self/status`` (Linux)."""
    status = Path("/proc/self/status").read_text()
    values = dict(line.split(":", 1) for line in status.splitlines() if line.startswith(("VmRSS", "VmHWM")))
    return int(values["VmRSS"].split()[0]) * 1024, int(values["VmHWM"].split()[0]) * 1024


def reset_peak() -> None:
    """Set the high-water mark to the current resident set (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def saved_for_backward(fn, exclude: set[int]) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass while ``fn()``
    runs, leaving out the storages whose ``data_ptr`` is in ``exclude`` (the weights)."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in exclude:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values())


def measure(spec: NetSpec, batch: int, checkpointing: bool) -> Peak:
    """Measure one configuration in this process (run it in a fresh one: see :func:`peak`)."""
    s = setup(spec, batch, checkpointing)
    strategy = DPSSum()
    parameters = list(s.denoiser.model.parameters())
    weights = sum(p.numel() * p.element_size() for p in parameters)
    # First calls load kernels and set up autograd: do them on a small crop beforehand.
    forward_vjp(replace(s, x1=s.x1[..., :32, :32].contiguous()))
    gc.collect()
    reset_peak()
    before, _ = resident()
    strategy.guided_eps(s.denoiser, s.x1, s.t, s.obs, Diagnostics())
    peak = resident()[1] - before

    def forward() -> None:
        x = s.x1.detach().requires_grad_(True)
        with torch.enable_grad():
            s.denoiser(x, s.t)

    saved = saved_for_backward(forward, {p.untyped_storage().data_ptr() for p in parameters})
    return Peak(spec.name, batch, checkpointing, peak, saved, weights)


def peak(spec: NetSpec, batch: int, checkpointing: bool) -> Peak:
    """:func:`measure` in a fresh Python process (with this process's thread settings)."""
    args = [spec.name, str(batch)] + (["--checkpointing"] if checkpointing else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))
    return Peak(**run_child("benchmarks.bench_memory", args, env))


def largest_batch(one: int, two: int, weights: int, budget: int = BUDGET) -> int:
    """The largest batch whose extrapolated peak fits ``budget`` bytes: peaks ``one`` and
    ``two`` at batch 1 and 2 give the slope per sample; ``weights`` bytes come on top."""
    slope = two - one
    if slope <= 0:
        raise ValueError(f"the peak does not grow with the batch ({one} -> {two} bytes): cannot extrapolate")
    return (budget - weights) // slope


def report(peaks: list[Peak], note: str) -> str:
    rows = []
    for p in peaks:
        rows.append([
            p.spec,
            str(p.batch),
            "yes" if p.checkpointing else "no",
            number(p.peak / MiB),
            number(p.saved / MiB),
        ])
    table = markdown_table(["network", "batch", "checkpointing", "peak (MiB)", "kept for backward (MiB)"], rows)
    by = {(p.batch, p.checkpointing): p for p in peaks}
    lines = []
    for ckpt in (False, True):
        one, two = by[(1, ckpt)], by[(2, ckpt)]
        label = f"- checkpointing {'on' if ckpt else 'off'}: "
        if two.peak <= one.peak:
            lines.append(label + "no extrapolation: the peak did not grow from batch 1 to 2 (below the allocator's resolution)")
            continue
        lines.append(
            label + f"{number((two.peak - one.peak) / MiB)} MiB per sample, largest batch in 16 GiB "
            f"about **{largest_batch(one.peak, two.peak, one.weights)}** (extrapolated)"
        )
    plain, ckpt = by[(1, False)], by[(1, True)]
    reduction = plain.peak / ckpt.peak
    saved_reduction = plain.saved / ckpt.saved
    verdict = "met" if reduction >= 2 else "missed"
    parts = [
        "# Memory of one guided step",
        "",
        machine_line(),
        "",
        "One `dps-sum` guided evaluation (forward with graph + one VJP), float32, on CPU; peak = "
        "growth of the process's resident-set high-water mark during the evaluation, each row in a "
        "fresh process (`benchmarks/bench_memory.py`). *Kept for backward*: the bytes the forward "
        "pass stores for the VJP, tallied exactly (weights excluded). " + note,
        "",
        table,
        "",
        (
            f"Activation checkpointing cuts the peak {number(reduction)}x at batch 1 (target >= 2x: {verdict}) "
            f"and what the forward keeps {number(saved_reduction)}x; its price in time (the blocks run twice) "
            "is the row `dps-sum, checkpointing` of `guidance.md`."
        ),
        "",
        (
            "Largest batch for one guided evaluation in 16 GiB, extrapolated linearly from batch 1 and 2 "
            "(the slope is the memory of one more sample; the weights come on top):"
        ),
        "",
        *lines,
    ]
    return "\n".join(parts) + "\n"


def run(quick: bool = False) -> str:
    """Measure every configuration, each in its own process, and return the report."""
    spec = QUICK if quick else IBPM
    peaks = [peak(spec, batch, ckpt) for ckpt in (False, True) for batch in (1, 2)]
    note = "Quick run: a tiny network, for a smoke test only." if quick else (
        "SDA's own code on this network size: 1.9 GB for one guided evaluation (issue 7)."
    )
    return report(peaks, note)


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure one configuration; print JSON.")
    parser.add_argument("spec", choices=tuple(SPECS))
    parser.add_argument("batch", type=int)
    parser.add_argument("--checkpointing", action="store_true")
    args = parser.parse_args()
    print(json.dumps(asdict(measure(SPECS[args.spec], args.batch, args.checkpointing))))


if __name__ == "__main__":
    main()
