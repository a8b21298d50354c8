"""A throw-away PostgreSQL cluster, for the tests, the benchmarks and the notebook.

Some of what the durable pipeline does is best shown against a real database
server. A shared server would make runs depend on each other (and on whoever
set it up), so every user of this module gets a cluster of its own, made for
the occasion and deleted afterwards::

    with TemporaryPostgres() as pg:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("select 1")

:meth:`TemporaryPostgres.start` runs ``initdb`` into a new directory under the
system's temporary directory (``payflow-pg-*``), starts the server with
``pg_ctl`` on a free port of 127.0.0.1 (and on a unix socket in that same
directory) and creates the database. :meth:`~TemporaryPostgres.stop` stops the
server and deletes the directory; it also runs at interpreter exit, so a test
run that crashed does not leave a server behind.

The cluster is tuned for speed, not for safety: ``fsync``,
``synchronous_commit`` and ``full_page_writes`` are off. A power cut would
corrupt it, which does not matter, since it is deleted anyway; never point it
at data you want to keep. Authentication is ``trust``: anyone on this machine
may connect as the superuser ``payflow``, without a password. The server
listens on the loopback interface only.

Which PostgreSQL runs: the one in ``$PAYFLOW_PG_BIN`` when that is set (and
then only that one, so that a typo is an error rather than a quiet fallback
to another version); otherwise the directory of ``initdb`` on the ``PATH``;
otherwise the newest ``/usr/lib/postgresql/*/bin``, where Debian puts it.
When there is none, :class:`PostgresUnavailable` says so and how to install
it (``apt-get install postgresql``, or ``tools/ensure-postgresql`` as root).

PostgreSQL refuses to run as root. As root (CI containers run as root), the
cluster is made and run by the ``postgres`` system user, which then owns the
temporary directory; the URL is TCP, so the caller connects all the same.

A process killed outright (``SIGKILL``) runs nothing at exit, and its server
keeps running: ``pg_ctl stop -D /tmp/payflow-pg-.../data -m immediate``
stops it.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import socket
import string
import subprocess
import tempfile
import time
from pathlib import Path

from payflow_lab.core.errors import PostgresUnavailable

__all__ = ["PostgresUnavailable", "TemporaryPostgres", "find_bin_dir", "require_postgres"]

USER = "payflow"
SYSTEM_USER = "postgres"
PROGRAMS = ("initdb", "pg_ctl", "postgres", "createdb")
INSTALL_HINT = (
    "install PostgreSQL (Debian/Ubuntu: apt-get install postgresql, or run tools/ensure-postgresql as root), "
    "or point PAYFLOW_PG_BIN at the directory that holds initdb and pg_ctl"
)
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "64MB",
}
START_TIMEOUT_S = 60
BIND_ATTEMPTS = 5
LOG_TAIL_LINES = 25
NAME_CHARACTERS = frozenset(string.ascii_letters + string.digits + "_-")


def _has_programs(directory: Path) -> bool:
    return all(os.access(directory / program, os.X_OK) for program in PROGRAMS)


def _version_key(directory: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in directory.parent.name.split("."))
    except ValueError:
        return (-1,)


def find_bin_dir() -> Path | None:
    """The directory that holds PostgreSQL's ``initdb`` and ``pg_ctl``, or ``None``.

    ``$PAYFLOW_PG_BIN`` if set (and only it), then the directory of ``initdb``
    on the ``PATH`` (symbolic links resolved), then the newest
    ``/usr/lib/postgresql/*/bin``.
    """
    configured = os.environ.get("PAYFLOW_PG_BIN", "").strip()
    if configured:
        directory = Path(configured).expanduser()
        return directory if _has_programs(directory) else None
    candidates = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    return next((directory for directory in candidates if _has_programs(directory)), None)


def _system_user() -> pwd.struct_passwd | None:
    """The user the server runs as, when not the current one: ``postgres`` if we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"PostgreSQL refuses to run as root, and there is no {SYSTEM_USER!r} user to run it as: "
            f"create one (adduser --system {SYSTEM_USER}), or {INSTALL_HINT}"
        ) from None


def require_postgres() -> Path:
    """The directory of PostgreSQL's programs (see :func:`find_bin_dir`), or :class:`PostgresUnavailable`."""
    directory = find_bin_dir()
    if directory is None:
        configured = os.environ.get("PAYFLOW_PG_BIN", "").strip()
        if configured:
            missing = [program for program in PROGRAMS if not os.access(Path(configured) / program, os.X_OK)]
            raise PostgresUnavailable(
                f"PAYFLOW_PG_BIN={configured} holds no {', '.join(missing)}: "
                "point it at PostgreSQL's bin directory (for example /usr/lib/postgresql/15/bin), or unset it"
            )
        raise PostgresUnavailable(
            f"PostgreSQL not found (no initdb on the PATH nor in /usr/lib/postgresql/*/bin): {INSTALL_HINT}"
        )
    _system_user()
    return directory


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:]) or "(the server log is empty)"


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _signal(pid: int, signal_number: int) -> None:
    try:
        os.kill(pid, signal_number)
    except OSError:
        pass


class TemporaryPostgres:
    """A PostgreSQL cluster of its own, from :meth:`start` to :meth:`stop` (or a ``with`` block).

    *port* ``None`` takes a free port of 127.0.0.1; *name* is the database
    that :attr:`url` names, created at start. The superuser is ``payflow``.
    """

    def __init__(self, *, port: int | None = None, name: str = "payflow") -> None:
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be between 1 and 65535, not {port}")
        if not name or len(name) > 63 or not set(name) <= NAME_CHARACTERS:
            raise ValueError(f"database name must be 1 to 63 letters, digits, '_' or '-', not {name!r}")
        self._requested_port = port
        self._name = name
        self._port: int | None = None
        self._directory: Path | None = None
        self._bin: Path | None = None
        self._owner: pwd.struct_passwd | None = None
        self._creator_pid = 0

    @property
    def url(self) -> str:
        """``postgresql://payflow@127.0.0.1:PORT/NAME``: TCP, so it works for every local user."""
        if self._port is None or self._directory is None:
            raise RuntimeError("TemporaryPostgres.url: the cluster is not running; call start() first")
        return f"postgresql://{USER}@127.0.0.1:{self._port}/{self._name}"

    @property
    def port(self) -> int | None:
        """The TCP port while running."""
        return self._port if self._directory is not None else None

    @property
    def directory(self) -> Path | None:
        """The temporary directory while running: ``data/``, ``server.log`` and the unix socket."""
        return self._directory

    def pid(self) -> int | None:
        """The postmaster's process id while it runs."""
        if self._directory is None:
            return None
        try:
            pid = int((self._directory / "data" / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def start(self) -> TemporaryPostgres:
        """Make the cluster, start it and create the database; a no-op while already running."""
        if self._directory is not None:
            return self
        self._bin = require_postgres()
        self._owner = _system_user()
        self._directory = Path(tempfile.mkdtemp(prefix="payflow-pg-"))
        self._creator_pid = os.getpid()
        atexit.register(self.stop)
        try:
            if self._owner is not None:
                os.chown(self._directory, self._owner.pw_uid, self._owner.pw_gid)
            self._initdb()
            self._start_server()
            if self._name != "postgres":
                self._run(
                    "createdb",
                    ["-h", "127.0.0.1", "-p", str(self._port), "-U", USER, self._name],
                    what=f"createdb {self._name}",
                    as_owner=False,
                )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server (immediate shutdown) and delete the directory; safe to call again."""
        directory = self._directory
        if directory is None or os.getpid() != self._creator_pid:
            return
        atexit.unregister(self.stop)
        pid = self.pid()
        if pid is not None:
            try:
                self._run("pg_ctl", ["stop", "-D", str(directory / "data"), "-m", "immediate", "-w", "-s"])
            except (OSError, RuntimeError):
                _signal(pid, signal.SIGQUIT)
            if not _wait_gone(pid, 10):
                _signal(pid, signal.SIGKILL)
                _wait_gone(pid, 5)
        shutil.rmtree(directory, ignore_errors=True)
        self._directory = None
        self._port = None

    def __enter__(self) -> TemporaryPostgres:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"url={self.url!r}, pid={self.pid()}" if self._directory is not None else "stopped"
        return f"<TemporaryPostgres {state}>"

    def _initdb(self) -> None:
        assert self._directory is not None
        data = self._directory / "data"
        self._run(
            "initdb",
            ["-D", str(data), "-U", USER, "--auth=trust", "--locale=C", "--encoding=UTF8", "--no-sync"],
            what="initdb",
        )
        settings = dict(SETTINGS, unix_socket_directories=str(self._directory))
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("\n# payflow_lab.durable.pgcluster: a throw-away cluster, fast and unsafe\n")
            conf.writelines(f"{key} = {_quoted(value)}\n" for key, value in settings.items())

    def _start_server(self) -> None:
        assert self._directory is not None
        log = self._directory / "server.log"
        attempts = 1 if self._requested_port is not None else BIND_ATTEMPTS
        for attempt in range(1, attempts + 1):
            self._port = self._requested_port or _free_port()
            log.unlink(missing_ok=True)
            try:
                self._run(
                    "pg_ctl",
                    ["start", "-D", str(self._directory / "data"), "-l", str(log), "-o", f"-p {self._port}"]
                    + ["-w", "-t", str(START_TIMEOUT_S), "-s"],
                    what=f"pg_ctl start (port {self._port})",
                    timeout=START_TIMEOUT_S + 30,
                )
                return
            except RuntimeError:
                if attempt == attempts or "Address already in use" not in _tail(log):
                    raise

    def _run(
        self, program: str, arguments: list[str], *, what: str = "", timeout: float = 120, as_owner: bool = True
    ) -> None:
        assert self._bin is not None and self._directory is not None
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env["LC_ALL"] = "C"
        switch = self._owner if as_owner else None
        if switch is not None:
            env.update(HOME=str(self._directory), USER=switch.pw_name, LOGNAME=switch.pw_name)
        try:
            done = subprocess.run(
                [str(self._bin / program), *arguments],
                cwd=self._directory,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                user=switch.pw_uid if switch else None,
                group=switch.pw_gid if switch else None,
                extra_groups=[] if switch else None,
            )
        except subprocess.TimeoutExpired as timed_out:
            raise RuntimeError(f"{what or program} took more than {timeout:g} s{self._log_tail()}") from timed_out
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()
            raise RuntimeError(f"{what or program} failed (exit {done.returncode}): {output}{self._log_tail()}")

    def _log_tail(self) -> str:
        assert self._directory is not None
        log = self._directory / "server.log"
        return f"\n--- server log ({log}), last lines ---\n{_tail(log)}" if log.exists() else ""
