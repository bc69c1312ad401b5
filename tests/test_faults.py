"""Faults: ``ldiff fit``, ``ldiff predict`` and ``ldiff compare`` killed with SIGKILL.

Two kinds of kill, both of a real ``ldiff`` process:

- at a random moment: ``fit`` killed mid-epoch resumes from ``last.ckpt`` at that file's
  global step, and the step column of the metrics CSV runs on without a gap or a restart;
- in the one dangerous window, deterministically: :data:`KILL_ON_WRITE` runs ``ldiff``
  with ``torch.save`` (checkpoints) or ``xarray.Dataset.to_netcdf`` (prediction shards
  and merged files) patched so that the n-th write leaves half its bytes on disk and the
  process SIGKILLs itself, as a node failing in the middle of a write would.

What must hold after any kill: every ``*.ckpt`` loads with ``weights_only=True``; no
prediction file (``*.nc``) exists that is not complete; the debris is hidden temporary
files only, and a rerun deletes them and completes.
"""

import csv
import os
import signal
import subprocess
import sys
import time
from fnmatch import fnmatch
from pathlib import Path
from unittest import mock

import lightning as L
import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from oracle import gaussian_prior
from test_checkpoint import prior_checkpoint
from test_inference import ExplodesOnSecondSample
from torch.utils.data import DataLoader

from ldiff.cli import main
from ldiff.data.grf import generate_grf
from ldiff.data.items import IndexedFields
from ldiff.data.store import save
from ldiff.lit.inference import InferenceModule
from ldiff.metrics import DIVERGED
from ldiff.observe import Subsample
from ldiff.writers import ReconstructionWriter

ROOT = Path(__file__).resolve().parents[1]
FIT_CONFIG = ROOT / "configs" / "prior" / "grf-tiny.yaml"
PREDICT_CONFIG = ROOT / "configs" / "predict" / "grf-tiny.yaml"
COMPARE_CONFIG = ROOT / "configs" / "compare" / "grf-tiny.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "WANDB_SILENT": "true"}

KILL_ON_WRITE = """
import os, signal, sys
import torch, xarray
from ldiff.cli import main
target, nth = sys.argv[1], int(sys.argv[2])
owner, name = (torch, "save") if target == "torch.save" else (xarray.Dataset, "to_netcdf")
original, calls = getattr(owner, name), []
def write_half_then_die(obj, path, *args, **kwargs):
    original(obj, path, *args, **kwargs)
    calls.append(path)
    if len(calls) == nth:
        os.truncate(path, os.path.getsize(path) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
setattr(owner, name, write_half_then_die)
sys.exit(main(sys.argv[3:]))
"""
"""``python -c KILL_ON_WRITE {torch.save|to_netcdf} N ldiff-args...``: run ``ldiff`` and die
half-way through its N-th write of that kind."""


KILL_AT_STEP = """
import os, signal, sys
from ldiff.cli import main
from ldiff.lit.prior import ScorePrior
step, original = int(sys.argv[1]), ScorePrior.training_step
def training_step(self, batch, batch_idx):
    if self.global_step == step:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, batch, batch_idx)
ScorePrior.training_step = training_step
sys.exit(main(sys.argv[2:]))
"""
"""``python -c KILL_AT_STEP N ldiff-fit-args...``: ``ldiff fit`` that dies as it starts
optimiser step N."""


def ldiff(*args: str, kill_on: tuple[str, int] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``python -m ldiff.cli ARGS`` (or the killing wrapper) to completion."""
    command = [sys.executable, "-c", KILL_ON_WRITE, *map(str, kill_on)] if kill_on else [sys.executable, "-m", "ldiff.cli"]
    return subprocess.run([*command, *args], check=False, env=ENV, capture_output=True, text=True, timeout=timeout)


def fit_args(data: Path, root: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(FIT_CONFIG), "--data.path", str(data), "--trainer.default_root_dir", str(root), *extra]


def logged_steps(root: Path, version: int) -> list[tuple[int, int, float]]:
    """(epoch, step, train/loss) of every complete training row of a run's metrics CSV."""
    path = root / "lightning_logs" / f"version_{version}" / "metrics.csv"
    if not path.is_file():
        return []
    text = path.read_text()
    rows = list(csv.DictReader(text[: text.rfind("\n") + 1].splitlines()))
    return [(int(r["epoch"]), int(r["step"]), float(r["train/loss"])) for r in rows if r.get("train/loss")]


def checkpoints(directory: Path) -> dict[str, dict]:
    """Every ``*.ckpt`` of ``directory``, loaded weights-only (raises on a half-written one)."""
    return {path.name: torch.load(path, weights_only=True) for path in sorted(directory.glob("*.ckpt"))}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return save(generate_grf(16, 8, 16, seed=0), tmp_path_factory.mktemp("faults") / "grf.nc")


def test_fit_killed_mid_epoch_resumes_at_the_checkpoint_step_with_a_continuous_curve(store, tmp_path):
    # batches of 1: 12 training steps per epoch; the CSV is flushed at every step
    logger = tmp_path / "logger.yaml"
    logger.write_text(yaml.safe_dump({"trainer": {"logger": {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(tmp_path / "run"), "flush_logs_every_n_steps": 1},
    }, "limit_val_batches": 1}}))  # fmt: skip
    args = [*fit_args(store, tmp_path / "run", "--config", str(logger), "--data.batch_size", "1"), "--trainer.max_epochs", "60"]
    process = subprocess.Popen([sys.executable, "-m", "ldiff.cli", *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and process.poll() is None:
            steps = logged_steps(tmp_path / "run", 0)
            # kill in the middle of epoch 2 or later, well away from an epoch's end
            if last.exists() and steps and steps[-1][1] >= 24 and 3 <= steps[-1][1] % 12 <= 8:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        stderr = process.communicate(timeout=60)[1].decode()
    assert process.returncode == -signal.SIGKILL, stderr[-2000:]

    saved = checkpoints(last.parent)  # every file complete
    step, epoch = saved["last.ckpt"]["global_step"], saved["last.ckpt"]["epoch"]
    assert step == 12 * (epoch + 1) and step == max(c["global_step"] for c in saved.values())
    assert saved[f"epoch={epoch}-step={step}.ckpt"]["global_step"] == step
    # killed mid-epoch, between checkpoint writes: no temporary (".last.ckpt.<pid>.tmp") is left
    assert not [p.name for p in last.parent.iterdir() if p.name.startswith(".")]
    killed = logged_steps(tmp_path / "run", 0)
    assert [s for _, s, _ in killed] == list(range(len(killed)))  # one row per step, in order
    assert killed[-1][1] > step and (killed[-1][1] + 1) % 12  # died after the checkpoint, mid-epoch

    done = ldiff(*args[:-1], str(epoch + 3), "--ckpt_path", str(last))
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = logged_steps(tmp_path / "run", 1)
    # the curve picks up at the checkpoint's step and epoch: the steps after it are redone
    assert [(e, s) for e, s, _ in resumed] == [(epoch + 1 + i // 12, step + i) for i in range(24)]
    assert all(torch.isfinite(torch.tensor(loss)) for _, _, loss in resumed)
    # optimiser and learning-rate schedule went on from the checkpoint, not from zero
    final = torch.load(last, weights_only=True)
    assert final["global_step"] == final["lr_schedulers"][0]["last_epoch"] == step + 24
    assert {int(state["step"]) for state in final["optimizer_states"][0]["state"].values()} == {step + 24}


EXACT = ["--data.batch_size", "1", "--data.shift", "[0, 4]", "--trainer.max_epochs", "3", "--trainer.limit_val_batches", "1",
         "--trainer.logger", "false", "--checkpoint.every_n_epochs", "0", "--checkpoint.every_n_train_steps", "4"]  # fmt: skip
"""Batches of 1 (12 steps an epoch, 36 in all), random windows and shifts, a checkpoint
every 4 steps: two in three fall mid-epoch."""


@pytest.fixture(scope="module")
def one_thread():
    """Bitwise comparisons across processes need the same reduction order: one thread,
    as in the subprocesses (``OMP_NUM_THREADS=1``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uninterrupted(store, tmp_path_factory, one_thread) -> dict:
    root = tmp_path_factory.mktemp("uninterrupted")
    with mock.patch.object(sys, "argv", ["ldiff"]):
        assert main(fit_args(store, root, *EXACT)) == 0
    return torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)


@pytest.mark.parametrize("kill_at", [7, 22])
def test_fit_killed_anywhere_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(store, tmp_path, uninterrupted, kill_at):
    killed = subprocess.run([sys.executable, "-c", KILL_AT_STEP, str(kill_at), *fit_args(store, tmp_path, *EXACT)],
                            env=ENV, capture_output=True, text=True, timeout=240, check=False)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = tmp_path / "checkpoints" / "last.ckpt"
    at = torch.load(last, weights_only=True)["global_step"]
    assert at == kill_at // 4 * 4 and at % 12  # the resume starts from a mid-epoch checkpoint
    with mock.patch.object(sys, "argv", ["ldiff"]):  # the resume, in this process
        assert main(fit_args(store, tmp_path, *EXACT, "--ckpt_path", "last")) == 0
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == uninterrupted["global_step"] == 36
    different = [key for key, value in uninterrupted["state_dict"].items() if not torch.equal(value, resumed["state_dict"][key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[0]}"
    moments = [(a["exp_avg"], b["exp_avg"]) for a, b in zip(uninterrupted["optimizer_states"][0]["state"].values(),
                                                            resumed["optimizer_states"][0]["state"].values())]  # fmt: skip
    assert all(torch.equal(a, b) for a, b in moments)


KILL_BOTH_RANKS_AT_STEP = """
import os, signal, sys
from ldiff.cli import main
from ldiff.lit.prior import ScorePrior
step, original = int(os.environ["LDIFF_KILL_AT_STEP"]), ScorePrior.training_step
def training_step(self, batch, batch_idx):
    if self.global_step == step and self.global_rank == 0:
        os.killpg(os.getpgid(0), signal.SIGKILL)  # rank 0, rank 1 (its child) and nothing else
    return original(self, batch, batch_idx)
ScorePrior.training_step = training_step
sys.exit(main(sys.argv[1:]))
"""
"""A script (Lightning's DDP launcher re-runs ``sys.argv`` for rank 1, so it must be a
file, not ``-c``): ``ldiff ARGS`` on 2 ranks that both die, as a node does, when rank 0
starts optimiser step ``$LDIFF_KILL_AT_STEP``."""


def test_two_process_ddp_fit_killed_mid_epoch_and_resumed_ends_with_the_weights_of_an_uninterrupted_run(store, tmp_path):
    """The SLURM requeue of a 2-GPU fit: 2 DDP ranks (gloo) of 6 steps an epoch (12
    windows, batches of 1 per rank), checkpoints every 4 steps, killed as step 11 starts,
    resumed with ``--ckpt_path last`` from the mid-epoch checkpoint at step 8 (each rank
    skips its own 2 trained batches of epoch 1): every tensor at step 12 equals that of an
    uninterrupted 2-rank run."""
    script = tmp_path / "kill_at_step.py"
    script.write_text(KILL_BOTH_RANKS_AT_STEP)

    def fit(root: str, *extra: str, kill: bool = False) -> subprocess.CompletedProcess:
        command = [sys.executable, str(script)] if kill else [sys.executable, "-m", "ldiff.cli"]
        args = fit_args(store, tmp_path / root, *EXACT, "--trainer.max_epochs", "2", "--trainer.devices", "2", "--trainer.strategy", "ddp", *extra)
        return subprocess.run([*command, *args], env={**ENV, "LDIFF_KILL_AT_STEP": "11"}, capture_output=True,
                              text=True, timeout=240, check=False, start_new_session=True)  # fmt: skip

    done = fit("uninterrupted")
    assert done.returncode == 0, done.stderr[-2000:]
    killed = fit("killed", kill=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 8  # mid-epoch 1 (steps 6-11)
    done = fit("killed", "--ckpt_path", "last")
    assert done.returncode == 0, done.stderr[-2000:]
    uninterrupted = torch.load(tmp_path / "uninterrupted" / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(last, weights_only=True)
    assert resumed["global_step"] == uninterrupted["global_step"] == 12
    different = [key for key, value in uninterrupted["state_dict"].items() if not torch.equal(value, resumed["state_dict"][key])]
    assert not different, f"{len(different)} of {len(resumed['state_dict'])} tensors differ, e.g. {different[0]}"


def test_fit_killed_while_writing_last_ckpt_keeps_the_previous_one(store, tmp_path):
    # writes: epoch=0 (1), last (2), epoch=1 (3), last (4): die half-way through the 4th
    done = ldiff(*fit_args(store, tmp_path, "--trainer.max_epochs", "3"), kill_on=("torch.save", 4))
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    ckpts = tmp_path / "checkpoints"
    assert sorted(checkpoints(ckpts)) == ["epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt", "last.ckpt"]
    assert checkpoints(ckpts)["last.ckpt"]["global_step"] == 3  # the old last.ckpt, whole
    (debris,) = [p.name for p in ckpts.iterdir() if p.name.startswith(".")]
    assert debris.startswith(".last.ckpt.") and debris.endswith(".tmp")
    with pytest.raises(RuntimeError, match="failed finding central directory"):
        torch.load(ckpts / debris, weights_only=True)  # the half-written bytes never became a .ckpt

    done = ldiff(*fit_args(store, tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", str(ckpts / "last.ckpt")))
    assert done.returncode == 0, done.stderr[-2000:]
    assert [(e, s) for e, s, _ in logged_steps(tmp_path, 1)] == [(1, 3), (1, 4), (1, 5)]
    assert checkpoints(ckpts)["last.ckpt"]["global_step"] == 6


@pytest.fixture(scope="module")
def prior(tmp_path_factory) -> Path:
    """An untrained prior in ScorePrior's checkpoint layout (window 2, 16 x 16 fields)."""
    path = tmp_path_factory.mktemp("prior") / "prior.ckpt"
    torch.save(prior_checkpoint(), path)
    return path


@pytest.mark.parametrize("nth, debris", [
    (1, ["..out.nc.shard-0.nc.*.tmp"]),  # died writing its shard
    (2, [".out.nc.*.tmp", ".out.nc.shard-0.nc"]),  # died writing the merged file
], ids=["shard", "merged"])  # fmt: skip
def test_predict_killed_while_writing_leaves_no_output_and_a_rerun_completes(store, prior, tmp_path, nth, debris):
    args = ["predict", "--config", str(PREDICT_CONFIG), "--model.checkpoint", str(prior), "--data.path", str(store),
            "--trainer.callbacks.init_args.output", str(tmp_path / "out.nc"), "--model.steps", "2", "--trainer.logger", "false"]  # fmt: skip
    done = ldiff(*args, kill_on=("to_netcdf", nth))
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == len(debris) and all(any(fnmatch(name, pattern) for name in left) for pattern in debris)
    stale = tmp_path / ".out.nc.shard-1.nc"  # and a shard of an earlier 2-device run
    stale.write_bytes(b"stale")

    done = ldiff(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nc"]  # the rerun cleaned up
    with xr.open_dataset(tmp_path / "out.nc", engine="h5netcdf") as ds:
        # 2 test trajectories of 8 frames in windows of 2: items 0..7, each once
        assert ds["item"].values.tolist() == list(range(8)) and ds.sizes["sample"] == 2


def test_compare_killed_mid_run_keeps_finished_pairs_and_a_rerun_completes(store, prior, tmp_path):
    config = yaml.safe_load(COMPARE_CONFIG.read_text())
    config.pop("baseline")
    config.update(output=str(tmp_path / "run"), wandb={"mode": "disabled"})
    config["model"].update(checkpoint=str(prior), samples=1, steps=2)
    config["data"].update(path=str(store), items=2)
    config["strategies"] = {"dps-sum": config["strategies"]["dps-sum"]}
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump(config))
    # writes: sub2 shard (1), sub2 merged (2), sub4 shard (3), sub4 merged (4)
    done = ldiff("compare", "--config", str(tmp_path / "compare.yaml"), kill_on=("to_netcdf", 4))
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    predictions = tmp_path / "run" / "predictions"
    left = sorted(p.name for p in predictions.iterdir())
    assert len(left) == 3 and fnmatch(left[0], ".dps-sum__sub4.nc.*.tmp")  # the merged file being written
    assert left[1:] == [".dps-sum__sub4.nc.shard-0.nc", "dps-sum__sub2.nc"]
    with xr.open_dataset(predictions / "dps-sum__sub2.nc", engine="h5netcdf") as ds:
        assert ds.sizes["item"] == 2 and "metric_rmse" in ds.attrs
    assert not (tmp_path / "run" / "tables").exists()

    done = ldiff("compare", "--config", str(tmp_path / "compare.yaml"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in predictions.iterdir()) == ["dps-sum__sub2.nc", "dps-sum__sub4.nc"]
    with open(tmp_path / "run" / "tables" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["operator"], int(r["n_obs"])) for r in rows] == [("sub2", 256), ("sub4", 64)]


# --- numerical faults -------------------------------------------------------------------


class ExplodesEverywhere(ExplodesOnSecondSample):
    """Exact prior epsilon until the third evaluation, then -1e30 for every sample."""

    def guided_eps(self, denoiser, x_t, t, obs, diagnostics):
        self.calls += 1
        eps = denoiser.eps(x_t, t)
        return eps if self.calls < 3 else torch.full_like(eps, -1e30)


def predict_to_file(strategy, path: Path) -> xr.Dataset:
    """trainer.predict of 4 items, K = 2, batches of 2 items, through the writer and
    :class:`ldiff.evaluate.ReconstructionMetrics` (grid 1 x 1, periodic, unit normaliser)."""
    prior = gaussian_prior(field_shape=(2, 8, 8))
    truth = prior.sample(4, torch.Generator().manual_seed(2))
    unit = {"mean": torch.zeros(2, dtype=torch.float64), "std": torch.ones(2, dtype=torch.float64)}
    module = InferenceModule.from_prior(prior, prior.schedule, unit, strategy=strategy, operator=Subsample(2), std=0.1, samples=2, steps=6, seed=0, grid=(1.0, 1.0, True))
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[ReconstructionWriter(str(path))], enable_progress_bar=False, enable_model_summary=False)
    trainer.predict(module, DataLoader(IndexedFields(truth), batch_size=2), return_predictions=False)
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()


def unannounced_nans(ds: xr.Dataset) -> list[str]:
    """``metric_*`` attributes that are NaN without a count saying why: per-sample and
    ``_mean`` metrics may be NaN only when every sample diverged, ``crps`` and
    ``spread_skill`` only when no item kept all its samples."""
    total = ds.sizes["item"] * ds.sizes["sample"]
    explained = {
        name: ds.attrs["metric_ensemble_items"] == 0 if name in ("metric_crps", "metric_spread_skill") else ds.attrs["metric_diverged"] == total
        for name in ds.attrs if name.startswith("metric_")
    }  # fmt: skip
    return [name for name, ok in explained.items() if np.isnan(ds.attrs[name]) and not ok]


def test_a_diverging_sample_is_excluded_from_the_written_metrics(tmp_path):
    ds = predict_to_file(ExplodesOnSecondSample(), tmp_path / "out.nc")
    # evaluation 1 of each batch (item 0 of the batch, sample 1) is driven to -1e30
    diverged = ds["regime"].values == DIVERGED
    assert diverged.tolist() == [[False, True], [False, False], [False, True], [False, False]]
    assert np.isfinite(ds["recon"].values).all() and np.abs(ds["recon"].values).max() <= 50.0  # frozen below 10 x 5
    assert (ds.attrs["metric_diverged"], ds.attrs["metric_balanced"] + ds.attrs["metric_flat"]) == (2, 6)
    assert ds.attrs["metric_ensemble_items"] == 2  # items 1 and 3
    # the RMSEs, by hand over the finished samples only
    recon, truth = ds["recon"].values.astype(np.float64), ds["truth"].values.astype(np.float64)
    error = (recon - truth[:, None])[~diverged]
    assert ds.attrs["metric_rmse"] == pytest.approx(np.sqrt(np.mean(error**2)), rel=1e-12)
    mean = np.stack([recon[i][~diverged[i]].mean(axis=0) for i in range(4)])
    assert ds.attrs["metric_rmse_mean"] == pytest.approx(np.sqrt(np.mean((mean - truth) ** 2)), rel=1e-12)
    assert ds.attrs["metric_rel_l2_mean"] == pytest.approx(np.sqrt(np.sum((mean - truth) ** 2) / np.sum(truth**2)), rel=1e-12)
    assert ds.attrs["metric_rel_l2"] == pytest.approx(np.sqrt(np.sum(error**2) / np.sum(np.broadcast_to(truth[:, None], recon.shape)[~diverged] ** 2)), rel=1e-12)
    assert not [name for name in ds.attrs if name.startswith("metric_") and np.isnan(ds.attrs[name])]


def test_when_every_sample_diverges_the_nan_metrics_are_announced(tmp_path):
    ds = predict_to_file(ExplodesEverywhere(), tmp_path / "out.nc")
    assert (ds["regime"].values == DIVERGED).all()
    assert (ds.attrs["metric_diverged"], ds.attrs["metric_ensemble_items"]) == (8, 0)
    assert np.isnan(ds.attrs["metric_rmse"]) and np.isnan(ds.attrs["metric_crps"])
    assert ds.attrs["metric_n_obs"] == 2 * 4 * 4  # counts stay numbers
    assert unannounced_nans(ds) == []
