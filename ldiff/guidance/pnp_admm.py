r"""Plug-and-play ADMM with the diffusion prior as the denoiser (Venkatakrishnan et al., 2013).

ADMM splits the MAP problem :math:`\min_x f(x) + g(x)` with the data term
:math:`f(x) = \|y - A x\|^2 / (2 s^2)` and the prior :math:`g = -\log p` into a variable
per term, :math:`x` for :math:`f`, :math:`z` for :math:`g`, tied by :math:`x = z` with a
scaled dual :math:`u`. Iteration :math:`k` with penalty :math:`\rho_k`:

.. math::
    x &\leftarrow \operatorname{prox}_{f/\rho_k}(z - u)
        = \arg\min_x \tfrac{1}{2 s^2}\|y - A x\|^2 + \tfrac{\rho_k}{2}\|x - (z - u)\|^2, \\
    z &\leftarrow \operatorname{prox}_{g/\rho_k}(x + u) \approx D_{1/\sqrt{\rho_k}}(x + u), \\
    u &\leftarrow u + x - z.

**x-step in closed form.** With :math:`A A^T = c I` (every operator of
:mod:`ldiff.observe`), the Woodbury identity gives, for :math:`w = z - u`,

.. math:: x = w + A^T \frac{y - A w}{c + \rho_k s^2}

(elementwise in observation space, so a per-observation std works too): the data enter
through :math:`N`-independent per-point pulls, never through a sum over observations.

**z-step: the prior's proximal map is a Gaussian denoiser.**
:math:`\operatorname{prox}_{g/\rho}(v)` is the MAP estimate of :math:`x` from
:math:`v = x + n`, :math:`n \sim \mathcal{N}(0, I/\rho)`; the diffusion denoiser gives the
MMSE estimate at that noise level instead (equal for a Gaussian prior). A noise level
:math:`\bar\sigma = 1/\sqrt{\rho_k}` corresponds to the time :math:`t_k` with
:math:`\sigma(t_k)/\mu(t_k) = \bar\sigma` (found by bisection, the ratio being increasing),
and the VP network sees :math:`x_{t_k} = \mu(t_k)\,(x + u)`, since
:math:`x_t/\mu = x + \bar\sigma \varepsilon`.

**Increasing penalty.** :math:`\rho_k` grows geometrically from ``rho_min`` to
``rho_max`` over the ``sampler.steps`` iterations, i.e. the denoiser's noise level falls
from :math:`1/\sqrt{\rho_{min}}` to :math:`1/\sqrt{\rho_{max}}`. Chan et al. (2017) show
that such a schedule makes PnP-ADMM converge for any bounded denoiser.

**What it is.** A MAP-like point estimate, not a posterior sampler: the only randomness is
the initial state :math:`z_0 = \bar\sigma_0\, x_1` (``x1`` as a noise draw at the first
noise level, :math:`u_0 = 0`), which the large-noise denoiser mostly forgets, so K
"samples" nearly coincide (see docs/guidance-projection.md for the measured spread). With a
Gaussian prior and a fixed :math:`\rho` the iteration converges to the exact posterior
mean, whatever :math:`\rho`.

Cost: one network evaluation per iteration. Diagnostics per iteration:
``correction_norm`` = :math:`\|x - (z - u)\| \sqrt{\rho_k}`, the data step's displacement in
units of the denoiser's noise level (the units of :math:`\|\sigma g\|`), ``eps_norm`` the
z-step's :math:`\|\hat\varepsilon\|`, ``gamma_share`` NaN, recorded at :math:`t_k`.

References:
    Venkatakrishnan, Bouman & Wohlberg, "Plug-and-Play Priors for Model Based
    Reconstruction", GlobalSIP 2013.
    Chan, Wang & Elgendy, "Plug-and-Play ADMM for Image Restoration: Fixed-Point
    Convergence and Applications", IEEE TCI 2017, arXiv:1605.01710.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ldiff.diffusion.schedules import Schedule
from ldiff.guidance.base import GridStrategy, Observation, record


def data_prox(w: Tensor, obs: Observation, rho: Tensor) -> Tensor:
    r"""The proximal map of the Gaussian data term, per sample:
    :math:`\arg\min_x \|y - A x\|^2/(2 s^2) + \tfrac{\rho}{2}\|x - w\|^2
    = w + A^T \big((y - A w) / (c + \rho s^2)\big)` with :math:`A A^T = c I`.

    Args:
        w: the point to stay close to, shape (B, C, H, W).
        obs: the observations (``y`` of shape (B, *obs_shape), std float or per observation).
        rho: the penalty per sample, shape (B,).

    Returns:
        The minimiser, shape (B, C, H, W).
    """
    y = obs.y.to(w)
    var = torch.as_tensor(obs.std, dtype=w.dtype, device=w.device) ** 2
    rho = rho.to(w).reshape((-1,) + (1,) * (y.dim() - 1))
    return w + obs.op.adjoint((y - obs.op(w)) / (obs.op.aat + rho * var), obs.field_shape)


def noise_time(schedule: Schedule, sigma_bar: float, iterations: int = 60) -> float:
    r"""The time :math:`t \in [0, 1]` with :math:`\sigma(t)/\mu(t) = \bar\sigma`, by bisection.

    Raises:
        ValueError: if :math:`\bar\sigma` lies outside the schedule's range
            :math:`[\sigma(0)/\mu(0), \sigma(1)/\mu(1)]`.
    """
    low, high = float(schedule.sigma_bar(0.0)), float(schedule.sigma_bar(1.0))
    if not low <= sigma_bar <= high:
        raise ValueError(
            f"PnPADMM: denoiser noise level {sigma_bar:.4g} (= 1/sqrt(rho)) lies outside {schedule!r}'s "
            f"range [{low:.4g}, {high:.4g}]; adjust rho_min / rho_max"
        )
    left, right = 0.0, 1.0
    for _ in range(iterations):
        middle = 0.5 * (left + right)
        if float(schedule.sigma_bar(middle)) < sigma_bar:
            left = middle
        else:
            right = middle
    return 0.5 * (left + right)


class PnPADMM(GridStrategy):
    r"""Plug-and-play ADMM with the diffusion denoiser (module docstring).

    Args:
        rho_min: first penalty; the denoiser starts at noise level :math:`1/\sqrt{\rho_{min}}`.
        rho_max: last penalty, reached at iteration ``sampler.steps``.
    """

    name = "pnp-admm"

    def __init__(self, rho_min: float = 0.1, rho_max: float = 100.0):
        if not 0.0 < rho_min <= rho_max or not math.isfinite(rho_max):
            raise ValueError(f"PnPADMM: need 0 < rho_min <= rho_max < inf, got {rho_min}, {rho_max}")
        self.rho_min = float(rho_min)
        self.rho_max = float(rho_max)

    def penalties(self, steps: int) -> list[float]:
        r""":math:`\rho_k`, geometric from ``rho_min`` to ``rho_max`` over ``steps`` iterations."""
        if steps == 1:
            return [self.rho_min]
        ratio = self.rho_max / self.rho_min
        return [self.rho_min * ratio ** (k / (steps - 1)) for k in range(steps)]

    def grid(self, denoiser, sampler, like):
        r"""One ADMM iteration per sampler step; iteration k runs the denoiser at the time
        whose noise level is :math:`1/\sqrt{\rho_k}` (``t`` and ``s`` both that time)."""
        batch = like.shape[0]
        times = [torch.full((batch,), noise_time(denoiser.schedule, 1 / math.sqrt(rho)), dtype=like.dtype, device=like.device)
                 for rho in self.penalties(sampler.steps)]
        return [(t, t) for t in times]

    def start(self, denoiser, obs, x1, t):
        """``z = x1 / sqrt(rho_min)``, ``u = 0``; ``state["x"]`` is the denoised iterate
        ``z`` (what the callback sees), ``state["out"]`` the data-step estimate returned."""
        return {"x": x1 / math.sqrt(self.rho_min), "u": torch.zeros_like(x1), "out": x1}

    def step(self, denoiser, obs, state, t, s, noise, diagnostics):
        z, u = state["x"], state["u"]
        mu, sigma = denoiser.schedule.coefficients(t, z)
        rho = (mu / sigma).flatten() ** 2  # 1 / sigma_bar^2 at the iteration's time
        w = z - u
        x = data_prox(w, obs, rho)
        eps_hat, z = denoiser(mu * (x + u), t)
        record(diagnostics, t, eps_hat, (x - w) * rho.sqrt().reshape(-1, *(1,) * (x.dim() - 1)))
        return {"x": z, "u": u + x - z, "out": x}

    def result(self, state):
        return state["out"]
