#!/usr/bin/env python3
"""Run the whole scheduler stack in one terminal: Valkey, API, workers, dashboard.

    python scripts/stack.py [--workers N] [--no-dashboard] [--api-port P] ...

Start order: Valkey (embedded, unless REDIS_URL is set) -> API (waits for
GET /health == 200) -> workers -> dashboard.  Ctrl-C or SIGTERM stops
everything in reverse dependency order (workers first, so they can finish
gracefully while the API and Redis are still up) and exits 0.  If any
process dies on its own, the rest is stopped and the exit status is 1.

Every child runs in its own session, so a Ctrl-C in the terminal reaches
only this script, which then decides the shutdown order.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import httpx

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))  # run as a script: make `app` importable

from app.utils.embedded_servers import (  # noqa: E402
    EmbeddedServerError,
    ValkeyServer,
    parent_death_preexec,
)
from app.utils.redact import mask_url  # noqa: E402

API_START_TIMEOUT = 60.0  # cold start on a small machine imports a lot
DASHBOARD_START_TIMEOUT = 60.0  # not fatal: the URL is printed anyway
WORKER_STOP_TIMEOUT = 35.0  # > the worker's own 30 s drain grace period
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.2


def say(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- #
# Configuration
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class Config:
    api_host: str
    api_port: int
    redis_port: int
    external_redis_url: str | None
    dashboard_port: int
    data_dir: Path
    custom_data_dir: bool
    workers: int
    dashboard: bool

    @property
    def api_url(self) -> str:
        """URL clients use: a wildcard bind address is reached via loopback."""
        return f"http://{_client_host(self.api_host)}:{self.api_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{_client_host(self.api_host)}:{self.dashboard_port}"


def _client_host(bind_host: str) -> str:
    return "127.0.0.1" if bind_host in ("", "0.0.0.0", "::") else bind_host


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="worker nodes (default 2)")
    parser.add_argument("--no-dashboard", action="store_true", help="do not start Streamlit")
    parser.add_argument(
        "--api-host",
        default=os.environ.get("API_HOST") or "127.0.0.1",
        help="bind address (env API_HOST; now %(default)s)",
    )
    parser.add_argument(
        "--api-port",
        type=int,
        default=_env_int("API_PORT", 8000),
        help="env API_PORT; now %(default)s",
    )
    parser.add_argument(
        "--redis-port",
        type=int,
        default=_env_int("REDIS_PORT", 6380),
        help="embedded Valkey (env REDIS_PORT; now %(default)s); not started if REDIS_URL is set",
    )
    parser.add_argument(
        "--dashboard-port",
        type=int,
        default=_env_int("DASHBOARD_PORT", 8501),
        help="env DASHBOARD_PORT; now %(default)s",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="Valkey data (and the SQLite file, unless DATABASE_URL is set); default ./data",
    )
    args = parser.parse_args(argv)
    if args.workers < 0:
        parser.error("--workers must be >= 0")
    return Config(
        api_host=args.api_host,
        api_port=args.api_port,
        redis_port=args.redis_port,
        external_redis_url=os.environ.get("REDIS_URL") or None,
        dashboard_port=args.dashboard_port,
        data_dir=(args.data_dir or PROJECT_ROOT / "data").resolve(),
        custom_data_dir=args.data_dir is not None,
        workers=args.workers,
        dashboard=not args.no_dashboard,
    )


# --------------------------------------------------------------------------- #
# Child processes
# --------------------------------------------------------------------------- #


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    stop_timeout: float

    def has_exited(self) -> bool:
        """Exit check that leaves the zombie unreaped, so its pid (== its
        process group id) cannot be recycled before we SIGKILL the group."""
        if self.proc.returncode is not None:
            return True
        try:
            result = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return result is not None

    def kill_group_and_reap(self) -> int:
        """SIGKILL stragglers and leftovers (e.g. pool processes); return the exit code."""
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.proc.wait()


def spawn(name: str, cmd: list[str], env: dict[str, str], stop_timeout: float) -> Child:
    say(f"starting {name}: {' '.join(cmd)}")
    proc = subprocess.Popen(
        cmd,
        cwd=PROJECT_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,  # output is inherited: it goes to this terminal
        start_new_session=True,  # Ctrl-C reaches only us; we order the shutdown
        # If this script is SIGKILLed, children still get SIGTERM from the kernel.
        preexec_fn=parent_death_preexec(signal.SIGTERM) if sys.platform == "linux" else None,
    )
    return Child(name, proc, stop_timeout)


def _port_busy(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


# --------------------------------------------------------------------------- #
# The stack
# --------------------------------------------------------------------------- #


class Stack:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.valkey: ValkeyServer | None = None
        self.redis_url = config.external_redis_url or ""
        self.api: Child | None = None
        self.workers: list[Child] = []
        self.dashboard: Child | None = None
        self.stop_signal: int | None = None  # set by the signal handler
        self.hurry = False  # a second signal during shutdown: kill at once

    # -- signals ----------------------------------------------------------- #

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only flags here: the main loop does the work (no re-entrancy issues).
        if self.stop_signal is None:
            self.stop_signal = signum
        else:
            self.hurry = True

    @property
    def interrupted(self) -> bool:
        return self.stop_signal is not None

    # -- startup ------------------------------------------------------------ #

    def start(self) -> bool:
        """Start everything; False if a step failed or we were interrupted."""
        steps: list[Callable[[], bool]] = [
            self._check_ports,
            self._start_valkey,
            self._start_api,
            self._start_workers,
            self._start_dashboard,
        ]
        return all(step() and not self.interrupted for step in steps)

    def _check_ports(self) -> bool:
        cfg = self.config
        wanted = [("API", cfg.api_host, cfg.api_port, "API_PORT / --api-port")]
        if cfg.external_redis_url is None:
            wanted.append(("Valkey", "127.0.0.1", cfg.redis_port, "REDIS_PORT / --redis-port"))
        if self._dashboard_enabled():
            wanted.append(
                ("dashboard", cfg.api_host, cfg.dashboard_port, "DASHBOARD_PORT / --dashboard-port")
            )
        busy = [w for w in wanted if _port_busy(w[1], w[2])]
        for what, host, port, knob in busy:
            say(f"{what} port {host}:{port} is in use (another stack running?); set {knob}")
        return not busy

    def _start_valkey(self) -> bool:
        if self.config.external_redis_url is not None:
            say(f"using external Redis from REDIS_URL: {mask_url(self.redis_url)}")
            return True
        self.valkey = ValkeyServer(
            self.config.data_dir / "valkey",
            self.config.redis_port,
            appendonly=True,
            parent_death_signal=signal.SIGTERM,
        )
        say(f"starting Valkey on port {self.config.redis_port} (data in {self.valkey.data_dir})")
        try:
            self.valkey.start()
        except EmbeddedServerError as exc:
            say(str(exc))
            return False
        self.redis_url = self.valkey.url
        return True

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["REDIS_URL"] = self.redis_url
        env["API_URL"] = self.config.api_url
        env["PYTHONUNBUFFERED"] = "1"  # logs show up in the terminal promptly
        # `python worker/worker_node.py` puts worker/ first on sys.path, not the root.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
        )
        if self.config.custom_data_dir and not env.get("DATABASE_URL"):
            # Keep an isolated stack fully inside its data dir (the app's own
            # default is ./data/scheduler.db).
            env["DATABASE_URL"] = f"sqlite:///{self.config.data_dir / 'scheduler.db'}"
        return env

    def _start_api(self) -> bool:
        cfg = self.config
        # app.main's own entry point: uvicorn with the header and connection limits of Settings.
        cmd = [sys.executable, "-m", "app.main"]
        cmd += ["--host", cfg.api_host, "--port", str(cfg.api_port)]
        self.api = spawn("api", cmd, self._child_env(), STOP_TIMEOUT)
        ok = self._wait_http(f"{cfg.api_url}/health", self.api, API_START_TIMEOUT)
        if self.api.has_exited():
            say(f"the API exited during startup (exit code {self.api.kill_group_and_reap()})")
        elif not ok and not self.interrupted:
            say(f"the API did not answer 200 at {cfg.api_url}/health in {API_START_TIMEOUT:.0f} s")
        return ok

    def _start_workers(self) -> bool:
        env = self._child_env()
        for n in range(1, self.config.workers + 1):
            cmd = [sys.executable, "worker/worker_node.py", "--worker-id", f"worker-{n}"]
            cmd += ["--api-url", self.config.api_url]
            self.workers.append(spawn(f"worker-{n}", cmd, env, WORKER_STOP_TIMEOUT))
        return True

    def _dashboard_enabled(self) -> bool:
        return self.config.dashboard and (PROJECT_ROOT / "streamlit_app.py").is_file()

    def _start_dashboard(self) -> bool:
        if not self._dashboard_enabled():
            if self.config.dashboard:
                say("streamlit_app.py not found: no dashboard")
            return True
        cfg = self.config
        cmd = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py"]
        cmd += ["--server.port", str(cfg.dashboard_port), "--server.headless", "true"]
        cmd += ["--server.address", cfg.api_host, "--browser.gatherUsageStats", "false"]
        self.dashboard = spawn("dashboard", cmd, self._child_env(), STOP_TIMEOUT)
        health = f"{cfg.dashboard_url}/_stcore/health"
        ready = self._wait_http(health, self.dashboard, DASHBOARD_START_TIMEOUT)
        if not ready and not self.dashboard.has_exited() and not self.interrupted:
            say("the dashboard is slow to start; carrying on")
        return True  # a dashboard that died is reported by the monitor loop

    def _wait_http(self, url: str, child: Child, timeout: float) -> bool:
        """Poll ``url`` until it answers 200; give up if ``child`` dies or on a signal."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline and not self.interrupted:
                if child.has_exited():
                    return False  # reported by the caller / the monitor loop
                try:
                    if client.get(url).status_code == 200:
                        return True
                except httpx.HTTPError:
                    pass  # not listening yet
                time.sleep(POLL_INTERVAL)
        return False

    # -- running -------------------------------------------------------------- #

    def children(self) -> list[Child]:
        optional = [self.api, self.dashboard]
        return self.workers + [c for c in optional if c is not None]

    def dead_component(self) -> str | None:
        """Describe a component that exited on its own, if any."""
        for child in self.children():
            if child.has_exited():
                return f"{child.name} exited unexpectedly (exit code {child.kill_group_and_reap()})"
        if self.valkey is not None and not self.valkey.is_running():
            return f"valkey exited unexpectedly (see {self.valkey.log_file})"
        return None

    def monitor(self) -> int:
        """Block until a signal (exit 0) or an unexpected death (exit 1)."""
        while not self.interrupted:
            dead = self.dead_component()
            if dead is not None:
                say(f"{dead}; stopping everything")
                return 1
            time.sleep(POLL_INTERVAL)
        self.announce_stop()
        return 0

    def announce_stop(self) -> None:
        name = signal.Signals(self.stop_signal or signal.SIGINT).name
        say(f"received {name}; stopping (press Ctrl-C again to kill at once)")

    # -- shutdown -------------------------------------------------------------- #

    def shutdown(self) -> None:
        """Workers first (they drain), then dashboard, API and Valkey."""
        for group in (self.workers, [self.dashboard], [self.api]):
            self._stop_children([c for c in group if c is not None])
        if self.valkey is not None:
            if self.valkey.is_running():
                say("stopping valkey")
            self.valkey.stop(timeout=0 if self.hurry else STOP_TIMEOUT)

    def _stop_children(self, children: list[Child]) -> None:
        running = [c for c in children if not c.has_exited()]
        if running:
            say(f"stopping {', '.join(c.name for c in running)}")
        for child in running:
            # The leader only (it drains its own pool); os.kill, unlike
            # Popen.send_signal, never reaps, so the pgid stays ours.
            os.kill(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + max((c.stop_timeout for c in running), default=0)
        while any(not c.has_exited() for c in running):
            if self.hurry or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        for child in children:
            if not child.has_exited():
                say(f"{child.name} did not stop in time; killing it")
            child.kill_group_and_reap()

    def banner(self) -> str:
        cfg = self.config
        redis = mask_url(self.redis_url) + ("" if self.valkey is None else "  (embedded Valkey)")
        rows = [
            ("API", cfg.api_url),
            ("API docs", f"{cfg.api_url}/docs"),
            ("Dashboard", cfg.dashboard_url if self.dashboard is not None else "(not started)"),
            ("Redis", redis),
            ("Workers", ", ".join(c.name for c in self.workers) or "(none)"),
            ("Data", str(cfg.data_dir)),
        ]
        line = "=" * 72
        body = "\n".join(f"  {label:<10} {value}" for label, value in rows)
        return f"{line}\n  Task scheduler stack is up\n{body}\n  Press Ctrl-C to stop.\n{line}"


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    stack = Stack(config)
    signal.signal(signal.SIGINT, stack.on_signal)
    signal.signal(signal.SIGTERM, stack.on_signal)
    code = 1
    try:
        if stack.start():
            print(stack.banner(), flush=True)
            code = stack.monitor()
        elif stack.interrupted:
            stack.announce_stop()
            code = 0  # stopped by the user during startup
    finally:
        stack.shutdown()
        say("all stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
