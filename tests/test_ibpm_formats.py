"""IBPM runs as IBPM writes them (https://github.com/cwrowley/ibpm): ``<name>.cmd`` and
``<name>NNNNN.plt`` for any ``-name``, the ``.geom`` body as the store's ``mask``, the
per-grid files of ``-tecplotallgrids``, the binary restart files ``<name>NNNNN.bin``, and
a 16-frame window of an imported run through ``ldiff fit``.

Every input is built here in IBPM's exact format, from its source: the ``.cmd`` line as
``ParmParser::saveParameters`` prints it (options in the order ``ibpm.cc`` queries them,
doubles as C++ streams print them), the Tecplot files as ``writeTecplotFileASCII``, the
restart files as ``State::save`` (native byte order, 4-byte int, 8-byte double, no padding)
and the geometry files in ``RigidBody::load``'s grammar.
"""

from __future__ import annotations

import math
import struct
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from ldiff.cli import main
from ldiff.data.conditions import mask as mask_condition
from ldiff.data.ibpm import read_ibpm_dir
from ldiff.data.ibpm_restart import read_restart
from ldiff.data.ibpm_geom import body_mask, read_geom
from ldiff.data.store import load

ROOT = Path(__file__).resolve().parents[1]
# the order in which src/ibpm.cc queries its options: the order of the saved .cmd line
CMD_ORDER = ("name", "outdir", "tecplot", "tecplotallgrids", "restart", "force", "energy", "numdigfilename",
             "nx", "ny", "ngrid", "length", "xoffset", "yoffset", "xshift", "yshift", "alpha",
             "geom", "ubf", "Re", "model", "baseflow", "ic", "resettime", "subbaseflow", "dt", "nsteps", "scheme")  # fmt: skip

# an 8 x 4 cell grid, spacing 0.5, domain [-1, 3] x [-1, 1]: interior nodes 7 x 3
NX, NY, LENGTH, X0, Y0, DT = 8, 4, 4.0, -1.0, -1.0, 0.025


def cmd_text(**options) -> str:
    """``<name>.cmd`` as ParmParser::saveParameters writes it: the executable, then each
    option given, in ibpm.cc's order, its value printed by an ostream (``%g``-like)."""
    words = ["../build/ibpm"]
    for key in CMD_ORDER:
        if key in options:
            value = options[key]
            words += [f"-{key}", f"{value:g}" if isinstance(value, float) else str(int(value) if isinstance(value, bool) else value)]
    return " ".join(words) + "\n"


def level_grid(level: int, nx=NX, ny=NY, length=LENGTH, x0=X0, y0=Y0, xshift=0.0, yshift=0.0):
    """Grid::getXEdge / getYEdge of the interior vertices of grid ``level``."""
    dx = length / nx
    xo = x0 + 0.5 * (xshift - 1) * ((1 << level) - 1) * (nx * dx)
    yo = y0 + 0.5 * (yshift - 1) * ((1 << level) - 1) * (ny * dx)
    d = dx * (1 << level)
    return xo + np.arange(1, nx) * d, yo + np.arange(1, ny) * d


def frame(step: int, level: int = 0, nx=NX, ny=NY):
    """u, v, vorticity at interior vertex [j - 1, i - 1]: distinct per step, level, i, j."""
    i = np.arange(1, nx)[None, :]
    j = np.arange(1, ny)[:, None]
    return i + 10.0 * j + 100 * step + 1000 * level, -(i * j) - 0.5 * level, 0.25 * (i - 2 * j) + step


def plt_text(step: int, x, y, u, v, w) -> str:
    """writeTecplotFileASCII's output for one grid level."""
    lines = [f'TITLE = "Test run, step{step:05d}"', 'VARIABLES = "x" "y" "u" "v" "Vorticity" ', 'ZONE T="Rectangular zone"',
             f"I={len(x)}, J={len(y)}, K=1, ZONETYPE=Ordered", "DATAPACKING=POINT", "DT=(SINGLE SINGLE SINGLE SINGLE SINGLE )"]  # fmt: skip
    for jj in range(len(y)):
        for ii in range(len(x)):
            lines.append("".join(f"{value:.5e} " for value in (x[ii], y[jj], u[jj, ii], v[jj, ii], w[jj, ii])))
    return "\n".join(lines) + "\n"


def write_plt_run(directory: Path, name="cyl", steps=(0, 10, 20), ngrid=1, all_grids=False, geom=None, **extra) -> Path:
    """A run made with ``-name NAME`` (and ``-tecplotallgrids 1`` when ``all_grids``)."""
    directory.mkdir(parents=True, exist_ok=True)
    options = dict(name=name, tecplot=10, nx=NX, ny=NY, ngrid=ngrid, length=LENGTH, xoffset=X0, yoffset=Y0, dt=DT, Re=200.0)
    if all_grids:
        options["tecplotallgrids"] = True
    if geom is not None:
        options["geom"] = geom
    options.update(extra)
    (directory / f"{name}.cmd").write_text(cmd_text(**options))
    for step in steps:
        for level in range(ngrid) if all_grids else (0,):
            x, y = level_grid(level, xshift=options.get("xshift", 0.0))
            suffix = f"_g{level:01d}" if all_grids else ""
            (directory / f"{name}{step:05d}{suffix}.plt").write_text(plt_text(step, x, y, *frame(step, level)))
    return directory


def console(*args: str) -> int:
    with mock.patch.object(sys, "argv", ["ldiff"]):
        return main(list(args))


# --- names from the .cmd file --------------------------------------------------------------


def test_a_run_made_with_name_cyl_imports_from_its_cmd_file(tmp_path):
    run = write_plt_run(tmp_path / "run", name="cyl")
    (run / "ibpm00000.plt").write_text("not read: another name\n")
    ds = read_ibpm_dir(run)
    x, y = level_grid(0)
    assert ds["u"].shape == (1, 3, NY - 1, NX - 1)
    for k, step in enumerate((0, 10, 20)):
        u, v, w = frame(step)
        assert np.array_equal(ds["u"].values[0, k], u) and np.array_equal(ds["v"].values[0, k], v)
        assert np.array_equal(ds["vorticity"].values[0, k], w)
    assert np.array_equal(ds["x"].values, x) and np.array_equal(ds["y"].values, y)
    assert np.array_equal(ds["time"].values, np.array([0, 10, 20]) * DT)
    assert (ds.attrs["dt"], ds.attrs["Re"], ds.attrs["grid"], ds.attrs["ibpm_files"]) == (10 * DT, 200.0, 0, "plt")
    assert ds.attrs["command"].startswith("../build/ibpm -name cyl -tecplot 10 -nx 8")
    assert "mask" not in ds  # no -geom, and no cyl.geom beside the output


def test_several_cmd_files_are_refused_listing_them_or_chosen_by_name(tmp_path, capsys):
    run = write_plt_run(tmp_path / "run", name="cyl")
    write_plt_run(run, name="wing", steps=(0, 5))
    with pytest.raises(ValueError, match=r"run: several IBPM runs \(cyl\.cmd, wing\.cmd\); choose one with --name"):
        read_ibpm_dir(run)
    assert read_ibpm_dir(run, name="wing").sizes["time"] == 2
    assert console("data", "import-ibpm", str(run), "--name", "cyl", "-o", str(tmp_path / "c.nc")) == 0
    assert load(tmp_path / "c.nc").sizes["time"] == 3
    assert console("data", "import-ibpm", str(run), "-o", str(tmp_path / "d.nc")) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"ldiff: error: {run}: several IBPM runs (cyl.cmd, wing.cmd)")
    assert not (tmp_path / "d.nc").exists()


# --- the body mask from the geometry file -------------------------------------------------

CIRCLE_GEOM = """# Cylinder, diameter 1.2, with 40 points
body Cylinder
  circle_n 0.25 -0.1 0.6 40   # xc yc r n
end
"""


def test_the_geom_circle_is_the_mask_and_the_cylinder_attrs(tmp_path):
    # IBPM ran from elsewhere with -geom geoms/cyl.geom; the file sits beside the output
    run = write_plt_run(tmp_path / "run", geom="geoms/cyl.geom")
    (run / "cyl.geom").write_text(CIRCLE_GEOM)
    ds = read_ibpm_dir(run)
    x, y = np.meshgrid(*level_grid(0))
    disc = (x - 0.25) ** 2 + (y + 0.1) ** 2 <= 0.36
    assert 0 < disc.sum() < disc.size
    assert np.array_equal(ds["mask"].values, (~disc).astype(np.float32))
    assert ds["mask"].dims == ("y", "x")
    assert (ds.attrs["cylinder_x"], ds.attrs["cylinder_y"], ds.attrs["cylinder_radius"]) == (0.25, -0.1, 0.6)
    assert ds.attrs["geometry"] == str(run / "cyl.geom")
    # the condition channel the cylinder prior trains on is this mask
    assert np.array_equal(mask_condition(ds).numpy()[0], ds["mask"].values)


def test_a_polygon_body_moved_by_motion_fixed_is_masked_inside_its_outline(tmp_path):
    geom = tmp_path / "plate.geom"
    # the square [0, 1] x [0, 1] in four line commands, then shifted by (-0.5, -0.25)
    # and rotated by pi/2 about its center (0.5, 0.5): the square [-0.5, 0.5] x [-0.25, 0.75]
    geom.write_text(
        "BODY Square\n  center 0.5 0.5\n  line 0 0 1 0 0.25\n  line 1 0 1 1 0.25\n  line 1 1 0 1 0.25\n"
        "  line 0 1 0 0 0.25\n  Motion Fixed -0.5 -0.25 1.5707963267948966\nend\n# trailing comment\n"
    )
    (body,) = read_geom(geom)
    assert body.name == "Square" and body.circle is None and len(body.points) == 4 * 5
    assert np.allclose(body.points[0], (1.0 - 0.5, 0.0 - 0.25))  # (0, 0) -> center + R(pi/2)(-0.5, -0.5) + shift
    x = np.array([-0.6, -0.4, 0.0, 0.4, 0.6])
    y = np.array([-0.3, -0.2, 0.5, 0.7, 0.8])
    inside = (np.abs(x)[None, :] < 0.5) & (y[:, None] > -0.25) & (y[:, None] < 0.75)
    assert np.array_equal(body_mask([body], x, y), (~inside).astype(np.float32))


@pytest.mark.parametrize(
    "text, message",
    [
        ("body A\n  circle_n 0 0 0.5\nend\n", r"bad\.geom: line 2: circle_n needs 4 numbers, got 3"),
        ("body A\n  circle 0 0 half 0.1\nend\n", r"bad\.geom: line 2: circle has non-numeric arguments"),
        ("body A\n  sphere 0 0 1\nend\n", r"bad\.geom: line 2: unknown body command 'sphere'"),
        ("body A\n  point 0 0\n  motion pitchplunge 0.1 1 0 0.1 1 0\nend\n", r"bad\.geom: line 3: motion 'pitchplunge' moves the body"),
        ("circle_n 0 0 0.5 10\n", r"bad\.geom: line 1: expected 'body' or 'end'"),
        ("body A\n  point 0 0\n", r"bad\.geom: body 'A' has no 'end'"),
        ("# nothing\n", r"bad\.geom: no bodies"),
    ],
    ids=["few-numbers", "non-numeric", "unknown", "moving", "outside-body", "no-end", "empty"],
)
def test_bad_geometry_files_are_one_line_naming_file_and_line(tmp_path, text, message):
    run = write_plt_run(tmp_path / "run", geom="bad.geom")
    (run / "bad.geom").write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        read_ibpm_dir(run)
    assert "\n" not in str(error.value)


def test_a_missing_geometry_file_is_one_line_naming_it(tmp_path, capsys):
    run = write_plt_run(tmp_path / "run", geom="/nowhere/cyl.geom")
    with pytest.raises(FileNotFoundError, match=r"cyl\.cmd: -geom file /nowhere/cyl\.geom not found"):
        read_ibpm_dir(run)
    assert console("data", "import-ibpm", str(run), "-o", str(tmp_path / "m.nc")) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("ldiff: error: ") and "/nowhere/cyl.geom" in line
    assert not (tmp_path / "m.nc").exists()


def test_ibpms_default_geometry_name_is_used_when_the_cmd_gives_no_geom(tmp_path):
    run = write_plt_run(tmp_path / "run", name="cyl")
    (run / "cyl.geom").write_text(CIRCLE_GEOM)
    assert read_ibpm_dir(run).attrs["cylinder_radius"] == 0.6


# --- -tecplotallgrids ------------------------------------------------------------------------


def test_tecplotallgrids_files_give_the_finest_grid_or_grid_k(tmp_path):
    run = write_plt_run(tmp_path / "run", ngrid=2, all_grids=True, xshift=0.5)
    assert sorted(path.name for path in run.glob("cyl00010*")) == ["cyl00010_g0.plt", "cyl00010_g1.plt"]
    fine = read_ibpm_dir(run)
    coarse = read_ibpm_dir(run, grid=1)
    for ds, level in ((fine, 0), (coarse, 1)):
        x, y = level_grid(level, xshift=0.5)
        assert np.array_equal(ds["x"].values, x) and np.array_equal(ds["y"].values, y)
        assert np.array_equal(ds["u"].values[0, 1], frame(10, level)[0])
        assert np.array_equal(ds["v"].values[0, 2], frame(20, level)[1])
        assert ds.attrs["grid"] == level and ds.attrs["dx"] == 0.5 * 2**level
    # grid 1: spacing 1, corner x0 + (0.5 - 1) / 2 * L = -2, y0 - L ny / nx / 2 = -2
    assert (coarse["x"].values[0], coarse["y"].values[0]) == (-2.0 + 1.0, -2.0 + 1.0)
    assert console("data", "import-ibpm", str(run), "--grid", "1", "-o", str(tmp_path / "g1.nc")) == 0
    assert np.array_equal(load(tmp_path / "g1.nc")["u"].values, coarse["u"].values)
    with pytest.raises(ValueError, match=r"cyl\.cmd: grid 2 asked for, but -ngrid is 2 \(levels 0 to 1\)"):
        read_ibpm_dir(run, grid=2)


def test_grid_k_of_a_run_without_tecplotallgrids_is_refused_naming_the_option(tmp_path):
    run = write_plt_run(tmp_path / "run", ngrid=2)
    assert read_ibpm_dir(run).attrs["grid"] == 0
    with pytest.raises(ValueError, match=r"cyl\.cmd: -tecplotallgrids is 0, so IBPM wrote grid 0 only; got grid 1"):
        read_ibpm_dir(run, grid=1)


# --- binary restart files ---------------------------------------------------------------------


def analytic(x, y):
    """A velocity field whose face averages are exact on the grid: u linear in y at
    each x, v linear in x at each y, neither symmetric in (x, y)."""
    return x**2 + 2 * y + 1, y**2 - 3 * x


def restart_bytes(step: int, time: float, order="<", nx=NX, ny=NY, ngrid=2, num_points=40, x0=X0, y0=Y0, dx=LENGTH / NX) -> bytes:
    """State::save's bytes: header, fluxes q per level (x-fluxes i * ny + j, then y-fluxes
    (nx + 1) ny + i (ny + 1) + j), vorticity per level (i outer, j inner), forces (fx, fy)
    per point, timestep, time."""
    out = [struct.pack(order + "iiidddi", nx, ny, ngrid, dx, x0, y0, num_points)]
    for level in range(ngrid):
        if level == 0:  # flux = velocity at the face center times the face length dx
            xe, yc = x0 + dx * np.arange(nx + 1), y0 + dx * (np.arange(ny) + 0.5)
            qx = analytic(xe[:, None], yc[None, :])[0] * dx  # (nx + 1, ny), [i, j]
            xc, ye = x0 + dx * (np.arange(nx) + 0.5), y0 + dx * np.arange(ny + 1)
            qy = analytic(xc[:, None], ye[None, :])[1] * dx  # (nx, ny + 1)
            q = np.concatenate([qx.ravel(), qy.ravel()])
        else:  # a coarse level the reader must skip, not confuse with level 0
            q = np.full(2 * nx * ny + nx + ny, 1e6 + level)
        out.append(q.astype(order + "f8").tobytes())
    for level in range(ngrid):
        i, j = np.meshgrid(np.arange(1, nx), np.arange(1, ny), indexing="ij")
        out.append((100.0 * i + j + step + 1e4 * level).astype(order + "f8").tobytes())
    forces = np.stack([np.arange(num_points), -np.arange(num_points)], axis=1) * 0.5
    out.append(forces.astype(order + "f8").tobytes())
    out.append(struct.pack(order + "id", step, time))
    return b"".join(out)


def write_restart_run(directory: Path, steps=(0, 100, 200), order="<", geom=CIRCLE_GEOM) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cyl.cmd").write_text(cmd_text(name="cyl", restart=100, nx=NX, ny=NY, ngrid=2, length=LENGTH, xoffset=X0, yoffset=Y0, geom="cyl.geom", dt=DT))
    (directory / "cyl.geom").write_text(geom)
    for step in steps:
        (directory / f"cyl{step:05d}.bin").write_bytes(restart_bytes(step, step * DT + 3.0, order))
    return directory


@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
def test_restart_files_give_the_analytic_velocity_and_the_written_vorticity(tmp_path, order):
    run = write_restart_run(tmp_path / "run", order=order)
    state = read_restart(run / "cyl00100.bin")
    assert (state.nx, state.ny, state.ngrid, state.dx, state.x0, state.y0, state.timestep, state.time) == (NX, NY, 2, 0.5, X0, Y0, 100, 100 * DT + 3.0)
    assert state.byteorder == order and state.f.shape == (40, 2) and np.array_equal(state.f[3], (1.5, -1.5))
    ds = read_ibpm_dir(run, source="restart")
    x, y = level_grid(0)
    assert np.array_equal(ds["x"].values, x) and np.array_equal(ds["y"].values, y)
    u, v = analytic(x[None, :], y[:, None])
    i, j = np.meshgrid(np.arange(1, NX), np.arange(1, NY))
    for k, step in enumerate((0, 100, 200)):
        assert np.array_equal(ds["u"].values[0, k], u.astype(np.float32))
        assert np.array_equal(ds["v"].values[0, k], v.astype(np.float32))
        assert np.array_equal(ds["vorticity"].values[0, k], 100.0 * i + j + step)
    assert np.array_equal(ds["time"].values, np.array([0, 100, 200]) * DT + 3.0)
    assert (ds.attrs["dt"], ds.attrs["ibpm_files"], ds.attrs["cylinder_radius"]) == (100 * DT, "restart", 0.6)
    assert console("data", "import-ibpm", str(run), "--restart", "-o", str(tmp_path / "r.nc")) == 0
    assert np.array_equal(load(tmp_path / "r.nc")["u"].values, ds["u"].values)
    # the same mask and vertices as the Tecplot files of the run
    write_plt_run(run, name="cyl", geom="cyl.geom", restart=100, ngrid=2)
    plt = read_ibpm_dir(run)
    assert np.array_equal(plt["x"].values, ds["x"].values) and np.array_equal(plt["mask"].values, ds["mask"].values)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: (d / "cyl00100.bin").write_bytes(restart_bytes(100, 1.0)[:-3]), r"cyl00100\.bin: \d+ bytes, but its header \(nx=8, ny=4, ngrid=2, 40 body points\) needs"),
        (lambda d: (d / "cyl00100.bin").write_bytes(restart_bytes(100, 1.0) + b"\0"), r"cyl00100\.bin: \d+ bytes, but its header"),
        (lambda d: (d / "cyl00100.bin").write_bytes(b"\xff" * 39), r"cyl00100\.bin: 39 bytes, shorter than the 40-byte restart header"),
        (lambda d: (d / "cyl00100.bin").write_bytes(b"\xff" * 400), r"cyl00100\.bin: not an IBPM restart file"),
        (lambda d: (d / "cyl00100.bin").write_bytes(restart_bytes(90, 1.0)), r"cyl00100\.bin: field 'timestep' is 90, the file name says step 100"),
        (lambda d: (d / "cyl00200.bin").write_bytes(restart_bytes(200, 1.0, nx=12)), r"cyl00200\.bin: grid or body points differ from cyl00000\.bin"),
        (lambda d: [(d / f"cyl{s:05d}.bin").write_bytes(restart_bytes(s, 1.0, num_points=39)) for s in (0, 100, 200)], r"cyl\.geom: 40 boundary points, but cyl00000\.bin holds forces on 39"),
        (lambda d: [(d / f"cyl{s:05d}.bin").write_bytes(restart_bytes(s, 1.0, x0=-1.5)) for s in (0, 100, 200)], r"cyl00000\.bin: dx, x0, y0 = .* disagree with cyl\.cmd"),
    ],
    ids=["truncated", "extended", "short-header", "garbage", "timestep", "grid", "body-points", "offset"],
)
def test_bad_restart_files_are_one_line_naming_the_file_and_field(tmp_path, setup, message):
    run = write_restart_run(tmp_path / "run")
    setup(run)
    with pytest.raises(ValueError, match=message):
        read_ibpm_dir(run, source="restart")


def test_restart_grid_above_zero_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"restart files are read on grid 0 only.*got grid 1"):
        read_ibpm_dir(write_restart_run(tmp_path / "run"), grid=1, source="restart")


# --- a 16-frame window of an imported run trains ---------------------------------------------


def test_an_imported_cyl_run_trains_a_16_frame_window_with_the_mask_condition(tmp_path):
    nx, ny, length = 24, 16, 6.0  # 23 x 15 interior vertices, spacing 0.25
    run = tmp_path / "run"
    run.mkdir()
    (run / "cyl.cmd").write_text(cmd_text(name="cyl", tecplot=5, nx=nx, ny=ny, length=length, xoffset=-1.5, yoffset=-2.0, geom="cyl.geom", dt=0.02))
    (run / "cyl.geom").write_text("body Cylinder\n  circle 0 0 0.5 0.25\nend\n")
    x, y = level_grid(0, nx, ny, length, -1.5, -2.0)
    rng = np.random.default_rng(0)
    for k in range(17):
        t = 0.1 * k
        u = 1 + 0.3 * np.sin(x[None, :] - t) * np.cos(y[:, None]) + 0.01 * rng.standard_normal((ny - 1, nx - 1))
        v = 0.3 * np.cos(x[None, :] - t) * np.sin(y[:, None])
        (run / f"cyl{5 * k:05d}.plt").write_text(plt_text(5 * k, x, y, u, v, u - v))
    store = tmp_path / "cyl.nc"
    assert console("data", "import-ibpm", str(run), "-o", str(store)) == 0
    ds = load(store)
    assert ds["mask"].shape == (ny - 1, nx - 1) and ds["mask"].values.min() == 0 and ds.sizes["time"] == 17
    status = console(
        "fit", "--config", str(ROOT / "configs/prior/cylinder-window.yaml"), "--data.path", str(store), "--model.net.init_args.widths", "[8, 16, 16]", "--model.net.init_args.time_embedding", "8",
        "--trainer.max_steps", "2", "--trainer.max_epochs", "2", "--trainer.logger", "false", "--trainer.callbacks", "[]",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(tmp_path / "fit"),
        "--checkpoint.every_n_epochs", "1",
    )  # fmt: skip
    assert status == 0
    checkpoint = torch.load(tmp_path / "fit" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2  # 2 windows of 16 frames in one batch: one step per epoch
    assert checkpoint["state_dict"]["online.net.lift.weight"].shape[1] == 32 + 1  # 16 frames x (u, v) + the mask


def test_circle_point_count_follows_ibpm(tmp_path):
    """RigidBody::addCircle: floor(2 pi r / dx + 1.5) points; the restart check counts them."""
    geom = tmp_path / "c.geom"
    geom.write_text("body C\n  circle 0 0 0.5 0.25\nend\n")
    assert len(read_geom(geom)[0].points) == math.floor(2 * math.pi * 0.5 / 0.25 + 1.5) == 14
