r"""Reconstruction metrics as torchmetrics, exact under distributed (DDP) reduction.

Every metric keeps *sufficient statistics*, sums over samples and grid points in float64
states reduced with ``dist_reduce_fx="sum"``, and forms its ratios and square roots only
in ``compute()``. Summing the states of the ranks is then the same as one metric seeing
all the data: no average of averages, whatever the batch or shard sizes.

Inputs are fields of shape (B, C, H, W), ``C = 2 T`` frame-major (``c = 2 * frame +
component``, components :math:`u, v`), or ensembles of shape (B, K, C, H, W) with ``K``
members per truth. Common to the field metrics:

- ``mask`` (constructor), a boolean tensor (H, W): only the points where it is True
  (fluid, away from a cropped boundary) enter any sum. Derivatives and transforms are
  taken on the whole grid first; the mask then selects points (vorticity) or zeroes the
  field outside it before the FFT (spectrum).
- ``valid`` (``update``), a boolean tensor (B,): samples with ``valid=False``, and every
  sample whose input holds a non-finite value, are left out of the sums and counted in
  the ``excluded`` entry of ``compute()``. A diverged sample never poisons an aggregate.
- ``compute()`` returns a dict of scalar tensors with the names given in each class.

Reconstructions are labelled by :func:`regime` as ``balanced``, ``flat`` or ``diverged``
(codes :data:`BALANCED`, :data:`FLAT`, :data:`DIVERGED`, names :data:`REGIMES`);
:class:`RegimeCount` tallies them.

References:
    Rozet & Louppe, "Score-based data assimilation", NeurIPS 2023, arXiv:2306.10574
    (observation residual against noise std as the check of a posterior sample).
    Gneiting & Raftery, "Strictly proper scoring rules, prediction, and estimation",
    JASA 2007 (CRPS). Ferro, "Fair scores for ensemble forecasts", QJRMS 2014 (the fair
    ensemble CRPS). Fortin, Abaza, Anctil & Turcotte, "Why should ensemble spread match
    the RMSE of the ensemble mean?", J. Hydrometeorology 2014 (the (K+1)/K factor).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

from ldiff.physics import divergence, energy_spectrum, shell_width, vorticity, wake_strouhal

BALANCED, FLAT, DIVERGED = 0, 1, 2
REGIMES = ("balanced", "flat", "diverged")  # REGIMES[code] is the name of a regime code


def _check_mask(mask: Tensor | None, shape: tuple[int, ...]) -> None:
    if mask is not None and (mask.shape != shape[-2:] or mask.dtype != torch.bool):
        raise ValueError(f"mask: need a boolean tensor of shape {tuple(shape[-2:])}, got {mask.dtype} {tuple(mask.shape)}")


def _points(x: Tensor, mask: Tensor | None) -> Tensor:
    """The values of (..., H, W) at the masked grid points, shape (..., P)."""
    _check_mask(mask, x.shape)
    return x.flatten(-2) if mask is None else x[..., mask]


def _rescale(x: Tensor, scale: Tensor | None) -> Tensor:
    """Multiply the (u, v) channels of (B, 2T, H, W) by ``scale`` of shape (2,)."""
    if scale is None:
        return x
    return x * scale.to(x).repeat(x.shape[1] // 2)[:, None, None]


def spatial_std(x: Tensor, mask: Tensor | None = None) -> Tensor:
    r"""Spatial standard deviation of each sample, shape (B,), for fields (B, C, H, W).

    :math:`\sqrt{\frac1C \sum_c \operatorname{Var}_{\mathbf{x}}(x_c)}`: the population
    variance over the (masked) grid of each channel, averaged over channels, so a mean
    flow (the free stream of a wake) adds nothing.
    """
    return _points(x, mask).var(dim=-1, correction=0).mean(dim=1).sqrt()


def regime(
    x: Tensor,
    reference_std: Tensor | float,
    data_range: float,
    flat_fraction: float = 0.2,
    diverge_factor: float = 10.0,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Regime code of each reconstruction: :data:`DIVERGED`, :data:`FLAT` or :data:`BALANCED`.

    - ``diverged``: a non-finite value anywhere in the sample, or
      :math:`\max |x| > \texttt{diverge\_factor} \times \texttt{data\_range}` (default 10
      times; ``data_range`` is the largest magnitude of the data, e.g. of the truth, in
      the units of ``x``);
    - else ``flat``: :func:`spatial_std` below ``flat_fraction`` (default 0.2) of
      ``reference_std`` (the truth's spatial std, or the data's where no truth exists);
    - else ``balanced``.

    Args:
        x: reconstructions of shape (B, C, H, W).
        reference_std: float or tensor of shape (B,).
        data_range: positive float.
        mask: optional boolean (H, W); the max and the std are taken over its points.

    Returns:
        LongTensor of shape (B,).
    """
    if data_range <= 0:
        raise ValueError(f"data_range: need a positive magnitude, got {data_range}")
    finite = x.isfinite().flatten(1).all(dim=1)
    clean = torch.where(finite[:, None, None, None], x, torch.zeros_like(x))
    diverged = ~finite | (_points(clean, mask).abs().flatten(1).amax(dim=1) > diverge_factor * data_range)
    flat = spatial_std(clean, mask) < flat_fraction * torch.as_tensor(reference_std).to(x)
    codes = torch.full(x.shape[:1], BALANCED, dtype=torch.long, device=x.device)
    codes[flat] = FLAT
    codes[diverged] = DIVERGED
    return codes


class FieldMetric(Metric):
    """Base of the metrics below: the mask, the ``valid`` filter and the ``excluded`` count.

    Args:
        mask: optional boolean tensor (H, W) of the points that count.
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, mask: Tensor | None = None):
        super().__init__()
        if mask is not None and (mask.dim() != 2 or mask.dtype != torch.bool):
            raise ValueError(f"mask: need a boolean tensor (H, W), got {mask.dtype} {tuple(mask.shape)}")
        self.register_buffer("mask", mask)
        self.add_state("excluded", torch.tensor(0), dist_reduce_fx="sum")

    def _sum_state(self, name: str, shape: tuple[int, ...] = ()) -> None:
        self.add_state(name, torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")

    def _keep(self, valid: Tensor | None, x: Tensor) -> Tensor:
        """Samples to use, boolean (B,): ``valid`` and all finite in ``x`` (B, ...); counts the rest."""
        keep = x.isfinite().flatten(1).all(dim=1)
        if valid is not None:
            if valid.shape != keep.shape or valid.dtype != torch.bool:
                raise ValueError(f"valid: need a boolean tensor of shape {tuple(keep.shape)}, got {valid.dtype} {tuple(valid.shape)}")
            keep &= valid.to(keep.device)
        self.excluded += (~keep).sum()
        return keep

    def _kept(self, x: Tensor, truth: Tensor, valid: Tensor | None) -> Tensor | None:
        """Check a (reconstruction, truth) pair of fields (B, C, H, W) and return the
        samples to score (:meth:`_keep`), or None when there is none (all counted in
        ``excluded``)."""
        _check_pair(x, truth)
        keep = self._keep(valid, x)
        return keep if keep.any() else None


def _check_pair(x: Tensor, truth: Tensor) -> None:
    if x.dim() != 4 or x.shape != truth.shape:
        raise ValueError(f"truth: need fields (B, C, H, W) of one shape, got {tuple(x.shape)} and {tuple(truth.shape)}")


class FieldRMSE(FieldMetric):
    r"""Root-mean-square error per component and overall, and the relative L2 error.

    Over all kept samples, frames and (masked) points, with :math:`e = x - x_{true}`:

    - ``rmse_u``, ``rmse_v``: :math:`\sqrt{\sum e_c^2 / n}` in normalised units;
    - ``rmse``: :math:`\sqrt{\sum_c \sum e_c^2 / 2n}`;
    - ``rel_l2``: the *global ratio* :math:`\sqrt{\sum e^2 / \sum x_{true}^2}` pooled over
      every sample (not a mean of per-sample ratios), in normalised units, i.e. relative
      to the truth's fluctuation about the training mean;
    - with ``scale`` (the normaliser's per-component std, shape (2,)): ``rmse_u_phys``,
      ``rmse_v_phys`` (:math:`\text{scale}_c\,\text{rmse}_c`) and ``rmse_phys``
      :math:`\sqrt{\sum_c \text{scale}_c^2 \sum e_c^2 / 2n}`, in physical units;
    - ``excluded``: samples left out.

    ``update(x, truth, valid=None)`` with ``x``, ``truth`` of shape (B, 2T, H, W) in
    normalised units, ``valid`` boolean (B,).
    """

    def __init__(self, scale: Tensor | None = None, mask: Tensor | None = None):
        super().__init__(mask)
        if scale is not None and (scale.shape != (2,) or not (scale > 0).all()):
            raise ValueError(f"scale: need a positive per-component std of shape (2,), got {scale}")
        self.scale = scale
        self._sum_state("sse", (2,))
        self._sum_state("sst", (2,))
        self._sum_state("count")

    def update(self, x: Tensor, truth: Tensor, valid: Tensor | None = None) -> None:
        keep = self._kept(x, truth, valid)
        if keep is None:
            return
        error = _points((x[keep] - truth[keep]).double(), self.mask)
        reference = _points(truth[keep].double(), self.mask)
        self.sse += error.unflatten(1, (-1, 2)).square().sum(dim=(0, 1, 3))
        self.sst += reference.unflatten(1, (-1, 2)).square().sum(dim=(0, 1, 3))
        self.count += error[:, 0::2].numel()

    def compute(self) -> dict[str, Tensor]:
        result = {
            "rmse": (self.sse.sum() / (2 * self.count)).sqrt(),
            "rmse_u": (self.sse[0] / self.count).sqrt(),
            "rmse_v": (self.sse[1] / self.count).sqrt(),
            "rel_l2": (self.sse.sum() / self.sst.sum()).sqrt(),
        }
        if self.scale is not None:
            scale = self.scale.to(self.sse)
            result["rmse_phys"] = ((scale.square() * self.sse).sum() / (2 * self.count)).sqrt()
            result["rmse_u_phys"] = scale[0] * result["rmse_u"]
            result["rmse_v_phys"] = scale[1] * result["rmse_v"]
        return result | {"excluded": self.excluded}


class VorticityError(FieldMetric):
    r"""Vorticity RMSE and pooled Pearson correlation of reconstructed and true vorticity.

    The vorticity of every frame comes from :func:`ldiff.physics.vorticity` (spectral if
    ``periodic``, finite differences otherwise). With :math:`a` the reconstructed and
    :math:`b` the true vorticity at all kept samples, frames and masked points
    (:math:`n` values):

    - ``vorticity_rmse``: :math:`\sqrt{\sum (a - b)^2 / n}`, in physical units (1/time);
    - ``vorticity_corr``: the *pooled* correlation
      :math:`\frac{n\sum ab - \sum a \sum b}{\sqrt{(n\sum a^2 - (\sum a)^2)(n\sum b^2 - (\sum b)^2)}}`
      over all values together (not a mean of per-sample correlations), whose sums are
      exact under DDP;
    - ``excluded``: samples left out.

    Args:
        dx, dy: grid spacings in physical units.
        periodic: spectral derivatives if True, finite differences otherwise.
        scale: the normaliser's per-component std (2,) if the fields come in normalised
            units (the normaliser's mean is a constant and has no vorticity); None if
            they are in physical units.
        mask: optional boolean (H, W).

    ``update(x, truth, valid=None)`` with fields (B, 2T, H, W).
    """

    def __init__(self, dx: float, dy: float, periodic: bool, scale: Tensor | None = None, mask: Tensor | None = None):
        super().__init__(mask)
        self.dx, self.dy, self.periodic, self.scale = dx, dy, periodic, scale
        for name in ("n", "sum_a", "sum_b", "sum_aa", "sum_bb", "sum_ab", "sse"):
            self._sum_state(name)

    def update(self, x: Tensor, truth: Tensor, valid: Tensor | None = None) -> None:
        keep = self._kept(x, truth, valid)
        if keep is None:
            return
        a, b = (
            _points(vorticity(_rescale(f[keep].double(), self.scale), self.dx, self.dy, self.periodic), self.mask)
            for f in (x, truth)
        )
        self.n += a.numel()
        self.sum_a += a.sum()
        self.sum_b += b.sum()
        self.sum_aa += a.square().sum()
        self.sum_bb += b.square().sum()
        self.sum_ab += (a * b).sum()
        self.sse += (a - b).square().sum()

    def compute(self) -> dict[str, Tensor]:
        covariance = self.n * self.sum_ab - self.sum_a * self.sum_b
        variances = (self.n * self.sum_aa - self.sum_a**2) * (self.n * self.sum_bb - self.sum_b**2)
        return {
            "vorticity_rmse": (self.sse / self.n).sqrt(),
            "vorticity_corr": covariance / variances.sqrt(),
            "excluded": self.excluded,
        }


class SpectrumLogError(FieldMetric):
    r"""Mean absolute log ratio of the reconstructed and true energy spectra.

    ``spectrum_log_error``: :math:`\frac{1}{n}\sum |\log E_{rec}(k) - \log E_{true}(k)|`
    over kept samples, frames and the shells :math:`k = 1, \dots, k_{max}` (in units of
    the shell width, see :func:`ldiff.physics.energy_spectrum`; shell 0, the mean flow,
    is left out). The default ``k_max`` is the Nyquist wavenumber of the coarser axis in
    shells (``n // 2`` on an ``n x n`` periodic grid). Energies are floored at the
    smallest positive float64, so an empty shell gives a large but finite error: pick
    ``k_max`` inside the band the data fill. Also ``excluded``.

    Args:
        dx, dy: grid spacings in physical units.
        k_max: last shell compared, or None for the default.
        below_nyquist: treat ``k_max`` as an upper bound: compare the shells up to
            ``min(k_max, Nyquist - 1)``, whatever the grid (the full shells only).
        scale: the normaliser's per-component std (2,) for fields in normalised units.
        mask: optional boolean (H, W); the fields are zeroed outside it before the FFT.

    ``update(x, truth, valid=None)`` with fields (B, 2T, H, W).
    """

    def __init__(
        self,
        dx: float,
        dy: float,
        k_max: int | None = None,
        scale: Tensor | None = None,
        mask: Tensor | None = None,
        below_nyquist: bool = False,
    ):
        super().__init__(mask)
        if k_max is not None and k_max < 1:
            raise ValueError(f"k_max: need a shell index >= 1, got {k_max}")
        self.dx, self.dy, self.k_max, self.scale, self.below_nyquist = dx, dy, k_max, scale, below_nyquist
        self._sum_state("sum_abs")
        self._sum_state("count")

    def _shells(self, shape: tuple[int, int], n_shells: int) -> int:
        nyquist = math.floor(min(math.pi / self.dx, math.pi / self.dy) / shell_width(shape, self.dx, self.dy) + 1e-9)
        k_max = nyquist if self.k_max is None else self.k_max
        if self.below_nyquist:
            k_max = max(1, min(k_max, nyquist - 1))
        if k_max >= n_shells:
            raise ValueError(f"k_max: {k_max} exceeds the {n_shells - 1} shells of a {shape} grid")
        return k_max

    def update(self, x: Tensor, truth: Tensor, valid: Tensor | None = None) -> None:
        _check_pair(x, truth)
        _check_mask(self.mask, x.shape)
        keep = self._keep(valid, x)
        if not keep.any():  # nothing to score; counted in `excluded`
            return
        weight = 1.0 if self.mask is None else self.mask.double()
        log_spectra = [
            energy_spectrum(_rescale(f[keep].double(), self.scale) * weight, self.dx, self.dy)[1]
            .clamp_min(torch.finfo(torch.float64).tiny)
            .log()
            for f in (x, truth)
        ]
        k_max = self._shells(x.shape[-2:], log_spectra[0].shape[-1])
        difference = (log_spectra[0] - log_spectra[1])[..., 1 : k_max + 1]
        self.sum_abs += difference.abs().sum()
        self.count += difference.numel()

    def compute(self) -> dict[str, Tensor]:
        return {"spectrum_log_error": self.sum_abs / self.count, "excluded": self.excluded}


class ResidualRatio(FieldMetric):
    r"""Observation residual against noise: :math:`\sqrt{\frac1n \sum ((A x - y) / s)^2}`.

    ``residual_ratio`` pools all observations of the kept samples; with one noise std
    :math:`s` it is :math:`\sqrt{\operatorname{mean}(A x - y)^2} / s`. A sample of the
    posterior fits the data to noise level, so the ratio is about 1 (SDA's check); well
    below 1 is overfitting the noise, well above is ignoring the data. Also
    ``excluded``. It lives in observation space, so it takes no mask: the operator
    already picks the points.

    ``update(ax, y, std, valid=None)`` with ``ax`` (the operator applied to the
    reconstruction) and ``y`` of one shape (B, ...), ``std`` a positive float or a
    tensor broadcastable against ``y``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._sum_state("sum_sq")
        self._sum_state("count")

    def update(self, ax: Tensor, y: Tensor, std: Tensor | float, valid: Tensor | None = None) -> None:
        if ax.shape != y.shape:
            raise ValueError(f"y: shape {tuple(y.shape)} does not match A x {tuple(ax.shape)}")
        keep = self._keep(valid, ax)
        if not keep.any():  # nothing to score; counted in `excluded`
            return
        standardised = (ax - y).double() / torch.as_tensor(std, dtype=torch.float64, device=ax.device).expand_as(y)
        self.sum_sq += standardised[keep].square().sum()
        self.count += standardised[keep].numel()

    def compute(self) -> dict[str, Tensor]:
        return {"residual_ratio": (self.sum_sq / self.count).sqrt(), "excluded": self.excluded}


class EnergyRatio(FieldMetric):
    r"""Mean over samples of :func:`spatial_std` (reconstruction) / :func:`spatial_std` (truth).

    ``energy_ratio``: the *per-sample* ratio averaged over kept samples; 1 when the
    reconstruction has the truth's fluctuation level, near 0 when it is flat. Also
    ``excluded``. ``update(x, truth, valid=None)`` with fields (B, C, H, W).
    """

    def __init__(self, mask: Tensor | None = None):
        super().__init__(mask)
        self._sum_state("sum_ratio")
        self._sum_state("count")

    def update(self, x: Tensor, truth: Tensor, valid: Tensor | None = None) -> None:
        keep = self._kept(x, truth, valid)
        if keep is None:
            return
        ratio = spatial_std(x[keep].double(), self.mask) / spatial_std(truth[keep].double(), self.mask)
        self.sum_ratio += ratio.sum()
        self.count += ratio.numel()

    def compute(self) -> dict[str, Tensor]:
        return {"energy_ratio": self.sum_ratio / self.count, "excluded": self.excluded}


class DivergenceRatio(FieldMetric):
    r"""How far reconstructions are from incompressible, against the truth on the same
    grid: ``divergence`` is :math:`\operatorname{rms}(\nabla\cdot\mathbf u) /
    \operatorname{rms}(\omega_{true})` pooled over the kept samples' frames and points,
    and ``divergence_truth`` the same ratio for the truth (the discretisation's floor:
    about 0 with spectral derivatives of a periodic solenoidal field, small but not 0
    with finite differences of a solver's field), both from
    :func:`ldiff.physics.divergence` and :func:`~ldiff.physics.vorticity` in physical
    units. Arguments as :class:`VorticityError`.
    """

    def __init__(self, dx: float, dy: float, periodic: bool, scale: Tensor | None = None, mask: Tensor | None = None):
        super().__init__(mask)
        self.dx, self.dy, self.periodic, self.scale = dx, dy, periodic, scale
        for name in ("div_x", "div_truth", "vorticity_truth"):
            self._sum_state(name)

    def update(self, x: Tensor, truth: Tensor, valid: Tensor | None = None) -> None:
        keep = self._kept(x, truth, valid)
        if keep is None:
            return
        grid = (self.dx, self.dy, self.periodic)
        a, b = (_rescale(f[keep].double(), self.scale) for f in (x, truth))
        self.div_x += _points(divergence(a, *grid), self.mask).square().sum()
        self.div_truth += _points(divergence(b, *grid), self.mask).square().sum()
        self.vorticity_truth += _points(vorticity(b, *grid), self.mask).square().sum()

    def compute(self) -> dict[str, Tensor]:
        return {
            "divergence": (self.div_x / self.vorticity_truth).sqrt(),
            "divergence_truth": (self.div_truth / self.vorticity_truth).sqrt(),
            "excluded": self.excluded,
        }


class StrouhalError(FieldMetric):
    r"""The shedding frequency of cylinder-wake windows against the truth's: the Strouhal
    number :math:`St` of each window (:func:`ldiff.physics.wake_strouhal`: the dominant
    frequency of ``v`` on the wake's centre line, 2 to 8 diameters downstream).

    ``strouhal`` and ``strouhal_truth`` (means over the scored samples), and
    ``strouhal_error``, the mean of :math:`|St - St_{true}| / St_{true}`; a sample whose
    window has no resolvable peak (fewer than two periods: a flat reconstruction) is not
    scored but counted in ``strouhal_unresolved``. ``update(x, truth, valid=None)`` with
    windows (B, 2T, H, W), frames ``dt`` apart, T >= 8.

    Args:
        dt: time between frames.
        x, y: node coordinates, (W,) and (H,).
        diameter, center: the cylinder's diameter and centre.
    """

    def __init__(self, dt: float, x: Tensor, y: Tensor, diameter: float = 1.0, center: tuple[float, float] = (0.0, 0.0)):
        super().__init__()
        self.dt, self.diameter, self.center = dt, diameter, tuple(center)
        self.x, self.y = (torch.as_tensor(coordinate, dtype=torch.float64) for coordinate in (x, y))
        for name in ("sum_st", "sum_truth", "sum_error", "count", "unresolved"):
            self._sum_state(name)

    def update(self, x: Tensor, truth: Tensor, valid: Tensor | None = None) -> None:
        keep = self._kept(x, truth, valid)
        if keep is None:
            return
        args = (self.dt, self.x, self.y, self.diameter, 1.0, self.center)
        st = wake_strouhal(x[keep].double(), *args, strict=False)
        st_true = wake_strouhal(truth[keep].double(), *args, strict=False)
        scored = st.isfinite() & st_true.isfinite()
        self.unresolved += (~scored).sum()
        self.sum_st += st[scored].sum()
        self.sum_truth += st_true[scored].sum()
        self.sum_error += ((st - st_true).abs() / st_true)[scored].sum()
        self.count += scored.sum()

    def compute(self) -> dict[str, Tensor]:
        return {
            "strouhal": self.sum_st / self.count,
            "strouhal_truth": self.sum_truth / self.count,
            "strouhal_error": self.sum_error / self.count,
            "strouhal_unresolved": self.unresolved,
            "excluded": self.excluded,
        }


def _check_ensemble(samples: Tensor, truth: Tensor) -> None:
    if samples.dim() != 5 or samples.shape[:1] + samples.shape[2:] != truth.shape or samples.shape[1] < 2:
        raise ValueError(
            f"samples: need (B, K >= 2, C, H, W) around truth (B, C, H, W), got {tuple(samples.shape)} and {tuple(truth.shape)}"
        )


class CRPS(FieldMetric):
    r"""Fair (unbiased) ensemble CRPS, averaged over points, channels and kept samples.

    At each point, for members :math:`X_1..X_K` and truth :math:`y`,

    .. math:: \text{CRPS}_F = \frac1K \sum_i |X_i - y|
              - \frac{1}{2K(K-1)} \sum_{i \ne j} |X_i - X_j|,

    the *fair* form (Ferro 2014): its expectation is the CRPS of the distribution the
    members are drawn from, whatever ``K`` (the plain form, with :math:`1/2K^2`,
    penalises small ensembles). The pair sum is computed from the sorted members,
    :math:`\sum_{i,j} |X_i - X_j| = 2 \sum_i (2i - K - 1) X_{(i)}`. Output ``crps``
    (units of the fields) and ``excluded``.

    ``update(samples, truth, valid=None)`` with ``samples`` (B, K, C, H, W), K >= 2, and
    ``truth`` (B, C, H, W).
    """

    def __init__(self, mask: Tensor | None = None):
        super().__init__(mask)
        self._sum_state("sum_crps")
        self._sum_state("count")

    def update(self, samples: Tensor, truth: Tensor, valid: Tensor | None = None) -> None:
        _check_ensemble(samples, truth)
        keep = self._keep(valid, samples)
        if not keep.any():  # nothing to score; counted in `excluded`
            return
        members = _points(samples[keep].double(), self.mask)
        target = _points(truth[keep].double(), self.mask)
        k = members.shape[1]
        skill = (members - target[:, None]).abs().mean(dim=1)
        rank_weight = 2 * torch.arange(1, k + 1, dtype=torch.float64, device=members.device) - k - 1
        pair_sum = 2 * (rank_weight[:, None, None] * members.sort(dim=1).values).sum(dim=1)
        crps = skill - pair_sum / (2 * k * (k - 1))
        self.sum_crps += crps.sum()
        self.count += crps.numel()

    def compute(self) -> dict[str, Tensor]:
        return {"crps": self.sum_crps / self.count, "excluded": self.excluded}


class SpreadSkill(FieldMetric):
    r"""Ensemble spread against the RMSE of the ensemble mean.

    Over all kept samples, channels and points (:math:`n` values), with
    :math:`\bar X` the ensemble mean and :math:`s^2` the unbiased member variance
    (divisor :math:`K - 1`):

    - ``spread``: :math:`\sqrt{\sum s^2 / n}`;
    - ``skill``: :math:`\sqrt{\sum (\bar X - y)^2 / n}`;
    - ``spread_skill``: :math:`\sqrt{\sum \frac{K+1}{K} s^2 \big/ \sum (\bar X - y)^2}`.
      When the truth is one more draw from the members' distribution,
      :math:`E(\bar X - y)^2 = \frac{K+1}{K}\sigma^2`, so a calibrated ensemble gives 1
      (Fortin et al. 2014); below 1 is over-confident, above 1 over-dispersed.
    - ``excluded``: samples left out.

    ``update(samples, truth, valid=None)`` with ``samples`` (B, K, C, H, W), K >= 2, and
    ``truth`` (B, C, H, W).
    """

    def __init__(self, mask: Tensor | None = None):
        super().__init__(mask)
        for name in ("sum_var", "sum_var_corrected", "sse", "count"):
            self._sum_state(name)

    def update(self, samples: Tensor, truth: Tensor, valid: Tensor | None = None) -> None:
        _check_ensemble(samples, truth)
        keep = self._keep(valid, samples)
        if not keep.any():  # nothing to score; counted in `excluded`
            return
        members = _points(samples[keep].double(), self.mask)
        target = _points(truth[keep].double(), self.mask)
        k = members.shape[1]
        variance = members.var(dim=1, correction=1)
        self.sum_var += variance.sum()
        self.sum_var_corrected += (k + 1) / k * variance.sum()
        self.sse += (members.mean(dim=1) - target).square().sum()
        self.count += variance.numel()

    def compute(self) -> dict[str, Tensor]:
        return {
            "spread": (self.sum_var / self.count).sqrt(),
            "skill": (self.sse / self.count).sqrt(),
            "spread_skill": (self.sum_var_corrected / self.sse).sqrt(),
            "excluded": self.excluded,
        }


class RegimeCount(Metric):
    """How many reconstructions fell in each regime: ``{"balanced": n, "flat": n, "diverged": n}``.

    ``update(codes)`` with ``codes`` a LongTensor (B,) of regime codes (see :func:`regime`).
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("counts", torch.zeros(len(REGIMES), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, codes: Tensor) -> None:
        if codes.dim() != 1 or codes.dtype != torch.long or not ((codes >= 0) & (codes < len(REGIMES))).all():
            raise ValueError(f"codes: need a LongTensor (B,) of regime codes 0..{len(REGIMES) - 1}, got {codes}")
        self.counts += torch.bincount(codes, minlength=len(REGIMES))

    def compute(self) -> dict[str, Tensor]:
        return dict(zip(REGIMES, self.counts))
