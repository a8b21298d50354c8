"""Issue 18, as an attacker and a careless operator would try it: foreign files, malformed secrets, bad input.

Each case failed on main before its fix (the issue says how); each must stay
fixed: nothing written to a file that is not ours, one clear line and exit
status 2 instead of a traceback, and every refusal naming what is wrong.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import subprocess
import sys
from datetime import UTC
from pathlib import Path

import pytest
from standardwebhooks import Webhook

import payflow_lab as pf
from payflow_lab.core.errors import CorruptDatabase, NotAnOutbox, TimestampOutOfTolerance, ValidationError
from payflow_lab.durable import Outbox, ReceiverLedger
from payflow_lab.durable.signing import sign, signed_headers, verify
from payflow_lab.runner import RunConfig


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "payflow_lab", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def foreign_database(path: Path) -> Path:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO customers VALUES (1, 'Ada')")
    return path


# ------------------------------------------------------------------ point 2: foreign files stay untouched
@pytest.mark.parametrize("command", ["realtime", "replay"])
def test_a_foreign_database_is_refused_without_a_single_write(tmp_path: Path, command: str) -> None:
    db = foreign_database(tmp_path / "shop.sqlite")
    before = digest(db)
    args = ["--db", str(db)] + (["--duration", "1", "--receivers", "1"] if command == "realtime" else [])
    done = cli(command, *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "other tables (customers)" in done.stderr and "Traceback" not in done.stderr
    assert digest(db) == before
    assert not (tmp_path / "shop.sqlite-wal").exists()  # not switched to WAL journaling either


def test_a_foreign_database_is_refused_through_the_api_too(tmp_path: Path) -> None:
    db = foreign_database(tmp_path / "shop.sqlite")
    before = digest(db)
    with pytest.raises(NotAnOutbox, match="refusing to touch it"):
        Outbox(db)
    assert digest(db) == before


@pytest.mark.parametrize("content", ["foreign-sqlite", "text"])
def test_a_receiver_ledger_path_holding_something_else_is_refused_before_the_run_is_registered(
    tmp_path: Path, content: str
) -> None:
    db = tmp_path / "outbox.sqlite"
    with Outbox(db, clock=lambda: 1.0) as outbox:
        outbox.start_run("setup")
    ledger = tmp_path / "outbox.sqlite.receiver-merchants-1.sqlite"
    if content == "text":
        ledger.write_text("these are my notes, not a database\n")
    else:
        foreign_database(ledger)
    before = digest(ledger)
    done = cli("realtime", "--db", str(db), "--duration", "1", "--receivers", "1", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and str(ledger.name) in done.stderr
    assert digest(ledger) == before
    with Outbox(db) as outbox:
        assert outbox.execute("SELECT COUNT(*) FROM runs")[0][0] == 1  # the refused run was never registered


def test_a_ledger_refuses_a_foreign_file_through_the_api(tmp_path: Path) -> None:
    path = foreign_database(tmp_path / "ledger.sqlite")
    before = digest(path)
    with pytest.raises(NotAnOutbox, match="receiver ledger"):
        ReceiverLedger(path)
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database at all, but long enough to have a header of sixteen bytes\n")
    with pytest.raises(CorruptDatabase, match="not a usable SQLite database"):
        ReceiverLedger(text)
    assert digest(path) == before


# ------------------------------------------------------------------ point 4: secrets and timestamps
def test_a_malformed_secret_in_the_endpoints_file_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    endpoints = tmp_path / "endpoints.json"
    endpoints.write_text(json.dumps({"webhook": [{"url": "http://127.0.0.1:9/", "secret": "whsec_!!not base64"}]}))
    done = cli(
        "realtime", "--db", str(tmp_path / "o.sqlite"), "--endpoints", str(endpoints), "--duration", "1", cwd=tmp_path
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("payflow-lab: error: --endpoints: webhook[0]")
    assert "secret" in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "o.sqlite").exists()  # refused before anything was created


def test_unpadded_base64_secrets_are_accepted_like_standard_webhooks_does() -> None:
    key = bytes(range(1, 25)) + b"\x07"  # 25 bytes: base64 needs padding
    padded = "whsec_" + base64.b64encode(key).decode()
    unpadded = padded.rstrip("=")
    assert unpadded != padded
    ours = sign(unpadded, "msg_1", 1_700_000_000, b'{"a":1}')
    assert ours == sign(padded, "msg_1", 1_700_000_000, b'{"a":1}')
    from datetime import datetime

    theirs = Webhook(unpadded).sign("msg_1", datetime.fromtimestamp(1_700_000_000, tz=UTC), '{"a":1}')
    assert ours == theirs


@pytest.mark.parametrize(
    "stamp",
    [
        " 1700000000",
        "1700000000 ",
        "+1700000000",
        "1_700_000_000",
        "1.7e9",
        "1700000000.0",
        "01700000000",
        "nan",
        "inf",
        "-1700000000",
        "0x6553f100",
    ],
)
def test_non_canonical_timestamps_are_rejected(stamp: str) -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    headers = signed_headers(secret, "msg_1", 1_700_000_000, b"{}")
    headers["webhook-timestamp"] = stamp
    headers["webhook-signature"] = "v1," + base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    with pytest.raises(TimestampOutOfTolerance, match="not Unix seconds"):
        verify(secret, b"{}", headers, now=1_700_000_000)


def test_the_canonical_timestamp_still_verifies() -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 24).decode()
    headers = signed_headers(secret, "msg_1", 1_700_000_000, b"{}")
    assert verify(secret, b"{}", headers, now=1_700_000_000) == "msg_1"


# ------------------------------------------------------------------ point 8: bad API input
def test_faults_for_merchants_that_do_not_exist_are_refused_naming_the_merchant() -> None:
    with pytest.raises(ValidationError, match="unknown merchant 'mch_00501'.*500 merchants") as caught:
        pf.run("normal", 1, duration=60, memory="off", faults={"merchants": {"mch_00501": {"mode": "down"}}})
    assert caught.value.field == "faults.merchants"
    RunConfig(faults={"merchants": {"mch_00500": {"mode": "down"}}})  # the last one exists


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"scenario": ["normal"]}, "scenario"),
        ({"scenario": {"name": "normal"}}, "scenario"),
        ({"backend": ["trio"]}, "backend"),
        ({"memory": {"off"}}, "memory"),
        ({"drain_seconds": True}, "drain_seconds"),
        ({"drain_seconds": float("nan")}, "drain_seconds"),
        ({"faults": ["traffic_multiplier"]}, "faults"),
    ],
)
def test_run_config_names_the_field_instead_of_a_bare_type_error(settings: dict, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RunConfig(**settings)
    assert caught.value.field == field


def test_replay_of_an_in_memory_database_is_an_error_not_an_empty_success(tmp_path: Path) -> None:
    done = cli("replay", "--db", ":memory:", cwd=tmp_path)
    assert done.returncode == 2
    assert "--db" in done.stderr and ":memory:" in done.stderr


# ------------------------------------------------------------------ point 3: errors inside realtime
def test_a_full_disk_during_realtime_is_one_line_exit_1_and_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import payflow_lab.durable.outbox as outbox_module
    from payflow_lab.app.cli import main

    real_connect = outbox_module.connect

    def small_disk(*args, **kwargs):  # SQLite's own size limit: a real SQLITE_FULL, a few pages in
        db = real_connect(*args, **kwargs)
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages + 4}")
        return db

    monkeypatch.setattr(outbox_module, "connect", small_disk)
    db = tmp_path / "outbox.sqlite"
    status = main(
        ["realtime", "--db", str(db), "--duration", "20", "--rate", "200", "--receivers", "1", "--no-fault", "--json"]
    )
    err = capsys.readouterr().err
    assert status == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "disk is full" in lines[0], err
    assert "Traceback" not in err and "ExceptionGroup" not in err
    with sqlite3.connect(db) as conn:  # every payment that was committed has all its events: nothing half-written
        payments = conn.execute("SELECT COUNT(*) FROM payments").fetchone()[0]
        events = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    assert payments > 0 and events == 3 * payments


def test_a_failed_commit_reports_its_own_cause_not_the_rollbacks() -> None:
    from payflow_lab.durable.schema import transaction

    class Connection:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def execute(self, sql: str):
            self.calls.append(sql)
            if sql == "COMMIT":
                raise sqlite3.OperationalError("database or disk is full")
            if sql == "ROLLBACK":
                raise sqlite3.OperationalError("cannot rollback - no transaction is active")

    from payflow_lab.core.errors import DiskFull

    conn = Connection()
    with pytest.raises(DiskFull, match="disk is full"):
        with transaction(conn, "x.sqlite"):  # type: ignore[arg-type]
            pass
    assert conn.calls == ["BEGIN IMMEDIATE", "COMMIT", "ROLLBACK"]


# ------------------------------------------------------------------ point 5: the receivers' count is part of the outbox
def test_a_restart_with_another_receiver_count_is_refused_not_miscounted(tmp_path: Path) -> None:
    db = tmp_path / "outbox.sqlite"
    first = cli(
        "realtime",
        "--db",
        str(db),
        "--duration",
        "2",
        "--rate",
        "20",
        "--receivers",
        "2",
        "--no-fault",
        "--json",
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    with Outbox(db, clock=lambda: 1.0) as outbox:
        runs = outbox.execute("SELECT COUNT(*) FROM runs")[0][0]
    changed = cli("realtime", "--db", str(db), "--duration", "1", "--receivers", "3", cwd=tmp_path)
    assert changed.returncode == 2
    assert "--receivers: this outbox was run with 2 merchant receivers" in changed.stderr
    assert "Traceback" not in changed.stderr
    with Outbox(db, clock=lambda: 1.0) as outbox:
        assert outbox.execute("SELECT COUNT(*) FROM runs")[0][0] == runs  # nothing registered
    again = cli(
        "realtime",
        "--db",
        str(db),
        "--duration",
        "1",
        "--rate",
        "20",
        "--receivers",
        "2",
        "--no-fault",
        "--json",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    check = json.loads(again.stdout)["check"]
    assert check["lost"] == 0 and check["applied_twice"] == 0
