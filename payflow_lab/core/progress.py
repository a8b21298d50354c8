"""Progress of the long commands (``payflow-lab``, ``payflow-lab bench``, ``run``), always on stderr.

stdout carries the result (the narration, the tables, or exactly one JSON
object under ``--json``); progress never goes there. On a terminal, stderr
shows a rich progress bar over the command's steps, the current step's status
and, for a simulation, its story clock. When stderr is not a terminal (a log
file, CI, a pipe) there is one plain line per step, an indented line per
status :func:`note`, and, while a simulation step runs longer than
``heartbeat`` seconds (10 by default), an indented line with its story clock
every ``heartbeat`` seconds: a log says how far a slow run got, and a short run
adds nothing.

:class:`Steps` is for commands made of several steps; :func:`run_progress`
for a single simulation; :func:`note` lets code deep inside a step (a
benchmark's repetitions) update the status line without being handed the
progress object.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO, Any

__all__ = ["Steps", "note", "run_progress"]

_CURRENT: ContextVar[Steps | None] = ContextVar("payflow_lab_progress", default=None)


def note(text: str) -> None:
    """Show ``text`` as the current step's status, if a :class:`Steps` is showing progress (else nothing)."""
    steps = _CURRENT.get()
    if steps is not None:
        steps.status(text)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Steps:
    """Progress over ``total`` named steps of the command ``title``, on ``stream`` (stderr by default).

    ::

        with Steps("payflow-lab", total=11) as steps:
            for phase, scenario in runs:
                with steps.step(f"phase {phase}, {scenario}") as on_tick:
                    run_config(config, on_tick=on_tick)

    ``step`` yields an ``on_tick(simulation)`` callback for the runner, which
    moves a second bar along the simulation's story clock (terminal only).
    """

    def __init__(
        self,
        title: str,
        total: int,
        *,
        stream: IO[str] | None = None,
        terminal: bool | None = None,
        heartbeat: float = 10.0,
    ) -> None:
        self.title = title
        self.total = total
        self.heartbeat = heartbeat
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = _is_terminal(self.stream) if terminal is None else terminal
        self.done = 0
        self._progress: Any = None
        self._overall: Any = None
        self._token: Any = None

    def __enter__(self) -> Steps:
        self._token = _CURRENT.set(self)
        if self.terminal:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                console=Console(file=self.stream, force_terminal=True),
                transient=True,
            )
            self._progress.start()
            self._overall = self._progress.add_task(self.title, total=self.total, status="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None

    def status(self, text: str) -> None:
        """The current step's status: on a terminal, beside the bar; in a plain log, an indented line."""
        if self._progress is not None:
            self._progress.update(self._overall, status=text)
        else:
            print(f"  {text}", file=self.stream, flush=True)

    @contextmanager
    def step(self, description: str) -> Iterator[Callable[[Any], None]]:
        """One step: announced when it starts, counted when it ends; yields a runner ``on_tick``."""
        number = self.done + 1
        if self._progress is None:
            print(f"{self.title}: [{number}/{self.total}] {description}", file=self.stream, flush=True)
            yield self._plain_clock(description)
            self.done = number
            return
        self._progress.update(self._overall, description=f"{self.title}: {description}", status="")
        self._progress.refresh()  # the new step shows now, not at the next tick of rich's refresh thread
        clock: dict[str, Any] = {}

        def on_tick(simulation: Any) -> None:
            from payflow_lab.core.recorder import hhmmss

            if "task" not in clock:
                clock["task"] = self._progress.add_task(
                    "  story clock", total=simulation.config.sim_duration, status=""
                )
            self._progress.update(
                clock["task"],
                completed=simulation.world.clock() - simulation.scenario.start,
                status=hhmmss(simulation.world.clock()),
            )

        try:
            yield on_tick
        finally:
            if "task" in clock:
                self._progress.remove_task(clock["task"])
        self.done = number
        self._progress.update(self._overall, completed=number, status="")

    def _plain_clock(self, description: str) -> Callable[[Any], None]:
        """A runner ``on_tick`` for plain logs: the story clock, once every ``heartbeat`` real seconds."""
        last = [time.perf_counter()]

        def on_tick(simulation: Any) -> None:
            now = time.perf_counter()
            if now - last[0] < self.heartbeat:
                return
            last[0] = now
            from payflow_lab.core.recorder import hhmmss

            clock = simulation.world.clock()
            done = (clock - simulation.scenario.start) / simulation.config.sim_duration
            print(f"  {description}: story clock {hhmmss(clock)} ({done:.0%} of the run)", file=self.stream, flush=True)

        return on_tick


def _ignore(simulation: Any) -> None:
    return None


def run_progress(
    enabled: bool, *, delay: float = 1.5, stream: IO[str] | None = None
) -> tuple[Callable[[Any], None], Callable[[], None]]:
    """For one simulation: ``(on_tick, close)``; a bar on ``stream`` once the run has taken ``delay`` seconds.

    Nothing at all when not ``enabled`` (``payflow-lab run`` enables it only on a terminal).
    """
    if not enabled:
        return _ignore, lambda: None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    started = time.perf_counter()
    state: dict[str, Any] = {}

    def on_tick(simulation: Any) -> None:
        if time.perf_counter() - started < delay:
            return
        if "progress" not in state:
            progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[clock]}"),
                TimeElapsedColumn(),
                console=Console(file=stream or sys.stderr),
                transient=True,
            )
            progress.start()
            state["progress"] = progress
            state["task"] = progress.add_task(
                f"{simulation.config.scenario_name}, phase {simulation.config.phase}",
                total=simulation.config.sim_duration,
                clock="",
            )
        from payflow_lab.core.recorder import hhmmss

        world = simulation.world
        state["progress"].update(
            state["task"], completed=world.clock() - simulation.scenario.start, clock=hhmmss(world.clock())
        )

    def close() -> None:
        if "progress" in state:
            state["progress"].stop()

    return on_tick, close
