"""Scale-out, short version (issue 7): two Daphne processes and a Celery worker on one PostgreSQL and one Redis.

Clients on either process receive every event from the other (REST sends on both, a webhook processed by the
worker), presence is right across both, and killing one process (SIGKILL, no clean-up) sends its clients to the
other, where `sync` catches them up with nothing lost and nothing twice. The full version with many clients and
load is `python -m bench.scaleout`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from django.db import connection

from accounts.models import User
from bench.harness import HttpPool, Sock, jwt_for, signature, webhook_body
from inbox.tests.factories import PASSWORD, make_member
from inbox.tests.fixtures import World
from tests import procs

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

APP_SECRET = "multiprocess-app-secret"  # what tests.procs.server_env gives the server processes


@dataclass
class Cluster:
    a: procs.Proc
    b: procs.Proc
    worker: procs.Proc
    redis_url: str

    def port(self, proc: procs.Proc) -> int:
        assert proc.port is not None
        return proc.port


@pytest.fixture
def cluster(require_postgres: None, require_redis: None, world: World, tmp_path: Path) -> Iterator[Cluster]:
    # A private Redis when the binary is here (nothing else's Celery worker can take our tasks); else the configured
    # one, kept apart by a unique prefix.
    private = procs.start_redis(log_dir=tmp_path) if shutil.which("redis-server") else None
    redis_url = f"redis://127.0.0.1:{private.port}/0" if private else settings.REDIS_URL
    env = procs.server_env(
        database_url=procs.database_url_of(connection.settings_dict),
        redis_url=redis_url,
        prefix=f"scaleout{uuid.uuid4().hex[:8]}",
        extra={
            "DJANGO_SETTINGS_MODULE": "bench.settings",
            "WHATSAPP_APP_SECRET": APP_SECRET,
            # A killed process's sockets lapse from presence in seconds here (production: 30 s TTL, 10 s heartbeat).
            "BENCH_PRESENCE_TTL": "4",
            "BENCH_PRESENCE_HEARTBEAT": "1",
            "BENCH_OFFLINE_GRACE": "0.3",
        },
    )
    started: list[procs.Proc] = []
    try:
        a = procs.start_daphne(env, name="daphne-a", app="bench.asgi:application", log_dir=tmp_path, wait=False)
        started.append(a)
        b = procs.start_daphne(env, name="daphne-b", app="bench.asgi:application", log_dir=tmp_path, wait=False)
        started.append(b)
        worker = procs.start_celery(env, queues="inbound,default", name="worker", log_dir=tmp_path, wait=False)
        started.append(worker)
        procs.wait_listening(a, timeout=45)
        procs.wait_listening(b, timeout=45)
        procs.wait_ready(worker, timeout=45)
        yield Cluster(a=a, b=b, worker=worker, redis_url=redis_url)
    finally:
        procs.stop_all(started, timeout=4)
        if private is not None:
            private.stop()


async def login(pool: HttpPool, username: str) -> str:
    return await jwt_for(pool, username, PASSWORD)


async def socket_on(pool: HttpPool, token: str, slug: str, name: str, *, sync: bool = True) -> Sock:
    """JWT → REST ticket from that process → WebSocket on that process (then `sync` from hello's head)."""
    status, body = await pool.request(
        "POST", f"/api/tenants/{slug}/ws-ticket/", headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 201, body
    sock = Sock(name)
    sock.keep = True
    await sock.open(pool.port, slug, json.loads(body)["ticket"], sync=sync)
    return sock


async def send(pool: HttpPool, token: str, slug: str, conversation_id: int, client_id: str) -> None:
    status, body = await pool.request(
        "POST",
        f"/api/tenants/{slug}/conversations/{conversation_id}/messages/",
        body=json.dumps({"client_id": client_id, "text": f"scale-out {client_id}"}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    assert status == 201, body


def fast_passwords(world: World) -> User:
    """Add dave, and give every user a cheap PBKDF2 hash the servers can check (the suite's MD5 hasher is
    configured in this process only); the iteration count is stored in the hash, so logins stay fast."""
    from django.db import connection as thread_connection

    try:
        dave = make_member(world.acme, username="dave")
        hasher = PBKDF2PasswordHasher()
        User.objects.update(password=hasher.encode(PASSWORD, hasher.salt(), iterations=1000))
        return dave
    finally:
        thread_connection.close()


def new_message(key: str, value: str):  # type: ignore[no-untyped-def]
    return lambda f: f["type"] == "message:new" and f["data"].get(key) == value


async def test_it_spreads_events_and_presence_across_processes_and_survives_a_killed_one(
    cluster: Cluster, world: World
) -> None:
    dave = await asyncio.to_thread(fast_passwords, world)
    pa, pb = HttpPool(cluster.port(cluster.a)), HttpPool(cluster.port(cluster.b))
    slug, conv = world.acme.slug, world.acme_conversation.pk
    alice_jwt, bob_jwt = await login(pa, "alice"), await login(pb, "bob")
    charlie_jwt, dave_jwt = await login(pb, "charlie"), await login(pa, dave.username)

    alice = await socket_on(pa, alice_jwt, slug, "alice@A")
    dave_a = await socket_on(pa, dave_jwt, slug, "dave@A")
    bob = await socket_on(pb, bob_jwt, slug, "bob@B")
    charlie = await socket_on(pb, charlie_jwt, world.globex.slug, "charlie@B")

    # Presence across processes: B's hello lists users whose sockets are on A, and A hears B's user come online.
    assert {world.alice.pk, dave.pk, world.bob.pk} <= set(bob.hello["data"]["online_user_ids"])
    await alice.wait_for(lambda f: f["type"] == "user:online" and f["data"]["user_id"] == world.bob.pk, 10)

    # A send through A reaches B's client; a send through B reaches A's client.
    await send(pa, alice_jwt, slug, conv, "via-a")
    await bob.wait_for(new_message("client_id", "via-a"), 10)
    await send(pb, bob_jwt, slug, conv, "via-b")
    await alice.wait_for(new_message("client_id", "via-b"), 10)

    # A webhook received by A is processed by the worker and reaches clients of both processes.
    raw = webhook_body(world.acme_number.phone_number_id, "4917000000001", "wamid.SCALEOUT1", "from the customer")
    status, _ = await pa.request(
        "POST",
        "/webhooks/whatsapp/",
        body=raw,
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature(raw, APP_SECRET)},
    )
    assert status == 200
    for sock in (alice, bob):
        await sock.wait_for(new_message("wa_message_id", "wamid.SCALEOUT1"), 15)

    # Kill A like a crash. Its clients see the socket drop; B keeps serving and events keep coming meanwhile.
    cluster.a.kill()
    await alice.closed(10)
    await dave_a.closed(10)
    missed = [f"while-down-{i}" for i in range(5)]
    for key in missed:
        await send(pb, bob_jwt, slug, conv, key)

    # Alice reconnects to B and catches up with sync from the last seq she saw: every event once, in order.
    alice_again = await socket_on(pb, alice_jwt, slug, "alice@B", sync=False)
    since = alice.last_seq()
    await alice_again.send("sync", {"since": since})
    await alice_again.wait_for(lambda f: f["type"] == "sync:done", 10)
    for key in missed:
        await alice_again.wait_for(new_message("client_id", key), 1)
    await send(pb, bob_jwt, slug, conv, "after-reconnect")
    await alice_again.wait_for(new_message("client_id", "after-reconnect"), 10)
    head = max(bob.last_seq(), alice_again.last_seq())
    assert alice.check() == (0, 0)
    assert alice_again.check(upto=head, start=since) == (0, 0)
    assert bob.check(upto=head) == (0, 0)

    # Dave's only socket died with A: he goes offline for B's clients once his entry lapses; alice stays online.
    await bob.wait_for(lambda f: f["type"] == "user:offline" and f["data"]["user_id"] == dave.pk, 15)
    late = await socket_on(pb, bob_jwt, slug, "bob-late@B")
    online = set(late.hello["data"]["online_user_ids"])
    assert world.alice.pk in online and world.bob.pk in online and dave.pk not in online

    # Nothing of acme reached globex's socket on either path.
    assert charlie.seqs == [] and not any(f["type"].startswith("message") for f in charlie.frames)

    for sock in (alice_again, bob, charlie, late):
        await sock.close()
    pa.close()
    pb.close()
    assert cluster.b.alive() and cluster.worker.alive()
    assert "Traceback" not in cluster.b.log_text(), cluster.b.log_text()[-3000:]
