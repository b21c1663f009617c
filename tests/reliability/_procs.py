"""Fault-test helpers: throwaway PostgreSQL and Redis to crash and restart, a fake Graph API, seeding, webhooks.

Daphne and Celery are started with Engineer E's tests/procs.py. PostgreSQL is not there, and Redis is restarted
here on the *same* port after a SIGKILL (tests/procs.py refuses a port that a bind test finds busy, which the
dead server's TIME_WAIT sockets make it for a while; redis-server itself binds with SO_REUSEADDR). Nothing here
touches the shared PostgreSQL (5432) or Redis (6379): every service is started on a free port, owned by the
test, and stopped by its own pid at the end.

Waiting: external processes cannot signal us, so readiness is polled (a short interval, always under a deadline);
everything that can be awaited (a WebSocket frame, a process exit) is awaited with a timeout instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests import procs

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
APP_SECRET = "fault-test-app-secret"  # the app processes' WHATSAPP_APP_SECRET
PASSWORD = "correct-horse-battery"


class ProcError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise ProcError(f"timed out after {timeout}s waiting for {what}")


def services_available() -> str | None:
    """None when redis-server and PostgreSQL's binaries are here, else what is missing."""
    if shutil.which("redis-server") is None:
        return "redis-server not installed"
    if not (PG_BIN / "initdb").exists() or not (PG_BIN / "pg_ctl").exists():
        return f"PostgreSQL binaries not found in {PG_BIN} (set PG_BIN)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "runuser not installed (initdb refuses to run as root)"
    return None


class Proc:
    """A child process with its output in a file; stopped by its own pid only."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.log_path = Path(tempfile.mkstemp(prefix=f"hF-{name}-", suffix=".log")[1])
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self, timeout: float = 10) -> None:
        """SIGKILL, and wait for it (the fault)."""
        if self.popen is None:
            return
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL after `timeout`; also ends children left in its process group (daphne, celery)."""
        if self.popen is None:
            return
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # the group we created with start_new_session, nothing else

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class RedisServer:
    """A private Redis with nothing on disk, to kill and restart at will."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = Proc(f"redis-{self.port}", argv).start()
        wait_until(lambda: port_open(self.port), timeout=10, what=f"redis on {self.port}")
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        wait_until(lambda: not port_open(self.port), timeout=5, what="redis to go away")

    def restart(self) -> None:
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class PostgresCluster:
    """A throwaway cluster in a temporary directory, on its own port, owned by the postgres user when we are root."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="hF-pg-"))
        self.data = self.dir / "data"
        self.socket_dir = self.dir / "sock"
        self.socket_dir.mkdir()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")

    def _run(self, argv: list[str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        if self.as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/tmp")
        if result.returncode != 0:
            raise ProcError(f"{' '.join(argv)} failed: {result.stdout}\n{result.stderr}")
        return result

    def init(self) -> PostgresCluster:
        self._run([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"])
        return self

    def start(self) -> PostgresCluster:
        opts = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.dir / "pg.log"), "-w", "start"]
        )
        return self

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (immediate: like a crash, every connection is cut)."""
        if (self.data / "postmaster.pid").exists():
            self._run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def psql(self, sql: str, db: str = "postgres") -> str:
        result = self._run(
            [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", db, "-Atc", sql]
        )
        return result.stdout.strip()

    def url(self, db: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def destroy(self) -> None:
        with contextlib.suppress(ProcError, subprocess.TimeoutExpired):
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def app_env(*, database_url: str, redis_url: str, prefix: str, **extra: str) -> dict[str, str]:
    """A production-like app process (tests/procs.server_env: DEBUG off) on our own services."""
    return procs.server_env(
        database_url=database_url,
        redis_url=redis_url,
        prefix=prefix,
        extra={
            "WHATSAPP_APP_SECRET": APP_SECRET,
            "AXES_FAILURE_LIMIT": "1000",  # many clients log in as one user from one IP
            "MEDIA_ROOT": tempfile.mkdtemp(prefix="hF-media-"),
            "LOG_LEVEL": "INFO",
            **extra,
        },
    )


def django_run(env: dict[str, str], code: str, *, timeout: float = 120) -> Any:
    """Run `code` in a fresh Django process with `env`; it must print one JSON document last; returns it parsed."""
    prelude = "import django, json\ndjango.setup()\n"
    result = subprocess.run(
        [str(BIN / "python"), "-c", prelude + code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise ProcError(f"django_run failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None


def migrate(env: dict[str, str], *, timeout: float = 300) -> None:
    result = subprocess.run(
        [str(BIN / "python"), "manage.py", "migrate", "--noinput"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise ProcError(f"migrate failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")


SEED = """
from accounts.models import User
from inbox.models import Contact, Conversation
from tenants.models import Membership, Role, Tenant, WhatsAppNumber
from tenants.scoping import scopes_disabled
from django.utils import timezone
import os
out = {}
graph = os.environ.get("SEED_GRAPH_TOKEN", "")
with scopes_disabled():
    for slug, user, pnid, wa in (("acme", "alice", "111000111", "4917000000001"),
                                 ("globex", "charlie", "222000222", "4917000000002")):
        t = Tenant.objects.create(slug=slug, name=slug.title())
        u = User.objects.create_user(username=user, password=os.environ["SEED_PASSWORD"], email=user + "@example.com")
        Membership.objects.create(tenant=t, user=u, role=Role.ADMIN)
        n = WhatsAppNumber.objects.create(tenant=t, phone_number_id=pnid, display_phone_number="1555" + pnid[:7],
                                          access_token=graph)
        c = Contact.objects.create(tenant=t, wa_id=wa, profile_name="Customer " + slug)
        conv = Conversation.objects.create(tenant=t, number=n, contact=c, last_inbound_at=timezone.now())
        out[slug] = {"tenant_id": t.pk, "user_id": u.pk, "username": user, "phone_number_id": pnid,
                     "wa_id": wa, "conversation_id": conv.pk, "number_id": n.pk}
print(json.dumps(out))
"""


def seed(env: dict[str, str], *, graph_token: str = "") -> dict[str, Any]:
    """Two tenants (acme/alice, globex/charlie), each with a number, a contact and an open conversation."""
    result = django_run({**env, "SEED_GRAPH_TOKEN": graph_token, "SEED_PASSWORD": PASSWORD}, SEED)
    assert isinstance(result, dict)
    return result


def daphne(port: int, env: dict[str, str], *, name: str = "daphne") -> procs.Proc:
    """Daphne as production runs it (tests/procs.py, Engineer E's helpers), with the frame size limit."""
    return procs.start_daphne(env, port=port, name=f"{name}-{port}", args=["--websocket-max-frame-size", "65536"])


def celery_worker(env: dict[str, str], *, name: str = "worker", queues: str = "inbound,default") -> procs.Proc:
    """One solo worker (one task at a time, in the worker's own process: SIGKILL kills the task mid-flight)."""
    return procs.start_celery(env, name=name, queues=queues, pool="solo")


# --- Meta-shaped webhooks ----------------------------------------------------------------------------------------


def text_webhook(phone_number_id: str, wa_id: str, wamids: list[str], *, text: str = "hello") -> bytes:
    """A messages webhook carrying one text message per wamid (Meta batches several)."""
    now = int(time.time())
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "WABA",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "15550001111", "phone_number_id": phone_number_id},
                            "contacts": [{"profile": {"name": "Customer"}, "wa_id": wa_id}],
                            "messages": [
                                {
                                    "from": wa_id,
                                    "id": wamid,
                                    "timestamp": str(now),
                                    "type": "text",
                                    "text": {"body": f"{text} {wamid}"},
                                }
                                for wamid in wamids
                            ],
                        },
                    }
                ],
            }
        ],
    }
    return json.dumps(body).encode()


def signature(body: bytes, secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- A fake Graph API on loopback ------------------------------------------------------------------------------------


@dataclass
class GraphCall:
    path: str
    body: dict[str, Any]
    at: float


@dataclass
class FakeGraph:
    """Answers POST /<version>/<phone_number_id>/messages like Meta; `mode` decides how.

    ok: 200 with a wamid · hang: never answers (until released) · hang-media: only media uploads hang ·
    error:<http>:<code>: Meta's error envelope.
    Every request is recorded *when it arrives*, before any answer: that is what "the request went out" means.
    """

    mode: str = "ok"
    calls: list[GraphCall] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeGraph:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {"raw": raw.decode(errors="replace")}
                fake.calls.append(GraphCall(path=self.path, body=body, at=time.monotonic()))
                fake.arrived.set()
                mode = fake.mode
                if mode == "hang" or (mode == "hang-media" and self.path.endswith("/media")):
                    fake.release.wait(timeout=120)
                    return  # close without an answer
                if self.path.endswith("/media"):
                    self._answer(200, {"id": f"media-{len(fake.calls)}"})
                    return
                if mode.startswith("error:"):
                    _, http, code = mode.split(":")
                    payload = {"error": {"message": "fake error", "code": int(code), "fbtrace_id": "x"}}
                    self._answer(int(http), payload)
                    return
                wamid = "wamid.FAKE" + hashlib.sha1(raw + str(len(fake.calls)).encode()).hexdigest()[:24].upper()
                self._answer(200, {"messaging_product": "whatsapp", "messages": [{"id": wamid}]})

            def _answer(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def sends(self) -> list[GraphCall]:
        return [c for c in self.calls if c.path.endswith("/messages") and c.body.get("type") != "reaction"]


@dataclass
class Stack:
    """One test's world: its own database and Redis, the env for app processes, and the seeded ids."""

    pg: PostgresCluster
    db: str
    redis: RedisServer
    env: dict[str, str]
    data: dict[str, Any]
    procs: list[procs.Proc | Proc] = field(default_factory=list)

    def sql(self, query: str) -> str:
        return self.pg.psql(query, db=self.db)

    def count(self, query: str) -> int:
        return int(self.sql(query) or 0)

    def own(self, proc: procs.Proc) -> procs.Proc:
        self.procs.append(proc)
        return proc

    def wait_for(self, predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(interval)
        logs = "\n".join(f"--- {p.name}\n{p.log_text()[-2500:]}" for p in self.procs)
        raise ProcError(f"timed out after {timeout}s waiting for {what}\n{logs}")
