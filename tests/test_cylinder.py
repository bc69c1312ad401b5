"""Cylinder-wake generator: solver pieces against exact references, the coarse-grid flow
against the physics (Strouhal number, vorticity sign, no-slip body, incompressibility)."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from ldiff.data import store
from ldiff.data.cylinder import add_cylinder_command, generate_cylinder, solver_time_step, strouhal_number
from ldiff.data.cylinder_solver import (
    CylinderSolver,
    NeumannPoisson,
    divergence,
    make_grid,
    neumann_laplacian,
    node_fields,
)

SPACING = 0.08  # radius / spacing = 6.25: no node lies on the circle
RADIUS = 0.5


@pytest.fixture(scope="module")
def wake():
    """Coarse grid, shedding established after a spin-up of 40, then 20 D/U recorded."""
    return generate_cylinder(100, spacing=SPACING, spinup_time=40.0, seed=0)


def test_strouhal_number_recovers_a_known_frequency():
    t = 0.2 * np.arange(300)
    signal = 0.2 + np.sin(2 * np.pi * 0.17 * t) + 0.3 * np.sin(2 * np.pi * 0.34 * t + 1.0)
    assert strouhal_number(signal, 0.2) == pytest.approx(0.17, abs=1e-4)
    assert strouhal_number(signal, 0.2, diameter=2.0, U=0.5) == pytest.approx(0.68, abs=4e-4)
    with pytest.raises(ValueError, match="signal"):
        strouhal_number(np.sin(2 * np.pi * 0.01 * t), 0.2)


def test_ibpm_grid_nodes_and_time_steps():
    x, y = make_grid((-4.0, 12.0, -4.0, 4.0), 0.04).nodes()
    assert (x.size, y.size) == (399, 199)
    np.testing.assert_allclose(x, -4.0 + 0.04 * np.arange(1, 400), atol=1e-12)
    np.testing.assert_allclose(y, -4.0 + 0.04 * np.arange(1, 200), atol=1e-12)
    # h/4 advective limit, frame interval 0.2 split into whole steps
    assert solver_time_step(0.04, 100.0, 1.0, 0.2) == pytest.approx(0.01)
    assert solver_time_step(0.1, 100.0, 1.0, 0.2) == pytest.approx(0.025)
    # at Re = 10 the viscous limit 0.1 h^2 Re / D = 0.0016 rules: 0.2 / 125
    assert solver_time_step(0.04, 10.0, 1.0, 0.2) == pytest.approx(0.0016)
    with pytest.raises(ValueError, match="spacing"):
        make_grid((-4.0, 12.0, -4.0, 4.0), 0.03)


def test_neumann_poisson_inverts_the_five_point_laplacian():
    rng = np.random.default_rng(1)
    rhs = rng.standard_normal((20, 36))
    rhs -= rhs.mean()
    phi = NeumannPoisson(36, 20, 0.1).solve(rhs)
    np.testing.assert_allclose(neumann_laplacian(phi, 0.1), rhs, atol=1e-10)
    assert abs(phi.mean()) < 1e-12


def test_node_fields_are_exact_for_solid_body_rotation_and_shear():
    grid = make_grid((-1.0, 2.0, -1.0, 1.0), 0.1)
    (_, yu), (xv, _) = grid.u_faces(), grid.v_faces()
    x, y = np.meshgrid(*grid.nodes())
    u_node, v_node, vorticity = node_fields(-0.7 * yu, 0.7 * xv, grid.h)  # omega = 2 * 0.7
    np.testing.assert_allclose(vorticity, 1.4, atol=1e-12)
    np.testing.assert_allclose(u_node, -0.7 * y, atol=1e-12)
    np.testing.assert_allclose(v_node, 0.7 * x, atol=1e-12)
    _, _, vorticity = node_fields(3.0 * yu, 0.0 * xv, grid.h)  # u = 3 y: omega = -du/dy = -3
    np.testing.assert_allclose(vorticity, -3.0, atol=1e-12)


def test_solver_keeps_the_discrete_divergence_at_round_off():
    grid = make_grid((-2.0, 6.0, -2.0, 2.0), 0.1)
    solver = CylinderSolver(grid, 100.0, 0.025, RADIUS)
    x, y = np.meshgrid(grid.x0 + grid.h * np.arange(grid.nx + 1), grid.y0 + grid.h * np.arange(grid.ny + 1))
    flow = solver.initial_flow(0.3 * np.exp(-((x - 1.5) ** 2 + (y - 0.5) ** 2) / 0.25))
    for _ in range(40):
        solver.step(flow)
    assert np.abs(divergence(flow.u, flow.v, grid.h)).max() < 1e-11
    assert flow.t == pytest.approx(1.0)
    # outflow flux equals inflow flux exactly
    assert flow.u[:, -1].sum() == pytest.approx(flow.u[:, 0].sum(), abs=1e-12)


def test_strouhal_number_of_the_coarse_wake(wake):
    st = wake.attrs["strouhal"]
    assert 0.15 < st < 0.20  # Williamson: 0.164 unbounded; the walls at +-4 D raise it
    x, y = wake.x.values, wake.y.values
    probe = wake.v.values[0, :, np.argmin(abs(y)), np.argmin(abs(x - 2.5))]
    assert strouhal_number(probe, wake.attrs["dt"]) == pytest.approx(st, abs=5e-3)


def test_mask_is_the_disc(wake):
    mask = wake.mask.values
    # lattice points (i, j) with (i h)^2 + (j h)^2 < r^2, counted in integers
    n = int(RADIUS / SPACING) + 1
    inside = sum(1 for i in range(-n, n + 1) for j in range(-n, n + 1) if 16 * (i * i + j * j) < 625)
    assert (mask == 0).sum() == inside
    area_fraction = (1 - mask).sum() * SPACING**2 / (16.0 * 8.0)
    assert area_fraction == pytest.approx(math.pi * RADIUS**2 / (16.0 * 8.0), rel=0.03)


def test_body_is_at_rest_and_vorticity_has_the_shear_layer_signs(wake):
    x, y = np.meshgrid(wake.x.values, wake.y.values)
    r = np.hypot(x, y)
    speed = np.hypot(wake.u.values[0], wake.v.values[0])
    assert speed[:, r < RADIUS - SPACING].max() < 1e-3
    # omega = dv/dx - du/dy: u grows outward from the top surface, so omega < 0 there
    mean_vorticity = wake.vorticity.values[0].mean(axis=0)
    top = (abs(x) < 0.05) & (y > RADIUS) & (y < RADIUS + 0.2)
    bottom = (abs(x) < 0.05) & (y < -RADIUS) & (y > -RADIUS - 0.2)
    assert mean_vorticity[top].mean() < -1.0
    assert mean_vorticity[bottom].mean() > 1.0


def test_stored_fields_are_consistent_and_divergence_free(wake):
    h = wake.attrs["dx"]
    u, v, w = wake.u.values[0], wake.v.values[0], wake.vorticity.values[0]
    dv_dx = (v[:, 1:-1, 2:] - v[:, 1:-1, :-2]) / (2 * h)
    du_dy = (u[:, 2:, 1:-1] - u[:, :-2, 1:-1]) / (2 * h)
    du_dx = (u[:, 1:-1, 2:] - u[:, 1:-1, :-2]) / (2 * h)
    dv_dy = (v[:, 2:, 1:-1] - v[:, :-2, 1:-1]) / (2 * h)
    r = np.hypot(*np.meshgrid(wake.x.values[1:-1], wake.y.values[1:-1]))
    fluid = r > RADIUS + 3 * h
    rms = lambda a: float(np.sqrt(np.mean(a[:, fluid] ** 2)))  # noqa: E731
    assert rms(dv_dx - du_dy - w[:, 1:-1, 1:-1]) < 0.1 * rms(w[:, 1:-1, 1:-1])
    assert rms(du_dx + dv_dy) < 1e-5 * rms(w[:, 1:-1, 1:-1])  # float32 round-off


def test_store_round_trip(wake, tmp_path):
    path = store.save(wake, tmp_path / "cylinder.nc")
    ds = store.load(path)
    assert dict(ds.sizes) == {"trajectory": 1, "time": 100, "y": 99, "x": 199}
    assert ds.attrs["flow"] == "cylinder" and ds.attrs["periodic"] == 0
    assert (ds.attrs["cylinder_x"], ds.attrs["cylinder_y"], ds.attrs["cylinder_radius"]) == (0.0, 0.0, 0.5)
    assert (ds.attrs["dt"], ds.attrs["dx"], ds.attrs["dy"], ds.attrs["Re"]) == (0.2, SPACING, SPACING, 100.0)
    assert "free slip" in ds.attrs["boundary_conditions"]
    np.testing.assert_allclose(ds.time.values, 40.0 + 0.2 * np.arange(100))
    assert ds.mask.dims == ("y", "x")


def test_same_seed_same_data_other_seed_other_phase():
    kwargs = dict(spacing=0.2, spinup_time=40.0, domain=(-4.0, 8.0, -4.0, 4.0))
    a = generate_cylinder(3, seed=5, **kwargs)
    b = generate_cylinder(3, seed=5, **kwargs)
    c = generate_cylinder(3, seed=6, **kwargs)
    np.testing.assert_array_equal(a.u.values, b.u.values)
    np.testing.assert_array_equal(a.vorticity.values, b.vorticity.values)
    assert np.abs(a.v.values - c.v.values).max() > 1e-3


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="domain"):
        generate_cylinder(2, spacing=0.2, domain=(0.0, 8.0, -4.0, 4.0))
    with pytest.raises(ValueError, match="n_frames"):
        generate_cylinder(0, spacing=0.2)
    with pytest.raises(ValueError, match="spinup_time/n_frames"):
        generate_cylinder(2, spacing=0.2, spinup_time=0.0)


def test_cli_command_writes_a_store(tmp_path):
    parser = argparse.ArgumentParser()
    add_cylinder_command(parser.add_subparsers())
    out = tmp_path / "wake.nc"
    args = parser.parse_args(
        ["cylinder", "-o", str(out), "--frames", "2", "--spacing", "0.2", "--spinup-time", "40",
         "--domain", "-4", "8", "-4", "4", "--trajectories", "2"]
    )  # fmt: skip
    args.func(args)
    ds = store.load(out)
    assert dict(ds.sizes) == {"trajectory": 2, "time": 2, "y": 39, "x": 59}
    assert ds.attrs["spinup_time"] == 40.0
