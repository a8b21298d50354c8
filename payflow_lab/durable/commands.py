"""``payflow-lab realtime`` and ``payflow-lab replay``: the durable pipeline from the command line.

::

    payflow-lab realtime [--db PATH|:memory:] [--duration S] [--rate R] [--receivers N] [--json]
    payflow-lab replay --db PATH [--merchant M] [--reason R] [--kind K] [--older-than AGE] [--requeue] [--json]

``realtime`` runs the pipeline for real against local receivers (see
:mod:`.realtime`); without ``--db`` it uses a new temporary file, with
``--db :memory:`` nothing touches the disk. Its exit status is 1 if the final
check finds an event lost or applied twice.

``replay`` lists the dead letters of an outbox file, filtered by merchant (or
service), reason, kind and age (``90``, ``15m``, ``2h``, ``1d``), oldest
first; with ``--requeue`` it puts the matching ones back in the outbox, due
now, for the next ``realtime`` run to deliver (same event ids: the receivers
still deduplicate). :func:`register` adds them to ``payflow-lab``'s parser.
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from payflow_lab.core.errors import DatabaseLocked, DiskFull, ReadOnlyDatabase

__all__ = ["parse_age", "register"]

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_age(text: str) -> float:
    """``"90"`` or ``"90s"`` -> 90.0; ``"15m"``, ``"2h"``, ``"1d"`` likewise. For argparse."""
    match = _AGE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"must be an age such as 90, 15m, 2h or 1d, got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def register(sub: Any) -> None:
    """Add ``realtime``, ``replay``, ``dispatch`` and ``receivers`` to the ``payflow-lab`` subcommands."""
    rt = sub.add_parser(
        "realtime",
        help="the durable pipeline for real: HTTP, local receivers, a SQLite outbox",
        description="Run the durable pipeline in real time against local receivers on 127.0.0.1 "
        "for a bounded time (one receiver fails, then recovers), then check that "
        "nothing was lost or applied twice.",
    )
    rt.add_argument(
        "--db", default=None, help="outbox database file (default: a new temporary file; ':memory:' for none)"
    )
    rt.add_argument(
        "--duration", type=_float, default=10.0, help="seconds of traffic (default 10; 0: only deliver what is pending)"
    )
    rt.add_argument("--rate", type=_float, default=20.0, help="payments per second (default 20)")
    rt.add_argument(
        "--receivers",
        type=_int,
        default=None,
        help="merchant receivers to start (default: as many as this outbox was run with, or 3)",
    )
    rt.add_argument("--seed", type=_int, default=argparse.SUPPRESS, help="seed of the world (default 7)")
    rt.add_argument(
        "--drain", type=_float, default=30.0, help="seconds to let deliveries finish after the traffic (default 30)"
    )
    rt.add_argument("--workers", type=_int, default=16, help="delivery workers per side effect (default 16)")
    rt.add_argument("--no-fault", action="store_true", help="no failing receiver")
    rt.add_argument(
        "--fail-window",
        type=_float,
        nargs=2,
        metavar=("FROM", "UNTIL"),
        default=(0.2, 0.5),
        help="part of the traffic time (fractions 0-1) during which the first receiver fails (default 0.2 0.5)",
    )
    rt.add_argument(
        "--ack-delay",
        type=_float,
        default=0.0,
        help="seconds each receiver waits between applying an event and answering (default 0)",
    )
    rt.add_argument(
        "--endpoints",
        default=None,
        help="JSON file of receivers running elsewhere ({'webhook': [{url, secret}], 'analytics': "
        "{...}, 'audit': {...}}); no local receivers, no fault",
    )
    rt.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON object on stdout and nothing else",
    )
    rt.set_defaults(handler=_cmd_realtime)

    rp = sub.add_parser(
        "replay",
        help="list dead letters of an outbox, and re-queue them",
        description="List the dead letters of an outbox database (oldest first), filtered by "
        "merchant, reason, kind and age; with --requeue, put them back in the outbox.",
    )
    rp.add_argument("--db", required=True, help="outbox database file")
    rp.add_argument("--merchant", default=None, help="only this merchant (or service: analytics, audit)")
    rp.add_argument("--reason", default=None, help="only this reason (e.g. retries_exhausted)")
    rp.add_argument("--kind", default=None, help="only this side effect (webhook, analytics, audit)")
    rp.add_argument("--older-than", type=parse_age, default=None, metavar="AGE", help="only letters at least AGE old")
    rp.add_argument("--newer-than", type=parse_age, default=None, metavar="AGE", help="only letters less than AGE old")
    rp.add_argument("--limit", type=_int, default=None, help="at most this many (the oldest)")
    rp.add_argument("--requeue", action="store_true", help="put the matching letters back in the outbox, due now")
    rp.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON object on stdout and nothing else",
    )
    rp.set_defaults(handler=_cmd_replay)

    dp = sub.add_parser(
        "dispatch",
        help="one dispatcher process on a shared outbox (start several on PostgreSQL)",
        description="Claim due events from the outbox with a lease, deliver them over HTTP to the receivers "
        "in the routes file, and write each outcome only while the claim is ours. Start several on one "
        "PostgreSQL outbox: a killed one's claims return when their leases lapse. Runs until SIGTERM or "
        "Ctrl-C (then gives its claims back), --for seconds, or --until-empty.",
    )
    dp.add_argument("--db", required=True, help="the outbox: postgresql://user@host:port/name, or a SQLite file")
    dp.add_argument("--routes", required=True, help="JSON file of receivers (written by `payflow-lab receivers`)")
    dp.add_argument("--workers", type=_int, default=8, help="concurrent deliveries per side effect (default 8)")
    dp.add_argument("--lease", type=_float, default=30.0, help="seconds a claim lasts (default 30)")
    dp.add_argument("--poll", type=_float, default=1.0, help="seconds between looks when no NOTIFY came (default 1)")
    dp.add_argument("--timeout", type=_float, default=5.0, help="seconds one delivery may take (default 5)")
    dp.add_argument("--name", default=None, help="this claimer's name (default host:pid)")
    dp.add_argument("--for", dest="duration", type=_float, default=None, help="stop after this many seconds")
    dp.add_argument("--until-empty", action="store_true", help="stop when nothing is pending")
    dp.add_argument(
        "--status-every", type=_float, default=1.0, help="seconds between status lines with --json-lines (default 1)"
    )
    dp.add_argument(
        "--json-lines",
        action="store_true",
        help="print a status JSON object per line while running, and the summary as the last line",
    )
    dp.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the summary as one JSON object on stdout and nothing else",
    )
    dp.set_defaults(handler=_cmd_dispatch)

    rv = sub.add_parser(
        "receivers",
        help="serve loopback webhook receivers with idempotent ledgers, for `dispatch`",
        description="Serve N merchant receivers plus analytics and audit on 127.0.0.1, each answering after "
        "--delay seconds and applying every event once (a ledger file each in --dir); write --dir/routes.json "
        "for `payflow-lab dispatch`. Prints one JSON line when ready and the counters as the last line at "
        "SIGTERM or Ctrl-C.",
    )
    rv.add_argument("--dir", required=True, help="folder for the ledgers and routes.json")
    rv.add_argument("--merchants", type=_int, default=3, help="merchant receivers (default 3)")
    rv.add_argument("--delay", type=_float, default=0.05, help="seconds each request takes (default 0.05)")
    rv.set_defaults(handler=_cmd_receivers)


def _json_line(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


def _cmd_dispatch(args: argparse.Namespace) -> int:
    import anyio

    from payflow_lab.durable.fleet import DispatchConfig, dispatch

    config = DispatchConfig(
        db=args.db,
        routes=args.routes,
        workers=args.workers,
        lease=args.lease,
        poll=args.poll,
        timeout=args.timeout,
        name=args.name,
        until_empty=args.until_empty,
        duration=args.duration,
        status_every=args.status_every if args.json_lines else 0.0,
    )
    try:
        summary = anyio.run(lambda: dispatch(config, emit=_json_line if args.json_lines else None))
    except BaseExceptionGroup as group:
        raise first_cause(group, args.db) from None
    if args.json_lines or args.json:
        _json_line(summary)
    else:
        d = summary["dispatcher"]
        print(
            f"{summary['owner']}: stopped by {summary['stopped_by']} after {summary['seconds']:.1f} s; "
            f"claimed {d['claimed']}, delivered {d['delivered']}, rescheduled {d['rescheduled']}, "
            f"dead-lettered {d['dead_lettered']}, lease lost {d['lease_lost']}"
        )
    return 0


def _cmd_receivers(args: argparse.Namespace) -> int:
    import anyio

    from payflow_lab.durable.fleet import serve_receivers

    counters = anyio.run(
        lambda: serve_receivers(args.dir, merchants=args.merchants, delay=args.delay, ready=_json_line)
    )
    _json_line({"final": True, "receivers": counters})
    return 0


# ------------------------------------------------------------------------- realtime
def as_database_error(exc: sqlite3.Error, db: str | None) -> Exception:
    """A raw SQLite error as one of the outbox's own, naming the cause (disk full, read-only, locked)."""
    from payflow_lab.core.errors import OutboxDatabaseError
    from payflow_lab.durable.schema import _translate

    path = db or "outbox"
    translated = _translate(exc, path)
    return translated if translated is not exc else OutboxDatabaseError(path, f"database error: {exc}")


def first_cause(group: BaseExceptionGroup, db: str | None = None) -> BaseException:
    """The exception to report from a task group's ``ExceptionGroup``.

    The database's own errors come first (disk full, read-only, locked: the
    cause; the others are usually tasks cancelled because of it), then any
    other error; a leftover group is returned as it is.
    """
    from payflow_lab.core.errors import OutboxDatabaseError

    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    leaves = [as_database_error(leaf, db) if isinstance(leaf, sqlite3.Error) else leaf for leaf in leaves]
    for kinds in ((OutboxDatabaseError,), (Exception,)):
        for leaf in leaves:
            if isinstance(leaf, kinds):
                return leaf
    return group


def _cmd_realtime(args: argparse.Namespace) -> int:
    import anyio

    from payflow_lab.durable.realtime import RealtimeConfig, run_realtime

    config = RealtimeConfig(
        db=args.db,
        duration=args.duration,
        rate=args.rate,
        receivers=args.receivers,
        seed=args.seed,
        fail_window=None if args.no_fault else tuple(args.fail_window),
        drain=args.drain,
        workers=args.workers,
        endpoints=args.endpoints,
        ack_delay=args.ack_delay,
    )
    try:
        try:
            summary = anyio.run(run_realtime, config)
        except BaseExceptionGroup as group:  # the task groups' wrapping: report the cause, not the wrapping
            raise first_cause(group, args.db) from None
        except sqlite3.Error as exc:
            raise as_database_error(exc, args.db) from None
    except (DiskFull, ReadOnlyDatabase, DatabaseLocked) as exc:  # the run could not go on: not a usage error
        print(f"payflow-lab: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    else:
        _print_realtime(summary)
    check = summary.get("check")
    return 1 if check and (check["lost"] or check["applied_twice"]) else 0


def _print_realtime(s: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    pay, box, thr = s["payments"], s["outbox"], s["throughput"]
    console.print(
        f"[bold]realtime[/], run {s['run']} on {s['db']}: {s['traffic_seconds']:.1f} s of traffic, "
        f"{s['drain_seconds']:.1f} s to drain ({'drained' if s['drained'] else 'NOT drained'}), "
        f"{s['wall_seconds']:.1f} s in all"
    )
    console.print(
        f"payments: {pay['attempted']} attempted, {pay['authorized']} authorized, "
        f"{pay['declined']} declined; "
        f"deliveries: {thr['deliveries']} ({thr['deliveries_per_second']} per second)"
    )
    for fault in s["faults"]:
        console.print(
            f"fault: {fault['receiver']} failed from {fault['failing_from_s']:.1f} s "
            f"and recovered at {fault['recovered_at_s']:.1f} s"
        )
    opened = [b for b in s["breakers"] if b["to"] == "open"]
    if opened:
        console.print(f"breakers: {len(opened)} openings, on {', '.join(sorted({b['endpoint'] for b in opened}))}")
    table = Table(title="Outbox (the whole file)", header_style="bold")
    for column in ("payments", "events", "delivered", "pending", "dead", "attempts"):
        table.add_column(column, justify="right")
    table.add_row(*(str(box[k]) for k in ("payments", "events", "delivered", "pending", "dead", "attempts")))
    console.print(table)
    if "receivers" in s:
        table = Table(title="Receivers", header_style="bold")
        for column in ("receiver", "requests", "applied", "duplicates", "503 on purpose", "bad signature"):
            table.add_column(column, justify="right")
        for name, r in s["receivers"].items():
            table.add_row(
                name, *(str(r[k]) for k in ("requests", "applied", "duplicates", "failed_on_purpose", "bad_signature"))
            )
        console.print(table)
        c = s["check"]
        verdict = (
            "[green]nothing lost, nothing applied twice[/]"
            if not (c["lost"] or c["applied_twice"])
            else "[red]SOMETHING WAS LOST OR APPLIED TWICE[/]"
        )
        console.print(
            f"check: {c['events']} events, {c['applied']} applied once, {c['pending']} pending, "
            f"{c['dead_lettered']} dead-lettered, {c['redeliveries_deduplicated']} redeliveries "
            f"deduplicated, {c['lost']} lost: {verdict}"
        )


# --------------------------------------------------------------------------- replay
def _cmd_replay(args: argparse.Namespace) -> int:
    from payflow_lab.core.errors import ValidationError
    from payflow_lab.durable.outbox import is_postgres_url
    from payflow_lab.durable.stores import open_outbox

    if args.limit is not None and args.limit < 0:
        raise ValidationError("limit", f"must not be negative, got {args.limit}")
    if args.db == ":memory:":  # a new, empty database: there is nothing in it to list or replay
        raise ValidationError("db", "replay needs the outbox file a run wrote; ':memory:' would be a new, empty one")
    if not is_postgres_url(args.db) and not Path(args.db).is_file():
        raise ValidationError("db", f"{args.db}: no such database file")
    with open_outbox(args.db, clock=time.time) as outbox:
        simulated = _written_by_a_simulation(outbox)
        if simulated is not None:
            # Story time, not Unix time: ages count back from the file's last recorded moment.
            outbox.clock = lambda: simulated
        store = outbox.dead_letters
        letters = store.list(
            key=args.merchant,
            reason=args.reason,
            kind=args.kind,
            older_than=args.older_than,
            newer_than=args.newer_than,
            limit=args.limit,
        )
        now = store.now()
        rows = [
            {
                "id": letter.id,
                "key": letter.key,
                "kind": letter.kind,
                "reason": letter.reason,
                "age_s": round(letter.age(now), 1),
                "attempts": letter.attempts,
                "replays": letter.replays,
                "error": letter.error,
                "event_id": getattr(letter.payload, "event_id", None),
            }
            for letter in letters
        ]
        ids = [letter.id for letter in letters]
        # A simulated restart's clock starts wherever its scenario starts: due at 0 means due at once.
        requeued = store.requeue(ids, due_at=0.0 if simulated is not None else None) if args.requeue else []
        result = {
            "db": args.db,
            "matched": len(rows),
            "requeued": len(requeued),
            "letters": rows,
            "remaining_by_reason": store.count_by_reason(),
            "outbox": outbox.counts(),
        }
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        _print_replay(result, args.requeue)
    return 0


def _written_by_a_simulation(outbox: Any) -> float | None:
    """If the last process on this file was a simulation, the latest story time it recorded; else None."""
    from payflow_lab.durable.pipeline import SIMULATED

    row = outbox.execute("SELECT mode FROM runs ORDER BY run DESC LIMIT 1")
    if not row or row[0][0] != SIMULATED:
        return None
    latest = outbox.execute(
        "SELECT MAX(t) FROM (SELECT MAX(created_at) AS t FROM outbox UNION ALL SELECT MAX(available_at) FROM outbox "
        "UNION ALL SELECT MAX(delivered_at) FROM outbox UNION ALL SELECT MAX(at) FROM dead_letters "
        "UNION ALL SELECT MAX(started_at) FROM runs)"
    )
    return float(latest[0][0] or 0.0)


def _print_replay(result: dict[str, Any], requeue: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"Dead letters in {result['db']}: {result['matched']} matching", header_style="bold")
    for column in ("id", "merchant / service", "kind", "reason", "age", "attempts", "last error"):
        table.add_column(column)
    for row in result["letters"]:
        table.add_row(
            row["id"],
            row["key"],
            row["kind"],
            row["reason"],
            f"{row['age_s']:.0f} s",
            str(row["attempts"]),
            row["error"] or "",
        )
    console.print(table)
    if requeue:
        console.print(
            f"re-queued {result['requeued']} letter(s): their events are pending again, due now "
            f"(run `payflow-lab realtime --db {result['db']} --duration 0` to deliver them)"
        )
    console.print(
        f"outbox: {result['outbox']['pending']} pending, {result['outbox']['delivered']} delivered, "
        f"{result['outbox']['dead']} dead"
    )
