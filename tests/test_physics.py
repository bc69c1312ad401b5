"""Vorticity, divergence and energy spectrum against closed forms."""

import math

import pytest
import torch

from ldiff.physics import derivative, divergence, energy_spectrum, vorticity


def grid(height, width, dy, dx, y0=0.0, x0=0.0):
    """Node coordinates (y, x), each of shape (H, W), float64."""
    y = y0 + dy * torch.arange(height, dtype=torch.float64)
    x = x0 + dx * torch.arange(width, dtype=torch.float64)
    return torch.meshgrid(y, x, indexing="ij")


def frames(*pairs):
    """Fields (1, 2T, H, W) from (u, v) pairs."""
    return torch.stack([c for pair in pairs for c in pair])[None]


def test_solid_body_rotation_has_vorticity_twice_the_rate():
    # u = -Omega y, v = Omega x turns counter-clockwise at rate Omega: w = 2 Omega, div = 0.
    y, x = grid(7, 9, dy=0.2, dx=0.3, y0=-0.6, x0=-1.2)
    fields = frames((-0.7 * y, 0.7 * x), (1.5 * y, -1.5 * x))
    w = vorticity(fields, dx=0.3, dy=0.2, periodic=False)
    assert w.shape == (1, 2, 7, 9)
    torch.testing.assert_close(w[0, 0], torch.full((7, 9), 1.4, dtype=torch.float64), rtol=0, atol=1e-13)
    torch.testing.assert_close(w[0, 1], torch.full((7, 9), -3.0, dtype=torch.float64), rtol=0, atol=1e-13)
    assert divergence(fields, dx=0.3, dy=0.2, periodic=False).abs().max() < 1e-13


def lamb_oseen(n):
    """Lamb-Oseen vortex (circulation 2, core radius 0.5) on [-2, 2] x [-1.5, 1.5] with n x n nodes."""
    dy, dx = 3.0 / (n - 1), 4.0 / (n - 1)
    y, x = grid(n, n, dy=dy, dx=dx, y0=-1.5, x0=-2.0)
    r2 = x**2 + y**2
    r2_safe = torch.where(r2 > 0, r2, 1.0)
    swirl = torch.where(r2 > 0, -torch.expm1(-r2_safe / 0.25) / (math.pi * r2_safe), 4 / math.pi)  # u_theta / r
    w_exact = 2.0 / (math.pi * 0.25) * torch.exp(-r2 / 0.25)
    return frames((-swirl * y, swirl * x)), dx, dy, w_exact


def errors(n):
    """Largest vorticity error of the Lamb-Oseen vortex on n x n nodes: everywhere, on the edges."""
    fields, dx, dy, w_exact = lamb_oseen(n)
    error = (vorticity(fields, dx, dy, periodic=False)[0, 0] - w_exact).abs()
    return error.max().item(), torch.cat([error[0], error[-1], error[:, 0], error[:, -1]]).max().item()


@pytest.mark.parametrize("n", [40, 80])
def test_finite_differences_converge_at_second_order_up_to_the_edges(n):
    (coarse, coarse_edge), (fine, fine_edge) = errors(n), errors(2 * n - 1)  # half the spacing
    # measured orders: 1.94 / 1.98 overall, 2.15 / 2.08 on the edges (one-sided, second order)
    assert math.log2(coarse / fine) == pytest.approx(2.0, abs=0.1)
    assert math.log2(coarse_edge / fine_edge) == pytest.approx(2.0, abs=0.2)


def test_lamb_oseen_peak_vorticity_sign_and_scale():
    fields, dx, dy, w_exact = lamb_oseen(161)  # node at the centre, where w = 8 / pi
    w = vorticity(fields, dx, dy, periodic=False)[0, 0]
    assert w[80, 80].item() == pytest.approx(8 / math.pi, rel=2e-3)
    assert (w - w_exact).abs().max() < 2e-3 * 8 / math.pi


def test_spectral_taylor_green_is_exact():
    # u = sin x cos y, v = -cos x sin y: w = 2 sin x sin y, div = 0.
    d = 2 * math.pi / 24
    y, x = grid(24, 24, d, d)
    fields = frames((x.sin() * y.cos(), -x.cos() * y.sin()))
    w = vorticity(fields, d, d, periodic=True)
    torch.testing.assert_close(w[0, 0], 2 * x.sin() * y.sin(), rtol=0, atol=1e-13)
    assert divergence(fields, d, d, periodic=True).abs().max() < 1e-13


def test_spectral_derivatives_use_the_actual_spacing_on_a_rectangle():
    # L_x = 16 * 0.1875 = 3, L_y = 12 * 5/12 = 5; u = cos(6 pi y / 5), v = sin(4 pi x / 3).
    dx, dy = 3 / 16, 5 / 12
    y, x = grid(12, 16, dy, dx)
    a, b = 6 * math.pi / 5, 4 * math.pi / 3
    fields = frames(((a * y).cos(), (b * x).sin()))
    w_exact = b * (b * x).cos() + a * (a * y).sin()
    torch.testing.assert_close(vorticity(fields, dx, dy, periodic=True)[0, 0], w_exact, rtol=0, atol=1e-12)
    assert divergence(fields, dx, dy, periodic=True).abs().max() < 1e-12


def test_nyquist_mode_has_zero_derivative():
    f = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0], dtype=torch.float64)  # cos(pi j)
    assert derivative(f, 0.5, 0, periodic=True).abs().max() < 1e-15


def test_single_modes_land_in_their_shells():
    # u = cos 3x, v = 2 sin 4y on [0, 2 pi)^2: E(3) = 1/4, E(4) = 1, nothing elsewhere.
    d = 2 * math.pi / 16
    y, x = grid(16, 16, d, d)
    k, spectrum = energy_spectrum(frames(((3 * x).cos(), 2 * (4 * y).sin())), d, d)
    assert k.tolist() == list(range(12))  # shells 0..round(8 sqrt 2) = 11
    expected = torch.zeros(12, dtype=torch.float64)
    expected[3], expected[4] = 0.25, 1.0
    torch.testing.assert_close(spectrum[0, 0], expected, rtol=0, atol=1e-15)


def test_parseval_on_the_periodic_square():
    d = 2 * math.pi / 32
    fields = torch.randn(2, 6, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _, spectrum = energy_spectrum(fields, d, d)
    mean_energy = 0.5 * fields.square().unflatten(1, (3, 2)).sum(dim=2).mean(dim=(-2, -1))
    torch.testing.assert_close(spectrum.sum(dim=-1), mean_energy, rtol=1e-13, atol=0)


def test_parseval_with_the_shell_width_on_a_rectangle():
    dx, dy = 0.3, 0.7  # L_x = 4.2, L_y = 7: shells of 2 pi / 7
    fields = torch.randn(3, 2, 10, 14, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    k, spectrum = energy_spectrum(fields, dx, dy)
    dk = 2 * math.pi / 7
    torch.testing.assert_close(k[1:] - k[:-1], torch.full((k.numel() - 1,), dk, dtype=torch.float64))
    mean_energy = 0.5 * fields.square().sum(dim=1).mean(dim=(-2, -1))
    torch.testing.assert_close(spectrum[:, 0].sum(dim=-1) * dk, mean_energy, rtol=1e-13, atol=0)


def test_fields_without_velocity_pairs_are_rejected():
    with pytest.raises(ValueError, match="fields"):
        vorticity(torch.zeros(1, 3, 4, 4), 1.0, 1.0, periodic=True)
    with pytest.raises(ValueError, match="fields"):
        divergence(torch.zeros(1, 2, 2, 4), 1.0, 1.0, periodic=False)


def test_wake_strouhal_recovers_the_frequency_of_a_travelling_wave_from_a_16_frame_window():
    """v = sin(2 pi (f t - x / lambda)) on a wake grid, 16 frames 1.0 apart (2.4 to 3.2
    periods): each window's Strouhal number is its own f D / U, within 0.5 %, whatever
    the phase; u does not enter."""
    from ldiff.physics import wake_strouhal

    x, y = torch.linspace(-4, 12, 199, dtype=torch.float64), torch.linspace(-4, 4, 99, dtype=torch.float64)
    t = torch.arange(16, dtype=torch.float64)
    frequencies = torch.tensor([0.15, 0.1818, 0.2], dtype=torch.float64)

    def windows(dt: float) -> torch.Tensor:
        wave = torch.sin(2 * math.pi * (frequencies[:, None, None] * dt * t[None, :, None] - x[None, None, :] / 4.8 + 0.3))
        v = wave[:, :, None, :] * torch.exp(-y[None, None, :, None].square())  # (B, T, H, W)
        return torch.stack([torch.randn_like(v), v], dim=2).flatten(1, 2)  # (B, 2T, H, W), frame-major

    torch.testing.assert_close(wake_strouhal(windows(1.0), 1.0, x, y), frequencies, rtol=5e-3, atol=0)
    torch.testing.assert_close(wake_strouhal(windows(1.0), 1.0, x, y, diameter=2.0, U=0.5), 4 * frequencies, rtol=5e-3, atol=0)
    with pytest.raises(ValueError, match="fewer than 2 periods"):
        wake_strouhal(windows(0.5), 0.5, x, y)  # 8 time units: 1.2 to 1.6 periods
