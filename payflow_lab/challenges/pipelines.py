"""The challenges of lessons 01 to 03: change a phase's code and live through Black Friday with it.

Each candidate is a subclass of the lesson's pipeline (the class the lesson
prints), run by the real runner in virtual time, on Black Friday until 14:40
at a twentieth of PayFlow, for two seeds. The verdicts read the run's own
summary and a few measurements the judge adds around the candidate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

from payflow_lab.challenges.base import Challenge, Verdict
from payflow_lab.core.calibration import WEBHOOK_TIMEOUT_S
from payflow_lab.core.domain import Payment
from payflow_lab.core.errors import EndpointError
from payflow_lab.core.world import SIDE_EFFECT_KINDS
from payflow_lab.phases.base import Pipeline
from payflow_lab.phases.channels import ChannelPipeline
from payflow_lab.phases.fire_and_forget import FireAndForgetPipeline
from payflow_lab.phases.sync import SynchronousPipeline
from payflow_lab.runner import RunConfig, RunResult, run_config

__all__ = ["CHANNELS", "CRITICAL_PATH", "FIRE_AND_FORGET"]

SCALE = 0.05
SEEDS = (7, 3)
BLACK_FRIDAY_S = 50 * 60


def _black_friday(candidate: type[Pipeline], seed: int, backend: str) -> RunResult:
    config = RunConfig(
        scenario="blackfriday",
        phase=candidate.number,
        seed=seed,
        scale=SCALE,
        memory="off",
        backend=backend,
        duration=BLACK_FRIDAY_S,
    )
    return run_config(config, pipeline_cls=candidate)


def _subclass_of(base: type[Pipeline], entry: str) -> Callable[[Any], str | None]:
    def shape(candidate: Any) -> str | None:
        if not isinstance(candidate, type) or not issubclass(candidate, base):
            return f"must be a class {entry}({base.__name__}), as the starter defines it"
        return None

    return shape


def _accounted(results: list[tuple[int, RunResult]]) -> Verdict:
    """Every authorized payment's five side effects were started and ended (or were counted as lost)."""
    for seed, result in results:
        s = result.summary
        authorized = s["payments"]["authorized"] + s["payments"]["stuck_authorized"]
        for kind in SIDE_EFFECT_KINDS:
            counts = s["side_effects"]["by_kind"].get(kind)
            started = counts["started"] if counts else 0
            if started < authorized or (counts and counts["pending"]):
                return Verdict(
                    "every side effect accounted for",
                    False,
                    f"{kind}: {started:,} started for {authorized:,} payments authorized",
                    "one each",
                    "a side effect was skipped, or left without an outcome: nobody can tell what happened to it",
                    {"seed": seed, "kind": kind},
                    "every payment owes five side effects: start each one, and give each an outcome "
                    "(delivered, failed, or dropped with a reason)",
                )
    return Verdict(
        "every side effect accounted for",
        True,
        "five per payment, each with an outcome",
        "one each",
        "every side effect was started and ended, or was counted as dropped with its reason",
    )


# ------------------------------------------------------------------ lesson 01
CRITICAL_PATH_STARTER = '''\
from payflow_lab import SynchronousPipeline


class MyPipeline(SynchronousPipeline):
    """Phase 1, changed: the same side effects, still on the critical path, but ..."""

    async def process_payment(self, payment):
        world = self.world
        async with world.pool.connection():              # TODO: held only as long as it must be
            await world.db_query(payment)                # INSERT the payment as pending
            await world.authorize(payment)               # the only step the customer needs
            await self.send_merchant_webhook(payment)    # up to 3 tries x 5 s
            await self.step("analytics", world.write_analytics, payment)  # borrows a 2nd connection
            await self.step("audit", world.write_audit_log, payment)      # borrows a 2nd connection
            await self.step("risk", world.update_risk_score, payment)
            await self.step("fraud", world.notify_fraud, payment)
            await world.db_query(payment)                # UPDATE status, COMMIT
'''


class ReleasesTheConnection(SynchronousPipeline):
    """The reference: the connection covers the database work only; the side effects run after it is back."""

    async def process_payment(self, payment: Payment) -> None:
        world = self.world
        async with world.pool.connection():
            await world.db_query(payment)  # INSERT the payment as pending
            await world.authorize(payment)
            await world.db_query(payment)  # UPDATE status, COMMIT
        await self.send_merchant_webhook(payment)  # no connection held while the merchant is slow
        await self.step("analytics", world.write_analytics, payment)
        await self.step("audit", world.write_audit_log, payment)
        await self.step("risk", world.update_risk_score, payment)
        await self.step("fraud", world.notify_fraud, payment)


class SkipsTheWebhook(SynchronousPipeline):
    """Wrong: frees the pool by not calling the merchant at all (a webhook that never goes out is lost)."""

    async def process_payment(self, payment: Payment) -> None:
        world = self.world
        async with world.pool.connection():
            await world.db_query(payment)
            await world.authorize(payment)
            await world.db_query(payment)
        await self.step("analytics", world.write_analytics, payment)
        await self.step("audit", world.write_audit_log, payment)
        await self.step("risk", world.update_risk_score, payment)
        await self.step("fraud", world.notify_fraud, payment)


class CommitsLate(SynchronousPipeline):
    """Wrong: releases the connection only after the webhook (the slow call), so the pool still drains."""

    async def process_payment(self, payment: Payment) -> None:
        world = self.world
        async with world.pool.connection():
            await world.db_query(payment)
            await world.authorize(payment)
            await self.send_merchant_webhook(payment)
            await world.db_query(payment)
        await self.step("analytics", world.write_analytics, payment)
        await self.step("audit", world.write_audit_log, payment)
        await self.step("risk", world.update_risk_score, payment)
        await self.step("fraud", world.notify_fraud, payment)


def _judge_critical_path(candidate: Any, backend: str) -> list[Verdict]:
    results = [(seed, _black_friday(candidate, seed, backend)) for seed in SEEDS]
    stuck = [(seed, r.summary) for seed, r in results if r.summary["payments"]["stuck"]]
    exhausted = [(seed, r.summary) for seed, r in results if r.summary["moments"]["pool_exhausted_at"]]
    peak = max(r.summary["db_pool"]["peak_in_use"] for _, r in results)
    size = results[0][1].summary["db_pool_size"]
    return [
        Verdict(
            "no payment stuck",
            not stuck,
            f"{sum(s['payments']['stuck'] for _, s in stuck):,} stuck" if stuck else "0 stuck",
            "0",
            "every payment of Black Friday got its answer"
            if not stuck
            else "payments were left waiting for ever: the pool froze",
            {
                "seed": stuck[0][0],
                "frozen from": stuck[0][1]["moments"]["throughput_zero_at"],
                "stuck": stuck[0][1]["payments"]["stuck"],
            }
            if stuck
            else None,
            None if not stuck else "who holds a connection while waiting on a slow merchant?",
        ),
        Verdict(
            "the pool never runs out",
            not exhausted,
            f"peak {peak} of {size} connections in use",
            f"below {size}",
            "connections are held for the database work only"
            if not exhausted
            else "every connection was taken at once",
            {"seed": exhausted[0][0], "story time": exhausted[0][1]["moments"]["pool_exhausted_at"]}
            if exhausted
            else None,
            None
            if not exhausted
            else "a connection is for the INSERT, the authorization and the UPDATE: nothing else needs it",
        ),
        _accounted(results),
    ]


CRITICAL_PATH = Challenge(
    name="release-the-connection",
    lesson="01",
    title="Hold the connection only as long as it must be",
    statement=(
        "Change Phase 1's critical path so that Black Friday no longer freezes, without dropping any side "
        "effect: the side effects still run before the customer is answered (lesson 02 moves them off the "
        "critical path), but no payment may be stuck and the pool may never run out. The checker runs your "
        "pipeline through Black Friday until 14:40, at a twentieth of PayFlow, for two seeds."
    ),
    entry="MyPipeline",
    starter=CRITICAL_PATH_STARTER,
    reference=ReleasesTheConnection,
    wrong={
        "skips-the-webhook": (SkipsTheWebhook, "every side effect accounted for"),
        "commits-after-the-webhook": (CommitsLate, "the pool never runs out"),
    },
    shape=_subclass_of(SynchronousPipeline, "MyPipeline"),
    run=_judge_critical_path,
    invariants=("no payment stuck", "the pool never runs out", "every side effect accounted for"),
    solution_header="from payflow_lab import Payment, SynchronousPipeline\n\n\n",
    solution_parts=(ReleasesTheConnection,),
    solution_renames={"class ReleasesTheConnection(": "class MyPipeline("},
)


# ------------------------------------------------------------------ lesson 02
MAX_IN_FLIGHT = 40
SIDE_EFFECT_TIMEOUT_S = 5.0

FIRE_AND_FORGET_STARTER = '''\
import anyio

from payflow_lab import FireAndForgetPipeline

MAX_IN_FLIGHT = 40           # side effects running at once, at most
SIDE_EFFECT_TIMEOUT_S = 5.0  # a side effect's call, at most


class MyPipeline(FireAndForgetPipeline):
    """Phase 2, bounded: the payment still returns at once, but ..."""

    async def process_payment(self, payment):
        world = self.world
        async with world.pool.connection():
            await world.db_query(payment)                 # INSERT the payment as pending
            await world.authorize(payment)
            await world.db_query(payment)                 # UPDATE status, COMMIT
        for kind in ("webhook", "analytics", "audit", "risk", "fraud"):
            # TODO: at most MAX_IN_FLIGHT running (count them yourself); when full, drop it and say so:
            #   self.recorder.side_effect_started(kind)
            #   self.recorder.side_effect_finished(kind, "dropped", reason="too many in flight")
            self._tasks.start_soon(self.tracked, self.side_effect, kind, world.service(kind), payment)

    async def side_effect(self, kind, call, payment):
        recorder = self.recorder
        recorder.side_effect_started(kind)
        started = self.world.clock()
        try:
            await call(payment)                           # TODO: no longer than SIDE_EFFECT_TIMEOUT_S
        except Exception as exc:
            recorder.side_effect_finished(kind, "failed", reason=type(exc).__name__)
        else:
            recorder.side_effect_finished(kind, "delivered", latency=self.world.clock() - started)
'''


class BoundedFireAndForget(FireAndForgetPipeline):
    """The reference: a cap on side effects in flight (a refusal is counted), and a timeout that cancels."""

    def __init__(self, world: Any) -> None:
        super().__init__(world)
        self.running = 0  # started and not yet ended, counted here

    async def process_payment(self, payment: Payment) -> None:
        world = self.world
        async with world.pool.connection():
            await world.db_query(payment)
            await world.authorize(payment)
            await world.db_query(payment)
        for kind in SIDE_EFFECT_KINDS:
            if self.running >= MAX_IN_FLIGHT:  # full: an explicit, counted decision
                self.recorder.side_effect_started(kind)
                self.recorder.side_effect_finished(kind, "dropped", reason="too many in flight")
            else:
                self.running += 1
                self._tasks.start_soon(self.tracked, self.side_effect, kind, world.service(kind), payment)

    async def side_effect(self, kind: str, call: Callable[[Payment], Any], payment: Payment) -> None:
        recorder = self.recorder
        recorder.side_effect_started(kind)
        started = self.world.clock()
        try:
            with anyio.fail_after(SIDE_EFFECT_TIMEOUT_S):  # cancels the call itself
                await call(payment)
        except Exception as exc:
            recorder.side_effect_finished(kind, "failed", reason=type(exc).__name__)
        else:
            recorder.side_effect_finished(kind, "delivered", latency=self.world.clock() - started)
        finally:
            self.running -= 1


class CapWithoutTimeout(BoundedFireAndForget):
    """Wrong: the cap without the timeout; hanging calls keep their places for ever, and everything else is dropped."""

    async def side_effect(self, kind: str, call: Callable[[Payment], Any], payment: Payment) -> None:
        try:
            await FireAndForgetPipeline.side_effect(self, kind, call, payment)
        finally:
            self.running -= 1


class DropsSilently(BoundedFireAndForget):
    """Wrong: when full, just does not start the side effect: no count, no reason, nobody knows."""

    async def process_payment(self, payment: Payment) -> None:
        world = self.world
        async with world.pool.connection():
            await world.db_query(payment)
            await world.authorize(payment)
            await world.db_query(payment)
        for kind in SIDE_EFFECT_KINDS:
            if self.running < MAX_IN_FLIGHT:
                self.running += 1
                self._tasks.start_soon(self.tracked, self.side_effect, kind, world.service(kind), payment)


def _instrumented(
    candidate: type[FireAndForgetPipeline], ages: list[float], peaks: list[int]
) -> type[FireAndForgetPipeline]:
    """The candidate, watched: how long each side effect runs, how many run at once, the oldest at shutdown."""

    class Watched(candidate):  # type: ignore[valid-type,misc]
        def __init__(self, world: Any) -> None:
            super().__init__(world)
            self._running: dict[int, float] = {}
            self._serial = 0

        async def side_effect(self, kind: str, call: Any, payment: Payment) -> None:
            self._serial += 1
            token, clock = self._serial, self.world.clock
            self._running[token] = clock()
            if len(self._running) > peaks[-1]:
                peaks[-1] = len(self._running)
            try:
                await super().side_effect(kind, call, payment)
            finally:
                ages.append(clock() - self._running.pop(token))

        async def stop(self) -> None:
            now = self.world.clock()
            ages.extend(now - started for started in self._running.values())
            await super().stop()

    Watched.__name__ = candidate.__name__
    return Watched


def _judge_fire_and_forget(candidate: Any, backend: str) -> list[Verdict]:
    ages: list[float] = []
    peaks = [0]
    results = [(seed, _black_friday(_instrumented(candidate, ages, peaks), seed, backend)) for seed in SEEDS]
    longest = max(ages, default=0.0)
    peak = peaks[-1]
    p50 = max((r.summary["latency_ms"]["p50"] or 0.0) for _, r in results)
    held_time = longest <= SIDE_EFFECT_TIMEOUT_S + 0.01
    return [
        Verdict(
            "every side effect ends in time",
            held_time,
            f"longest: {longest:,.1f} s",
            f"at most {SIDE_EFFECT_TIMEOUT_S:g} s",
            "every call was answered or cancelled within its timeout"
            if held_time
            else "side effects waited on hanging endpoints far past any timeout",
            None if held_time else {"seeds": "7 and 3", "from": "14:18, when webhooks start to hang"},
            None if held_time else "a timeout that cancels the call: with anyio.fail_after(...)",
        ),
        Verdict(
            "tasks stay bounded",
            peak <= MAX_IN_FLIGHT,
            f"peak {peak:,} side effects running",
            f"at most {MAX_IN_FLIGHT}",
            "the number of tasks has a ceiling, whatever the endpoints do"
            if peak <= MAX_IN_FLIGHT
            else "tasks piled up without a limit",
            None,
            None if peak <= MAX_IN_FLIGHT else "check how many are running before starting another",
        ),
        _accounted(results),
        Verdict(
            "payments stay fast",
            p50 <= 1000.0,
            f"median {p50:,.0f} ms",
            "at most 1,000 ms",
            "the customer is answered as soon as the payment is committed"
            if p50 <= 1000.0
            else "the customer waits for side effects again",
            None,
            None if p50 <= 1000.0 else "never await a side effect on the critical path",
        ),
    ]


FIRE_AND_FORGET = Challenge(
    name="bounded-fire-and-forget",
    lesson="02",
    title="Fire and forget, with a bound and a timeout",
    statement=(
        "Keep Phase 2's fast payments, and add two of the three cures: at most 40 side effects in flight (when "
        "full, drop the new one and say so with the recorder), and a five-second timeout that cancels the call. "
        "The checker runs your pipeline through Black Friday until 14:40 (webhooks hang from 14:18) for two "
        "seeds, and times every side effect."
    ),
    entry="MyPipeline",
    starter=FIRE_AND_FORGET_STARTER,
    reference=BoundedFireAndForget,
    wrong={
        "cap-without-timeout": (CapWithoutTimeout, "every side effect ends in time"),
        "drops-silently": (DropsSilently, "every side effect accounted for"),
    },
    shape=_subclass_of(FireAndForgetPipeline, "MyPipeline"),
    run=_judge_fire_and_forget,
    invariants=(
        "every side effect ends in time",
        "tasks stay bounded",
        "every side effect accounted for",
        "payments stay fast",
    ),
    solution_header="from collections.abc import Callable\nfrom typing import Any\n\nimport anyio\n\n"
    "from payflow_lab import FireAndForgetPipeline, Payment\n\n"
    f"MAX_IN_FLIGHT = {MAX_IN_FLIGHT}\nSIDE_EFFECT_TIMEOUT_S = {SIDE_EFFECT_TIMEOUT_S}\n"
    f"SIDE_EFFECT_KINDS = {SIDE_EFFECT_KINDS!r}\n\n\n",
    solution_parts=(BoundedFireAndForget,),
    solution_renames={"class BoundedFireAndForget(": "class MyPipeline("},
)


# ------------------------------------------------------------------ lesson 03
CHANNELS_STARTER = '''\
import anyio

from payflow_lab import ChannelPipeline, EndpointError


class MyPipeline(ChannelPipeline):
    """Phase 3, cured: time out the work, not the wait."""

    async def webhook_worker(self, kind, inbox, name):
        """Take a webhook job and deliver it. TODO: no courier; the worker calls, under a 5 s timeout."""
        to_courier, courier_inbox = anyio.create_memory_object_stream(0)
        self._tasks.start_soon(self.tracked, self.courier, courier_inbox, name=f"{name}.courier")
        with to_courier:
            async for job in inbox:
                replies, reply = anyio.create_memory_object_stream(0)
                await to_courier.send((job, replies))
                sent = self.world.clock()
                result = ("failed", "no reply within 10 s")
                with anyio.move_on_after(10) as waited:
                    result = await reply.receive()
                outcome, reason = result
                if waited.cancelled_caught:
                    self._abandon()
                if outcome == "delivered":
                    self.recorder.side_effect_finished(kind, "delivered", latency=self.world.clock() - sent)
                else:
                    self.recorder.side_effect_finished(kind, "failed", reason=reason)
'''


class TimesOutTheWork(ChannelPipeline):
    """The reference: the worker makes the call itself, inside a cancel scope; nothing to abandon."""

    async def webhook_worker(self, kind: str, inbox: Any, name: str) -> None:
        async for job in inbox:
            started = self.world.clock()
            try:
                with anyio.fail_after(WEBHOOK_TIMEOUT_S):  # the deadline cancels the call itself
                    await self.world.deliver_webhook(job.payment)
            except TimeoutError:
                self.recorder.side_effect_finished(kind, "failed", reason=f"timeout ({WEBHOOK_TIMEOUT_S:g} s)")
            except EndpointError as exc:
                self.recorder.side_effect_finished(kind, "failed", reason=str(exc))
            else:
                self.recorder.side_effect_finished(kind, "delivered", latency=self.world.clock() - started)


class ClosesTheReply(ChannelPipeline):
    """Wrong: closes the reply stream when it gives up, so the courier is not stuck on send... but still in the call."""

    async def webhook_worker(self, kind: str, inbox: Any, name: str) -> None:
        to_courier, courier_inbox = anyio.create_memory_object_stream[Any](0)
        self._tasks.start_soon(self.tracked, self.courier, courier_inbox, name=f"{name}.courier")
        with to_courier:
            async for job in inbox:
                replies, reply = anyio.create_memory_object_stream[Any](0)
                with reply:
                    await to_courier.send((job, replies))
                    sent = self.world.clock()
                    result = ("failed", "no reply within 10 s")
                    with anyio.move_on_after(10):
                        result = await reply.receive()
                outcome, reason = result
                if outcome == "delivered":
                    self.recorder.side_effect_finished(kind, "delivered", latency=self.world.clock() - sent)
                else:
                    self.recorder.side_effect_finished(kind, "failed", reason=reason)


class CallsWithoutTimeout(ChannelPipeline):
    """Wrong: no courier, but no timeout either: a hanging endpoint keeps the worker for ever."""

    async def webhook_worker(self, kind: str, inbox: Any, name: str) -> None:
        async for job in inbox:
            started = self.world.clock()
            try:
                await self.world.deliver_webhook(job.payment)
            except EndpointError as exc:
                self.recorder.side_effect_finished(kind, "failed", reason=str(exc))
            else:
                self.recorder.side_effect_finished(kind, "delivered", latency=self.world.clock() - started)


def _judge_channels(candidate: Any, backend: str) -> list[Verdict]:
    results = [(seed, _black_friday(candidate, seed, backend)) for seed in SEEDS]
    leaked = [
        (seed, r.summary["channels"]["leaked_tasks"])
        for seed, r in results
        if r.summary["channels"]["leaked_tasks"]["at_end"]
    ]
    late = [
        (seed, r.summary["channels"]["shutdown"])
        for seed, r in results
        if not r.summary["channels"]["shutdown"]["finished_in_grace"]
    ]
    delivered = sum(r.summary["side_effects"]["by_kind"]["webhook"]["delivered"] for _, r in results)
    return [
        Verdict(
            "no task leaked",
            not leaked,
            f"{sum(x['at_end'] for _, x in leaked):,} tasks still blocked at the end" if leaked else "0",
            "0",
            "every worker ended when its stream closed"
            if not leaked
            else "tasks were still blocked when the process was killed",
            {"seed": leaked[0][0], "couriers": leaked[0][1]["couriers"], "workers": leaked[0][1]["workers"]}
            if leaked
            else None,
            None
            if not leaked
            else "a timeout on the *wait* leaves the call running; put the call itself inside the cancel scope",
        ),
        Verdict(
            "shutdown ends within its grace",
            not late,
            "in grace" if not late else f"killed after {late[0][1]['waited_s']:g} s",
            "within the grace period",
            "the workers drained and ended in time" if not late else "the shutdown waited for tasks that never end",
            {"seed": late[0][0]} if late else None,
            None if not late else "a worker that can be stuck for ever cannot be drained",
        ),
        Verdict(
            "webhooks still go out",
            delivered > 0,
            f"{delivered:,} delivered",
            "healthy merchants' webhooks delivered",
            "the webhook workers keep delivering" if delivered else "no webhook was delivered at all",
            None,
            None if delivered else "a worker must deliver (world.deliver_webhook) and book each outcome",
        ),
    ]


CHANNELS = Challenge(
    name="time-out-the-work",
    lesson="03",
    title="Time out the work, not the wait",
    statement=(
        "Rewrite Phase 3's webhook worker so that nothing leaks: no courier, no reply stream; the worker makes "
        "the call itself, under a five-second timeout that cancels it, and books the outcome. The checker runs "
        "your pipeline through Black Friday until 14:40 for two seeds and counts the tasks still blocked when "
        "the process is killed."
    ),
    entry="MyPipeline",
    starter=CHANNELS_STARTER,
    reference=TimesOutTheWork,
    wrong={
        "closes-the-reply-stream": (ClosesTheReply, "no task leaked"),
        "calls-without-timeout": (CallsWithoutTimeout, "no task leaked"),
    },
    shape=_subclass_of(ChannelPipeline, "MyPipeline"),
    run=_judge_channels,
    invariants=("no task leaked", "shutdown ends within its grace", "webhooks still go out"),
    solution_header="from typing import Any\n\nimport anyio\n\n"
    "from payflow_lab import ChannelPipeline, EndpointError\n\n"
    f"WEBHOOK_TIMEOUT_S = {WEBHOOK_TIMEOUT_S}\n\n\n",
    solution_parts=(TimesOutTheWork,),
    solution_renames={"class TimesOutTheWork(": "class MyPipeline("},
)
