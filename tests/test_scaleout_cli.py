"""payflow-lab dispatch and payflow-lab receivers: refusals that name what is wrong, and one real run each."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from payflow_lab.durable import Fleet, ReceiverProcess, load_payments, open_outbox
from payflow_lab.durable.scaleout_bench import measure


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "payflow_lab", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--routes", "nowhere.json"], "cannot read nowhere.json"),
        (["--routes", "{routes}", "--workers", "0"], "workers"),
        (["--routes", "{routes}", "--lease", "3", "--timeout", "5"], "lease: must be longer than one delivery"),
        (["--routes", "{routes}", "--poll", "0"], "poll"),
        (["--routes", "{routes}", "--name", ""], "name"),
        (["--routes", "{bad}"], "is not JSON"),
    ],
)
def test_dispatch_refuses_bad_arguments_naming_them(args: list[str], message: str, tmp_path: Path) -> None:
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"webhook": [{"url": "http://127.0.0.1:9/", "secret": "whsec_" + "A" * 32}]}))
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    filled = [a.format(routes=routes, bad=bad) for a in args]
    result = cli("dispatch", "--db", str(tmp_path / "o.sqlite"), *filled)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o.sqlite").exists() or "workers" in message  # refused before the outbox was touched


def test_dispatch_names_an_unreachable_postgresql(tmp_path: Path) -> None:
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"webhook": [{"url": "http://127.0.0.1:9/", "secret": "whsec_" + "A" * 32}]}))
    result = cli("dispatch", "--db", "postgresql://me:hunter2@127.0.0.1:9/x", "--routes", str(routes))
    assert result.returncode == 2 and "127.0.0.1:9" in result.stderr and "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr


def test_receivers_refuse_a_missing_folder(tmp_path: Path) -> None:
    result = cli("receivers", "--dir", str(tmp_path / "missing"))
    assert result.returncode == 2 and "is not a directory" in result.stderr


def test_one_dispatcher_on_a_sqlite_outbox_delivers_everything_until_empty(tmp_path: Path) -> None:
    """The same command on the embedded store: SQLite takes claims too (one writer at a time)."""
    db = str(tmp_path / "outbox.sqlite")
    with open_outbox(db, clock=time.time) as outbox:  # real time: Unix seconds, like the dispatcher's
        assert load_payments(outbox, 30, kinds=("webhook", "audit")) == 60
    with ReceiverProcess(tmp_path / "receivers", merchants=2, delay=0.0) as receivers:
        result = cli("dispatch", "--db", db, "--routes", receivers.routes, "--until-empty", "--json", "--name", "solo")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["owner"] == "solo" and summary["stopped_by"] == "empty"
    assert summary["dispatcher"]["delivered"] == 60 and summary["dispatcher"]["lease_lost"] == 0
    final = receivers.final
    assert final is not None and sum(r["applied"] for r in final.values()) == 60
    with open_outbox(db, clock=time.time) as outbox:
        assert outbox.counts()["delivered"] == 60 and outbox.claims() == {}


def test_a_stopped_dispatcher_gives_its_claims_back_at_once(postgres_url: str, tmp_path: Path) -> None:
    with open_outbox(postgres_url) as outbox:
        load_payments(outbox, 200, kinds=("webhook",))
    with ReceiverProcess(tmp_path / "r", merchants=1, delay=0.5) as receivers:
        fleet = Fleet(postgres_url, receivers.routes, workers=2, lease=60.0, timeout=1.0)
        [name] = fleet.start(1)
        with open_outbox(postgres_url) as outbox:
            deadline = time.monotonic() + 60
            while not outbox.claims():
                assert time.monotonic() < deadline, fleet.logs(name)
                time.sleep(0.05)
            finals = fleet.stop()  # SIGTERM: a graceful stop releases, it does not wait 60 s for the leases
            assert outbox.claims() == {}
    assert finals[name]["stopped_by"] == "SIGTERM"


def test_the_scaleout_measurement_counts_from_the_database(postgres: object, tmp_path: Path) -> None:
    url = postgres.url  # type: ignore[attr-defined]
    with ReceiverProcess(tmp_path / "r", merchants=2, delay=0.05) as receivers:
        result = measure(url, receivers.routes, 1, 80, [])
    assert result["delivered"] == 80 and result["reclaimed"] == 0
    assert 5 < result["rate"] < 10_000 and result["cpu_ms_per_delivery"] > 0


def test_realtime_points_a_postgresql_url_to_the_commands_that_take_one() -> None:
    result = cli("realtime", "--db", "postgresql://payflow@127.0.0.1:5432/payflow", "--duration", "1")
    assert result.returncode == 2 and "payflow-lab dispatch" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_dispatcher_on_postgresql_runs_on_both_backends(backend: str, postgres_url: str, tmp_path: Path) -> None:
    """psycopg's blocking API from worker threads: the same dispatcher on asyncio and on trio."""
    import anyio

    from payflow_lab.durable import DispatchConfig, dispatch

    with open_outbox(postgres_url) as outbox:
        load_payments(outbox, 40, kinds=("webhook", "analytics"))
    with ReceiverProcess(tmp_path / "r", merchants=2, delay=0.0) as receivers:
        config = DispatchConfig(db=postgres_url, routes=receivers.routes, until_empty=True, name=f"on-{backend}")
        lines: list[dict[str, object]] = []
        summary = anyio.run(lambda: dispatch(config, emit=lines.append), backend=backend)
    assert summary["stopped_by"] == "empty" and summary["dispatcher"]["delivered"] == 80
    assert lines and lines[-1]["final"] is True
    with open_outbox(postgres_url) as outbox:
        assert outbox.counts()["delivered"] == 80 and outbox.claims() == {}


def test_the_processes_raise_their_open_files_limit_to_the_hard_limit() -> None:
    """A normal user's soft limit (1024) ran out after twenty kills in the receivers; both processes raise it."""
    code = (
        "import resource\n"
        "from payflow_lab.durable.fleet import raise_open_files_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))\n"
        "print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0], min(256, hard), hard)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    raised, now, lowered, hard = (int(x) for x in done.stdout.split())
    assert raised == now and now >= lowered and (now == hard or hard == -1)
    assert now > lowered or lowered == hard
