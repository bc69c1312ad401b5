"""The demo's test mode: `ldiff compare --config configs/compare/kolmogorov.yaml --quick`."""

import csv
import sys
from pathlib import Path
from unittest import mock

import yaml

from ldiff.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "compare" / "kolmogorov.yaml"


def test_demo_quick_runs_every_strategy_at_every_density(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's paths are relative to the repository
    with mock.patch.object(sys, "argv", ["ldiff"]):
        assert main(["compare", "--config", str(CONFIG), "--quick", "--output", str(tmp_path / "demo")]) == 0
    config = yaml.safe_load(CONFIG.read_text())
    rows = list(csv.DictReader(open(tmp_path / "demo" / "tables" / "summary.csv")))
    strategies = [*config["strategies"], "exact-gaussian"]
    assert sorted({(r["strategy"], r["operator"]) for r in rows}) == sorted((s, o) for s in strategies for o in config["operators"])
    n_obs = {r["operator"]: int(r["n_obs"]) for r in rows}
    assert n_obs == {"sub2": 2048, "sub4": 512, "sub8": 128, "sub16": 32}
    for r in rows:
        assert int(r["balanced"]) + int(r["flat"]) + int(r["diverged"]) == 2  # 1 item x 2 samples
