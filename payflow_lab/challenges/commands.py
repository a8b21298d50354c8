"""``payflow-lab check``: list the challenges, judge a learner's file, or show the shipped solutions judged."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from payflow_lab.challenges import CHALLENGES, check, demo, get_challenge, load_candidate
from payflow_lab.core.errors import UsageError
from payflow_lab.core.vtime import BACKENDS

__all__ = ["register"]

EXAMPLES = """\
examples:
  payflow-lab check --list
  payflow-lab check circuit-breaker --starter > breaker.py     # then edit breaker.py
  payflow-lab check circuit-breaker breaker.py
  payflow-lab check circuit-breaker --demo                     # the reference and the shipped wrong ones
  payflow-lab check idempotent-receiver receiver.py --json"""


def register(sub: Any) -> None:
    """Add ``payflow-lab check`` to the subcommands."""
    p = sub.add_parser(
        "check",
        help="judge your solution to a lesson's challenge",
        description="Run a challenge's checker on your code (a file that defines what the starter defines), "
        "in virtual time, over several seeds and fault schedules, and print a verdict per invariant. "
        "Exit status 0 when every invariant held (with --demo: when the reference passed and every "
        "shipped wrong solution failed the invariant it was written to break), 1 when not, 2 on a usage error.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="the challenge (see --list)")
    p.add_argument("file", nargs="?", metavar="FILE.py", help="your solution")
    p.add_argument("--list", action="store_true", help="list the challenges")
    p.add_argument("--demo", action="store_true", help="judge the reference and every shipped wrong solution")
    p.add_argument("--starter", action="store_true", help="print the code to start from")
    p.add_argument("--backend", choices=BACKENDS, default="asyncio", help="the event loop to judge on")
    p.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON document on stdout and nothing else",
    )
    p.set_defaults(handler=_cmd_check)


def _cmd_check(args: argparse.Namespace) -> int:
    as_json = getattr(args, "json", False)
    if args.list:
        if args.name or args.file or args.demo or args.starter:
            raise UsageError("--list takes no challenge, file, --demo or --starter")
        return _list(as_json)
    if not args.name:
        raise UsageError("name a challenge (payflow-lab check --list shows them), or pass --list")
    challenge = get_challenge(args.name)
    chosen = [
        flag for flag, on in (("FILE.py", bool(args.file)), ("--demo", args.demo), ("--starter", args.starter)) if on
    ]
    if len(chosen) != 1:
        raise UsageError(
            f"give exactly one of FILE.py, --demo or --starter for {challenge.name}"
            + (f" (got {' and '.join(chosen)})" if chosen else "")
        )
    if args.starter:
        sys.stdout.write(challenge.starter)
        return 0
    if not as_json:
        what = "the reference and " + f"{len(challenge.wrong)} wrong solutions" if args.demo else args.file
        print(f"payflow-lab: checking {challenge.name} ({what}) on {args.backend}...", file=sys.stderr)
    if args.demo:
        report = demo(challenge.name, backend=args.backend)
        expected = report.results[0].passed and all(
            not result.passed and any(v.invariant == breaks and not v.held for v in result.verdicts)
            for result, (_, breaks) in zip(report.results[1:], challenge.wrong.values())
        )
    else:
        candidate = load_candidate(challenge.name, args.file)
        report = check(challenge.name, candidate, backend=args.backend, label=str(args.file))
        expected = report.passed
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n")
    else:
        print(report)
    return 0 if expected else 1


def _list(as_json: bool) -> int:
    rows = [challenge.summary() for challenge in CHALLENGES.values()]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return 0
    for row in rows:
        print(f"{row['lesson']}  {row['name']:26} {row['title']}")
    return 0
