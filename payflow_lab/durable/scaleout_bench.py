"""``payflow-lab bench``, group "scaleout": deliveries per real second with 1, 2 and 4 dispatcher processes.

The set-up is the one lesson 08 teaches: a throw-away PostgreSQL cluster, the
loopback receivers in a process of their own, each request taking
:data:`RECEIVER_DELAY_S` (a merchant's server is slow, not busy), and
dispatcher processes with :data:`WORKERS` concurrent deliveries each. For
each fleet size the outbox is emptied, the dispatchers are started and
*then* the webhooks of :data:`EVENTS` payments are recorded, so the rate is
measured on a warm fleet. The rate comes from the database, not from the
dispatchers' own counters: delivered events divided by the time between the
first and the last ``delivered_at``.

Target: four dispatchers deliver at least :data:`TARGET_RATIO` times what one
does on 2 cores, because the work is waiting, not computing: one dispatcher's
four workers spend 50 ms of every request waiting for the receiver. The rows
also give the CPU the whole set-up used per delivery and how busy the
machine's cores were, which is where it stops scaling: once the dispatchers,
the receivers and PostgreSQL together keep every core busy, another process
only adds contention (the row for 8 dispatchers shows it; quick mode skips it).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from payflow_lab.core.progress import note

__all__ = ["EVENTS", "RECEIVER_DELAY_S", "TARGET_RATIO", "WORKERS", "bench_scaleout", "measure"]

#: Seconds each receiver takes per request.
RECEIVER_DELAY_S = 0.05
#: Concurrent deliveries per dispatcher process.
WORKERS = 4
#: Payments (one webhook each) per measurement; quick mode uses a third.
EVENTS = 1500
#: ``scaleout.ratio_4_1`` must reach this.
TARGET_RATIO = 2.5


def _cpu_seconds(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by these processes and their children (PostgreSQL's backends)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            family = [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for member in family:
            try:
                times = member.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
    return total


def measure(url: str, routes: str, dispatchers: int, events: int, watched: list[int]) -> dict[str, Any]:
    """Deliver ``events`` webhooks with ``dispatchers`` processes: the rate from the database, and the CPU used."""
    from payflow_lab.durable.fleet import Fleet, load_payments
    from payflow_lab.durable.postgres import PostgresOutbox

    with PostgresOutbox(url) as outbox:
        outbox.truncate()
        with Fleet(url, routes, workers=WORKERS, lease=10.0, timeout=2.0, poll=0.5) as fleet:
            fleet.start(dispatchers)
            deadline = time.monotonic() + 120
            while not all(s.get("pid") for s in fleet.status().values()):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"dispatchers did not start: {fleet.status()}")
                time.sleep(0.05)
            pids = watched + [int(s["pid"]) for s in fleet.status().values()]
            cpu0, wall0 = _cpu_seconds(pids), time.perf_counter()
            load_payments(outbox, events, kinds=("webhook",))
            deadline = time.monotonic() + 600
            while outbox.pending():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{outbox.pending()} events still pending after 600 s")
                time.sleep(0.05)
            cpu, wall = _cpu_seconds(pids) - cpu0, time.perf_counter() - wall0
        count, first, last = outbox.execute(
            "SELECT COUNT(*), MIN(delivered_at), MAX(delivered_at) FROM outbox WHERE status = 'delivered'"
        )[0]
        reclaimed = outbox.reclaimed()
    rate = count / (last - first) if count > 1 and last > first else float("nan")
    return {
        "dispatchers": dispatchers,
        "delivered": int(count),
        "rate": rate,
        "cpu_ms_per_delivery": 1000 * cpu / max(1, count),
        "cores_busy": cpu / wall,
        "reclaimed": reclaimed,
    }


def bench_scaleout(quick: bool) -> list[dict[str, Any]]:
    """Rows ``scaleout.dispatchers_{1,2,4}`` (deliveries per real second), ``_8`` (where it stops), ``ratio_4_1``."""
    from payflow_lab.durable.fleet import ReceiverProcess
    from payflow_lab.durable.pgcluster import TemporaryPostgres

    events = EVENTS // 3 if quick else EVENTS
    rows: list[dict[str, Any]] = []
    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="payflow-scaleout-") as folder, TemporaryPostgres() as pg:
        with ReceiverProcess(Path(folder), merchants=3, delay=RECEIVER_DELAY_S) as receivers:
            watched = [pid for pid in (pg.pid(), receivers.pid) if pid is not None]
            for n in (1, 2, 4) if quick else (1, 2, 4, 8):
                note(f"scale-out: {events} webhooks through {n} dispatcher process(es)")
                result = measure(pg.url, receivers.routes, n, events, watched)
                rates[n] = result["rate"]
                rows.append(
                    {
                        "name": f"{n} dispatcher(s) x {WORKERS} workers, receivers taking "
                        f"{RECEIVER_DELAY_S * 1000:g} ms: deliveries per real second "
                        f"(CPU {result['cpu_ms_per_delivery']:.1f} ms per delivery, "
                        f"{result['cores_busy']:.2f} of {os.cpu_count()} cores busy)",
                        "key": f"scaleout.dispatchers_{n}",
                        "value": round(result["rate"], 1),
                        "unit": "deliveries/s",
                        "cores_busy": round(result["cores_busy"], 2),
                        "cpu_ms_per_delivery": round(result["cpu_ms_per_delivery"], 2),
                    }
                )
    ratio = rates[4] / rates[1]
    rows.append(
        {
            "name": f"4 dispatchers over 1 (target >= {TARGET_RATIO:g})",
            "key": "scaleout.ratio_4_1",
            "value": round(ratio, 2),
            "unit": "x",
            "met": ratio >= TARGET_RATIO,
        }
    )
    return rows
