"""The monitoring scenario: a paced run serving /metrics, the rich dashboard, the CLI, and no leftovers.

Live runs here are short and fast-paced (a few simulated minutes at hundreds of
simulated seconds per real second): what is tested is the plumbing, not the
pace a person would choose.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from payflow_lab.app.cli import main
from payflow_lab.core.errors import ValidationError
from payflow_lab.core.recorder import hhmmss
from payflow_lab.core.vtime import run_virtual
from payflow_lab.observe import DashboardFeed, Monitor, render, sparkline
from payflow_lab.runner import RunConfig, Simulation


def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


def _closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_a_live_monitoring_run_serves_metrics_while_it_runs_and_leaves_nothing_behind() -> None:
    before = _threads()
    config = RunConfig(scenario="monitoring", phase=5, seed=7, scale=0.05, duration=900, memory="off")
    monitor = Monitor(config, pace=150, port=0).start()
    try:
        assert monitor.running and monitor.port and monitor.url == f"http://127.0.0.1:{monitor.port}/metrics"
        deadline = time.monotonic() + 30
        while (monitor.snapshot is None or monitor.snapshot.elapsed_s < 120) and time.monotonic() < deadline:
            time.sleep(0.05)
        with urllib.request.urlopen(monitor.url, timeout=10) as response:
            text = response.read().decode()
        assert monitor.running  # fetched mid-run
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert fams["payflow_payments"].type == "counter"
        assert all(s.name.endswith(("_total", "_created")) for s in fams["payflow_payments"].samples)
        story = fams["payflow_story_time_seconds"].samples[0].value
        assert 14 * 3600 + 60 <= story < 14 * 3600 + 900  # a snapshot of the run in progress
        assert {s.labels["tier"] for s in fams["payflow_webhooks"].samples} == {"enterprise", "premium", "standard"}
        assert {s.labels["state"] for s in fams["payflow_circuit_breakers"].samples} == {"closed", "open", "half_open"}
        port = monitor.port
        result = monitor.join(timeout=60)
    finally:
        monitor.stop()
    assert result is not None and result.summary["scenario"] == "monitoring"
    assert result.summary["sim_seconds"] >= 900
    assert not monitor.running
    assert _closed(port)
    assert _threads() - before == set()


def test_stopping_a_live_run_early_stops_its_server_too() -> None:
    before = _threads()
    monitor = Monitor(
        RunConfig(scenario="monitoring", phase=5, seed=1, scale=0.02, memory="off"), pace=50, port=0
    ).start()
    port = monitor.port
    time.sleep(0.3)
    result = monitor.stop()
    assert result is not None and result.summary["sim_seconds"] < 2400  # it did not run the whole scenario
    assert any(e["what"].startswith("traffic stops") for e in result.summary["events"])
    assert _closed(port) and _threads() - before == set()


def test_the_cli_prints_one_json_object_and_the_port_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    before = _threads()
    code = main(
        [
            "run",
            "--scenario",
            "monitoring",
            "--phase",
            "5",
            "--scale",
            "0.02",
            "--duration",
            "300",
            "--pace",
            "2000",
            "--port",
            "0",
            "--json",
            "--memory",
            "off",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0
    data = json.loads(out)  # exactly one JSON object, nothing else
    assert out.strip().startswith("{") and out.strip().endswith("}")
    assert data["scenario"] == "monitoring" and data["phase"] == 5 and "breakers" in data
    match = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", err)
    assert match and int(match.group(1)) > 0
    assert _closed(int(match.group(1))) and _threads() - before == set()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--scenario", "normal", "--pace", "5"], "--pace and --port apply to live runs"),
        (["run", "--scenario", "normal", "--port", "0"], "--pace and --port apply to live runs"),
        (["run", "--scenario", "monitoring", "--port", "70000"], "argument --port"),
        (["run", "--scenario", "monitoring", "--port", "http"], "argument --port"),
        (["run", "--scenario", "monitoring", "--pace", "0", "--duration", "10"], "pace"),
    ],
)
def test_bad_live_options_are_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and message in err and err.count("\n") == 1


def test_bad_monitor_settings_are_refused_before_anything_starts() -> None:
    before = _threads()
    config = RunConfig(scenario="monitoring", phase=5, scale=0.02, duration=60, memory="off")
    with pytest.raises(ValidationError) as caught:
        Monitor(config, port=-1)
    assert caught.value.field == "port"
    with pytest.raises(ValidationError) as caught:
        Monitor(config, pace=0)
    assert caught.value.field == "pace"
    assert _threads() - before == set()


def _finished(phase: int, **options: object) -> Simulation:
    config = RunConfig(phase=phase, seed=7, scale=0.05, memory="off", **options)  # type: ignore[arg-type]
    simulation = Simulation(config)
    run_virtual(simulation.run)
    return simulation


def _text(renderable: object, width: int = 140) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_the_dashboard_shows_throughput_latency_webhooks_breakers_queues_and_memory() -> None:
    simulation = _finished(
        5, scenario="normal", duration=600, faults={"traffic_multiplier": 10.0, "tier_modes": {"standard": "hang"}}
    )
    snapshot = DashboardFeed(pace=30, metrics_url="http://127.0.0.1:9464/metrics").update(simulation, "finished")
    text = _text(render(snapshot))
    for words in (
        "PayFlow live",
        "normal, phase 5 (hardened)",
        "story time 14:10:",
        "pace 30x",
        "[finished]",
        "Prometheus metrics: http://127.0.0.1:9464/metrics",
        "Payments",
        "throughput",
        "latency",
        "Webhooks",
        "success",
        "deferred now",
        "dead letters",
        "Circuit breakers",
        "Queues",
        "webhook lane: enterprise",
        "audit",
        "Memory",
        "Latest events",
    ):
        assert words in text, words
    breakers = snapshot.breakers
    assert breakers is not None and breakers["open"] > 0
    merchant_id, tier, state, since = breakers["listed"][0]
    assert f"{merchant_id} ({tier})" in text and f"{state} since {since}" in text and tier == "standard"
    assert f"{breakers['open']} open" in text
    last = simulation.recorder.series
    assert snapshot.story_time == hhmmss(last["clock"][-1])


def test_the_dashboard_works_for_a_phase_without_breakers() -> None:
    simulation = _finished(1, scenario="normal", duration=300)
    text = _text(render(DashboardFeed().update(simulation)))
    assert "this phase has no circuit breakers" in text and "this phase has no bounded queues" in text
    assert "normal, phase 1 (synchronous)" in text


def test_sparklines_scale_to_their_maximum() -> None:
    assert sparkline([0, 1, 2, 4, 8]) == "▁▂▃▅█"  # 8 levels, rounded: 1/8 of the top is one step up
    assert sparkline([None, 0, 0]) == " ▁▁"
    assert sparkline([5.0] * 100, width=10) == "█" * 10
    assert sparkline([]) == ""
