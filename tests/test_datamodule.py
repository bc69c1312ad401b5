"""GRF generator, condition channels, trajectory splits, normalisation and FieldDataModule."""

from __future__ import annotations

import math
import warnings

import lightning as L
import numpy as np
import pytest
import torch
import xarray as xr
from torch import Tensor

from ldiff.data.conditions import build_conditions
from ldiff.data.grf import generate_grf, stream_filter
from ldiff.data.module import FieldDataModule, Normalizer, split_counts, split_trajectories
from ldiff.data.store import make_dataset, save
from ldiff.diffusion.schedules import CosineSchedule
from ldiff.lit.prior import ScorePrior
from test_prior import Tiny

# --- GRF ------------------------------------------------------------------------------


def test_grf_is_reproducible_from_its_seed():
    a, b, c = generate_grf(2, 3, 8, seed=7), generate_grf(2, 3, 8, seed=7), generate_grf(2, 3, 8, seed=8)
    assert np.array_equal(a["u"].values, b["u"].values) and np.array_equal(a["v"].values, b["v"].values)
    assert not np.array_equal(a["u"].values, c["u"].values)
    assert a.attrs["flow"] == "grf" and a.attrs["periodic"] == 1 and a.attrs["dx"] == 2 * math.pi / 8


@pytest.mark.parametrize("size", [8, 9])
def test_grf_filter_gives_unit_velocity_variance(size):
    # rebuild a(k) on the full FFT grid: Var u = S^-2 sum_k ky^2 a^2 and Var v with kx
    alpha = 3.0
    a_half, _, _ = stream_filter(size, alpha)
    scale = a_half[1, 0] * 2 ** (alpha / 2)  # a at k = (0, 1) is c (1 + 1)^(-alpha/2)
    k = np.fft.fftfreq(size, d=1.0 / size)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    a = scale * (1 + kx**2 + ky**2) ** (-alpha / 2)
    a[0, 0] = 0.0
    a[(np.abs(kx) == size / 2) | (np.abs(ky) == size / 2)] = 0.0
    assert np.isclose((ky**2 * a**2).sum() / size**2, 1.0, rtol=1e-12)
    assert np.isclose((kx**2 * a**2).sum() / size**2, 1.0, rtol=1e-12)


def test_grf_velocity_is_divergence_free_with_zero_mean_and_its_vorticity_is_the_curl():
    ds = generate_grf(2, 3, 16, seed=1)
    u, v, w = (np.fft.fft2(ds[name].values.astype(np.float64)) for name in ("u", "v", "vorticity"))
    k = np.fft.fftfreq(16, d=1.0 / 16)
    ky, kx = k[:, None], k[None, :]
    scale = np.abs(u).max()
    assert np.abs(1j * kx * u + 1j * ky * v).max() < 1e-5 * scale * 8
    assert np.abs(1j * kx * v - 1j * ky * u - w).max() < 1e-5 * np.abs(w).max()
    assert np.abs(ds["u"].values.mean(axis=(-2, -1))).max() < 1e-6


def test_grf_statistics_match_unit_variance_and_ar1_correlation():
    # white-ish spectrum: ~64 independent modes per frame, 200 trajectories
    ds = generate_grf(200, 2, 16, seed=3, alpha=0.0, rho=0.6)
    u = ds["u"].values.astype(np.float64)
    assert abs(u.var() - 1.0) < 0.02
    assert abs((u[:, 0] * u[:, 1]).mean() / u.var() - 0.6) < 0.02


# --- conditions ------------------------------------------------------------------------


def small_store(**attrs) -> xr.Dataset:
    zeros = np.zeros((1, 1, 3, 4))
    base = {"flow": "test", "source": "mem", "dt": 1.0, "dx": 1.0, "dy": 0.5, "periodic": 0}
    return make_dataset(zeros, zeros, x=np.arange(4.0), y=np.array([0.0, 0.5, 1.0]), time=[0.0], attrs={**base, **attrs})


def test_forcing_channel_is_sin_k_y():
    default, k2 = build_conditions(small_store(), ["forcing"]), build_conditions(small_store(forcing_wavenumber=2), ["forcing"])
    y = np.array([0.0, 0.5, 1.0])
    assert default.shape == (1, 3, 4) and default.dtype == torch.float32
    assert torch.equal(default[0], torch.tensor(np.sin(4 * y), dtype=torch.float32)[:, None].expand(3, 4))
    assert torch.equal(k2[0, :, 0], torch.tensor(np.sin(2 * y), dtype=torch.float32))


def test_mask_channel_from_cylinder_attributes_and_from_the_variable():
    ds = small_store(cylinder_x=1.0, cylinder_y=0.5, cylinder_radius=0.6)
    # the nodes within 0.6 of (1, 0.5) are the column x = 1 (distances 0.5, 0, 0.5)
    expected = torch.ones(3, 4)
    expected[:, 1] = 0.0
    assert torch.equal(build_conditions(ds, ["mask"])[0], expected)
    ds["mask"] = (("y", "x"), np.eye(3, 4, dtype=np.float32))
    both = build_conditions(ds, ["forcing", "mask"])
    assert both.shape == (2, 3, 4) and torch.equal(both[1], torch.eye(3, 4))


def test_unknown_or_unavailable_conditions_are_value_errors():
    with pytest.raises(ValueError, match=r"unknown condition 'wind'; valid: mask, forcing"):
        build_conditions(small_store(), ["wind"])
    with pytest.raises(ValueError, match=r"mem: no 'mask' variable and no attribute 'cylinder_x'"):
        build_conditions(small_store(), ["mask"])


# --- splits -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, fractions, counts",
    [
        (10, (0.8, 0.1, 0.1), (8, 1, 1)),
        (100, (0.8, 0.1, 0.1), (80, 10, 10)),
        (5, (0.8, 0.1, 0.1), (3, 1, 1)),
        (3, (0.8, 0.1, 0.1), (1, 1, 1)),
        (2, (0.8, 0.1, 0.1), (1, 0, 1)),
        (1, (0.8, 0.1, 0.1), (1, 0, 0)),
        (4, (0.5, 0.5, 0.0), (2, 2, 0)),
        (7, (0.0, 0.0, 1.0), (0, 0, 7)),
        (9, (0.6, 0.2, 0.2), (5, 2, 2)),
    ],
)
def test_split_counts(n, fractions, counts):
    assert split_counts(n, fractions) == counts


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.8, 0.3, 0.1), (1.2, -0.1, -0.1)])
def test_split_counts_refuses_bad_fractions(fractions):
    with pytest.raises(ValueError, match="split: need 3 non-negative fractions summing to 1"):
        split_counts(10, fractions)


@pytest.mark.parametrize("n, seed", [(1, 0), (2, 3), (10, 0), (10, 1), (37, 5)])
def test_split_trajectories_partitions_the_trajectories(n, seed):
    splits = split_trajectories(n, (0.8, 0.1, 0.1), seed)
    joined = np.concatenate(list(splits.values()))
    assert np.array_equal(np.sort(joined), np.arange(n))
    assert tuple(len(part) for part in splits.values()) == split_counts(n, (0.8, 0.1, 0.1))


# --- FieldDataModule -------------------------------------------------------------------


def test_window_batches_denormalise_to_the_stored_frames(tmp_path):
    path = save(generate_grf(4, 5, 8, seed=2), tmp_path / "grf.nc")
    u, v = generate_grf(4, 5, 8, seed=2)["u"].values, generate_grf(4, 5, 8, seed=2)["v"].values
    dm = FieldDataModule(str(path), window=2, batch_size=3, split=(0.5, 0.25, 0.25))
    dm.setup("fit")
    assert dm.channels == 4
    seen = 0
    for batch in dm.val_dataloader():
        frames = dm.normalizer.denormalize(batch["x"])
        assert batch["x"].dtype == torch.float32 and "cond" not in batch
        for b, (n, s) in enumerate(zip(batch["trajectory"].tolist(), batch["start"].tolist())):
            # frame-major channels: u(s), v(s), u(s+1), v(s+1)
            expected = np.stack([u[n, s], v[n, s], u[n, s + 1], v[n, s + 1]])
            assert torch.allclose(frames[b], torch.from_numpy(expected), rtol=1e-6, atol=1e-6)
            seen += 1
    assert seen == 4  # one validation trajectory, every window: 5 - 2 + 1


def checkerboard_store(path, n_traj=10, seed=0):
    """Train trajectories: u in {1, 5} (mean 3, std 2), v in {-1.5, -0.5} (mean -1, std 0.5);
    val and test trajectories: u = 100, v = -50."""
    train = split_trajectories(n_traj, (0.8, 0.1, 0.1), seed)["train"]
    sign = np.where(np.add.outer(np.arange(4), np.arange(4)) % 2 == 0, 1.0, -1.0)
    u = np.full((n_traj, 3, 4, 4), 100.0)
    v = np.full((n_traj, 3, 4, 4), -50.0)
    u[train], v[train] = 3.0 + 2.0 * sign, -1.0 + 0.5 * sign
    attrs = {"flow": "test", "source": "checkerboard", "dt": 1.0, "dx": 1.0, "dy": 1.0, "periodic": 1}
    return save(make_dataset(u, v, x=np.arange(4.0), y=np.arange(4.0), time=np.arange(3.0), attrs=attrs), path)


def test_normalisation_statistics_come_from_the_training_split_only(tmp_path):
    dm = FieldDataModule(str(checkerboard_store(tmp_path / "c.nc")), window=1, batch_size=8)
    dm.setup()
    state = dm.normalizer.state_dict()
    assert state["mean"].tolist() == [3.0, -1.0] and state["std"].tolist() == [2.0, 0.5]
    batch = next(iter(dm.test_dataloader()))
    assert torch.equal(batch["x"][:, 0], torch.full((3, 4, 4), 48.5))  # (100 - 3) / 2
    assert torch.equal(batch["x"][:, 1], torch.full((3, 4, 4), -98.0))  # (-50 + 1) / 0.5


def test_no_trajectory_is_in_two_splits(tmp_path):
    path = save(generate_grf(12, 2, 4, seed=0), tmp_path / "g.nc")
    dm = FieldDataModule(str(path), window=1, seed=4)
    dm.setup()
    found = {}
    for name in ("train", "val", "test"):
        dataset = dm.dataset(name)
        found[name] = {int(dataset[i]["trajectory"]) for i in range(len(dataset))}
    assert found["train"].isdisjoint(found["val"]) and found["train"].isdisjoint(found["test"])
    assert found["val"].isdisjoint(found["test"])
    assert set().union(*found.values()) == set(range(12))
    assert [len(found[name]) for name in ("train", "val", "test")] == [10, 1, 1]


def test_random_training_windows_one_per_trajectory(tmp_path):
    path = save(generate_grf(10, 6, 4, seed=0), tmp_path / "g.nc")
    dm = FieldDataModule(str(path), window=3, batch_size=100, condition=["forcing"])
    dm.setup()
    torch.manual_seed(0)
    first = next(iter(dm.train_dataloader()))
    assert sorted(first["trajectory"].tolist()) == dm.splits["train"].tolist()
    assert first["x"].shape == (8, 6, 4, 4) and first["cond"].shape == (8, 1, 4, 4)
    assert set(first["start"].tolist()) <= {0, 1, 2, 3}
    starts = torch.cat([next(iter(dm.train_dataloader()))["start"] for _ in range(20)])
    assert set(starts.tolist()) == {0, 1, 2, 3}
    assert len(dm.dataset("val")) == 1 * 4 and len(dm.dataset("test")) == 1 * 4
    every = FieldDataModule(str(path), window=3, random_window=False)
    every.setup()
    assert len(every.dataset("train")) == 8 * 4


def test_test_windows_cut_the_trajectories_with_their_indices(tmp_path):
    ds = generate_grf(3, 6, 4, seed=1)
    path = save(ds, tmp_path / "g.nc")
    dm = FieldDataModule(str(path), window=2, split=(1 / 3, 1 / 3, 1 / 3))
    dm.setup()
    windows = dm.test_windows()
    (n,) = dm.splits["test"]
    assert windows["trajectory"].tolist() == [n] * 3 and windows["start"].tolist() == [0, 2, 4]
    assert windows["time"].tolist() == [0.0, 2.0, 4.0]
    restored = dm.normalizer.denormalize(windows["x"][2])
    assert torch.allclose(restored[3], torch.from_numpy(ds["v"].values[n, 5]), atol=1e-6)
    assert dm.test_windows(stride=1)["start"].tolist() == [0, 1, 2, 3, 4]


def test_window_longer_than_the_trajectories_is_a_value_error(tmp_path):
    path = save(generate_grf(3, 4, 4, seed=0), tmp_path / "g.nc")
    with pytest.raises(ValueError, match=r"g\.nc: window 5 is longer than the trajectories \(4 frames\)"):
        FieldDataModule(str(path), window=5).setup()


def test_nan_in_the_store_is_a_value_error_naming_file_and_variable(tmp_path):
    ds = generate_grf(3, 2, 4, seed=0)
    ds["v"][1, 1, 2, 2] = np.nan
    ds.to_netcdf(tmp_path / "nan.nc", engine="h5netcdf")  # bypasses save's check
    with pytest.raises(ValueError, match=r"nan\.nc: variable 'v' holds 1 NaN"):
        FieldDataModule(str(tmp_path / "nan.nc")).setup()


def test_missing_store_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"absent\.nc"):
        FieldDataModule(str(tmp_path / "absent.nc")).setup()


def test_normalizer_state_round_trips_as_plain_tensors():
    normalizer = Normalizer().fit(np.array([1.0, 3.0]), np.array([-2.0, 2.0]))
    state = normalizer.state_dict()
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    restored = Normalizer()
    restored.load_state_dict(state)
    x = torch.arange(2 * 4 * 2 * 2, dtype=torch.float32).reshape(2, 4, 2, 2)
    normalized = restored.normalize(x)
    # channels 0, 2 are u (mean 2, std 1); channels 1, 3 are v (mean 0, std 2)
    assert torch.equal(normalized[:, 0::2], x[:, 0::2] - 2.0) and torch.equal(normalized[:, 1::2], x[:, 1::2] / 2.0)
    assert torch.equal(restored.denormalize(normalized), x)
    with pytest.raises(ValueError, match="normalizer: not fitted"):
        Normalizer().normalize(x)


class _Recorder(L.LightningModule):
    """Smallest module that trains on and records the batches it is given, and keeps the
    data module's normalizer in its checkpoint as ldiff's LightningModules do."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[Tensor] = []

    def training_step(self, batch, batch_idx):
        return (self.weight * batch["x"]).square().mean()

    def test_step(self, batch, batch_idx):
        self.seen.append(batch["x"])

    def on_save_checkpoint(self, checkpoint):
        checkpoint["normalizer"] = self.trainer.datamodule.normalizer.state_dict()

    def on_load_checkpoint(self, checkpoint):
        self.trainer.datamodule.normalizer.load_state_dict(checkpoint["normalizer"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_checkpoint_carries_the_training_statistics_to_an_evaluation_store(tmp_path):
    options = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trained = FieldDataModule(str(checkerboard_store(tmp_path / "train.nc")), batch_size=4)
    trainer = L.Trainer(max_epochs=1, limit_val_batches=0, **options)
    trainer.fit(_Recorder(), datamodule=trained)
    trainer.save_checkpoint(tmp_path / "prior.ckpt")
    # evaluation store: every trajectory is test, none to fit statistics on
    ones = np.ones((2, 3, 4, 4))
    attrs = {"flow": "test", "source": "eval", "dt": 1.0, "dx": 1.0, "dy": 1.0, "periodic": 1}
    grid = dict(x=np.arange(4.0), y=np.arange(4.0), time=np.arange(3.0))
    evaluated = FieldDataModule(str(save(make_dataset(ones, ones, **grid, attrs=attrs), tmp_path / "eval.nc")), split=(0, 0, 1))
    recorder = _Recorder()
    L.Trainer(**options).test(recorder, datamodule=evaluated, ckpt_path=tmp_path / "prior.ckpt", verbose=False)
    x = torch.cat(recorder.seen)
    assert x.shape == (6, 2, 4, 4)
    assert torch.equal(x[:, 0], torch.full((6, 4, 4), -1.0))  # (1 - 3) / 2
    assert torch.equal(x[:, 1], torch.full((6, 4, 4), 4.0))  # (1 + 1) / 0.5


def test_merge_stacks_trajectories_and_refuses_other_grids(tmp_path):
    from ldiff.cli import main
    from ldiff.data.grf import generate_grf
    from ldiff.data.store import load, save

    a, b, other = tmp_path / "a.nc", tmp_path / "b.nc", tmp_path / "other.nc"
    save(generate_grf(2, 3, 8, 0), a)
    save(generate_grf(1, 3, 8, 1), b)
    save(generate_grf(1, 3, 16, 1), other)
    assert main(["data", "merge", str(a), str(b), "-o", str(tmp_path / "ab.nc")]) == 0
    merged = load(tmp_path / "ab.nc")
    assert merged.sizes["trajectory"] == 3
    np.testing.assert_array_equal(merged["u"].values[:2], load(a)["u"].values)
    np.testing.assert_array_equal(merged["u"].values[2:], load(b)["u"].values)
    assert merged["trajectory"].values.tolist() == [0, 1, 2]
    assert main(["data", "merge", str(a), str(other), "-o", str(tmp_path / "bad.nc")]) == 2
    assert not (tmp_path / "bad.nc").exists()


def test_merge_of_runs_at_different_parameters_keeps_each_trajectorys_values(tmp_path):
    """Runs at Re 60 and 80 merged: ``Re``, ``seed`` and the rest that differ become
    variables over trajectory (the merged store said Re = 60 for every trajectory
    before); what the files share stays an attribute; merging a merged store goes on."""
    from ldiff.cli import main
    from ldiff.data.grf import generate_grf
    from ldiff.data.store import load, save

    paths = [tmp_path / f"re{re}.nc" for re in (60, 80, 100)]
    for k, (path, re, n) in enumerate(zip(paths, (60.0, 80.0, 100.0), (2, 1, 1))):
        ds = generate_grf(n, 3, 8, seed=k)
        ds.attrs.update(Re=re, St=0.15 + 0.01 * k, note=f"run {k}", U=1.0)
        if k == 1:
            del ds.attrs["note"]
        save(ds, path)
    assert main(["data", "merge", str(paths[0]), str(paths[1]), "-o", str(tmp_path / "ab.nc")]) == 0
    merged = load(tmp_path / "ab.nc")
    assert merged["Re"].dims == ("trajectory",) and merged["Re"].values.tolist() == [60.0, 60.0, 80.0]
    assert merged["seed"].values.tolist() == [0, 0, 1] and merged["seed"].dtype == np.int64
    np.testing.assert_allclose(merged["St"].values, [0.15, 0.15, 0.16])
    assert merged["note"].values.tolist() == ["run 0", "run 0", ""]  # missing in one file
    assert "Re" not in merged.attrs and "seed" not in merged.attrs and merged.attrs["U"] == 1.0
    assert main(["data", "merge", str(tmp_path / "ab.nc"), str(paths[2]), "-o", str(tmp_path / "abc.nc")]) == 0
    again = load(tmp_path / "abc.nc")
    assert again["Re"].values.tolist() == [60.0, 60.0, 80.0, 100.0] and again["seed"].values.tolist() == [0, 0, 1, 2]
    module = FieldDataModule(str(tmp_path / "abc.nc"), window=2, split=(0.5, 0.25, 0.25), seed=0)
    module.setup()  # the per-trajectory variables do not get in the way of training
    assert next(iter(module.train_dataloader()))["x"].shape[1:] == (4, 8, 8)


def test_shift_augmentation_rolls_training_items_by_multiples_of_the_step(tmp_path):
    path = save(generate_grf(4, 3, 16, seed=3), tmp_path / "g.nc")
    plain = FieldDataModule(str(path), split=(1.0, 0.0, 0.0), random_window=False)
    shifted = FieldDataModule(str(path), split=(1.0, 0.0, 0.0), random_window=False, shift=(8, 1))
    plain.setup()
    shifted.setup()
    torch.manual_seed(0)
    rolls = set()
    for i in range(12):
        a, b = plain.dataset("train")[i]["x"], shifted.dataset("train")[i]["x"]
        matches = [(dy, dx) for dy in (0, 8) for dx in range(16) if torch.equal(torch.roll(a, (dy, dx), (-2, -1)), b)]
        assert len(matches) == 1  # an exact roll by a multiple of 8 rows and any columns
        rolls.add(matches[0])
    assert len(rolls) > 1
    with pytest.raises(ValueError, match="shift"):
        FieldDataModule(str(path), shift=(-1, 0))


# --- one file per split (SDA's train.h5, valid.h5, test.h5) -----------------------------


def split_stores(tmp_path, scales=(1.0, 3.0, 10.0)) -> dict[str, str]:
    """Three stores of one grid, with different numbers of trajectories and amplitudes."""
    stores = {}
    for (name, scale), (n, seed) in zip(zip(("train", "val", "test"), scales), ((6, 0), (2, 1), (3, 2))):
        ds = generate_grf(n, 6, 16, seed=seed)
        ds = ds.assign(u=ds["u"] * scale + name.__len__(), v=ds["v"] * scale)
        stores[name] = str(save(ds, tmp_path / f"{name}.nc"))
    return stores


def test_a_mapping_of_split_files_gives_each_split_its_file_and_fits_the_normaliser_on_train_alone(tmp_path):
    stores = split_stores(tmp_path)
    data = FieldDataModule(stores, window=2, batch_size=2)
    data.setup("fit")
    assert {name: len(data.splits[name]) for name in ("train", "val", "test")} == {"train": 6, "val": 2, "test": 3}
    with xr.open_dataset(stores["train"], engine="h5netcdf") as train:
        expected = Normalizer()
        expected.fit(train["u"].values, train["v"].values)
    assert torch.equal(data.normalizer.mean, expected.mean) and torch.equal(data.normalizer.std, expected.std)
    # every test window is the test file's, back in physical units
    windows = data.test_windows()
    with xr.open_dataset(stores["test"], engine="h5netcdf") as test:
        first = torch.from_numpy(np.stack([test["u"].values[0, :2], test["v"].values[0, :2]], axis=1)).reshape(4, 16, 16)
    torch.testing.assert_close(data.normalizer.denormalize(windows["x"][0]), first.float(), rtol=1e-5, atol=1e-5)


def test_split_files_of_different_grids_or_unknown_splits_are_one_line(tmp_path):
    stores = split_stores(tmp_path)
    other = str(save(generate_grf(2, 6, 8, seed=5), tmp_path / "small.nc"))
    with pytest.raises(ValueError, match=rf"^{other}: its y grid \(8 points from 0\) differs from the other split files' \(16 from 0\)$"):
        FieldDataModule({**stores, "val": other}, window=2).setup("fit")
    with pytest.raises(ValueError, match=r"^data.path: unknown split 'valid' \(expected train, val, test\)$"):
        FieldDataModule({"train": stores["train"], "valid": stores["val"]}, window=2).setup("fit")


@pytest.mark.parametrize("split, validates", [((1.0, 0.0, 0.0), False), ((0.5, 0.5, 0.0), True)])
def test_fit_validates_only_when_the_split_has_windows(tmp_path, split, validates):
    path = save(generate_grf(4, 3, 8, seed=1), tmp_path / "grf.nc")
    dm = FieldDataModule(str(path), window=1, batch_size=2, split=split)
    module = ScorePrior(Tiny(), CosineSchedule(), lr=1e-3, precondition=False)
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, datamodule=dm)
    assert not [w for w in caught if "across ranks is zero" in str(w.message)]  # of a DataLoader, a list, ...
    assert ("val/loss" in trainer.callback_metrics) == validates
    assert trainer.num_val_batches == ([3] if validates else [])  # 2 trajectories x 3 windows in batches of 2; none requested
