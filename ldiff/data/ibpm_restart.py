r"""IBPM's binary restart files, ``<name>NNNNN.bin`` (``State::save``, ``src/State.cc``).

IBPM (Taira & Colonius 2007; code by C. Rowley et al., https://github.com/cwrowley/ibpm)
writes one every ``-restart`` steps: the fluxes and vorticity of every grid level, the
body forces and the step and time. :func:`read_restart` reads one file whole (either byte
order) and :func:`restart_fields` turns grid 0's fluxes into the velocity of the
``.plt`` files' points; :func:`ldiff.data.ibpm.read_ibpm_dir` reads a run's files
with them (``--restart``).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: the restart header: nx, ny, ngrid (C int), dx, x0, y0 (double), number of boundary
#: points (int), packed with no padding (State::save writes each with its own fwrite)
RESTART_HEADER = "iiidddi"


@dataclass(frozen=True)
class RestartState:
    """The contents of one IBPM restart file (``State::save``).

    Attributes:
        nx, ny, ngrid: cells per side and grid levels.
        dx, x0, y0: grid 0's spacing and lower-left corner.
        q: fluxes, shape (ngrid, 2 nx ny + nx + ny) in IBPM's order (see
            :func:`read_restart`).
        omega: vorticity at interior vertices, shape (ngrid, nx - 1, ny - 1), ``[lev,
            i - 1, j - 1]``.
        f: body forces, shape (P, 2), ``(f_x, f_y)`` at each boundary point.
        timestep, time: the step and time of the state.
        byteorder: ``"<"`` or ``">"``, as found.
    """

    nx: int
    ny: int
    ngrid: int
    dx: float
    x0: float
    y0: float
    q: np.ndarray
    omega: np.ndarray
    f: np.ndarray
    timestep: int
    time: float
    byteorder: str


def restart_size(nx: int, ny: int, ngrid: int, num_points: int) -> int:
    """Bytes of a restart file of this grid and number of boundary points."""
    fluxes = 2 * nx * ny + nx + ny
    return struct.calcsize("<" + RESTART_HEADER) + 8 * ngrid * (fluxes + (nx - 1) * (ny - 1)) + 16 * num_points + 4 + 8


def read_restart(path: str | os.PathLike) -> RestartState:
    """Read one IBPM binary restart file ``<name>NNNNN.bin`` (``State::save``,
    ``src/State.cc``; written every ``-restart`` steps).

    Layout, in the writing machine's byte order (C ``int`` 4 bytes, ``double`` 8, no
    padding): the header :data:`RESTART_HEADER` (``nx, ny, ngrid, dx, x0, y0, P``); the
    flux ``q`` for each level: the ``(nx + 1) ny`` x-fluxes at ``i * ny + j``
    (``i = 0..nx``, ``j = 0..ny-1``), then the ``nx (ny + 1)`` y-fluxes at
    ``(nx + 1) ny + i (ny + 1) + j`` (``i = 0..nx-1``, ``j = 0..ny``), a flux being the
    velocity times the face length (``Flux.h``); the vorticity ``omega`` for each level
    at interior vertices, ``i = 1..nx-1`` outer and ``j = 1..ny-1`` inner; the ``P``
    body forces as ``f_x, f_y`` pairs; then ``timestep`` (int) and ``time`` (double).
    The byte order is the one (little- then big-endian tried) whose header gives the
    file's exact length.

    Raises:
        FileNotFoundError: no such file.
        ValueError: naming the file, for a header that is no restart header in either
            byte order, or a length that is not the header's (truncated or extended).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such restart file")
    raw = path.read_bytes()
    header_size = struct.calcsize("<" + RESTART_HEADER)
    if len(raw) < header_size:
        raise ValueError(f"{path}: {len(raw)} bytes, shorter than the {header_size}-byte restart header")
    mismatch = None
    for order in "<>":
        nx, ny, ngrid, dx, x0, y0, points = struct.unpack_from(order + RESTART_HEADER, raw)
        if not (nx >= 2 and ny >= 2 and 1 <= ngrid <= 64 and points >= 0 and dx > 0 and math.isfinite(dx)):
            continue
        if not (math.isfinite(x0) and math.isfinite(y0)):
            continue
        size = restart_size(nx, ny, ngrid, points)
        if size == len(raw):
            break
        mismatch = mismatch or (
            f"{path}: {len(raw)} bytes, but its header (nx={nx}, ny={ny}, ngrid={ngrid}, "
            f"{points} body points) needs {size} (truncated?)"
        )
    else:
        raise ValueError(mismatch or f"{path}: not an IBPM restart file (header nx, ny, ngrid, dx, x0, y0, P invalid in either byte order)")
    real = np.dtype(order + "f8")
    fluxes, vertices = 2 * nx * ny + nx + ny, (nx - 1) * (ny - 1)
    offset = header_size
    q = np.frombuffer(raw, real, ngrid * fluxes, offset).reshape(ngrid, fluxes)
    offset += q.nbytes
    omega = np.frombuffer(raw, real, ngrid * vertices, offset).reshape(ngrid, nx - 1, ny - 1)
    offset += omega.nbytes
    f = np.frombuffer(raw, real, 2 * points, offset).reshape(points, 2)
    offset += f.nbytes
    (timestep,) = struct.unpack_from(order + "i", raw, offset)
    (time,) = struct.unpack_from(order + "d", raw, offset + 4)
    if not math.isfinite(time):
        raise ValueError(f"{path}: field 'time' is {time}")
    native = lambda a: a.astype(np.float64)  # noqa: E731 - a native-order copy
    return RestartState(nx, ny, ngrid, dx, x0, y0, native(q), native(omega), native(f), timestep, time, order)


def restart_fields(state: RestartState) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r"""Velocity and vorticity of a restart state on grid 0's interior vertices, the
    points of the ``.plt`` files, as IBPM's ``FluxToVelocity`` computes them
    (``src/VectorOperations.cc``):

    .. math:: u_{i,j} = \frac{q^x_{i,j} + q^x_{i,j-1}}{2 \Delta x}, \qquad
              v_{i,j} = \frac{q^y_{i-1,j} + q^y_{i,j}}{2 \Delta x}.

    Returns:
        ``(x, y, u, v, vorticity)``: ``x`` (nx - 1,), ``y`` (ny - 1,) and the fields of
        shape (ny - 1, nx - 1), ``[j - 1, i - 1]``, float64.
    """
    nx, ny, dx = state.nx, state.ny, state.dx
    q = state.q[0]
    qx = q[: (nx + 1) * ny].reshape(nx + 1, ny)
    qy = q[(nx + 1) * ny :].reshape(nx, ny + 1)
    scale = 1.0 / (2 * dx)
    u = (qx[1:nx, 1:ny] + qx[1:nx, : ny - 1]) * scale
    v = (qy[: nx - 1, 1:ny] + qy[1:nx, 1:ny]) * scale
    x = state.x0 + dx * np.arange(1, nx)
    y = state.y0 + dx * np.arange(1, ny)
    return x, y, u.T, v.T, state.omega[0].T
