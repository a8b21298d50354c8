"""A merchant's webhook receiver, for real: an ASGI app on 127.0.0.1 that verifies, deduplicates and applies.

What a well-behaved receiver does with each ``POST``, in this order:

1. **verify** the Standard Webhooks signature (:func:`.signing.verify`): a
   missing header, a stale timestamp, a wrong signature or a tampered body is
   answered ``401`` and never applied;
2. **parse** the body (:func:`.events.decode_body`): a malformed one is
   answered ``400``;
3. **apply it once**: the event id (the ``webhook-id``) goes into the
   receiver's ledger together with the effect, in one SQLite transaction
   (:class:`~.ledger.ReceiverLedger`). A repeat changes nothing;
4. **answer 200**, for a first delivery and for a repeat alike: the sender
   only needs to know it may stop sending.

For the lessons and the tests it can be told to misbehave (:meth:`Receiver.set_mode`,
or ``POST /_control`` with ``{"mode": ..., "delay": ..., "ack_delay": ...}`` and the
receiver's :attr:`Receiver.control_token` in an ``x-payflow-control`` header: the server
listens on loopback only, and even there another local user or a web page cannot change
a run without the token, which only the process that created the receiver knows):

``up``      answer normally (after ``delay`` seconds if set);
``fail``    answer ``503`` without applying anything;
``hang``    accept the request and never answer (until the sender gives up and disconnects);
``ack_delay`` (any mode that applies) apply first, then wait before answering: the
            window in which a crashed sender has delivered but not yet marked done.

``GET /_stats`` returns the receiver's counters as JSON.

The server is hypercorn, chosen because it is a maintained ASGI server that
runs on asyncio *and* trio (as the engine does; uvicorn is asyncio-only), with
HTTP/1.1 keep-alive and graceful shutdown, and because it accepts a socket we
bound ourselves (``fd://``), so a receiver can listen on port 0 and tell its
URL at once. The app itself is plain ASGI, with no framework: three routes do
not need one. The ledger's SQLite write runs inline in the request (one short
transaction), which is fine for a receiver serving a test or a lesson.
"""

from __future__ import annotations

import hmac
import json
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import anyio
import anyio.abc
import anyio.from_thread

from payflow_lab.core.errors import MalformedPayload, SignatureError, ValidationError
from payflow_lab.core.validation import number
from payflow_lab.durable.events import decode_body
from payflow_lab.durable.ledger import ReceiverLedger
from payflow_lab.durable.signing import DEFAULT_TOLERANCE_S, generate_secret, verify
from payflow_lab.durable.transport import Endpoint

__all__ = ["MODES", "Receiver", "ReceiverServer", "serve_in_thread"]

#: What a receiver can be told to do.
MODES = ("up", "fail", "hang")
#: Bodies larger than this are refused (413): a webhook is a small JSON document.
MAX_BODY_BYTES = 64 * 1024

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


def _seconds(name: str, value: Any) -> float:
    return number(name, value, minimum=0, maximum=3600, unit=" seconds")


class Receiver:
    """One endpoint: an ASGI app with its secret and its ledger. See the module docstring.

    ``clock`` gives the Unix time the signatures' timestamps are checked
    against (and the time stamped on applied effects).
    """

    def __init__(
        self,
        name: str = "receiver",
        *,
        secret: str | None = None,
        ledger: ReceiverLedger | None = None,
        tolerance: float = DEFAULT_TOLERANCE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.secret = secret if secret is not None else generate_secret()
        #: Required (header ``x-payflow-control``) by ``POST /_control``; new for every receiver.
        self.control_token = secrets.token_urlsafe(24)
        Endpoint("http://check", self.secret)  # validates the secret
        self.ledger = ledger if ledger is not None else ReceiverLedger()
        self.tolerance = tolerance
        self.clock = clock
        self.mode = "up"
        self.delay = 0.0
        self.ack_delay = 0.0
        self.url: str | None = None
        #: Requests by what became of them.
        self.counters: dict[str, int] = {
            "requests": 0,
            "applied": 0,
            "duplicates": 0,
            "bad_signature": 0,
            "malformed": 0,
            "failed_on_purpose": 0,
            "hung": 0,
            "truncated": 0,
        }

    def set_mode(self, mode: str | None = None, *, delay: float | None = None, ack_delay: float | None = None) -> None:
        """Change how the receiver behaves from the next request on (validated first, then applied)."""
        if mode is not None and mode not in MODES:
            raise ValidationError("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
        new_delay = self.delay if delay is None else _seconds("delay", delay)
        new_ack = self.ack_delay if ack_delay is None else _seconds("ack_delay", ack_delay)
        if mode is not None:
            self.mode = mode
        self.delay, self.ack_delay = new_delay, new_ack

    @property
    def endpoint(self) -> Endpoint:
        if self.url is None:
            raise RuntimeError(f"receiver {self.name!r} is not being served")
        return Endpoint(self.url, self.secret)

    def stats(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, **self.counters, "ledger": self.ledger.stats()}

    # ------------------------------------------------------------------- ASGI
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path, method = scope.get("path", "/"), scope.get("method", "GET")
        if path == "/_stats" and method == "GET":
            await _respond(send, 200, self.stats())
            return
        try:
            body = await _read_body(receive)
        except _Truncated:  # never apply (or even verify) half a request
            self.counters["truncated"] += 1
            await _respond(send, 408, {"error": "the request body did not arrive in time"})
            return
        if body is None:
            await _respond(send, 413, {"error": f"body larger than {MAX_BODY_BYTES} bytes"})
            return
        if path == "/_control" and method == "POST":
            if not self._authorised(scope):
                await _respond(
                    send,
                    403,
                    {"error": "POST /_control needs this receiver's control token in the x-payflow-control header"},
                )
                return
            await self._control(body, send)
            return
        if method != "POST":
            await _respond(send, 405, {"error": "POST a webhook"})
            return
        await self._webhook(scope, body, receive, send)

    def _authorised(self, scope: Scope) -> bool:
        given = next((v for k, v in scope.get("headers", []) if k.lower() == b"x-payflow-control"), b"")
        return hmac.compare_digest(given, self.control_token.encode())

    async def _control(self, body: bytes, send: Send) -> None:
        try:
            changes = json.loads(body or b"{}")
            if not isinstance(changes, dict) or set(changes) - {"mode", "delay", "ack_delay"}:
                raise ValidationError("control", "expects an object with mode, delay and/or ack_delay")
            self.set_mode(changes.get("mode"), delay=changes.get("delay"), ack_delay=changes.get("ack_delay"))
        except (ValueError, ValidationError) as exc:
            await _respond(send, 400, {"error": str(exc)})
            return
        await _respond(send, 200, {"mode": self.mode, "delay": self.delay, "ack_delay": self.ack_delay})

    async def _webhook(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        counters = self.counters
        counters["requests"] += 1
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        mode, delay, ack_delay = self.mode, self.delay, self.ack_delay
        if mode == "hang":
            counters["hung"] += 1
            while (await receive())["type"] != "http.disconnect":  # until the sender gives up
                pass
            return
        if delay:
            await anyio.sleep(delay)
        if mode == "fail":
            counters["failed_on_purpose"] += 1
            await _respond(send, 503, {"error": "failing on purpose"})
            return
        try:
            event_id = verify(self.secret, body, headers, now=self.clock(), tolerance=self.tolerance)
        except SignatureError as exc:
            counters["bad_signature"] += 1
            await _respond(send, 401, {"error": str(exc)})
            return
        try:
            checked_id, kind, payment = decode_body(body)
            if checked_id != event_id:
                raise MalformedPayload(f"webhook-id {event_id!r} does not match the body's id {checked_id!r}")
        except MalformedPayload as exc:
            counters["malformed"] += 1
            await _respond(send, 400, {"error": str(exc)})
            return
        new = self.ledger.apply(event_id, kind, payment, at=self.clock())
        counters["applied" if new else "duplicates"] += 1
        if ack_delay:
            await anyio.sleep(ack_delay)
        await _respond(send, 200, {"id": event_id, "duplicate": not new})


class _Truncated(Exception):
    """The connection ended (or timed out) before the whole request body arrived."""


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":  # before the last chunk: the body is incomplete
            raise _Truncated
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _respond(send: Send, status: int, document: dict[str, Any]) -> None:
    payload = json.dumps(document).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


#: Real seconds a receiver waits for the rest of a request before dropping the connection.
READ_TIMEOUT_S = 5.0


class ReceiverServer:
    """Serves ``receivers`` with hypercorn on ``host`` (loopback only), one port each, until :meth:`stop`.

    ``await server.serve(task_status=...)`` in a task group reports the URLs
    once every socket is bound (``tg.start(server.serve)`` returns them).
    """

    def __init__(
        self,
        receivers: list[Receiver],
        *,
        host: str = "127.0.0.1",
        graceful_timeout: float = 1.0,
        read_timeout: float = READ_TIMEOUT_S,
    ) -> None:
        if not receivers:
            raise ValidationError("receivers", "needs at least one receiver")
        number("read_timeout", read_timeout, above=0, maximum=300, unit=" seconds")
        self.read_timeout = float(read_timeout)
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValidationError("host", f"receivers listen on the loopback interface only, got {host!r}")
        self.receivers = list(receivers)
        self.host = host
        self.graceful_timeout = graceful_timeout
        self._stop: anyio.Event | None = None

    async def serve(self, *, task_status: anyio.abc.TaskStatus[list[str]] = anyio.TASK_STATUS_IGNORED) -> None:
        import sniffio
        from hypercorn.config import Config

        if sniffio.current_async_library() == "trio":
            from hypercorn.trio import serve
        else:
            from hypercorn.asyncio import serve  # type: ignore[assignment]
        self._stop = anyio.Event()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        configs = []
        for receiver in self.receivers:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.bind((self.host, 0))
            sock.listen(128)
            port = sock.getsockname()[1]
            host = f"[{self.host}]" if family == socket.AF_INET6 else self.host
            receiver.url = f"http://{host}:{port}/"
            config = Config()
            config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns (and closes) the socket from here
            config.errorlog = None
            config.accesslog = None
            config.graceful_timeout = self.graceful_timeout
            # A client that sends half a request and waits is dropped after read_timeout: it cannot hold a
            # connection (and a stop) for as long as it likes.
            config.read_timeout = self.read_timeout  # type: ignore[assignment]
            configs.append((receiver, config))
        with _quiet_cancellations(), anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                for receiver, config in configs:
                    tg.start_soon(
                        partial(serve, receiver, config, shutdown_trigger=self._stop.wait),  # type: ignore[arg-type]
                        name=f"receiver {receiver.name}",
                    )
                task_status.started([str(r.url) for r in self.receivers])
                await self._stop.wait()
                # hypercorn now closes its listeners and lets requests finish; give it a bounded time.
                scope.deadline = anyio.current_time() + self.graceful_timeout + 2.0

    def stop(self) -> None:
        """Stop serving (call from the server's event loop; see :func:`serve_in_thread` for threads)."""
        if self._stop is not None:
            self._stop.set()


@contextmanager
def _quiet_cancellations() -> Iterator[None]:
    """On asyncio, a connection cancelled at shutdown is not an error: keep its traceback off stderr.

    hypercorn runs each connection as a task started by asyncio's stream
    server; when the server stops with a connection still open (a client that
    sent half a body), asyncio reports the cancelled task through the loop's
    exception handler, which prints a traceback for what is a normal stop.
    Other errors still go to the previous handler.
    """
    import sniffio

    if sniffio.current_async_library() != "asyncio":
        yield
        return
    import asyncio

    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), asyncio.CancelledError):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    try:
        yield
    finally:
        loop.set_exception_handler(previous)


@contextmanager
def serve_in_thread(receivers: list[Receiver], *, backend: str = "asyncio") -> Iterator[ReceiverServer]:
    """Serve ``receivers`` from a thread of their own (for tests and scripts that are not async)::

        with serve_in_thread([Receiver("shop")]) as server:
            url = server.receivers[0].url

    The thread and every socket are gone when the block ends.
    """
    server = ReceiverServer(receivers)
    with anyio.from_thread.start_blocking_portal(backend) as portal:
        future, _ = portal.start_task(server.serve, name="receivers")
        try:
            yield server
        finally:
            portal.call(server.stop)
            future.result(timeout=30)
