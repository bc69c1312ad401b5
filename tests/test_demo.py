"""The demo's test mode: `ldiff compare --config configs/compare/kolmogorov.yaml --quick`,
every strategy of the shipped config at its densest and sparsest rate."""

import csv
import sys
from pathlib import Path
from unittest import mock

import yaml

from ldiff.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "compare" / "kolmogorov.yaml"
ENDS = ("sub2", "sub16")
"""The rates where the user's failures show (over-fit at sub 2, prior dominance at sub
16); the two between run the same code with other counts (a pair costs about 3 s here,
mostly its W&B panels and files)."""


def test_demo_quick_runs_every_strategy_at_both_ends_of_the_density_range(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's paths are relative to the repository
    config = yaml.safe_load(CONFIG.read_text())
    operators = {name: config["operators"][name] for name in ENDS}
    # W&B off: one offline run per pair took about a third of this test's time in CI
    # (84 s -> 53 s), and test_compare checks those runs (one per pair, one group, the series)
    args = ["compare", "--config", str(CONFIG), "--quick", "--output", str(tmp_path / "demo"), "--set", f"operators={yaml.safe_dump(operators, default_flow_style=True).strip()}", "--set", "wandb.mode=disabled"]
    with mock.patch.object(sys, "argv", ["ldiff"]):
        assert main(args) == 0
    rows = list(csv.DictReader(open(tmp_path / "demo" / "tables" / "summary.csv")))
    strategies = [*config["strategies"], "exact-gaussian"]
    assert sorted({(r["strategy"], r["operator"]) for r in rows}) == sorted((s, o) for s in strategies for o in ENDS)
    n_obs = {r["operator"]: int(r["n_obs"]) for r in rows}
    assert n_obs == {"sub2": 2048, "sub16": 32}
    for r in rows:
        assert int(r["balanced"]) + int(r["flat"]) + int(r["diverged"]) == 2  # 1 item x 2 samples
