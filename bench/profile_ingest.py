"""CPU and SQL cost of receiving one signed webhook (the path benchmark M5 loads), next to the empty view, no server.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/inbox_<tag> REDIS_URL=redis://127.0.0.1:6379/<n> \\
        .venv/bin/python -m bench.profile_ingest -n 1000          # CPU µs per webhook POST and per empty-view POST
    ... -m bench.profile_ingest -n 1000 --wsgi --cprofile /tmp/ingest.prof   # + cProfile of the webhook POSTs
    ... -m bench.profile_ingest -n 1 --sql                                    # the statements of one POST
    .venv/bin/py-spy record -o /tmp/ingest.svg -- .venv/bin/python -m bench.profile_ingest -n 3000   # all threads

It runs `bench.settings` (the server's settings plus `/bench/empty/`, M5's R_ingest baseline) with DEBUG off, seeds
its own tenant and number, and POSTs the benchmark's own one-message body (distinct wamids, signed with the app
secret) to `/webhooks/whatsapp/`: every POST checks the signature, stores the raw event (committed) and enqueues its
processing task on the broker of REDIS_URL (no worker runs; the stored events and the queue are removed at the end).
The same number of POSTs of the same bodies go to `/bench/empty/` in alternating rounds (A, B, A, B ...), so both
see the same moments of a shared box; the ratio of their CPU is what the ingest path adds over Django itself.

By default requests go through the project's ASGI handler (config/http.py) as Daphne calls it: each request's sync
code on one of the long-lived request threads, its database connection back to the pool at the end. (Django's own
ASGIHandler started a new thread per request, so per-thread state such as a DatabaseWrapper or Celery's result
backend was built per request; the test client's AsyncClient hid that: two thirds of what a webhook added to the
empty view, 1.0 of 3.0 ms.) `--wsgi` uses the
test Client (one thread, so cProfile sees everything, but not the per-thread costs). CPU is this process's
`time.process_time()`: Django, psycopg, redis-py, kombu (not PostgreSQL's or Redis' own).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import secrets
import statistics
import sys
import time
from typing import Any

from bench.profile_send import SqlCounter, _wrapped, add_profiling_args, empty_queue

APP_SECRET = "profile-ingest-app-secret"
URL = "/webhooks/whatsapp/"
EMPTY_URL = "/bench/empty/"


def _configure() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    os.environ["DEBUG"] = "False"
    os.environ.setdefault("SECRET_KEY", "bench-profile-not-secret-" + "k" * 40)
    os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
    os.environ.setdefault("SECURE_SSL_REDIRECT", "False")  # loopback, like the benchmark's servers
    os.environ.setdefault("WHATSAPP_APP_SECRET", APP_SECRET)
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        sys.exit("bench.profile_ingest measures PostgreSQL: set DATABASE_URL (and REDIS_URL) to your isolated ones")
    import django

    django.setup()


def seed() -> tuple[int, str, str]:
    """A fresh tenant and number; returns (tenant id, phone_number_id, the sender's wa_id)."""
    from tenants.models import Tenant, WhatsAppNumber
    from tenants.scoping import scopes_disabled

    tag = secrets.token_hex(4)
    with scopes_disabled():
        tenant = Tenant.objects.create(slug=f"prof-ingest-{tag}", name=f"Profile ingest {tag}")
        number = WhatsAppNumber.objects.create(
            tenant=tenant, phone_number_id=f"8{secrets.randbelow(10**12):012d}", display_phone_number="15550002"
        )
    return tenant.pk, number.phone_number_id, f"49{secrets.randbelow(10**10):010d}"


def run(args: argparse.Namespace) -> None:
    from django.conf import settings
    from django.db import connection
    from django.test import Client

    from bench.harness import webhook_body
    from config.http import get_asgi_application
    from webhooks.models import WebhookEvent
    from webhooks.parsers import signature_for

    tenant_id, phone_number_id, wa_id = seed()
    tag = secrets.token_hex(3)
    total = args.warmup + args.n
    bodies = [
        webhook_body(phone_number_id, wa_id, f"wamid.PI{tag}.{i}", f"ingest {i}") for i in range(total + args.round)
    ]
    first_pk = WebhookEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    statuses: dict[str, dict[int, int]] = {URL: {}, EMPTY_URL: {}}

    if args.asgi:
        handler = get_asgi_application()
        loop = asyncio.new_event_loop()

        def post(url: str, body: bytes) -> None:
            status = loop.run_until_complete(_asgi_post(handler, url, body, settings.WHATSAPP_APP_SECRET))
            statuses[url][status] = statuses[url].get(status, 0) + 1

    else:
        client = Client()

        def post(url: str, body: bytes) -> None:
            response = client.post(
                url,
                body,
                content_type="application/json",
                headers={"X-Hub-Signature-256": signature_for(body, settings.WHATSAPP_APP_SECRET)},
            )
            statuses[url][response.status_code] = statuses[url].get(response.status_code, 0) + 1

    counter = SqlCounter()
    cpu: dict[str, list[float]] = {URL: [], EMPTY_URL: []}
    sql: list[int] = []
    profiler = cProfile.Profile(time.process_time) if args.cprofile else None
    with _wrapped(connection, counter):
        for i in range(args.warmup):
            post(URL, bodies[i])
            post(EMPTY_URL, bodies[i])
        for url in statuses:
            statuses[url].clear()
        counter.keep = args.sql
        # Rounds of `--round` POSTs to each URL in turn: CPU time is summed per round (process_time ticks coarsely).
        done = 0
        while done < args.n:
            size = min(args.round, args.n - done)
            chunk = bodies[args.warmup + done : args.warmup + done + size]
            for url in (URL, EMPTY_URL):
                before = counter.count
                if profiler is not None and url == URL:
                    profiler.enable()
                c0 = time.process_time()
                for body in chunk:
                    post(url, body)
                cpu[url].append((time.process_time() - c0) / size)
                if profiler is not None and url == URL:
                    profiler.disable()
                if url == URL:
                    sql.append((counter.count - before) // size)
            done += size

    ingest, empty = statistics.median(cpu[URL]), statistics.median(cpu[EMPTY_URL])
    print(
        f"POSTs: {args.n} each ({'ASGI handler' if args.asgi else 'test Client'}), rounds of {args.round};"
        f" statuses webhook {statuses[URL]}, empty {statuses[EMPTY_URL]}"
    )
    print(
        f"CPU per webhook POST: median of rounds {1e6 * ingest:.0f} µs (mean {1e6 * statistics.mean(cpu[URL]):.0f});"
        f" per empty-view POST {1e6 * empty:.0f} µs (mean {1e6 * statistics.mean(cpu[EMPTY_URL]):.0f})"
    )
    print(f"ingest adds {1e6 * (ingest - empty):.0f} µs; CPU ratio empty/webhook {empty / ingest:.2f}")
    print(f"SQL statements per webhook POST: {statistics.median(sql) if sql else 0}")
    if args.sql and sql and sql[-1]:
        for statement in counter.statements[-sql[-1] :]:
            print("  ", statement[:300])
    if profiler is not None:
        profiler.dump_stats(args.cprofile)
        pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.top)
    _cleanup(first_pk, tenant_id)


async def _asgi_post(handler: Any, path: str, body: bytes, secret: str) -> int:
    """One POST through the project's ASGI handler as Daphne calls it (not the test client's handler, which keeps the
    connection open across requests): the request's sync code on a request thread, with the signals that return the
    connection to the pool."""
    from webhooks.parsers import signature_for

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-hub-signature-256", signature_for(body, secret).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    delivered = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        # The client never disconnects: Django's disconnect listener waits here until the response is sent.
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await handler(scope, receive, send)
    return status


def _cleanup(first_pk: int, tenant_id: int) -> None:
    """Drop what the POSTs stored and enqueued (no worker runs here) and the seeded tenant."""
    from tenants.models import Tenant
    from tenants.scoping import scopes_disabled
    from webhooks.models import WebhookEvent

    WebhookEvent.objects.filter(pk__gt=first_pk).delete()
    with scopes_disabled():
        Tenant.objects.filter(pk=tenant_id).delete()
    empty_queue("inbound")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1000, help="measured POSTs to each URL (default 1000)")
    parser.add_argument("--warmup", type=int, default=50, help="POSTs to each URL before measuring (default 50)")
    parser.add_argument("--round", type=int, default=50, help="POSTs per URL per alternating round (default 50)")
    add_profiling_args(parser, "webhook POST")
    args = parser.parse_args()
    _configure()
    run(args)


if __name__ == "__main__":
    main()
