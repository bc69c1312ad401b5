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
from test_checkpoint import evil_checkpoint, prior_checkpoint

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
    assert error_line(capsys) == f"{config}: {section}.{key}: class_path {class_path!r} lies outside the ldiff package; refusing to import it"
    assert not marker.exists() and not evil_module.exists() and "ldiff_test_evil" not in sys.modules


def test_predict_config_class_paths_outside_ldiff_are_never_imported(files, tmp_path, capsys, evil_module):
    args = predict_args(files, tmp_path, files[1])
    assert run(*args, "--trainer.logger", "ldiff_test_evil.Thing") == 2
    assert "ldiff_test_evil.Thing" in error_line(capsys)
    assert not evil_module.exists()
