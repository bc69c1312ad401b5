r"""``dps-norm``: Chung et al.'s DPS, a gradient step on the residual norm (not squared).

DPS (Algorithm 1 of the paper, noisy case) follows each unconditional DDPM step by

.. math:: x_{i-1} \leftarrow x_{i-1} - \zeta_i \nabla_{x_i} \|y - A \hat x_0(x_i)\|^2,
          \qquad \zeta_i = \zeta' / \|y - A \hat x_0(x_i)\| ,

and the authors' code differentiates the norm itself, :math:`\zeta \nabla \|y - A\hat x_0\|`;
both are the direction :math:`J^T A^T e` (:math:`e = y - A\hat x`, :math:`J = \partial\hat x/\partial x_t`)
with a length set per sample by :math:`1/\|e\|` (the paper's form is the code's with
:math:`\zeta = 2\zeta'`). Unlike ``dps-sum`` there is no noise level and no
:math:`\sum_j e_j^2/\mathrm{var}`: the pull per observed point is :math:`e_j/\|e\|`, a unit
vector over the observations, so the correction's size barely depends on ``N``.

**The eps form used here.** A step added after the sampler's update depends on the
sampler's step size, which a strategy does not know. We read :math:`\zeta \|e\|` as a
negative log-likelihood instead and guide epsilon like every other strategy:

.. math:: g = -\zeta\, \nabla_{x_t} \|y - A \hat x\|, \qquad
          \tilde\varepsilon = \hat\varepsilon - \sigma g
          = \hat\varepsilon + \sigma \zeta\, \nabla_{x_t} \|y - A\hat x\| .

In SDA's DDIM predictor :math:`x_s = r x_t + (\sigma_s - r\sigma_t)\tilde\varepsilon`
(:math:`r = \mu_s/\mu_t`) this moves :math:`x_s` by
:math:`-(r\sigma_t - \sigma_s)\,\sigma_t\, \zeta\, \nabla\|e\|`: DPS's update with
:math:`\zeta_{DPS} = \zeta\, \sigma_t (r\sigma_t - \sigma_s)`, which shrinks with the step
size so that the total guidance, and the meaning of :math:`\zeta`, do not depend on the
number of steps. Over SDA's cosine schedule that factor is far from uniform: with 32
steps, 45 % of :math:`\sum_i \sigma_t (r\sigma_t - \sigma_s)` falls on the first step
(t = 1), where :math:`\hat x` is least informative.

**Chung et al.'s constant step** (``step="constant"``) instead moves every predictor step
by the same :math:`-\zeta' \nabla_{x_t}\|e\|`, the paper's
:math:`\zeta_i = \zeta'/\|e\|` on the squared norm: the strategy reads the step
:math:`s = t - 1/\text{steps}` from the sampler's grid and takes
:math:`g = -\zeta' \nabla\|e\| / (\sigma_t (r\sigma_t - \sigma_s))`. Then ``zeta`` is
:math:`\zeta'` (the paper uses :math:`\zeta' = 1` for most tasks) and the total pull
grows with the number of steps, as in the paper. The posterior this targets is :math:`p(x) \exp(-\zeta\|Ax - y\|)`; it fits
the data at the noise level only when :math:`\zeta \approx \|e\|/s^2 \approx \sqrt N / s`,
so one :math:`\zeta` cannot serve every ``N`` either (measured in ``docs/guidance.md``).

References:
    Chung et al., "Diffusion Posterior Sampling for General Noisy Inverse Problems",
    ICLR 2023, arXiv:2209.14687.
"""

from __future__ import annotations

from torch import Tensor

from ldiff.guidance.base import ScoreGuidance, check_positive, check_state, norm, record, tweedie_score


class DPSNorm(ScoreGuidance):
    r""":math:`\tilde\varepsilon = \hat\varepsilon + \sigma \zeta \nabla_{x_t}\|y - A\hat x\|`,
    the norm per sample (see the module docstring for the link to DPS's step).

    Args:
        zeta: weight of the residual norm, :math:`\log p(y \mid x_t) \approx -\zeta\|y - A\hat x\|`
            (``step="eps"``), or Chung et al.'s :math:`\zeta'`, the length of every
            predictor step's update per unit gradient (``step="constant"``).
        step: ``"eps"`` (the eps form, independent of the step count) or ``"constant"``
            (the paper's constant step per predictor step; see the module docstring).
    """

    name = "dps-norm"

    def __init__(self, zeta: float = 1.0, step: str = "eps"):
        self.zeta = check_positive(type(self).__name__, "zeta", zeta)
        if step not in ("eps", "constant"):
            raise ValueError(f"DPSNorm: step must be 'eps' or 'constant', got {step!r}")
        self.step = step

    def reconstruct(self, denoiser, obs, x1, sampler, generator=None, callback=None, diagnostics=None):
        def eps_fn(x_t: Tensor, t: Tensor) -> Tensor:
            return self.guided_eps(denoiser, x_t, t, obs, diagnostics, dt=1.0 / sampler.steps)

        return sampler.sample(eps_fn, x1, generator, callback)

    def guided_eps(self, denoiser, x_t, t, obs, diagnostics, dt: float | None = None):
        check_state(x_t, obs)
        if self.step == "constant" and dt is None:
            raise ValueError("DPSNorm: step='constant' needs the sampler's step (call reconstruct)")

        def log_likelihood(x_hat: Tensor) -> Tensor:
            return -self.zeta * norm(obs.y - obs.op(x_hat))

        eps_hat, g = tweedie_score(denoiser, x_t, t, log_likelihood)
        mu, sigma = denoiser.schedule.coefficients(t, x_t)
        if self.step == "constant":
            mu_s, sigma_s = denoiser.schedule.coefficients((t - dt).clamp_min(0.0), x_t)
            g = g / (sigma * (mu_s / mu * sigma - sigma_s))
        correction = sigma * g
        record(diagnostics, t, eps_hat, correction)
        return eps_hat - correction
