"""SkipPreconditioned: exact for the unit Gaussian prior when the network outputs zero."""

import torch

from ldiff.diffusion.precond import SkipPreconditioned
from ldiff.diffusion.schedules import CosineSchedule, LinearBetaSchedule
from ldiff.nets.gaussian import GaussianPrior
from ldiff.nets.unet import UNet


class Zero(torch.nn.Module):
    in_channels = 2

    def forward(self, x_t, t, cond=None):
        return torch.zeros_like(x_t)


def test_a_zero_network_gives_the_exact_eps_of_the_unit_gaussian_prior():
    for schedule in (CosineSchedule(1e-3), LinearBetaSchedule()):
        exact = GaussianPrior(schedule, torch.ones(2, 8, 8), torch.zeros(2))
        model = SkipPreconditioned(Zero(), schedule)
        x_t = torch.randn(5, 2, 8, 8)
        t = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0])
        torch.testing.assert_close(model(x_t, t), exact(x_t, t), rtol=1e-5, atol=1e-6)


def test_the_network_enters_with_weight_mu_over_sqrt_mu2_plus_sigma2():
    schedule = CosineSchedule(1e-3)

    class One(Zero):
        def forward(self, x_t, t, cond=None):
            return torch.ones_like(x_t)

    x_t = torch.zeros(2, 2, 4, 4)
    t = torch.tensor([0.0, 1.0])
    out = SkipPreconditioned(One(), schedule)(x_t, t)
    mu, sigma = schedule.mu(t), schedule.sigma(t)
    torch.testing.assert_close(out[:, 0, 0, 0], (mu / (mu**2 + sigma**2).sqrt()).float())
    # at t = 1 a network error reaches x_hat = (x_t - sigma eps)/mu multiplied by ~1, not 1000
    assert abs((sigma[1] * out[1, 0, 0, 0] / mu[1]).item() - 1.0) < 1e-3


def test_parameters_and_channels_are_the_networks():
    net = UNet(2, widths=[8, 16], blocks_per_level=1)
    model = SkipPreconditioned(net, CosineSchedule())
    assert model.in_channels == 2 and model.cond_channels == 0
    assert set(model.state_dict()) == {f"net.{k}" for k in net.state_dict()}
