"""Readers of IBPM Tecplot runs and SDA HDF5 files, and the ``ldiff data`` commands."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ldiff.data.commands import add_data_commands
from ldiff.data.grf import generate_grf
from ldiff.data.ibpm import parse_ibpm_cmd, read_ibpm_dir, read_plt
from ldiff.data.sda import parse_layout, read_sda_h5
from ldiff.data.store import load

# a 6 x 5 cell IBPM grid: interior nodes i = 1..5, j = 1..4, spacing 0.5
NX, NY, LENGTH, X0, Y0 = 6, 5, 3.0, -1.0, -1.5
CMD = f"../build/ibpm -nx {NX} -ny {NY} -length {LENGTH} -xoffset {X0} -yoffset {Y0} -dt 0.025 -tecplot 4 -Re 150\n"


def fields(step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """u, v, vorticity at interior node (j, i), i = 1..NX-1 fastest; not symmetric in i, j."""
    i = np.arange(1, NX)[None, :]
    j = np.arange(1, NY)[:, None]
    return i + 10.0 * j + step, 100.0 + i * j, -(i - 2.0 * j) / 4


def plt_text(step: int, u=None, v=None, w=None, variables='"x" "y" "u" "v" "Vorticity" ') -> str:
    """A Tecplot file exactly as IBPM's writeTecplotFileASCII prints it."""
    du, dv, dw = fields(step)
    u, v, w = (du if u is None else u), (dv if v is None else v), (dw if w is None else w)
    dx = LENGTH / NX
    lines = [
        f'TITLE = "Test run, step{step:05d}"',
        f"VARIABLES = {variables}",
        'ZONE T="Rectangular zone"',
        f"I={NX - 1}, J={NY - 1}, K=1, ZONETYPE=Ordered",
        "DATAPACKING=POINT",
        "DT=(SINGLE SINGLE SINGLE SINGLE SINGLE )",
    ]
    for j in range(1, NY):
        for i in range(1, NX):
            row = (X0 + i * dx, Y0 + j * dx, u[j - 1, i - 1], v[j - 1, i - 1], w[j - 1, i - 1])
            lines.append("".join(f"{value:.5e} " for value in row))
    return "\n".join(lines) + "\n"


def write_run(directory: Path, steps=(0, 4, 8), cmd: str | None = CMD) -> Path:
    directory.mkdir(exist_ok=True)
    for step in steps:
        (directory / f"ibpm{step:05d}.plt").write_text(plt_text(step))
    if cmd is not None:
        (directory / "ibpm.cmd").write_text(cmd)
    return directory


# --- IBPM ---------------------------------------------------------------------------


def test_parse_ibpm_cmd_reads_flags_and_fills_ibpm_defaults(tmp_path):
    path = tmp_path / "ibpm.cmd"
    path.write_text("ibpm -name run -nx 400 -ny 200 -length 16 -xoffset -4 -yoffset -4 -dt 0.02 -tecplot 10\n")
    options = parse_ibpm_cmd(path)
    expected = {"nx": 400, "ny": 200, "length": 16.0, "xoffset": -4.0, "yoffset": -4.0, "dt": 0.02, "tecplot": 10}
    assert {key: options[key] for key in expected} == expected
    assert (options["ngrid"], options["Re"]) == (1, 100.0)  # IBPM's defaults
    assert isinstance(options["nx"], int) and isinstance(options["length"], float)


def test_parse_ibpm_cmd_bad_value_names_file_and_flag(tmp_path):
    path = tmp_path / "ibpm.cmd"
    path.write_text("ibpm -nx four\n")
    with pytest.raises(ValueError, match=r"ibpm\.cmd.*-nx"):
        parse_ibpm_cmd(path)


def test_read_plt_values_exact_with_i_fastest(tmp_path):
    path = tmp_path / "ibpm00004.plt"
    path.write_text(plt_text(4))
    n_i, n_j, values = read_plt(path)
    u, v, w = fields(4)
    assert (n_i, n_j) == (5, 4)
    assert np.array_equal(values[..., 2], u)  # u[j, i] = i + 10 j + 4: a transpose would differ
    assert np.array_equal(values[..., 3], v)
    assert np.array_equal(values[..., 4], w)
    assert np.array_equal(values[0, :, 0], X0 + 0.5 * np.arange(1, 6))


def test_read_ibpm_dir_builds_store_from_cmd(tmp_path):
    ds = read_ibpm_dir(write_run(tmp_path / "run"))
    assert ds["u"].shape == (1, 3, 4, 5)
    for k, step in enumerate((0, 4, 8)):
        u, v, w = fields(step)
        assert np.array_equal(ds["u"].values[0, k], u)
        assert np.array_equal(ds["v"].values[0, k], v)
        assert np.array_equal(ds["vorticity"].values[0, k], w)
    assert np.array_equal(ds["x"].values, X0 + 0.5 * np.arange(1, NX))
    assert np.array_equal(ds["y"].values, Y0 + 0.5 * np.arange(1, NY))
    assert np.array_equal(ds["time"].values, np.array([0, 4, 8]) * 0.025)
    attrs = ds.attrs
    assert (attrs["flow"], attrs["periodic"], attrs["dx"], attrs["dy"]) == ("cylinder", 0, 0.5, 0.5)
    assert (attrs["dt"], attrs["dt_solver"], attrs["Re"]) == (4 * 0.025, 0.025, 150.0)


def test_read_ibpm_dir_sorts_steps_numerically(tmp_path):
    ds = read_ibpm_dir(write_run(tmp_path / "run", steps=(100, 20, 60), cmd=None), dt=0.5)
    assert np.array_equal(ds["time"].values, [10.0, 30.0, 50.0])
    assert np.array_equal(ds["u"].values[0, 0], fields(20)[0])
    assert (ds.attrs["dt"], ds.attrs["dx"]) == (20.0, 0.5)  # spacing from the file's columns


def test_read_ibpm_dir_needs_dt_without_cmd(tmp_path):
    with pytest.raises(ValueError, match=r"run: no ibpm\.cmd.*dt"):
        read_ibpm_dir(write_run(tmp_path / "run", cmd=None))


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: (d / "ibpm00004.plt").write_text(plt_text(4)[:-40]), r"ibpm00004\.plt: truncated"),
        (lambda d: (d / "ibpm00004.plt").write_text(plt_text(4).rsplit("\n", 3)[0] + "\n"), r"ibpm00004\.plt: 18 points"),
        (lambda d: (d / "ibpm00004.plt").write_text(plt_text(4, variables='"x" "y" "u" "v" "p" ')), r"ibpm00004\.plt: VARIABLES"),
        (lambda d: (d / "ibpm00004.plt").write_text(plt_text(4).replace("1.01000e+02", "abc", 1)), r"ibpm00004\.plt: unreadable"),
        (lambda d: (d / "ibpm00004.plt").write_text(plt_text(4, u=np.full((4, 5), np.nan))), r"ibpm00004\.plt: variable 'u' holds 20 NaN"),
        (lambda d: (d / "ibpm00008.plt").write_text(plt_text(8).replace("I=5, J=4", "I=4, J=5")), r"ibpm00008\.plt: points are not a grid"),
        (lambda d: (d / "ibpm00013.plt").write_text(plt_text(13)), r"run: steps are not evenly spaced \(0 to 4 but 8 to 13\)"),
        (lambda d: (d / "ibpm.cmd").write_text(CMD.replace("-nx 6", "-nx 7")), r"ibpm00000\.plt: 5 x 4 points, ibpm\.cmd says"),
        (lambda d: (d / "ibpm.cmd").write_text(CMD.replace("-xoffset -1.0", "-xoffset -2")), r"disagree with the grid"),
    ],
    ids=["truncated-line", "missing-lines", "variables", "non-numeric", "nan", "grid", "steps", "cmd-size", "cmd-offset"],
)
def test_read_ibpm_dir_errors_name_the_file(tmp_path, setup, message):
    directory = write_run(tmp_path / "run")
    setup(directory)
    with pytest.raises(ValueError, match=message):
        read_ibpm_dir(directory)


def test_read_ibpm_dir_differing_grids_names_second_file(tmp_path):
    directory = write_run(tmp_path / "run", cmd=None)
    text = plt_text(4).replace("I=5, J=4", "I=4, J=5").splitlines()
    # a 4 x 5 grid that is a valid grid by itself
    body = [f"{i:.5e} {j:.5e} 1 1 1 " for j in range(5) for i in range(4)]
    (directory / "ibpm00004.plt").write_text("\n".join(text[:6] + body) + "\n")
    with pytest.raises(ValueError, match=r"ibpm00004\.plt: grid differs from ibpm00000\.plt"):
        read_ibpm_dir(directory, dt=1.0)


def test_read_ibpm_dir_empty_directory(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "ibpm.cmd").write_text(CMD)
    with pytest.raises(ValueError, match=r"run: no ibpmNNNNN\.plt files"):
        read_ibpm_dir(tmp_path / "run")


def test_read_ibpm_dir_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_ibpm_dir(tmp_path / "nowhere")


VALID_PLT = plt_text(4).encode()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, len(VALID_PLT) - 1))
def test_every_truncation_of_a_plt_file_is_a_value_error_naming_it(tmp_path, cut):
    path = tmp_path / "ibpm00004.plt"
    path.write_bytes(VALID_PLT[:cut])
    with pytest.raises(ValueError, match=r"ibpm00004\.plt"):
        read_plt(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(0, len(VALID_PLT) - 1), byte=st.integers(0, 255))
def test_a_corrupted_byte_in_a_plt_file_changes_at_most_one_value_or_is_a_value_error_naming_it(tmp_path, position, byte):
    """A byte changed anywhere either fails with the file's name, or reads the same grid
    with every value as written except at most the one number the byte sits in (a
    changed digit or sign): never a shifted, merged or reshaped array."""
    (tmp_path / "valid.plt").write_bytes(VALID_PLT)
    expected = read_plt(tmp_path / "valid.plt")
    path = tmp_path / "ibpm00004.plt"
    path.write_bytes(VALID_PLT[:position] + bytes([byte]) + VALID_PLT[position + 1 :])
    try:
        n_i, n_j, values = read_plt(path)
    except ValueError as error:
        assert "ibpm00004.plt" in str(error)
    else:
        assert (n_i, n_j) == expected[:2] and values.shape == expected[2].shape
        assert np.isfinite(values).all()
        assert (values != expected[2]).sum() <= 1


# --- SDA HDF5 -------------------------------------------------------------------------


def sda_array(n=3, t=4, h=5, w=6) -> np.ndarray:
    """x[n, t, c, h, w] = 1000 n + 100 t + 10 c + h + w / 10, all distinct."""
    grid = np.meshgrid(*(np.arange(size) for size in (n, t, 2, h, w)), indexing="ij")
    return (1000 * grid[0] + 100 * grid[1] + 10 * grid[2] + grid[3] + grid[4] / 10).astype(np.float32)


def write_h5(path: Path, **datasets) -> Path:
    with h5py.File(path, "w") as file:
        for name, array in datasets.items():
            file.create_dataset(name, data=array)
    return path


def test_read_sda_h5_values_coordinates_and_attrs(tmp_path):
    x = sda_array()  # a ramp, divergence-free in neither orientation: the layout is given
    ds = read_sda_h5(write_h5(tmp_path / "train.h5", x=x), "N,T,C,H,W")
    assert np.array_equal(ds["u"].values, x[:, :, 0]) and np.array_equal(ds["v"].values, x[:, :, 1])
    assert ds["u"].dims == ("trajectory", "time", "y", "x") and ds["u"].shape == (3, 4, 5, 6)
    assert np.allclose(ds["x"].values, (np.arange(6) + 0.5) * 2 * math.pi / 6, rtol=0, atol=1e-15)
    assert np.allclose(ds["time"].values, [0.0, 0.2, 0.4, 0.6], rtol=0, atol=1e-15)
    assert ds.attrs["layout"] == "N,T,C,H,W" and ds.attrs["source"].endswith("train.h5")
    assert (ds.attrs["dt"], ds.attrs["periodic"], ds.attrs["dy"]) == (0.2, 1, 2 * math.pi / 5)


@pytest.mark.parametrize("layout", ["T,N,C,H,W", "n, c, t, w, h", "W,H,C,T,N"])
def test_read_sda_h5_permuted_layouts_give_the_identical_store(tmp_path, layout):
    x = sda_array()
    reference = read_sda_h5(write_h5(tmp_path / "a.h5", x=x), "N,T,C,H,W")
    permuted = x.transpose([parse_layout(layout).index(axis) for axis in range(5)])
    ds = read_sda_h5(write_h5(tmp_path / "b.h5", x=permuted), layout)
    assert permuted.shape != x.shape
    for name in ("u", "v", "vorticity", "x", "y", "time"):
        assert ds[name].equals(reference[name])


@pytest.mark.parametrize("layout", ["N,T,C,H", "N,T,C,H,H", "N,T,X,H,W", "NTCHW", "N,T,C,H,W,W"])
def test_parse_layout_refuses_non_permutations(layout):
    with pytest.raises(ValueError, match=r"layout .* not a permutation of N,T,C,H,W"):
        parse_layout(layout)


def test_read_sda_h5_refuses_a_c_axis_not_of_size_two(tmp_path):
    path = write_h5(tmp_path / "a.h5", x=sda_array())
    with pytest.raises(ValueError, match=r"a\.h5: axis C of layout 'N,C,T,H,W' has size 4"):
        read_sda_h5(path, "N,C,T,H,W")


@pytest.mark.parametrize(
    "datasets, message",
    [
        ({"y": np.zeros(3), "z": np.zeros(2)}, r"a\.h5: no numeric dataset 'x' \(keys: y, z\)"),
        ({"x": np.zeros((2, 2, 2, 2))}, r"a\.h5: dataset 'x' has shape \(2, 2, 2, 2\), rank 4"),
        ({"x": np.full((1, 1, 2, 2, 2), np.nan)}, r"a\.h5: variable 'u' holds 4 NaN"),
    ],
    ids=["no-x", "rank", "nan"],
)
def test_read_sda_h5_errors_name_the_file(tmp_path, datasets, message):
    path = write_h5(tmp_path / "a.h5", **datasets)
    with pytest.raises(ValueError, match=message):
        read_sda_h5(path)


def test_read_sda_h5_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"none\.h5"):
        read_sda_h5(tmp_path / "none.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match=r"text\.h5: not a readable HDF5 file"):
        read_sda_h5(tmp_path / "text.h5")


@pytest.fixture(scope="module")
def valid_h5(tmp_path_factory) -> bytes:
    return write_h5(tmp_path_factory.mktemp("h5") / "a.h5", x=sda_array(2, 2, 4, 4)).read_bytes()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_every_truncation_of_an_hdf5_file_is_a_value_error_naming_it(tmp_path, valid_h5, fraction):
    path = tmp_path / "cut.h5"
    path.write_bytes(valid_h5[: int(fraction * len(valid_h5))])
    with pytest.raises(ValueError, match=r"cut\.h5"):
        read_sda_h5(path)


# --- commands ------------------------------------------------------------------------


def run_command(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="ldiff")
    add_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


def test_data_grf_command_writes_the_generator_output(tmp_path):
    out = tmp_path / "grf.nc"
    run_command(["data", "grf", "-o", str(out), "--trajectories", "2", "--frames", "3", "--size", "8", "--seed", "5"])
    stored, generated = load(out), generate_grf(2, 3, 8, 5)
    assert np.array_equal(stored["u"].values, generated["u"].values)
    assert np.array_equal(stored["v"].values, generated["v"].values)


def test_data_import_commands_write_the_reader_output(tmp_path):
    run_command(["data", "import-ibpm", str(write_run(tmp_path / "run")), "-o", str(tmp_path / "ibpm.nc")])
    assert np.array_equal(load(tmp_path / "ibpm.nc")["u"].values[0, 1], fields(4)[0])
    x = sda_array()
    h5 = write_h5(tmp_path / "t.h5", x=x.transpose(1, 0, 2, 3, 4))
    run_command(["data", "import-sda", str(h5), "--layout", "T,N,C,H,W", "--dt", "0.5", "-o", str(tmp_path / "sda.nc")])
    stored = load(tmp_path / "sda.nc")
    assert np.array_equal(stored["v"].values, x[:, :, 1]) and stored.attrs["dt"] == 0.5
