"""The one on-disk format for fields: an xarray Dataset in a NetCDF4 (HDF5) file.

Why NetCDF4 through h5netcdf rather than Zarr: one file per data set is what the user's
SLURM workflows move around (their SDA data are HDF5 files already), any HDF5 tool can
open it, and it needs no directory store on shared file systems.

Layout (every generator and reader produces exactly this, checked by :func:`validate`):

- dims ``trajectory``, ``time``, ``y``, ``x``;
- data variables ``u`` and ``v`` (velocity, float32) with dims
  ``(trajectory, time, y, x)``, optionally ``vorticity`` with the same dims, and
  optionally ``mask`` with dims ``(y, x)`` (1 in fluid, 0 inside a body);
- optionally variables with dims ``(trajectory,)``: what differs between the runs of a
  merged store (``Re``, ``seed``, ...; :func:`concat`);
- coordinates ``time`` (``units`` attribute), ``y`` and ``x`` (physical positions,
  ``units`` attribute) and ``trajectory`` (integer index);
- attributes: ``flow`` (``kolmogorov``, ``cylinder``, ``grf``, ...), ``source``
  (solver or file it came from), ``dt``, ``dx``, ``dy``, ``periodic`` (1 or 0) and
  whatever physics and provenance the producer knows (``Re``, ``nu``, ``seed``, ...).
  ``dt``, ``dx``, ``dy`` (and ``lx``, ``ly`` where recorded) are finite and positive.

What makes a store that cannot lie (written by :func:`save`, checked by :func:`load`):

- every variable is written chunked with HDF5's Fletcher-32 checksum filter
  (``fletcher32``), one checksum per chunk, so a corrupted chunk fails when it is read,
  named by file and variable, instead of loading as wrong numbers;
- each data variable records ``stats_min``, ``stats_max``, ``stats_mean`` and
  ``stats_std`` (float64, over all its values) at save time; :func:`load` recomputes them
  and refuses a variable whose values no longer match (edited in place by a tool that
  kept the checksums right, or written by code that copied stale attributes). The
  tolerance, :data:`STATS_RTOL` of the variable's largest magnitude, covers the rounding
  of float64 sums and nothing else. Stores written before these attributes existed
  carry none and load unchecked.
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
POSITIVE_ATTRS = ("dt", "dx", "dy", "lx", "ly")
"""Attributes that must be finite and positive (``lx``, ``ly`` only where present)."""
STATS = ("min", "max", "mean", "std")
STATS_RTOL = 1e-6
"""Recorded and recomputed statistics agree to this fraction of max |value|."""
CHUNK_BYTES = 4 * 2**20
"""Largest chunk written (bytes): the leading axes are split until a chunk fits."""


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
    for key in POSITIVE_ATTRS:
        if key in ds.attrs:
            check_positive(ds.attrs[key], f"{path}: attribute '{key}'")
    for name in (*VELOCITY, "vorticity"):
        if name in ds and not np.isfinite(ds[name].values).all():
            bad = int((~np.isfinite(ds[name].values)).sum())
            raise ValueError(f"{path}: variable '{name}' holds {bad} NaN or Inf values")


def check_positive(value, what: str) -> float:
    """``value`` as a float; ``ValueError`` ``"<what> must be a finite positive number,
    got <value>"`` for NaN, infinities, zero, negatives and non-numbers."""
    try:
        number = float(np.asarray(value).item())
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a finite positive number, got {value!r}") from None
    if not (np.isfinite(number) and number > 0):
        raise ValueError(f"{what} must be a finite positive number, got {number!r}")
    return number


def statistics(values: np.ndarray) -> dict[str, float]:
    """``stats_min``, ``stats_max``, ``stats_mean``, ``stats_std`` of ``values`` in float64."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {}
    return {f"stats_{key}": float(getattr(np, key)(values)) for key in STATS}


def check_statistics(ds: xr.Dataset, path: str | os.PathLike) -> None:
    """Refuse a data variable whose recorded statistics (see the module docstring) do not
    match its values; variables without recorded statistics pass."""
    for name, variable in ds.data_vars.items():
        recorded = {key: variable.attrs.get(f"stats_{key}") for key in STATS}
        if any(value is None for value in recorded.values()) or variable.dtype.kind not in "fiu":
            continue
        found = statistics(variable.values)
        if not found:
            continue
        scale = max(abs(found["stats_min"]), abs(found["stats_max"]), abs(float(recorded["min"])), abs(float(recorded["max"])))
        tolerance = STATS_RTOL * scale + 1e-300
        for key in STATS:
            if not abs(found[f"stats_{key}"] - float(recorded[key])) <= tolerance:
                raise ValueError(
                    f"{path}: variable '{name}' does not match the statistics recorded when it was written "
                    f"({key} {found[f'stats_{key}']:.9g}, recorded {float(recorded[key]):.9g}); the file was changed since"
                )


def save(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Validate ``ds`` and write it to ``path`` atomically (:func:`write_netcdf`), with
    recorded statistics on each data variable and checksums on every variable."""
    validate(ds, path)
    ds = ds.copy()
    for name, variable in ds.data_vars.items():
        attrs = {key: value for key, value in variable.attrs.items() if not key.startswith("stats_")}
        if variable.dtype.kind in "fiu":
            attrs.update(statistics(variable.values))
        ds[name].attrs = attrs
    return write_netcdf(ds, path, checksums=True)


def checksum_encoding(ds: xr.Dataset) -> dict[str, dict]:
    """h5netcdf encoding that writes every numeric variable chunked with Fletcher-32:
    chunks of at most :data:`CHUNK_BYTES`, whole along the trailing axes (the leading
    ones, trajectory first, are split until a chunk fits)."""
    encoding = {}
    for name, variable in ds.variables.items():
        if variable.dtype.kind not in "fiu" or variable.ndim == 0 or 0 in variable.shape:
            continue
        chunks = list(variable.shape)
        itemsize = variable.dtype.itemsize
        for axis in range(variable.ndim - 1):  # shrink leading axes first
            rest = int(np.prod(chunks[axis + 1:])) * itemsize
            chunks[axis] = max(1, min(chunks[axis], CHUNK_BYTES // max(rest, 1)))
        encoding[name] = {"fletcher32": True, "chunksizes": tuple(chunks)}
    return encoding


def write_netcdf(ds: xr.Dataset, path: str | os.PathLike, *, checksums: bool = False) -> Path:
    """Write any Dataset as NetCDF4 to a temporary name beside ``path``, then rename:
    an interrupted write never leaves a half file at ``path``. ``checksums`` writes every
    numeric variable chunked with Fletcher-32 (:func:`checksum_encoding`)."""
    if checksums:
        ds = ds.copy()
        for variable in ds.variables.values():
            variable.encoding = {key: value for key, value in variable.encoding.items() if key not in ("chunksizes", "fletcher32", "contiguous", "chunks", "preferred_chunks")}
        encoding = checksum_encoding(ds)
    else:
        encoding = None
    return atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf", encoding=encoding))


def load(path: str | os.PathLike) -> xr.Dataset:
    """Open a store file fully into memory and validate it.

    Each variable is read on its own, so a chunk that fails its checksum (or cannot be
    read for any other reason) is named with its variable.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable NetCDF4 store, a variable cannot be read
            (a corrupted chunk), the store breaks the layout, or a variable no longer
            matches its recorded statistics.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        opened = xr.open_dataset(path, engine="h5netcdf")
    except Exception as error:  # h5py/h5netcdf raise many types for corrupt files
        raise ValueError(f"{path}: not a readable NetCDF4 file ({type(error).__name__}: {error})") from None
    with opened as ds:
        for name in ds.variables:
            try:
                ds[name].load()
            except Exception as error:  # OSError from HDF5's filters for a failed checksum
                raise ValueError(f"{path}: variable '{name}' cannot be read, its data are corrupt ({type(error).__name__}: {error})") from None
        ds = ds.load()
    validate(ds, path)
    check_statistics(ds, path)
    return ds


def concat(paths: list[str | os.PathLike]) -> xr.Dataset:
    """Stores of the same flow and grid, their trajectories stacked in order.

    For data generated in parallel runs (one seed per process) or at several parameters
    (one Reynolds number per run). ``source`` lists every file. An attribute with the
    same value in every file stays an attribute; one whose values differ (``Re``, ``nu``,
    ``strouhal``, ``seed``, ...) becomes a variable over ``trajectory``
    (:func:`per_trajectory`), so the merged store never claims the first file's value for
    every trajectory.

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
    attrs, variables = per_trajectory(stores)
    merged = merged.drop_vars([name for name in variables if name in merged.variables])
    merged.attrs = {**attrs, "source": "; ".join(f"{p}: {ds.attrs.get('source')}" for p, ds in zip(paths, stores))}
    for name, values in variables.items():
        merged[name] = ("trajectory", values, {"long_name": f"{name} of each trajectory (the files merged had different values)"})
    return merged


def per_trajectory(stores: list[xr.Dataset]) -> tuple[dict, dict[str, np.ndarray]]:
    """The attributes of ``stores`` merged along ``trajectory``: ``(attrs, variables)``.

    A key whose value is the same attribute in every store is kept in ``attrs``. Every
    other key (an attribute that differs, is missing somewhere, or is already a variable
    over ``trajectory`` in a merged input) gives one value per trajectory, in
    ``variables``: integers as int64, other numbers as float64 (NaN where a store lacks
    the key), anything else as strings ("" where missing). ``source`` is left to the caller.
    """

    def values_of(ds: xr.Dataset, key: str) -> list:
        if key in ds.data_vars and ds[key].dims == ("trajectory",):
            return list(ds[key].values)
        return [ds.attrs[key]] * ds.sizes["trajectory"] if key in ds.attrs else [None] * ds.sizes["trajectory"]

    def same(a, b) -> bool:
        return type(a) is type(b) and np.array_equal(np.asarray(a), np.asarray(b))

    keys = [key for ds in stores for key in (*ds.attrs, *(n for n in ds.data_vars if ds[n].dims == ("trajectory",)))]
    attrs, variables = {}, {}
    for key in dict.fromkeys(keys):
        if key == "source":
            continue
        first = stores[0].attrs.get(key)
        if all(key in ds.attrs and key not in ds.data_vars and same(ds.attrs[key], first) for ds in stores):
            attrs[key] = first
            continue
        values = [value for ds in stores for value in values_of(ds, key)]
        numeric = all(value is None or (np.ndim(value) == 0 and np.asarray(value).dtype.kind in "fiub") for value in values)
        if numeric and None not in values and all(np.asarray(value).dtype.kind in "iub" for value in values):
            variables[key] = np.array([int(value) for value in values], dtype=np.int64)
        elif numeric:
            variables[key] = np.array([np.nan if value is None else float(value) for value in values])
        else:
            variables[key] = np.array(["" if value is None else str(value) for value in values])
    return attrs, variables
