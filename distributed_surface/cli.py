"""The ``dsurf`` command line: ``run``, ``info`` and ``plot``."""

from __future__ import annotations

import argparse
import re
import sys

from .errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, like every other user mistake."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message}")


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("config_file", nargs="?", metavar="CONFIG.toml", help="TOML file of settings; flags override it")
    add("--model", metavar="IMPORT", help="pkg.module:callable or path/file.py:callable returning an nn.Module")
    add("--checkpoint", metavar="PATH", help="a state_dict, or a dict holding one under 'state_dict' or 'model'")
    add("--data", metavar="IMPORT", help="callable returning a Dataset or an (inputs, targets) pair of tensors")
    add("--loss", metavar="NAME", help="cross_entropy (default), mse, or an import string of loss(outputs, targets)")
    add("--x", metavar="MIN:MAX:NUM", help="offsets along the first direction (default -1:1:25)")
    add("--y", metavar="MIN:MAX:NUM", help="offsets along the second direction; leave out for a 1D curve")
    add("--norm", help="direction normalisation: filter (default), layer, weight or none")
    add("--ignore", help="biasbn (default: 1-D parameters do not move) or none")
    add("--dir-type", dest="dir_type", help="weights (default) or states (adds buffers such as BatchNorm statistics)")
    add("--seed", type=int, help="seed of the random directions (default 0)")
    add("--batch-size", dest="batch_size", type=int, help="samples per forward pass (default 1024)")
    add("--max-samples", dest="max_samples", type=int, help="evaluate only the first N samples")
    add("--device", help="auto (default), cpu, cuda or cuda:N")
    add("--chunk-size", dest="chunk_size", type=int, help="grid points per unit of work (default: automatic)")
    add("--rank0", choices=("work", "coordinate"), help="under MPI: rank 0 also evaluates (work, default) or only coordinates")
    add("--out", metavar="PATH", help="surface file to write (default surface.h5)")
    add("--resume", action="store_true", help="continue an existing surface file of the same config")
    add("--overwrite", action="store_true", help="replace an existing surface file")
    add("--no-plot", dest="no_plot", action="store_true", help="do not draw pictures at the end")
    add("--no-progress", dest="no_progress", action="store_true", help="no progress bar")


RUN_SETTINGS = (
    "model", "checkpoint", "data", "loss", "x", "y", "norm", "ignore", "dir_type", "seed",
    "batch_size", "max_samples", "device", "chunk_size", "rank0", "out",
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dsurf", description="Loss landscapes of neural networks, on one or many GPUs.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser("run", help="compute a surface (under mpirun: distributed)")
    _add_run_flags(run)
    info = commands.add_parser("info", help="what a surface file holds: config, progress, timings")
    info.add_argument("surface", metavar="SURFACE.h5")
    plot = commands.add_parser("plot", help="pictures of a surface file")
    plot.add_argument("surface", metavar="SURFACE.h5")
    plot.add_argument("--out-dir", dest="out_dir", metavar="DIR", help="where to write (default: SURFACE_plots/)")
    return parser


def run_config(args: argparse.Namespace):
    """The run's config: the TOML file's settings, overridden by the flags given."""
    from .config import RunConfig, load_toml

    values = load_toml(args.config_file) if args.config_file else {}
    values.update({name: getattr(args, name) for name in RUN_SETTINGS if getattr(args, name) is not None})
    return RunConfig.build(**values)


def command_run(args: argparse.Namespace) -> int:
    from .run import mpi_rank, run

    config = run_config(args)
    status = run(config, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    if mpi_rank() != 0:  # rank 0 speaks for the job
        return 0 if status == "complete" else 1
    print(f"{config.out}: {status}", file=sys.stderr)
    if not args.no_plot:
        _plot_if_possible(config.out, None)
    return 0 if status == "complete" else 1


def _plot_if_possible(path: str, out_dir: str | None) -> None:
    try:
        from .plot import plot_surface
    except ImportError as exc:
        print(f"dsurf: no pictures ({exc}); install matplotlib, then run: dsurf plot {path}", file=sys.stderr)
        return
    for picture in plot_surface(path, out_dir):
        print(f"wrote {picture}", file=sys.stderr)


def command_info(args: argparse.Namespace) -> int:
    from .info import describe_surface

    print(describe_surface(args.surface))
    return 0


def command_plot(args: argparse.Namespace) -> int:
    from .plot import plot_surface

    for picture in plot_surface(args.surface, args.out_dir):
        print(picture)
    return 0


COMMANDS = {"run": command_run, "info": command_info, "plot": command_plot}


def _glue_axis_values(argv: list[str]) -> list[str]:
    """``--x -1:1:51`` -> ``--x=-1:1:51``: argparse would take ``-1:1:51`` for an option."""
    glued, k = [], 0
    while k < len(argv):
        if argv[k] in ("--x", "--y") and k + 1 < len(argv) and _NEGATIVE.match(argv[k + 1]):
            glued.append(f"{argv[k]}={argv[k + 1]}")
            k += 2
        else:
            glued.append(argv[k])
            k += 1
    return glued


_NEGATIVE = re.compile(r"^-[\d.]")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(_glue_axis_values(sys.argv[1:] if argv is None else list(argv)))
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"dsurf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dsurf: interrupted; finished chunks are saved, continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
