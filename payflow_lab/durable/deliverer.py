"""The delivery function: one event, one endpoint, with every Phase 5 protection around one ``send``.

::

    rate limit (per merchant) -> circuit breaker (per endpoint) -> timeout -> transport.send(event)
    ^------------------------ retries with jitter and a budget ------------------------^

:class:`Deliverer` composes the resilience parts (:mod:`payflow_lab.resilience`)
around a :class:`~.transport.Transport`, and reports what happened as a
:class:`DeliveryResult` instead of raising, because what to do next (mark
done, try again later, dead-letter) is the outbox's business, not the
delivery's:

``delivered``
    the receiver acknowledged the event.
``retry``
    attempts failed and this call will not try again (its
    :class:`~payflow_lab.resilience.RetryPolicy` ran out of attempts, or the
    retry budget is empty). ``reason`` is the dead-letter reason should the
    caller give up for good.
``deferred``
    no attempt was made: the endpoint's breaker is open, or its rate limit
    has no token soon enough. ``retry_after`` says when it is worth asking
    again. A deferred event is not a failure and costs the endpoint nothing.
``rejected``
    the receiver refused the event in a way retrying cannot fix (a 4xx such
    as a bad signature), or its stored body is corrupt.

The breaker sees each attempt's outcome (errors and timeouts are failures);
the retry policy should retry :data:`~.transport.RETRY_ON` (failures and
timeouts): a rejection, a breaker refusal or a rate-limit refusal then ends
the call at once.

The same object runs in virtual time over :class:`~.transport.SimulatedTransport`
and in real time over :class:`~.transport.HttpTransport`: only the transport
and the clock differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import anyio

from payflow_lab.core.calibration import WEBHOOK_TIMEOUT_S
from payflow_lab.core.errors import (
    BreakerOpen,
    DeliveryError,
    DeliveryRejected,
    MalformedPayload,
    RateLimited,
    RetryExhausted,
    ValidationError,
)
from payflow_lab.core.validation import number
from payflow_lab.durable.events import OutboxEvent
from payflow_lab.durable.transport import Transport
from payflow_lab.resilience import KeyedCircuitBreaker, KeyedRateLimiter, RetryPolicy
from payflow_lab.resilience.dead_letters import BREAKER_OPEN_TOO_LONG, RATE_LIMITED_TOO_LONG, RETRIES_EXHAUSTED

__all__ = ["DeliveryResult", "Deliverer", "MALFORMED", "REJECTED", "Status"]

#: Dead-letter reason for an event the receiver refused outright (a 4xx other than 408/425/429).
REJECTED = "rejected_by_receiver"
#: Dead-letter reason for an event whose stored body cannot be read: no receiver could ever accept it.
MALFORMED = "malformed_payload"

Status = Literal["delivered", "retry", "deferred", "rejected"]


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """How one :meth:`Deliverer.deliver` call ended. See the module docstring for the statuses.

    ``attempts`` is the number of calls that reached the transport;
    ``reason`` a dead-letter reason token (for ``retry``, ``deferred`` and
    ``rejected``); ``retry_after`` seconds (for ``deferred``); ``error`` the
    last error's text.
    """

    status: Status
    attempts: int
    reason: str | None = None
    error: str | None = None
    retry_after: float | None = None


class Deliverer:
    """Delivers events through ``transport`` with the protections given (each optional).

    ``timeout``
        seconds one attempt may take; enforced by cancellation
        (:func:`anyio.fail_after`), so a hanging receiver costs at most this.
    ``breakers``
        a :class:`~payflow_lab.resilience.KeyedCircuitBreaker` keyed by the
        event's endpoint key (the merchant, or the service).
    ``limiter``, ``rate_limited_kinds``, ``max_rate_wait``
        a :class:`~payflow_lab.resilience.KeyedRateLimiter` for the kinds
        named (default: merchants' webhooks only); a wait longer than
        ``max_rate_wait`` seconds defers the event instead of holding a worker.
    ``retry``
        a :class:`~payflow_lab.resilience.RetryPolicy`; without one, each call
        makes one attempt.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        timeout: float = WEBHOOK_TIMEOUT_S,
        breakers: KeyedCircuitBreaker[str] | None = None,
        limiter: KeyedRateLimiter[str] | None = None,
        rate_limited_kinds: tuple[str, ...] = ("webhook",),
        max_rate_wait: float = 1.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not isinstance(transport, Transport):
            raise ValidationError("transport", f"must have an async send(event) method, got {transport!r}")
        number("timeout", timeout, above=0, maximum=3600, unit=" seconds")
        if breakers is not None and not isinstance(breakers, KeyedCircuitBreaker):
            raise ValidationError("breakers", f"must be a KeyedCircuitBreaker, got {breakers!r}")
        if limiter is not None and not isinstance(limiter, KeyedRateLimiter):
            raise ValidationError("limiter", f"must be a KeyedRateLimiter, got {limiter!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise ValidationError("retry", f"must be a RetryPolicy, got {retry!r}")
        number("max_rate_wait", max_rate_wait, minimum=0, unit=" seconds")
        self.transport = transport
        self.timeout = float(timeout)
        self.breakers = breakers
        self.limiter = limiter
        self.rate_limited_kinds = tuple(rate_limited_kinds)
        self.max_rate_wait = float(max_rate_wait)
        self.retry = retry
        #: Outcomes of every call so far, by status.
        self.results: dict[str, int] = {"delivered": 0, "retry": 0, "deferred": 0, "rejected": 0}

    async def attempt(self, event: OutboxEvent, tally: list[int] | None = None) -> None:
        """One attempt: rate limit, breaker, timeout, send. Raises what went wrong.

        ``tally[0]`` is incremented when the attempt reaches the transport
        (not when a breaker or a rate limit refused it).
        """
        key = event.key
        if self.limiter is not None and event.kind in self.rate_limited_kinds:
            await self.limiter.acquire(key, max_wait=self.max_rate_wait)
        if self.breakers is not None:
            with self.breakers[key].guard():
                await self._send(event, tally)
        else:
            await self._send(event, tally)

    async def _send(self, event: OutboxEvent, tally: list[int] | None) -> None:
        if tally is not None:
            tally[0] += 1
        with anyio.fail_after(self.timeout):
            await self.transport.send(event)

    async def deliver(self, event: OutboxEvent) -> DeliveryResult:
        """Deliver ``event`` (with retries, if configured) and say how it went. Raises only cancellation."""
        tally = [0]
        result = await self._deliver(event, tally)
        self.results[result.status] += 1
        return result

    async def _deliver(self, event: OutboxEvent, tally: list[int]) -> DeliveryResult:
        try:
            if self.retry is not None:
                await self.retry.run(self.attempt, event, tally)
            else:
                await self.attempt(event, tally)
        except BreakerOpen as exc:
            wait = exc.retry_after
            if wait is None:  # half-open with its probes out: ask again about when they will be back
                wait = self.timeout
            return DeliveryResult("deferred", tally[0], BREAKER_OPEN_TOO_LONG, str(exc), max(wait, 0.001))
        except RateLimited as exc:
            return DeliveryResult("deferred", tally[0], RATE_LIMITED_TOO_LONG, str(exc), max(exc.retry_after, 0.001))
        except RetryExhausted as exc:
            last = exc.last_error
            if isinstance(last, DeliveryRejected):
                return DeliveryResult("rejected", tally[0], REJECTED, _describe(last))
            return DeliveryResult("retry", tally[0], exc.reason, _describe(last))
        except DeliveryRejected as exc:
            return DeliveryResult("rejected", tally[0], REJECTED, _describe(exc))
        except MalformedPayload as exc:
            return DeliveryResult("rejected", tally[0], MALFORMED, _describe(exc))
        except DeliveryError as exc:
            return DeliveryResult("retry", tally[0], RETRIES_EXHAUSTED, _describe(exc))
        except TimeoutError as exc:
            return DeliveryResult("retry", tally[0], RETRIES_EXHAUSTED, _describe(exc))
        return DeliveryResult("delivered", tally[0])


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    return f"{type(exc).__name__}: {exc}"
