"""SkipPreconditioned and GaussianPreconditioned: exact for their Gaussian prior when the network outputs zero."""

import pytest
import torch

from ldiff.diffusion.precond import GaussianPreconditioned, SkipPreconditioned, StandardizedGaussianPreconditioned, preconditioned
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


def _gaussian(channels=2, h=8, w=12, seed=0, field_mean=False):
    """(power, mean): a random even power and a mean field (C, H, W) or a constant per channel (C,)."""
    generator = torch.Generator().manual_seed(seed)
    power = torch.rand(channels, h, w, generator=generator) * 3 + 0.05
    power = 0.5 * (power + torch.roll(torch.flip(power, (-2, -1)), (1, 1), (-2, -1)))  # P(k) = P(-k)
    return power, torch.randn((channels, h, w) if field_mean else (channels,), generator=generator)


@pytest.mark.parametrize("field_mean", [False, True], ids=["channel-mean", "field-mean"])
def test_gaussian_skip_with_a_zero_network_is_the_exact_eps_of_the_fitted_gaussian(field_mean):
    power, mean = _gaussian(field_mean=field_mean)
    for schedule in (CosineSchedule(1e-3), LinearBetaSchedule()):
        exact = GaussianPrior(schedule, power, mean)
        model = GaussianPreconditioned(Zero(), schedule)
        model.set_gaussian(power, mean)
        x_t = torch.randn(5, 2, 8, 12)
        t = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0])
        torch.testing.assert_close(model(x_t, t), exact(x_t, t), rtol=1e-5, atol=1e-5)


def test_gaussian_skip_of_the_unit_gaussian_is_skip_preconditioning():
    schedule = CosineSchedule(1e-3)
    net = UNet(2, widths=[8, 16], blocks_per_level=1)
    model = GaussianPreconditioned(net, schedule)
    model.set_gaussian(torch.ones(2, 8, 8), torch.zeros(2))
    x_t, t = torch.randn(3, 2, 8, 8), torch.tensor([0.05, 0.5, 1.0])
    torch.testing.assert_close(model(x_t, t), SkipPreconditioned(net, schedule)(x_t, t), rtol=1e-5, atol=1e-6)


def test_an_unfitted_gaussian_skip_takes_the_stored_gaussian_from_a_state_dict():
    schedule = CosineSchedule(1e-3)
    power, mean = _gaussian()
    fitted = GaussianPreconditioned(UNet(2, widths=[8, 16], blocks_per_level=1), schedule)
    fitted.set_gaussian(power, mean)
    fresh = GaussianPreconditioned(UNet(2, widths=[8, 16], blocks_per_level=1), schedule)
    x_t, t = torch.randn(2, 2, 8, 12), torch.tensor([0.3, 0.8])
    with pytest.raises(RuntimeError, match="no Gaussian yet"):
        fresh(x_t, t)
    fresh.load_state_dict(fitted.state_dict())
    assert fresh.power.shape == (2, 8, 12) and fresh.mean.shape == (2,)
    torch.testing.assert_close(fresh(x_t, t), fitted(x_t, t))
    with pytest.raises(ValueError, match=r"fields of shape \(2, 8, 8\), the Gaussian's are \(2, 8, 12\)"):
        fresh(torch.randn(1, 2, 8, 8), t[:1])
    bad = dict(fitted.state_dict(), power=torch.ones(3, 8, 12))
    with pytest.raises(RuntimeError, match=r"power must be \(2, H, W\)"):
        fresh.load_state_dict(bad)
    with pytest.raises(RuntimeError, match="mean must be finite"):  # a checkpoint whose mean is NaN
        fresh.load_state_dict(dict(fitted.state_dict(), mean=torch.tensor([0.0, float("nan")])))


def test_a_sized_gaussian_skip_loads_a_mean_field_and_a_checkpoint_with_a_mean_per_channel():
    """ScorePrior sizes the buffers for a mean field before a resume loads its checkpoint;
    a checkpoint written before the mean was a field holds a (C,) mean and keeps it, with
    the epsilon of the same constant as a field."""
    schedule = CosineSchedule(1e-3)
    x_t, t = torch.randn(2, 2, 8, 12), torch.tensor([0.3, 0.8])
    for field_mean in (True, False):
        power, mean = _gaussian(field_mean=field_mean)
        fitted = GaussianPreconditioned(UNet(2, widths=[8, 16], blocks_per_level=1), schedule)
        fitted.set_gaussian(power, mean)
        sized = GaussianPreconditioned(UNet(2, widths=[8, 16], blocks_per_level=1), schedule)
        sized.size_gaussian((2, 8, 12))
        assert sized.mean.shape == (2, 8, 12) and not sized.fitted
        sized.load_state_dict(fitted.state_dict())
        assert sized.mean.shape == mean.shape
        torch.testing.assert_close(sized(x_t, t), fitted(x_t, t))
    as_field = GaussianPreconditioned(fitted.net, schedule)
    as_field.set_gaussian(power, mean[:, None, None].expand(2, 8, 12))
    torch.testing.assert_close(as_field(x_t, t), fitted(x_t, t), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match=r"mean \(2, H, W\) or \(2,\)"):
        sized.load_state_dict(dict(fitted.state_dict(), mean=torch.zeros(2, 8, 8)))


def test_preconditioning_is_chosen_by_name_and_booleans_keep_their_meaning():
    schedule, net = CosineSchedule(), Zero()
    assert isinstance(preconditioned(net, schedule, True), SkipPreconditioned)
    assert isinstance(preconditioned(net, schedule, "unit"), SkipPreconditioned)
    assert isinstance(preconditioned(net, schedule, "gaussian"), GaussianPreconditioned)
    assert isinstance(preconditioned(net, schedule, "gaussian-node"), StandardizedGaussianPreconditioned)
    assert preconditioned(net, schedule, False) is net and preconditioned(net, schedule, "none") is net
    with pytest.raises(ValueError, match="precondition must be one of"):
        preconditioned(net, schedule, "gauss")


def test_a_standardised_skip_loads_its_standardisation_and_gaussian_from_a_state_dict():
    """An unfitted gaussian-node module takes both the Gaussian of z and the per-node map
    from a state dict (the order of the two inside the load must not reset the map)."""
    schedule = CosineSchedule(1e-3)
    power, mean = _gaussian(field_mean=True)
    fitted = StandardizedGaussianPreconditioned(UNet(2, widths=[8, 16], blocks_per_level=1), schedule)
    fitted.set_standardization(torch.randn(2, 8, 12), torch.rand(2, 8, 12) + 0.1)
    fitted.set_gaussian(power, mean)
    fresh = StandardizedGaussianPreconditioned(UNet(2, widths=[8, 16], blocks_per_level=1), schedule)
    with pytest.raises(RuntimeError, match="no standardisation yet"):
        fresh.standardization
    fresh.load_state_dict(fitted.state_dict())
    assert fresh.fitted
    torch.testing.assert_close(fresh.standardization.scale, fitted.node_scale)
    x_t, t = torch.randn(2, 2, 8, 12), torch.tensor([0.3, 0.8])
    torch.testing.assert_close(fresh(x_t, t), fitted(x_t, t))
    with pytest.raises(RuntimeError, match="scale finite and > 0"):
        fresh.load_state_dict(dict(fitted.state_dict(), node_scale=torch.zeros(2, 8, 12)))
