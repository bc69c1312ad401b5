r"""Checkpoints: written atomically, read without unpickling code.

**Layout** (a Lightning checkpoint written by :class:`ldiff.lit.prior.ScorePrior`):

- ``state_dict``: ``net.*``, the averaged (EMA) weights, which are the prior used for
  validation and inference, and ``online.*``, the optimiser's weights, for exact resume;
- ``hyper_parameters``: plain data, ``net`` and ``schedule`` as ``class_path`` /
  ``init_args`` configs, plus ``lr``, ``weight_decay``, ``lr_schedule``, ``ema_decay``;
- ``normalizer``: the data normaliser's state, ``mean`` and ``std`` of shape (2,)
  (u, v) in physical units;
- Lightning's own state: ``epoch``, ``global_step``, ``optimizer_states``,
  ``lr_schedulers``, ``loops``, ``callbacks``.

**Reading safely.** A checkpoint is a pickle in a zip file, and unpickling runs code:
pickle's ``REDUCE`` opcode calls any importable callable with any arguments. Every read
here goes through ``torch.load(..., weights_only=True)``, whose restricted unpickler
accepts tensors, primitive containers and a few torch types and refuses any other
global before calling it; a refused file is reported as one ``ValueError`` naming it.
The network is then rebuilt from the ``class_path`` recorded in the hyperparameters,
imported only when the import gate allows it (:func:`ldiff.imports.resolve_class`), so a
file never chooses which code is imported.

Resume (``ldiff fit --ckpt_path``) is safe too. Lightning 2.6 reads the file twice:
``LightningCLI`` for the hyperparameters with ``weights_only=True``, and the trainer
through the strategy's ``CheckpointIO`` with ``weights_only=None``, which torch >= 2.6
takes as ``True`` unless the environment sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``.
:class:`SafeCheckpointIO` reads with ``weights_only=True`` whatever the caller or the
environment asks.

**Writing atomically.** Lightning's ``TorchCheckpointIO`` writes through an fsspec
transaction, which for a local path writes a file from ``tempfile.mkstemp`` (in the
system's temporary directory) and then ``shutil.move``\ s it: across file systems that is
a copy, so a job killed mid-write can leave a truncated ``last.ckpt``.
:class:`SafeCheckpointIO` writes to a temporary file beside the target and renames it
with ``os.replace``, atomic on POSIX: a reader sees the old file or the new one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import Tensor, nn

from ldiff.config import instantiate
from ldiff.diffusion.precond import preconditioned
from ldiff.diffusion.schedules import Schedule
from ldiff.files import atomic_write

PRIOR_PREFIX = "net."
"""Prefix of the averaged network's entries in ``state_dict``."""


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``torch.load(weights_only=True)`` only.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds pickled Python objects (refused, never run), or is
            not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for foreign or corrupt files
        raise ValueError(f"{path}: {_load_failure(error)}") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: not a checkpoint (holds a {type(checkpoint).__name__}, expected a dict)")
    return checkpoint


REFUSALS = (
    r"Unsupported global: (.+?) was not an allowed global",  # torch <= 2.12
    r"[Uu]nsupported (GLOBAL \S+) whose module \S+ is blocked",  # torch 2.13: os.system, subprocess, ...
)
"""torch's wordings for a pickled object that ``weights_only`` refused (group 1 names it)."""

UNSAFE_ADVICE = ("weights_only", "Check the documentation of torch.load")
"""Lines of torch's message that advise loading unrestricted; never shown to the user."""


def _load_failure(error: Exception) -> str:
    """One line on why ``torch.load(weights_only=True)`` failed; never torch's advice to
    retry with ``weights_only=False``."""
    message = str(error)
    for pattern in REFUSALS:
        found = re.search(pattern, message)
        if found:
            return f"refused: the checkpoint holds pickled Python objects ({found.group(1)}); ldiff loads weights only"
    found = re.search(r"WeightsUnpickler error:\s*(\S.*)", message)
    lines = [line.strip() for line in message.splitlines() if line.strip() and not any(a in line for a in UNSAFE_ADVICE)]
    reason = found.group(1) if found else f"{type(error).__name__}: {lines[0] if lines else 'weights-only load failed'}"
    return f"not a readable checkpoint ({reason})"


def check_state(model: nn.Module, state: dict[str, Tensor], where: str, prefix: str = PRIOR_PREFIX) -> None:
    """``ValueError`` naming the first parameter that is missing, unexpected or of the
    wrong shape in ``state`` for ``model``; names are shown with ``prefix`` (the keys of
    ``state`` come without it: ``net.`` for a prior's averaged network)."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise ValueError(f"{where}: parameter {prefix}{key} is missing, the model expects it")
        if tensor.numel() == 0:
            continue  # a buffer not sized yet takes the stored shape (GaussianPreconditioned's Gaussian)
        if state[key].shape != tensor.shape:
            raise ValueError(
                f"{where}: parameter {prefix}{key} has shape {tuple(state[key].shape)}, "
                f"the model expects {tuple(tensor.shape)}"
            )
    for key in state:
        if key not in expected:
            raise ValueError(f"{where}: parameter {prefix}{key} is not in the model")


def load_prior(
    path: str | os.PathLike, map_location: Any = "cpu"
) -> tuple[nn.Module, Schedule, dict[str, Tensor], dict[str, Any]]:
    """Rebuild a trained prior from a ``ScorePrior`` checkpoint, weights only.

    Args:
        path: the ``.ckpt`` file.
        map_location: where tensors go (``torch.load``'s argument).

    Returns:
        ``(net, schedule, normalizer, hparams)``: the epsilon network with the averaged
        (EMA) weights, in eval mode with gradients off for its parameters; the schedule it
        was trained with; the normaliser's state (``mean``, ``std``, shape (2,)); the
        hyperparameters (plain data).

    Raises:
        FileNotFoundError: no such file.
        ValueError: refused or unreadable file, missing entries, a class path outside
            ``ldiff``, or weights that do not fit the recorded architecture.
    """
    checkpoint = read_checkpoint(path, map_location)
    hparams = checkpoint.get("hyper_parameters")
    for key in ("state_dict", "normalizer"):
        if key not in checkpoint:
            raise ValueError(f"{path}: no '{key}' entry; not a ScorePrior checkpoint")
    if not isinstance(hparams, dict) or "net" not in hparams or "schedule" not in hparams:
        raise ValueError(f"{path}: hyper_parameters lack 'net' and 'schedule'; not a ScorePrior checkpoint")
    net = instantiate(hparams["net"], f"{path}: hyper_parameters.net", base=nn.Module)
    schedule = instantiate(hparams["schedule"], f"{path}: hyper_parameters.schedule", base=Schedule)
    try:
        net = preconditioned(net, schedule, hparams.get("precondition", False))
    except ValueError as error:
        raise ValueError(f"{path}: hyper_parameters.{error}") from None
    state = {
        key[len(PRIOR_PREFIX) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(PRIOR_PREFIX)
    }
    check_state(net, state, f"checkpoint {path}")
    try:
        net.load_state_dict(state)
    except RuntimeError as error:  # a stored Gaussian skip term of the wrong shape
        raise ValueError(f"checkpoint {path}: {str(error).splitlines()[-1].strip()}") from None
    if isinstance(map_location, (str, torch.device)):
        net.to(map_location)
    return net.eval().requires_grad_(False), schedule, checkpoint["normalizer"], hparams


def export_prior(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Write a checkpoint holding only what :func:`load_prior` reads: the averaged
    weights (``net.*``), the hyperparameters, the normaliser and the training position
    (``epoch``, ``global_step``); no optimiser state and no raw weights, about a quarter
    of a training checkpoint. Checked by loading it back; written atomically."""
    checkpoint = read_checkpoint(source)
    load_prior(source)  # refuse anything load_prior would refuse, naming the source
    slim = {
        "state_dict": {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(PRIOR_PREFIX)},
        "hyper_parameters": checkpoint["hyper_parameters"],
        "normalizer": checkpoint["normalizer"],
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
    }
    target = Path(target)
    SafeCheckpointIO().save_checkpoint(slim, target)
    load_prior(target)
    return target


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that writes atomically and reads weights only (see the
    module docstring). Local paths only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise ValueError(f"{path}: SafeCheckpointIO takes no storage_options")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return read_checkpoint(path, map_location)
