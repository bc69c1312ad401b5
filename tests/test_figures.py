"""Figures: panel data against closed forms, colour bars, legends, and NaN samples."""

import math
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import xarray as xr

from ldiff.figures import diagnostics_figure, reconstruction_figure, spectra_figure, vorticity_figure
from ldiff.observe import Subsample
from ldiff.physics import energy_spectrum

N = 16
D = 2 * math.pi / N  # [0, 2 pi)^2: spectral derivatives of these fields are exact
Y, X = np.meshgrid(D * np.arange(N), D * np.arange(N), indexing="ij")
# truth, frame 0: u = -sin y, v = sin x (w = cos x + cos y); frame 1 differs (must be ignored)
TRUTH = np.stack([-np.sin(Y), np.sin(X), np.cos(3 * X), np.sin(2 * X)])
# each sample adds c_k (u = -sin 2y, v = 0), of vorticity 2 c_k cos 2y, to frame 0
NOISE = np.stack([-np.sin(2 * Y), 0 * Y, 0 * Y, 0 * Y])
C = np.array([0.2, -0.3, 0.4])  # mean 0.1, not any one sample
RECON = TRUTH + C[:, None, None, None] * NOISE
TRUTH_W = np.cos(X) + np.cos(Y)
OBSERVED = np.zeros((N, N), dtype=bool)
OBSERVED[3, 5] = OBSERVED[10, 2] = True


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def panels(fig):
    """The image panels (not the colour bars) of a figure, left to right."""
    return [ax for ax in fig.axes if ax.images]


def data(ax):
    return np.ma.filled(ax.images[0].get_array().astype(float), np.nan)


def test_reconstruction_panels_hold_truth_mean_error_and_spread_each_with_a_colour_bar():
    fig = reconstruction_figure(TRUTH, RECON, OBSERVED, D, D, periodic=True)
    truth, mean, error, spread = panels(fig)
    assert len(fig.axes) == 8  # 4 panels + 4 colour bars
    assert all(ax.images[0].colorbar is not None for ax in (truth, mean, error, spread))
    np.testing.assert_allclose(data(truth), TRUTH_W, atol=1e-12)
    np.testing.assert_allclose(data(mean), TRUTH_W + 2 * C.mean() * np.cos(2 * Y), atol=1e-12)
    np.testing.assert_allclose(data(error), 2 * C.mean() * np.cos(2 * Y), atol=1e-12)
    np.testing.assert_allclose(data(spread), 2 * C.std() * np.abs(np.cos(2 * Y)), atol=1e-12)
    # mean on the truth's symmetric range, error on a symmetric range of its own
    assert mean.images[0].get_clim() == pytest.approx((-2.0, 2.0))
    assert error.images[0].get_clim() == pytest.approx((-0.2, 0.2))
    assert mean.images[0].origin == "lower" and spread.images[0].get_cmap().name == "viridis"
    marks = truth.collections[0].get_offsets()
    assert sorted(map(tuple, np.asarray(marks))) == [(2, 10), (5, 3)]  # (column, row)


def test_one_sample_has_no_spread_panel():
    fig = reconstruction_figure(TRUTH, RECON[:1], None, D, D, periodic=True)
    assert len(panels(fig)) == 3 and len(fig.axes) == 6
    assert not panels(fig)[0].collections  # nothing observed, nothing marked


def test_diverged_samples_are_left_out_and_all_diverged_gives_empty_panels():
    recon = RECON.copy()
    recon[1] = np.nan
    mean = panels(reconstruction_figure(TRUTH, recon, OBSERVED, D, D, periodic=True))[1]
    np.testing.assert_allclose(data(mean), TRUTH_W + 2 * C[[0, 2]].mean() * np.cos(2 * Y), atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither a crash nor an all-NaN warning
        fig = reconstruction_figure(TRUTH, np.full_like(RECON, np.nan), OBSERVED, D, D, periodic=False)
    fig.canvas.draw()
    assert all(np.isnan(data(ax)).all() for ax in panels(fig)[1:])


def spectrum(fields):
    k, e = energy_spectrum(torch.from_numpy(fields[None, :2]), D, D)
    return k[1:].numpy(), e[0, 0, 1:].numpy()


def test_spectra_of_truth_samples_and_mean_skipping_diverged_samples():
    recon = np.concatenate([RECON, np.full_like(RECON[:1], np.nan)])
    ax = spectra_figure(TRUTH, recon, D, D).axes[0]
    truth, *samples, mean = ax.lines
    for line, fields in [(truth, TRUTH), (samples[1], RECON[1]), (mean, RECON.mean(axis=0))]:
        k, e = spectrum(fields)
        np.testing.assert_allclose(line.get_xdata(), k)
        np.testing.assert_allclose(line.get_ydata(), e, atol=1e-15)
    assert len(samples) == 3 and mean.get_linestyle() == "--"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["truth", "samples", "posterior mean"]
    assert ax.get_xscale() == ax.get_yscale() == "log" and (ax.get_xlabel(), ax.get_ylabel()) == ("k", "E(k)")


def diagnostics(strategy, operator, share):
    """The per-step series rows of one pair: 5 steps."""
    return [{"strategy": strategy, "operator": operator, "step": i, "t": t, "ratio": 0.5, "gamma_share": share}
            for i, t in enumerate(np.linspace(1.0, 0.1, 5))]


def test_every_diagnostics_panel_with_lines_has_a_legend():
    series = diagnostics("a", "sub2", 0.3) + diagnostics("b", "sub2", np.nan) + diagnostics("a", "sub4", np.nan) + diagnostics("b", "sub4", np.nan)
    fig = diagnostics_figure(series, ["a", "b"], ["sub2", "sub4"])
    with_lines = [ax for ax in fig.axes if ax.lines]
    assert len(with_lines) == 3  # the gamma share of sub4 is NaN throughout: no lines
    assert all(ax.get_legend() is not None for ax in with_lines)
    assert all(ax.get_legend() is None for ax in fig.axes if not ax.lines)
    np.testing.assert_allclose(fig.axes[0].lines[0].get_xdata(), np.linspace(1.0, 0.1, 5))


def test_the_vorticity_figure_has_a_colour_bar(tmp_path):
    """From reconstruction files in the writer's layout: (frame, component) dimensions."""
    truth, recon = TRUTH.reshape(2, 2, *TRUTH.shape[1:]), RECON.reshape(len(RECON), 2, 2, *RECON.shape[2:])
    ds = xr.Dataset({"truth": (("item", "frame", "component", "y", "x"), truth[None]),
                     "recon": (("item", "sample", "frame", "component", "y", "x"), recon[None])},
                    attrs={"dx": D, "dy": D, "periodic": 1, "metric_vorticity_corr_mean": 0.5})
    ds.to_netcdf(tmp_path / "a.nc", engine="h5netcdf")
    files = {("a", "sub2"): tmp_path / "a.nc", ("b", "sub2"): tmp_path / "a.nc"}
    fig = vorticity_figure(files, ["a", "b"], {"sub2": Subsample(2)})
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 3 and len(fig.axes) == 4
    assert images[0].images[0].colorbar is not None
    np.testing.assert_allclose(images[1].images[0].get_array(), TRUTH_W + 2 * C[0] * np.cos(2 * Y), atol=1e-10)
    plt.close(fig)
