"""mmps on the Gaussian oracle, where it is exact: the Tweedie covariance, the guided
Tweedie estimate equal to E[x | x_t, y] (dense conditioning), posterior quality close to
exact samples at every N, independence, bad input."""

import pytest
import torch
from oracle import (
    FIELD_SHAPE,
    STD,
    alone_and_batched,
    bad_inputs,
    dense_conditional_mean,
    problem,
    relative_rmse,
    residual_rms,
    sample,
    sample_mean,
)

from ldiff.diffusion.denoise import Denoiser, tweedie
from ldiff.guidance.base import Diagnostics, Observation
from ldiff.guidance.mmps import MMPS
from ldiff.nets.gaussian import _fft, _ifft


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_tweedie_covariance_is_exact(t):
    r"""(sigma^2/mu) J v equals Cov[x | x_t] v = sigma^2 Sigma (mu^2 Sigma + sigma^2)^{-1} v.

    In float64: at large t, x_hat = (x_t - sigma eps_hat)/mu divides a near-cancelling
    difference by a small mu, and float32 keeps only ~1e-1 relative precision in J at t = 0.9."""
    prior = problem().prior.double()
    tt = torch.full((1,), t, dtype=torch.float64)
    x = torch.randn((1, *FIELD_SHAPE), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x.requires_grad_(True)
    _, x_hat = Denoiser(prior, prior.schedule)(x, tt)
    v = torch.randn((1, *FIELD_SHAPE), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (jv,) = torch.autograd.grad(x_hat, x, v)
    mu, sigma = float(prior.schedule.mu(t)), float(prior.schedule.sigma(t))
    exact = _ifft(_fft(v) * sigma**2 * prior.power / (mu**2 * prior.power + sigma**2))
    torch.testing.assert_close(sigma**2 / mu * jv, exact, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_guided_estimate_is_the_exact_conditional_mean(t):
    pb = problem(stride=4, batch=2)
    prior = pb.prior.double()
    obs = Observation(pb.obs.y.double(), pb.obs.op, STD, FIELD_SHAPE)
    tt = torch.full((2,), t, dtype=torch.float64)
    noise = torch.randn((2, *FIELD_SHAPE), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x_t = prior.schedule.perturb(pb.truth.double(), tt, noise)
    d = Diagnostics()
    eps_tilde = MMPS(maxiter=300).guided_eps(Denoiser(prior, prior.schedule), x_t, tt, obs, d)
    x_hat = tweedie(x_t, eps_tilde, *prior.schedule.coefficients(tt, x_t))
    exact = dense_conditional_mean(prior, x_t, t, obs.y, obs.op, STD)
    assert relative_rmse(x_hat, exact).max() < 1e-6
    assert d.stacked()["gamma_share"].isnan().all()


@pytest.mark.parametrize(
    "stride, exact_error, error_bound, residual",
    # Measured (K = 32, 64 DDIM steps, maxiter 8): mean error 0.208 / 0.100 / 0.042 against
    # 0.237 / 0.104 / 0.045 for 32 exact samples; one sample's residual 1.02 / 0.88 / 0.89
    # std against 0.81 / 1.04 / 0.99 for one exact sample.
    [(8, 0.237, 0.25, 1.02), (4, 0.104, 0.12, 0.88), (2, 0.045, 0.05, 0.89)],
)
def test_posterior_quality_is_close_to_exact_at_every_n(stride, exact_error, error_bound, residual):
    k = 32
    pb = problem(stride=stride)
    exact = pb.posterior_samples(k)
    x = sample(MMPS(maxiter=8), pb, k)
    assert relative_rmse(sample_mean(exact, k), pb.posterior_mean).item() == pytest.approx(exact_error, abs=0.005)
    assert relative_rmse(sample_mean(x, k), pb.posterior_mean).item() < error_bound
    assert residual_rms(x[:1], pb.obs).item() / STD == pytest.approx(residual, abs=0.05)


def test_one_iteration_is_close():
    """Measured (stride 2, maxiter 1): mean error 0.059 (exact samples 0.045), residual 0.93 std."""
    k = 32
    pb = problem(stride=2)
    x = sample(MMPS(maxiter=1), pb, k)
    assert relative_rmse(sample_mean(x, k), pb.posterior_mean).item() < 0.07
    assert 0.85 < residual_rms(x[:1], pb.obs).item() / STD < 1.0


def test_samples_are_independent():
    alone, batched = alone_and_batched(MMPS(maxiter=4))
    torch.testing.assert_close(alone, batched, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", list(bad_inputs()))
def test_bad_input(case):
    pattern, run = bad_inputs()[case]
    with pytest.raises(ValueError, match=pattern):
        run(MMPS())


@pytest.mark.parametrize("maxiter", [0, -1, 2.0, True])
def test_bad_maxiter(maxiter):
    with pytest.raises(ValueError, match="maxiter"):
        MMPS(maxiter)
