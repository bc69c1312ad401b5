r"""Readers of IBPM runs (Tecplot ASCII and binary restart files), the immersed-boundary projection method.

IBPM (Taira & Colonius 2007, "The immersed boundary method: a projection approach",
J. Comput. Phys. 225; Colonius & Taira 2008, "A fast immersed boundary method using a
nullspace approach and multi-domain far-field boundary conditions", CMAME 197; code by
C. Rowley et al., https://github.com/cwrowley/ibpm) solves the incompressible
Navier-Stokes equations in vorticity-streamfunction form on a staggered Cartesian grid of
``nx`` by ``ny`` cells, spacing :math:`\Delta x = L / n_x` (the same in both directions),
lower-left corner ``(xoffset, yoffset)``. Every ``-tecplot n`` steps it writes
``<name>NNNNN.plt`` (``NNNNN`` = time step, ``%05d``) with the velocity and vorticity on the
*interior* cell vertices

.. math:: x_i = x_0 + i\,\Delta x,\ i = 1 \dots n_x - 1, \qquad
          y_j = y_0 + j\,\Delta x,\ j = 1 \dots n_y - 1,

so a 400 x 200 run gives 399 x 199 points. The file is six header lines::

    TITLE = "Test run, step00100"
    VARIABLES = "x" "y" "u" "v" "Vorticity"
    ZONE T="Rectangular zone"
    I=399, J=199, K=1, ZONETYPE=Ordered
    DATAPACKING=POINT
    DT=(SINGLE SINGLE SINGLE SINGLE SINGLE )

followed by ``I * J`` lines ``x y u v Vorticity`` (``%.5e`` each, a trailing space),
``i`` (x) running fastest (``src/ScalarToTecplot.cc``).

File names (``src/ibpm.cc``): IBPM saves its command line as ``<name>.cmd`` and writes
``<name>NNNNN.plt`` every ``-tecplot`` steps and ``<name>NNNNN.bin`` every ``-restart``
steps, ``<name>`` being ``-name`` (default ``ibpm``) and ``NNNNN`` the step printed
with ``-numdigfilename`` (default ``%05d``). The ``.cmd`` line is the executable and then
the options that were given, in the order IBPM queries them, each value re-printed by C++
streams (doubles with 6 significant digits, booleans as 0/1)::

    ibpm -name cyl -tecplot 10 -restart 100 -nx 400 -ny 200 -length 16 -xoffset -4 ...

Options missing from it took IBPM's defaults, which :data:`IBPM_DEFAULTS` repeats.

Multi-domain runs (``-ngrid G``, Colonius & Taira 2008): grid ``k = 0 .. G-1`` has the
same ``nx`` by ``ny`` cells at spacing :math:`\Delta x_k = 2^k \Delta x`, lower-left
corner :math:`x_0 + \tfrac12 (s_x - 1)(2^k - 1) L` (``s_x`` = ``-xshift``, likewise in
y; ``src/Grid.cc``), so grid 0 is the finest. The plain ``.plt`` files hold grid 0; with
``-tecplotallgrids 1`` IBPM writes instead one file per grid, ``<name>NNNNN_g<k>.plt``
(``%01d``). On a coarse grid IBPM computes ``u``, ``v`` only outside the finer grid's
footprint and on its border, so inside it those columns are not meaningful.

Restart files are read by :func:`ldiff.data.ibpm_restart.read_restart` (grid 0 only for velocities).

All quantities are non-dimensional, scaled as IBPM's ``-Re`` implies (usually by the
free-stream speed and the body's diameter or chord). The store keeps ``u``, ``v`` and
``vorticity`` as one trajectory with dims ``(trajectory=1, time, y, x)``, and, when the
run's geometry file is found, the fluid ``mask`` (y, x) of its bodies
(:mod:`ldiff.data.ibpm_geom`).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import xarray as xr

from ldiff.data.ibpm_geom import body_mask, locate, read_geom
from ldiff.data.ibpm_restart import read_restart, restart_fields
from ldiff.data.store import check_positive, make_dataset

PLT_VARIABLES = ("x", "y", "u", "v", "Vorticity")
HEADER_LINES = 6

#: IBPM's defaults (src/ibpm.cc) for the options the reader uses, with their types
#: (``tecplotallgrids`` is IBPM's boolean, written 0 or 1). ``geom`` has no fixed
#: default: IBPM reads ``<name>.geom`` when it is not given, which None stands for.
IBPM_DEFAULTS = {
    "name": "ibpm",
    "nx": 200,
    "ny": 200,
    "ngrid": 1,
    "length": 4.0,
    "xoffset": -2.0,
    "yoffset": -2.0,
    "xshift": 0.0,
    "yshift": 0.0,
    "dt": 0.02,
    "Re": 100.0,
    "tecplot": 100,
    "tecplotallgrids": False,
    "restart": 100,
    "numdigfilename": "%05d",
    "geom": None,
}
_STEP_FORMAT = re.compile(r"%0?\d*d")


def _bool01(text: str) -> bool:
    if text not in ("0", "1"):
        raise ValueError(text)
    return text == "1"


_KINDS = {"tecplotallgrids": (_bool01, "0 or 1"), "geom": (str, "str")}


def parse_ibpm_cmd(path: str | os.PathLike) -> dict:
    """Read the options of an IBPM run from its saved command line (``<name>.cmd``).

    The file is one line: the executable, then ``-option value`` pairs. Options IBPM
    was not given are filled in with :data:`IBPM_DEFAULTS`, since IBPM ran with those.

    Returns:
        dict with the keys of :data:`IBPM_DEFAULTS` (int, float, bool or str; ``geom``
        None when not given) and ``command`` (the line as written).

    Raises:
        ValueError: naming the file and the option, for a value of the wrong type, a
            non-positive size or step, a ``-ngrid`` below 1, or a ``-numdigfilename``
            that is not ``%d`` / ``%0Nd``.
    """
    path = Path(path)
    command = _read_text(path).strip()
    tokens = command.split()
    options = dict(IBPM_DEFAULTS)
    i = 1  # tokens[0] is the executable
    while i < len(tokens):
        key = tokens[i][1:]
        if tokens[i].startswith("-") and key in IBPM_DEFAULTS:
            if i + 1 == len(tokens):
                raise ValueError(f"{path}: option -{key} has no value")
            kind = type(IBPM_DEFAULTS[key])
            convert, expected = _KINDS.get(key, (kind, kind.__name__))
            try:
                options[key] = convert(tokens[i + 1])
            except ValueError:
                raise ValueError(f"{path}: option -{key} has value {tokens[i + 1]!r}, expected {expected}") from None
            i += 2
        else:
            i += 1
    for key in ("nx", "ny", "length", "dt", "ngrid"):
        if options[key] <= 0:
            raise ValueError(f"{path}: option -{key} must be positive, got {options[key]}")
    if not _STEP_FORMAT.fullmatch(options["numdigfilename"]):
        raise ValueError(f"{path}: option -numdigfilename is {options['numdigfilename']!r}; only %d or %0Nd can be read")
    options["command"] = command
    return options


def read_plt(path: str | os.PathLike) -> tuple[int, int, np.ndarray]:
    """Read one IBPM Tecplot file.

    Returns:
        ``(I, J, values)`` with ``values`` of shape (J, I, 5) float64: the columns of
        :data:`PLT_VARIABLES` at point ``(j, i)``, i.e. ``values[j, i] = (x_i, y_j, u, v,
        vorticity)``.

    Raises:
        ValueError: naming the file, for a header that is not IBPM's, a body with fewer or
            more than ``I * J`` complete lines, a non-numeric entry, or points that are
            not a grid with ``i`` running fastest.
    """
    path = Path(path)
    raw = path.read_bytes()
    parts = raw.split(b"\n", HEADER_LINES)
    if len(parts) <= HEADER_LINES:
        raise ValueError(f"{path}: truncated header ({len(parts) - 1} of {HEADER_LINES} lines)")
    try:
        header = [line.decode("ascii") for line in parts[:HEADER_LINES]]
    except UnicodeDecodeError:
        raise ValueError(f"{path}: header is not ASCII text") from None
    n_i, n_j = _parse_header(path, header)
    body = parts[HEADER_LINES]
    if body and not body.endswith(b"\n"):
        raise ValueError(f"{path}: truncated (last line incomplete)")
    try:
        values = np.loadtxt(io.BytesIO(body), dtype=np.float64, ndmin=2) if body.strip() else np.empty((0, 5))
    except ValueError as error:
        raise ValueError(f"{path}: unreadable data ({error})") from None
    if values.shape[1] != len(PLT_VARIABLES):
        raise ValueError(f"{path}: {values.shape[1]} columns, expected {len(PLT_VARIABLES)}")
    if values.shape[0] != n_i * n_j:
        raise ValueError(f"{path}: {values.shape[0]} points, header says I*J = {n_i}*{n_j} = {n_i * n_j} (truncated?)")
    values = values.reshape(n_j, n_i, len(PLT_VARIABLES))
    if not (values[:, :, 0] == values[:1, :, 0]).all() or not (values[:, :, 1] == values[:, :1, 1]).all():
        raise ValueError(f"{path}: points are not a grid with x (i) running fastest")
    return n_i, n_j, values


def _parse_header(path: Path, header: list[str]) -> tuple[int, int]:
    if not header[0].startswith("TITLE"):
        raise ValueError(f"{path}: first line is not a Tecplot TITLE line")
    names = tuple(re.findall(r'"([^"]*)"', header[1]))
    if not header[1].startswith("VARIABLES") or names != PLT_VARIABLES:
        raise ValueError(f"{path}: VARIABLES are {names}, expected {PLT_VARIABLES}")
    zone = " ".join(header[2:])
    sizes = [re.search(rf"\b{key}\s*=\s*(\d+)", zone) for key in ("I", "J")]
    if None in sizes or "DATAPACKING=POINT" not in zone:
        raise ValueError(f"{path}: ZONE header lacks I=, J= or DATAPACKING=POINT")
    n_i, n_j = (int(match.group(1)) for match in sizes)
    if n_i < 2 or n_j < 2:
        raise ValueError(f"{path}: grid I={n_i}, J={n_j} is too small (need at least 2 x 2)")
    return n_i, n_j


def read_ibpm_dir(
    directory: str | os.PathLike,
    dt: float | None = None,
    *,
    name: str | None = None,
    grid: int | None = None,
    source: str = "plt",
) -> xr.Dataset:
    """Read the frames of an IBPM run directory into one store trajectory.

    The run is named by its ``<name>.cmd``: the one ``*.cmd`` file in ``directory`` (or
    ``<name>.cmd`` for a given ``name``), whose ``-name`` gives the data files' names.
    Without a ``.cmd`` file the name is ``name`` or IBPM's default ``ibpm``.

    Args:
        directory: the run's output directory.
        dt: the solver's time step; by default read from the ``.cmd`` file, and required
            when there is none.
        name: which run, when the directory holds several ``.cmd`` files.
        grid: grid level ``k`` (0 = finest, the default). Levels above 0 are read from
            the ``<name>NNNNN_g<k>.plt`` files of ``-tecplotallgrids 1``.
        source: ``"plt"`` for the Tecplot files, ``"restart"`` for the binary
            ``<name>NNNNN.bin`` restart files (:func:`~ldiff.data.ibpm_restart.read_restart`; grid 0 only).

    Returns:
        A store Dataset (see :mod:`ldiff.data.store`) with ``u``, ``v``, ``vorticity`` of
        shape (1, T, ny - 1, nx - 1) on grid ``k``'s interior vertices, frames sorted by
        step, ``time = step * dt`` (a restart file's own ``time``); ``mask`` (ny - 1,
        nx - 1) when the run's geometry file is found (``-geom`` relative to
        ``directory``, absolute, or its basename in ``directory``; without ``-geom``,
        IBPM's default ``<name>.geom`` if it is in ``directory``); attributes
        ``flow="cylinder"``, ``dt`` (between stored frames), ``dx``, ``dy``,
        ``periodic=0``, ``dt_solver``, ``grid``, ``ibpm_files`` (``plt`` or
        ``restart``), from the ``.cmd`` file ``Re`` and ``command``, and with a geometry
        ``geometry`` (its path) and, for one circular body, ``cylinder_x``,
        ``cylinder_y``, ``cylinder_radius``.

    Raises:
        FileNotFoundError: ``directory``, or the geometry file the ``.cmd`` names, does
            not exist.
        ValueError: naming the file, for several ``.cmd`` files and no ``name``, no data
            files, unreadable or non-finite files, grids that differ between files or
            from the ``.cmd`` file, a grid level the run did not write, a bad geometry
            file, or unevenly spaced steps.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory")
    if source not in ("plt", "restart"):
        raise ValueError(f"{directory}: source must be 'plt' or 'restart', got {source!r}")
    cmd_path = find_cmd(directory, name)
    options = parse_ibpm_cmd(cmd_path) if cmd_path is not None else None
    base = Path(options["name"]).name if options is not None else (name or IBPM_DEFAULTS["name"])
    if dt is None and options is None:
        raise ValueError(f"{directory}: no {base}.cmd to read the time step from; give dt")
    where = f"{directory}: dt" if dt is not None else f"{cmd_path}: -dt"
    dt_solver = check_positive(dt if dt is not None else options["dt"], where)
    level, suffix = _level_and_suffix(directory, base, cmd_path, options, grid, source)
    steps, files = _list_steps(directory, base, suffix)

    if source == "plt":
        x, y, dx, dy, fields = _plt_frames(files, cmd_path, options, level)
        time, every, num_points = np.asarray(steps) * dt_solver, "tecplot", None
    else:
        x, y, dx, dy, fields, time, num_points = _restart_frames(files, steps, cmd_path, options)
        every = "restart"
    stride = _step_stride(directory, steps, options[every] if options is not None else 1)
    attrs = {
        "flow": "cylinder",
        "source": str(directory),
        "dt": dt_solver * stride,
        "dx": float(dx),
        "dy": float(dy),
        "periodic": 0,
        "dt_solver": dt_solver,
        "grid": level,
        "ibpm_files": source,
    }
    if options is not None:
        attrs.update(Re=options["Re"], command=options["command"])
    mask = None
    geom_path = _geometry_file(directory, base, cmd_path, options)
    if geom_path is not None:
        bodies = read_geom(geom_path, directory)
        points = sum(len(body.points) for body in bodies)
        if num_points is not None and points != num_points:
            raise ValueError(f"{geom_path}: {points} boundary points, but {files[0].name} holds forces on {num_points}")
        mask = body_mask(bodies, x, y)
        attrs["geometry"] = str(geom_path)
        if len(bodies) == 1 and bodies[0].circle is not None:
            attrs.update(zip(("cylinder_x", "cylinder_y", "cylinder_radius"), map(float, bodies[0].circle)))
    u, v, vorticity = fields[:, None]
    return make_dataset(u, v, vorticity=vorticity, mask=mask, x=x, y=y, time=time, attrs=attrs)


def find_cmd(directory: str | os.PathLike, name: str | None = None) -> Path | None:
    """The run's ``.cmd`` file: ``<name>.cmd`` for a given ``name``, else the one
    ``*.cmd`` in ``directory``; None when there is none.

    Raises:
        ValueError: several ``*.cmd`` files and no ``name``, listing them.
    """
    directory = Path(directory)
    if name is not None:
        path = directory / f"{name}.cmd"
        return path if path.is_file() else None
    found = sorted(path for path in directory.glob("*.cmd") if path.is_file())
    if len(found) > 1:
        names = ", ".join(path.name for path in found)
        raise ValueError(f"{directory}: several IBPM runs ({names}); choose one with --name")
    return found[0] if found else None


def _level_and_suffix(directory: Path, base: str, cmd_path: Path | None, options: dict | None, grid, source: str):
    """The grid level to read and the data files' name ending after the step digits."""
    level = 0 if grid is None else grid
    if not isinstance(level, (int, np.integer)) or isinstance(level, bool) or level < 0:
        raise ValueError(f"{directory}: grid must be a level 0, 1, ..., got {grid!r}")
    level = int(level)
    if options is not None and level >= options["ngrid"]:
        raise ValueError(f"{cmd_path}: grid {level} asked for, but -ngrid is {options['ngrid']} (levels 0 to {options['ngrid'] - 1})")
    if source == "restart":
        if level:
            raise ValueError(
                f"{directory}: restart files are read on grid 0 only (a coarse grid's velocities "
                f"need IBPM's interface interpolation); got grid {level}"
            )
        return level, ".bin"
    if options is not None:
        all_grids = options["tecplotallgrids"]
        if level and not all_grids:
            raise ValueError(f"{cmd_path}: -tecplotallgrids is 0, so IBPM wrote grid 0 only; got grid {level}")
    else:
        all_grids = level > 0 or not _list_steps(directory, base, ".plt", missing_ok=True)[0]
    return level, (f"_g{level}.plt" if all_grids else ".plt")


def _list_steps(directory: Path, base: str, suffix: str, missing_ok: bool = False) -> tuple[list[int], list[Path]]:
    """Steps and files ``<base>NNNNN<suffix>`` (any number of digits), sorted by step."""
    pattern = re.compile(re.escape(base) + r"(\d+)" + re.escape(suffix))
    found = {}
    for path in directory.iterdir():
        match = pattern.fullmatch(path.name)
        if match and path.is_file():
            step = int(match.group(1))
            if step in found:
                raise ValueError(f"{path}: step {step} also in {found[step].name}")
            found[step] = path
    if not found and not missing_ok:
        raise ValueError(f"{directory}: no {base}NNNNN{suffix} files")
    steps = sorted(found)
    return steps, [found[step] for step in steps]


def _plt_frames(files: list[Path], cmd_path: Path | None, options: dict | None, level: int):
    """Node positions, spacings and fields (3, T, J, I) float32 of the .plt files."""
    n_i, n_j, first = read_plt(files[0])
    x, y = first[0, :, 0], first[:, 0, 1]
    fields = np.empty((3, len(files), n_j, n_i), dtype=np.float32)
    for k, path in enumerate(files):
        values = first if k == 0 else read_plt(path)[2]
        if values.shape != first.shape or not np.array_equal(values[..., :2], first[..., :2]):
            raise ValueError(f"{path}: grid differs from {files[0].name} ({values.shape[1]} x {values.shape[0]} points)")
        for name, column in (("u", 2), ("v", 3), ("vorticity", 4)):
            _check_finite(path, name, values[..., column])
        fields[:, k] = np.moveaxis(values[..., 2:], -1, 0)
    if options is not None:
        x, y, dx = _grid_from_cmd(cmd_path, options, files[0], x, y, level)
        return x, y, dx, dx, fields
    return x, y, (x[-1] - x[0]) / (n_i - 1), (y[-1] - y[0]) / (n_j - 1), fields


def grid_nodes(options: dict, level: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Interior vertices ``x`` (nx - 1,), ``y`` (ny - 1,) and spacing of grid ``level``
    of a run's options, as IBPM's ``Grid`` places them (see the module docstring)."""
    nx, ny, length = options["nx"], options["ny"], options["length"]
    dx = length / nx * 2**level
    x0 = options["xoffset"] + 0.5 * (options["xshift"] - 1) * (2**level - 1) * length
    y0 = options["yoffset"] + 0.5 * (options["yshift"] - 1) * (2**level - 1) * ny * (length / nx)
    return x0 + dx * np.arange(1, nx), y0 + dx * np.arange(1, ny), dx


def _grid_from_cmd(cmd_path: Path, options: dict, plt_path: Path, x_file: np.ndarray, y_file: np.ndarray, level: int = 0):
    """The exact node positions of the ``.cmd`` file's grid, checked against a file's columns."""
    x, y, dx = grid_nodes(options, level)
    if x.shape != x_file.shape or y.shape != y_file.shape:
        raise ValueError(
            f"{plt_path}: {x_file.size} x {y_file.size} points, {cmd_path.name} says "
            f"nx-1 x ny-1 = {x.size} x {y.size}"
        )
    # the files print 6 significant digits
    if not (np.allclose(x_file, x, rtol=1e-5, atol=1e-6 * dx) and np.allclose(y_file, y, rtol=1e-5, atol=1e-6 * dx)):
        raise ValueError(f"{plt_path}: node positions disagree with the grid of {cmd_path.name} (level {level})")
    return x, y, dx


def _restart_frames(files: list[Path], steps: list[int], cmd_path: Path | None, options: dict | None):
    """Grid-0 nodes, spacing, fields (3, T, J, I) float32, times and body point count of
    the restart files."""
    states = [read_restart(path) for path in files]
    first = states[0]
    grid = (first.nx, first.ny, first.ngrid, first.dx, first.x0, first.y0, len(first.f))
    for path, step, state in zip(files, steps, states):
        if (state.nx, state.ny, state.ngrid, state.dx, state.x0, state.y0, len(state.f)) != grid:
            raise ValueError(f"{path}: grid or body points differ from {files[0].name}")
        if state.timestep != step:
            raise ValueError(f"{path}: field 'timestep' is {state.timestep}, the file name says step {step}")
    if options is not None:
        wanted = (options["nx"], options["ny"], options["ngrid"])
        if grid[:3] != wanted:
            raise ValueError(f"{files[0]}: nx, ny, ngrid = {grid[:3]}, {cmd_path.name} says {wanted}")
        expected = (options["length"] / options["nx"], options["xoffset"], options["yoffset"])
        if not np.allclose(grid[3:6], expected, rtol=1e-5, atol=1e-6 * first.dx):  # .cmd has 6 digits
            raise ValueError(f"{files[0]}: dx, x0, y0 = {grid[3:6]} disagree with {cmd_path.name}'s {expected}")
    fields = np.empty((3, len(files), first.ny - 1, first.nx - 1), dtype=np.float32)
    for k, (path, state) in enumerate(zip(files, states)):
        x, y, *values = restart_fields(state)
        for name, value in zip(("u", "v", "vorticity"), values):
            _check_finite(path, name, value)
        fields[:, k] = values
    return x, y, first.dx, first.dx, fields, np.array([state.time for state in states]), len(first.f)


def _geometry_file(directory: Path, base: str, cmd_path: Path | None, options: dict | None) -> Path | None:
    given = options["geom"] if options is not None else None
    if given is not None:
        return locate(given, directory, "-geom file", cmd_path)
    default = directory / f"{base}.geom"  # IBPM's default geometry, if it was kept with the output
    return default if default.is_file() else None


def _step_stride(directory: Path, steps: list[int], every: int) -> int:
    """Steps between stored frames: their uniform spacing, or ``every`` (the output
    interval) for one frame."""
    if len(steps) == 1:
        return every
    gaps = np.diff(steps)
    if (gaps != gaps[0]).any():
        k = int(np.flatnonzero(gaps != gaps[0])[0])
        raise ValueError(
            f"{directory}: steps are not evenly spaced ({steps[0]} to {steps[1]} but {steps[k]} to {steps[k + 1]})"
        )
    return int(gaps[0])


def _check_finite(path: Path, name: str, values: np.ndarray) -> None:
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise ValueError(f"{path}: variable '{name}' holds {bad} NaN or Inf values")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not ASCII text") from None
