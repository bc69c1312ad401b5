r"""Kolmogorov flow: forced 2-D turbulence on the periodic square, the SDA / jax-cfd data set.

The flow is the incompressible Navier-Stokes equation on :math:`[0, 2\pi)^2` with a
steady shear forcing and a linear (Rayleigh) drag, written for the vorticity
:math:`\omega = \partial_x v - \partial_y u`:

.. math::

    \partial_t \omega + \mathbf{u}\cdot\nabla\omega
        = \nu \nabla^2 \omega - \alpha\, \omega + f_\omega,
    \qquad f_\omega = \operatorname{curl}\,(\sin(k_f y), 0) = -k_f \cos(k_f y),

with :math:`\nu = 10^{-3}` (Re = 1/nu = 1000 in units of the forcing amplitude and the
box), drag :math:`\alpha = 0.1` and forcing wavenumber :math:`k_f = 4`: the setting of
Kochkov et al. (2021) that SDA (Rozet & Louppe, 2023) trains on. Energy injected at
:math:`k_f` flows to large scales (the inverse cascade of 2-D turbulence, Boffetta &
Ecke 2012) until the drag stops it, so the kinetic-energy spectrum peaks at the largest
scales (k = 1, in some trajectories k = 2) with a local bump at :math:`k_f`.

Numerics (pseudo-spectral, as jax-cfd's ``spectral`` solver):

- The state is :math:`\hat\omega`, the real FFT of the vorticity on an ``n x n`` grid of
  cell centres :math:`((i + 1/2) h, (j + 1/2) h)`, :math:`h = 2\pi/n`. Velocity follows
  from the stream function, :math:`\hat\psi = \hat\omega / |k|^2`,
  :math:`\hat u = i k_y \hat\psi`, :math:`\hat v = -i k_x \hat\psi`, so it is
  divergence-free to round-off. The forcing is sampled at these cell centres (jax-cfd
  samples it at :math:`j h`): the same flow, shifted by h/2, and coarse cells that are
  exact unions of fine ones.
- The advection :math:`-\mathbf{u}\cdot\nabla\omega` is a product taken on the grid and
  filtered by the 2/3 rule (modes with :math:`|k_x|` or :math:`|k_y|` above ``n // 3``
  dropped), which removes quadratic aliasing (Orszag 1971).
- Time: the explicit advection and forcing and the implicit (Crank-Nicolson) linear term
  :math:`L = -\nu|k|^2 - \alpha` are combined in the low-storage five-stage IMEX
  Runge-Kutta (fourth order) / Crank-Nicolson scheme of Canuto et al. (2007, App. D.3) with the
  Carpenter-Kennedy coefficients: for stages s = 0..4,
  :math:`h \leftarrow N(\hat\omega) + \beta_s h`,
  :math:`\mu_s = \tfrac12 \Delta t (a_{s+1} - a_s)`,
  :math:`\hat\omega \leftarrow ((1 + \mu_s L)\hat\omega + \gamma_s \Delta t\, h)/(1 - \mu_s L)`.
- :math:`\Delta t` obeys the CFL bound :math:`C\, h / U_{max}` with C = 0.5 and
  :math:`U_{max} = 7` (jax-cfd's choice for this flow), shrunk so that a whole number of
  steps spans the frame interval: 115 steps of 1.74e-3 per 0.2 time units at 256^2.

The initial condition is jax-cfd's ``filtered_velocity_field`` built spectrally: white
noise per velocity component, filtered by the log-normal density
:math:`\exp(-(\log k - \log k_p - 1/4)^2 / (2 \cdot 1/4)) / k^2` peaked near
:math:`k_p = 4`, projected onto divergence-free fields (taking its curl does that) and
scaled to a maximum speed of 3. The noise comes from NumPy's generator seeded with
``(seed, trajectory)``, so trajectory ``i`` is the same whatever the number of
trajectories or the device.

Stored frames are block means of the simulated velocity over ``n/m x n/m`` cells, with
the vorticity recomputed spectrally at the stored resolution. Block means of a solenoidal
field are not solenoidal under the coarse spectral divergence (the fine modes above the
coarse Nyquist alias, and their divergence is taken with the wrong wavenumber): its rms
is 2-4 % of the vorticity's (2.0e-2 at 256 -> 64, for jax-cfd's output as for this
solver's; 2.5e-2 to 3.7e-2 at 128 -> 64). SDA's data, block means of jax-cfd output,
share this.

Why a solver here rather than ``torch-cfd`` (the maintained PyTorch port of jax-cfd):
its ``spectral.NavierStokes2DSpectral`` runs the same scheme (the tests check this
solver against it step for step, to 1e-12 in float64) but re-evaluates the forcing on
the grid and transforms it at every stage, seven FFTs a stage against five here, and
runs its coefficients through ``nn.Parameter``s. One 256^2 trajectory of 128 frame
intervals on one core (``benchmarks/bench_kolmogorov.py``) took 53 s here, 164 s with
torch-cfd and 41-65 s with jax-cfd on the same (shared) machine.

References:
    Kochkov, Smith, Alieva, Wang, Brenner & Hoyer, "Machine learning-accelerated
    computational fluid dynamics", PNAS 118 (2021), https://doi.org/10.1073/pnas.2101784118.
    Rozet & Louppe, "Score-based data assimilation", NeurIPS 2023, arXiv:2306.10574.
    Boffetta & Ecke, "Two-dimensional turbulence", Annu. Rev. Fluid Mech. 44 (2012).
    Canuto, Hussaini, Quarteroni & Zang, "Spectral Methods: Evolution to Complex
    Geometries and Applications to Fluid Dynamics", Springer (2007), App. D.3.
    Carpenter & Kennedy, "Fourth-order 2N-storage Runge-Kutta schemes", NASA TM-109112 (1994).
    Orszag, "On the elimination of aliasing in finite-difference schemes by filtering
    high-wavenumber components", J. Atmos. Sci. 28 (1971).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Callable

import numpy as np
import torch
import xarray as xr

from ldiff.data.store import make_dataset, save

MAX_VELOCITY = 7.0  # speed bound of the CFL condition (jax-cfd's for this flow)
COURANT = 0.5
INITIAL_MAX_VELOCITY = 3.0
INITIAL_PEAK_WAVENUMBER = 4.0

# Carpenter-Kennedy low-storage RK4 coefficients (a: stage times, b: memory, g: weights).
_RK_A = (0.0, 0.1496590219993, 0.3704009573644, 0.6222557631345, 0.9582821306748, 1.0)
_RK_B = (0.0, -0.4178904745, -1.192151694643, -1.697784692471, -1.514183444257)
_RK_G = (0.1496590219993, 0.3792103129999, 0.8229550293869, 0.6994504559488, 0.1530572479681)


def wavenumbers(n: int, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Integer wavenumbers of the real FFT of an ``n x n`` field on [0, 2 pi)^2.

    Returns:
        ``(ky, kx)``, shapes (n, 1) and (1, n // 2 + 1), float64.
    """
    ky = torch.fft.fftfreq(n, 1.0 / n, dtype=torch.float64, device=device)
    kx = torch.fft.rfftfreq(n, 1.0 / n, dtype=torch.float64, device=device)
    return ky[:, None], kx[None, :]


def stable_time_step(resolution: int, dt_frame: float) -> tuple[float, int]:
    """The solver step: the CFL bound ``COURANT h / MAX_VELOCITY`` shrunk to divide ``dt_frame``.

    Returns:
        ``(dt, steps)`` with ``steps * dt == dt_frame``.
    """
    dt_max = COURANT * (2 * math.pi / resolution) / MAX_VELOCITY
    steps = math.ceil(dt_frame / dt_max - 1e-9)
    return dt_frame / steps, steps


def _velocity_multipliers(ky: torch.Tensor, kx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fourier multipliers taking the vorticity to ``(u, v)``: ``i k_y / |k|^2``, ``-i k_x / |k|^2``."""
    k2 = ky**2 + kx**2
    inv_k2 = torch.where(k2 > 0, 1.0 / torch.where(k2 > 0, k2, 1.0), 0.0)
    return 1j * ky * inv_k2, -1j * kx * inv_k2


def _band(ky: torch.Tensor, kx: torch.Tensor) -> torch.Tensor:
    """The 2/3-rule band ``|k_x|, |k_y| <= n // 3`` of an rfft2 layout, boolean."""
    n = ky.shape[0]
    return (ky.abs() <= n // 3) & (kx <= n // 3)


class KolmogorovSolver:
    r"""Pseudo-spectral IMEX RK4-CN integrator of the forced, damped vorticity equation.

    States are real FFTs of the vorticity, complex tensors of shape (B, n, n // 2 + 1)
    with axes (y, x); see the module docstring for the equations and the scheme.

    Args:
        resolution: grid size ``n`` (even).
        nu: kinematic viscosity.
        drag: linear drag coefficient alpha.
        forcing_wavenumber: k_f of the forcing ``sin(k_f y)`` in the x-momentum equation.
        dt: time step.
        device: torch device of the state.
        dtype: real dtype of the grid fields (the state is the matching complex dtype).
    """

    def __init__(
        self,
        resolution: int,
        *,
        nu: float,
        drag: float,
        forcing_wavenumber: int,
        dt: float,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        n = resolution
        ky, kx = wavenumbers(n, device)
        cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        self.shape = (n, n)
        self.ikx = (1j * kx).to(cdtype)
        self.iky = (1j * ky).to(cdtype)
        self.u_from_w, self.v_from_w = (m.to(cdtype) for m in _velocity_multipliers(ky, kx))
        # Complex coefficients throughout: a real * complex product would copy the real factor.
        self.dealias = _band(ky, kx).to(cdtype)
        y = (torch.arange(n, dtype=torch.float64, device=device) + 0.5) * (2 * math.pi / n)
        forcing = -forcing_wavenumber * torch.cos(forcing_wavenumber * y)[:, None].expand(n, n)
        self.forcing_hat = torch.fft.rfft2(forcing).to(cdtype)
        linear = -nu * (ky**2 + kx**2) - drag
        self.stages = []
        for s in range(len(_RK_B)):
            mu = 0.5 * dt * (_RK_A[s + 1] - _RK_A[s])
            decay = (1 + mu * linear) / (1 - mu * linear)
            gain = _RK_G[s] * dt / (1 - mu * linear)
            self.stages.append((_RK_B[s], decay.to(cdtype), gain.to(cdtype)))

    def velocity(self, w_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocity on the grid from the vorticity spectrum: two real tensors (B, n, n)."""
        return (
            torch.fft.irfft2(self.u_from_w * w_hat, s=self.shape),
            torch.fft.irfft2(self.v_from_w * w_hat, s=self.shape),
        )

    def explicit_terms(self, w_hat: torch.Tensor) -> torch.Tensor:
        """Dealiased advection ``-u . grad w`` plus the forcing, in Fourier space."""
        u, v = self.velocity(w_hat)
        w_x = torch.fft.irfft2(self.ikx * w_hat, s=self.shape)
        w_y = torch.fft.irfft2(self.iky * w_hat, s=self.shape)
        return torch.fft.rfft2(-(u * w_x + v * w_y)) * self.dealias + self.forcing_hat

    def step(self, w_hat: torch.Tensor) -> torch.Tensor:
        """One time step ``dt`` of the five-stage IMEX RK4-CN scheme."""
        h = torch.zeros_like(w_hat)
        for beta, decay, gain in self.stages:
            h = self.explicit_terms(w_hat) + beta * h
            w_hat = decay * w_hat + gain * h
        return w_hat


def initial_vorticity(resolution: int, seed: int, trajectory: int) -> torch.Tensor:
    """Random divergence-free initial condition (jax-cfd's ``filtered_velocity_field``).

    Returns:
        the vorticity spectrum, complex128 of shape (n, n // 2 + 1), with the 2/3-rule
        band limit and a maximum speed of ``INITIAL_MAX_VELOCITY``.
    """
    n = resolution
    noise = np.random.default_rng([seed, trajectory]).standard_normal((2, n, n))
    ky, kx = wavenumbers(n)
    k = torch.sqrt(ky**2 + kx**2)
    k_safe = torch.where(k > 0, k, 1.0)
    log_mean = math.log(INITIAL_PEAK_WAVENUMBER) + 0.25
    density = torch.where(k > 0, torch.exp(-((torch.log(k_safe) - log_mean) ** 2) / 0.5) / k_safe**2, 0.0)
    u_hat, v_hat = torch.fft.rfft2(torch.from_numpy(noise)) * density
    w_hat = (1j * kx * v_hat - 1j * ky * u_hat) * _band(ky, kx)
    u_from_w, v_from_w = _velocity_multipliers(ky, kx)
    u = torch.fft.irfft2(u_from_w * w_hat, s=(n, n))
    v = torch.fft.irfft2(v_from_w * w_hat, s=(n, n))
    return w_hat * (INITIAL_MAX_VELOCITY / torch.sqrt(u**2 + v**2).max())


def block_mean(field: torch.Tensor, size: int) -> torch.Tensor:
    """Average ``field`` over square blocks: shape (..., n, n) -> (..., size, size)."""
    n = field.shape[-1]
    f = n // size
    return field.reshape(*field.shape[:-2], size, f, size, f).mean(dim=(-3, -1))


def spectral_vorticity(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``dv/dx - du/dy`` by FFT on [0, 2 pi)^2; u, v of shape (..., H, W), H == W."""
    ky, kx = wavenumbers(u.shape[-1])
    u_hat = torch.fft.rfft2(torch.as_tensor(u, dtype=torch.float64))
    v_hat = torch.fft.rfft2(torch.as_tensor(v, dtype=torch.float64))
    return torch.fft.irfft2(1j * kx * v_hat - 1j * ky * u_hat, s=u.shape[-2:]).numpy()


_CPU_BATCH_POINTS = 2**17  # fine grid points per CPU batch: 2 at 256^2, 8 at 128^2, 32 at 64^2


def _batches(n_traj: int, resolution: int, device: str | torch.device) -> list[range]:
    """Trajectories advanced together: all on a GPU, cache-sized groups on a CPU.

    Measured on one core, ms per trajectory step: 3.6 alone and 4.7 in a batch of 4 at
    256^2; 1.9 alone, 0.73 in a batch of 8 and 0.89 in a batch of 32 at 128^2.
    """
    size = max(1, _CPU_BATCH_POINTS // resolution**2) if torch.device(device).type == "cpu" else n_traj
    return [range(start, min(start + size, n_traj)) for start in range(0, n_traj, size)]


def _simulate(
    solver: KolmogorovSolver,
    w_hat: torch.Tensor,
    steps: int,
    spinup_frames: int,
    n_frames: int,
    output_resolution: int,
    report: Callable[[int], None],
) -> torch.Tensor:
    """Advance a batch ``w_hat`` (B, n, n // 2 + 1) frame by frame (``steps`` solver steps each).

    Returns:
        the block-averaged velocities after each of the last ``n_frames`` intervals,
        float64 on the CPU, shape (B, n_frames, 2, output_resolution, output_resolution).
    """
    frames = []
    for interval in range(1, spinup_frames + n_frames + 1):
        for _ in range(steps):
            w_hat = solver.step(w_hat)
        if interval > spinup_frames:
            velocity = torch.stack(solver.velocity(w_hat), dim=1).double()
            frames.append(block_mean(velocity, output_resolution).cpu())
        report(interval)
    return torch.stack(frames, dim=1)


def _check_arguments(
    n_traj: int, n_frames: int, spinup_frames: int, resolution: int, output_resolution: int, dt_frame: float
) -> None:
    if n_traj < 1:
        raise ValueError(f"trajectories: need at least 1, got {n_traj}")
    if n_frames < 1:
        raise ValueError(f"frames: need at least 1, got {n_frames}")
    if spinup_frames < 0:
        raise ValueError(f"spinup_frames: need 0 or more, got {spinup_frames}")
    if resolution < 8 or resolution % 2:
        raise ValueError(f"resolution: need an even size >= 8, got {resolution}")
    if output_resolution < 1 or resolution % output_resolution:
        raise ValueError(f"output_resolution: {output_resolution} does not divide resolution {resolution}")
    if not dt_frame > 0:
        raise ValueError(f"dt_frame: need a positive interval, got {dt_frame}")


def generate_kolmogorov(
    n_traj: int,
    n_frames: int,
    *,
    resolution: int = 256,
    output_resolution: int = 64,
    dt_frame: float = 0.2,
    spinup_frames: int = 64,
    nu: float = 1e-3,
    drag: float = 0.1,
    forcing_wavenumber: int = 4,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> xr.Dataset:
    """Simulate ``n_traj`` Kolmogorov-flow trajectories and return them in the store layout.

    Every trajectory starts from its own random field (:func:`initial_vorticity`), runs
    ``spinup_frames * dt_frame`` time units unstored, then stores the ``n_frames`` states
    reached after each further ``dt_frame`` (times ``(spinup_frames + 1 + j) dt_frame``,
    as jax-cfd's ``trajectory`` reports them), block-averaged from
    ``resolution``^2 to ``output_resolution``^2. Trajectories advance in batches.

    Args:
        progress: called as ``progress(done, total)`` after each frame interval of each
            batch of trajectories.

    Returns:
        Dataset with ``u``, ``v``, ``vorticity`` of shape
        (n_traj, n_frames, output_resolution, output_resolution), coordinates at the
        coarse cell centres, and the physics and provenance attributes.
    """
    _check_arguments(n_traj, n_frames, spinup_frames, resolution, output_resolution, dt_frame)
    dt, steps = stable_time_step(resolution, dt_frame)
    solver = KolmogorovSolver(
        resolution, nu=nu, drag=drag, forcing_wavenumber=forcing_wavenumber, dt=dt, device=device
    )
    batches = _batches(n_traj, resolution, device)
    intervals = spinup_frames + n_frames
    chunks = []
    for b, batch in enumerate(batches):
        w_hat = torch.stack([initial_vorticity(resolution, seed, i) for i in batch])
        w_hat = w_hat.to(device=device, dtype=torch.complex64)

        def report(interval: int) -> None:
            if progress is not None:
                progress(b * intervals + interval, len(batches) * intervals)

        chunks.append(_simulate(solver, w_hat, steps, spinup_frames, n_frames, output_resolution, report))
    velocity = torch.cat(chunks).numpy()
    u, v = velocity[:, :, 0], velocity[:, :, 1]
    cell = 2 * math.pi / output_resolution
    centres = (np.arange(output_resolution) + 0.5) * cell
    attrs = {
        "flow": "kolmogorov",
        "source": f"ldiff.data.kolmogorov pseudo-spectral RK4-CN, 2/3 dealiasing (torch {torch.__version__})",
        "Re": 1.0 / nu,
        "nu": nu,
        "drag": drag,
        "forcing_wavenumber": forcing_wavenumber,
        "dt": dt_frame,
        "solver_dt": dt,
        "dx": cell,
        "dy": cell,
        "periodic": 1,
        "seed": seed,
        "resolution": resolution,
        "output_resolution": output_resolution,
        "spinup_frames": spinup_frames,
    }
    return make_dataset(
        u,
        v,
        x=centres,
        y=centres,
        time=(spinup_frames + 1 + np.arange(n_frames)) * dt_frame,
        attrs=attrs,
        vorticity=spectral_vorticity(u, v),
    )


def add_kolmogorov_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``kolmogorov`` (``ldiff data kolmogorov -o OUT.nc ...``) on ``subparsers``.

    The parser's ``func`` default is :func:`run_kolmogorov_command`.
    """
    parser = subparsers.add_parser("kolmogorov", help="simulate Kolmogorov flow into a store file")
    parser.add_argument("-o", "--output", required=True, help="NetCDF store file to write")
    parser.add_argument("--trajectories", type=int, required=True, help="number of trajectories")
    parser.add_argument("--frames", type=int, required=True, help="stored states per trajectory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial conditions")
    parser.add_argument("--resolution", type=int, default=256, help="simulation grid size")
    parser.add_argument("--output-resolution", type=int, default=64, help="stored grid size (divides --resolution)")
    parser.add_argument("--dt-frame", type=float, default=0.2, help="time between stored states")
    parser.add_argument("--spinup-frames", type=int, default=64, help="unstored frame intervals first")
    parser.add_argument("--nu", type=float, default=1e-3, help="kinematic viscosity")
    parser.add_argument("--drag", type=float, default=0.1, help="linear drag coefficient")
    parser.add_argument("--forcing-wavenumber", type=int, default=4, help="k of the forcing sin(k y)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.set_defaults(func=run_kolmogorov_command)
    return parser


def run_kolmogorov_command(args: argparse.Namespace) -> int:
    """Generate the data set the parsed ``args`` describe and save it; returns exit status 0."""

    def report(done: int, total: int) -> None:
        print(f"\rkolmogorov: frame {done}/{total}", end="\n" if done == total else "", file=sys.stderr)

    ds = generate_kolmogorov(
        args.trajectories,
        args.frames,
        resolution=args.resolution,
        output_resolution=args.output_resolution,
        dt_frame=args.dt_frame,
        spinup_frames=args.spinup_frames,
        nu=args.nu,
        drag=args.drag,
        forcing_wavenumber=args.forcing_wavenumber,
        seed=args.seed,
        device=args.device,
        progress=report,
    )
    path = save(ds, args.output)
    print(f"wrote {path}: {args.trajectories} trajectories x {args.frames} frames of {args.output_resolution}^2")
    return 0
