"""The resilience parts of Phase 5, each usable on its own, all anyio-neutral and virtual-time friendly.

=================  ==========================================================  =============================
part               what it is for                                              module
=================  ==========================================================  =============================
circuit breaker    stop calling a failing endpoint; probe it after a break     :mod:`.breaker`
rate limiter       at most ``burst + rate * T`` calls to an endpoint in ``T``  :mod:`.ratelimit`
retry              capped exponential backoff with jitter (tenacity inside)    :mod:`.retry`
retry budget       retries paid for by successes: no retry storms              :mod:`.budget`
dead letters       undelivered work kept with its reason, replayable           :mod:`.dead_letters`
metrics            prometheus_client collector for all of the above            :mod:`.collector`
retry storm demo   Brooker's backoff-and-jitter experiment in virtual time     :mod:`.storm`
=================  ==========================================================  =============================

Time comes from an injected clock (default :func:`anyio.current_time`),
randomness from an injected :class:`random.Random`; bad settings raise
:class:`~payflow_lab.core.domain.ValidationError` naming the setting. The
documentation pages are in ``docs/resilience/``.
"""

from __future__ import annotations

from payflow_lab.core.errors import BreakerOpen, RateLimited, RetryExhausted
from payflow_lab.resilience.breaker import (
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    KeyedCircuitBreaker,
    Permit,
    Transition,
    WindowStats,
)
from payflow_lab.resilience.budget import RetryBudget
from payflow_lab.resilience.dead_letters import (
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
from payflow_lab.resilience.ratelimit import KeyedRateLimiter, RateLimit, TokenBucket
from payflow_lab.resilience.retry import JITTERS, DecorrelatedJitter, FullJitter, RetryPolicy
from payflow_lab.resilience.storm import CALL_LATENCY_S, compare_storm

__all__ = [
    "CALL_LATENCY_S",
    "compare_storm",
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
