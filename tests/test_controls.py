"""The handles on a live run answer promptly: pause within a checkpoint, honest pacing, a yielding thread.

Real time is only waited on here, never asserted: how *fast* the controls
answer is measured by ``payflow-lab bench --only live`` (see
:mod:`payflow_lab.lab.livebench`). These tests check what must hold on any
machine, however busy.
"""

from __future__ import annotations

import threading
import time

import pytest

import payflow_lab as pf
from payflow_lab.core import controls as controls_module
from payflow_lab.core.controls import BUSY_SLICE_S, CHECKPOINT_S, Controls
from payflow_lab.core.errors import ValidationError
from payflow_lab.runner import RunConfig

CAP_S = 60.0  # a safety net only: a machine this slow has other problems


def wait_for(condition, what: str, cap: float = CAP_S) -> None:
    deadline = time.monotonic() + cap
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {cap:g} s"
        time.sleep(0.005)


def started(config: RunConfig, pace: float | None) -> pf.LiveRun:
    live = pf.LiveRun(config, pace=pace).start()
    wait_for(lambda: len(live.series.get("t", ())) >= 5, "five simulated seconds")
    return live


class TestPause:
    def test_the_clock_stops_at_a_checkpoint_and_stays_stopped(self):
        live = started(RunConfig(scenario="blackfriday", phase=5, memory="off"), pace=None)
        try:
            live.pause()
            assert live.controls.wait_halted(CAP_S), "the run never held still after pause()"
            rows = len(live.series["t"])
            time.sleep(0.3)
            assert len(live.series["t"]) == rows  # held: not one more simulated second
            assert live.controls.halted and len(live.controls.pause_latencies) == 1
            live.resume()
            wait_for(lambda: len(live.series["t"]) > rows, "the clock moving again after resume()")
            assert not live.controls.halted
        finally:
            live.stop(CAP_S)
        assert live.state == "finished"

    def test_a_pause_wakes_a_pacing_sleep(self, monkeypatch):
        # At pace 0.1 a checkpoint sleeps 0.5 real s; with sleeps allowed to last 10 minutes, only a
        # pause that wakes the sleeper can stop the clock within the test's cap.
        monkeypatch.setattr(controls_module, "MAX_SLEEP_S", 600.0)
        live = pf.LiveRun(RunConfig(scenario="normal", memory="off"), pace=0.1).start()
        try:
            time.sleep(0.2)  # the run is now in its first long pacing sleep
            live.pause()
            assert live.controls.wait_halted(CAP_S), "pause() waited for the pacing sleep to end"
        finally:
            live.stop(CAP_S)

    def test_stop_ends_a_paused_run(self):
        live = started(RunConfig(scenario="blackfriday", memory="off"), pace=200)
        live.pause()
        assert live.controls.wait_halted(CAP_S)
        result = live.stop(CAP_S)
        assert result is not None and result.summary["sim_seconds"] < 70 * 60


class TestPacing:
    def test_a_machine_that_cannot_keep_the_pace_slows_the_run_and_says_so(self):
        live = started(RunConfig(scenario="blackfriday", phase=4, memory="off"), pace=10_000)
        try:
            wait_for(lambda: live.pace_ratio is not None, "a pace reading")
            assert live.pace_ratio < 0.9, f"a Black Friday at 10,000x kept {live.pace_ratio:.2f} of its pace"
            wait_for(lambda: live.controls.yields > 0, "the run yielding the processor while behind")
        finally:
            live.stop(CAP_S)

    def test_an_unpaced_run_has_no_ratio(self):
        controls = Controls(pace=None)
        controls.checkpoint(0.0)
        assert controls.pace_ratio is None

    def test_the_pace_is_kept_by_sleeping_in_small_steps(self):
        controls = Controls(pace=10.0)
        controls.checkpoint(0.0)
        started_at = time.perf_counter()
        for step in range(1, 11):
            controls.checkpoint(step * CHECKPOINT_S)  # 0.5 simulated s at pace 10: 0.05 real s
        assert time.perf_counter() - started_at >= 0.5 / 10 - 0.01  # it did wait (a lower bound only)

    def test_a_busy_thread_yields(self):
        controls = Controls(pace=None)
        controls.checkpoint(0.0)
        time.sleep(BUSY_SLICE_S * 1.5)  # "computing" without a checkpoint for longer than a slice
        controls.checkpoint(0.01)
        assert controls.yields == 1

    @pytest.mark.parametrize("pace", [0, -1, 0.01, 20_000, float("nan"), True, "60"])
    def test_bad_pace_names_the_field(self, pace):
        with pytest.raises(ValidationError, match="pace"):
            Controls(pace=pace)


class TestFaultChanges:
    def test_changes_apply_at_the_next_simulated_second_and_are_timed(self):
        live = started(RunConfig(scenario="normal", memory="off"), pace=50)
        try:
            live.set_faults(tier_modes={"standard": "down"})
            wait_for(lambda: live.controls.applied_at, "the change being applied")
            assert len(live.controls.change_latencies) == 1 and live.controls.change_latencies[0] >= 0
        finally:
            result = live.stop(CAP_S)
        controls = [e for e in result.summary["events"] if e["kind"] == "control"]
        assert [e["what"] for e in controls] == ["control: tier_modes={'standard': 'down'}"]

    def test_no_thread_is_left_behind(self):
        live = started(RunConfig(scenario="normal", duration=120, memory="off"), pace=None)
        live.join(CAP_S)
        assert not any(t.name == "payflow-live" and t.is_alive() for t in threading.enumerate())


def test_the_live_benchmark_measures_clicks_in_a_real_kernel():
    from payflow_lab.lab.livebench import bench_live

    rows = {row["key"]: row for row in bench_live(quick=True)}
    assert set(rows) == {
        "live.pause_latency_p99_s",
        "live.pause_seen_p99_s",
        "live.control_latency_p99_s",
        "live.pace_ratio",
        "live.iopub_kib_per_s",
    }
    for key in ("live.pause_latency_p99_s", "live.pause_seen_p99_s", "live.control_latency_p99_s"):
        assert isinstance(rows[key]["value"], float) and rows[key]["value"] >= 0, rows[key]
    assert 0 < rows["live.pace_ratio"]["value"] <= 1.0
    assert rows["live.iopub_kib_per_s"]["value"] > 0
