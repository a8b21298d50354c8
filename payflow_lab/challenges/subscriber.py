"""Lesson 04's challenge: a subscriber that lets go.

The learner writes the handler a hook runs for each payment. The endpoint it
calls answers, fails, or hangs for ever; the handler must give up on a call
after two seconds *by cancellation* and let failures be seen by the bus.
The judge subscribes it to a real :class:`~payflow_lab.hooks.HookBus` with no
timeout of its own (so the handler's timeout is the only one), emits twenty
payments a second for a simulated minute, and reads the bus's own books.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from payflow_lab.challenges.base import Challenge, Verdict
from payflow_lab.core.errors import EndpointError, Rejected
from payflow_lab.core.recorder import hhmmss
from payflow_lab.core.vtime import run_virtual
from payflow_lab.hooks import HookBus, Outcome

__all__ = ["CHALLENGE"]

HANDLER_TIMEOUT_S = 2.0
RATE_PER_S = 20
DURATION_S = 60.0
WORKERS = 20
QUEUE = 200
START = 14 * 3600.0
#: The endpoint, per call: answers (most calls), fails at once, or hangs for ever.
MIXES = {"mostly fine": (0.85, 0.10, 0.05), "a bad minute": (0.50, 0.25, 0.25)}
SEEDS = (1, 2)

STARTER = '''\
HANDLER_TIMEOUT_S = 2.0


def make_handler(call_endpoint):
    """The handler the hook bus runs for each payment.

    call_endpoint(payment) is a coroutine function: it answers, raises EndpointError, or never returns.
    Give up on a call after HANDLER_TIMEOUT_S seconds, and let a failure (or a timeout) be seen by the bus.
    """

    async def handler(payment):
        await call_endpoint(payment)        # TODO: no longer than HANDLER_TIMEOUT_S
    return handler
'''


def make_handler(call_endpoint: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    """The reference: anyio's cancel scope does the timing, and the exception goes to the bus."""

    async def handler(payment: Any) -> None:
        with anyio.fail_after(HANDLER_TIMEOUT_S):  # cancels the call: works even if it never returns
            await call_endpoint(payment)

    return handler


def make_cooperative_handler(call_endpoint: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    """Wrong: checks the clock *after* the call returns, so a call that never returns is never stopped."""

    async def handler(payment: Any) -> None:
        started = anyio.current_time()
        await call_endpoint(payment)
        if anyio.current_time() - started > HANDLER_TIMEOUT_S:
            raise TimeoutError(f"took longer than {HANDLER_TIMEOUT_S} s")

    return handler


def make_swallowing_handler(call_endpoint: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
    """Wrong: times out correctly, but catches every error, so the bus books failures as completed."""

    async def handler(payment: Any) -> None:
        try:
            with anyio.fail_after(HANDLER_TIMEOUT_S):
                await call_endpoint(payment)
        except Exception:
            pass  # "handled"

    return handler


def _drive(factory: Callable[..., Any], mix: str, seed: int, backend: str) -> dict[str, Any]:
    rng = random.Random(seed)
    fine, fails, hangs = MIXES[mix]
    fate: dict[int, str] = {}
    outcomes: list[tuple[int, str, float]] = []
    rejected: list[tuple[float, int]] = []

    async def call_endpoint(payment: int) -> None:
        kind = fate[payment]
        if kind == "fails":
            await anyio.sleep(0.05)
            raise EndpointError(f"payment {payment}: 503 from the merchant")
        if kind == "hangs":
            await anyio.sleep_forever()
        await anyio.sleep(rng.uniform(0.05, 0.4))

    def settled(outcome: Outcome) -> None:
        outcomes.append((outcome.payload, outcome.status, outcome.latency or 0.0))

    handler = factory(call_endpoint)
    if not callable(handler):
        raise TypeError(f"make_handler returned {type(handler).__name__}, not a handler (a coroutine function)")

    async def main() -> None:
        t0 = anyio.current_time()
        bus = HookBus(timeout=None, shutdown_deadline=30.0, on_outcome=settled)
        bus.hook("payment.authorized", handler, name="merchant", workers=WORKERS, queue_size=QUEUE)
        async with bus:
            for n in range(int(RATE_PER_S * DURATION_S)):
                draw = rng.random()
                fate[n] = "fine" if draw < fine else "fails" if draw < fine + fails else "hangs"
                try:
                    bus.emit("payment.authorized", n)
                except Rejected:
                    rejected.append((anyio.current_time() - t0, n))
                await anyio.sleep(1 / RATE_PER_S)

    run_virtual(main, backend=backend)
    return {"mix": mix, "seed": seed, "fate": fate, "outcomes": outcomes, "rejected": rejected}


def _where(run: dict[str, Any], payment: int) -> dict[str, Any]:
    return {
        "endpoint": run["mix"],
        "seed": run["seed"],
        "story time": hhmmss(START + payment / RATE_PER_S),
        "payment": payment,
    }


def _judge(factory: Any, backend: str) -> list[Verdict]:
    runs = [_drive(factory, mix, seed, backend) for mix in MIXES for seed in SEEDS]
    # 1. lets go: no admitted delivery may run longer than the timeout (small slack for the scheduler).
    worst, where = 0.0, None
    for run in runs:
        for payment, status, latency in run["outcomes"]:
            if status in ("cancelled", "never_started"):  # still running or queued when the bus shut down
                latency = DURATION_S
            if latency > worst:
                worst, where = latency, (run, payment)
    lets_go = Verdict(
        "lets go of a hanging call",
        worst <= HANDLER_TIMEOUT_S + 0.01,
        f"longest: {worst:.2f} s",
        f"at most {HANDLER_TIMEOUT_S:g} s",
        "every call ended, answered or abandoned, within its timeout"
        if worst <= HANDLER_TIMEOUT_S + 0.01
        else "a call ran past its timeout, holding a worker",
        None if worst <= HANDLER_TIMEOUT_S + 0.01 or where is None else _where(*where),
        None
        if worst <= HANDLER_TIMEOUT_S + 0.01
        else "a timeout you check after the call returns never fires for a call that does not return; "
        "let a cancel scope interrupt the await",
    )
    # 2. failures seen: every endpoint failure or hang must end as failed/timed out, not completed.
    hidden, where = 0, None
    for run in runs:
        for payment, status, _ in run["outcomes"]:
            if run["fate"][payment] != "fine" and status == "completed":
                hidden += 1
                where = where or (run, payment)
    seen = Verdict(
        "failures are seen",
        hidden == 0,
        f"{hidden:,} failures booked as completed",
        "0",
        "the bus knows which calls failed: its counts, metrics and alerts are true"
        if not hidden
        else "calls that failed or hung were reported to the bus as completed",
        None if not hidden or where is None else _where(*where),
        None if not hidden else "catching an exception is not handling it: let it (or the timeout) reach the bus",
    )
    # 3. keeps up: the bounded queue never refuses a payment's side effect.
    refused = sum(len(run["rejected"]) for run in runs)
    first = next(((run, n) for run in runs for _, n in run["rejected"]), None)
    keeps_up = Verdict(
        "keeps up",
        refused == 0,
        f"{refused:,} emissions refused (queue full)",
        "0",
        f"{WORKERS} workers keep the queue short"
        if not refused
        else "workers stuck in hanging calls let the queue fill, and the bus refused new side effects",
        None if first is None else _where(*first),
        None if not refused else "a worker is free again only when its call ends: make every call end",
    )
    return [lets_go, seen, keeps_up]


def _shape(candidate: Any) -> str | None:
    if isinstance(candidate, type) or not callable(candidate):
        return "must be a function make_handler(call_endpoint) that returns the handler"
    return None


CHALLENGE = Challenge(
    name="subscriber-timeout",
    lesson="04",
    title="A subscriber that lets go",
    statement=(
        "Write `make_handler(call_endpoint)`: the handler a hook runs for each payment. The endpoint answers, "
        "fails, or hangs for ever. Give up on a call after two seconds, by cancellation, and let failures and "
        "timeouts reach the bus. The checker subscribes your handler to a hook bus that has no timeout of its "
        "own, emits twenty payments a second for a simulated minute, and reads the bus's books."
    ),
    entry="make_handler",
    starter=STARTER,
    reference=make_handler,
    wrong={
        "cooperative-timeout": (make_cooperative_handler, "lets go of a hanging call"),
        "swallows-errors": (make_swallowing_handler, "failures are seen"),
    },
    shape=_shape,
    run=_judge,
    invariants=("lets go of a hanging call", "failures are seen", "keeps up"),
    solution_header="from collections.abc import Awaitable, Callable\nfrom typing import Any\n\nimport anyio\n\n"
    f"HANDLER_TIMEOUT_S = {HANDLER_TIMEOUT_S}\n\n\n",
    solution_parts=(make_handler,),
)
