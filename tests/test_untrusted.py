"""Untrusted files: checkpoints with pickle payloads, YAML with Python tags and class paths
outside ``ldiff`` are refused by every command that reads them, and their code never runs.

Each payload would create a marker file if it ran; every test checks the marker is
absent. The payload checkpoint is ``test_checkpoint.evil_checkpoint`` (its unpickling
opens the marker for writing; that test shows an unrestricted ``torch.load`` does run
it). ``fit --ckpt_path`` and a tagged ``fit`` config are covered in-process by
``test_checkpoint.py`` and ``test_fit_cli.py``; here they run through the console script.
"""

import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from test_checkpoint import NET, evil_checkpoint, prior_checkpoint

from ldiff.cli import main
from ldiff.data.grf import generate_grf
from ldiff.data.store import save

ROOT = Path(__file__).resolve().parents[1]
LDIFF = Path(sys.executable).parent / "ldiff"
FIT_CONFIG = ROOT / "configs" / "prior" / "grf-tiny.yaml"
PREDICT_CONFIG = ROOT / "configs" / "predict" / "grf-tiny.yaml"
REFUSED = "refused: the checkpoint holds pickled Python objects (GLOBAL io.open); ldiff loads weights only"


def run(*args: str) -> int:
    with mock.patch.object(sys, "argv", ["ldiff"]):
        return main(list(args))


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("ldiff: error:")]
    assert len(lines) == 1, err
    return lines[0].removeprefix("ldiff: error: ")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A store (16 trajectories of 8 frames, 16 x 16) and an honest prior checkpoint."""
    tmp = tmp_path_factory.mktemp("untrusted")
    torch.save(prior_checkpoint(), tmp / "prior.ckpt")
    return save(generate_grf(16, 8, 16, seed=0), tmp / "grf.nc"), tmp / "prior.ckpt"


def compare_config(path: Path, files, **changes) -> Path:
    store, prior = files
    config = {
        "model": {"checkpoint": str(prior), "steps": 2},
        "data": {"path": str(store), "items": 1},
        "operators": {"sub4": {"class_path": "ldiff.observe.Subsample", "init_args": {"stride": 4}}},
        "strategies": {"dps-sum": {"class_path": "ldiff.guidance.dps_sum.DPSSum"}},
        "output": str(path.parent / "run"),
        "wandb": {"mode": "disabled"},
        **changes,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def predict_args(files, tmp_path: Path, ckpt: Path) -> list[str]:
    return ["predict", "--config", str(PREDICT_CONFIG), "--model.checkpoint", str(ckpt), "--data.path", str(files[0]),
            "--trainer.callbacks.init_args.output", str(tmp_path / "out.nc"), "--model.steps", "2", "--trainer.logger", "false"]  # fmt: skip


# --- checkpoints ----------------------------------------------------------------------


def test_predict_refuses_a_payload_checkpoint(files, tmp_path, capsys):
    ckpt, marker = evil_checkpoint(tmp_path)
    assert run(*predict_args(files, tmp_path, ckpt)) == 2
    assert error_line(capsys) == f"{ckpt}: {REFUSED}"
    assert not marker.exists() and not (tmp_path / "out.nc").exists()


def test_compare_refuses_a_payload_checkpoint(files, tmp_path, capsys):
    ckpt, marker = evil_checkpoint(tmp_path)
    assert run("compare", "--config", str(compare_config(tmp_path / "c.yaml", files, model={"checkpoint": str(ckpt), "steps": 2}))) == 2
    assert error_line(capsys) == f"{ckpt}: {REFUSED}"
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_fit_refuses_a_payload_checkpoint_through_the_console_script(files, tmp_path):
    ckpt, marker = evil_checkpoint(tmp_path)
    args = ["fit", "--config", str(FIT_CONFIG), "--data.path", str(files[0]), "--trainer.default_root_dir", str(tmp_path / "run")]
    done = subprocess.run([str(LDIFF), *args, "--ckpt_path", str(ckpt)], check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"ldiff: error: {ckpt}: {REFUSED}"
    assert not marker.exists() and not (tmp_path / "run" / "checkpoints").exists()


# --- YAML -----------------------------------------------------------------------------

TAG = "!!python/object/apply:os.system [\"touch {marker}\"]"


def test_fit_refuses_a_python_tag_through_the_console_script(files, tmp_path):
    marker = tmp_path / "tag-ran"
    config = tmp_path / "fit.yaml"
    config.write_text(FIT_CONFIG.read_text().replace("  lr: 0.001", "  lr: " + TAG.format(marker=marker)))
    args = ["fit", "--config", str(config), "--data.path", str(files[0]), "--trainer.default_root_dir", str(tmp_path / "run")]
    done = subprocess.run([str(LDIFF), *args], check=False, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ldiff: error: ") and "tag:yaml.org,2002:python/object/apply:os.system" in last
    assert not marker.exists()


def test_predict_refuses_a_python_tag(files, tmp_path, capsys):
    marker = tmp_path / "tag-ran"
    (tmp_path / "tag.yaml").write_text("model:\n  std: " + TAG.format(marker=marker) + "\n")
    args = predict_args(files, tmp_path, files[1])
    assert run(*args[:3], "--config", str(tmp_path / "tag.yaml"), *args[3:]) == 2
    line = error_line(capsys)
    assert "tag:yaml.org,2002:python/object/apply:os.system" in line
    assert not marker.exists() and not (tmp_path / "out.nc").exists()


def test_compare_refuses_a_python_tag(files, tmp_path, capsys):
    marker = tmp_path / "tag-ran"
    config = compare_config(tmp_path / "c.yaml", files)
    config.write_text(config.read_text().replace("std: 0.1", "") + "std: " + TAG.format(marker=marker) + "\n")
    assert run("compare", "--config", str(config)) == 2
    assert error_line(capsys) == (
        f"{config}: not valid YAML (could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system')"
    )
    assert not marker.exists()


# --- class paths ----------------------------------------------------------------------


@pytest.fixture
def evil_module(tmp_path, monkeypatch) -> Path:
    """An importable module ``ldiff_test_evil`` whose import creates a marker file."""
    marker = tmp_path / "import-ran"
    (tmp_path / "ldiff_test_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ldiff_test_evil", raising=False)
    return marker


@pytest.mark.parametrize("section, key, class_path, init_args", [
    ("strategies", "x", "os.system", {"command": "touch {marker}"}),
    ("operators", "x", "subprocess.Popen", {"args": ["touch", "{marker}"]}),
    ("strategies", "x", "ldiff_test_evil.Thing", {}),
], ids=["os.system", "subprocess.Popen", "import"])  # fmt: skip
def test_compare_refuses_class_paths_outside_ldiff(files, tmp_path, capsys, evil_module, section, key, class_path, init_args):
    marker = tmp_path / "call-ran"
    args = yaml.safe_load(yaml.safe_dump(init_args).replace("{marker}", str(marker)))
    config = compare_config(tmp_path / "c.yaml", files, **{section: {key: {"class_path": class_path, "init_args": args}}})
    assert run("compare", "--config", str(config)) == 2
    assert error_line(capsys) == f"{config}: {section}.{key}: class path {class_path!r} lies outside ldiff, lightning, torch; refusing to import it (to allow your own package: LDIFF_ALLOW_IMPORTS={class_path.partition('.')[0]})"
    assert not marker.exists() and not evil_module.exists() and "ldiff_test_evil" not in sys.modules


def test_predict_config_class_paths_outside_ldiff_are_never_imported(files, tmp_path, capsys, evil_module):
    args = predict_args(files, tmp_path, files[1])
    assert run(*args, "--trainer.logger", "ldiff_test_evil.Thing") == 2
    assert "ldiff_test_evil.Thing" in error_line(capsys)
    assert not evil_module.exists()


# --- every import route of the Lightning commands goes through one gate ----------------


@pytest.fixture
def payload(tmp_path, monkeypatch, request) -> tuple[str, Path]:
    """A fresh importable module (its name unique to the test) whose import creates a
    marker file; it holds ``Thing``, an ``nn.Module`` that takes any keyword."""
    name = "ldiff_payload_" + "".join(c if c.isalnum() else "_" for c in request.node.name)
    marker = tmp_path / f"{name}.ran"
    (tmp_path / f"{name}.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nimport torch\n\n"
        "class Thing(torch.nn.Module):\n    def __init__(self, **kwargs):\n        super().__init__()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.delenv("LDIFF_ALLOW_IMPORTS", raising=False)
    return name, marker


def yaml_file(path: Path, content: object) -> str:
    path.write_text(yaml.safe_dump(content))
    return str(path)


def fit_args(files, tmp_path: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(FIT_CONFIG), "--data.path", str(files[0]), "--trainer.default_root_dir", str(tmp_path / "run"),
            "--trainer.max_epochs", "1", "--trainer.logger", "false", *extra]  # fmt: skip


def hparams_checkpoint(tmp_path: Path, class_path: str) -> str:
    checkpoint = prior_checkpoint({**NET, "class_path": class_path})
    checkpoint["pytorch-lightning_version"] = "2.6.6"
    torch.save(checkpoint, tmp_path / "hparams.ckpt")
    return str(tmp_path / "hparams.ckpt")


ROUTES = {
    # route: (command builder (files, tmp_path, payload class path) -> argv, the key named)
    "inline JSON value": (lambda f, t, c: predict_args(f, t, f[1]) + [f'--model.strategy={{"class_path": "{c}"}}'], "model.strategy"),
    "inline JSON list of callbacks": (lambda f, t, c: predict_args(f, t, f[1]) + [f'--trainer.callbacks=[{{"class_path": "{c}"}}]'], "trainer.callbacks"),
    "inline JSON --config": (lambda f, t, c: predict_args(f, t, f[1]) + [f'--config={{"model": {{"strategy": {{"class_path": "{c}"}}}}}}'], "model.strategy"),
    "inline JSON group": (lambda f, t, c: predict_args(f, t, f[1]) + [f'--trainer={{"logger": {{"class_path": "{c}"}}}}'], "trainer.logger"),
    "value naming a YAML file": (lambda f, t, c: predict_args(f, t, f[1]) + ["--model.strategy", yaml_file(t / "s.yaml", {"class_path": c})], "model.strategy"),
    "config naming a YAML file": (lambda f, t, c: predict_args(f, t, f[1]) + ["--config", yaml_file(t / "c.yaml", {"model": {"strategy": yaml_file(t / "s.yaml", {"class_path": c})}})], "model.strategy"),
    "--config file": (lambda f, t, c: fit_args(f, t, "--config", yaml_file(t / "c.yaml", {"model": {"net": {"class_path": c}}})), "model.net"),
    "dotted class_path": (lambda f, t, c: fit_args(f, t, "--model.net.class_path", c), "model.net"),
    "short class path": (lambda f, t, c: fit_args(f, t, "--model.net", c), "model.net"),
    "logger": (lambda f, t, c: predict_args(f, t, f[1]) + ["--trainer.logger", c], "trainer.logger"),
    "plugins": (lambda f, t, c: fit_args(f, t, "--trainer.plugins", c), "trainer.plugins"),
    "fit checkpoint hparams": (lambda f, t, c: fit_args(f, t, "--ckpt_path", hparams_checkpoint(t, c)), "{ckpt}: hyper_parameters: model.net"),
    "validate checkpoint hparams": (lambda f, t, c: ["validate", *fit_args(f, t, "--ckpt_path", hparams_checkpoint(t, c))[1:]], "{ckpt}: hyper_parameters: model.net"),
}  # fmt: skip


@pytest.mark.parametrize("route", ROUTES)
def test_no_import_route_of_the_lightning_commands_imports_the_payload(files, tmp_path, capsys, payload, route):
    name, marker = payload
    build, where = ROUTES[route]
    assert run(*build(files, tmp_path, f"{name}.Thing")) == 2
    where = where.format(ckpt=tmp_path / "hparams.ckpt")
    assert error_line(capsys) == (
        f"{where}: class path '{name}.Thing' lies outside ldiff, lightning, torch; refusing to import it "
        f"(to allow your own package: LDIFF_ALLOW_IMPORTS={name})"
    )
    assert not marker.exists() and name not in sys.modules


@pytest.mark.parametrize("name", ["test.nc", "code.nc", "os.nc", "eval.h5"])
def test_a_file_name_is_a_file_name_not_a_class_path(files, tmp_path, capsys, name):
    assert run(*fit_args(files, tmp_path, "--data.path", str(Path(name)))) == 2
    assert error_line(capsys) == f"{name}: no such file"


# --- the opt-in lets a user's own net and strategy run -----------------------------------

OWN_PACKAGE = '''
import torch
from ldiff.guidance.dps_sum import DPSSum
from ldiff.nets.unet import UNet

class WideUNet(UNet):
    """A user's own network: ldiff's UNet with its own default widths."""

class HalfDPS(DPSSum):
    """A user's own strategy: DPS-sum that records the times it guided at."""

    def guided_eps(self, denoiser, x_t, t, obs, diagnostics):
        calls.append(x_t.shape)
        return super().guided_eps(denoiser, x_t, t, obs, diagnostics)

calls = []
'''


@pytest.fixture
def own_package(tmp_path, monkeypatch) -> str:
    """``labnets``, a user's package on ``PYTHONPATH`` with a net and a strategy."""
    (tmp_path / "labnets.py").write_text(OWN_PACKAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "labnets", raising=False)
    monkeypatch.delenv("LDIFF_ALLOW_IMPORTS", raising=False)
    return "labnets"


def test_a_users_own_net_trains_and_predicts_once_allowed(files, tmp_path, capsys, monkeypatch, own_package):
    args = fit_args(files, tmp_path, "--model.net.class_path", "labnets.WideUNet", "--trainer.max_steps", "2")
    assert run(*args) == 2
    assert "LDIFF_ALLOW_IMPORTS=labnets" in error_line(capsys)
    monkeypatch.setenv("LDIFF_ALLOW_IMPORTS", "labnets")
    assert run(*args) == 0
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["net"]["class_path"] == "labnets.WideUNet"
    assert run(*predict_args(files, tmp_path, ckpt), "--model.strategy", "labnets.HalfDPS") == 0
    assert sys.modules["labnets"].calls and (tmp_path / "out.nc").is_file()  # the user's strategy ran


def test_a_users_own_strategy_runs_in_compare_once_allowed(files, tmp_path, capsys, monkeypatch, own_package):
    config = compare_config(tmp_path / "c.yaml", files, strategies={"half": {"class_path": "labnets.HalfDPS"}})
    assert run("compare", "--config", str(config)) == 2
    assert error_line(capsys).endswith("(to allow your own package: LDIFF_ALLOW_IMPORTS=labnets)")
    monkeypatch.setenv("LDIFF_ALLOW_IMPORTS", "other, labnets")
    assert run("compare", "--config", str(config)) == 0
    assert sys.modules["labnets"].calls and (tmp_path / "run" / "tables" / "summary.csv").is_file()


def test_a_malformed_opt_in_is_one_line(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LDIFF_ALLOW_IMPORTS", "good,not a module")
    assert run(*fit_args(files, tmp_path)) == 2
    assert error_line(capsys) == "LDIFF_ALLOW_IMPORTS: 'not a module' is not a dotted module name"
