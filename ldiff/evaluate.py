"""Score a merged prediction file: the metrics of one strategy on one operator.

Two families of numbers, each compared like with like:

- **per sample** (every one of the K posterior samples against the truth): RMSE,
  vorticity correlation, spectrum log error, energy ratio std(recon)/std(truth), the
  observation residual std over the noise std (about 1 for a posterior sample), the
  regime counts, and for K > 1 the fair CRPS and the spread/skill ratio;
- **posterior mean** (the mean of the K samples against the truth, suffix ``_mean``):
  RMSE and vorticity correlation, the numbers to set beside an exact posterior mean
  such as the Gaussian baseline's.

Diverged samples are excluded from the field metrics (and counted); if every sample of
an item diverged, the item drops out of the ``_mean`` metrics. Where nothing is left to
score, the value is NaN *and* a count says why: ``diverged`` for the per-sample and
``_mean`` metrics (NaN only when every sample diverged), ``ensemble_items`` (items whose K
samples all finished) for ``crps`` and ``spread_skill`` (NaN only when it is 0).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import xarray as xr

from ldiff.metrics import (
    CRPS,
    DIVERGED,
    REGIMES,
    EnergyRatio,
    FieldRMSE,
    RegimeCount,
    ResidualRatio,
    SpectrumLogError,
    SpreadSkill,
    VorticityError,
)
from ldiff.observe import Operator


def _value(metric_output: dict, key: str) -> float:
    value = float(metric_output[key])
    return value if math.isfinite(value) else math.nan


def evaluate(
    ds: xr.Dataset,
    op: Operator,
    std: float,
    dx: float,
    dy: float,
    periodic: bool,
    scale: torch.Tensor | None = None,
) -> dict[str, float]:
    """Metrics of a merged prediction Dataset (see :mod:`ldiff.writers` for its layout).

    Args:
        ds: ``recon`` (item, sample, C, H, W), ``truth`` (item, C, H, W), ``y``, ``regime``.
        op, std: the operator and noise std (normalised units) the observations came from.
        dx, dy, periodic: the grid, for vorticity and spectra (physical units).
        scale: (2,) physical std of (u, v), so vorticity is in physical units.

    Returns:
        A flat dict of floats (see the module docstring for the names).
    """
    recon = torch.from_numpy(ds["recon"].values).double()
    truth = torch.from_numpy(ds["truth"].values).double()
    codes = torch.from_numpy(ds["regime"].values).long()
    n_items, k = recon.shape[:2]
    flat = recon.flatten(0, 1)
    truth_k = truth.repeat_interleave(k, dim=0)
    valid = codes.flatten() != DIVERGED

    regimes = RegimeCount()
    regimes.update(codes.flatten())
    counts = {name: int(v) for name, v in regimes.compute().items()}

    out: dict[str, float] = {"items": n_items, "samples": k, "n_obs": int(ds["y"].shape[1])}
    rmse = FieldRMSE(scale=scale)
    rmse.update(flat, truth_k, valid)
    vort = VorticityError(dx, dy, periodic, scale=scale)
    vort.update(flat, truth_k, valid)
    spectrum = SpectrumLogError(dx, dy, k_max=min(16, min(truth.shape[-2:]) // 2 - 1), scale=scale)
    spectrum.update(flat, truth_k, valid)
    energy = EnergyRatio()
    energy.update(flat, truth_k, valid)
    residual = ResidualRatio()
    y = torch.from_numpy(ds["y"].values).double().repeat_interleave(k, dim=0)
    residual.update(op(flat).flatten(1), y, std, valid)
    for metric in (rmse, vort, spectrum, energy, residual):
        result = metric.compute()
        out.update({key: _value(result, key) for key in result if key != "excluded"})

    weights = (codes != DIVERGED).double()
    kept = weights.sum(dim=1) > 0
    safe = torch.where(weights[..., None, None, None].bool(), recon, torch.zeros_like(recon))
    mean = safe.sum(dim=1) / weights.sum(dim=1).clamp_min(1)[:, None, None, None]
    rmse_mean = FieldRMSE(scale=scale)
    rmse_mean.update(mean, truth, kept)
    vort_mean = VorticityError(dx, dy, periodic, scale=scale)
    vort_mean.update(mean, truth, kept)
    vort_result = vort_mean.compute()
    out["rmse_mean"] = _value(rmse_mean.compute(), "rmse")
    out["vorticity_corr_mean"] = _value(vort_result, "vorticity_corr")
    out["vorticity_rmse_mean"] = _value(vort_result, "vorticity_rmse")

    if k > 1:
        whole = valid.reshape(n_items, k).all(dim=1)
        out["ensemble_items"] = int(whole.sum())
        crps = CRPS()
        crps.update(recon, truth, whole)
        spread = SpreadSkill()
        spread.update(recon, truth, whole)
        out["crps"] = _value(crps.compute(), "crps")
        out["spread_skill"] = _value(spread.compute(), "spread_skill")
    out.update({name: counts[name] for name in REGIMES})
    return out


def attach(ds: xr.Dataset, metrics: dict[str, float]) -> xr.Dataset:
    """Store ``metrics`` as ``metric_<name>`` attributes of ``ds`` (NaN kept as NaN)."""
    ds.attrs.update({f"metric_{name}": np.float64(value) for name, value in metrics.items()})
    return ds
