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
