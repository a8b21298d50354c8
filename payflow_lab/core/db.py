"""The database connection pool: a fixed number of connections, handed out first come, first served.

A checkout takes a free connection at once if nobody is queued ahead of it;
otherwise it joins the queue and waits (at most its checkout timeout) until a
returning connection is handed to it. Around that sit the bookkeeping the
lessons need: connections in use, requests waiting, how many checkouts timed
out, and when the pool first ran dry. One task may hold two connections at
once — exactly what the original code did when it wrote analytics and audit
rows while still holding the request's connection.

The queue is written out rather than anyio's :class:`~anyio.CapacityLimiter`,
which this pool used to be and still behaves like (first in, first out,
cancellation-safe, the same wake-ups on asyncio and trio). The limiter waits
inside an ``except WouldBlock:`` block, so each waiting request keeps an
exception, its traceback and a finished frame alive for as long as it waits,
and on Black Friday tens of thousands of requests wait here: the written-out
queue is a dict entry and an :class:`anyio.Event` per waiting request (issue
20; ``docs/performance.md`` has the figures).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import anyio
import anyio.lowlevel

from payflow_lab.core.errors import PoolTimeout

__all__ = ["ConnectionPool", "PoolTimeout"]


class _Default:
    """Marker: use the pool's own checkout timeout."""


class _Connection:
    __slots__ = ("number",)

    def __init__(self, number: int) -> None:
        self.number = number


class ConnectionPool:
    """``size`` connections; a checkout waits at most ``checkout_timeout`` seconds (``None``: for ever).

    ``on_exhausted`` is called (with no arguments) the first time a checkout
    finds every connection busy.
    """

    def __init__(
        self, size: int, checkout_timeout: float | None = None, on_exhausted: Callable[[], None] | None = None
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"pool size must be a positive integer, got {size!r}")
        if checkout_timeout is not None and not checkout_timeout > 0:
            raise ValueError(f"checkout_timeout must be positive, got {checkout_timeout!r}")
        self.size = size
        self.checkout_timeout = checkout_timeout
        #: Connections currently checked out.
        self.in_use = 0
        self._line: OrderedDict[anyio.Event, None] = OrderedDict()  # the waiting requests, first in first
        self._serial = 0
        self._on_exhausted = on_exhausted
        self.exhausted_once = False
        self.waiting = 0
        self.peak_in_use = 0
        self.timeouts = 0
        self.checkouts = 0

    def summary(self) -> dict[str, int]:
        """The summary's ``db_pool`` block: size, the most connections in use at once, checkouts, timeouts."""
        return {
            "size": self.size,
            "peak_in_use": self.peak_in_use,
            "checkout_timeouts": self.timeouts,
            "checkouts": self.checkouts,
        }

    def connection(self, timeout: float | None | type[_Default] = _Default) -> _Checkout:
        """Check out a connection for the body of an ``async with``.

        Waits at most ``timeout`` seconds (default: the pool's
        ``checkout_timeout``; ``None`` waits for ever) and then raises
        :class:`PoolTimeout`.
        """
        return _Checkout(self, self.checkout_timeout if isinstance(timeout, type) else timeout)  # _Default: our own

    def _take_free(self) -> bool:
        """Take a free connection if there is one and nobody is queued ahead."""
        if self.in_use < self.size and not self._line:
            self.in_use += 1
            return True
        return False

    def _checked_out(self) -> _Connection:
        self._serial += 1
        self.checkouts += 1
        if self.in_use > self.peak_in_use:
            self.peak_in_use = self.in_use
        return _Connection(self._serial)

    async def _wait_in_line(self, wait: float | None) -> None:
        """Queue up until a returning connection is handed over (it stays counted in use), or give up."""
        if not self.exhausted_once:
            self.exhausted_once = True
            if self._on_exhausted is not None:
                self._on_exhausted()
        self.waiting += 1
        try:
            await anyio.lowlevel.checkpoint_if_cancelled()  # a request already cancelled never queues
            turn = anyio.Event()
            self._line[turn] = None
            try:
                if wait is None:  # no cancel scope at all: Phase 1 has thousands of requests waiting here
                    await turn.wait()
                else:
                    with anyio.fail_after(wait):
                        await turn.wait()
            except BaseException:
                if turn.is_set():
                    self._give_back()  # handed a connection as it gave up: pass it on to the next in line
                else:
                    del self._line[turn]
                raise
        except TimeoutError:
            self.timeouts += 1
            raise PoolTimeout(f"no database connection free within {wait:g} s") from None
        finally:
            self.waiting -= 1

    def _give_back(self) -> None:
        if self._line:
            turn, _ = self._line.popitem(last=False)
            turn.set()  # straight to the first in line: still in use
        else:
            self.in_use -= 1


class _Checkout:
    """``async with pool.connection():`` the connection is given back however the body ends.

    A small class rather than ``@asynccontextmanager``: Phase 1 keeps thousands of
    requests waiting for a connection, and an async generator for each costs memory
    while it waits, and a pass over all of them when the event loop shuts down.
    """

    __slots__ = ("_pool", "_wait")

    def __init__(self, pool: ConnectionPool, wait: float | None) -> None:
        self._pool = pool
        self._wait = wait

    async def __aenter__(self) -> _Connection:
        pool = self._pool
        if not pool._take_free():
            await pool._wait_in_line(self._wait)
        return pool._checked_out()

    async def __aexit__(self, *exc_info: object) -> None:
        self._pool._give_back()
