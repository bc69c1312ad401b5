"""The shipped priors load weights-only and sample finite fields of the right shape."""

from pathlib import Path

import pytest
import torch

from ldiff.diffusion.sampler import PredictorCorrector
from ldiff.lit.checkpoint import load_prior

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {
    # checkpoint: (channels, cond channels, H, W)
    "checkpoints/kolmogorov/prior.ckpt": (2, 0, 64, 64),
    "checkpoints/cylinder-window/prior.ckpt": (32, 1, 99, 199),
}


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_prior_samples_finite_fields_of_the_right_shape(path):
    channels, cond_channels, h, w = SHIPPED[path]
    net, schedule, normalizer, hparams = load_prior(ROOT / path)
    assert net.in_channels == channels and (net.cond_channels or 0) == cond_channels
    assert normalizer["std"].shape == (2,) and (normalizer["std"] > 0).all()
    cond = torch.ones(2, cond_channels, h, w) if cond_channels else None
    generator = torch.Generator().manual_seed(0)
    x1 = torch.randn(2, channels, h, w, generator=generator)
    with torch.no_grad():
        x = PredictorCorrector(schedule, steps=8).sample(lambda x_t, t: net(x_t, t, cond), x1, generator)
    assert x.shape == (2, channels, h, w)
    assert torch.isfinite(x).all()
    # normalised units: a prior that works keeps samples at the data's scale
    assert 0.2 < x.std().item() < 5.0


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_prior_is_small_enough_to_commit(path):
    assert (ROOT / path).stat().st_size < 25 * 2**20
