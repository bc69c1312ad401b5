"""`ldiff compare` on an oracle config: every strategy scored against the exact posterior
of an analytic Gaussian prior, through the predict path, on a field small enough for the
test suite (the seed-scale run is configs/compare/ibpm-oracle.yaml, in the README)."""

import json
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml

from ldiff.cli import main
from ldiff.diffusion.schedules import CosineSchedule
from ldiff.nets.gaussian import GaussianPrior, power_law, subsample_preconditioner
from ldiff.observe import Subsample, observe

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> int:
    with mock.patch.object(sys, "argv", ["ldiff"]):
        return main(list(args))


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """The shipped ibpm-oracle config on (4, 96, 160) with the default, the user's
    dps-sum: N = 15,360 / 3,840 / 960 / 240 at strides 2 / 4 / 8 / 16."""
    tmp = tmp_path_factory.mktemp("oracle")
    config = yaml.safe_load((ROOT / "configs" / "compare" / "ibpm-oracle.yaml").read_text())
    config["oracle"].update(shape=[4, 96, 160])
    path = tmp / "oracle.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    sets = [f"output={tmp / 'run'}", "oracle.items=2", "wandb.mode=disabled"]  # the oracle path reads --set too
    assert run("compare", "--config", str(path), "--only", "mmps", "dps-sum", *[a for s in sets for a in ("--set", s)]) == 0
    return {(r["strategy"], r["operator"]): r for r in json.loads((tmp / "run" / "tables" / "summary.json").read_text())}


@pytest.mark.parametrize("op", ["sub2", "sub4", "sub8", "sub16"])
def test_the_default_holds_at_every_n(rows, op):
    """The issue's bounds for the default at every N: residual in [0.85, 1.15], mean error
    at most 1.2 x the K-exact-sample mean's, spread in [0.8, 1.2], none diverged."""
    row = rows[("mmps", op)]
    assert row["n_obs"] == {"sub2": 15_360, "sub4": 3_840, "sub8": 960, "sub16": 240}[op]
    assert 0.85 <= row["residual"] <= 1.15
    assert row["mean_error_ratio"] <= 1.2
    assert 0.8 <= row["spread_ratio"] <= 1.2
    assert row["diverged"] == 0
    assert row["solve_relres"] < 1e-4  # the exact references are converged


def test_dps_sum_over_fits_the_dense_rate(rows):
    """The seed's failure in small: the user's dps-sum fits the densest data tighter than
    their noise, and far more than the default does."""
    assert rows[("dps-sum", "sub2")]["residual"] < 0.8 * rows[("mmps", "sub2")]["residual"]


def test_preconditioned_solve_matches_plain_cg_and_is_faster():
    """The coarse-circulant preconditioner on IBPM-like odd sizes: the same posterior mean
    as plain CG run to convergence in float64, in a fraction of the iterations."""
    from ldiff.linalg import truncated_cg

    shape = (2, 39, 79)
    prior = GaussianPrior(CosineSchedule(), power_law(shape, 4.0, 2.0), torch.zeros(2)).double()
    x = prior.sample(1, torch.Generator().manual_seed(0))
    op = Subsample(2)
    y = observe(x, op, 0.1, torch.Generator().manual_seed(1))
    plain = prior.posterior_mean(y, op, 0.1, maxiter=5000)
    pc = subsample_preconditioner(prior.power, 2, tuple(y.shape[1:]), 0.1)
    fast = prior.posterior_mean(y, op, 0.1, maxiter=60, precondition=pc)
    assert ((fast - plain).norm() / plain.norm()).item() < 1e-6

    def matvec(w):
        return op(prior.cov(op.adjoint(w, shape))) + 0.01 * w

    with_pc = truncated_cg(matvec, y, maxiter=5000, rtol=1e-8, precondition=pc).iterations.item()
    without = truncated_cg(matvec, y, maxiter=5000, rtol=1e-8).iterations.item()
    assert with_pc < without / 5


def test_only_keeps_the_named_strategies_in_order_and_refuses_unknown_names():
    from ldiff.config import select

    strategies = {"mmps": 1, "dps-sum": 2, "ddrm": 3}
    assert select(strategies, None, "c.yaml") is strategies
    assert list(select(strategies, ["ddrm", "mmps"], "c.yaml")) == ["ddrm", "mmps"]
    with pytest.raises(ValueError, match=r"c.yaml: --only names no strategy 'dps'"):
        select(strategies, ["dps"], "c.yaml")
