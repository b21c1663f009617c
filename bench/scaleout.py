"""Scale-out, full version: two Daphne processes + a Celery worker on one PostgreSQL and one Redis, under load.

    python -m bench.scaleout [--sockets 200] [--rate 50] [--quick]
    make bench SCEN=scaleout

Half the sockets on process A, half on B. REST sends alternate between A and B, signed webhooks go to B and are
processed by the worker. Every socket must receive every durable event (checked by seq against the database).
A fresh socket's hello must list users connected only to the other process. Then A is killed (SIGKILL) during
load: its clients reconnect to B with 0.5–1.5 s jitter, `sync` from their last seq, and must end with no gap and
no duplicate. The CI version of this is tests/scaleout/test_scaleout.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from bench.harness import (
    PREFIX,
    HttpPool,
    Report,
    Row,
    Sock,
    adb_head,
    amint,
    analyze,
    close_many,
    jwt_for,
    machine,
    ms,
    open_many,
    pct,
    reconnect,
    reset_data,
    seed_tenant,
    seq_check,
    services_up,
    signature,
    webhook_body,
)
from tests import procs

PRESENCE = {"BENCH_PRESENCE_TTL": "5", "BENCH_PRESENCE_HEARTBEAT": "2", "BENCH_OFFLINE_GRACE": "0.5"}


async def run(sockets: int, rate: int, phase: float) -> Report:
    report = Report()
    report.meta.update(machine())
    report.meta["started"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    services = await asyncio.to_thread(services_up)
    gaps_total = dups_total = 0

    def add(metric: str, value: Any, unit: str = "", **kw: Any) -> None:
        report.add(Row("SO", metric, value, unit, **kw))

    try:
        await asyncio.to_thread(reset_data, services)
        tenant = await asyncio.to_thread(seed_tenant, "bench", users=100, conversations=200, index=1)
        await asyncio.to_thread(analyze)
        from django.db import close_old_connections

        await asyncio.to_thread(close_old_connections)
        env = services.env(**PRESENCE)
        a = procs.start_daphne(
            env, name="so-daphne-a", app="bench.asgi:application", log_dir=services.log_dir, wait=False
        )
        b = procs.start_daphne(
            env, name="so-daphne-b", app="bench.asgi:application", log_dir=services.log_dir, wait=False
        )
        worker = procs.start_celery(
            env, queues="inbound,default", name="so-worker", log_dir=services.log_dir, wait=False
        )
        services.started += [a, b, worker]
        procs.wait_listening(a)
        procs.wait_listening(b)
        procs.wait_ready(worker)
        pa, pb = HttpPool(a.port or 0, size=4), HttpPool(b.port or 0, size=4)
        jwt = await jwt_for(pa, tenant.usernames[0])
        # Users 1..49 only on A, 50..99 only on B (presence has something to prove).
        half = sockets // 2
        users_a = [tenant.user_ids[1 + i % 49] for i in range(half)]
        users_b = [tenant.user_ids[50 + i % 50] for i in range(half)]
        socks_a, _, fa = await open_many(a.port or 0, tenant.slug, await amint(tenant.id, users_a), concurrency=50)
        socks_b, _, fb = await open_many(b.port or 0, tenant.slug, await amint(tenant.id, users_b), concurrency=50)
        add("sockets on A / B (failed handshakes)", f"{len(socks_a)} / {len(socks_b)} ({fa + fb})", ok=fa + fb == 0)

        # Presence across processes.
        await asyncio.sleep(1)
        probe = Sock("probe")
        await probe.open(b.port or 0, tenant.slug, (await amint(tenant.id, [tenant.user_ids[0]]))[0])
        online = set(probe.hello["data"]["online_user_ids"])
        missing = (set(users_a) | set(users_b)) - online
        add("users online on either process missing from a B hello", len(missing), target="0", ok=not missing)

        # Cross-process latency: a send through A, measured on B's sockets (and the other way round).
        sent: dict[str, tuple[float, str]] = {}
        cross: list[float] = []

        def hook(sock: Sock, frame: dict[str, Any], now: float) -> None:
            if frame["type"] == "message:new":
                entry = sent.get(frame["data"].get("client_id") or "")
                if entry is not None and sock.name.startswith("B") != (entry[1] == "B"):
                    cross.append(now - entry[0])

        for s in socks_a:
            s.name = "A" + s.name
            s.hook = hook
        for s in socks_b:
            s.name = "B" + s.name
            s.hook = hook
        convs = tenant.conversation_ids

        async def load(duration: float, tag: str, use_a: bool = True) -> dict[int, int]:
            statuses: dict[int, int] = {}
            count = int(rate * duration)
            start = time.perf_counter()
            tasks = []

            async def one(i: int) -> None:
                via_a = use_a and i % 2 == 0
                pool = pa if via_a else pb
                try:
                    if i % 5 == 4:  # every fifth event is an inbound WhatsApp message through the worker
                        raw = webhook_body(
                            tenant.phone_number_id, tenant.contact_wa_ids[i % 200], f"wamid.SO{tag}{i}", "hi"
                        )
                        status, _ = await pb.request(
                            "POST",
                            "/webhooks/whatsapp/",
                            body=raw,
                            headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature(raw)},
                        )
                    else:
                        key = f"so-{tag}-{i}"
                        sent[key] = (time.perf_counter(), "A" if via_a else "B")
                        status, _ = await pool.request(
                            "POST",
                            f"/api/tenants/{tenant.slug}/conversations/{convs[i % 200]}/messages/",
                            body=json.dumps({"client_id": key, "text": "scale-out"}).encode(),
                            headers={"Content-Type": "application/json", "Authorization": f"Bearer {jwt}"},
                        )
                except (ConnectionError, OSError):
                    status = 0
                statuses[status] = statuses.get(status, 0) + 1

            for i in range(count):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.wait(tasks, timeout=20)
            return statuses

        statuses = await load(phase, "p1")
        head = await settle_all(tenant.id, [*socks_a, *socks_b], 20)
        gaps, dups, behind = seq_check([*socks_a, *socks_b], head)
        gaps_total += gaps
        dups_total += dups
        add(f"phase 1: {rate}/s for {phase:.0f} s; HTTP statuses", json.dumps(statuses), ok=set(statuses) <= {200, 201})
        add("  cross-process POST→WS p50 / p99", f"{ms(pct(cross, 50)):.1f} / {ms(pct(cross, 99)):.1f}", "ms")
        add(
            f"  M10 gaps / dups / undelivered over {len(socks_a) + len(socks_b)} sockets (head {head})",
            f"{gaps} / {dups} / {behind}",
            target="0 / 0 / 0",
            ok=gaps == dups == behind == 0,
        )

        # Kill A during load; A's clients come back on B and sync.
        load_task = asyncio.create_task(load(phase, "p2", use_a=False))
        await asyncio.sleep(phase / 3)
        killed_at = time.perf_counter()
        a.kill()
        services.started.remove(a)
        await asyncio.gather(*(s.closed(10) for s in socks_a), return_exceptions=True)
        results = await asyncio.gather(
            *(
                reconnect(b.port or 0, tenant.slug, tenant.id, u, old.last_seq(), started=killed_at)
                for old, u in zip(socks_a, users_a, strict=True)
            )
        )
        again = [(r.sock, old.last_seq()) for r, old in zip(results, socks_a, strict=True) if r.sock is not None]
        synced = [r.synced_at for r in results if r.synced_at is not None]
        failed = sum(r.sock is None for r in results)
        reasons: Counter[str] = Counter()
        for r in results:
            reasons.update(r.errors)
        statuses2 = await load_task
        head = await settle_all(tenant.id, [s for s, _ in again] + socks_b, 20)
        gaps = dups = 0
        behind = 0
        for s, since in again:
            g1, d1 = s.check(upto=head, start=since)
            gaps += g1
            dups += d1
            behind += s.behind(head)
        for old in socks_a:
            g0, d0 = old.check()
            gaps += g0
            dups += d0
        g2, d2, b2 = seq_check(socks_b, head)
        gaps += g2
        dups += d2
        behind += b2
        gaps_total += gaps
        dups_total += dups
        add("phase 2 (A killed at 1/3): HTTP statuses on B", json.dumps(statuses2), ok=set(statuses2) <= {200, 201})
        add(
            f"  A's {len(socks_a)} clients back on B and synced: 99 % after; failed",
            f"{pct(synced, 99):.1f} s; {failed}",
            target="all, 0 failed",
            ok=failed == 0 and len(again) == len(socks_a),
            note=f"failures: {dict(reasons)}" if reasons else "",
        )
        add(
            f"  M10 gaps / dups / undelivered across the kill (head {head})",
            f"{gaps} / {dups} / {behind}",
            target="0 / 0 / 0",
            ok=gaps == dups == behind == 0,
        )
        late = Sock("late")
        try:
            await late.open(b.port or 0, tenant.slug, (await amint(tenant.id, [tenant.user_ids[0]]))[0])
            online = set(late.hello["data"]["online_user_ids"])
            absent = len((set(users_a) | set(users_b)) - online)
            add("users online after the kill missing from presence", absent, target="0", ok=absent == 0)
        except Exception as exc:
            add("presence after the kill: a new socket on B failed", repr(exc)[:120], ok=False)
        await close_many([late, probe, *socks_b, *(s for s, _ in again)])
        pa.close()
        pb.close()
    finally:
        services.stop_all()
    add("M10 total gaps / duplicates", f"{gaps_total} / {dups_total}", target="0 / 0", ok=gaps_total == dups_total == 0)
    return report


async def settle_all(tenant_id: int, socks: list[Sock], timeout: float) -> int:
    deadline = time.perf_counter() + timeout
    head = await adb_head(tenant_id)
    while time.perf_counter() < deadline:
        head = await adb_head(tenant_id)
        if all(s.last_seq() >= head for s in socks):
            # The worker may still commit sandbox statuses: wait until the head holds still for a moment.
            await asyncio.sleep(0.5)
            if await adb_head(tenant_id) == head:
                return head
        await asyncio.sleep(0.1)
    return head


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=100)
    parser.add_argument("--rate", type=int, default=10, help="events per second (4/5 REST sends, 1/5 webhooks)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    report = asyncio.run(run(args.sockets, args.rate, 6.0 if args.quick else 12.0))
    report.meta["prefix"] = PREFIX
    path = report.save(datetime.now(UTC).strftime("%Y%m%d-%H%M%S") + "-scaleout")
    print()
    print(report.table())
    print(f"\nsaved to {path}")


if __name__ == "__main__":
    cli()
