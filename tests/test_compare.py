"""`ldiff compare` and `ldiff predict` end to end on a tiny GRF prior."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import xarray as xr
import yaml
from wandb_files import read_runs

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
    config.update(output=str(tmp / "run"), baseline={"fit": str(train)}, baseline_sample=True)
    config["model"].update(checkpoint=str(ckpt))
    config["data"].update(path=str(test))
    path = tmp / "compare.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert run("compare", "--config", str(path)) == 0
    return tmp / "run", ckpt


def test_compare_writes_one_scored_prediction_file_per_pair(compared):
    out, _ = compared
    rows = list(csv.DictReader(open(out / "tables" / "summary.csv")))
    strategies = ["dps-sum", "dual-scaled", "mmps", "ddrm", "exact-gaussian", "exact-gaussian-sample"]
    assert [(r["strategy"], r["operator"]) for r in rows] == [(s, o) for o in ("sub2", "sub4") for s in strategies]
    # window 2 -> 4 channels of 16 x 16: 4 x 8 x 8 and 4 x 4 x 4 observations
    assert {r["operator"]: int(r["n_obs"]) for r in rows} == {"sub2": 256, "sub4": 64}
    for r in rows:
        assert int(r["balanced"]) + int(r["flat"]) + int(r["diverged"]) == 3 * 2
        with xr.open_dataset(out / "predictions" / f"{r['strategy']}__{r['operator']}.nc", engine="h5netcdf") as ds:
            assert ds["recon"].shape == (3, 2, 2, 2, 16, 16)  # item, sample, frame, component, y, x
            assert float(ds.attrs["metric_rmse_mean"]) == pytest.approx(float(r["rmse_mean"]), nan_ok=True)
            assert (ds.attrs["label"], ds.attrs["operator_label"]) == (r["strategy"], r["operator"])
    assert json.loads((out / "tables" / "summary.json").read_text())[0]["strategy"] == "dps-sum"


def test_the_exact_gaussian_row_fits_the_data_at_about_the_noise(compared):
    out, _ = compared
    rows = {(r["strategy"], r["operator"]): r for r in csv.DictReader(open(out / "tables" / "summary.csv"))}
    # a posterior mean fits the observations more tightly than the noise (ratio < 1)
    assert 0.2 < float(rows[("exact-gaussian", "sub2")]["residual_ratio"]) < 1.0
    for op in ("sub2", "sub4"):
        mean, sample = rows[("exact-gaussian", op)], rows[("exact-gaussian-sample", op)]
        # its K rows are one mean; the sample row's are K different exact posterior samples
        assert float(mean["spread_skill"]) == 0.0 and float(sample["spread_skill"]) > 0.1
        # a sample misses the truth by more than the mean does, and fits the data more loosely
        assert float(sample["rel_l2"]) > float(mean["rel_l2"])
        assert float(sample["residual_ratio"]) > float(mean["residual_ratio"])


def test_compare_records_provenance_figures_and_a_local_mirror(compared):
    out, ckpt = compared
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["checksums"]["checkpoint"] == sha256(ckpt)
    assert {"commit", "dirty"} <= set(provenance["git"])
    assert provenance["packages"]["torch"]
    assert (out / "figures" / "vorticity.png").stat().st_size > 10_000
    assert (out / "figures" / "diagnostics.png").stat().st_size > 10_000
    # what W&B got is mirrored locally: the summary table, the summary values, the series
    summary = json.loads((out / "summary.json").read_text())
    table = {(r["strategy"], r["operator"]): r for r in csv.DictReader(open(out / "tables" / "summary.csv"))}
    for (strategy, op), row in table.items():
        assert summary[f"{strategy}/{op}/diverged"] == int(row["diverged"])
        assert summary[f"{strategy}/{op}/rmse_mean"] == pytest.approx(float(row["rmse_mean"]), nan_ok=True)
    series = json.loads((out / "tables" / "diagnostics.json").read_text())
    dps = [row for row in series if (row["strategy"], row["operator"]) == ("dps-sum", "sub4")]
    assert [row["step"] for row in dps] == list(range(6))  # 6 sampler steps, one guided evaluation each
    assert dps[0]["t"] == pytest.approx(1.0) and all(row["ratio"] > 0 for row in dps)


def test_compare_makes_one_wandb_run_per_pair_in_one_group_with_the_diagnostics_series(compared):
    out, ckpt = compared
    runs = read_runs(out / "wandb")
    pairs = [run for run in runs if run.job_type == "compare"]
    strategies = ["dps-sum", "dual-scaled", "mmps", "ddrm", "exact-gaussian", "exact-gaussian-sample"]
    assert sorted(run.name for run in pairs) == sorted(f"{s}@{o}" for s in strategies for o in ("sub2", "sub4"))
    assert len({run.group for run in runs}) == 1 and [run.job_type for run in runs].count("summary") == 1
    run = next(run for run in pairs if run.name == "dps-sum@sub4")
    assert set(run.tags) == {"dps-sum", "sub4"}
    assert run.config["strategy_class"] == "ldiff.guidance.dps_sum.DPSSum" and run.config["strategy_args"]["gamma"] == 0.01
    assert (run.config["operator"], run.config["n_obs"], run.config["std"]) == ("Subsample(stride=4, offset=0)", 64, 0.1)
    assert run.config["checkpoint_sha256"] == sha256(ckpt)
    # the series against t, one row per sampler step, equal to the local mirror
    steps = [row for row in run.history if "diag/t" in row]
    mirror = [row for row in json.loads((out / "tables" / "diagnostics.json").read_text()) if (row["strategy"], row["operator"]) == ("dps-sum", "sub4")]
    assert len(steps) == 6
    np.testing.assert_allclose([row["diag/ratio"] for row in steps], [row["ratio"] for row in mirror], rtol=1e-6)
    np.testing.assert_allclose([row["diag/eps_norm"] for row in steps], [row["eps_norm"] for row in mirror], rtol=1e-6)
    assert {"diag/correction_norm", "diag/gamma_share"} <= set(steps[0])
    # and every pair's metrics, equal to the summary table's
    table = {f"{r['strategy']}@{r['operator']}": r for r in csv.DictReader(open(out / "tables" / "summary.csv"))}
    for run in pairs:
        for name in ("rmse_mean", "vorticity_corr_mean", "residual_ratio", "diverged"):
            assert run.summary[f"predict/{name}"] == pytest.approx(float(table[run.name][name]), nan_ok=True), (run.name, name)
    assert np.isfinite(runs[0].summary["predict/rmse_mean"]) or np.isfinite(pairs[-1].summary["predict/rmse_mean"])


def test_predict_cli_writes_a_readable_file_and_an_offline_wandb_run(prior, tmp_path):
    ckpt, train, _ = prior
    output = tmp_path / "recon.nc"
    config = ROOT / "configs" / "predict" / "grf-tiny.yaml"
    status = run("predict", "--config", str(config), "--model.checkpoint", str(ckpt), "--data.path", str(train),
                 "--trainer.callbacks.init_args.output", str(output), "--trainer.logger.init_args.save_dir", str(tmp_path))
    assert status == 0
    with xr.open_dataset(output, engine="h5netcdf") as ds:
        # 2 test trajectories of 8 frames in windows of 2 -> 8 items
        assert ds.sizes["item"] == 8 and ds.sizes["sample"] == 2
        assert (ds.attrs["strategy"], ds.attrs["operator"], ds.attrs["checkpoint_sha256"]) == ("DualScaled", "Subsample(stride=2, offset=0)", sha256(ckpt))
        # physical units: the store's u at the item's trajectory and time, selectable by x and y
        store = xr.open_dataset(train, engine="h5netcdf")
        item = ds.isel(item=3)
        truth_u = item["truth"].sel(frame=0, component="u").sel(y=store["y"][5], x=store["x"][7], method="nearest")
        stored = store["u"].sel(trajectory=int(item["trajectory"]), time=float(item["time"])).isel(y=5, x=7)
        assert float(truth_u) == pytest.approx(float(stored), rel=1e-5, abs=1e-6)
        assert ds["x"].attrs["units"] == store["x"].attrs["units"]
        # observations at their positions: the truth there, up to the noise
        obs = item["observation"]
        obs = obs.where((obs["obs_component"] == "u") & (obs["obs_frame"] == 0), drop=True)
        assert obs.sizes["obs"] == 64  # a quarter of the 256: u of frame 0
        at = item["truth"].sel(frame=0, component="u").sel(x=obs["obs_x"], y=obs["obs_y"])
        noise = (obs - at).std().item() / float(ds.attrs["norm_std"][0])
        assert 0.05 < noise < 0.2  # std 0.1 in normalised units
        assert ds["regime"].attrs["flag_meanings"] == "balanced flat diverged"
    (wandb_run,) = read_runs(tmp_path / "wandb")
    assert wandb_run.config["strategy"] == "DualScaled" and wandb_run.config["n_obs"] == 256
    assert wandb_run.config["checkpoint_sha256"] == sha256(ckpt) and wandb_run.config["std"] == 0.1
    with xr.open_dataset(output, engine="h5netcdf") as ds:
        for name in ("rmse", "vorticity_rmse", "vorticity_corr", "residual_ratio", "energy_ratio", "spectrum_log_error",
                     "crps", "spread_skill", "balanced", "flat", "diverged"):
            assert wandb_run.summary[f"predict/{name}"] == pytest.approx(float(ds.attrs[f"metric_{name}"]), nan_ok=True), name
    assert any(key.startswith("predict/reconstruction") for key in wandb_run.summary)


def test_compare_refuses_a_misspelled_key(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model: {checkpoint: x.ckpt, stepz: 3}\ndata: {path: t.nc}\nstrategies: {}\n")
    assert run("compare", "--config", str(path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stepz" in err[0]


def test_set_overrides_the_config_of_one_run_without_editing_it(prior, tmp_path, capsys):
    """``--set`` changes the run (its directory, the sample count, a strategy argument,
    the operators, no baseline) and the provenance records the values used, while the
    config file is left as it was."""
    ckpt, _, test = prior
    config = yaml.safe_load((ROOT / "configs" / "compare" / "grf-tiny.yaml").read_text())
    config.update(output=str(tmp_path / "from-file"))
    config["model"].update(checkpoint=str(ckpt))
    config["data"].update(path=str(test), items=1)
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    before = path.read_text()
    out = tmp_path / "from-set"
    sets = [f"output={out}", "model.samples=3", "strategies.mmps.init_args.maxiter=2", "operators={sub4: {class_path: ldiff.observe.Subsample, init_args: {stride: 4}}}", "baseline=null"]
    assert run("compare", "--config", str(path), "--only", "mmps", *[a for s in sets for a in ("--set", s)]) == 0
    assert path.read_text() == before and not (tmp_path / "from-file").exists()
    assert f"table: {out / 'tables' / 'summary.csv'}" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "tables" / "summary.csv")))
    assert [(r["strategy"], r["operator"]) for r in rows] == [("mmps", "sub4")]
    with xr.open_dataset(out / "predictions" / "mmps__sub4.nc") as ds:
        assert ds.sizes["sample"] == 3
        assert json.loads(ds.attrs["strategy_args"])["maxiter"] == 2
    recorded = json.loads((out / "provenance.json").read_text())["config"]
    assert recorded["model"]["samples"] == 3 and recorded["baseline"] is None


def test_set_parses_yaml_values_and_refuses_bad_assignments(tmp_path, capsys):
    from ldiff.config import apply_overrides

    cfg = {"model": {"samples": 2}, "output": "runs/x"}
    new = apply_overrides(cfg, ["model.samples=8", "model.std=0.05", "data.items=[1, 2]", "trainer.devices=2", "wandb.mode=offline", "baseline=null"])
    assert new == {"model": {"samples": 8, "std": 0.05}, "output": "runs/x", "data": {"items": [1, 2]}, "trainer": {"devices": 2}, "wandb": {"mode": "offline"}, "baseline": None}
    assert cfg == {"model": {"samples": 2}, "output": "runs/x"}  # not modified
    for bad, named in (("model.samples", "KEY=VALUE"), ("=3", "KEY=VALUE"), ("model..x=1", "KEY=VALUE"), ("output.x=1", "output is 'runs/x', not a mapping"), ("model.std=[1", "model.std: not a valid value")):
        with pytest.raises(ValueError, match=named):
            apply_overrides(cfg, [bad])
    path = tmp_path / "c.yaml"
    path.write_text("model: {checkpoint: x.ckpt}\ndata: {path: t.nc}\nstrategies: {m: {class_path: ldiff.guidance.mmps.MMPS}}\n")
    assert run("compare", "--config", str(path), "--set", "model.stepz=3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key 'stepz'" in err[0]
    assert run("compare", "--config", str(path), "--set", "model.steps=many") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.steps: expected int, got 'many'" in err[0]


def test_the_figure_marks_exactly_the_observed_nodes():
    from ldiff.figures import observed_points
    from ldiff.observe import BlockMean, Pixels, Subsample

    points = observed_points(Subsample(4, offset=1), (2, 9, 9))
    assert points.sum() == 4 and points[1, 1] and points[5, 5] and not points[0, 0]  # rows and columns 1, 5
    assert observed_points(BlockMean(3), (2, 9, 9)).all()
    assert observed_points(Pixels.sensors((9, 9), [(2, 7)]), (2, 9, 9)).sum() == 1


@pytest.mark.slow
def test_two_process_ddp_predict_through_the_console_script_equals_one_process(prior, tmp_path):
    """The user's command: ``ldiff predict ... --trainer.devices 2 --trainer.strategy ddp``
    (CPU, gloo) with the shipped config's W&B logger, on 7 windows: one file, no shards,
    the same reconstructions and metrics as one process, one W&B run with the metrics."""
    ckpt, train, _ = prior
    config = ROOT / "configs" / "predict" / "grf-tiny.yaml"

    def predict(name: str, *extra: str) -> xr.Dataset:
        out = tmp_path / name
        args = ["predict", "--config", str(config), "--model.checkpoint", str(ckpt), "--data.path", str(train), "--data.items", "7",
                "--trainer.callbacks.init_args.output", str(out / "recon.nc"), "--trainer.logger.init_args.save_dir", str(out),
                "--trainer.enable_progress_bar", "false", *extra]
        done = subprocess.run([str(Path(sys.executable).parent / "ldiff"), *args], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        assert sorted(p.name for p in out.iterdir()) == ["recon.nc", "wandb"]  # no shard left behind
        with xr.open_dataset(out / "recon.nc", engine="h5netcdf") as ds:
            return ds.load()

    two = predict("two", "--trainer.devices", "2", "--trainer.strategy", "ddp")
    one = predict("one")
    assert two["item"].values.tolist() == list(range(7))
    np.testing.assert_array_equal(two["recon"].values, one["recon"].values)
    for key in (k for k in one.attrs if k.startswith("metric_")):
        assert two.attrs[key] == pytest.approx(one.attrs[key], rel=1e-9, nan_ok=True), key
    (run_two,) = read_runs(tmp_path / "two" / "wandb")
    assert run_two.summary["predict/items"] == 7
    assert run_two.summary["predict/rmse"] == pytest.approx(float(one.attrs["metric_rmse"]), rel=1e-9)
