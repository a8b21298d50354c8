"""Retries and the retry budget against their stated semantics: jitter bounds, limits, budget exhaustion."""

from __future__ import annotations

import itertools
import random

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from payflow_lab.core.errors import RetryExhausted, ValidationError
from payflow_lab.core.vtime import BACKENDS, run_virtual
from payflow_lab.resilience import (
    RETRIES_EXHAUSTED,
    RETRY_BUDGET_EMPTY,
    DecorrelatedJitter,
    FullJitter,
    RetryBudget,
    RetryPolicy,
)


class EndpointDown(Exception):
    pass


class Endpoint:
    """Fails the first ``failures`` calls (all of them if None), then answers; remembers when it was called."""

    def __init__(self, failures: int | None = None) -> None:
        self.failures = failures
        self.calls: list[float] = []

    async def __call__(self) -> str:
        self.calls.append(anyio.current_time())
        if self.failures is None or len(self.calls) <= self.failures:
            raise EndpointDown(f"call {len(self.calls)} refused")
        return "delivered"


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"base_delay": 0}, "base_delay"),
        ({"base_delay": -1}, "base_delay"),
        ({"max_delay": 0.1, "base_delay": 1.0}, "max_delay"),
        ({"max_delay": float("inf")}, "max_delay"),
        ({"jitter": "equal"}, "jitter"),
        ({"rng": None}, "rng"),
        ({"rng": random}, "rng"),  # the global module is exactly what must not be used
        ({"jitter": "decorrelated", "rng": 42}, "rng"),
        ({"budget": 10}, "budget"),
        ({"retry_on": BaseException}, "retry_on"),  # would retry cancellation
        ({"retry_on": (OSError, KeyboardInterrupt)}, "retry_on"),
        ({"retry_on": "OSError"}, "retry_on"),
        ({"on_retry": "print"}, "on_retry"),
    ],
)
def test_bad_policies_are_refused_naming_the_setting(kwargs: dict[str, object], field: str) -> None:
    options: dict[str, object] = {"rng": random.Random(0), **kwargs}
    with pytest.raises(ValidationError) as caught:
        RetryPolicy(**options)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_no_rng_is_needed_without_jitter() -> None:
    assert RetryPolicy(jitter="none").jitter == "none"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ratio": -0.1}, "ratio"),
        ({"ratio": 1.5}, "ratio"),
        ({"max_tokens": 0.5}, "max_tokens"),
        ({"initial_tokens": 11.0}, "initial_tokens"),
        ({"initial_tokens": -1}, "initial_tokens"),
        ({"refill_per_s": -1}, "refill_per_s"),
        ({"clock": "now"}, "clock"),
    ],
)
def test_bad_budgets_are_refused_naming_the_setting(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RetryBudget(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


# ------------------------------------------------------------------ jitter bounds (property-based)
@settings(max_examples=200, deadline=None)
@given(
    base=st.floats(0.001, 10.0),
    cap_factor=st.floats(1.0, 1000.0),
    retry=st.integers(0, 3000),
    seed=st.integers(0, 2**32),
)
def test_full_jitter_stays_within_zero_and_the_capped_exponential(
    base: float, cap_factor: float, retry: int, seed: int
) -> None:
    cap = base * cap_factor
    wait = FullJitter(base, cap, random.Random(seed))
    ceiling = min(cap, base * 2.0 ** min(retry, 1000))
    assert wait.ceiling(retry) == ceiling
    for _ in range(5):
        assert 0.0 <= wait.delay(retry) <= ceiling


@settings(max_examples=200, deadline=None)
@given(
    base=st.floats(0.001, 10.0),
    cap_factor=st.floats(1.0, 1000.0),
    previous=st.none() | st.floats(0.0, 1e4),
    seed=st.integers(0, 2**32),
)
def test_decorrelated_jitter_stays_within_base_and_three_times_the_previous(
    base: float, cap_factor: float, previous: float | None, seed: int
) -> None:
    cap = base * cap_factor
    wait = DecorrelatedJitter(base, cap, random.Random(seed))
    prev = base if previous is None else max(base, previous)
    for _ in range(5):
        assert base <= wait.delay(previous) <= min(cap, 3.0 * prev)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("jitter", ["full", "decorrelated", "none"])
def test_sleeps_in_a_real_retry_loop_respect_the_bounds_and_are_virtual(backend: str, jitter: str) -> None:
    base, cap = 0.5, 8.0
    delays: list[tuple[int, float]] = []

    async def main() -> tuple[RetryExhausted, Endpoint]:
        endpoint = Endpoint()
        policy = RetryPolicy(
            max_attempts=10,
            base_delay=base,
            max_delay=cap,
            jitter=jitter,
            rng=random.Random(7),
            on_retry=lambda attempt, error, delay: delays.append((attempt, delay)),
        )
        with pytest.raises(RetryExhausted) as caught:
            await policy.run(endpoint)
        return caught.value, endpoint

    error, endpoint = run_virtual(main, backend=backend)
    assert [attempt for attempt, _ in delays] == list(range(1, 10))
    previous = base
    for attempt, delay in delays:
        n = attempt - 1
        if jitter == "full":
            assert 0.0 <= delay <= min(cap, base * 2**n)
        elif jitter == "decorrelated":
            assert base <= delay <= min(cap, 3 * previous)
        else:
            assert delay == min(cap, base * 2**n)
        previous = delay
    # the sleeps happened in virtual time: the gaps between calls are exactly the delays
    gaps = [b - a for a, b in itertools.pairwise(endpoint.calls)]
    assert gaps == pytest.approx([delay for _, delay in delays])
    assert error.attempts == 10 and error.reason == RETRIES_EXHAUSTED


def test_jitter_draws_only_from_the_injected_rng() -> None:
    random.seed(1234)
    global_state = random.getstate()

    def schedule(seed: int) -> list[float]:
        delays: list[float] = []

        async def main() -> None:
            policy = RetryPolicy(
                max_attempts=6, rng=random.Random(seed), on_retry=lambda attempt, error, delay: delays.append(delay)
            )
            with pytest.raises(RetryExhausted):
                await policy.run(Endpoint())

        run_virtual(main)
        return delays

    assert schedule(5) == schedule(5)
    assert schedule(5) != schedule(6)
    assert random.getstate() == global_state


# ------------------------------------------------------------------ attempts and what is retried
@pytest.mark.parametrize("backend", BACKENDS)
def test_gives_up_after_max_attempts_with_the_last_error(backend: str) -> None:
    async def main() -> tuple[RetryExhausted, RetryPolicy, Endpoint]:
        endpoint = Endpoint()
        policy = RetryPolicy(max_attempts=4, rng=random.Random(0))
        with pytest.raises(RetryExhausted) as caught:
            await policy.run(endpoint)
        return caught.value, policy, endpoint

    error, policy, endpoint = run_virtual(main, backend=backend)
    assert len(endpoint.calls) == 4 == error.attempts
    assert isinstance(error.last_error, EndpointDown) and error.__cause__ is error.last_error
    assert str(error.last_error) == "call 4 refused"
    assert (policy.calls, policy.attempts, policy.retries) == (1, 4, 3)
    assert policy.exhausted == {RETRIES_EXHAUSTED: 1, RETRY_BUDGET_EMPTY: 0}


@pytest.mark.parametrize("backend", BACKENDS)
def test_returns_the_result_once_an_attempt_succeeds(backend: str) -> None:
    async def main() -> tuple[str, int]:
        endpoint = Endpoint(failures=2)
        result = await RetryPolicy(max_attempts=3, rng=random.Random(0)).run(endpoint)
        return result, len(endpoint.calls)

    assert run_virtual(main, backend=backend) == ("delivered", 3)


def test_exceptions_outside_retry_on_propagate_at_once() -> None:
    async def main() -> int:
        endpoint = Endpoint()
        policy = RetryPolicy(max_attempts=5, rng=random.Random(0), retry_on=(TimeoutError, ConnectionError))
        with pytest.raises(EndpointDown):
            await policy.run(endpoint)
        return len(endpoint.calls)

    assert run_virtual(main) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_cancellation_is_never_retried(backend: str) -> None:
    async def main() -> tuple[int, int]:
        attempts = 0

        async def hang() -> None:
            nonlocal attempts
            attempts += 1
            await anyio.sleep_forever()

        policy = RetryPolicy(max_attempts=5, rng=random.Random(0))
        with anyio.move_on_after(3):
            await policy.run(hang)
        return attempts, policy.retries

    assert run_virtual(main, backend=backend) == (1, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_timeout_inside_the_call_is_retried(backend: str) -> None:
    async def main() -> tuple[int, float]:
        attempts = 0

        async def slow_then_fast() -> str:
            nonlocal attempts
            attempts += 1
            with anyio.fail_after(5):
                await anyio.sleep(60 if attempts < 3 else 1)
            return "ok"

        await RetryPolicy(max_attempts=3, jitter="none", base_delay=1.0).run(slow_then_fast)
        return attempts, anyio.current_time()

    assert run_virtual(main, backend=backend) == (3, pytest.approx(5 + 1 + 5 + 2 + 1))


# ------------------------------------------------------------------ the retry budget
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_dead_endpoint_gets_no_retry_storm_with_a_budget(backend: str) -> None:
    async def main(budget: RetryBudget | None) -> tuple[int, dict[str, int]]:
        endpoint = Endpoint()
        policy = RetryPolicy(max_attempts=5, rng=random.Random(3), budget=budget)

        async def deliver() -> None:
            with pytest.raises(RetryExhausted):
                await policy.run(endpoint)

        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(deliver)
        return len(endpoint.calls), policy.exhausted

    calls, _ = run_virtual(main, None, backend=backend)
    assert calls == 200 * 5  # without a budget: five times the traffic
    budget = RetryBudget(ratio=0.1, max_tokens=10)
    calls, exhausted = run_virtual(main, budget, backend=backend)
    assert calls == 200 + 10  # with one: the first attempts and 10 retries
    assert exhausted == {RETRIES_EXHAUSTED: 0, RETRY_BUDGET_EMPTY: 200}
    assert budget.tokens == 0 and budget.withdrawals == 10 and budget.refusals == 200


@settings(max_examples=40, deadline=None)
@given(calls=st.integers(1, 60), max_attempts=st.integers(1, 6), tokens=st.integers(1, 30))
def test_total_attempts_on_a_dead_endpoint_are_bounded_by_the_budget(
    calls: int, max_attempts: int, tokens: int
) -> None:
    async def main() -> int:
        endpoint = Endpoint()
        policy = RetryPolicy(max_attempts=max_attempts, rng=random.Random(0), budget=RetryBudget(max_tokens=tokens))
        for _ in range(calls):
            with pytest.raises(RetryExhausted):
                await policy.run(endpoint)
        return len(endpoint.calls)

    assert run_virtual(main) == calls + min(tokens, calls * (max_attempts - 1))


@settings(max_examples=40, deadline=None)
@given(outcomes=st.lists(st.booleans(), min_size=1, max_size=300), ratio=st.sampled_from([0.05, 0.1, 0.2, 0.5]))
def test_retries_never_exceed_initial_tokens_plus_ratio_times_successes(outcomes: list[bool], ratio: float) -> None:
    """Whatever the mix of failures, retries <= initial tokens + ratio * successes (Finagle's promise)."""
    budget = RetryBudget(ratio=ratio, max_tokens=5)
    successes = retries = 0
    for ok in outcomes:
        if ok:
            budget.deposit()
            successes += 1
        elif budget.try_withdraw():
            retries += 1
    assert retries <= 5 + ratio * successes + 1e-9
    assert 0.0 <= budget.tokens <= 5.0


def test_ten_successes_at_ratio_one_tenth_earn_one_retry() -> None:
    budget = RetryBudget(ratio=0.1, max_tokens=10, initial_tokens=0)
    assert not budget.try_withdraw()
    for _ in range(10):
        budget.deposit()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()


@pytest.mark.parametrize("backend", BACKENDS)
def test_refill_per_second_trickles_in_on_the_clock(backend: str) -> None:
    async def main() -> list[bool]:
        budget = RetryBudget(ratio=0.0, max_tokens=3, initial_tokens=0, refill_per_s=0.5)
        results = [budget.try_withdraw()]
        await anyio.sleep(1.9)
        results.append(budget.try_withdraw())
        await anyio.sleep(0.1)
        results.append(budget.try_withdraw())
        await anyio.sleep(100)
        results.extend(budget.try_withdraw() for _ in range(4))  # capped at max_tokens
        return results

    assert run_virtual(main, backend=backend) == [False, False, True, True, True, True, False]


# ------------------------------------------------------------------ tenacity's order
@pytest.mark.parametrize("jitter", ["full", "decorrelated", "none"])
@pytest.mark.parametrize("outcomes", [(False,) * 6, (False, False, True), (False, True), (True,)])
def test_the_written_out_loop_asks_tenacitys_strategies_as_asyncretrying_does(
    jitter: str, outcomes: tuple[bool, ...]
) -> None:
    """Same sleeps, attempts, budget and verdict as tenacity's own AsyncRetrying with the same strategies."""
    from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

    from payflow_lab.resilience.retry import _StopRule

    def endpoint(log: list[float]):  # fails or answers as ``outcomes`` says, then fails for ever
        async def call() -> str:
            log.append(anyio.current_time())
            if len(log) <= len(outcomes) and outcomes[len(log) - 1]:
                return "delivered"
            raise EndpointDown(f"call {len(log)}")

        return call

    def policy() -> RetryPolicy:
        budget = RetryBudget(ratio=0.5, initial_tokens=3, max_tokens=5)
        return RetryPolicy(
            max_attempts=3,
            base_delay=0.5,
            max_delay=4.0,
            jitter=jitter,
            rng=random.Random(11),
            budget=budget,
            retry_on=EndpointDown,
        )

    async def ours() -> tuple[object, ...]:
        mine, seen = policy(), []
        for _ in range(2):  # twice on one policy: the second call's waits show every draw the first one made
            log: list[float] = []
            try:
                verdict: object = await mine.run(endpoint(log))
            except RetryExhausted as exc:
                verdict = (exc.reason, exc.attempts)
            seen += [verdict, log]
        assert mine.budget is not None
        return (*seen, mine.budget.tokens)

    async def tenacitys() -> tuple[object, ...]:
        reference, seen = policy(), []
        stop = _StopRule(reference)

        def give_up(state: RetryCallState) -> object:
            return (stop.reason, state.attempt_number)

        for _ in range(2):
            log: list[float] = []
            call = endpoint(log)

            async def paid_for(call=call) -> str:  # RetryPolicy deposits each success in the budget; so does this
                result = await call()
                assert reference.budget is not None
                reference.budget.deposit()
                return result

            retrying = AsyncRetrying(
                sleep=anyio.sleep,
                stop=stop,
                wait=reference.wait,
                retry=retry_if_exception_type(EndpointDown),
                retry_error_callback=give_up,
            )
            seen += [await retrying(paid_for), log]
        assert reference.budget is not None
        return (*seen, reference.budget.tokens)

    assert run_virtual(ours) == run_virtual(tenacitys)
