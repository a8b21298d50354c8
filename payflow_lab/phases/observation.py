"""What a running pipeline lets the outside see: :class:`Observation`, returned by ``Pipeline.observe()``.

Monitoring (Prometheus collectors, the terminal dashboard), the notebook side
and the reports all read a run through this one typed view, never by guessing
at a pipeline's attributes. The view holds *live* objects: a collector that
keeps it reads the counts as they are at scrape time, during the run and
after it.

Which parts a phase fills in says what it has: every phase has the world
(merchants, the connection pool) and the recorder; Phases 4 and 5 add their
hook bus and its subscriber handles; Phase 5 adds its webhook path (lanes,
breakers, rate limits, retries, dead letters) and the second tries of its
internal side effects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from payflow_lab.core.recorder import Recorder
from payflow_lab.core.world import World
from payflow_lab.hooks import Handle, HookBus
from payflow_lab.phases.webhook_lanes import WebhookDelivery

__all__ = ["Observable", "Observation"]


@dataclass(frozen=True)
class Observation:
    """A typed, live view of one pipeline (see the module docstring)."""

    #: The phase number (1 to 5) and its short name (``"sync"``, ..., ``"hardened"``).
    phase: int
    name: str
    world: World
    recorder: Recorder
    #: The hook bus of Phases 4 and 5.
    bus: HookBus | None = None
    #: The bus's subscriber handles by side-effect kind (their queues show on the dashboard).
    handles: Mapping[str, Handle] = field(default_factory=dict)
    #: Phase 5: internal side effects that timed out once and got their second try, by kind.
    second_tries: Mapping[str, int] | None = None
    #: Phase 5's webhook path: lanes, per-merchant breakers, rate limits, retries, dead letters.
    webhooks: WebhookDelivery | None = None


class Observable(Protocol):
    """Anything that can be observed: a pipeline, a live run, a finished run's result."""

    def observe(self) -> Observation: ...
