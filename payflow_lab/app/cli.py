"""The ``payflow-lab`` command (also ``python -m payflow_lab``).

It mirrors the story's ``go run .``::

    payflow-lab                                  # the whole evolution, narrated, with a before/after table
    payflow-lab run --scenario blackfriday --phase 1 --seed 7 [--scale 0.1] [--json]
    payflow-lab run --scenario monitoring --phase 5 [--pace 30] [--port 9464]   # live dashboard + /metrics
    payflow-lab bench [--only GROUP] [--json]
    payflow-lab lessons [DIR]                    # copy the workshop out (see :mod:`.workshop`)

Bad arguments give one line on stderr and exit status 2, naming the option as
typed (``--scale``, not the engine's field ``scale``) and, for a near miss,
what was probably meant ("did you mean"). With ``--json``, stdout carries
exactly one JSON object and nothing else; progress goes to stderr
(:mod:`.progress`).
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from payflow_lab.core.errors import UsageError, ValidationError

__all__ = ["main", "build_parser"]

#: Hooks for later features: each is called with the subparsers object and may add a subcommand.


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'run'?"`` for a near miss among ``choices``, else ``""``."""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class _Formatter(argparse.HelpFormatter):
    """Keeps the line breaks of descriptions, epilogs and help texts (lists of choices), wrapping each line."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        lines: list[str] = []
        for line in text.splitlines():
            indent = line[: len(line) - len(line.lstrip())]
            lines.extend(
                textwrap.wrap(line, width, subsequent_indent=indent + "  " * bool(indent), break_on_hyphens=False)
                or [""]
            )
        return lines

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n".join(indent + line for line in self._split_lines(text, width - len(indent)))


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is None or value in action.choices:
            return
        choices = ", ".join(map(str, action.choices))
        hint = did_you_mean(str(value), action.choices)
        if isinstance(action, argparse._SubParsersAction):
            raise argparse.ArgumentError(None, f"unknown command {value!r}{hint} (commands: {choices})")
        raise argparse.ArgumentError(action, f"invalid choice {value!r}{hint} (choose from {choices})")


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


def _phase_names() -> dict[str, int]:
    """Phase numbers by module name (``sync``, ``fire_and_forget``, ...): ``--phase hook_bus`` is ``--phase 4``."""
    from payflow_lab.phases import PHASES

    return {target.split(":")[0].rsplit(".", 1)[1]: number for number, target in PHASES.items()}


def _phase(text: str) -> int:
    names = _phase_names()
    key = text.strip().lower().replace("-", "_")
    listed = ", ".join(f"{number} ({name})" for name, number in names.items())
    if key in names:
        return names[key]
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown phase {text!r}{did_you_mean(key, names)} (choose from {listed})"
        ) from None
    if number not in names.values():
        raise argparse.ArgumentTypeError(f"no phase {number} (choose from {listed})")
    return number


def _choices_help(intro: str, described: dict[str, str]) -> str:
    width = max(map(len, described))
    text = intro + "\n" + "\n".join(f"  {name.ljust(width)}  {text}" for name, text in described.items())
    return text.replace("%", "%%")  # argparse formats help strings with %


def _scenario_help() -> dict[str, str]:
    from payflow_lab.core.recorder import hhmmss
    from payflow_lab.core.scenarios import SCENARIOS

    described = {}
    for name, scenario in SCENARIOS.items():
        start, end = hhmmss(scenario.start)[:5], hhmmss(scenario.start + scenario.duration)[:5]
        window = "" if start in scenario.title else f" ({start}-{end})"
        steps = "; ".join(f"{hhmmss(step.at)[:5]} {step.what}" for step in scenario.steps[:3])
        more = "; ..." if len(scenario.steps) > 3 else ""
        described[name] = f"{scenario.title}{window}" + (f". {steps}{more}" if steps else "")
    return described


def _phase_help() -> dict[str, str]:
    from payflow_lab.phases import get_phase

    return {f"{number} {name}": get_phase(number).lesson for name, number in _phase_names().items()}


EXAMPLES = """\
examples:
  payflow-lab                          # the whole evolution, narrated
  payflow-lab run --scenario blackfriday --phase 1   # the freeze
  payflow-lab run --phase hook_bus --json            # one JSON object
  payflow-lab run --scenario monitoring --phase 5    # live dashboard
  payflow-lab bench --only backends    # one group of speed figures
  payflow-lab lessons ~/payflow        # copy the notebooks out
  payflow-lab COMMAND --help           # each command's options"""


def _world_options(parser: argparse.ArgumentParser, seed: object, scale: object) -> None:
    """``--seed`` and ``--scale``, on the main parser and again on ``run`` (see ``inherited`` below)."""
    from payflow_lab.runner import DEFAULT_SCALE, DEFAULT_SEED

    parser.add_argument("--seed", type=_positive_int, default=seed, help=f"seed of the world (default {DEFAULT_SEED})")
    parser.add_argument(
        "--scale",
        type=_float,
        default=scale,
        help=f"shrink merchants, traffic and capacities together (default {DEFAULT_SCALE})",
    )


def build_parser() -> argparse.ArgumentParser:
    from payflow_lab import __version__
    from payflow_lab.core.recorder import DEFAULT_MEMORY, MemoryProbe
    from payflow_lab.core.scenarios import SCENARIOS
    from payflow_lab.core.vtime import BACKENDS
    from payflow_lab.phases import PHASES
    from payflow_lab.runner import DEFAULT_BACKEND, DEFAULT_SCALE, DEFAULT_SEED

    parser = _Parser(
        prog="payflow-lab",
        description="The PayFlow Black Friday incident, rebuilt phase by phase. "
        "With no command: the whole evolution, narrated, ending with a before/after table.",
        epilog=EXAMPLES,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _world_options(parser, DEFAULT_SEED, DEFAULT_SCALE)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the narration")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    # A subcommand repeats --seed, --scale and --json with SUPPRESS as default, so that
    # `payflow-lab --seed 3 run` keeps the 3 instead of the subcommand's default overwriting it.
    inherited = argparse.SUPPRESS

    run = sub.add_parser(
        "run",
        help="run one phase through one scenario",
        description="Run one phase through one scenario in virtual time and summarise it.",
        epilog="examples:\n"
        "  payflow-lab run --scenario blackfriday --phase 1 --seed 7\n"
        "  payflow-lab run --scenario recovery --phase hardened --scale 0.2\n"
        "  payflow-lab run --phase 4 --json --series > run.json\n"
        "  payflow-lab run --scenario blackfriday --phase 4 --live --pace 60",
    )
    run.add_argument(
        "--scenario",
        choices=list(SCENARIOS),
        default="normal",
        help=_choices_help("the story window to live through (default normal):", _scenario_help()),
    )
    run.add_argument(
        "--phase",
        type=_phase,
        choices=list(PHASES),
        default=1,
        help=_choices_help("the pipeline, by number or name (default 1):", _phase_help()),
    )
    _world_options(run, inherited, inherited)
    run.add_argument(
        "--duration", type=_float, default=None, help="simulated seconds to run (default: the scenario's own length)"
    )
    backends = {
        "asyncio": "a small asyncio loop whose clock jumps to the next timer (the faster one)",
        "trio": "a trio clock that jumps to the next deadline",
    }
    run.add_argument(
        "--backend",
        choices=list(BACKENDS),
        default=DEFAULT_BACKEND,
        help=_choices_help(
            f"virtual-time backend (default {DEFAULT_BACKEND}):", {name: backends.get(name, "") for name in BACKENDS}
        ),
    )
    run.add_argument(
        "--memory",
        choices=list(MemoryProbe.DESCRIPTIONS),
        default=DEFAULT_MEMORY,
        help=_choices_help(
            f"how to measure memory (default {DEFAULT_MEMORY}):",
            {
                "rss": "the process's resident memory, as the OS sees it, once per simulated second (coarse, cheap)",
                "tracemalloc": "the Python heap, byte for byte (a run takes about 3x longer)",
                "off": "no memory figures (the fastest)",
            },
        ),
    )
    run.add_argument(
        "--json", action="store_true", default=inherited, help="print one JSON object on stdout and nothing else"
    )
    run.add_argument("--series", action="store_true", help="with --json: include the per-second series")
    run.add_argument(
        "--live",
        action="store_true",
        help="watch it: paced, with the live dashboard and Prometheus /metrics (always on for --scenario monitoring)",
    )
    run.add_argument(
        "--pace",
        type=_float,
        default=None,
        help="live runs: simulated seconds per real second (default 30: the 40-minute "
        "monitoring scenario in about 80 s)",
    )
    run.add_argument(
        "--port",
        type=_port,
        default=None,
        help="live runs: serve Prometheus metrics at http://127.0.0.1:PORT/metrics "
        "(default 9464; 0 picks a free port and prints it on stderr)",
    )

    from payflow_lab.app.bench import BENCHMARKS

    bench = sub.add_parser(
        "bench",
        help="benchmarks: simulated payments per real second, backends, ...",
        description="Run the benchmarks and print their figures. Progress goes to stderr.",
        epilog="examples:\n"
        "  payflow-lab bench\n"
        "  payflow-lab bench --only backends --quick\n"
        "  payflow-lab bench --json > figures.json",
    )
    bench.add_argument(
        "--json", action="store_true", default=inherited, help="print one JSON object on stdout and nothing else"
    )
    bench.add_argument("--quick", action="store_true", help="fewer repetitions (for smoke tests)")
    bench.add_argument(
        "--only",
        action="append",
        choices=list(BENCHMARKS),
        metavar="GROUP",
        help="run only this group (repeatable): " + ", ".join(BENCHMARKS),
    )

    from payflow_lab.app.workshop import register as _register_lessons
    from payflow_lab.challenges.commands import register as _register_check  # `check`
    from payflow_lab.durable.commands import register as _register_durable  # realtime, replay, dispatch, receivers

    _register_lessons(sub)
    _register_durable(sub)
    _register_check(sub)
    return parser


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

    from payflow_lab.app.report import print_run
    from payflow_lab.observe import DEFAULT_PACE, DEFAULT_PORT, watch

    if args.json:  # stdout carries the JSON object only; the dashboard may use stderr if a person watches it
        console = Console(stderr=True) if sys.stderr.isatty() else None
    else:
        console = Console() if sys.stdout.isatty() else None
    result = watch(
        config,
        pace=DEFAULT_PACE if args.pace is None else args.pace,
        port=DEFAULT_PORT if args.port is None else args.port,
        console=console,
    )
    if args.json:
        sys.stdout.write(result.to_json(series=args.series) + "\n")
    else:
        print_run(result)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from payflow_lab.app.report import print_run
    from payflow_lab.runner import RunConfig, run_config

    live = args.live or args.scenario == "monitoring"
    if not live and (args.pace is not None or args.port is not None):
        raise UsageError("--pace and --port apply to live runs: add --live (or use --scenario monitoring)")
    if args.series and not args.json:
        raise UsageError("--series adds the per-second series to the JSON: add --json")
    config = RunConfig(
        scenario=args.scenario,
        phase=args.phase,
        seed=args.seed,
        scale=args.scale,
        backend=args.backend,
        duration=args.duration,
        memory=args.memory,
    )
    if live:
        return _cmd_run_live(args, config)
    from payflow_lab.core.progress import run_progress

    on_tick, close = run_progress(sys.stderr.isatty())
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
    from payflow_lab.app.bench import print_bench, run_benchmarks

    report = run_benchmarks(quick=args.quick, progress=True, only=args.only)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        print_bench(report)
    return 0


def _cmd_story(args: argparse.Namespace) -> int:
    from payflow_lab.app.narrate import narrate

    return narrate(seed=args.seed, scale=args.scale, as_json=args.json)


def _subparser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return None


def _options(*parsers: argparse.ArgumentParser | None) -> list[str]:
    return [
        option
        for p in parsers
        if p is not None
        for action in p._actions
        for option in action.option_strings
        if option.startswith("--")
    ]


def _unrecognized(extras: list[str], options: list[str]) -> UsageError:
    """One line for arguments nobody takes, with the option probably meant."""
    typed = next((arg.split("=", 1)[0] for arg in extras if arg.startswith("-")), None)
    hint = did_you_mean(typed, options) if typed else ""
    noun = "argument" if len(extras) == 1 else "arguments"
    return UsageError(f"unrecognized {noun}: {' '.join(extras)}{hint}")


def _first_unknown_option(argv: Sequence[str], parser: argparse.ArgumentParser) -> str | None:
    """The first ``--option`` in ``argv`` that no command takes, even abbreviated (``--sede`` of ``--sede 3``)."""
    subparsers = [
        p
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for p in action.choices.values()
    ]
    known = _options(parser, *subparsers)
    for arg in argv:
        if arg == "--":
            break
        typed = arg.split("=", 1)[0]
        if typed.startswith("--") and not any(option.startswith(typed) for option in known):
            return typed
    return None


def _as_typed(exc: ValidationError, options: list[str]) -> str:
    """The engine's ``field: message`` with the field named as the option the user typed (``--scale``)."""
    text = str(exc)
    message = text[len(exc.field) + 2 :] if text.startswith(f"{exc.field}: ") else text
    flag = "--" + exc.field.replace("_", "-")
    return f"{flag}: {message}" if flag in options else text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``payflow-lab``; returns the exit status."""
    options: list[str] = []
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        options = _options(parser, _subparser(parser, args.command))
        if extras:
            raise _unrecognized(extras, options)
        handler = {"run": _cmd_run, "bench": _cmd_bench, None: _cmd_story}.get(args.command)
        if handler is None:
            handler = args.handler
        return handler(args)
    except UsageError as exc:
        unknown = (
            _first_unknown_option(sys.argv[1:] if argv is None else argv, parser)
            if "unrecognized" not in str(exc)
            else None
        )
        if unknown is not None:  # the root cause: `--sede 3` makes argparse take the 3 for a command
            exc = UsageError(f"unrecognized argument: {unknown}{did_you_mean(unknown, _options(parser))}")
        print(f"payflow-lab: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"payflow-lab: error: {_as_typed(exc, options)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("payflow-lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
