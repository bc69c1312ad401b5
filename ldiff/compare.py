"""``ldiff compare``: every guidance strategy x every observation operator, one command.

A compare config names one prior checkpoint, a store of held-out trajectories, the
observation noise, the sampler settings, the operators (default: subsampling 2, 4, 8,
16) and the strategies (each by ``class_path``); optionally the Gaussian baseline, the
exact posterior under a stationary Gaussian prior fitted to the training store. For each
(strategy, operator) pair it runs ``trainer.predict`` of the
:class:`~ldiff.lit.inference.InferenceModule`, writes the merged prediction file and
scores it (:func:`ldiff.evaluate.evaluate`). The run directory then holds:

- ``predictions/<strategy>__<operator>.nc``: truth, observations, K reconstructions,
  regimes and per-step diagnostics, with the metrics as ``metric_*`` attributes;
- ``tables/summary.csv`` / ``.json``: one row per pair; ``summary.json``;
- ``figures/vorticity.png`` (truth, observations and one reconstruction per pair) and
  ``figures/diagnostics.png`` (the likelihood/prior ratio and the gamma share over t);
- ``provenance.json`` and ``wandb/`` (offline unless the config says ``online``).

Config keys (YAML, parsed safely; unknown keys are refused by name)::

    checkpoint: checkpoints/kolmogorov/prior.ckpt
    data: {test: data/kolmogorov-test.nc, train: data/kolmogorov-train.nc, items: 8, batch_size: 8}
    std: 0.1
    samples: 4
    sampler: {steps: 64, corrections: 0, tau: 1.0}
    seed: 0
    guard: {data_range: 5.0, diverge_factor: 10.0, flat_fraction: 0.2}
    operators: {sub2: {class_path: ldiff.observe.Subsample, init_args: {stride: 2}}, ...}
    strategies: {dps-sum: {class_path: ldiff.guidance.dps_sum.DPSSum, init_args: {gamma: 0.01}}, ...}
    baseline: true            # or a GaussianPrior file (GaussianPrior.save)
    output: runs/compare
    wandb: {mode: offline, project: ldiff}
    trainer: {accelerator: cpu, devices: 1}
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import xarray as xr
from torch.utils.data import DataLoader

from ldiff.config import check_keys, instantiate, load_yaml, select
from ldiff.data.items import IndexedFields
from ldiff.diffusion.sampler import PredictorCorrector
from ldiff.data.module import FieldDataModule
from ldiff.guidance.exact_gaussian import ExactGaussian
from ldiff.lit.checkpoint import load_prior
from ldiff.lit.inference import InferenceModule
from ldiff.nets.gaussian import GaussianPrior
from ldiff.tracking import RunLog, provenance, write_json
from ldiff.writers import ReconstructionWriter

DEFAULT_OPERATORS = {f"sub{s}": {"class_path": "ldiff.observe.Subsample", "init_args": {"stride": s}} for s in (2, 4, 8, 16)}
KEYS = {"checkpoint", "data", "std", "samples", "sampler", "seed", "guard", "operators", "strategies", "baseline", "output", "wandb", "trainer"}
DATA_KEYS = {"test", "train", "items", "batch_size", "condition"}
SAMPLER_KEYS = {"steps", "corrections", "tau"}
GUARD_KEYS = {"data_range", "diverge_factor", "flat_fraction"}
TRAINER_KEYS = {"accelerator", "devices", "precision"}
COLUMNS = ("strategy", "operator", "n_obs", "rmse", "rmse_mean", "vorticity_corr", "vorticity_corr_mean", "residual_ratio", "energy_ratio", "spectrum_log_error", "crps", "spread_skill", "balanced", "flat", "diverged", "seconds")


def read_config(path: str) -> dict[str, Any]:
    """Load and check a compare config; returns it with defaults filled in."""
    cfg = load_yaml(path)
    check_keys(cfg, KEYS, str(path))
    for key in ("checkpoint", "data", "strategies"):
        if key not in cfg:
            raise ValueError(f"{path}: missing key '{key}'")
    check_keys(cfg["data"], DATA_KEYS, f"{path}: data")
    check_keys(cfg.get("sampler") or {}, SAMPLER_KEYS, f"{path}: sampler")
    check_keys(cfg.get("guard") or {}, GUARD_KEYS, f"{path}: guard")
    check_keys(cfg.get("trainer") or {}, TRAINER_KEYS, f"{path}: trainer")
    check_keys(cfg.get("wandb") or {}, {"mode", "project"}, f"{path}: wandb")
    if "test" not in cfg["data"]:
        raise ValueError(f"{path}: data: missing key 'test'")
    for key in ("strategies", "operators"):
        if key in cfg and (not isinstance(cfg[key], dict) or not cfg[key]):
            raise ValueError(f"{path}: {key}: need a non-empty mapping of name -> class_path config")
    if int(cfg["data"].get("items", 8)) < 1:
        raise ValueError(f"{path}: data.items: need at least 1, got {cfg['data']['items']}")
    cfg.setdefault("operators", DEFAULT_OPERATORS)
    cfg.setdefault("output", "runs/compare")
    return cfg


def gaussian_baseline(baseline: bool | str, train_path: str | None, window: int, normalizer: dict, schedule) -> ExactGaussian | None:
    """The exact-Gaussian strategy: ``baseline`` is a saved :class:`GaussianPrior` file,
    or ``true`` to fit one to every window of the train store (normalised units)."""
    if isinstance(baseline, str):
        return ExactGaussian(GaussianPrior.load(baseline, schedule))
    if not baseline or train_path is None:
        return None
    data = FieldDataModule(train_path, window=window, split=(0.0, 0.0, 1.0))
    data.normalizer.load_state_dict(normalizer)
    data.setup()
    return ExactGaussian(GaussianPrior.fit(data.test_windows()["x"], schedule))


QUICK = {"items": 1, "samples": 2, "steps": 4}
"""The test mode (``--quick``): the same sweep with one item, two samples, four steps."""


def run(config_path: str, output: str | None = None, quick: bool = False, progress: bool = True, only: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the comparison of ``config_path`` (into ``output`` if given; in test mode,
    :data:`QUICK`, if ``quick``; only the strategies named in ``only``, if given); returns
    the summary rows."""
    cfg = read_config(config_path)
    cfg["strategies"] = select(cfg["strategies"], only, config_path)
    # one trainer per (strategy, operator): keep Lightning's per-trainer banners off the terminal
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=DeprecationWarning)
    if output is not None:
        cfg["output"] = output
    if quick:
        cfg["data"]["items"] = QUICK["items"]
        cfg["samples"] = min(int(cfg.get("samples", 1)), QUICK["samples"])
        cfg["sampler"] = {**(cfg.get("sampler") or {}), "steps": QUICK["steps"]}
    out_dir = Path(cfg["output"])
    net, schedule, normalizer, hparams = load_prior(cfg["checkpoint"])
    window = net.in_channels // 2 if hasattr(net, "in_channels") else 1
    data_cfg = cfg["data"]
    data = FieldDataModule(data_cfg["test"], window=window, split=(0.0, 0.0, 1.0), condition=tuple(data_cfg.get("condition", ())))
    data.normalizer.load_state_dict(normalizer)
    data.setup()
    windows = data.test_windows()
    pick = np.unique(np.linspace(0, len(windows["x"]) - 1, min(int(data_cfg.get("items", 8)), len(windows["x"]))).round().astype(int))
    fields = windows["x"][pick]
    cond = windows["cond"][pick] if "cond" in windows else None
    attrs = data.attrs
    dx, dy, periodic = float(attrs["dx"]), float(attrs["dy"]), bool(int(attrs["periodic"]))

    strategies = {name: instantiate(spec, f"{config_path}: strategies.{name}") for name, spec in cfg["strategies"].items()}
    baseline = gaussian_baseline(cfg.get("baseline", False), data_cfg.get("train"), window, normalizer, schedule)
    if baseline is not None:
        strategies["exact-gaussian"] = baseline
    operators = {name: instantiate(spec, f"{config_path}: operators.{name}") for name, spec in cfg["operators"].items()}
    std = float(cfg.get("std", 0.1))
    sampler = {"steps": 64, "corrections": 0, "tau": 1.0, **(cfg.get("sampler") or {})}
    guard = cfg.get("guard") or {}
    # check every setting before the run directory and the W&B run are created
    try:
        InferenceModule(next(iter(strategies.values())), next(iter(operators.values())), std=std, samples=int(cfg.get("samples", 1)), **sampler, **guard).attach_prior(net, schedule)
        PredictorCorrector(schedule, **sampler)
    except ValueError as error:
        raise ValueError(f"{config_path}: {error}") from None
    trainer_cfg = {"accelerator": "cpu", "devices": 1, **(cfg.get("trainer") or {})}
    wandb_cfg = {"mode": "offline", "project": "ldiff", **(cfg.get("wandb") or {})}

    log = RunLog(out_dir, project=wandb_cfg["project"], mode=wandb_cfg["mode"], config=cfg, name=out_dir.name)
    write_json(out_dir / "provenance.json", provenance(cfg, {"checkpoint": cfg["checkpoint"], "test_data": data_cfg["test"], "train_data": data_cfg.get("train")}))
    rows: list[dict[str, Any]] = []
    results: dict[tuple[str, str], xr.Dataset] = {}
    pairs = [(s, o) for o in operators for s in strategies]
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("compare", total=len(pairs))
        for strategy_name, op_name in pairs:
            bar.update(task, description=f"{strategy_name} @ {op_name}")
            op = operators[op_name]
            path = out_dir / "predictions" / f"{strategy_name}__{op_name}.nc"
            module = InferenceModule(strategies[strategy_name], op, std=std, samples=int(cfg.get("samples", 1)), seed=int(cfg.get("seed", 0)), **sampler, **guard)
            module.attach_prior(net, schedule, normalizer)
            module.grid = (dx, dy, periodic)
            writer = ReconstructionWriter(str(path), attrs={"strategy": strategy_name, "operator": op_name, "strategy_repr": repr(strategies[strategy_name]), "operator_repr": repr(op), "std": std})
            trainer = L.Trainer(**trainer_cfg, logger=False, callbacks=[writer], enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
            start = time.perf_counter()
            trainer.predict(module, DataLoader(IndexedFields(fields, cond), batch_size=int(data_cfg.get("batch_size", 8))), return_predictions=False)
            seconds = time.perf_counter() - start
            with xr.open_dataset(path, engine="h5netcdf") as ds:
                ds = ds.load()
            results[(strategy_name, op_name)] = ds
            metrics = {key[len("metric_"):]: float(value) for key, value in ds.attrs.items() if key.startswith("metric_")}
            row = {"strategy": strategy_name, "operator": op_name, **{c: metrics.get(c, math.nan) for c in COLUMNS[2:-1]}, "seconds": round(seconds, 2)}
            for name in ("n_obs", "balanced", "flat", "diverged"):
                row[name] = int(metrics[name])
            rows.append(row)
            bar.advance(task)

    log.table("summary", rows)
    from ldiff.figures import diagnostics_figure, vorticity_figure

    log.figure("vorticity", vorticity_figure(results, list(strategies), operators, normalizer, dx, dy, periodic))
    log.figure("diagnostics", diagnostics_figure(results, list(strategies), list(operators)))
    log.summary({f"{r['strategy']}/{r['operator']}/{k}": r[k] for r in rows for k in ("rmse_mean", "vorticity_corr_mean", "residual_ratio", "diverged", "flat")})
    log.finish()
    return rows
