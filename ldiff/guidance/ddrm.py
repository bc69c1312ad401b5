r"""DDRM: diffusion in the operator's spectral space (Kawar et al., 2022).

DDRM replaces the likelihood gradient by a *projection*: it runs the reverse diffusion
in the coordinates of the SVD :math:`A = U S V^T` and, in each observed coordinate,
steers the state towards the observation instead of pulling on it with a gradient. No
gradient, no sum over observations, so nothing grows with :math:`N`.

Every operator of :mod:`ldiff.observe` satisfies :math:`A A^T = c\,I`, so all singular
values are :math:`\sqrt{c}` and the spectral coordinates need no SVD:

- observed coordinates :math:`V_o^T x = A x / \sqrt{c}` (the shape of ``y``), with
  observation :math:`\bar y = y / \sqrt{c}` and noise std :math:`\bar s = s / \sqrt{c}`;
- unobserved coordinates: the orthogonal complement :math:`(I - A^T A / c)\, x`.

The paper writes DDRM for the variance-exploding form. A VP state is the VE state
scaled by :math:`\mu`: :math:`\bar x_t = x_t / \mu(t) = x + \bar\sigma_t \varepsilon` with
:math:`\bar\sigma_t = \sigma(t)/\mu(t)`. One step :math:`t \to s` with the denoiser's
:math:`\hat x, \hat\varepsilon` (so :math:`(\bar x_t - \hat x)/\bar\sigma_t = \hat\varepsilon`)
and :math:`z \sim \mathcal{N}(0, I)` is, per coordinate,

.. math::
    \text{unobserved:}\quad &\bar x_s = \hat x + \bar\sigma_s
        \big(\sqrt{1-\eta^2}\,\hat\varepsilon + \eta z\big), \\
    \text{observed},\ \bar\sigma_s < \bar s:\quad &\bar x_s = \hat x + \bar\sigma_s
        \big(\sqrt{1-\eta^2}\,(\bar y - \hat x)/\bar s + \eta z\big), \\
    \text{observed},\ \bar\sigma_s \ge \bar s:\quad &\bar x_s = (1-\eta_b)\,\hat x + \eta_b \bar y
        + \sqrt{\bar\sigma_s^2 - \eta_b^2 \bar s^2}\; z,

and :math:`x_s = \mu(s)\, \bar x_s`. While the state is noisier than the data, the
observed coordinates are :math:`\bar y` plus just enough fresh noise to reach
:math:`\bar\sigma_s` (with :math:`\eta_b = 1`); once it is cleaner, the observation's own
noise :math:`(\bar y - \hat x)/\bar s` plays the part of :math:`\hat\varepsilon`.
The initial state is the paper's :math:`q(x_T \mid y)`: observed coordinates
:math:`\bar y + \sqrt{\bar\sigma_1^2 - \bar s^2}\, z` where :math:`\bar\sigma_1 > \bar s`,
everything else :math:`\bar\sigma_1 z`, with ``x1`` as :math:`z`.

As in the paper's code (which ends at :math:`\bar\sigma = 0` and returns
:math:`\hat x`), the last step targets the grid's final level :math:`\bar\sigma(0)`: the
result is exactly :math:`\hat x` where :math:`\sigma(0) = 0` (linear-beta) and carries the
schedule's floor :math:`\bar\sigma(0) = \eta_{\text{cos}}` otherwise, like SDA's sampler.

Cost: one network evaluation per step; everything else is a few applications of
:math:`A` and :math:`A^T`, per sample.

Diagnostics: ``correction_norm`` is :math:`\|\bar x_s - \bar x_s^{\text{prior}}\| / \bar\sigma_t`,
the displacement of the state caused by the data (``prior`` = the unobserved rule applied
to every coordinate with the same :math:`z`, i.e. plain DDIM with :math:`\eta`), in units
of the current noise level: the same units as :math:`\|\sigma g\|` for score guidance,
whose guided Tweedie shift is :math:`\sigma^2 g/\mu`. ``gamma_share`` is NaN.

References:
    Kawar, Elad, Ermon & Song, "Denoising Diffusion Restoration Models", NeurIPS 2022,
    arXiv:2201.11793 (Eq. 7-8; defaults eta = 0.85, eta_b = 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ldiff.guidance.base import GridStrategy, Observation, record


class SpectralSplit:
    r"""The observed / unobserved split of :math:`A` with :math:`A A^T = c I`, per sample.

    Args:
        obs: the observations; ``y_bar = y / sqrt(c)`` and ``std_bar = std / sqrt(c)``
            (shape (B, *obs_shape)) are their spectral coordinates and noise.
        like: a tensor whose dtype and device the coordinates take.
    """

    def __init__(self, obs: Observation, like: Tensor):
        self.obs = obs
        self.root_c = math.sqrt(obs.op.aat)
        self.y_bar = obs.y.to(like) / self.root_c
        self.std_bar = torch.as_tensor(obs.std, dtype=like.dtype, device=like.device) / self.root_c
        self.std_bar = self.std_bar.expand_as(self.y_bar)

    def observed(self, x: Tensor) -> Tensor:
        """:math:`V_o^T x`, (B, C, H, W) -> (B, *obs_shape)."""
        return self.obs.op(x) / self.root_c

    def lift(self, v: Tensor) -> Tensor:
        """:math:`V_o v`, (B, *obs_shape) -> (B, C, H, W)."""
        return self.obs.op.adjoint(v, self.obs.field_shape) / self.root_c

    def unobserved(self, x: Tensor) -> Tensor:
        r""":math:`(I - V_o V_o^T) x`, shape of ``x``."""
        return x - self.lift(self.observed(x))

    def combine(self, unobserved: Tensor, observed: Tensor) -> Tensor:
        """The field whose complement part is ``unobserved`` and observed coordinates ``observed``."""
        return self.unobserved(unobserved) + self.lift(observed)


def _per_sample(value: Tensor, like: Tensor) -> Tensor:
    """Reshape (B,) to (B, 1, ..., 1) against ``like``."""
    return value.reshape((-1,) + (1,) * (like.dim() - 1))


class DDRM(GridStrategy):
    r"""Denoising Diffusion Restoration Models on the VP schedule (module docstring).

    Args:
        eta: stochasticity :math:`\eta \in [0, 1]` of the unobserved and the
            cleaner-than-data observed coordinates (0 = deterministic DDIM).
        eta_b: weight :math:`\eta_b \in [0, 1]` of :math:`\bar y` in the observed
            coordinates while the state is noisier than the data.
    """

    name = "ddrm"

    def __init__(self, eta: float = 0.85, eta_b: float = 1.0):
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"DDRM: eta must lie in [0, 1], got {eta}")
        if not 0.0 <= eta_b <= 1.0:
            raise ValueError(f"DDRM: eta_b must lie in [0, 1], got {eta_b}")
        self.eta = float(eta)
        self.eta_b = float(eta_b)

    def initial(self, spectral: SpectralSplit, z: Tensor, sigma_bar: Tensor) -> Tensor:
        r"""The paper's :math:`\bar x_1 \sim q(\cdot \mid y)` from noise ``z`` (B, C, H, W)."""
        z_obs = spectral.observed(z)
        sigma_obs = _per_sample(sigma_bar, z_obs)
        informative = sigma_obs > spectral.std_bar
        spread = (sigma_obs**2 - spectral.std_bar**2).clamp_min(0).sqrt()
        observed = torch.where(informative, spectral.y_bar + spread * z_obs, sigma_obs * z_obs)
        return spectral.combine(_per_sample(sigma_bar, z) * z, observed)

    def transition(
        self, spectral: SpectralSplit, x_hat: Tensor, eps_hat: Tensor, z: Tensor, sigma_bar_s: Tensor
    ) -> tuple[Tensor, Tensor]:
        r"""``(x_bar_s, x_bar_s_prior)``: the DDRM step and, for diagnostics, the same step
        without the data (the unobserved rule in every coordinate). All (B, C, H, W)."""
        keep = math.sqrt(1 - self.eta**2)
        prior = x_hat + _per_sample(sigma_bar_s, x_hat) * (keep * eps_hat + self.eta * z)
        x_obs, z_obs = spectral.observed(x_hat), spectral.observed(z)
        sigma_obs = _per_sample(sigma_bar_s, x_obs)
        y_bar, std_bar = spectral.y_bar, spectral.std_bar
        cleaner = x_obs + sigma_obs * (keep * (y_bar - x_obs) / std_bar + self.eta * z_obs)
        spread = (sigma_obs**2 - (self.eta_b * std_bar) ** 2).clamp_min(0).sqrt()
        noisier = (1 - self.eta_b) * x_obs + self.eta_b * y_bar + spread * z_obs
        observed = torch.where(sigma_obs < std_bar, cleaner, noisier)
        return spectral.combine(prior, observed), prior

    def start(self, denoiser, obs, x1, t):
        """``x_1 = mu_1 * x_bar_1``, the paper's initialisation (:meth:`initial`)."""
        mu_1, sigma_1 = denoiser.schedule.coefficients(t, x1)
        return {"x": mu_1 * self.initial(SpectralSplit(obs, x1), x1, (sigma_1 / mu_1).flatten())}

    def step(self, denoiser, obs, state, t, s, noise, diagnostics):
        x = state["x"]
        mu_t, sigma_t = denoiser.schedule.coefficients(t, x)
        mu_s, sigma_s = denoiser.schedule.coefficients(s, x)
        eps_hat, x_hat = denoiser(x, t)
        x_bar_s, prior = self.transition(SpectralSplit(obs, x), x_hat, eps_hat, noise(), (sigma_s / mu_s).flatten())
        record(diagnostics, t, eps_hat, (x_bar_s - prior) / (sigma_t / mu_t))
        return {"x": mu_s * x_bar_s}
