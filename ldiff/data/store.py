"""The one on-disk format for fields: an xarray Dataset in a NetCDF4 (HDF5) file.

Why NetCDF4 through h5netcdf rather than Zarr: one file per data set is what the user's
SLURM workflows move around (their SDA data are HDF5 files already), any HDF5 tool can
open it, and it needs no directory store on shared file systems.

Layout (every generator and reader produces exactly this, checked by :func:`validate`):

- dims ``trajectory``, ``time``, ``y``, ``x``;
- data variables ``u`` and ``v`` (velocity, float32) with dims
  ``(trajectory, time, y, x)``, optionally ``vorticity`` with the same dims, and
  optionally ``mask`` with dims ``(y, x)`` (1 in fluid, 0 inside a body);
- coordinates ``time`` (``units`` attribute), ``y`` and ``x`` (physical positions,
  ``units`` attribute) and ``trajectory`` (integer index);
- attributes: ``flow`` (``kolmogorov``, ``cylinder``, ``grf``, ...), ``source``
  (solver or file it came from), ``dt``, ``dx``, ``dy``, ``periodic`` (1 or 0) and
  whatever physics and provenance the producer knows (``Re``, ``nu``, ``seed``, ...).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from ldiff.files import atomic_write

DIMS = ("trajectory", "time", "y", "x")
VELOCITY = ("u", "v")
REQUIRED_ATTRS = ("flow", "source", "dt", "dx", "dy", "periodic")


def make_dataset(
    u: np.ndarray,
    v: np.ndarray,
    *,
    x: np.ndarray,
    y: np.ndarray,
    time: np.ndarray,
    attrs: dict,
    vorticity: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    length_units: str = "1",
    time_units: str = "1",
) -> xr.Dataset:
    """Build a store Dataset from arrays of shape (trajectory, time, y, x).

    Args:
        u, v: velocity components, shape (N, T, H, W), in physical units.
        x, y: node positions, shapes (W,) and (H,).
        time: times of the frames, shape (T,).
        attrs: physics and provenance; must contain :data:`REQUIRED_ATTRS`.
        vorticity: optional, shape (N, T, H, W).
        mask: optional fluid mask, shape (H, W), 1 in fluid.
    """
    data_vars = {
        "u": (DIMS, np.asarray(u, dtype=np.float32), {"units": f"{length_units}/{time_units}"}),
        "v": (DIMS, np.asarray(v, dtype=np.float32), {"units": f"{length_units}/{time_units}"}),
    }
    if vorticity is not None:
        data_vars["vorticity"] = (DIMS, np.asarray(vorticity, dtype=np.float32), {"units": f"1/{time_units}"})
    if mask is not None:
        data_vars["mask"] = (("y", "x"), np.asarray(mask, dtype=np.float32), {"units": "1"})
    coords = {
        "trajectory": ("trajectory", np.arange(np.shape(u)[0])),
        "time": ("time", np.asarray(time, dtype=np.float64), {"units": time_units}),
        "y": ("y", np.asarray(y, dtype=np.float64), {"units": length_units}),
        "x": ("x", np.asarray(x, dtype=np.float64), {"units": length_units}),
    }
    ds = xr.Dataset(data_vars, coords=coords, attrs=dict(attrs))
    validate(ds, "<in memory>")
    return ds


def validate(ds: xr.Dataset, path: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming ``path`` and the field if ``ds`` breaks the layout."""
    for name in VELOCITY:
        if name not in ds:
            raise ValueError(f"{path}: missing data variable '{name}'")
        if tuple(ds[name].dims) != DIMS:
            raise ValueError(f"{path}: variable '{name}' has dims {ds[name].dims}, expected {DIMS}")
    for key in REQUIRED_ATTRS:
        if key not in ds.attrs:
            raise ValueError(f"{path}: missing attribute '{key}'")
    for name in (*VELOCITY, "vorticity"):
        if name in ds and not np.isfinite(ds[name].values).all():
            bad = int((~np.isfinite(ds[name].values)).sum())
            raise ValueError(f"{path}: variable '{name}' holds {bad} NaN or Inf values")


def save(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Validate ``ds`` and write it to ``path`` atomically (:func:`write_netcdf`)."""
    validate(ds, path)
    return write_netcdf(ds, path)


def write_netcdf(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write any Dataset as NetCDF4 to a temporary name beside ``path``, then rename:
    an interrupted write never leaves a half file at ``path``."""
    return atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))


def load(path: str | os.PathLike) -> xr.Dataset:
    """Open a store file fully into memory and validate it.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable NetCDF4 store or breaks the layout.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            ds = ds.load()
    except Exception as error:  # h5py/h5netcdf raise many types for corrupt files
        raise ValueError(f"{path}: not a readable NetCDF4 file ({type(error).__name__}: {error})") from None
    validate(ds, path)
    return ds


def concat(paths: list[str | os.PathLike]) -> xr.Dataset:
    """Stores of the same flow and grid, their trajectories stacked in order.

    For data generated in parallel runs (for example one seed per process). Attributes
    are the first file's, with ``source`` listing every file and per-file ``seed`` values
    joined.

    Raises:
        ValueError: naming the first file whose grid, times or physics differ.
    """
    if not paths:
        raise ValueError("concat: no store files given")
    stores = [load(path) for path in paths]
    first = stores[0]
    for path, ds in zip(paths[1:], stores[1:]):
        for coord in ("time", "y", "x"):
            if ds.sizes[coord] != first.sizes[coord] or not np.allclose(ds[coord].values, first[coord].values):
                raise ValueError(f"{path}: coordinate '{coord}' differs from {paths[0]}")
        for key in ("flow", "dt", "dx", "dy", "periodic"):
            if ds.attrs.get(key) != first.attrs.get(key):
                raise ValueError(f"{path}: attribute '{key}' is {ds.attrs.get(key)!r}, {paths[0]} has {first.attrs.get(key)!r}")
    merged = xr.concat(stores, dim="trajectory", data_vars="minimal", coords="minimal", compat="override", join="override")
    merged = merged.assign_coords(trajectory=np.arange(merged.sizes["trajectory"]))
    merged.attrs = dict(first.attrs)
    merged.attrs["source"] = "; ".join(f"{p}: {ds.attrs.get('source')}" for p, ds in zip(paths, stores))
    if all("seed" in ds.attrs for ds in stores):
        merged.attrs["seed"] = ",".join(str(ds.attrs["seed"]) for ds in stores)
    return merged
