"""The hook bus: the story's async hook library (hookz, in Go), rebuilt on anyio and done right.

PayFlow's fix was one line on the critical path::

    paymentHooks.Emit(ctx, "payment.authorized", payment)   // returns at once

and workers that run the merchant webhook, analytics, audit, risk and fraud
hooks in the background. This package is that idea for Python, on anyio (so
on asyncio and trio alike, in real and in virtual time), without the defects
measured in hookz:

* **all-or-nothing admission**: ``emit`` queues the delivery for every
  subscriber of the event, or for none, and tells the caller which;
* **isolation**: every subscriber has its own bounded queue and workers, so
  a slow webhook cannot starve the audit log;
* **explicit overflow**: per subscriber, reject, wait with a deadline
  (backpressure) or spill to a store; every refusal counted with its reason;
* **timeouts by cancellation**: an anyio cancel scope around each handler
  call; nothing depends on the handler checking a context;
* **shutdown with a deadline**: ``aclose(deadline)`` drains, cancels what is
  left, and reports what completed, what was cancelled, what never started
  and which handler ignored cancellation;
* **errors kept, not discarded**: each failure is counted, kept with its
  traceback and passed to ``on_error``; it never reaches the emitter;
* **metrics per subscriber**: queue depth, admitted, completed, failed, timed
  out, cancelled, rejected, spilled, and a latency histogram with percentiles.

Modules: :mod:`.bus` (the bus and its handles), :mod:`.subscriber` (queue,
workers, counters), :mod:`.overflow` (policies and the spill store),
:mod:`.stats` (statistics and the shutdown report), :mod:`.latency` (the
histogram), :mod:`.emit_cost` (``payflow-lab bench``, group "hook bus"). What
``emit`` raises lives with every other error in :mod:`payflow_lab.core.errors`.
"""

from __future__ import annotations

from payflow_lab.core.errors import BusClosed, BusNotStarted, HookBusError, Rejected
from payflow_lab.hooks.bus import Handle, HookBus
from payflow_lab.hooks.latency import LatencyHistogram
from payflow_lab.hooks.overflow import Delivery, MemorySpillStore, OverflowPolicy, Reject, Spill, SpillStore, Wait
from payflow_lab.hooks.stats import HookFailure, Outcome, ShutdownReport, SubscriberShutdown, SubscriberStats

__all__ = [
    "BusClosed",
    "BusNotStarted",
    "Delivery",
    "Handle",
    "HookBus",
    "HookBusError",
    "HookFailure",
    "LatencyHistogram",
    "MemorySpillStore",
    "Outcome",
    "OverflowPolicy",
    "Reject",
    "Rejected",
    "ShutdownReport",
    "Spill",
    "SpillStore",
    "SubscriberShutdown",
    "SubscriberStats",
    "Wait",
]
