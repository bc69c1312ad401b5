r"""``mmps``: moment-matching posterior sampling with the Tweedie covariance.

Instead of SDA's isotropic :math:`\mathrm{var} = s^2 + \gamma(\sigma/\mu)^2`, MMPS gives
:math:`p(x \mid x_t)` its exact first two moments. For :math:`x_t = \mu x + \sigma\varepsilon`,
Tweedie's formulas read

.. math:: \hat x = \mathbb{E}[x \mid x_t] = \frac{x_t + \sigma^2 \nabla \log p(x_t)}{\mu},
          \qquad
          V = \mathbb{V}[x \mid x_t] = \frac{\sigma^2}{\mu^2}\big(I + \sigma^2 \nabla^2 \log p(x_t)\big)
            = \frac{\sigma^2}{\mu}\, J, \quad J = \frac{\partial \hat x}{\partial x_t},

so :math:`V v` costs one Jacobian product through the denoiser (``J`` is symmetric for a
true score, so the vector-Jacobian product :math:`J^T v` serves). With
:math:`p(x \mid x_t) \approx \mathcal{N}(\hat x, V)` the likelihood is Gaussian,

.. math:: p(y \mid x_t) \approx \mathcal{N}\big(y;\, A\hat x,\; s^2 I + A V A^T\big),
          \qquad
          g = \nabla_{x_t} \log p(y \mid x_t) = J^T A^T w, \quad
          (s^2 I + A V A^T)\, w = y - A\hat x ,

(:math:`V` held fixed), and :math:`w` is found by conjugate gradients in observation
space, ``maxiter`` iterations. The guided epsilon :math:`\tilde\varepsilon = \hat\varepsilon - \sigma g`
has the Tweedie estimate :math:`\hat x + (\sigma^2/\mu) J^T A^T w = \hat x + V A^T w`, the
Gaussian conditioning of :math:`\mathcal{N}(\hat x, V)` on ``y``. For a Gaussian prior both
moments are exact, and with CG run to convergence the guided Tweedie estimate *is*
:math:`\mathbb{E}[x \mid x_t, y]` at every ``t`` and the sampler targets the exact
posterior. There is no scale to tune: :math:`A V A^T` is the likelihood's own
``N``-aware covariance, which is what makes it fit at the noise level for every ``N``.

Cost per evaluation: one forward pass and ``maxiter + 1`` vector-Jacobian products (plus one
host sync per CG iteration for its stopping test).

References:
    Rozet et al., "Learning Diffusion Priors from Observations by Expectation
    Maximization", NeurIPS 2024, arXiv:2405.13712.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ldiff.guidance.base import ScoreGuidance, record
from ldiff.guidance.dps_sum import check_state
from ldiff.linalg import conjugate_gradient


class MMPS(ScoreGuidance):
    r""":math:`\tilde\varepsilon = \hat\varepsilon - \sigma J^T A^T (s^2 I + A V A^T)^{-1}(y - A\hat x)`
    with :math:`V = (\sigma^2/\mu) J` (see the module docstring).

    Args:
        maxiter: conjugate-gradient iterations for the observation-space solve.
    """

    name = "mmps"

    def __init__(self, maxiter: int = 1):
        if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter < 1:
            raise ValueError(f"MMPS: maxiter must be an integer >= 1, got {maxiter!r}")
        self.maxiter = maxiter

    def guided_eps(self, denoiser, x_t, t, obs, diagnostics):
        check_state(x_t, obs)
        mu, sigma = denoiser.schedule.coefficients(t, x_t)
        noise_var = torch.as_tensor(obs.std, dtype=obs.y.dtype, device=obs.y.device) ** 2
        x = x_t.detach().requires_grad_(True)
        with torch.enable_grad():
            eps_hat, x_hat = denoiser(x, t)

        def jacobian_t(v: Tensor, keep: bool = True) -> Tensor:
            return torch.autograd.grad(x_hat, x, v, retain_graph=keep)[0]

        def adjoint(w: Tensor) -> Tensor:
            return obs.op.adjoint(w, obs.field_shape)

        def cov_y(w: Tensor) -> Tensor:
            return noise_var * w + obs.op(sigma**2 / mu * jacobian_t(adjoint(w)))

        w = conjugate_gradient(cov_y, obs.y - obs.op(x_hat.detach()), maxiter=self.maxiter)
        correction = sigma * jacobian_t(adjoint(w), keep=False)
        eps_hat = eps_hat.detach()
        record(diagnostics, t, eps_hat, correction)
        return eps_hat - correction
