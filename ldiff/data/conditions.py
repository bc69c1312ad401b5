r"""Condition channels: static fields the epsilon model sees beside the noisy state.

A conditional prior :math:`p(x \mid c)` learns :math:`\varepsilon(x_t, t, c)`; here ``c``
is known physics that does not change in time, stacked as channels of shape
(C_cond, H, W) and concatenated to the network input. Each channel is computed from the
store alone (its variables, coordinates and attributes), so training and inference,
which both read a store, build identical channels.

- ``mask``: 1 in fluid, 0 inside the body. The store's ``mask`` variable when present;
  otherwise a disc from the attributes ``cylinder_x``, ``cylinder_y``,
  ``cylinder_radius``: :math:`m(x, y) = 1` where :math:`(x - x_c)^2 + (y - y_c)^2 > r^2`.
- ``forcing``: the Kolmogorov body force's profile :math:`\sin(k y)` (Obukhov 1983,
  "Kolmogorov flow and laboratory simulation of it", Russ. Math. Surveys 38; the force
  is :math:`f = \sin(k y)\, e_x`), with :math:`k` from the attribute
  ``forcing_wavenumber`` (default 4, as in SDA) and ``y`` the store's coordinate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor

DEFAULT_FORCING_WAVENUMBER = 4.0
CYLINDER_ATTRS = ("cylinder_x", "cylinder_y", "cylinder_radius")


def mask(ds: xr.Dataset) -> Tensor:
    """Fluid mask, shape (1, H, W), float32: 1 in fluid, 0 in the body."""
    if "mask" in ds:
        return _channel(ds["mask"].transpose("y", "x").values)
    missing = [key for key in CYLINDER_ATTRS if key not in ds.attrs]
    if missing:
        raise ValueError(f"{ds.attrs.get('source', 'dataset')}: no 'mask' variable and no attribute {missing[0]!r}")
    xc, yc, radius = (float(ds.attrs[key]) for key in CYLINDER_ATTRS)
    x, y = ds["x"].values[None, :], ds["y"].values[:, None]
    return _channel((x - xc) ** 2 + (y - yc) ** 2 > radius**2)


def forcing(ds: xr.Dataset) -> Tensor:
    """Kolmogorov forcing profile sin(k y), shape (1, H, W), float32."""
    k = float(ds.attrs.get("forcing_wavenumber", DEFAULT_FORCING_WAVENUMBER))
    profile = np.sin(k * ds["y"].values)[:, None]
    return _channel(np.broadcast_to(profile, (ds.sizes["y"], ds.sizes["x"])))


CONDITIONS: dict[str, Callable[[xr.Dataset], Tensor]] = {"mask": mask, "forcing": forcing}


def build_conditions(ds: xr.Dataset, names: Sequence[str]) -> Tensor:
    """Stack the named condition channels, in order.

    Args:
        ds: a store Dataset.
        names: keys of :data:`CONDITIONS`.

    Returns:
        Tensor of shape (len(names), H, W), float32.
    """
    unknown = [name for name in names if name not in CONDITIONS]
    if unknown:
        raise ValueError(f"unknown condition {unknown[0]!r}; valid: {', '.join(CONDITIONS)}")
    channels = [CONDITIONS[name](ds) for name in names]
    return torch.cat(channels) if channels else torch.zeros(0, ds.sizes["y"], ds.sizes["x"])


def _channel(values: np.ndarray) -> Tensor:
    return torch.tensor(np.asarray(values, dtype=np.float32))[None]
