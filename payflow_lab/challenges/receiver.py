"""Lesson 07's challenge: a receiver that applies each event exactly once.

At-least-once delivery means the same event can arrive twice: a dispatcher
that crashed after sending but before marking the event done sends it again
when it restarts. The receiver's job is to make the *effect* happen once.
The learner writes the receiver; the judge delivers a stream of payment
events with duplicates, late duplicates and out-of-order arrivals, and
restarts the receiver (a new object on the same database file) every few
dozen deliveries, then reads the ``credits`` table and compares it with what
each payment should have been credited.
"""

from __future__ import annotations

import random
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from payflow_lab.challenges.base import Challenge, Verdict

__all__ = ["CHALLENGE"]

EVENTS = 300
SEEDS = (1, 2, 3)

STARTER = '''\
import sqlite3


class MyReceiver:
    """A merchant's webhook receiver: each payment event credits the merchant's books, exactly once.

    The same event may be delivered twice (at-least-once delivery), and the process may restart between
    deliveries: the checker then builds a new Receiver on the same file. Keep the credits in the
    ``credits`` table; keep anything else that must survive a restart in the same database.
    """

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS credits (payment_id TEXT, amount_cents INTEGER)")
        self.db.commit()

    def apply(self, event_id: str, payment_id: str, amount_cents: int) -> None:
        """Credit ``amount_cents`` for ``payment_id``, once per ``event_id``."""
        self.db.execute("INSERT INTO credits VALUES (?, ?)", (payment_id, amount_cents))   # TODO: once
        self.db.commit()

    def close(self) -> None:
        self.db.close()
'''


class Receiver:
    """The reference: the event id and the credit are written in one transaction; a repeat changes nothing."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS credits (payment_id TEXT, amount_cents INTEGER)")
        self.db.execute("CREATE TABLE IF NOT EXISTS applied (event_id TEXT PRIMARY KEY)")
        self.db.commit()

    def apply(self, event_id: str, payment_id: str, amount_cents: int) -> None:
        with self.db:  # one transaction: both rows, or neither
            seen = self.db.execute("INSERT OR IGNORE INTO applied VALUES (?)", (event_id,)).rowcount == 0
            if not seen:
                self.db.execute("INSERT INTO credits VALUES (?, ?)", (payment_id, amount_cents))

    def close(self) -> None:
        self.db.close()


class RemembersInMemory(Receiver):
    """Wrong: remembers the event ids in a set, which a restart forgets."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.seen: set[str] = set()

    def apply(self, event_id: str, payment_id: str, amount_cents: int) -> None:
        if event_id in self.seen:
            return
        self.seen.add(event_id)
        with self.db:
            self.db.execute("INSERT INTO credits VALUES (?, ?)", (payment_id, amount_cents))


class DedupesByPayment(Receiver):
    """Wrong: keys on the payment, not the event, so a payment's second event (a refund) is lost."""

    def apply(self, event_id: str, payment_id: str, amount_cents: int) -> None:
        with self.db:
            seen = self.db.execute("INSERT OR IGNORE INTO applied VALUES (?)", (payment_id,)).rowcount == 0
            if not seen:
                self.db.execute("INSERT INTO credits VALUES (?, ?)", (payment_id, amount_cents))


def _events(rng: random.Random) -> list[tuple[str, str, int]]:
    """Payment events; one payment in ten is later partly refunded (a second event, a negative credit).

    A refund's amount is drawn so that the payment's total tells how many times each of its two events was
    credited (no two ways of applying them 0 to 3 times add up to the same total): the books are the
    receiver's own, and the judge reads nothing else.
    """
    events = []
    for n in range(EVENTS):
        payment = f"pay_{n:012d}"
        amount = rng.randrange(100, 50_000)
        events.append((f"evt_{n:012d}_captured", payment, amount))
        if rng.random() < 0.1:
            while True:
                refund = -rng.randrange(1, amount)
                totals = {a * amount + r * refund for a in range(4) for r in range(4)}
                if len(totals) == 16:
                    break
            events.append((f"evt_{n:012d}_refunded", payment, refund))
    return events


def _deliveries(rng: random.Random, events: list[tuple[str, str, int]]) -> list[tuple[int, tuple[str, str, int]]]:
    """At-least-once: every event once, a third of them again (some much later), in a jittered order."""
    plan = [(float(i) + rng.uniform(0, 3), e) for i, e in enumerate(events)]
    plan += [(float(i) + rng.uniform(1, 60), e) for i, e in enumerate(events) if rng.random() < 0.33]
    plan.sort(key=lambda item: item[0])
    return list(enumerate(e for _, e in plan))


def _credits(path: Path) -> dict[str, int]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT payment_id, SUM(amount_cents) FROM credits GROUP BY payment_id").fetchall()
    except sqlite3.Error as exc:
        raise RuntimeError(f"the credits table cannot be read: {exc}") from None
    finally:
        db.close()
    return {payment: int(total) for payment, total in rows}


def _drive(candidate: type, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    events = _events(rng)
    deliveries = _deliveries(rng, events)
    restarts: list[int] = []
    memory_disk = "/dev/shm" if Path("/dev/shm").is_dir() else None  # no fsync wait where RAM can hold it
    with tempfile.TemporaryDirectory(prefix="payflow-check-", dir=memory_disk) as folder:
        path = Path(folder) / "receiver.sqlite"
        receiver = candidate(str(path))
        since_restart = 0
        for number, (event_id, payment, amount) in deliveries:
            receiver.apply(event_id, payment, amount)
            since_restart += 1
            if since_restart >= rng.randrange(20, 60):
                getattr(receiver, "close", lambda: None)()
                receiver = candidate(str(path))  # the process restarts: only the file remains
                restarts.append(number)
                since_restart = 0
        getattr(receiver, "close", lambda: None)()
        got = _credits(path)
    want: dict[str, int] = {}
    for _, payment, amount in events:
        want[payment] = want.get(payment, 0) + amount
    first_seen: dict[str, int] = {}
    for number, (event_id, _, _) in deliveries:
        first_seen.setdefault(event_id, number)
    return {
        "seed": seed,
        "events": events,
        "deliveries": deliveries,
        "restarts": restarts,
        "got": got,
        "want": want,
        "first_seen": first_seen,
    }


def _applied(run: dict[str, Any]) -> dict[str, int]:
    """How many times each event took effect, read back from the books.

    A payment's events have distinct amounts (a capture, and perhaps a refund of minus half of it), so the
    payment's total says how many times each was credited.
    """
    counts: dict[str, int] = {}
    by_payment: dict[str, list[tuple[str, int]]] = {}
    for event_id, payment, amount in run["events"]:
        by_payment.setdefault(payment, []).append((event_id, amount))
    for payment, events in by_payment.items():
        total = run["got"].get(payment, 0)
        if len(events) == 1:
            ((event_id, amount),) = events
            counts[event_id] = total // amount if total % amount == 0 else -1
            continue
        (captured, amount), (refunded, refund) = events
        found = next(((a, r) for a in range(4) for r in range(4) if a * amount + r * refund == total), (-1, -1))
        # (-1: applied more often than the judge can tell, or with other amounts)
        counts[captured], counts[refunded] = found
    return counts


def _judge(candidate: Any, backend: str) -> list[Verdict]:
    # SQLite and plain calls: nothing here waits on an event loop, so both backends judge the same run.
    runs = [_drive(candidate, seed) for seed in SEEDS]
    same_life: list[tuple[dict[str, Any], str, int]] = []
    across: list[tuple[dict[str, Any], str, int]] = []
    missing: list[tuple[dict[str, Any], str, int]] = []
    duplicated = straddling = 0
    for run in runs:
        counts = _applied(run)
        numbers: dict[str, list[int]] = {}
        for number, (event_id, _, _) in run["deliveries"]:
            numbers.setdefault(event_id, []).append(number)
        for event_id, count in counts.items():
            seen = numbers[event_id]
            restarted = any(seen[0] <= r < seen[-1] for r in run["restarts"])  # restart r: after delivery r
            if len(seen) > 1:
                duplicated += not restarted
                straddling += restarted
            if count == 0:
                missing.append((run, event_id, count))
            elif count != 1:
                (across if restarted else same_life).append((run, event_id, count))

    def where(run: dict[str, Any], event_id: str, count: int) -> dict[str, Any]:
        numbers = [n for n, (e, _, _) in run["deliveries"] if e == event_id]
        payment = next(p for e, p, _ in run["events"] if e == event_id)
        return {
            "seed": run["seed"],
            "event": event_id,
            "payment": payment,
            "delivered": "as delivery " + " and ".join(f"#{n}" for n in numbers),
            "applied": "more than 3 times, or a wrong amount" if count < 0 else f"{count} time(s)",
            "restarts between": sum(1 for r in run["restarts"] if numbers[0] <= r < numbers[-1]),
        }

    return [
        Verdict(
            "duplicates absorbed",
            not same_life,
            f"{len(same_life):,} of {duplicated:,} applied again",
            "0",
            "an event delivered twice to the same process took effect once"
            if not same_life
            else "an event delivered twice took effect twice",
            where(*same_life[0]) if same_life else None,
            None if not same_life else "before crediting, ask whether this event id was applied already",
        ),
        Verdict(
            "survives restarts",
            not across,
            f"{len(across):,} of {straddling:,} applied again",
            "0",
            "duplicates that arrived after a restart were absorbed too"
            if not across
            else "after a restart, an event that was applied before took effect again",
            where(*across[0]) if across else None,
            None
            if not across
            else "what the receiver remembers must outlive it: keep it in the database, "
            "written in the same transaction as the credit",
        ),
        Verdict(
            "every event applied",
            not missing,
            f"{len(missing):,} events never applied",
            "0",
            "every event took effect" if not missing else "an event that was delivered never took effect",
            where(*missing[0]) if missing else None,
            None
            if not missing
            else "what makes an event a duplicate is its event id, not its payment: "
            "one payment can have several events",
        ),
    ]


def _shape(candidate: Any) -> str | None:
    if not isinstance(candidate, type):
        return "must be a class (MyReceiver), constructed with the database path"
    if not callable(getattr(candidate, "apply", None)):
        return "the class has no apply(event_id, payment_id, amount_cents) method"
    return None


CHALLENGE = Challenge(
    name="idempotent-receiver",
    lesson="07",
    title="A receiver that applies each event once",
    statement=(
        "Write `MyReceiver`: each payment event credits the merchant's books (the `credits` table) exactly once, "
        "though events arrive twice, late and out of order, and the receiver restarts every few dozen "
        "deliveries. The checker delivers three streams of payment events (some with a refund) and compares "
        "the books with what each payment is owed."
    ),
    entry="MyReceiver",
    starter=STARTER,
    reference=Receiver,
    wrong={
        "remembers-in-memory": (RemembersInMemory, "survives restarts"),
        "dedupes-by-payment": (DedupesByPayment, "every event applied"),
    },
    shape=_shape,
    run=_judge,
    invariants=("duplicates absorbed", "survives restarts", "every event applied"),
    solution_header="import sqlite3\n\n\n",
    solution_parts=(Receiver,),
    solution_renames={"class Receiver:": "class MyReceiver:"},
)
