r"""From an epsilon network to a denoiser: Tweedie's formula and the training loss.

An epsilon model predicts the noise in :math:`x_t = \mu x + \sigma \varepsilon`. Its
output gives the score and, by Tweedie's formula, the posterior mean of the clean field:

.. math:: \nabla_{x_t} \log p(x_t) = -\hat\varepsilon / \sigma, \qquad
          \hat x = \mathbb{E}[x \mid x_t] = (x_t - \sigma \hat\varepsilon) / \mu .

It is trained with the denoising score-matching loss in epsilon form,
:math:`\mathbb{E}_{t \sim U(0,1), x, \varepsilon} \| \hat\varepsilon(x_t, t) - \varepsilon \|^2`.

References:
    Ho et al., "Denoising Diffusion Probabilistic Models", NeurIPS 2020, arXiv:2006.11239.
    Efron, "Tweedie's formula and selection bias", JASA 2011.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ldiff.diffusion.schedules import Schedule


def tweedie(x_t: Tensor, eps_hat: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    r"""The Tweedie estimate :math:`\hat x = (x_t - \sigma \hat\varepsilon)/\mu`.

    Args:
        x_t, eps_hat: shape (B, *).
        mu, sigma: broadcastable against ``x_t``, e.g. from :meth:`Schedule.coefficients`.

    Returns:
        x_hat, shape (B, *).
    """
    return (x_t - sigma * eps_hat) / mu


def epsilon_loss(
    net: nn.Module,
    x: Tensor,
    schedule: Schedule,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Denoising score-matching loss :math:`\operatorname{mean} (\hat\varepsilon - \varepsilon)^2`.

    Args:
        net: epsilon model, ``net(x_t, t, cond) -> eps_hat``.
        x: clean fields in normalised units, shape (B, C, H, W).
        schedule: the noise schedule.
        cond: condition channels, shape (B, C_cond, H, W), or None.
        generator: optional RNG for ``t`` and ``eps`` (reproducible losses).

    Returns:
        The scalar loss.
    """
    t = torch.rand(x.shape[0], device=x.device, generator=generator, dtype=x.dtype)
    eps = torch.randn(x.shape, device=x.device, generator=generator, dtype=x.dtype)
    x_t = schedule.perturb(x, t, eps)
    return (net(x_t, t, cond) - eps).square().mean()


class Denoiser:
    r"""An epsilon model bound to its schedule (and condition channels): the prior side of
    every guidance strategy.

    Args:
        model: epsilon model, ``model(x_t, t, cond) -> eps_hat`` on (B, C, H, W).
        schedule: the schedule the model was trained with.
        cond: condition channels, shape (B, C_cond, H, W), or None.
    """

    def __init__(self, model: nn.Module, schedule: Schedule, cond: Tensor | None = None):
        self.model = model
        self.schedule = schedule
        self.cond = cond

    def eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        r""":math:`\hat\varepsilon(x_t, t)`, shape of ``x_t``."""
        return self.model(x_t, t, self.cond)

    def __call__(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        r"""``(eps_hat, x_hat)``: the network's epsilon and the Tweedie estimate."""
        eps_hat = self.eps(x_t, t)
        mu, sigma = self.schedule.coefficients(t, x_t)
        return eps_hat, tweedie(x_t, eps_hat, mu, sigma)
