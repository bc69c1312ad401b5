"""``ReconstructionWriter``: one merged xarray file from a (distributed) ``trainer.predict``.

Each rank writes its own predictions to a shard (a NetCDF file, data only), all ranks
meet at a barrier, and rank 0 merges the shards into one Dataset: items are sorted by
their index and de-duplicated (a distributed sampler pads the last batches with repeats
when the item count does not divide by the number of devices), so every item appears
exactly once. The file is written to a temporary name and renamed, so an interrupted
run leaves no half-written file: a run killed before the rename leaves at most hidden
files beside ``output`` (``.<name>.shard-<rank>.nc`` and ``.<name>.<pid>.tmp``), and
the next run into the same ``output`` deletes them when it starts, so a shard of the
killed run is never merged into the new file (two runs at once into one ``output`` are
not supported).

Layout of the merged file (normalised units; ``norm_mean`` / ``norm_std`` attributes
give the (u, v) affine map to physical units):

- ``recon`` (item, sample, channel, y, x), ``truth`` (item, channel, y, x),
- ``y`` (item, obs): the observations, flattened per item,
- ``regime`` (item, sample): codes of :data:`ldiff.metrics.REGIMES`,
- ``diag_<name>`` (evaluation, item, sample): per-step diagnostics.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import xarray as xr
from lightning.pytorch.callbacks import BasePredictionWriter

from ldiff.data.store import write_netcdf

DIMS = {
    "recon": ("item", "sample", "channel", "y", "x"),
    "x": ("item", "channel", "y", "x"),
    "regime": ("item", "sample"),
}


def predictions_to_dataset(predictions: list[dict[str, torch.Tensor]]) -> xr.Dataset:
    """Concatenate predict_step outputs (dicts of tensors, batch first) into a Dataset."""
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
            data_vars["y"] = (("item", "obs"), value.reshape(value.shape[0], -1))
        else:
            data_vars["truth" if key == "x" else key] = (DIMS[key], value)
    return xr.Dataset(data_vars, coords={"item": index})


def merge_shards(shards: list[xr.Dataset]) -> xr.Dataset:
    """Concatenate shards along ``item``, sort by item and keep the first of duplicates."""
    ds = xr.concat(shards, dim="item", data_vars="all", coords="different", compat="equals", join="outer")
    ds = ds.sortby("item")
    _, first = np.unique(ds["item"].values, return_index=True)
    return ds.isel(item=first)


class ReconstructionWriter(BasePredictionWriter):
    """Write every rank's predictions and merge them into ``output`` on rank 0.

    Args:
        output: path of the merged NetCDF file.
        attrs: attributes for the merged file (config, provenance); values that are
            not numbers or strings are stored as JSON.
        finalize: optional ``finalize(ds) -> ds`` run on rank 0 before writing; by
            default the module's ``score(ds)`` where it has one (metrics as attributes).
    """

    def __init__(self, output: str, attrs: dict[str, Any] | None = None, finalize: Callable[[xr.Dataset], xr.Dataset] | None = None):
        super().__init__(write_interval="epoch")
        self.output = Path(output)
        self.attrs = dict(attrs or {})
        self.finalize = finalize

    def _shard(self, rank: int) -> Path:
        return self.output.with_name(f".{self.output.name}.shard-{rank}.nc")

    def setup(self, trainer, pl_module, stage: str) -> None:
        """Rank 0 deletes what an interrupted run into ``output`` left behind (shards and
        temporary files); the other ranks wait for it before they predict."""
        super().setup(trainer, pl_module, stage)
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
            write_netcdf(predictions_to_dataset(batches), self._shard(rank))
        trainer.strategy.barrier()
        if rank == 0:
            shards = [self._shard(r) for r in range(trainer.world_size) if self._shard(r).exists()]
            loaded = []
            for shard in shards:
                with xr.open_dataset(shard, engine="h5netcdf") as ds:
                    loaded.append(ds.load())
            merged = merge_shards(loaded)
            normalizer = getattr(pl_module, "normalizer_state", None)
            if normalizer is not None:
                merged.attrs["norm_mean"] = np.asarray(normalizer["mean"], dtype=np.float64)
                merged.attrs["norm_std"] = np.asarray(normalizer["std"], dtype=np.float64)
            merged.attrs.update({k: v if isinstance(v, (int, float, str)) else json.dumps(v, default=str) for k, v in self.attrs.items()})
            if self.finalize is not None:
                merged = self.finalize(merged)
            elif hasattr(pl_module, "score"):
                merged = pl_module.score(merged)
            write_netcdf(merged, self.output)
            for shard in shards:
                shard.unlink()
        trainer.strategy.barrier()
