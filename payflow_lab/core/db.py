"""The database connection pool: a fixed number of connections, handed out first come, first served.

It is anyio's :class:`~anyio.CapacityLimiter` (FIFO, cancellation-safe) with
a checkout timeout and the bookkeeping the lessons need: connections in use,
requests waiting, how many checkouts timed out, and when the pool first ran
dry. Each checkout borrows on behalf of a fresh token, so one task may hold
two connections at once — exactly what the original code did when it wrote
analytics and audit rows while still holding the request's connection.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

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
        self._limiter = anyio.CapacityLimiter(size)
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

    @property
    def in_use(self) -> int:
        """Connections currently checked out."""
        return int(self._limiter.borrowed_tokens)

    def connection(self, timeout: float | None | type[_Default] = _Default) -> _Checkout:
        """Check out a connection for the body of an ``async with``.

        Waits at most ``timeout`` seconds (default: the pool's
        ``checkout_timeout``; ``None`` waits for ever) and then raises
        :class:`PoolTimeout`.
        """
        return _Checkout(self, self.checkout_timeout if isinstance(timeout, type) else timeout)  # _Default: our own

    async def _check_out(self, wait: float | None) -> _Connection:
        self._serial += 1
        conn = _Connection(self._serial)
        limiter = self._limiter
        try:
            limiter.acquire_on_behalf_of_nowait(conn)  # a free connection and nobody queued ahead
        except anyio.WouldBlock:
            if not self.exhausted_once:
                self.exhausted_once = True
                if self._on_exhausted is not None:
                    self._on_exhausted()
            self.waiting += 1
            try:
                if wait is None:  # no cancel scope at all: Phase 1 has thousands of requests waiting here
                    await limiter.acquire_on_behalf_of(conn)
                else:
                    with anyio.fail_after(wait):
                        await limiter.acquire_on_behalf_of(conn)
            except TimeoutError:
                self.timeouts += 1
                raise PoolTimeout(f"no database connection free within {wait:g} s") from None
            finally:
                self.waiting -= 1
        self.checkouts += 1
        in_use = self.in_use
        if in_use > self.peak_in_use:
            self.peak_in_use = in_use
        return conn


class _Checkout:
    """``async with pool.connection():`` the connection is given back however the body ends.

    A small class rather than ``@asynccontextmanager``: Phase 1 keeps thousands of
    requests waiting for a connection, and an async generator for each costs memory
    while it waits, and a pass over all of them when the event loop shuts down.
    """

    __slots__ = ("_pool", "_wait", "_conn")

    def __init__(self, pool: ConnectionPool, wait: float | None) -> None:
        self._pool = pool
        self._wait = wait

    async def __aenter__(self) -> _Connection:
        self._conn = await self._pool._check_out(self._wait)
        return self._conn

    async def __aexit__(self, *exc_info: object) -> None:
        self._pool._limiter.release_on_behalf_of(self._conn)
