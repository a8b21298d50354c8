"""Shared fixtures: cached simulation runs (a run is deterministic, so tests may share one)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import pytest

import payflow_lab as pf


@lru_cache(maxsize=64)
def _cached(
    scenario: str, phase: int, seed: int, scale: float, duration: float | None, backend: str, memory: str
) -> pf.RunResult:
    return pf.run(scenario, phase=phase, seed=seed, scale=scale, duration=duration, backend=backend, memory=memory)


@pytest.fixture(scope="session")
def simulate():
    """``simulate(scenario, phase, seed=7, scale=0.1, duration=None, backend="asyncio", memory="tracemalloc")``.

    Runs are cached for the session: treat the result as read-only.
    """

    def run(
        scenario: str = "normal",
        phase: int = 1,
        *,
        seed: int = 7,
        scale: float = 0.1,
        duration: float | None = None,
        backend: str = "asyncio",
        memory: str = "tracemalloc",
    ) -> Any:
        return _cached(scenario, phase, seed, scale, duration, backend, memory)

    return run


# ------------------------------------------------------------------------------------------ PostgreSQL
def in_ci() -> bool:
    """Under CI a missing service is a failure, not a skip: nothing may pass by not running."""
    import os

    return os.environ.get("CI", "").strip().lower() in ("1", "true")


@pytest.fixture(scope="session")
def postgres() -> Any:
    """A throw-away PostgreSQL cluster for this test process (each xdist worker starts its own), removed at the end.

    Without PostgreSQL: skipped with the reason, or failed under CI.
    """
    from payflow_lab.durable.pgcluster import PostgresUnavailable, TemporaryPostgres

    try:
        cluster = TemporaryPostgres().start()
    except PostgresUnavailable as exc:
        if in_ci():
            pytest.fail(f"PostgreSQL is needed under CI and could not be started: {exc}")
        pytest.skip(f"PostgreSQL is not available here: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres: Any, request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty database in the session's cluster (one per test: nothing leaks between tests)."""
    import re

    import psycopg

    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40] + f"_{id(request) % 100000}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = postgres.url.rsplit("/", 1)[0] + "/" + name
    yield url
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
