r"""Synthetic trajectories of divergence-free Gaussian random velocity fields.

A stand-in for real flows in smoke tests of training and reconstruction: cheap, exactly
reproducible from a seed, stationary in space and time, with a known spectrum.

On the periodic square :math:`[0, 2\pi)^2` with an ``S x S`` grid (wavenumbers
:math:`k \in \mathbb{Z}^2`), a stream function is white noise filtered in Fourier space,

.. math:: \hat\psi_t(k) = a(k)\,\hat w_t(k), \qquad
          a(k) = c\,(1 + |k|^2)^{-\alpha/2}, \quad a(0) = 0,

and the velocity is its curl, :math:`u = \partial_y \psi`, :math:`v = -\partial_x \psi`,
i.e. :math:`\hat u = i k_y \hat\psi`, :math:`\hat v = -i k_x \hat\psi`: divergence-free
exactly, :math:`i k_x \hat u + i k_y \hat v = 0`, with zero spatial mean; the vorticity is
:math:`\omega = \partial_x v - \partial_y u = -\Delta\psi`, :math:`\hat\omega = |k|^2
\hat\psi`. Modes at the Nyquist wavenumber are set to zero so the derivatives stay real.
The power spectrum of :math:`\psi` is :math:`a(k)^2 \propto (1 + |k|^2)^{-\alpha}`
(Matérn-like; Lord, Powell & Shardlow 2014, "An Introduction to Computational Stochastic
PDEs", ch. 7), and :math:`c` makes the stationary variance of ``u`` and ``v`` exactly 1:
with numpy's FFT convention a unit white field has :math:`E|\hat w(k)|^2 = S^2`, so
:math:`\mathrm{Var}\,u = S^{-2} \sum_k k_y^2 a(k)^2`.

In time the white noise is an AR(1) (Ornstein-Uhlenbeck) process, started stationary,

.. math:: w_0 = z_0, \qquad w_{t+1} = \rho\, w_t + \sqrt{1 - \rho^2}\, z_{t+1},

so every Fourier mode, and hence every pixel of ``u`` and ``v``, has lag-``l``
correlation :math:`\rho^l`. Frames are 1 time unit apart.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from ldiff.data.store import make_dataset


def stream_filter(size: int, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The filter :math:`a(k)` and the wavenumbers on numpy's ``rfft2`` grid.

    Returns:
        ``(a, kx, ky)``, each of shape (S, S // 2 + 1), with ``a`` scaled so that the
        velocity components have unit variance.
    """
    ky = np.fft.fftfreq(size, d=1.0 / size)[:, None]
    kx = np.fft.rfftfreq(size, d=1.0 / size)[None, :]
    kx, ky = np.broadcast_arrays(kx, ky)
    a = (1.0 + kx**2 + ky**2) ** (-alpha / 2)
    a[0, 0] = 0.0
    if size % 2 == 0:
        a[np.abs(kx) == size // 2] = 0.0
        a[np.abs(ky) == size // 2] = 0.0
    # rfft2 holds each kx > 0 column once for the pair (k, -k); kx = 0 (and Nyquist) once
    weight = np.where(kx == 0, 1.0, 2.0)
    variance = (weight * ky**2 * a**2).sum() / size**2
    return a / math.sqrt(variance), kx, ky


def generate_grf(
    n_traj: int,
    n_time: int,
    size: int,
    seed: int,
    *,
    alpha: float = 4.0,
    rho: float = 0.9,
) -> xr.Dataset:
    r"""Generate ``n_traj`` trajectories of ``n_time`` divergence-free GRF velocity fields.

    Args:
        n_traj, n_time, size: trajectories, frames per trajectory, grid points per side.
        seed: seed of numpy's PCG64 generator; equal seeds give identical data.
        alpha: decay of the stream function's power spectrum, :math:`(1+|k|^2)^{-\alpha}`.
        rho: correlation between consecutive frames, in [0, 1).

    Returns:
        A store Dataset with ``u``, ``v``, ``vorticity`` of shape (N, T, S, S),
        ``flow="grf"``, periodic, ``dx = dy = 2 pi / S``, ``dt = 1``.
    """
    if min(n_traj, n_time) < 1 or size < 4:
        raise ValueError(f"grf: need trajectories >= 1, frames >= 1, size >= 4; got {n_traj}, {n_time}, {size}")
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"grf: rho must be in [0, 1), got {rho}")
    a, kx, ky = stream_filter(size, alpha)
    rng = np.random.default_rng(seed)
    u = np.empty((n_traj, n_time, size, size), dtype=np.float32)
    v, vorticity = np.empty_like(u), np.empty_like(u)
    for n in range(n_traj):
        psi_hat = a * np.fft.rfft2(_ar1_noise(rng, n_time, size, rho))
        u[n] = np.fft.irfft2(1j * ky * psi_hat, s=(size, size))
        v[n] = np.fft.irfft2(-1j * kx * psi_hat, s=(size, size))
        vorticity[n] = np.fft.irfft2((kx**2 + ky**2) * psi_hat, s=(size, size))
    dx = 2 * math.pi / size
    nodes = np.arange(size) * dx
    attrs = {
        "flow": "grf",
        "source": "ldiff.data.grf.generate_grf",
        "dt": 1.0,
        "dx": dx,
        "dy": dx,
        "periodic": 1,
        "seed": int(seed),
        "alpha": float(alpha),
        "rho": float(rho),
    }
    return make_dataset(u, v, vorticity=vorticity, x=nodes, y=nodes, time=np.arange(n_time, dtype=np.float64), attrs=attrs)


def _ar1_noise(rng: np.random.Generator, n_time: int, size: int, rho: float) -> np.ndarray:
    """Stationary AR(1) white noise of shape (T, S, S) with unit variance."""
    z = rng.standard_normal((n_time, size, size))
    w = np.empty_like(z)
    w[0] = z[0]
    for t in range(1, n_time):
        w[t] = rho * w[t - 1] + math.sqrt(1.0 - rho**2) * z[t]
    return w
