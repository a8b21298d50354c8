"""Crash safety, proven: SIGKILL a real ``payflow-lab realtime`` process at 20+ seeded random moments, restart it.

The receivers run in this test process (a thread of their own, real HTTP on
127.0.0.1) and outlive every crash, as merchants' servers would. Each of them
waits 50 ms between applying an event and answering, so that most kills land
with deliveries applied but not yet marked done: the case at-least-once
delivery exists for. At the end one last process delivers whatever is
pending, and the test checks, for every authorized payment in the database:

* its webhook, analytics and audit events were all delivered (none pending,
  none dead-lettered): at least once;
* each was applied by exactly one receiver, exactly once, and the receivers'
  running totals per merchant equal the sums of the payments: exactly-once
  effects, however many times an event was sent.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from payflow_lab.durable import DURABLE_KINDS, Outbox, ReceiverLedger, Routes
from payflow_lab.durable.receiver import Receiver, serve_in_thread

pytestmark = pytest.mark.slow

KILLS = 22
SEED = 20261126
#: Every this-many-th kill lands during start-up (before the run is registered): a kill point too. The others
#: wait until the process has registered its run, however long a busy machine takes to start Python.
STARTUP_KILL_EVERY = 5
#: Safety net for a process to register its run, or to authorize its payments (real seconds); a loaded 2-core
#: laptop needs a few.
STARTUP_CAP_S = 60.0
#: A kill after start-up lands once the process has authorized this many payments (seeded, so the kill points
#: are the same on an idle and a busy machine: progress, not real time, decides), plus a random fraction of a second.
PAYMENTS_BEFORE_KILL = (6, 14)


def _count(db: Path, table: str) -> int:
    """Rows of ``table`` so far, read without writing anything (0 before the file exists, -1 before the schema)."""
    import sqlite3

    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:  # no table yet, or the writer holds it this instant
        return -1


def _runs(db: Path) -> int:
    """Runs registered in the outbox so far."""
    return _count(db, "runs")


def _child(db: Path, endpoints: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "payflow_lab",
        "realtime",
        "--db",
        str(db),
        "--endpoints",
        str(endpoints),
        "--workers",
        "8",
        *args,
    ]


def test_sigkill_at_random_points_loses_nothing_and_applies_nothing_twice(tmp_path: Path) -> None:
    db = tmp_path / "outbox.sqlite"
    names = ["merchants-1", "merchants-2", "analytics", "audit"]
    receivers = [Receiver(name, ledger=ReceiverLedger(tmp_path / f"{name}.sqlite")) for name in names]
    for receiver in receivers:
        receiver.set_mode(ack_delay=0.05)
    rng = random.Random(SEED)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    kills = 0
    started = time.monotonic()
    with serve_in_thread(receivers):
        endpoints = tmp_path / "endpoints.json"
        endpoints.write_text(
            json.dumps(
                Routes(
                    [r.endpoint for r in receivers[:2]],
                    {"analytics": receivers[2].endpoint, "audit": receivers[3].endpoint},
                ).as_dict()
            )
        )
        after_startup = 0
        for number in range(KILLS):
            registered = max(_runs(db), 0)
            child = subprocess.Popen(
                _child(
                    db, endpoints, "--duration", "60", "--rate", "40", "--drain", "0", "--seed", str(number), "--json"
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
            )
            try:
                if number % STARTUP_KILL_EVERY == 0:
                    time.sleep(rng.uniform(0.0, 0.8))  # during start-up, most likely
                else:
                    deadline = time.monotonic() + STARTUP_CAP_S
                    while _runs(db) <= registered:
                        assert child.poll() is None, f"run {number} ended: {child.stderr.read().decode()[-2000:]}"
                        assert time.monotonic() < deadline, f"run {number} did not register within {STARTUP_CAP_S} s"
                        time.sleep(0.02)
                    after_startup += 1
                    target = max(_count(db, "payments"), 0) + rng.randint(*PAYMENTS_BEFORE_KILL)
                    deadline = time.monotonic() + STARTUP_CAP_S
                    while _count(db, "payments") < target:
                        assert child.poll() is None, f"run {number} ended: {child.stderr.read().decode()[-2000:]}"
                        assert time.monotonic() < deadline, f"run {number} authorized too little within the cap"
                        time.sleep(0.02)
                    time.sleep(rng.uniform(0.0, 0.3))
                assert child.poll() is None, f"run {number} ended by itself: {child.stderr.read().decode()[-2000:]}"
                child.send_signal(signal.SIGKILL)
                kills += 1
            finally:
                child.wait(timeout=10)
                child.stderr.close()
        final = subprocess.run(
            _child(db, endpoints, "--duration", "0", "--drain", "60", "--json"),
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert final.returncode == 0, final.stderr[-3000:]
        summary = json.loads(final.stdout)
        assert summary["drained"], summary["outbox"]
    elapsed = time.monotonic() - started

    assert kills >= 20
    with Outbox(db) as outbox:
        payments = outbox.execute("SELECT id, merchant_id, amount_cents FROM payments ORDER BY id")
        events = outbox.events()
        runs = outbox.execute("SELECT COUNT(*) FROM runs")[0][0]
    # A kill during start-up (before the run is registered) is a kill point too, but most hit a running pipeline.
    assert after_startup <= runs - 1 <= KILLS and after_startup >= KILLS * 3 // 4
    assert len(payments) > 100, "the killed processes authorized too few payments for the test to mean much"

    # At least once: every authorized payment has all its events, and every one of them was delivered.
    by_payment: dict[str, set[str]] = {}
    for event in events:
        assert event.status == "delivered", (event.event_id, event.status, event.last_error)
        by_payment.setdefault(event.payment_id, set()).add(event.kind)
    assert set(by_payment) == {p[0] for p in payments}
    assert all(kinds == set(DURABLE_KINDS) for kinds in by_payment.values())

    # Exactly once: each event applied by one receiver, once; totals equal the payments' sums.
    applied = Counter(event_id for r in receivers for event_id in r.ledger.event_ids())
    assert set(applied) == {e.event_id for e in events}
    assert max(applied.values()) == 1
    expected: Counter[tuple[str, str]] = Counter()
    counted: Counter[tuple[str, str]] = Counter()
    for _, merchant, cents in payments:
        for kind in DURABLE_KINDS:
            expected[(merchant, kind)] += cents
            counted[(merchant, kind)] += 1
    totals = {}
    for receiver in receivers:
        totals.update(receiver.ledger.totals())
    assert {key: value[1] for key, value in totals.items()} == dict(expected)
    assert {key: value[0] for key, value in totals.items()} == dict(counted)

    stats = [r.ledger.stats() for r in receivers]
    redelivered = sum(s["duplicates"] for s in stats)
    assert redelivered > 0, "no kill landed between a receiver's answer and the mark: the crash window went untested"
    # A request cut short by the kill arrives with half a body: refused (408, truncated), never applied.
    refused = sum(r.counters["bad_signature"] + r.counters["malformed"] + r.counters["truncated"] for r in receivers)
    assert refused <= kills, [r.counters for r in receivers]
    print(
        f"\n{kills} kills ({runs - 1} after start-up), {len(payments)} payments, {len(events)} events, "
        f"{sum(s['deliveries'] for s in stats)} deliveries received, {redelivered} redeliveries deduplicated, "
        f"{refused} truncated requests refused, {elapsed:.1f} s"
    )
    for receiver in receivers:
        receiver.ledger.close()
