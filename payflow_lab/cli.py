"""The ``payflow-lab`` command (also ``python -m payflow_lab``).

It mirrors the story's ``go run .``::

    payflow-lab                                  # the whole evolution, narrated, with a before/after table
    payflow-lab run --scenario blackfriday --phase 1 --seed 7 [--scale 0.1] [--json]
    payflow-lab run --scenario monitoring --phase 5 [--pace 30] [--port 9464]   # live dashboard + /metrics
    payflow-lab bench [--json]

Bad arguments give one line on stderr and exit status 2. With ``--json``,
stdout carries exactly one JSON object and nothing else.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .domain import ValidationError

__all__ = ["main", "build_parser", "EXTENSIONS"]

#: Hooks for later features: each is called with the subparsers object and may add a subcommand.
EXTENSIONS: list[Callable[[Any], None]] = []


class UsageError(Exception):
    """A bad command line: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from .phases import PHASES
    from .runner import DEFAULT_BACKEND, DEFAULT_SCALE, DEFAULT_SEED
    from .scenarios import SCENARIOS
    from .vtime import BACKENDS

    parser = _Parser(
        prog="payflow-lab",
        description="The PayFlow Black Friday incident, rebuilt phase by phase. "
                    "With no command: the whole evolution, narrated, ending with a before/after table.",
    )
    parser.add_argument("--seed", type=_positive_int, default=DEFAULT_SEED,
                        help=f"seed of the world (default {DEFAULT_SEED})")
    parser.add_argument("--scale", type=_float, default=DEFAULT_SCALE,
                        help=f"shrink merchants, traffic and capacities together (default {DEFAULT_SCALE})")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the narration")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    # A subcommand repeats --seed, --scale and --json with SUPPRESS as default, so that
    # `payflow-lab --seed 3 run` keeps the 3 instead of the subcommand's default overwriting it.
    inherited = argparse.SUPPRESS

    run = sub.add_parser("run", help="run one phase through one scenario",
                         description="Run one phase through one scenario in virtual time and summarise it.")
    run.add_argument("--scenario", choices=list(SCENARIOS), default="normal")
    run.add_argument("--phase", type=int, choices=list(PHASES), default=1)
    run.add_argument("--seed", type=_positive_int, default=inherited,
                     help=f"seed of the world (default {DEFAULT_SEED})")
    run.add_argument("--scale", type=_float, default=inherited,
                     help=f"shrink merchants, traffic and capacities together (default {DEFAULT_SCALE})")
    run.add_argument("--duration", type=_float, default=None,
                     help="simulated seconds to run (default: the scenario's own length)")
    run.add_argument("--backend", choices=list(BACKENDS), default=DEFAULT_BACKEND,
                     help=f"virtual-time backend (default {DEFAULT_BACKEND})")
    run.add_argument("--memory", choices=["tracemalloc", "rss", "off"], default="tracemalloc",
                     help="how to measure memory (default tracemalloc)")
    run.add_argument("--json", action="store_true", default=inherited,
                     help="print one JSON object on stdout and nothing else")
    run.add_argument("--series", action="store_true", help="with --json: include the per-second series")
    run.add_argument("--live", action="store_true",
                     help="watch it: paced, with the live dashboard and Prometheus /metrics "
                          "(always on for --scenario monitoring)")
    run.add_argument("--pace", type=_float, default=None,
                     help="live runs: simulated seconds per real second (default 30: the 40-minute "
                          "monitoring scenario in about 80 s)")
    run.add_argument("--port", type=_port, default=None,
                     help="live runs: serve Prometheus metrics at http://127.0.0.1:PORT/metrics "
                          "(default 9464; 0 picks a free port and prints it on stderr)")

    bench = sub.add_parser("bench", help="benchmarks: simulated payments per real second, backends, ...",
                           description="Run the benchmarks and print their figures.")
    bench.add_argument("--json", action="store_true", default=inherited,
                       help="print one JSON object on stdout and nothing else")
    bench.add_argument("--quick", action="store_true", help="fewer repetitions (for smoke tests)")

    from .durable import cli as _durable_cli  # noqa: F401  (registers `realtime` and `replay`)
    for extend in EXTENSIONS:
        extend(sub)
    return parser


def _progress(enabled: bool) -> tuple[Callable[[Any], None], Callable[[], None]]:
    """A rich progress bar on stderr, shown only once a run has taken more than 1.5 s."""
    if not enabled:
        return (lambda simulation: None), (lambda: None)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    started = time.perf_counter()
    state: dict[str, Any] = {}

    def on_tick(simulation: Any) -> None:
        if time.perf_counter() - started < 1.5:
            return
        if "progress" not in state:
            progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[clock]}"),
                                TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            progress.start()
            state["progress"] = progress
            state["task"] = progress.add_task(
                f"{simulation.config.scenario_name}, phase {simulation.config.phase}",
                total=simulation.config.sim_duration, clock="")
        from .metrics import hhmmss

        world = simulation.world
        state["progress"].update(state["task"], completed=world.clock() - simulation.scenario.start,
                                 clock=hhmmss(world.clock()))

    def close() -> None:
        if "progress" in state:
            state["progress"].stop()

    return on_tick, close


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {text!r}") from None
    if not 0 <= value <= 65_535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535 (0: any free port), got {value}")
    return value


def _cmd_run_live(args: argparse.Namespace, config: Any) -> int:
    """A live run: paced, /metrics served while it lasts, the dashboard on whichever stream is a terminal."""
    from rich.console import Console

    from .monitoring import DEFAULT_PACE, DEFAULT_PORT, watch
    from .report import print_run

    if args.json:  # stdout carries the JSON object only; the dashboard may use stderr if a person watches it
        console = Console(stderr=True) if sys.stderr.isatty() else None
    else:
        console = Console() if sys.stdout.isatty() else None
    result = watch(config, pace=DEFAULT_PACE if args.pace is None else args.pace,
                   port=DEFAULT_PORT if args.port is None else args.port, console=console)
    if args.json:
        sys.stdout.write(result.to_json(series=args.series) + "\n")
    else:
        print_run(result)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .report import print_run
    from .runner import RunConfig, run_config

    live = args.live or args.scenario == "monitoring"
    if not live and (args.pace is not None or args.port is not None):
        raise UsageError("--pace and --port apply to live runs: add --live (or use --scenario monitoring)")
    if args.series and not args.json:
        raise UsageError("--series adds the per-second series to the JSON: add --json")
    config = RunConfig(scenario=args.scenario, phase=args.phase, seed=args.seed, scale=args.scale,
                       backend=args.backend, duration=args.duration, memory=args.memory)
    if live:
        return _cmd_run_live(args, config)
    on_tick, close = _progress(sys.stderr.isatty())
    try:
        result = run_config(config, on_tick=on_tick)
    finally:
        close()
    if args.json:
        sys.stdout.write(result.to_json(series=args.series) + "\n")
    else:
        print_run(result)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import print_bench, run_benchmarks

    report = run_benchmarks(quick=args.quick, progress=not args.json)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        print_bench(report)
    return 0


def _cmd_story(args: argparse.Namespace) -> int:
    from .narrate import narrate

    return narrate(seed=args.seed, scale=args.scale, as_json=args.json)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``payflow-lab``; returns the exit status."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        handler = {"run": _cmd_run, "bench": _cmd_bench, None: _cmd_story}.get(args.command)
        if handler is None:
            handler = args.handler
        return handler(args)
    except UsageError as exc:
        print(f"payflow-lab: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"payflow-lab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("payflow-lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
