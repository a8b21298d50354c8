"""A live session: a control panel, a dashboard and a paced simulation, wired together.

Three threads of control meet here, and each keeps to its own:

* the **simulation** runs in a worker thread (:class:`payflow_lab.LiveRun`),
  on its own virtual-time event loop, paced to a speed a person can follow.
  It never touches a widget;
* a **poller** runs as an asyncio task on the notebook kernel's own event loop
  (ipykernel runs one; a task created in a cell keeps running after the cell
  returns, and widget events are still processed meanwhile). About ten times
  a second it reads the run's series and updates the dashboard's widget
  traits. It never prints or displays anything;
* the **widgets** call back into the session when the learner moves a slider
  or presses a button. A fault change goes to ``LiveRun.set_faults`` and takes
  effect at the next simulated second.

The session keeps a reference to its poller task (an unreferenced asyncio task
may be garbage-collected mid-flight: the trap Lesson 02 is about), and
:meth:`LiveSession.close` leaves nothing behind: the run's thread joined, the
poller finished. :func:`close_all` does that for every session, which is what
the last cell of a lesson calls.

A session in a plain script (no running event loop) cannot poll by itself;
create it with ``autopoll=False`` and call :meth:`LiveSession.poll_once`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets

from payflow_lab.core.errors import ValidationError
from payflow_lab.core.recorder import DEFAULT_MEMORY, hhmmss
from payflow_lab.core.validation import number
from payflow_lab.lab.dashboard import Dashboard
from payflow_lab.lab.panel import ControlPanel, _describe
from payflow_lab.phases import get_phase
from payflow_lab.runner import DEFAULT_BACKEND, DEFAULT_SCALE, DEFAULT_SEED, LiveRun, RunConfig, RunResult

__all__ = ["LIVE_STATES", "FINAL_STATES", "LiveSession", "close_all", "live_threads"]

#: States in which a run's thread is alive.
LIVE_STATES = ("running", "paused", "stopping")
#: States after a run ended (by itself, by Stop, or by an error).
FINAL_STATES = ("finished", "stopped", "failed")
#: Bounds of the poller's interval, in real seconds.
INTERVAL_LIMITS = (0.02, 5.0)

_SESSIONS: weakref.WeakSet[LiveSession] = weakref.WeakSet()


def close_all(timeout: float = 30.0) -> int:
    """Stop every live session of this kernel and wait for their threads; return how many were running."""
    stopped = 0
    for session in list(_SESSIONS):
        if session.state in LIVE_STATES:
            stopped += 1
        session.close(timeout)
    return stopped


def live_threads() -> list[str]:
    """Names of the simulation threads still alive in this process (``[]`` when the kernel is clean)."""
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("payflow-") and t.is_alive())


class LiveSession:
    """A control panel and a live dashboard driving a paced simulation; display it, then press Start.

    ``scenario``, ``phase``, ``seed`` and ``faults`` are the panel's initial
    settings (``phases`` and ``scenarios`` limit its menus). ``scale``,
    ``duration`` (simulated seconds; ``None``: the whole scenario), ``memory``
    and ``backend`` go to :class:`~payflow_lab.RunConfig` unchanged; ``pace``
    is simulated seconds per real second. ``panels`` and ``window_minutes``
    shape the :class:`~payflow_lab.lab.Dashboard`. Everything is validated
    here, so a bad argument fails in the cell that made the session.

    ``state`` is one of ``idle``, ``running``, ``paused``, ``stopping``,
    ``finished``, ``stopped`` or ``failed``; ``result`` holds the
    :class:`~payflow_lab.RunResult` of the last run that ended.
    """

    def __init__(
        self,
        *,
        scenario: str = "normal",
        phase: int = 1,
        phases: Iterable[int] | None = None,
        scenarios: Iterable[str] | None = None,
        seed: int = DEFAULT_SEED,
        scale: float = DEFAULT_SCALE,
        duration: float | None = None,
        pace: float = 30.0,
        faults: Mapping[str, Any] | None = None,
        panels: Mapping[str, Sequence[str]] | None = None,
        window_minutes: float = 10.0,
        memory: str = DEFAULT_MEMORY,
        backend: str = DEFAULT_BACKEND,
        interval: float = 0.1,
        autopoll: bool = True,
    ) -> None:
        RunConfig(
            scenario=scenario,
            phase=phase,
            seed=seed,
            scale=scale,
            duration=duration,
            memory=memory,
            backend=backend,
            faults=dict(faults or {}),
        )  # every run setting checked before any widget exists
        number("interval", interval, minimum=INTERVAL_LIMITS[0], maximum=INTERVAL_LIMITS[1], unit=" seconds")
        self.scale = scale
        self.duration = duration
        self.memory = memory
        self.backend = backend
        self.interval = float(interval)
        self.autopoll = bool(autopoll)
        self.panel = ControlPanel(
            scenario=scenario, phase=phase, phases=phases, scenarios=scenarios, seed=seed, pace=pace, faults=faults
        )
        self.dashboard = Dashboard(panels, window_minutes=window_minutes, memory=memory != "off")
        self.widget = widgets.VBox([self.panel.widget, self.dashboard.widget])
        self.widget.add_class("payflow-session")
        self.panel.on_faults(self._faults_changed)
        self.panel.on_pace(self._pace_changed)
        self.panel.on_button(self._button)
        self.state = "idle"
        self.live: LiveRun | None = None
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self._task: asyncio.Task[None] | concurrent.futures.Future[None] | None = None
        self._stop_requested = False
        self._revision = -1
        self._generation = 0
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        _SESSIONS.add(self)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # ------------------------------------------------------------- controls
    def start(self) -> bool:
        """Start a new run with the panel's settings; return whether it started (if not, the status says why)."""
        if self.state in LIVE_STATES:
            self.panel.set_status("a run is already live: stop it first", error=True)
            return False
        loop = None
        if self.autopoll:
            loop = self._poll_loop()
            if loop is None:
                self.panel.set_status(
                    "no running event loop to update the dashboard from: use this in a "
                    "Jupyter kernel, or create the session with autopoll=False and call "
                    "poll_once()",
                    error=True,
                )
                return False
        panel = self.panel
        try:
            config = RunConfig(
                scenario=panel.selected_scenario,
                phase=panel.selected_phase,
                seed=panel.selected_seed,
                scale=self.scale,
                duration=self.duration,
                memory=self.memory,
                backend=self.backend,
                faults=panel.changed_faults(),
            )
            live = LiveRun(config, pace=panel.selected_pace)
        except ValidationError as exc:
            panel.set_status(str(exc), error=True)
            return False
        panel.show_own_faults()  # the last run's scripted changes are not this run's
        self.dashboard.reset(title=self._title(config))
        self.result = self.error = None
        self._stop_requested = False
        self._revision = -1
        self.live = live
        try:
            live.start()
        except Exception as exc:
            self.error = exc
            self._set_state("failed", f"the run could not start: {_describe(exc)}")
            return False
        changed = ", ".join(f"{k}={v}" for k, v in sorted(config.faults.items())) or "no faults of your own"
        self._set_state(
            "running",
            f"{config.scenario}, phase {config.phase}, seed {config.seed}, "
            f"{panel.selected_pace:g} simulated s per s; {changed}",
        )
        if loop is not None:
            self._schedule(loop)
        return True

    def pause(self) -> None:
        """Hold the simulation at its next simulated second (the dashboard keeps what it has)."""
        if self.state != "running" or self.live is None:
            self.panel.set_status("nothing is running to pause", error=True)
            return
        self.live.pause()
        self._set_state("paused", "paused: press Resume to carry on; fault changes wait for the next second")

    def resume(self) -> None:
        """Carry on after :meth:`pause`."""
        if self.state != "paused" or self.live is None:
            self.panel.set_status("nothing is paused", error=True)
            return
        self.live.resume()
        self._set_state("running", "running again")

    def stop(self) -> None:
        """Ask the run to stop (traffic ends, the pipeline shuts down); the poller then joins its thread.

        Returns at once, so the kernel stays responsive while the pipeline
        shuts down. Use :meth:`close` to wait.
        """
        live = self.live
        if live is None or not live.running:
            self.panel.set_status("nothing is running to stop", error=True)
            return
        self._stop_requested = True
        live.controls.stop()
        self._set_state("stopping", "stopping: traffic ends and the pipeline shuts down")

    def reset(self) -> bool:
        """Clear the dashboard and put the panel back to its first settings (only when no run is live)."""
        if self.state in LIVE_STATES:
            self.panel.set_status("stop the run before resetting", error=True)
            return False
        self.panel.reset()
        self.dashboard.reset(title="")
        self.live = None
        self.result = self.error = None
        self._set_state("idle", "ready: press Start")
        return True

    def close(self, timeout: float = 30.0) -> RunResult | None:
        """Stop any live run, wait for its thread (at most ``timeout`` s), end the poller; return the result.

        Safe to call at any time and more than once. The session can start
        again afterwards.
        """
        live = self.live
        if live is not None and live.running:
            self._stop_requested = True
            live.controls.stop()
        if self.state in LIVE_STATES and live is not None:
            self._finish(timeout)
        self._end_poller()
        return self.result

    async def aclose(self, timeout: float = 30.0) -> RunResult | None:
        """:meth:`close`, then wait until the poller task has finished (from the loop it runs on)."""
        result = self.close(timeout)
        task = self._task
        if isinstance(task, asyncio.Task) and task.get_loop() is asyncio.get_running_loop():
            await asyncio.gather(task, return_exceptions=True)
        elif isinstance(task, concurrent.futures.Future):
            await asyncio.wrap_future(task)
        return result

    async def wait(self, timeout: float | None = None) -> RunResult | None:
        """Wait (without blocking the kernel) until the current run ends by itself; return its result.

        With ``timeout`` (real seconds) it raises :class:`TimeoutError` if the
        run is still live by then.
        """

        async def until_done() -> None:
            while self.state in LIVE_STATES:
                if not self._polling:
                    self.poll_once()
                await asyncio.sleep(self.interval)

        await asyncio.wait_for(until_done(), timeout)
        return self.result

    @property
    def polling(self) -> bool:
        """Whether a poller task is currently updating the dashboard."""
        return self._polling

    @property
    def _polling(self) -> bool:
        return self._task is not None and not self._task.done()

    # --------------------------------------------------------------- polling
    def _poll_loop(self) -> asyncio.AbstractEventLoop | None:
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            pass
        if self._loop is not None and self._loop.is_running():
            return self._loop
        return None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._generation += 1  # a poller of an earlier run that is still winding down sees this and ends
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._task = loop.create_task(self._poll(self._generation), name="payflow-dashboard-poller")
        else:  # a widget callback delivered on another thread: hand the poller to the kernel's loop
            self._task = asyncio.run_coroutine_threadsafe(self._poll(self._generation), loop)

    async def _poll(self, generation: int) -> None:
        try:
            while generation == self._generation and self.poll_once():  # noqa: ASYNC110 (polling is the point)
                await asyncio.sleep(self.interval)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the dashboard must not orphan the run's thread
            self.error = exc
            live = self.live
            if live is not None and live.running:
                live.controls.stop()
                try:
                    live.join(30.0)
                except Exception:
                    pass
            self._set_state("failed", f"the dashboard failed: {_describe(exc)}")

    def poll_once(self) -> bool:
        """Bring the dashboard and panel up to date with the run; return whether the run is still live."""
        live = self.live
        if live is None or self.state not in LIVE_STATES:
            return False
        # Once the clock has stopped, the last rows go out at once: a paused dashboard shows where it stopped.
        self.dashboard.update(live.series, live.latencies, events=live.events, force=live.controls.halted)
        self._sync_plan(live)
        if live.running:
            controls = live.controls
            state = "stopping" if controls.stop_requested else "paused" if controls.paused else "running"
            self.dashboard.set_pace_ratio(live.pace_ratio if state == "running" else None)
            if state != self.state:
                self._set_state(state, self.panel.status_text)
            return True
        self._finish(5.0)
        return self.state in LIVE_STATES

    def _sync_plan(self, live: LiveRun) -> None:
        """Move the widgets when the scenario's script changes the fault plan (Black Friday at 14:15)."""
        world = live.simulation.world
        if world is None or world.faults.revision == self._revision:
            return
        revision = world.faults.revision
        try:
            snapshot = world.faults.snapshot()
        except RuntimeError:  # the run's thread changed the plan while we copied it: next time
            return
        self._revision = revision
        self.panel.show_plan(snapshot)

    def _finish(self, timeout: float) -> None:
        live = self.live
        assert live is not None
        try:
            result = live.join(timeout)
        except TimeoutError:
            self.panel.set_status(f"the run did not stop within {timeout:g} s; try again", error=True)
            return
        except Exception as exc:
            self.error = exc
            self.dashboard.set_pace_ratio(None)
            self.dashboard.update(live.series, live.latencies, events=live.events, force=True)
            self._set_state("failed", f"the run failed: {_describe(exc)}")
            return
        self.result = result
        self.dashboard.set_pace_ratio(None)
        self.dashboard.finish(live.series, live.latencies, live.events)
        self._sync_plan(live)
        self._set_state("stopped" if self._stop_requested else "finished", self._ending(result))

    def _end_poller(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()

    # ------------------------------------------------------------- callbacks
    def _faults_changed(self, changes: dict[str, Any]) -> None:
        text = ", ".join(f"{k}={v}" for k, v in sorted(changes.items()))
        live = self.live
        if self.state in ("running", "paused") and live is not None and live.running:
            try:
                live.set_faults(**changes)
            except (ValidationError, RuntimeError) as exc:
                self.panel.set_status(f"{text}: {exc}", error=True)
                return
            self.panel.set_status(f"{text}: applies at the next simulated second")
        elif self.state == "stopping":
            self.panel.set_status(f"{text}: the run is stopping; used when the next run starts")
        else:
            self.panel.set_status(f"{text}: used when the next run starts")

    def _pace_changed(self, pace: float) -> None:
        live = self.live
        if self.state in ("running", "paused") and live is not None:
            live.set_pace(pace)
        self.panel.set_status(f"pace {pace:g} simulated seconds per second")

    def _button(self, name: str) -> None:
        if name == "start":
            self.start()
        elif name == "pause":
            self.resume() if self.state == "paused" else self.pause()
        elif name == "stop":
            self.stop()
        elif name == "reset":
            self.reset()

    # --------------------------------------------------------------- helpers
    def _set_state(self, state: str, message: str) -> None:
        self.state = state
        self.panel.set_state(state)
        self.panel.set_status(message, error=state == "failed")

    @staticmethod
    def _title(config: RunConfig) -> str:
        return (
            f"{config.scenario_obj.title} · phase {config.phase} ({get_phase(config.phase).name}) · seed {config.seed}"
        )

    @staticmethod
    def _ending(result: RunResult | None) -> str:
        if result is None:
            return "ended without a result"
        pay = result.summary["payments"]
        clock = result.series.get("clock") or [0.0]
        return (
            f"ended at {hhmmss(clock[-1])}: {pay['attempted']:,} payments, {pay['authorized']:,} "
            f"authorized, {pay['failed']:,} failed, {pay['stuck']:,} stuck (${pay['stuck_dollars']:,.0f})"
        )
