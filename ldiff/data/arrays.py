r"""Reader for plain velocity arrays the user has already converted (``import-arrays``).

One array holds the velocity of every frame, in one of two shapes:

- rank 3, (T*2, H, W): one trajectory whose frames are interleaved by component,
  ``u_0, v_0, u_1, v_1, ...`` (component fastest), i.e. ``array[2 t + c]`` is component
  ``c`` (0 = u, 1 = v) of frame ``t``: the channel order of ldiff's own fields
  (:mod:`ldiff.physics`);
- rank 5, (N, T, 2, H, W): trajectories, frames, components (u then v), rows, columns,
  or any permutation of these axes named by ``layout`` (letters N, T, C, H, W as for
  :func:`ldiff.data.sda.parse_layout`).

Rows are the store's ``y`` and columns its ``x``. For rank 3 the layout is ``TC,H,W``
(the default) or ``TC,W,H`` (arrays indexed [x, y], as jax-cfd's and SDA's are: Rozet &
Louppe 2023, arXiv:2306.10574). Nothing in a plain array records the grid, so the origin
and spacing come from the caller: node ``(j, i)`` is at
:math:`(x_0 + i\,d_x,\ y_0 + j\,d_y)` and frame ``t`` at time :math:`t\,d_t`.

File types, by suffix: ``.npy`` (the array itself, read without pickles), ``.h5`` /
``.hdf5`` (the dataset named by ``key``, or the file's only dataset), ``.nc`` (the
variable named by ``key``, or the file's only data variable).

The layout is checked against the data as for SDA's files: when the transposed reading is
clearly divergence-free and the given one is not (relative central-difference
divergence, :func:`ldiff.data.sda.relative_divergence`, on the periodic grid if
``periodic`` else on interior nodes) a :class:`~ldiff.data.sda.LayoutWarning` says so;
the layout is still obeyed. The store also holds the vorticity
:math:`\partial_x v - \partial_y u` (:func:`ldiff.physics.vorticity`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

from ldiff.data.sda import check_finite, normalise_layout, orientation_divergences, parse_layout, swap_spatial, velocity_store, warn_if_transposed
from ldiff.data.store import check_positive

SUFFIXES = (".npy", ".h5", ".hdf5", ".nc")
INTERLEAVED = ("TC,H,W", "TC,W,H")


def read_arrays(
    path: str | os.PathLike,
    *,
    x0: float,
    y0: float,
    dx: float,
    dy: float,
    dt: float,
    key: str | None = None,
    layout: str | None = None,
    periodic: bool = False,
    flow: str = "unknown",
) -> xr.Dataset:
    """Read a velocity array of ``path`` into a store Dataset.

    Args:
        path: ``.npy``, ``.h5``/``.hdf5`` or ``.nc`` file.
        x0, y0: position of node (0, 0).
        dx, dy, dt: grid spacings and time between frames, finite and positive.
        key: dataset (HDF5) or variable (NetCDF) to read; the only one if None.
        layout: ``TC,H,W`` (default) or ``TC,W,H`` for rank 3, a permutation of N, T,
            C, H, W (default ``N,T,C,H,W``) for rank 5.
        periodic: the store's ``periodic`` attribute.
        flow: the store's ``flow`` attribute.

    Returns:
        Dataset with ``u``, ``v``, ``vorticity`` of shape (N, T, H, W).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: naming the file (and the key or parameter): an unknown suffix, an
            unreadable file, a missing key, no single array without a key, a shape
            other than the two above, a layout not of the array's rank, NaN/Inf, or a
            ``dx``, ``dy``, ``dt`` that is not finite and positive (``x0``, ``y0``: finite).

    Warns:
        LayoutWarning: the data look transposed with respect to ``layout``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{path}: unknown file type {path.suffix!r} (expected {', '.join(SUFFIXES)})")
    dx, dy, dt = (check_positive(value, f"{path}: {name}") for name, value in (("dx", dx), ("dy", dy), ("dt", dt)))
    for name, value in (("x0", x0), ("y0", y0)):
        if not math.isfinite(float(value)):
            raise ValueError(f"{path}: {name} must be a finite number, got {value!r}")
    array, chosen = _read(path, key)
    name = "" if chosen is None else f" {chosen!r}"
    x, letters = _to_ntchw(array, path, name, layout)
    check_finite(x, path)
    height, width = x.shape[3:]
    as_read, transposed = orientation_divergences(x, (dx, dy), (dx, dy), bool(periodic))
    warn_if_transposed(path, letters, _swap(letters), as_read, transposed)
    attrs = {
        "flow": flow,
        "source": str(path) if chosen is None else f"{path}:{chosen}",
        "layout": letters,
        "dt": dt,
        "dx": dx,
        "dy": dy,
        "periodic": int(bool(periodic)),
    }
    return velocity_store(x, float(x0) + np.arange(width) * dx, float(y0) + np.arange(height) * dy, attrs, (as_read, transposed))


def _swap(letters: str) -> str:
    return {"TC,H,W": "TC,W,H", "TC,W,H": "TC,H,W"}.get(letters) or swap_spatial(letters)


def _to_ntchw(array: np.ndarray, path: Path, name: str, layout: str | None) -> tuple[np.ndarray, str]:
    """``array`` as (N, T, 2, H, W) and the layout letters that read it."""
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{path}: array{name} has dtype {array.dtype}, expected numbers")
    expected = "expected (T*2, H, W) with frames interleaved u, v, u, v, ... or (N, T, 2, H, W)"
    if array.ndim == 3:
        letters = INTERLEAVED[0] if layout is None else ",".join(part.strip().upper() for part in layout.split(","))
        if letters not in INTERLEAVED:
            raise ValueError(f"{path}: layout {layout!r} does not fit array{name} of shape {array.shape}: for rank 3 use {' or '.join(INTERLEAVED)}")
        if array.shape[0] % 2 or array.shape[0] == 0:
            raise ValueError(f"{path}: array{name} has shape {array.shape}, whose first axis ({array.shape[0]}) is not an even number of u, v frames; {expected}")
        x = array.reshape(1, array.shape[0] // 2, 2, *array.shape[1:])
        return (x if letters == INTERLEAVED[0] else x.swapaxes(3, 4)), letters
    if array.ndim == 5:
        letters = normalise_layout("N,T,C,H,W" if layout is None else layout)
        x = array.transpose(parse_layout(letters))
        if x.shape[2] != 2:
            raise ValueError(f"{path}: array{name} has shape {array.shape}: axis C of layout {letters!r} has size {x.shape[2]}, expected 2 (u, v)")
        return x, letters
    raise ValueError(f"{path}: array{name} has shape {array.shape}, rank {array.ndim}; {expected}")


def _read(path: Path, key: str | None) -> tuple[np.ndarray, str | None]:
    """The array and its dataset or variable name (None for a .npy file)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if key is not None:
            raise ValueError(f"{path}: a .npy file holds one array; --key {key!r} does not apply")
        try:
            return np.load(path, allow_pickle=False), None
        except Exception as error:  # ValueError for pickles and bad headers, OSError, EOFError for truncation
            raise ValueError(f"{path}: not a readable .npy file ({type(error).__name__}: {error})") from None
    if suffix == ".nc":
        return _read_nc(path, key)
    return _read_h5(path, key)


class _Refused(ValueError):
    """A readable file without the array asked for (not re-worded as unreadable)."""


def _pick(path: Path, key: str | None, names: list[str], kind: str) -> str:
    """``key``, or the only one of ``names`` when it is None."""
    listing = ", ".join(sorted(names)) or "none"
    if key is None:
        if len(names) != 1:
            raise _Refused(f"{path}: holds {len(names)} {kind}s ({listing}); name one with --key")
        return names[0]
    if key not in names:
        raise _Refused(f"{path}: no {kind} {key!r} ({kind}s: {listing})")
    return key


def _read_h5(path: Path, key: str | None) -> tuple[np.ndarray, str]:
    try:
        with h5py.File(path, "r") as file:
            names: list[str] = []
            file.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
            name = _pick(path, key, names, "dataset")
            return np.asarray(file[name][()]), name
    except _Refused:
        raise
    except Exception as error:  # h5py raises OSError, KeyError, RuntimeError, ... for corrupt files
        raise ValueError(f"{path}: not a readable HDF5 file ({type(error).__name__}: {error})") from None


def _read_nc(path: Path, key: str | None) -> tuple[np.ndarray, str]:
    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            name = _pick(path, key, [str(name) for name in ds.data_vars], "variable")
            return np.asarray(ds[name].values), name
    except _Refused:
        raise
    except Exception as error:  # h5py/h5netcdf raise many types for corrupt files
        raise ValueError(f"{path}: not a readable NetCDF4 file ({type(error).__name__}: {error})") from None
