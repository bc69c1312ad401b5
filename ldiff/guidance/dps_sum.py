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
by the Tweedie covariance. The pieces they share (the state check,
:func:`~ldiff.guidance.base.sda_variance`, :func:`~ldiff.guidance.base.tweedie_score`,
:func:`~ldiff.guidance.base.sda_score`) live in :mod:`ldiff.guidance.base`.

References:
    Rozet & Louppe, "Score-based Data Assimilation", NeurIPS 2023, arXiv:2306.10574
    (``GaussianScore``).
    Chung et al., "Diffusion Posterior Sampling for General Noisy Inverse Problems",
    ICLR 2023, arXiv:2209.14687.
"""

from __future__ import annotations

from torch import Tensor

from ldiff.diffusion.schedules import Schedule
from ldiff.guidance.base import Observation, ScoreGuidance, check_non_negative, check_state, record, sda_score, sda_variance


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
