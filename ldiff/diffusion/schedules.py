r"""Variance-preserving (VP) noise schedules.

A schedule defines the perturbation kernel of the forward diffusion

.. math:: x_t = \mu(t)\, x + \sigma(t)\, \varepsilon, \qquad \varepsilon \sim \mathcal{N}(0, I),
          \quad t \in [0, 1].

One schedule object is shared by training (the epsilon loss draws ``t ~ U(0, 1)`` and
perturbs with ``mu, sigma``), sampling (the predictor-corrector walks ``t`` from 1 to 0)
and diagnostics (the gamma term of SDA's likelihood variance is ``gamma (sigma/mu)^2``).
The seed's table of sigma/mu (0.045, 0.340, 3.41, 58.8 at t = 0.01, 0.1, 0.5, 0.9) comes
from :class:`LinearBetaSchedule`, while SDA samples with :class:`CosineSchedule`: using
one object everywhere is what keeps such numbers honest.

Schedules hold no parameters and do no I/O; ``t`` may be a Python float or a tensor of
any shape, and ``mu(t)``, ``sigma(t)`` have the shape of ``t``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class Schedule:
    r"""Base class: a VP schedule given by :math:`\mu(t)` and :math:`\sigma(t)`."""

    def mu(self, t: Tensor | float) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor | float) -> Tensor:
        raise NotImplementedError

    def sigma_bar(self, t: Tensor | float) -> Tensor:
        r""":math:`\bar\sigma = \sigma(t)/\mu(t)`, the noise-to-signal ratio: the noise level
        of :math:`x_t/\mu` (the variance-exploding form, DDRM's and EDM's
        :math:`\sigma`), the scale of SDA's ``gamma`` term and of ``mmps``'s
        known-covariance threshold. ldiff calls it ``sigma_bar`` everywhere."""
        return self.sigma(t) / self.mu(t)

    def coefficients(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """``mu(t), sigma(t)`` for ``t`` of shape (B,) or (), in ``like``'s dtype and device,
        shaped (B, 1, ..., 1) to broadcast against ``like`` of shape (B, *)."""
        shape = (-1,) + (1,) * (like.dim() - 1) if torch.as_tensor(t).dim() else ()
        mu = self.mu(t).to(like).reshape(shape)
        sigma = self.sigma(t).to(like).reshape(shape)
        return mu, sigma

    def perturb(self, x: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        r"""Return :math:`x_t = \mu(t) x + \sigma(t) \varepsilon`.

        Args:
            x: clean fields, shape (B, *).
            t: diffusion times, shape (B,).
            eps: standard normal noise, shape (B, *).
        """
        mu, sigma = self.coefficients(t, x)
        return mu * x + sigma * eps

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


def _as_tensor(t: Tensor | float) -> Tensor:
    return t if isinstance(t, Tensor) else torch.as_tensor(t, dtype=torch.float64)


class CosineSchedule(Schedule):
    r"""SDA's cosine schedule (Rozet & Louppe, 2023).

    .. math:: \mu(t) = \cos\!\big(\arccos(\sqrt{\eta})\, t\big)^2, \qquad
              \sigma(t) = \sqrt{1 - \mu(t)^2 + \eta^2}.

    At ``t = 1``, ``mu = eta`` and ``sigma = 1``; at ``t = 0``, ``mu = 1`` and
    ``sigma = eta``, so ``eta`` is also the noise floor left in a final sample.

    Args:
        eta: the schedule's floor (1e-3 in SDA; the user's runs used 1e-2).

    References:
        Rozet & Louppe, "Score-based Data Assimilation", NeurIPS 2023, arXiv:2306.10574.
    """

    def __init__(self, eta: float = 1e-3):
        if not 0.0 < eta < 1.0:
            raise ValueError(f"CosineSchedule: eta must lie in (0, 1), got {eta}")
        self.eta = float(eta)

    def mu(self, t: Tensor | float) -> Tensor:
        return torch.cos(math.acos(math.sqrt(self.eta)) * _as_tensor(t)) ** 2

    def sigma(self, t: Tensor | float) -> Tensor:
        return torch.sqrt(1 - self.mu(t) ** 2 + self.eta**2)


class LinearBetaSchedule(Schedule):
    r"""The VP-SDE with linear :math:`\beta(t)` (Song et al., 2021).

    .. math:: \log \mu(t) = -\tfrac14 t^2 (\beta_{max} - \beta_{min}) - \tfrac12 t\, \beta_{min},
              \qquad \sigma(t) = \sqrt{1 - \mu(t)^2}.

    With the defaults, sigma/mu = 0.045, 0.340, 3.41 and 58.8 at t = 0.01, 0.1, 0.5, 0.9:
    the seed's table.

    References:
        Song et al., "Score-Based Generative Modeling through Stochastic Differential
        Equations", ICLR 2021, arXiv:2011.13456.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not 0.0 <= beta_min < beta_max:
            raise ValueError(
                f"LinearBetaSchedule: need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}"
            )
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def mu(self, t: Tensor | float) -> Tensor:
        t = _as_tensor(t)
        return torch.exp(-0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min)

    def sigma(self, t: Tensor | float) -> Tensor:
        # sqrt(-expm1(2 log mu)) keeps precision for t -> 0, where mu -> 1.
        t = _as_tensor(t)
        log_mu = -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        return torch.sqrt(-torch.expm1(2 * log_mu))
