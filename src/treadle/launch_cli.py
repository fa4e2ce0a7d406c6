"""``treadle run``: start a training script on N processes per machine through ``torch.distributed.run``.

The options reach ``Fabric()`` in every process as ``TREADLE_*`` environment variables of the children
(see ``treadle.strategies.environment``), so a script that calls ``Fabric()`` without arguments runs
unchanged on 1 or N processes. Arguments given to ``Fabric`` in the code win over the command line.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from treadle.strategies.environment import LaunchSettings, settings_environment

# torchrun's spelling of the options that treadle run names after Fabric's arguments.
_TORCHRUN_OPTIONS = {
    "--nproc-per-node": "--devices",
    "--nnodes": "--num-nodes",
    "--master-addr": "--main-address",
    "--master-port": "--main-port",
}
# torchrun's own default port for jobs spanning several machines, which must agree on it in advance.
_MULTI_NODE_PORT = 29500


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``treadle run`` on ``parser``.

    Example::

        parser = argparse.ArgumentParser(prog="treadle run")
        add_run_arguments(parser)
        args = parser.parse_args(["--devices", "2", "train.py", "--lr", "0.1"])
    """
    from treadle.accelerators import ACCELERATOR_CHOICES
    from treadle.precision import PRECISIONS
    from treadle.strategies import STRATEGIES

    parser.description = (
        "Start SCRIPT on --devices processes on this machine (and --num-nodes machines in all) through "
        "torch.distributed.run. Fabric() in the script picks up the options; arguments given to Fabric in the "
        "code win."
    )
    parser.add_argument(
        "--accelerator", choices=ACCELERATOR_CHOICES, default=None, help="hardware (default: auto)"
    )
    parser.add_argument(
        "--strategy",
        choices=["auto", *STRATEGIES],
        default=None,
        help="how the processes cooperate (default: auto, which is ddp for several processes)",
    )
    parser.add_argument(
        "--devices",
        default="1",
        help=(
            "processes on this machine, as for Fabric(devices=...): a number, device indices such as 0,1, "
            "'auto' (one per GPU, else 1) or -1 (every device) (default: 1)"
        ),
    )
    parser.add_argument(
        "--num-nodes", type=int, default=1, help="machines taking part in the job (default: 1)"
    )
    parser.add_argument(
        "--node-rank", type=int, default=0, help="this machine's index, 0..num_nodes-1 (default: 0)"
    )
    parser.add_argument(
        "--main-address",
        default="127.0.0.1",
        help="address of the machine with node rank 0, reachable from all others (default: 127.0.0.1)",
    )
    parser.add_argument(
        "--main-port",
        type=int,
        default=None,
        help=f"port on the main address (default: a free port on one machine, {_MULTI_NODE_PORT} on several)",
    )
    parser.add_argument(
        "--precision",
        type=_precision_name,
        default=None,
        help=(
            f"numeric precision, as for Fabric(precision=...): {', '.join(PRECISIONS)}, or a short form "
            "such as bf16 or 16"
        ),
    )
    parser.add_argument("script", help="the training script to run")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments passed on to the script")


def run_command(args: argparse.Namespace) -> int:
    """Run ``torch.distributed.run`` for the parsed ``treadle run`` options; return its exit code.

    Args:
        args: the namespace from a parser set up with :func:`add_run_arguments`; ``script_args`` are passed
            on to the script.

    Returns:
        The launcher's exit code: 0 when every process succeeded, non-zero if any failed (torchrun then
        stops the others and names the failing rank).

    Example::

        treadle run --devices 2 train.py --lr 0.1
    """
    error = _validate(args)
    if error is not None:
        print(f"treadle run: error: {error}", file=sys.stderr)
        return 2
    devices = _local_devices(args.devices, args.accelerator)
    if isinstance(devices, str):
        print(f"treadle run: error: {devices}", file=sys.stderr)
        return 2
    processes = len(devices)
    port = args.main_port
    if port is None:
        if args.num_nodes == 1:
            from treadle.strategies.launch import find_free_port

            port = find_free_port()
        else:
            port = _MULTI_NODE_PORT
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={processes}",
        f"--nnodes={args.num_nodes}",
        f"--node-rank={args.node_rank}",
        f"--master-addr={args.main_address}",
        f"--master-port={port}",
        args.script,
        *args.script_args,
    ]
    settings = LaunchSettings(
        accelerator=args.accelerator,
        strategy=args.strategy,
        # A count unless particular devices were named, so that `--devices 1,3` reaches Fabric as such.
        devices=str(processes) if devices == list(range(processes)) else ",".join(map(str, devices)),
        num_nodes=args.num_nodes,
        precision=args.precision,
    )
    env = settings_environment(os.environ, settings)
    launcher = subprocess.Popen(command, env=env)
    try:
        return launcher.wait()
    except KeyboardInterrupt:
        # Ctrl-C reached torchrun too (same process group); give it time to stop its workers cleanly.
        try:
            return launcher.wait(timeout=30)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            launcher.send_signal(signal.SIGKILL)
            launcher.wait()
            return 130


def unknown_options_hint(extra: Sequence[str]) -> str:
    """Text to append to ``unrecognized arguments: ...`` for options ``treadle run`` does not know.

    Everything from the script on is the script's, so an unknown argument is always one placed before the
    script: a typo, or a torchrun option that ``treadle run`` names after Fabric's argument instead. The
    hint names the option meant where one is close, else says where the options go.

    Example::

        unknown_options_hint(["--nproc-per-node"])  # ". Did you mean: --nproc-per-node -> --devices? ..."
    """
    import difflib

    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    known = [option for action in parser._actions for option in action.option_strings]
    hints = []
    for argument in extra:
        if not argument.startswith("-"):
            continue
        option = argument.split("=", 1)[0]
        replacement = _TORCHRUN_OPTIONS.get(option.replace("_", "-"))
        if replacement is None:
            close = difflib.get_close_matches(option, known, n=1)
            replacement = close[0] if close else None
        if replacement is not None:
            hints.append(f"{option} -> {replacement}")
    if not hints:
        return (
            ". treadle run's own options go before the script and everything after it is the script's; "
            "see treadle run --help"
        )
    return f". Did you mean: {', '.join(hints)}? (see treadle run --help)"


def _precision_name(text: str) -> str:
    # Fabric's own parser, so the command line accepts the aliases the code does ("bf16", "16"); the
    # canonical name is what reaches Fabric, so it compares equal to the same precision written in the code.
    from treadle.precision import precision_name

    try:
        return precision_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            str(error)
            .replace(f"Fabric(precision={text!r})", repr(text))
            .replace(", or pass a Precision instance", "")
        ) from None


def _validate(args: argparse.Namespace) -> str | None:
    if not os.path.isfile(args.script):
        return f"the script {args.script!r} does not exist (looked in {os.getcwd()!r})."
    if args.num_nodes < 1:
        return f"--num-nodes {args.num_nodes} must be at least 1."
    if not 0 <= args.node_rank < args.num_nodes:
        return f"--node-rank {args.node_rank} must be between 0 and --num-nodes - 1 = {args.num_nodes - 1}."
    if args.main_port is not None and not 0 < args.main_port < 65536:
        return f"--main-port {args.main_port} is not a TCP port (1..65535)."
    if args.num_nodes > 1 and args.main_address in ("127.0.0.1", "localhost"):
        return (
            f"--num-nodes {args.num_nodes} needs --main-address: the address of the machine with --node-rank 0, "
            "reachable from every machine (the same value on each)."
        )
    return None


def _local_devices(devices: str, accelerator: str | None) -> list[int] | str:
    # The same parsers as Fabric(accelerator=..., devices=...), so the command line accepts what the code does,
    # and asking for more GPUs than the machine has fails here rather than in every spawned process.
    from treadle.accelerators import parse_accelerator, parse_devices

    try:
        parsed = parse_accelerator(accelerator or "auto")
    except RuntimeError as error:  # the hardware is missing; argparse already checked the name
        return f"--accelerator {accelerator}: {error}"
    try:
        return parse_devices(devices, parsed, argument=f"--devices {devices!r}")
    except ValueError as error:
        return str(error)
