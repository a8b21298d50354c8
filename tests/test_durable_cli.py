"""``payflow-lab replay`` (list and re-queue dead letters) and ``payflow-lab realtime`` (the real-HTTP scenario)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from payflow_lab.app.cli import main
from payflow_lab.core.domain import Payment
from payflow_lab.durable import Outbox
from payflow_lab.durable.commands import parse_age


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    data = json.loads(out) if "--json" in argv and status in (0, 1) else out
    return status, data, err


@pytest.fixture
def letters_db(tmp_path: Path) -> Path:
    """Five dead letters: two merchants and a service, two reasons, written 3 h, 2 h, 1 h, 30 min and now ago."""
    path = tmp_path / "outbox.sqlite"
    now = time.time()
    ages = [3 * 3600, 2 * 3600, 3600, 1800, 0]
    with Outbox(path, clock=time.time) as outbox:
        for n, (merchant, kind, reason) in enumerate(
            [
                ("mch_00001", "webhook", "retries_exhausted"),
                ("mch_00002", "webhook", "breaker_open_too_long"),
                ("mch_00001", "webhook", "breaker_open_too_long"),
                ("mch_00003", "audit", "retries_exhausted"),
                ("mch_00001", "webhook", "retries_exhausted"),
            ]
        ):
            payment = Payment(
                id=f"pay_{n + 1:012x}", merchant_id=merchant, amount_cents=500, currency="USD", created_at=now
            )
            [event] = outbox.record_authorization(payment, kinds=(kind,))
            outbox.clock = lambda age=ages[n]: time.time() - age  # type: ignore[misc]
            outbox.dead_letters.add(event.key, event, reason, attempts=4, kind=kind, error="HTTP 503")
            outbox.clock = time.time
    return path


def test_replay_lists_dead_letters_filtered_by_merchant_reason_kind_and_age(
    capsys: pytest.CaptureFixture[str], letters_db: Path
) -> None:
    status, data, _ = run_cli(capsys, "replay", "--db", str(letters_db), "--json")
    assert status == 0 and data["matched"] == 5 and data["requeued"] == 0
    assert [row["id"] for row in data["letters"]] == [f"dl_00000{i}" for i in range(1, 6)]  # oldest first
    assert data["letters"][0]["event_id"] == "evt_000000000001_webhook" and data["letters"][0]["age_s"] >= 3 * 3600
    assert data["remaining_by_reason"] == {"breaker_open_too_long": 2, "retries_exhausted": 3}

    def ids(*filters: str) -> list[str]:
        _, result, _ = run_cli(capsys, "replay", "--db", str(letters_db), "--json", *filters)
        return [row["id"] for row in result["letters"]]

    assert ids("--merchant", "mch_00001") == ["dl_000001", "dl_000003", "dl_000005"]
    assert ids("--merchant", "audit") == ["dl_000004"]  # a service's letters are keyed by the service
    assert ids("--reason", "breaker_open_too_long") == ["dl_000002", "dl_000003"]
    assert ids("--kind", "audit") == ["dl_000004"]
    assert ids("--older-than", "90m") == ["dl_000001", "dl_000002"]
    assert ids("--newer-than", "45m") == ["dl_000004", "dl_000005"]
    assert ids("--merchant", "mch_00001", "--reason", "retries_exhausted", "--older-than", "1h") == ["dl_000001"]
    assert ids("--limit", "2") == ["dl_000001", "dl_000002"]


def test_replay_requeue_puts_the_same_events_back_in_the_outbox(
    capsys: pytest.CaptureFixture[str], letters_db: Path
) -> None:
    status, data, _ = run_cli(
        capsys,
        "replay",
        "--db",
        str(letters_db),
        "--merchant",
        "mch_00001",
        "--reason",
        "breaker_open_too_long",
        "--requeue",
        "--json",
    )
    assert status == 0 and data["requeued"] == 1 and data["letters"][0]["id"] == "dl_000003"
    assert data["outbox"]["pending"] == 1 and data["outbox"]["dead"] == 4
    with Outbox(letters_db, clock=time.time) as outbox:
        [event] = outbox.events(status="pending")
        assert event.event_id == "evt_000000000003_webhook" and event.attempts == 4
        assert len(outbox.dead_letters) == 4
    status, text, _ = run_cli(capsys, "replay", "--db", str(letters_db))  # the table, for people
    assert status == 0 and "Dead letters in" in text and "1 pending, 0 delivered, 4 dead" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replay", "--db", "{missing}"], "no such database file"),
        (["replay", "--db", "{garbage}"], "not a usable SQLite database"),
        (["replay", "--db", "{future}"], "schema version 7 is unknown"),
        (["replay", "--db", "{future}", "--older-than", "soon"], "must be an age"),
        (["replay"], "--db"),
        (["realtime", "--rate", "0", "--db", ":memory:"], "rate: must be between"),
        (["realtime", "--endpoints", "{missing}"], "endpoints: cannot read"),
        (["realtime", "--fail-window", "0.6", "0.2", "--db", ":memory:"], "--fail-window: must start before it ends"),
    ],
)
def test_bad_input_is_one_clear_line_and_status_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"\x00not sqlite\x00" * 500)
    future = tmp_path / "future.sqlite"
    Outbox(future).close()
    raw = sqlite3.connect(future)
    raw.execute("PRAGMA user_version = 7")
    raw.close()
    names = {"missing": tmp_path / "nope.sqlite", "garbage": garbage, "future": future}
    status, out, err = run_cli(capsys, *[arg.format(**names) for arg in argv])
    assert status == 2 and out == ""
    assert err.startswith("payflow-lab: error:") and message in err and err.count("\n") == 1


def test_ages_are_read_with_units() -> None:
    assert [parse_age(t) for t in ("90", "90s", "15m", "2h", "1d", "1.5h")] == [90, 90, 900, 7200, 86400, 5400]


def test_the_realtime_scenario_delivers_over_http_with_a_receiver_failing_and_recovering(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = tmp_path / "rt.sqlite"
    status, s, err = run_cli(
        capsys,
        "realtime",
        "--db",
        str(db),
        "--duration",
        "4",
        "--rate",
        "25",
        "--receivers",
        "2",
        "--fail-window",
        "0.1",
        "0.6",
        "--json",
    )
    assert status == 0, err
    check = s["check"]
    assert s["payments"]["authorized"] > 40
    assert check["events"] == 3 * s["payments"]["authorized"]
    assert check["lost"] == 0 and check["applied_twice"] == 0 and check["all_delivered"], check
    assert check["applied"] == check["events"]
    # The first receiver failed (503s were seen), recovered, and its merchants' webhooks got through.
    [fault] = s["faults"]
    assert fault["receiver"] == "merchants-1" and fault["recovered_at_s"] > fault["failing_from_s"]
    assert s["receivers"]["merchants-1"]["failed_on_purpose"] > 0
    assert s["receivers"]["merchants-1"]["applied"] > 0
    assert int(s["http"]["statuses"].get("503", 0)) > 0
    assert any(b["to"] == "open" for b in s["breakers"])
    assert s["outbox"]["pending"] == 0 and s["dead_letters"] == {}
    # The ledgers live beside the database, so a second run on the same file still deduplicates.
    assert (tmp_path / "rt.sqlite.receiver-merchants-1.sqlite").exists()
    status, again, _ = run_cli(capsys, "realtime", "--db", str(db), "--duration", "0", "--json")
    assert status == 0 and again["run"] == 2 and again["outbox"]["payments"] == s["outbox"]["payments"]


def test_replay_reads_a_simulated_file_in_story_time(tmp_path):
    """A simulation's outbox holds story time; replay must not age its letters against the Unix clock."""
    import json as _json
    import subprocess as _subprocess
    import sys as _sys

    from payflow_lab.durable.outbox import Outbox
    from payflow_lab.durable.pipeline import run_durable

    path = tmp_path / "simulated.sqlite"
    box = Outbox(path)
    run_durable(
        "normal",
        seed=3,
        scale=0.02,
        duration=1200,
        outbox=box,
        memory="off",
        faults={"tier_modes": {"standard": "down"}},
    )
    dead = sum(box.dead_letters.count_by_reason().values())
    box.close()
    assert dead > 0
    done = _subprocess.run(
        [_sys.executable, "-m", "payflow_lab", "replay", "--db", str(path), "--json", "--requeue"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = _json.loads(done.stdout)
    assert report["matched"] == report["requeued"] == dead
    # Story seconds (the run, its drain and its shutdown), not the decades since 1970.
    assert all(0 <= letter["age_s"] <= 1200 + 120 for letter in report["letters"])
    box = Outbox(path)
    run_durable("normal", seed=4, scale=0.02, duration=600, outbox=box, memory="off")  # a healthy restart
    assert box.dead_letters.count_by_reason() == {}
    assert box.counts()["dead"] == 0
    box.close()
