r"""SDA's predictor-corrector sampler for VP diffusions.

Time runs from :math:`t = 1` to :math:`t = 0` on a uniform grid of ``steps`` steps.
For each pair :math:`t \to s` (with :math:`s = t - 1/\text{steps}`):

- **predictor** (DDIM, deterministic): with :math:`r = \mu(s)/\mu(t)`,
  :math:`x \leftarrow r\, x + (\sigma(s) - r\, \sigma(t))\, \tilde\varepsilon(x, t)`;
- **corrector** (``corrections`` Langevin steps at time :math:`s`): with
  :math:`\delta = \tau / \operatorname{mean}(\tilde\varepsilon^2)` per sample,
  :math:`x \leftarrow x - (\delta\, \tilde\varepsilon + \sqrt{2\delta}\, z)\, \sigma(s)`,
  :math:`z \sim \mathcal{N}(0, I)`.

:math:`\tilde\varepsilon` is whatever epsilon function the caller passes: the prior's
:math:`\hat\varepsilon` for unconditional sampling, or a guidance strategy's guided
epsilon, which then feeds both predictor and corrector. The sampler knows nothing of
guidance, Lightning or I/O.

References:
    Rozet & Louppe, "Score-based Data Assimilation", NeurIPS 2023, arXiv:2306.10574
    (Algorithm: predictor-corrector with Langevin corrections).
    Song et al., "Denoising Diffusion Implicit Models", ICLR 2021, arXiv:2010.02502.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ldiff.diffusion.noise import randn
from ldiff.diffusion.schedules import Schedule

EpsFn = Callable[[Tensor, Tensor], Tensor]
"""``eps_fn(x_t, t) -> eps_tilde`` with ``x_t: (B, *)``, ``t: (B,)``."""

StepCallback = Callable[[int, Tensor, Tensor, Tensor], Tensor]
"""``callback(i, s, x_prev, x) -> x`` after step ``i`` reaching time ``s``; may replace
samples of ``x`` (for example freeze diverged ones at ``x_prev``)."""


class PredictorCorrector:
    """SDA's sampler (see the module docstring for the equations).

    Args:
        schedule: the VP schedule the epsilon function was trained with.
        steps: number of predictor steps from t = 1 to t = 0.
        corrections: Langevin corrector steps after each predictor step.
        tau: Langevin step-size factor.
    """

    def __init__(self, schedule: Schedule, steps: int = 64, corrections: int = 0, tau: float = 1.0):
        if steps < 1:
            raise ValueError(f"PredictorCorrector: steps must be >= 1, got {steps}")
        if corrections < 0:
            raise ValueError(f"PredictorCorrector: corrections must be >= 0, got {corrections}")
        if tau <= 0:
            raise ValueError(f"PredictorCorrector: tau must be > 0, got {tau}")
        self.schedule = schedule
        self.steps = steps
        self.corrections = corrections
        self.tau = tau

    def times(self, device: torch.device | None = None) -> Tensor:
        """The time grid, shape (steps + 1,), from 1 down to 0."""
        return torch.linspace(1.0, 0.0, self.steps + 1, device=device)

    def sample(
        self,
        eps_fn: EpsFn,
        x1: Tensor,
        generator: torch.Generator | None = None,
        callback: StepCallback | None = None,
    ) -> Tensor:
        """Integrate from ``x1`` at t = 1 down to t = 0.

        Args:
            eps_fn: ``eps_fn(x_t, t) -> eps_tilde``.
            x1: the initial state, typically standard normal, shape (B, *).
            generator: RNG for the corrector noise.
            callback: optional hook after each step (see :data:`StepCallback`).

        Returns:
            The final state at t = 0, shape (B, *).
        """
        x = x1
        batch = x.shape[0]
        mean_dims = tuple(range(1, x.dim()))
        grid = self.times(x.device).to(x.dtype)
        for i in range(self.steps):
            t = grid[i].expand(batch)
            s = grid[i + 1].expand(batch)
            x_prev = x
            mu_t, sigma_t = self.schedule.coefficients(t, x)
            mu_s, sigma_s = self.schedule.coefficients(s, x)
            r = mu_s / mu_t
            x = r * x + (sigma_s - r * sigma_t) * eps_fn(x, t)
            for _ in range(self.corrections):
                eps = eps_fn(x, s)
                z = randn(x.shape, generator, device=x.device, dtype=x.dtype)
                delta = self.tau / eps.square().mean(dim=mean_dims, keepdim=True)
                x = x - (delta * eps + torch.sqrt(2 * delta) * z) * sigma_s
            if callback is not None:
                x = callback(i, s, x_prev, x)
        return x
