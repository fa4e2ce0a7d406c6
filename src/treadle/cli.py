"""The ``treadle`` command: ``run`` (start a script on N processes), ``demo`` (the first job), ``plot`` (curves),
``consolidate`` (a sharded checkpoint folder into one file).

Each subcommand's work lives in its own module and is imported only when that subcommand runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``treadle`` command, with its ``run``, ``demo``, ``plot`` and ``consolidate`` subcommands.

    Returns:
        A parser whose ``parse_known_args`` gives ``command`` (the subcommand, or None) and its options.
        Arguments it does not know are mistakes: ``run`` captures everything from the script on itself.

    Example::

        args, extra = build_parser().parse_known_args(["plot", "logs/run/version_0", "-m", "loss"])
        assert args.command == "plot" and args.metric == ["loss"]
    """
    parser = argparse.ArgumentParser(prog="treadle", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    from treadle.launch_cli import add_run_arguments

    add_run_arguments(commands.add_parser("run", help="start a training script on several processes"))

    demo = commands.add_parser(
        "demo", help="train a small model on CPU with the Trainer, logs and checkpoints"
    )
    demo.add_argument(
        "--root", default="demo_runs", help="folder for logs, checkpoints and curves (default: demo_runs)"
    )
    demo.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --root")
    demo.add_argument(
        "--max-epochs", type=_positive_int, default=None, help="override the number of epochs (at least 1)"
    )
    demo.add_argument("--no-progress-bar", action="store_true", help="plain lines instead of a progress bar")

    plot = commands.add_parser("plot", help="draw the curves of a run, or of several overlaid, to a PNG")
    plot.add_argument(
        "log_dir",
        help=(
            "a run folder (metrics.csv or TensorBoard event files), or a folder of runs such as an "
            "experiment's version_N folders, drawn overlaid"
        ),
    )
    plot.add_argument(
        "-o",
        "--output",
        default=None,
        help=(
            "image to write: .png, .svg or .pdf (default: curves.png in the run folder, or "
            "LOG_DIR/curves.png for a folder of several runs)"
        ),
    )
    plot.add_argument("-m", "--metric", action="append", default=None, help="only this metric (repeatable)")

    consolidate = commands.add_parser(
        "consolidate", help="turn a sharded checkpoint folder (FSDP, model parallel) into one file"
    )
    consolidate.add_argument("checkpoint", help="the folder fabric.save wrote under a sharded strategy")
    consolidate.add_argument("output", help="the single file to write, e.g. model.pt")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number of at least 1, e.g. 5")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``treadle`` console script and ``python -m treadle``."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        hint = ""
        if args.command == "run":
            from treadle.launch_cli import unknown_options_hint

            hint = unknown_options_hint(extra)
        prog = f"treadle {args.command}" if args.command else "treadle"
        parser.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(extra)}{hint}\n")
    if args.command == "run":
        from treadle.launch_cli import run_command

        return int(run_command(args))
    if args.command == "demo":
        from treadle.demo import run_demo

        return run_demo(
            root=args.root,
            resume=args.resume,
            max_epochs=args.max_epochs,
            progress_bar=not args.no_progress_bar,
        )
    if args.command == "plot":
        from treadle.plot import plot_metrics

        try:
            path = plot_metrics(args.log_dir, output=args.output, metrics=args.metric)
        except (FileNotFoundError, ValueError, ModuleNotFoundError) as error:
            # A missing log, an unknown metric or no matplotlib: the message says what to do; a traceback
            # would only bury it.
            parser.exit(2, f"treadle plot: error: {error}\n")
        print(f"curves written to {path}")
        return 0
    if args.command == "consolidate":
        from treadle.consolidate import consolidate

        try:
            written = consolidate(args.checkpoint, args.output)
        except (FileNotFoundError, ValueError) as error:
            parser.exit(2, f"{error}\n")
        print(f"checkpoint written to {written} (load it with torch.load(path, weights_only=True))")
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
