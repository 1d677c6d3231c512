"""The ``dsurf`` command line: ``run``, ``info``, ``plot``, ``compare``, ``report``, ``export``, ``hessian`` and
``sbatch``."""

from __future__ import annotations

import argparse
import os
import re
import sys

from .engine.runtime import prepare_cpu_threads
from .engine.stop import NoStop, StopRequest
from .core.errors import UserError, one_line
from .storage import Status

# The signal handlers of the command being run (see main).
STOP: StopRequest = NoStop()


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, like every other user mistake."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message}")


def _add_command_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of a command that computes (run, hessian, sbatch): a TOML file, then one flag for every
    setting of its config (declared in sections.py), then the command's own flags."""
    from . import settings
    from .config import CONFIGS

    add = parser.add_argument
    add("config_file", nargs="?", metavar="CONFIG.toml", help="TOML file of settings; flags override it")
    settings.add_flags(parser, CONFIGS[command])
    add("--resume", action="store_true", help="continue an existing surface file of the same config")
    add("--overwrite", action="store_true", help="replace an existing surface file")
    add("--no-plot", dest="no_plot", action="store_true", help="do not draw pictures at the end")
    add("--no-progress", dest="no_progress", action="store_true", help="no progress bar")


def _add_reader_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of a command that reads surfaces (compare, report): one for every declared setting."""
    from . import settings
    from .config import READER_CONFIGS

    settings.add_flags(parser, READER_CONFIGS[command])


def reader_config(args: argparse.Namespace):
    """A reading command's config, from the flags given."""
    from .config import READER_CONFIGS, reader_config
    from .settings import given_flags

    return reader_config(args.command, given_flags(args, READER_CONFIGS[args.command]))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dsurf", description="Loss landscapes of neural networks, on one or many GPUs.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser("run", help="compute a surface (under mpirun: distributed)")
    _add_command_flags(run, "run")
    info = commands.add_parser("info", help="what a surface file holds: config, progress, timings")
    info.add_argument("surface", metavar="SURFACE.h5")
    info.add_argument(
        "--status", action="store_true",
        help="print the status word only, for scripts: running (a run is writing it), complete, interrupted "
        "(stopped by a signal, or killed: --resume continues it), failed (its run failed: --resume continues it)",
    )  # fmt: skip
    plot = commands.add_parser("plot", help="pictures of a surface file")
    plot.add_argument("surface", metavar="SURFACE.h5")
    plot.add_argument("--out-dir", dest="out_dir", metavar="DIR", help="where to write (default: SURFACE_plots/)")
    plot.add_argument(
        "--kind", dest="pictures", action="append", metavar="KIND",
        help="what to draw (repeat or comma-separate): 2D: contour, contourf, heatmap, surface (3D); "
        "1D: curve; default all that fit the file",
    )  # fmt: skip
    plot.add_argument("--vmin", type=float, help="lowest loss mapped to colours and levels (default: the data's)")
    plot.add_argument("--vmax", type=float, help="highest loss mapped (default: the data's, at most 10)")
    plot.add_argument("--levels", type=float, metavar="STEP", help="distance between loss contour levels (decades with --log)")
    plot.add_argument("--log", action="store_true", help="loss on a log scale")
    plot.add_argument("--format", dest="fmt", default="png", metavar="png|pdf|svg", help="picture format (default png)")
    plot.add_argument("--force", action="store_true", help="replace existing pictures that dsurf plot did not draw")
    export = commands.add_parser("export", help="the surface for ParaView (vtp, vts) or a spreadsheet (csv)")
    export.add_argument("surface", metavar="SURFACE.h5")
    export.add_argument("--format", dest="fmt", required=True, metavar="vtp|vts|csv", help="VTK PolyData, VTK StructuredGrid or CSV")
    export.add_argument("--out", metavar="PATH", help="file to write (default: next to SURFACE, named after it)")
    export.add_argument("--force", action="store_true", help="replace an existing --out that an export did not write")
    export.add_argument("--kind", dest="measure", default="loss", metavar="NAME",
                        help="vtp/vts: the measurement that is the height z: loss (default), acc (the train split's), "
                        "or a name such as test_loss; every measurement is a point array, and csv holds all")  # fmt: skip
    compare = commands.add_parser("compare", help="several surfaces side by side on one scale, with their table")
    compare.add_argument("surfaces", nargs="+", metavar="SURFACE.h5", help="surface files, two or more")
    _add_reader_flags(compare, "compare")
    report = commands.add_parser("report", help="one HTML file to explore offline: 3D surface, contours, curves, table, provenance")
    report.add_argument("surfaces", nargs="+", metavar="SURFACE.h5", help="surfaces, and Hessian spectrum files (dsurf hessian)")
    _add_reader_flags(report, "report")
    hessian = commands.add_parser("hessian", help="the Hessian spectrum at θ0: top eigenvalues, trace, density")
    _add_command_flags(hessian, "hessian")
    sbatch = commands.add_parser("sbatch", help="write a SLURM batch script for a run and submit it (or print it)")
    _add_command_flags(sbatch, "sbatch")
    _add_sbatch_flags(sbatch)
    return parser


def _add_sbatch_flags(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--nodes", type=int, default=1, help="nodes (default 1)")
    add("--gpus-per-node", dest="gpus_per_node", type=int, default=1, help="GPUs per node, one task each (default 1)")
    add("--tasks-per-node", dest="tasks_per_node", type=int, help="tasks per node (default: one per GPU)")
    add("--time", required=True, metavar="HH:MM:SS", help="time limit of each run of the job")
    add("--partition", help="SLURM partition")
    add("--account", help="SLURM account")
    add("--job-name", dest="job_name", default="dsurf", help="job name (default dsurf)")
    add("--signal-seconds", dest="signal_seconds", type=int, default=300,
        help="warn the job this long before its time limit (default 300)")  # fmt: skip
    add("--requeue", action="store_true", help="requeue the job when it stops early, so it resumes the surface")
    add("--srun-mpi", dest="srun_mpi", default="pmix", help="srun --mpi plugin (default pmix)")
    add("--script", metavar="PATH", help="where to write the batch script (default: OUT with .sbatch)")
    add("--template", metavar="PATH", help="batch script template (default: the package's templates/dsurf.sbatch.in)")
    add("--dry-run", dest="dry_run", action="store_true", help="print the script; write and submit nothing")
    add("--force", action="store_true", help="replace an existing --script that dsurf sbatch did not write")


def run_config(args: argparse.Namespace):
    """The command's config (:data:`.config.CONFIGS`): the TOML file's settings, overridden by the flags given."""
    from .config import CONFIGS, load_toml
    from .settings import given_flags

    config = CONFIGS[args.command]
    values = load_toml(args.config_file, config) if args.config_file else {}
    values.update(given_flags(args, config))
    return config.build(**values)


def command_hessian(args: argparse.Namespace) -> int:
    from .engine.launcher import rank

    if args.resume:
        raise UserError("dsurf hessian has no --resume: a spectrum is computed whole")
    if args.out is None and not args.config_file:
        args.out = "hessian.h5"
    config = run_config(args)
    from .spectrum import compute_spectrum  # torch: only once the settings are known to be good

    written = compute_spectrum(config, overwrite=args.overwrite, progress=not args.no_progress)
    if rank() == 0 and written:
        print(f"{written}: Hessian spectrum", file=sys.stderr)
        if not args.no_plot:
            _plot_if_possible(written, None)
    return 0


def command_run(args: argparse.Namespace) -> int:
    from .engine.launcher import rank, world_size

    config = run_config(args)
    if world_size() == 1:  # (under MPI rank 0 checks, and every rank hears its verdict)
        from .output import preflight

        preflight(config, resume=args.resume, overwrite=args.overwrite)
    from .run import run  # torch: only once the settings and the output are known to be good

    status = run(config, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress, stop=STOP)
    if rank() != 0:  # rank 0 speaks for the job
        return status.exit_code
    if status == Status.UNCHANGED:
        print(f"{config.output.out}: stopped before its first chunk; the file it was to replace is unchanged "
              "(run again with --overwrite)", file=sys.stderr)  # fmt: skip
        return status.exit_code
    if status != Status.COMPLETE:
        print(f"{config.output.out}: {status}; finished chunks are saved, continue with --resume", file=sys.stderr)
        return status.exit_code
    print(f"{config.output.out}: {status}", file=sys.stderr)
    if not args.no_plot:
        _plot_if_possible(config.output.out, None)
    return status.exit_code


def _plot_if_possible(path: str, out_dir: str | None) -> None:
    try:
        from .plot import plot_surface
    except ImportError as exc:
        print(f"dsurf: no pictures ({exc}); install matplotlib, then run: dsurf plot {path}", file=sys.stderr)
        return
    try:
        pictures = plot_surface(path, out_dir)
    except UserError as exc:  # (a picture in the way that dsurf did not draw: the run itself succeeded)
        print(f"dsurf: no pictures: {exc} (dsurf plot {path} draws them)", file=sys.stderr)
        return
    for picture in pictures:
        print(f"wrote {picture}", file=sys.stderr)


def command_info(args: argparse.Namespace) -> int:
    from .info import describe_surface, effective_status
    from .storage import read_surface

    print(effective_status(read_surface(args.surface)) if args.status else describe_surface(args.surface))
    return 0


def command_plot(args: argparse.Namespace) -> int:
    from .plot import plot_surface

    pictures = plot_surface(
        args.surface, args.out_dir, pictures=args.pictures, vmin=args.vmin, vmax=args.vmax, levels=args.levels,
        log=args.log, fmt=args.fmt, force=args.force,
    )  # fmt: skip
    for picture in pictures:
        print(picture)
    return 0


def command_compare(args: argparse.Namespace) -> int:
    from .compare import compare_surfaces

    config = reader_config(args)
    scale, comparison = config.scale, config.comparison
    written = compare_surfaces(
        args.surfaces, comparison.out_dir, labels=comparison.label, pictures=comparison.kind, vmin=scale.vmin,
        vmax=scale.vmax, levels=scale.levels, log=scale.log, fmt=comparison.format, band=comparison.band,
        allow_different=comparison.allow_different, force=comparison.force,
    )  # fmt: skip
    for path in written:
        print(path)
    return 0


def command_report(args: argparse.Namespace) -> int:
    from .report import write_report

    config = reader_config(args).report
    print(write_report(args.surfaces, config.out, force=config.force))
    return 0


def command_export(args: argparse.Namespace) -> int:
    from .export import export_surface

    print(export_surface(args.surface, args.fmt, out=args.out, measure=args.measure, force=args.force))
    return 0


def batch_script(args: argparse.Namespace):
    """The batch script of ``dsurf sbatch ARGS``: its path and text, every check made (the run's settings,
    the files it would read), nothing written."""
    from pathlib import Path

    from .config import CONFIGS
    from .preflight import check_inputs_exist
    from .settings import command_line, given_flags
    from .slurm import JobSpec, render
    from .storage import MARK

    if args.overwrite:
        raise UserError("--overwrite has no place in a batch job: a requeued job would start over; remove the file first")
    config = run_config(args)  # a mistake in the run's settings shows now, not in the queue
    check_inputs_exist(config)  # and a file it would read that is not there
    run_args = [args.config_file] if args.config_file else []
    run_args += command_line(given_flags(args, CONFIGS["run"]), CONFIGS["run"])
    run_args += ["--no-plot"] if args.no_plot else []
    job = JobSpec(
        nodes=args.nodes, gpus_per_node=args.gpus_per_node, tasks_per_node=args.tasks_per_node, time=args.time,
        partition=args.partition, account=args.account, job_name=args.job_name,
        warning_seconds=args.signal_seconds, requeue=args.requeue, srun_mpi=args.srun_mpi,
    )  # fmt: skip
    script = Path(args.script or Path(config.output.out).with_suffix(".sbatch")).absolute()
    template = Path(args.template) if args.template else None
    text = render(job, run_args, out=Path(config.output.out), script=script, workdir=Path.cwd(), template=template)
    # The mark under the first line (the interpreter's), so that dsurf sbatch knows its own script again.
    first, _, rest = text.partition("\n")
    return script, f"{first}\n# {MARK} (dsurf sbatch)\n{rest}"


def write_batch_script(script, text: str, *, force: bool) -> None:
    """Write a batch script (:func:`batch_script`): a file that is not one of dsurf's is replaced only with ``force``."""
    from .storage import carries_mark, write_atomically

    write_atomically(script, lambda temporary: temporary.write_text(text), ours=carries_mark, force=force,
                     who="dsurf sbatch", flag="--script")  # fmt: skip


def command_sbatch(args: argparse.Namespace) -> int:
    from .slurm import submit

    script, text = batch_script(args)
    if args.dry_run:
        print(text, end="")
        return 0
    write_batch_script(script, text, force=args.force)
    print(f"wrote {script}", file=sys.stderr)
    print(f"submitted job {submit(script)}")
    return 0


COMMANDS = {
    "run": command_run, "info": command_info, "plot": command_plot, "export": command_export, "sbatch": command_sbatch,
    "hessian": command_hessian, "compare": command_compare, "report": command_report,
}  # fmt: skip


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


def _glue_switches(argv: list[str]) -> list[str]:
    """``--band a.h5`` -> ``--band=on a.h5``: a switch's value is optional (``--band``, ``--band=off``),
    and argparse would take the word after it, a file, for its value."""
    from .config import CONFIGS, READER_CONFIGS
    from .settings import parse_switch, settings_of

    switches = {s.flag for config in {*CONFIGS.values(), *READER_CONFIGS.values()} for _, s in settings_of(config).values()
                if s.nargs == "?" and s.const is True}  # fmt: skip
    glued = []
    for k, word in enumerate(argv):
        following = argv[k + 1] if k + 1 < len(argv) else None
        is_value = following is not None and (following.startswith("-") or parse_switch(following, auto=True) != following)
        glued.append(f"{word}=on" if word in switches and following is not None and not is_value else word)
    return glued


def main(argv: list[str] | None = None) -> int:
    argv = _glue_switches(_glue_axis_values(sys.argv[1:] if argv is None else list(argv)))
    global STOP
    # `dsurf run` takes SIGUSR1, SIGTERM and SIGINT from its first moment (before torch is imported) to
    # its last: a signal at any time stops the run with its file "interrupted" and exit code 3, and a
    # second one cannot cut the closing of the file short.
    STOP = StopRequest() if argv[:1] == ["run"] else NoStop()
    if argv[:1] in (["run"], ["hessian"]):
        prepare_cpu_threads()  # (before torch is imported: OpenMP reads its variables as it loads)
    with STOP:
        try:
            args = build_parser().parse_args(argv)
            code = COMMANDS[args.command](args)
            sys.stdout.flush()  # (here, so that a closed pipe is met inside the try, not at exit)
            return code
        except BrokenPipeError:
            return _reader_left()
        except UserError as exc:
            from .engine.launcher import rank

            if rank() == 0:  # under MPI every rank finds a bad setting: rank 0 says it, once
                print(f"dsurf: error: {one_line(str(exc))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("dsurf: interrupted; finished chunks are saved, continue with --resume", file=sys.stderr)
            return 130


# The exit status of a process whose reader has gone (128 + SIGPIPE), as a shell reports it.
CLOSED_PIPE_EXIT = 141


def _reader_left() -> int:
    """Standard output's reader has gone (``dsurf info FILE | head -1``): stop quietly, as ``cat`` does.
    What is still buffered goes to the null device, so that Python's flush at exit raises nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return CLOSED_PIPE_EXIT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
