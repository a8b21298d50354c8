"""Faults across processes: dispatchers SIGKILLed and SIGSTOPped mid-run on one PostgreSQL outbox, nothing lost.

The checks do not trust the code under test: the outbox is read with plain
SQL, and what the receivers applied is read from their own ledger files.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import psycopg

from payflow_lab.durable import Fleet, ReceiverProcess, load_payments, open_outbox


def wait_until(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds:g} s for {what}")
        time.sleep(0.05)


def outbox_rows(url: str) -> dict[str, Any]:
    """What the database says, by plain SQL: statuses, and how often each event was claimed."""
    with psycopg.connect(url, autocommit=True) as conn:
        statuses = dict(conn.execute("SELECT status, COUNT(*) FROM outbox GROUP BY status").fetchall())
        ids = {row[0] for row in conn.execute("SELECT event_id FROM outbox")}
        reclaims = conn.execute("SELECT COALESCE(SUM(claims - 1), 0), COUNT(*) FILTER (WHERE claims > 1) FROM outbox")
        extra_claims, reclaimed = reclaims.fetchone()
        live = conn.execute("SELECT COUNT(*) FROM outbox WHERE claimed_by IS NOT NULL").fetchone()[0]
    return {
        "statuses": statuses,
        "ids": ids,
        "extra_claims": int(extra_claims),
        "reclaimed": int(reclaimed),
        "live": live,
    }


def applied(receivers: ReceiverProcess) -> tuple[list[str], int]:
    """Every event id the receivers applied (a list: one the ledgers applied twice would show twice), and repeats."""
    ledgers = receivers.ledgers()
    ids = [ident for ledger in ledgers.values() for ident in ledger["event_ids"]]
    return ids, sum(ledger["duplicates"] for ledger in ledgers.values())


def test_twenty_kills_lose_nothing_and_every_repeat_is_absorbed(postgres_url: str, tmp_path: Path) -> None:
    rng = random.Random(17)
    with open_outbox(postgres_url) as outbox:
        events = load_payments(outbox, 1500, kinds=("webhook", "analytics", "audit"))
    assert events == 4500
    with (
        ReceiverProcess(tmp_path / "receivers", merchants=3, delay=0.02) as receivers,
        Fleet(postgres_url, receivers.routes, workers=4, lease=3.0, timeout=1.0, poll=0.3) as fleet,
    ):
        names = fleet.start(3)
        wait_until(lambda: all(s.get("claimed") for s in fleet.status().values()), 60, "every dispatcher to claim")
        while fleet.kills < 20:
            time.sleep(rng.uniform(0.1, 0.5))
            victim = rng.choice(names)
            fleet.kill(victim)  # SIGKILL: its claims stay on the rows until their leases lapse
            fleet.restart(victim)
        during = outbox_rows(postgres_url)
        assert during["statuses"].get("pending", 0) > 0, "the kills must land while there is work, or prove nothing"
        try:
            wait_until(lambda: outbox_rows(postgres_url)["statuses"].get("pending", 0) == 0, 240, "the outbox to drain")
        except AssertionError as exc:  # say what the fleet was doing: that is what finds the cause
            with open_outbox(postgres_url) as box:
                detail = {"counts": box.counts(), "claims": box.claims(), "status": fleet.status()}
                detail["logs"] = {name: fleet.logs(name)[-8:] for name in names}
            raise AssertionError(f"{exc}: {detail}") from None
        fleet.stop()
    receivers.stop()

    rows = outbox_rows(postgres_url)
    ids, duplicates = applied(receivers)
    print(  # the figures the closing note reports: pytest -s
        f"kills {fleet.kills}; delivered {rows['statuses']}; applied {len(ids)}; duplicates absorbed {duplicates}; "
        f"events claimed more than once {rows['reclaimed']} (extra claims {rows['extra_claims']}); lost "
        f"{len(rows['ids'] - set(ids))}"
    )
    assert fleet.kills >= 20
    assert rows["statuses"] == {"delivered": 4500}  # none pending, none dead
    assert len(ids) == len(set(ids)) == 4500 and set(ids) == rows["ids"]  # each applied exactly once, none lost
    assert rows["reclaimed"] > 0  # the kills did take claims down with them
    assert duplicates <= rows["extra_claims"]  # a repeat only where a claim was taken over, and each absorbed
    assert rows["live"] == 0


def test_a_paused_dispatcher_does_not_deliver_what_it_lost_and_its_late_sends_are_absorbed(
    postgres_url: str, tmp_path: Path
) -> None:
    with open_outbox(postgres_url) as outbox:
        load_payments(outbox, 400, kinds=("webhook",))
    with (
        ReceiverProcess(tmp_path / "receivers", merchants=2, delay=0.2) as receivers,
        Fleet(postgres_url, receivers.routes, workers=4, lease=2.0, timeout=0.5, poll=0.2) as fleet,
    ):
        paused, other = fleet.start(2)
        wait_until(lambda: fleet.status()[paused].get("in_flight", 0) >= 2, 60, f"{paused} to hold claims")
        fleet.pause(paused)  # SIGSTOP: it holds claims, in memory and on the rows, and does nothing
        with open_outbox(postgres_url) as outbox:
            held = outbox.held_by(f"{paused}#1")
            assert held >= 1
            wait_until(lambda: f"{paused}#1" not in outbox.claims(), 60, f"{paused}'s leases to lapse")
            # Then taken over, every one (a lapsed claim nobody took is still the paused one's to settle), unless the
            # freeze fell between one of its writes and the COMMIT: that row stays locked, and SKIP LOCKED passes
            # over it, until the process wakes.
            deadline = time.monotonic() + 20
            while outbox.held_by(f"{paused}#1") and time.monotonic() < deadline:
                time.sleep(0.05)
        fleet.resume(paused)
        with open_outbox(postgres_url) as outbox:
            wait_until(lambda: outbox.pending() == 0, 120, "the outbox to drain")
        finals = fleet.stop()
    receivers.stop()

    rows = outbox_rows(postgres_url)
    ids, duplicates = applied(receivers)
    assert rows["statuses"] == {"delivered": 400}
    assert len(ids) == len(set(ids)) == 400 and set(ids) == rows["ids"]
    woke = finals[paused]["dispatcher"]
    print(
        f"paused held {held}; after waking: lease lost {woke['lease_lost']}, unfinished {woke['unfinished']}; "
        f"duplicates absorbed {duplicates}"
    )
    # Woken after its lease: what it had not started it dropped (lease lost); what was on the wire it could not
    # mark (lease lost), or the bus's timeout, long past when the process woke, abandoned it first (unfinished).
    # Which of the two a call on the wire meets depends on what the waking loop notices first.
    assert woke["lease_lost"] + woke["unfinished"] >= 1
    assert duplicates <= rows["extra_claims"]
