r"""``adaptive``: the ``dps-sum`` correction rescaled to a fixed fraction of the prior's norm.

The seed's §3.2 proposal: with :math:`g` the ``dps-sum`` likelihood score
(:mod:`.dps_sum`), take the direction of :math:`\sigma g` but the length
:math:`\xi \|\hat\varepsilon\|`, per sample:

.. math:: \tilde\varepsilon = \hat\varepsilon - \xi\, \frac{\|\hat\varepsilon\|}{\|\sigma g\|}\, \sigma g .

The correction's norm is :math:`\xi\|\hat\varepsilon\|` whatever ``N``, ``std`` or ``t``, so
the balance cannot explode; with a scalar ``std``, ``var`` is one number per sample and
cancels, so neither ``std`` nor ``gamma`` has any effect (``gamma`` matters only when
``std`` differs between observations). The price: the guidance strength no longer follows
the evidence. Near :math:`t = 0` the posterior score's likelihood part is much larger than
the prior's when the data are informative, and a correction capped at
:math:`\xi\|\hat\varepsilon\|` cannot pull samples onto the data: they fit the observations
far more loosely than the noise (the seed's §7 finding that a 1:1 balance gives flat
output). See ``docs/guidance.md`` for the measured numbers.

**Capped** (``cap=True``): :math:`\min(1, \xi\|\hat\varepsilon\|/\|\sigma g\|)`, so the
rule only ever shrinks the ``dps-sum`` correction. Uncapped, it multiplies it by
:math:`3\cdot10^4` to :math:`3\cdot10^5` at :math:`t = 1` (where the natural ratio
:math:`\|\sigma g\|/\|\hat\varepsilon\|` is :math:`3\cdot10^{-5}` to :math:`4\cdot10^{-6}` with
the shipped prior), which is why it diverges at every rate of the demo.

References:
    Chung et al., "Improving Diffusion Models for Inverse Problems using Manifold
    Constraints" (MCG), NeurIPS 2022, arXiv:2206.00941 (gradient steps normalised per sample).
"""

from __future__ import annotations

import torch

from ldiff.guidance.base import ScoreGuidance, check_non_negative, check_positive, check_state, norm, record, sda_score, sda_variance


class Adaptive(ScoreGuidance):
    r""":math:`\tilde\varepsilon = \hat\varepsilon - \xi (\|\hat\varepsilon\|/\|\sigma g\|)\, \sigma g`,
    norms per sample, :math:`g` the ``dps-sum`` score (see the module docstring). A zero
    :math:`\sigma g` gives no correction.

    Args:
        xi: the correction's norm relative to :math:`\|\hat\varepsilon\|`.
        gamma: SDA's gamma in the variance (relevant only for a per-observation std).
        cap: never scale the correction up: the factor is ``min(1, ...)``.
    """

    name = "adaptive"

    def __init__(self, xi: float = 1.0, gamma: float = 1e-2, cap: bool = False):
        self.xi = check_positive(type(self).__name__, "xi", xi)
        self.gamma = check_non_negative(type(self).__name__, "gamma", gamma)
        if not isinstance(cap, bool):
            raise ValueError(f"Adaptive: cap must be true or false, got {cap!r}")
        self.cap = cap

    def guided_eps(self, denoiser, x_t, t, obs, diagnostics):
        check_state(x_t, obs)
        var, gamma_share = sda_variance(denoiser.schedule, t, obs.y, obs.std, self.gamma)
        eps_hat, g = sda_score(denoiser, x_t, t, obs, var)
        _, sigma = denoiser.schedule.coefficients(t, x_t)
        likelihood = sigma * g
        eps_norm, likelihood_norm = norm(eps_hat), norm(likelihood)
        scale = torch.where(likelihood_norm > 0, self.xi * eps_norm / likelihood_norm, 0.0)
        if self.cap:
            scale = scale.clamp_max(1.0)
        correction = scale.reshape(-1, *(1,) * (x_t.dim() - 1)) * likelihood
        # ratio is xi by construction; likelihood_ratio keeps the unscaled balance visible.
        record(diagnostics, t, eps_hat, correction, gamma_share, likelihood_ratio=likelihood_norm / eps_norm)
        return eps_hat - correction
