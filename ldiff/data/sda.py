r"""Reader for the HDF5 trajectory files of score-based data assimilation (SDA).

SDA (Rozet & Louppe 2023, "Score-based Data Assimilation", NeurIPS,
https://arxiv.org/abs/2306.10574) stores its Kolmogorov-flow data as one HDF5 file per
split (``train.h5``, ``valid.h5``, ``test.h5``), each with a single float32 dataset ``x``
of shape (N, T, 2, X, Y) = (trajectories, 64 frames, velocity components u then v, 64,
64): jax-cfd simulations of :math:`\partial_t u + u\cdot\nabla u = -\nabla p + \nu \Delta u +
\sin(4y)\,e_x - 0.1\,u` on the periodic square :math:`[0, 2\pi)^2` at Re = 1000, 256^2
cells block-averaged 4x, 0.2 time units between frames. Those are the reader's defaults.

The [x, y] trap. jax-cfd indexes its arrays ``[x, y]``: the fourth axis of ``x`` is x
and the fifth is y. ldiff's stores are ``[y, x]`` (rows y, columns x), so reading SDA's
files with the layout ``N,T,C,H,W`` transposes the flow: every vorticity map is the
mirror image of the truth (correlation 0 with it) and the field is far from
divergence-free. The right layout for SDA's own files is ``N,T,C,W,H``. Other producers
store ``[y, x]``, and nothing in the file says which, so by default
(``layout=None``) the reader decides from the data: an incompressible flow is
divergence-free in its true orientation only.

The test. For a candidate orientation with rows y (spacing :math:`d_y = L_y / H`) and
columns x (:math:`d_x = L_x / W`), the second-order central differences

.. math:: D_x f_{j,i} = \frac{f_{j,i+1} - f_{j,i-1}}{2 d_x}, \qquad
          D_y f_{j,i} = \frac{f_{j+1,i} - f_{j-1,i}}{2 d_y}

(indices modulo the grid on a periodic domain; interior nodes only otherwise) give the
discrete divergence :math:`\delta = D_x u + D_y v` and the scale-free *relative
divergence*

.. math:: r = \frac{\operatorname{rms}(\delta)}
          {\operatorname{rms}\big(\sqrt{(D_x u)^2 + (D_y u)^2 + (D_x v)^2 + (D_y v)^2}\big)},

the rms over all nodes and frames (at most :data:`ORIENTATION_FRAMES` frames, evenly
spaced through the file). The denominator is the same in both orientations (it only
reorders the four terms), so :math:`r` compares them directly. White noise has
:math:`r \approx 1/\sqrt 2`; so has a divergence-free isotropic field read transposed
(there :math:`\delta = \partial_y u + \partial_x v`, and
:math:`E(\partial_y u + \partial_x v)^2 = \tfrac12 E|\nabla\mathbf u|^2`). A field built
from a stream function with these same differences has :math:`r` at float32 rounding
(1e-7); SDA-like data (block means of a solenoidal 256^2 or 128^2 field, from
:mod:`ldiff.data.kolmogorov`) measured 0.021 and 0.029 in the right orientation and
0.78 and 0.71 transposed.

An orientation is *clearly* divergence-free when its :math:`r` is below
:data:`CLEAR_RATIO` times the other's **and** below :data:`DIVERGENCE_TOLERANCE`
(both 0.1: three times the SDA-like values above, a seventh of the transposed ones).
With no layout, the reader takes the clearly divergence-free orientation and refuses the
file when neither is (noise, a constant field, a grid under 3 nodes a side). An explicit
layout is obeyed; when the data contradict it (the other orientation clearly
divergence-free) the reader warns (:class:`LayoutWarning`).

Other layouts: ``layout`` is a permutation of the letters N (trajectory), T (time), C
(component: u then v), H (rows, the store's ``y``) and W (columns, the store's ``x``).
With ``layout=None`` the first three axes are N, T, C.

Nodes are placed at cell centres, :math:`x_i = (i + 1/2)\,L_x / W`; jax-cfd's staggering
of u and v by half a fine cell is not recorded in SDA's files (block means put them an
eighth of a coarse cell off the centres). Times count from the first stored frame. The
store also holds the vorticity :math:`\omega = \partial_x v - \partial_y u`, computed by
:func:`ldiff.physics.vorticity` (spectral on a periodic domain, finite differences
otherwise).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch
import xarray as xr

from ldiff.data.store import check_positive, make_dataset
from ldiff.physics import vorticity

LAYOUT_LETTERS = "NTCHW"
CANONICAL = "N,T,C,H,W"
TRANSPOSED = "N,T,C,W,H"
"""SDA's and jax-cfd's own layout: arrays indexed [x, y]."""
CLEAR_RATIO = 0.1
DIVERGENCE_TOLERANCE = 0.1
"""An orientation is clearly divergence-free when its relative divergence is below
``CLEAR_RATIO`` times the other's and below ``DIVERGENCE_TOLERANCE`` (module docstring)."""
ORIENTATION_FRAMES = 256
"""Frames, evenly spaced through the file, on which the orientation is measured."""


class LayoutWarning(UserWarning):
    """An explicit layout that the data contradict (the spatial axes look swapped)."""


def parse_layout(layout: str) -> tuple[int, ...]:
    """Axis order that brings an array of ``layout`` to (N, T, C, H, W).

    Args:
        layout: comma-separated permutation of N, T, C, H, W, e.g. ``"T,N,C,H,W"``.

    Returns:
        ``perm`` such that ``array.transpose(perm)`` has layout N, T, C, H, W.
    """
    letters = _letters(layout)
    return tuple(letters.index(letter) for letter in LAYOUT_LETTERS)


def _letters(layout: str) -> list[str]:
    letters = [letter.strip().upper() for letter in layout.split(",")]
    if sorted(letters) != sorted(LAYOUT_LETTERS):
        raise ValueError(f"layout {layout!r} is not a permutation of {CANONICAL}")
    return letters


def normalise_layout(layout: str) -> str:
    """``layout`` checked and written canonically: upper-case letters, comma-separated."""
    return ",".join(_letters(layout))


def swap_spatial(layout: str) -> str:
    """``layout`` with H and W exchanged: the same file read transposed."""
    return ",".join({"H": "W", "W": "H"}.get(letter, letter) for letter in _letters(layout))


def relative_divergence(u: np.ndarray, v: np.ndarray, dx: float, dy: float, periodic: bool = True) -> float:
    r"""The relative divergence :math:`r` of the module docstring.

    Args:
        u, v: velocity components, shape (..., H, W), rows y and columns x.
        dx, dy: grid spacings along W and H.
        periodic: central differences wrap around (else interior nodes only).

    Returns:
        :math:`\operatorname{rms}(D_x u + D_y v) / \operatorname{rms}|\nabla \mathbf u|`,
        NaN where it is undefined (fewer than 3 nodes along an axis, or a constant field).
    """
    if min(u.shape[-2:]) < 3:
        return math.nan
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    ux, uy = _central(u, dx, dy, periodic)
    vx, vy = _central(v, dx, dy, periodic)
    gradient = np.mean(ux**2 + uy**2 + vx**2 + vy**2)
    if not gradient > 0:
        return math.nan
    return float(math.sqrt(np.mean((ux + vy) ** 2) / gradient))


def _central(f: np.ndarray, dx: float, dy: float, periodic: bool) -> tuple[np.ndarray, np.ndarray]:
    """(D_x f, D_y f), central differences on the last two axes (y, x)."""
    if periodic:
        fx = (np.roll(f, -1, axis=-1) - np.roll(f, 1, axis=-1)) / (2 * dx)
        fy = (np.roll(f, -1, axis=-2) - np.roll(f, 1, axis=-2)) / (2 * dy)
        return fx, fy
    fx = (f[..., 1:-1, 2:] - f[..., 1:-1, :-2]) / (2 * dx)
    fy = (f[..., 2:, 1:-1] - f[..., :-2, 1:-1]) / (2 * dy)
    return fx, fy


def clearly_smaller(r: float, other: float) -> bool:
    """``r`` is clearly divergence-free next to ``other`` (see :data:`CLEAR_RATIO`)."""
    return bool(r < CLEAR_RATIO * other and r < DIVERGENCE_TOLERANCE)


def orientation_divergences(
    x: np.ndarray, spacing: tuple[float, float], spacing_transposed: tuple[float, float], periodic: bool
) -> tuple[float, float]:
    """Relative divergences of ``x`` (N, T, 2, A, B) read with rows A and columns B, grid
    spacings ``spacing`` = (dx, dy), and read transposed (rows B, columns A) with
    ``spacing_transposed``."""
    count = x.shape[0] * x.shape[1]
    chosen = np.unique(np.linspace(0, count - 1, min(count, ORIENTATION_FRAMES)).round().astype(int))
    frames = x[chosen // x.shape[1], chosen % x.shape[1]]  # copies the chosen frames only
    u, v = frames[:, 0], frames[:, 1]
    as_read = relative_divergence(u, v, *spacing, periodic)
    transposed = relative_divergence(u.swapaxes(-1, -2), v.swapaxes(-1, -2), *spacing_transposed, periodic)
    return as_read, transposed


def read_sda_h5(
    path: str | os.PathLike,
    layout: str | None = None,
    *,
    dt: float = 0.2,
    lx: float = 2 * math.pi,
    ly: float = 2 * math.pi,
    periodic: int = 1,
    flow: str = "kolmogorov",
) -> xr.Dataset:
    """Read dataset ``x`` of an SDA HDF5 file into a store Dataset.

    Args:
        path: the HDF5 file.
        layout: axis letters of ``x``, see :func:`parse_layout`; ``None`` (the default)
            reads the first three axes as N, T, C and decides which of the last two is x
            from the divergence (module docstring): ``N,T,C,W,H`` for SDA's own files.
        dt: time between frames.
        lx, ly: domain size along the store's ``x`` (W) and ``y`` (H).
        periodic: 1 for a periodic domain.
        flow: the store's ``flow`` attribute.

    Returns:
        Dataset with ``u``, ``v``, ``vorticity`` of shape (N, T, H, W) and attributes
        ``layout`` (the one that read the file), ``layout_chosen`` (``given`` or
        ``detected``), ``relative_divergence`` and ``relative_divergence_transposed``
        (where defined) and ``source`` (the file), besides the store's required ones.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: naming the file, for an unreadable or truncated file, no dataset
            ``x``, a rank other than 5, a C axis of size other than 2, NaN/Inf, a ``dt``,
            ``lx`` or ``ly`` that is not finite and positive, or (with no layout) a field
            that is clearly divergence-free in neither orientation.

    Warns:
        LayoutWarning: an explicit ``layout`` that the data contradict.
    """
    path = Path(path)
    perm = parse_layout(CANONICAL if layout is None else layout)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    dt, lx, ly = (check_positive(value, f"{path}: {name}") for name, value in (("dt", dt), ("lx", lx), ("ly", ly)))
    shown = layout if layout is not None else CANONICAL
    x = _read_x(path)
    if x.ndim != len(LAYOUT_LETTERS):
        raise ValueError(f"{path}: dataset 'x' has shape {x.shape}, rank {x.ndim} but layout {shown!r} has rank 5")
    x = x.transpose(perm)
    if x.shape[2] != 2:
        raise ValueError(f"{path}: axis C of layout {shown!r} has size {x.shape[2]}, expected 2 (u, v)")
    check_finite(x, path)
    height, width = x.shape[3:]
    as_read, transposed = orientation_divergences(x, (lx / width, ly / height), (lx / height, ly / width), bool(periodic))
    letters = normalise_layout(shown)
    if layout is None:
        if clearly_smaller(transposed, as_read):
            x, letters, (as_read, transposed) = x.swapaxes(3, 4), TRANSPOSED, (transposed, as_read)
        elif not clearly_smaller(as_read, transposed):
            raise ValueError(
                f"{path}: cannot tell which spatial axis is x: relative divergence {as_read:.2g} reading 'x' as "
                f"{CANONICAL} ([y, x] order) and {transposed:.2g} as {TRANSPOSED} ([x, y] order), neither clearly "
                f"divergence-free; give --layout"
            )
    else:
        warn_if_transposed(path, letters, swap_spatial(letters), as_read, transposed)
    height, width = x.shape[3:]
    dx, dy = lx / width, ly / height
    attrs = {
        "flow": flow,
        "source": str(path),
        "layout": letters,
        "layout_chosen": "detected" if layout is None else "given",
        "dt": dt,
        "dx": dx,
        "dy": dy,
        "lx": lx,
        "ly": ly,
        "periodic": int(periodic),
    }
    return velocity_store(x, (np.arange(width) + 0.5) * dx, (np.arange(height) + 0.5) * dy, attrs, (as_read, transposed))


def velocity_store(
    x: np.ndarray, x_nodes: np.ndarray, y_nodes: np.ndarray, attrs: dict, divergences: tuple[float, float]
) -> xr.Dataset:
    """The store of ``x`` (N, T, 2, H, W): u, v, their vorticity (:func:`vorticity_of`),
    frames ``attrs["dt"]`` apart, and the two relative divergences (as read, transposed)
    as attributes where defined."""
    attrs = dict(attrs)
    for key, value in zip(("relative_divergence", "relative_divergence_transposed"), divergences):
        if math.isfinite(value):
            attrs[key] = float(value)
    return make_dataset(
        x[:, :, 0],
        x[:, :, 1],
        vorticity=vorticity_of(x, attrs["dx"], attrs["dy"], bool(attrs["periodic"])),
        x=x_nodes,
        y=y_nodes,
        time=np.arange(x.shape[1]) * attrs["dt"],
        attrs=attrs,
    )


def check_finite(x: np.ndarray, path: Path) -> None:
    """``ValueError`` naming ``path`` and the component if ``x`` (N, T, 2, H, W) holds NaN or Inf."""
    for component, name in enumerate(("u", "v")):
        bad = int((~np.isfinite(x[:, :, component])).sum())
        if bad:
            raise ValueError(f"{path}: variable '{name}' holds {bad} NaN or Inf values")


def warn_if_transposed(path: Path, letters: str, swapped: str, as_read: float, transposed: float) -> None:
    """:class:`LayoutWarning` when the transposed reading (``swapped``) is clearly
    divergence-free and the given one (``letters``) is not."""
    if clearly_smaller(transposed, as_read):
        warnings.warn(
            f"{path}: layout {letters} reads a field of relative divergence {as_read:.2g}, but {swapped} "
            f"reads one of {transposed:.2g}: the spatial axes H and W look swapped",
            LayoutWarning,
            stacklevel=3,
        )


def layout_report(ds: xr.Dataset) -> str:
    """One line on how :func:`read_sda_h5` read the file, e.g. ``read as N,T,C,W,H ([x, y]
    order, detected): relative divergence 1.2e-07 vs 0.71 transposed``."""
    layout = ds.attrs["layout"]
    order = "[y, x]" if layout.index("H") < layout.index("W") else "[x, y]"
    line = f"read as {layout} ({order} order, {ds.attrs.get('layout_chosen', 'given')})"
    if "relative_divergence" in ds.attrs and "relative_divergence_transposed" in ds.attrs:
        line += f": relative divergence {ds.attrs['relative_divergence']:.2g} vs {ds.attrs['relative_divergence_transposed']:.2g} transposed"
    return line


def vorticity_of(x: np.ndarray, dx: float, dy: float, periodic: bool) -> np.ndarray | None:
    """Vorticity of ``x`` (N, T, 2, H, W), trajectory by trajectory; None below 3 nodes a side
    on a non-periodic grid (finite differences need 3)."""
    if not periodic and min(x.shape[3:]) < 3:
        return None
    out = np.empty((x.shape[0], x.shape[1], *x.shape[3:]), dtype=np.float32)
    for n in range(x.shape[0]):
        fields = torch.from_numpy(np.ascontiguousarray(x[n], dtype=np.float64).reshape(1, -1, *x.shape[3:]))
        out[n] = vorticity(fields, dx, dy, periodic)[0].numpy()
    return out


def _read_x(path: Path) -> np.ndarray:
    try:
        with h5py.File(path, "r") as file:
            keys = sorted(file.keys())
            found = "x" in keys and isinstance(file["x"], h5py.Dataset) and file["x"].dtype.kind in "fiu"
            x = file["x"][()] if found else None
    except Exception as error:  # h5py raises OSError, KeyError, RuntimeError, ... for corrupt files
        raise ValueError(f"{path}: not a readable HDF5 file ({type(error).__name__}: {error})") from None
    if x is None:
        raise ValueError(f"{path}: no numeric dataset 'x' (keys: {', '.join(keys) or 'none'})")
    return x
