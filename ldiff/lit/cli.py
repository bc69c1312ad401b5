"""The Lightning commands of ``ldiff``: ``fit``, ``validate``, ``test`` and ``predict``
run through ``LightningCLI`` (:class:`LdiffCLI`).

The YAML chooses the network and the schedule by ``class_path``, and every key can be
overridden on the command line. Configs are YAML read with a safe loader, so a config
never runs code (``!!python`` tags are refused); every class path passes ldiff's import
gate (:mod:`ldiff.imports`, installed into jsonargparse before parsing); checkpoints are
read weights-only (:mod:`ldiff.lit.checkpoint`), the resume file included.

Checkpoints go to ``<trainer.default_root_dir>/checkpoints/``: one every
``checkpoint.every_n_epochs`` epochs and ``last.ckpt``, written atomically. A fresh fit
into a root that already holds checkpoints is refused; a resume re-saves in place.

This module imports Lightning; :mod:`ldiff.cli` imports it only for these commands.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from jsonargparse import ArgumentError
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from ldiff import imports
from ldiff.cli import LIGHTNING_COMMANDS, UsageError, one_line
from ldiff.data.module import FieldDataModule
from ldiff.files import check_output
from ldiff.lit.checkpoint import SafeCheckpointIO, read_checkpoint
from ldiff.tracking import active_wandb_run, finish_wandb_run


def run(command: str, args: Sequence[str] | None) -> None:
    """Run Lightning command ``command`` on ``args`` (``sys.argv[1:]`` when None)."""
    if command == "predict":
        refuse_predict_ckpt_path(sys.argv[1:] if args is None else args)
    module, _, name = LIGHTNING_COMMANDS[command].rpartition(".")
    model_class = getattr(__import__(module, fromlist=[name]), name)
    # LightningCLI reads sys.argv itself when given None (and warns when given both)
    lightning_cli(model_class, command, args)


def refuse_predict_ckpt_path(args: list[str]) -> None:
    """``predict`` takes its prior as ``--model.checkpoint``: Lightning's ``--ckpt_path``
    would restore a checkpoint *into* the InferenceModule, which has no weights of its
    own, so it is refused with the right spelling."""
    for arg in args:
        if arg == "--ckpt_path" or arg.startswith("--ckpt_path="):
            raise UsageError("predict: name the prior with --model.checkpoint PRIOR.ckpt (--ckpt_path would restore a checkpoint into the InferenceModule)")


def lightning_cli(model_class: type, command: str, args: Sequence[str] | None) -> LdiffCLI:
    """Run LightningCLI's sub-command ``command`` (``fit``, ``validate``, ``test``,
    ``predict``) for ``model_class`` on :class:`FieldDataModule`, parsing ``args``
    (``sys.argv[1:]`` when None, starting with ``command``); returns the finished CLI,
    its W&B runs finished (written out whole, so the offline run files are complete)."""
    before = active_wandb_run()
    try:
        return LdiffCLI(model_class, [command], args)
    finally:  # also after an error, so no later run in this process reuses a half-done one
        finish_wandb_run(since=before)


class LdiffCLI(LightningCLI):
    """LightningCLI for ``ldiff``: the sub-commands ``commands`` of ``model_class`` on
    :class:`FieldDataModule`, a ``checkpoint`` group (``ModelCheckpoint``) whose directory
    follows ``trainer.default_root_dir``, :class:`SafeCheckpointIO` for every checkpoint,
    and parse errors raised as :class:`UsageError` rather than printed."""

    def __init__(self, model_class: type, commands: Sequence[str], args: Sequence[str] | None):
        self.commands = tuple(commands)
        strict = {"exit_on_error": False}
        super().__init__(
            model_class,
            FieldDataModule,
            args=args,
            auto_configure_optimizers=False,
            # fit saves its resolved config beside the checkpoints; predict has no log
            # directory (logger off), so it would write config.yaml into the working dir
            save_config_callback=None if "predict" in self.commands else SaveConfigCallback,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={**strict, **{name: strict for name in self.commands}},
        )

    def subcommands(self) -> dict[str, set[str]]:
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in self.commands}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=checkpoint_dir)
        # a resumed run overwrites the files it re-saves, so last.ckpt stays the newest
        # (a fresh run into a used root is refused: see refuse_used_root)
        parser.set_defaults({"checkpoint.enable_version_counter": False})

    def parse_arguments(self, parser: LightningArgumentParser, args: Sequence[str] | None) -> None:
        imports.install()
        shorten_known_subclasses()
        refuse_empty_configs(sys.argv[1:] if args is None else args)
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            raise refusal_or(error) from None
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if ckpt_path and Path(ckpt_path).is_file():
            # refuse a pickle before LightningCLI reads the file's hyperparameters
            checkpoint = read_checkpoint(ckpt_path)
            missing = [key for key in ("pytorch-lightning_version", "state_dict") if key not in checkpoint]
            if missing:
                raise UsageError(f"{ckpt_path}: not a training checkpoint written by `ldiff fit` (no '{missing[0]}' entry)")
        if self.config.subcommand == "fit":  # checkpoints go there: refuse a bad root before training
            directory = Path(checkpoint_dir(self.config["fit"]["trainer"].get("default_root_dir")))
            check_output(directory / "last.ckpt")
            refuse_used_root(directory, ckpt_path)

    def _parse_ckpt_path(self) -> None:
        """LightningCLI applies a checkpoint's hyperparameters to the config (through the
        import gate, like any other value); a failure names the checkpoint file."""
        try:
            super()._parse_ckpt_path()
        except ArgumentError as error:
            ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
            raise refusal_or(error, f"{ckpt_path}: hyper_parameters") from None

    def predict(self, model, datamodule=None, return_predictions=None, ckpt_path=None, **kwargs) -> None:
        """``trainer.predict`` of the InferenceModule on the data's windows to reconstruct
        (the module takes the prior's normalisation and the grid from the DataModule in
        its ``setup``); predictions go to the writer, not into memory."""
        self.trainer.predict(model, datamodule=datamodule, return_predictions=False)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        plugins = self.config_init[self.subcommand].trainer.plugins
        plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [] if plugins is None else [plugins]
        try:
            return super().instantiate_trainer(plugins=[*plugins, SafeCheckpointIO()], **kwargs)
        except (TypeError, ValueError) as error:  # settings Lightning rejects: devices abc, ...
            raise UsageError(f"trainer: {one_line(error)}") from None


def shorten_known_subclasses() -> None:
    """``--help`` lists each class argument's "known subclasses"; for ``model.net`` (an
    ``nn.Module``) that is every module torch, torchmetrics and the rest define, some
    hundred lines. For such a list show ldiff's classes and the packages the user
    allowed (:mod:`ldiff.imports`), and count the others (jsonargparse asks with
    ``closed_types=False`` only for that list)."""
    from jsonargparse import _typehints

    original = getattr(_typehints.get_all_subclass_paths, "__wrapped__", _typehints.get_all_subclass_paths)
    own = tuple(f"{root}." for root in imports.allowed_roots() if root not in ("torch", "lightning"))

    def known(cls, include_abstract=False, closed_types=True):
        paths = original(cls, include_abstract=include_abstract, closed_types=closed_types)
        if closed_types is False and any(path.startswith("torch.nn.") for path in paths):
            shown = [path for path in paths if path.startswith(own)]
            paths = [*shown, f"and {len(paths) - len(shown)} classes of torch and other packages"]
        return paths

    known.__wrapped__ = original
    _typehints.get_all_subclass_paths = known


def refuse_empty_configs(args: Sequence[str]) -> None:
    """A ``--config`` file must hold a mapping (jsonargparse's own message for an empty
    one, "Unexpected config:", names neither the file nor what it expected)."""
    args = list(args)
    for i, arg in enumerate(args):
        key, eq, value = arg.partition("=")
        value = value if eq else (args[i + 1] if i + 1 < len(args) else "")
        if key in ("--config", "-c") and Path(value).is_file():
            try:
                loaded = yaml.safe_load(Path(value).read_text())
            except yaml.YAMLError:
                continue  # jsonargparse reports the syntax error with the file name
            if not isinstance(loaded, dict):
                got = "it is empty" if loaded is None else f"got a {type(loaded).__name__}"
                raise UsageError(f"{value}: a config must be a mapping of keys (trainer, model, data, ...); {got}")


def refuse_used_root(directory: Path, ckpt_path: str | None) -> None:
    """A fit that resumes nothing must not write into ``directory`` when it holds an
    earlier run's checkpoints: its files would mix with the old ones, and ``last.ckpt``,
    which the README's resume and predict commands read, would be the old run's until
    the first save. A resume (any ``--ckpt_path``: ``last``, a file of this root, SLURM's
    ``hpc_ckpt_*.ckpt``) writes there in place."""
    held = sorted(path.name for path in directory.glob("*.ckpt")) if directory.is_dir() else []
    if held and not ckpt_path:
        name = "last.ckpt" if "last.ckpt" in held else held[0]
        raise UsageError(
            f"{directory}: holds the checkpoints of an earlier run ({name}); resume it with "
            f"--ckpt_path {directory / name}, or give another --trainer.default_root_dir"
        )


def refusal_or(error: ArgumentError, where: str | None = None) -> UsageError:
    """The parse error to report: the import gate's refusal, in ldiff's words and under
    the key jsonargparse was parsing (it folds the refusal into a long message listing
    every type it tried), or else ``error`` itself; ``where`` (a file) goes first."""
    message = str(error)
    if imports.refusals:
        keys = re.findall(r'Parser key "([^"]+)"', message)
        try:
            imports.check_import(imports.refusals[0], ": ".join(filter(None, [where, keys[-1] if keys else None])))
        except imports.ImportRefused as refusal:
            return UsageError(str(refusal))
    return UsageError(f"{where}: {message}" if where else message)



def checkpoint_dir(default_root_dir: str | None) -> str:
    """Where checkpoints go: ``<default_root_dir>/checkpoints`` (the working directory
    when ``default_root_dir`` is unset, as for Lightning's trainer)."""
    return str(Path(default_root_dir or ".") / "checkpoints")
