"""Dead letters: kept with their reason, listed and counted, replayed without losing any."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from payflow_lab.core.errors import ValidationError
from payflow_lab.core.vtime import BACKENDS, run_virtual
from payflow_lab.resilience import (
    BREAKER_OPEN_TOO_LONG,
    RETRIES_EXHAUSTED,
    RETRY_BUDGET_EMPTY,
    DeadLetter,
    DeadLetterStore,
    InMemoryDeadLetters,
    replay,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def filled(clock: FakeClock) -> InMemoryDeadLetters:
    """Five letters for three merchants, one every 10 s from t=0."""
    store = InMemoryDeadLetters(clock=clock)
    for key, reason in [
        ("mch_00001", RETRIES_EXHAUSTED),
        ("mch_00002", BREAKER_OPEN_TOO_LONG),
        ("mch_00001", BREAKER_OPEN_TOO_LONG),
        ("mch_00003", RETRY_BUDGET_EMPTY),
        ("mch_00001", RETRIES_EXHAUSTED),
    ]:
        store.add(key, {"payment_id": f"pay_{clock.now:012.0f}"}, reason, attempts=4, error="EndpointError: 503")
        clock.now += 10.0
    return store


# ------------------------------------------------------------------ keeping
@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("", {}, RETRIES_EXHAUSTED), "key"),
        (("mch_00001", {}, ""), "reason"),
        (("mch_00001", {}, None), "reason"),
    ],
)
def test_bad_letters_are_refused(args: tuple[Any, ...], field: str) -> None:
    store = InMemoryDeadLetters(clock=FakeClock())
    with pytest.raises(ValidationError) as caught:
        store.add(*args, attempts=1)
    assert caught.value.field == field
    with pytest.raises(ValidationError) as caught:
        store.add("mch_00001", {}, RETRIES_EXHAUSTED, attempts=-1)
    assert caught.value.field == "attempts"
    with pytest.raises(ValidationError) as caught:
        store.add("mch_00001", {}, RETRIES_EXHAUSTED, attempts=1, kind="")
    assert caught.value.field == "kind"
    assert len(store) == 0 and store.added == 0


def test_a_letter_keeps_everything_about_the_failed_delivery() -> None:
    clock = FakeClock()
    seen: list[DeadLetter] = []
    store = InMemoryDeadLetters(clock=clock, on_add=seen.append)
    clock.now = 51_300.0
    letter = store.add(
        "mch_00042", {"payment_id": "pay_0000000000ab"}, BREAKER_OPEN_TOO_LONG, attempts=3, error="BreakerOpen: open"
    )
    assert letter == DeadLetter(
        id="dl_000001",
        key="mch_00042",
        kind="webhook",
        payload={"payment_id": "pay_0000000000ab"},
        reason=BREAKER_OPEN_TOO_LONG,
        at=51_300.0,
        attempts=3,
        error="BreakerOpen: open",
    )
    assert seen == [letter] and store.get("dl_000001") == letter
    assert store.add("mch_00042", None, RETRIES_EXHAUSTED, attempts=1).id == "dl_000002"


def test_list_filters_by_key_reason_kind_and_age_oldest_first() -> None:
    clock = FakeClock()
    store = filled(clock)  # letters at t = 0, 10, 20, 30, 40; now t = 50
    store.add("mch_00002", None, RETRIES_EXHAUSTED, attempts=1, kind="analytics")
    ids = lambda letters: [letter.id for letter in letters]  # noqa: E731
    assert ids(store.list()) == [f"dl_00000{i}" for i in range(1, 7)]
    assert ids(store.list(key="mch_00001")) == ["dl_000001", "dl_000003", "dl_000005"]
    assert ids(store.list(reason=BREAKER_OPEN_TOO_LONG)) == ["dl_000002", "dl_000003"]
    assert ids(store.list(kind="analytics")) == ["dl_000006"]
    assert ids(store.list(older_than=30.0)) == ["dl_000001", "dl_000002", "dl_000003"]  # ages 50, 40, 30
    assert ids(store.list(newer_than=20.0)) == ["dl_000005", "dl_000006"]  # ages 10, 0
    assert ids(store.list(key="mch_00001", reason=RETRIES_EXHAUSTED, older_than=5.0)) == ["dl_000001", "dl_000005"]
    assert ids(store.list(limit=2)) == ["dl_000001", "dl_000002"]
    for bad in ({"older_than": -1}, {"newer_than": float("nan")}, {"limit": -1}):
        with pytest.raises(ValidationError):
            store.list(**bad)  # type: ignore[arg-type]


def test_counts_by_reason_and_key() -> None:
    store = filled(FakeClock())
    assert store.count_by_reason() == {BREAKER_OPEN_TOO_LONG: 2, RETRIES_EXHAUSTED: 2, RETRY_BUDGET_EMPTY: 1}
    assert store.count_by_key() == {"mch_00001": 3, "mch_00002": 1, "mch_00003": 1}


# ------------------------------------------------------------------ replay
@pytest.mark.parametrize("backend", BACKENDS)
def test_replay_removes_the_delivered_and_keeps_the_failed_with_updated_attempts(backend: str) -> None:
    clock = FakeClock()
    store = filled(clock)

    async def deliver(letter: DeadLetter) -> None:
        await anyio.sleep(0.1)
        if letter.key == "mch_00001":
            raise ConnectionError("still down")

    report = run_virtual(store.replay, deliver, backend=backend)
    assert report.replayed == ["dl_000002", "dl_000004"]
    assert report.failed == ["dl_000001", "dl_000003", "dl_000005"]
    assert report.as_dict() == {"replayed": 2, "failed": 3, "skipped": 0}
    assert [letter.id for letter in store] == report.failed
    for letter in store:
        assert (letter.attempts, letter.replays) == (5, 1)
        assert letter.error == "ConnectionError: still down"
        assert letter.last_replay_at == 50.0
        assert letter.reason in (RETRIES_EXHAUSTED, BREAKER_OPEN_TOO_LONG)  # the original reason stays
    assert store.removed == 2 and store.added == 5


def test_replay_can_target_one_merchant() -> None:
    store = filled(FakeClock())
    delivered: list[str] = []

    async def deliver(letter: DeadLetter) -> None:
        delivered.append(letter.id)

    async def main() -> None:
        await replay(store, deliver, key="mch_00001", reason=RETRIES_EXHAUSTED)

    run_virtual(main)
    assert delivered == ["dl_000001", "dl_000005"]
    assert store.count_by_key() == {"mch_00001": 1, "mch_00002": 1, "mch_00003": 1}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("concurrency", "seconds"), [(1, 9.0), (3, 3.0), (20, 1.0)])
def test_replay_runs_at_most_concurrency_deliveries_at_once(backend: str, concurrency: int, seconds: float) -> None:
    async def main() -> tuple[float, int, int]:
        store = InMemoryDeadLetters()
        for n in range(9):
            store.add(f"mch_{n:05d}", n, RETRIES_EXHAUSTED, attempts=1)
        running = peak = 0

        async def deliver(letter: DeadLetter) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await anyio.sleep(1.0)
            running -= 1

        start = anyio.current_time()
        report = await replay(store, deliver, concurrency=concurrency)
        return anyio.current_time() - start, peak, len(report.replayed)

    elapsed, peak, replayed = run_virtual(main, backend=backend)
    assert elapsed == pytest.approx(seconds)
    assert peak == min(concurrency, 9)
    assert replayed == 9


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cancelled_replay_loses_nothing(backend: str) -> None:
    async def main() -> tuple[int, int]:
        store = InMemoryDeadLetters()
        for n in range(10):
            store.add("mch_00001", n, BREAKER_OPEN_TOO_LONG, attempts=2)

        async def deliver(letter: DeadLetter) -> None:
            await anyio.sleep(1.0)

        with anyio.move_on_after(3.5):
            await replay(store, deliver)
        return len(store), store.removed

    left, removed = run_virtual(main, backend=backend)
    assert (left, removed) == (7, 3)  # three delivered; the one in flight stays


@pytest.mark.parametrize("backend", BACKENDS)
def test_stop_after_failures_probes_a_dead_endpoint_with_one_call(backend: str) -> None:
    clock = FakeClock()
    store = filled(clock)
    calls: list[str] = []

    async def down(letter: DeadLetter) -> None:
        calls.append(letter.id)
        raise ConnectionError("still down")

    async def main() -> None:
        report = await replay(store, down, stop_after_failures=1)
        assert report.failed == ["dl_000001"]
        assert report.skipped == ["dl_000002", "dl_000003", "dl_000004", "dl_000005"]
        two = await replay(store, down, stop_after_failures=2, key="mch_00001")
        assert (two.failed, two.skipped) == (["dl_000001", "dl_000003"], ["dl_000005"])

    run_virtual(main, backend=backend)
    assert calls == ["dl_000001", "dl_000001", "dl_000003"]
    assert [(letter.id, letter.attempts) for letter in store] == [
        ("dl_000001", 6),
        ("dl_000002", 4),
        ("dl_000003", 5),
        ("dl_000004", 4),
        ("dl_000005", 4),
    ]


def test_a_letter_removed_meanwhile_is_skipped() -> None:
    store = filled(FakeClock())
    delivered: list[str] = []

    async def deliver(letter: DeadLetter) -> None:
        delivered.append(letter.id)
        store.remove("dl_000003")  # someone else replayed it

    async def main() -> None:
        report = await replay(store, deliver)
        assert "dl_000003" not in report.replayed + report.failed

    run_virtual(main)
    assert delivered == ["dl_000001", "dl_000002", "dl_000004", "dl_000005"]
    assert len(store) == 0


def test_replay_refuses_bad_arguments() -> None:
    store = filled(FakeClock())

    async def deliver(letter: DeadLetter) -> None:
        raise AssertionError("must not be called")

    for kwargs, field in (
        ({"concurrency": 0}, "concurrency"),
        ({"older_than": -5}, "older_than"),
        ({"stop_after_failures": 0}, "stop_after_failures"),
    ):
        with pytest.raises(ValidationError) as caught:
            run_virtual(lambda: replay(store, deliver, **kwargs))  # noqa: B023
        assert caught.value.field == field
    assert len(store) == 5


@settings(max_examples=40, deadline=None)
@given(fates=st.lists(st.booleans(), min_size=0, max_size=40), backend=st.sampled_from(BACKENDS))
def test_replay_accounts_for_every_letter(fates: list[bool], backend: str) -> None:
    """Whatever succeeds or fails: replayed + failed = selected, the failed stay, attempts grow by exactly one."""

    async def main() -> None:
        store = InMemoryDeadLetters()
        for n, _ in enumerate(fates):
            store.add(f"mch_{n % 3:05d}", n, RETRIES_EXHAUSTED, attempts=n)

        async def deliver(letter: DeadLetter) -> None:
            await anyio.sleep(0.01 * (letter.payload % 7))
            if not fates[letter.payload]:
                raise OSError("503")

        report = await replay(store, deliver, concurrency=4)
        assert len(report.replayed) == sum(fates)
        assert len(report.failed) == len(fates) - sum(fates)
        assert [letter.id for letter in store] == report.failed
        for letter in store:
            assert letter.attempts == letter.payload + 1 and not fates[letter.payload]

    run_virtual(main, backend=backend)


# ------------------------------------------------------------------ the protocol fits a durable store
class SQLiteDeadLetters:
    """A minimal SQLite store with JSON payloads: enough to show the protocol is all replay() needs."""

    def __init__(self, clock: FakeClock) -> None:
        self.db = sqlite3.connect(":memory:")
        self.db.execute(
            "CREATE TABLE letters (id TEXT PRIMARY KEY, key TEXT, kind TEXT, payload TEXT, reason TEXT,"
            " at REAL, attempts INT, error TEXT, replays INT, last_replay_at REAL)"
        )
        self.clock = clock

    def now(self) -> float:
        return self.clock()

    def _letter(self, row: tuple[Any, ...]) -> DeadLetter:
        fields = dict(zip([f.name for f in dataclasses.fields(DeadLetter)], row, strict=True))
        fields["payload"] = json.loads(fields["payload"])
        return DeadLetter(**fields)

    def add(
        self, key: str, payload: Any, reason: str, *, attempts: int, kind: str = "webhook", error: str | None = None
    ) -> DeadLetter:
        serial = self.db.execute("SELECT COUNT(*) FROM letters").fetchone()[0] + 1
        letter = DeadLetter(f"dl_{serial:06d}", key, kind, payload, reason, self.now(), attempts, error)
        self.update(letter)
        return letter

    def get(self, letter_id: str) -> DeadLetter | None:
        row = self.db.execute("SELECT * FROM letters WHERE id = ?", (letter_id,)).fetchone()
        return None if row is None else self._letter(row)

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
        rows = self.db.execute("SELECT * FROM letters ORDER BY id").fetchall()
        letters = [self._letter(r) for r in rows if (key is None or r[1] == key) and (reason is None or r[4] == reason)]
        return letters[:limit]

    def update(self, letter: DeadLetter) -> None:
        values = dataclasses.astuple(letter)
        values = (*values[:3], json.dumps(letter.payload), *values[4:])
        self.db.execute("INSERT OR REPLACE INTO letters VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)

    def remove(self, letter_id: str) -> DeadLetter | None:
        letter = self.get(letter_id)
        self.db.execute("DELETE FROM letters WHERE id = ?", (letter_id,))
        return letter

    def count_by_reason(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT reason, COUNT(*) FROM letters GROUP BY reason ORDER BY reason"))

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM letters").fetchone()[0]


def test_another_store_behind_the_protocol_replays_the_same_way() -> None:
    clock = FakeClock()
    store = SQLiteDeadLetters(clock)
    assert isinstance(store, DeadLetterStore) and isinstance(InMemoryDeadLetters(), DeadLetterStore)
    for n in range(4):
        store.add(f"mch_0000{n % 2}", {"payment_id": n}, RETRIES_EXHAUSTED, attempts=4)
    clock.now = 60.0

    async def deliver(letter: DeadLetter) -> None:
        if letter.payload["payment_id"] % 2:
            raise ConnectionError("down")

    report = run_virtual(lambda: replay(store, deliver))
    assert report.replayed == ["dl_000001", "dl_000003"]
    assert report.failed == ["dl_000002", "dl_000004"]
    assert [(letter.id, letter.attempts, letter.last_replay_at) for letter in store.list()] == [
        ("dl_000002", 5, 60.0),
        ("dl_000004", 5, 60.0),
    ]
    assert store.count_by_reason() == {RETRIES_EXHAUSTED: 2}
