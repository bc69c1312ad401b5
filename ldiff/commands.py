"""``ldiff balance`` and ``ldiff compare``: argparse glue around :mod:`ldiff.balance`
and :mod:`ldiff.compare`, printing tables with rich."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ldiff.config import load_config
from ldiff.files import check_output
from ldiff.diffusion.schedules import CosineSchedule, LinearBetaSchedule

SCHEDULES = {"cosine": CosineSchedule, "linear-beta": LinearBetaSchedule}


def add_balance_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "balance",
        help="tabulate the likelihood strength N/var over N and t (the seed's analysis)",
        description="Tabulate sigma/mu, the gamma share of SDA's variance and the likelihood "
        "strength N/var relative to N_ref under no, std and dual scaling.",
    )
    parser.add_argument("--schedule", choices=sorted(SCHEDULES), default="cosine")
    parser.add_argument("--eta", type=float, default=1e-3, help="cosine schedule floor (SDA 1e-3; the user's runs 1e-2)")
    parser.add_argument("--std", type=float, default=0.1, help="observation noise std at N_ref")
    parser.add_argument("--gamma", type=float, default=1e-2)
    parser.add_argument("--n-obs", type=int, nargs="+", default=[640_000, 160_000, 40_000, 10_400], help="observation counts (default: IBPM at strides 2, 4, 8, 16)")
    parser.add_argument("--n-ref", type=int, default=160_000)
    parser.add_argument("--t", type=float, nargs="+", default=[0.01, 0.1, 0.2, 0.5, 0.9])
    parser.set_defaults(func=run_balance)
    return parser


def run_balance(args: argparse.Namespace) -> None:
    from ldiff.balance import balance_table

    schedule = CosineSchedule(args.eta) if args.schedule == "cosine" else LinearBetaSchedule()
    rows = balance_table(schedule, args.std, args.gamma, args.n_obs, args.n_ref, args.t)
    table = Table(
        title=f"{schedule!r}, std={args.std}, gamma={args.gamma}, N_ref={args.n_ref:,}",
        caption="strength = (N/var) / (N_ref/var_ref) with no scaling, std scaled by sqrt(r), "
        "and std by sqrt(r) with gamma by r (r = N/N_ref); share = gamma term / var, std scaled",
    )
    for column in ("t", "σ/μ", "γ(σ/μ)²", "N", "share", "none", "std", "dual"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            f"{row.t:g}", f"{row.sigma_bar:.3g}", f"{row.gamma_term:.3g}", f"{row.n_obs:,}",
            f"{100 * row.gamma_share_std_scaled:.1f}%", f"{row.strength_none:.3g}", f"{row.strength_std:.2f}", f"{row.strength_dual:.2f}",
        )
    Console(width=160).print(table)


def add_baseline_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "baseline",
        help="fit the Gaussian prior (mean field, stationary covariance) to a prior's training split (the exact-gaussian baseline)",
        description="Fit GaussianPrior (the mean field and the mean periodogram about it) to the training windows "
        "of a store, in the normalisation and window of a prior checkpoint, and save it.",
    )
    parser.add_argument("--checkpoint", required=True, help="prior checkpoint (its normaliser and window are used)")
    parser.add_argument("--data", required=True, help="the store the prior was trained on")
    parser.add_argument("--split", type=float, nargs=3, default=[0.8, 0.1, 0.1], help="the prior's data.split")
    parser.add_argument("--seed", type=int, default=0, help="the prior's data.seed")
    parser.add_argument("-o", "--output", required=True, help="file to write (.pt, tensors only)")
    parser.set_defaults(func=run_baseline)
    return parser


def run_baseline(args: argparse.Namespace) -> None:
    from ldiff.data.module import FieldDataModule
    from ldiff.lit.checkpoint import load_prior
    from ldiff.nets.gaussian import GaussianPrior, fit_moments

    check_output(args.output, {"--checkpoint": args.checkpoint, "--data": args.data})
    net, schedule, normalizer, _ = load_prior(args.checkpoint)
    data = FieldDataModule(args.data, window=net.in_channels // 2, split=tuple(args.split), seed=args.seed, random_window=False)
    data.normalizer.load_state_dict(normalizer)
    data.setup()
    count = len(data.dataset("train"))
    GaussianPrior(schedule, *fit_moments(data.training_windows())).save(args.output)
    print(f"{args.output}: Gaussian prior fitted to {count} training windows of {args.data}")


def add_quality_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "quality",
        help="measure a prior: unconditional samples' energy spectrum and vorticity std against data",
    )
    parser.add_argument("--checkpoint", required=True, help="prior checkpoint")
    parser.add_argument("--data", required=True, help="store to compare with (every window)")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--k-max", type=int, default=16)
    parser.add_argument("--condition", nargs="*", default=[], help="the prior's condition channels (its data.condition)")
    parser.add_argument("-o", "--output", help="JSON file for the numbers (for the model card)")
    parser.add_argument("--jacobian", metavar="GAUSSIAN.pt", help="instead: compare the network's Tweedie covariance with this Gaussian fit's over t (ldiff baseline; 'prior': the prior's own skip term, the choice for a gaussian-node prior)")
    parser.add_argument("--t", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0], help="times for --jacobian")
    parser.add_argument("--strides", type=int, nargs="+", default=[2, 4, 8, 16], help="subsampling strides for --jacobian")
    parser.add_argument("--items", type=int, default=8, help="data windows for --jacobian")
    parser.set_defaults(func=run_quality)
    return parser


def run_quality(args: argparse.Namespace) -> None:
    from ldiff.data.module import FieldDataModule
    from ldiff.lit.checkpoint import load_prior
    from ldiff.physics import wake_geometry
    from ldiff.quality import measure
    from ldiff.tracking import write_json

    net, schedule, normalizer, _ = load_prior(args.checkpoint)
    data = FieldDataModule(args.data, window=net.in_channels // 2, split=(0.0, 0.0, 1.0), condition=tuple(args.condition))
    data.normalizer.load_state_dict(normalizer)
    data.setup()
    attrs, windows = data.attrs, data.test_windows()
    if args.jacobian:
        return run_jacobian(args, net, schedule, windows)
    cond = windows["cond"][0] if "cond" in windows else None
    wake = wake_geometry(attrs, data.coords["x"].values, data.coords["y"].values, windows["x"].shape[1] // 2)
    result = measure(net, schedule, normalizer, windows["x"], float(attrs["dx"]), float(attrs["dy"]),
                     bool(int(attrs["periodic"])), samples=args.samples, steps=args.steps, k_max=args.k_max, cond=cond, wake=wake)
    if args.output:
        write_json(Path(args.output), result.as_dict())
    print(f"spectrum ratio (k = 1..{args.k_max}): {result.spectrum_ratio_min:.3f} .. {result.spectrum_ratio_max:.3f}; "
          f"vorticity std {result.vorticity_std_samples:.3f} vs data {result.vorticity_std_data:.3f} (ratio {result.vorticity_std_ratio:.3f})")
    if wake is not None:
        print(f"Strouhal number: samples {result.strouhal_samples:.4f} vs data {result.strouhal_data:.4f} "
              f"({result.strouhal_unresolved} of {args.samples} sample windows without a resolved peak)")
        print(f"unsteadiness (rms deviation from each window's time mean): ahead of the cylinder {result.inflow_fluctuation_samples:.4f} vs data {result.inflow_fluctuation_data:.4f}, "
              f"behind it {result.wake_fluctuation_samples:.4f} vs data {result.wake_fluctuation_data:.4f}")


def run_jacobian(args: argparse.Namespace, net, schedule, windows: dict) -> None:
    """``ldiff quality --jacobian``: the Rayleigh-quotient table and the agreement threshold."""
    from ldiff.diffusion.precond import skip_gaussian, standardization
    from ldiff.nets.gaussian import load_state
    from ldiff.observe import Subsample
    from ldiff.quality import jacobian_agreement
    from ldiff.tracking import write_json

    latent = standardization(net)
    if args.jacobian == "prior":
        gaussian = skip_gaussian(net)
        if gaussian is None:
            raise ValueError(f"{args.checkpoint}: --jacobian prior needs a prior with a Gaussian skip term (precondition gaussian or gaussian-node)")
        power = gaussian[0].float()
    elif latent is not None:
        raise ValueError(f"{args.checkpoint}: this prior runs on standardised coordinates; compare it with its own skip term: --jacobian prior")
    else:
        power = load_state(args.jacobian)[0].float()
    x = windows["x"][: args.items]
    x = x if latent is None else latent.encode(x)  # the coordinates the network runs on
    if tuple(power.shape) != tuple(x.shape[1:]):
        raise ValueError(f"{args.jacobian}: Gaussian fit is for fields {tuple(power.shape)}, the data are {tuple(x.shape[1:])}")
    cond = windows["cond"][: args.items] if "cond" in windows else None
    operators = {f"sub{s}": Subsample(s) for s in args.strides}
    result = jacobian_agreement(net, schedule, power, x, operators, args.t, cond=cond)
    table = Table(title=f"e^T A V A^T e / |e|^2: network vs Gaussian fit ({len(x)} windows, 4 probes each; neg = share <= 0)")
    for column in ("t", "σ/μ", *result.operators):
        table.add_column(column, justify="right")
    for i, t in enumerate(result.t):
        cells = [f"{n:.3g} vs {g:.3g}" + (f" (neg {100 * q:.0f}%)" if q else "") for n, g, q in zip(result.network[i], result.gaussian[i], result.negative[i])]
        table.add_row(f"{t:g}", f"{result.sigma_bar[i]:.3g}", *cells)
    Console(width=160).print(table)
    if args.output:
        write_json(Path(args.output), result.as_dict())
    if result.agrees_up_to_t is None:
        print(f"this prior's Jacobian is indefinite or disagrees with its Gaussian fit (beyond a factor {result.tolerance}) already at t = {result.t[0]:g}")
    else:
        print(f"this prior's Tweedie covariance is positive up to t = {result.agrees_up_to_t:g} and agrees with its Gaussian fit there (within a factor {result.tolerance}) "
              f"(sigma/mu <= {result.agrees_up_to_sigma_bar:.3g}): MMPS(known_above={result.agrees_up_to_sigma_bar:.3g})")


def run_oracle(args: argparse.Namespace) -> None:
    """``ldiff compare`` of an ``oracle:`` config: the exact-posterior table."""
    from ldiff.oracle import COLUMNS, run

    rows = run(args.config, output=args.output, quick=args.quick, only=args.only, overrides=args.overrides)
    table = Table(title=f"ldiff compare {args.config} (exact Gaussian prior; errors against the exact posterior)")
    for column in COLUMNS:
        table.add_column(column.replace("_", " "), justify="right")
    for row in rows:
        table.add_row(*[f"{row[c]:.3g}" if isinstance(row[c], float) else f"{row[c]:,}" if isinstance(row[c], int) else str(row[c]) for c in COLUMNS])
    Console(width=200).print(table)
    out = Path(args.output or load_config(args.config, args.overrides).get("output", "runs/ibpm-oracle"))
    print(f"table: {out / 'tables' / 'summary.csv'}\nW&B (offline): {out / 'wandb'}")


def add_export_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("export", help="slim a training checkpoint to the prior alone (EMA weights, config, normaliser)")
    parser.add_argument("checkpoint", help="a checkpoint written by ldiff fit")
    parser.add_argument("-o", "--output", required=True, help="the slim checkpoint to write")
    parser.set_defaults(func=run_export)
    return parser


def run_export(args: argparse.Namespace) -> None:
    from ldiff.lit.checkpoint import export_prior

    check_output(args.output, {"checkpoint": args.checkpoint})
    print(export_prior(args.checkpoint, args.output))


def add_compare_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("compare", help="sweep guidance strategies x observation operators with one prior")
    parser.add_argument("--config", required=True, help="compare config (configs/compare/*.yaml)")
    parser.add_argument("--output", help="run directory (overrides the config's output)")
    parser.add_argument("--quick", action="store_true", help="test mode: 1 item, 2 samples, 4 sampler steps")
    parser.add_argument("--only", nargs="+", metavar="STRATEGY", help="run only these strategies of the config")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="override one config value, a dotted key and a YAML value (repeatable): --set model.samples=8 --set baseline=null",
    )  # fmt: skip
    parser.set_defaults(func=run_compare)
    return parser


def print_rows(rows: list[dict], title: str) -> None:
    """The comparison table on the terminal."""
    table = Table(title=title)
    columns = ("strategy", "operator", "n_obs", "rmse_mean", "rel_l2", "vorticity_corr_mean", "residual_ratio", "energy_ratio", "balanced", "flat", "diverged", "seconds")
    if any(math.isfinite(row.get("strouhal_error", math.nan)) for row in rows):  # cylinder-wake windows
        columns = (*columns[:-4], "strouhal_error", *columns[-4:])
    for column in columns:
        table.add_column(column.replace("_", " "), justify="right")
    for row in rows:
        table.add_row(*[f"{row[c]:.3f}" if isinstance(row[c], float) and not math.isnan(row[c]) else str(row[c]) for c in columns])
    Console(width=160).print(table)


def run_compare(args: argparse.Namespace) -> None:
    from ldiff.oracle import is_oracle_config

    if is_oracle_config(args.config):
        return run_oracle(args)
    from ldiff.compare import run

    rows = run(args.config, output=args.output, quick=args.quick, only=args.only, overrides=args.overrides)
    print_rows(rows, f"ldiff compare {args.config}")
    out = Path(args.output or load_config(args.config, args.overrides).get("output", "runs/compare"))
    print(f"table: {out / 'tables' / 'summary.csv'}\nfigures: {out / 'figures'}\npredictions: {out / 'predictions'}\nW&B (offline): {out / 'wandb'}  (sync with `wandb sync`)")
