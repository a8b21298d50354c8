"""The handles a person holds on a live run: pause, resume, stop, faults and pace, answered promptly.

A :class:`~payflow_lab.LiveRun` runs the simulation in a worker thread, in
virtual time slowed to a *pace* (simulated seconds per real second). The
notebook's thread presses the buttons; the simulation's thread reads them. The
simulation calls :meth:`Controls.checkpoint` every :data:`CHECKPOINT_S`
simulated seconds (not once per simulated second), and that one call does
three things:

* **pause**: while paused, the simulation's thread blocks there, so the story
  clock stops within one checkpoint of the click, however busy a simulated
  second is (Black Friday on Phase 5 is thousands of events per second);
* **pace**: it sleeps just long enough to keep the pace asked for. When the
  machine cannot keep it (a busy laptop), the run *slows down* instead of
  sprinting to catch up later: nothing jumps, nothing is skipped, and
  :attr:`Controls.pace_ratio` says how far behind it is ("0.4x of the pace
  asked");
* **yield**: a thread that never sleeps keeps Python's GIL most of the time,
  and the notebook kernel, which must take the GIL back after every socket
  call, then handles a click only after seconds of waiting. A run that has
  been busy for :data:`BUSY_SLICE_S` of real time sleeps :data:`YIELD_S`, so
  the kernel always gets a share of the processor (the run stays below about
  80% of one core while it is behind; when it keeps its pace it sleeps anyway).

Fault changes are validated at once, in the caller's thread, and applied by
the simulation at the next simulated second (see :class:`~payflow_lab.Simulation`).

The latencies of the controls themselves are measured here (click to clock
stopped, change to applied), because ``payflow-lab bench`` reports them.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Any

from payflow_lab.core.faults import FaultPlan
from payflow_lab.core.validation import number

__all__ = ["BUSY_SLICE_S", "CHECKPOINT_S", "PACE_LIMITS", "YIELD_S", "Controls"]

#: Simulated seconds between two checkpoints of a live run (pause, pace, yield).
CHECKPOINT_S = 0.05
#: Real seconds a live run may compute without sleeping before it yields the processor.
BUSY_SLICE_S = 0.04
#: Real seconds it then sleeps, so the notebook's kernel can answer a click.
YIELD_S = 0.01
#: Allowed pace, in simulated seconds per real second.
PACE_LIMITS = (0.1, 10_000.0)
#: Real seconds a run may fall behind its pace before it stops trying to catch up.
SLACK_S = 0.25
#: Longest single pacing sleep, in real seconds (a pause or stop ends it early anyway).
MAX_SLEEP_S = 0.5
#: Real seconds over which the achieved pace is measured.
PACE_WINDOW_S = 3.0


class Controls:
    """Thread-safe handles on a live run: faults, pace, pause, stop.

    Methods without a leading underscore are called from the notebook's
    thread; :meth:`checkpoint`, :meth:`pending_changes` and
    :meth:`changes_applied` from the simulation's.
    """

    def __init__(self, pace: float | None = None) -> None:
        self._changes: queue.SimpleQueue[tuple[float, dict[str, Any]]] = queue.SimpleQueue()
        self._running = threading.Event()
        self._running.set()
        self._lock = threading.Lock()
        self.stop_requested = False
        self._pace = self._check_pace(pace)
        self._anchor: tuple[float, float] | None = None
        self._busy_since: float | None = None
        self._pace_samples: deque[tuple[float, float]] = deque()
        self._pause_requested: float | None = None
        self._blocked = threading.Event()
        self._wake = threading.Event()  # set by pause and stop: a pacing sleep ends early
        #: Real seconds from each :meth:`pause` to the story clock actually stopping.
        self.pause_latencies: list[float] = []
        #: Real seconds from each :meth:`set_faults` to the change being applied by the run.
        self.change_latencies: list[float] = []
        #: ``time.perf_counter()`` when the clock stopped for each pause, and when each change applied.
        self.halted_at: list[float] = []
        self.applied_at: list[float] = []
        #: Times the run yielded the processor because it was behind its pace.
        self.yields = 0

    # ------------------------------------------------------------------- pace
    @staticmethod
    def _check_pace(pace: object) -> float | None:
        """``pace`` in simulated seconds per real second, within :data:`PACE_LIMITS`; ``None``: as fast as it goes."""
        return number(
            "pace",
            pace,
            minimum=PACE_LIMITS[0],
            maximum=PACE_LIMITS[1],
            unit=" simulated seconds per second",
            optional=True,
        )

    @property
    def pace(self) -> float | None:
        """The pace asked for (``None``: as fast as the machine goes)."""
        return self._pace

    def set_pace(self, pace: float | None) -> None:
        checked = self._check_pace(pace)
        with self._lock:
            self._pace = checked
            self._anchor = None
            self._pace_samples.clear()

    @property
    def achieved_pace(self) -> float | None:
        """Simulated seconds per real second over the last few running seconds (``None`` until measured)."""
        with self._lock:
            samples = list(self._pace_samples)
        if len(samples) < 2:
            return None
        (wall0, sim0), (wall1, sim1) = samples[0], samples[-1]
        if wall1 - wall0 < 0.5:
            return None
        return (sim1 - sim0) / (wall1 - wall0)

    @property
    def pace_ratio(self) -> float | None:
        """Achieved pace over the pace asked (1.0: on pace; 0.4: the machine keeps 40% of it)."""
        achieved, asked = self.achieved_pace, self._pace
        if achieved is None or asked is None:
            return None
        return min(1.0, achieved / asked)

    # ----------------------------------------------------------------- faults
    def set_faults(self, **changes: Any) -> None:
        """Queue fault changes (validated now) for the next simulated second."""
        FaultPlan().apply(changes)
        self._changes.put((time.perf_counter(), dict(changes)))

    def pending_changes(self) -> list[dict[str, Any]]:
        """Take the queued changes (the simulation's thread, once per simulated second)."""
        out: list[dict[str, Any]] = []
        now = time.perf_counter()
        while True:
            try:
                asked, changes = self._changes.get_nowait()
            except queue.Empty:
                return out
            self.change_latencies.append(now - asked)
            self.applied_at.append(now)
            out.append(changes)

    # ------------------------------------------------------------ pause, stop
    def pause(self) -> None:
        with self._lock:
            if self._running.is_set() and self._pause_requested is None:
                self._pause_requested = time.perf_counter()
            self._running.clear()
        self._wake.set()

    def resume(self) -> None:
        with self._lock:
            self._anchor = None
            self._pace_samples.clear()
            self._pause_requested = None
        self._running.set()

    @property
    def paused(self) -> bool:
        """Whether a pause was asked for (see :attr:`halted` for whether the clock has stopped yet)."""
        return not self._running.is_set()

    @property
    def halted(self) -> bool:
        """Whether the simulation's thread is holding still at a checkpoint right now."""
        return self._blocked.is_set()

    def wait_halted(self, timeout: float) -> bool:
        """Wait (real seconds) until the story clock has stopped after :meth:`pause`; return whether it did."""
        return self._blocked.wait(timeout)

    def stop(self) -> None:
        self.stop_requested = True
        self._running.set()
        self._wake.set()

    # ---------------------------------------------------- the run's own thread
    def checkpoint(self, sim_elapsed: float) -> None:
        """Hold while paused, keep the pace, let other threads run. Called by the simulation's thread."""
        if not self._running.is_set():
            self._halt()
        now = time.perf_counter()
        with self._lock:
            pace = self._pace
            if self.stop_requested:
                return
            self._pace_samples.append((now, sim_elapsed))
            while len(self._pace_samples) > 2 and now - self._pace_samples[1][0] > PACE_WINDOW_S:
                self._pace_samples.popleft()
            if pace is not None and self._anchor is None:
                self._anchor = (now, sim_elapsed)
            anchor = self._anchor
        if self._busy_since is None:
            self._busy_since = now
        delay = 0.0
        if pace is not None and anchor is not None:
            wall0, sim0 = anchor
            delay = wall0 + (sim_elapsed - sim0) / pace - now
            if delay < -SLACK_S:  # fell behind: carry on from here, slower, rather than sprint
                with self._lock:
                    self._anchor = (now, sim_elapsed)
                delay = 0.0
        if delay <= 0 and now - self._busy_since >= BUSY_SLICE_S:
            delay = YIELD_S
            self.yields += 1
        if delay > 0:
            self._sleep(min(delay, MAX_SLEEP_S))

    def _sleep(self, seconds: float) -> None:
        # Wake early for a pause: the clock must stop now, not after the pacing sleep.
        self._wake.wait(seconds)
        self._wake.clear()
        if not self._running.is_set():
            self._halt()
        self._busy_since = time.perf_counter()

    def _halt(self) -> None:
        with self._lock:
            asked = self._pause_requested
        self._blocked.set()
        halted = time.perf_counter()
        self.halted_at.append(halted)
        if asked is not None:
            self.pause_latencies.append(halted - asked)
        try:
            while not self._running.wait(0.05):
                pass
        finally:
            self._blocked.clear()
            with self._lock:
                self._pause_requested = None
                self._anchor = None
                self._pace_samples.clear()
            self._busy_since = time.perf_counter()
