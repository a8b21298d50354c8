"""A retry budget: retries are paid for by successes, so a dead endpoint cannot start a retry storm.

Per-call limits ("at most 4 attempts") do not bound the load a *service*
sends: when an endpoint dies, every call in flight makes all its attempts, and
the endpoint sees four times its normal traffic just as it tries to come back.
A budget bounds retries across all calls instead, in the manner of Finagle's
``RetryBudget`` and gRPC's retry throttling:

* each success **deposits** ``ratio`` of a token (0.1: one retry earned per
  ten successes), up to ``max_tokens``;
* each retry **withdraws** one whole token; with less than one token left
  there is no retry: the call fails (and a webhook goes to the dead letters);
* optionally, ``refill_per_s`` tokens a second trickle in regardless, so a
  caller with little traffic can still retry now and then.

So while an endpoint is dead, the retries it receives are at most the
``initial_tokens`` plus the trickle, however many calls fail; and in steady
state retries stay below ``ratio`` of successful traffic. The first attempt of
a call is never charged: the budget limits *extra* load only.

Written by hand: tenacity has per-call stop conditions but no shared budget.
"""

from __future__ import annotations

from payflow_lab.core.validation import Clock, default_clock, number

__all__ = ["RetryBudget"]


class RetryBudget:
    """A token bucket that successes fill (by ``ratio``) and retries empty (by 1). Starts with ``initial_tokens``.

    ``initial_tokens`` defaults to ``max_tokens``. ``clock`` is read only when
    ``refill_per_s`` is positive.
    """

    def __init__(
        self,
        *,
        ratio: float = 0.1,
        max_tokens: float = 10.0,
        initial_tokens: float | None = None,
        refill_per_s: float = 0.0,
        clock: Clock | None = None,
    ) -> None:
        self.ratio = number("ratio", ratio, minimum=0.0, maximum=1.0)
        self.max_tokens = number("max_tokens", max_tokens, minimum=1.0)
        start = (
            self.max_tokens
            if initial_tokens is None
            else number("initial_tokens", initial_tokens, minimum=0.0, maximum=self.max_tokens)
        )
        self.refill_per_s = number("refill_per_s", refill_per_s, minimum=0.0)
        self._clock = default_clock(clock)
        self._tokens = start
        self._updated: float | None = None
        #: Successes deposited, retries allowed, and retries refused for want of tokens.
        self.deposits = 0
        self.withdrawals = 0
        self.refusals = 0

    def _balance(self) -> tuple[float, float | None]:
        if self.refill_per_s == 0.0:
            return self._tokens, None
        now = self._clock()
        if self._updated is None:
            return self._tokens, now
        return min(self.max_tokens, self._tokens + (now - self._updated) * self.refill_per_s), now

    @property
    def tokens(self) -> float:
        """Tokens in the budget now (a pure read)."""
        return self._balance()[0]

    def deposit(self) -> None:
        """A call succeeded: earn ``ratio`` of a retry."""
        tokens, self._updated = self._balance()
        self._tokens = min(self.max_tokens, tokens + self.ratio)
        self.deposits += 1

    def try_withdraw(self) -> bool:
        """A call wants to retry: spend a token and return ``True``, or return ``False`` if less than one is left."""
        tokens, self._updated = self._balance()
        self._tokens = tokens
        # A tolerance for the float dust that ten deposits of 0.1 leave behind.
        if tokens >= 1.0 - 1e-9:
            self._tokens = max(0.0, tokens - 1.0)
            self.withdrawals += 1
            return True
        self.refusals += 1
        return False
