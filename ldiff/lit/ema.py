r"""Exponential moving average (EMA) of network weights.

With :math:`w_k` the weights after optimiser step :math:`k` and a decay
:math:`\beta \in [0, 1)`, the average starts at the initial weights and follows

.. math:: \bar w_0 = w_0, \qquad \bar w_k = \beta\, \bar w_{k-1} + (1 - \beta)\, w_k
          = \beta^k w_0 + (1 - \beta) \sum_{j=1}^{k} \beta^{k-j} w_j ,

a weighted mean of the last :math:`\sim 1/(1-\beta)` iterates (1,000 steps for the
default 0.999). Diffusion models are sampled from such averaged weights: the iterates of
a stochastic optimiser jitter around a good solution, and their average removes much of
that jitter, which shows in the samples (Song & Ermon 2020; Ho et al. 2020 use 0.9999).
A run much shorter than :math:`1/(1-\beta)` steps leaves the average near the initial
weights, so short runs need a smaller decay.

References:
    Polyak & Juditsky, "Acceleration of Stochastic Approximation by Averaging",
    SIAM J. Control Optim. 30(4), 1992.
    Song & Ermon, "Improved Techniques for Training Score-Based Generative Models",
    NeurIPS 2020, arXiv:2006.09011.
    Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020,
    arXiv:2006.11239.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def check_decay(decay: float) -> float:
    """Return ``decay`` as a float; ``ValueError`` unless it lies in [0, 1)."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1), got {decay}")
    return float(decay)


def averaged_copy(net: nn.Module) -> nn.Module:
    r"""A frozen copy of ``net`` to hold :math:`\bar w` (starts at :math:`\bar w_0 = w_0`)."""
    return copy.deepcopy(net).requires_grad_(False)


@torch.no_grad()
def update_average(average: nn.Module, net: nn.Module, decay: float) -> None:
    r"""One EMA step in place: :math:`\bar w \leftarrow \beta \bar w + (1 - \beta) w`.

    Buffers (normalisation statistics, constants) are copied, not averaged.

    Args:
        average: the averaged copy, same architecture as ``net``.
        net: the network the optimiser just stepped.
        decay: :math:`\beta` in [0, 1).
    """
    averaged = list(average.parameters())
    current = [p.detach() for p in net.parameters()]
    # lerp(a, w, 1 - beta) = a + (1 - beta)(w - a) = beta a + (1 - beta) w
    torch._foreach_lerp_(averaged, current, 1.0 - decay)
    for mine, theirs in zip(average.buffers(), net.buffers()):
        mine.copy_(theirs)
