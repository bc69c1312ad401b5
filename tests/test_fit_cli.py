"""``ldiff fit`` / ``validate`` end to end on a tiny GRF data set: checkpoints every epoch
and ``last.ckpt``, exact resume, a reproducible validation loss, 2-process DDP, and
one-line errors for bad input.

Run sizes: 16 trajectories of 8 frames (16 x 16), split 12 / 2 / 2, window 2, batch 4:
one random window per training trajectory per epoch gives ceil(12 / 4) = 3 steps.
"""

import csv
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import yaml

from ldiff.cli import main
from ldiff.data.grf import generate_grf
from ldiff.data.module import FieldDataModule
from ldiff.data.store import save
from ldiff.diffusion.precond import GaussianPreconditioned, StandardizedGaussianPreconditioned
from ldiff.lit.checkpoint import export_prior, load_prior
from ldiff.nets.gaussian import GaussianPrior, fit_moments
from ldiff.nets.unet import UNet, num_parameters

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "prior" / "grf-tiny.yaml"
STEPS_PER_EPOCH = 3


def run(*args: str) -> int:
    with mock.patch.object(sys, "argv", ["ldiff"]):
        return main(list(args))


def fit_args(data: Path, root: Path, *extra: str) -> list[str]:
    return ["--config", str(CONFIG), "--data.path", str(data), "--trainer.default_root_dir", str(root), *extra]


def metrics(root: Path, version: int = 0) -> list[dict]:
    with open(root / "lightning_logs" / f"version_{version}" / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A 2-epoch fit; returns (data file, run directory)."""
    tmp = tmp_path_factory.mktemp("fit")
    data = save(generate_grf(16, 8, 16, seed=0), tmp / "grf.nc")
    assert run("fit", *fit_args(data, tmp / "run", "--trainer.max_epochs", "2")) == 0
    return data, tmp / "run"


def test_fit_writes_a_checkpoint_every_epoch_and_last(fitted):
    data, root = fitted
    ckpts = root / "checkpoints"
    assert sorted(os.listdir(ckpts)) == ["epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt", "last.ckpt"]
    first = torch.load(ckpts / "epoch=0-step=3.ckpt", weights_only=True)
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert (first["global_step"], last["global_step"]) == (STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH)
    # cosine decay over 6 steps: after 3 the rate is lr (1 + cos(pi / 2)) / 2 = lr / 2
    assert first["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.5, rel=1e-12)
    # the normaliser of the training split, as the data module computes it
    datamodule = FieldDataModule(str(data), window=2, batch_size=4, split=(0.75, 0.125, 0.125))
    datamodule.setup("fit")
    assert torch.equal(last["normalizer"]["mean"], datamodule.normalizer.mean)
    assert torch.equal(last["normalizer"]["std"], datamodule.normalizer.std)
    # the averaged weights are what load_prior returns
    net, _, _, hparams = load_prior(ckpts / "last.ckpt")
    for key, value in net.state_dict().items():
        assert torch.equal(value, last["state_dict"][f"net.{key}"])
    # preconditioned (the default): the UNet sits at net.net.* (averaged) and online.net.* (raw)
    assert not torch.equal(last["state_dict"]["net.net.lift.weight"], last["state_dict"]["online.net.lift.weight"])
    # the parameter count logged at fit start
    logged = yaml.safe_load((root / "lightning_logs" / "version_0" / "hparams.yaml").read_text())
    assert logged["parameters"] == num_parameters(UNet(**hparams["net"]["init_args"])) == 17044


def test_resume_continues_at_the_saved_step(fitted, tmp_path):
    data, root = fitted
    args = fit_args(data, tmp_path, "--trainer.max_epochs", "3", "--ckpt_path", str(root / "checkpoints" / "last.ckpt"))
    assert run("fit", *args) == 0
    resumed = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    steps = 2 * STEPS_PER_EPOCH + STEPS_PER_EPOCH
    assert resumed["global_step"] == steps and resumed["epoch"] == 2
    # optimiser and scheduler state were restored, not restarted
    assert all(state["step"].item() == steps for state in resumed["optimizer_states"][0]["state"].values())
    assert resumed["lr_schedulers"][0]["last_epoch"] == steps
    # the loss curve picks up at step 6, epoch 2
    rows = [row for row in metrics(tmp_path) if row["train/loss"]]
    assert [(int(row["epoch"]), int(row["step"])) for row in rows] == [(2, 6), (2, 7), (2, 8)]
    assert all(math.isfinite(float(row["train/loss"])) for row in rows)


def test_a_fresh_fit_into_a_used_root_is_refused_and_resuming_there_keeps_last_ckpt_the_newest(fitted, tmp_path, capsys):
    data, root = fitted
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(root / "checkpoints", ckpts)
    before = {path.name: path.read_bytes() for path in ckpts.iterdir()}
    assert run("fit", *fit_args(data, tmp_path, "--trainer.max_epochs", "3")) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"ldiff: error: {ckpts}: holds the checkpoints of an earlier run (last.ckpt); "
        f"resume it with --ckpt_path {ckpts / 'last.ckpt'}, or give another --trainer.default_root_dir"
    )
    assert {path.name: path.read_bytes() for path in ckpts.iterdir()} == before  # nothing touched
    # resuming from an older checkpoint of the same root re-saves its later files in place
    assert run("fit", *fit_args(data, tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", str(ckpts / "epoch=0-step=3.ckpt"))) == 0
    assert sorted(os.listdir(ckpts)) == ["epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt", "last.ckpt"]
    assert run("fit", *fit_args(data, tmp_path, "--trainer.max_epochs", "3", "--ckpt_path", "last")) == 0
    assert sorted(os.listdir(ckpts)) == ["epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt", "epoch=2-step=9.ckpt", "last.ckpt"]
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 3 * STEPS_PER_EPOCH
    # SLURM's requeue checkpoint sits beside checkpoints/ (configs/slurm/fit.sbatch resumes from it)
    shutil.copy(ckpts / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt")
    assert run("fit", *fit_args(data, tmp_path, "--trainer.max_epochs", "4", "--ckpt_path", str(tmp_path / "hpc_ckpt_1.ckpt"))) == 0
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 4 * STEPS_PER_EPOCH


def test_validate_reproduces_the_logged_validation_loss(fitted, tmp_path):
    data, root = fitted
    logged = [float(row["val/loss"]) for row in metrics(root) if row["val/loss"]]
    assert len(logged) == 2
    args = fit_args(data, tmp_path, "--ckpt_path", str(root / "checkpoints" / "last.ckpt"))
    assert run("validate", *args) == 0
    (row,) = [row for row in metrics(tmp_path) if row.get("val/loss")]
    # same averaged weights, same windows, same seeded t and eps: the same number
    assert float(row["val/loss"]) == pytest.approx(logged[-1], rel=1e-6)


def test_two_process_ddp_fit_writes_a_checkpoint_with_the_gaussian_of_all_windows(fitted, tmp_path):
    """2 DDP processes with ``precondition: gaussian``: each rank sums its half of the
    training windows and the sums are all-reduced, so the checkpoint holds the Gaussian of
    all 84 windows (as one process fits it), and the averaged copy the same."""
    data, _ = fitted
    args = fit_args(data, tmp_path, "--trainer.max_epochs", "1", "--trainer.devices", "2", "--trainer.strategy", "ddp", "--model.precondition", "gaussian")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "ldiff.cli", "fit", *args], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    # 12 training windows shared by 2 ranks, batches of 4: ceil(6 / 4) = 2 steps
    assert checkpoint["global_step"] == 2
    module = FieldDataModule(str(data), window=2, split=(0.75, 0.125, 0.125), seed=0)
    module.setup()
    power, mean = fit_moments(module.training_windows())
    for prefix in ("net.", "online."):
        torch.testing.assert_close(checkpoint["state_dict"][prefix + "power"].double(), power, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(checkpoint["state_dict"][prefix + "mean"].double(), mean, rtol=1e-6, atol=1e-7)
    load_prior(tmp_path / "checkpoints" / "last.ckpt")


def test_gaussian_preconditioning_fits_every_training_window_and_travels_in_the_checkpoint(fitted, tmp_path):
    """``--model.precondition gaussian``: the skip term's Gaussian is the mean field and
    the centred mean periodogram of every training window (12 trajectories x 7 starts, normalised),
    stored in both weight sets, kept on a resume and rebuilt by ``load_prior``."""
    data, _ = fitted
    assert run("fit", *fit_args(data, tmp_path / "run", "--trainer.max_epochs", "1", "--model.precondition", "gaussian")) == 0
    module = FieldDataModule(str(data), window=2, split=(0.75, 0.125, 0.125), seed=0)
    module.setup()
    fields, norm = module.fields["train"], module.normalizer
    windows = torch.stack([norm.normalize(fields[n, s : s + 2].reshape(4, 16, 16)) for n in range(len(fields)) for s in range(7)])
    assert windows.shape == (84, 4, 16, 16)
    torch.testing.assert_close(torch.cat(list(module.training_windows(chunk=5))), windows)
    shards = [torch.cat(list(module.training_windows(chunk=4, rank=r, replicas=3))) for r in range(3)]
    for r, shard in enumerate(shards):  # window i on rank i % 3: disjoint, all of them
        torch.testing.assert_close(shard, windows[r::3])
    x = windows.double()
    mean = x.mean(dim=0)  # the mean field (C, H, W)
    power = torch.fft.fft2(x - mean, norm="ortho").abs().square().mean(dim=0)
    power = power.clamp_min(1e-6 * power.mean())

    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)["state_dict"]
    for prefix in ("net.", "online."):
        torch.testing.assert_close(state[prefix + "power"].double(), power, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state[prefix + "mean"].double(), mean, rtol=1e-5, atol=1e-6)
    # a resume keeps the checkpoint's Gaussian and does not fit again: a checkpoint whose
    # Gaussian differs from the data's (power doubled) comes back doubled, bit for bit
    stored = torch.load(last, weights_only=True)
    for prefix in ("net.", "online."):
        stored["state_dict"][prefix + "power"] *= 2
    torch.save(stored, tmp_path / "doubled.ckpt")
    with mock.patch("ldiff.lit.prior.moment_sums", side_effect=AssertionError("fitted again on a resume")):
        args = fit_args(data, tmp_path / "resumed", "--trainer.max_epochs", "2", "--model.precondition", "gaussian", "--ckpt_path", str(tmp_path / "doubled.ckpt"))
        assert run("fit", *args) == 0
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 2 * STEPS_PER_EPOCH
    for prefix in ("net.", "online."):
        torch.testing.assert_close(resumed["state_dict"][prefix + "power"], 2 * state["net.power"], rtol=0, atol=0)

    net, schedule, _, hparams = load_prior(export_prior(last, tmp_path / "prior.ckpt"))
    assert isinstance(net, GaussianPreconditioned) and hparams["precondition"] == "gaussian"
    x_t, t = torch.randn(3, 4, 16, 16), torch.tensor([0.1, 0.5, 0.9])
    mu, sigma = schedule.coefficients(t, x_t)
    skip = net(x_t, t) - mu / (mu**2 + sigma**2).sqrt() * net.net(x_t, t)
    exact = GaussianPrior(schedule, power.float(), mean.float())(x_t, t)
    torch.testing.assert_close(skip, exact, rtol=1e-4, atol=1e-4)


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("ldiff: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_non_finite_training_data_is_one_line_error(fitted, tmp_path, capsys):
    ds = generate_grf(16, 8, 16, seed=0)
    ds["u"].values[3, 2, 5, 7] = np.nan
    ds.to_netcdf(tmp_path / "nan.nc", engine="h5netcdf")  # store.save would refuse it
    assert run("fit", *fit_args(tmp_path / "nan.nc", tmp_path)) == 2
    line = error_line(capsys)
    assert "nan.nc" in line and "'u' holds 1 NaN or Inf" in line


def test_window_longer_than_the_trajectories_is_one_line_error(fitted, tmp_path, capsys):
    data, _ = fitted
    assert run("fit", *fit_args(data, tmp_path, "--data.window", "9", "--model.net.init_args.in_channels", "18")) == 2
    assert error_line(capsys).endswith("window 9 is longer than the trajectories (8 frames)")


def test_network_and_data_channels_must_agree(fitted, tmp_path, capsys):
    data, _ = fitted
    assert run("fit", *fit_args(data, tmp_path, "--data.window", "3")) == 2
    assert "network in_channels 4 vs data channels 6" in error_line(capsys)


@pytest.mark.parametrize("old, new, expected", [
    ("class_path: ldiff.nets.unet.UNet", "class_path: ldiff.nets.unet.UNett", "'ldiff.nets.unet.UNett'"),
    ("  lr: 0.001", "  lrr: 0.001", "model.lrr"),
    ("  lr: 0.001", "  lr: !!python/object/apply:os.system ['touch {marker}']", "python/object/apply:os.system"),
])  # fmt: skip
def test_bad_configs_are_one_line_errors(tmp_path, capsys, old, new, expected):
    marker = tmp_path / "pwned"
    text = CONFIG.read_text()
    assert old in text
    (tmp_path / "bad.yaml").write_text(text.replace(old, new.format(marker=marker)))
    assert run("fit", "--config", str(tmp_path / "bad.yaml"), "--data.path", str(tmp_path / "x.nc")) == 2
    assert expected in error_line(capsys)
    assert not marker.exists()


def test_fit_logs_loss_lr_and_sample_panels_to_one_wandb_run_across_a_resume(tmp_path):
    """The shipped prior configs' loggers (WandbLogger offline + CSVLogger) and
    SamplePanel on the tiny config: loss and learning rate in the W&B history, a panel
    of sample vorticity every epoch (image in the run, PNG on disk), and a resumed fit
    with the same WANDB_RUN_ID logs under the same run id (fit.sbatch's requeue: a new
    process with the job's id in its environment, so through the console script)."""
    from wandb_files import read_runs

    data = save(generate_grf(16, 8, 16, seed=0), tmp_path / "grf.nc")
    root = tmp_path / "run"
    shipped = yaml.safe_load((CONFIG.parent / "kolmogorov.yaml").read_text())["trainer"]
    config = yaml.safe_load(CONFIG.read_text())
    config["trainer"]["logger"] = shipped["logger"]
    for logger in config["trainer"]["logger"]:
        logger["init_args"]["save_dir"] = str(root)
    config["trainer"]["callbacks"] = [{"class_path": "ldiff.lit.panels.SamplePanel", "init_args": {"every_n_epochs": 1, "samples": 2, "steps": 4}}]
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump(config))
    args = ["fit", "--config", str(path), "--data.path", str(data), "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_RUN_ID": "ldiff-fit-test"}
    ldiff = str(Path(sys.executable).parent / "ldiff")
    for extra in (["--trainer.max_epochs", "1"], ["--trainer.max_epochs", "2", "--ckpt_path", str(root / "checkpoints" / "last.ckpt")]):
        done = subprocess.run([ldiff, *args, *extra], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    runs = sorted((root / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(run.name.endswith("-ldiff-fit-test") for run in runs)
    first, second = read_runs(root / "wandb")
    losses = [row for row in first.history if "train/loss" in row]
    assert len(losses) == STEPS_PER_EPOCH and all(row["train/lr"] > 0 for row in losses)
    assert first.config["net"]["class_path"] == "ldiff.nets.unet.UNet" and first.config["window"] == 2
    for attempt in (first, second):
        assert attempt.summary["samples/vorticity/_type"] == "images/separated"
    assert second.summary["trainer/global_step"] >= 2 * STEPS_PER_EPOCH - 1
    panels = sorted(path.name for path in root.rglob("samples/epoch-*.png"))
    assert panels == ["epoch-000.png", "epoch-001.png"]


def test_resuming_from_a_foreign_or_mismatched_checkpoint_is_one_line(fitted, tmp_path, capsys):
    """``fit --ckpt_path``: a dict that is no training checkpoint, and the weights of
    another architecture, each refused in one line naming the file and what is wrong."""
    data, root = fitted
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"a": 1}, foreign)
    assert run("fit", *fit_args(data, tmp_path / "a", "--ckpt_path", str(foreign))) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ldiff: error:")]
    assert errors == [f"ldiff: error: {foreign}: not a training checkpoint written by `ldiff fit` (no 'pytorch-lightning_version' entry)"]
    # weights that do not fit the network the checkpoint's own hyperparameters build
    checkpoint = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)
    key = next(k for k in checkpoint["state_dict"] if k.startswith("online.") and checkpoint["state_dict"][k].dim() == 4)
    shape = tuple(checkpoint["state_dict"][key].shape)
    checkpoint["state_dict"][key] = checkpoint["state_dict"][key][:, :1]
    other = tmp_path / "other.ckpt"
    torch.save(checkpoint, other)
    assert run("fit", *fit_args(data, tmp_path / "b", "--trainer.max_epochs", "3", "--ckpt_path", str(other))) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ldiff: error:")]
    cut = (shape[0], 1, *shape[2:])
    assert errors == [f"ldiff: error: checkpoint {other}: parameter {key} has shape {cut}, the model expects {shape}"]


def test_node_standardisation_fits_every_node_then_the_gaussian_of_z_and_travels_in_the_checkpoint(fitted, tmp_path):
    """``--model.precondition gaussian-node``: the checkpoint holds every node's mean and
    floored std over the training windows, and the Gaussian (mean field, centred
    periodogram) of the standardised windows z = (x - m) / s; a resume keeps them without
    a new pass; ``load_prior`` rebuilds a skip term that is the exact epsilon of z's Gaussian."""
    data, _ = fitted
    assert run("fit", *fit_args(data, tmp_path / "run", "--trainer.max_epochs", "1", "--model.precondition", "gaussian-node")) == 0
    module = FieldDataModule(str(data), window=2, split=(0.75, 0.125, 0.125), seed=0)
    module.setup()
    x = torch.cat(list(module.training_windows())).double()
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    scale = std.clamp_min(1e-2 * std.square().mean().sqrt())
    power, z_mean = fit_moments([(x - mean) / scale])
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)["state_dict"]
    for prefix in ("net.", "online."):
        for key, expected in (("node_mean", mean), ("node_scale", scale), ("power", power), ("mean", z_mean)):
            torch.testing.assert_close(state[prefix + key].double(), expected, rtol=1e-5, atol=1e-6, msg=lambda m: f"{prefix}{key}: {m}")
    with mock.patch("ldiff.lit.prior.node_sums", side_effect=AssertionError("fitted again on a resume")):
        args = fit_args(data, tmp_path / "resumed", "--trainer.max_epochs", "2", "--model.precondition", "gaussian-node", "--ckpt_path", str(last))
        assert run("fit", *args) == 0

    net, schedule, _, hparams = load_prior(export_prior(last, tmp_path / "prior.ckpt"))
    assert isinstance(net, StandardizedGaussianPreconditioned) and hparams["precondition"] == "gaussian-node"
    torch.testing.assert_close(net.standardization.scale.double(), scale, rtol=1e-5, atol=1e-6)
    z_t, t = torch.randn(3, 4, 16, 16), torch.tensor([0.1, 0.5, 0.9])
    mu, sigma = schedule.coefficients(t, z_t)
    skip = net(z_t, t) - mu / (mu**2 + sigma**2).sqrt() * net.net(z_t, t)
    torch.testing.assert_close(skip, GaussianPrior(schedule, power.float(), z_mean.float())(z_t, t), rtol=1e-4, atol=1e-4)
    # the Jacobian diagnostic compares such a prior with its own skip term, on z; a Gaussian fit of x is refused
    quality = ["quality", "--checkpoint", str(tmp_path / "prior.ckpt"), "--data", str(data), "--items", "2", "--t", "0.5", "--strides", "2"]
    assert run(*quality, "--jacobian", "prior", "-o", str(tmp_path / "jacobian.json")) == 0
    assert (tmp_path / "jacobian.json").is_file()
    GaussianPrior(schedule, power.float(), mean.float()).save(tmp_path / "gaussian-of-x.pt")
    assert run(*quality, "--jacobian", str(tmp_path / "gaussian-of-x.pt")) == 2
    # ldiff compare's `baseline: prior` is the exact posterior of that skip term, in the prior's coordinates
    from ldiff.compare import gaussian_baseline

    baseline = gaussian_baseline("prior", 2, {}, schedule, net)
    assert baseline.prior_coordinates and torch.equal(baseline.prior.power, net.power)
    with pytest.raises(ValueError, match="baseline: prior needs a prior with a Gaussian skip term"):
        gaussian_baseline("prior", 2, {}, schedule, net.net)


def test_init_from_starts_a_new_run_from_a_priors_weights_gaussian_and_normaliser(fitted, tmp_path, capsys):
    """``--model.init_from PRIOR``: a new run (step 0, a fresh optimiser) on other data
    whose online and averaged weights start at the prior's, with the prior's Gaussian,
    standardisation and normaliser, none refitted to the new data; a resume ignores it;
    a prior of another preconditioning, schedule or window shape is one line naming it."""
    data, _ = fitted
    node = ("--model.precondition", "gaussian-node")
    assert run("fit", *fit_args(data, tmp_path / "first", "--trainer.max_epochs", "1", *node)) == 0
    exported = torch.load(export_prior(tmp_path / "first" / "checkpoints" / "last.ckpt", tmp_path / "exported.ckpt"), weights_only=True)
    # shift every weight by 0.5, so that weights started afresh could not pass for the prior's
    parameters = {f"net.{name}" for name, _ in load_prior(tmp_path / "exported.ckpt")[0].named_parameters()}
    for key in parameters:
        exported["state_dict"][key] = exported["state_dict"][key] + 0.5
    torch.save(exported, tmp_path / "prior.ckpt")
    fields = generate_grf(16, 8, 16, seed=3)
    other = save(fields.assign(u=3.0 * fields["u"] + 2.0, v=0.5 * fields["v"]), tmp_path / "other.nc")  # another normaliser
    args = fit_args(other, tmp_path / "tuned", "--trainer.max_epochs", "1", "--model.init_from", str(tmp_path / "prior.ckpt"), *node)
    with mock.patch("ldiff.lit.prior.node_sums", side_effect=AssertionError("refitted to the new data")):
        assert run("fit", *args) == 0
    tuned = torch.load(tmp_path / "tuned" / "checkpoints" / "last.ckpt", weights_only=True)
    assert tuned["global_step"] == STEPS_PER_EPOCH  # a new run: counted from 0
    assert all(state["step"].item() == STEPS_PER_EPOCH for state in tuned["optimizer_states"][0]["state"].values())
    for key in ("mean", "std"):
        assert torch.equal(tuned["normalizer"][key], exported["normalizer"][key])
    prior_state = exported["state_dict"]
    for name in ("node_mean", "node_scale", "power", "mean"):
        for prefix in ("net.", "online."):
            assert torch.equal(tuned["state_dict"][prefix + name], prior_state["net." + name]), prefix + name
    # 3 AdamW steps at lr <= 1e-3 move a weight by about 3e-3; the shift above is 0.5
    for key in parameters:
        for prefix in ("net.", "online."):
            moved = (tuned["state_dict"][prefix + key[4:]] - prior_state[key]).abs().max().item()
            assert moved < 0.02, f"{prefix}{key[4:]} moved {moved} from the prior's"
    assert any((tuned["state_dict"]["online." + key[4:]] - prior_state[key]).abs().max() > 0 for key in parameters)  # and it trained

    # a resume takes everything from its checkpoint: init_from is not read
    resume = fit_args(other, tmp_path / "tuned", "--trainer.max_epochs", "2", *node, "--model.init_from", str(tmp_path / "missing.ckpt"))
    assert run("fit", *resume, "--ckpt_path", "last") == 0
    capsys.readouterr()
    # another preconditioning, schedule or grid: one line naming the file
    assert run("fit", *fit_args(other, tmp_path / "a", "--model.init_from", str(tmp_path / "prior.ckpt"), "--model.precondition", "gaussian")) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ldiff: error:")]
    assert errors == [f"ldiff: error: init_from {tmp_path / 'prior.ckpt'}: precondition 'gaussian-node', this run's is 'gaussian'"]
    assert run("fit", *fit_args(other, tmp_path / "c", "--model.init_from", str(tmp_path / "prior.ckpt"), *node, "--model.schedule.init_args.eta", "0.01")) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ldiff: error:")]
    assert errors == [f"ldiff: error: init_from {tmp_path / 'prior.ckpt'}: its schedule's mu(t) differs from this run's (CosineSchedule against CosineSchedule)"]
    small = save(generate_grf(16, 8, 8, seed=4), tmp_path / "small.nc")
    assert run("fit", *fit_args(small, tmp_path / "b", "--model.init_from", str(tmp_path / "prior.ckpt"), *node)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ldiff: error:")]
    assert errors == [f"ldiff: error: init_from {tmp_path / 'prior.ckpt'}: parameter net.power has shape (4, 16, 16), the model expects (4, 8, 8)"]
