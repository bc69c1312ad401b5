"""``ldiff data import-arrays``: plain velocity arrays into a store (ldiff/data/arrays.py)."""


import h5py
import numpy as np
import pytest
import xarray as xr
from test_bad_input import error_line, run

from ldiff.data.arrays import read_arrays
from ldiff.data.store import load

GRID = {"x0": -1.5, "y0": 2.0, "dx": 0.25, "dy": 0.5, "dt": 0.1}
FLAGS = ["--x0", "-1.5", "--y0", "2.0", "--dx", "0.25", "--dy", "0.5", "--dt", "0.1"]


def distinct(*shape: int) -> np.ndarray:
    """Every value different and each index readable from it (base-10 digits per axis)."""
    grid = np.meshgrid(*(np.arange(size) for size in shape), indexing="ij")
    return sum(g * 10.0 ** (len(shape) - 1 - i) for i, g in enumerate(grid)).astype(np.float32)


def test_interleaved_frames_of_a_npy_file_land_on_time_component_y_x(tmp_path, capsys):
    a = distinct(6, 4, 5)  # 3 frames of u, v interleaved, H = 4, W = 5
    np.save(tmp_path / "a.npy", a)
    assert run("data", "import-arrays", str(tmp_path / "a.npy"), *FLAGS, "-o", str(tmp_path / "a.nc")) == 0
    ds = load(tmp_path / "a.nc")
    assert ds["u"].shape == (1, 3, 4, 5)
    for t in range(3):
        assert np.array_equal(ds["u"].values[0, t], a[2 * t]) and np.array_equal(ds["v"].values[0, t], a[2 * t + 1])
    assert ds["x"].values.tolist() == [-1.5, -1.25, -1.0, -0.75, -0.5] and ds["y"].values.tolist() == [2.0, 2.5, 3.0, 3.5]
    assert ds["time"].values.tolist() == [0.0, 0.1, 0.2]
    assert (ds.attrs["dx"], ds.attrs["dy"], ds.attrs["dt"], ds.attrs["periodic"], ds.attrs["layout"]) == (0.25, 0.5, 0.1, 0, "TC,H,W")
    with h5py.File(tmp_path / "a.nc") as file:
        assert file["u"].fletcher32 and "stats_mean" in file["u"].attrs


def test_interleaved_frames_indexed_x_y(tmp_path):
    a = distinct(4, 5, 3)  # [x, y]: W = 5, H = 3
    np.save(tmp_path / "a.npy", a)
    ds = read_arrays(tmp_path / "a.npy", layout="TC,W,H", **GRID)
    assert ds["u"].shape == (1, 2, 3, 5) and np.array_equal(ds["v"].values[0, 1], a[3].T)


def test_a_five_axis_h5_dataset_by_key_and_a_permuted_layout(tmp_path):
    x = distinct(2, 3, 2, 4, 5)
    with h5py.File(tmp_path / "a.h5", "w") as file:
        file["velocity"] = x
        file["group/other"] = np.zeros(3)
    ds = read_arrays(tmp_path / "a.h5", key="velocity", periodic=True, **GRID)
    assert np.array_equal(ds["u"].values, x[:, :, 0]) and np.array_equal(ds["v"].values, x[:, :, 1])
    assert ds["u"].dims == ("trajectory", "time", "y", "x") and ds.attrs["periodic"] == 1
    assert ds.attrs["source"] == f"{tmp_path / 'a.h5'}:velocity"
    with h5py.File(tmp_path / "b.h5", "w") as file:
        file["x"] = x.transpose(1, 0, 4, 3, 2)  # T, N, W, H, C
    permuted = read_arrays(tmp_path / "b.h5", layout="T,N,W,H,C", **GRID)
    assert np.array_equal(permuted["u"].values, x[:, :, 0]) and permuted.attrs["layout"] == "T,N,W,H,C"


def test_a_netcdf_variable_by_key_or_the_only_one(tmp_path):
    x = distinct(1, 2, 2, 3, 4)
    xr.Dataset({"vel": (("n", "t", "c", "h", "w"), x)}).to_netcdf(tmp_path / "a.nc", engine="h5netcdf")
    for key in ("vel", None):
        ds = read_arrays(tmp_path / "a.nc", key=key, **GRID)
        assert np.array_equal(ds["v"].values, x[:, :, 1])


@pytest.mark.parametrize("shape, message", [
    ((5, 4, 4), "array 'x' has shape (5, 4, 4), whose first axis (5) is not an even number of u, v frames; "
                "expected (T*2, H, W) with frames interleaved u, v, u, v, ... or (N, T, 2, H, W)"),
    ((2, 4, 4, 4), "array 'x' has shape (2, 4, 4, 4), rank 4; expected (T*2, H, W) with frames interleaved u, v, u, v, ... or (N, T, 2, H, W)"),
    ((1, 2, 3, 4, 4), "array 'x' has shape (1, 2, 3, 4, 4): axis C of layout 'N,T,C,H,W' has size 3, expected 2 (u, v)"),
], ids=["odd", "rank", "components"])  # fmt: skip
def test_bad_shapes_are_one_line_naming_the_file_and_the_key(tmp_path, capsys, shape, message):
    with h5py.File(tmp_path / "a.h5", "w") as file:
        file["x"] = np.zeros(shape)
    assert run("data", "import-arrays", str(tmp_path / "a.h5"), "--key", "x", *FLAGS, "-o", str(tmp_path / "o.nc")) == 2
    assert error_line(capsys) == f"{tmp_path / 'a.h5'}: {message}"
    assert not (tmp_path / "o.nc").exists()


def test_missing_keys_are_one_line_naming_the_file_and_the_key(tmp_path, capsys):
    with h5py.File(tmp_path / "a.h5", "w") as file:
        file["u"], file["g/v"] = np.zeros((2, 3, 3)), np.zeros((2, 3, 3))
    xr.Dataset({"a": ("n", np.zeros(2)), "b": ("n", np.zeros(2))}).to_netcdf(tmp_path / "a.nc", engine="h5netcdf")
    out = str(tmp_path / "o.nc")
    assert run("data", "import-arrays", str(tmp_path / "a.h5"), "--key", "w", *FLAGS, "-o", out) == 2
    assert error_line(capsys) == f"{tmp_path / 'a.h5'}: no dataset 'w' (datasets: g/v, u)"
    assert run("data", "import-arrays", str(tmp_path / "a.h5"), *FLAGS, "-o", out) == 2
    assert error_line(capsys) == f"{tmp_path / 'a.h5'}: holds 2 datasets (g/v, u); name one with --key"
    assert run("data", "import-arrays", str(tmp_path / "a.nc"), "--key", "c", *FLAGS, "-o", out) == 2
    assert error_line(capsys) == f"{tmp_path / 'a.nc'}: no variable 'c' (variables: a, b)"


@pytest.mark.parametrize("flag, value", [("--dt", "nan"), ("--dx", "inf"), ("--dy", "0"), ("--dx", "-1")])
def test_grid_flags_that_are_not_finite_and_positive_are_refused(tmp_path, capsys, flag, value):
    np.save(tmp_path / "a.npy", np.zeros((2, 3, 3)))
    flags = FLAGS.copy()
    flags[flags.index(flag) + 1] = value
    assert run("data", "import-arrays", str(tmp_path / "a.npy"), *flags, "-o", str(tmp_path / "o.nc")) == 2
    assert error_line(capsys) == f"{tmp_path / 'a.npy'}: {flag[2:]} must be a finite positive number, got {float(value)!r}"
