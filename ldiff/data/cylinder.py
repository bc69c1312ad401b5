r"""Cylinder-wake data: periodic vortex shedding behind a circular cylinder at Re = 100.

The geometry is IBPM's (Taira & Colonius, 2007, J. Comput. Phys. 225:2118, "The immersed
boundary method: a projection approach"): a cylinder of diameter :math:`D = 1` at the
origin in a free stream :math:`U = 1` along :math:`+x`, domain :math:`x \in [-4, 12]`,
:math:`y \in [-4, 4]`, spacing 0.04, fields stored at the 399 x 199 interior nodes
:math:`x = -4 + 0.04 i`, :math:`y = -4 + 0.04 j`. Above :math:`Re \approx 47` the steady
wake is unstable and sheds a von Karman street at the Strouhal number
:math:`St = f D / U`; Williamson's fit (1988, Phys. Fluids 31:2742)
:math:`St = -3.3265/Re + 0.1816 + 1.6\times10^{-4} Re` gives 0.164 at Re = 100 for an
unbounded cylinder.

The solver (:mod:`ldiff.data.cylinder_solver`) is a MAC-grid projection method with the
cylinder imposed by direct-forcing (Brinkman) penalisation, Adams-Bashforth 2 for the
explicit terms and a DCT Poisson solve. Boundary conditions:

- inflow  ``x = x0``: ``u = U, v = 0``;
- outflow ``x = x1``: convective ``du/dt + U du/dx = 0`` (flux-corrected), ``dv/dx = 0``;
- lateral ``y = y0, y1``: free slip, ``v = 0, du/dy = 0``.

Unlike IBPM, whose nested grids put the far field many diameters away, this domain is
the whole computation: free-slip walls at :math:`\pm 4D` (blockage :math:`D/H = 1/8`)
and an inflow :math:`4D` upstream speed up the shedding. Measured with this solver
(lift coefficient, seed 0): St = 0.185, 0.182, 0.184 on the IBPM domain at spacings 0.1,
0.08, 0.04 (so the excess over 0.164 is not a grid effect), and 0.173 at spacing 0.05 on
``(-8, 12, -8, 8)``; pass a wider ``domain`` to come closer to the unbounded value.

Shedding is triggered by a seeded, asymmetric, divergence-free perturbation, the stream
function :math:`\psi = A\,e^{-|\mathbf{x} - \mathbf{x}_c|^2 / (D/2)^2}` placed in the near
wake; from it the lift amplitude on the full grid is within 0.5 % of its limit-cycle
value by :math:`t = 50 D/U` and within 0.2 % by the default spin-up of 60. Each
trajectory uses its own perturbation (seeded by ``(seed, k)``), so trajectories are the
same limit cycle at different phases.

Full-grid command (IBPM's grid, 50 frames every 0.2 after a spin-up of 60; about 25 s
of one CPU core)::

    ldiff data cylinder -o cylinder_re100.nc --frames 50

and a coarse grid for tests and quick experiments: ``--spacing 0.1``.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Callable

import numpy as np
import torch
import xarray as xr

from ldiff.data.cylinder_solver import CylinderSolver, Flow, make_grid, node_fields
from ldiff.data.store import make_dataset, save
from ldiff.physics import peak_frequency

BOUNDARY_CONDITIONS = (
    "inflow x=x0: u=U, v=0; outflow x=x1: convective du/dt+U du/dx=0 (flux-corrected), dv/dx=0; "
    "lateral y=y0,y1: free slip v=0, du/dy=0; cylinder: direct-forcing penalisation (no slip)"
)


def strouhal_number(signal: np.ndarray, dt: float, diameter: float = 1.0, U: float = 1.0) -> float:
    r"""Strouhal number :math:`St = f D / U` of the dominant frequency of ``signal``.

    The frequency is :func:`ldiff.physics.peak_frequency`'s: the peak of the
    Hann-windowed periodogram of the mean-removed signal, zero-padded to 16 times its
    length, refined by a parabola through the log power of the peak and its neighbours.

    Args:
        signal: samples at spacing ``dt``, shape (T,): a lift coefficient or a wake probe.
        dt: sample spacing.
        diameter, U: length and velocity scales.

    Raises:
        ValueError: ``signal`` is not 1-D, or holds fewer than two periods of its peak.
    """
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 1 or signal.size < 8:
        raise ValueError(f"signal: need a 1-D series of at least 8 samples, got shape {signal.shape}")
    return float(peak_frequency(torch.from_numpy(signal), dt)) * diameter / U


def solver_time_step(spacing: float, Re: float, diameter: float, dt_frame: float) -> float:
    """The largest step dividing ``dt_frame`` within the advective limit ``h/(4U)`` and
    the viscous limit of explicit AB2, ``0.1 h^2/nu`` (``U = 1``, ``nu = D/Re``)."""
    dt_max = min(0.25 * spacing, 0.1 * spacing**2 * Re / diameter)
    return dt_frame / math.ceil(dt_frame / dt_max - 1e-9)


def wake_perturbation(solver: CylinderSolver, rng: np.random.Generator) -> np.ndarray:
    """Stream function at the cell corners, shape (ny + 1, nx + 1): a Gaussian blob of
    radius ``D/2`` and amplitude ``0.2..0.4 U D`` on one random side of the near wake."""
    grid, diameter = solver.grid, 2.0 * solver.radius
    x, y = np.meshgrid(grid.x0 + grid.h * np.arange(grid.nx + 1), grid.y0 + grid.h * np.arange(grid.ny + 1))
    side = rng.choice([-1.0, 1.0])
    x_c, y_c = diameter * rng.uniform(1.0, 2.0), side * diameter * rng.uniform(0.25, 0.75)
    amplitude = diameter * rng.uniform(0.2, 0.4)
    return amplitude * np.exp(-((x - x_c) ** 2 + (y - y_c) ** 2) / (0.5 * diameter) ** 2)


def _run_trajectory(
    solver: CylinderSolver,
    rng: np.random.Generator,
    n_spinup: int,
    n_frames: int,
    steps_per_frame: int,
    tick: Callable[[], None],
) -> tuple[np.ndarray, np.ndarray]:
    """Spin up and record one trajectory.

    Returns:
        frames: (u, v, vorticity) at the interior nodes, shape (3, n_frames, ny - 1, nx - 1).
        lift: lift coefficient at every step from half the spin-up on, shape (S,).
    """
    flow: Flow = solver.initial_flow(wake_perturbation(solver, rng))
    lift = []
    frames = np.empty((3, n_frames, solver.grid.ny - 1, solver.grid.nx - 1))
    for frame in range(n_spinup + n_frames):
        if frame >= n_spinup:
            frames[:, frame - n_spinup] = node_fields(flow.u, flow.v, solver.grid.h)
        for _ in range(steps_per_frame):
            lift.append(solver.step(flow))
        tick()
    return frames, np.asarray(lift[(n_spinup // 2) * steps_per_frame :])


def generate_cylinder(
    n_frames: int,
    *,
    spacing: float = 0.04,
    Re: float = 100.0,
    dt_frame: float = 0.2,
    spinup_time: float = 60.0,
    domain: tuple[float, float, float, float] = (-4.0, 12.0, -4.0, 4.0),
    diameter: float = 1.0,
    seed: int = 0,
    n_traj: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> xr.Dataset:
    """Simulate the cylinder wake and return it in the store layout.

    Args:
        n_frames: frames per trajectory, stored every ``dt_frame`` from ``spinup_time`` on.
        spacing: grid spacing; it must divide both sides of ``domain``.
        Re: Reynolds number ``U D / nu``.
        dt_frame: time between stored frames, in units of ``D/U``.
        spinup_time: simulated time before the first frame (rounded to whole frames).
        domain: ``(x0, x1, y0, y1)``; the cylinder sits at the origin.
        diameter: cylinder diameter ``D``.
        seed: seeds the shedding perturbation; the same seed gives the same data.
        n_traj: trajectories, each from its own perturbation (a different phase).
        progress: called as ``progress(done, total)`` after every simulated frame interval.

    Returns:
        Dataset with ``u``, ``v``, ``vorticity`` of shape (n_traj, n_frames, ny - 1, nx - 1)
        and ``mask`` (ny - 1, nx - 1), 1 in the fluid and 0 inside the cylinder;
        ``attrs["strouhal"]`` is measured from the lift coefficient from half the spin-up
        to the end, averaged over the trajectories.

    Raises:
        ValueError: a non-positive count, time or length, a spacing that does not divide
        the domain, or a domain that does not hold the cylinder.
    """
    _check_arguments(n_frames, n_traj, dt_frame, spinup_time, diameter, Re, domain)
    grid = make_grid(domain, spacing)
    dt = solver_time_step(spacing, Re, diameter, dt_frame)
    solver = CylinderSolver(grid, Re, dt, 0.5 * diameter)
    steps_per_frame, n_spinup = round(dt_frame / dt), round(spinup_time / dt_frame)
    total, done = n_traj * (n_spinup + n_frames), 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    runs = [
        _run_trajectory(solver, np.random.default_rng([seed, k]), n_spinup, n_frames, steps_per_frame, tick)
        for k in range(n_traj)
    ]
    fields = np.stack([frames for frames, _ in runs], axis=1)  # (3, n_traj, T, H, W)
    strouhal = np.mean([_measured_strouhal(lift, dt, diameter) for _, lift in runs])
    x, y = grid.nodes()
    mask = (np.hypot(*np.meshgrid(x, y)) > 0.5 * diameter).astype(np.float32)
    attrs = {
        "flow": "cylinder",
        "source": "ldiff.data.cylinder: MAC projection solver, direct-forcing penalisation, AB2, DCT Poisson",
        "Re": float(Re),
        "nu": diameter / Re,
        "U": 1.0,
        "dt": float(dt_frame),
        "dx": grid.h,
        "dy": grid.h,
        "periodic": 0,
        "cylinder_x": 0.0,
        "cylinder_y": 0.0,
        "cylinder_radius": 0.5 * diameter,
        "boundary_conditions": BOUNDARY_CONDITIONS,
        "strouhal": float(strouhal),
        "seed": int(seed),
        "spinup_time": n_spinup * dt_frame,
        "solver_dt": dt,
    }
    return make_dataset(
        fields[0],
        fields[1],
        vorticity=fields[2],
        mask=mask,
        x=x,
        y=y,
        time=(n_spinup + np.arange(n_frames)) * dt_frame,
        attrs=attrs,
    )


def _measured_strouhal(lift: np.ndarray, dt: float, diameter: float) -> float:
    try:
        return strouhal_number(lift, dt, diameter)
    except ValueError:
        raise ValueError(
            f"spinup_time/n_frames: the lift record from half the spin-up on ({lift.size * dt:g} D/U) "
            "is too short to measure the Strouhal number"
        ) from None


def _check_arguments(
    n_frames: int,
    n_traj: int,
    dt_frame: float,
    spinup_time: float,
    diameter: float,
    Re: float,
    domain: tuple[float, float, float, float],
) -> None:
    if n_frames < 1 or n_traj < 1:
        raise ValueError(f"n_frames/n_traj: need at least 1, got {n_frames}, {n_traj}")
    if dt_frame <= 0 or spinup_time < 0 or diameter <= 0 or Re <= 0:
        raise ValueError(
            f"dt_frame/spinup_time/diameter/Re: need positive values, got {dt_frame}, {spinup_time}, {diameter}, {Re}"
        )
    x0, x1, y0, y1 = domain
    radius = 0.5 * diameter
    if not (x0 < -radius and x1 > radius and y0 < -radius and y1 > radius):
        raise ValueError(f"domain: {domain} does not contain the cylinder of diameter {diameter} at the origin")


def add_cylinder_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``cylinder`` (``ldiff data cylinder -o OUT.nc --frames T ...``) on the
    ``data`` subparsers; the parser's default ``func(args)`` runs it."""
    parser = subparsers.add_parser(
        "cylinder",
        help="cylinder wake at Re=100 on IBPM's grid",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("-o", "--output", required=True, help="output NetCDF file")
    parser.add_argument("--frames", type=int, required=True, help="frames per trajectory")
    parser.add_argument("--spacing", type=float, default=0.04, help="grid spacing (default 0.04, IBPM)")
    parser.add_argument("--re", type=float, default=100.0, help="Reynolds number (default 100)")
    parser.add_argument("--dt-frame", type=float, default=0.2, help="time between frames (default 0.2)")
    parser.add_argument("--spinup-time", type=float, default=60.0, help="time before the first frame (default 60)")
    parser.add_argument(
        "--domain", type=float, nargs=4, default=(-4.0, 12.0, -4.0, 4.0), metavar=("X0", "X1", "Y0", "Y1")
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trajectories", type=int, default=1, help="trajectories (different phases)")
    parser.set_defaults(func=run_cylinder_command)
    return parser


def run_cylinder_command(args: argparse.Namespace) -> None:
    """Generate the data set ``args`` describe and save it to ``args.output``."""

    def report(done: int, total: int) -> None:
        if done == total or done % max(1, total // 20) == 0:
            print(f"\rcylinder: {done}/{total} frame intervals", end="\n" if done == total else "", file=sys.stderr)

    ds = generate_cylinder(
        args.frames,
        spacing=args.spacing,
        Re=args.re,
        dt_frame=args.dt_frame,
        spinup_time=args.spinup_time,
        domain=tuple(args.domain),
        seed=args.seed,
        n_traj=args.trajectories,
        progress=report,
    )
    path = save(ds, args.output)
    print(f"{path}: {dict(ds.sizes)}, Strouhal {ds.attrs['strouhal']:.4f}")
