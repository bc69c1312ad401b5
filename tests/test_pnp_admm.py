"""PnP-ADMM: the closed-form data step, the noise-level map, and convergence to the exact
Gaussian posterior mean (tests/oracle.py)."""

import math

import pytest
import torch

from oracle import FIELD_SHAPE, problem, relative_rmse, sample, sample_mean

from ldiff.diffusion.sampler import PredictorCorrector
from ldiff.diffusion.schedules import CosineSchedule, LinearBetaSchedule
from ldiff.guidance.base import Observation
from ldiff.guidance.pnp_admm import PnPADMM, data_prox, noise_time
from ldiff.observe import BlockMean, Pixels


@pytest.mark.parametrize("op", [Pixels.random((6, 6), 0.4, seed=1), BlockMean(2)])
def test_data_prox_zeroes_the_gradient(op):
    """argmin ||y - A x||^2/(2 s^2) + rho/2 ||x - w||^2 with one std per observation and one rho
    per sample: the objective's gradient A^T (A x - y)/s^2 + rho (x - w) vanishes."""
    field = (2, 6, 6)
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(3, *field, generator=generator, dtype=torch.float64)
    y = op(torch.randn(3, *field, generator=generator, dtype=torch.float64))
    std = 0.05 + torch.rand(y.shape[1:], generator=generator, dtype=torch.float64)
    rho = torch.tensor([0.01, 1.0, 100.0], dtype=torch.float64)
    x = data_prox(w, Observation(y, op, std, field), rho)
    gradient = op.adjoint((op(x) - y) / std**2, field) + rho[:, None, None, None] * (x - w)
    assert gradient.abs().max().item() < 1e-10


@pytest.mark.parametrize("schedule", [CosineSchedule(1e-3), LinearBetaSchedule()])
def test_noise_time_inverts_the_noise_to_signal_ratio(schedule):
    for sigma_bar in (0.01, 0.3, 1.0, 10.0, 100.0):
        t = noise_time(schedule, sigma_bar)
        assert float(schedule.sigma_bar(t)) == pytest.approx(sigma_bar, rel=1e-9)
    with pytest.raises(ValueError, match="rho_min"):
        noise_time(schedule, 1e4)


def test_fixed_penalty_converges_to_the_exact_posterior_mean():
    """With a Gaussian prior the denoiser at level 1/sqrt(rho) is exactly prox_{g/rho}, so ADMM
    converges to argmin f + g = E[x | y]. Measured after 64 iterations at rho = 1: 1e-3."""
    pb = problem(stride=4)
    x = sample(PnPADMM(1.0, 1.0), pb, 1, steps=64)
    assert relative_rmse(x, pb.posterior_mean).item() < 5e-3


def test_increasing_penalty_is_a_point_estimate():
    """Defaults (rho 0.1 -> 100, 64 steps), stride 4 and 2: error 0.025 and 0.004 of ||E[x|y]||.
    K = 16 starts from different noise yet agree: at stride 2 their spread is 1.5e-6 of the
    exact posterior's (0.2% at stride 4, K = 256)."""
    k = 16
    for stride, bound in ((4, 0.04), (2, 0.01)):
        pb = problem(stride=stride)
        x = sample(PnPADMM(), pb, k)
        assert relative_rmse(sample_mean(x, k), pb.posterior_mean).item() < bound
    spread = (x.var(0).mean() / pb.posterior_samples(k).var(0).mean()).sqrt()
    assert spread.item() < 1e-4


def test_penalties_are_geometric():
    rhos = PnPADMM(0.1, 100.0).penalties(4)
    assert rhos == pytest.approx([0.1, 1.0, 10.0, 100.0], rel=1e-12)
    assert PnPADMM(0.5, 2.0).penalties(1) == [0.5]


def test_batch_of_two_equals_each_alone():
    pb = problem()
    two = problem(batch=2, seed=7)
    obs = Observation(torch.cat([pb.obs.y, two.obs.y[1:]]), pb.obs.op, pb.obs.std, FIELD_SHAPE)
    x1 = torch.randn(2, *FIELD_SHAPE, generator=torch.Generator().manual_seed(0))
    sampler = PredictorCorrector(pb.denoiser.schedule, steps=16)
    together = PnPADMM().reconstruct(pb.denoiser, obs, x1, sampler)
    alone = PnPADMM().reconstruct(pb.denoiser, pb.obs, x1[:1], sampler)
    torch.testing.assert_close(together[:1], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rho_min, rho_max", [(0.0, 1.0), (2.0, 1.0), (1.0, math.inf)])
def test_bad_parameters(rho_min, rho_max):
    with pytest.raises(ValueError, match="PnPADMM"):
        PnPADMM(rho_min, rho_max)


def test_penalty_outside_the_schedule_is_refused():
    pb = problem()  # cosine, eta 1e-3: noise levels 1e-3 .. 1e3, so rho at most 1e6
    sampler = PredictorCorrector(pb.denoiser.schedule, steps=4)
    with pytest.raises(ValueError, match="outside"):
        PnPADMM(1.0, 1e8).reconstruct(pb.denoiser, pb.obs, torch.zeros(1, *FIELD_SHAPE), sampler)
