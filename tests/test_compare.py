"""`ldiff compare` and `ldiff predict` end to end on a tiny GRF prior."""

import csv
import json
import sys
from pathlib import Path
from unittest import mock

import pytest
import xarray as xr
import yaml

from ldiff.cli import main
from ldiff.data.grf import generate_grf
from ldiff.data.store import save
from ldiff.tracking import sha256

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> int:
    with mock.patch.object(sys, "argv", ["ldiff"]):
        return main(list(args))


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    """A tiny prior fitted for 2 epochs, its training store and a held-out store."""
    tmp = tmp_path_factory.mktemp("prior")
    train = save(generate_grf(16, 8, 16, seed=0), tmp / "grf.nc")
    test = save(generate_grf(2, 8, 16, seed=7), tmp / "grf-test.nc")
    config = ROOT / "configs" / "prior" / "grf-tiny.yaml"
    args = ["fit", "--config", str(config), "--data.path", str(train), "--trainer.default_root_dir", str(tmp / "run"), "--trainer.max_epochs", "2"]
    assert run(*args) == 0
    return tmp / "run" / "checkpoints" / "last.ckpt", train, test


@pytest.fixture(scope="module")
def compared(prior, tmp_path_factory):
    ckpt, train, test = prior
    tmp = tmp_path_factory.mktemp("compare")
    config = yaml.safe_load((ROOT / "configs" / "compare" / "grf-tiny.yaml").read_text())
    config.update(checkpoint=str(ckpt), output=str(tmp / "run"))
    config["data"].update(test=str(test), train=str(train))
    path = tmp / "compare.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert run("compare", "--config", str(path)) == 0
    return tmp / "run", ckpt


def test_compare_writes_one_scored_prediction_file_per_pair(compared):
    out, _ = compared
    rows = list(csv.DictReader(open(out / "tables" / "summary.csv")))
    strategies = ["dps-sum", "dual-scaled", "mmps", "ddrm", "exact-gaussian"]
    assert [(r["strategy"], r["operator"]) for r in rows] == [(s, o) for o in ("sub2", "sub4") for s in strategies]
    # window 2 -> 4 channels of 16 x 16: 4 x 8 x 8 and 4 x 4 x 4 observations
    assert {r["operator"]: int(r["n_obs"]) for r in rows} == {"sub2": 256, "sub4": 64}
    for r in rows:
        assert int(r["balanced"]) + int(r["flat"]) + int(r["diverged"]) == 3 * 2
        with xr.open_dataset(out / "predictions" / f"{r['strategy']}__{r['operator']}.nc", engine="h5netcdf") as ds:
            assert ds["recon"].shape == (3, 2, 4, 16, 16)
            assert float(ds.attrs["metric_rmse_mean"]) == pytest.approx(float(r["rmse_mean"]), nan_ok=True)
    assert json.loads((out / "tables" / "summary.json").read_text())[0]["strategy"] == "dps-sum"


def test_the_exact_gaussian_row_fits_the_data_at_about_the_noise(compared):
    out, _ = compared
    rows = {(r["strategy"], r["operator"]): r for r in csv.DictReader(open(out / "tables" / "summary.csv"))}
    # a posterior mean fits the observations more tightly than the noise (ratio < 1)
    assert 0.2 < float(rows[("exact-gaussian", "sub2")]["residual_ratio"]) < 1.0


def test_compare_records_provenance_figures_and_an_offline_wandb_run(compared):
    out, ckpt = compared
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["checksums"]["checkpoint"] == sha256(ckpt)
    assert {"commit", "dirty"} <= set(provenance["git"])
    assert provenance["packages"]["torch"]
    assert (out / "figures" / "vorticity.png").stat().st_size > 10_000
    assert (out / "figures" / "diagnostics.png").stat().st_size > 10_000
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    # what W&B got is mirrored locally: the summary table and the summary values
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dps-sum/sub2/diverged"] == 0 or summary["dps-sum/sub2/diverged"] > 0


def test_predict_cli_writes_a_scored_file(prior, tmp_path):
    ckpt, train, _ = prior
    output = tmp_path / "recon.nc"
    config = ROOT / "configs" / "predict" / "grf-tiny.yaml"
    status = run("predict", "--config", str(config), "--ckpt_path", str(ckpt), "--data.path", str(train),
                 "--trainer.callbacks.init_args.output", str(output))
    assert status == 0
    with xr.open_dataset(output, engine="h5netcdf") as ds:
        # 2 test trajectories of 8 frames in windows of 2 -> 8 items
        assert ds.sizes["item"] == 8 and ds.sizes["sample"] == 2
        assert "metric_vorticity_corr" in ds.attrs and "norm_std" in ds.attrs


def test_compare_refuses_a_misspelled_key(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("checkpoint: x.ckpt\ndata: {test: t.nc}\nstrategies: {}\nsampler: {stepz: 3}\n")
    assert run("compare", "--config", str(path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stepz" in err[0]


def test_the_figure_marks_exactly_the_observed_nodes():
    from ldiff.figures import observed_points
    from ldiff.observe import BlockMean, Pixels, Subsample

    points = observed_points(Subsample(4, offset=1), (2, 9, 9))
    assert points.sum() == 4 and points[1, 1] and points[5, 5] and not points[0, 0]  # rows and columns 1, 5
    assert observed_points(BlockMean(3), (2, 9, 9)).all()
    assert observed_points(Pixels.sensors((9, 9), [(2, 7)]), (2, 9, 9)).sum() == 1
