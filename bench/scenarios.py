"""Scenarios M1–M10 (issue 7; method in shared/reference/performance-method.md 5.2) and their same-run baselines.

Each scenario starts a fresh system (tables truncated, Redis flushed, seed data, a new Daphne process with DEBUG
off on PostgreSQL + the pub/sub Redis layer, a Celery worker where the path needs one), runs for fixed durations
with hard stops, and adds rows to the report. M10 (gaps and duplicates by `seq`) is checked in every scenario.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bench import baselines
from bench.harness import (
    HttpPool,
    OpenLoop,
    Reconnect,
    Report,
    Row,
    Services,
    Sock,
    TenantSeed,
    adb_head,
    amint,
    analyze,
    close_many,
    jwt_for,
    log_problems,
    ms,
    open_many,
    pct,
    reconnect,
    redis_info,
    reset_data,
    rest_ticket,
    seed_tenant,
    seq_check,
    signature,
    summary,
    webhook_body,
)
from tests import procs

USERS = 100
CONVERSATIONS = 200


@dataclass
class Ctx:
    services: Services
    report: Report
    quick: bool = False
    gaps: int = 0
    dups: int = 0
    floor_ms: float | None = None
    notes: list[str] = field(default_factory=list)
    server_env: dict[str, str] = field(default_factory=dict)  # extra environment of the Daphne under test

    def d(self, full: float, quick: float) -> float:
        return quick if self.quick else full

    def add(self, scenario: str, metric: str, value: Any, unit: str = "", **kw: Any) -> Row:
        return self.report.add(Row(scenario, metric, value, unit, **kw))

    def m10(self, scenario: str, socks: list[Sock], upto: int, *, label: str = "") -> None:
        gaps, dups, behind = seq_check(socks, upto)
        self.m10_row(scenario, f"{label} ({len(socks)} sockets, head {upto})", gaps, dups, behind)

    def m10_row(self, scenario: str, what: str, gaps: int, dups: int, behind: int) -> None:
        """The M10 row of counts a scenario made (added to the run's totals)."""
        self.gaps += gaps
        self.dups += dups
        self.add(
            scenario,
            f"M10 seq gaps / dups / undelivered{what}",
            f"{gaps} / {dups} / {behind}",
            target="0 / 0 / 0",
            ok=gaps == 0 and dups == 0 and behind == 0,
        )


@dataclass
class System:
    daphne: procs.Proc
    celery: procs.Proc | None
    tenant: TenantSeed
    other: TenantSeed
    pool: HttpPool
    jwt: str
    port: int

    def send_path(self, conversation_id: int) -> str:
        return f"/api/tenants/{self.tenant.slug}/conversations/{conversation_id}/messages/"

    async def post_message(self, conversation_id: int, client_id: str, text: str) -> tuple[int, float]:
        start = time.perf_counter()
        status, _ = await self.pool.request(
            "POST",
            self.send_path(conversation_id),
            body=json.dumps({"client_id": client_id, "type": "text", "text": text}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.jwt}"},
        )
        return status, time.perf_counter() - start

    async def sockets(
        self,
        count: int,
        *,
        users: list[int] | None = None,
        deadline: float | None = None,
        tenant: TenantSeed | None = None,
        **kw: Any,
    ) -> tuple[list[Sock], list[float], int]:
        """`count` sockets of the main tenant (or `tenant`), users round-robin, tickets minted in chunks (they live
        60 s). With a deadline (perf_counter time) no new chunk starts after it: fewer sockets come back (hard stop)."""
        seed = tenant or self.tenant
        ids = users or seed.user_ids
        socks: list[Sock] = []
        times: list[float] = []
        failures = 0
        for start in range(0, count, 500):
            if deadline is not None and time.perf_counter() > deadline:
                break
            chunk = [ids[i % len(ids)] for i in range(start, min(count, start + 500))]
            tickets = await amint(seed.id, chunk)
            s, t, f = await open_many(self.port, seed.slug, tickets, **kw)
            socks += s
            times += t
            failures += f
        return socks, times, failures

    async def rest_socket(self, username: str | None = None) -> Sock:
        """A socket opened the way an integration does: JWT → POST ws-ticket → ?ticket=."""
        token = self.jwt if username is None else await jwt_for(self.pool, username)
        ticket = await rest_ticket(self.pool, token, self.tenant.slug)
        sock = Sock("rest")
        await sock.open(self.port, self.tenant.slug, ticket)
        return sock

    async def other_socket(self) -> Sock:
        ticket = (await amint(self.other.id, [self.other.user_ids[0]]))[0]
        sock = Sock("other-tenant")
        await sock.open(self.port, self.other.slug, ticket)
        return sock


@asynccontextmanager
async def system(ctx: Ctx, *, celery: bool = False, users: int = USERS, workers: int = 1) -> AsyncIterator[System]:
    services = ctx.services
    await asyncio.to_thread(reset_data, services)
    tenant = await asyncio.to_thread(seed_tenant, "bench", users=users, conversations=CONVERSATIONS, index=1)
    other = await asyncio.to_thread(seed_tenant, "other", users=2, conversations=2, index=2)
    await asyncio.to_thread(analyze)
    from django.db import close_old_connections

    await asyncio.to_thread(close_old_connections)
    daphne = services.daphne(**ctx.server_env)
    worker = services.celery(queues="inbound", concurrency=workers) if celery else None
    pool = HttpPool(daphne.port or 0, size=8)
    try:
        jwt = await jwt_for(pool, tenant.usernames[0])
        sys_ = System(daphne, worker, tenant, other, pool, jwt, daphne.port or 0)
        await warm_up(sys_)
        yield sys_
    finally:
        pool.close()
        problems = log_problems(daphne, *([worker] if worker else []))
        if problems:
            ctx.notes.append(f"log lines: {problems} (logs in {services.log_dir})")
            print(f"  !! server log problems: {problems}", flush=True)
        if worker is not None:
            services.stop(worker)
        services.stop(daphne)


def isolation(ctx: Ctx, scenario: str, other: Sock) -> None:
    """The isolation row: nothing of the main tenant reached the other tenant's idle socket."""
    ctx.add(
        scenario, "frames that reached the other tenant's socket", foreign(other), target="0", ok=foreign(other) == 0
    )


def foreign(sock: Sock) -> int:
    """Frames an idle socket of the other tenant got, beyond the answer to its own `sync` (isolation check)."""
    return sum(count for type_, count in sock.types.items() if type_ != "sync:done")


async def warm_up(sys_: System) -> None:
    """A fresh process's first requests pay for imports, URL resolution and connection set-up: pay that before
    any measurement (a few sequential sends, and a webhook through the worker when there is one)."""
    convs = sys_.tenant.conversation_ids[-8:]
    for i in range(8):
        await sys_.post_message(convs[0], f"warm-{i}", "warm-up")
    for r in range(3):  # concurrent ones too: the database pool and the request threads grow to their working size
        await asyncio.gather(*(sys_.post_message(c, f"warm-{r}-{c}", "warm-up") for c in convs))
    if sys_.celery is not None:
        wa_id = sys_.tenant.contact_wa_ids[-1]
        for i in range(3):
            raw = webhook_body(sys_.tenant.phone_number_id, wa_id, f"wamid.WARM{time.time_ns()}{i}", "warm-up")
            await sys_.pool.request(
                "POST",
                "/webhooks/whatsapp/",
                body=raw,
                headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature(raw)},
            )
    await quiesce(sys_.daphne)


async def quiesce(proc: procs.Proc, *, below: float = 0.15, timeout: float = 20.0) -> float:
    """Wait until the server's CPU use over 0.5 s drops below `below` of a core (connect and presence work that a
    scenario's set-up caused has drained), or `timeout`; returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        cpu0 = proc.cpu_seconds()
        await asyncio.sleep(0.5)
        if (proc.cpu_seconds() - cpu0) / 0.5 < below:
            break
    return time.perf_counter() - start


async def settle(sys_: System, socks: list[Sock], timeout: float = 10.0, tenant: TenantSeed | None = None) -> int:
    """Wait until every socket has seen the tenant's head seq (or timeout); returns the head."""
    head = await adb_head((tenant or sys_.tenant).id)
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline and any(s.last_seq() < head for s in socks):
        await asyncio.sleep(0.05)
    return head


# --- baselines --------------------------------------------------------------------------------------------------


async def floor(ctx: Ctx) -> float:
    """R_e2e denominator: PostgreSQL commit + Redis pub/sub + websockets echo, p99 each, summed."""
    services = ctx.services
    pg = await baselines.floor_pg(services.database_url)
    rd = await baselines.floor_redis(services.redis_url)
    bare = baselines.start_wsbare(services.log_dir)
    try:
        echo = await baselines.ws_echo(f"ws://127.0.0.1:{bare.port}/")
    finally:
        bare.stop()
    total = pg["p99"] + rd["p99"] + echo["p99"]
    ctx.add("base", "psycopg INSERT+COMMIT p50 / p99", f"{pg['p50']:.3f} / {pg['p99']:.3f}", "ms")
    ctx.add("base", "redis-py PUBLISH→SUBSCRIBE p50 / p99", f"{rd['p50']:.3f} / {rd['p99']:.3f}", "ms")
    ctx.add("base", "bare websockets echo p50 / p99", f"{echo['p50']:.3f} / {echo['p99']:.3f}", "ms")
    ctx.add("base", "floor = sum of the three p99", total, "ms")
    ctx.report.baselines["floor_ms"] = total
    ctx.floor_ms = total
    return total


async def ensure_floor(ctx: Ctx) -> float:
    return ctx.floor_ms if ctx.floor_ms is not None else await floor(ctx)


# --- M1: POST → WebSocket ----------------------------------------------------------------------------------------


async def m1(ctx: Ctx, rates: tuple[int, ...] = (20, 100, 300)) -> None:
    base = await ensure_floor(ctx)
    async with system(ctx) as sys_:
        receivers = [await sys_.rest_socket(sys_.tenant.usernames[1]), await sys_.rest_socket(sys_.tenant.usernames[2])]
        other = await sys_.other_socket()
        for rate in rates:
            await m1_point(ctx, sys_, receivers, rate, base)
        head = await settle(sys_, receivers)
        ctx.m10("M1", receivers, head)
        isolation(ctx, "M1", other)
        await close_many([*receivers, other])


async def m1x2(ctx: Ctx, rates: tuple[int, ...] = (100,)) -> None:
    """M1 on two Daphne processes behind a round-robin balancer (plan step 1): POST i goes to process i mod 2, the
    receiver whose latency is measured is on the first process (so half the sends cross processes through Redis),
    a second receiver on the other process must get every message too."""
    base = await ensure_floor(ctx)
    async with system(ctx) as sys_, second_daphne(ctx, sys_) as other_proc:
        receivers = [
            await sys_.rest_socket(sys_.tenant.usernames[1]),
            await other_proc.rest_socket(sys_.tenant.usernames[2]),
        ]
        other = await other_proc.other_socket()
        for rate in rates:
            await m1_point(ctx, sys_, receivers, rate, base, systems=[sys_, other_proc], label="M1x2")
        head = await settle(sys_, receivers)
        ctx.m10("M1x2", receivers, head)
        isolation(ctx, "M1x2", other)
        await close_many([*receivers, other])


async def m1_point(
    ctx: Ctx,
    sys_: System,
    receivers: list[Sock],
    rate: int,
    base: float,
    *,
    systems: list[System] | None = None,
    label: str = "M1",
) -> None:
    """Open-loop POSTs at `rate`/s (rotating over the conversations, and over `systems`' processes when given);
    latency to the first receiver's socket."""
    systems = systems or [sys_]
    target = 50.0 if rate > 100 else 25.0
    duration, warm = ctx.d(20, 8), ctx.d(4, 2)
    sent: dict[str, float] = {}
    lat: list[tuple[float, float]] = []  # (send time, latency)
    post_times: list[float] = []
    answered: list[float] = []  # when each POST's response arrived
    statuses: dict[int, int] = defaultdict(int)

    def hook(sock: Sock, frame: dict[str, Any], now: float) -> None:
        if frame["type"] == "message:new" and sock is receivers[0]:
            start = sent.get(frame["data"].get("client_id") or "")
            if start is not None:
                lat.append((start, now - start))

    for r in receivers:
        r.hook = hook
    for each in systems:
        await quiesce(each.daphne, timeout=40)  # the previous rate's backlog must not count against this one
    convs = sys_.tenant.conversation_ids
    tag = f"m1-{rate}-{int(time.time())}"

    async def one(i: int) -> None:
        key = f"{tag}-{i}"
        sent[key] = time.perf_counter()
        status, took = await systems[i % len(systems)].post_message(convs[i % len(convs)], key, f"bench message {i}")
        statuses[status] += 1
        post_times.append(took)
        answered.append(time.perf_counter())

    begin = time.perf_counter()
    cpu0 = sum(each.daphne.cpu_seconds() for each in systems)
    await OpenLoop(rate, duration + warm, grace=15).run(one)
    await settle(sys_, receivers)
    cpu_ms = 1000 * (sum(each.daphne.cpu_seconds() for each in systems) - cpu0) / max(1, len(sent))
    measured = [lt for st, lt in lat if st - begin >= warm]
    stats = summary(measured)
    created = statuses.get(201, 0)
    tenth = max(1, len(measured) // 10)
    first, last = pct(measured[:tenth], 50), pct(measured[-tenth:], 50)
    p99 = ms(stats["p99"])
    ratio = p99 / base
    # What the server answered per second from the first POST to the last answer: the offered rate when it keeps up,
    # its capacity when it does not (the hard stop then cancels POSTs still waiting: delivered < sent, and a send that
    # committed but whose answer was cut off is delivered without counting as a 201).
    served = len(answered) / max(1e-9, (answered[-1] if answered else begin) - begin)
    ctx.add(
        label,
        f"POST→WS {rate}/s p50 / p95 / p99 / max",
        f"{ms(stats['p50']):.1f} / {ms(stats['p95']):.1f} / {p99:.1f} / {ms(stats['max']):.1f}",
        "ms",
        baseline=base,
        ratio_name="R_e2e",
        ratio=ratio,
        target=f"p99 ≤ {target:.0f} ms, R_e2e ≤ 8",
        ok=p99 <= target and ratio <= 8,
    )
    ctx.add(
        label,
        f"  {rate}/s delivered / sent (201s); POST p99; lag first→last 10 %; Daphne CPU per send; answered/s"
        + (f" (all {len(systems)} processes)" if len(systems) > 1 else ""),
        f"{len(lat)} / {created}; {ms(pct(post_times, 99)):.1f} ms; {ms(first):.1f}→{ms(last):.1f} ms; {cpu_ms:.1f} ms;"
        f" {served:.0f}",
        target="delivered = sent",
        ok=len(lat) == created == len(sent),
        note="" if len(statuses) == 1 else f"statuses {dict(statuses)}",
    )


# --- M2: signed webhook → agent socket ------------------------------------------------------------------------------


async def m2(ctx: Ctx, rate: int = 100, *, workers: int = 1, label: str = "M2") -> None:
    base = await ensure_floor(ctx)
    async with system(ctx, celery=True, workers=workers) as sys_:
        agent = await sys_.rest_socket(sys_.tenant.usernames[1])
        other = await sys_.other_socket()
        duration, warm = ctx.d(20, 8), ctx.d(4, 2)
        sent: dict[str, float] = {}
        seen: dict[str, int] = defaultdict(int)
        lat: list[tuple[float, float]] = []
        statuses: dict[int, int] = defaultdict(int)

        def hook(sock: Sock, frame: dict[str, Any], now: float) -> None:
            if frame["type"] == "message:new":
                wamid = frame["data"].get("wa_message_id") or ""
                seen[wamid] += 1
                start = sent.get(wamid)
                if start is not None and seen[wamid] == 1:
                    lat.append((start, now - start))

        agent.hook = hook
        wa_ids = sys_.tenant.contact_wa_ids
        tag = f"wamid.BENCH{int(time.time())}"
        bodies: list[tuple[str, bytes]] = []
        duplicates = 0

        async def one(i: int) -> None:
            nonlocal duplicates
            if i % 100 == 99 and bodies:  # 1 %: Meta redelivers a body we already answered
                wamid, raw = random.choice(bodies[-50:])
                duplicates += 1
            else:
                wamid = f"{tag}.{i}"
                raw = webhook_body(sys_.tenant.phone_number_id, wa_ids[i % len(wa_ids)], wamid, f"hello {i}")
                bodies.append((wamid, raw))
                sent[wamid] = time.perf_counter()
            status, _ = await sys_.pool.request(
                "POST",
                "/webhooks/whatsapp/",
                body=raw,
                headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature(raw)},
            )
            statuses[status] += 1

        begin = time.perf_counter()
        assert sys_.celery is not None
        cpu0 = sys_.daphne.cpu_seconds(), sys_.celery.cpu_seconds()
        await OpenLoop(rate, duration + warm, grace=15).run(one)
        deadline = time.perf_counter() + 15
        while len(lat) < len(sent) and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
        head = await settle(sys_, [agent])
        cpu_web = 1000 * (sys_.daphne.cpu_seconds() - cpu0[0]) / max(1, len(sent))
        cpu_worker = 1000 * (sys_.celery.cpu_seconds() - cpu0[1]) / max(1, len(sent))
        measured = [lt for st, lt in lat if st - begin >= warm]
        stats = summary(measured)
        ratio = ms(stats["p99"]) / base
        ctx.add(
            label,
            "  CPU per webhook: Daphne (verify + store + enqueue) / worker (process"
            + (f"es: {workers}, Celery's prefork pool)" if workers > 1 else ")"),
            f"{cpu_web:.1f} / {cpu_worker:.1f}",
            "ms",
        )
        ctx.add(
            label,
            f"webhook→WS {rate}/s p50 / p95 / p99 / max",
            f"{ms(stats['p50']):.1f} / {ms(stats['p95']):.1f} / {ms(stats['p99']):.1f} / {ms(stats['max']):.1f}",
            "ms",
            baseline=base,
            ratio_name="R_e2e",
            ratio=ratio,
            target="p99 ≤ 50 ms",
            ok=ms(stats["p99"]) <= 50,
        )
        dup_frames = sum(c - 1 for c in seen.values() if c > 1)
        ctx.add(
            label,
            "  delivered / unique sent; repeats posted; duplicate frames",
            f"{len(lat)} / {len(sent)}; {duplicates}; {dup_frames}",
            target="all delivered, 0 duplicates",
            ok=len(lat) == len(sent) and dup_frames == 0 and set(statuses) == {200},
            note="" if set(statuses) == {200} else f"HTTP {dict(statuses)}",
        )
        ctx.m10(label, [agent], head)
        isolation(ctx, label, other)
        await close_many([agent, other])


async def m2x2(ctx: Ctx, rate: int = 100) -> None:
    """M2 with the worker the Procfile runs: Celery's prefork pool of two processes (the default on two cores)."""
    await m2(ctx, rate, workers=2, label="M2x2")


# --- M3: typing WS → WS, and its baseline (bare Channels echo, same shape) -------------------------------------------


@dataclass
class TypingLoad:
    """M3's shape: one typist and one viewer socket per conversation, both joined; `one(i)` sends the i-th event
    (start and stop alternate per conversation, round robin) and the viewers' hook records its latency."""

    senders: list[Sock]
    receivers: list[Sock]
    convs: list[int]
    failures: tuple[int, int]
    pending: dict[tuple[int, str], deque[float]] = field(default_factory=lambda: defaultdict(deque))
    lat: list[float] = field(default_factory=list)

    @classmethod
    async def open(cls, sys_: System, conversations: int) -> TypingLoad:
        convs = sys_.tenant.conversation_ids[:conversations]
        typist, viewer = sys_.tenant.user_ids[0], sys_.tenant.user_ids[1]
        senders, _, f1 = await sys_.sockets(conversations, users=[typist])
        receivers, _, f2 = await sys_.sockets(conversations, users=[viewer])
        for s, r, c in zip(senders, receivers, convs, strict=False):
            await s.send("conversation:join", {"conversation_id": c})
            await r.send("conversation:join", {"conversation_id": c})
        await quiesce(sys_.daphne)
        load = cls(senders, receivers, convs, (f1, f2))
        for r in receivers:
            r.hook = load.hook
        return load

    def hook(self, sock: Sock, frame: dict[str, Any], now: float) -> None:
        if frame["type"] in ("typing:start", "typing:stop"):
            queue = self.pending.get((frame["data"]["conversation_id"], frame["type"]))
            if queue:
                self.lat.append(now - queue.popleft())

    async def one(self, i: int) -> None:
        k = i % len(self.senders)
        type_ = "typing:start" if (i // len(self.senders)) % 2 == 0 else "typing:stop"
        self.pending[(self.convs[k], type_)].append(time.perf_counter())
        await self.senders[k].send(type_, {"conversation_id": self.convs[k]})


async def m3(ctx: Ctx, rate: int = 1000, conversations: int = 200) -> None:
    duration = ctx.d(15, 6)
    async with system(ctx) as sys_:
        echo = await baselines.echo_load(
            f"ws://127.0.0.1:{sys_.port}/bench/echo/", sockets=conversations, rate=rate, duration=duration
        )
        base = echo["p99"]
        ctx.add(
            "base",
            f"bare Channels echo consumer, {conversations} sockets, {rate}/s p50 / p99",
            f"{echo['p50']:.2f} / {echo['p99']:.2f}",
            "ms",
            note=f"lost {echo['lost']}",
        )
        ctx.report.baselines["channels_echo_p99_ms"] = base
        load = await TypingLoad.open(sys_, conversations)
        senders, receivers, pending, lat, one = load.senders, load.receivers, load.pending, load.lat, load.one
        f1, f2 = load.failures
        errors_before = sum(s.types["error"] for s in senders)
        cpu0 = sys_.daphne.cpu_seconds()

        await OpenLoop(rate, duration, grace=5).run(one)
        await asyncio.sleep(1.0)
        cpu_us = 1e6 * (sys_.daphne.cpu_seconds() - cpu0) / max(1, int(rate * duration))
        lost = sum(len(q) for q in pending.values())
        warm = len(lat) // 10
        stats = summary(lat[warm:])
        p99 = ms(stats["p99"])
        ratio = p99 / base if base else float("nan")
        ctx.add(
            "M3",
            f"typing WS→WS {rate}/s over {conversations} conversations p50 / p99 / max",
            f"{ms(stats['p50']):.2f} / {p99:.2f} / {ms(stats['max']):.1f}",
            "ms",
            baseline=base,
            ratio_name="R_typing",
            ratio=ratio,
            target="R_typing ≤ 2; p50 ≤ 2, p99 ≤ 10 ms",
            ok=ratio <= 2 and ms(stats["p50"]) <= 2 and p99 <= 10,
        )
        errors = sum(s.types["error"] for s in senders) - errors_before
        ctx.add(
            "M3",
            "  typing frames lost; error frames; failed sockets; Daphne CPU per typing event",
            f"{lost}; {errors}; {f1 + f2}; {cpu_us:.0f} µs",
            target="0",
            ok=lost == 0 and errors == 0 and f1 + f2 == 0,
        )
        await close_many([*senders, *receivers])


# --- M4 fan-out (+ bare broadcast baseline) and M9 slow reader ---------------------------------------------------------


async def m4(ctx: Ctx, levels: tuple[int, ...] = (100, 1000, 3000)) -> None:
    sends = 10 if not ctx.quick else 5
    async with system(ctx) as sys_:
        # Size of the real message:new frame, so the bare baseline broadcasts the same bytes.
        probe = await sys_.rest_socket(sys_.tenant.usernames[1])
        sizes: list[int] = []

        def sizer(sock: Sock, frame: dict[str, Any], now: float) -> None:
            if frame["type"] == "message:new":
                sizes.append(len(json.dumps(frame)))

        probe.hook = sizer
        await sys_.post_message(sys_.tenant.conversation_ids[0], "m4-size", "x" * 40)
        await settle(sys_, [probe])
        size = sizes[0] if sizes else 1000
        await probe.close()
        bare = baselines.start_wsbare(ctx.services.log_dir)
        base: dict[int, dict[str, Any]] = {}
        try:
            for n in levels:
                base[n] = await baselines.broadcast_fanout(f"ws://127.0.0.1:{bare.port}/", n=n, sends=sends, size=size)
                b = base[n]
                ctx.add(
                    "base",
                    f"bare websockets.broadcast N={n} ({size} B) per-delivery p50/p99; time-to-last p50 (max)",
                    f"{b['per_p50']:.1f}/{b['per_p99']:.1f}; {b['ttl_p50']:.1f} ({b['ttl_max']:.1f})",
                    "ms",
                    note=f"delivered {b['delivered']}/{b['expected']}",
                )
                ctx.report.baselines[f"broadcast_ttl_p50_ms_{n}"] = b["ttl_p50"]
        finally:
            bare.stop()
        socks: list[Sock] = []
        conv = sys_.tenant.conversation_ids[1]
        for n in levels:
            budget = time.perf_counter() + ctx.d(90, 45)
            more, handshakes, failures = await sys_.sockets(n - len(socks), deadline=budget)
            socks += more
            await quiesce(sys_.daphne)
            sent: dict[str, float] = {}
            per: list[float] = []
            last: dict[str, float] = {}
            got: dict[str, int] = defaultdict(int)
            # From the event's commit (its frame's ts, same machine clock) to the last socket: the fan-out alone,
            # without the POST's own processing (that is M1's), like the bare broadcast it is compared with.
            written: dict[str, float] = {}
            last_wall: dict[str, float] = {}

            def hook(
                sock: Sock,
                frame: dict[str, Any],
                now: float,
                sent: dict[str, float] = sent,
                per: list[float] = per,
                last: dict[str, float] = last,
                got: dict[str, int] = got,
                written: dict[str, float] = written,
                last_wall: dict[str, float] = last_wall,
            ) -> None:
                if frame["type"] == "message:new":
                    key = frame["data"].get("client_id") or ""
                    start = sent.get(key)
                    if start is not None:
                        per.append(now - start)
                        last[key] = now
                        last_wall[key] = time.time()
                        got[key] += 1
                        if key not in written:
                            written[key] = datetime.fromisoformat(frame["ts"].replace("Z", "+00:00")).timestamp()

            for s in socks:
                s.hook = hook
            cpu0 = sys_.daphne.cpu_seconds()
            for k in range(sends):
                key = f"m4-{n}-{k}"
                sent[key] = time.perf_counter()
                await sys_.post_message(conv, key, "fan-out " + "x" * 32)
                await asyncio.sleep(0.5)
            deadline = time.perf_counter() + 15
            while sum(got.values()) < len(socks) * sends and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            cpu = sys_.daphne.cpu_seconds() - cpu0
            ttl = [last[k] - sent[k] for k in last]
            ttl50 = ms(pct(ttl, 50))
            fan = [last_wall[k] - written[k] for k in last_wall if k in written]
            fan50 = ms(pct(fan, 50))
            ratio = fan50 / base[n]["ttl_p50"] if base[n]["ttl_p50"] else float("nan")
            delivered = sum(got.values())
            ctx.add(
                "M4",
                f"fan-out N={len(socks)} POST→socket per-delivery p50/p99; POST→last p50 (max)",
                f"{ms(pct(per, 50)):.1f}/{ms(pct(per, 99)):.1f}; {ttl50:.1f} ({ms(max(ttl)) if ttl else float('nan'):.1f})",
                "ms",
                target="ttl ≤ 300 ms" if n == 1000 else "",
                ok=n != 1000 or ms(max(ttl) if ttl else 1e9) <= 300,
            )
            ctx.add(
                "M4",
                f"  N={len(socks)} event commit→last socket p50 (max)",
                f"{fan50:.1f} ({ms(max(fan)) if fan else float('nan'):.1f})",
                "ms",
                baseline=base[n]["ttl_p50"],
                ratio_name="R_fanout",
                ratio=ratio,
                target="R_fanout ≤ 4",
                ok=ratio <= 4,
            )
            ctx.add(
                "M4",
                f"  N={n} delivered/expected; deliveries/s; Daphne CPU per delivery; handshake p99; failed",
                f"{delivered}/{len(socks) * sends}; {len(socks) / (ttl50 / 1000) if ttl50 else float('nan'):,.0f}; "
                f"{1e6 * cpu / max(1, delivered):.0f} µs; {ms(pct(handshakes, 99)):.0f} ms; {failures}",
                target="all delivered, 0 failed",
                ok=delivered == len(socks) * sends and failures == 0,
            )
        head = await settle(sys_, socks)
        ctx.m10("M4", socks, head)
        await close_many(socks)


async def m9(ctx: Ctx, n: int = 100, rate: int = 5) -> None:
    """One socket stops reading while the others receive 4 KB messages; memory and the others' latency."""
    phase = ctx.d(10, 5)
    async with system(ctx) as sys_:
        socks, _, failures = await sys_.sockets(n)
        await quiesce(sys_.daphne)
        # The slow reader: tiny receive buffer and no reader task (the client library stops reading after 16 frames).
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", sys_.port))
        raw.setblocking(False)
        ticket = (await amint(sys_.tenant.id, [sys_.tenant.user_ids[5]]))[0]
        slow = Sock("slow")
        await slow.open(sys_.port, sys_.tenant.slug, ticket, sock=raw)
        assert slow.reader is not None
        slow.reader.cancel()
        sent: dict[str, float] = {}
        lat: dict[str, list[float]] = {"reading": [], "stalled": []}
        mode = ["reading"]

        def hook(sock: Sock, frame: dict[str, Any], now: float) -> None:
            if frame["type"] == "message:new":
                start = sent.get(frame["data"].get("client_id") or "")
                if start is not None:
                    lat[mode[0]].append(now - start)

        for s in socks:
            s.hook = hook
        text = "y" * 4000
        convs = sys_.tenant.conversation_ids

        async def one(i: int) -> None:
            key = f"m9-{mode[0]}-{i}"
            sent[key] = time.perf_counter()
            await sys_.post_message(convs[i % 20], key, text)

        rss0 = sys_.daphne.rss_kib()
        await OpenLoop(rate, phase, grace=10).run(one)
        rss_reading = sys_.daphne.rss_kib()
        mode[0] = "stalled"
        peak = rss_reading
        done = asyncio.create_task(OpenLoop(rate, phase * 2, grace=10).run(one))
        while not done.done():
            peak = max(peak, sys_.daphne.rss_kib())
            await asyncio.sleep(0.25)
        head = await settle(sys_, socks)
        frames_to_slow = 2 * (rate * phase * 3)
        ctx.add(
            "M9",
            f"others' latency p99 reading → one socket stalled (N={n}, {rate}/s, 4 KB)",
            f"{ms(pct(lat['reading'], 99)):.1f} → {ms(pct(lat['stalled'], 99)):.1f}",
            "ms",
            target="others unaffected (≤ 2×)",
            ok=pct(lat["stalled"], 99) <= 2 * max(pct(lat["reading"], 99), 0.005),
        )
        ctx.add(
            "M9",
            "  Daphne RSS start → reading → peak while stalled",
            f"{rss0 / 1024:.0f} → {rss_reading / 1024:.0f} → {peak / 1024:.0f}",
            "MiB",
            note=f"~{frames_to_slow} frames (~{frames_to_slow * 4.5 / 1024:.0f} MiB) addressed to the stalled socket",
        )
        # Let the slow reader read again: it must get everything (or, if the server dropped it, catch up with sync).
        slow.reader = asyncio.create_task(slow._read())  # noqa: SLF001
        deadline = time.perf_counter() + 15
        while slow.last_seq() < head and slow.closed_code is None and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
        if slow.last_seq() < head:
            ctx.add(
                "M9", "  stalled socket closed by server (code); caught up via sync", f"{slow.closed_code}", note=""
            )
            again = Sock("slow-again")
            ticket = (await amint(sys_.tenant.id, [sys_.tenant.user_ids[5]]))[0]
            await again.open(sys_.port, sys_.tenant.slug, ticket, sync=False)
            since = slow.last_seq()
            await again.send("sync", {"since": since})
            await asyncio.wait_for(again.synced.wait(), 15)
            gaps, dups = again.check(upto=head, start=since)
            gaps0, dups0 = slow.check()
            ctx.gaps += gaps + gaps0
            ctx.dups += dups + dups0
            ctx.add(
                "M9",
                "  M10 stalled socket gaps / dups after sync",
                f"{gaps + gaps0} / {dups + dups0}",
                target="0 / 0",
                ok=gaps + gaps0 == 0 and dups + dups0 == 0,
            )
            await again.close()
        else:
            ctx.m10("M9", [slow], head, label=" (stalled socket, after resuming)")
        ctx.m10("M9", socks, head)
        ctx.add("M9", "  failed handshakes", failures, target="0", ok=failures == 0)
        await close_many([*socks, slow])


# --- M5: sustained ingestion (wrk) vs empty view ---------------------------------------------------------------------


async def m5(ctx: Ctx, conns: tuple[int, ...] = (4, 16)) -> None:
    duration = int(ctx.d(15, 6))
    async with system(ctx, celery=True) as sys_:
        url = f"http://127.0.0.1:{sys_.port}"
        tag = int(time.time())
        bodies = []
        for i in range(4000):
            wamid = f"wamid.M5{tag}.{i}"
            raw = webhook_body(
                sys_.tenant.phone_number_id, sys_.tenant.contact_wa_ids[i % CONVERSATIONS], wamid, f"ingest {i}"
            )
            bodies.append((signature(raw), raw))
        probe = await sys_.rest_socket(sys_.tenant.usernames[1])
        # Every baseline before any webhook: once webhooks have been stored the worker drains them for minutes,
        # and a baseline taken then would share the cores with it while the first one did not.
        empties = {}
        for c in conns:
            empty = await asyncio.to_thread(
                baselines.wrk, url + "/bench/empty/", bodies[:200], connections=c, duration=duration
            )
            empties[c] = empty
            ctx.add(
                "base",
                f"wrk empty Django view -c{c}: req/s; p50 / p99",
                f"{empty['rps']:.0f}; {empty['p50']:.1f} / {empty['p99']:.1f} ms",
                note=f"non-2xx {empty['non2xx']}",
            )
            ctx.report.baselines[f"empty_rps_c{c}"] = empty["rps"]
        for c in conns:
            empty = empties[c]
            cpu0, worker0 = sys_.daphne.cpu_seconds(), sys_.celery.cpu_seconds() if sys_.celery else 0.0
            result = await asyncio.to_thread(
                baselines.wrk, url + "/webhooks/whatsapp/", bodies, connections=c, duration=duration
            )
            cpu = sys_.daphne.cpu_seconds() - cpu0
            worker_cpu = (sys_.celery.cpu_seconds() if sys_.celery else 0.0) - worker0
            ratio = result["rps"] / empty["rps"] if empty["rps"] else float("nan")
            ctx.add(
                "M5",
                f"webhook ingestion wrk -c{c} {duration}s: req/s; p50 / p99",
                f"{result['rps']:.0f}; {result['p50']:.1f} / {result['p99']:.1f} ms",
                baseline=empty["rps"],
                ratio_name="R_ingest",
                ratio=ratio,
                target="R_ingest ≥ 0.5; ≥ 300/s, p99 ≤ 100 ms",
                ok=ratio >= 0.5 and result["rps"] >= 300 and result["p99"] <= 100,
            )
            ctx.add(
                "M5",
                f"  -c{c} non-2xx; socket errors; CPU % of one core: Daphne, worker",
                f"{result['non2xx']}; {result['socket_errors']}; {100 * cpu / duration:.0f} %, {100 * worker_cpu / duration:.0f} %",
                target="0 non-2xx",
                ok=result["non2xx"] == 0,
            )
        # The worker processes what was stored: how far behind is it?
        from webhooks.models import WebhookEvent

        def backlog() -> tuple[int, int]:
            from django.db import close_old_connections

            try:
                total = WebhookEvent.objects.count()
                done = WebhookEvent.objects.filter(state="processed").count()
                return total, done
            finally:
                close_old_connections()

        total, done = await asyncio.to_thread(backlog)
        ctx.add(
            "M5",
            "  webhooks stored / processed by 1 Celery worker at the end",
            f"{total} / {done}",
            note="worker shares the 2 cores",
        )
        await probe.close()


# --- M6/M7: idle sockets per process, memory, and a latency probe while ramping -----------------------------------------


async def m6(ctx: Ctx, levels: tuple[int, ...] = (1000, 5000, 10000), ramp_to: int | None = None) -> None:
    idle = ctx.d(15, 6)
    bare = baselines.start_wsbare(ctx.services.log_dir)
    try:
        bare_mem = await baselines.idle_memory(bare.port or 0, bare, list(levels), idle=min(idle, 5))
    finally:
        bare.stop()
    for n, kib in bare_mem.items():
        ctx.add("base", f"bare websockets server RSS per idle socket N={n}", kib, "KiB")
        ctx.report.baselines[f"ws_kib_{n}"] = kib
    async with system(ctx) as sys_:
        held = await held_tenant()
        probe_rx = await sys_.rest_socket(sys_.tenant.usernames[1])
        await asyncio.sleep(1)
        rss0 = sys_.daphne.rss_kib()
        socks: list[Sock] = []
        for n in levels:
            t0 = time.perf_counter()
            cpu_open = sys_.daphne.cpu_seconds()
            more, handshakes, failures = await sys_.sockets(
                n - len(socks), concurrency=100, deadline=t0 + ctx.d(100, 40), tenant=held
            )
            took = time.perf_counter() - t0
            cpu_open = 1000 * (sys_.daphne.cpu_seconds() - cpu_open) / max(1, len(more))
            socks += more
            await quiesce(sys_.daphne, below=0.5, timeout=30)
            cpu0 = sys_.daphne.cpu_seconds()
            await asyncio.sleep(idle)
            cpu = sys_.daphne.cpu_seconds() - cpu0
            kib = (sys_.daphne.rss_kib() - rss0) / max(1, len(socks))
            ratio = kib / bare_mem[n]
            ctx.add(
                "M6",
                f"idle sockets N={len(socks)}: KiB/socket",
                kib,
                "KiB",
                baseline=bare_mem[n],
                ratio_name="R_mem",
                ratio=ratio,
                target="R_mem ≤ 2.5; ≤ 50 KiB",
                ok=ratio <= 2.5 and kib <= 50,
            )
            ctx.add(
                "M6",
                f"  N={n} idle CPU % of a core per 1,000; connect rate /s (Daphne CPU ms each); handshake p99; failed",
                f"{100 * cpu / idle / (len(socks) / 1000):.2f} %; {len(more) / took:.0f} ({cpu_open:.1f}); {ms(pct(handshakes, 99)):.0f} ms; {failures}",
                target="≤ 1 %/1,000; 0 failed",
                ok=cpu / idle / (len(socks) / 1000) <= 0.01 and failures == 0,
            )
        if ramp_to:
            await m7_ramp(ctx, sys_, socks, probe_rx, ramp_to, held)
        head = await settle(sys_, [probe_rx])
        ctx.m10("M6", [probe_rx], head)
        held_head = await settle(sys_, socks[:200], tenant=held)
        ctx.m10("M6", socks, held_head, label=" (held sockets)")
        await close_many([*socks, probe_rx])


async def m7(ctx: Ctx, target: int = 15000) -> None:
    async with system(ctx) as sys_:
        held = await held_tenant()
        probe_rx = await sys_.rest_socket(sys_.tenant.usernames[1])
        socks: list[Sock] = []
        await m7_ramp(ctx, sys_, socks, probe_rx, target, held)
        head = await settle(sys_, [probe_rx])
        ctx.m10("M7", [probe_rx], head)
        await close_many([*socks, probe_rx])


async def held_tenant() -> TenantSeed:
    """The tenant whose sockets M6/M7 hold open: not the probe's. Runs 1-5 held the probe's own tenant's sockets, so
    every probe message also went to every held socket: at 10/s and 10,000 sockets a 100,000 deliveries/s fan-out,
    which is M4's question (and far past one process), not whether holding sockets slows a tenant down."""
    from django.db import close_old_connections

    held = await asyncio.to_thread(seed_tenant, "held", users=USERS, conversations=2, index=3)
    await asyncio.to_thread(analyze)
    await asyncio.to_thread(close_old_connections)
    return held


async def m7_ramp(ctx: Ctx, sys_: System, socks: list[Sock], probe_rx: Sock, target: int, held: TenantSeed) -> None:
    """Ramp at 500/s up to `target` sockets of the `held` tenant while a 10/s POST→WS probe runs in the main tenant
    (one receiving socket); then hold them for a while with the probe still running."""
    sent: dict[str, float] = {}
    lat: list[tuple[int, float]] = []  # (sockets open when sent, latency)
    # Latencies of probes sent once the ramp was over (the sockets are only held). Not named `held`: until run 7
    # that name hid the tenant parameter, so the ramp opened the held sockets in the probe's own tenant.
    held_lat: list[float] = []
    hold_from = [float("inf")]

    def hook(sock: Sock, frame: dict[str, Any], now: float) -> None:
        if frame["type"] == "message:new":
            start = sent.get(frame["data"].get("client_id") or "")
            if start is not None:
                lat.append((len(socks), now - start))
                if start >= hold_from[0]:
                    held_lat.append(now - start)

    probe_rx.hook = hook
    stop = asyncio.Event()

    async def prober() -> None:
        i = 0
        while not stop.is_set():
            key = f"m7-{i}"
            sent[key] = time.perf_counter()
            await sys_.post_message(sys_.tenant.conversation_ids[3], key, "probe")
            i += 1
            await asyncio.sleep(0.1)

    task = asyncio.create_task(prober())
    failures = 0
    t0 = time.perf_counter()
    start_count = len(socks)
    budget = t0 + ctx.d(100, 40)
    while len(socks) < target and time.perf_counter() < budget:
        more, _, f = await sys_.sockets(
            min(500, target - len(socks)), concurrency=100, rate=500, deadline=budget, tenant=held
        )
        socks += more
        failures += f
        if f > 200:
            break
    ramp_time = time.perf_counter() - t0
    await quiesce(sys_.daphne, below=0.5, timeout=20)  # the last handshakes and their syncs are done
    hold_from[0] = time.perf_counter()
    await asyncio.sleep(ctx.d(20, 8))
    stop.set()
    await task
    await asyncio.sleep(0.5)
    ok_levels = list({n for n, _ in lat})
    held_ok = 0
    for n in sorted(ok_levels):
        window = [lt for m, lt in lat if m == n]
        if ms(pct(window, 99)) < 50:
            held_ok = max(held_ok, n)
    all_lat = [lt for _, lt in lat]
    ctx.add(
        "M7",
        f"sockets held by one Daphne (ramp {start_count}→{len(socks)} at ≤500/s in {ramp_time:.0f} s); failed",
        f"{len(socks)}; {failures}",
        target="≥ 10,000, 0 failed",
        ok=len(socks) >= 10000 and failures == 0,
    )
    ctx.add(
        "M7",
        "  probe POST→WS 10/s during ramp+hold p50 / p99 / max; max level with p99 < 50 ms",
        f"{ms(pct(all_lat, 50)):.1f} / {ms(pct(all_lat, 99)):.1f} / {ms(max(all_lat)) if all_lat else float('nan'):.0f} ms; {held_ok}",
        target="p99 < 50 ms",
        ok=ms(pct(all_lat, 99)) < 50,
    )
    ctx.add(
        "M7",
        f"  probe POST→WS 10/s while the {len(socks)} sockets are held: n; p50 / p99 / max",
        f"{len(held_lat)}; {ms(pct(held_lat, 50)):.1f} / {ms(pct(held_lat, 99)):.1f} / "
        f"{ms(max(held_lat)) if held_lat else float('nan'):.0f} ms",
        target="p99 < 50 ms",
        ok=bool(held_lat) and ms(pct(held_lat, 99)) < 50,
    )
    ctx.add("M7", "  Daphne RSS with all sockets", sys_.daphne.rss_kib() / 1024, "MiB")


# --- M8: reconnect storm with sync -------------------------------------------------------------------------------------


async def m8(ctx: Ctx, n: int = 1000) -> None:
    """1,000 sockets of one Daphne close at once and come back to it (then `sync`) while messages keep coming."""
    async with system(ctx) as sys_:
        await storm(ctx, "M8", [sys_], n)


async def m8x2(ctx: Ctx, n: int = 1000) -> None:
    """M8 on two Daphne processes (one PostgreSQL, one Redis) behind a round-robin balancer: the sockets start
    spread over both, every reconnect goes to the next process in turn, sends alternate between them, and every
    socket on either must end with every event exactly once (docs/performance.md plan step 1)."""
    async with system(ctx) as sys_, second_daphne(ctx, sys_) as other:
        await storm(ctx, "M8x2", [sys_, other], n)


@asynccontextmanager
async def second_daphne(ctx: Ctx, sys_: System) -> AsyncIterator[System]:
    """Another Daphne process of the same system (same database, Redis, tenant and JWT), warmed up like the first."""
    services = ctx.services
    daphne = services.daphne("daphne-b", **ctx.server_env)
    pool = HttpPool(daphne.port or 0, size=8)
    try:
        other = System(daphne, None, sys_.tenant, sys_.other, pool, sys_.jwt, daphne.port or 0)
        await warm_up(other)
        yield other
    finally:
        pool.close()
        problems = log_problems(daphne)
        if problems:
            ctx.notes.append(f"log lines: {problems} (logs in {services.log_dir})")
            print(f"  !! server log problems: {problems}", flush=True)
        services.stop(daphne)


class RoundRobin:
    """A load balancer's choice of server: each new connection goes to the next one in turn."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.turn = 0

    def __call__(self) -> int:
        port = self.ports[self.turn % len(self.ports)]
        self.turn += 1
        return port


async def storm(ctx: Ctx, label: str, systems: list[System], n: int) -> None:
    """The storm on one or more processes of one system: `n` sockets spread over them (socket i on process i mod k),
    all closed at once, each back after its own close with 0.5–1.5 s jitter (then backoff) to the server the
    balancer picks, and `sync` from its last seq, while 2 messages/s are sent (alternating between the processes)."""
    first = systems[0]
    tenant = first.tenant
    procs_ = [s.daphne for s in systems]
    names = ["A", "B"] if len(systems) == 2 else [str(i) for i in range(len(systems))]
    socks: list[Sock] = []
    failures = 0
    for k, sys_ in enumerate(systems):
        # A round robin by socket puts every k-th socket on each process; opened per process here, which is the
        # same split (and every user has sockets on every process).
        opened, _, failed = await sys_.sockets(len(range(k, n, len(systems))), concurrency=100)
        socks += opened
        failures += failed
    for proc in procs_:
        await quiesce(proc)
    stop = asyncio.Event()

    async def writer() -> None:  # events keep coming during the storm (each reaches every socket)
        # 2 sends/s = 4 events/s x 1,000 sockets = 4,000 deliveries/s, under what M4 measures one process can
        # deliver. Runs 1-3 sent 20/s: 40,000 deliveries/s, several times that capacity, which measured
        # overload rather than the storm (docs/performance.md).
        i = 0
        while not stop.is_set():
            sender = systems[i % len(systems)]
            await sender.post_message(tenant.conversation_ids[i % 10], f"m8-{i}", "during the storm")
            i += 1
            await asyncio.sleep(0.5)

    wtask = asyncio.create_task(writer())
    await asyncio.sleep(1)
    users = [tenant.user_ids[i % len(tenant.user_ids)] for i in range(len(socks))]
    # Tickets for the first try, minted before the storm (they live 60 s); retries mint their own.
    tickets = await amint(tenant.id, users)
    pick: int | RoundRobin = first.port if len(systems) == 1 else RoundRobin([s.port for s in systems])
    # The baseline once the writer is sending: a process's first sends open the send path's own Redis clients
    # (publish, broker, health check), which are not the per-socket leak this row looks for (channels_redis #279).
    clients_before = redis_info(ctx.services.redis_url)["connected_clients"]
    since: dict[int, int] = {}
    cpu0 = [proc.cpu_seconds() for proc in procs_]
    gen0 = time.process_time()
    t0 = time.perf_counter()

    async def back(i: int, old: Sock) -> Reconnect:
        # A client notices its own socket's close and only then waits its jitter: not until every socket closed.
        await old.close()
        since[i] = old.last_seq()
        return await reconnect(pick, tenant.slug, tenant.id, users[i], since[i], started=t0, ticket=tickets[i])

    results = await asyncio.gather(*(back(i, old) for i, old in enumerate(socks)))
    cpu = [proc.cpu_seconds() - c0 for proc, c0 in zip(procs_, cpu0, strict=True)]
    wall = time.perf_counter() - t0
    generator = time.process_time() - gen0  # this process: the 1,000 clients and the writer share one core
    fresh = [(r.sock, since[i]) for i, r in enumerate(results) if r.sock is not None]
    done_at = [r.synced_at for r in results if r.synced_at is not None]
    handshakes = [h for r in results for h in r.handshakes]
    failed = sum(r.sock is None for r in results)
    reasons: Counter[str] = Counter()
    for r in results:
        reasons.update(r.errors)
    retries = sum(r.attempts for r in results) - len(results)
    back_on = Counter(r.port for r in results if r.sock is not None)
    await asyncio.sleep(1)
    stop.set()
    await wtask
    head = await settle(first, [s for s, _ in fresh])
    gaps = dups = behind = 0
    for old in socks:
        g0, d0 = old.check()
        gaps += g0
        dups += d0
    for s, start in fresh:
        g, d = s.check(upto=head, start=start)
        gaps += g
        dups += d
        behind += s.behind(head)
    await asyncio.sleep(1)
    clients_after = redis_info(ctx.services.redis_url)["connected_clients"]
    t99 = pct(done_at, 99)
    where = "one Daphne" if len(systems) == 1 else f"{len(systems)} Daphne, round robin"
    ctx.add(
        label,
        f"{len(socks)} sockets ({where}) closed at once, back with 0.5–1.5 s jitter (then backoff) + sync: "
        "99 % synced after; retries",
        f"{t99:.1f} s; {retries}",
        "",
        target="≤ 3 s",
        ok=t99 <= 3 and failed == 0,
    )
    ctx.add(
        label,
        "  handshake p50 / p99; failed; Redis clients before → after",
        f"{ms(pct(handshakes, 50)):.0f} / {ms(pct(handshakes, 99)):.0f} ms; {failed + failures}; "
        f"{clients_before} → {clients_after}",
        target="p99 ≤ 100 ms; Redis clients back to baseline",
        ok=ms(pct(handshakes, 99)) <= 100 and clients_after <= clients_before + 2,
        note=f"failures: {dict(reasons)}" if reasons else "",
    )
    per = " / ".join(f"{c:.1f}" for c in cpu)
    ctx.add(
        label,
        f"  Daphne CPU from the close until every socket was back{' (' + ' / '.join(names) + ')' if len(cpu) > 1 else ''}"
        f"; per reconnect; wall; load generator CPU",
        f"{per} s; {1000 * sum(cpu) / max(1, len(fresh)):.1f} ms; {wall:.1f} s; {generator:.1f} s",
        note="" if len(systems) == 1 else "back on " + " / ".join(str(back_on[s.port]) for s in systems),
    )
    ctx.m10_row(label, f" across close + sync ({len(fresh)} sockets, head {head})", gaps, dups, behind)
    await close_many([s for s, _ in fresh])


async def m4x(ctx: Ctx) -> None:
    """Experiment (not the product): M4 at N=1,000 with Channels' per-message sync-thread hop removed from the
    consumer's dispatch (bench/asgi.py, BENCH_EXPERIMENT=no-dispatch-close), to size that cost."""
    ctx.server_env = {"BENCH_EXPERIMENT": "no-dispatch-close"}
    rows = len(ctx.report.rows)
    try:
        await m4(ctx, levels=(1000,))
    finally:
        ctx.server_env = {}
    for row in ctx.report.rows[rows:]:
        if row.scenario == "M4":
            row.scenario = "M4x"


SCENARIOS: dict[str, Callable[[Ctx], Any]] = {
    "floor": floor,
    "m1": m1,
    "m1x2": m1x2,
    "m2": m2,
    "m2x2": m2x2,
    "m3": m3,
    "m4": m4,
    "m4x": m4x,
    "m5": m5,
    "m6": m6,
    "m7": m7,
    "m8": m8,
    "m8x2": m8x2,
    "m9": m9,
}
