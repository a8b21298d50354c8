"""Dead letters: deliveries that could not be made, kept with their reason until someone replays them.

The story's hookz example dropped a merchant's webhook for good while its
breaker was open. Here nothing is dropped: a delivery that exhausts its
retries, finds the retry budget empty, waits too long behind an open breaker,
or is still queued when the process stops, becomes a :class:`DeadLetter` with
its payload, its reason, when it happened, how many attempts it had, and the
last error. Later (when the merchant's endpoint is back, or an operator says
so) :func:`replay` sends them again through any async function the caller
supplies, typically the normal delivery path with its breaker and retries:
letters that are delivered leave the store; letters that fail again stay,
with their attempts and error updated. Delivery is at-least-once, so the
receiver deduplicates by the payment id, as Stripe's and Svix's receivers do
with their event ids.

The store sits behind a small protocol, :class:`DeadLetterStore`, so that a
durable store (SQLite, say) can replace :class:`InMemoryDeadLetters` without
touching its callers or :func:`replay`. Its methods are synchronous on
purpose: a local store answers in microseconds, and a synchronous API keeps
"add the letter" atomic in the event loop.
"""

from __future__ import annotations

import dataclasses
import pickle
import sqlite3
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import anyio

from payflow_lab.core.errors import ValidationError
from payflow_lab.core.validation import Clock, default_clock, integer, number

__all__ = [
    "BREAKER_OPEN_TOO_LONG",
    "DeadLetter",
    "DeadLetterStore",
    "InMemoryDeadLetters",
    "REASONS",
    "RETRIES_EXHAUSTED",
    "RETRY_BUDGET_EMPTY",
    "RATE_LIMITED_TOO_LONG",
    "ReplayReport",
    "SHUTDOWN",
    "replay",
]

#: The usual reasons, as short tokens (they double as Prometheus label values).
RETRIES_EXHAUSTED = "retries_exhausted"
RETRY_BUDGET_EMPTY = "retry_budget_empty"
BREAKER_OPEN_TOO_LONG = "breaker_open_too_long"
RATE_LIMITED_TOO_LONG = "rate_limited_too_long"
SHUTDOWN = "shutdown"
REASONS = (RETRIES_EXHAUSTED, RETRY_BUDGET_EMPTY, BREAKER_OPEN_TOO_LONG, RATE_LIMITED_TOO_LONG, SHUTDOWN)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One undelivered delivery.

    ``key`` is what it was for (a merchant id); ``kind`` what it was (``"webhook"``);
    ``at`` when it was dead-lettered (the store's clock); ``attempts`` how many
    deliveries were tried in all, replays included; ``error`` the last error.
    """

    id: str
    key: str
    kind: str
    payload: Any
    reason: str
    at: float
    attempts: int
    error: str | None = None
    replays: int = 0
    last_replay_at: float | None = None

    def age(self, now: float) -> float:
        return now - self.at


@runtime_checkable
class DeadLetterStore(Protocol):
    """What :func:`replay` and the phases need from a dead-letter store."""

    def add(
        self, key: str, payload: Any, reason: str, *, attempts: int, kind: str = "webhook", error: str | None = None
    ) -> DeadLetter: ...

    def get(self, letter_id: str) -> DeadLetter | None: ...

    def list(
        self,
        *,
        key: str | None = None,
        reason: str | None = None,
        kind: str | None = None,
        older_than: float | None = None,
        newer_than: float | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]: ...

    def update(self, letter: DeadLetter) -> None: ...

    def remove(self, letter_id: str) -> DeadLetter | None: ...

    def count_by_reason(self) -> dict[str, int]: ...

    def now(self) -> float: ...

    def __len__(self) -> int: ...


def check_letter(key: str, reason: str, kind: str, attempts: int) -> None:
    """Refuse a dead letter whose fields are wrong, naming the field (shared by every store)."""
    for name, value in (("key", key), ("reason", reason), ("kind", kind)):
        if not isinstance(value, str) or not value:
            raise ValidationError(name, f"must be a non-empty string, got {value!r}")
    integer("attempts", attempts, minimum=0)


class InMemoryDeadLetters:
    """A :class:`DeadLetterStore` in a dict, oldest first. Ids are ``dl_000001``, ... in order of arrival.

    ``clock`` stamps letters (default :func:`anyio.current_time`; Phase 5
    passes the story clock). ``on_add`` listeners get each new letter (for
    metrics and the run's recorder).

    ``keep_in_memory`` bounds the memory a long outage can take: once the
    store holds that many letters, the oldest ones move to a spill file (a
    private temporary SQLite database, deleted when the store is closed or
    collected), so none is lost and the process does not grow with the
    outage. Every method sees both parts as one store, in the same order.
    Spilled payloads are pickled, so they must be picklable; a letter read
    back from the spill is an equal copy, not the same object. The default,
    ``None``, keeps everything in memory.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        on_add: Callable[[DeadLetter], None] | None = None,
        keep_in_memory: int | None = None,
    ) -> None:
        if on_add is not None and not callable(on_add):
            raise ValidationError("on_add", f"must be callable, got {on_add!r}")
        if keep_in_memory is not None:
            integer("keep_in_memory", keep_in_memory, minimum=1)
        self._clock = default_clock(clock)
        self._letters: dict[str, DeadLetter] = {}
        self._keep = keep_in_memory
        self._spill: _Spill | None = None
        self._serial = 0
        self._listeners: list[Callable[[DeadLetter], None]] = [on_add] if on_add else []
        # Kept up to date on every change: a metrics scrape from another thread reads only these.
        self._by_reason: Counter[str] = Counter()
        self._by_key: Counter[str] = Counter()
        #: Letters ever added, and ever removed by a successful replay.
        self.added = 0
        self.removed = 0

    def now(self) -> float:
        return self._clock()

    @property
    def spilled(self) -> int:
        """How many letters are in the spill file now (0 without ``keep_in_memory``)."""
        return 0 if self._spill is None else len(self._spill)

    def add(
        self, key: str, payload: Any, reason: str, *, attempts: int, kind: str = "webhook", error: str | None = None
    ) -> DeadLetter:
        """Keep an undelivered ``payload`` for ``key`` with its ``reason``; return the letter."""
        check_letter(key, reason, kind, attempts)
        letter = DeadLetter(
            id=f"dl_{self._serial + 1:06d}",
            key=key,
            kind=kind,
            payload=payload,
            reason=reason,
            at=self._clock(),
            attempts=attempts,
            error=error,
        )
        if self._keep is not None and len(self._letters) >= self._keep:
            if self._spill is None:
                self._spill = _Spill()
            oldest = next(iter(self._letters.values()))
            self._spill.put(oldest)  # first: a payload that cannot be pickled raises here, and nothing has moved
            del self._letters[oldest.id]
        self._serial += 1
        self._letters[letter.id] = letter
        self._count(letter, +1)
        self.added += 1
        for listener in self._listeners:
            listener(letter)
        return letter

    def add_listener(self, listener: Callable[[DeadLetter], None]) -> None:
        if not callable(listener):
            raise ValidationError("listener", f"must be callable, got {listener!r}")
        self._listeners.append(listener)

    def get(self, letter_id: str) -> DeadLetter | None:
        letter = self._letters.get(letter_id)
        if letter is None and self._spill is not None:
            letter = self._spill.get(letter_id)
        return letter

    def list(
        self,
        *,
        key: str | None = None,
        reason: str | None = None,
        kind: str | None = None,
        older_than: float | None = None,
        newer_than: float | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """Letters matching every filter given, oldest first.

        ``older_than=60`` keeps letters at least 60 s old; ``newer_than=60``
        those less than 60 s old. ``limit`` keeps the first (oldest) ones.
        """
        if older_than is not None:
            number("older_than", older_than, minimum=0.0)
        if newer_than is not None:
            number("newer_than", newer_than, minimum=0.0)
        if limit is not None:
            integer("limit", limit, minimum=0)
        now = self._clock() if older_than is not None or newer_than is not None else 0.0
        found: list[DeadLetter] = []
        for letter in self._all():
            if limit is not None and len(found) >= limit:
                break
            if key is not None and letter.key != key:
                continue
            if reason is not None and letter.reason != reason:
                continue
            if kind is not None and letter.kind != kind:
                continue
            if older_than is not None and letter.age(now) < older_than:
                continue
            if newer_than is not None and letter.age(now) >= newer_than:
                continue
            found.append(letter)
        return found

    def update(self, letter: DeadLetter) -> None:
        """Replace the stored letter with the same id (after a failed replay)."""
        old = self.get(letter.id)
        if old is None:
            raise ValidationError("letter", f"no dead letter {letter.id!r} in the store")
        if letter.id in self._letters:
            self._letters[letter.id] = letter
        else:
            assert self._spill is not None
            self._spill.put(letter)
        self._count(old, -1)
        self._count(letter, +1)

    def remove(self, letter_id: str) -> DeadLetter | None:
        letter = self._letters.pop(letter_id, None)
        if letter is None and self._spill is not None:
            letter = self._spill.pop(letter_id)
        if letter is not None:
            self._count(letter, -1)
            self.removed += 1
        return letter

    def count_by_reason(self) -> dict[str, int]:
        """How many letters the store holds, by reason (sorted by reason)."""
        return {reason: n for reason, n in sorted(dict(self._by_reason).items()) if n}

    def count_by_key(self) -> dict[str, int]:
        """How many letters the store holds, by key (sorted by key)."""
        return {key: n for key, n in sorted(dict(self._by_key).items()) if n}

    def close(self) -> None:
        """Delete the spill file, and the letters in it. The store holds only its in-memory letters after."""
        if self._spill is not None:
            for letter in self._spill.letters():
                self._count(letter, -1)
            self._spill.close()
            self._spill = None

    def __len__(self) -> int:
        return len(self._letters) + self.spilled

    def __iter__(self) -> Iterator[DeadLetter]:
        return iter(list(self._all()))

    def _all(self) -> Iterator[DeadLetter]:
        # Spilled letters are always older than the ones in memory: the oldest is what gets spilled.
        if self._spill is not None:
            yield from self._spill.letters()
        yield from list(self._letters.values())

    def _count(self, letter: DeadLetter, step: int) -> None:
        self._by_reason[letter.reason] += step
        self._by_key[letter.key] += step

    async def replay(self, deliver: Callable[[DeadLetter], Awaitable[object]], **filters: Any) -> ReplayReport:
        """Shorthand for :func:`replay` on this store."""
        return await replay(self, deliver, **filters)


class _Spill:
    """The letters :class:`InMemoryDeadLetters` moved out of memory: a private temporary SQLite database.

    ``sqlite3.connect("")`` makes an on-disk database that only this
    connection sees and that SQLite deletes when the connection closes; its
    page cache is bounded (``cache_size``), so the process's memory stays flat.
    """

    def __init__(self) -> None:
        self._db = sqlite3.connect("", check_same_thread=False)
        self._db.execute("PRAGMA cache_size = -256")  # KiB: the page cache this spill may keep in memory
        self._db.execute("CREATE TABLE letters (serial INTEGER PRIMARY KEY, id TEXT UNIQUE, letter BLOB)")
        self._size = 0
        self._finalizer = weakref.finalize(self, self._db.close)

    def put(self, letter: DeadLetter) -> None:
        blob = pickle.dumps(letter, protocol=pickle.HIGHEST_PROTOCOL)
        with self._db:
            replaced = self._db.execute("UPDATE letters SET letter = ? WHERE id = ?", (blob, letter.id)).rowcount
            if not replaced:
                self._db.execute(
                    "INSERT INTO letters (serial, id, letter) VALUES (?, ?, ?)", (int(letter.id[3:]), letter.id, blob)
                )
                self._size += 1

    def get(self, letter_id: str) -> DeadLetter | None:
        row = self._db.execute("SELECT letter FROM letters WHERE id = ?", (letter_id,)).fetchone()
        return None if row is None else pickle.loads(row[0])

    def pop(self, letter_id: str) -> DeadLetter | None:
        letter = self.get(letter_id)
        if letter is not None:
            with self._db:
                self._db.execute("DELETE FROM letters WHERE id = ?", (letter_id,))
            self._size -= 1
        return letter

    def letters(self) -> Iterator[DeadLetter]:
        """Every spilled letter, oldest first, read in pages (never all in memory at once)."""
        after = 0
        while True:
            rows = self._db.execute(
                "SELECT serial, letter FROM letters WHERE serial > ? ORDER BY serial LIMIT 500", (after,)
            ).fetchall()
            if not rows:
                return
            for serial, blob in rows:
                after = serial
                yield pickle.loads(blob)

    def close(self) -> None:
        self._finalizer()

    def __len__(self) -> int:
        return self._size


@dataclass(slots=True)
class ReplayReport:
    """What a replay did: ids delivered (and removed), ids that failed again (and stayed)."""

    replayed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    #: Ids not attempted because ``stop_after_failures`` ended the replay early (they stay as they were).
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, int]:
        return {"replayed": len(self.replayed), "failed": len(self.failed), "skipped": len(self.skipped)}


async def replay(
    store: DeadLetterStore,
    deliver: Callable[[DeadLetter], Awaitable[object]],
    *,
    key: str | None = None,
    reason: str | None = None,
    kind: str | None = None,
    older_than: float | None = None,
    limit: int | None = None,
    concurrency: int = 1,
    stop_after_failures: int | None = None,
) -> ReplayReport:
    """Send the matching letters again through ``deliver(letter)``, oldest first.

    A letter whose delivery returns is removed from the store; one whose
    delivery raises stays, with ``attempts`` and ``replays`` incremented and
    ``error`` set. At most ``concurrency`` deliveries run at once. If the
    replay is cancelled, letters not yet delivered stay in the store. A
    letter removed meanwhile (by another replay) is passed over and appears
    in none of the report's lists.

    ``stop_after_failures=n`` stops taking new letters once ``n`` deliveries
    have failed (deliveries already running finish): with ``n=1`` the oldest
    letter is a probe, and a still-dead endpoint costs one call per replay,
    not one per letter. Letters not attempted are listed in ``skipped``.
    """
    integer("concurrency", concurrency, minimum=1)
    if stop_after_failures is not None:
        integer("stop_after_failures", stop_after_failures, minimum=1)
    if not callable(deliver):
        raise ValidationError("deliver", f"must be an async function of a DeadLetter, got {deliver!r}")
    letters = store.list(key=key, reason=reason, kind=kind, older_than=older_than, limit=limit)
    report = ReplayReport()
    outcomes: dict[str, bool] = {}
    queue = iter(letters)  # shared by the workers: each letter is taken exactly once
    failures = 0

    async def worker() -> None:
        nonlocal failures
        for letter in queue:
            if stop_after_failures is not None and failures >= stop_after_failures:
                return
            if store.get(letter.id) is None:
                continue
            try:
                await deliver(letter)
            except Exception as exc:  # the error is the letter's, not the replay's: keep the letter
                outcomes[letter.id] = False
                failures += 1
                current = store.get(letter.id)
                if current is not None:
                    store.update(
                        dataclasses.replace(
                            current,
                            attempts=current.attempts + 1,
                            replays=current.replays + 1,
                            error=f"{type(exc).__name__}: {exc}",
                            last_replay_at=store.now(),
                        )
                    )
            else:
                outcomes[letter.id] = True
                store.remove(letter.id)

    async with anyio.create_task_group() as tg:
        for _ in range(min(concurrency, len(letters))):
            tg.start_soon(worker)
    stopped = stop_after_failures is not None and failures >= stop_after_failures
    for letter in letters:  # report in the store's order, whatever order the deliveries finished in
        if letter.id in outcomes:
            (report.replayed if outcomes[letter.id] else report.failed).append(letter.id)
        elif stopped and store.get(letter.id) is not None:
            report.skipped.append(letter.id)
    return report
