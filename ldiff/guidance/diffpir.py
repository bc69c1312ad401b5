r"""DiffPIR: a data proximal step inside every reverse diffusion step (Zhu et al., 2023).

DiffPIR reads each reverse step as one half-quadratic-splitting iteration whose prior
step is the diffusion denoiser. Step :math:`t \to s` (Algorithm 1 of the paper, written
for the VP schedule with :math:`\bar\sigma_t = \sigma(t)/\mu(t)`):

1. denoise: :math:`\hat x = (x_t - \sigma_t \hat\varepsilon)/\mu_t`;
2. data proximal step, with the Tweedie estimate treated as a Gaussian guess of
   variance :math:`\bar\sigma_t^2/\lambda`:

   .. math:: \hat x_0 = \arg\min_x \frac{\|y - A x\|^2}{2 s^2}
             + \frac{\lambda}{2 \bar\sigma_t^2}\|x - \hat x\|^2
             = \hat x + A^T \frac{y - A\hat x}{c + \rho_t},
             \qquad \rho_t = \frac{\lambda s^2}{\bar\sigma_t^2},

   closed form because :math:`A A^T = c I` (see :func:`ldiff.guidance.pnp_admm.data_prox`);
   the paper's :math:`\rho_t` is exactly this ratio;
3. re-noise: the effective noise :math:`\hat\varepsilon' = (x_t - \mu_t \hat x_0)/\sigma_t`
   is mixed with fresh noise,
   :math:`x_s = \mu_s \hat x_0 + \sigma_s\big(\sqrt{1-\zeta}\,\hat\varepsilon' + \sqrt{\zeta}\, z\big)`.

:math:`\zeta = 0` is a deterministic DDIM step from the corrected estimate, :math:`\zeta = 1`
re-draws all the noise. The data again enter per point, divided by :math:`c + \rho_t`,
never summed over observations, so nothing grows with :math:`N`. As in the paper the
last step lands on :math:`t = 0` (:math:`x_0 = \hat x_0` up to the schedule's floor
:math:`\sigma(0)`). Cost: one network evaluation per step.

Diagnostics: ``correction_norm`` = :math:`\|\hat x_0 - \hat x\| / \bar\sigma_t
= \|\hat\varepsilon' - \hat\varepsilon\|`, the change of epsilon the data step makes (the
units of :math:`\|\sigma g\|`); ``gamma_share`` is NaN.

References:
    Zhu, Zhang, Liang, Cao, Wen, Timofte & Van Gool, "Denoising Diffusion Models for
    Plug-and-Play Image Restoration", CVPR Workshops 2023, arXiv:2305.08995 (Algorithm 1).
"""

from __future__ import annotations

import math

from ldiff.guidance.base import GridStrategy, record
from ldiff.guidance.pnp_admm import data_prox


class DiffPIR(GridStrategy):
    r"""DiffPIR on the VP schedule (module docstring).

    Args:
        lambda_: weight :math:`\lambda > 0` of the Tweedie estimate in the data step
            (larger trusts the prior more).
        zeta: share :math:`\zeta \in [0, 1]` of fresh noise when re-noising.
    """

    name = "diffpir"

    def __init__(self, lambda_: float = 1.0, zeta: float = 1.0):
        if not 0.0 < lambda_ < math.inf:
            raise ValueError(f"DiffPIR: lambda_ must be finite and > 0, got {lambda_}")
        if not 0.0 <= zeta <= 1.0:
            raise ValueError(f"DiffPIR: zeta must lie in [0, 1], got {zeta}")
        self.lambda_ = float(lambda_)
        self.zeta = float(zeta)

    def start(self, denoiser, obs, x1, t):
        return {"x": x1}

    def step(self, denoiser, obs, state, t, s, noise, diagnostics):
        x = state["x"]
        mu_t, sigma_t = denoiser.schedule.coefficients(t, x)
        mu_s, sigma_s = denoiser.schedule.coefficients(s, x)
        eps_hat, x_hat = denoiser(x, t)
        sigma_bar = sigma_t / mu_t
        x0 = data_prox(x_hat, obs, self.lambda_ / sigma_bar.flatten() ** 2)
        eps_eff = (x - mu_t * x0) / sigma_t
        record(diagnostics, t, eps_hat, (x0 - x_hat) / sigma_bar)
        return {"x": mu_s * x0 + sigma_s * (math.sqrt(1 - self.zeta) * eps_eff + math.sqrt(self.zeta) * noise())}
