"""``ReconstructionWriter``: one merged, self-describing NetCDF file from a (distributed)
``trainer.predict``.

Each rank writes its own predictions to a shard (a NetCDF file, data only, normalised
units), all ranks meet at a barrier and compute the run's metrics together (the
InferenceModule's :meth:`~ldiff.lit.inference.InferenceModule.results`, a collective),
and rank 0 merges the shards into one Dataset: items are sorted by their index and
de-duplicated, so every item appears exactly once. The file is written to a temporary
name and renamed, so an interrupted run leaves no half-written file: a run killed
before the rename leaves at most hidden files beside ``output``
(``.<name>.shard-<rank>.nc`` and ``.<name>.<pid>.tmp``), and the next run into the same
``output`` deletes them when it starts (two runs at once into one ``output`` are not
supported). The writer only writes: scoring lives in the InferenceModule.

Layout of the merged file, readable with plain xarray (``units="physical"``, the
default: velocities in the store's units; ``"normalised"`` keeps the prior's units):

- ``recon`` (item, sample, frame, component, y, x) and ``truth`` (item, frame,
  component, y, x), with coordinates ``x``, ``y`` (physical positions), ``component``
  (``u``, ``v``), ``frame_time`` (frame: time since the window's first frame) and, when
  the data came from a store, ``trajectory`` and ``time`` (item: the first frame's time);
- ``observation`` (item, obs): the noisy observations, with the position of each,
  ``obs_x``, ``obs_y``, ``obs_frame``, ``obs_component`` (obs);
- ``regime`` (item, sample): CF flags, ``flag_values`` 0, 1, 2 with ``flag_meanings``
  ``balanced flat diverged``;
- ``diag_<name>`` (evaluation, item, sample): the sampler's per-step diagnostics;
- attributes: the run's settings (:meth:`InferenceModule.experiment`: strategy,
  operator, std, N, steps, K, seed, checkpoint and its SHA-256, ldiff version), its
  metrics as ``metric_<name>``, ``norm_mean`` / ``norm_std`` (the map between the two
  unit systems), ``Conventions``, ``title`` and ``history``.
"""

from __future__ import annotations

import glob
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from lightning.pytorch.callbacks import BasePredictionWriter

from ldiff.data.store import write_netcdf
from ldiff.files import check_output
from ldiff.metrics import REGIMES
from ldiff.observe import positions

RAW_DIMS = {
    "recon": ("item", "sample", "channel", "row", "col"),
    "x": ("item", "channel", "row", "col"),
    "regime": ("item", "sample"),
    "trajectory": ("item",),
    "time": ("item",),
}
UNITS = ("physical", "normalised")


def predictions_to_dataset(predictions: list[dict[str, torch.Tensor]]) -> xr.Dataset:
    """Concatenate predict_step outputs (dicts of tensors, batch first) into a raw shard
    Dataset (normalised units, index dimensions)."""
    merged: dict[str, np.ndarray] = {}
    for key in predictions[0]:
        axis = 1 if key.startswith("diag_") else 0
        merged[key] = torch.cat([p[key].detach().cpu() for p in predictions], dim=axis).numpy()
    index = merged.pop("index")
    data_vars = {}
    for key, value in merged.items():
        if key.startswith("diag_"):
            data_vars[key] = (("evaluation", "item", "sample"), value)
        elif key == "y":
            data_vars["observation"] = (("item", "obs"), value.reshape(value.shape[0], -1))
        else:
            data_vars["truth" if key == "x" else key] = (RAW_DIMS[key], value)
    return xr.Dataset(data_vars, coords={"item": index})


def merge_shards(shards: list[xr.Dataset]) -> xr.Dataset:
    """Concatenate shards along ``item``, sort by item and keep the first of duplicates."""
    ds = xr.concat(shards, dim="item", data_vars="all", coords="different", compat="equals", join="outer")
    ds = ds.sortby("item")
    _, first = np.unique(ds["item"].values, return_index=True)
    return ds.isel(item=first)


def _attr(value: Any) -> Any:
    """A NetCDF attribute: numbers and strings as they are, None as '', the rest as JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    return value if isinstance(value, (int, float, str, np.ndarray)) else json.dumps(value, default=str)


def readable(raw: xr.Dataset, module, units: str = "physical", attrs: dict[str, Any] | None = None) -> xr.Dataset:
    """The merged raw predictions as the self-describing file of the module docstring.

    Args:
        raw: merged shards (:func:`merge_shards`).
        module: the :class:`~ldiff.lit.inference.InferenceModule` that made them (its
            normaliser, grid, coordinates, operator, settings and metrics).
        units: ``physical`` or ``normalised``.
        attrs: extra attributes (the config's own labels).
    """
    if units not in UNITS:
        raise ValueError(f"units: need one of {', '.join(UNITS)}, got {units!r}")
    n_items, k, c, h, w = raw["recon"].shape
    frames = c // 2
    normalizer = module.normalizer_state
    physical = units == "physical" and normalizer is not None
    mean = np.asarray(normalizer["mean"], dtype=np.float64) if normalizer is not None else np.zeros(2)
    std = np.asarray(normalizer["std"], dtype=np.float64) if normalizer is not None else np.ones(2)

    def fields(values: np.ndarray) -> np.ndarray:
        split = values.reshape(*values.shape[:-3], frames, 2, h, w).astype(np.float64)
        if physical:
            split = split * std[:, None, None] + mean[:, None, None]
        return split.astype(np.float32)

    x, y, frame_time, length, time_units = _coordinates(module, h, w, frames)
    velocity_units = f"{length}/{time_units}" if physical else "1 (normalised)"
    coords: dict[str, Any] = {
        "item": raw["item"].values,
        "sample": np.arange(k),
        "frame": np.arange(frames),
        "component": np.array(["u", "v"]),
        "x": ("x", x, {"units": length, "long_name": "streamwise position"}),
        "y": ("y", y, {"units": length, "long_name": "cross-stream position"}),
        "frame_time": ("frame", frame_time, {"units": time_units, "long_name": "time since the window's first frame"}),
    }
    for name in ("trajectory", "time"):
        if name in raw:
            coords[name] = ("item", raw[name].values, {"units": time_units} if name == "time" else {})
    where = positions(module.operator, (c, h, w))
    component = where["component"].round().long().clamp(0, 1).numpy()
    observation = raw["observation"].values.astype(np.float64)
    if physical:
        observation = observation * std[component] + mean[component]
    coords.update({
        "obs_x": ("obs", np.interp(where["col"].numpy(), np.arange(w), x), {"units": length}),
        "obs_y": ("obs", np.interp(where["row"].numpy(), np.arange(h), y), {"units": length}),
        "obs_frame": ("obs", where["frame"].numpy()),
        "obs_component": ("obs", np.array(["u", "v"])[component]),
    })
    dims = ("item", "sample", "frame", "component", "y", "x")
    data_vars: dict[str, Any] = {
        "recon": (dims, fields(raw["recon"].values), {"units": velocity_units, "long_name": "posterior samples of the velocity"}),
        "observation": (("item", "obs"), observation.astype(np.float32), {"units": velocity_units, "long_name": "noisy observations"}),
        "regime": (("item", "sample"), raw["regime"].values.astype(np.int8), {
            "long_name": "reconstruction regime",
            "flag_values": np.arange(len(REGIMES), dtype=np.int8),
            "flag_meanings": " ".join(REGIMES),
        }),
    }
    if "truth" in raw:
        data_vars["truth"] = (dims[:1] + dims[2:], fields(raw["truth"].values), {"units": velocity_units, "long_name": "true velocity"})
    for name in raw.data_vars:
        if name.startswith("diag_"):
            data_vars[name] = raw[name]
    out = xr.Dataset(data_vars, coords=coords)
    settings = module.experiment()
    out.attrs.update({key: _attr(value) for key, value in settings.items()})
    out.attrs.update({key: _attr(value) for key, value in (attrs or {}).items()})
    out.attrs.update({f"metric_{name}": np.float64(value) for name, value in module.results().items()})
    out.attrs.update({
        "Conventions": "CF-1.8",
        "title": f"ldiff reconstruction: {settings['strategy']} on {settings['operator']}",
        "history": f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}: {' '.join(['ldiff', *sys.argv[1:]])}",
        "units": units if physical else "normalised",
        "std_normalised": module.std,
        **({} if module.grid is None else {"dx": module.grid[0], "dy": module.grid[1], "periodic": int(module.grid[2])}),
        "norm_mean": mean,
        "norm_std": std,
    })
    return out


def _coordinates(module, h: int, w: int, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str, str]:
    """x (W,), y (H,), frame times (frames,) and their units: the data's coordinates if
    the module read them from a store, else node indices times the grid spacing."""
    coords = module.coords
    if "x" in coords and "y" in coords:
        x, y = np.asarray(coords["x"].values, dtype=np.float64), np.asarray(coords["y"].values, dtype=np.float64)
        length = str(coords["x"].attrs.get("units", "1"))
    else:
        dx, dy = module.grid[:2] if module.grid is not None else (1.0, 1.0)
        x, y, length = dx * np.arange(w), dy * np.arange(h), "1"
    if "time" in coords and coords["time"].size >= frames:
        time = np.asarray(coords["time"].values, dtype=np.float64)
        frame_time, time_units = time[:frames] - time[0], str(coords["time"].attrs.get("units", "1"))
    else:
        frame_time, time_units = np.arange(frames, dtype=np.float64), "1"
    return x, y, frame_time, length, time_units


class ReconstructionWriter(BasePredictionWriter):
    """Write every rank's predictions and merge them into ``output`` on rank 0.

    Args:
        output: path of the merged NetCDF file.
        attrs: extra attributes for the merged file (labels of the config).
        units: ``physical`` (default) or ``normalised`` values in the file.
        verbose: print one closing line on rank 0: where the file is and the headline
            metrics.
    """

    def __init__(self, output: str, attrs: dict[str, Any] | None = None, units: str = "physical", verbose: bool = True):
        super().__init__(write_interval="epoch")
        if units not in UNITS:
            raise ValueError(f"ReconstructionWriter: units must be one of {', '.join(UNITS)}, got {units!r}")
        self.output = Path(output)
        self.attrs = dict(attrs or {})
        self.units, self.verbose = units, verbose
        self.items_written = 0

    def _shard(self, rank: int) -> Path:
        return self.output.with_name(f".{self.output.name}.shard-{rank}.nc")

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Rank 0 deletes what an interrupted run into ``output`` left behind (shards and
        temporary files); the other ranks wait for it before they predict."""
        super().setup(trainer, pl_module, stage)
        # a directory, a path under a file, one of the run's inputs: refused before any work
        data = getattr(trainer.datamodule, "path", None)
        inputs = {f"data.path.{k}": v for k, v in data.items()} if isinstance(data, dict) else {"data.path": data}
        inputs["model.checkpoint"] = getattr(pl_module, "checkpoint", None)
        check_output(self.output, inputs)
        if trainer.global_rank == 0:
            prefix = glob.escape(f".{self.output.name}.")
            for pattern in (prefix + "shard-*.nc", "." + prefix + "shard-*.nc.*.tmp", prefix + "*.tmp"):
                for path in self.output.parent.glob(pattern):
                    path.unlink(missing_ok=True)
        trainer.strategy.barrier()

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        rank = trainer.global_rank
        if batches:
            write_netcdf(predictions_to_dataset(batches), self._shard(rank), checksums=True)
        trainer.strategy.barrier()
        pl_module.results()  # a collective: every rank takes part
        if rank == 0:
            shards = [self._shard(r) for r in range(trainer.world_size) if self._shard(r).exists()]
            loaded = []
            for shard in shards:
                with xr.open_dataset(shard, engine="h5netcdf") as ds:
                    loaded.append(ds.load())
            merged = merge_shards(loaded)
            self.items_written = merged.sizes["item"]
            write_netcdf(readable(merged, pl_module, self.units, self.attrs), self.output, checksums=True)
            for shard in shards:
                shard.unlink()
        trainer.strategy.barrier()

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.verbose and trainer.is_global_zero:
            print(closing_line(self.output, self.items_written, pl_module.samples, pl_module.results()), flush=True)


HEADLINE = ("rmse_phys", "vorticity_corr_mean", "residual_ratio", "energy_ratio", "balanced", "flat", "diverged")


def closing_line(output: Path, items: int, samples: int, metrics: dict[str, float]) -> str:
    """``ldiff: wrote <output> (<n> items x K samples): <headline metrics>``."""
    shown = ", ".join(f"{name} {metrics[name]:.4g}" for name in HEADLINE if name in metrics)
    return f"ldiff: wrote {output} ({items} items x {samples} samples)" + (f": {shown}" if shown else "")
