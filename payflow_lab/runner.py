"""Running a simulation: in virtual time, paced for a live notebook, or on whatever clock you bring.

Three ways in, one engine underneath (:class:`Simulation`):

:func:`run`
    synchronous. Runs in virtual time: a Black Friday afternoon in seconds. If
    the calling thread already runs an event loop (a Jupyter cell does), the
    simulation moves to a worker thread and :func:`run` waits for it, because
    ``anyio.run`` cannot start a loop inside a running one.
:func:`run_async`
    the same from async code, without blocking the caller's loop.
:class:`LiveRun`
    the same simulation in a worker thread, *paced* so that a person can
    watch it (for example 20 simulated seconds per real second), with pause,
    resume, stop and fault changes that apply at the next simulated second.

``await Simulation(config).run()`` runs on the clock of the loop it is awaited
in: virtual inside :func:`payflow_lab.core.vtime.run_virtual`, real time anywhere
else. The engine itself never reads a wall clock; only this module does, for
``wall_seconds`` and for pacing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import anyio
import anyio.abc

from payflow_lab.core.controls import CHECKPOINT_S, Controls
from payflow_lab.core.domain import Payment
from payflow_lab.core.errors import Declined, PoolTimeout, ValidationError
from payflow_lab.core.faults import FaultPlan
from payflow_lab.core.gcpolicy import fewer_collections
from payflow_lab.core.recorder import DEFAULT_MEMORY, MemoryProbe, Recorder, hhmmss
from payflow_lab.core.scenarios import Scenario, get_scenario
from payflow_lab.core.traffic import arrivals
from payflow_lab.core.validation import number
from payflow_lab.core.vtime import (
    BACKENDS,
    clock_of_running_loop,
    in_virtual_time,
    run_virtual,
    sleep_of_running_loop,
)
from payflow_lab.core.world import SCALE_LIMITS, World, merchant_count
from payflow_lab.phases import Pipeline, get_phase
from payflow_lab.phases.observation import Observation
from payflow_lab.summary import Moments, RunSummary

__all__ = [
    "DEFAULT_BACKEND",
    "DEFAULT_SCALE",
    "Controls",
    "LiveRun",
    "RunConfig",
    "RunResult",
    "Simulation",
    "run",
    "run_async",
    "run_config",
]

T = TypeVar("T")

#: The virtual-time backend used unless one is asked for (measured faster; see vtime).
DEFAULT_BACKEND = "asyncio"
#: One tenth of PayFlow: 500 merchants, a 65-connection pool. Same dynamics, ten times faster.
DEFAULT_SCALE = 0.1
#: The seed used unless one is given: the same afternoon in the CLI, the lessons and ``pf.run``.
DEFAULT_SEED = 7
#: How long after each whole second the ticker samples (rounded away in the series' labels).
_LOOK_AFTER_S = 1e-7
#: Longest a run waits, once the traffic has stopped, for the payments still in flight; it ends as soon as none
#: is left. Two minutes, twice the slowest healthy payment measured (Phase 1, where a payment waits for its
#: webhook's retries and four side effects: 58 s), so a healthy run never reports a slow payment as stuck, while
#: the payments of a frozen pipeline are still waiting when it is over: those are stuck in limbo.
DRAIN_SECONDS = 120.0
#: Seconds with arrivals but no completed payment before the run declares the pipeline frozen.
FREEZE_WINDOW_S = 60.0


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run. Validated on construction; every error names its field."""

    scenario: str | Scenario = "normal"
    phase: int = 1
    seed: int = DEFAULT_SEED
    scale: float = DEFAULT_SCALE
    backend: str = DEFAULT_BACKEND
    duration: float | None = None
    memory: str = DEFAULT_MEMORY
    faults: Mapping[str, Any] = field(default_factory=dict)
    drain_seconds: float = DRAIN_SECONDS

    def __post_init__(self) -> None:
        if not isinstance(self.scenario, Scenario):
            if not isinstance(self.scenario, str):
                raise ValidationError("scenario", f"must be a scenario name or a Scenario, got {self.scenario!r}")
            get_scenario(self.scenario)
        get_phase(self.phase)
        for name in ("backend", "memory"):
            if not isinstance(getattr(self, name), str):
                raise ValidationError(name, f"must be a string, got {getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ValidationError("seed", f"must be a whole number from 0 to 2**63 - 1, got {self.seed!r}")
        number("scale", self.scale, minimum=SCALE_LIMITS[0], maximum=SCALE_LIMITS[1])
        if self.backend not in BACKENDS:
            raise ValidationError("backend", f"must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        number("duration", self.duration, above=0, maximum=24 * 3600, unit=" simulated seconds", optional=True)
        if self.memory not in MemoryProbe.DESCRIPTIONS:
            raise ValidationError(
                "memory", f"must be one of {', '.join(MemoryProbe.DESCRIPTIONS)}, got {self.memory!r}"
            )
        if not isinstance(self.faults, Mapping):
            raise ValidationError("faults", f"must be a mapping of fault settings, got {self.faults!r}")
        try:
            FaultPlan().apply(self.faults)  # validates without keeping anything
        except TypeError as exc:  # an unhashable or oddly typed value deep inside
            raise ValidationError("faults", f"malformed fault settings: {exc}") from None
        self._check_merchants()
        number("drain_seconds", self.drain_seconds, minimum=0, maximum=3600)

    def _check_merchants(self) -> None:
        """Faults for merchants this run's world does not have are refused, naming the merchant."""
        merchants = self.faults.get("merchants")
        if not isinstance(merchants, Mapping):
            return
        count = merchant_count(self.scale)
        known = {f"mch_{serial:05d}" for serial in range(1, count + 1)}
        unknown = sorted(str(m) for m in merchants if m not in known)
        if unknown:
            raise ValidationError(
                "faults.merchants",
                f"unknown merchant {unknown[0]!r}: at scale {self.scale:g} the "
                f"world has {count} merchants, mch_00001 to mch_{count:05d}",
            )

    @property
    def scenario_obj(self) -> Scenario:
        return self.scenario if isinstance(self.scenario, Scenario) else get_scenario(self.scenario)

    @property
    def scenario_name(self) -> str:
        return self.scenario_obj.name

    @property
    def sim_duration(self) -> float:
        return float(self.duration) if self.duration is not None else self.scenario_obj.duration


@dataclass
class RunResult:
    """A finished run: the JSON-contract ``summary`` and the per-second ``series`` (columns of equal length).

    :meth:`observe` is the finished pipeline's :class:`~payflow_lab.phases.Observation`;
    its Prometheus metrics, for example, are
    ``generate_latest(payflow_lab.observe.registry_for(result))``. It reads the
    finished run's parts, so it keeps them alive as long as the result.
    """

    summary: RunSummary
    series: dict[str, list[Any]]
    #: Every completed payment's latency in seconds, in the order they completed (row ``i`` of the
    #: series completed ``series["completed"][i]`` of them): what rolling percentiles are drawn from.
    latencies: Any = field(default=None, repr=False, compare=False)
    #: The finished pipeline, for a closer look.
    pipeline: Pipeline | None = field(default=None, repr=False, compare=False)

    def __getitem__(self, key: str) -> Any:
        return self.summary[key]  # type: ignore[literal-required]

    def observe(self) -> Observation:
        """The finished pipeline's typed view (see :class:`~payflow_lab.phases.Observation`)."""
        if self.pipeline is None:
            raise ValidationError("result", "this result carries no pipeline to observe (it was loaded, not run)")
        return self.pipeline.observe()

    def to_json(self, *, series: bool = False, indent: int | None = 2) -> str:
        data = dict(self.summary)
        if series:
            data["series"] = self.series
        return json.dumps(data, indent=indent)


def _only_error(group: BaseExceptionGroup) -> BaseException | None:
    """The single exception inside ``group`` (nested groups flattened), or None if there are several."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop()
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        else:
            leaves.append(error)
    return leaves[0] if len(leaves) == 1 else None


class Simulation:
    """One run of one phase through one scenario.

    ``await simulation.run()`` builds the world, drives the traffic, stops the
    pipeline and returns a :class:`RunResult`. ``pipeline_cls`` runs your own
    variant of a phase (a subclass of :class:`~payflow_lab.phases.Pipeline`,
    usually of the phase named by ``config.phase``) in its place. While it runs, ``world``,
    ``recorder`` and ``pipeline`` are available (``ready`` is set), so a
    dashboard in another thread can read ``recorder.series``.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        controls: Controls | None = None,
        on_tick: Callable[[Simulation], object] | None = None,
        pipeline_cls: type[Pipeline] | None = None,
    ) -> None:
        if not isinstance(config, RunConfig):
            raise ValidationError(
                "config", f"must be a RunConfig (RunConfig(**settings) for a dict), got {type(config).__name__}"
            )
        self.config = config
        self.controls = controls
        self.on_tick = on_tick
        self.scenario = config.scenario_obj
        if pipeline_cls is not None and not (isinstance(pipeline_cls, type) and issubclass(pipeline_cls, Pipeline)):
            raise ValidationError("pipeline_cls", f"must be a Pipeline subclass, got {pipeline_cls!r}")
        self.pipeline_cls = pipeline_cls or get_phase(config.phase)
        self.ready = threading.Event()
        self.world: World | None = None
        self.recorder: Recorder | None = None
        self.pipeline: Pipeline | None = None
        self._requests: anyio.abc.TaskGroup | None = None
        self._traffic_scope: anyio.CancelScope | None = None
        self._t0 = 0.0
        self._attempted_at_completion = 0
        self._baseline_p50: float | None = None

    # -------------------------------------------------------------- the run
    async def run(self) -> RunResult:
        """Run the scenario to its end (or until stopped) and return the result.

        An error from inside the run (a scenario step, an ``on_tick`` callback,
        the pipeline) is raised as itself, not wrapped in the task groups'
        ``ExceptionGroup``, so that ``except ValidationError`` catches it.
        """
        try:
            return await self._run()
        except BaseExceptionGroup as group:
            only = _only_error(group)
            if only is None:
                raise
            raise only from None

    async def _run(self) -> RunResult:
        config = self.config
        scenario = self.scenario
        wall_start = time.perf_counter()
        # A traced heap would count garbage the collector has not reached yet: traced runs keep the usual pace.
        collections = nullcontext() if config.memory == "tracemalloc" else fewer_collections()
        with MemoryProbe(config.memory) as probe, collections:
            now = clock_of_running_loop()
            self._t0 = t0 = now()
            offset = scenario.start - t0

            def clock() -> float:
                return offset + now()

            recorder = Recorder(clock, probe)
            world = World(
                seed=config.seed, scale=config.scale, clock=clock, recorder=recorder, sleep=sleep_of_running_loop()
            )
            world.faults.apply(scenario.initial)
            world.faults.apply(config.faults)
            pipeline = self.pipeline_cls(world)
            self.world, self.recorder, self.pipeline = world, recorder, pipeline
            recorder.start_memory()
            self.ready.set()
            end = scenario.start + config.sim_duration
            async with anyio.create_task_group() as background:
                background.start_soon(self._ticker)
                if self.controls is not None:
                    background.start_soon(self._pacer, self.controls)
                async with pipeline:
                    async with anyio.create_task_group() as requests:
                        self._requests = requests
                        with anyio.CancelScope() as self._traffic_scope:
                            await arrivals(world, end, self.submit)
                        if not self._stopping:
                            await self._drain(config.drain_seconds)
                        recorder.close_in_flight()
                        requests.cancel_scope.cancel()
                    self._requests = None
                    recorder.mark_once("stopping", "traffic stops; the process shuts down", "scripted")
                self._finish_events()
                recorder.sample(world.pool.in_use, world.pool.waiting)
                background.cancel_scope.cancel()
            wall = time.perf_counter() - wall_start
            return self._result(wall)

    @property
    def _stopping(self) -> bool:
        return self.controls is not None and self.controls.stop_requested

    def submit(self, payment: Payment) -> None:
        """Validate ``payment`` and start processing it. Raises before recording anything if it is invalid."""
        if self._requests is None or self.world is None or self.recorder is None:
            raise RuntimeError("the simulation is not accepting payments (not running, or shutting down)")
        self.world.merchants.validate(payment)
        self.recorder.payment_started(payment)
        self._requests.start_soon(self._drive, payment, name="payment")

    async def _drive(self, payment: Payment) -> None:
        recorder = self.recorder
        assert recorder is not None and self.pipeline is not None
        recorder.task_started()
        try:
            await self.pipeline.process_payment(payment)
        except Declined:
            recorder.payment_errored(payment, "declined by the card network")
        except PoolTimeout:
            recorder.payment_errored(payment, "no database connection within the checkout timeout")
        except Exception as exc:  # not a cancellation: that is no Exception, and goes on to the task group
            recorder.payment_errored(payment, f"error: {type(exc).__name__}: {exc}")
        else:
            recorder.payment_completed(payment)
            self._attempted_at_completion = recorder.attempted
        finally:
            recorder.task_finished()

    async def _drain(self, grace: float) -> None:
        """Wait until no payment is in flight, ``grace`` seconds at most."""
        recorder = self.recorder
        assert recorder is not None
        with anyio.move_on_after(grace):
            while recorder.in_flight_payments:  # noqa: ASYNC110  a shutdown loop's look, four times a second
                await anyio.sleep(0.25)

    async def _ticker(self) -> None:
        """Once per simulated second: scripted steps, widget changes, observations, a sample, pacing."""
        world, recorder = self.world, self.recorder
        assert world is not None and recorder is not None
        steps = sorted(self.scenario.steps, key=lambda s: s.at)
        index = 0
        next_tick = self._t0
        # The ticker looks a hair after each whole second, so that everything due at the second
        # itself (the workers starting at 0, a timeout, the traffic's end) is already in its row.
        # At the exact instant, which of two timers runs first is the scheduler's choice, and
        # asyncio and trio choose differently.
        await anyio.sleep(_LOOK_AFTER_S)
        while True:
            now = world.clock()
            while index < len(steps) and steps[index].at <= now + 1e-9:
                step = steps[index]
                world.faults.apply(step.resolve(world))
                recorder.event(step.what, "scripted")
                index += 1
            if self.controls is not None:
                for changes in self.controls.pending_changes():
                    world.faults.apply(changes)
                    text = ", ".join(f"{k}={v}" for k, v in sorted(changes.items()))
                    recorder.event(f"control: {text}", "control")
                if self.controls.stop_requested and self._traffic_scope is not None:
                    self._traffic_scope.cancel()
            self._observe(now)
            recorder.sample(world.pool.in_use, world.pool.waiting)
            if self.on_tick is not None:
                self.on_tick(self)
            next_tick += 1.0
            await anyio.sleep(max(0.0, next_tick + _LOOK_AFTER_S - anyio.current_time()))

    async def _pacer(self, controls: Controls) -> None:
        """A live run's checkpoints, several per simulated second: pause, pace and stop answer promptly."""
        while True:
            controls.checkpoint(anyio.current_time() - self._t0)
            if controls.stop_requested and self._traffic_scope is not None:
                self._traffic_scope.cancel()
            await anyio.sleep(CHECKPOINT_S)

    def _observe(self, now: float) -> None:
        """Notice what emerged: payments backing up, throughput falling to zero."""
        recorder = self.recorder
        assert recorder is not None
        if self._baseline_p50 is None and now - self.scenario.start >= 300 and recorder.latencies:
            sample = sorted(recorder.latencies)
            self._baseline_p50 = sample[len(sample) // 2]
        recent = recorder.recent_median()
        if self._baseline_p50 and recent is not None and recent > 2 * self._baseline_p50:
            recorder.mark_once(
                "backing_up",
                f"payments back up: median latency {recent:.1f} s over the last "
                f"minute, more than twice the usual {self._baseline_p50:.1f} s",
            )
        last = recorder.last_completion
        waiting = recorder.attempted - self._attempted_at_completion
        if last is not None and waiting > 0 and now - last >= FREEZE_WINDOW_S:
            recorder.mark_once(
                "frozen",
                f"throughput falls to zero: no payment completes after {hhmmss(last)} ({waiting} waiting)",
                at=last,
            )

    def _finish_events(self) -> None:
        recorder = self.recorder
        assert recorder is not None
        if recorder.stuck:
            recorder.event(
                f"${recorder.stuck_cents_usd:,.0f} stuck in limbo: {recorder.stuck} payments never "
                f"resolved, {recorder.stuck_authorized} of them already authorized"
            )

    def _result(self, wall: float) -> RunResult:
        recorder, world, pipeline = self.recorder, self.world, self.pipeline
        assert recorder is not None and world is not None and pipeline is not None
        sim_seconds = round(anyio.current_time() - self._t0, 6)
        base = recorder.summary()
        moments: Moments = {"pool_exhausted_at": None, "throughput_zero_at": None}
        for at, _, _, what in recorder.events:
            if what.startswith("database connection pool exhausted") and moments["pool_exhausted_at"] is None:
                moments["pool_exhausted_at"] = hhmmss(at)
            if what.startswith("throughput falls to zero") and moments["throughput_zero_at"] is None:
                moments["throughput_zero_at"] = hhmmss(at)
        in_flight = recorder.series["in_flight_payments"]
        mean_latency = (sum(recorder.latencies) / len(recorder.latencies)) if recorder.latencies else 0.0
        # Little's law over one window, the whole run (drain included): arrivals over it, every payment's time
        # in the system within it (failed and unfinished ones too), and the mean of the in-flight series over it.
        window = max(1e-9, sim_seconds)
        rate = recorder.attempted / window
        time_in_system = recorder.time_in_system / recorder.attempted if recorder.attempted else 0.0
        core: RunSummary = {
            "scenario": self.config.scenario_name,
            "phase": self.config.phase,
            "seed": self.config.seed,
            "scale": self.config.scale,
            "sim_seconds": sim_seconds,
            "wall_seconds": round(wall, 3),
            "payments": base["payments"],
            "latency_ms": base["latency_ms"],
            "side_effects": base["side_effects"],
            "memory": base["memory"],
            "tasks": base["tasks"],
            "events": base["events"],
            "phase_name": pipeline.name,
            "backend": self.config.backend,
            "story_window": [hhmmss(self.scenario.start), hhmmss(self.scenario.start + self.config.sim_duration)],
            "authorization_ms": base["authorization_ms"],
            "moments": moments,
            "littles_law": {
                "window_s": round(sim_seconds, 3),
                "arrival_rate_per_s": round(rate, 4),
                "mean_latency_s": round(mean_latency, 4),
                "mean_time_in_system_s": round(time_in_system, 4),
                "predicted_in_flight": round(rate * time_in_system, 2),
                "measured_mean_in_flight": round(sum(in_flight) / len(in_flight), 2) if in_flight else 0.0,
            },
            "db_pool_size": world.pool.size,
            "payments_per_wall_second": round(recorder.attempted / wall, 1) if wall > 0 else None,
        }
        summary = cast(RunSummary, {**core, **pipeline.summary()})
        series = {name: list(values) for name, values in recorder.series.items()}
        return RunResult(summary=summary, series=series, latencies=recorder.latencies, pipeline=pipeline)


# ------------------------------------------------------------------ entry points
def run_config(
    config: RunConfig,
    *,
    controls: Controls | None = None,
    on_tick: Callable[[Simulation], object] | None = None,
    pipeline_cls: type[Pipeline] | None = None,
) -> RunResult:
    """Run ``config`` in virtual time and return its result (in a worker thread if a loop is running here)."""
    simulation = Simulation(config, controls=controls, on_tick=on_tick, pipeline_cls=pipeline_cls)

    return in_virtual_time(simulation.run, backend=config.backend, seed=config.seed)


def run(
    scenario: str | Scenario = "normal",
    phase: int = 1,
    *,
    seed: int = DEFAULT_SEED,
    scale: float = DEFAULT_SCALE,
    backend: str = DEFAULT_BACKEND,
    duration: float | None = None,
    memory: str = DEFAULT_MEMORY,
    faults: Mapping[str, Any] | None = None,
    pipeline_cls: type[Pipeline] | None = None,
) -> RunResult:
    """Run one phase through one scenario in virtual time and return the result.

    ``pipeline_cls`` replaces the phase's own pipeline with a variant of yours
    (for example a subclass with a different timeout); ``phase`` still names
    the phase it stands for in the summary.

    >>> result = run("normal", phase=1, seed=7)            # doctest: +SKIP
    >>> result.summary["latency_ms"]["mean"]                # about 13,500 ms
    """
    config = RunConfig(
        scenario=scenario,
        phase=phase,
        seed=seed,
        scale=scale,
        backend=backend,
        duration=duration,
        memory=memory,
        faults=dict(faults or {}),
    )
    return run_config(config, pipeline_cls=pipeline_cls)


async def run_async(
    scenario: str | Scenario = "normal", phase: int = 1, *, pipeline_cls: type[Pipeline] | None = None, **options: Any
) -> RunResult:
    """:func:`run` for async callers: the simulation runs in a worker thread; the caller's loop stays free.

    Takes the same arguments as :func:`run`.
    """
    config = RunConfig(scenario=scenario, phase=phase, **options)
    simulation = Simulation(config, pipeline_cls=pipeline_cls)
    return await anyio.to_thread.run_sync(lambda: run_virtual(simulation.run, backend=config.backend, seed=config.seed))


class LiveRun:
    """A paced run in a worker thread, for live notebooks.

    ``pace`` is simulated seconds per real second. The thread owns its own
    event loop, so the notebook's loop (and its widgets) stay responsive.
    Read ``series`` at any time; call :meth:`stop` to end it early. The
    thread is joined by :meth:`stop` and :meth:`join`, so nothing is left
    behind.
    """

    def __init__(
        self, config: RunConfig, *, pace: float | None = 20.0, pipeline_cls: type[Pipeline] | None = None
    ) -> None:
        self.config = config
        self.controls = Controls(pace=pace)
        self.simulation = Simulation(config, controls=self.controls, pipeline_cls=pipeline_cls)
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> LiveRun:
        if self._thread is not None:
            raise RuntimeError("this live run was already started; create a new one")
        self._thread = threading.Thread(target=self._main, name="payflow-live", daemon=True)
        self._thread.start()
        while not self.simulation.ready.wait(0.05):
            if not self._thread.is_alive():
                break
        if self.error is not None:
            raise self.error
        return self

    def _main(self) -> None:
        try:
            self.result = run_virtual(self.simulation.run, backend=self.config.backend, seed=self.config.seed)
        except BaseException as exc:
            self.error = exc

    @property
    def series(self) -> dict[str, list[Any]]:
        recorder = self.simulation.recorder
        return recorder.series if recorder is not None else {}

    @property
    def latencies(self) -> Any:
        """The completed payments' latencies so far (seconds, in completion order; see :class:`RunResult`)."""
        recorder = self.simulation.recorder
        return recorder.latencies if recorder is not None else ()

    @property
    def events(self) -> list[tuple[float, int, str, str]]:
        """The run's event log so far: (story seconds, serial, kind, what), in the order logged."""
        recorder = self.simulation.recorder
        return recorder.events if recorder is not None else []

    @property
    def pace_ratio(self) -> float | None:
        """Pace achieved over pace asked, lately (``None`` until measured or when unpaced)."""
        return self.controls.pace_ratio

    @property
    def state(self) -> str:
        if self._thread is None:
            return "ready"
        if self._thread.is_alive():
            if self.controls.stop_requested:
                return "stopping"
            return "paused" if self.controls.paused else "running"
        return "failed" if self.error is not None else "finished"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def set_faults(self, **changes: Any) -> None:
        """Change the fault plan at the next simulated second; validated now, all or nothing.

        Raises :class:`RuntimeError` once the run has ended (nothing would
        apply the change), and :class:`ValidationError` for a merchant id
        this run's world does not have.
        """
        if self._thread is not None and not self._thread.is_alive():
            raise RuntimeError(f"the run has {self.state}: fault changes apply to a live run; start a new one")
        world = self.simulation.world
        merchants = changes.get("merchants")
        if world is not None and isinstance(merchants, Mapping):
            unknown = sorted(m for m in merchants if m not in world.merchants)
            if unknown:
                raise ValidationError(
                    "merchants",
                    f"unknown merchant {unknown[0]!r}: this world has "
                    f"{len(world.merchants)} merchants, "
                    f"{min(world.merchants)} to {max(world.merchants)}",
                )
        self.controls.set_faults(**changes)

    def set_pace(self, pace: float | None) -> None:
        self.controls.set_pace(pace)

    def pause(self) -> None:
        self.controls.pause()

    def resume(self) -> None:
        self.controls.resume()

    def stop(self, timeout: float = 30.0) -> RunResult | None:
        """Stop the run (traffic ends, the pipeline shuts down), wait for the thread, return the result."""
        self.controls.stop()
        self.join(timeout)
        return self.result

    def join(self, timeout: float | None = None) -> RunResult | None:
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the live run did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result
