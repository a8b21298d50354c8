"""Lesson 08's live view, driven as the notebook drives it but without a browser: start, kill one, nothing lost."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from payflow_lab.core.errors import ValidationError
from payflow_lab.durable import ReceiverProcess
from payflow_lab.lab.fleet_view import FleetView


def metric(view: FleetView, key: str) -> str:
    found = re.search(rf'data-metric="{key}" data-value="([^"]*)"', view.readout.value)
    assert found, f"no {key} in the readout"
    return found.group(1)


def test_a_killed_dispatcher_s_claims_are_taken_over_and_nothing_is_lost(postgres_url: str, tmp_path: Path) -> None:
    with ReceiverProcess(tmp_path / "r", merchants=2, delay=0.05) as receivers:
        view = FleetView(postgres_url, receivers, events=800, dispatchers=2, workers=4, lease=2.0, timeout=0.5)
        try:
            assert metric(view, "state") == "idle" and view.kill_button.disabled
            view.start()
            assert view.start_button.disabled and not view.kill_button.disabled
            deadline = time.monotonic() + 120
            while (view.totals["delivered"] or 0) < 100:
                assert time.monotonic() < deadline, view.totals
                view.poll_once()
                time.sleep(0.2)
            victim = view.kill_one()
            assert victim in ("dispatcher-1", "dispatcher-2")
            totals = view.wait(240)
        finally:
            view.close()
    assert totals["state"] == "finished" and totals["kills"] == 1
    assert totals["delivered"] == 800 and totals["pending"] == 0 and totals["lost"] == 0
    assert totals["applied"] == 800  # each applied once; repeats (if any) were absorbed
    assert metric(view, "lost") == "0" and metric(view, "delivered") == "800"
    metas = {trace.meta for trace in view.figure.data}
    assert {"rate:dispatcher-1", "rate:dispatcher-2", "held:dispatcher-1", "held:dispatcher-2"} <= metas
    assert not view.fleet or not view.fleet.alive()


def test_without_a_database_the_view_starts_its_own_and_close_stops_it(postgres: object) -> None:
    """What the lesson does: no url, no receivers; Start brings them up, close() takes them down, Start again works."""
    view = FleetView(events=120, dispatchers=1, workers=4, lease=2.0, timeout=0.5, delay=0.0)
    try:
        for _ in range(2):
            assert view.url is None and view.receivers is None
            view.start()
            cluster = view._own[0]
            assert cluster.pid() is not None and view.receivers is not None and view.receivers.pid is not None
            totals = view.wait(120)
            assert totals["state"] == "finished" and totals["delivered"] == 120 and totals["lost"] == 0
            # Stopped as soon as the run ended: a kernel killed now (no clean-up runs) leaves no server behind.
            assert cluster.pid() is None and view.outbox is None and view.url is None
            view.close()
            assert cluster.pid() is None and view.outbox is None
    finally:
        view.close()


def test_the_view_refuses_settings_it_cannot_show(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="receivers"):
        FleetView("postgresql://x@127.0.0.1:9/y", object())  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="both url and receivers"):
        FleetView("postgresql://x@127.0.0.1:9/y")
    receivers = ReceiverProcess(tmp_path / "r")  # never started: the checks come first
    for options, field in (({"dispatchers": 3}, "dispatchers"), ({"events": 0}, "events"), ({"lease": 0}, "lease")):
        with pytest.raises(ValidationError) as caught:
            FleetView("postgresql://x@127.0.0.1:9/y", receivers, **options)  # type: ignore[arg-type]
        assert caught.value.field == field
