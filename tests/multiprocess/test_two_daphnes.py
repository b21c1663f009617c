"""Two real Daphne processes sharing Redis and PostgreSQL deliver each other's events to their clients.

Each process has its own in-process state (consumers, typing timers); everything that must cross processes goes
through Redis (channel layer pub/sub, presence) or PostgreSQL (event log, tickets). The test also kills one
process with SIGKILL and watches its user go offline on the other.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import websockets
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connection

from inbox.models import Direction
from inbox.tests.factories import make_message
from inbox.tests.fixtures import World
from inbox.tests.test_consumers import _flush_layer, _realtime_settings, append_messages
from tenants.tickets import ticket_issue

pytestmark = pytest.mark.django_db(transaction=True)
__all__ = ["_flush_layer", "_realtime_settings"]

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def database_url() -> str:
    db = connection.settings_dict  # the test database: the servers must see what the test commits
    auth = quote(db["USER"], safe="") + (f":{quote(db['PASSWORD'], safe='')}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class Server:
    def __init__(self, name: str, tmp: Path) -> None:
        self.port = free_port()
        self.log = tmp / f"daphne-{name}.log"
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "mp_settings",
            "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
            "DATABASE_URL": database_url(),
            "DATABASE_POOL_MIN": "1",
            "DATABASE_POOL_MAX": "4",
            "REDIS_URL": settings.REDIS_URL,
            "CHANNEL_LAYER_PREFIX": settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"],
            "PRESENCE_TTL": "1.5",
            "PRESENCE_HEARTBEAT": "0.4",
            "PRESENCE_OFFLINE_GRACE": "0",
            "LOG_LEVEL": "WARNING",
        }
        daphne = str(Path(sys.executable).parent / "daphne")
        args = [daphne, "-b", "127.0.0.1", "-p", str(self.port), "--websocket-max-message-size", "65536"]
        args += ["--websocket-max-frame-size", "65536", "config.asgi:application"]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"daphne exited: {self.log.read_text()[-3000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise AssertionError(f"daphne not listening: {self.log.read_text()[-3000:]}")

    def url(self, slug: str, ticket: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/tenants/{slug}/?ticket={ticket}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:  # Daphne sometimes hangs on SIGTERM (performance-method.md 5.3)
                self.process.kill()
                self.process.wait(timeout=5)


@pytest.fixture
def servers(require_redis: None, require_postgres: None, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    a, b = Server("a", tmp_path), Server("b", tmp_path)
    try:
        deadline = time.monotonic() + 30
        a.wait_ready(deadline)
        b.wait_ready(deadline)
        yield a, b
    finally:
        a.stop()
        b.stop()


async def frame_of(ws: Any, *types: str, timeout: float = 5) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] in types:
                return frame


async def quiet(ws: Any, timeout: float = 0.3) -> list[dict[str, Any]]:
    frames = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                frames.append(json.loads(await ws.recv()))
    except TimeoutError:
        return frames


async def connect(server: Server, user: Any, tenant: Any) -> tuple[Any, dict[str, Any]]:
    ticket, _ = await database_sync_to_async(ticket_issue)(user=user, tenant=tenant)
    ws = await websockets.connect(server.url(tenant.slug, ticket), open_timeout=10)
    hello = await frame_of(ws, "hello")
    await ws.send(json.dumps({"type": "sync", "data": {"since": hello["data"]["seq"]}}))
    await frame_of(ws, "sync:done")
    return ws, hello


async def test_two_daphne_processes_share_events_presence_and_typing(
    world: World, servers: tuple[Server, Server]
) -> None:
    a, b = servers
    outbound = await database_sync_to_async(make_message)(world.acme_conversation, direction=Direction.OUTBOUND)
    alice, _ = await connect(a, world.alice, world.acme)
    bob, hello = await connect(b, world.bob, world.acme)
    charlie, _ = await connect(b, world.charlie, world.globex)
    assert world.alice.pk in hello["data"]["online_user_ids"]  # presence crosses processes

    # Typing from a client of A reaches a viewer on B.
    conv = world.acme_conversation.pk
    for ws in (alice, bob):
        await ws.send(json.dumps({"type": "conversation:join", "data": {"conversation_id": conv}}))
    viewers = await frame_of(alice, "conversation:viewers")
    while len(viewers["data"]["user_ids"]) < 2:
        viewers = await frame_of(alice, "conversation:viewers")
    assert viewers["data"]["user_ids"] == sorted([world.alice.pk, world.bob.pk])
    await alice.send(json.dumps({"type": "typing:start", "data": {"conversation_id": conv}}))
    assert (await frame_of(bob, "typing:start"))["data"]["user_id"] == world.alice.pk

    # A durable event caused on B (bob's read marker) reaches A's client; one from a third process reaches both.
    await bob.send(json.dumps({"type": "message:read", "data": {"conversation_id": conv, "message_id": outbound.pk}}))
    read = await frame_of(alice, "message:read")
    assert read["seq"] == 1 and read["data"]["user_id"] == world.bob.pk
    await database_sync_to_async(append_messages)(conv, world.acme.pk)
    for ws in (alice, bob):
        assert (await frame_of(ws, "message:new"))["seq"] == 2
    assert [f for f in await quiet(charlie) if f["type"] not in ("user:online", "user:offline")] == []

    # Daphne itself refuses an oversize frame (1009) and a foreign Origin (HTTP 403).
    await alice.send("x" * (64 * 1024 + 1))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await frame_of(alice, "never")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    ticket, _ = await database_sync_to_async(ticket_issue)(user=world.alice, tenant=world.acme)
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(a.url("acme", ticket), origin="https://evil.example", open_timeout=10)
    assert refused.value.response.status_code == 403

    # Kill A outright: alice (connected again there) goes offline on B within TTL + a heartbeat.
    alice, _ = await connect(a, world.alice, world.acme)
    a.process.send_signal(signal.SIGKILL)
    a.process.wait(timeout=5)
    started = time.monotonic()
    offline = await frame_of(bob, "user:offline", timeout=10)
    assert offline["data"] == {"user_id": world.alice.pk}
    assert time.monotonic() - started < 5
    await bob.close()
    await charlie.close()
