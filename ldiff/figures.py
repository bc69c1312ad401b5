"""Figures of a comparison: vorticity panels, the per-step diagnostics over t, and for
one item its reconstruction (posterior mean, error, spread) and energy spectra.

Matplotlib with the non-interactive Agg backend; each function returns a Figure that
:class:`ldiff.tracking.RunLog` saves as PNG and logs to W&B.
"""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402

from ldiff.observe import Operator  # noqa: E402
from ldiff.physics import energy_spectrum, vorticity  # noqa: E402


def observed_points(op: Operator, field_shape: tuple[int, ...]) -> np.ndarray:
    """Boolean (H, W): the grid nodes that feed an observation of the first channel."""
    ones = torch.ones((1, *field_shape))
    return (op.adjoint(op(ones), field_shape)[0, 0] != 0).numpy()


def file_fields(ds: xr.Dataset, name: str) -> np.ndarray:
    """A reconstruction file's ``truth`` (item, C, H, W) or ``recon`` (item, sample, C, H,
    W): its (frame, component) dimensions back as ldiff's frame-major channels."""
    values = ds[name].values
    return values.reshape(*values.shape[:-4], -1, *values.shape[-2:])


def vorticity_figure(files: dict[tuple[str, str], str], strategies: list[str], operators: dict[str, Operator]):
    """Rows: truth, then one reconstruction (item 0, sample 0, first frame) per strategy;
    columns: operators, from the reconstruction files (:mod:`ldiff.writers`, physical
    units). The truth row marks the observed points of each operator; all panels share
    the truth's symmetric colour range and one colour bar."""
    with xr.open_dataset(files[(strategies[0], next(iter(operators)))], engine="h5netcdf") as first:
        truth = file_fields(first, "truth")[:1].astype(np.float64)
        dx, dy, periodic = float(first.attrs["dx"]), float(first.attrs["dy"]), bool(first.attrs["periodic"])
    truth_w = _first_vorticity(truth, dx, dy, periodic)[0]
    limit = _symmetric_limit(truth_w)
    fig, axes = plt.subplots(len(strategies) + 1, len(operators), figsize=(2.2 * len(operators) + 0.8, 2.2 * (len(strategies) + 1)), squeeze=False, layout="constrained")
    for j, op_name in enumerate(operators):
        ax = axes[0, j]
        image = ax.imshow(truth_w, cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower")
        rows, cols = np.nonzero(observed_points(operators[op_name], truth.shape[1:]))
        ax.scatter(cols, rows, s=0.3, c="k")
        ax.set_title(f"truth, {op_name}", fontsize=8)
        for i, name in enumerate(strategies, start=1):
            with xr.open_dataset(files[(name, op_name)], engine="h5netcdf") as ds:
                recon = file_fields(ds, "recon")[:1, 0].astype(np.float64)
                corr = float(ds.attrs.get("metric_vorticity_corr_mean", np.nan))
            w = _first_vorticity(np.nan_to_num(recon), dx, dy, periodic)[0]
            ax = axes[i, j]
            ax.imshow(w, cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower")
            ax.set_title(f"{name}  r={corr:.2f}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.8, label="vorticity")
    return fig


def diagnostics_figure(series: list[dict], strategies: list[str], operators: list[str]):
    """The likelihood/prior ratio ||correction|| / ||eps_hat|| (top) and the gamma share
    of SDA's variance (bottom) over t, per operator, from the per-step series of a
    comparison (rows with ``strategy``, ``operator``, ``t``, ``ratio``, ``gamma_share``:
    geometric and arithmetic means over items and samples, :class:`ldiff.evaluate.DiagnosticSeries`);
    a legend on every panel with lines."""
    fig, axes = plt.subplots(2, len(operators), figsize=(3.2 * len(operators), 5.5), squeeze=False, sharex=True)
    for j, op_name in enumerate(operators):
        for name in strategies:
            rows = [r for r in series if r["strategy"] == name and r["operator"] == op_name]
            if not rows:
                continue
            t = np.array([r["t"] for r in rows])
            ratio = np.array([r.get("ratio", np.nan) for r in rows])
            if np.isfinite(ratio).any():
                axes[0, j].semilogy(t, ratio, label=name)
            share = np.array([r.get("gamma_share", np.nan) for r in rows])
            if np.isfinite(share).any():
                axes[1, j].plot(t, share, label=name)
        axes[0, j].set_title(op_name, fontsize=9)
        axes[1, j].set_xlabel("t")
    axes[0, 0].set_ylabel("||correction|| / ||eps_hat||")
    axes[1, 0].set_ylabel("gamma share of var")
    for ax in axes.flat:
        if ax.lines:
            ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    return fig


def reconstruction_figure(truth: np.ndarray, recon: np.ndarray, observed: np.ndarray | None, dx: float, dy: float, periodic: bool, title: str = ""):
    """One row of vorticity panels of the first frame, each with its own colour bar.

    ``truth`` (C, H, W) and ``recon`` (K, C, H, W) are physical velocities (``C = 2 T``),
    ``observed`` a boolean (H, W) of observed nodes (drawn as black dots on the truth) or
    None. Panels: truth; posterior mean (mean over K of each sample's vorticity) on the
    truth's symmetric range; error mean - truth on a symmetric range of its own; and for
    K > 1 the spread (std over K). Diverged (NaN) samples are left out node by node; if
    all are NaN the mean, error and spread panels are empty.
    """
    truth_w = _first_vorticity(truth[None], dx, dy, periodic)[0]
    samples_w = _first_vorticity(recon, dx, dy, periodic)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN nodes give NaN, drawn empty
        mean_w = np.nanmean(samples_w, axis=0)
        spread_w = np.nanstd(samples_w, axis=0)
    error_w = mean_w - truth_w
    limit, error_limit = _symmetric_limit(truth_w), _symmetric_limit(error_w)
    panels = [("truth", truth_w, "RdBu_r", -limit, limit), ("posterior mean", mean_w, "RdBu_r", -limit, limit),
              ("error (mean - truth)", error_w, "RdBu_r", -error_limit, error_limit)]
    if len(recon) > 1:
        panels.append((f"spread ({len(recon)} samples)", spread_w, "viridis", 0.0, _symmetric_limit(spread_w)))
    # fixed margins, not layout="constrained": one of these is drawn per pair and run, and
    # the layout engine doubles its drawing time (0.44 against 1.0 s here)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 2.8), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.97, bottom=0.03, top=0.84, wspace=0.12)
    for ax, (name, field, cmap, vmin, vmax) in zip(axes[0], panels):
        fig.colorbar(ax.imshow(field, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower"), ax=ax, shrink=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if observed is not None:
        rows, cols = np.nonzero(observed)
        axes[0, 0].scatter(cols, rows, s=1.0, c="k")
    fig.suptitle(title, fontsize=10)
    return fig


def spectra_figure(truth: np.ndarray, recon: np.ndarray, dx: float, dy: float, title: str = ""):
    """Kinetic-energy spectra E(k), log-log, of the first frame of the truth (C, H, W,
    black), of each of the K samples of ``recon`` (K, C, H, W, thin, one legend entry)
    and of their mean (dashed). Non-finite samples are skipped; shell k = 0 (the mean
    flow) is left out of the log axis."""
    finite = recon[np.isfinite(recon[:, :2]).all(axis=(1, 2, 3)), :2]
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    fig.subplots_adjust(left=0.16, right=0.97, bottom=0.14, top=0.91)  # fixed: see reconstruction_figure
    k, truth_e = _first_spectrum(truth[None], dx, dy)
    ax.loglog(k, truth_e[0], c="k", lw=2.0, label="truth")
    if len(finite):
        _, samples_e = _first_spectrum(finite, dx, dy)
        for i, e in enumerate(samples_e):
            ax.loglog(k, e, c="C0", lw=0.6, alpha=0.4, label="samples" if i == 0 else None)
        ax.loglog(k, _first_spectrum(finite.mean(axis=0, keepdims=True), dx, dy)[1][0], c="C1", ls="--", label="posterior mean")
    ax.set_xlabel("k")
    ax.set_ylabel("E(k)")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    return fig


def _first_vorticity(fields: np.ndarray, dx: float, dy: float, periodic: bool) -> np.ndarray:
    """Vorticity (B, H, W) of the first frame of velocity fields (B, C, H, W)."""
    return vorticity(torch.from_numpy(np.asarray(fields[:, :2], dtype=np.float64)), dx, dy, periodic)[:, 0].numpy()


def _first_spectrum(fields: np.ndarray, dx: float, dy: float) -> tuple[np.ndarray, np.ndarray]:
    """Shells k (n,) without k = 0 and spectra E (B, n) of the first frame of fields (B, C, H, W)."""
    k, e = energy_spectrum(torch.from_numpy(np.asarray(fields[:, :2], dtype=np.float64)), dx, dy)
    return k[1:].numpy(), e[:, 0, 1:].numpy()


def _symmetric_limit(field: np.ndarray) -> float:
    """The largest finite |value| of ``field``; 1 where none is finite or all are 0."""
    finite = np.abs(field[np.isfinite(field)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0
