"""A retry storm in a bottle: Marc Brooker's "Exponential Backoff and Jitter" experiment, in virtual time.

``clients`` callers all make a call at the same moment, to an endpoint that
is down for ``outage_s`` seconds and afterwards can serve only
``capacity_per_s`` calls in each second (the rest are answered 503, "overloaded").
Every caller retries with the real :class:`~payflow_lab.resilience.retry.RetryPolicy`
under one of three policies:

``no_jitter``
    capped exponential backoff, no randomness. Callers that failed together
    retry together: the endpoint sees the whole crowd in one instant, serves
    its capacity, fails the rest, and the survivors come back together again,
    later each time. Spikes, long completion, many wasted calls.
``full_jitter``
    the same backoff with full jitter: retries spread over each window, so
    the endpoint sees a load it can serve, and the crowd drains sooner with
    fewer calls.
``full_jitter_budget``
    full jitter plus one :class:`~payflow_lab.resilience.budget.RetryBudget`
    shared by all callers (they are one service's deliveries to one
    endpoint). While the endpoint is down, retries drain the budget and then
    stop: the endpoint never receives more than ``clients + budget_tokens``
    (plus what successes earn back) calls, however long the outage. The
    price: callers that find the budget empty give up, and their deliveries
    go to the dead letters, to be replayed at a rate the endpoint can take.

:func:`simulate_storm` runs one policy and returns the load the endpoint saw
in every second; :func:`compare_storm` runs all three with the same seed.
Everything is deterministic for a given seed and backend.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import anyio

from payflow_lab.core.errors import RetryExhausted, ValidationError
from payflow_lab.core.validation import integer, number
from payflow_lab.core.vtime import BACKENDS, in_virtual_time
from payflow_lab.resilience.budget import RetryBudget
from payflow_lab.resilience.dead_letters import DeadLetter, InMemoryDeadLetters
from payflow_lab.resilience.ratelimit import TokenBucket
from payflow_lab.resilience.retry import RetryPolicy

__all__ = ["POLICIES", "StormResult", "compare_storm", "simulate_storm"]

#: The policies, in the order a lesson shows them.
POLICIES = ("no_jitter", "full_jitter", "full_jitter_budget")

#: How long the endpoint takes to answer (or refuse) a call.
CALL_LATENCY_S = 0.05


class _Overloaded(Exception):
    """The endpoint is down, or already served its capacity this second."""


@dataclass(frozen=True, slots=True)
class StormResult:
    """What the endpoint saw under one policy.

    ``load_per_s[i]`` is the number of calls that reached the endpoint in
    second ``i`` and ``served_per_s[i]`` how many of them it served;
    ``peak_load_after_recovery`` is the busiest second once the endpoint is
    back (the spikes that no jitter causes). ``delivered`` callers succeeded by retrying; ``gave_up`` left a dead
    letter, of which ``replayed`` were delivered later by the replayer and
    ``undelivered`` were not (``replay_calls`` counts the replayer's calls,
    included in ``total_calls``); ``completion_s`` is when the last delivery (or
    give-up, if nothing was replayed) happened.
    """

    policy: str
    clients: int
    outage_s: float
    capacity_per_s: int
    load_per_s: list[int]
    served_per_s: list[int]
    total_calls: int
    delivered: int
    gave_up: int
    replayed: int
    undelivered: int
    replay_calls: int
    completion_s: float
    peak_load: int
    peak_load_after_recovery: int

    @property
    def calls_per_client(self) -> float:
        return self.total_calls / self.clients

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(slots=True)
class _Tally:
    running: int
    delivered: int = 0
    replayed: int = 0
    replay_calls: int = 0
    last: float = 0.0


class _Endpoint:
    def __init__(self, outage_s: float, capacity_per_s: int) -> None:
        self.outage_s = outage_s
        self.capacity_per_s = capacity_per_s
        self.load: list[int] = []
        self.served: list[int] = []

    def _grow(self, second: int) -> None:
        while len(self.load) <= second:
            self.load.append(0)
            self.served.append(0)

    async def call(self) -> None:
        now = anyio.current_time()
        second = int(now)
        self._grow(second)
        self.load[second] += 1
        await anyio.sleep(CALL_LATENCY_S)
        if now < self.outage_s:
            raise _Overloaded("connection refused: endpoint down")
        if self.served[second] >= self.capacity_per_s:
            raise _Overloaded("HTTP 503: over capacity this second")
        self.served[second] += 1


def simulate_storm(
    policy: str = "full_jitter",
    *,
    clients: int = 100,
    outage_s: float = 10.0,
    capacity_per_s: int = 20,
    base_delay: float = 1.0,
    max_delay: float = 60.0,
    max_attempts: int = 12,
    budget_tokens: float = 20.0,
    budget_ratio: float = 0.1,
    replay_every_s: float | None = 15.0,
    seed: int = 0,
    backend: str = "asyncio",
) -> StormResult:
    """Run ``clients`` callers against the recovering endpoint under ``policy``; see the module docstring.

    A caller that gives up leaves a dead letter; every ``replay_every_s``
    seconds the dead letters are replayed (once each, no retries) through a
    token bucket at the endpoint's capacity, the oldest first as a probe
    (a failure ends that round), until none are left
    (``replay_every_s=None``: no replay, give-ups stay undelivered). Must be
    called where no event loop is running: it runs its own, in virtual time
    (milliseconds of real time).
    """
    if policy not in POLICIES:
        raise ValidationError("policy", f"must be one of {', '.join(POLICIES)}, got {policy!r}")
    integer("clients", clients, minimum=1, maximum=10_000)
    number("outage_s", outage_s, minimum=0.0, maximum=86_400.0)
    integer("capacity_per_s", capacity_per_s, minimum=1, maximum=10_000)
    number("budget_tokens", budget_tokens, minimum=1.0)
    number("budget_ratio", budget_ratio, minimum=0.0, maximum=1.0)
    if replay_every_s is not None:
        number("replay_every_s", replay_every_s, above=0.0)
    integer("seed", seed, minimum=0)
    if backend not in BACKENDS:
        raise ValidationError("backend", f"must be one of {', '.join(BACKENDS)}, got {backend!r}")
    budget = RetryBudget(ratio=budget_ratio, max_tokens=budget_tokens) if policy == "full_jitter_budget" else None
    retry = RetryPolicy(
        max_attempts=max_attempts,
        base_delay=base_delay,
        max_delay=max_delay,
        jitter="none" if policy == "no_jitter" else "full",
        rng=random.Random(seed),
        budget=budget,
        retry_on=_Overloaded,
    )
    endpoint = _Endpoint(float(outage_s), capacity_per_s)
    letters = InMemoryDeadLetters()
    tally = _Tally(running=clients)

    async def client(index: int) -> None:
        try:
            await retry.run(endpoint.call)
        except RetryExhausted as exc:
            letters.add(f"client-{index}", None, exc.reason, attempts=exc.attempts)
        else:
            tally.delivered += 1
        tally.running -= 1
        tally.last = max(tally.last, anyio.current_time())

    async def replayer(every: float) -> None:
        bucket = TokenBucket(capacity_per_s, 1)

        async def deliver(letter: DeadLetter) -> None:
            await bucket.acquire()
            tally.replay_calls += 1
            await endpoint.call()

        while tally.running or len(letters):
            await anyio.sleep(every)
            report = await letters.replay(deliver, stop_after_failures=1)  # the oldest letter probes
            tally.replayed += len(report.replayed)
            if report.replayed:
                tally.last = max(tally.last, anyio.current_time())

    async def storm() -> None:
        async with anyio.create_task_group() as tg:
            for index in range(clients):
                tg.start_soon(client, index)
            if replay_every_s is not None:
                tg.start_soon(replayer, float(replay_every_s))

    in_virtual_time(storm, backend=backend, seed=seed)  # a notebook cell has a loop running already
    seconds = max(len(endpoint.load), math.ceil(tally.last))
    load = endpoint.load + [0] * (seconds - len(endpoint.load))
    served = endpoint.served + [0] * (seconds - len(endpoint.served))
    return StormResult(
        policy=policy,
        clients=clients,
        outage_s=float(outage_s),
        capacity_per_s=capacity_per_s,
        load_per_s=load,
        served_per_s=served,
        total_calls=sum(load),
        delivered=tally.delivered,
        gave_up=letters.added,
        replayed=tally.replayed,
        undelivered=len(letters),
        replay_calls=tally.replay_calls,
        completion_s=round(tally.last, 6),
        peak_load=max(load, default=0),
        peak_load_after_recovery=max(load[math.ceil(outage_s) :], default=0),
    )


def compare_storm(**options: object) -> dict[str, StormResult]:
    """:func:`simulate_storm` under every policy, same options and seed; keyed by policy."""
    if "policy" in options:
        raise ValidationError("policy", "compare_storm runs every policy; do not pass one")
    return {policy: simulate_storm(policy, **options) for policy in POLICIES}  # type: ignore[arg-type]
