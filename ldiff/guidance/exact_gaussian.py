r"""``exact-gaussian``: the exact posterior under the analytic Gaussian prior (a baseline).

Not a diffusion method: the stationary Gaussian prior
:class:`~ldiff.nets.gaussian.GaussianPrior` fitted to the training data has a Gaussian
posterior for linear observations, with mean
:math:`m + \Sigma A^T (A \Sigma A^T + s^2 I)^{-1} (y - A m)` (the Wiener filter, or
optimal interpolation) and exact samples by perturb-and-solve. A diffusion prior earns
its cost where it beats this row.

References:
    Wiener, "Extrapolation, Interpolation, and Smoothing of Stationary Time Series", 1949.
    Papandreou & Yuille, "Gaussian sampling by local perturbations", NeurIPS 2010.
"""

from __future__ import annotations

from ldiff.guidance.base import Strategy
from ldiff.nets.gaussian import GaussianPrior, preconditioner_for


class ExactGaussian(Strategy):
    """The exact Gaussian-prior posterior mean (``sample=False``) or exact samples.

    The diffusion prior, the sampler and ``x1`` are not used; with ``sample=False`` all K
    samples of an observation set are the posterior mean.

    Args:
        prior: the fitted Gaussian prior (normalised units).
        sample: draw exact posterior samples instead of returning the mean.
        maxiter: conjugate-gradient iterations, preconditioned for strided observations
            (:func:`~ldiff.nets.gaussian.subsample_preconditioner`: without it, CG on
            the cylinder window at sub 2 stopped at relative residual 0.25 after 200).
        prior_coordinates: ``prior`` is a Gaussian of the diffusion prior's coordinates
            (the skip term of a ``gaussian-node`` prior, on :math:`z`), so the caller
            observes and decodes as for a diffusion strategy: the exact posterior of the
            Gaussian :math:`x = m + S z`. False: a Gaussian of the fields themselves.
    """

    name = "exact-gaussian"

    def __init__(self, prior: GaussianPrior, sample: bool = False, maxiter: int = 200, prior_coordinates: bool = False):
        self.prior = prior
        self.sample = sample
        self.maxiter = maxiter
        self.prior_coordinates = prior_coordinates

    def reconstruct(self, denoiser, obs, x1, sampler, generator=None, callback=None, diagnostics=None):
        prior = self.prior.to(x1.device)
        precondition = preconditioner_for(prior.power, obs.op, tuple(obs.y.shape[1:]), obs.std)
        if self.sample:
            return prior.posterior_sample(obs.y, obs.op, obs.std, generator, self.maxiter, precondition)
        return prior.posterior_mean(obs.y, obs.op, obs.std, self.maxiter, precondition)

    def __repr__(self) -> str:
        return f"ExactGaussian(sample={self.sample}, maxiter={self.maxiter}, prior_coordinates={self.prior_coordinates})"
