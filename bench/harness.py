"""The benchmark harness: services on loopback, seed data, tickets, a light HTTP client, WebSocket clients, stats.

One asyncio process generates all the load (sender and receivers share `time.perf_counter()`, so there is no clock
skew). Servers are separate processes started through tests/procs.py (SIGTERM, then SIGKILL, port checks).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tests import procs

ROOT = procs.ROOT
RESULTS = ROOT / "bench" / "results"
PASSWORD = "bench-password-not-secret"
APP_SECRET = "bench-app-secret"
PREFIX = "bench"


# --- statistics ------------------------------------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "p99": pct(values, 99),
        "max": max(values) if values else float("nan"),
    }


def ms(seconds: float) -> float:
    return seconds * 1000.0


# --- results ---------------------------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    metric: str
    value: float | str
    unit: str = ""
    baseline: float | None = None
    ratio_name: str = ""
    ratio: float | None = None
    target: str = ""
    ok: bool | None = None
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    baselines: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print("  " + format_row(row), flush=True)
        return row

    def table(self) -> str:
        lines = [
            "| scen | metric | value | baseline (same run) | ratio | target | met |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.scenario} | {r.metric} | {fmt(r.value)} {r.unit} | {fmt(r.baseline)} | "
                f"{(r.ratio_name + ' = ' + fmt(r.ratio)) if r.ratio is not None else ''} | {r.target} | "
                f"{'' if r.ok is None else ('yes' if r.ok else '**no**')} |" + (f" {r.note}" if r.note else "")
            )
        return "\n".join(lines)

    def save(self, name: str) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{name}.md"
        head = "\n".join(f"- {k}: {v}" for k, v in self.meta.items())
        path.write_text(f"# bench run {name}\n\n{head}\n\n{self.table()}\n")
        (RESULTS / f"{name}.json").write_text(
            json.dumps(
                {"meta": self.meta, "baselines": self.baselines, "rows": [r.__dict__ for r in self.rows]}, indent=1
            )
        )
        return path


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:  # nan
            return "n/a"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def format_row(r: Row) -> str:
    ratio = f"  {r.ratio_name}={fmt(r.ratio)}" if r.ratio is not None else ""
    base = f"  (baseline {fmt(r.baseline)})" if r.baseline is not None else ""
    target = f"  target {r.target}: {'ok' if r.ok else 'MISSED'}" if r.ok is not None else ""
    return f"{r.scenario:4} {r.metric:44} {fmt(r.value):>10} {r.unit}{base}{ratio}{target} {r.note}"


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "loadavg_at_start": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        "python": sys.version.split()[0],
        "fd_limit": os.sysconf("SC_OPEN_MAX"),
    }


# --- services ----------------------------------------------------------------------------------------------------


@dataclass
class Services:
    database_url: str
    redis_url: str
    redis: procs.Proc | None
    log_dir: Path
    started: list[procs.Proc] = field(default_factory=list)
    count: int = 0

    def env(self, **extra: str) -> dict[str, str]:
        env = procs.server_env(
            database_url=self.database_url,
            redis_url=self.redis_url,
            prefix=PREFIX,
            extra={"DJANGO_SETTINGS_MODULE": "bench.settings", "WHATSAPP_APP_SECRET": APP_SECRET, **extra},
        )
        return env

    def _name(self, name: str) -> str:
        self.count += 1  # one log file per process started in this run
        return f"{time.strftime('%H%M%S')}-{self.count:02d}-{name}"

    def daphne(self, name: str = "daphne", **extra: str) -> procs.Proc:
        proc = procs.start_daphne(
            self.env(**extra), name=self._name(name), app="bench.asgi:application", log_dir=self.log_dir
        )
        self.started.append(proc)
        return proc

    def celery(self, name: str = "celery", queues: str = "inbound", concurrency: int = 1) -> procs.Proc:
        pool = "solo" if concurrency == 1 else "prefork"
        proc = procs.start_celery(
            self.env(), queues=queues, name=self._name(name), pool=pool, concurrency=concurrency, log_dir=self.log_dir
        )
        self.started.append(proc)
        return proc

    def stop(self, proc: procs.Proc) -> None:
        proc.stop()
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()
        self.started.clear()
        if self.redis is not None:
            self.redis.stop()


def services_up() -> Services:
    """A private Redis on a free port, the bench database migrated, and Django set up in this process."""
    log_dir = Path(os.environ.get("BENCH_LOG_DIR") or (ROOT / "bench" / "results" / "logs"))
    log_dir.mkdir(parents=True, exist_ok=True)
    database_url = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/inbox_bench")
    name = database_url.rsplit("/", 1)[1]
    admin_url = database_url.rsplit("/", 1)[0] + "/postgres"
    exists = subprocess.run(
        ["psql", admin_url, "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if exists != "1":
        subprocess.run(["psql", admin_url, "-qc", f'CREATE DATABASE "{name}"'], check=True)
    redis = procs.start_redis(log_dir=log_dir)
    services = Services(
        database_url=database_url, redis_url=f"redis://127.0.0.1:{redis.port}/0", redis=redis, log_dir=log_dir
    )
    env = services.env()
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True)
    os.environ.update({k: v for k, v in env.items() if k not in ("PYTHONUNBUFFERED",)})
    import django

    django.setup()
    return services


def reset_data(services: Services) -> None:
    """Empty every table the app writes (fresh ids) and the private Redis."""
    from django.db import connection

    keep = {"django_migrations", "django_content_type", "auth_permission"}
    tables = [t for t in connection.introspection.django_table_names(only_existing=True) if t not in keep]
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")
    import redis

    redis.Redis.from_url(services.redis_url).flushall()


# --- seed data (Django ORM in this process; scopes disabled: this is set-up, like a management command) -------


@dataclass
class TenantSeed:
    id: int
    slug: str
    user_ids: list[int]
    usernames: list[str]
    number_id: int
    phone_number_id: str
    conversation_ids: list[int]
    contact_wa_ids: list[str]


def seed_tenant(slug: str, *, users: int, conversations: int, index: int = 0) -> TenantSeed:
    from django.contrib.auth.hashers import make_password
    from django.utils import timezone

    from accounts.models import User
    from inbox.models import Contact, Conversation
    from tenants.models import Membership, Role, Tenant, WhatsAppNumber
    from tenants.scoping import scopes_disabled

    password_hash = _password_hash(make_password)
    with scopes_disabled():
        tenant = Tenant.objects.create(slug=slug, name=slug.title())
        made = User.objects.bulk_create(
            [
                User(username=f"{slug}-agent{i}", email=f"{slug}-agent{i}@bench.invalid", password=password_hash)
                for i in range(users)
            ]
        )
        Membership.objects.bulk_create(
            [Membership(tenant=tenant, user=u, role=Role.ADMIN if i == 0 else Role.AGENT) for i, u in enumerate(made)]
        )
        phone_number_id = f"{900000000 + index}"
        number = WhatsAppNumber.objects.create(
            tenant=tenant, phone_number_id=phone_number_id, display_phone_number=f"1555{index:07d}"
        )
        wa_ids = [f"49{index:03d}{i:07d}" for i in range(conversations)]
        contacts = Contact.objects.bulk_create(
            [Contact(tenant=tenant, wa_id=w, profile_name=f"Customer {i}") for i, w in enumerate(wa_ids)]
        )
        now = timezone.now()
        convs = Conversation.objects.bulk_create(
            [Conversation(tenant=tenant, number=number, contact=c, last_inbound_at=now) for c in contacts]
        )
        _seed_history(tenant, number, convs, made[0], now)
    return TenantSeed(
        id=tenant.pk,
        slug=slug,
        user_ids=[u.pk for u in made],
        usernames=[u.username for u in made],
        number_id=number.pk,
        phone_number_id=phone_number_id,
        conversation_ids=[c.pk for c in convs],
        contact_wa_ids=wa_ids,
    )


HISTORY_PER_CONVERSATION = 10


def _seed_history(tenant: Any, number: Any, convs: Sequence[Any], agent: Any, now: datetime) -> None:
    """Past messages in every seeded conversation (half inbound, half sent by an agent, each with its wamid), so the
    tables the scenarios write to are not empty, as in a running inbox. Rows only: no events, so `seq` starts at 0
    and the scenarios' gap checks are unchanged."""
    from inbox.models import Direction, Message, MessageStatus

    rows = []
    for conv in convs:
        for k in range(HISTORY_PER_CONVERSATION):
            inbound = k % 2 == 0
            at = now - timedelta(minutes=HISTORY_PER_CONVERSATION - k)
            rows.append(
                Message(
                    tenant=tenant,
                    conversation=conv,
                    number=number,
                    direction=Direction.INBOUND if inbound else Direction.OUTBOUND,
                    sender=None if inbound else agent,
                    text=f"earlier message {k}",
                    wa_message_id=f"wamid.HIST{conv.pk}.{k}",
                    status=MessageStatus.READ,
                    wa_timestamp=at,
                )
            )
    Message.objects.bulk_create(rows, batch_size=2000)


def analyze() -> None:
    """Planner statistics for every table, after seeding: TRUNCATE throws them away, and a PostgreSQL that has never
    analyzed a table plans as if it held a few rows (a message lookup by wamid then walked the tenant's index instead
    of the unique one, ~3 ms of PostgreSQL CPU per inbound message by 2,000 messages). Production tables have
    statistics (autovacuum), so the scenarios measure with them."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")


_HASH: list[str] = []


def _password_hash(make_password: Callable[[str], str]) -> str:
    if not _HASH:
        _HASH.append(make_password(PASSWORD))  # hashing is slow by design: once, shared by every bench user
    return _HASH[0]


def mint_tickets(tenant_id: int, user_ids: Sequence[int]) -> list[str]:
    """Single-use socket tickets, as tenants.tickets.ticket_issue makes them, in one INSERT (thousands per second).

    The REST endpoint (/ws-ticket/) issues them one per request; M1 and the scale-out check go through it. Mass
    connection scenarios mint directly so that what they measure is the WebSocket server, not ticket issuance.
    """
    from django.utils import timezone

    from tenants.models import SocketTicket
    from tenants.scoping import scopes_disabled
    from tenants.tickets import TICKET_TTL

    tokens = [secrets.token_urlsafe(32) for _ in user_ids]
    expires = timezone.now() + TICKET_TTL + timedelta(seconds=0)
    rows = [
        SocketTicket(
            tenant_id=tenant_id, user_id=uid, token_hash=hashlib.sha256(t.encode()).hexdigest(), expires_at=expires
        )
        for t, uid in zip(tokens, user_ids, strict=True)
    ]
    with scopes_disabled():
        SocketTicket.objects.bulk_create(rows, batch_size=2000)
    return tokens


async def amint(tenant_id: int, user_ids: Sequence[int]) -> list[str]:
    return await asyncio.to_thread(_closing(mint_tickets), tenant_id, list(user_ids))


def _closing(fn: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        from django.db import close_old_connections

        try:
            return fn(*args)
        finally:
            close_old_connections()

    return run


def db_head(tenant_id: int) -> int:
    from inbox.models import EventSequence
    from tenants.scoping import scopes_disabled

    with scopes_disabled():
        row = EventSequence.objects.filter(tenant_id=tenant_id).values_list("last_seq", flat=True).first()
    return int(row or 0)


async def adb_head(tenant_id: int) -> int:
    return int(await asyncio.to_thread(_closing(db_head), tenant_id))


# --- a small keep-alive HTTP/1.1 client (cheaper per request than a general-purpose one) ------------------------


class HttpConn:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        reused = self.writer is not None and not self.writer.is_closing()
        try:
            return await self._request(method, path, body=body, headers=headers)
        except (ConnectionError, asyncio.IncompleteReadError):
            if not reused:
                raise
            # The server closed an idle keep-alive connection before reading this request: send it again once.
            self.close()
            return await self._request(method, path, body=body, headers=headers)

    async def _request(
        self, method: str, path: str, *, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(procs.HOST, self.port)
        assert self.reader is not None and self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        self.writer.write(head.encode("latin1") + b"\r\n" + body)
        status_line = await self.reader.readline()
        if not status_line:
            self.writer.close()
            self.writer = None
            raise ConnectionError("connection closed by server")
        status = int(status_line.split()[1])
        length = -1
        chunked = close = False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "connection" and "close" in value.lower():
                close = True
        if chunked:
            data = b""
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readline()
                    break
                data += await self.reader.readexactly(size)
                await self.reader.readline()
        elif length >= 0:
            data = await self.reader.readexactly(length)
        else:
            data = await self.reader.read()
            close = True
        if close:
            self.writer.close()
            self.writer = None
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class HttpPool:
    """Keep-alive connections handed out one request at a time; grows when all are busy (open-loop senders)."""

    def __init__(self, port: int, size: int = 4, max_size: int = 64) -> None:
        self.port = port
        self.idle: list[HttpConn] = [HttpConn(port) for _ in range(size)]
        self.total = size
        self.max_size = max_size
        self.available = asyncio.Condition()

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
        async with self.available:
            while not self.idle and self.total >= self.max_size:
                await self.available.wait()
            if self.idle:
                conn = self.idle.pop()
            else:
                conn = HttpConn(self.port)
                self.total += 1
        try:
            return await conn.request(method, path, **kwargs)
        except Exception:
            conn.close()
            raise
        finally:
            async with self.available:
                self.idle.append(conn)
                self.available.notify()

    def close(self) -> None:
        for conn in self.idle:
            conn.close()


async def jwt_for(pool: HttpPool, username: str, password: str = PASSWORD) -> str:
    status, body = await pool.request(
        "POST",
        "/api/auth/token/",
        body=json.dumps({"username": username, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    if status != 200:
        raise RuntimeError(f"token for {username}: HTTP {status} {body[:300]!r}")
    return str(json.loads(body)["access"])


async def rest_ticket(pool: HttpPool, token: str, slug: str) -> str:
    status, body = await pool.request(
        "POST", f"/api/tenants/{slug}/ws-ticket/", headers={"Authorization": f"Bearer {token}"}
    )
    if status != 201:
        raise RuntimeError(f"ticket: HTTP {status} {body[:300]!r}")
    return str(json.loads(body)["ticket"])


def webhook_body(phone_number_id: str, wa_id: str, wamid: str, text: str) -> bytes:
    body = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "bench-waba",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone_number_id},
                            "contacts": [{"profile": {"name": "Bench Customer"}, "wa_id": wa_id}],
                            "messages": [
                                {
                                    "from": wa_id,
                                    "id": wamid,
                                    "timestamp": str(int(time.time())),
                                    "type": "text",
                                    "text": {"body": text},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def signature(raw: bytes, secret: str = APP_SECRET) -> str:
    import hmac

    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


# --- WebSocket clients -----------------------------------------------------------------------------------------


class Sock:
    """One authenticated inbox socket that records every frame's seq (M10) and hands frames to a hook."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.ws: ClientConnection | None = None
        self.head = 0  # seq in hello
        self.hello: dict[str, Any] = {}
        self.seqs: list[int] = []
        self.types: Counter[str] = Counter()
        self.hook: Callable[[Sock, dict[str, Any], float], None] | None = None
        self.reader: asyncio.Task[None] | None = None
        self.closed_code: int | None = None
        self.synced = asyncio.Event()
        self.frames_received = 0
        self.keep = False  # keep every frame (tests), not only counts and seqs
        self.frames: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()

    async def open(
        self, port: int, slug: str, ticket: str, *, sock: socket.socket | None = None, sync: bool = True
    ) -> float:
        """Connect and wait for hello; returns the handshake time (connect → hello) in seconds.

        Then, like every client (PROTOCOL.md), send `sync` from the hello head: the server holds live durable frames
        back until a socket's first sync (or a few seconds without one). Pass sync=False to send a sync yourself."""
        start = time.perf_counter()
        uri = f"ws://127.0.0.1:{port}/ws/tenants/{slug}/?ticket={ticket}"
        kwargs: dict[str, Any] = {"compression": None, "ping_interval": None, "open_timeout": 30, "max_size": 2**20}
        if sock is not None:
            kwargs["sock"] = sock
        self.ws = await connect(uri, **kwargs)
        hello = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
        if hello.get("type") != "hello":
            raise RuntimeError(f"expected hello, got {hello}")
        self.hello = hello
        self.head = int(hello["data"]["seq"])
        elapsed = time.perf_counter() - start
        self.reader = asyncio.create_task(self._read())
        if sync:
            await self.send("sync", {"since": self.head})
        return elapsed

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                now = time.perf_counter()
                frame = json.loads(raw)
                self.frames_received += 1
                type_ = frame.get("type")
                self.types[type_] += 1
                seq = frame.get("seq")
                if seq is not None:
                    self.seqs.append(int(seq))
                elif type_ == "sync:done":
                    self.synced.set()
                if self.keep:
                    self.frames.append(frame)
                if self.hook is not None:
                    self.hook(self, frame, now)
                self._arrived.set()
        except Exception:
            pass
        finally:
            if self.ws is not None:
                self.closed_code = self.ws.close_code
            self._arrived.set()

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """The first kept frame matching `predicate`, awaiting new frames until `timeout` (needs keep=True)."""
        deadline = time.perf_counter() + timeout
        checked = 0
        while True:
            for frame in self.frames[checked:]:
                if predicate(frame):
                    return frame
            checked = len(self.frames)
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or (self.reader is not None and self.reader.done()):
                raise TimeoutError(f"no matching frame on {self.name} after {timeout} s (closed: {self.closed_code})")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                pass

    async def closed(self, timeout: float) -> int | None:
        """Wait until the server closes this socket; its close code."""
        if self.reader is not None:
            await asyncio.wait_for(asyncio.shield(self.reader), timeout)
        return self.closed_code

    async def send(self, type_: str, data: dict[str, Any] | None = None) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps({"type": type_, "data": data or {}}))

    async def close(self) -> None:
        if self.ws is not None:
            try:
                await asyncio.wait_for(self.ws.close(), 5)
            except Exception:
                pass
        if self.reader is not None:
            self.reader.cancel()

    def last_seq(self) -> int:
        return self.seqs[-1] if self.seqs else self.head

    def check(self, upto: int | None = None, start: int | None = None) -> tuple[int, int]:
        """(gaps, duplicates) of the durable seqs received after `start` (default: the hello head).

        A gap is a seq missing below the highest one received (capped at `upto`): a hole, which a client would
        never notice. A duplicate counts every frame whose seq is not above all before it (repeated or out of
        order). Seqs not received yet at all are `behind()`, not gaps.
        """
        base = self.head if start is None else start
        seen = [s for s in self.seqs if s > base]
        dups = 0
        top = base
        for seq in seen:
            if seq <= top:
                dups += 1
            top = max(top, seq)
        if upto is not None:
            top = min(top, upto)
        gaps = len(set(range(base + 1, top + 1)) - set(seen))
        return gaps, dups

    def behind(self, upto: int) -> int:
        """How many seqs up to `upto` were never received after the highest one received."""
        return max(0, upto - max(self.last_seq(), self.head))


def seq_check(socks: Iterable[Sock], upto: int) -> tuple[int, int, int]:
    """(gaps, duplicates, seqs not delivered by now) summed over sockets that should have received every event."""
    gaps = dups = behind = 0
    for s in socks:
        g, d = s.check(upto)
        gaps += g
        dups += d
        behind += s.behind(upto)
    return gaps, dups, behind


OPEN_ERRORS: Counter[str] = Counter()  # why handshakes failed, over the whole run (reported by run.py)


async def open_many(
    port: int,
    slug: str,
    tickets: Sequence[str],
    *,
    concurrency: int = 50,
    rate: float | None = None,
    names: Sequence[str] | None = None,
) -> tuple[list[Sock], list[float], int]:
    """Open one socket per ticket (bounded concurrency, optional ramp rate); returns (sockets, handshakes, failures)."""
    socks: list[Sock] = []
    times: list[float] = []
    failures = 0
    gate = asyncio.Semaphore(concurrency)
    start = time.perf_counter()

    async def one(i: int, ticket: str) -> None:
        nonlocal failures
        if rate:
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        async with gate:
            s = Sock(names[i] if names else str(i))
            try:
                times.append(await s.open(port, slug, ticket))
                socks.append(s)
            except Exception as exc:
                failures += 1
                OPEN_ERRORS[type(exc).__name__] += 1
                await s.close()

    await asyncio.gather(*(one(i, t) for i, t in enumerate(tickets)))
    return socks, times, failures


async def close_many(socks: Iterable[Sock]) -> None:
    await asyncio.gather(*(s.close() for s in socks))


class OpenLoop:
    """Fire `fn(i)` at a fixed rate for `duration` seconds regardless of how long each call takes (no coordinated
    omission); a hard stop cancels what is still running `grace` seconds after the last start."""

    def __init__(self, rate: float, duration: float, grace: float = 10.0) -> None:
        self.rate = rate
        self.duration = duration
        self.grace = grace

    async def run(self, fn: Callable[[int], Any]) -> int:
        count = int(self.rate * self.duration)
        start = time.perf_counter()
        tasks: list[asyncio.Task[Any]] = []
        for i in range(count):
            delay = start + i / self.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(fn(i)))
        done, pending = await asyncio.wait(tasks, timeout=self.grace) if tasks else (set(), set())
        for task in pending:
            task.cancel()
        return count


def redis_info(url: str) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        info: dict[str, Any] = client.info()
        return info
    finally:
        client.close()


def log_problems(*logs: procs.Proc) -> dict[str, int]:
    """Log lines that must never appear (method 5.2): over capacity, ChannelFull, 500s, tracebacks."""
    patterns = ("over capacity", "ChannelFull", "Internal Server Error", "Traceback")
    found: Counter[str] = Counter()
    for proc in logs:
        text = proc.log_text()
        for p in patterns:
            found[p] += text.count(p)
    return {k: v for k, v in found.items() if v}


@dataclass
class Reconnect:
    sock: Sock | None = None
    attempts: int = 0
    handshakes: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    synced_at: float | None = None
    port: int | None = None  # the server the socket came back to


async def reconnect(
    port: int | Callable[[], int],
    slug: str,
    tenant_id: int,
    user_id: int,
    since: int,
    *,
    started: float,
    give_up: float = 40.0,
    ticket: str | None = None,
) -> Reconnect:
    """Come back like a Socket.IO client: first try after 0.5–1.5 s, then back off (×2, capped at 5 s, jittered);
    each try with a fresh ticket; done once `sync` from `since` has finished. Gives up `give_up` s after `started`.

    `port` may be a function that picks the server for each try (a load balancer). `ticket` is used for the first
    try: minting a ticket per socket inside the storm (a database connection and INSERT each, 1,000 at once through
    this process's few threads) took 0.2-1.4 s of the load generator per reconnect and loaded PostgreSQL while the
    server was measured; mass-connection scenarios measure the WebSocket server, not ticket issuance."""
    result = Reconnect()
    delay = random.uniform(0.5, 1.5)
    while True:
        await asyncio.sleep(delay)
        if time.perf_counter() - started > give_up:
            return result
        result.attempts += 1
        sock = Sock("again")
        target = port() if callable(port) else port
        try:
            if ticket is None:
                ticket = (await amint(tenant_id, [user_id]))[0]
            fresh, ticket = ticket, None  # single use: a retry needs a new one
            result.handshakes.append(await sock.open(target, slug, fresh, sync=False))
            await sock.send("sync", {"since": since})
            await asyncio.wait_for(sock.synced.wait(), 20)
            result.sock = sock
            result.port = target
            result.synced_at = time.perf_counter() - started
            return result
        except Exception as exc:
            result.errors[type(exc).__name__] += 1
            await sock.close()
        delay = min(5.0, 2.0**result.attempts * 0.5) * random.uniform(0.5, 1.5)
