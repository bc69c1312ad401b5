r"""Observation operators and the Gaussian noise model :math:`y = A x + n`.

Every operator is linear and acts per sample on fields of shape (B, C, H, W), with
channels frame-major (``c = 2 * frame + component``). Each provides

- ``A(x)``: ``op(x) -> y`` with shape (B, *obs_shape);
- ``A^T(y)``: ``op.adjoint(y) -> x``, the exact adjoint (tested by
  :math:`\langle A x, y\rangle = \langle x, A^T y\rangle`);
- ``n_obs(field_shape)``: the exact count :math:`N` of observations per sample
  (IBPM at stride 2: 100 x 200 x 32 = 640,000, not the floor division 630,432);
- ``aat``: the constant :math:`c` with :math:`A A^T = c\, I`. Every operator here is a
  scaled co-isometry (selections have :math:`c = 1`, a k x k block mean
  :math:`c = 1/k^2`, compositions multiply), so :math:`A` has all singular values
  :math:`\sqrt{c}` and right singular vectors :math:`A^T/\sqrt{c}`. That is what lets
  DDRM and the PnP-ADMM data step work in closed form:
  :math:`(A^T A + \rho I)^{-1} = \rho^{-1}\big(I - A^T A / (c + \rho)\big)`.

The noise ``std`` may be a float or a tensor broadcastable against ``y`` (one std per
observation); :func:`observe` draws ``y`` with a seeded generator.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


class Operator:
    """Base class of the linear observation operators."""

    aat: float = 1.0

    def __call__(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def adjoint(self, y: Tensor, field_shape: Sequence[int]) -> Tensor:
        """The exact adjoint, mapping (B, *obs_shape) back to (B, *field_shape)."""
        raise NotImplementedError

    def check(self, field_shape: Sequence[int]) -> None:
        """Raise ``ValueError`` if the operator cannot act on fields of shape (C, H, W)."""

    def bind(self, x: Tensor, y: Tensor, fluid: Tensor | None = None) -> None:
        """Learn the data's grid: node coordinates ``x`` (W,) and ``y`` (H,) in physical
        units, and the fluid mask (H, W), True in the fluid, or None without a body. The
        :class:`~ldiff.lit.inference.InferenceModule` calls it in ``setup``; operators
        placed in physical space (:class:`RandomSensors`, :class:`Rakes`) build their
        nodes here, the others ignore it."""

    def n_obs(self, field_shape: Sequence[int]) -> int:
        """Number of observations per sample for fields of shape (C, H, W)."""
        self.check(field_shape)
        n = self(torch.empty((1, *field_shape), device="meta")).numel()
        if n == 0:
            raise ValueError(f"{self!r} observes nothing on fields of shape {tuple(field_shape)}")
        return n

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Subsample(Operator):
    """Strided subsampling ``x[..., o::s, o::s]`` (every ``stride``-th node from ``offset``).

    ``y`` has shape (B, C, ceil((H - o)/s), ceil((W - o)/s)).
    """

    def __init__(self, stride: int, offset: int = 0):
        if stride < 1:
            raise ValueError(f"Subsample: stride must be >= 1, got {stride}")
        if not 0 <= offset < stride:
            raise ValueError(f"Subsample: offset must lie in [0, stride), got {offset}")
        self.stride = stride
        self.offset = offset

    def check(self, field_shape: Sequence[int]) -> None:
        if min(field_shape[-2:]) <= self.offset:
            raise ValueError(f"Subsample: offset {self.offset} does not fit fields of shape {tuple(field_shape)}")

    def __call__(self, x: Tensor) -> Tensor:
        return x[..., self.offset :: self.stride, self.offset :: self.stride]

    def adjoint(self, y: Tensor, field_shape: Sequence[int]) -> Tensor:
        x = y.new_zeros((y.shape[0], *field_shape))
        x[..., self.offset :: self.stride, self.offset :: self.stride] = y
        return x


class BlockMean(Operator):
    r"""Coarsening by the mean over ``k x k`` blocks (remainder rows/columns unobserved).

    :math:`A A^T = I / k^2`; the adjoint spreads each value over its block divided by
    :math:`k^2`. ``y`` has shape (B, C, H // k, W // k).
    """

    def __init__(self, factor: int):
        if factor < 1:
            raise ValueError(f"BlockMean: factor must be >= 1, got {factor}")
        self.factor = factor
        self.aat = 1.0 / factor**2

    def check(self, field_shape: Sequence[int]) -> None:
        if min(field_shape[-2:]) < self.factor:
            raise ValueError(f"BlockMean: factor {self.factor} exceeds fields of shape {tuple(field_shape)}")

    def __call__(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.factor)

    def adjoint(self, y: Tensor, field_shape: Sequence[int]) -> Tensor:
        k = self.factor
        x = y.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1) / k**2
        return F.pad(x, (0, field_shape[-1] - x.shape[-1], 0, field_shape[-2] - x.shape[-2]))


class Pixels(Operator):
    """Observation of all channels at a fixed set of grid nodes (sensors or a mask).

    ``y`` has shape (B, C, P) for ``P`` nodes. Build it with :meth:`random` (a random
    fraction of nodes, optionally only where ``fluid`` is 1) or :meth:`sensors`.

    Args:
        mask: boolean tensor (H, W), True where observed.
    """

    def __init__(self, mask: Tensor):
        if mask.dim() != 2:
            raise ValueError(f"Pixels: mask must have shape (H, W), got {tuple(mask.shape)}")
        self._mask = mask.bool()
        self._index = self._mask.flatten().nonzero().squeeze(1)
        self.points = int(self._index.numel())

    @classmethod
    def random(cls, shape: Sequence[int], fraction: float, seed: int = 0, fluid: Tensor | None = None) -> "Pixels":
        """A uniformly random ``fraction`` of the nodes of an (H, W) grid (fluid nodes only if given)."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"Pixels.random: fraction must lie in (0, 1], got {fraction}")
        allowed = torch.ones(shape, dtype=torch.bool) if fluid is None else fluid.bool()
        candidates = allowed.flatten().nonzero().squeeze(1)
        count = max(1, round(fraction * candidates.numel()))
        generator = torch.Generator().manual_seed(seed)
        chosen = candidates[torch.randperm(candidates.numel(), generator=generator)[:count]]
        mask = torch.zeros(math.prod(shape), dtype=torch.bool)
        mask[chosen] = True
        return cls(mask.reshape(tuple(shape)))

    @classmethod
    def sensors(cls, shape: Sequence[int], positions: Sequence[Sequence[int]]) -> "Pixels":
        """Point sensors at grid nodes ``positions = [(row, col), ...]``."""
        mask = torch.zeros(tuple(shape), dtype=torch.bool)
        for row, col in positions:
            if not (0 <= row < shape[0] and 0 <= col < shape[1]):
                raise ValueError(f"Pixels.sensors: position ({row}, {col}) lies outside the grid {tuple(shape)}")
            mask[row, col] = True
        return cls(mask)

    def check(self, field_shape: Sequence[int]) -> None:
        if tuple(field_shape[-2:]) != tuple(self._mask.shape):
            raise ValueError(f"Pixels: mask of shape {tuple(self._mask.shape)} does not fit fields of shape {tuple(field_shape)}")

    def __call__(self, x: Tensor) -> Tensor:
        return x.flatten(-2)[..., self._index.to(x.device)]

    def adjoint(self, y: Tensor, field_shape: Sequence[int]) -> Tensor:
        h, w = self._mask.shape
        x = y.new_zeros((*y.shape[:-1], h * w))
        x[..., self._index.to(y.device)] = y
        return x.unflatten(-1, (h, w))

    def __repr__(self) -> str:
        return f"Pixels(points={self.points}, grid={tuple(self._mask.shape)})"


class _GridSensors(Pixels):
    """Point sensors whose nodes are chosen when the operator is bound to the data's grid
    (:meth:`Operator.bind`), so a config can name them by fraction or by position."""

    def __init__(self) -> None:
        self._mask = None

    def _place(self, x: Tensor, y: Tensor, fluid: Tensor | None) -> Tensor:
        raise NotImplementedError

    def bind(self, x: Tensor, y: Tensor, fluid: Tensor | None = None) -> None:
        mask = self._place(torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64), fluid)
        if not mask.any():
            raise ValueError(f"{self!r} places no sensor on the grid ({len(y)} x {len(x)} nodes)")
        Pixels.__init__(self, mask)

    def check(self, field_shape: Sequence[int]) -> None:
        if self._mask is None:
            raise ValueError(f"{type(self).__name__}: its sensors are placed on the data's grid; run it through the InferenceModule (ldiff predict, compare) or call bind(x, y, fluid)")
        super().check(field_shape)

    def __repr__(self) -> str:
        return Operator.__repr__(self)


class RandomSensors(_GridSensors):
    """A uniformly random ``fraction`` of the grid's nodes, drawn from ``seed`` when bound;
    with ``fluid_only`` (the default) only nodes in the fluid, where the data have a body
    mask (the user's "random fluid-only masks")."""

    def __init__(self, fraction: float, seed: int = 0, fluid_only: bool = True):
        super().__init__()
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"RandomSensors: fraction must lie in (0, 1], got {fraction}")
        self.fraction, self.seed, self.fluid_only = fraction, seed, fluid_only

    def _place(self, x: Tensor, y: Tensor, fluid: Tensor | None) -> Tensor:
        return Pixels.random((len(y), len(x)), self.fraction, self.seed, fluid if self.fluid_only else None)._mask


class Rakes(_GridSensors):
    """Rakes of point sensors: vertical lines at ``x`` positions (physical units, e.g.
    diameters downstream of a cylinder), a sensor every ``spacing`` in y from ``y_min``
    to ``y_max``, each at the nearest grid node, in the fluid only (the user's
    "point-sensor rakes downstream of the cylinder")."""

    def __init__(self, x: Sequence[float], y_min: float, y_max: float, spacing: float):
        super().__init__()
        if not len(x) or not spacing > 0 or not y_max >= y_min:
            raise ValueError(f"Rakes: need x positions, spacing > 0 and y_max >= y_min, got {list(x)}, {spacing}, {y_min}..{y_max}")
        self.x, self.y_min, self.y_max, self.spacing = [float(v) for v in x], float(y_min), float(y_max), float(spacing)

    def _place(self, x: Tensor, y: Tensor, fluid: Tensor | None) -> Tensor:
        mask = torch.zeros((len(y), len(x)), dtype=torch.bool)
        heights = torch.arange(self.y_min, self.y_max + 0.5 * self.spacing, self.spacing, dtype=torch.float64)
        rows = (y[None, :] - heights[:, None]).abs().argmin(dim=1)  # the same on every rake
        for position in self.x:
            if not x.min() <= position <= x.max():
                raise ValueError(f"Rakes: x = {position:g} lies outside the grid's x range [{float(x.min()):g}, {float(x.max()):g}]")
            mask[rows, int((x - position).abs().argmin())] = True
        return mask if fluid is None else mask & fluid.bool()


class Frames(Operator):
    """Every ``every``-th frame of a window (both velocity components), from ``offset``.

    Channels are frame-major with ``components`` per frame. ``y`` has shape
    (B, C_kept, H, W).
    """

    def __init__(self, every: int, offset: int = 0, components: int = 2):
        if every < 1 or not 0 <= offset < every:
            raise ValueError(f"Frames: need every >= 1 and 0 <= offset < every, got {every}, {offset}")
        self.every = every
        self.offset = offset
        self.components = components

    def _channels(self, n_channels: int) -> Tensor:
        frames = torch.arange(n_channels) // self.components
        return ((frames % self.every) == self.offset).nonzero().squeeze(1)

    def check(self, field_shape: Sequence[int]) -> None:
        if field_shape[0] % self.components:
            raise ValueError(f"Frames: {field_shape[0]} channels is not a whole number of {self.components}-component frames")

    def __call__(self, x: Tensor) -> Tensor:
        return x[:, self._channels(x.shape[1]).to(x.device)]

    def adjoint(self, y: Tensor, field_shape: Sequence[int]) -> Tensor:
        x = y.new_zeros((y.shape[0], *field_shape))
        x[:, self._channels(field_shape[0]).to(y.device)] = y
        return x


class Compose(Operator):
    """``A = A_n ... A_1``: apply ``operators`` in order; the adjoint in reverse order."""

    def __init__(self, operators: Sequence[Operator]):
        if not operators:
            raise ValueError("Compose: needs at least one operator")
        self.operators = list(operators)
        self.aat = math.prod(op.aat for op in self.operators)

    def _shapes(self, field_shape: Sequence[int]) -> list[tuple[int, ...]]:
        """The input shape of each operator, checking each fits."""
        shapes = [tuple(field_shape)]
        for op in self.operators[:-1]:
            op.check(shapes[-1])
            shapes.append(tuple(op(torch.empty((1, *shapes[-1]), device="meta")).shape[1:]))
        self.operators[-1].check(shapes[-1])
        return shapes

    def check(self, field_shape: Sequence[int]) -> None:
        self._shapes(field_shape)

    def __call__(self, x: Tensor) -> Tensor:
        for op in self.operators:
            x = op(x)
        return x

    def adjoint(self, y: Tensor, field_shape: Sequence[int]) -> Tensor:
        for op, shape in zip(reversed(self.operators), reversed(self._shapes(field_shape))):
            y = op.adjoint(y, shape)
        return y


def check_std(std: float | Tensor) -> None:
    """Refuse a non-positive or non-finite observation noise std."""
    value = torch.as_tensor(std)
    bad = ~torch.isfinite(value) | (value <= 0)
    if bad.any():
        shown = value[bad].flatten()[0].item()
        raise ValueError(f"observation noise std must be finite and > 0, got {shown} ({int(bad.sum())} of {value.numel()} values)")


def observe(x: Tensor, op: Operator, std: float | Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draw observations ``y = A x + std * n`` with ``n ~ N(0, I)``.

    Args:
        x: true fields, shape (B, C, H, W).
        op: observation operator.
        std: noise std, float or broadcastable against ``y``.
        generator: RNG for the noise (seeded observations).

    Returns:
        y, shape (B, *obs_shape).
    """
    check_std(std)
    op.n_obs(x.shape[1:])
    clean = op(x)
    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    return clean + torch.as_tensor(std, dtype=clean.dtype, device=clean.device) * noise


def positions(op: Operator, field_shape: Sequence[int]) -> dict[str, Tensor]:
    """Where each observation sits on the grid: ``row``, ``col``, ``frame`` and
    ``component`` (u = 0, v = 1) of each of the ``n_obs`` observations, float64 (n_obs,).

    Each is :math:`A f / A 1` for the index field ``f`` (the row, column, ... of every
    node): the exact index for a selection (``Subsample``, ``Pixels``, ``Frames``), the
    weighted mean position for an average (``BlockMean``: the block's centre).
    """
    c, h, w = field_shape
    shape = (1, c, h, w)
    index = {
        "row": torch.arange(h, dtype=torch.float64)[None, None, :, None].expand(shape),
        "col": torch.arange(w, dtype=torch.float64)[None, None, None, :].expand(shape),
        "frame": (torch.arange(c, dtype=torch.float64) // 2)[None, :, None, None].expand(shape),
        "component": (torch.arange(c, dtype=torch.float64) % 2)[None, :, None, None].expand(shape),
    }
    weight = op(torch.ones(shape, dtype=torch.float64)).flatten()
    return {name: op(field.contiguous()).flatten() / weight for name, field in index.items()}
