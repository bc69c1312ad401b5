r"""A small incompressible Navier-Stokes solver for flow past a circular cylinder.

Equations (non-dimensionalised by the diameter :math:`D` and the free stream :math:`U`):

.. math:: \partial_t \mathbf{u} + \nabla\cdot(\mathbf{u}\mathbf{u}) = -\nabla p
          + \frac{1}{Re} \nabla^2 \mathbf{u}, \qquad \nabla\cdot\mathbf{u} = 0 .

Grid: a uniform marker-and-cell (MAC) grid of ``nx x ny`` square cells of side ``h``
(Harlow & Welch, 1965). The pressure lives at cell centres, ``u`` on the vertical faces
(array ``(ny, nx + 1)``), ``v`` on the horizontal faces (array ``(ny + 1, nx)``). The
advective term is in conservative form with central differences, the viscous term is the
five-point Laplacian: the scheme is second order in space and conserves momentum
discretely.

Body: direct-forcing penalisation, the implicit limit :math:`\eta \to 0` of Brinkman
penalisation (Angot, Bruneau & Fabrie, 1999, Numer. Math. 81:497). With the solid fraction
:math:`\chi \in [0, 1]` of a face (a ramp one cell wide across the circle, so the
discrete body has the area of the disc to second order), the implicit penalised update
:math:`(\mathbf{u}^{**} - \mathbf{u}^*)/\Delta t = -\chi \mathbf{u}^{**}/\eta` gives
:math:`\mathbf{u}^{**} = \mathbf{u}^*/(1 + \chi\Delta t/\eta) \to (1 - \chi)\,\mathbf{u}^*`.
The force on the body is the momentum this removes, :math:`\mathbf{F} =
\sum \chi \mathbf{u}^* h^2/\Delta t`, whose ``y`` part gives the lift coefficient
:math:`C_L = 2 F_y / (U^2 D)`.

Time stepping (semi-implicit, incremental pressure correction; Kim & Moin, 1985, J.
Comput. Phys. 59:308, with their Crank-Nicolson viscous term made explicit):

1. predictor  :math:`\mathbf{u}^* = \mathbf{u}^n + \Delta t\,(\tfrac32 N^n - \tfrac12
   N^{n-1}) - \Delta t\,\nabla p^n`, with :math:`N` the advective and viscous terms
   (Adams-Bashforth 2; Euler on the first step);
2. body       :math:`\mathbf{u}^{**} = (1 - \chi)\,\mathbf{u}^*` (implicit, above);
3. projection :math:`\nabla^2 \phi = \nabla\cdot\mathbf{u}^{**}/\Delta t`,
   :math:`\mathbf{u}^{n+1} = \mathbf{u}^{**} - \Delta t\,\nabla\phi`,
   :math:`p^{n+1} = p^n + \phi`.

At Re = 100 the viscous limit of explicit AB2, :math:`\Delta t < Re\,h^2/8`, lies above
the advective one, so an implicit viscous solve would buy no larger step.

Boundary conditions (domain :math:`[x_0, x_1] \times [y_0, y_1]`):

- inflow  :math:`x = x_0`: :math:`u = U`, :math:`v = 0` (Dirichlet);
- outflow :math:`x = x_1`: convective, :math:`\partial_t u + U \partial_x u = 0`, then a
  uniform shift of the outflow so that the outflow flux equals the inflow flux
  exactly; :math:`\partial_x v = 0`;
- lateral :math:`y = y_0, y_1`: free slip, :math:`v = 0`, :math:`\partial_y u = 0`.

Every boundary prescribes the normal velocity, so the projection's Poisson problem has
homogeneous Neumann conditions; on cell centres its five-point Laplacian is diagonalised
by the type-II discrete cosine transform in both directions (its eigenvectors are
:math:`\cos(\pi k (i + \tfrac12)/n)`, eigenvalues :math:`(2\cos(\pi k/n) - 2)/h^2`), so
each projection costs two FFT-sized transforms and leaves the discrete divergence at
round-off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import fft


@dataclass(frozen=True)
class Grid:
    """A uniform MAC grid of ``nx x ny`` cells of side ``h``, lower-left corner ``(x0, y0)``."""

    nx: int
    ny: int
    h: float
    x0: float
    y0: float

    def nodes(self) -> tuple[np.ndarray, np.ndarray]:
        """Interior cell corners (the output nodes): ``x`` shape (nx - 1,), ``y`` shape (ny - 1,)."""
        return self.x0 + self.h * np.arange(1, self.nx), self.y0 + self.h * np.arange(1, self.ny)

    def u_faces(self) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the ``u`` faces, each of shape (ny, nx + 1)."""
        return np.meshgrid(
            self.x0 + self.h * np.arange(self.nx + 1), self.y0 + self.h * (np.arange(self.ny) + 0.5)
        )

    def v_faces(self) -> tuple[np.ndarray, np.ndarray]:
        """Positions of the ``v`` faces, each of shape (ny + 1, nx)."""
        return np.meshgrid(
            self.x0 + self.h * (np.arange(self.nx) + 0.5), self.y0 + self.h * np.arange(self.ny + 1)
        )


def make_grid(domain: tuple[float, float, float, float], spacing: float) -> Grid:
    """The grid of cell side ``spacing`` on ``domain = (x0, x1, y0, y1)``.

    Raises:
        ValueError: ``spacing`` is not positive or does not divide both side lengths.
    """
    x0, x1, y0, y1 = domain
    if spacing <= 0 or x1 <= x0 or y1 <= y0:
        raise ValueError(f"spacing/domain: need spacing > 0 and x1 > x0, y1 > y0, got {spacing}, {domain}")
    nx, ny = round((x1 - x0) / spacing), round((y1 - y0) / spacing)
    if abs(nx * spacing - (x1 - x0)) > 1e-9 or abs(ny * spacing - (y1 - y0)) > 1e-9:
        raise ValueError(f"spacing: {spacing} does not divide the domain {domain} into whole cells")
    return Grid(nx=nx, ny=ny, h=float(spacing), x0=float(x0), y0=float(y0))


def solid_fraction(x: np.ndarray, y: np.ndarray, radius: float, h: float) -> np.ndarray:
    """Solid fraction of a disc of ``radius`` at the origin: 1 inside, 0 outside, a linear
    ramp one cell ``h`` wide centred on the circle. Shape of ``x``."""
    return np.clip(0.5 + (radius - np.hypot(x, y)) / h, 0.0, 1.0)


def divergence(u: np.ndarray, v: np.ndarray, h: float) -> np.ndarray:
    """Discrete divergence at the cell centres, shape (ny, nx), of MAC velocities
    ``u`` (ny, nx + 1) and ``v`` (ny + 1, nx)."""
    return (u[:, 1:] - u[:, :-1] + v[1:, :] - v[:-1, :]) / h


def node_fields(u: np.ndarray, v: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Velocity and vorticity at the interior cell corners, each of shape (ny - 1, nx - 1).

    ``u`` and ``v`` are averaged from the two faces that meet at a corner;
    the vorticity :math:`\\omega = \\partial_x v - \\partial_y u` is the circulation around
    the dual cell centred on the corner divided by its area, exact for linear fields.
    """
    u_node = 0.5 * (u[:-1, 1:-1] + u[1:, 1:-1])
    v_node = 0.5 * (v[1:-1, :-1] + v[1:-1, 1:])
    vorticity = (v[1:-1, 1:] - v[1:-1, :-1] - u[1:, 1:-1] + u[:-1, 1:-1]) / h
    return u_node, v_node, vorticity


class NeumannPoisson:
    """Solver of the five-point Poisson problem on cell centres with homogeneous Neumann
    conditions on all four sides, by the type-II DCT (see the module docstring)."""

    def __init__(self, nx: int, ny: int, h: float) -> None:
        lam_x = (2.0 * np.cos(np.pi * np.arange(nx) / nx) - 2.0) / h**2
        lam_y = (2.0 * np.cos(np.pi * np.arange(ny) / ny) - 2.0) / h**2
        eig = lam_y[:, None] + lam_x[None, :]
        eig[0, 0] = np.inf  # the constant mode: the solution is defined up to a constant, taken 0
        self.inv_eig = 1.0 / eig

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """``phi`` of shape (ny, nx) with ``lap(phi) = rhs - mean(rhs)`` and ``mean(phi) = 0``."""
        return fft.idctn(fft.dctn(rhs, type=2, norm="ortho") * self.inv_eig, type=2, norm="ortho")


def neumann_laplacian(phi: np.ndarray, h: float) -> np.ndarray:
    """Five-point Laplacian of cell-centred ``phi`` (ny, nx) with mirrored ghost cells
    (zero normal gradient on every side)."""
    p = np.pad(phi, 1, mode="edge")
    return (p[1:-1, 2:] + p[1:-1, :-2] + p[2:, 1:-1] + p[:-2, 1:-1] - 4.0 * phi) / h**2


@dataclass
class Flow:
    """The solver state: MAC velocities ``u`` (ny, nx + 1), ``v`` (ny + 1, nx), pressure
    ``p`` (ny, nx), the previous explicit terms for Adams-Bashforth and the time."""

    u: np.ndarray
    v: np.ndarray
    p: np.ndarray
    t: float = 0.0
    previous: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)


def explicit_terms(u: np.ndarray, v: np.ndarray, h: float, nu: float) -> tuple[np.ndarray, np.ndarray]:
    """``N = -div(uu) + nu lap(u)`` on the interior faces: shapes (ny, nx - 1) for ``u``,
    (ny - 1, nx) for ``v``. Ghost values carry the boundary conditions: mirrored ``u`` on
    the free-slip walls, ``v = 0`` on the inflow plane, ``dv/dx = 0`` at the outflow."""
    up = np.concatenate([u[:1], u, u[-1:]], axis=0)  # (ny + 2, nx + 1)
    vp = np.concatenate([-v[:, :1], v, v[:, -1:]], axis=1)  # (ny + 1, nx + 2)
    u_corner = 0.5 * (up[:-1] + up[1:])  # (ny + 1, nx + 1)
    v_corner = 0.5 * (vp[:, :-1] + vp[:, 1:])  # (ny + 1, nx + 1)
    uv = u_corner * v_corner
    uu = (0.5 * (u[:, :-1] + u[:, 1:])) ** 2  # cell centres (ny, nx)
    vv = (0.5 * (v[:-1] + v[1:])) ** 2
    lap_u = up[1:-1, 2:] + up[1:-1, :-2] + up[2:, 1:-1] + up[:-2, 1:-1] - 4.0 * up[1:-1, 1:-1]
    lap_v = vp[1:-1, 2:] + vp[1:-1, :-2] + vp[2:, 1:-1] + vp[:-2, 1:-1] - 4.0 * vp[1:-1, 1:-1]
    n_u = -(uu[:, 1:] - uu[:, :-1] + uv[1:, 1:-1] - uv[:-1, 1:-1]) / h + nu * lap_u / h**2
    n_v = -(vv[1:] - vv[:-1] + uv[1:-1, 1:] - uv[1:-1, :-1]) / h + nu * lap_v / h**2
    return n_u, n_v


class CylinderSolver:
    """Fractional-step solver for a cylinder of ``radius`` at the origin in a free stream
    ``U = 1`` (see the module docstring for the scheme and boundary conditions).

    Args:
        grid: the MAC grid.
        Re: Reynolds number ``U D / nu`` with ``D = 2 radius``.
        dt: time step.
        radius: cylinder radius.
    """

    def __init__(self, grid: Grid, Re: float, dt: float, radius: float) -> None:
        self.grid, self.dt, self.radius = grid, dt, radius
        self.nu = 2.0 * radius / Re
        self.chi_u = solid_fraction(*grid.u_faces(), radius, grid.h)[:, 1:-1]
        self.chi_v = solid_fraction(*grid.v_faces(), radius, grid.h)[1:-1, :]
        self.poisson = NeumannPoisson(grid.nx, grid.ny, grid.h)

    def initial_flow(self, psi: np.ndarray) -> Flow:
        """Free stream plus the perturbation ``u = dpsi/dy, v = -dpsi/dx`` of a stream
        function ``psi`` given at all cell corners, shape (ny + 1, nx + 1), then projected;
        the inflow and wall values are reset to the boundary conditions."""
        h = self.grid.h
        u = 1.0 + (psi[1:, :] - psi[:-1, :]) / h
        v = -(psi[:, 1:] - psi[:, :-1]) / h
        u[:, 0], v[0, :], v[-1, :] = 1.0, 0.0, 0.0
        u[:, -1] += np.mean(u[:, 0]) - np.mean(u[:, -1])
        u[:, 1:-1] *= 1.0 - self.chi_u
        v[1:-1, :] *= 1.0 - self.chi_v
        flow = Flow(u=u, v=v, p=np.zeros((self.grid.ny, self.grid.nx)))
        self._project(flow)
        flow.p[:] = 0.0  # the start-up impulse is not a pressure
        return flow

    def step(self, flow: Flow) -> float:
        """Advance ``flow`` in place by ``dt``; return the lift coefficient of the step."""
        h, dt = self.grid.h, self.dt
        n_u, n_v = explicit_terms(flow.u, flow.v, h, self.nu)
        if flow.previous is None:
            a_u, a_v = n_u, n_v
        else:
            a_u, a_v = 1.5 * n_u - 0.5 * flow.previous[0], 1.5 * n_v - 0.5 * flow.previous[1]
        flow.previous = (n_u, n_v)
        self._convect_outflow(flow.u)
        u_star = flow.u[:, 1:-1] + dt * (a_u - (flow.p[:, 1:] - flow.p[:, :-1]) / h)
        v_star = flow.v[1:-1, :] + dt * (a_v - (flow.p[1:, :] - flow.p[:-1, :]) / h)
        lift = 2.0 * float(np.sum(self.chi_v * v_star)) * h**2 / dt / (2.0 * self.radius)
        flow.u[:, 1:-1] = (1.0 - self.chi_u) * u_star
        flow.v[1:-1, :] = (1.0 - self.chi_v) * v_star
        self._project(flow)
        flow.t += dt
        return lift

    def _convect_outflow(self, u: np.ndarray) -> None:
        """Convective outflow ``du/dt + U du/dx = 0`` (upwind, U = 1), then a uniform shift
        so the outflow flux equals the inflow flux: the Neumann problem's solvability."""
        u[:, -1] -= self.dt * (u[:, -1] - u[:, -2]) / self.grid.h
        u[:, -1] += np.mean(u[:, 0]) - np.mean(u[:, -1])

    def _project(self, flow: Flow) -> None:
        h, dt = self.grid.h, self.dt
        phi = self.poisson.solve(divergence(flow.u, flow.v, h) / dt)
        flow.u[:, 1:-1] -= dt * (phi[:, 1:] - phi[:, :-1]) / h
        flow.v[1:-1, :] -= dt * (phi[1:, :] - phi[:-1, :]) / h
        flow.p += phi
