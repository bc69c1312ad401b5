"""Schedules against the seed's table and their closed forms."""

import math

import pytest
import torch

from ldiff.diffusion.schedules import CosineSchedule, LinearBetaSchedule


@pytest.mark.parametrize("t, expected, half_unit", [(0.01, 0.045, 5e-4), (0.1, 0.340, 5e-4), (0.5, 3.41, 5e-3), (0.9, 58.8, 5e-2)])
def test_linear_beta_sigma_over_mu_matches_the_seed_table(t, expected, half_unit):
    # within the rounding of the seed's printed digits
    assert abs(LinearBetaSchedule().sigma_bar(t).item() - expected) <= half_unit


def test_linear_beta_closed_form_and_variance_preservation():
    schedule = LinearBetaSchedule(beta_min=0.1, beta_max=20.0)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    log_mu = -0.25 * t**2 * 19.9 - 0.5 * t * 0.1
    torch.testing.assert_close(schedule.mu(t), torch.exp(log_mu))
    torch.testing.assert_close(schedule.mu(t) ** 2 + schedule.sigma(t) ** 2, torch.ones(4, dtype=torch.float64))
    assert schedule.sigma(0.0).item() == 0.0


@pytest.mark.parametrize("eta", [1e-3, 1e-2])
def test_cosine_closed_form(eta):
    schedule = CosineSchedule(eta=eta)
    for t in [0.0, 0.1, 0.37, 0.5, 0.9, 1.0]:
        mu = math.cos(math.acos(math.sqrt(eta)) * t) ** 2
        assert schedule.mu(t).item() == pytest.approx(mu, rel=1e-12, abs=1e-15)
        assert schedule.sigma(t).item() == pytest.approx(math.sqrt(1 - mu**2 + eta**2), rel=1e-12)
    # the end points: x_1 is pure noise with mu = eta, x_0 keeps a noise floor eta
    assert schedule.mu(1.0).item() == pytest.approx(eta, rel=1e-12)
    assert schedule.sigma(1.0).item() == pytest.approx(1.0, rel=1e-12)
    assert schedule.sigma(0.0).item() == pytest.approx(eta, rel=1e-12)


def test_cosine_sigma_over_mu_is_not_the_seed_table():
    # The seed's sigma/mu table is linear-beta; SDA's cosine schedule differs by far.
    mu = math.cos(math.acos(0.1) / 2) ** 2
    assert CosineSchedule(eta=1e-2).sigma_bar(0.5).item() == pytest.approx(math.sqrt(1 - mu**2 + 1e-4) / mu, rel=1e-9)
    assert CosineSchedule(eta=1e-2).sigma_bar(0.5).item() < 0.5 * 3.41


def test_coefficients_broadcast_and_perturb():
    schedule = CosineSchedule()
    x = torch.ones(3, 2, 4, 4)
    eps = torch.full_like(x, 2.0)
    t = torch.tensor([0.0, 0.5, 1.0])
    x_t = schedule.perturb(x, t, eps)
    expected = schedule.mu(t).float() + 2 * schedule.sigma(t).float()
    torch.testing.assert_close(x_t[:, 0, 0, 0], expected)
    assert x_t.dtype == torch.float32


@pytest.mark.parametrize("make", [lambda: CosineSchedule(eta=0.0), lambda: CosineSchedule(eta=1.5), lambda: LinearBetaSchedule(20.0, 0.1)])
def test_invalid_parameters_are_refused(make):
    with pytest.raises(ValueError, match="Schedule"):
        make()
