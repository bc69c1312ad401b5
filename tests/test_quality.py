"""Prior quality: the exact Gaussian prior's samples match its own data."""

import pytest
import torch

from ldiff.diffusion.schedules import CosineSchedule
from ldiff.nets.gaussian import GaussianPrior
from ldiff.quality import measure


def test_an_exact_prior_matches_data_drawn_from_it():
    """Data and samples come from the same Gaussian: both ratios are 1 up to sampling
    error (256 fields of 2 x 32 x 32 per side: a few % per shell) and the 64-step
    sampler's bias (the variance 3-4 % low, see test_gaussian_prior)."""
    schedule = CosineSchedule()
    k = torch.fft.fftfreq(32) * 32
    spectrum = (1 + k[:, None] ** 2 + k[None, :] ** 2) ** -1.5
    prior = GaussianPrior(schedule, torch.stack([spectrum, spectrum]) / spectrum.mean(), torch.zeros(2))
    data = prior.sample(256, torch.Generator().manual_seed(1))
    normalizer = {"mean": torch.tensor([0.5, -0.5]), "std": torch.tensor([2.0, 2.0])}
    result = measure(prior, schedule, normalizer, data, dx=0.2, dy=0.2, periodic=True, samples=256, steps=64, k_max=10, batch=128)
    assert 0.85 < result.spectrum_ratio_min <= result.spectrum_ratio_max < 1.15
    assert result.vorticity_std_ratio == pytest.approx(1.0, abs=0.06)
    # physical units: the normaliser's std of 2 doubles the velocity std
    per_component = data.double().transpose(0, 1).flatten(1).var(dim=1).mean().sqrt().item()
    assert result.velocity_std_data == pytest.approx(2.0 * per_component, rel=1e-6)
