"""``/metrics`` over HTTP on 127.0.0.1, for exactly as long as a run lasts.

prometheus_client's :func:`~prometheus_client.make_wsgi_app` renders a
registry (the run's own, never the global one); the standard library's WSGI
server serves it from one thread, with a thread per request. Why not
:func:`prometheus_client.start_http_server`? It marks its request threads as
daemons and never joins them, and returns no way to know they have finished;
here :meth:`MetricsServer.stop` shuts the server down, closes its socket,
gives requests in progress a short deadline and then cuts them off, and joins
every thread it started, so a run leaves no thread and no open port behind (a
test checks both), and a slow client cannot keep the process alive. It serves
on loopback only unless the caller passes ``allow_remote=True``.

Port ``0`` asks the operating system for a free port; :attr:`MetricsServer.port`
tells which one it gave.
"""

from __future__ import annotations

import ipaddress
import socket
import socketserver
import threading
import time
from types import TracebackType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from payflow_lab.core.errors import ValidationError
from payflow_lab.core.validation import number

__all__ = ["DEFAULT_PORT", "SHUTDOWN_DEADLINE_S", "MetricsServer"]

#: The default port: 9464 is the one OpenTelemetry's Prometheus exporter uses.
DEFAULT_PORT = 9464


#: Real seconds :meth:`MetricsServer.stop` lets requests in progress finish before it cuts their connections.
SHUTDOWN_DEADLINE_S = 2.0


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per request; each request's thread and socket are tracked, so that stop() can end them.

    The standard library would either join request threads without a limit
    (a client reading one byte every few seconds then keeps the process alive
    long after the run ended: measured, a 6 s run became 45 s) or forget them.
    Here stop() waits :data:`SHUTDOWN_DEADLINE_S` for them, then shuts their
    sockets down, which ends any read or write they are blocked in.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._active: dict[threading.Thread, socket.socket] = {}
        self._lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._active[threading.current_thread()] = request
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._active.pop(threading.current_thread(), None)

    def finish_requests(self, deadline: float) -> int:
        """Wait until ``deadline`` (``time.monotonic``) for requests in progress; cut the rest.

        Return how many were cut.
        """
        for thread in self._snapshot():
            thread.join(max(0.0, deadline - time.monotonic()))
        stragglers = self._snapshot()
        for thread in stragglers:
            with self._lock:
                sock = self._active.get(thread)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for thread in stragglers:
            thread.join(5.0)
        return len(stragglers)

    def _snapshot(self) -> list[threading.Thread]:
        with self._lock:
            return list(self._active)


class _QuietHandler(WSGIRequestHandler):
    timeout = 5.0  # a client that connects and says nothing cannot hold a request thread (or stop()) for ever

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        """No access log on stderr: it would scribble over the dashboard."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port(port: object) -> int:
    """``port`` if it is a TCP port number (0 picks a free one); a clear error naming ``port`` otherwise."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65_535:
        raise ValidationError("port", f"must be a TCP port between 0 and 65535 (0: any free port), got {port!r}")
    return port


class MetricsServer:
    """Serve ``registry`` at ``http://127.0.0.1:<port>/metrics`` from a background thread.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. A port
    already in use raises :class:`~payflow_lab.core.domain.ValidationError` naming
    ``port`` (and nothing is left running).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        port: int = DEFAULT_PORT,
        *,
        host: str = "127.0.0.1",
        allow_remote: bool = False,
        shutdown_deadline: float = SHUTDOWN_DEADLINE_S,
    ) -> None:
        if not isinstance(registry, CollectorRegistry):
            raise ValidationError("registry", f"must be a prometheus_client CollectorRegistry, got {registry!r}")
        self.registry = registry
        self.requested_port = check_port(port)
        if not isinstance(host, str) or not host:
            raise ValidationError("host", f"must be a host name or address, got {host!r}")
        if not allow_remote and not _is_loopback(host):
            raise ValidationError(
                "host",
                f"{host!r} is reachable from other machines; metrics are served on "
                "loopback only unless you pass allow_remote=True",
            )
        self.shutdown_deadline = number("shutdown_deadline", shutdown_deadline, minimum=0, maximum=60, unit=" seconds")
        self.host = host
        #: Requests still in progress that the last :meth:`stop` had to cut off at its deadline.
        self.cut_off = 0
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        if self._httpd is not None:
            raise RuntimeError("this metrics server was already started")
        try:
            httpd = make_server(
                self.host,
                self.requested_port,
                make_wsgi_app(self.registry),
                server_class=_Server,
                handler_class=_QuietHandler,
            )
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise ValidationError(
                "port",
                f"cannot serve metrics on {self.host}:{self.requested_port}: {why} "
                "(choose another port, or 0 for any free one)",
            ) from None
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"payflow-metrics:{httpd.server_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    @property
    def port(self) -> int:
        """The port actually listened on (the one the OS chose, for port 0)."""
        if self._httpd is None:
            raise RuntimeError("the metrics server is not running")
        return int(self._httpd.server_port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop serving, close the socket, join the server's threads. Idempotent."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        deadline = time.monotonic() + self.shutdown_deadline
        httpd.shutdown()  # serve_forever returns: no new request
        httpd.server_close()  # the listening socket closes
        self.cut_off = httpd.finish_requests(deadline)  # requests in progress: until the deadline, no longer
        if thread is not None:
            thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
