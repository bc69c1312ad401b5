r"""IBPM's geometry files (``.geom``) and the fluid mask of their bodies on a grid.

IBPM (Taira & Colonius 2007, J. Comput. Phys. 225; https://github.com/cwrowley/ibpm,
``src/Geometry.cc``, ``src/RigidBody.cc``) reads its immersed bodies from the file named
by ``-geom`` (default ``<name>.geom``). The format is line based; the first word of a line
is the command (case-insensitive), further words its arguments, anything after them
ignored, and a line whose first word starts with ``#`` is a comment::

    # Cylinder, diameter 1
    body Cylinder                 # starts a body; the rest of the line is its name
      circle_n 0 0 0.5 160        # xc yc radius n: n points at angles 2 pi k / n
      motion fixed 0 0 0          # x y theta: the body translated by (x, y) and
    end                           #   rotated by theta (radians) about its center
    end                           # (optional) ends the file

Body commands: ``circle xc yc r dx`` (``floor(2 pi r / dx + 1.5)`` points),
``circle_n xc yc r n``, ``line x0 y0 x1 y1 dx`` (``floor(L / dx + 1.5)`` points, ends
included), ``line_n x0 y0 x1 y1 n``, ``line_aoa l xc yc aoa n`` (a line from the origin of
length ``l`` rotated by ``aoa`` degrees about ``(xc, yc)``, which becomes the center),
``point x y``, ``raw FILE`` (``n`` then ``n`` pairs ``x y``), ``center x y`` (the center
of rotation), ``name NAME``, ``motion TYPE ...`` and ``end``.

The mask is 1 in fluid and 0 inside a body: a body made of one ``circle`` or
``circle_n`` is the disc :math:`(x - x_c)^2 + (y - y_c)^2 \le r^2`; any other body is
the closed polygon through its points in order (even-odd rule), so an open line (a flat
plate) covers no grid node. Only stationary bodies have one mask: ``motion fixed`` is
applied, any other motion is refused.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: argument counts and types of the body commands that add points
_SHAPES = {
    "circle": (float, float, float, float),
    "circle_n": (float, float, float, int),
    "line": (float, float, float, float, float),
    "line_n": (float, float, float, float, int),
    "line_aoa": (float, float, float, float, int),
    "point": (float, float),
    "center": (float, float),
}


@dataclass
class Body:
    """One rigid body of a geometry file.

    Attributes:
        name: the name after ``body`` (or from ``name``).
        points: boundary points, shape (P, 2), in order, after ``motion fixed``.
        circle: ``(xc, yc, r)`` when the body is one circle, else None.
    """

    name: str
    points: np.ndarray
    circle: tuple[float, float, float] | None = None


@dataclass
class _Draft:
    name: str
    points: list = field(default_factory=list)
    shapes: list = field(default_factory=list)
    center: tuple[float, float] = (0.0, 0.0)
    fixed: tuple[float, float, float] | None = None


def locate(path: str, directory: Path, what: str, origin: Path) -> Path:
    """An input file named in a run's files: ``path`` if absolute, else relative to
    ``directory``, else its basename in ``directory``.

    Raises:
        FileNotFoundError: naming ``origin`` (the file that names it), ``what`` and ``path``.
    """
    candidates = [Path(path)] if os.path.isabs(path) else [directory / path]
    candidates.append(directory / Path(path).name)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{origin}: {what} {path} not found (looked for {', '.join(map(str, candidates))})")


def read_geom(path: str | os.PathLike, directory: str | os.PathLike | None = None) -> list[Body]:
    """Parse an IBPM geometry file.

    Args:
        path: the ``.geom`` file.
        directory: where ``raw`` files are looked for (default: the file's directory).

    Returns:
        The bodies, in file order.

    Raises:
        FileNotFoundError: the file, or a ``raw`` file it names, does not exist.
        ValueError: naming the file and line, for an unknown command, missing or
            non-numeric arguments, a moving body, or a file without bodies.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such geometry file")
    directory = Path(directory) if directory is not None else path.parent
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not ASCII text") from None
    bodies: list[Body] = []
    draft: _Draft | None = None
    for number, line in enumerate(lines, 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        where = f"{path}: line {number}"
        command, args = words[0].lower(), words[1:]
        if draft is None:
            if command == "body":
                draft = _Draft(name=line.split(None, 1)[1].strip() if args else "")
            elif command == "end":
                break
            else:
                raise ValueError(f"{where}: expected 'body' or 'end', got {words[0]!r}")
        elif command == "end":
            bodies.append(_finish(draft))
            draft = None
        else:
            _body_command(draft, command, args, where, directory, path)
    if draft is not None:
        raise ValueError(f"{path}: body {draft.name!r} has no 'end'")
    if not bodies:
        raise ValueError(f"{path}: no bodies")
    return bodies


def _body_command(draft: _Draft, command: str, args: list[str], where: str, directory: Path, path: Path) -> None:
    if command == "name":
        draft.name = " ".join(args)
    elif command == "raw":
        if not args:
            raise ValueError(f"{where}: raw needs a file name")
        draft.points.extend(_read_raw(locate(args[0], directory, "raw file", path)))
        draft.shapes.append(("raw",))
    elif command == "motion":
        kind = args[0].lower() if args else ""
        if kind != "fixed":
            raise ValueError(f"{where}: motion {kind or '(none)'!r} moves the body; only 'motion fixed x y theta' has one mask")
        draft.fixed = _numbers(where, "motion fixed", args[1:], (float, float, float))
    elif command in _SHAPES:
        values = _numbers(where, command, args, _SHAPES[command])
        if command == "center":
            draft.center = values
            return
        draft.points.extend(_shape_points(where, command, values))
        draft.shapes.append((command, *values))
        if command == "line_aoa":
            draft.center = (values[1], values[2])
    else:
        raise ValueError(f"{where}: unknown body command {command!r}")


def _numbers(where: str, command: str, args: list[str], kinds: tuple) -> tuple:
    if len(args) < len(kinds):
        raise ValueError(f"{where}: {command} needs {len(kinds)} numbers, got {len(args)}")
    try:
        return tuple(kind(arg) for kind, arg in zip(kinds, args))
    except ValueError:
        raise ValueError(f"{where}: {command} has non-numeric arguments {' '.join(args[: len(kinds)])!r}") from None


def _shape_points(where: str, command: str, values: tuple) -> list[tuple[float, float]]:
    """The boundary points IBPM places for one command (RigidBody::add*)."""
    if command == "point":
        return [values]
    if command in ("circle", "circle_n"):
        xc, yc, radius, last = values
        if radius <= 0 or last <= 0:
            raise ValueError(f"{where}: {command} needs a positive radius and {'dx' if command == 'circle' else 'n'}")
        n = int(math.floor(2 * math.pi / (last / radius) + 1.5)) if command == "circle" else last
        angles = np.arange(n) * (2 * math.pi / n)
        return list(zip(xc + radius * np.cos(angles), yc + radius * np.sin(angles)))
    if command == "line_aoa":
        length, xc, yc, aoa, n = values
        if n < 2:
            raise ValueError(f"{where}: line_aoa gives {n} points, needs at least 2")
        s = np.arange(n) * (length / (n - 1))
        alpha = aoa / 180 * math.pi
        return list(zip(xc + (s - xc) * math.cos(alpha) + yc * math.sin(alpha), yc + (s - xc) * math.sin(alpha) - yc * math.cos(alpha)))
    x0, y0, x1, y1, last = values
    n = int(math.floor(math.hypot(x1 - x0, y1 - y0) / last + 1.5)) if command == "line" else last
    if n < 2:
        raise ValueError(f"{where}: {command} gives {n} points, needs at least 2")
    k = np.arange(n)
    return list(zip(x0 + k * (x1 - x0) / (n - 1), y0 + k * (y1 - y0) / (n - 1)))


def _read_raw(path: Path) -> list[tuple[float, float]]:
    words = path.read_text(encoding="ascii", errors="replace").split()
    try:
        n = int(words[0])
        values = [float(word) for word in words[1 : 1 + 2 * n]]
    except (IndexError, ValueError):
        raise ValueError(f"{path}: raw file is not a count followed by x y pairs") from None
    if n < 0 or len(values) < 2 * n:
        raise ValueError(f"{path}: raw file holds {len(values) // 2} points, its count says {n}")
    return list(zip(values[0::2], values[1::2]))


def _finish(draft: _Draft) -> Body:
    points = np.asarray(draft.points, dtype=np.float64).reshape(-1, 2)
    circle = None
    if len(draft.shapes) == 1 and draft.shapes[0][0] in ("circle", "circle_n"):
        circle = draft.shapes[0][1:4]
    if draft.fixed is not None:
        dx, dy, theta = draft.fixed
        rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        center = np.asarray(draft.center)
        points = (points - center) @ rotation.T + center + (dx, dy)
        if circle is not None:
            moved = (np.asarray(circle[:2]) - center) @ rotation.T + center + (dx, dy)
            circle = (float(moved[0]), float(moved[1]), circle[2])
    return Body(name=draft.name, points=points, circle=circle)


def body_mask(bodies: list[Body], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fluid mask of ``bodies`` at the nodes ``(x_i, y_j)``.

    Args:
        bodies: from :func:`read_geom`.
        x, y: node positions, shapes (W,) and (H,).

    Returns:
        float32 array of shape (H, W): 1 in fluid, 0 inside a body (a circle's disc
        including its rim, or a polygon's interior by the even-odd rule).
    """
    X, Y = np.meshgrid(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    solid = np.zeros(X.shape, dtype=bool)
    for body in bodies:
        if body.circle is not None:
            xc, yc, radius = body.circle
            solid |= (X - xc) ** 2 + (Y - yc) ** 2 <= radius**2
        elif len(body.points) >= 3:
            solid |= _inside_polygon(body.points, X, Y)
    return (~solid).astype(np.float32)


def _inside_polygon(points: np.ndarray, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Even-odd rule: a node is inside when a ray towards +x crosses the closed polygon
    an odd number of times."""
    inside = np.zeros(X.shape, dtype=bool)
    for (xa, ya), (xb, yb) in zip(points, np.roll(points, -1, axis=0)):
        straddles = (ya > Y) != (yb > Y)
        with np.errstate(divide="ignore", invalid="ignore"):
            crossing = xa + (Y - ya) * (xb - xa) / (yb - ya)
        inside ^= straddles & (X < crossing)
    return inside
