"""What every phase has in common: the shape a scenario drives, and the honest bookkeeping.

A phase is an async context manager around its background machinery (none in
Phase 1, a task group in Phase 2, streams and consumers in Phase 3, the hook
bus in Phases 4 and 5) plus :meth:`Pipeline.process_payment`, the critical
path a customer waits on. Leaving the ``async with`` is the process stopping:
each phase shows what that means for the work it still had in flight.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, ClassVar

from payflow_lab.core.domain import Payment
from payflow_lab.core.recorder import Recorder
from payflow_lab.core.world import World
from payflow_lab.phases.observation import Observation

__all__ = ["Pipeline"]


class Pipeline:
    """Base class of the five phases. Subclasses set the class attributes and write :meth:`process_payment`."""

    number: ClassVar[int]
    name: ClassVar[str]
    title: ClassVar[str]
    #: One sentence: the mistake (or the cure) this phase shows.
    lesson: ClassVar[str]

    def __init__(self, world: World) -> None:
        self.world = world
        self.recorder: Recorder = world.recorder
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Pipeline:
        await self._stack.__aenter__()
        try:
            await self.start(self._stack)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self.stop()
        finally:
            await self._stack.aclose()

    async def start(self, stack: AsyncExitStack) -> None:
        """Start background machinery; enter contexts on ``stack`` so they close on exit."""

    async def stop(self) -> None:
        """The process is stopping: do (or fail to do) whatever the phase does with work in flight."""

    async def process_payment(self, payment: Payment) -> None:
        """The critical path. Return when the customer can be told "paid"; raise if not."""
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        """Phase-specific keys added to the run's summary."""
        return {}

    def observe(self) -> Observation:
        """What monitoring, the lab and the reports may see of this pipeline: live objects, typed."""
        return Observation(phase=self.number, name=self.name, world=self.world, recorder=self.recorder)

    # ------------------------------------------------------------- helpers
    async def tracked(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` as one counted task (for the in-flight tasks series)."""
        recorder = self.recorder
        recorder.task_started()
        try:
            await fn(*args)
        finally:
            recorder.task_finished()
