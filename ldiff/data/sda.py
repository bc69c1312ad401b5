r"""Reader for the HDF5 trajectory files of score-based data assimilation (SDA).

SDA (Rozet & Louppe 2023, "Score-based Data Assimilation", NeurIPS,
https://arxiv.org/abs/2306.10574) stores its Kolmogorov-flow data as one HDF5 file per
split (``train.h5``, ``valid.h5``, ``test.h5``), each with a single float32 dataset ``x``
of shape (N, T, C, H, W) = (trajectories, 64 frames, 2 velocity components, 64, 64):
jax-cfd simulations of :math:`\partial_t u + u\cdot\nabla u = -\nabla p + \nu \Delta u +
\sin(4y)\,e_x - 0.1\,u` on the periodic square :math:`[0, 2\pi)^2` at Re = 1000, 256^2
cells coarsened 4x, 0.2 time units between frames. Those are the reader's defaults.

Other producers permute the axes, so the layout is an explicit argument: a permutation of
the letters N (trajectory), T (time), C (component: u then v), H (rows, the store's ``y``)
and W (columns, the store's ``x``). Nothing in the file says which spatial axis is which;
note that jax-cfd indexes its arrays ``[x, y]``, so for SDA's own files the layout
``N,T,C,W,H`` puts the store's ``y`` along the forcing's wavevector, while ``N,T,C,H,W``
(the default) keeps the arrays as SDA's code sees them.

Nodes are placed at cell centres, :math:`x_i = (i + 1/2)\,L_x / W`; jax-cfd's staggering
of u and v by half a cell is not recorded in SDA's files. Times count from the first
stored frame.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

from ldiff.data.store import make_dataset

LAYOUT_LETTERS = "NTCHW"
CANONICAL = "N,T,C,H,W"


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


def read_sda_h5(
    path: str | os.PathLike,
    layout: str = CANONICAL,
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
        layout: axis letters of ``x``, see :func:`parse_layout`.
        dt: time between frames.
        lx, ly: domain size along W (``x``) and H (``y``).
        periodic: 1 for a periodic domain.
        flow: the store's ``flow`` attribute.

    Returns:
        Dataset with ``u``, ``v`` of shape (N, T, H, W) and attributes ``layout`` and
        ``source`` (the file) besides the store's required ones.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: naming the file, for an unreadable or truncated file, no dataset
            ``x``, a rank other than 5, a C axis of size other than 2, or NaN/Inf.
    """
    path = Path(path)
    perm = parse_layout(layout)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    x = _read_x(path)
    if x.ndim != len(LAYOUT_LETTERS):
        raise ValueError(f"{path}: dataset 'x' has shape {x.shape}, rank {x.ndim} but layout {layout!r} has rank 5")
    x = x.transpose(perm)
    if x.shape[2] != 2:
        raise ValueError(f"{path}: axis C of layout {layout!r} has size {x.shape[2]}, expected 2 (u, v)")
    for component, name in enumerate(("u", "v")):
        bad = int((~np.isfinite(x[:, :, component])).sum())
        if bad:
            raise ValueError(f"{path}: variable '{name}' holds {bad} NaN or Inf values")
    n_time, height, width = x.shape[1], x.shape[3], x.shape[4]
    dx, dy = lx / width, ly / height
    attrs = {
        "flow": flow,
        "source": str(path),
        "layout": ",".join(_letters(layout)),
        "dt": float(dt),
        "dx": dx,
        "dy": dy,
        "periodic": int(periodic),
    }
    return make_dataset(
        x[:, :, 0],
        x[:, :, 1],
        x=(np.arange(width) + 0.5) * dx,
        y=(np.arange(height) + 0.5) * dy,
        time=np.arange(n_time) * dt,
        attrs=attrs,
    )


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
