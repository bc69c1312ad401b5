r"""Batched conjugate gradients, one independent system per sample, truncated in the
manner of Steihaug where the map is not positive definite.

Solves :math:`M v = b` for a symmetric linear map :math:`M` given as a function, with
every inner product reduced per sample (over all dims but the first), so one sample's
convergence never changes another's iterates.

Conjugate gradients divides by the curvature :math:`p^T M p` of each search direction.
For a symmetric positive-definite :math:`M` it is positive; for a map that is only
*meant* to be (``mmps``'s :math:`s^2 I + A V A^T` with a network's Tweedie covariance
:math:`V`, indefinite where the network's Jacobian is untrained) it can be zero or
negative, and the step :math:`\alpha = r^T r / p^T M p` is then infinite or points
uphill. Following Steihaug (1983), a sample stops at the first direction whose curvature
falls to ``curvature_floor`` :math:`\cdot |p|^2` or below, keeping its current iterate
(zero if that happens at the first iteration): the iterates before that point are those
of CG on the positive-definite part of the Krylov space, and no division by a
non-positive number ever happens. For :math:`M = s^2 I + K` with :math:`K` positive
semi-definite, every curvature is at least :math:`s^2 |p|^2`, so a floor of :math:`s^2`
truncates exactly where :math:`K` shows negative curvature and never otherwise.

References:
    Hestenes & Stiefel, "Methods of Conjugate Gradients for Solving Linear Systems", 1952.
    Steihaug, "The Conjugate Gradient Method and Trust Regions in Large Scale
    Optimization", SIAM J. Numer. Anal. 20(3), 1983.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product, shape (B, 1, ..., 1) broadcastable against ``a``."""
    dims = tuple(range(1, a.dim()))
    return (a * b).sum(dim=dims, keepdim=True)


@dataclass
class CGResult:
    """A truncated-CG solve.

    Attributes:
        x: the approximate solution, shape (B, *).
        iterations: CG steps taken per sample, shape (B,).
        truncated: True for samples stopped by non-positive curvature, shape (B,).
    """

    x: Tensor
    iterations: Tensor
    truncated: Tensor


def truncated_cg(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    maxiter: int = 100,
    rtol: float = 1e-6,
    curvature_floor: float | Tensor = 0.0,
    precondition: Callable[[Tensor], Tensor] | None = None,
) -> CGResult:
    r"""Solve ``matvec(v) = b`` per sample from ``v = 0``, stopping a sample at
    convergence or at the first direction of curvature at most ``curvature_floor * |p|^2``.
    With ``precondition`` (a symmetric positive-definite approximation of the inverse,
    :math:`P \approx M^{-1}`) it is preconditioned CG: the same iterates as CG on
    :math:`P^{1/2} M P^{1/2}`, converging in far fewer steps when :math:`P M` is close to
    :math:`I`.

    Args:
        matvec: symmetric linear map on tensors shaped like ``b``.
        b: right-hand sides, shape (B, *).
        maxiter: iteration cap (a fixed count: the caller decides the cost).
        rtol: a sample is converged once its residual norm is below ``rtol * |b|``.
        curvature_floor: float, or a tensor broadcastable against (B, 1, ..., 1).
        precondition: the map :math:`P`, or None (plain CG).

    Returns:
        A :class:`CGResult`; ``x`` is always finite where ``b`` and ``matvec`` are.
    """
    batch = b.shape[0]
    apply = (lambda v: v) if precondition is None else precondition
    x = torch.zeros_like(b)
    r = b.clone()
    z = apply(r)
    p = z.clone()
    rz = _dot(r, z)
    rr = _dot(r, r)
    threshold = (rtol**2) * _dot(b, b)
    active = rr > threshold
    iterations = torch.zeros(batch, dtype=torch.long, device=b.device)
    truncated = torch.zeros(batch, dtype=torch.bool, device=b.device)
    tiny = torch.finfo(b.dtype).tiny
    for _ in range(maxiter):
        if not bool(active.any()):
            break
        mp = matvec(p)
        curvature = _dot(p, mp)
        bad = active & ~(curvature > curvature_floor * _dot(p, p))  # NaN curvature is bad too
        truncated |= bad.flatten()
        active = active & ~bad
        # inactive samples (converged or truncated) take no step: no 0/0, no x/0
        alpha = torch.where(active, rz / torch.where(active, curvature, 1.0).clamp_min(tiny), 0.0)
        x = torch.where(active, x + alpha * p, x)
        r = torch.where(active, r - alpha * mp, r)
        iterations += active.flatten().long()
        rr = _dot(r, r)
        active = active & (rr > threshold)
        z = apply(r)
        rz_new = _dot(r, z)
        beta = torch.where(active, rz_new / rz.clamp_min(tiny), 0.0)
        p = torch.where(active, z + beta * p, 0.0)
        rz = rz_new
    return CGResult(x, iterations, truncated)


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    maxiter: int = 100,
    rtol: float = 1e-6,
) -> Tensor:
    """Solve ``matvec(v) = b`` per sample for a symmetric positive-definite ``matvec``
    (arguments as :func:`truncated_cg`); returns the solution, shape (B, *)."""
    return truncated_cg(matvec, b, maxiter=maxiter, rtol=rtol).x
