"""Retries with capped exponential backoff and jitter, bounded per call and by a shared budget.

A failed webhook is worth retrying, but *how* matters more than *whether*.
Retrying at once hits an endpoint that just failed; retrying after fixed,
doubling delays makes every caller that failed together retry together, in
synchronized waves (Marc Brooker, "Exponential Backoff and Jitter", AWS
Architecture Blog, 2015: :mod:`payflow_lab.resilience.storm` replays his
experiment). Randomizing the delay spreads the waves out:

``"full"`` (the default)
    retry ``n`` (0 for the first retry) sleeps a uniform time in
    ``[0, min(max_delay, base_delay * 2**n)]``. Brooker's recommendation:
    fewest calls, close to the shortest completion time.
``"decorrelated"``
    each sleep is uniform in ``[base_delay, 3 * previous sleep]``, capped at
    ``max_delay`` (the first "previous" is ``base_delay``). Never sleeps less
    than ``base_delay``; grows without counting attempts.
``"none"``
    ``min(max_delay, base_delay * 2**n)`` exactly: here for comparison.

A call is retried at most ``max_attempts - 1`` times, and only for the
exceptions in ``retry_on`` (never for cancellation). With a
:class:`~payflow_lab.resilience.budget.RetryBudget`, each retry must also be
paid for; when the budget is empty the call gives up at once. Either way the
caller gets :class:`RetryExhausted`, whose ``reason`` says which limit ended it.

The schedule is tenacity's: the waits and the stop rule are tenacity
strategies (any ``tenacity.wait`` works as :attr:`RetryPolicy.wait`), asked in
the order :class:`~tenacity.AsyncRetrying` asks them (the wait is drawn, then
the stop rule decides). The loop that asks them is written out here, with
:func:`anyio.sleep` between attempts, so its sleeps are virtual under
:func:`payflow_lab.core.vtime.run_virtual`: ``AsyncRetrying`` rebuilds its
chain of callbacks and inspects each of them on every attempt, and in Phase 5
on Black Friday that bookkeeping cost more than the simulated calls it
retried (issue 20, ``docs/performance.md``). tenacity's own random
waits (``wait_random_exponential``, ``wait_random``) draw from the global
:mod:`random` module, which would make runs irreproducible, so the jittered
waits here are tenacity wait strategies that draw from an injected
:class:`random.Random`, or per call from a :class:`~payflow_lab.core.dice.Dice`
(``run(..., jitter_rng=world.dice(payment, "retry"))`` in the simulation, so
that which call retries first cannot change anyone's wait).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from tenacity import RetryCallState
from tenacity.stop import stop_base
from tenacity.wait import wait_base, wait_exponential

from payflow_lab.core.dice import Dice
from payflow_lab.core.errors import RetryExhausted, ValidationError
from payflow_lab.core.validation import exception_types, integer, number
from payflow_lab.resilience.budget import RetryBudget
from payflow_lab.resilience.dead_letters import RETRIES_EXHAUSTED, RETRY_BUDGET_EMPTY

__all__ = ["DecorrelatedJitter", "FullJitter", "JITTERS", "RetryExhausted", "RetryPolicy"]

T = TypeVar("T")

#: The jitter modes :class:`RetryPolicy` knows, default first.
JITTERS = ("full", "decorrelated", "none")

# 2.0 ** 1024 overflows a float; any exponent this large is far past every cap anyway.
_MAX_EXPONENT = 1000


def _check_delays(base_delay: float, max_delay: float) -> tuple[float, float]:
    base = number("base_delay", base_delay, above=0.0)
    cap = number("max_delay", max_delay, above=0.0)
    if cap < base:
        raise ValidationError("max_delay", f"must be at least base_delay={base:g}, got {max_delay!r}")
    return base, cap


def _check_rng(rng: object) -> random.Random | Dice:
    if not isinstance(rng, (random.Random, Dice)):
        raise ValidationError("rng", f"must be a random.Random or a Dice (pass the world's rng), got {rng!r}")
    return rng


class FullJitter(wait_base):
    """tenacity wait: uniform in ``[0, min(max_delay, base_delay * 2**n)]`` for retry ``n``, drawn from ``rng``."""

    def __init__(self, base_delay: float, max_delay: float, rng: random.Random | Dice) -> None:
        self.base_delay, self.max_delay = _check_delays(base_delay, max_delay)
        self.rng = _check_rng(rng)

    def using(self, rng: random.Random | Dice) -> FullJitter:
        """The same schedule, drawing from ``rng``."""
        return FullJitter(self.base_delay, self.max_delay, rng)

    def ceiling(self, retry: int) -> float:
        """The upper bound of retry ``retry``'s sleep (0 for the first retry)."""
        return min(self.max_delay, self.base_delay * 2.0 ** min(retry, _MAX_EXPONENT))

    def delay(self, retry: int) -> float:
        """Draw the sleep before retry ``retry``."""
        return self.rng.uniform(0.0, self.ceiling(retry))

    def __call__(self, retry_state: RetryCallState) -> float:
        return self.delay(retry_state.attempt_number - 1)


class DecorrelatedJitter(wait_base):
    """tenacity wait: uniform in ``[base_delay, 3 * previous]``, capped at ``max_delay``, drawn from ``rng``."""

    def __init__(self, base_delay: float, max_delay: float, rng: random.Random | Dice) -> None:
        self.base_delay, self.max_delay = _check_delays(base_delay, max_delay)
        self.rng = _check_rng(rng)

    def using(self, rng: random.Random | Dice) -> DecorrelatedJitter:
        """The same schedule, drawing from ``rng``."""
        return DecorrelatedJitter(self.base_delay, self.max_delay, rng)

    def delay(self, previous: float | None) -> float:
        """Draw the next sleep after a sleep of ``previous`` seconds (``None`` before the first retry)."""
        prev = self.base_delay if previous is None else max(self.base_delay, previous)
        return min(self.max_delay, self.rng.uniform(self.base_delay, 3.0 * prev))

    def __call__(self, retry_state: RetryCallState) -> float:
        # tenacity keeps the last sleep in ``upcoming_sleep`` until it computes the next one.
        previous = retry_state.upcoming_sleep if retry_state.attempt_number > 1 else None
        return self.delay(previous)


class _StopRule(stop_base):
    """Stop at ``max_attempts``; otherwise a retry must be paid for from the budget. Remembers why it stopped."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.reason = ""

    def __call__(self, retry_state: RetryCallState) -> bool:
        policy = self.policy
        if retry_state.attempt_number >= policy.max_attempts:
            self.reason = RETRIES_EXHAUSTED
            return True
        if policy.budget is not None and not policy.budget.try_withdraw():
            self.reason = RETRY_BUDGET_EMPTY
            return True
        return False


class RetryPolicy:
    """Retry a coroutine function with capped exponential backoff and jitter. See the module docstring.

    ``rng`` is required unless ``jitter="none"``: pass the world's RNG (or a
    seeded :class:`random.Random`) so that runs are reproducible. ``budget``
    may be shared by many policies (all the deliveries to one endpoint, say).
    ``on_retry(attempt, error, delay)`` is called before each retry's sleep
    (attempt is the number of the attempt that just failed).

    The counters (``calls``, ``attempts``, ``retries``, ``exhausted``) add up
    over every :meth:`run`.
    """

    def __init__(
        self,
        *,
        max_attempts: int = 4,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        jitter: str = "full",
        rng: random.Random | None = None,
        budget: RetryBudget | None = None,
        retry_on: type[Exception] | tuple[type[Exception], ...] = Exception,
        on_retry: Callable[[int, BaseException, float], None] | None = None,
    ) -> None:
        self.max_attempts = integer("max_attempts", max_attempts, minimum=1)
        self.base_delay, self.max_delay = _check_delays(base_delay, max_delay)
        if jitter == "full":
            self.wait: wait_base = FullJitter(self.base_delay, self.max_delay, _check_rng(rng))
        elif jitter == "decorrelated":
            self.wait = DecorrelatedJitter(self.base_delay, self.max_delay, _check_rng(rng))
        elif jitter == "none":
            self.wait = wait_exponential(multiplier=self.base_delay, max=self.max_delay)
        else:
            raise ValidationError("jitter", f"must be one of {', '.join(JITTERS)}, got {jitter!r}")
        self.jitter = jitter
        if budget is not None and not isinstance(budget, RetryBudget):
            raise ValidationError("budget", f"must be a RetryBudget or None, got {budget!r}")
        self.budget = budget
        types = exception_types("retry_on", retry_on)
        if not all(issubclass(t, Exception) for t in (types if isinstance(types, tuple) else (types,))):
            raise ValidationError("retry_on", "must name Exception subclasses only: cancellation is never retried")
        self.retry_on = types
        if on_retry is not None and not callable(on_retry):
            raise ValidationError("on_retry", f"must be callable, got {on_retry!r}")
        self.on_retry = on_retry
        self.calls = 0
        self.attempts = 0
        self.retries = 0
        self.exhausted: dict[str, int] = {RETRIES_EXHAUSTED: 0, RETRY_BUDGET_EMPTY: 0}

    async def run(
        self, fn: Callable[..., Awaitable[T]], *args: Any, jitter_rng: random.Random | Dice | None = None, **kwargs: Any
    ) -> T:
        """``await fn(*args, **kwargs)``, retrying as configured; raise :class:`RetryExhausted` on giving up.

        Exceptions outside ``retry_on`` propagate unchanged on the first
        occurrence, as does cancellation. ``jitter_rng``, if given, draws this
        call's jitter instead of the policy's ``rng``: pass
        ``world.dice(payment, "retry")`` so that concurrent calls cannot change
        each other's waits by the order they happen to retry in.
        """
        wait = self.wait
        if jitter_rng is not None and isinstance(wait, (FullJitter, DecorrelatedJitter)):
            wait = wait.using(_check_rng(jitter_rng))
        stop = _StopRule(self)
        self.calls += 1
        self.attempts += 1
        try:
            result = await fn(*args, **kwargs)
        except self.retry_on as exc:
            error: BaseException = exc
        else:
            return self._succeeded(result)
        # The call failed with an error worth retrying. tenacity's strategies decide what happens next, in
        # tenacity's order: draw the wait, then ask the stop rule (which pays for the retry from the budget).
        state = RetryCallState(None, fn, args, kwargs)  # type: ignore[arg-type]  # no Retrying runs this loop
        while True:
            state.upcoming_sleep = wait(state)
            if stop(state):
                self.exhausted[stop.reason] += 1
                raise RetryExhausted(stop.reason, state.attempt_number, error) from error
            self.retries += 1
            if self.on_retry is not None:
                self.on_retry(state.attempt_number, error, state.upcoming_sleep)
            await anyio.sleep(state.upcoming_sleep)
            state.attempt_number += 1
            self.attempts += 1
            try:
                result = await fn(*args, **kwargs)
            except self.retry_on as exc:
                error = exc
            else:
                return self._succeeded(result)

    def _succeeded(self, result: T) -> T:
        """A call went through: it earns its share of the retry budget."""
        if self.budget is not None:
            self.budget.deposit()
        return result
