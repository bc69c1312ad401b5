"""Figures of a comparison: vorticity panels and the per-step diagnostics over t.

Matplotlib with the non-interactive Agg backend; each function returns a Figure that
:class:`ldiff.tracking.RunLog` saves as PNG and logs to W&B.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402

from ldiff.data.normalizer import Normalizer  # noqa: E402
from ldiff.observe import Operator  # noqa: E402
from ldiff.physics import vorticity  # noqa: E402


def observed_points(op: Operator, field_shape: tuple[int, ...]) -> np.ndarray:
    """Boolean (H, W): the grid nodes that feed an observation of the first channel."""
    ones = torch.ones((1, *field_shape))
    return (op.adjoint(op(ones), field_shape)[0, 0] != 0).numpy()


def vorticity_figure(results: dict[tuple[str, str], xr.Dataset], strategies: list[str], operators: dict[str, Operator], normalizer: dict, dx: float, dy: float, periodic: bool):
    """Rows: truth, then one reconstruction (item 0, sample 0, first frame) per strategy;
    columns: operators. The truth row marks the observed points of each operator."""
    first = results[(strategies[0], next(iter(operators)))]
    to_physical = Normalizer.from_state(normalizer).denormalize
    truth_w = vorticity(to_physical(torch.from_numpy(first["truth"].values[:1]).double()), dx, dy, periodic)[0, 0].numpy()
    limit = float(np.abs(truth_w).max())
    fig, axes = plt.subplots(len(strategies) + 1, len(operators), figsize=(2.2 * len(operators), 2.2 * (len(strategies) + 1)), squeeze=False)
    for j, op_name in enumerate(operators):
        ax = axes[0, j]
        ax.imshow(truth_w, cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower")
        rows, cols = np.nonzero(observed_points(operators[op_name], first["truth"].shape[1:]))
        ax.scatter(cols, rows, s=0.3, c="k")
        ax.set_title(f"truth, {op_name}", fontsize=8)
        for i, name in enumerate(strategies, start=1):
            ds = results[(name, op_name)]
            recon = ds["recon"].values[:1, 0]
            w = vorticity(to_physical(torch.from_numpy(np.nan_to_num(recon)).double()), dx, dy, periodic)[0, 0].numpy()
            ax = axes[i, j]
            ax.imshow(w, cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower")
            corr = ds.attrs.get("metric_vorticity_corr_mean", np.nan)
            ax.set_title(f"{name}  r={corr:.2f}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def diagnostics_figure(results: dict[tuple[str, str], xr.Dataset], strategies: list[str], operators: list[str]):
    """The likelihood/prior ratio ||correction|| / ||eps_hat|| (top) and the gamma share
    of SDA's variance (bottom) over t, median over items and samples, per operator."""
    fig, axes = plt.subplots(2, len(operators), figsize=(3.2 * len(operators), 5.5), squeeze=False, sharex=True)
    for j, op_name in enumerate(operators):
        for name in strategies:
            ds = results[(name, op_name)]
            if "diag_t" not in ds:
                continue
            t = ds["diag_t"].values.reshape(ds["diag_t"].shape[0], -1)[:, 0]
            ratio = np.nanmedian(ds["diag_ratio"].values.reshape(len(t), -1), axis=1)
            axes[0, j].semilogy(t, ratio, label=name)
            share = ds["diag_gamma_share"].values.reshape(len(t), -1)
            if np.isfinite(share).any():
                axes[1, j].plot(t, np.nanmedian(share, axis=1), label=name)
        axes[0, j].set_title(op_name, fontsize=9)
        axes[1, j].set_xlabel("t")
    axes[0, 0].set_ylabel("||correction|| / ||eps_hat||")
    axes[1, 0].set_ylabel("gamma share of var")
    axes[0, -1].legend(fontsize=6, loc="best")
    fig.tight_layout()
    return fig
