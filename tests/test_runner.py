"""Virtual time, the entry points, and live runs."""

from __future__ import annotations

import asyncio
import threading
import time

import anyio
import pytest

import payflow_lab as pf
from payflow_lab.core.domain import Payment
from payflow_lab.core.errors import ValidationError
from payflow_lab.core.recorder import strip_nondeterministic
from payflow_lab.core.vtime import VirtualTimeLoop, run_virtual
from payflow_lab.runner import Controls, RunConfig, Simulation, run_config


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_an_hour_of_virtual_time_takes_no_real_time(backend):
    async def main():
        started = anyio.current_time()
        await anyio.sleep(3600)
        with anyio.move_on_after(60) as scope:
            await anyio.sleep_forever()
        return anyio.current_time() - started, scope.cancelled_caught

    wall = time.perf_counter()
    elapsed, cancelled = run_virtual(main, backend=backend)
    assert elapsed == pytest.approx(3660.0)
    assert cancelled
    assert time.perf_counter() - wall < 5


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_timers_fire_in_deadline_order(backend):
    async def main():
        order = []

        async def sleeper(name, delay):
            await anyio.sleep(delay)
            order.append((name, anyio.current_time()))

        async with anyio.create_task_group() as tg:
            for name, delay in (("c", 3.0), ("a", 1.0), ("b", 2.0), ("d", 2.5)):
                tg.start_soon(sleeper, name, delay)
        return order

    assert run_virtual(main, backend=backend) == [("a", 1.0), ("b", 2.0), ("d", 2.5), ("c", 3.0)]


def test_virtual_loop_still_sees_other_threads():
    """call_soon_threadsafe wakes the loop even though nothing is scheduled."""

    async def main():
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        threading.Timer(0.05, lambda: loop.call_soon_threadsafe(future.set_result, "hello")).start()
        return await future

    assert anyio.run(main, backend="asyncio", backend_options={"loop_factory": VirtualTimeLoop}) == "hello"


def test_unknown_backend():
    async def main():
        return 1

    with pytest.raises(ValueError, match="backend"):
        run_virtual(main, backend="curio")


def test_run_works_inside_a_running_event_loop():
    """A Jupyter cell runs inside an asyncio loop: anyio.run would refuse, run() moves to a thread."""

    async def cell():
        return pf.run("normal", phase=1, seed=2, duration=120, memory="off")

    result = asyncio.run(cell())
    assert result.summary["payments"]["attempted"] > 0
    assert result.summary == pf.run("normal", phase=1, seed=2, duration=120, memory="off").summary | {
        "wall_seconds": result.summary["wall_seconds"],
        "payments_per_wall_second": result.summary["payments_per_wall_second"],
    }


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_run_async_does_not_block_the_callers_loop(backend):
    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await anyio.sleep(0.001)
                ticks += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            result = await pf.run_async("normal", phase=1, seed=2, duration=600, memory="off")
            tg.cancel_scope.cancel()
        return result, ticks

    result, ticks = anyio.run(main, backend=backend)
    assert result.summary["sim_seconds"] >= 600
    assert ticks > 0


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"scenario": "cyber-monday"}, "scenario"),
        ({"phase": 0}, "phase"),
        ({"phase": "1"}, "phase"),
        ({"seed": -3}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"scale": 0.0}, "scale"),
        ({"scale": 100.0}, "scale"),
        ({"scale": float("nan")}, "scale"),
        ({"backend": "curio"}, "backend"),
        ({"duration": 0}, "duration"),
        ({"duration": 10**9}, "duration"),
        ({"memory": "valgrind"}, "memory"),
        ({"faults": {"webhook_error_rate": 2}}, "webhook_error_rate"),
    ],
)
def test_bad_configuration_names_the_field(options, field):
    with pytest.raises(ValidationError) as info:
        RunConfig(**options)
    assert info.value.field == field


def test_submit_validates_before_recording_anything():
    seen = {}

    def on_tick(simulation: Simulation) -> None:
        if seen:
            return
        recorder = simulation.recorder
        before = recorder.attempted
        bad = Payment(
            id="pay_00000000beef",
            merchant_id="mch_99999",
            amount_cents=100,
            currency="USD",
            created_at=simulation.world.clock(),
        )
        with pytest.raises(ValidationError, match="merchant_id"):
            simulation.submit(bad)
        with pytest.raises(ValidationError, match="Payment"):
            simulation.submit({"amount_cents": 100})
        seen["unchanged"] = recorder.attempted == before and recorder.in_flight_payments == 0
        good = Payment(
            id="pay_00000000cafe",
            merchant_id="mch_00001",
            amount_cents=100,
            currency="USD",
            created_at=simulation.world.clock(),
        )
        simulation.submit(good)
        seen["recorded"] = recorder.attempted == before + 1
        with pytest.raises(ValidationError, match="id: payment pay_00000000cafe is already in flight"):
            simulation.submit(good)
        seen["once"] = recorder.attempted == before + 1

    result = run_config(RunConfig(scenario="normal", duration=60, memory="off"), on_tick=on_tick)
    assert seen == {"unchanged": True, "recorded": True, "once": True}
    payments = result.summary["payments"]
    assert payments["attempted"] == payments["authorized"] + payments["failed"] + payments["stuck"] >= 1


def test_submit_outside_a_run_is_refused():
    simulation = Simulation(RunConfig())
    with pytest.raises(RuntimeError, match="not accepting"):
        simulation.submit(None)  # type: ignore[arg-type]


def test_custom_scenarios_are_accepted():
    quiet = pf.Scenario(name="quiet", title="A quiet hour", start=3 * 3600.0, duration=600)
    result = pf.run(quiet, phase=1, seed=1, memory="off")
    assert result.summary["scenario"] == "quiet"
    assert result.summary["story_window"] == ["03:00:00", "03:10:00"]
    with pytest.raises(ValidationError, match="scenario.start"):
        pf.Scenario(name="x", title="x", start=-5, duration=10)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (
            {"steps": (pf.Step(at=50_700, what="boom", changes={"webhook_error_rate": 5}),)},
            "scenario.steps: step 'boom' at 50700: webhook_error_rate",
        ),
        ({"steps": (pf.Step(at=float("nan"), what="when?", changes={}),)}, "scenario.steps: step 'when?': at"),
        ({"initial": {"traffic_multiplier": -1}}, "scenario.initial: traffic_multiplier"),
        ({"start": True}, "scenario.start"),
    ],
)
def test_a_bad_scenario_fails_when_it_is_built_not_mid_run(options, words):
    with pytest.raises(ValidationError, match=words.replace("(", r"\(").replace("?", r"\?")):
        pf.Scenario(**{"name": "bad", "title": "bad", "start": 50_400.0, "duration": 600.0, **options})


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_an_error_inside_the_run_is_raised_as_itself(backend):
    def broken(world):
        raise ValidationError("merchants", "this step is broken")

    scenario = pf.Scenario(
        name="broken",
        title="broken",
        start=50_400.0,
        duration=600.0,
        steps=(pf.Step(at=50_500.0, what="breaks", changes=broken),),
    )
    with pytest.raises(ValidationError, match="this step is broken"):
        pf.run(scenario, memory="off", backend=backend)

    def tick(simulation):
        raise RuntimeError("the callback broke")

    with pytest.raises(RuntimeError, match="the callback broke"):
        run_config(RunConfig(duration=30, memory="off", backend=backend), on_tick=tick)


def test_a_dict_is_not_a_config():
    with pytest.raises(ValidationError, match="config: must be a RunConfig"):
        run_config({"scenario": "normal"})  # type: ignore[arg-type]


class TestLiveRun:
    def test_pause_faults_and_stop_leave_no_thread_behind(self):
        live = pf.LiveRun(RunConfig(scenario="blackfriday", memory="off"), pace=2000).start()
        try:
            deadline = time.monotonic() + 10
            while len(live.series.get("t", ())) < 50 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert live.state == "running"
            live.pause()
            time.sleep(0.2)
            frozen = len(live.series["t"])
            time.sleep(0.3)
            assert len(live.series["t"]) <= frozen + 1  # at most the tick that was under way
            assert live.state == "paused"
            live.set_faults(webhook_error_rate=0.5, tier_modes={"premium": "hang"})
            with pytest.raises(ValidationError, match="webhook_error_rate"):
                live.set_faults(webhook_error_rate=1.5)
            live.resume()
            time.sleep(0.2)
        finally:
            result = live.stop()
        assert live.state == "finished"
        assert not any(t.name == "payflow-live" for t in threading.enumerate())
        controls = [e for e in result.summary["events"] if e["kind"] == "control"]
        assert len(controls) == 1
        assert "webhook_error_rate=0.5" in controls[0]["what"]
        assert result.summary["sim_seconds"] < 70 * 60  # stopped early

    def test_pace_keeps_real_time_in_step(self):
        live = pf.LiveRun(RunConfig(scenario="normal", duration=40, memory="off"), pace=100).start()
        started = time.perf_counter()
        live.join(30)
        wall = time.perf_counter() - started
        assert 0.25 < wall < 5  # 40 simulated seconds at 100x is 0.4 s

    def test_a_run_cannot_start_twice(self):
        live = pf.LiveRun(RunConfig(scenario="normal", duration=5, memory="off"), pace=None).start()
        with pytest.raises(RuntimeError, match="already started"):
            live.start()
        live.join(10)

    def test_fault_changes_name_unknown_merchants_and_need_a_live_run(self):
        live = pf.LiveRun(RunConfig(scenario="normal", duration=600, memory="off"), pace=50).start()
        try:
            wait = time.monotonic() + 10
            while live.simulation.world is None and time.monotonic() < wait:
                time.sleep(0.01)
            with pytest.raises(ValidationError, match="merchants: unknown merchant 'mch_99999'"):
                live.set_faults(merchants={"mch_99999": {"mode": "down"}})
            live.set_faults(merchants={"mch_00001": {"mode": "down"}})
            wait = time.monotonic() + 10
            while "mch_00001" not in live.simulation.world.faults.snapshot()["merchants"]:
                assert time.monotonic() < wait, "the good change never arrived"
                time.sleep(0.01)
        finally:
            live.stop(30)
        assert list(live.simulation.world.faults.snapshot()["merchants"]) == ["mch_00001"]
        with pytest.raises(RuntimeError, match="the run has finished"):
            live.set_faults(traffic_multiplier=2)

    @pytest.mark.parametrize("pace", [0, -1, 1e9, float("nan")])
    def test_bad_pace(self, pace):
        with pytest.raises(ValidationError, match="pace"):
            Controls(pace=pace)


def test_a_variant_pipeline_can_stand_in_for_a_phase():
    from payflow_lab.phases.sync import SynchronousPipeline

    class WithoutWebhooks(SynchronousPipeline):
        async def send_merchant_webhook(self, payment):
            return None

    plain = pf.run("normal", phase=1, seed=3, duration=600, memory="off").summary
    variant = pf.run("normal", phase=1, seed=3, duration=600, memory="off", pipeline_cls=WithoutWebhooks).summary
    assert variant["phase"] == 1
    assert variant["payments"]["attempted"] == plain["payments"]["attempted"]  # the same customers
    assert variant["latency_ms"]["mean"] < plain["latency_ms"]["mean"] - 2000
    assert "webhook" not in variant["side_effects"]["by_kind"]
    with pytest.raises(ValidationError, match="pipeline_cls"):
        pf.run("normal", phase=1, duration=10, pipeline_cls=dict)
    from_async = anyio.run(
        lambda: pf.run_async("normal", phase=1, seed=3, duration=600, memory="off", pipeline_cls=WithoutWebhooks)
    )
    assert strip_nondeterministic(from_async.summary) == strip_nondeterministic(variant)


def test_in_virtual_time_works_inside_a_running_loop():
    from payflow_lab.core.vtime import in_virtual_time

    async def an_hour():
        await anyio.sleep(3600)
        return anyio.current_time()

    async def cell():
        return in_virtual_time(an_hour), in_virtual_time(an_hour, backend="trio")

    assert asyncio.run(cell()) == (3600.0, 3600.0)
    assert in_virtual_time(an_hour) == 3600.0
