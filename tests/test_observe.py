"""Observation operators: exact adjoints, counts and A A^T = c I."""

import pytest
import torch

from ldiff.linalg import conjugate_gradient
from ldiff.observe import BlockMean, Compose, Frames, Pixels, Subsample, observe

FIELD = (4, 11, 13)  # two frames of (u, v) on an odd grid

OPERATORS = [
    Subsample(2),
    Subsample(4, offset=3),
    BlockMean(3),
    Pixels.random(FIELD[1:], 0.2, seed=0),
    Pixels.sensors(FIELD[1:], [(0, 0), (5, 7), (10, 12)]),
    Frames(2, offset=1),
    Compose([Frames(2), Subsample(3, 1)]),
    Compose([BlockMean(2), Subsample(2)]),
]


@pytest.mark.parametrize("op", OPERATORS, ids=repr)
def test_adjoint_is_exact(op):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, *FIELD, generator=generator, dtype=torch.float64)
    y = torch.randn(op(x).shape, generator=generator, dtype=torch.float64)
    lhs = (op(x) * y).sum()
    rhs = (x * op.adjoint(y, FIELD)).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-12)


@pytest.mark.parametrize("op", OPERATORS, ids=repr)
def test_a_at_is_a_scaled_identity(op):
    y = torch.randn(op(torch.zeros(2, *FIELD, dtype=torch.float64)).shape, dtype=torch.float64)
    torch.testing.assert_close(op(op.adjoint(y, FIELD)), op.aat * y)


def test_observation_counts_are_exact():
    ibpm = (32, 199, 399)
    assert Subsample(2).n_obs(ibpm) == 100 * 200 * 32 == 640_000
    assert Subsample(4).n_obs(ibpm) == 50 * 100 * 32 == 160_000
    assert Subsample(8).n_obs(ibpm) == 25 * 50 * 32 == 40_000
    assert Subsample(16).n_obs(ibpm) == 13 * 25 * 32 == 10_400
    kolmogorov = (2, 64, 64)
    assert [Subsample(s).n_obs(kolmogorov) for s in (2, 4, 8, 16)] == [2048, 512, 128, 32]
    assert BlockMean(4).n_obs(ibpm) == 49 * 99 * 32
    assert Frames(4).n_obs((8, 5, 5)) == 1 * 2 * 25  # frame 0 of 4


def test_block_mean_values():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    torch.testing.assert_close(BlockMean(2)(x), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))


def test_frames_selects_whole_frames():
    x = torch.arange(6.0).reshape(1, 6, 1, 1)  # 3 frames x (u, v)
    assert Frames(2)(x).flatten().tolist() == [0.0, 1.0, 4.0, 5.0]


def test_observe_is_seeded_and_has_the_right_noise():
    x = torch.zeros(4, 2, 64, 64)
    y1 = observe(x, Subsample(2), 0.1, torch.Generator().manual_seed(5))
    y2 = observe(x, Subsample(2), 0.1, torch.Generator().manual_seed(5))
    torch.testing.assert_close(y1, y2)
    assert y1.std().item() == pytest.approx(0.1, rel=0.03)


def test_pixels_random_respects_the_fluid_mask():
    fluid = torch.ones(10, 10, dtype=torch.bool)
    fluid[3:7, 3:7] = False
    op = Pixels.random((10, 10), 0.5, seed=1, fluid=fluid)
    assert op.points == 42
    observed = op.adjoint(torch.ones(1, 1, op.points), (1, 10, 10))[0, 0]
    assert observed[3:7, 3:7].sum().item() == 0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Subsample(0), "stride"),
        (lambda: Subsample(2, 2), "offset"),
        (lambda: BlockMean(0), "factor"),
        (lambda: Pixels.random((4, 4), 0.0), "fraction"),
        (lambda: Pixels.sensors((4, 4), [(4, 0)]), "outside"),
        (lambda: Subsample(3, 2).n_obs((2, 2, 2)), "offset"),
        (lambda: Pixels.random((4, 4), 0.5).n_obs((2, 5, 5)), "does not fit"),
        (lambda: BlockMean(8).n_obs((2, 4, 4)), "exceeds"),
        (lambda: observe(torch.zeros(1, 2, 4, 4), Subsample(2), 0.0), "std"),
        (lambda: observe(torch.zeros(1, 2, 4, 4), Subsample(2), float("nan")), "std"),
    ],
)
def test_bad_input_is_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_conjugate_gradient_solves_each_sample_independently():
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, 8, generator=generator, dtype=torch.float64)
    spd = q @ q.transpose(1, 2) + 0.5 * torch.eye(8, dtype=torch.float64)
    spd[1] *= 100.0  # a badly scaled second system must not change the first one's iterates
    b = torch.randn(2, 8, generator=generator, dtype=torch.float64)
    solve = conjugate_gradient(lambda v: torch.einsum("bij,bj->bi", spd, v), b, maxiter=50, rtol=1e-12)
    torch.testing.assert_close(solve, torch.linalg.solve(spd, b))
    alone = conjugate_gradient(lambda v: torch.einsum("bij,bj->bi", spd[:1], v), b[:1], maxiter=50, rtol=1e-12)
    torch.testing.assert_close(solve[:1], alone)


# --- sensors placed on the data's grid ------------------------------------------------


def wake_grid():
    """A 9 x 17 grid on [-4, 12] x [-2, 2] (spacing 1 in x, 0.5 in y) with a body of
    radius 1 at the origin."""
    x, y = torch.linspace(-4, 12, 17, dtype=torch.float64), torch.linspace(-2, 2, 9, dtype=torch.float64)
    fluid = torch.hypot(x[None, :], y[:, None]) > 1.0
    return x, y, fluid


def test_random_sensors_are_a_seeded_fraction_of_the_fluid_nodes_once_bound():
    from ldiff.observe import RandomSensors

    x, y, fluid = wake_grid()
    op = RandomSensors(0.25, seed=3)
    with pytest.raises(ValueError, match="placed on the data's grid"):
        op.check((2, 9, 17))
    op.bind(x, y, fluid)
    chosen = op._mask
    assert chosen.sum() == round(0.25 * fluid.sum().item()) and not (chosen & ~fluid).any()
    again = RandomSensors(0.25, seed=3)
    again.bind(x, y, fluid)
    assert torch.equal(again._mask, chosen)  # a function of the seed and the grid
    anywhere = RandomSensors(0.25, seed=3, fluid_only=False)
    anywhere.bind(x, y, fluid)
    assert anywhere._mask.sum() == round(0.25 * 9 * 17)
    fields = torch.randn(2, 4, 9, 17)
    assert op(fields).shape == (2, 4, int(chosen.sum())) and op.n_obs((4, 9, 17)) == 4 * int(chosen.sum())


def test_rakes_put_a_sensor_every_spacing_on_each_line_at_the_nearest_fluid_node():
    from ldiff.observe import Rakes

    x, y, fluid = wake_grid()
    op = Rakes(x=[0.0, 2.2, 6.0], y_min=-2.0, y_max=2.0, spacing=1.0)
    op.bind(x, y, fluid)
    rows, cols = op._mask.nonzero().T
    # columns of x = 0, 2 (nearest to 2.2) and 6; rows of y = -2, -1, 0, 1, 2; at x = 0 the
    # nodes within the body (y = -1, 0, 1 at radius <= 1) carry no sensor
    assert sorted(set(cols.tolist())) == [4, 6, 10]
    assert sorted(rows[cols == 6].tolist()) == sorted(rows[cols == 10].tolist()) == [0, 2, 4, 6, 8]
    assert sorted(rows[cols == 4].tolist()) == [0, 8]
    with pytest.raises(ValueError, match=r"x = 20 lies outside the grid's x range \[-4, 12\]"):
        Rakes(x=[20.0], y_min=0.0, y_max=1.0, spacing=0.5).bind(x, y, fluid)
