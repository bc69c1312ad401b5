"""Benchmark: one Kolmogorov-flow trajectory, ldiff's generator against jax-cfd and torch-cfd.

What is timed: one trajectory at 256^2 from its random initial condition through 128
frame intervals of 0.2 time units (64 of spin-up, then the 64 stored states of the
SDA data set), i.e. 25.6 time units, on the same number of CPU threads for every
engine. jax-cfd's time excludes its JIT compilation (reported apart); ldiff's includes
everything ``generate_kolmogorov`` does (initial condition, coarsening, vorticity);
torch-cfd (the same scheme, started from ldiff's initial condition) times its stepping.
All report the statistics of the 64 stored states block-averaged to 64^2.

Each engine runs in its own process, so jax-cfd may live in another environment::

    python benchmarks/bench_kolmogorov.py --jax-python /path/to/jax-env/bin/python

jax (``pip install jax jaxlib jax-cfd``) and torch-cfd are never needed by ldiff; an
engine that fails to import is left out of the table. Writes ``benchmarks/results/kolmogorov.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

RESOLUTION = 256
OUTPUT_RESOLUTION = 64
SPINUP = 64
STORED = 64
DT_FRAME = 0.2


def flow_statistics(u: np.ndarray, v: np.ndarray) -> dict:
    """Statistics of coarse velocity frames u, v of shape (T, n, n) on [0, 2 pi)^2."""
    n = u.shape[-1]
    k = np.fft.fftfreq(n, 1.0 / n)
    u_hat, v_hat = np.fft.fft2(u) / n**2, np.fft.fft2(v) / n**2
    vorticity = np.fft.ifft2(1j * k[None, :] * v_hat - 1j * k[:, None] * u_hat).real * n**2
    shell = np.rint(np.hypot(k[:, None], k[None, :])).astype(int)
    energy = 0.5 * (np.abs(u_hat) ** 2 + np.abs(v_hat) ** 2).mean(axis=0)
    spectrum = np.bincount(shell.ravel(), energy.ravel())
    divergence = np.fft.ifft2(1j * k[None, :] * u_hat + 1j * k[:, None] * v_hat).real * n**2
    return {
        "divergence_ratio": float(divergence.std() / vorticity.std()),
        "velocity_std": float(np.std(np.stack([u, v]))),
        "kinetic_energy": float(0.5 * np.mean(u**2 + v**2)),
        "vorticity_std": float(vorticity.std()),
        "spectrum_argmax": int(np.argmax(spectrum[1:]) + 1),
        "spectrum_k3_k4_k5": [float(e) for e in spectrum[3:6]],
    }


def coarsen(field: np.ndarray, size: int) -> np.ndarray:
    f = field.shape[-1] // size
    return field.reshape(*field.shape[:-2], size, f, size, f).mean(axis=(-3, -1))


def run_ldiff(seed: int, threads: int) -> dict:
    import torch

    from ldiff.data.kolmogorov import generate_kolmogorov, stable_time_step

    torch.set_num_threads(threads)
    start = time.perf_counter()
    ds = generate_kolmogorov(
        1, STORED, resolution=RESOLUTION, output_resolution=OUTPUT_RESOLUTION, spinup_frames=SPINUP, seed=seed
    )
    seconds = time.perf_counter() - start
    dt, steps = stable_time_step(RESOLUTION, DT_FRAME)
    return {
        "engine": "ldiff",
        "version": f"torch {torch.__version__}",
        "seconds": seconds,
        "compile_seconds": 0.0,
        "dt": dt,
        "steps": steps * (SPINUP + STORED),
        **flow_statistics(ds.u.values[0], ds.v.values[0]),
    }


def run_torch_cfd(seed: int, threads: int) -> dict:
    """torch-cfd's port of the same scheme from ldiff's initial condition (needs einops)."""
    import math

    import torch
    from torch_cfd import forcings, grids, spectral

    from ldiff.data.kolmogorov import initial_vorticity, stable_time_step

    torch.set_num_threads(threads)
    grid = grids.Grid((RESOLUTION, RESOLUTION), domain=((0, 2 * math.pi), (0, 2 * math.pi)))
    forcing = forcings.KolmogorovForcing(grid=grid, wave_number=4, offsets=(grid.cell_center, grid.cell_center))
    equation = spectral.NavierStokes2DSpectral(
        viscosity=1e-3, grid=grid, drag=0.1, forcing_fn=forcing, step_fn=spectral.RK4CrankNicolsonStepper()
    )
    dt, steps = stable_time_step(RESOLUTION, DT_FRAME)
    w0 = torch.fft.irfft2(initial_vorticity(RESOLUTION, seed, 0), s=(RESOLUTION, RESOLUTION)).float()
    w_hat = torch.fft.rfft2(w0.T.contiguous())[None]  # torch-cfd indexes (x, y)
    u, v = [], []
    start = time.perf_counter()
    for interval in range(SPINUP + STORED):
        with torch.no_grad():
            w_hat, _ = equation(w_hat, dt, steps=steps)
        if interval >= SPINUP:
            (u_hat, v_hat), _ = spectral.vorticity_to_velocity(grid, w_hat)
            u.append(torch.fft.irfft2(u_hat)[0].T.double().numpy())
            v.append(torch.fft.irfft2(v_hat)[0].T.double().numpy())
    seconds = time.perf_counter() - start
    return {
        "engine": "torch-cfd",
        "version": f"torch-cfd {version('torch-cfd')}, torch {torch.__version__}",
        "seconds": seconds,
        "compile_seconds": 0.0,
        "dt": dt,
        "steps": steps * (SPINUP + STORED),
        **flow_statistics(coarsen(np.stack(u), OUTPUT_RESOLUTION), coarsen(np.stack(v), OUTPUT_RESOLUTION)),
    }


def run_jax_cfd(seed: int, threads: int) -> dict:
    """jax-cfd's own Kolmogorov set-up (its spectral demo); ``threads`` is set by XLA_FLAGS."""
    import jax
    import jax.numpy as jnp
    import jax_cfd
    import jax_cfd.base as cfd
    import jax_cfd.spectral as spectral

    grid = cfd.grids.Grid((RESOLUTION, RESOLUTION), domain=((0, 2 * jnp.pi), (0, 2 * jnp.pi)))
    dt = cfd.equations.stable_time_step(7.0, 0.5, 1e-3, grid)
    inner = round(DT_FRAME / dt)
    equation = spectral.equations.ForcedNavierStokes2D(1e-3, grid, smooth=True)
    step = spectral.time_stepping.crank_nicolson_rk4(equation, dt)
    run = cfd.funcutils.trajectory(cfd.funcutils.repeated(step, inner), SPINUP + STORED)
    v0 = cfd.initial_conditions.filtered_velocity_field(jax.random.PRNGKey(seed), grid, 3.0, 4)
    w_hat0 = jnp.fft.rfftn(cfd.finite_differences.curl_2d(v0).data)
    start = time.perf_counter()
    compiled = jax.jit(run).lower(w_hat0).compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    _, w_hat = compiled(w_hat0)
    w_hat.block_until_ready()
    seconds = time.perf_counter() - start
    u_hat, v_hat = jax.vmap(spectral.utils.vorticity_to_velocity(grid))(w_hat[SPINUP:])
    # jax-cfd's arrays are indexed (x, y); the store's are (y, x).
    u = np.swapaxes(np.asarray(jnp.fft.irfftn(u_hat, axes=(1, 2))), 1, 2)
    v = np.swapaxes(np.asarray(jnp.fft.irfftn(v_hat, axes=(1, 2))), 1, 2)
    return {
        "engine": "jax-cfd",
        "version": f"jax-cfd {getattr(jax_cfd, '__version__', '?')}, jax {jax.__version__}",
        "seconds": seconds,
        "compile_seconds": compile_seconds,
        "dt": float(dt),
        "steps": inner * (SPINUP + STORED),
        **flow_statistics(coarsen(u, OUTPUT_RESOLUTION), coarsen(v, OUTPUT_RESOLUTION)),
    }


def run_engine_in_subprocess(engine: str, python: str, seed: int, threads: int) -> dict | None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    command = [python, __file__, "--engine", engine, "--seed", str(seed), "--threads", str(threads)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"{engine}: failed ({result.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], threads: int, load: tuple[float, float]) -> str:
    lines = [
        "# Kolmogorov flow generator benchmark",
        "",
        f"One trajectory at {RESOLUTION}^2, {SPINUP} + {STORED} frame intervals of {DT_FRAME} time units "
        f"(nu 1e-3, drag 0.1, forcing sin(4y)), {threads} CPU thread(s), {platform.processor() or platform.machine()}. "
        f"Statistics: the {STORED} stored states block-averaged to {OUTPUT_RESOLUTION}^2. "
        "jax-cfd's time excludes its JIT compilation. "
        f"One-minute load average of the machine before / after: {load[0]:.1f} / {load[1]:.1f}.",
        "",
        "| engine | version | dt | steps | time (s) | ms/step | compile (s) | velocity std | kinetic energy "
        "| vorticity std | E(k) argmax | E(k) at k=3,4,5 | rms div / rms vort |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spectrum = ", ".join(f"{e:.4f}" for e in r["spectrum_k3_k4_k5"])
        lines.append(
            f"| {r['engine']} | {r['version']} | {r['dt']:.5f} | {r['steps']} | {r['seconds']:.1f} "
            f"| {1e3 * r['seconds'] / r['steps']:.2f} | {r['compile_seconds']:.1f} | {r['velocity_std']:.3f} "
            f"| {r['kinetic_energy']:.3f} | {r['vorticity_std']:.2f} | {r['spectrum_argmax']} | {spectrum} "
            f"| {r['divergence_ratio']:.1e} |"
        )
    seconds = {r["engine"]: r["seconds"] for r in rows}
    for other in ("torch-cfd", "jax-cfd"):
        if "ldiff" in seconds and other in seconds:
            lines.append(f"\nldiff / {other} time ratio: {seconds['ldiff'] / seconds[other]:.2f}")
    return "\n".join(lines) + "\n"


ENGINES = {"ldiff": run_ldiff, "torch-cfd": run_torch_cfd, "jax-cfd": run_jax_cfd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=tuple(ENGINES), help="run one engine, print JSON")
    parser.add_argument("--jax-python", default=sys.executable, help="interpreter that has jax-cfd")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "kolmogorov.md"))
    args = parser.parse_args()
    if args.engine is not None:
        print(json.dumps(ENGINES[args.engine](args.seed, args.threads)))
        return
    load_before = os.getloadavg()[0]
    python = {engine: args.jax_python if engine == "jax-cfd" else sys.executable for engine in ENGINES}
    rows = [run_engine_in_subprocess(engine, python[engine], args.seed, args.threads) for engine in ENGINES]
    table = markdown([r for r in rows if r is not None], args.threads, (load_before, os.getloadavg()[0]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table)
    print(table)


if __name__ == "__main__":
    main()
