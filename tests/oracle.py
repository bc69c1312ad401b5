r"""An analytic reconstruction problem with an exact posterior: the oracle of the strategy tests.

Prior: a stationary Gaussian on fields of shape (2, 32, 32) with zero mean and a steep
power-law spectrum :math:`P(k) \propto (1 + |k|^2/k_0^2)^{-s/2}` (``s = 4``, ``k_0 = 2``),
normalised to unit variance per grid value. Like a turbulent field, it holds most of its
energy in a few large scales, so the denoiser's Jacobian :math:`\partial\hat x/\partial x_t`
is a wide low-pass filter at large ``t``. Truth is drawn from the prior; observations
``y = A x + n`` by :class:`~ldiff.observe.Subsample` with noise std 0.1.

Everything is exact: the prior's epsilon (:class:`~ldiff.nets.gaussian.GaussianPrior`), the
posterior mean (CG in observation space), independent exact posterior samples
(perturb-and-solve) and, for small fields, the dense conditional mean
:math:`\mathbb{E}[x \mid x_t, y]` computed by Gaussian conditioning with explicit matrices.

This module holds no fixtures; tests import it: ``from oracle import problem``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ldiff.diffusion.denoise import Denoiser
from ldiff.diffusion.sampler import PredictorCorrector
from ldiff.diffusion.schedules import CosineSchedule, Schedule
from ldiff.guidance.base import Diagnostics, Observation, ScoreGuidance, Strategy
from ldiff.nets.gaussian import GaussianPrior, power_law
from ldiff.observe import Operator, Pixels, Subsample, observe

FIELD_SHAPE = (2, 32, 32)
STD = 0.1


def gaussian_prior(schedule: Schedule | None = None, field_shape=FIELD_SHAPE, slope: float = 4.0) -> GaussianPrior:
    """The oracle prior (zero mean, :func:`power_law` spectrum) on ``schedule`` (cosine, eta 1e-3)."""
    schedule = CosineSchedule(1e-3) if schedule is None else schedule
    return GaussianPrior(schedule, power_law(field_shape, slope), torch.zeros(field_shape[0]))


@dataclass
class Problem:
    """One oracle problem.

    Attributes:
        prior: the exact Gaussian prior.
        denoiser: the prior bound to its schedule.
        truth: true fields, shape (B, C, H, W).
        obs: their observations.
        posterior_mean: the exact posterior mean, shape (B, C, H, W).
    """

    prior: GaussianPrior
    denoiser: Denoiser
    truth: Tensor
    obs: Observation
    posterior_mean: Tensor

    def posterior_samples(self, k: int, seed: int = 1) -> Tensor:
        """``k`` exact posterior samples per observation set, shape (B k, C, H, W), sample-major
        like :meth:`Observation.repeat`."""
        generator = torch.Generator().manual_seed(seed)
        rep = self.obs.repeat(k)
        return self.prior.posterior_sample(rep.y, rep.op, rep.std, generator)


def problem(
    stride: int = 4,
    std: float = STD,
    batch: int = 1,
    seed: int = 0,
    schedule: Schedule | None = None,
    slope: float = 4.0,
) -> Problem:
    """An oracle problem: ``batch`` truths drawn from the prior (``seed``), observed by
    ``Subsample(stride)`` with noise ``std``."""
    prior = gaussian_prior(schedule, slope=slope)
    generator = torch.Generator().manual_seed(seed)
    truth = prior.sample(batch, generator)
    op = Subsample(stride)
    y = observe(truth, op, std, generator)
    obs = Observation(y, op, std, FIELD_SHAPE)
    return Problem(prior, Denoiser(prior, prior.schedule), truth, obs, prior.posterior_mean(y, op, std))


def sample(strategy: Strategy, pb: Problem, k: int, steps: int = 64, corrections: int = 0, seed: int = 2) -> Tensor:
    """``k`` samples of ``strategy`` per observation set, shape (B k, C, H, W), sample-major."""
    generator = torch.Generator().manual_seed(seed)
    obs = pb.obs.repeat(k)
    x1 = torch.randn((obs.y.shape[0], *FIELD_SHAPE), generator=generator)
    sampler = PredictorCorrector(pb.denoiser.schedule, steps=steps, corrections=corrections)
    return strategy.reconstruct(pb.denoiser, obs, x1, sampler, generator)


def sample_mean(x: Tensor, k: int) -> Tensor:
    """The mean over the ``k`` consecutive samples of each observation set: (B k, *) -> (B, *)."""
    return x.unflatten(0, (-1, k)).mean(dim=1)


def relative_rmse(estimate: Tensor, reference: Tensor) -> Tensor:
    """Per-sample ``||estimate - reference|| / ||reference||``, shape (B,)."""
    return (estimate - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)


def residual_rms(x: Tensor, obs: Observation) -> Tensor:
    """Per-sample root-mean-square of ``y - A x`` over the N observations, shape (B,). For an
    exact posterior sample it is distributed like the noise's: about ``std``."""
    return (obs.y - obs.op(x)).flatten(1).square().mean(dim=1).sqrt()


def dense_conditional_mean(prior: GaussianPrior, x_t: Tensor, t: float, y: Tensor, op: Operator, std: float | Tensor) -> Tensor:
    r""":math:`\mathbb{E}[x \mid x_t, y]` by dense Gaussian conditioning, in float64.

    The stacked observation :math:`z = (x_t, y) = H x + \text{noise}` with
    :math:`H = (\mu I; A)` and noise covariance :math:`\operatorname{diag}(\sigma^2 I, s^2 I)`
    gives :math:`\mathbb{E}[x \mid z] = m + \Sigma H^T (H \Sigma H^T + R)^{-1}(z - H m)`,
    with :math:`\Sigma` built column by column from ``prior.cov``. Only for small fields.

    Args:
        x_t: noisy states, shape (B, C, H, W); y: observations, shape (B, *obs_shape).
        std: one noise std, or one per observation (obs_shape), the same for every set.
    """
    field = tuple(prior.power.shape)
    d = prior.power.numel()
    prior = GaussianPrior(prior.schedule, prior.power, prior.mean).double()
    basis = torch.eye(d, dtype=torch.float64).reshape(d, *field)
    sigma_x = prior.cov(basis).reshape(d, d)
    a = op(basis).reshape(d, -1).T
    mu = float(prior.schedule.mu(t))
    sigma = float(prior.schedule.sigma(t))
    h = torch.cat([mu * torch.eye(d, dtype=torch.float64), a])
    obs_var = (torch.as_tensor(std, dtype=torch.float64) * torch.ones(y.shape[1:], dtype=torch.float64)).flatten() ** 2
    noise = torch.cat([torch.full((d,), sigma**2, dtype=torch.float64), obs_var])
    m = prior.mean[:, None, None].expand(field).reshape(d)
    z = torch.cat([x_t.double().flatten(1), y.double().flatten(1)], dim=1)
    gain = torch.linalg.solve(h @ sigma_x @ h.T + torch.diag(noise), (z - h @ m).T)
    return (m[:, None] + sigma_x @ h.T @ gain).T.reshape(x_t.shape)


def norm_ratios(strategy: ScoreGuidance, times: list[float], strides: tuple[int, ...] = (8, 4, 2)) -> Tensor:
    """The diagnostics' ``ratio`` ||sigma g|| / ||eps_hat||, averaged over 4 truths noised to
    ``x_t`` at each time, for each stride: shape (strides, times)."""
    out = []
    for stride in strides:
        pb = problem(stride=stride, batch=4)
        row = []
        for t in times:
            tt = torch.full((4,), t)
            x_t = pb.prior.schedule.perturb(pb.truth, tt, torch.randn(pb.truth.shape, generator=torch.Generator().manual_seed(5)))
            d = Diagnostics()
            strategy.guided_eps(pb.denoiser, x_t, tt, pb.obs, d)
            row.append(d.stacked()["ratio"].mean())
        out.append(torch.stack(row))
    return torch.stack(out)


def alone_and_batched(strategy: Strategy, stride: int = 4, steps: int = 16) -> tuple[Tensor, Tensor]:
    """Sample 0 reconstructed alone and in a batch with a second, different observation set,
    from the same initial noise (deterministic sampler): equal if samples are independent."""
    pb = problem(stride, batch=2, seed=3)
    # Blow the second problem's data up so that any batch-wide norm would show.
    y = torch.stack([pb.obs.y[0], 10 * pb.obs.y[1]])
    x1 = torch.randn((2, *FIELD_SHAPE), generator=torch.Generator().manual_seed(4))
    sampler = PredictorCorrector(pb.denoiser.schedule, steps=steps)
    batched = strategy.reconstruct(pb.denoiser, Observation(y, pb.obs.op, STD, FIELD_SHAPE), x1, sampler)
    alone = strategy.reconstruct(pb.denoiser, Observation(y[:1], pb.obs.op, STD, FIELD_SHAPE), x1[:1], sampler)
    return alone[0], batched[0]


def _reconstruct(strategy: Strategy, y: Tensor, op: Operator, std: float, x1: Tensor) -> Tensor:
    prior = gaussian_prior()
    obs = Observation(y, op, std, FIELD_SHAPE)
    return strategy.reconstruct(Denoiser(prior, prior.schedule), obs, x1, PredictorCorrector(prior.schedule, steps=2))


def bad_inputs() -> dict[str, tuple[str, Callable[[Strategy], Tensor]]]:
    """Named bad-input cases, each ``(message pattern, run(strategy))``; every run must raise
    ``ValueError`` from the strategy's entry point ``reconstruct``."""
    op = Subsample(4)
    y = torch.zeros(1, 2, 8, 8)
    x1 = torch.zeros(1, *FIELD_SHAPE)
    nan_y = y.clone()
    nan_y[0, 0, 3, 3] = float("nan")
    return {
        "nan": ("NaN", lambda s: _reconstruct(s, nan_y, op, STD, x1)),
        "std zero": ("std", lambda s: _reconstruct(s, y, op, 0.0, x1)),
        "std negative": ("std", lambda s: _reconstruct(s, y, op, -0.1, x1)),
        "obs shape": ("shape", lambda s: _reconstruct(s, torch.zeros(1, 2, 16, 16), op, STD, x1)),
        "field mismatch": ("fields", lambda s: _reconstruct(s, y, op, STD, torch.zeros(1, 4, 32, 32))),
        "batch mismatch": ("samples", lambda s: _reconstruct(s, y, op, STD, torch.zeros(3, *FIELD_SHAPE))),
        "zero observations": ("zero", lambda s: _reconstruct(s, torch.zeros(1, 2, 0), Pixels(torch.zeros(32, 32)), STD, x1)),
    }
