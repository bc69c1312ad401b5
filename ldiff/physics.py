r"""Derived physics of 2-D velocity fields: vorticity, divergence, kinetic-energy spectrum.

Fields have shape (B, C, H, W) with ``C = 2 T`` channels, frame-major
(``c = 2 * frame + component``, component 0 = :math:`u`, 1 = :math:`v`). ``y`` is the row
axis (H) and ``x`` the column axis (W); ``dx`` and ``dy`` are the grid spacings in
physical units. Every derived field has shape (B, T, H, W), one map per frame.

Derivatives
    With ``periodic=True`` (Kolmogorov flow, Gaussian random fields) they are spectral:
    along an axis of ``n`` nodes and spacing ``d`` the domain length is :math:`L = n d`
    and :math:`\widehat{\partial f}(k) = i k \hat f(k)` with :math:`k = 2\pi m / L`,
    :math:`m = 0, \pm 1, \dots`. The Nyquist mode of an even ``n`` is dropped: its
    derivative vanishes at every node (:math:`\sin(\pi j) = 0`). A band-limited field
    is differentiated to rounding error.

    With ``periodic=False`` (cylinder wake) they are finite differences: second-order
    central differences :math:`(f_{j+1} - f_{j-1}) / 2d` inside and second-order
    one-sided differences :math:`(\mp 3 f_0 \pm 4 f_1 \mp f_2) / 2d` on the first and
    last node, so the error is :math:`O(d^2)` everywhere (linear fields are exact).

Vorticity and divergence
    :math:`\omega = \partial_x v - \partial_y u` (positive counter-clockwise: solid-body
    rotation :math:`u = -\Omega y, v = \Omega x` has :math:`\omega = 2\Omega`) and
    :math:`\nabla\cdot\mathbf{u} = \partial_x u + \partial_y v`.

Energy spectrum
    With the discrete Fourier coefficients normalised by the number of nodes,
    :math:`\hat u(\mathbf{k}) = \frac{1}{HW}\sum_{\mathbf{x}} u(\mathbf{x})
    e^{-i\mathbf{k}\cdot\mathbf{x}}`, Parseval reads
    :math:`\frac{1}{HW}\sum_{\mathbf{x}} u^2 = \sum_{\mathbf{k}} |\hat u|^2`. The
    isotropic spectrum sums :math:`\tfrac12(|\hat u|^2 + |\hat v|^2)` over shells of
    width :math:`\Delta k = 2\pi / \max(L_x, L_y)` (the fundamental wavenumber of the
    longer side), mode :math:`\mathbf{k}` going to shell :math:`n = \operatorname{round}
    (|\mathbf{k}| / \Delta k)`, and divides by :math:`\Delta k`:

    .. math:: E(k_n) = \frac{1}{\Delta k} \sum_{\operatorname{round}(|\mathbf{k}|/\Delta k)
              = n} \tfrac12 \big(|\hat u(\mathbf{k})|^2 + |\hat v(\mathbf{k})|^2\big),
              \qquad k_n = n \Delta k,

    so :math:`\sum_n E(k_n)\,\Delta k` is exactly the mean kinetic energy
    :math:`\langle \tfrac12 (u^2 + v^2)\rangle` over the grid. On :math:`[0, 2\pi)^2`,
    :math:`\Delta k = 1`: the shells are the integer wavenumbers and :math:`\sum_k E(k)`
    is the mean kinetic energy. Shell 0 holds the mean flow; shells beyond
    :math:`\min(\pi/d_x, \pi/d_y)` (the Nyquist circle) hold only the corner modes and
    are partly empty. The transform treats every field as periodic; for a non-periodic
    field (cylinder wake) it is a spectrum of the periodic extension, useful to compare
    two fields on the same grid, not a physical spectrum.

Dominant frequency
    :func:`peak_frequency` of series sampled :math:`\Delta t` apart: the peak of the
    Hann-windowed periodogram of each mean-removed series, the periodograms summed over
    the series (several probes of one window share one frequency), zero-padded to 16
    times the length, refined by a parabola through the log power of the peak bin and
    its neighbours. :func:`wake_strouhal` applies it to the transverse velocity ``v`` of
    a window of a cylinder wake at probes on the wake's centre line,
    :math:`St = f D / U` (Williamson 1996, "Vortex dynamics in the cylinder wake",
    Annu. Rev. Fluid Mech. 28).

References:
    Pope, "Turbulent Flows", Cambridge University Press 2000, sec. 6.5 (energy spectrum).
    Canuto, Hussaini, Quarteroni & Zang, "Spectral Methods", Springer 2006, sec. 2.1
    (Fourier differentiation and the Nyquist mode).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def velocity(fields: Tensor) -> tuple[Tensor, Tensor]:
    """Split frame-major channels into ``u`` and ``v``, each of shape (B, T, H, W)."""
    if fields.dim() != 4 or fields.shape[1] % 2:
        raise ValueError(f"fields: need shape (B, 2T, H, W) with (u, v) channel pairs, got {tuple(fields.shape)}")
    frames = fields.unflatten(1, (fields.shape[1] // 2, 2))
    return frames[:, :, 0], frames[:, :, 1]


def derivative(f: Tensor, spacing: float, dim: int, periodic: bool) -> Tensor:
    """Partial derivative of ``f`` (any shape) along ``dim`` for nodes ``spacing`` apart.

    Spectral if ``periodic``, else second-order finite differences (see module docstring).
    """
    n = f.shape[dim]
    if not periodic:
        if n < 3:
            raise ValueError(f"fields: finite differences need at least 3 nodes along dim {dim}, got {n}")
        return torch.gradient(f, spacing=spacing, dim=dim, edge_order=2)[0]
    k = 2 * math.pi * torch.fft.rfftfreq(n, d=spacing, dtype=f.dtype, device=f.device)
    if n % 2 == 0:
        k[-1] = 0.0
    shape = [1] * f.dim()
    shape[dim] = k.numel()
    return torch.fft.irfft(1j * k.reshape(shape) * torch.fft.rfft(f, dim=dim), n=n, dim=dim)


def vorticity(fields: Tensor, dx: float, dy: float, periodic: bool) -> Tensor:
    r"""Vorticity :math:`\partial_x v - \partial_y u` of fields (B, 2T, H, W): shape (B, T, H, W)."""
    u, v = velocity(fields)
    return derivative(v, dx, -1, periodic) - derivative(u, dy, -2, periodic)


def divergence(fields: Tensor, dx: float, dy: float, periodic: bool) -> Tensor:
    r"""Divergence :math:`\partial_x u + \partial_y v` of fields (B, 2T, H, W): shape (B, T, H, W)."""
    u, v = velocity(fields)
    return derivative(u, dx, -1, periodic) + derivative(v, dy, -2, periodic)


def shell_width(shape: tuple[int, int], dx: float, dy: float) -> float:
    r"""The shell width :math:`\Delta k = 2\pi / \max(H d_y, W d_x)` for a grid of ``shape`` (H, W)."""
    return 2 * math.pi / max(shape[0] * dy, shape[1] * dx)


def energy_spectrum(fields: Tensor, dx: float, dy: float) -> tuple[Tensor, Tensor]:
    r"""Isotropic kinetic-energy spectrum of each frame (normalisation in the module docstring).

    Args:
        fields: velocity fields of shape (B, 2T, H, W).
        dx, dy: grid spacings in physical units.

    Returns:
        ``k`` of shape (K,), the shell wavenumbers :math:`n \Delta k`, and ``E`` of shape
        (B, T, K), with :math:`\sum_n E_n \Delta k` the mean kinetic energy of each frame.
    """
    u, v = velocity(fields)
    height, width = fields.shape[-2:]
    dk = shell_width((height, width), dx, dy)
    ky = 2 * math.pi * torch.fft.fftfreq(height, d=dy, dtype=fields.dtype, device=fields.device)
    kx = 2 * math.pi * torch.fft.fftfreq(width, d=dx, dtype=fields.dtype, device=fields.device)
    shell = torch.round(torch.hypot(ky[:, None], kx[None, :]) / dk).long().flatten()
    density = 0.5 * (_power(u) + _power(v)).flatten(-2) / dk
    n_shells = int(shell.max()) + 1
    spectrum = density.new_zeros((*density.shape[:-1], n_shells)).index_add_(-1, shell, density)
    k = dk * torch.arange(n_shells, dtype=fields.dtype, device=fields.device)
    return k, spectrum


PAD = 16
"""Zero-padding factor of :func:`peak_frequency`'s periodogram."""


def peak_frequency(signals: Tensor, dt: float, min_periods: float = 2.0, strict: bool = True) -> Tensor:
    """The dominant frequency (cycles per unit time) of ``signals``, shape (..., T) or
    (B, P, T) for B windows of P probes each: one frequency per leading index but the
    last two (a scalar for (P, T) or (T,)); see the module docstring.

    A peak with fewer than ``min_periods`` periods in the series is too slow to be
    resolved: a ``ValueError`` if ``strict``, else NaN for that series.

    Raises:
        ValueError: fewer than 8 samples; an unresolved peak when ``strict``.
    """
    if signals.shape[-1] < 8:
        raise ValueError(f"signals: need at least 8 samples per series, got shape {tuple(signals.shape)}")
    series = signals.double() if signals.dim() > 1 else signals.double()[None]
    n = series.shape[-1]
    window = torch.hann_window(n, periodic=False, dtype=series.dtype, device=series.device)
    power = torch.fft.rfft((series - series.mean(-1, keepdim=True)) * window, PAD * n).abs().square().sum(-2)
    peak = power[..., 1:-1].argmax(-1) + 1
    unresolved = peak < min_periods * PAD
    if strict and unresolved.any():
        raise ValueError(f"signals: the peak frequency spans fewer than {min_periods:g} periods of {n} samples")
    a, b, c = (torch.log(power.gather(-1, (peak + k)[..., None]).squeeze(-1) + 1e-300) for k in (-1, 0, 1))
    offset = 0.5 * (a - c) / (a - 2.0 * b + c)
    return torch.where(unresolved, torch.nan, (peak + offset) / (PAD * n * dt))


WAKE_FRAMES = 8
"""Frames a cylinder-wake window needs for its Strouhal number (:func:`peak_frequency`'s minimum)."""


def wake_geometry(attrs: dict, x, y, frames: int) -> dict | None:
    """The arguments of :func:`wake_strouhal` beyond the fields (``dt``, ``x``, ``y``,
    ``diameter``, ``center``) for windows of ``frames`` frames of a store with attributes
    ``attrs`` and node coordinates ``x`` (W,), ``y`` (H,); None unless the store is a
    cylinder wake (``flow`` = ``cylinder``) and ``frames >= WAKE_FRAMES``."""
    if attrs.get("flow") != "cylinder" or frames < WAKE_FRAMES:
        return None
    return {
        "dt": float(attrs["dt"]), "x": torch.tensor(x, dtype=torch.float64), "y": torch.tensor(y, dtype=torch.float64),
        "diameter": 2 * float(attrs.get("cylinder_radius", 0.5)),
        "center": (float(attrs.get("cylinder_x", 0.0)), float(attrs.get("cylinder_y", 0.0))),
    }  # fmt: skip


def wake_fluctuation(fields: Tensor, x: Tensor, diameter: float = 1.0, center: tuple[float, float] = (0.0, 0.0), **_: object) -> dict[str, float]:
    r"""The unsteadiness of windows of a cylinder wake ahead of and behind the body.

    With :math:`u'_{b,c,j}(t) = u_{b,c,j}(t) - \frac1T \sum_t u_{b,c,j}(t)` each node's
    deviation from its window's time mean (both components), returns the rms of
    :math:`u'` over windows, frames, components and the nodes of each band:

    - ``inflow``: :math:`x < x_c - D` (ahead of the cylinder, where a wake's flow is
      steady);
    - ``wake``: :math:`x > x_c + D`.

    Args:
        fields: windows (B, 2T, H, W) (T >= 2), physical or normalised units.
        x: node coordinates, shape (W,). ``diameter``, ``center``: the cylinder's
            (:func:`wake_geometry`'s other keys are accepted and ignored).
    """
    frames = torch.stack(velocity(fields), dim=2)  # (B, T, 2, H, W)
    deviation = frames - frames.mean(dim=1, keepdim=True)
    x = torch.as_tensor(x, device=fields.device)
    bands = {"inflow": x < center[0] - diameter, "wake": x > center[0] + diameter}
    return {name: deviation[..., band].square().mean().sqrt().item() for name, band in bands.items()}


def wake_strouhal(
    fields: Tensor, dt: float, x: Tensor, y: Tensor, diameter: float = 1.0, U: float = 1.0,
    center: tuple[float, float] = (0.0, 0.0), strict: bool = True,
) -> Tensor:
    """Strouhal number :math:`f D / U` of windows of a cylinder wake: the dominant
    frequency of ``v`` at the nodes of the row nearest the wake's centre line
    (``y = center[1]``) from 2 to 8 diameters behind the cylinder.

    Args:
        fields: windows (B, 2T, H, W), frames ``dt`` apart.
        x, y: node coordinates, shapes (W,) and (H,).

    Returns:
        (B,) Strouhal numbers (NaN for a window whose peak is unresolved, unless
        ``strict``: see :func:`peak_frequency`).
    """
    _, v = velocity(fields)  # (B, T, H, W)
    row = int((y - center[1]).abs().argmin())
    probes = ((x - center[0]) >= 2 * diameter) & ((x - center[0]) <= 8 * diameter)
    if not probes.any():
        raise ValueError("wake_strouhal: the grid has no node 2 to 8 diameters behind the cylinder")
    series = v[:, :, row, :][..., probes.to(v.device)].transpose(1, 2)  # (B, P, T)
    return peak_frequency(series, dt, strict=strict) * diameter / U


def _power(f: Tensor) -> Tensor:
    """:math:`|\\hat f|^2` with coefficients divided by the node count (Parseval: sum = mean f^2)."""
    return torch.fft.fft2(f, norm="forward").abs().square()
