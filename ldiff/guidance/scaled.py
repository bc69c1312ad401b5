r"""``dual-scaled`` and ``std-scaled``: SDA's likelihood with std and gamma rescaled by N.

With :math:`r = N / N_{ref}` (observations per sample over a reference count), the seed's
fixes rescale the two terms of SDA's variance :math:`\mathrm{var} = s^2 + \gamma (\sigma/\mu)^2`
before computing the ``dps-sum`` score (:class:`~ldiff.guidance.dps_sum.DPSSum`):

.. math:: s_{\mathrm{eff}} = \max\big(s_0\, r^{p_s},\ s_{floor}\big), \qquad
          \gamma_{\mathrm{eff}} = \max\big(\gamma\, r^{p_\gamma},\ \gamma_{floor}\big),

where :math:`s_0` is the observations' own std unless ``std_ref`` gives it absolutely.

- ``std-scaled`` (the seed's §3.1): :math:`p_s = 1/2`, :math:`p_\gamma = 0`. It keeps
  :math:`N/\mathrm{var}` constant only where :math:`s^2` dominates ``var``, i.e. at small
  ``t``; for larger ``t`` the :math:`\gamma` term dominates and the scaling fades (§8).
- ``dual-scaled`` (§8.5): :math:`p_s = 1/2`, :math:`p_\gamma = 1`. Then
  :math:`\mathrm{var}_{\mathrm{eff}} = r\, \mathrm{var}` at every ``t``, so the strength
  :math:`N/\mathrm{var}_{\mathrm{eff}} = N_{ref}/\mathrm{var}` does not depend on ``N``.

**What dual scaling is.** Since :math:`\log p \propto 1/\mathrm{var}`, dual scaling is exactly
the *tempered* likelihood :math:`\log p(y \mid x_t) \cdot N_{ref}/N` (equivalently SDA's
``.mean()`` times :math:`N_{ref}`). That changes the posterior, it is not a free fix: the
tempered posterior is that of noise std :math:`s\sqrt r`, so it is wider, and where the
data dominate the prior its samples fit the observations more loosely than the noise, by
up to :math:`\sqrt r` times ``std`` (for :math:`N > N_{ref}`). A strategy that fits at
the noise level for every ``N`` needs a better likelihood covariance (``mmps``), not a
weaker likelihood.

The user's later hand rule "clamped linear", :math:`s = \max(0.2 r, 0.15)`,
:math:`\gamma = \max(0.04 r^2, 0.02)`, is ``DualScaled(n_ref, std_ref=0.2,
std_exponent=1, std_floor=0.15, gamma=0.04, gamma_exponent=2, gamma_floor=0.02)``.

References:
    Rozet & Louppe, "Score-based Data Assimilation", NeurIPS 2023, arXiv:2306.10574.
"""

from __future__ import annotations

import math

from torch import Tensor

from ldiff.guidance.base import Observation, check_non_negative, check_positive
from ldiff.guidance.dps_sum import DPSSum


def _power_rule(value: float | Tensor, r: float, exponent: float, floor: float) -> float | Tensor:
    r""":math:`\max(v\, r^p, \text{floor})`, elementwise for a tensor ``v``."""
    scaled = value * r**exponent
    return scaled.clamp_min(floor) if isinstance(scaled, Tensor) else max(scaled, floor)


class DualScaled(DPSSum):
    r"""``dps-sum`` with :math:`s_{\mathrm{eff}} = \max(s_0 r^{p_s}, s_{floor})` and
    :math:`\gamma_{\mathrm{eff}} = \max(\gamma r^{p_\gamma}, \gamma_{floor})`, :math:`r = N/N_{ref}`
    (see the module docstring). With the defaults, the tempered likelihood
    :math:`\log p \cdot N_{ref}/N`.

    Args:
        n_ref: reference number of observations per sample :math:`N_{ref}` (where the
            unscaled std and gamma were tuned).
        gamma: :math:`\gamma` at :math:`N = N_{ref}`.
        std_ref: :math:`s_0`, the std at :math:`N = N_{ref}` in normalised units; None uses
            the observations' noise std (the seed's rule).
        std_exponent: :math:`p_s`.
        gamma_exponent: :math:`p_\gamma`.
        std_floor: :math:`s_{floor}` (0: no floor).
        gamma_floor: :math:`\gamma_{floor}` (0: no floor).
    """

    name = "dual-scaled"

    def __init__(
        self,
        n_ref: int,
        gamma: float = 1e-2,
        std_ref: float | None = None,
        std_exponent: float = 0.5,
        gamma_exponent: float = 1.0,
        std_floor: float = 0.0,
        gamma_floor: float = 0.0,
    ):
        super().__init__(gamma)
        owner = type(self).__name__
        if isinstance(n_ref, bool) or not isinstance(n_ref, int) or n_ref < 1:
            raise ValueError(f"{owner}: n_ref must be an integer >= 1, got {n_ref!r}")
        for name, value in (("std_exponent", std_exponent), ("gamma_exponent", gamma_exponent)):
            if not math.isfinite(value):
                raise ValueError(f"{owner}: {name} must be finite, got {value}")
        self.n_ref = n_ref
        self.std_ref = None if std_ref is None else check_positive(owner, "std_ref", std_ref)
        self.std_exponent = float(std_exponent)
        self.gamma_exponent = float(gamma_exponent)
        self.std_floor = check_non_negative(owner, "std_floor", std_floor)
        self.gamma_floor = check_non_negative(owner, "gamma_floor", gamma_floor)

    def noise(self, obs: Observation) -> tuple[float | Tensor, float]:
        """The effective ``(std, gamma)`` for the observations' count ``N = obs.n_obs``."""
        r = obs.n_obs / self.n_ref
        std = obs.std * obs.scale if self.std_ref is None else self.std_ref  # normalised units
        return (
            _power_rule(std, r, self.std_exponent, self.std_floor) / obs.scale,
            _power_rule(self.gamma, r, self.gamma_exponent, self.gamma_floor),
        )


class StdScaled(DualScaled):
    r"""The seed's first fix (§3.1): ``dps-sum`` with :math:`s \sqrt{N/N_{ref}}` and
    :math:`\gamma` unchanged. Kept to reproduce its failure: at ``t > 0.1`` the
    :math:`\gamma (\sigma/\mu)^2` term dominates ``var`` and the scaling fades.

    Args:
        n_ref: reference number of observations per sample.
        gamma: weight of the Tweedie-error term, not scaled.
    """

    name = "std-scaled"

    def __init__(self, n_ref: int, gamma: float = 1e-2):
        super().__init__(n_ref, gamma, gamma_exponent=0.0)
