"""The metrics of a reconstruction run, accumulated batch by batch and exact under DDP.

:class:`ReconstructionMetrics` is the one place where ldiff scores reconstructions: the
:class:`~ldiff.lit.inference.InferenceModule` updates it in every ``predict_step`` and
computes it once at the end of the epoch, on every rank (each state is a sum, a max or a
concatenation that torchmetrics reduces across processes), so the numbers of a
multi-device run equal those of one process.

Two families of numbers, each compared like with like:

- **per sample** (every one of the K posterior samples against the truth): RMSE,
  vorticity RMSE and correlation, the divergence (beside the truth's), spectrum log error, energy ratio
  std(recon)/std(truth), the observation residual std over the noise std (about 1 for a
  posterior sample), the regime counts, and for K > 1 the fair CRPS and the
  spread/skill ratio;
- **posterior mean** (the mean of the K samples against the truth, suffix ``_mean``):
  RMSE, relative L2 error (the normalised RMSE), vorticity correlation, the energy ratio
  (below a sample's by the posterior's spread: a mean is smoother than any sample) and,
  for wake windows, the Strouhal error: the numbers to set beside an exact posterior mean such as
  the Gaussian baseline's, and those of the mean as the reconstruction.

Diverged samples are excluded from the field metrics (and counted); if every sample of
an item diverged, the item drops out of the ``_mean`` metrics. Where nothing is left to
score, the value is NaN *and* a count says why: ``diverged`` for the per-sample and
``_mean`` metrics (NaN only when every sample diverged), ``ensemble_items`` (items whose K
samples all finished) for ``crps`` and ``spread_skill`` (NaN only when it is 0).

:class:`DiagnosticSeries` reduces the sampler's per-step diagnostics (``||eps_hat||``,
the correction's norm, their ratio, the gamma share, ...) to one value per step: the
geometric mean over items and samples for norms and ratios, the arithmetic mean for
the rest, finite values only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.aggregation import MaxMetric, SumMetric
from torchmetrics.utilities import dim_zero_cat

from ldiff.metrics import (
    CRPS,
    DIVERGED,
    DivergenceRatio,
    REGIMES,
    EnergyRatio,
    FieldRMSE,
    RegimeCount,
    ResidualRatio,
    SpectrumLogError,
    SpreadSkill,
    StrouhalError,
    VorticityError,
)
from ldiff.observe import Operator

SPECTRUM_SHELLS = 16
"""Spectrum shells compared (fewer on grids whose Nyquist shell is lower)."""


def _value(value: Tensor | float) -> float:
    value = float(value)
    return value if math.isfinite(value) else math.nan


class ReconstructionMetrics(nn.Module):
    """Every metric of the module docstring, for one strategy on one operator.

    Args:
        op, std: the operator and noise std (normalised units) of the observations.
        dx, dy, periodic: the grid, for vorticity and spectra (physical units).
        scale: (2,) physical std of (u, v), so vorticity is in physical units.
        wake: for windows of a cylinder wake (T >= 8 frames), the arguments of
            :class:`~ldiff.metrics.StrouhalError` (``dt``, ``x``, ``y``, ``diameter``,
            ``center``): adds ``strouhal``, ``strouhal_truth``, ``strouhal_error`` and
            ``strouhal_unresolved`` per sample.

    ``update(recon, truth, y, codes)`` with ``recon`` (B, K, C, H, W) and ``truth``
    (B, C, H, W) in normalised units, ``y`` (B, *obs_shape), ``codes`` (B, K) regime
    codes; ``compute()`` returns a flat dict of floats (a collective under DDP: every
    rank calls it).
    """

    def __init__(self, op: Operator, std: float, dx: float, dy: float, periodic: bool, scale: Tensor | None = None, wake: dict | None = None):
        super().__init__()
        self.op, self.std = op, std
        self.regimes = RegimeCount()
        self.items = SumMetric()
        self.n_obs = MaxMetric()
        self.samples = MaxMetric()
        self.rmse = FieldRMSE(scale=scale)
        self.vorticity = VorticityError(dx, dy, periodic, scale=scale)
        self.divergence = DivergenceRatio(dx, dy, periodic, scale=scale)
        self.spectrum = SpectrumLogError(dx, dy, k_max=SPECTRUM_SHELLS, scale=scale, below_nyquist=True)
        self.energy = EnergyRatio()
        self.residual = ResidualRatio()
        self.strouhal = None if wake is None else StrouhalError(**wake)
        self.per_sample = (self.rmse, self.vorticity, self.divergence, self.spectrum, self.energy, *([self.strouhal] if wake else []))
        """The metrics scored on every sample against its truth, in ``update`` and ``compute``."""
        self.rmse_mean = FieldRMSE(scale=scale)
        self.vorticity_mean = VorticityError(dx, dy, periodic, scale=scale)
        self.energy_mean = EnergyRatio()
        self.strouhal_mean = None if wake is None else StrouhalError(**wake)
        self.crps = CRPS()
        self.spread = SpreadSkill()
        self.ensemble_items = SumMetric()

    def update(self, recon: Tensor, truth: Tensor, y: Tensor, codes: Tensor) -> None:
        recon, truth, y = recon.double(), truth.double(), y.double()
        b, k = recon.shape[:2]
        flat = recon.flatten(0, 1)
        truth_k = truth.repeat_interleave(k, dim=0)
        valid = codes.flatten() != DIVERGED
        self.regimes.update(codes.flatten().long())
        self.items.update(torch.tensor(float(b)))
        self.n_obs.update(torch.tensor(float(y[0].numel())))
        self.samples.update(torch.tensor(float(k)))
        for metric in self.per_sample:
            metric.update(flat, truth_k, valid)
        self.residual.update(self.op(flat).flatten(1), y.repeat_interleave(k, dim=0).flatten(1), self.std, valid)

        weights = (codes != DIVERGED).double()
        kept = weights.sum(dim=1) > 0
        safe = torch.where(weights[..., None, None, None].bool(), recon, torch.zeros_like(recon))
        mean = safe.sum(dim=1) / weights.sum(dim=1).clamp_min(1)[:, None, None, None]
        self.rmse_mean.update(mean, truth, kept)
        self.vorticity_mean.update(mean, truth, kept)
        self.energy_mean.update(mean, truth, kept)
        if self.strouhal_mean is not None:
            self.strouhal_mean.update(mean, truth, kept)
        if k > 1:
            whole = valid.reshape(b, k).all(dim=1)
            self.ensemble_items.update(whole.double().sum())
            self.crps.update(recon, truth, whole)
            self.spread.update(recon, truth, whole)

    def compute(self) -> dict[str, float]:
        counts = {name: int(value) for name, value in self.regimes.compute().items()}
        k = _count(self.samples.compute())
        out: dict[str, float] = {"items": int(self.items.compute()), "samples": k, "n_obs": _count(self.n_obs.compute())}
        for metric in (*self.per_sample, self.residual):
            out.update({key: _value(value) for key, value in metric.compute().items() if key != "excluded"})
        if self.strouhal is not None:
            out["strouhal_unresolved"] = int(out["strouhal_unresolved"])
        rmse_mean = self.rmse_mean.compute()
        out["rmse_mean"] = _value(rmse_mean["rmse"])
        out["rel_l2_mean"] = _value(rmse_mean["rel_l2"])
        vorticity_mean = self.vorticity_mean.compute()
        out["vorticity_corr_mean"] = _value(vorticity_mean["vorticity_corr"])
        out["vorticity_rmse_mean"] = _value(vorticity_mean["vorticity_rmse"])
        out["energy_ratio_mean"] = _value(self.energy_mean.compute()["energy_ratio"])
        if self.strouhal_mean is not None:
            strouhal_mean = self.strouhal_mean.compute()
            out["strouhal_error_mean"] = _value(strouhal_mean["strouhal_error"])
            out["strouhal_unresolved_mean"] = int(strouhal_mean["strouhal_unresolved"])
        if k > 1:
            out["ensemble_items"] = int(self.ensemble_items.compute())
            out["crps"] = _value(self.crps.compute()["crps"])
            out["spread_skill"] = _value(self.spread.compute()["spread_skill"])
        out.update({name: counts[name] for name in REGIMES})
        return out


def _count(value: Tensor) -> int:
    """A max-reduced count; 0 where nothing was seen (torchmetrics' max of nothing is -inf)."""
    value = float(value)
    return int(value) if math.isfinite(value) else 0


GEOMETRIC = ("norm", "ratio")
"""Diagnostics whose name ends with one of these are positive magnitudes: their per-step
value is the geometric mean."""


class DiagnosticSeries(Metric):
    """Per-step means of the sampler's diagnostics over items and samples (see the module
    docstring), reducible across ranks.

    ``update(diagnostics)`` with a dict ``name -> (E, N)`` (E evaluations, N samples) that
    holds ``t``; the names and E must be the same in every update. ``compute()`` returns
    ``name -> (E,)`` float64 tensors (NaN where no value was finite), ``t`` included, or
    ``{}`` on a rank that saw no batch.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("rows", [], dist_reduce_fx="cat")
        self.names: list[str] | None = None
        self.evaluations: int | None = None

    def update(self, diagnostics: dict[str, Tensor]) -> None:
        names = sorted(diagnostics)
        if "t" not in diagnostics:
            raise ValueError("diagnostics: need the times 't' beside the values")
        values = torch.stack([diagnostics[name].double() for name in names], dim=-1)  # (E, N, F)
        if self.names is None:
            self.names, self.evaluations = names, values.shape[0]
        elif (names, values.shape[0]) != (self.names, self.evaluations):
            raise ValueError(f"diagnostics: got {names} over {values.shape[0]} evaluations after {self.names} over {self.evaluations}")
        geometric = torch.tensor([name.endswith(GEOMETRIC) for name in names])
        values = torch.where(geometric, values.log(), values)
        finite = values.isfinite()
        sums = torch.where(finite, values, torch.zeros_like(values)).sum(dim=1)
        self.rows.append(torch.cat([sums.flatten(), finite.sum(dim=1).double().flatten()]).float())

    def compute(self) -> dict[str, Tensor]:
        if self.names is None or (isinstance(self.rows, list) and not self.rows):
            return {}
        rows = dim_zero_cat(self.rows)
        e, f = self.evaluations, len(self.names)
        totals = rows.double().reshape(-1, 2, e, f).sum(dim=0)
        means = totals[0] / totals[1]  # NaN where nothing was finite
        out = {}
        for j, name in enumerate(self.names):
            out[name] = means[:, j].exp() if name.endswith(GEOMETRIC) else means[:, j]
        return out
