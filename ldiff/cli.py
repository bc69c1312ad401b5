"""The ``ldiff`` command.

::

    ldiff fit      --config configs/prior/grf-tiny.yaml [--trainer.max_epochs 4 ...]
    ldiff fit      --config configs/prior/grf-tiny.yaml --ckpt_path last
    ldiff validate --config configs/prior/grf-tiny.yaml --ckpt_path runs/grf-tiny/checkpoints/last.ckpt
    ldiff data grf --output data/grf-tiny.nc [...]

``fit``, ``validate``, ``test`` and ``predict`` run Lightning through ``LightningCLI``
(:mod:`ldiff.lit.cli`); :data:`LIGHTNING_COMMANDS` names the LightningModule of each.
The other commands are plain ``argparse`` sub-commands, each parser carrying ``func``.

**Start-up.** This module imports only the standard library. A command's own module is
imported when that command runs (:data:`COMMANDS`), so ``ldiff --help`` imports none,
and no command that neither trains nor predicts imports Lightning or wandb.

Errors in the input (``ValueError``, ``FileNotFoundError``, bad arguments or config keys,
refused class paths, trainer settings Lightning rejects, a file system refusing a
write) print one line, ``ldiff: error: <message>``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import warnings
from collections.abc import Callable, Sequence

LIGHTNING_COMMANDS: dict[str, str] = {
    "fit": "ldiff.lit.prior.ScorePrior",
    "validate": "ldiff.lit.prior.ScorePrior",
    "test": "ldiff.lit.prior.ScorePrior",
    "predict": "ldiff.lit.inference.InferenceModule",
}
"""Sub-commands run by LightningCLI, and the LightningModule each one runs."""

COMMANDS: dict[str, tuple[str, str, str]] = {
    "data": ("ldiff.data.commands", "add_data_commands", "generate or import fields into a store file"),
    "balance": ("ldiff.commands", "add_balance_command", "the seed's likelihood-strength analysis over N and t"),
    "compare": ("ldiff.commands", "add_compare_command", "sweep guidance strategies x observation operators with one prior"),
    "baseline": ("ldiff.commands", "add_baseline_command", "fit the Gaussian prior (mean field, stationary covariance) to a prior's training data"),
    "quality": ("ldiff.commands", "add_quality_command", "a prior's samples against data, or its Jacobian against its Gaussian fit"),
    "export": ("ldiff.commands", "add_export_command", "slim a training checkpoint to the prior alone"),
}
"""The argparse sub-commands: (module, the hook that adds the parser, help line)."""

OPTIONAL_DATA_COMMANDS = (
    ("kolmogorov", "ldiff.data.kolmogorov", "add_kolmogorov_command", "Kolmogorov flow (torch-cfd's pseudo-spectral solver)"),
    ("cylinder", "ldiff.data.cylinder", "add_cylinder_command", "cylinder wake (ldiff's projection solver)"),
)
"""Generators that add ``ldiff data`` sub-commands (name, module, hook, help line), wired
when their module has the hook; the module (torch and its solver) is imported only
when its own sub-command runs or ``ldiff data --help`` lists them."""


QUIET_WARNINGS = (r".*isinstance\(treespec, LeafSpec\)",)
"""Dependency warnings that are not the user's to act on, hidden: torch 2.13 deprecates
``LeafSpec``, which Lightning 2.6 calls once per trainer (a comparison would print it
once per pair)."""


class UsageError(ValueError):
    """A bad command line or config, reported like any other input error."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ldiff``; ``argv`` defaults to ``sys.argv[1:]``. Returns the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    try:
        if args and args[0] in LIGHTNING_COMMANDS:
            from ldiff.lit.cli import run

            run(args[0], None if argv is None else args)
        else:
            namespace = build_parser(*(args + [None, None])[:2]).parse_args(args)
            namespace.func(namespace)
    except Exception as error:
        message = input_error(error)
        if message is None:
            raise
        print(f"ldiff: error: {message}", file=sys.stderr)
        return 2
    return 0


def input_error(error: Exception) -> str | None:
    """The one-line message of an error in the user's input, or None for a bug: a
    ``ValueError`` or ``FileNotFoundError``, Lightning's ``MisconfigurationException``
    (a trainer setting), or an ``OSError`` naming a file (a file system that refuses a
    write the checks let through: read-only, full)."""
    if isinstance(error, (ValueError, FileNotFoundError)):
        return one_line(error)
    exceptions = sys.modules.get("lightning.fabric.utilities.exceptions")
    if exceptions is not None and isinstance(error, exceptions.MisconfigurationException):
        return one_line(error)
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or one_line(error)}"
    return None


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (whitespace runs collapsed)."""
    return " ".join(str(error).split()) or type(error).__name__


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of printing usage and exiting."""

    def error(self, message: str):
        command = self.prog.partition(" ")[2]  # "data grf" of "ldiff data grf"
        raise UsageError(f"{command}: {message}" if command else message)


def build_parser(command: str | None = None, sub_command: str | None = None) -> argparse.ArgumentParser:
    """The ``argparse`` parser of the non-Lightning commands: the full parser of
    ``command`` (its module imported; for ``data``, of ``sub_command``), a one-line
    entry for each of the others."""
    parser = _Parser(prog="ldiff", description="Diffusion priors for fluid fields and sparse reconstruction.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in LIGHTNING_COMMANDS:
        commands.add_parser(name, add_help=False, help=f"LightningCLI: see `ldiff {name} --help`")
    for name, (module, hook, help) in COMMANDS.items():
        if name != command:
            commands.add_parser(name, add_help=False, help=help)
        elif name == "data":
            _add_data_commands(commands, sub_command)
        else:
            getattr(importlib.import_module(module), hook)(commands)
    return parser


def _add_data_commands(commands: argparse._SubParsersAction, sub_command: str | None) -> None:
    from ldiff.data.commands import add_data_commands

    data_commands = add_data_commands(commands)
    for name, module_name, hook, help in OPTIONAL_DATA_COMMANDS:
        if importlib.util.find_spec(module_name) is None:
            continue
        if sub_command != name:
            data_commands.add_parser(name, add_help=False, help=help)
            continue
        add: Callable | None = getattr(importlib.import_module(module_name), hook, None)
        if add is not None:
            add(data_commands)


if __name__ == "__main__":
    sys.exit(main())
