r"""The seed's balance analysis as numbers: how strong SDA's likelihood is at each N and t.

With SDA's Gaussian likelihood, :math:`\log p(y \mid x_t) = -\tfrac12 \sum_{j=1}^{N}
(y - A\hat x)_j^2 / v(t)` with :math:`v(t) = \text{std}^2 + \gamma\, (\sigma/\mu)^2`, the
likelihood's *strength* is :math:`S = N / v(t)`. Relative to a reference count
:math:`N_{ref}` (the rate where a setting was tuned), with :math:`r = N / N_{ref}`:

- **no scaling**: :math:`S/S_{ref} = r`;
- **std scaling** (std :math:`\to` std :math:`\sqrt r`, the seed's first fix):
  :math:`S/S_{ref} = r\, v_{ref} / (r\, \text{std}^2 + \gamma (\sigma/\mu)^2)`, which is 1
  only while std² dominates :math:`v` (small t) and tends to r once the gamma term does;
- **dual scaling** (std :math:`\to` std :math:`\sqrt r`, :math:`\gamma \to \gamma r`):
  :math:`S/S_{ref} = 1` at every t. This is exactly a tempered likelihood,
  :math:`\log p \times N_{ref}/N`.

The *gamma share* is :math:`\gamma(\sigma/\mu)^2 / v` under std scaling, the seed's
Table 8.2. Given the seed's settings (linear-beta schedule, std 0.1, gamma 0.01) and
the seed's own observation counts — which are the floor-division counts
630,432 / 155,232 / 37,632 / 9,216 of ``(32, 199, 399)`` at strides 2, 4, 8, 16, not the
exact 640,000 / 160,000 / 40,000 / 10,400 — :func:`balance_table` reproduces the seed's
Tables 8.2 and 8.3. Note the seed's sigma/mu come from the linear-beta schedule while
the user's sampler used SDA's cosine schedule; pass the schedule actually used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ldiff.diffusion.schedules import Schedule


@dataclass
class BalanceRow:
    """One (N, t) cell of the analysis."""

    n_obs: int
    t: float
    sigma_bar: float  # sigma / mu
    gamma_term: float  # gamma (sigma/mu)^2
    gamma_share_std_scaled: float  # gamma term / var with std scaled by sqrt(r)
    strength_none: float  # (N / var) / (N_ref / var_ref), no scaling
    strength_std: float  # same with std scaled by sqrt(r)
    strength_dual: float  # same with std by sqrt(r) and gamma by r


def balance_table(
    schedule: Schedule,
    std: float,
    gamma: float,
    n_obs: Sequence[int],
    n_ref: int,
    times: Sequence[float],
) -> list[BalanceRow]:
    """Tabulate the analysis for every N in ``n_obs`` and t in ``times`` (see module doc)."""
    if std <= 0 or gamma < 0 or n_ref <= 0 or any(n <= 0 for n in n_obs):
        raise ValueError(f"balance: need std > 0, gamma >= 0 and positive counts, got std={std}, gamma={gamma}, n_ref={n_ref}, n_obs={list(n_obs)}")
    rows = []
    for t in times:
        sigma_bar = float(schedule.sigma_bar(float(t)))
        g = gamma * sigma_bar**2
        v_ref = std**2 + g
        for n in n_obs:
            r = n / n_ref
            v_std = r * std**2 + g
            v_dual = r * std**2 + r * g
            rows.append(
                BalanceRow(
                    n_obs=int(n),
                    t=float(t),
                    sigma_bar=sigma_bar,
                    gamma_term=g,
                    gamma_share_std_scaled=g / v_std,
                    strength_none=r,
                    strength_std=r * v_ref / v_std,
                    strength_dual=r * v_ref / v_dual,
                )
            )
    return rows
