"""SDA files in either spatial order, and stores that cannot lie (ldiff/data/sda.py, store.py).

The velocity fields are curls of a known stream function taken with the reader's own
periodic central differences, u = D_y psi, v = -D_x psi, so their discrete divergence
D_x u + D_y v is zero to rounding (the difference operators commute), and their
vorticity is close to the analytic -Laplacian(psi). Stored [x, y] as SDA does
(Rozet & Louppe 2023, arXiv:2306.10574), on a 24 x 16 grid (X != Y), they must import
with no layout in the right orientation.
"""

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import xarray as xr
from test_bad_input import error_line, run

from ldiff.data.grf import generate_grf
from ldiff.data.sda import LayoutWarning, read_sda_h5
from ldiff.data.store import load, save

ROOT = Path(__file__).resolve().parents[1]
NX, NY, N, T = 24, 16, 2, 3
DX, DY = 2 * math.pi / NX, 2 * math.pi / NY
# (kx, ky, amplitude, phase) of psi = sum a cos(kx x + ky y + phase), scaled per (n, t)
MODES = ((1, 0, 1.0, 0.3), (0, 2, 0.7, -1.1), (1, -1, 0.5, 2.0), (2, 1, 0.3, 0.4))


def central(f: np.ndarray, h: float, axis: int) -> np.ndarray:
    return (np.roll(f, -1, axis) - np.roll(f, 1, axis)) / (2 * h)


def flow() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """u, v (N, T, NY, NX) from the stream function, the analytic vorticity -Lap psi, and
    the exact spectral vorticity of these u, v: mode by mode, D_x turns k into
    sin(k dx) / dx, so dv/dx - du/dy = sum a (kx sin(kx dx)/dx + ky sin(ky dy)/dy) cos(...)."""
    y, x = np.meshgrid((np.arange(NY) + 0.5) * DY, (np.arange(NX) + 0.5) * DX, indexing="ij")
    psi, omega, discrete = np.zeros((3, N, T, NY, NX))
    for n in range(N):
        for t in range(T):
            for m, (kx, ky, a, phase) in enumerate(MODES):
                a = a * (1 + 0.5 * n - 0.3 * t * (-1) ** m)
                wave = np.cos(kx * x + ky * y + phase + 0.2 * t)
                psi[n, t] += a * wave
                omega[n, t] += a * (kx**2 + ky**2) * wave
                discrete[n, t] += a * (kx * math.sin(kx * DX) / DX + ky * math.sin(ky * DY) / DY) * wave
    return central(psi, DY, -2), -central(psi, DX, -1), omega, discrete


def divergence(ds: xr.Dataset) -> np.ndarray:
    """D_x u + D_y v of a store, periodic central differences with the store's spacings."""
    return central(ds["u"].values.astype(np.float64), ds.attrs["dx"], -1) + central(ds["v"].values.astype(np.float64), ds.attrs["dy"], -2)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def write_h5(path: Path, x: np.ndarray) -> Path:
    with h5py.File(path, "w") as file:
        file.create_dataset("x", data=x.astype(np.float32))
    return path


def xy_file(path: Path) -> Path:
    """The flow as SDA stores it: (N, T, 2, X, Y), arrays indexed [x, y]."""
    u, v, _, _ = flow()
    return write_h5(path, np.stack([u, v], axis=2).swapaxes(-1, -2))


# --- orientation ---------------------------------------------------------------------


def test_an_xy_file_imports_with_no_layout_in_the_right_orientation(tmp_path, capsys):
    u, v, omega, discrete = flow()
    h5 = xy_file(tmp_path / "train.h5")
    assert run("data", "import-sda", str(h5), "-o", str(tmp_path / "train.nc")) == 0
    out = capsys.readouterr().out.splitlines()
    ds = load(tmp_path / "train.nc")
    assert ds.attrs["layout"] == "N,T,C,W,H" and ds.attrs["layout_chosen"] == "detected"
    r, r_t = ds.attrs["relative_divergence"], ds.attrs["relative_divergence_transposed"]
    assert out == [f"{h5}: read as N,T,C,W,H ([x, y] order, detected): relative divergence {r:.2g} vs {r_t:.2g} transposed", str(tmp_path / "train.nc")]
    assert r < 1e-6 and r_t > 0.5
    assert np.array_equal(ds["u"].values, u.astype(np.float32)) and np.array_equal(ds["v"].values, v.astype(np.float32))
    assert ds["u"].shape == (N, T, NY, NX) and np.allclose(ds["x"].values, (np.arange(NX) + 0.5) * DX, rtol=0, atol=1e-15)
    assert (ds.attrs["dx"], ds.attrs["dy"]) == (DX, DY)
    assert correlation(ds["vorticity"].values, omega) > 0.999
    assert np.allclose(ds["vorticity"].values, discrete, rtol=0, atol=1e-5 * np.abs(discrete).max())
    assert np.abs(divergence(ds)).max() < 1e-5 * np.abs(omega).max()


def test_a_yx_file_imports_with_no_layout_too_and_the_wrong_reading_is_the_transpose(tmp_path):
    u, v, omega, discrete = flow()
    ds = read_sda_h5(write_h5(tmp_path / "yx.h5", np.stack([u, v], axis=2)))
    assert ds.attrs["layout"] == "N,T,C,H,W" and ds.attrs["relative_divergence"] < 1e-6
    assert np.array_equal(ds["u"].values, u.astype(np.float32))
    assert correlation(ds["vorticity"].values, omega) > 0.999
    assert np.allclose(ds["vorticity"].values, discrete, rtol=0, atol=1e-5 * np.abs(discrete).max())
    assert np.abs(divergence(ds)).max() < 1e-5 * np.abs(omega).max()
    with pytest.warns(LayoutWarning, match="the spatial axes H and W look swapped"):
        wrong = read_sda_h5(xy_file(tmp_path / "xy.h5"), "N,T,C,H,W")  # the old default on SDA's files
    assert wrong["u"].shape == (N, T, NX, NY)
    assert np.abs(divergence(wrong)).max() > 0.1 * np.abs(omega).max()


def test_noise_is_refused_with_no_layout_and_read_with_one(tmp_path, capsys):
    noise = np.random.default_rng(0).standard_normal((N, T, 2, NX, NY))
    h5 = write_h5(tmp_path / "noise.h5", noise)
    out = tmp_path / "noise.nc"
    assert run("data", "import-sda", str(h5), "-o", str(out)) == 2
    line = error_line(capsys)
    assert line.startswith(f"{h5}: cannot tell which spatial axis is x: relative divergence 0.")
    assert line.endswith("neither clearly divergence-free; give --layout") and not out.exists()
    assert run("data", "import-sda", str(h5), "--layout", "N,T,C,W,H", "-o", str(out)) == 0
    assert "ldiff: warning" not in capsys.readouterr().err
    assert np.array_equal(load(out)["u"].values, noise[:, :, 0].swapaxes(-1, -2).astype(np.float32))


def test_an_explicit_layout_the_data_contradict_is_obeyed_with_one_warning_line(tmp_path, capsys):
    h5 = xy_file(tmp_path / "train.h5")
    assert run("data", "import-sda", str(h5), "--layout", "N,T,C,H,W", "-o", str(tmp_path / "t.nc")) == 0
    ds = load(tmp_path / "t.nc")
    r, r_t = ds.attrs["relative_divergence"], ds.attrs["relative_divergence_transposed"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ldiff: warning:")]
    assert warnings == [f"ldiff: warning: {h5}: layout N,T,C,H,W reads a field of relative divergence {r:.2g}, but N,T,C,W,H reads one of {r_t:.2g}: the spatial axes H and W look swapped"]
    assert ds.attrs["layout_chosen"] == "given" and ds["u"].shape == (N, T, NX, NY) and r > 0.5 and r_t < 1e-6


# --- grid attributes ------------------------------------------------------------------


@pytest.mark.parametrize("flag, value", [("--dt", "nan"), ("--dt", "0"), ("--dt", "-1"), ("--lx", "inf"), ("--ly", "0")])
def test_import_sda_refuses_a_grid_attribute_that_is_not_finite_and_positive(tmp_path, capsys, flag, value):
    h5 = xy_file(tmp_path / "train.h5")
    assert run("data", "import-sda", str(h5), flag, value, "-o", str(tmp_path / "t.nc")) == 2
    assert error_line(capsys) == f"{h5}: {flag[2:]} must be a finite positive number, got {float(value)!r}"
    assert not (tmp_path / "t.nc").exists()


def test_grf_refuses_a_non_finite_alpha(tmp_path, capsys):
    assert run("data", "grf", "--alpha", "nan", "--size", "8", "-o", str(tmp_path / "g.nc")) == 2
    assert error_line(capsys) == "grf: --alpha must be a finite number, got nan"


@pytest.mark.parametrize("key, value", [("dt", np.nan), ("dx", np.inf), ("dy", 0.0), ("dt", -1.0), ("lx", np.inf)])
def test_load_refuses_a_store_whose_grid_attribute_is_not_finite_and_positive(tmp_path, key, value):
    ds = generate_grf(1, 2, 8, seed=0)
    ds.attrs[key] = value
    ds.to_netcdf(tmp_path / "bad.nc", engine="h5netcdf")  # bypasses save's check
    with pytest.raises(ValueError) as error:
        load(tmp_path / "bad.nc")
    assert str(error.value) == f"{tmp_path / 'bad.nc'}: attribute '{key}' must be a finite positive number, got {value!r}"


# --- checksums and recorded statistics ----------------------------------------------


@pytest.fixture
def store(tmp_path) -> Path:
    return save(generate_grf(4, 8, 32, seed=1), tmp_path / "grf.nc")


def test_a_store_records_checksums_and_the_statistics_of_each_variable(store):
    ds = generate_grf(4, 8, 32, seed=1)
    with h5py.File(store) as file:
        for name in ("u", "v", "vorticity"):
            assert file[name].fletcher32 and file[name].chunks is not None
            values = ds[name].values.astype(np.float64)
            recorded = {key: float(file[name].attrs[f"stats_{key}"][0]) for key in ("min", "max", "mean", "std")}
            assert recorded == {"min": values.min(), "max": values.max(), "mean": values.mean(), "std": values.std()}


def test_a_corrupted_chunk_is_one_line_naming_the_file_and_the_variable(store, tmp_path, capsys):
    data = bytearray(store.read_bytes())
    middle = len(data) // 2
    with h5py.File(store) as file:
        hit = [name for name in ("u", "v", "vorticity")
               for info in (file[name].id.get_chunk_info(i) for i in range(file[name].id.get_num_chunks()))
               if info.byte_offset <= middle - 1000 and middle + 1000 <= info.byte_offset + info.size]  # fmt: skip
    assert len(hit) == 1
    for i in range(middle - 1000, middle + 1000):
        data[i] ^= 0x5A
    bad = tmp_path / "bad.nc"
    bad.write_bytes(data)
    prefix = f"{bad}: variable '{hit[0]}' cannot be read, its data are corrupt (OSError: "
    with pytest.raises(ValueError) as error:
        load(bad)
    assert str(error.value).startswith(prefix) and "\n" not in str(error.value)
    config = ROOT / "configs" / "prior" / "grf-tiny.yaml"
    assert run("fit", "--config", str(config), "--data.path", str(bad), "--trainer.default_root_dir", str(tmp_path / "run")) == 2
    assert error_line(capsys).startswith(prefix)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_values_changed_behind_the_checksums_are_refused_against_the_recorded_statistics(store):
    with h5py.File(store, "r+") as file:  # h5py rewrites the chunk and its checksum
        old = float(file["u"].attrs["stats_max"][0])
        file["u"][1, 2, 3, 4] = np.float32(old + 1.0)
        new = float(np.float32(old + 1.0))
    with pytest.raises(ValueError) as error:
        load(store)
    assert str(error.value) == (f"{store}: variable 'u' does not match the statistics recorded when it was written "
                                f"(max {new:.9g}, recorded {old:.9g}); the file was changed since")  # fmt: skip


def test_a_store_written_before_checksums_and_statistics_still_loads(tmp_path):
    ds = generate_grf(2, 3, 8, seed=2)
    ds.to_netcdf(tmp_path / "old.nc", engine="h5netcdf")
    loaded = load(tmp_path / "old.nc")
    assert np.array_equal(loaded["u"].values, ds["u"].values) and "stats_min" not in loaded["u"].attrs


def test_merge_records_the_statistics_of_the_merged_values(store, tmp_path):
    other = save(generate_grf(4, 8, 32, seed=2), tmp_path / "other.nc")
    assert run("data", "merge", str(store), str(other), "-o", str(tmp_path / "m.nc")) == 0
    merged, first = load(tmp_path / "m.nc"), load(store)
    values = merged["u"].values.astype(np.float64)
    assert merged["u"].attrs["stats_std"] == values.std() != first["u"].attrs["stats_std"]
    assert merged["u"].attrs["stats_mean"] == values.mean()


# --- SDA's three files as the three splits ---------------------------------------------


def test_three_sda_split_files_train_a_prior_with_the_normaliser_of_train_alone(tmp_path, capsys):
    """SDA keeps ``train.h5``, ``valid.h5`` and ``test.h5``; given as ``data.path``
    ``{train, val, test}``, each is read in its right orientation and ``ldiff fit``
    trains on train, with the normaliser of train alone (val and test are scaled 3x and
    10x and shifted: any of their frames in the statistics would show)."""
    u, v, _, _ = flow()
    files = {}
    for name, file, scale, shift in (("train", "train.h5", 1.0, 0.0), ("val", "valid.h5", 3.0, 1.0), ("test", "test.h5", 10.0, -2.0)):
        files[name] = str(write_h5(tmp_path / file, (scale * np.stack([u, v], axis=2) + shift).swapaxes(-1, -2)))
    args = ["fit", "--config", str(ROOT / "configs" / "prior" / "grf-tiny.yaml"), "--data.path", json.dumps(files),
            "--data.batch_size", "2", "--trainer.max_epochs", "1", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path / "run")]  # fmt: skip
    assert run(*args) == 0
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 1  # 2 train trajectories, one window each, batches of 2
    expected = torch.tensor([[u.mean(), v.mean()], [u.std(), v.std()]], dtype=torch.float64)
    got = torch.stack([checkpoint["normalizer"]["mean"], checkpoint["normalizer"]["std"]]).double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
