"""The resilience parts of Phase 5, each usable on its own, all anyio-neutral and virtual-time friendly.

=================  ==========================================================  =============================
part               what it is for                                              module
=================  ==========================================================  =============================
circuit breaker    stop calling a failing endpoint; probe it after a break     :mod:`.breaker`
rate limiter       at most ``burst + rate * T`` calls to an endpoint in ``T``  :mod:`.ratelimit`
retry              capped exponential backoff with jitter (tenacity inside)    :mod:`.retry`
retry budget       retries paid for by successes: no retry storms              :mod:`.budget`
dead letters       undelivered work kept with its reason, replayable           :mod:`.deadletter`
metrics            prometheus_client collector for all of the above            :mod:`.metrics`
retry storm demo   Brooker's backoff-and-jitter experiment in virtual time     :mod:`.storm`
=================  ==========================================================  =============================

Time comes from an injected clock (default :func:`anyio.current_time`),
randomness from an injected :class:`random.Random`; bad settings raise
:class:`~payflow_lab.domain.ValidationError` naming the setting. The
documentation pages are in ``docs/resilience/``.
"""

from __future__ import annotations

from .breaker import (
    BreakerConfig,
    BreakerOpen,
    BreakerState,
    CircuitBreaker,
    KeyedCircuitBreaker,
    Permit,
    Transition,
    WindowStats,
)
from .budget import RetryBudget
from .deadletter import (
    BREAKER_OPEN_TOO_LONG,
    RATE_LIMITED_TOO_LONG,
    REASONS,
    RETRIES_EXHAUSTED,
    RETRY_BUDGET_EMPTY,
    SHUTDOWN,
    DeadLetter,
    DeadLetterStore,
    InMemoryDeadLetters,
    ReplayReport,
    replay,
)
from .ratelimit import KeyedRateLimiter, RateLimit, RateLimited, TokenBucket
from .retry import JITTERS, DecorrelatedJitter, FullJitter, RetryExhausted, RetryPolicy

__all__ = [
    "BREAKER_OPEN_TOO_LONG",
    "BreakerConfig",
    "BreakerOpen",
    "BreakerState",
    "CircuitBreaker",
    "DeadLetter",
    "DeadLetterStore",
    "DecorrelatedJitter",
    "FullJitter",
    "InMemoryDeadLetters",
    "JITTERS",
    "KeyedCircuitBreaker",
    "KeyedRateLimiter",
    "Permit",
    "RATE_LIMITED_TOO_LONG",
    "REASONS",
    "RETRIES_EXHAUSTED",
    "RETRY_BUDGET_EMPTY",
    "RateLimit",
    "RateLimited",
    "ReplayReport",
    "RetryBudget",
    "RetryExhausted",
    "RetryPolicy",
    "SHUTDOWN",
    "TokenBucket",
    "Transition",
    "WindowStats",
    "replay",
]
