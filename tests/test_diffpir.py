"""DiffPIR against a dense proximal solve and the exact Gaussian posterior (tests/oracle.py)."""

import pytest
import torch

from oracle import FIELD_SHAPE, gaussian_prior, problem, relative_rmse, residual_rms, sample, sample_mean

from ldiff.diffusion.denoise import Denoiser
from ldiff.diffusion.sampler import PredictorCorrector
from ldiff.diffusion.schedules import LinearBetaSchedule
from ldiff.guidance.base import Diagnostics, Observation
from ldiff.guidance.diffpir import DiffPIR
from ldiff.observe import BlockMean


def test_one_step_is_the_dense_proximal_solution():
    """Linear-beta (sigma(0) = 0), one step 1 -> 0, zeta = 0: x_0 is exactly
    argmin ||y - A x||^2/(2 s^2) + lambda/(2 sigma_bar^2) ||x - x_hat||^2, solved densely."""
    schedule = LinearBetaSchedule()
    field, op, std, lam = (1, 6, 6), BlockMean(2), 0.2, 1e4
    prior = gaussian_prior(schedule, field_shape=field)
    generator = torch.Generator().manual_seed(0)
    x1 = torch.randn(1, *field, generator=generator)
    y = op(prior.sample(1, generator)) + std * torch.randn(1, 1, 3, 3, generator=generator)
    obs = Observation(y, op, std, field)
    x0 = DiffPIR(lam, 0.0).reconstruct(Denoiser(prior, schedule), obs, x1, PredictorCorrector(schedule, steps=1))

    one = torch.ones(1)
    x_hat = (x1 - schedule.sigma(one) * prior(x1, one)) / schedule.mu(one)
    weight = lam / float(schedule.sigma_bar(1.0)) ** 2
    a = op(torch.eye(36).reshape(36, *field)).reshape(36, -1).T.double()
    lhs = a.T @ a / std**2 + weight * torch.eye(36, dtype=torch.float64)
    rhs = a.T @ y.flatten().double() / std**2 + weight * x_hat.flatten().double()
    expected = torch.linalg.solve(lhs, rhs)
    torch.testing.assert_close(x0.flatten().double(), expected, rtol=1e-4, atol=1e-5)


def test_posterior_mean_and_residual_against_exact_posterior():
    """Measured (K = 256, 64 steps, lambda 1, zeta 1, std 0.1): sample-mean error 0.28 of
    ||E[x|y]|| at stride 4 (exact samples: 0.036), 0.065 at stride 2; residual 0.75 x the
    exact samples' (over-fit) and spread 0.84 x the exact posterior's."""
    k = 256
    pb = problem(stride=4)
    x = sample(DiffPIR(), pb, k)
    exact = pb.posterior_samples(k)
    rep = pb.obs.repeat(k)
    assert relative_rmse(sample_mean(x, k), pb.posterior_mean).item() < 0.35
    ratio = residual_rms(x, rep).mean() / residual_rms(exact, rep).mean()
    assert 0.65 < ratio.item() < 0.85
    spread = (x.var(0).mean() / exact.var(0).mean()).sqrt()
    assert 0.75 < spread.item() < 0.95
    dense = problem(stride=2)
    assert relative_rmse(sample_mean(sample(DiffPIR(), dense, k), k), dense.posterior_mean).item() < 0.09


def test_samples_are_independent_across_the_batch():
    """Sample 0 is bit-identical whatever sample 1 observes."""
    pb = problem()
    generator = torch.Generator().manual_seed(5)
    x1 = torch.randn(2, *FIELD_SHAPE, generator=generator)
    other = torch.randn(pb.obs.y.shape, generator=generator)
    sampler = PredictorCorrector(pb.denoiser.schedule, steps=16)
    outs = []
    for second in (pb.obs.y, other):
        obs = Observation(torch.cat([pb.obs.y, second]), pb.obs.op, pb.obs.std, FIELD_SHAPE)
        outs.append(DiffPIR().reconstruct(pb.denoiser, obs, x1, sampler, torch.Generator().manual_seed(3)))
    assert torch.equal(outs[0][0], outs[1][0])
    assert not torch.allclose(outs[0][1], outs[1][1])


def test_diagnostics_measure_the_change_of_epsilon():
    """With zeta = 0 the step is deterministic; correction_norm = ||eps_eff - eps_hat||, checked
    by recomputing step 0 by hand."""
    pb = problem()
    x1 = torch.randn(2, *FIELD_SHAPE, generator=torch.Generator().manual_seed(0))
    obs = pb.obs.repeat(2)
    diagnostics = Diagnostics()
    DiffPIR(2.0, 0.0).reconstruct(pb.denoiser, obs, x1, PredictorCorrector(pb.denoiser.schedule, 8), diagnostics=diagnostics)
    stats = diagnostics.stacked()
    assert stats["correction_norm"].shape == (8, 2) and stats["gamma_share"].isnan().all()
    t = torch.ones(2)
    mu, sigma = pb.denoiser.schedule.coefficients(t, x1)
    eps_hat, x_hat = pb.denoiser(x1, t)
    x0 = x_hat + obs.op.adjoint((obs.y - obs.op(x_hat)) / (1 + 2.0 * 0.1**2 * (mu / sigma).flatten()[0] ** 2), FIELD_SHAPE)
    eps_eff = (x1 - mu * x0) / sigma
    torch.testing.assert_close(stats["correction_norm"][0], (eps_eff - eps_hat).flatten(1).norm(dim=1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(stats["eps_norm"][0], eps_hat.flatten(1).norm(dim=1))


@pytest.mark.parametrize("lambda_, zeta", [(0.0, 0.5), (float("inf"), 0.5), (1.0, -0.1), (1.0, 1.5)])
def test_bad_parameters(lambda_, zeta):
    with pytest.raises(ValueError, match="DiffPIR"):
        DiffPIR(lambda_, zeta)
