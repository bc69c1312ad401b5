"""Noise that belongs to items, not to batches.

A reconstruction run draws sampler noise for B items x K samples at once. With one
generator per batch, an item's noise would depend on which items share its batch, and
so on the batch size and the number of devices. :class:`ItemNoise` gives every item its
own generator: a draw of shape (B K, ...) is the concatenation of each item's (K, ...)
draw, rows item-major (rows ``i K .. i K + K - 1`` are item ``i``'s samples, as
:meth:`ldiff.guidance.base.Observation.repeat` lays them out).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class ItemNoise:
    """Standard normal draws per item.

    Args:
        generators: one generator per item of the batch (B).
        repeats: rows per item (K).
    """

    def __init__(self, generators: Sequence[torch.Generator], repeats: int = 1):
        self.generators, self.repeats = list(generators), repeats

    def randn(self, shape: Sequence[int], device=None, dtype=None) -> Tensor:
        if shape[0] != len(self.generators) * self.repeats:
            raise ValueError(f"ItemNoise: {len(self.generators)} items x {self.repeats} samples, but a draw of {shape[0]} rows")
        row = (self.repeats, *shape[1:])
        return torch.cat([torch.randn(row, generator=g, device=device, dtype=dtype) for g in self.generators])


def randn(shape: Sequence[int], generator: torch.Generator | ItemNoise | None = None, device=None, dtype=None) -> Tensor:
    """``torch.randn(shape)`` from a torch generator (or the global one) or an :class:`ItemNoise`."""
    if isinstance(generator, ItemNoise):
        return generator.randn(shape, device=device, dtype=dtype)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def keyed_generator(*keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator whose stream is a function of the integer ``keys`` alone (mixed by
    ``numpy.random.SeedSequence``, so nearby keys give unrelated streams): for draws that
    must come out the same after a resume, whatever ran before, such as the training
    loss's ``t`` and ``eps`` of (seed, epoch, batch, rank)."""
    import numpy as np

    seed = int(np.random.SeedSequence([int(k) % 2**63 for k in keys]).generate_state(2, np.uint64)[0]) % 2**63
    return torch.Generator(device=device).manual_seed(seed)
