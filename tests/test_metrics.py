"""Metrics against hand-computed values, exact merging of shards, exclusion of bad samples."""

import math

import pytest
import torch

from ldiff.metrics import (
    BALANCED,
    CRPS,
    DIVERGED,
    FLAT,
    REGIMES,
    EnergyRatio,
    FieldRMSE,
    RegimeCount,
    ResidualRatio,
    SpectrumLogError,
    SpreadSkill,
    VorticityError,
    regime,
    spatial_std,
)

# Two samples, one frame, 1 x 2 grid. Errors: u [0, 2], [2, 0]; v [0, 2], [4, -2].
X = torch.tensor([[[[1.0, 3.0]], [[0.0, 2.0]]], [[[2.0, 0.0]], [[4.0, 0.0]]]])
TRUTH = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]], [[[0.0, 0.0]], [[0.0, 2.0]]]])


def values(result):
    return {key: value.item() for key, value in result.items()}


def test_field_rmse_by_hand():
    metric = FieldRMSE(scale=torch.tensor([2.0, 3.0]))
    metric.update(X, TRUTH)
    result = values(metric.compute())
    # sse_u = 8, sse_v = 24 over 4 values each; sum truth^2 = 6
    assert result["rmse_u"] == pytest.approx(math.sqrt(2), rel=1e-15)
    assert result["rmse_v"] == pytest.approx(math.sqrt(6), rel=1e-15)
    assert result["rmse"] == pytest.approx(2.0, rel=1e-15)
    assert result["rel_l2"] == pytest.approx(math.sqrt(32 / 6), rel=1e-15)
    assert result["rmse_u_phys"] == pytest.approx(2 * math.sqrt(2), rel=1e-15)
    assert result["rmse_v_phys"] == pytest.approx(3 * math.sqrt(6), rel=1e-15)
    assert result["rmse_phys"] == pytest.approx(math.sqrt((4 * 8 + 9 * 24) / 8), rel=1e-15)
    assert result["excluded"] == 0


def test_field_rmse_with_a_mask_uses_only_fluid_points():
    metric = FieldRMSE(mask=torch.tensor([[True, False]]))
    metric.update(X, TRUTH)
    result = values(metric.compute())
    # column 0 only: u errors 0, 2; v errors 0, 4
    assert (result["rmse_u"], result["rmse_v"], result["rmse"]) == pytest.approx((math.sqrt(2), math.sqrt(8), math.sqrt(5)))
    assert result["rel_l2"] == pytest.approx(math.sqrt(20 / 1))


def test_spatial_std_and_energy_ratio_by_hand():
    truth = torch.tensor([[[[0.0, 2.0]], [[1.0, 5.0]]], [[[1.0, -1.0]], [[3.0, 3.0]]]])
    # channel variances (1, 4) and (1, 0): spatial stds sqrt(2.5) and sqrt(0.5)
    torch.testing.assert_close(spatial_std(truth), torch.tensor([2.5, 0.5]).sqrt())
    metric = EnergyRatio()
    metric.update(torch.stack([2 * truth[0], 0.5 * truth[1] + 7.0]), truth)
    assert metric.compute()["energy_ratio"].item() == pytest.approx(1.25, rel=1e-15)  # mean of 2 and 0.5


def taylor_green(k, n=16):
    """u = sin kx cos ky, v = -cos kx sin ky on [0, 2 pi)^2, shape (1, 2, n, n): w = 2k sin kx sin ky."""
    nodes = 2 * math.pi / n * torch.arange(n, dtype=torch.float64)
    y, x = torch.meshgrid(nodes, nodes, indexing="ij")
    return torch.stack([(k * x).sin() * (k * y).cos(), -(k * x).cos() * (k * y).sin()])[None]


def test_vorticity_error_by_hand():
    # truth w_b = 2 sin x sin y (mean square 1); recon w_a = w_b / 2 + 4 sin 2x sin 2y (mean square 4, orthogonal)
    d = 2 * math.pi / 16
    truth = taylor_green(1)
    x = 0.5 * truth + taylor_green(2)
    metric = VorticityError(d, d, periodic=True)
    metric.update(x, truth)
    result = values(metric.compute())
    assert result["vorticity_rmse"] == pytest.approx(math.sqrt(0.25 + 4), rel=1e-12)
    assert result["vorticity_corr"] == pytest.approx(0.5 / math.sqrt(0.25 + 4), rel=1e-12)
    # normalised inputs with the per-component scale give the physical-unit result
    scaled = VorticityError(d, d, periodic=True, scale=torch.tensor([2.0, 2.0]))
    scaled.update(x / 2, truth / 2)
    assert values(scaled.compute()) == pytest.approx(result, rel=1e-14)


def modes(amplitudes, n=8):
    """u = sum_k a_k cos(k x) on [0, 2 pi)^2, v = 0, shape (1, 2, n, n): E(k) = a_k^2 / 4."""
    x = 2 * math.pi / n * torch.arange(n, dtype=torch.float64)
    u = sum(a * (k * x).cos() for k, a in amplitudes.items()).expand(n, n)
    return torch.stack([u, torch.zeros_like(u)])[None]


def test_spectrum_log_error_by_hand():
    d = 2 * math.pi / 8
    metric = SpectrumLogError(d, d, k_max=2)
    metric.update(modes({1: 2.0, 2: 0.5}), modes({1: 1.0, 2: 1.0}))
    # E ratios 4 and 1/16 ... / 1: |log 4| and |log 1/4|
    assert metric.compute()["spectrum_log_error"].item() == pytest.approx(math.log(4), rel=1e-12)


def test_spectrum_log_error_stops_at_nyquist_by_default():
    d = 2 * math.pi / 8
    truth = torch.randn(2, 4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    nodes = d * torch.arange(8, dtype=torch.float64)
    y, x = torch.meshgrid(nodes, nodes, indexing="ij")
    x_rec = 2 * truth + (3 * x + 4 * y).cos()  # the added mode lies in shell 5 only
    metric = SpectrumLogError(d, d)  # shells 1..4
    metric.update(x_rec, truth)
    assert metric.compute()["spectrum_log_error"].item() == pytest.approx(math.log(4), rel=1e-12)
    with pytest.raises(ValueError, match="k_max"):
        SpectrumLogError(d, d, k_max=12).update(x_rec, truth)


def test_residual_ratio_by_hand():
    metric = ResidualRatio()
    metric.update(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.ones(1, 4), 2.0)
    assert metric.compute()["residual_ratio"].item() == pytest.approx(math.sqrt(14 / 4) / 2, rel=1e-15)
    per_point = ResidualRatio()
    per_point.update(torch.tensor([[1.0, 3.0]]), torch.zeros(1, 2), torch.tensor([0.5, 3.0]))
    assert per_point.compute()["residual_ratio"].item() == pytest.approx(math.sqrt((4 + 1) / 2), rel=1e-15)


def ensemble(*members):
    """One truth point: samples (1, K, 1, 1, 1)."""
    return torch.tensor(members, dtype=torch.float64).reshape(1, -1, 1, 1, 1)


def test_fair_crps_by_hand():
    metric = CRPS()
    metric.update(ensemble(0.0, 2.0), torch.ones(1, 1, 1, 1))  # 1 - 4 / (2 * 2 * 1) = 0 (plain form: 1/2)
    assert metric.compute()["crps"].item() == pytest.approx(0.0, abs=1e-15)
    metric.update(ensemble(0.0, 1.0, 3.0), torch.full((1, 1, 1, 1), 2.0))  # 4/3 - 12 / (2 * 3 * 2) = 1/3
    assert metric.compute()["crps"].item() == pytest.approx(1 / 6, rel=1e-15)


def test_fair_crps_matches_the_pairwise_definition():
    generator = torch.Generator().manual_seed(0)
    samples = torch.randn(3, 5, 2, 4, 3, dtype=torch.float64, generator=generator)
    truth = torch.randn(3, 2, 4, 3, dtype=torch.float64, generator=generator)
    skill = (samples - truth[:, None]).abs().mean(dim=1)
    pairs = (samples[:, :, None] - samples[:, None, :]).abs().sum(dim=(1, 2)) / (2 * 5 * 4)
    metric = CRPS()
    metric.update(samples, truth)
    assert metric.compute()["crps"].item() == pytest.approx((skill - pairs).mean().item(), rel=1e-13)


def test_spread_skill_by_hand():
    metric = SpreadSkill()
    metric.update(ensemble(0.0, 2.0), torch.full((1, 1, 1, 1), 3.0))
    result = values(metric.compute())
    # variance (K - 1 divisor) 2, ensemble-mean error 2, ratio sqrt(3/2 * 2 / 4)
    assert (result["spread"], result["skill"]) == pytest.approx((math.sqrt(2), 2.0), rel=1e-15)
    assert result["spread_skill"] == pytest.approx(math.sqrt(3) / 2, rel=1e-15)


def test_spread_skill_is_one_for_a_calibrated_ensemble():
    # truth and 4 members all drawn from one distribution: ratio -> 1 (2e5 points)
    draws = torch.randn(50, 5, 1, 40, 100, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    metric = SpreadSkill()
    metric.update(draws[:, 1:], draws[:, 0])
    assert metric.compute()["spread_skill"].item() == pytest.approx(1.0, abs=0.01)


def test_regime_labels():
    nodes = torch.linspace(0, 2 * math.pi, 8)
    wave = nodes.sin().expand(6, 2, 8, 8).clone()  # every sample starts with spatial std s0
    s0 = spatial_std(wave[:1]).item()
    wave[1] *= 0.1  # std 0.1 s0 < 0.2 s0: flat
    wave[2, 0, 3, 4] = float("nan")  # non-finite: diverged
    wave[3, 1, 0, 0] = 10.5  # beyond 10 x data_range: diverged
    wave[4, 1, 0, 0] = 9.5  # within it: balanced
    wave[5] *= 0.1  # flat against s0, balanced against a reference of 0.4 s0
    reference = torch.tensor([s0, s0, s0, s0, s0, 0.4 * s0])
    assert regime(wave, reference, data_range=1.0).tolist() == [BALANCED, FLAT, DIVERGED, DIVERGED, BALANCED, BALANCED]
    assert regime(wave, s0, data_range=1.0, diverge_factor=20.0).tolist() == [BALANCED, FLAT, DIVERGED, BALANCED, BALANCED, FLAT]
    corner = torch.ones(8, 8, dtype=torch.bool)
    corner[0, 0] = False  # masks the spike of sample 3, not the NaN of sample 2
    assert regime(wave, reference, data_range=1.0, mask=corner)[2:4].tolist() == [DIVERGED, BALANCED]
    assert [REGIMES[c] for c in (BALANCED, FLAT, DIVERGED)] == ["balanced", "flat", "diverged"]


def test_regime_count():
    metric = RegimeCount()
    metric.update(torch.tensor([0, 2, 2]))
    metric.update(torch.tensor([1, 0]))
    assert values(metric.compute()) == {"balanced": 2, "flat": 1, "diverged": 2}
    with pytest.raises(ValueError, match="codes"):
        metric.update(torch.tensor([3]))


D = 2 * math.pi / 8
MASK = torch.ones(8, 8, dtype=torch.bool)
MASK[:, :2] = False


def dyadic(*shape, seed):
    """Multiples of 1/8 in [-2, 2): their sums are exact in float64, in any order."""
    return torch.randint(-16, 16, shape, generator=torch.Generator().manual_seed(seed)).double() / 8


FIELDS, TRUTHS = dyadic(7, 4, 8, 8, seed=0), dyadic(7, 4, 8, 8, seed=1)
ENSEMBLES = dyadic(7, 3, 4, 8, 8, seed=2)
FIELDS[2, 1, 3, 3] = ENSEMBLES[2, 0, 1, 3, 3] = float("nan")  # a diverged sample in the first shard
FIELDS[5, 2, 0, 0] = ENSEMBLES[5, 2, 0, 0, 0] = float("inf")  # and one in the second
VALID = torch.tensor([True, True, True, False, True, True, True])

CASES = {
    "field_rmse": (lambda: FieldRMSE(scale=torch.tensor([0.5, 2.0]), mask=MASK), (FIELDS, TRUTHS)),
    "vorticity_fd": (lambda: VorticityError(0.1, 0.2, periodic=False, mask=MASK), (FIELDS, TRUTHS)),
    "vorticity_spectral": (lambda: VorticityError(D, D, periodic=True), (FIELDS, TRUTHS)),
    "spectrum": (lambda: SpectrumLogError(D, D, mask=MASK), (FIELDS, TRUTHS)),
    "residual": (ResidualRatio, (FIELDS.flatten(1), TRUTHS.flatten(1), 0.25)),
    "energy": (lambda: EnergyRatio(mask=MASK), (FIELDS, TRUTHS)),
    "crps": (lambda: CRPS(mask=MASK), (ENSEMBLES, TRUTHS)),
    "spread_skill": (SpreadSkill, (ENSEMBLES, TRUTHS)),
}


def shard(args, rows):
    return tuple(a[rows] if torch.is_tensor(a) else a for a in args)


@pytest.mark.parametrize("name", CASES)
def test_merged_shards_equal_one_metric_on_all_data(name):
    make, args = CASES[name]
    whole = make()
    whole.update(*args, valid=VALID)
    first, second = make(), make()
    first.update(*shard(args, slice(0, 3)), valid=VALID[:3])  # uneven shards, like ranks with
    second.update(*shard(args, slice(3, 5)), valid=VALID[3:5])  # different batch counts
    second.update(*shard(args, slice(5, 7)), valid=VALID[5:])
    assert all(fx.__name__ == "dim_zero_sum" for fx in whole._reductions.values())
    first.merge_state(second)
    merged, expected = values(first.compute()), values(whole.compute())
    assert merged == pytest.approx(expected, rel=1e-14)
    assert expected["excluded"] == 3  # valid=False, the NaN and the inf sample
    assert all(math.isfinite(v) for v in expected.values())


@pytest.mark.parametrize("name", CASES)
def test_an_excluded_sample_leaves_the_metric_of_the_others(name):
    make, args = CASES[name]
    with_bad = make()
    with_bad.update(*args, valid=VALID)
    keep = torch.tensor([0, 1, 4, 6])  # rows 2, 5 hold NaN / inf, row 3 is marked invalid
    clean = make()
    clean.update(*shard(args, keep))
    result, expected = values(with_bad.compute()), values(clean.compute())
    assert result.pop("excluded") == 3 and expected.pop("excluded") == 0
    assert result == pytest.approx(expected, rel=1e-14)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="truth"):
        FieldRMSE().update(X, TRUTH[:, :1])
    with pytest.raises(ValueError, match="valid"):
        FieldRMSE().update(X, TRUTH, valid=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="mask"):
        FieldRMSE(mask=torch.ones(3, 3, dtype=torch.bool)).update(X, TRUTH)
    with pytest.raises(ValueError, match="samples"):
        CRPS().update(X[:, None], TRUTH)
    with pytest.raises(ValueError, match="scale"):
        FieldRMSE(scale=torch.tensor([1.0, 0.0]))


def test_a_batch_with_every_sample_excluded_only_counts_them():
    from ldiff.metrics import EnergyRatio, FieldRMSE, SpectrumLogError, VorticityError

    x = torch.randn(2, 2, 16, 16)
    none = torch.tensor([False, False])
    for metric in (FieldRMSE(), VorticityError(1.0, 1.0, True), SpectrumLogError(1.0, 1.0), EnergyRatio()):
        metric.update(x, x, none)
        result = metric.compute()
        assert int(result["excluded"]) == 2
        assert all(torch.isnan(v) for k, v in result.items() if k != "excluded")


def wake_windows(frequencies, x, y, frames=16, dt=1.0):
    """Windows (B, 2T, H, W): v a wave of each frequency travelling downstream, u noise."""
    t = dt * torch.arange(frames, dtype=torch.float64)
    f = torch.as_tensor(frequencies, dtype=torch.float64)
    wave = torch.sin(2 * math.pi * (f[:, None, None] * t[None, :, None] - x[None, None, :] / 4.8))
    v = wave[:, :, None, :] * torch.exp(-y[None, None, :, None].square())
    return torch.stack([torch.randn_like(v), v], dim=2).flatten(1, 2)


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")  # the last line computes an empty suite on purpose
def test_strouhal_error_scores_each_sample_against_its_truth_and_counts_flat_windows():
    from ldiff.evaluate import ReconstructionMetrics
    from ldiff.metrics import DIVERGED
    from ldiff.observe import Subsample

    torch.manual_seed(0)
    x, y = torch.linspace(-4, 12, 81, dtype=torch.float64), torch.linspace(-4, 4, 33, dtype=torch.float64)
    truth = wake_windows([0.18, 0.18], x, y)
    # item 0: the truth and a window 10 % faster; item 1: a flat window and a diverged one
    recon = torch.stack([wake_windows([0.18, 0.198], x, y), torch.stack([torch.zeros_like(truth[1]), truth[1]])])
    codes = torch.tensor([[0, 0], [0, DIVERGED]])
    wake = {"dt": 1.0, "x": x, "y": y, "diameter": 1.0, "center": (0.0, 0.0)}
    metrics = ReconstructionMetrics(Subsample(4), 0.1, float(x[1] - x[0]), float(y[1] - y[0]), False, wake=wake)
    metrics.update(recon.float(), truth.float(), Subsample(4)(truth.float()), codes)
    out = metrics.compute()
    assert out["strouhal_unresolved"] == 1  # the flat window; the diverged one is not scored at all
    assert out["strouhal_truth"] == pytest.approx(0.18, rel=5e-3)
    assert out["strouhal"] == pytest.approx((0.18 + 0.198) / 2, rel=5e-3)
    assert out["strouhal_error"] == pytest.approx(0.05, abs=5e-3)  # (0 + 0.1) / 2
    assert "strouhal" not in ReconstructionMetrics(Subsample(4), 0.1, 0.2, 0.25, False).compute()


def test_the_posterior_mean_is_scored_for_its_energy_and_its_shedding_frequency():
    """``energy_ratio_mean`` and ``strouhal_error_mean`` score the mean of each item's
    kept samples. Item 0: v shifted by +-60 degrees of phase (u the truth's): the mean's
    v is cos 60 = 0.5 of the truth's, at the same frequency. Item 1: a flat sample and a
    diverged one: the mean is the flat sample, unresolved. Item 2: the truth and a flat
    sample: the mean is half the truth, resolved, where one of its samples is not."""
    from ldiff.evaluate import ReconstructionMetrics
    from ldiff.metrics import DIVERGED
    from ldiff.observe import Subsample

    torch.manual_seed(0)
    x, y = torch.linspace(-4, 12, 81, dtype=torch.float64), torch.linspace(-4, 4, 33, dtype=torch.float64)
    truth = wake_windows([0.18, 0.18, 0.18], x, y)
    t = torch.arange(16, dtype=torch.float64)
    shifted = []
    for phase in (math.pi / 3, -math.pi / 3):
        v = torch.sin(2 * math.pi * (0.18 * t[:, None, None] - x / 4.8) + phase) * torch.exp(-y[:, None].square())
        shifted.append(torch.stack([truth[0, 0::2], v], dim=1).flatten(0, 1))
    flat = torch.zeros_like(truth[0])
    recon = torch.stack([torch.stack(shifted), torch.stack([flat, truth[1]]), torch.stack([truth[2], flat])])
    codes = torch.tensor([[0, 0], [0, DIVERGED], [0, 0]])
    wake = {"dt": 1.0, "x": x, "y": y, "diameter": 1.0, "center": (0.0, 0.0)}
    metrics = ReconstructionMetrics(Subsample(4), 0.1, float(x[1] - x[0]), float(y[1] - y[0]), False, wake=wake)
    metrics.update(recon.float(), truth.float(), Subsample(4)(truth.float()), codes)
    out = metrics.compute()

    def std(field):  # the root of the grid variance per channel, averaged over channels
        return field.double().flatten(1).var(dim=1, correction=0).mean().sqrt()

    mean0 = (shifted[0] + shifted[1]) / 2
    torch.testing.assert_close(mean0[1::2], truth[0, 1::2] / 2, atol=1e-6, rtol=0)
    expected = [std(mean0.float()) / std(truth[0].float()), 0.0, std(truth[2].float() / 2) / std(truth[2].float())]
    assert out["energy_ratio_mean"] == pytest.approx(float(sum(expected) / 3), rel=1e-6)
    assert out["strouhal_unresolved_mean"] == 1 and out["strouhal_unresolved"] == 2
    assert out["strouhal_error_mean"] == pytest.approx(0.0, abs=1e-6)  # items 0 and 2 shed at the truth's frequency


def test_divergence_ratio_is_zero_for_a_solenoidal_truth_and_exact_for_an_added_gradient():
    """Truth: the curl of psi = sin x sin y (vorticity 2 sin x sin y, rms 1); the
    reconstruction adds the gradient of phi = a cos x cos 2y, whose divergence
    -5 a cos x cos 2y has rms 5a/2: ``divergence`` = 2.5 a, ``divergence_truth`` = 0
    (spectral derivatives on the periodic square)."""
    from ldiff.metrics import DivergenceRatio

    n, a = 32, 0.2
    y, x = torch.meshgrid(*(2 * math.pi * torch.arange(n, dtype=torch.float64) / n,) * 2, indexing="ij")
    truth = torch.stack([torch.sin(x) * torch.cos(y), -torch.cos(x) * torch.sin(y)])[None]
    gradient = torch.stack([-a * torch.sin(x) * torch.cos(2 * y), -2 * a * torch.cos(x) * torch.sin(2 * y)])[None]
    metric = DivergenceRatio(2 * math.pi / n, 2 * math.pi / n, periodic=True)
    metric.update(torch.cat([truth + gradient, truth]), torch.cat([truth, truth]), torch.tensor([True, False]))
    out = metric.compute()
    assert float(out["divergence"]) == pytest.approx(2.5 * a, rel=1e-10)
    assert float(out["divergence_truth"]) < 1e-12 and int(out["excluded"]) == 1
