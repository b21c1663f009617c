"""Start and stop the real server processes (Daphne, Celery, Redis) on loopback, for multi-process tests and bench/.

Shared by tests/scaleout, tests/multiprocess and the benchmark harness, so every one of them stops processes the
same careful way: SIGTERM, wait, then SIGKILL (a Daphne process here once stopped listening on SIGTERM but never
exited), and checks that a port is free before reusing it (a second server on a port an old one still holds would
silently split the load).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it; it can be taken again before use, so check on start)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Nothing listens on the port (connections in TIME_WAIT do not count: servers bind with SO_REUSEADDR too)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def port_accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def proc_rss_kib(pid: int) -> int:
    """Resident set size of one process (its children not included)."""
    with open(f"/proc/{pid}/statm") as handle:
        return int(handle.read().split()[1]) * PAGE_KIB


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _children_cpu_seconds(pid: int) -> float:
    """CPU time of pid's live child processes (Linux /proc); one that exits meanwhile counts 0."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children = [int(child) for child in task.read_text().split()]
        except OSError:  # the thread ended meanwhile
            continue
        for child in children:
            try:
                total += proc_cpu_seconds(child)
            except OSError:
                continue
    return total


@dataclass
class Proc:
    """One started process with its log file. Stop it with stop(); kill() simulates a crash."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def rss_kib(self) -> int:
        return proc_rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        """The process's CPU time plus its live children's (Celery's prefork pool runs tasks in children)."""
        return proc_cpu_seconds(self.pid) + _children_cpu_seconds(self.pid)

    def _signal_group(self, sig: int) -> None:
        # Each process is started in its own session: the group holds it and its children (Celery's pool), nothing else.
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL at once, like a crash: no clean-up runs in the process."""
        self._signal_group(signal.SIGKILL)
        self.popen.wait(timeout=10)
        self._close_log()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait up to `timeout`, then SIGKILL; afterwards the port (if any) is free again."""
        if self.alive():
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait(timeout=10)
        # Children (a Celery pool) may outlive their parent for a moment.
        self._signal_group(signal.SIGKILL)
        self._close_log()
        if self.port is not None:
            deadline = time.monotonic() + 5
            while not port_is_free(self.port) and time.monotonic() < deadline:
                time.sleep(0.05)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def stop_all(processes: Sequence[Proc], timeout: float = 5.0) -> None:
    """Stop several processes side by side: SIGTERM to all, one shared wait, then SIGKILL to the stragglers."""
    for proc in processes:
        if proc.alive():
            proc._signal_group(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in processes:
        try:
            proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in processes:
        proc.stop(timeout=0)


def start(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_dir: Path | None = None,
    port: int | None = None,
    cwd: Path = ROOT,
) -> Proc:
    if port is not None and not port_is_free(port):
        raise RuntimeError(f"port {port} is taken: refusing to start {name} beside another server")
    directory = log_dir or Path(tempfile.mkdtemp(prefix="procs-"))
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed by Proc.stop()/kill()
    popen = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Proc(name=name, popen=popen, log_path=log_path, port=port, _log=log)


def wait_until(proc: Proc, ready: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(
                f"{proc.name} exited ({proc.popen.returncode}) before {what}:\n{proc.log_text()[-3000:]}"
            )
        if ready():
            return
        time.sleep(0.05)
    proc.stop()
    raise RuntimeError(f"{proc.name} not {what} after {timeout:.0f} s:\n{proc.log_text()[-3000:]}")


def server_env(
    *,
    database_url: str,
    redis_url: str,
    prefix: str,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a production-like server process: DEBUG off, PostgreSQL + Redis, no HTTPS redirect (loopback)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DJANGO_SETTINGS"))}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DEBUG": "False",
            "SECRET_KEY": "multiprocess-test-secret-" + "k" * 40,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "ALLOWED_ORIGINS": "http://127.0.0.1,http://localhost",
            "SECURE_SSL_REDIRECT": "False",
            "WHATSAPP_APP_SECRET": "multiprocess-app-secret",
            "WHATSAPP_VERIFY_TOKEN": "multiprocess-verify-token",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "CHANNEL_LAYER_PREFIX": prefix,
            "LOG_FORMAT": "text",
            "LOG_LEVEL": "WARNING",
            "PYTHONHASHSEED": "0",
            "PYTHONUNBUFFERED": "1",
            # Load generators and tests send far faster than a person: the per-user API throttles would refuse them.
            "THROTTLE_SEND": "1000000/min",
            "THROTTLE_TICKET": "1000000/min",
            "THROTTLE_AUTH": "100000/min",
        }
    )
    env.pop("SQLITE_PATH", None)
    if extra:
        env.update(extra)
    return env


def start_daphne(
    env: Mapping[str, str],
    *,
    port: int | None = None,
    name: str = "daphne",
    app: str = "config.asgi:application",
    log_dir: Path | None = None,
    args: Sequence[str] = (),
    timeout: float = 30.0,
    wait: bool = True,
) -> Proc:
    """Daphne with the flags `make run` uses, listening on 127.0.0.1:port once this returns (unless wait=False:
    then call wait_listening() before using it, e.g. after starting several processes side by side)."""
    port = port or free_port()
    argv = [
        str(VENV_BIN / "daphne"),
        "-b",
        HOST,
        "-p",
        str(port),
        "--websocket-max-message-size",
        "65536",
        # A reconnect storm queues handshakes for longer than Daphne's default 5 s: the ones it dropped came back
        # as retries and fed the storm (docs/performance.md, M8). Same flag as the Procfile.
        "--websocket_connect_timeout",
        "30",
        *args,
        app,
    ]
    proc = start(name, argv, env=env, log_dir=log_dir, port=port)
    if wait:
        wait_listening(proc, timeout=timeout)
    return proc


def wait_listening(proc: Proc, *, timeout: float = 30.0) -> None:
    port = proc.port
    assert port is not None
    wait_until(proc, lambda: port_accepts(port), timeout=timeout, what=f"listening on {port}")


def wait_ready(proc: Proc, *, timeout: float = 40.0) -> None:
    """A Celery worker has logged that it consumes its queues."""
    wait_until(proc, lambda: " ready." in proc.log_text(), timeout=timeout, what="ready")


def start_celery(
    env: Mapping[str, str],
    *,
    queues: str = "inbound,default",
    name: str = "celery",
    pool: str = "solo",
    concurrency: int = 1,
    log_dir: Path | None = None,
    timeout: float = 40.0,
    wait: bool = True,
) -> Proc:
    """A Celery worker of the project; returns once it reports ready (consuming its queues) unless wait=False."""
    argv = [
        str(VENV_BIN / "celery"),
        "-A",
        "config",
        "worker",
        "-Q",
        queues,
        "-P",
        pool,
        "-c",
        str(concurrency),
        "-l",
        "info",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        f"{name}-{os.getpid()}@%h",
    ]
    proc = start(name, argv, env=env, log_dir=log_dir)
    if wait:
        wait_ready(proc, timeout=timeout)
    return proc


def start_redis(*, port: int | None = None, log_dir: Path | None = None, timeout: float = 10.0) -> Proc:
    """A private, non-persistent redis-server (like CI's) on its own port."""
    port = port or free_port()
    argv = ["redis-server", "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no"]
    argv += ["--maxclients", "10000"]
    proc = start("redis", argv, env=dict(os.environ), log_dir=log_dir, port=port)
    wait_until(proc, lambda: port_accepts(port), timeout=timeout, what=f"listening on {port}")
    return proc


def database_url_of(settings_dict: Mapping[str, Any]) -> str:
    """A postgres:// URL for the database Django is connected to (under pytest: the test database)."""
    user = settings_dict.get("USER") or ""
    password = settings_dict.get("PASSWORD") or ""
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = settings_dict.get("HOST") or HOST
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{auth}{host}:{port}/{settings_dict['NAME']}"
