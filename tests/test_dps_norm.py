"""dps-norm: closed-form guided eps, an N-independent correction near t = 0, posterior
quality (one zeta cannot serve every N), independence, bad input."""

import pytest
import torch
from oracle import STD, alone_and_batched, bad_inputs, norm_ratios, problem, relative_rmse, residual_rms, sample, sample_mean

from ldiff.guidance.dps_norm import DPSNorm
from ldiff.nets.gaussian import _fft, _ifft


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_guided_eps_matches_closed_form(t):
    """eps_tilde = eps_hat - sigma zeta J A^T e / ||e|| per sample, J the exact Gaussian Jacobian."""
    pb = problem(stride=4, batch=2)
    tt = torch.full((2,), t)
    x_t = pb.prior.schedule.perturb(pb.truth, tt, torch.randn(pb.truth.shape, generator=torch.Generator().manual_seed(1)))
    eps_tilde = DPSNorm(zeta=3.0).guided_eps(pb.denoiser, x_t, tt, pb.obs, None)
    eps_hat, x_hat = pb.denoiser(x_t, tt)
    mu, sigma = float(pb.prior.schedule.mu(t)), float(pb.prior.schedule.sigma(t))
    e = pb.obs.y - pb.obs.op(x_hat)
    unit = pb.obs.op.adjoint(e / e.flatten(1).norm(dim=1)[:, None, None, None], pb.obs.field_shape)
    jacobian_unit = _ifft(_fft(unit) * mu * pb.prior.power / (mu**2 * pb.prior.power + sigma**2))
    torch.testing.assert_close(eps_tilde, eps_hat - sigma * 3.0 * jacobian_unit, rtol=1e-4, atol=1e-6)


def test_correction_does_not_grow_with_n_near_t0():
    """Measured ratio ||correction|| / ||eps_hat|| at t = 0.05, strides 8, 4, 2: 0.00397,
    0.00397, 0.00398 (zeta = 1): the pull is a unit vector over the observations."""
    ratios = norm_ratios(DPSNorm(1.0), [0.05])[:, 0]
    torch.testing.assert_close(ratios, torch.full((3,), 0.00397), rtol=0.02, atol=0)


def test_one_zeta_cannot_serve_every_n():
    """Measured (K = 16, 64 DDIM steps), one sample's residual in units of std: zeta = 1 at
    stride 4: 12.4 (the prior: data ignored); zeta = 30: 0.035 at stride 8 (overfit), 3.25
    at stride 2 (underfit). Fitting at the noise needs zeta ~ ||e|| / std^2 ~ sqrt(N) / std."""
    k = 16
    mid, sparse, dense = problem(stride=4), problem(stride=8), problem(stride=2)
    x = sample(DPSNorm(1.0), mid, k)
    assert residual_rms(x[:1], mid.obs).item() / STD > 8
    assert relative_rmse(sample_mean(x, k), mid.posterior_mean).item() > 0.7
    assert residual_rms(sample(DPSNorm(30.0), sparse, k)[:1], sparse.obs).item() / STD < 0.1
    assert residual_rms(sample(DPSNorm(30.0), dense, k)[:1], dense.obs).item() / STD > 2.5


def test_samples_are_independent():
    alone, batched = alone_and_batched(DPSNorm(10.0))
    torch.testing.assert_close(alone, batched, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", list(bad_inputs()))
def test_bad_input(case):
    pattern, run = bad_inputs()[case]
    with pytest.raises(ValueError, match=pattern):
        run(DPSNorm())


@pytest.mark.parametrize("zeta", [0.0, -1.0, float("inf")])
def test_bad_zeta(zeta):
    with pytest.raises(ValueError, match="zeta"):
        DPSNorm(zeta)


def test_constant_step_moves_every_predictor_step_by_zeta_grad():
    """step='constant': the guidance's share of the predictor update
    x_s - (r x_t + (sigma_s - r sigma_t) eps_hat) is -zeta' grad ||e|| at every t."""
    from ldiff.diffusion.sampler import PredictorCorrector

    from ldiff.diffusion.denoise import Denoiser
    from ldiff.guidance.base import Observation

    pb = problem(stride=4)  # in float64: the unguided update cancels to ~1e-5 in float32 at t = 1
    prior = pb.prior.double()
    pb.denoiser = Denoiser(prior, prior.schedule)
    pb.obs = Observation(pb.obs.y.double(), pb.obs.op, STD, pb.obs.field_shape)
    sampler = PredictorCorrector(pb.prior.schedule, steps=8)
    seen = []

    def record_step(i, s, x_prev, x):
        seen.append((i, x_prev.clone(), x.clone()))
        return x

    strategy = DPSNorm(zeta=0.3, step="constant")
    x1 = torch.randn((1, *pb.truth.shape[1:]), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    strategy.reconstruct(pb.denoiser, pb.obs, x1, sampler, callback=record_step)
    grid = sampler.times().double()
    for i, x_t, x_s in seen[:7]:
        t, s = grid[i].expand(1), grid[i + 1].expand(1)
        x = x_t.clone().requires_grad_(True)
        eps_hat, x_hat = pb.denoiser(x, t)
        (grad,) = torch.autograd.grad((pb.obs.y - pb.obs.op(x_hat)).flatten(1).norm(dim=1).sum(), x)
        mu_t, sigma_t = pb.prior.schedule.coefficients(t, x)
        mu_s, sigma_s = pb.prior.schedule.coefficients(s, x)
        r = mu_s / mu_t
        unguided = r * x_t + (sigma_s - r * sigma_t) * eps_hat.detach()
        torch.testing.assert_close(x_s - unguided, -0.3 * grad, rtol=1e-6, atol=1e-9)


def test_constant_step_needs_the_sampler_and_a_known_name():
    pb = problem(stride=4)
    with pytest.raises(ValueError, match="needs the sampler"):
        DPSNorm(step="constant").guided_eps(pb.denoiser, pb.truth, torch.full((1,), 0.5), pb.obs, None)
    with pytest.raises(ValueError, match="step must be"):
        DPSNorm(step="paper")
