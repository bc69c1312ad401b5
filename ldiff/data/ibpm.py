r"""Reader for the Tecplot ASCII output of IBPM, the immersed-boundary projection method.

IBPM (Taira & Colonius 2007, "The immersed boundary method: a projection approach",
J. Comput. Phys. 225; Colonius & Taira 2008, "A fast immersed boundary method using a
nullspace approach and multi-domain far-field boundary conditions", CMAME 197; code by
C. Rowley et al., https://github.com/cwrowley/ibpm) solves the incompressible
Navier-Stokes equations in vorticity-streamfunction form on a staggered Cartesian grid of
``nx`` by ``ny`` cells, spacing :math:`\Delta x = L / n_x` (the same in both directions),
lower-left corner ``(xoffset, yoffset)``. Every ``-tecplot n`` steps it writes
``ibpmNNNNN.plt`` (``NNNNN`` = time step, ``%05d``) with the velocity and vorticity on the
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
``i`` (x) running fastest. IBPM also saves its command line as ``ibpm.cmd``
(``ibpm -nx 400 -ny 200 -length 16 -xoffset -4 -yoffset -4 -dt 0.02 ...``); options
missing from it took IBPM's defaults, which :data:`IBPM_DEFAULTS` repeats.

All quantities are non-dimensional, scaled as IBPM's ``-Re`` implies (usually by the
free-stream speed and the body's diameter or chord). The store keeps ``u``, ``v`` and
``vorticity`` as one trajectory with dims ``(trajectory=1, time, y, x)``.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import xarray as xr

from ldiff.data.store import make_dataset

PLT_VARIABLES = ("x", "y", "u", "v", "Vorticity")
PLT_NAME = re.compile(r"ibpm(\d+)\.plt")
HEADER_LINES = 6

#: IBPM's defaults (src/ibpm.cc) for the options the reader uses, with their types.
IBPM_DEFAULTS = {
    "nx": 200,
    "ny": 200,
    "ngrid": 1,
    "length": 4.0,
    "xoffset": -2.0,
    "yoffset": -2.0,
    "dt": 0.02,
    "Re": 100.0,
    "tecplot": 100,
}


def parse_ibpm_cmd(path: str | os.PathLike) -> dict:
    """Read the options of an IBPM run from its saved command line (``ibpm.cmd``).

    The file is one line: the executable, then ``-option value`` pairs. Options IBPM
    was not given are filled in with :data:`IBPM_DEFAULTS`, since IBPM ran with those.

    Returns:
        dict with the keys of :data:`IBPM_DEFAULTS` (int or float) and ``command`` (the
        line as written).
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
            try:
                options[key] = kind(tokens[i + 1])
            except ValueError:
                raise ValueError(f"{path}: option -{key} has value {tokens[i + 1]!r}, expected {kind.__name__}") from None
            i += 2
        else:
            i += 1
    for key in ("nx", "ny", "length", "dt"):
        if options[key] <= 0:
            raise ValueError(f"{path}: option -{key} must be positive, got {options[key]}")
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


def read_ibpm_dir(directory: str | os.PathLike, dt: float | None = None) -> xr.Dataset:
    """Read every ``ibpmNNNNN.plt`` of an IBPM run directory into one store trajectory.

    Args:
        directory: the run's output directory.
        dt: the solver's time step; by default read from ``ibpm.cmd`` in ``directory``,
            and required when that file is absent.

    Returns:
        A store Dataset (see :mod:`ldiff.data.store`) with ``u``, ``v``, ``vorticity`` of
        shape (1, T, J, I), frames sorted by step, ``time = step * dt``; attributes
        ``flow="cylinder"``, ``dt`` (between stored frames), ``dx``, ``dy``,
        ``periodic=0``, ``dt_solver`` and, from ``ibpm.cmd``, ``Re`` and ``command``.

    Raises:
        FileNotFoundError: ``directory`` does not exist.
        ValueError: naming the file, for no .plt files, unreadable or non-finite files,
            grids that differ between files or from ``ibpm.cmd``, or unevenly spaced steps.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory")
    steps, files = _list_plt(directory)
    cmd_path = directory / "ibpm.cmd"
    options = parse_ibpm_cmd(cmd_path) if cmd_path.is_file() else None
    if dt is None and options is None:
        raise ValueError(f"{directory}: no ibpm.cmd to read the time step from; give dt")
    dt_solver = float(dt if dt is not None else options["dt"])

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
        x, y, dx = _grid_from_cmd(cmd_path, options, files[0], x, y)
        dy = dx
    else:
        dx, dy = (x[-1] - x[0]) / (n_i - 1), (y[-1] - y[0]) / (n_j - 1)
    stride = _step_stride(directory, steps, options)
    attrs = {
        "flow": "cylinder",
        "source": str(directory),
        "dt": dt_solver * stride,
        "dx": float(dx),
        "dy": float(dy),
        "periodic": 0,
        "dt_solver": dt_solver,
    }
    if options is not None:
        attrs.update(Re=options["Re"], command=options["command"])
    u, v, vorticity = fields[:, None]
    return make_dataset(u, v, vorticity=vorticity, x=x, y=y, time=np.asarray(steps) * dt_solver, attrs=attrs)


def _list_plt(directory: Path) -> tuple[list[int], list[Path]]:
    found = {}
    for path in directory.iterdir():
        match = PLT_NAME.fullmatch(path.name)
        if match and path.is_file():
            step = int(match.group(1))
            if step in found:
                raise ValueError(f"{path}: step {step} also in {found[step].name}")
            found[step] = path
    if not found:
        raise ValueError(f"{directory}: no ibpmNNNNN.plt files")
    steps = sorted(found)
    return steps, [found[step] for step in steps]


def _grid_from_cmd(cmd_path: Path, options: dict, plt_path: Path, x_file: np.ndarray, y_file: np.ndarray):
    """The exact node positions of ``ibpm.cmd``'s grid, checked against a file's columns."""
    dx = options["length"] / options["nx"]
    x = options["xoffset"] + dx * np.arange(1, options["nx"])
    y = options["yoffset"] + dx * np.arange(1, options["ny"])
    if x.shape != x_file.shape or y.shape != y_file.shape:
        raise ValueError(
            f"{plt_path}: {x_file.size} x {y_file.size} points, {cmd_path.name} says "
            f"nx-1 x ny-1 = {x.size} x {y.size}"
        )
    # the files print 6 significant digits
    if not (np.allclose(x_file, x, rtol=1e-5, atol=1e-6 * dx) and np.allclose(y_file, y, rtol=1e-5, atol=1e-6 * dx)):
        raise ValueError(f"{plt_path}: node positions disagree with the grid of {cmd_path.name}")
    return x, y, dx


def _step_stride(directory: Path, steps: list[int], options: dict | None) -> int:
    """Steps between stored frames: their uniform spacing, or ``-tecplot`` for one frame."""
    if len(steps) == 1:
        return options["tecplot"] if options is not None else 1
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
