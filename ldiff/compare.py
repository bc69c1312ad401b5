"""``ldiff compare``: every guidance strategy x every observation operator, one command.

A compare config is a predict config with a sweep: its ``model`` and ``data`` sections
are the arguments of :class:`~ldiff.lit.inference.InferenceModule` and
:class:`~ldiff.data.module.FieldDataModule` exactly as ``ldiff predict`` takes them, and
``strategies`` and ``operators`` name the classes to sweep (each by ``class_path``).
Optionally ``baseline`` adds the exact posterior under a Gaussian prior (mean field, stationary covariance):
its mean (``exact-gaussian``) and, with ``baseline_sample: true``, also exact posterior
samples by perturb-and-solve (``exact-gaussian-sample``), the row to set one diffusion
sample against (a posterior mean fits tighter than any sample). For each (strategy, operator) pair the comparison runs the same
path as ``ldiff predict``: ``trainer.predict`` of an InferenceModule built from the
config, a :class:`~ldiff.writers.ReconstructionWriter`, and the module's metrics, which
stay in memory. The run directory then holds:

- ``predictions/<strategy>__<operator>.nc``: the reconstruction files (physical units,
  coordinates, settings and metrics as attributes; :mod:`ldiff.writers`);
- ``tables/summary.csv`` / ``.json``: one row per pair, ``summary.json``;
- ``tables/diagnostics.csv`` / ``.json``: the per-step diagnostic series of every pair;
- ``figures/vorticity.png`` and ``figures/diagnostics.png``;
- ``provenance.json`` and ``wandb/``: one W&B run per pair, all in one group named after
  the compare run (``job_type`` ``compare``, tags: strategy, operator), each with its
  settings, metrics and diagnostics series against t, plus a ``summary`` run in the same
  group with the table and the figures. Offline unless ``wandb.mode`` is ``online``.

Config keys (YAML, parsed safely; unknown keys are refused by name)::

    model:                     # InferenceModule arguments, as in ldiff predict
      checkpoint: checkpoints/kolmogorov/prior.ckpt
      std: 0.1
      samples: 4
      steps: 64                # and corrections, tau, seed, data_range, ...
    data:                      # FieldDataModule arguments, as in ldiff predict
      path: data/kolmogorov-test.nc
      split: [0.0, 0.0, 1.0]   # the default here: every trajectory is held out
      items: 8                 # evenly spaced windows
      batch_size: 8            # window: the prior's, by default
    operators: {sub2: {class_path: ldiff.observe.Subsample, init_args: {stride: 2}}, ...}
    strategies: {dps-sum: {class_path: ldiff.guidance.dps_sum.DPSSum, init_args: {gamma: 0.01}}, ...}
    baseline: checkpoints/kolmogorov/gaussian.pt    # a GaussianPrior file, or {fit: TRAIN_STORE}
    baseline_sample: false     # true: also the exact Gaussian posterior's samples
    output: runs/compare
    wandb: {mode: offline, project: ldiff}
    trainer: {accelerator: cpu, devices: 1}

On the command line, ``--set KEY=VALUE`` (repeatable) overrides one value for one run,
a dotted key and a YAML value (``--set model.samples=8 --set baseline=null``;
:func:`ldiff.config.apply_overrides`), checked like the file's own keys; the run's
``provenance.json`` records the config as run.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException

from ldiff.config import check_keys, check_types, instantiate, load_config, select
from ldiff.data.module import FieldDataModule
from ldiff.guidance.base import Strategy
from ldiff.guidance.exact_gaussian import ExactGaussian
from ldiff.lit.checkpoint import load_prior
from ldiff.diffusion.precond import skip_gaussian, standardization
from ldiff.lit.inference import InferenceModule
from ldiff.nets.gaussian import GaussianPrior
from ldiff.observe import Operator
from ldiff.tracking import RunLog, finish_wandb, provenance, write_json
from ldiff.writers import ReconstructionWriter

DEFAULT_OPERATORS = {f"sub{s}": {"class_path": "ldiff.observe.Subsample", "init_args": {"stride": s}} for s in (2, 4, 8, 16)}
KEYS = {"model", "data", "operators", "strategies", "baseline", "baseline_sample", "output", "wandb", "trainer"}
MODEL_KEYS = set(inspect.signature(InferenceModule).parameters) - {"strategy", "operator", "grid"}
DATA_KEYS = set(inspect.signature(FieldDataModule).parameters) - {"random_window", "shift"}
TRAINER_KEYS = {"accelerator", "devices", "precision", "strategy", "num_nodes"}
WANDB_KEYS = {"mode", "project"}
COLUMNS = (
    "strategy", "operator", "n_obs", "rmse", "rmse_mean", "rel_l2", "rel_l2_mean", "vorticity_corr", "vorticity_corr_mean",
    "residual_ratio", "energy_ratio", "energy_ratio_mean", "spectrum_log_error", "crps", "spread_skill", "divergence",
    "divergence_truth", "strouhal", "strouhal_truth", "strouhal_error", "strouhal_error_mean", "balanced", "flat", "diverged",
    "seconds",
)  # fmt: skip
"""The summary table's columns: ``rel_l2`` is the user's normalised RMSE; the Strouhal
columns are NaN for data that are not cylinder-wake windows (see
:class:`~ldiff.evaluate.ReconstructionMetrics`)."""


def read_config(path: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Load and check a compare config; returns it with defaults filled in."""
    cfg = load_config(path, overrides)
    check_keys(cfg, KEYS, str(path))
    for key in ("model", "data", "strategies"):
        if key not in cfg:
            raise ValueError(f"{path}: missing key '{key}'")
    for key, allowed in (("model", MODEL_KEYS), ("data", DATA_KEYS), ("trainer", TRAINER_KEYS), ("wandb", WANDB_KEYS)):
        section = cfg.get(key) or {}
        if not isinstance(section, dict):
            raise ValueError(f"{path}: {key}: need a mapping, got {section!r}")
        check_keys(section, allowed, f"{path}: {key}")
    check_types(cfg["model"], InferenceModule, f"{path}: model")
    check_types(cfg["data"], FieldDataModule, f"{path}: data")
    if not isinstance(cfg["model"].get("checkpoint"), str):
        raise ValueError(f"{path}: model.checkpoint: need the path of a prior checkpoint, got {cfg['model'].get('checkpoint')!r}")
    if "path" not in cfg["data"]:
        raise ValueError(f"{path}: data: missing key 'path'")
    for key in ("strategies", "operators"):
        if key in cfg and (not isinstance(cfg[key], dict) or not cfg[key]):
            raise ValueError(f"{path}: {key}: need a non-empty mapping of name -> class_path config")
    baseline = cfg.get("baseline")
    if not (baseline is None or isinstance(baseline, str) or (isinstance(baseline, dict) and set(baseline) == {"fit"})):
        raise ValueError(f"{path}: baseline: need a GaussianPrior file or {{fit: TRAIN_STORE}}, got {baseline!r}")
    if not isinstance(cfg.get("baseline_sample", False), bool):
        raise ValueError(f"{path}: baseline_sample: need true or false, got {cfg['baseline_sample']!r}")
    if cfg.get("baseline_sample") and baseline is None:
        raise ValueError(f"{path}: baseline_sample: needs a baseline")
    cfg.setdefault("operators", DEFAULT_OPERATORS)
    cfg.setdefault("output", "runs/compare")
    cfg["data"] = {"split": [0.0, 0.0, 1.0], **cfg["data"]}
    return cfg


def gaussian_baseline(baseline: str | dict | None, window: int, normalizer: dict, schedule, net=None) -> ExactGaussian | None:
    """The exact-Gaussian strategy: ``baseline`` is a saved :class:`GaussianPrior` file,
    ``{fit: STORE}`` to fit one to every window of a store (normalised units), or
    ``prior``: the Gaussian of the diffusion prior ``net``'s own skip term, in the prior's
    coordinates (for a ``gaussian-node`` prior the Gaussian x = m + S z)."""
    if baseline is None:
        return None
    if baseline == "prior":
        gaussian = skip_gaussian(net)
        if gaussian is None:
            raise ValueError(f"baseline: prior needs a prior with a Gaussian skip term (precondition gaussian or gaussian-node), not a {type(net).__name__}")
        return ExactGaussian(GaussianPrior(schedule, *gaussian), prior_coordinates=standardization(net) is not None)
    if isinstance(baseline, str):
        return ExactGaussian(GaussianPrior.load(baseline, schedule))
    data = FieldDataModule(baseline["fit"], window=window, split=(0.0, 0.0, 1.0))
    data.normalizer.load_state_dict(normalizer)
    data.setup()
    return ExactGaussian(GaussianPrior.fit(data.test_windows()["x"], schedule))


QUICK = {"items": 1, "samples": 2, "steps": 4}
"""The test mode (``--quick``): the same sweep with one item, two samples, four steps."""


def run(
    config_path: str,
    output: str | None = None,
    quick: bool = False,
    progress: bool = True,
    only: list[str] | None = None,
    overrides: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Run the comparison of ``config_path`` (into ``output`` if given; in test mode,
    :data:`QUICK`, if ``quick``; only the strategies named in ``only``, if given); returns
    the summary rows."""
    cfg = read_config(config_path, overrides)
    cfg["strategies"] = select(cfg["strategies"], only, config_path)
    if output is not None:
        cfg["output"] = output
    model_cfg, data_cfg = dict(cfg["model"]), dict(cfg["data"])
    if quick:
        data_cfg["items"] = QUICK["items"]
        model_cfg["samples"] = min(int(model_cfg.get("samples", 1)), QUICK["samples"])
        model_cfg["steps"] = QUICK["steps"]
    net, schedule, normalizer, _ = load_prior(model_cfg["checkpoint"])
    data_cfg.setdefault("window", net.in_channels // 2 if hasattr(net, "in_channels") else 1)
    try:
        datamodule = FieldDataModule(**data_cfg)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{config_path}: data: {error}") from None
    strategies = {name: instantiate(spec, f"{config_path}: strategies.{name}", base=Strategy) for name, spec in cfg["strategies"].items()}
    baseline = gaussian_baseline(cfg.get("baseline"), datamodule.window, normalizer, schedule, net)
    if baseline is not None:
        strategies["exact-gaussian"] = baseline
        if cfg.get("baseline_sample"):
            strategies["exact-gaussian-sample"] = ExactGaussian(baseline.prior, sample=True, prior_coordinates=baseline.prior_coordinates)
    operators = {name: instantiate(spec, f"{config_path}: operators.{name}", base=Operator) for name, spec in cfg["operators"].items()}

    def module(strategy: str, operator: str) -> InferenceModule:
        try:
            return InferenceModule(strategy=strategies[strategy], operator=operators[operator], **model_cfg)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{config_path}: model: {error}") from None

    module(next(iter(strategies)), next(iter(operators)))  # every setting checked before the run directory exists
    trainer_cfg = {"accelerator": "cpu", "devices": 1, **(cfg.get("trainer") or {})}
    try:
        L.Trainer(**trainer_cfg, logger=False, enable_progress_bar=False, enable_model_summary=False)
    except (TypeError, ValueError, MisconfigurationException) as error:
        raise ValueError(f"{config_path}: trainer: {' '.join(str(error).split())}") from None
    wandb_cfg = {"mode": "offline", "project": "ldiff", **(cfg.get("wandb") or {})}
    out_dir = Path(cfg["output"])
    group = f"{out_dir.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    write_json(out_dir / "provenance.json", provenance(cfg, {"checkpoint": model_cfg["checkpoint"], "data": data_cfg["path"]}))
    for name in ("lightning.pytorch", "lightning.fabric"):  # one trainer per pair: no banners
        logging.getLogger(name).setLevel(logging.WARNING)

    rows: list[dict[str, Any]] = []
    series_rows: list[dict[str, Any]] = []
    results = {}
    pairs = [(s, o) for o in operators for s in strategies]
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("compare", total=len(pairs))
        for strategy_name, op_name in pairs:
            bar.update(task, description=f"{strategy_name} @ {op_name}")
            pair = module(strategy_name, op_name)
            path = out_dir / "predictions" / f"{strategy_name}__{op_name}.nc"
            writer = ReconstructionWriter(str(path), attrs={"label": strategy_name, "operator_label": op_name, "compare": group}, verbose=False)
            logger = pair_logger(wandb_cfg, out_dir, group, strategy_name, op_name)
            trainer = L.Trainer(**trainer_cfg, logger=logger, callbacks=[writer], enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
            start = time.perf_counter()
            try:
                trainer.predict(pair, datamodule=datamodule, return_predictions=False)
            finally:  # the pair's own run (create_new: not wandb.run), also after an error
                finish_wandb(trainer.loggers)
            seconds = time.perf_counter() - start
            metrics = pair.results()
            row = {"strategy": strategy_name, "operator": op_name, **{c: metrics.get(c, math.nan) for c in COLUMNS[2:-1]}, "seconds": round(seconds, 2)}
            rows.append(row)
            series = pair.diagnostic_series()
            for i in range(len(series.get("t", ()))):
                series_rows.append({"strategy": strategy_name, "operator": op_name, "step": i, **{name: float(v[i]) for name, v in series.items()}})
            results[(strategy_name, op_name)] = path
            bar.advance(task)
    if not trainer.is_global_zero:  # a multi-device sweep: rank 0 reports
        return rows

    log = RunLog(out_dir, project=wandb_cfg["project"], mode=wandb_cfg["mode"], config=cfg, name="summary", group=group, job_type="summary", silent=True)
    log.table("summary", rows)
    log.table("diagnostics", series_rows, wandb=False)
    from ldiff.figures import diagnostics_figure, vorticity_figure

    log.figure("vorticity", vorticity_figure(results, list(strategies), operators))
    log.figure("diagnostics", diagnostics_figure(series_rows, list(strategies), list(operators)))
    log.summary({f"{r['strategy']}/{r['operator']}/{k}": r[k] for r in rows for k in ("rmse_mean", "vorticity_corr_mean", "residual_ratio", "diverged", "flat")})
    log.finish()
    return rows


def pair_logger(wandb_cfg: dict[str, str], out_dir: Path, group: str, strategy: str, operator: str):
    """The W&B logger of one (strategy, operator) run of the group, or False when W&B is
    ``disabled``."""
    if wandb_cfg["mode"] == "disabled":
        return False
    if wandb_cfg["mode"] not in ("offline", "online"):
        raise ValueError(f"wandb.mode must be offline, online or disabled, got {wandb_cfg['mode']!r}")
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    (out_dir / "wandb").mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=wandb_cfg["project"],
        name=f"{strategy}@{operator}",
        group=group,
        job_type="compare",
        tags=[strategy, operator],
        save_dir=str(out_dir),
        offline=wandb_cfg["mode"] == "offline",
        config={"label": strategy, "operator_label": operator, "compare": group},
        reinit="create_new",
        settings=wandb.Settings(silent=True),  # one run per pair: the summary says where they are
    )
