"""CPU and SQL cost of one agent send through the REST API (the path benchmark M1 loads), without a server.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/inbox_<tag> REDIS_URL=redis://127.0.0.1:6379/<n> \\
        .venv/bin/python -m bench.profile_send -n 300            # CPU ms and SQL statements per send
    ... -m bench.profile_send -n 300 --wsgi --cprofile /tmp/send.prof   # + cProfile of CPU time (top entries, saved)
    ... -m bench.profile_send -n 1 --sql                                # the statements of one send
    .venv/bin/py-spy record -o /tmp/send.svg -- .venv/bin/python -m bench.profile_send -n 500   # all threads

By default requests go through Django's ASGI handler (AsyncClient): the view runs in the thread-sensitive worker
thread and the channel-layer publish hops back to the event loop, as under Daphne. `--wsgi` uses the test Client
instead (one thread, so cProfile sees everything; but each publish then starts its own event loop, which costs
more than under Daphne).

It runs `bench.settings` with DEBUG off (the server's settings) and the send throttle raised like the benchmark,
seeds its own tenant (one agent, `--conversations` open conversations) in the given database, and POSTs
`/api/tenants/<slug>/conversations/<id>/messages/` with a JWT and a fresh client_id, round robin over the
conversations, after `--warmup` sends that are not counted. Every send really commits, logs its events, publishes
them on the channel layer and enqueues its Celery task (on the broker of REDIS_URL; the queue is emptied at the end).
CPU is this process's `time.process_time()`, i.e. all of it: Django, DRF, psycopg, redis-py, kombu.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def _configure() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
    os.environ["DEBUG"] = "False"
    os.environ.setdefault("SECRET_KEY", "bench-profile-not-secret-" + "k" * 40)
    os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
    os.environ.setdefault("SECURE_SSL_REDIRECT", "False")  # loopback, like the benchmark's servers
    os.environ.setdefault("THROTTLE_SEND", "1000000/min")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        sys.exit("bench.profile_send measures PostgreSQL: set DATABASE_URL (and REDIS_URL) to your isolated ones")
    import django

    django.setup()


class SqlCounter:
    """Counts (and optionally keeps) every statement through connection.execute_wrapper."""

    def __init__(self) -> None:
        self.count = 0
        self.keep = False
        self.statements: list[str] = []

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        self.count += 1
        if self.keep:
            self.statements.append(sql)
        return execute(sql, params, many, context)


def seed(conversations: int) -> tuple[str, str, list[int]]:
    """A fresh tenant with one agent and open conversations; returns (slug, bearer token, conversation ids)."""
    from django.utils import timezone
    from rest_framework_simplejwt.tokens import RefreshToken

    from accounts.models import User
    from inbox.models import Contact, Conversation
    from tenants.models import Membership, Role, Tenant, WhatsAppNumber
    from tenants.scoping import scopes_disabled

    tag = secrets.token_hex(4)
    with scopes_disabled():
        tenant = Tenant.objects.create(slug=f"prof-{tag}", name=f"Profile {tag}")
        user = User.objects.create_user(username=f"prof-{tag}", email=f"prof-{tag}@bench.invalid", password=None)
        Membership.objects.create(tenant=tenant, user=user, role=Role.AGENT)
        number = WhatsAppNumber.objects.create(
            tenant=tenant, phone_number_id=f"9{secrets.randbelow(10**12):012d}", display_phone_number="15550001"
        )
        contacts = Contact.objects.bulk_create(
            [Contact(tenant=tenant, wa_id=f"49{secrets.randbelow(10**10):010d}") for _ in range(conversations)]
        )
        convs = Conversation.objects.bulk_create(
            [Conversation(tenant=tenant, number=number, contact=c, last_inbound_at=timezone.now()) for c in contacts]
        )
    token = str(RefreshToken.for_user(user).access_token)
    return tenant.slug, token, [c.pk for c in convs]


def _body(i: int) -> bytes:
    return json.dumps({"client_id": f"p-{secrets.token_hex(6)}-{i}", "text": f"hello {i}"}).encode()


def run(args: argparse.Namespace) -> None:
    from django.db import connection
    from django.test import AsyncClient, Client

    slug, token, conversation_ids = seed(args.conversations)
    urls = [f"/api/tenants/{slug}/conversations/{pk}/messages/" for pk in conversation_ids]
    headers = {"Authorization": f"Bearer {token}"}
    counter = SqlCounter()
    statuses: dict[int, int] = {}

    if args.asgi:
        aclient = AsyncClient()
        loop = asyncio.new_event_loop()

        def send(i: int) -> None:
            response = loop.run_until_complete(
                aclient.post(urls[i % len(urls)], _body(i), content_type="application/json", headers=headers)
            )
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    else:
        client = Client()

        def send(i: int) -> None:
            response = client.post(urls[i % len(urls)], _body(i), content_type="application/json", headers=headers)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    cpu: list[float] = []
    wall: list[float] = []
    queries: list[int] = []
    # CPU time, not wall time: waits on PostgreSQL and Redis are not this process's cost, and on a shared box the
    # wall clock also counts the time other processes hold the cores.
    profiler = cProfile.Profile(time.process_time) if args.cprofile else None
    with _wrapped(connection, counter):
        for i in range(args.warmup):
            send(i)
        statuses.clear()
        counter.keep = args.sql
        for i in range(args.warmup, args.warmup + args.n):
            before = counter.count
            c0, w0 = time.process_time(), time.perf_counter()
            if profiler is not None:
                profiler.enable()
            send(i)
            if profiler is not None:
                profiler.disable()
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
            queries.append(counter.count - before)

    print(f"sends: {args.n} ({'ASGI AsyncClient' if args.asgi else 'test Client'}), statuses {statuses}")
    print(f"CPU per send: mean {1000 * statistics.mean(cpu):.2f} ms, median {1000 * statistics.median(cpu):.2f} ms")
    print(f"wall per send: mean {1000 * statistics.mean(wall):.2f} ms, median {1000 * statistics.median(wall):.2f} ms")
    print(f"SQL statements per send: mean {statistics.mean(queries):.2f}, max {max(queries)}")
    if args.sql:
        for sql in counter.statements[-queries[-1] :] if queries[-1] else []:
            print("  ", sql[:300])
    if profiler is not None:
        profiler.dump_stats(args.cprofile)
        stats = pstats.Stats(profiler)
        stats.sort_stats(args.sort).print_stats(args.top)
    _cleanup()


@contextmanager
def _wrapped(connection: Any, counter: SqlCounter) -> Iterator[None]:
    """Count on this thread's connection and on every connection opened meanwhile (the ASGI handler runs the view
    in another thread, with its own connection)."""
    from django.db.backends.signals import connection_created

    def install(sender: Any, connection: Any, **kwargs: Any) -> None:
        if counter not in connection.execute_wrappers:
            connection.execute_wrappers.append(counter)

    connection_created.connect(install)
    try:
        with connection.execute_wrapper(counter):
            yield
    finally:
        connection_created.disconnect(install)


def empty_queue(name: str) -> None:
    """Empty a Celery queue on REDIS_URL's broker that this script filled (no worker runs here)."""
    url = os.environ.get("REDIS_URL", "")
    if url:
        import redis

        redis.Redis.from_url(url).delete(name)


def _cleanup() -> None:
    empty_queue("celery")


def add_profiling_args(parser: argparse.ArgumentParser, what: str) -> None:
    """The options every profile_* script shares: how requests go in (--wsgi), --sql, and cProfile's."""
    parser.add_argument(
        "--wsgi",
        dest="asgi",
        action="store_false",
        help="through the test Client (WSGI, one thread: what --cprofile sees) instead of the ASGI handler, where the"
        " view runs in a worker thread as under Daphne (the default; cProfile does not see that thread: use py-spy)",
    )
    parser.add_argument("--sql", action="store_true", help=f"print the statements of the last {what}")
    parser.add_argument("--cprofile", metavar="FILE", help=f"profile the measured {what}s with cProfile, save to FILE")
    parser.add_argument("--sort", default="cumulative", help="cProfile sort key (default cumulative; tottime)")
    parser.add_argument("--top", type=int, default=40, help="cProfile entries to print")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=200, help="measured sends (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="sends before measuring (default 20)")
    parser.add_argument("--conversations", type=int, default=20, help="conversations to send to, round robin")
    add_profiling_args(parser, "send")
    args = parser.parse_args()
    _configure()
    run(args)


if __name__ == "__main__":
    main()
