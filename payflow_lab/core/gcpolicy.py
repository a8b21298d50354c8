"""Fewer garbage collections while a simulation runs.

A simulation keeps tens of thousands of objects alive at once (on Black
Friday, every stuck payment is a suspended task with its frames, cancel
scopes and events) and allocates millions more as it goes. CPython starts a
young-generation collection after every 700 new container objects and, now
and then, a full collection that walks *every* live object. With that many
live objects the collector, not the simulation, took about a third of Phase
1's time on Black Friday at scale 1 (17.6 s with the defaults, 11.4 s with no
collection at all, 13.9 s with the threshold below; measured for issue 20,
see ``docs/performance.md``).

The price is garbage that waits longer to be collected: a heap traced with
``tracemalloc`` would count it, and Phase 5's peak on Black Friday read more
than twice its live size. So the runner uses this only when memory is not
traced (``memory="rss"``, the default, or ``"off"``).

:func:`fewer_collections` raises the first two thresholds for the duration
of a run, so each collection is rarer and still bounded: a young collection
after every 50,000 new objects, and a middle-generation one after every 100
young ones (CPython: 10). The objects that survive a young collection during
a run are mostly payments that stay in flight to its end (on Black Friday,
tens of thousands of them); scanning them again every 500,000 new objects
cost Phase 1 about 5% of its time there, for no garbage found. The collector
stays on: a live run that makes reference cycles for hours still has them
collected. Thresholds are process-wide, so concurrent runs (a live run and a
quick cell in one notebook) share one setting, counted like
:class:`~payflow_lab.core.recorder.MemoryProbe`'s tracing, and the process's
own thresholds come back when the last run ends.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["RUN_MIDDLE_THRESHOLD", "RUN_THRESHOLD", "fewer_collections"]

#: New container objects between two young-generation collections while a run is on (CPython's default: 700).
RUN_THRESHOLD = 50_000
#: Young collections between two middle-generation collections while a run is on (CPython's default: 10).
RUN_MIDDLE_THRESHOLD = 100

_lock = threading.Lock()
_runs = 0
_saved: tuple[int, int, int] | None = None


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Raise the first two thresholds to :data:`RUN_THRESHOLD` and :data:`RUN_MIDDLE_THRESHOLD`; restore them after."""
    global _runs, _saved
    with _lock:
        if _runs == 0:
            _saved = gc.get_threshold()
            first, middle, oldest = _saved
            if 0 < first < RUN_THRESHOLD:  # 0: collection is off, and stays off
                gc.set_threshold(RUN_THRESHOLD, max(middle, RUN_MIDDLE_THRESHOLD), oldest)
        _runs += 1
    try:
        yield
    finally:
        with _lock:
            _runs -= 1
            if _runs == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                _saved = None
