r"""The common interface of guidance strategies.

A reconstruction problem is an :class:`Observation` (``y = A x + n`` with
``n ~ N(0, std^2)``) and a prior :class:`~ldiff.diffusion.denoise.Denoiser`. A
:class:`Strategy` turns them into posterior samples:
``strategy.reconstruct(denoiser, obs, x1, sampler) -> x0``.

Two families:

- :class:`ScoreGuidance` (``dps-sum``, ``std-scaled``, ``dual-scaled``, ``adaptive``,
  ``dps-norm``, ``mmps``): each turns :math:`(x_t, t, \hat\varepsilon)` into a guided
  :math:`\tilde\varepsilon = \hat\varepsilon - \sigma\, g` with a likelihood score
  :math:`g \approx \nabla_{x_t} \log p(y \mid x_t)`, and samples with SDA's
  predictor-corrector, the guided epsilon feeding both predictor and corrector.
- Strategies with their own transition (``ddrm``, ``pnp-admm``, ``diffpir``), which walk
  the same time grid (``sampler.times()``) so that budgets are comparable.

Every strategy records per-step diagnostics per sample into a :class:`Diagnostics`:
``eps_norm`` (:math:`\|\hat\varepsilon\|`), ``correction_norm`` (:math:`\|\sigma g\|` or
the equivalent change of the state), their ``ratio``, ``gamma_share`` (the share of
:math:`\gamma (\sigma/\mu)^2` in SDA's variance, NaN where it does not apply) and
``nonfinite`` (1 where the correction holds NaN/Inf). All reductions are per sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from ldiff.diffusion.noise import randn
from ldiff.diffusion.denoise import Denoiser
from ldiff.diffusion.schedules import Schedule
from ldiff.diffusion.sampler import PredictorCorrector, StepCallback
from ldiff.observe import Operator, check_std


@dataclass
class Observation:
    """Observations ``y = A x + n`` of fields of shape ``field_shape`` = (C, H, W).

    Attributes:
        y: observations in normalised units, shape (B, *obs_shape).
        op: the linear operator ``A``.
        std: noise std in normalised units (float or broadcastable against ``y``).
        field_shape: (C, H, W) of the fields observed.
        scale: the size of one unit of ``y`` in normalised units (float or broadcastable
            against ``y``): 1 when the prior runs on the fields themselves, :math:`A s`
            for a prior on standardised coordinates (:mod:`ldiff.diffusion.latent`),
            whose ``y`` and ``std`` are those of :math:`z`. Strategies with a noise std
            stated absolutely (``std_ref``, ``std_floor``) apply it in normalised units
            and divide by ``scale``.
    """

    y: Tensor
    op: Operator
    std: float | Tensor
    field_shape: Sequence[int]
    scale: float | Tensor = 1.0

    def __post_init__(self) -> None:
        self.field_shape = tuple(self.field_shape)
        check_std(self.std)
        scale = torch.as_tensor(self.scale)
        if not (torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("observation scale must be finite and > 0")
        self.op.check(self.field_shape)
        expected = tuple(self.op(torch.empty((1, *self.field_shape), device="meta")).shape[1:])
        if tuple(self.y.shape[1:]) != expected:
            raise ValueError(
                f"observations y have shape {tuple(self.y.shape[1:])} per sample, but {self.op!r} "
                f"on fields {self.field_shape} gives {expected}"
            )
        if self.y[0].numel() == 0:
            raise ValueError(f"{self.op!r} gives zero observations on fields {self.field_shape}")
        if not torch.isfinite(self.y).all():
            raise ValueError(f"observations y hold {int((~torch.isfinite(self.y)).sum())} NaN or Inf values")

    @property
    def n_obs(self) -> int:
        """Observations per sample, ``N``."""
        return self.y[0].numel()

    def repeat(self, k: int) -> "Observation":
        """The same problem with every observation set repeated ``k`` times (K samples each)."""
        def repeated(value: float | Tensor) -> float | Tensor:  # per observation set: repeat; else it broadcasts
            per_set = isinstance(value, Tensor) and value.dim() == self.y.dim() and value.shape[0] == self.y.shape[0]
            return value.repeat_interleave(k, dim=0) if per_set else value

        return Observation(self.y.repeat_interleave(k, dim=0), self.op, repeated(self.std), self.field_shape, repeated(self.scale))


class Diagnostics:
    """Per-step, per-sample diagnostics: call :meth:`record` once per guided evaluation."""

    def __init__(self) -> None:
        self.t: list[Tensor] = []
        self.values: dict[str, list[Tensor]] = {}

    def record(self, t: Tensor, **values: Tensor) -> None:
        """Record values of shape (B,) at times ``t`` of shape (B,)."""
        self.t.append(t.detach().float().cpu())
        for name, value in values.items():
            self.values.setdefault(name, []).append(value.detach().float().cpu())

    def stacked(self) -> dict[str, Tensor]:
        """Every recorded quantity stacked to shape (evaluations, B), plus ``t``."""
        out = {name: torch.stack(v) for name, v in self.values.items()}
        if self.t:
            out["t"] = torch.stack(self.t)
        return out


def norm(x: Tensor) -> Tensor:
    """Per-sample Euclidean norm, shape (B,)."""
    return x.flatten(1).norm(dim=1)


def record(
    diagnostics: Diagnostics | None,
    t: Tensor,
    eps_hat: Tensor,
    correction: Tensor,
    gamma_share: Tensor | None = None,
    **extra: Tensor,
) -> None:
    r"""Record :math:`\|\hat\varepsilon\|`, :math:`\|\sigma g\|`, their ratio, the mean
    :math:`\gamma` share over the observations (NaN if ``None``; else broadcastable against
    ``y``, as from :func:`sda_variance`) and whether the correction holds NaN/Inf, all per
    sample (shape (B,)), plus any ``extra`` per-sample values. Does nothing without
    ``diagnostics``."""
    if diagnostics is None:
        return
    batch = eps_hat.shape[0]
    if gamma_share is None:
        share = eps_hat.new_full((batch,), math.nan)
    else:
        # Broadcast dims replicate uniformly, so the mean over the stored entries is the
        # mean over the observations.
        share = gamma_share.reshape(gamma_share.shape[0], -1).mean(dim=1) if gamma_share.dim() else gamma_share
        share = share.expand(batch)
    eps_norm = norm(eps_hat)
    correction_norm = norm(correction)
    diagnostics.record(
        t,
        eps_norm=eps_norm,
        correction_norm=correction_norm,
        ratio=correction_norm / eps_norm,
        gamma_share=share,
        nonfinite=(~torch.isfinite(correction)).flatten(1).any(dim=1).float(),
        **extra,
    )


def check_state(x_t: Tensor, obs: Observation) -> None:
    """Refuse a state that does not match the observations (field shape or batch size)."""
    if tuple(x_t.shape[1:]) != obs.field_shape:
        raise ValueError(f"state x_t has fields of shape {tuple(x_t.shape[1:])}, but the observations are of fields {obs.field_shape}")
    if x_t.shape[0] != obs.y.shape[0]:
        raise ValueError(
            f"state x_t holds {x_t.shape[0]} samples but y holds {obs.y.shape[0]} observation sets; use obs.repeat(k)"
        )


def check_non_negative(owner: str, name: str, value: float) -> float:
    """``value`` as a float, or ``ValueError`` if it is negative or not finite."""
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{owner}: {name} must be finite and >= 0, got {value}")
    return float(value)


def check_positive(owner: str, name: str, value: float) -> float:
    """``value`` as a float, or ``ValueError`` if it is not finite and > 0."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{owner}: {name} must be finite and > 0, got {value}")
    return float(value)


def sda_variance(schedule: Schedule, t: Tensor, y: Tensor, std: float | Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    r"""SDA's :math:`\mathrm{var} = s^2 + \gamma (\sigma/\mu)^2` and the share of the
    :math:`\gamma` term in it, both broadcastable against ``y`` (B, *obs_shape).

    Args:
        t: diffusion times, shape (B,).
        std: observation noise std, float or broadcastable against ``y``.
    """
    mu, sigma = schedule.coefficients(t, y)
    gamma_term = gamma * (sigma / mu) ** 2
    var = torch.as_tensor(std, dtype=y.dtype, device=y.device) ** 2 + gamma_term
    return var, gamma_term / var


def tweedie_score(
    denoiser: Denoiser, x_t: Tensor, t: Tensor, log_likelihood: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    r"""``(eps_hat, g)`` with :math:`g = \nabla_{x_t} \ell(\hat x(x_t))`, the gradient taken
    through the denoiser: one forward pass and one vector-Jacobian product.

    Args:
        x_t: noisy states, shape (B, C, H, W).
        t: diffusion times, shape (B,).
        log_likelihood: maps ``x_hat`` (B, C, H, W) to per-sample values (B,). Summing them
            over the batch before differentiating keeps samples independent.

    Returns:
        ``eps_hat`` (detached) and ``g``, both of shape (B, C, H, W).
    """
    x = x_t.detach().requires_grad_(True)
    with torch.enable_grad():
        eps_hat, x_hat = denoiser(x, t)
        (g,) = torch.autograd.grad(log_likelihood(x_hat).sum(), x)
    return eps_hat.detach(), g


def sda_score(denoiser: Denoiser, x_t: Tensor, t: Tensor, obs: Observation, var: Tensor) -> tuple[Tensor, Tensor]:
    r"""``(eps_hat, g)`` with :math:`g = \nabla_{x_t} -\tfrac12 \sum_j (y - A\hat x)_j^2/\mathrm{var}_j`,
    both of shape (B, C, H, W); ``var`` broadcastable against ``obs.y``."""

    def log_likelihood(x_hat: Tensor) -> Tensor:
        return -0.5 * ((obs.y - obs.op(x_hat)).square() / var).flatten(1).sum(dim=1)

    return tweedie_score(denoiser, x_t, t, log_likelihood)


class Strategy:
    """Base class of every guidance strategy.

    ``prior_coordinates``: whether the strategy runs in the coordinates of the diffusion
    prior (standardised for a ``gaussian-node`` prior, :mod:`ldiff.diffusion.latent`):
    the caller then hands it observations of those coordinates and decodes its samples.
    True for every strategy that samples the prior; the analytic baseline says which its
    own Gaussian is in.
    """

    prior_coordinates: bool = True

    def reconstruct(
        self,
        denoiser: Denoiser,
        obs: Observation,
        x1: Tensor,
        sampler: PredictorCorrector,
        generator: torch.Generator | None = None,
        callback: StepCallback | None = None,
        diagnostics: Diagnostics | None = None,
    ) -> Tensor:
        """Posterior samples, shape (B, C, H, W), from initial noise ``x1`` (B, C, H, W)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class GridStrategy(Strategy):
    r"""Strategies with their own transition (``ddrm``, ``diffpir``, ``pnp-admm``): one
    loop over a time grid, a per-step function (as azula's ``Sampler.step``).

    A subclass defines :meth:`start` (the state at the first time) and :meth:`step` (one
    transition from ``t`` to ``s``); it may override :meth:`grid` (default: the sampler's
    times, so budgets compare with the score strategies') and :meth:`result`. The state
    is a dict whose ``"x"`` is the iterate the sampler callback sees and may replace
    (the divergence guard), shape (B, C, H, W).
    """

    def grid(self, denoiser: Denoiser, sampler: PredictorCorrector, like: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``(t, s)`` per step, each of shape (B,): by default consecutive sampler times."""
        times = sampler.times(like.device).to(like.dtype)
        batch = like.shape[0]
        return [(times[i].expand(batch), times[i + 1].expand(batch)) for i in range(sampler.steps)]

    def start(self, denoiser: Denoiser, obs: Observation, x1: Tensor, t: Tensor) -> dict[str, Tensor]:
        """The state at the first time ``t`` (B,) from the initial noise ``x1`` (B, C, H, W)."""
        raise NotImplementedError

    def step(
        self, denoiser: Denoiser, obs: Observation, state: dict[str, Tensor], t: Tensor, s: Tensor,
        noise: Callable[[], Tensor], diagnostics: Diagnostics | None,
    ) -> dict[str, Tensor]:
        """One transition from ``t`` to ``s`` (both (B,)); ``noise()`` draws a standard
        normal tensor shaped like the field from the run's generator."""
        raise NotImplementedError

    def result(self, state: dict[str, Tensor]) -> Tensor:
        """The reconstruction from the final state: by default ``state["x"]``."""
        return state["x"]

    def reconstruct(self, denoiser, obs, x1, sampler, generator=None, callback=None, diagnostics=None):
        steps = self.grid(denoiser, sampler, x1)

        def noise() -> Tensor:
            return randn(x1.shape, generator, device=x1.device, dtype=x1.dtype)

        state = self.start(denoiser, obs, x1, steps[0][0])
        for i, (t, s) in enumerate(steps):
            x_prev = state["x"]
            state = self.step(denoiser, obs, state, t, s, noise, diagnostics)
            if callback is not None:
                state["x"] = callback(i, s, x_prev, state["x"])
        return self.result(state)


class ScoreGuidance(Strategy):
    r"""Strategies that guide epsilon: :math:`\tilde\varepsilon = \hat\varepsilon - \sigma g`."""

    def guided_eps(
        self, denoiser: Denoiser, x_t: Tensor, t: Tensor, obs: Observation, diagnostics: Diagnostics | None
    ) -> Tensor:
        """The guided epsilon at ``(x_t, t)``, shape of ``x_t``."""
        raise NotImplementedError

    def reconstruct(self, denoiser, obs, x1, sampler, generator=None, callback=None, diagnostics=None):
        def eps_fn(x_t: Tensor, t: Tensor) -> Tensor:
            return self.guided_eps(denoiser, x_t, t, obs, diagnostics)

        return sampler.sample(eps_fn, x1, generator, callback)
