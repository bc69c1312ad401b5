r"""The seed's table at the seed's scale, scored against an exact posterior (``ldiff compare``
with an ``oracle:`` config; ``configs/compare/ibpm-oracle.yaml``).

The prior is the analytic stationary Gaussian (:class:`~ldiff.nets.gaussian.GaussianPrior`)
at the user's IBPM window shape, (32, 199, 399) = 16 frames x (u, v), with a stated
power-law spectrum (:func:`~ldiff.nets.gaussian.power_law`). It needs no training, its
epsilon is exact, and so is its posterior: what a strategy gets wrong here is the
strategy's fault, never the network's. Truths are drawn from the prior; observations
``y = A x + n`` by the config's operators (strided subsampling: N = 640,000 / 160,000 /
40,000 / 10,400 at strides 2 / 4 / 8 / 16, counted exactly).

References for every operator, with the same ``y``:

- the exact posterior mean :math:`m^*`, by conjugate gradients in observation space,
  preconditioned for :class:`~ldiff.observe.Subsample` by the coarse-grid circulant
  (:func:`~ldiff.nets.gaussian.subsample_preconditioner`); the relative residual of the
  solve is reported (``solve_relres``);
- K exact posterior samples by perturb-and-solve, whose mean has the error
  :math:`\|\bar x^{exact}_K - m^*\| / \|m^*\|` that a perfect sampler's K-sample mean has
  (``exact_mean_error``), and whose spread is the exact spread.

Columns per (strategy, operator), each reduced over the items: ``residual`` (a sample's
rms of ``y - A x`` over the noise std, averaged over the K samples: about 1 for a
posterior sample; ``exact_residual`` is the same for the exact samples), ``mean_error`` (the K-sample mean's relative distance to :math:`m^*`)
and ``mean_error_ratio`` (over ``exact_mean_error``; 1 is perfect), ``spread_ratio``
(rms over the field of the K samples' std, over the exact samples'), ``max_abs``, the
regime counts and the wall time. The sampling runs through
:meth:`ldiff.lit.inference.InferenceModule.predict_step`, the predict path itself, guard
and regimes included.

Config keys (YAML, parsed safely; unknown keys refused by name)::

    oracle: {shape: [32, 199, 399], slope: 4.0, k0: 2.0, items: 1, eta: 0.001, maxiter: 200}
    model: {std: 0.1, samples: 4, steps: 32, seed: 0}   # InferenceModule arguments, as in ldiff predict
    operators: {sub2: {class_path: ldiff.observe.Subsample, init_args: {stride: 2}}, ...}
    strategies: {dps-sum: {class_path: ldiff.guidance.dps_sum.DPSSum, init_args: {gamma: 0.01}}, ...}
    output: runs/ibpm-oracle
    wandb: {mode: offline, project: ldiff}

A strategy's ``init_args`` may say ``covariance: oracle`` to be given the oracle's own
Gaussian (``mmps``'s known covariance).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ldiff.config import check_keys, instantiate, load_config, load_yaml, select
from ldiff.diffusion.schedules import CosineSchedule
from ldiff.lit.inference import InferenceModule, item_generator
from ldiff.metrics import BALANCED, DIVERGED, FLAT
from ldiff.nets.gaussian import GaussianPrior, power_law, preconditioner_for
from ldiff.observe import Operator, observe
from ldiff.tracking import RunLog, provenance, write_json

KEYS = {"oracle", "model", "operators", "strategies", "output", "wandb"}
MODEL_KEYS = {"std", "samples", "steps", "corrections", "tau", "seed", "data_range", "diverge_factor", "flat_fraction"}
"""The InferenceModule arguments an oracle config takes in ``model`` (as ``ldiff predict``; the prior is the oracle)."""
ORACLE_KEYS = {"shape", "slope", "k0", "items", "eta", "maxiter"}
DEFAULTS = {"shape": [32, 199, 399], "slope": 4.0, "k0": 2.0, "items": 1, "eta": 1e-3, "maxiter": 200}
COLUMNS = ("strategy", "operator", "n_obs", "residual", "exact_residual", "mean_error", "exact_mean_error", "mean_error_ratio", "spread_ratio", "max_abs", "balanced", "flat", "diverged", "solve_relres", "seconds")
QUICK = {"shape": [4, 32, 48], "items": 1, "samples": 2, "steps": 4}
"""The test mode (``--quick``): the same sweep on a small field, one item, two samples, four steps."""


def is_oracle_config(path: str) -> bool:
    """True if the compare config at ``path`` has an ``oracle:`` section."""
    cfg = load_yaml(path)
    return isinstance(cfg, dict) and "oracle" in cfg


def read_config(path: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Load and check an oracle compare config; returns it with defaults filled in."""
    cfg = load_config(path, overrides)
    check_keys(cfg, KEYS, str(path))
    if "strategies" not in cfg or not isinstance(cfg["strategies"], dict) or not cfg["strategies"]:
        raise ValueError(f"{path}: strategies: need a non-empty mapping of name -> class_path config")
    oracle = cfg.get("oracle") or {}
    if not isinstance(oracle, dict):
        raise ValueError(f"{path}: oracle: need a mapping")
    check_keys(oracle, ORACLE_KEYS, f"{path}: oracle")
    model = cfg.get("model") or {}
    if not isinstance(model, dict):
        raise ValueError(f"{path}: model: need a mapping")
    check_keys(model, MODEL_KEYS, f"{path}: model")
    cfg["model"] = {"std": 0.1, "samples": 4, "steps": 32, "seed": 0, **model}
    cfg["oracle"] = {**DEFAULTS, **oracle}
    shape = cfg["oracle"]["shape"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(n, int) and n > 0 for n in shape)):
        raise ValueError(f"{path}: oracle.shape: need [C, H, W] of positive integers, got {shape!r}")
    if int(cfg["oracle"]["items"]) < 1:
        raise ValueError(f"{path}: oracle.items: need at least 1, got {cfg['oracle']['items']}")
    cfg.setdefault("operators", {f"sub{s}": {"class_path": "ldiff.observe.Subsample", "init_args": {"stride": s}} for s in (2, 4, 8, 16)})
    cfg.setdefault("output", "runs/ibpm-oracle")
    return cfg


def relative(a: Tensor, b: Tensor) -> Tensor:
    """Per-item ``|a - b| / |b|``, shape (B,)."""
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


def residual_ratio(samples: Tensor, y: Tensor, op: Operator, std: float) -> Tensor:
    """Per-sample rms of ``y - A x`` over the noise std: (B, K, *) -> (B, K)."""
    b, k = samples.shape[:2]
    fitted = op(samples.flatten(0, 1)).unflatten(0, (b, k))
    return (y.unsqueeze(1) - fitted).flatten(2).square().mean(dim=2).sqrt() / std


def spread(samples: Tensor) -> Tensor:
    """Per-item rms over the field of the std over K samples: (B, K, *) -> (B,)."""
    return samples.var(dim=1).flatten(1).mean(dim=1).sqrt()


def references(prior: GaussianPrior, op: Operator, y: Tensor, std: float, k: int, seed: int, maxiter: int) -> dict[str, Tensor]:
    r"""The exact posterior mean :math:`m^* = \Sigma A^T w` (B, C, H, W), K exact samples
    (B, K, C, H, W) and ``relres`` (B,), the relative residual
    :math:`|(A \Sigma A^T + s^2 I) w - y| / |y|` of the mean's solve, for observations
    ``y`` (B, *obs_shape) (zero prior mean)."""
    shape = tuple(prior.power.shape)
    precondition = preconditioner_for(prior.power, op, tuple(y.shape[1:]), std)
    w, relres = prior.solve(y, op, std, maxiter, precondition)  # zero prior mean
    mean = prior.cov(op.adjoint(w, shape))
    generator = torch.Generator().manual_seed(seed)
    rep = y.repeat_interleave(k, dim=0)
    samples = prior.posterior_sample(rep, op, std, generator, maxiter=maxiter, precondition=precondition)
    samples = samples.unflatten(0, (y.shape[0], k))
    return {"mean": mean, "samples": samples, "relres": relres}


def run(
    config_path: str,
    output: str | None = None,
    quick: bool = False,
    progress: bool = True,
    only: list[str] | None = None,
    overrides: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Run the oracle comparison of ``config_path`` (only the strategies named in ``only``,
    if given); returns the summary rows."""
    cfg = read_config(config_path, overrides)
    cfg["strategies"] = select(cfg["strategies"], only, config_path)
    if output is not None:
        cfg["output"] = output
    if quick:
        cfg["oracle"].update(shape=QUICK["shape"], items=QUICK["items"])
        cfg["model"].update(samples=min(int(cfg["model"]["samples"]), QUICK["samples"]), steps=QUICK["steps"])
    o = cfg["oracle"]
    shape = tuple(o["shape"])
    schedule = CosineSchedule(float(o["eta"]))
    prior = GaussianPrior(schedule, power_law(shape, float(o["slope"]), float(o["k0"])), torch.zeros(shape[0]))
    model = cfg["model"]
    std, k, seed = float(model["std"]), int(model["samples"]), int(model["seed"])
    strategies = {}
    for name, spec in cfg["strategies"].items():
        extra = {}
        if isinstance(spec, dict) and (spec.get("init_args") or {}).get("covariance") == "oracle":
            spec = {**spec, "init_args": {key: v for key, v in spec["init_args"].items() if key != "covariance"}}
            extra["covariance"] = prior
        strategies[name] = instantiate(spec, f"{config_path}: strategies.{name}", **extra)
    operators = {name: instantiate(spec, f"{config_path}: operators.{name}", base=Operator) for name, spec in cfg["operators"].items()}
    items = int(o["items"])
    truth = prior.sample(items, torch.Generator().manual_seed(seed))
    out_dir = Path(cfg["output"])
    wandb_cfg = {"mode": "offline", "project": "ldiff", **(cfg.get("wandb") or {})}
    log = RunLog(out_dir, project=wandb_cfg["project"], mode=wandb_cfg["mode"], config=cfg, name=out_dir.name)
    write_json(out_dir / "provenance.json", provenance(cfg, {}))
    rows: list[dict[str, Any]] = []
    for op_name, op in operators.items():
        y = torch.cat([observe(truth[i : i + 1], op, std, item_generator(seed, i, 0)) for i in range(items)])
        ref = references(prior, op, y, std, k, seed + 1, int(o["maxiter"]))
        exact_error = relative(ref["samples"].mean(dim=1), ref["mean"])
        exact_spread = spread(ref["samples"])
        exact_residual = residual_ratio(ref["samples"], y, op, std)
        for name, strategy in strategies.items():
            if progress:
                print(f"oracle: {name} @ {op_name}", flush=True)
            module = InferenceModule.from_prior(prior, schedule, strategy=strategy, operator=op, **model)
            start = time.perf_counter()
            out = module.predict_step({"x": truth, "y": y, "index": torch.arange(items)})
            seconds = time.perf_counter() - start
            recon, labels = out["recon"], out["regime"]
            finite = torch.isfinite(recon).all()
            residual = residual_ratio(recon, y, op, std)
            error = relative(recon.mean(dim=1), ref["mean"])
            row = {
                "strategy": name,
                "operator": op_name,
                "n_obs": op.n_obs(shape),
                "residual": residual.mean().item(),
                "exact_residual": exact_residual.mean().item(),
                "mean_error": error.mean().item(),
                "exact_mean_error": exact_error.mean().item(),
                "mean_error_ratio": (error / exact_error).mean().item(),
                "spread_ratio": (spread(recon) / exact_spread).mean().item() if finite else math.nan,
                "max_abs": recon.abs().max().item(),
                "balanced": int((labels == BALANCED).sum()),
                "flat": int((labels == FLAT).sum()),
                "diverged": int((labels == DIVERGED).sum()),
                "solve_relres": ref["relres"].max().item(),
                "seconds": round(seconds, 1),
            }
            rows.append(row)
            if progress:
                print(f"  residual {row['residual']:.3f} (exact {row['exact_residual']:.3f}), mean error {row['mean_error']:.4f} ({row['mean_error_ratio']:.2f}x exact), "
                      f"spread {row['spread_ratio']:.3f}, diverged {row['diverged']}, {seconds:.0f} s", flush=True)
    log.table("summary", rows)
    log.summary({f"{r['strategy']}/{r['operator']}/{key}": r[key] for r in rows for key in ("residual", "mean_error_ratio", "spread_ratio", "diverged")})
    log.finish()
    return rows
