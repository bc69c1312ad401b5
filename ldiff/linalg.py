r"""Batched conjugate gradients, one independent system per sample.

Solves :math:`M v = b` for a symmetric positive-definite linear map :math:`M` given as a
function, with every inner product reduced per sample (over all dims but the first), so
one sample's convergence never changes another's iterates.

References:
    Hestenes & Stiefel, "Methods of Conjugate Gradients for Solving Linear Systems", 1952.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product, shape (B, 1, ..., 1) broadcastable against ``a``."""
    dims = tuple(range(1, a.dim()))
    return (a * b).sum(dim=dims, keepdim=True)


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    x0: Tensor | None = None,
    maxiter: int = 100,
    rtol: float = 1e-6,
) -> Tensor:
    """Solve ``matvec(v) = b`` per sample.

    Args:
        matvec: symmetric positive-definite map on tensors shaped like ``b``.
        b: right-hand sides, shape (B, *).
        x0: initial guess, shape (B, *); zeros if None.
        maxiter: iteration cap (a fixed count: the caller decides the cost).
        rtol: stop once every sample's residual norm is below ``rtol * |b|``.

    Returns:
        The approximate solution, shape (B, *).
    """
    x = torch.zeros_like(b) if x0 is None else x0
    r = b - matvec(x) if x0 is not None else b.clone()
    p = r.clone()
    rr = _dot(r, r)
    threshold = (rtol**2) * _dot(b, b)
    for _ in range(maxiter):
        if bool((rr <= threshold).all()):
            break
        mp = matvec(p)
        # A converged sample has rr = 0 and p = 0: keep its step at zero, not 0/0.
        alpha = torch.where(rr > threshold, rr / _dot(p, mp).clamp_min(torch.finfo(b.dtype).tiny), 0.0)
        x = x + alpha * p
        r = r - alpha * mp
        rr_new = _dot(r, r)
        beta = torch.where(rr > threshold, rr_new / rr.clamp_min(torch.finfo(b.dtype).tiny), 0.0)
        p = r + beta * p
        rr = rr_new
    return x
