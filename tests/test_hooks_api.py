"""The hook bus's surface: registering, listing, unhooking, and refusing bad input clearly."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from payflow_lab.core.errors import BusClosed, BusNotStarted
from payflow_lab.core.vtime import run_virtual
from payflow_lab.hooks import Handle, HookBus, MemorySpillStore, Reject, Spill, Wait


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


async def nothing(payload: object) -> None:
    await anyio.lowlevel.checkpoint()


def test_hook_returns_a_handle_with_its_settings() -> None:
    bus = HookBus(timeout=5.0, queue_size=100, workers=3)
    handle = bus.hook("payment.authorized", nothing, name="audit", queue_size=7, timeout=1.5)
    assert isinstance(handle, Handle)
    assert (handle.name, handle.event, handle.handler) == ("audit", "payment.authorized", nothing)
    assert (handle.queue_size, handle.workers, handle.timeout) == (7, 3, 1.5)  # workers from the bus default
    assert isinstance(handle.overflow, Reject)
    assert handle.active and handle.queued == 0 and handle.running == 0


def test_timeout_none_means_no_limit_and_default_means_the_bus_default() -> None:
    bus = HookBus(timeout=2.0)
    assert bus.hook("e", nothing, name="a").timeout == 2.0
    assert bus.hook("e", nothing, name="b", timeout=None).timeout is None


def test_the_default_name_is_the_handlers_name() -> None:
    bus = HookBus()
    assert bus.hook("e", nothing).name == "nothing"


def test_decorator_registers_and_returns_the_function_unchanged() -> None:
    bus = HookBus()

    @bus.on("payment.authorized", workers=2, name="webhook")
    async def send_webhook(payment: object) -> None:
        await anyio.lowlevel.checkpoint()

    assert callable(send_webhook) and send_webhook.__name__ == "send_webhook"
    [handle] = bus.hooks()
    assert (handle.name, handle.workers, handle.handler) == ("webhook", 2, send_webhook)


def test_hooks_lists_active_hooks_in_registration_order_and_filters_by_event() -> None:
    bus = HookBus()
    bus.hook("a", nothing, name="one")
    bus.hook("b", nothing, name="two")
    bus.hook("a", nothing, name="three")
    assert [h.name for h in bus.hooks()] == ["one", "two", "three"]
    assert [h.name for h in bus.hooks("a")] == ["one", "three"]
    assert bus.hooks("nobody") == []


def test_unhook_stops_admission_but_runs_what_was_already_queued(backend: str) -> None:
    async def main() -> None:
        ran: list[tuple[str, int]] = []
        bus = HookBus()

        async def record_a(p: int) -> None:
            await anyio.sleep(1)
            ran.append(("a", p))

        async def record_b(p: int) -> None:
            ran.append(("b", p))

        a = bus.hook("e", record_a, name="a", workers=1)
        bus.hook("e", record_b, name="b")
        async with bus:
            assert bus.emit("e", 1) == 2
            assert bus.emit("e", 2) == 2
            a.unhook()
            a.unhook()  # idempotent
            assert not a.active
            assert [h.name for h in bus.hooks("e")] == ["b"]
            assert bus.emit("e", 3) == 1
            await anyio.sleep(5)
            assert sorted(p for who, p in ran if who == "a") == [1, 2]  # drained after the unhook
            assert sorted(p for who, p in ran if who == "b") == [1, 2, 3]
            assert bus.stats()["a"].state == "unhooked"
            assert bus.stats()["a"].admitted == 2

    run_virtual(main, backend=backend)


def test_unhook_by_name_and_unknown_names() -> None:
    bus = HookBus()
    bus.hook("e", nothing, name="audit")
    bus.unhook("audit")
    assert bus.hooks() == []
    with pytest.raises(ValueError, match="name: no hook called 'missing'"):
        bus.unhook("missing")


def test_names_are_unique_for_the_life_of_the_bus() -> None:
    bus = HookBus()
    bus.hook("e", nothing, name="audit")
    with pytest.raises(ValueError, match="name: a hook called 'audit' already exists"):
        bus.hook("other", nothing, name="audit")
    bus.unhook("audit")
    with pytest.raises(ValueError, match="already exists"):  # its statistics still carry that name
        bus.hook("e", nothing, name="audit")


def test_a_plain_function_is_refused_with_the_reason() -> None:
    def sync_handler(payload: object) -> None:
        pass

    bus = HookBus()
    with pytest.raises(TypeError, match="async function"):
        bus.hook("e", sync_handler)  # type: ignore[arg-type]


def test_async_callables_and_partials_are_accepted() -> None:
    import functools

    class Callable_:
        async def __call__(self, payload: object) -> None:
            pass

    async def two(a: int, payload: object) -> None:
        pass

    bus = HookBus()
    bus.hook("e", Callable_(), name="instance")
    assert bus.hook("e", functools.partial(two, 1)).name == "partial"
    assert len(bus.hooks("e")) == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"queue_size": 0}, "queue_size: must be between 1 and 10,000,000, got 0"),
        ({"queue_size": 2.5}, "queue_size: must be an integer, got float"),
        ({"queue_size": True}, "queue_size: must be an integer, got bool"),
        ({"workers": 0}, "workers: must be between 1 and 10,000, got 0"),
        ({"workers": 10_001}, "workers: must be between 1 and 10,000, got 10,001"),
        ({"timeout": 0}, "timeout: must be greater than 0 seconds, got 0"),
        ({"timeout": -1}, "timeout: must be greater than 0 seconds"),
        ({"timeout": float("inf")}, "timeout: must be finite"),
        ({"timeout": "5"}, "timeout: must be a number or None, got str"),
        ({"name": ""}, "name must be a non-empty string"),
    ],
)
def test_bad_hook_arguments_name_the_parameter_and_register_nothing(kwargs: dict, match: str) -> None:
    bus = HookBus()
    with pytest.raises(ValueError, match=match):
        bus.hook("e", nothing, **kwargs)
    assert bus.hooks() == []
    assert bus.stats() == {}


def test_bad_event_and_overflow_are_refused() -> None:
    bus = HookBus()
    with pytest.raises(ValueError, match="event must be a non-empty string"):
        bus.hook("", nothing)
    with pytest.raises(TypeError, match="overflow must be"):
        bus.hook("e", nothing, overflow="reject")
    with pytest.raises(ValueError, match="max_wait: must be greater than 0 seconds"):
        Wait(0)
    with pytest.raises(TypeError, match="store must implement SpillStore"):
        Spill(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="capacity: must be at least 1, got 0"):
        MemorySpillStore(0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timeout": -2}, "timeout"),
        ({"queue_size": 0}, "queue_size"),
        ({"workers": "4"}, "workers"),
        ({"shutdown_deadline": -1}, "shutdown_deadline"),
        ({"cancel_grace": float("nan")}, "cancel_grace"),
        ({"failure_history": -1}, "failure_history"),
    ],
)
def test_bad_bus_arguments_name_the_parameter(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HookBus(**kwargs)


def test_callbacks_must_be_callable() -> None:
    with pytest.raises(TypeError, match="on_error must be callable"):
        HookBus(on_error=42)  # type: ignore[arg-type]


def test_spilling_hooks_of_one_event_must_share_a_store() -> None:
    bus = HookBus()
    bus.hook("e", nothing, name="a", overflow=Spill(MemorySpillStore()))
    with pytest.raises(ValueError, match="must share one store"):
        bus.hook("e", nothing, name="b", overflow=Spill(MemorySpillStore()))
    bus.hook("other", nothing, name="c", overflow=Spill(MemorySpillStore()))  # another event: fine


def test_emit_before_start_is_refused(backend: str) -> None:
    async def main() -> None:
        bus = HookBus()
        bus.hook("e", nothing)
        with pytest.raises(BusNotStarted, match="async with bus"):
            bus.emit("e", 1)
        assert bus.stats()["nothing"].admitted == 0

    run_virtual(main, backend=backend)


def test_emit_without_subscribers_returns_zero_and_is_counted(backend: str) -> None:
    async def main() -> None:
        async with HookBus() as bus:
            assert bus.emit("nobody.listens", 1) == 0
            assert await bus.emit_wait("nobody.listens", 2) == 0
            assert bus.unheard == 2

    run_virtual(main, backend=backend)


def test_hooking_while_running_starts_workers_at_once(backend: str) -> None:
    async def main() -> None:
        done = anyio.Event()

        async def handler(p: object) -> None:
            done.set()

        async with HookBus() as bus:
            bus.hook("e", handler)
            bus.emit("e", 1)
            with anyio.fail_after(1):
                await done.wait()

    run_virtual(main, backend=backend)


def test_a_bus_starts_once_and_refuses_hooks_after_close(backend: str) -> None:
    async def main() -> None:
        bus = HookBus()
        async with bus:
            with pytest.raises(RuntimeError, match="started once"):
                await bus.__aenter__()
        assert bus.state == "closed"
        with pytest.raises(BusClosed):
            bus.hook("e", nothing)
        with pytest.raises(BusClosed, match="closed"):
            bus.emit("e", 1)
        assert bus.rejected_after_close == 1

    run_virtual(main, backend=backend)


def test_aclose_before_start_returns_an_empty_report(backend: str) -> None:
    async def main() -> None:
        bus = HookBus()
        bus.hook("e", nothing)
        report = await bus.aclose(1)
        assert report.drained and report.completed == 0
        assert bus.state == "closed"

    run_virtual(main, backend=backend)


def test_aclose_checks_its_arguments(backend: str) -> None:
    async def main() -> None:
        async with HookBus() as bus:
            with pytest.raises(ValueError, match="deadline"):
                await bus.aclose(-1)
            with pytest.raises(ValueError, match="cancel_grace"):
                await bus.aclose(1, cancel_grace=-1)
            assert bus.state == "running"  # nothing half-applied

    run_virtual(main, backend=backend)
