"""Start-up: commands that neither train nor predict import neither Lightning nor wandb
(``ldiff --help`` imports no third-party package at all). The times are measured in the
README (``time ldiff --help``), not asserted here."""

import re
import subprocess
import sys

import pytest

PROBE = """
import sys
from ldiff.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exit:  # --help
    status = exit.code
heavy = sorted(m for m in ("lightning", "pytorch_lightning", "wandb", "jsonargparse", "torch", "xarray") if m in sys.modules)
print(status, ",".join(heavy))
"""


def imported_by(*args: str) -> tuple[int, set[str]]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120, check=True)
    status, _, heavy = done.stdout.strip().splitlines()[-1].partition(" ")
    return int(status), set(filter(None, heavy.split(",")))


@pytest.mark.parametrize("args", [["--help"], ["data", "--help"], ["data", "grf", "--help"], ["data", "import-sda", "--help"]])
def test_help_imports_no_third_party_package(args):
    assert imported_by(*args) == (0, set())


@pytest.mark.parametrize("args", [["balance"], ["compare", "--help"]])
def test_commands_that_do_not_train_or_predict_import_neither_lightning_nor_wandb(args):
    status, heavy = imported_by(*args)
    assert status == 0 and not heavy & {"lightning", "pytorch_lightning", "wandb", "jsonargparse"}, heavy


def test_fit_help_lists_ldiffs_networks_and_counts_torchs_modules(capsys):
    from ldiff.cli import main

    with pytest.raises(SystemExit) as done:
        main(["fit", "--help"])
    assert done.value.code == 0
    net = " ".join(capsys.readouterr().out.split("\n  --model.net NET", 1)[1].split("\n  --model.", 1)[0].split())
    assert "ldiff.nets.unet.UNet" in net and "torch.nn.Linear" not in net
    assert re.search(r"and \d+ classes of torch and other packages\)", net), net
