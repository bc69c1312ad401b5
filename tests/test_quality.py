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


def test_jacobian_cli_on_the_shipped_prior(tmp_path, capsys, monkeypatch):
    """`ldiff quality --jacobian`: the table, the JSON and the sentence with the threshold,
    on the shipped prior and its shipped Gaussian fit (2 frames, 3 times, 1 stride)."""
    import json
    from pathlib import Path

    from ldiff.cli import main

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    out = tmp_path / "jacobian.json"
    assert main(["quality", "--checkpoint", "checkpoints/kolmogorov/prior.ckpt", "--data", "checkpoints/kolmogorov/heldout.nc",
                 "--jacobian", "checkpoints/kolmogorov/gaussian.pt", "--items", "2", "--t", "0.3", "0.6", "1.0", "--strides", "4", "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["t"] == [0.3, 0.6, 1.0] and result["operators"] == ["sub4"]
    # the Gaussian side is the fit's exact Tweedie covariance: it grows with t towards the data variance
    gauss = [row[0] for row in result["gaussian"]]
    assert gauss[0] < gauss[1] < gauss[2] <= 1.5
    printed = capsys.readouterr().out
    assert "e^T A V A^T e" in printed and ("agrees" in printed or "disagrees" in printed)


class DenoisesTo(torch.nn.Module):
    """The epsilon of a prior holding one field ``x0``: eps = (x_t - mu x0) / sigma, so
    the sampler's Tweedie estimate is ``x0`` at every step and every sample ends at it."""

    def __init__(self, x0, schedule):
        super().__init__()
        self.x0, self.schedule = x0, schedule

    def forward(self, x, t, cond=None):
        mu, sigma = self.schedule.coefficients(t, x)
        return (x - mu * self.x0) / sigma


def test_the_strouhal_number_of_sample_windows_of_a_wake():
    """``wake``: the St of the sample windows and of the data windows. A prior whose every
    sample is one data window has that window's St, and the data's St is the mean of
    their windows' (both in physical units: the normaliser does not move a frequency)."""
    from ldiff.data.cylinder import generate_cylinder
    from ldiff.data.normalizer import Normalizer
    from ldiff.physics import wake_geometry, wake_strouhal

    ds = generate_cylinder(16, spacing=0.25, dt_frame=1.0, spinup_time=40.0, n_traj=2, seed=0)
    frames = torch.tensor(ds[["u", "v"]].to_array().transpose("trajectory", "time", "variable", "y", "x").values)
    physical = frames.flatten(1, 2).double()  # (2, 32, H, W): u, v per frame
    normalizer = Normalizer().fit(ds.u.values, ds.v.values)
    data = normalizer.normalize(physical).float()
    wake = wake_geometry(ds.attrs, ds.x.values, ds.y.values, 16)
    assert wake is not None and wake_geometry({**ds.attrs, "flow": "kolmogorov"}, ds.x.values, ds.y.values, 16) is None
    assert wake_geometry(ds.attrs, ds.x.values, ds.y.values, 7) is None  # too few frames for a peak
    schedule = CosineSchedule()
    result = measure(DenoisesTo(data[1], schedule), schedule, normalizer.state_dict(), data, dx=0.25, dy=0.25, periodic=False,
                     samples=2, steps=8, k_max=4, wake=wake)  # fmt: skip
    by_window = wake_strouhal(physical, **wake)
    assert result.strouhal_unresolved == 0
    assert result.strouhal_samples == pytest.approx(by_window[1].item(), rel=1e-4)
    assert result.strouhal_data == pytest.approx(by_window.mean().item(), rel=1e-9)
    assert result.strouhal_data == pytest.approx(ds.attrs["strouhal"], rel=0.05)
    no_wake = measure(DenoisesTo(data[1], schedule), schedule, normalizer.state_dict(), data, dx=0.25, dy=0.25, periodic=False, samples=2, steps=8, k_max=4)
    assert no_wake.strouhal_samples is None and no_wake.strouhal_unresolved is None and no_wake.inflow_fluctuation_samples is None
    # unsteadiness by hand: each node's deviation from its window's time mean, rms over the band
    frames_x = torch.tensor(ds.x.values)
    for band, nodes in (("inflow", frames_x < -1.0), ("wake", frames_x > 1.0)):
        def rms(windows):
            f = windows.unflatten(1, (16, 2))[..., nodes]
            return (f - f.mean(dim=1, keepdim=True)).square().mean().sqrt().item()
        assert getattr(result, f"{band}_fluctuation_data") == pytest.approx(rms(physical), rel=1e-6)
        assert getattr(result, f"{band}_fluctuation_samples") == pytest.approx(rms(physical[1:]), abs=1e-4)  # 8-step samples of window 1: 2e-5 off in the inflow here
    assert result.inflow_fluctuation_data < 0.1 * result.wake_fluctuation_data  # a wake: steady ahead of the body
