r"""``dps-sum``: SDA's Gaussian likelihood score, summed over every observation.

Given the noisy state :math:`x_t`, the likelihood :math:`p(y \mid x_t) = \int p(y \mid x)\,
p(x \mid x_t)\, dx` is intractable. SDA replaces :math:`p(x \mid x_t)` by a Gaussian
around the Tweedie estimate :math:`\hat x(x_t) = (x_t - \sigma \hat\varepsilon)/\mu` with an
isotropic variance that grows like the noise-to-signal ratio:

.. math:: p(y \mid x_t) \approx \mathcal{N}\big(y;\, A \hat x,\; \mathrm{var}\, I\big),
          \qquad \mathrm{var} = s^2 + \gamma\, (\sigma/\mu)^2 ,

so that, with the residual :math:`e = y - A \hat x`,

.. math:: \log p(y \mid x_t) = -\tfrac12 \sum_{j=1}^{N} e_j^2 / \mathrm{var},
          \qquad g = \nabla_{x_t} \log p = J^T A^T e / \mathrm{var},
          \qquad J = \partial \hat x / \partial x_t ,

and the guided epsilon is that of the posterior score :math:`-\hat\varepsilon/\sigma + g`:
:math:`\tilde\varepsilon = \hat\varepsilon - \sigma g`. One forward pass and one
vector-Jacobian product per evaluation.

The sum over the :math:`N` observations is the seed's problem (its §2.1): each observed
point pulls with :math:`e_j / \mathrm{var}` whatever :math:`N` is, and :math:`J^T` gathers the
pulls of every point in its (wide, at large ``t``) footprint, so :math:`\|\sigma g\|` grows
with the observation density. ``std-scaled``/``dual-scaled`` (:mod:`.scaled`) rescale
``var``; ``adaptive`` rescales :math:`\|\sigma g\|`; ``mmps`` replaces the isotropic ``var``
by the Tweedie covariance. This module also holds the pieces they share: the state check,
:func:`tweedie_score`, :func:`sda_score` and :func:`record`.

References:
    Rozet & Louppe, "Score-based Data Assimilation", NeurIPS 2023, arXiv:2306.10574
    (``GaussianScore``).
    Chung et al., "Diffusion Posterior Sampling for General Noisy Inverse Problems",
    ICLR 2023, arXiv:2209.14687.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ldiff.diffusion.denoise import Denoiser
from ldiff.diffusion.schedules import Schedule
from ldiff.guidance.base import Observation, ScoreGuidance, record


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


class DPSSum(ScoreGuidance):
    r"""SDA's ``GaussianScore``: :math:`\tilde\varepsilon = \hat\varepsilon - \sigma\, J^T A^T (y - A\hat x)/\mathrm{var}`
    with :math:`\mathrm{var} = s^2 + \gamma (\sigma/\mu)^2` (see the module docstring).

    Args:
        gamma: weight of the Tweedie-error term :math:`(\sigma/\mu)^2` in the variance.
    """

    name = "dps-sum"

    def __init__(self, gamma: float = 1e-2):
        self.gamma = check_non_negative(type(self).__name__, "gamma", gamma)

    def noise(self, obs: Observation) -> tuple[float | Tensor, float]:
        """The ``(std, gamma)`` the likelihood uses: for dps-sum, the observations' own std."""
        return obs.std, self.gamma

    def variance(self, schedule: Schedule, obs: Observation, t: Tensor) -> tuple[Tensor, Tensor]:
        """``var`` and its gamma share at times ``t`` (B,), broadcastable against ``obs.y``."""
        std, gamma = self.noise(obs)
        return sda_variance(schedule, t, obs.y, std, gamma)

    def guided_eps(self, denoiser, x_t, t, obs, diagnostics):
        check_state(x_t, obs)
        var, gamma_share = self.variance(denoiser.schedule, obs, t)
        eps_hat, g = sda_score(denoiser, x_t, t, obs, var)
        _, sigma = denoiser.schedule.coefficients(t, x_t)
        correction = sigma * g
        record(diagnostics, t, eps_hat, correction, gamma_share)
        return eps_hat - correction
