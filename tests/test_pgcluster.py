"""A throw-away PostgreSQL cluster (payflow_lab.durable.pgcluster): it starts, answers, and leaves nothing behind.

Without PostgreSQL the tests that need a server are skipped, with the reason;
under CI (``CI=1`` or ``CI=true``) they fail instead (``tools/ensure-postgresql``
installs it). They run as root, where the cluster belongs to the ``postgres``
user, and as a normal user, where it belongs to that user.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from payflow_lab.durable.pgcluster import PostgresUnavailable, TemporaryPostgres, find_bin_dir, require_postgres


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true")


def _gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":  # exited; only its parent (init, here) has yet to collect it
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def pg_bin() -> Path:
    """PostgreSQL's bin directory; skips without one (fails under CI)."""
    try:
        return require_postgres()
    except PostgresUnavailable as missing:
        if _in_ci():
            pytest.fail(f"PostgreSQL tests NOT RUN under CI: {missing}", pytrace=False)
        pytest.skip(f"PostgreSQL tests NOT RUN: {missing}")


@pytest.fixture
def cluster(pg_bin: Path) -> Iterator[TemporaryPostgres]:
    with TemporaryPostgres() as pg:
        yield pg


def test_a_cluster_answers_with_its_settings(cluster: TemporaryPostgres) -> None:
    assert re.fullmatch(r"postgresql://payflow@127\.0\.0\.1:\d+/payflow", cluster.url)
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.execute("select current_user, current_database()").fetchone() == ("payflow", "payflow")
        settings = {
            name: conn.execute(f"show {name}").fetchone()
            for name in ("fsync", "synchronous_commit", "full_page_writes", "max_connections", "shared_buffers")
        }
    assert settings == {
        "fsync": ("off",),
        "synchronous_commit": ("off",),
        "full_page_writes": ("off",),
        "max_connections": ("200",),
        "shared_buffers": ("64MB",),
    }


def test_it_also_listens_on_a_unix_socket_in_its_directory(cluster: TemporaryPostgres) -> None:
    directory = cluster.directory
    assert directory is not None
    assert directory.parent == Path(tempfile.gettempdir()) and directory.name.startswith("payflow-pg-")
    if os.geteuid() == 0:
        assert directory.owner() == "postgres"
    with psycopg.connect(host=str(directory), port=cluster.port, user="payflow", dbname="payflow") as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_two_clusters_at_once_get_different_ports(pg_bin: Path) -> None:
    with TemporaryPostgres() as first, TemporaryPostgres(name="second") as second:
        assert first.port != second.port and first.directory != second.directory
        for pg, name in ((first, "payflow"), (second, "second")):
            with psycopg.connect(pg.url, autocommit=True) as conn:
                assert conn.execute("select current_database()").fetchone() == (name,)


def test_a_chosen_port_is_used(pg_bin: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with TemporaryPostgres(port=port) as pg:
        assert pg.url.endswith(f":{port}/payflow")
        with psycopg.connect(pg.url, autocommit=True) as conn:
            assert conn.execute("show port").fetchone() == (str(port),)


def test_stop_removes_the_directory_and_the_server(pg_bin: Path) -> None:
    pg = TemporaryPostgres().start()
    directory, pid = pg.directory, pg.pid()
    assert directory is not None and directory.is_dir()
    assert isinstance(pid, int)
    pg.stop()
    assert not directory.exists()
    assert _gone(pid), f"the postmaster (pid {pid}) still runs after stop()"
    assert pg.pid() is None and pg.directory is None
    with pytest.raises(RuntimeError, match="not running"):
        pg.url


def test_stop_twice_and_stop_before_start_are_fine(pg_bin: Path) -> None:
    TemporaryPostgres().stop()
    pg = TemporaryPostgres(name="twice").start()
    pg.stop()
    pg.stop()
    assert pg.pid() is None


def test_a_failed_start_says_why_and_leaves_nothing(pg_bin: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        pg = TemporaryPostgres(port=port)
        with pytest.raises(RuntimeError, match="Address already in use"):
            pg.start()
    assert pg.directory is None and pg.pid() is None


def test_payflow_pg_bin_is_honoured(pg_bin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYFLOW_PG_BIN", str(pg_bin))
    assert find_bin_dir() == pg_bin == require_postgres()


def test_a_bad_payflow_pg_bin_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nowhere = tmp_path / "no-postgres-here"
    monkeypatch.setenv("PAYFLOW_PG_BIN", str(nowhere))
    assert find_bin_dir() is None
    pg = TemporaryPostgres()
    with pytest.raises(PostgresUnavailable, match=re.escape(str(nowhere))):
        pg.start()
    assert pg.directory is None


def test_the_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="port"):
        TemporaryPostgres(port=70000)
    with pytest.raises(ValueError, match="database name"):
        TemporaryPostgres(name="a; drop")
