r"""Standardised coordinates: a diffusion prior on :math:`z = S^{-1}(x - m)`.

A stationary Gaussian (:mod:`ldiff.nets.gaussian`) gives every node the same variance.
The cylinder wake is not like that: ahead of the cylinder the flow is steady, in the
wake it sheds, and a stationary skip term makes the prior's samples unsteady where the
data never are (34x too unsteady ahead of the cylinder, measured on the window prior).
Standardising every node first,

.. math:: x = m + S z, \qquad S = \operatorname{diag}(s), \qquad
          m = \operatorname{mean}_n x_n, \quad s = \max\big(\operatorname{std}_n x_n,\ f\, \bar s\big)

(per node and channel, over the training windows; the floor :math:`f \bar s`, a fraction
of the root-mean-square std, keeps :math:`S` invertible inside the cylinder, where the
velocity never changes), the diffusion runs on :math:`z`, whose every value has unit
variance, and the prior's Gaussian skip term is fitted to :math:`z`: the Gaussian
:math:`x = m + S z`, :math:`z \sim \mathcal N(0, C)` with :math:`C` stationary, has the
data's mean and its variance at every node.

**Observations.** For a *selection* :math:`A` (each observation reads one value:
:class:`~ldiff.observe.Subsample`, :class:`~ldiff.observe.Pixels`, sensors, rakes,
:class:`~ldiff.observe.Frames`), :math:`A S = \operatorname{diag}(A s)\, A`, so

.. math:: y = A x + n \iff \frac{y - A m}{A s} = A z + \frac{n}{A s},

the same operator on :math:`z` with a per-observation noise std :math:`\text{std} / (A s)`:
an observation where the data hardly vary (small :math:`s`) carries little information
about :math:`z`, as it should. Every guidance strategy takes a per-observation std, so
they run unchanged on :math:`z`; the reconstruction is :math:`m + S z_0`. An averaging
operator (:class:`~ldiff.observe.BlockMean`) does not commute with :math:`S` and is
refused.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor

from ldiff.nets.gaussian import chunk_sums
from ldiff.observe import Operator

SCALE_FLOOR = 1e-2
"""Default floor of the per-node std, as a fraction of its root-mean-square over nodes."""


def node_sums(chunks: Iterable[Tensor], shape: tuple[int, int, int] | None = None) -> tuple[Tensor, Tensor, int]:
    r"""``(sum_n x_n, sum_n x_n^2, n)`` per node (each (C, H, W), float64) of the fields in
    ``chunks`` (each (n, C, H, W)); sums of disjoint shards add up (a DDP all-reduce). A
    shard with no fields gives zeros of ``shape`` when it is given."""
    return chunk_sums(chunks, lambda x: x, torch.square, shape, "node_sums")


def node_moments(total: Tensor, square: Tensor, count: int, floor: float = SCALE_FLOOR) -> tuple[Tensor, Tensor]:
    r"""``(m, s)`` from :func:`node_sums`: the mean and the (population) std at every node,
    the std floored at ``floor`` times its root-mean-square over the nodes (see the
    module docstring)."""
    if count < 2:
        raise ValueError(f"node_moments: need at least 2 fields, got {count}")
    mean = total / count
    var = (square / count - mean.square()).clamp_min(0)
    rms = var.mean().sqrt()
    if not rms > 0:
        raise ValueError("node_moments: the training fields do not vary")
    return mean, var.sqrt().clamp_min(floor * rms)


def is_selection(op: Operator, field_shape: Sequence[int]) -> bool:
    r"""Whether :math:`A(s \odot z) = A(s) \odot A(z)` for every ``s``, ``z`` on fields of
    ``field_shape`` (C, H, W): true when every observation reads one value with weight 1,
    checked on the operator itself (two random fields), not on its class."""
    generator = torch.Generator().manual_seed(0)
    s, z = (torch.rand((1, *field_shape), generator=generator, dtype=torch.float64) + 0.5 for _ in range(2))
    return bool(torch.allclose(op(s * z), op(s) * op(z), rtol=1e-9, atol=0.0))


class Standardization:
    r"""The map :math:`x = m + s \odot z` of the module docstring.

    Args:
        mean: :math:`m`, shape (C, H, W).
        scale: :math:`s > 0`, shape (C, H, W).
    """

    def __init__(self, mean: Tensor, scale: Tensor):
        if mean.dim() != 3 or scale.shape != mean.shape:
            raise ValueError(f"Standardization: mean and scale must both be (C, H, W), got {tuple(mean.shape)}, {tuple(scale.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("Standardization: mean must be finite and scale finite and > 0")
        self.mean, self.scale = mean, scale

    def encode(self, x: Tensor) -> Tensor:
        """:math:`z = (x - m) / s` for ``x`` (..., C, H, W)."""
        return (x - self.mean.to(x)) / self.scale.to(x)

    def decode(self, z: Tensor) -> Tensor:
        """:math:`x = m + s z` for ``z`` (..., C, H, W)."""
        return self.mean.to(z) + self.scale.to(z) * z

    def observe(self, y: Tensor, op: Operator, std: float | Tensor, field_shape: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
        r"""``(y_z, std_z, scale)``: the observations ``y`` (B, *obs_shape) of ``x`` as
        observations of :math:`z` through the same ``op``, :math:`y_z = (y - A m)/(A s)`
        with noise std :math:`\text{std}/(A s)`, and :math:`A s` (1, *obs_shape), the
        size of one unit of :math:`y_z` in the units of ``y``.

        Raises:
            ValueError: ``op`` is not a selection (an average of values, or weights other
                than 1), for which :math:`A S \ne \operatorname{diag}(A s) A`.
        """
        if tuple(field_shape) != tuple(self.mean.shape):
            raise ValueError(f"Standardization: fields of shape {tuple(field_shape)}, the prior's are {tuple(self.mean.shape)}")
        if not is_selection(op, field_shape):
            raise ValueError(
                f"{op!r}: a prior in standardised coordinates needs observations that each read one value "
                "(subsampling, pixels, sensors, rakes, frames), not averages"
            )
        shift, scale = op(self.mean[None].to(y)), op(self.scale[None].to(y))
        std = torch.as_tensor(std, dtype=y.dtype, device=y.device)
        return (y - shift) / scale, (std / scale).expand_as(y).contiguous(), scale
