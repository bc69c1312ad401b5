"""Checkpoints: weights-only reads that refuse pickle payloads (which never run), the
prior rebuilt from its recorded config, architecture mismatches named, atomic writes."""

import os
import sys
from pathlib import Path

import pytest
import torch

from ldiff.cli import main
from ldiff.diffusion.schedules import CosineSchedule
from ldiff.config import instantiate
from ldiff.lit.checkpoint import SafeCheckpointIO, load_prior, read_checkpoint
from ldiff.lit.prior import ScorePrior
from ldiff.nets.unet import UNet

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "prior" / "grf-tiny.yaml"
UNET_ARGS = {"in_channels": 4, "widths": [8, 16], "blocks_per_level": 1, "time_embedding": 16}
NET = {"class_path": "ldiff.nets.unet.UNet", "init_args": UNET_ARGS}
SCHEDULE = {"class_path": "ldiff.diffusion.schedules.CosineSchedule", "init_args": {"eta": 0.01}}
NORMALIZER = {"mean": torch.tensor([0.5, -0.25], dtype=torch.float64), "std": torch.tensor([2.0, 3.0], dtype=torch.float64)}


def prior_checkpoint(net_config: dict = NET) -> dict:
    """A checkpoint in ScorePrior's layout whose averaged weights differ from the online ones."""
    torch.manual_seed(0)
    module = ScorePrior(UNet(**UNET_ARGS), CosineSchedule(eta=0.01), precondition=False)
    with torch.no_grad():
        for p in module.net.parameters():
            p.add_(torch.randn_like(p))
    return {
        "state_dict": module.state_dict(),
        "hyper_parameters": {"net": net_config, "schedule": SCHEDULE, "lr": 2e-4, "ema_decay": 0.999},
        "normalizer": NORMALIZER,
        "global_step": 3,
    }


class Payload:
    """Unpickling this creates ``path``: the stand-in for arbitrary code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "payload-ran"
    checkpoint = prior_checkpoint()
    checkpoint["hyper_parameters"]["note"] = Payload(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(checkpoint, path)
    return path, marker


def test_load_prior_rebuilds_the_averaged_network(tmp_path):
    checkpoint = prior_checkpoint()
    torch.save(checkpoint, tmp_path / "prior.ckpt")
    net, schedule, normalizer, hparams = load_prior(tmp_path / "prior.ckpt")
    assert isinstance(net, UNet) and net.widths == [8, 16] and not net.training
    assert isinstance(schedule, CosineSchedule) and schedule.eta == 0.01
    assert all(not p.requires_grad for p in net.parameters())
    for key, value in net.state_dict().items():
        assert torch.equal(value, checkpoint["state_dict"][f"net.{key}"])
    # the averaged weights, not the online ones
    assert not torch.equal(net.lift.weight, checkpoint["state_dict"]["online.lift.weight"])
    assert torch.equal(normalizer["std"], NORMALIZER["std"]) and hparams["lr"] == 2e-4


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    path, marker = evil_checkpoint(tmp_path)
    with pytest.raises(ValueError) as error:
        load_prior(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "refused" in message and "io.open" in message
    assert not marker.exists()
    # the payload is live: an unrestricted load runs it
    torch.load(path, weights_only=False)
    assert marker.exists()


class SystemPayload:
    """Unpickling this calls ``os.system``, whose module torch 2.13 blocks by name."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_blocked_module_is_refused_in_ldiff_s_words_not_with_torch_s_unsafe_advice(tmp_path):
    marker = tmp_path / "payload-ran"
    checkpoint = prior_checkpoint()
    checkpoint["hyper_parameters"]["note"] = SystemPayload(marker)
    path = tmp_path / "system.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError) as error:
        load_prior(path)
    system = f"{os.system.__module__}.system"  # posix.system on Linux
    assert str(error.value) == f"{path}: refused: the checkpoint holds pickled Python objects (GLOBAL {system}); ldiff loads weights only"
    assert not marker.exists()


def test_resume_io_refuses_the_payload_even_when_the_environment_allows_pickles(tmp_path, monkeypatch):
    path, marker = evil_checkpoint(tmp_path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ValueError, match="refused"):
        SafeCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not marker.exists()


def test_cli_refuses_a_payload_given_as_ckpt_path(tmp_path, monkeypatch, capsys):
    path, marker = evil_checkpoint(tmp_path)
    monkeypatch.setattr(sys, "argv", ["ldiff"])
    status = main(["fit", "--config", str(CONFIG), "--ckpt_path", str(path), "--data.path", str(tmp_path / "x.nc")])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ldiff: error:")]
    assert status == 2 and len(errors) == 1 and "refused" in errors[0] and str(path) in errors[0]
    assert not marker.exists()


def test_wrong_architecture_names_the_parameter_and_both_shapes(tmp_path):
    checkpoint = prior_checkpoint({**NET, "init_args": {**UNET_ARGS, "in_channels": 2}})
    torch.save(checkpoint, tmp_path / "wrong.ckpt")
    with pytest.raises(ValueError) as error:
        load_prior(tmp_path / "wrong.ckpt")
    assert str(error.value) == (
        f"checkpoint {tmp_path / 'wrong.ckpt'}: parameter net.lift.weight has shape (8, 4, 3, 3), "
        "the model expects (8, 2, 3, 3)"
    )


def test_missing_and_unexpected_parameters_are_named(tmp_path):
    checkpoint = prior_checkpoint()
    del checkpoint["state_dict"]["net.head.2.bias"]
    torch.save(checkpoint, tmp_path / "a.ckpt")
    with pytest.raises(ValueError, match=r"parameter net\.head\.2\.bias is missing"):
        load_prior(tmp_path / "a.ckpt")
    checkpoint = prior_checkpoint()
    checkpoint["state_dict"]["net.extra"] = torch.zeros(1)
    torch.save(checkpoint, tmp_path / "b.ckpt")
    with pytest.raises(ValueError, match=r"parameter net\.extra is not in the model"):
        load_prior(tmp_path / "b.ckpt")


def test_class_paths_outside_ldiff_are_never_imported(tmp_path):
    sys.modules.pop("antigravity", None)
    checkpoint = prior_checkpoint({"class_path": "antigravity.Module", "init_args": {}})
    torch.save(checkpoint, tmp_path / "outside.ckpt")
    with pytest.raises(ValueError, match=r"hyper_parameters\.net: class path 'antigravity\.Module' lies outside"):
        load_prior(tmp_path / "outside.ckpt")
    assert "antigravity" not in sys.modules


@pytest.mark.parametrize("config, match", [
    ({"class_path": "ldiff.nets.unet.UNett"}, "class_path 'ldiff.nets.unet.UNett' does not exist"),
    ({"class_path": "ldiff.diffusion.schedules.CosineSchedule"}, "is not a Module"),
    ({"class_path": "ldiff.nets.unet.UNet", "init_args": {"in_channel": 4}}, "init_args: unknown key 'in_channel'"),
    ([1, 2], "expected a class_path config"),
])  # fmt: skip
def test_bad_class_configs_are_named(config, match):
    with pytest.raises(ValueError, match=match):
        instantiate(config, "ckpt: net", base=torch.nn.Module)


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"text\.ckpt: not a readable checkpoint"):
        read_checkpoint(tmp_path / "text.ckpt")
    torch.save(prior_checkpoint(), tmp_path / "full.ckpt")
    (tmp_path / "cut.ckpt").write_bytes((tmp_path / "full.ckpt").read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"cut\.ckpt: not a readable checkpoint"):
        read_checkpoint(tmp_path / "cut.ckpt")
    with pytest.raises(FileNotFoundError, match=r"none\.ckpt: no such checkpoint file"):
        load_prior(tmp_path / "none.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a ScorePrior checkpoint"):
        load_prior(tmp_path / "other.ckpt")


def test_atomic_write_keeps_the_old_file_when_a_write_fails(tmp_path):
    io, path = SafeCheckpointIO(), tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, path)
    assert io.load_checkpoint(path) == {"global_step": 1}
    with pytest.raises(Exception):
        io.save_checkpoint({"global_step": 2, "hook": lambda: None}, path)  # lambdas do not pickle
    assert io.load_checkpoint(path) == {"global_step": 1}
    assert os.listdir(path.parent) == ["last.ckpt"]  # no temporary file left behind
    io.save_checkpoint({"global_step": 3}, path)
    assert io.load_checkpoint(path) == {"global_step": 3}


def test_export_keeps_only_the_averaged_prior_and_loads_identically(tmp_path):
    from ldiff.lit.checkpoint import export_prior

    checkpoint = prior_checkpoint()
    checkpoint["optimizer_states"] = [{"state": {0: {"exp_avg": torch.ones(1000)}}}]
    torch.save(checkpoint, tmp_path / "full.ckpt")
    export_prior(tmp_path / "full.ckpt", tmp_path / "slim.ckpt")
    slim = torch.load(tmp_path / "slim.ckpt", weights_only=True)
    assert set(slim) == {"state_dict", "hyper_parameters", "normalizer", "epoch", "global_step"}
    assert all(key.startswith("net.") for key in slim["state_dict"])
    full_net = load_prior(tmp_path / "full.ckpt")[0]
    slim_net = load_prior(tmp_path / "slim.ckpt")[0]
    for (name, a), (_, b) in zip(full_net.state_dict().items(), slim_net.state_dict().items()):
        assert torch.equal(a, b), name
    assert (tmp_path / "slim.ckpt").stat().st_size < (tmp_path / "full.ckpt").stat().st_size
