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

(:math:`V` held fixed), and the guided epsilon :math:`\tilde\varepsilon = \hat\varepsilon - \sigma g`
has the Tweedie estimate :math:`\hat x + V A^T w`: the Gaussian conditioning of
:math:`\mathcal{N}(\hat x, V)` on ``y``. For a Gaussian prior both moments are exact, and
with the solve converged the guided Tweedie estimate *is* :math:`\mathbb{E}[x \mid x_t, y]`
at every ``t``. There is no scale to tune: :math:`A V A^T` is the likelihood's own
``N``-aware covariance, which keeps the fit at the noise level for every ``N``.

**Where the network's covariance cannot be trusted.** :math:`V = (\sigma^2/\mu) J`
multiplies any error of the Jacobian by :math:`\sigma/\mu` (1000 at :math:`t = 1` of SDA's
cosine schedule with :math:`\eta = 10^{-3}`), and a network trained with the epsilon loss
has an essentially untrained Jacobian there (:mod:`ldiff.diffusion.denoise`): its ``V``
is indefinite, and plain CG divides by negative curvature. Two safeguards:

- **Known-covariance regime**, :math:`\sigma/\mu >` ``known_above``. As
  :math:`\sigma/\mu \to \infty`, :math:`\mathbb{V}[x \mid x_t]` tends to the data covariance
  :math:`\Sigma`, which the prior's stationary Gaussian fit
  (:class:`~ldiff.nets.gaussian.GaussianPrior`, ``covariance`` = its file) gives exactly:
  :math:`V_G = F^H \operatorname{diag}(\sigma^2 P/(\mu^2 P + \sigma^2)) F`. Without a fit,
  the unit-variance (normalised data) model gives :math:`V = \sigma^2/(\mu^2 + \sigma^2) I`.
  Then :math:`w` solves :math:`(s^2 I + A V_G A^T) w = y - A\hat x` (CG on a truly
  positive-definite map, ``known_maxiter`` iterations, or closed form for the isotropic
  model, :math:`A A^T = c I`), and the correction is taken through the same covariance,
  :math:`\sigma g = (\mu/\sigma) V_G A^T w`, no Jacobian product: the guided Tweedie
  estimate is again :math:`\hat x + V_G A^T w`.
- **Truncated CG** elsewhere (:func:`ldiff.linalg.truncated_cg`, Steihaug 1983): a sample
  stops at the first direction whose curvature is at most :math:`s^2 |p|^2`, i.e. where
  :math:`A V A^T` shows non-positive curvature; no step ever divides by it.

Both solves are preconditioned by the diagonal of :math:`s^2 I + A V A^T` (Jacobi): a
multiple of the identity for one noise std, so the iterates are unchanged there, and
what keeps 3 iterations enough when the std differs between observations (observations
of standardised coordinates, :mod:`ldiff.diffusion.latent`).

The threshold is a measurement of the prior, not a constant: ``ldiff quality --jacobian``
compares the network's Rayleigh quotients :math:`e^T A V A^T e / |e|^2` with the Gaussian
fit's over t and prints the largest :math:`\sigma/\mu` up to which they agree. With
``known_above = inf`` the network's covariance is used at every t (the original MMPS).

Cost per evaluation: one forward pass and up to ``maxiter + 1`` vector-Jacobian products
in the network regime; one forward pass (no backward) and ``known_maxiter`` FFT pairs in
the known regime.

Diagnostics, besides the common ones: ``known`` (1 where the known covariance was
used), ``cg_iterations`` and ``cg_truncated`` (1 where CG stopped at non-positive
curvature), per sample and step.

References:
    Rozet et al., "Learning Diffusion Priors from Observations by Expectation
    Maximization", NeurIPS 2024, arXiv:2405.13712.
    Steihaug, "The Conjugate Gradient Method and Trust Regions in Large Scale
    Optimization", SIAM J. Numer. Anal. 20(3), 1983.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ldiff.diffusion.precond import skip_gaussian
from ldiff.guidance.base import ScoreGuidance, check_state, record
from ldiff.linalg import truncated_cg
from ldiff.nets.gaussian import GaussianPrior, load_state, tweedie_cov


class MMPS(ScoreGuidance):
    r""":math:`\tilde\varepsilon = \hat\varepsilon - \sigma J^T A^T (s^2 I + A V A^T)^{-1}(y - A\hat x)`
    with :math:`V = (\sigma^2/\mu) J`, or a known covariance where :math:`\sigma/\mu` is
    large (see the module docstring).

    Args:
        maxiter: truncated-CG iterations with the network's covariance.
        known_above: use the known covariance where :math:`\sigma/\mu` exceeds this
            (``inf``: never; measure it with ``ldiff quality --jacobian``).
        covariance: the prior's stationary Gaussian fit, a :class:`GaussianPrior` or the
            path of its file (:meth:`GaussianPrior.save`, normalised units); ``"prior"``:
            the Gaussian of the prior's own skip term (a ``gaussian`` or ``gaussian-node``
            prior, in the coordinates it runs on); None: the isotropic unit-variance model.
        known_maxiter: CG iterations with the Gaussian fit's covariance.
    """

    name = "mmps"

    def __init__(
        self,
        maxiter: int = 3,
        known_above: float = 10.0,
        covariance: str | os.PathLike | GaussianPrior | None = None,
        known_maxiter: int = 10,
    ):
        for key, value in (("maxiter", maxiter), ("known_maxiter", known_maxiter)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MMPS: {key} must be an integer >= 1, got {value!r}")
        if not (isinstance(known_above, (int, float)) and known_above > 0):
            raise ValueError(f"MMPS: known_above must be a number > 0 (inf: never), got {known_above!r}")
        self.maxiter, self.known_maxiter = maxiter, known_maxiter
        self.known_above = float(known_above)
        if isinstance(covariance, GaussianPrior):
            self.covariance, self._power = "GaussianPrior", covariance.power.detach()
        elif covariance == "prior":
            self.covariance, self._power = "prior", None  # read from the denoiser's model
        elif covariance is not None:
            self.covariance, self._power = str(covariance), load_state(covariance)[0].float()
        else:
            self.covariance, self._power = None, None

    def guided_eps(self, denoiser, x_t, t, obs, diagnostics):
        check_state(x_t, obs)
        mu, sigma = denoiser.schedule.coefficients(t, x_t)
        known = (sigma / mu).flatten() > self.known_above
        noise_var = torch.as_tensor(obs.std, dtype=obs.y.dtype, device=obs.y.device) ** 2
        if bool(known.all()):
            with torch.no_grad():
                eps_hat, x_hat = denoiser(x_t, t)
            correction, iterations = self._known(denoiser, obs, x_hat, mu, sigma, noise_var)
            truncated = torch.zeros_like(known)
        else:
            eps_hat, x_hat, correction, iterations, truncated = self._network(denoiser, x_t, t, obs, mu, sigma, noise_var)
            if bool(known.any()):
                known_correction, known_iterations = self._known(denoiser, obs, x_hat, mu, sigma, noise_var)
                mask = known.view(-1, *(1,) * (x_t.dim() - 1))
                correction = torch.where(mask, known_correction, correction)
                iterations = torch.where(known, known_iterations, iterations)
                truncated = truncated & ~known
        record(
            diagnostics, t, eps_hat, correction,
            known=known.float(), cg_iterations=iterations.float(), cg_truncated=truncated.float(),
        )
        return eps_hat - correction

    def _network(self, denoiser, x_t, t, obs, mu, sigma, noise_var):
        """The network's covariance: truncated CG with VJPs; ``(eps_hat, x_hat, sigma g, iterations, truncated)``."""
        x = x_t.detach().requires_grad_(True)
        with torch.enable_grad():
            eps_hat, x_hat = denoiser(x, t)

        def jacobian_t(v: Tensor, keep: bool = True) -> Tensor:
            return torch.autograd.grad(x_hat, x, v, retain_graph=keep)[0]

        def cov_y(w: Tensor) -> Tensor:
            return noise_var * w + obs.op(sigma**2 / mu * jacobian_t(obs.op.adjoint(w, obs.field_shape)))

        floor = noise_var.min() if noise_var.dim() else noise_var
        jacobi = self._jacobi(denoiser, obs, noise_var, mu, sigma)
        solve = truncated_cg(cov_y, obs.y - obs.op(x_hat.detach()), maxiter=self.maxiter, curvature_floor=floor, precondition=jacobi)
        correction = sigma * jacobian_t(obs.op.adjoint(solve.x, obs.field_shape), keep=False)
        return eps_hat.detach(), x_hat.detach(), correction, solve.iterations, solve.truncated

    def _jacobi(self, denoiser, obs, noise_var, mu, sigma):
        r"""The Jacobi preconditioner of :math:`s^2 I + A V A^T`: division by
        :math:`s_j^2 + c\, v`, with :math:`v` the mean variance per value of
        :math:`\mathbb{V}[x \mid x_t]` under the known Gaussian (the isotropic model's
        :math:`\sigma^2/(\mu^2 + \sigma^2)` without one) and :math:`A A^T = c I`. With
        one noise std for every observation it is a multiple of the identity, which
        leaves CG's iterates as they are; with a std per observation (observations of
        standardised coordinates span 0.035 to 13 on the cylinder) it evens out the
        diagonal, without which 3 iterations leave the fit at 4 noise stds."""
        power = self._prior_power(denoiser)
        shape = (-1, *(1,) * (obs.y.dim() - 1))
        s2, m2 = sigma.reshape(-1, 1) ** 2, mu.reshape(-1, 1) ** 2
        if power is None:
            var = s2 / (m2 + s2)
        else:
            flat = power.to(s2).reshape(1, -1)
            var = (s2 * flat / (m2 * flat + s2)).mean(dim=1, keepdim=True)
        diag = noise_var + obs.op.aat * var.reshape(shape)
        return lambda r: r / diag

    def _prior_power(self, denoiser) -> Tensor | None:
        """The stationary power of the known covariance, None for the isotropic model."""
        if self.covariance != "prior":
            return self._power
        gaussian = skip_gaussian(denoiser.model)
        if gaussian is None:
            raise ValueError(f"MMPS: covariance 'prior' needs a prior with a fitted Gaussian skip term (precondition gaussian or gaussian-node), not a {type(denoiser.model).__name__}")
        return gaussian[0]

    def _known(self, denoiser, obs, x_hat, mu, sigma, noise_var):
        """The known covariance (Gaussian fit or isotropic); ``(sigma g, iterations)``."""
        residual = obs.y - obs.op(x_hat.detach())
        power = self._prior_power(denoiser)
        if power is None:
            var = sigma**2 / (mu**2 + sigma**2)
            w = residual / (noise_var + obs.op.aat * var.reshape(-1, *(1,) * (residual.dim() - 1)))
            field = var * obs.op.adjoint(w, obs.field_shape)
            iterations = torch.zeros(residual.shape[0], dtype=torch.long, device=residual.device)
        else:
            power = power.to(residual.device)
            if tuple(power.shape) != tuple(obs.field_shape):
                raise ValueError(f"MMPS: covariance {self.covariance} is for fields {tuple(power.shape)}, not {tuple(obs.field_shape)}")

            def cov(v: Tensor) -> Tensor:
                return tweedie_cov(power, v, mu, sigma)

            def cov_y(w: Tensor) -> Tensor:
                return noise_var * w + obs.op(cov(obs.op.adjoint(w, obs.field_shape)))

            jacobi = self._jacobi(denoiser, obs, noise_var, mu, sigma)
            solve = truncated_cg(cov_y, residual, maxiter=self.known_maxiter, rtol=1e-6, precondition=jacobi)
            field, iterations = cov(obs.op.adjoint(solve.x, obs.field_shape)), solve.iterations
        # Tweedie estimate x_hat + V A^T w  <=>  eps_hat - (mu / sigma) V A^T w
        return (mu / sigma) * field, iterations

    def __repr__(self) -> str:
        return (
            f"MMPS(maxiter={self.maxiter}, known_above={self.known_above}, covariance={self.covariance!r}, "
            f"known_maxiter={self.known_maxiter})"
        )

