r"""From an epsilon network to a denoiser: Tweedie's formula and the training loss.

An epsilon model predicts the noise in :math:`x_t = \mu x + \sigma \varepsilon`. Its
output gives the score and, by Tweedie's formula, the posterior mean of the clean field:

.. math:: \nabla_{x_t} \log p(x_t) = -\hat\varepsilon / \sigma, \qquad
          \hat x = \mathbb{E}[x \mid x_t] = (x_t - \sigma \hat\varepsilon) / \mu .

It is trained with the denoising score-matching loss in epsilon form with a weight
:math:`\lambda(t)`,
:math:`\mathbb{E}_{t \sim U(0,1), x, \varepsilon}\, \lambda(t) \| \hat\varepsilon(x_t, t) - \varepsilon \|^2`
(:data:`LOSS_WEIGHTINGS`):

- ``"epsilon"``: :math:`\lambda = 1` (Ho et al. 2020).
- ``"edm"``: :math:`\lambda = (\mu^2 + \sigma^2)/\mu^2 = 1/c_{out}^2`, with
  :math:`c_{out} = \mu/\sqrt{\mu^2 + \sigma^2}` of the skip preconditioning
  (:mod:`ldiff.diffusion.precond`). With :math:`\hat\varepsilon = c_{skip} x_t + c_{out} F`
  the weighted loss is :math:`\| F - F^* \|^2`, :math:`F^* = (\varepsilon - c_{skip} x_t)/c_{out}`:
  the network's own output has unit weight at every noise level. It is EDM's weighting
  (Karras et al. 2022, their :math:`\lambda = 1/c_{out}^2`): in EDM's variables
  :math:`\tilde x = x_t/\mu`, :math:`\sigma_e = \sigma/\mu` the Tweedie estimate reads
  :math:`\hat x = \tilde x/(1 + \sigma_e^2) - \sigma_e F/\sqrt{1 + \sigma_e^2}`, EDM's
  :math:`c_{skip}, c_{out}` for unit data variance. The epsilon loss instead weights
  :math:`F` by :math:`c_{out}^2`, about :math:`10^{-6}` at :math:`t = 1` of SDA's cosine
  schedule (:math:`\mu = \eta = 10^{-3}`), which leaves :math:`\partial\hat x/\partial x_t`
  there untrained: the Jacobian that ``mmps``'s Tweedie covariance multiplies by
  :math:`\sigma^2/\mu`.

References:
    Karras, Aittala, Aila & Laine, "Elucidating the Design Space of Diffusion-Based
    Generative Models", NeurIPS 2022, arXiv:2206.00364 (loss weighting).
    Ho et al., "Denoising Diffusion Probabilistic Models", NeurIPS 2020, arXiv:2006.11239.
    Efron, "Tweedie's formula and selection bias", JASA 2011.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn

from ldiff.diffusion.schedules import Schedule

LossWeighting = Literal["epsilon", "edm"]
LOSS_WEIGHTINGS = get_args(LossWeighting)


def tweedie(x_t: Tensor, eps_hat: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    r"""The Tweedie estimate :math:`\hat x = (x_t - \sigma \hat\varepsilon)/\mu`.

    Args:
        x_t, eps_hat: shape (B, *).
        mu, sigma: broadcastable against ``x_t``, e.g. from :meth:`Schedule.coefficients`.

    Returns:
        x_hat, shape (B, *).
    """
    return (x_t - sigma * eps_hat) / mu


def loss_weight(weighting: str, schedule: Schedule, t: Tensor) -> Tensor:
    r"""The weight :math:`\lambda(t)` of ``weighting`` (see the module docstring), shape of ``t``."""
    if weighting == "epsilon":
        return torch.ones_like(t)
    if weighting == "edm":
        mu, sigma = schedule.mu(t).to(t), schedule.sigma(t).to(t)
        return (mu**2 + sigma**2) / mu**2
    raise ValueError(f"loss weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")


def epsilon_errors(
    net: nn.Module,
    x: Tensor,
    schedule: Schedule,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    node_weight: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Draw :math:`t \sim U(0, 1)` and :math:`\varepsilon` per sample and return
    ``(t, err)``: ``t`` (B,) and the per-sample :math:`\operatorname{mean}\, w (\hat\varepsilon - \varepsilon)^2`, (B,).

    Args:
        net: epsilon model, ``net(x_t, t, cond) -> eps_hat``.
        x: clean fields in normalised units (or the prior's coordinates), shape (B, C, H, W).
        schedule: the noise schedule.
        cond: condition channels, shape (B, C_cond, H, W), or None.
        generator: optional RNG for ``t`` and ``eps`` (reproducible losses).
        node_weight: :math:`w` (C, H, W), or None for 1 (a prior on standardised
            coordinates :math:`z = S^{-1}(x - m)` weighs by :math:`s^2` so that the loss
            is the denoising error of :math:`x`, since :math:`x - \hat x = S(z - \hat z)`).
    """
    t = torch.rand(x.shape[0], device=x.device, generator=generator, dtype=x.dtype)
    eps = torch.randn(x.shape, device=x.device, generator=generator, dtype=x.dtype)
    x_t = schedule.perturb(x, t, eps)
    err = (net(x_t, t, cond) - eps).square()
    return t, (err if node_weight is None else node_weight.to(err) * err).flatten(1).mean(dim=1)


def epsilon_loss(
    net: nn.Module,
    x: Tensor,
    schedule: Schedule,
    cond: Tensor | None = None,
    generator: torch.Generator | None = None,
    weighting: LossWeighting = "epsilon",
    node_weight: Tensor | None = None,
) -> Tensor:
    r"""The weighted denoising loss :math:`\operatorname{mean}_b \lambda(t_b) \operatorname{mean}(\hat\varepsilon - \varepsilon)^2`
    (arguments as :func:`epsilon_errors`; ``weighting`` one of :data:`LOSS_WEIGHTINGS`).

    Returns:
        The scalar loss.
    """
    t, err = epsilon_errors(net, x, schedule, cond, generator, node_weight)
    return (loss_weight(weighting, schedule, t) * err).mean()


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
