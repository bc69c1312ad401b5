"""Bad input at every entry point of ``ldiff``: one line ``ldiff: error: <message>`` naming
the file, field or key, exit status 2, never a traceback.

Most cases call :func:`ldiff.cli.main` in-process; a few run the ``ldiff`` console script
of the virtualenv, so that the real exit status and the whole of stderr are checked.
Cases already covered elsewhere (NaN training data, a window longer than the
trajectories and a misspelled model key for ``fit`` in ``test_fit_cli.py``; the readers'
random truncations in ``test_data_readers.py``; a misspelled sampler key for ``compare``
in ``test_compare.py``) are not repeated.
"""

import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import lightning as L
import numpy as np
import pytest
import torch
import xarray as xr
import yaml
from oracle import gaussian_prior
from test_checkpoint import UNET_ARGS, prior_checkpoint
from test_data_readers import sda_array, write_h5, write_run
from torch.utils.data import DataLoader

from ldiff.cli import main
from ldiff.data.grf import generate_grf
from ldiff.data.store import save
from ldiff.guidance.dps_sum import DPSSum
from ldiff.lit.inference import InferenceModule
from ldiff.lit.prior import ScorePrior
from ldiff.nets.unet import UNet
from ldiff.observe import Subsample
from ldiff.writers import ReconstructionWriter

ROOT = Path(__file__).resolve().parents[1]
LDIFF = Path(sys.executable).parent / "ldiff"


def run(*args: str) -> int:
    with mock.patch.object(sys, "argv", ["ldiff"]):
        return main(list(args))


def error_line(capsys) -> str:
    """The one ``ldiff: error:`` line on stderr, checking there is no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("ldiff: error:")]
    assert len(lines) == 1, err
    return lines[0].removeprefix("ldiff: error: ")


def console(*args: str, cwd: Path) -> tuple[int, str]:
    """Exit status and last stderr line of the ``ldiff`` console script."""
    done = subprocess.run([str(LDIFF), *args], check=False, capture_output=True, text=True, timeout=120, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "Traceback" not in done.stderr
    return done.returncode, done.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A store (16 trajectories of 8 frames, 16 x 16), a truncated copy, and an untrained
    prior checkpoint (window 2)."""
    tmp = tmp_path_factory.mktemp("bad")
    store = save(generate_grf(16, 8, 16, seed=0), tmp / "grf.nc")
    (tmp / "cut.nc").write_bytes(store.read_bytes()[: store.stat().st_size // 2])
    torch.save(prior_checkpoint(), tmp / "prior.ckpt")
    return store, tmp / "cut.nc", tmp / "prior.ckpt"


def variant(store: Path, path: Path, change) -> Path:
    """A copy of ``store`` changed by ``change(ds)``, written without validation."""
    with xr.open_dataset(store, engine="h5netcdf") as ds:
        ds = change(ds.load())
    ds.to_netcdf(path, engine="h5netcdf")
    return path


# --- files through the console script -------------------------------------------------


def test_truncated_store_for_fit_and_compare_through_the_console_script(files, tmp_path):
    _, cut, prior = files
    status, line = console("fit", "--config", str(ROOT / "configs/prior/grf-tiny.yaml"), "--data.path", str(cut), cwd=tmp_path)
    assert status == 2 and line.startswith(f"ldiff: error: {cut}: not a readable NetCDF4 file (OSError: ")
    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump({"model": {"checkpoint": str(prior)}, "data": {"path": str(cut)}, "strategies": {"dps-sum": {"class_path": "ldiff.guidance.dps_sum.DPSSum"}}}))
    status, line = console("compare", "--config", str(config), cwd=tmp_path)
    assert status == 2 and line.startswith(f"ldiff: error: {cut}: not a readable NetCDF4 file (OSError: ")
    assert "truncated file" in line


def test_truncated_plt_for_import_ibpm_through_the_console_script(tmp_path):
    run_dir = write_run(tmp_path / "run")
    plt = run_dir / "ibpm00004.plt"
    plt.write_bytes(plt.read_bytes()[:-20])
    status, line = console("data", "import-ibpm", str(run_dir), "-o", str(tmp_path / "out.nc"), cwd=tmp_path)
    assert (status, line) == (2, f"ldiff: error: {plt}: truncated (last line incomplete)")
    assert not (tmp_path / "out.nc").exists()


# --- data commands --------------------------------------------------------------------


def test_import_sda_truncated_wrong_layout_nan_and_missing(tmp_path, capsys):
    h5 = write_h5(tmp_path / "a.h5", x=sda_array(2, 2, 4, 4))
    (tmp_path / "cut.h5").write_bytes(h5.read_bytes()[:1500])
    out = str(tmp_path / "out.nc")
    assert run("data", "import-sda", str(tmp_path / "cut.h5"), "-o", out) == 2
    assert error_line(capsys).startswith(f"{tmp_path / 'cut.h5'}: not a readable HDF5 file")
    assert run("data", "import-sda", str(h5), "--layout", "N,T,C,H", "-o", out) == 2
    assert error_line(capsys) == "layout 'N,T,C,H' is not a permutation of N,T,C,H,W"
    x = sda_array(2, 2, 4, 4)
    x[1, 0, 1, 2, 3] = np.inf
    nan = write_h5(tmp_path / "nan.h5", x=x)
    assert run("data", "import-sda", str(nan), "-o", out) == 2
    assert error_line(capsys) == f"{nan}: variable 'v' holds 1 NaN or Inf values"
    assert run("data", "import-sda", str(tmp_path / "none.h5"), "-o", out) == 2
    assert error_line(capsys) == f"{tmp_path / 'none.h5'}: no such file"
    assert not Path(out).exists()


def test_import_ibpm_missing_directory_and_nan(tmp_path, capsys):
    assert run("data", "import-ibpm", str(tmp_path / "none"), "-o", str(tmp_path / "o.nc")) == 2
    assert error_line(capsys) == f"{tmp_path / 'none'}: no such directory"
    run_dir = write_run(tmp_path / "run")
    plt = run_dir / "ibpm00008.plt"
    plt.write_text(plt.read_text().replace("1.01000e+02 ", "nan ", 1))  # v at i = j = 1
    assert run("data", "import-ibpm", str(run_dir), "-o", str(tmp_path / "o.nc")) == 2
    assert error_line(capsys) == f"{plt}: variable 'v' holds 1 NaN or Inf values"


def test_data_merge_of_a_truncated_store_names_it(files, tmp_path, capsys):
    store, cut, _ = files
    assert run("data", "merge", str(store), str(cut), "-o", str(tmp_path / "m.nc")) == 2
    assert error_line(capsys).startswith(f"{cut}: not a readable NetCDF4 file")


# --- fit -------------------------------------------------------------------------------


def fit(data: Path, root: Path, *extra: str) -> int:
    config = ROOT / "configs" / "prior" / "grf-tiny.yaml"
    return run("fit", "--config", str(config), "--data.path", str(data), "--trainer.default_root_dir", str(root), *extra)


@pytest.mark.parametrize("change, message", [
    (lambda ds: ds.transpose("trajectory", "time", "x", "y"),
     "variable 'u' has dims ('trajectory', 'time', 'x', 'y'), expected ('trajectory', 'time', 'y', 'x')"),
    (lambda ds: ds.rename({"v": "w"}), "missing data variable 'v'"),
    (lambda ds: ds.drop_attrs(), "missing attribute 'flow'"),
    (lambda ds: ds.assign(v=ds["v"].where(ds["time"] < 0.5, np.inf)), "variable 'v' holds"),
], ids=["layout", "variable", "attrs", "inf"])  # fmt: skip
def test_fit_refuses_a_store_of_the_wrong_layout(files, tmp_path, capsys, change, message):
    path = variant(files[0], tmp_path / "bad.nc", change)
    assert fit(path, tmp_path) == 2
    assert error_line(capsys).startswith(f"{path}: {message}")
    assert not (tmp_path / "checkpoints").exists()


def test_fit_missing_store_and_misspelled_keys(files, tmp_path, capsys):
    assert fit(tmp_path / "none.nc", tmp_path) == 2
    assert error_line(capsys) == f"{tmp_path / 'none.nc'}: no such file"
    assert fit(files[0], tmp_path, "--data.windw", "2") == 2
    assert error_line(capsys) == "unrecognized arguments: --data.windw 2"
    config = tmp_path / "typo.yaml"
    config.write_text("trainer:\n  max_epoch: 3\n")
    assert fit(files[0], tmp_path, "--config", str(config)) == 2
    assert "trainer.max_epoch" in error_line(capsys)


# --- predict ---------------------------------------------------------------------------


def predict(files, tmp_path: Path, *extra: str) -> int:
    store, _, prior = files
    config = ROOT / "configs" / "predict" / "grf-tiny.yaml"
    output = ["--trainer.callbacks.init_args.output", str(tmp_path / "out.nc")]
    return run("predict", "--config", str(config), "--model.checkpoint", str(prior), "--data.path", str(store), *output, "--model.steps", "2", "--trainer.logger.init_args.save_dir", str(tmp_path), *extra)


@pytest.mark.parametrize("extra, message", [
    (["--data.window", "3"], "network in_channels 4 vs data channels 6 (2 channels per frame; data window 3)"),
    (["--model.std", "0"], "observation noise std must be finite and > 0, got 0.0 (1 of 1 values)"),
    (["--model.std", "-0.5"], "observation noise std must be finite and > 0, got -0.5 (1 of 1 values)"),
    (["--model.std", "nan"], "Parser key \"model.std\": Expected a <class 'float'>. Got value: nan"),
    (["--model.operator.init_args.stride", "32", "--model.operator.init_args.offset", "20"],
     "Subsample: offset 20 does not fit fields of shape (4, 16, 16)"),
    (["--model.operator", "ldiff.observe.Frames", "--model.operator.init_args.every", "4", "--model.operator.init_args.offset", "3"],
     "Frames(every=4, offset=3, components=2) gives zero observations on fields (4, 16, 16)"),
    (["--model.samples", "0"], "InferenceModule: samples must be >= 1, got 0"),
    (["--model.sampels", "2"], "unrecognized arguments: --model.sampels 2"),
], ids=["window", "std0", "std-neg", "std-nan", "offset", "frames-empty", "samples", "typo"])  # fmt: skip
def test_predict_refuses_bad_settings(files, tmp_path, capsys, extra, message):
    assert predict(files, tmp_path, *extra) == 2
    assert error_line(capsys) == message
    assert not (tmp_path / "out.nc").exists()


def test_predict_missing_and_truncated_files(files, tmp_path, capsys):
    _, cut, prior = files
    assert predict(files, tmp_path, "--data.path", str(cut)) == 2
    assert error_line(capsys).startswith(f"{cut}: not a readable NetCDF4 file")
    assert predict(files, tmp_path, "--model.checkpoint", str(tmp_path / "none.ckpt")) == 2
    assert error_line(capsys) == f"{tmp_path / 'none.ckpt'}: no such checkpoint file"
    (tmp_path / "cut.ckpt").write_bytes(prior.read_bytes()[:4000])
    assert predict(files, tmp_path, "--model.checkpoint", str(tmp_path / "cut.ckpt")) == 2
    assert error_line(capsys).startswith(f"{tmp_path / 'cut.ckpt'}: not a readable checkpoint")


def test_predict_config_with_a_misspelled_key(files, tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("model:\n  stepz: 4\n")
    assert predict(files, tmp_path, "--config", str(config)) == 2
    assert "model.stepz" in error_line(capsys)


def test_nan_observations_in_a_later_batch_stop_trainer_predict_and_nothing_is_written(tmp_path):
    """Batch 0 is clean and reconstructed; batch 1 holds a NaN: predict stops with the
    count, and neither the output nor a shard or temporary file of batch 0's results is
    left (a writer that wrote per batch would leave batch 0 behind)."""
    prior = gaussian_prior(field_shape=(2, 8, 8))
    module = InferenceModule.from_prior(prior, prior.schedule, strategy=DPSSum(), operator=Subsample(2), std=0.1, steps=2)
    clean = {"y": torch.zeros(2, 2, 4, 4), "index": torch.tensor([0, 1]), "field_shape": (2, 8, 8)}
    bad = {"y": torch.zeros(2, 2, 4, 4), "index": torch.tensor([2, 3]), "field_shape": (2, 8, 8)}
    bad["y"][1, 0, 2, 3] = float("nan")
    finished = []
    step = module.predict_step
    module.predict_step = lambda batch, *args: finished.append(step(batch, *args)) or finished[-1]
    writer = ReconstructionWriter(str(tmp_path / "out.nc"))
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[writer], enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError) as error:
        trainer.predict(module, DataLoader([clean, bad], batch_size=None), return_predictions=False)
    assert str(error.value) == "observations y hold 1 NaN or Inf values"
    assert len(finished) == 1 and torch.isfinite(finished[0]["recon"]).all()  # batch 0 was done
    assert list(tmp_path.iterdir()) == []


# --- compare ---------------------------------------------------------------------------


def compare(files, tmp_path: Path, change) -> int:
    """``ldiff compare`` of a one-pair config (``change(config)`` applied) on the store."""
    store, _, prior = files
    config = {
        "model": {"checkpoint": str(prior), "std": 0.1, "steps": 2},
        "data": {"path": str(store), "items": 1},
        "operators": {"sub4": {"class_path": "ldiff.observe.Subsample", "init_args": {"stride": 4}}},
        "strategies": {"dps-sum": {"class_path": "ldiff.guidance.dps_sum.DPSSum"}},
        "output": str(tmp_path / "run"),
        "wandb": {"mode": "disabled"},
    }
    change(config)
    (tmp_path / "compare.yaml").write_text(yaml.safe_dump(config))
    return run("compare", "--config", str(tmp_path / "compare.yaml"))


@pytest.mark.parametrize("change, message", [
    (lambda c: c["model"].update(std=0), "{config}: model: observation noise std must be finite and > 0, got 0 (1 of 1 values)"),
    (lambda c: c["model"].update(std=-1), "{config}: model: observation noise std must be finite and > 0, got -1 (1 of 1 values)"),
    (lambda c: c.update(operators={"f": {"class_path": "ldiff.observe.Frames", "init_args": {"every": 4, "offset": 3}}}),
     "Frames(every=4, offset=3, components=2) gives zero observations on fields (4, 16, 16)"),
    (lambda c: c.update(operators={"p": {"class_path": "ldiff.observe.Subsample", "init_args": {"stride": 32, "offset": 17}}}),
     "Subsample: offset 17 does not fit fields of shape (4, 16, 16)"),
    (lambda c: c.update(operators={"p": {"class_path": "ldiff.observe.Subsample", "init_args": {"stride": 2, "offset": 2}}}),
     "{config}: operators.p: Subsample: offset must lie in [0, stride), got 2"),
    (lambda c: c.update(sampels=2), "{config}: unknown key 'sampels' (expected one of "),
    (lambda c: c["model"].update(sampels=2), "{config}: model: unknown key 'sampels' (expected one of "),
    (lambda c: c["data"].update(tset="x.nc"), "{config}: data: unknown key 'tset' (expected one of "),
    (lambda c: c["operators"]["sub4"]["init_args"].update(strid=2),
     "{config}: operators.sub4.init_args: unknown key 'strid' (expected one of offset, stride)"),
    (lambda c: c["model"].update(diverge_factr=3), "{config}: model: unknown key 'diverge_factr' (expected one of "),
    (lambda c: c.pop("strategies"), "{config}: missing key 'strategies'"),
], ids=["std0", "std-neg", "frames-empty", "offset-grid", "offset-stride", "typo-top", "typo-model", "typo-data", "typo-init", "typo-guard", "missing"])  # fmt: skip
def test_compare_refuses_bad_configs(files, tmp_path, capsys, change, message):
    assert compare(files, tmp_path, change) == 2
    assert error_line(capsys).startswith(message.format(config=tmp_path / "compare.yaml"))
    assert not list((tmp_path / "run").glob("predictions/*.nc"))


def test_compare_refuses_bad_files(files, tmp_path, capsys):
    store = files[0]
    inf = variant(store, tmp_path / "inf.nc", lambda ds: ds.assign(u=ds["u"].where(ds["x"] > 0, -np.inf)))
    assert compare(files, tmp_path, lambda c: c["data"].update(path=str(inf))) == 2
    assert error_line(capsys) == f"{inf}: variable 'u' holds 2048 NaN or Inf values"
    assert compare(files, tmp_path, lambda c: c["model"].update(checkpoint=str(tmp_path / "none.ckpt"))) == 2
    assert error_line(capsys) == f"{tmp_path / 'none.ckpt'}: no such checkpoint file"
    assert compare(files, tmp_path, lambda c: c["data"].update(path=str(tmp_path / "none.nc"))) == 2
    assert error_line(capsys) == f"{tmp_path / 'none.nc'}: no such file"
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    assert run("compare", "--config", str(tmp_path / "bad.yaml")) == 2
    assert error_line(capsys).startswith(f"{tmp_path / 'bad.yaml'}: not valid YAML (")


@pytest.mark.parametrize("init_args, message", [
    ({"in_channels": 18}, "{store}: window 9 is longer than the trajectories (8 frames)"),
    ({"in_channels": 4, "widths": [8, 8]}, "checkpoint {ckpt}: parameter net.down.0.weight has shape (16, 8, 3, 3), the model expects (8, 8, 3, 3)"),
], ids=["window", "weights"])  # fmt: skip
def test_compare_refuses_a_checkpoint_of_another_architecture(files, tmp_path, capsys, init_args, message):
    store, _, _ = files
    net = {"class_path": "ldiff.nets.unet.UNet", "init_args": {**UNET_ARGS, **init_args}}
    checkpoint = prior_checkpoint(net)
    if init_args["in_channels"] == 18:  # weights that fit the recorded 9-frame network
        checkpoint["state_dict"] = ScorePrior(UNet(**net["init_args"]), precondition=False).state_dict()
    ckpt = tmp_path / "other.ckpt"
    torch.save(checkpoint, ckpt)
    assert compare(files, tmp_path, lambda c: c["model"].update(checkpoint=str(ckpt))) == 2
    assert error_line(capsys).startswith(message.format(store=store, ckpt=ckpt))


@pytest.mark.parametrize("key", ["strategies", "operators"])
def test_compare_refuses_an_empty_sweep_by_name(key, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    spec = {"model": {"checkpoint": "x.ckpt"}, "data": {"path": "t.nc"}, "strategies": {"dps-sum": {"class_path": "ldiff.guidance.dps_sum.DPSSum"}}}
    spec[key] = {}
    config.write_text(yaml.safe_dump(spec))
    assert main(["compare", "--config", str(config)]) == 2
    assert f"{key}: need a non-empty mapping" in capsys.readouterr().err


# --- output paths ------------------------------------------------------------------------


def bad_outputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """An output path that is a directory, and one under a file, with their messages."""
    directory = tmp_path / "a-directory.nc"
    directory.mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return {
        "directory": (directory, f"{directory}: is a directory; name a file to write"),
        "under-a-file": (blocker / "out.nc", f"{blocker / 'out.nc'}: cannot write under {blocker}, which is a file"),
    }


@pytest.mark.parametrize("kind", ["directory", "under-a-file"])
def test_output_paths_that_cannot_take_a_file_are_one_line_for_every_writer(files, tmp_path, capsys, kind):
    """data grf, data merge, baseline, predict, compare and fit's default_root_dir."""
    store, _, prior = files
    path, message = bad_outputs(tmp_path)[kind]
    assert run("data", "grf", "--output", str(path), "--trajectories", "1", "--frames", "2", "--size", "8") == 2
    assert error_line(capsys) == message
    assert run("data", "merge", str(store), str(store), "-o", str(path)) == 2
    assert error_line(capsys) == message
    assert run("baseline", "--checkpoint", str(prior), "--data", str(store), "-o", str(path)) == 2
    assert error_line(capsys) == message
    assert predict(files, tmp_path / "p", "--trainer.callbacks.init_args.output", str(path)) == 2
    assert error_line(capsys) == message
    assert not list((tmp_path / "p").glob("**/*.nc"))


def test_a_compare_output_or_fit_root_under_a_file_is_one_line(files, tmp_path, capsys):
    store, _, _ = files
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert compare(files, tmp_path, lambda c: c.update(output=str(blocker / "run"))) == 2
    assert error_line(capsys) == f"{blocker / 'run' / 'provenance.json'}: cannot write under {blocker}, which is a file"
    assert fit(store, blocker / "root", "--trainer.max_epochs", "1") == 2
    assert error_line(capsys) == f"{blocker / 'root' / 'checkpoints' / 'last.ckpt'}: cannot write under {blocker}, which is a file"


# --- every output, and the list of cases that once ended in a traceback -------------------

READ_ONLY = Path("/sys/ldiff-test")
"""A directory no one may create, root included (sysfs refuses it)."""


def read_only_is_enforced() -> bool:
    try:
        READ_ONLY.mkdir(parents=True)
    except OSError:
        return True
    READ_ONLY.rmdir()
    return False


def file_outputs(files, tmp_path: Path) -> dict[str, tuple[callable, dict[str, Path]]]:
    """Every command that writes one file: (argv of an output path, its inputs by name)."""
    store, _, prior = files
    h5 = write_h5(tmp_path / "sda.h5", x=sda_array(n=2, t=3, h=8, w=8))
    config = str(ROOT / "configs" / "predict" / "grf-tiny.yaml")
    return {
        "data grf": (lambda out: ["data", "grf", "--output", str(out), "--trajectories", "1", "--frames", "2", "--size", "8"], {}),
        "data import-sda": (lambda out: ["data", "import-sda", str(h5), "--layout", "N,T,C,H,W", "-o", str(out)], {"file": h5}),
        "data merge": (lambda out: ["data", "merge", str(store), str(store), "-o", str(out)], {"file 1": store}),
        "baseline": (lambda out: ["baseline", "--checkpoint", str(prior), "--data", str(store), "-o", str(out)], {"--checkpoint": prior, "--data": store}),
        "export": (lambda out: ["export", str(prior), "-o", str(out)], {"checkpoint": prior}),
        "predict": (lambda out: ["predict", "--config", config, "--model.checkpoint", str(prior), "--data.path", str(store), "--model.steps", "2",
                                 "--trainer.logger", "false", "--trainer.callbacks.init_args.output", str(out)], {"data.path": store, "model.checkpoint": prior}),
    }  # fmt: skip


@pytest.mark.parametrize("command", ["data grf", "data import-sda", "data merge", "baseline", "export", "predict"])
@pytest.mark.parametrize("kind", ["directory", "under a file", "read-only", "an input"])
def test_every_file_output_that_cannot_or_must_not_be_written_is_one_line(files, tmp_path, capsys, command, kind):
    """Before any work: the output is a directory, lies under a file, lies in a directory
    that cannot be created, or is the command's own input (which stays untouched)."""
    build, inputs = file_outputs(files, tmp_path)[command]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    if kind == "read-only" and not read_only_is_enforced():
        pytest.skip(f"{READ_ONLY.parent} accepts new directories here")
    if kind == "an input" and not inputs:
        pytest.skip(f"{command} reads no file")
    name, source = next(iter(inputs.items())) if inputs else (None, None)
    out, message = {
        "directory": (tmp_path, f"{tmp_path}: is a directory; name a file to write"),
        "under a file": (blocker / "out.nc", f"{blocker / 'out.nc'}: cannot write under {blocker}, which is a file"),
        "read-only": (READ_ONLY / "out.nc", None),
        "an input": (source, f"{source}: is this command's input ({name}); name another file to write"),
    }[kind]
    before = source.read_bytes() if source else None
    assert run(*build(out)) == 2
    line = error_line(capsys)
    if message is None:
        assert line.startswith(str(READ_ONLY)) and line.endswith("(Operation not permitted)"), line
    else:
        assert line == message
    if source:
        assert source.read_bytes() == before


def compare_config(files, tmp_path: Path, **changes) -> list[str]:
    store, _, prior = files
    config = {
        "model": {"checkpoint": str(prior), "steps": 2}, "data": {"path": str(store), "items": 1},
        "operators": {"sub4": {"class_path": "ldiff.observe.Subsample", "init_args": {"stride": 4}}},
        "strategies": {"dps-sum": {"class_path": "ldiff.guidance.dps_sum.DPSSum"}},
        "output": str(tmp_path / "run"), "wandb": {"mode": "disabled"},
    }  # fmt: skip
    for key, value in changes.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    return ["compare", "--config", str(tmp_path / "c.yaml")]


def fit_config(files, tmp_path: Path, *extra: str) -> list[str]:
    config = str(ROOT / "configs" / "prior" / "grf-tiny.yaml")
    return ["fit", "--config", config, "--data.path", str(files[0]), "--trainer.default_root_dir", str(tmp_path / "root"),
            "--trainer.max_epochs", "1", "--trainer.logger", "false", *extra]  # fmt: skip


def small_grid_store(files, tmp_path: Path) -> Path:
    return save(generate_grf(8, 4, 4, seed=0), tmp_path / "small.nc")


def a_checkpoint(tmp_path: Path, content) -> Path:
    torch.save(content, tmp_path / "odd.ckpt")
    return tmp_path / "odd.ckpt"


def wide_checkpoint(tmp_path: Path) -> Path:
    checkpoint = prior_checkpoint()
    checkpoint["pytorch-lightning_version"] = "2.6.6"
    checkpoint["state_dict"]["online.lift.weight"] = torch.zeros(3, 3)
    return a_checkpoint(tmp_path, checkpoint)


ONE_LINE_CASES = {
    # case: (argv builder (files, tmp_path) -> argv, the exact message, "{tmp}" for tmp_path)
    "compare output under a file": (
        lambda f, t: compare_config(f, t, output=str(f[0] / "run")),
        "{store}/run/provenance.json: cannot write under {store}, which is a file"),
    "fit root under a file": (
        lambda f, t: fit_config(f, t, "--trainer.default_root_dir", str(f[0] / "root")),
        "{store}/root/checkpoints/last.ckpt: cannot write under {store}, which is a file"),
    "fit root read-only": (
        lambda f, t: fit_config(f, t, "--trainer.default_root_dir", str(READ_ONLY)),
        f"{READ_ONLY}: Operation not permitted"),
    "compare output read-only": (
        lambda f, t: compare_config(f, t, output=str(READ_ONLY)),
        f"{READ_ONLY}/provenance.json: cannot create its directory (Operation not permitted)"),
    "predict without a checkpoint": (
        lambda f, t: file_outputs(f, t)["predict"][0](t / "o.nc") + ["--model.checkpoint", "null"],
        "InferenceModule: no prior: name the prior checkpoint written by `ldiff fit` with --model.checkpoint"),
    "fit --ckpt_path of another architecture": (
        lambda f, t: fit_config(f, t, "--ckpt_path", str(wide_checkpoint(t))),
        "checkpoint {tmp}/odd.ckpt: parameter online.net.embed.1.weight is missing, the model expects it"),
    "fit --ckpt_path of a dict that is no checkpoint": (
        lambda f, t: fit_config(f, t, "--ckpt_path", str(a_checkpoint(t, {"a": 1}))),
        "{tmp}/odd.ckpt: not a training checkpoint written by `ldiff fit` (no 'pytorch-lightning_version' entry)"),
    "predict of a dict that is no checkpoint": (
        lambda f, t: file_outputs(f, t)["predict"][0](t / "o.nc") + ["--model.checkpoint", str(a_checkpoint(t, {"a": 1}))],
        "{tmp}/odd.ckpt: no 'state_dict' entry; not a ScorePrior checkpoint"),
    "compare checkpoint: [a]": (
        lambda f, t: compare_config(f, t, model={"checkpoint": ["a"]}),
        "{tmp}/c.yaml: model.checkpoint: expected str or null, got ['a']"),
    "compare model.steps: x": (
        lambda f, t: compare_config(f, t, model={"steps": "x"}),
        "{tmp}/c.yaml: model.steps: expected int, got 'x'"),
    "compare model.std: abc": (
        lambda f, t: compare_config(f, t, model={"std": "abc"}),
        "{tmp}/c.yaml: model.std: expected float, got 'abc'"),
    "compare data.items: 2.5": (
        lambda f, t: compare_config(f, t, data={"items": 2.5}),
        "{tmp}/c.yaml: data.items: expected int or null, got 2.5"),
    "compare trainer.devices: abc": (
        lambda f, t: compare_config(f, t, trainer={"devices": "abc"}),
        "{tmp}/c.yaml: trainer: `devices` selected with `CPUAccelerator` should be an int > 0."),
    "predict --trainer.devices abc": (
        lambda f, t: file_outputs(f, t)["predict"][0](t / "o.nc") + ["--trainer.devices", "abc"],
        "trainer: `devices` selected with `CPUAccelerator` should be an int > 0."),
    "compare baseline: true": (
        lambda f, t: compare_config(f, t, baseline=True),
        "{tmp}/c.yaml: baseline: need a GaussianPrior file or {{fit: TRAIN_STORE}}, got True"),
    "compare baseline_sample: yes": (
        lambda f, t: compare_config(f, t, baseline_sample="yes"),
        "{tmp}/c.yaml: baseline_sample: need true or false, got 'yes'"),
    "compare baseline_sample without a baseline": (
        lambda f, t: compare_config(f, t, baseline_sample=True),
        "{tmp}/c.yaml: baseline_sample: needs a baseline"),
    "fit on a grid too small for the network": (
        lambda f, t: fit_config(f, t, "--data.path", str(small_grid_store(f, t)), "--model.net.init_args.widths", "[8, 16, 32]"),
        "{tmp}/small.nc: the grid is 4x4, too small for 3 levels with kernel_size 3: H and W must exceed 4 (model.net.init_args.widths sets the levels)"),
    "an IBPM .cmd with -dt abc": (
        lambda f, t: ["data", "import-ibpm", str(write_run(t / "run", cmd="ibpm -nx 8 -ny 4 -dt abc -tecplot 4\n")), "-o", str(t / "i.nc")],
        "{tmp}/run/ibpm.cmd: option -dt has value 'abc', expected float"),
    "import-ibpm --dt nan": (
        lambda f, t: ["data", "import-ibpm", str(write_run(t / "run")), "--dt", "nan", "-o", str(t / "i.nc")],
        "{tmp}/run: dt must be a finite positive number, got nan"),
    "an empty fit config": (
        lambda f, t: ["fit", "--config", str(write_text(t / "empty.yaml", ""))],
        "{tmp}/empty.yaml: a config must be a mapping of keys (trainer, model, data, ...); it is empty"),
    "a fit config holding a list": (
        lambda f, t: ["fit", "--config", str(write_text(t / "list.yaml", "- 1\n"))],
        "{tmp}/list.yaml: a config must be a mapping of keys (trainer, model, data, ...); got a list"),
}  # fmt: skip


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", ONE_LINE_CASES)
def test_each_case_that_once_ended_in_a_traceback_is_one_line_naming_its_source(files, tmp_path, capsys, case):
    build, message = ONE_LINE_CASES[case]
    if "read-only" in case and not read_only_is_enforced():
        pytest.skip(f"{READ_ONLY.parent} accepts new directories here")
    assert run(*build(files, tmp_path)) == 2
    assert error_line(capsys) == message.format(tmp=tmp_path, store=files[0])


def test_predict_with_the_cylinder_prior_on_another_grid_names_the_file_and_both_grids(tmp_path, capsys):
    """The user's IBPM run at another spacing (here the held-out store at every other
    node): the shipped window prior's Gaussian skip term is its training grid's, so the
    run is refused before sampling, naming the store and both grids."""
    from ldiff.data.store import load

    coarse = load(ROOT / "checkpoints/cylinder-window/heldout.nc").isel(x=slice(None, None, 2), y=slice(None, None, 2))
    coarse.attrs.update(dx=0.16, dy=0.16)
    store = save(coarse, tmp_path / "coarse.nc")
    assert run("predict", "--config", str(ROOT / "configs/predict/cylinder.yaml"), "--model.checkpoint", str(ROOT / "checkpoints/cylinder-window/prior.ckpt"),
               "--data.path", str(store), "--trainer.logger", "false", "--trainer.callbacks.init_args.output", str(tmp_path / "out.nc")) == 2  # fmt: skip
    assert error_line(capsys) == (
        f"{store}: a grid of 50 x 100 nodes (y, x); this prior's Gaussian skip term was fitted on 99 x 199, "
        "and the prior runs on that grid only (regrid the data, or train a prior on it)"
    )
    assert not (tmp_path / "out.nc").exists()
