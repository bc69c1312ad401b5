"""Run directories, provenance and Weights & Biases logging with a local mirror.

Every run directory holds what the run logged, readable without W&B:

- ``provenance.json``: the resolved config, git commit and whether the tree was dirty,
  package versions, host, device, and SHA-256 checksums of the data and checkpoint;
- ``tables/<name>.csv`` and ``tables/<name>.json``: every table logged;
- ``figures/<name>.png``: every figure logged;
- ``wandb/``: the W&B run (offline by default: no account, no network; set
  ``mode: online`` after ``wandb login`` to sync to a dashboard).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ldiff.files import atomic_write

PACKAGES = ("ldiff", "torch", "lightning", "torchmetrics", "wandb", "numpy", "xarray", "h5netcdf")


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def git_state(cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """The commit of the source tree and whether it has uncommitted changes."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def provenance(config: dict[str, Any], files: dict[str, str | os.PathLike]) -> dict[str, Any]:
    """Everything needed to know how a run was made (see the module docstring)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "config": config,
        "git": git_state(),
        "packages": versions,
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
        "checksums": {name: sha256(path) for name, path in files.items() if path and Path(path).is_file()},
    }


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2, default=str)))


class RunLog:
    """Log tables, figures and curves to W&B and mirror them into ``directory``.

    Args:
        directory: the run directory.
        project: W&B project name.
        mode: ``offline`` (default: writes ``directory/wandb/offline-run-*``),
            ``online`` or ``disabled``.
        config: the resolved config, logged to W&B.
        name: the W&B run name.
        group, job_type: the W&B group and job type (a compare run's group holds one
            run per (strategy, operator) and this summary run).
        silent: keep W&B's own messages off the terminal.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        project: str = "ldiff",
        mode: str = "offline",
        config: dict | None = None,
        name: str | None = None,
        group: str | None = None,
        job_type: str | None = None,
        silent: bool = False,
    ):
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"wandb mode must be offline, online or disabled, got {mode!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.run = None
        if mode != "disabled":
            import wandb

            self.run = wandb.init(
                project=project, mode=mode, dir=str(self.directory), config=config or {}, name=name,
                group=group, job_type=job_type, reinit="create_new", settings=wandb.Settings(silent=silent),
            )

    def table(self, name: str, rows: list[dict[str, Any]], wandb: bool = True) -> Path:
        """Save a table of rows (dicts; a key missing from a row is left empty) and log it to W&B unless
        ``wandb`` is False (data W&B already holds as series); returns the CSV path."""
        columns = list(dict.fromkeys(key for row in rows for key in row))  # every key, first-seen order
        path = self.directory / "tables" / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
        write_json(path.with_suffix(".json"), rows)
        if self.run is not None and wandb:
            from wandb import Table

            self.run.log({name: Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])})
        return path

    def figure(self, name: str, figure) -> Path:
        """Log a matplotlib figure; saved as ``figures/<name>.png``."""
        path = self.directory / "figures" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110, bbox_inches="tight")
        if self.run is not None:
            import wandb

            self.run.log({name: wandb.Image(str(path))})
        return path

    def summary(self, values: dict[str, Any]) -> None:
        """Set W&B summary values and mirror them in ``summary.json``."""
        write_json(self.directory / "summary.json", values)
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def log_run(loggers, experiment: dict[str, Any], metrics: dict[str, float], series: dict[str, torch.Tensor], figures: dict[str, Any]) -> None:
    """Log one reconstruction run to Lightning loggers (W&B, CSV, ...).

    - ``experiment`` as hyperparameters (the W&B run's config);
    - ``series`` (name -> (E,), one value per sampler evaluation, ``t`` included) as
      ``diag/<name>`` at logger steps 0 .. E - 1 (on W&B, plotted against ``diag/t``);
    - ``metrics`` as ``predict/<name>`` at step E;
    - ``figures`` (matplotlib) as images ``predict/<name>`` on a ``WandbLogger``; the
      figures are closed afterwards.
    """
    from lightning.pytorch.loggers import WandbLogger

    steps = len(series["t"]) if "t" in series else 0
    for logger in loggers:
        logger.log_hyperparams(experiment)
        if isinstance(logger, WandbLogger) and steps:
            logger.experiment.define_metric("diag/*", step_metric="diag/t")
        for i in range(steps):
            logger.log_metrics({f"diag/{name}": float(value[i]) for name, value in series.items()}, step=i)
        logger.log_metrics({f"predict/{name}": float(value) for name, value in metrics.items()}, step=steps)
        if isinstance(logger, WandbLogger):
            for name, figure in figures.items():
                logger.log_image(key=f"predict/{name}", images=[figure])
    if figures:
        import matplotlib.pyplot as plt

        for figure in figures.values():
            plt.close(figure)


def finish_wandb(loggers) -> None:
    """Finish the W&B run of every ``WandbLogger`` in ``loggers`` (Lightning leaves them
    open until the process exits)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()


def active_wandb_run():
    """The process's current W&B run (``wandb.run``), or None (also when wandb was never
    imported)."""
    wandb = sys.modules.get("wandb")
    return None if wandb is None else wandb.run


def finish_wandb_run(since=None) -> None:
    """Finish the current W&B run if it started after ``since`` (an earlier
    :func:`active_wandb_run`). Lightning's ``WandbLogger`` reuses a run still in progress,
    so a command that left its run open would log into the next command's."""
    run = active_wandb_run()
    if run is not None and run is not since:
        run.finish()
