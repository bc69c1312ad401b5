"""``ldiff data ...``: sub-commands that write store files (:mod:`ldiff.data.store`).

Each sub-command's parser carries ``func``, called with the parsed arguments; it writes
the store and prints its path. Generators of other modules add their own sub-commands to
the parsers that :func:`add_data_commands` returns.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from typing import TYPE_CHECKING, Callable

from ldiff.files import check_output

# Each handler imports its reader when it runs: a parser costs no import of numpy,
# xarray or torch (the SDA reader's vorticity uses torch), so `ldiff data grf` does not
# pay for the SDA reader.
if TYPE_CHECKING:
    import xarray as xr


def add_data_commands(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Register ``data`` with ``import-ibpm``, ``import-sda``, ``import-arrays``, ``grf`` and ``merge``.

    Args:
        subparsers: the ``ldiff`` parser's sub-parsers.

    Returns:
        The sub-parsers of ``data``, for other modules' sub-commands.
    """
    data = subparsers.add_parser("data", help="generate or import fields into a store file")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")

    ibpm = commands.add_parser(
        "import-ibpm", help="read an IBPM run directory (<name>.cmd, <name>NNNNN.plt or .bin, its .geom as the mask)"
    )
    ibpm.add_argument("directory", help="IBPM output directory")
    ibpm.add_argument("--dt", type=float, help="solver time step (default: from <name>.cmd)")
    ibpm.add_argument("--name", help="run name (-name), when the directory holds several .cmd files")
    ibpm.add_argument("--grid", type=int, help="grid level, 0 = finest (default 0; others need -tecplotallgrids 1)")
    ibpm.add_argument("--restart", action="store_true", help="read the binary restart files <name>NNNNN.bin")
    _add_output(ibpm)
    ibpm.set_defaults(func=_import_ibpm)

    sda = commands.add_parser("import-sda", help="read dataset 'x' of an SDA HDF5 file")
    sda.add_argument("file", help="HDF5 file")
    sda.add_argument("--layout", default=None, help="axis letters of 'x' (default: N,T,C then the spatial order the divergence picks; N,T,C,W,H for SDA's own files)")
    sda.add_argument("--dt", type=float, default=0.2, help="time between frames (default 0.2)")
    sda.add_argument("--lx", type=float, default=2 * math.pi, help="domain length along W (default 2 pi)")
    sda.add_argument("--ly", type=float, default=2 * math.pi, help="domain length along H (default 2 pi)")
    sda.add_argument("--periodic", type=int, choices=(0, 1), default=1, help="periodic domain (default 1)")
    _add_output(sda)
    sda.set_defaults(func=_import_sda)

    arrays = commands.add_parser("import-arrays", help="read a (T*2, H, W) or (N, T, 2, H, W) velocity array (.npy, .h5, .nc)")
    arrays.add_argument("file", help=".npy, .h5/.hdf5 or .nc file")
    arrays.add_argument("--x0", type=float, required=True, help="x of the first column")
    arrays.add_argument("--y0", type=float, required=True, help="y of the first row")
    arrays.add_argument("--dx", type=float, required=True, help="spacing of the columns")
    arrays.add_argument("--dy", type=float, required=True, help="spacing of the rows")
    arrays.add_argument("--dt", type=float, required=True, help="time between frames")
    arrays.add_argument("--key", help="HDF5 dataset or NetCDF variable (default: the only one)")
    arrays.add_argument("--layout", help="TC,H,W (default) or TC,W,H for rank 3; a permutation of N,T,C,H,W (default N,T,C,H,W) for rank 5")
    arrays.add_argument("--periodic", action="store_true", help="periodic domain")
    arrays.add_argument("--flow", default="unknown", help="the store's flow attribute (default unknown)")
    _add_output(arrays)
    arrays.set_defaults(func=_import_arrays)

    grf = commands.add_parser("grf", help="generate divergence-free Gaussian random field trajectories")
    grf.add_argument("--trajectories", type=int, default=8, help="number of trajectories (default 8)")
    grf.add_argument("--frames", type=int, default=32, help="frames per trajectory (default 32)")
    grf.add_argument("--size", type=int, default=64, help="grid points per side (default 64)")
    grf.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    grf.add_argument("--alpha", type=float, default=4.0, help="stream-function spectrum decay (default 4)")
    grf.add_argument("--rho", type=float, default=0.9, help="frame-to-frame correlation (default 0.9)")
    _add_output(grf)
    grf.set_defaults(func=_grf)

    merge = commands.add_parser("merge", help="stack the trajectories of several stores of the same grid")
    merge.add_argument("files", nargs="+", help="store files, in order")
    _add_output(merge)
    merge.set_defaults(func=_merge)
    return commands


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, help="store file to write (.nc)")


def _import_ibpm(args: argparse.Namespace) -> None:
    from ldiff.data.ibpm import read_ibpm_dir
    from ldiff.data.store import save

    check_output(args.output, {"directory": args.directory})
    source = "restart" if args.restart else "plt"
    print(save(read_ibpm_dir(args.directory, dt=args.dt, name=args.name, grid=args.grid, source=source), args.output))


def _import_sda(args: argparse.Namespace) -> None:
    from ldiff.data.sda import layout_report, read_sda_h5
    from ldiff.data.store import save

    check_output(args.output, {"file": args.file})
    ds = _reporting_layout_warnings(lambda: read_sda_h5(args.file, args.layout, dt=args.dt, lx=args.lx, ly=args.ly, periodic=args.periodic))
    print(f"{args.file}: {layout_report(ds)}")
    print(save(ds, args.output))


def _import_arrays(args: argparse.Namespace) -> None:
    from ldiff.data.arrays import read_arrays
    from ldiff.data.store import save

    check_output(args.output, {"file": args.file})
    ds = _reporting_layout_warnings(lambda: read_arrays(
        args.file, x0=args.x0, y0=args.y0, dx=args.dx, dy=args.dy, dt=args.dt,
        key=args.key, layout=args.layout, periodic=args.periodic, flow=args.flow,
    ))  # fmt: skip
    print(save(ds, args.output))


def _reporting_layout_warnings(read: Callable[[], "xr.Dataset"]) -> "xr.Dataset":
    """``read()``, each :class:`~ldiff.data.sda.LayoutWarning` it raises printed as one
    line ``ldiff: warning: <message>`` on stderr; other warnings pass on unchanged."""
    from ldiff.data.sda import LayoutWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LayoutWarning)
        ds = read()
    for warning in caught:
        if issubclass(warning.category, LayoutWarning):
            print(f"ldiff: warning: {' '.join(str(warning.message).split())}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return ds


def _grf(args: argparse.Namespace) -> None:
    from ldiff.data.grf import generate_grf
    from ldiff.data.store import save

    check_output(args.output)
    for flag, value in (("--alpha", args.alpha), ("--rho", args.rho)):
        if not math.isfinite(value):
            raise ValueError(f"grf: {flag} must be a finite number, got {value}")
    ds = generate_grf(args.trajectories, args.frames, args.size, args.seed, alpha=args.alpha, rho=args.rho)
    print(save(ds, args.output))


def _merge(args: argparse.Namespace) -> None:
    from ldiff.data.store import concat, save

    check_output(args.output, {f"file {i + 1}": path for i, path in enumerate(args.files)})
    print(save(concat(args.files), args.output))
