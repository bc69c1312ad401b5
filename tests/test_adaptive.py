"""adaptive: the correction is xi ||eps_hat|| along the dps-sum direction, per sample;
zero-residual guard; posterior quality; independence; bad input."""

import pytest
import torch
from oracle import STD, alone_and_batched, bad_inputs, problem, relative_rmse, residual_rms, sample, sample_mean

from ldiff.guidance.adaptive import Adaptive
from ldiff.guidance.base import Diagnostics, Observation
from ldiff.guidance.dps_sum import DPSSum


@pytest.mark.parametrize("t", [0.05, 0.5, 0.9])
def test_correction_has_norm_xi_eps_along_dps_sum(t):
    pb = problem(stride=4, batch=2)
    # Two observation sets of very different strength: a batch-wide norm would mix them.
    obs = Observation(torch.stack([pb.obs.y[0], 30 * pb.obs.y[1]]), pb.obs.op, STD, pb.obs.field_shape)
    tt = torch.full((2,), t)
    x_t = pb.prior.schedule.perturb(pb.truth, tt, torch.randn(pb.truth.shape, generator=torch.Generator().manual_seed(1)))
    d = Diagnostics()
    eps_tilde = Adaptive(xi=0.7).guided_eps(pb.denoiser, x_t, tt, obs, d)
    eps_hat, _ = pb.denoiser(x_t, tt)
    direction = eps_hat - DPSSum().guided_eps(pb.denoiser, x_t, tt, obs, None)
    correction = eps_hat - eps_tilde
    torch.testing.assert_close(correction.flatten(1).norm(dim=1), 0.7 * eps_hat.flatten(1).norm(dim=1), rtol=1e-5, atol=0)
    cosine = torch.nn.functional.cosine_similarity(correction.flatten(1), direction.flatten(1))
    torch.testing.assert_close(cosine, torch.ones(2), rtol=0, atol=1e-5)
    v = d.stacked()
    torch.testing.assert_close(v["ratio"][0], torch.full((2,), 0.7), rtol=1e-5, atol=0)
    expected = direction.flatten(1).norm(dim=1) / eps_hat.flatten(1).norm(dim=1)
    torch.testing.assert_close(v["likelihood_ratio"][0], expected, rtol=1e-4, atol=0)


def test_zero_residual_gives_no_correction():
    pb = problem(stride=4)
    tt = torch.full((1,), 0.5)
    x_t = pb.prior.schedule.perturb(pb.truth, tt, torch.zeros_like(pb.truth))
    eps_hat, x_hat = pb.denoiser(x_t, tt)
    obs = Observation(pb.obs.op(x_hat), pb.obs.op, STD, pb.obs.field_shape)
    torch.testing.assert_close(Adaptive().guided_eps(pb.denoiser, x_t, tt, obs, None), eps_hat)


def test_posterior_quality_overfits_the_data():
    """Measured (stride 4, K = 32, 64 DDIM steps, xi = 1): mean error 0.381 vs 0.104 for
    exact samples; one sample's residual 0.04 std vs 1.04. With a steep spectrum
    ||eps_hat|| stays large near t = 0 (the many small-scale modes are still mostly
    noise), so a correction of that size drives the samples onto the data."""
    k = 32
    pb = problem(stride=4)
    x = sample(Adaptive(1.0), pb, k)
    assert 0.3 < relative_rmse(sample_mean(x, k), pb.posterior_mean).item() < 0.45
    assert residual_rms(x[:1], pb.obs).item() / STD < 0.1


def test_samples_are_independent():
    alone, batched = alone_and_batched(Adaptive())
    torch.testing.assert_close(alone, batched, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", list(bad_inputs()))
def test_bad_input(case):
    pattern, run = bad_inputs()[case]
    with pytest.raises(ValueError, match=pattern):
        run(Adaptive())


@pytest.mark.parametrize("kwargs, name", [({"xi": 0.0}, "xi"), ({"xi": float("nan")}, "xi"), ({"gamma": -1.0}, "gamma")])
def test_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Adaptive(**kwargs)


def test_cap_never_scales_the_correction_up():
    """Capped: the factor is min(1, xi ||eps|| / ||sigma g||). Observations 300x stronger
    for sample 1 make its dps-sum correction exceed xi ||eps_hat||: it is scaled down to
    xi ||eps_hat||; sample 0's weak correction (t = 0.95, ratio << xi) is left as dps-sum's."""
    pb = problem(stride=4, batch=2)
    obs = Observation(torch.stack([pb.obs.y[0], 300 * pb.obs.y[1]]), pb.obs.op, STD, pb.obs.field_shape)
    tt = torch.full((2,), 0.95)
    x_t = pb.prior.schedule.perturb(pb.truth, tt, torch.randn(pb.truth.shape, generator=torch.Generator().manual_seed(1)))
    eps_hat, _ = pb.denoiser(x_t, tt)
    dps = eps_hat - DPSSum().guided_eps(pb.denoiser, x_t, tt, obs, None)
    ratio = dps.flatten(1).norm(dim=1) / eps_hat.flatten(1).norm(dim=1)
    xi = float((ratio[0] * ratio[1]).sqrt())  # between the two samples' natural ratios
    assert ratio[0] < xi / 3 and ratio[1] > 3 * xi
    correction = eps_hat - Adaptive(xi=xi, cap=True).guided_eps(pb.denoiser, x_t, tt, obs, None)
    torch.testing.assert_close(correction[0], dps[0], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(correction[1].norm(), xi * eps_hat[1].norm(), rtol=1e-5, atol=0)
    uncapped = eps_hat - Adaptive(xi=xi).guided_eps(pb.denoiser, x_t, tt, obs, None)
    assert uncapped[0].norm() > 1.5 * dps[0].norm()
