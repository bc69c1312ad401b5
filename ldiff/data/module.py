r"""``FieldDataModule``: windows of store trajectories, split by trajectory and normalised.

A sample is a window of ``T`` consecutive frames of one trajectory, flattened into
channels frame-major, :math:`c = 2\,\mathrm{frame} + \mathrm{component}` (u, v), so the
prior learns the joint law of ``T`` frames, as SDA's local score does (Rozet & Louppe
2023, "Score-based Data Assimilation", https://arxiv.org/abs/2306.10574). As in SDA,
training draws one window at a uniformly random start per trajectory per epoch, while
validation and test visit every window.

Splits are by trajectory: frames of one trajectory are strongly correlated, so a split by
frame would put near-copies of test frames in the training set. With ``N`` trajectories
and fractions ``(f_train, f_val, f_test)`` the counts are chosen thus: every split with a
positive fraction first receives one trajectory, in the order train, test, val, while
trajectories last (``N = 1`` gives train only, ``N = 2`` train and test when both
fractions are positive); the rest go one at a time to the split furthest below its
target :math:`f_i N` (ties to the earlier split). Which trajectories go where is a
permutation drawn from ``seed``.

Each velocity component is normalised with the mean and standard deviation of that
component over every frame and pixel of the training trajectories only,
:math:`\tilde x_c = (x_c - m_{c \bmod 2}) / s_{c \bmod 2}`, the same for every frame of
the window. The statistics live in :class:`Normalizer`, which the LightningModule saves in
its checkpoint (plain tensors) and loads back into the data module, so inference undoes
exactly the scaling the prior was trained on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
import xarray as xr
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ldiff.data.conditions import build_conditions
from ldiff.data.items import IndexedFields
from ldiff.data.normalizer import Normalizer
from ldiff.data.order import EpochOrder
from ldiff.data.store import load, validate
from ldiff.diffusion.noise import keyed_generator

SPLITS = ("train", "val", "test")


def split_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Trajectories per split (train, val, test) by the rule in the module docstring."""
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.shape != (3,) or (fractions < 0).any() or abs(fractions.sum() - 1.0) > 1e-6:
        raise ValueError(f"split: need 3 non-negative fractions summing to 1, got {tuple(fractions)}")
    active = [i for i in (0, 2, 1) if fractions[i] > 0]
    counts = np.zeros(3, dtype=int)
    counts[active[:n]] = 1
    target = fractions * n
    for _ in range(n - counts.sum()):
        deficit = target[active] - counts[active]
        counts[active[int(np.argmax(deficit))]] += 1
    return tuple(int(c) for c in counts)


def split_trajectories(n: int, fractions: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """Trajectory indices of each split, sorted; disjoint, together ``0 .. n-1``."""
    n_train, n_val, _ = split_counts(n, fractions)
    order = np.random.default_rng(seed).permutation(n)
    parts = np.split(order, [n_train, n_train + n_val])
    return {name: np.sort(part) for name, part in zip(SPLITS, parts)}


class WindowDataset(Dataset):
    """Windows of ``window`` frames of some trajectories, normalised on access.

    Items are dicts: ``x`` (2 window, H, W) float32 in normalised units, ``trajectory``
    (store index), ``start`` (first frame), and ``cond`` (C_cond, H, W) when given.

    Args:
        fields: (N, T, 2, H, W) float32 in physical units.
        trajectories: store indices of the N trajectories, shape (N,).
        normalizer: applied to every item when it is read.
        random_window: one item per trajectory with a random start; otherwise every
            start ``0, stride, 2 stride, ...`` of every trajectory.
        shift: ``(sy, sx)``: roll each item (and its condition channels) circularly by a
            random multiple of ``sy`` rows and ``sx`` columns, a data augmentation for
            fields whose statistics are invariant under those shifts (Kolmogorov flow:
            any shift in x, shifts in y by a forcing period, ``(H / k_f, 1)``);
            ``(0, 0)`` leaves items as stored.
        seed: seed of the random starts and shifts.

    An item is read by ``index`` or by a key ``(epoch, index)`` (what
    :class:`~ldiff.data.order.EpochOrder` yields); its random start and shift are drawn
    from a generator of ``(seed, epoch, index)``, epoch 0 for a plain index, so an item
    is a function of its key (the same in any worker, and after a resume).
    """

    def __init__(
        self,
        fields: Tensor,
        trajectories: np.ndarray,
        window: int,
        normalizer: Normalizer,
        cond: Tensor | None = None,
        random_window: bool = False,
        stride: int = 1,
        shift: tuple[int, int] = (0, 0),
        seed: int = 0,
    ) -> None:
        self.fields, self.trajectories, self.window, self.seed = fields, trajectories, window, seed
        self.normalizer, self.cond, self.random_window = normalizer, cond, random_window
        self.starts = range(0, fields.shape[1] - window + 1, stride)
        self.shift = tuple(shift)

    def __len__(self) -> int:
        return len(self.fields) * (1 if self.random_window else len(self.starts))

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        generator = keyed_generator(self.seed, epoch, index) if self.random_window or any(self.shift) else None
        if self.random_window:
            n, start = index, int(torch.randint(len(self.starts), (), generator=generator))
        else:
            n, k = divmod(index, len(self.starts))
            start = self.starts[k]
        frames = self.fields[n, start : start + self.window]
        item = {
            "x": self.normalizer.normalize(frames.reshape(-1, *frames.shape[-2:])),
            "trajectory": torch.tensor(int(self.trajectories[n])),
            "start": torch.tensor(start),
        }
        if self.cond is not None:
            item["cond"] = self.cond
        if any(self.shift):
            rolls = [int(torch.randint(size // step, (), generator=generator)) * step if step else 0 for size, step in zip(frames.shape[-2:], self.shift)]
            for key in ("x", "cond"):
                if key in item:
                    item[key] = torch.roll(item[key], shifts=rolls, dims=(-2, -1))
        return item


class FieldDataModule(L.LightningDataModule):
    """Windows of a store file for training, validation and test.

    Batches are dicts: ``x`` (B, 2 window, H, W) float32 in normalised units,
    ``trajectory`` and ``start`` (B,) long, and ``cond`` (B, C_cond, H, W) when
    ``condition`` names channels (see :mod:`ldiff.data.conditions`).

    Args:
        path: store file (:mod:`ldiff.data.store`), split by trajectory with ``split``;
            or a mapping ``{train: ..., val: ..., test: ...}`` of files, one per split
            (any subset of the three; ``split`` is then not used), as SDA keeps its
            ``train.h5``, ``valid.h5`` and ``test.h5``. A file is a store, or an SDA
            HDF5 file (``.h5``/``.hdf5``), imported on the fly with its orientation
            found from the data (:func:`ldiff.data.sda.read_sda_h5`). The files must
            share one grid; the normaliser is fitted on the train file alone.
        window: frames per sample.
        batch_size: samples per batch.
        split: fractions of trajectories for train, val, test.
        random_window: training draws one random window per trajectory per epoch
            (else every window); validation and test always use every window.
        num_workers: DataLoader worker processes.
        condition: names of condition channels.
        seed: seed of the trajectory split and of the training order and draws
            (:mod:`ldiff.data.order`).
        shift: training-only random circular shifts by multiples of ``(rows, columns)``
            (see :class:`WindowDataset`); ``(0, 0)`` for none.
        items: reconstruct only this many test windows, evenly spaced over them (all
            when None): ``ldiff predict`` and ``ldiff compare`` on a subset.
    """

    def __init__(
        self,
        path: str | dict[str, str],
        window: int = 1,
        batch_size: int = 16,
        split: tuple[float, float, float] = (0.8, 0.1, 0.1),
        random_window: bool = True,
        num_workers: int = 0,
        condition: tuple[str, ...] = (),
        seed: int = 0,
        shift: tuple[int, int] = (0, 0),
        items: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if window < 1 or batch_size < 1:
            raise ValueError(f"window and batch_size must be >= 1, got {window}, {batch_size}")
        self.path, self.window, self.batch_size = path, window, batch_size
        self.split, self.random_window, self.num_workers = tuple(split), random_window, num_workers
        self.condition, self.seed = tuple(condition), seed
        if len(shift) != 2 or min(shift) < 0:
            raise ValueError(f"shift: need two non-negative steps (rows, columns), got {shift}")
        self.shift = tuple(shift)
        if items is not None and items < 1:
            raise ValueError(f"items: need at least 1 window to reconstruct, got {items}")
        self.items = items
        self.normalizer = Normalizer()
        self.splits: dict[str, np.ndarray] | None = None
        self._resume: dict[str, int] | None = None

    @property
    def channels(self) -> int:
        """Channels of ``x``: 2 per frame."""
        return 2 * self.window

    @property
    def cond_channels(self) -> int:
        return len(self.condition)

    def setup(self, stage: str | None = None) -> None:
        """Load the store, split it and fit the normalizer on the training split.

        A normalizer already fitted or loaded is kept; with no training trajectory (e.g.
        ``split=(0, 0, 1)`` to evaluate a store) it stays unfitted until a checkpoint's
        statistics are loaded into it (``normalizer.load_state_dict``); the datasets
        read the normalizer when they are indexed, so loading after setup is enough.

        A fit whose validation split holds no window (a prior trained on every
        trajectory and tested on another store) sets the trainer's
        ``limit_val_batches`` to 0, so Lightning skips validation; given an empty
        loader, or none, it would warn that its length is zero.
        """
        if self.splits is None:
            self._load()
        if stage == "fit" and self.trainer is not None and not len(self.dataset("val")):
            self.trainer.limit_val_batches = 0

    def _load(self) -> None:
        """Read the stores, split them and fit the normalizer (see :meth:`setup`)."""
        files = split_files(self.path)
        stores = {name: read_store(path) for name, path in files.items()}
        for name, ds in stores.items():
            if self.window > ds.sizes["time"]:
                raise ValueError(f"{files[name]}: window {self.window} is longer than the trajectories ({ds.sizes['time']} frames)")
        if len(stores) == 1:  # one store, split by trajectory
            ds = next(iter(stores.values()))
            splits = split_trajectories(ds.sizes["trajectory"], self.split, self.seed)
            stores = dict.fromkeys(SPLITS, ds)
        else:
            splits = {name: np.arange(stores[name].sizes["trajectory"] if name in stores else 0) for name in SPLITS}
        first = next(stores[name] for name in ("train", "test", "val") if name in stores)
        for name, ds in stores.items():
            if ds is not first:
                _check_same_grid(files[name], ds, first)
        self.attrs = dict(first.attrs)
        self.time = stores.get("test", first)["time"].values
        self.coords = {"x": first["x"], "y": first["y"], "time": stores.get("test", first)["time"]}  # with their units
        self.cond = build_conditions(first, self.condition) if self.condition else None
        self.fields = {name: _fields(stores.get(name, first), index) for name, index in splits.items()}
        if self.normalizer.mean is None and len(splits["train"]):
            train = stores["train"]
            self.normalizer.fit(train["u"].values[splits["train"]], train["v"].values[splits["train"]])
            _check_spread(files.get("train", self.path), self.normalizer)
        self.splits = splits

    def dataset(self, name: str, stride: int = 1) -> WindowDataset:
        """The windows of split ``name`` (train, val or test); random ones for training."""
        random_window = name == "train" and self.random_window
        shift = self.shift if name == "train" else (0, 0)
        args = (self.fields[name], self.splits[name], self.window, self.normalizer, self.cond)
        return WindowDataset(*args, random_window=random_window, stride=stride, shift=shift, seed=self.seed)

    def training_windows(self, chunk: int = 32, rank: int = 0, replicas: int = 1) -> Iterator[Tensor]:
        """Every training window (starts ``0, 1, 2, ...``, as stored: no random start and
        no shift), normalised, in chunks of (at most ``chunk``, 2 window, H, W): what a
        statistic of the training distribution is computed from without holding it all
        (the Gaussian skip term of ``ScorePrior(precondition="gaussian")``, ``ldiff baseline``).

        With ``replicas`` > 1, only windows ``rank, rank + replicas, ...``: the shards of
        ``rank = 0 .. replicas - 1`` are disjoint and together hold every window once."""
        if not 0 <= rank < replicas:
            raise ValueError(f"training_windows: need 0 <= rank < replicas, got rank {rank} of {replicas}")
        args = (self.fields["train"], self.splits["train"], self.window, self.normalizer)
        dataset = WindowDataset(*args, random_window=False, seed=self.seed)
        mine = range(rank, len(dataset), replicas)
        for first in range(0, len(mine), chunk):
            yield torch.stack([dataset[i]["x"] for i in mine[first : first + chunk]])

    def train_dataloader(self) -> DataLoader:
        """Training batches in :class:`~ldiff.data.order.EpochOrder` (this rank's share
        of epoch ``e``'s permutation of ``seed + e``), resumed where a loaded checkpoint's
        run stopped (:meth:`load_state_dict`)."""
        dataset = self.dataset("train")
        trainer = self.trainer
        rank, replicas = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        order = EpochOrder(dataset, seed=self.seed, rank=rank, replicas=replicas)
        if self._resume is not None:
            order.resume_at(self._resume["epoch"], self._resume["batches"] * self.batch_size)
        return self._loader(dataset, sampler=order)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"))

    def predict_dataloader(self) -> DataLoader:
        """The windows to reconstruct (:meth:`predict_windows`) as items with a stable
        ``index``, their ``trajectory`` and ``time``, for ``trainer.predict``."""
        windows = self.predict_windows()
        extra = {"trajectory": windows["trajectory"], "time": windows["time"]}
        return DataLoader(IndexedFields(windows["x"], windows.get("cond"), extra), batch_size=self.batch_size, num_workers=self.num_workers)

    def predict_windows(self) -> dict[str, Tensor]:
        """:meth:`test_windows`, or ``items`` of them evenly spaced (first and last
        included) when ``items`` is set."""
        windows = self.test_windows()
        if self.items is None:
            return windows
        n = len(windows["x"])
        pick = torch.from_numpy(np.unique(np.linspace(0, n - 1, min(self.items, n)).round().astype(np.int64)))
        return {key: value[pick] for key, value in windows.items()}

    def test_windows(self, stride: int | None = None) -> dict[str, Tensor]:
        """Every test window at starts ``0, stride, ...`` (default ``stride = window``:
        the trajectories cut into consecutive windows), stacked.

        Returns:
            dict with ``x`` (M, 2 window, H, W) float32 in normalised units,
            ``trajectory``, ``start`` (M,) long and ``time`` (M,) float64 (time of the
            first frame), and ``cond`` (M, C_cond, H, W) when conditioned.
        """
        dataset = self.dataset("test", stride=stride or self.window)
        items = [dataset[i] for i in range(len(dataset))]
        if not items:
            where = self.path if isinstance(self.path, (str, os.PathLike)) else "data.path"
            raise ValueError(f"{where}: the test split is empty")
        windows = {key: torch.stack([item[key] for item in items]) for key in items[0]}
        windows["time"] = torch.as_tensor(self.time[windows["start"].numpy()])
        return windows

    def state_dict(self) -> dict[str, int]:
        """Where training stands, for the checkpoint: ``epoch`` and the ``batches`` of it
        trained so far (empty outside ``fit``)."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        return {"epoch": trainer.current_epoch, "batches": trainer.fit_loop.epoch_loop.batch_progress.current.processed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume the training order after ``state['batches']`` of epoch ``state['epoch']``."""
        self._resume = dict(state) if state else None

    def _loader(self, dataset: WindowDataset, sampler: EpochOrder | None = None) -> DataLoader:
        # the loader's own generator draws its base seed, so iterating draws nothing from
        # the global random state (a resumed run restores that state: see ScorePrior)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )


def split_files(path: str | Mapping[str, str]) -> dict[str, str]:
    """``{"all": path}`` for one store, else the mapping's files by split name, checked."""
    if isinstance(path, (str, os.PathLike)):
        return {"all": str(path)}
    if not isinstance(path, Mapping) or not path:
        raise ValueError(f"data.path: need a store file or a mapping {{train: ..., val: ..., test: ...}}, got {path!r}")
    for name, file in path.items():
        if name not in SPLITS:
            raise ValueError(f"data.path: unknown split {name!r} (expected {', '.join(SPLITS)})")
        if not isinstance(file, (str, os.PathLike)):
            raise ValueError(f"data.path.{name}: need a file, got {file!r}")
    return {name: str(file) for name, file in path.items()}


SDA_SUFFIXES = (".h5", ".hdf5")
"""Files read as SDA HDF5 windows rather than as stores."""


def read_store(path: str) -> xr.Dataset:
    """A store file (:func:`ldiff.data.store.load`), or an SDA HDF5 file imported in
    memory (orientation from the data) and validated like a store."""
    if Path(path).suffix.lower() in SDA_SUFFIXES:
        from ldiff.data.sda import read_sda_h5

        ds = read_sda_h5(path)
        validate(ds, path)
        return ds
    return load(path)


def _check_same_grid(path: str, ds: xr.Dataset, reference: xr.Dataset) -> None:
    for axis in ("y", "x"):
        if ds.sizes[axis] != reference.sizes[axis] or not np.allclose(ds[axis].values, reference[axis].values):
            raise ValueError(
                f"{path}: its {axis} grid ({ds.sizes[axis]} points from {float(ds[axis][0]):g}) differs from the "
                f"other split files' ({reference.sizes[axis]} from {float(reference[axis][0]):g})"
            )


def _fields(ds: xr.Dataset, index: np.ndarray) -> Tensor:
    """u and v of trajectories ``index``, shape (N, T, 2, H, W), float32, physical units."""
    u, v = (ds[name].transpose("trajectory", "time", "y", "x").values[index] for name in ("u", "v"))
    return torch.from_numpy(np.stack([u, v], axis=2).astype(np.float32, copy=False))


def _check_spread(path: str, normalizer: Normalizer) -> None:
    for name, std in zip(("u", "v"), normalizer.std.tolist()):
        if not std > 0:
            raise ValueError(f"{path}: variable '{name}' is constant on the training split (std 0)")
