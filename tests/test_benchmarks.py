"""Tests of the benchmark code (``benchmarks/``), at tiny sizes and without timing claims:
the exact pieces (the hand-written SDA loop, the white-noise skip, the isotropic-Jacobian
fast path, the saved-bytes tally, the batch extrapolation, the clock's minimum, the
tables) against hand-computed references, and the reports of ``python -m benchmarks.run
--quick`` for their rows, columns and finite ratios."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchmarks
from benchmarks import TINY, WhiteNoiseSkip, interleaved_minimum, markdown_table
from benchmarks import run as bench_run
from benchmarks.bench_guidance import ZeroEpsilon
from benchmarks.bench_memory import largest_batch, saved_for_backward
from benchmarks.bench_reference import (
    IsotropicJacobianDPS,
    module,
    reference_inputs,
    sda_loop,
)
from benchmarks.bench_training import kolmogorov_config
from ldiff.diffusion.denoise import Denoiser
from ldiff.diffusion.schedules import CosineSchedule
from ldiff.guidance.base import Observation
from ldiff.guidance.dps_sum import DPSSum
from ldiff.nets.gaussian import GaussianPrior
from ldiff.observe import Subsample, observe


def test_markdown_table_formats_numbers_and_refuses_ragged_rows():
    table = markdown_table(["a", "b"], [[1.23456, "x"], [1234.4, 0.012345], [12.345, 100.0]])
    assert table == "| a | b |\n|---|---|\n| 1.23 | x |\n| 1,234 | 0.0123 |\n| 12.3 | 100 |"
    with pytest.raises(ValueError, match="every row needs 2 cells"):
        markdown_table(["a", "b"], [[1.0]])


def test_interleaved_minimum_keeps_each_functions_fastest_round(monkeypatch):
    """On a scripted clock, A takes 3, 1, 2 and B 5, 6, 4 units in rounds 1-3."""
    now = [0.0]
    durations = {"A": iter([3.0, 1.0, 2.0]), "B": iter([5.0, 6.0, 4.0])}
    calls = []

    def tick(name):
        calls.append(name)
        now[0] += next(durations[name])

    monkeypatch.setattr(benchmarks, "clock", lambda: lambda: now[0])
    best = interleaved_minimum({"A": lambda: tick("A"), "B": lambda: tick("B")}, 3)
    assert best == {"A": 1.0, "B": 4.0}
    assert calls == ["A", "B"] * 3
    with pytest.raises(ValueError, match="repeats"):
        interleaved_minimum({"A": lambda: None}, 0)


def test_largest_batch_by_hand():
    # slope 600 bytes per sample, 100 bytes of weights: (10,000 - 100) // 600 = 16
    assert largest_batch(1000, 1600, 100, budget=10_000) == 16
    with pytest.raises(ValueError, match="does not grow"):
        largest_batch(1000, 900, 100)


def test_saved_for_backward_counts_distinct_storages_once():
    """sin saves x and exp saves its output: two float32 vectors of 10 (80 bytes); x saved
    twice still counts once, and excluding x's storage leaves 40 bytes."""
    x = torch.randn(10, requires_grad=True)

    def fn():
        return (x.sin() + x.exp() + x.cos()).sum()

    assert saved_for_backward(fn, set()) == 80
    assert saved_for_backward(fn, {x.untyped_storage().data_ptr()}) == 40


def _white_prior(schedule, shape=(2, 16, 16)):
    return GaussianPrior(schedule, torch.ones(shape), torch.zeros(shape[0]))


def test_white_noise_skip_is_the_exact_epsilon_of_a_white_prior():
    """With no network left, the skip sigma x_t / (mu^2 + sigma^2) is the exact epsilon of
    N(0, I), whatever t."""
    schedule = CosineSchedule(1e-2)
    x, t = torch.randn(3, 2, 16, 16), torch.tensor([0.05, 0.5, 1.0])
    skip = WhiteNoiseSkip(ZeroEpsilon(), schedule)
    torch.testing.assert_close(skip(x, t), _white_prior(schedule)(x, t), rtol=1e-5, atol=1e-6)


def test_isotropic_jacobian_guidance_equals_dps_sum_on_a_white_prior():
    """For N(0, I) the Tweedie Jacobian is exactly mu / (mu^2 + sigma^2) I, so the fast path
    must give dps-sum's guided epsilon (which differentiates through the prior)."""
    schedule = CosineSchedule(1e-3)
    denoiser = Denoiser(_white_prior(schedule), schedule)
    generator = torch.Generator().manual_seed(0)
    truth = torch.randn(2, 2, 16, 16, generator=generator)
    obs = Observation(observe(truth, Subsample(2), 0.1, generator), Subsample(2), 0.1, (2, 16, 16))
    x_t, t = torch.randn(2, 2, 16, 16, generator=generator), torch.tensor([0.3, 0.8])
    exact = DPSSum(0.5).guided_eps(denoiser, x_t, t, obs, None)
    fast = IsotropicJacobianDPS(0.5).guided_eps(denoiser, x_t, t, obs, None)
    torch.testing.assert_close(fast, exact, rtol=1e-5, atol=1e-6)
    assert (exact - denoiser.eps(x_t, t)).abs().max() > 0.1  # the guidance does something


def test_hand_written_sda_loop_reproduces_predict_step():
    """The benchmark's reference is SDA's algorithm written from the formulas; with the same
    noises it must give ldiff's samples (to float rounding), corrections included."""
    schedule = CosineSchedule(1e-3)
    net = TINY.prior(schedule)
    data = {"x": torch.randn(2, *TINY.field_shape, generator=torch.Generator().manual_seed(1)), "index": torch.arange(2)}
    out = module(net, steps=8, corrections=1).predict_step(data)
    assert out["regime"].tolist() == [[0], [0]]  # balanced: no sample frozen by the guard
    x1, generators = reference_inputs(2, TINY.field_shape)
    reference = sda_loop(net, out["y"], x1, 8, 1, generators)
    torch.testing.assert_close(out["recon"][:, 0], reference, rtol=1e-5, atol=1e-5)


def test_kolmogorov_training_config_is_read_from_the_yaml():
    spec = kolmogorov_config()
    assert spec.net.field_shape == (2, 64, 64)
    assert spec.net.widths == (32, 64, 128) and spec.net.blocks == 2 and spec.net.padding == "circular"
    assert (spec.batch, spec.lr, spec.weight_decay, spec.ema_decay, spec.eta) == (16, 1e-3, 1e-3, 0.995, 1e-3)


# --- the quick run's reports ----------------------------------------------------------


def _tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table of ``text`` as rows of cells (header first, rule dropped)."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                current.append([cell.strip() for cell in line.strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def _value(cell: str) -> float:
    return float(cell.replace(",", "").replace("%", "").strip())


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("bench")
    bench_run.main(["--quick", "--out", str(out)])
    return {path.stem: path.read_text() for path in out.glob("*.md")}


def test_quick_run_writes_the_four_reports_with_the_machine(reports):
    assert sorted(reports) == ["guidance", "memory", "reference", "training"]
    for text in reports.values():
        assert "Machine: " in text and f"torch {torch.__version__}" in text


STRATEGY_ROWS = [
    "forward (the unit)", "floor: forward + VJP", "unguided (prior only)", "dps-sum", "std-scaled",
    "dual-scaled", "adaptive", "dps-norm", "mmps (maxiter 1)", "mmps (maxiter 2)", "ddrm",
    "pnp-admm", "diffpir", "dps-sum, checkpointing",
]  # fmt: skip


def test_guidance_report_has_every_strategy_and_finite_ratios(reports):
    costs, bounded, allocator, shares = _tables(reports["guidance"])
    columns = ["strategy", "ms / step", "x forward", "x floor", "ms / step, 1 correction", "x forward", "target", "met"]
    assert costs[0] == columns and bounded[0] == columns
    assert [row[0] for row in costs[1:]] == STRATEGY_ROWS
    assert [row[0] for row in bounded[1:]] == [r for r in STRATEGY_ROWS if r != "std-scaled"]
    for row in costs[1:] + bounded[1:]:
        assert math.isfinite(_value(row[1])) and _value(row[2]) > 0
    assert _value(costs[1][2]) == 1.0 and _value(costs[2][3]) == 1.0  # the units
    targets = {row[0]: row[6] for row in costs[1:]}
    assert targets["dps-sum"] == "<= 2.3" and targets["ddrm"] == "<= 1.1" and targets["diffpir"] == "—"
    assert all(row[7].startswith(("yes", "no: ")) for row in costs[1:] if row[6] != "—")
    assert "mmps per conjugate-gradient iteration" in reports["guidance"]
    assert [row[0] for row in allocator[1:]] == ["glibc defaults", "tuned"]
    assert all(_value(row[2]) > 0 and _value(row[3]) > 0 for row in allocator[1:])
    assert shares[0][0] == "network" and len(shares) == 3
    assert all(0 < _value(row[5]) <= 100 for row in shares[1:])


def test_reference_report_reproduces_the_reference_and_rates_the_fast_paths(reports):
    comparison, accuracy = _tables(reports["reference"])
    rows = {row[0]: row for row in comparison[1:]}
    assert list(rows) == ["reference", "ldiff", "ldiff, channels-last", "ldiff, isotropic Jacobian"]
    assert _value(rows["reference"][2]) == 1.0
    assert _value(rows["ldiff"][4]) < 1e-5 and _value(rows["ldiff, channels-last"][4]) < 1e-4
    assert all(_value(row[2]) > 0 and math.isfinite(_value(row[3])) for row in comparison[1:])
    assert [row[:2] for row in accuracy[1:]] == [
        ["`Subsample(4)`", "dps-sum"], ["`Subsample(4)`", "dps-sum, isotropic Jacobian"],
        ["`Subsample(2)`", "dps-sum"], ["`Subsample(2)`", "dps-sum, isotropic Jacobian"],
    ]  # fmt: skip
    assert all(math.isfinite(_value(row[2])) and math.isfinite(_value(row[3])) for row in accuracy[1:])


def test_memory_report_covers_both_batches_with_and_without_checkpointing(reports):
    (table,) = _tables(reports["memory"])
    assert table[0] == ["network", "batch", "checkpointing", "peak (MiB)", "kept for backward (MiB)"]
    assert [row[1:3] for row in table[1:]] == [["1", "no"], ["2", "no"], ["1", "yes"], ["2", "yes"]]
    kept = [_value(row[4]) for row in table[1:]]
    assert kept[2] < kept[0] / 2 and kept[3] < kept[1] / 2  # checkpointing keeps far less
    assert "largest batch in 16 GiB" in reports["memory"] or "no extrapolation" in reports["memory"]


def test_training_report_has_finite_throughputs(reports):
    (table,) = _tables(reports["training"])
    assert table[0][-3:] == ["samples/s, no EMA", "samples/s, EMA", "EMA share"]
    assert [row[2] for row in table[1:]] == ["no", "yes"]
    for row in table[1:]:
        no_ema, ema = _value(row[5]), _value(row[6])
        assert 0 < ema <= no_ema and math.isfinite(no_ema)
