"""Checks 1 and 3 against a real Daphne started the way production starts it (Procfile flags).

* a foreign Origin is refused with HTTP 403 at the upgrade, even with a valid ticket;
* a 70 KiB client frame closes the socket with 1009, and 100 such attempts leave Daphne's memory flat;
* no ticket or token reaches Daphne's own log lines (access log and application log).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.procs import proc_rss_kib
from tests.reliability._procs import PASSWORD, Stack, daphne, free_port

pytestmark = pytest.mark.slow

ATTEMPTS = 100
SECRET_IN_LOG = re.compile(
    r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}|ticket=(?!\[redacted\])[A-Za-z0-9_-]{8,}"
)


async def _token(port: int) -> str:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        response = await client.post("/api/auth/token/", json={"username": "alice", "password": PASSWORD})
        response.raise_for_status()
        return str(response.json()["access"])


async def _ticket(port: int, access: str) -> str:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        response = await client.post("/api/tenants/acme/ws-ticket/", headers={"Authorization": f"Bearer {access}"})
        response.raise_for_status()
        return str(response.json()["ticket"])


async def _oversize_once(port: int, access: str, size: int) -> int | None:
    ticket = await _ticket(port, access)
    async with connect(f"ws://127.0.0.1:{port}/ws/tenants/acme/?ticket={ticket}") as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
        assert hello["type"] == "hello"
        try:
            await ws.send(json.dumps({"type": "ping", "pad": "x" * size}))
            while True:
                await asyncio.wait_for(ws.recv(), timeout=10)
        except ConnectionClosed:
            pass
        return ws.close_code


async def test_daphne_refuses_foreign_origins_and_oversize_frames_without_growing(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory()
    port = free_port()
    server = stack.own(daphne(port, stack.env))
    access = await _token(port)

    ticket = await _ticket(port, access)
    with pytest.raises(InvalidStatus) as refused:
        await connect(
            f"ws://127.0.0.1:{port}/ws/tenants/acme/?ticket={ticket}",
            origin="https://evil.example",  # type: ignore[arg-type]
        )
    assert refused.value.response.status_code == 403

    # A frame just under the limit is fine; one of 70 KiB is closed with 1009 (message too big).
    ticket = await _ticket(port, access)
    async with connect(f"ws://127.0.0.1:{port}/ws/tenants/acme/?ticket={ticket}") as ws:
        assert json.loads(await ws.recv())["type"] == "hello"
        await ws.send(json.dumps({"type": "ping", "pad": "x" * 60_000}))
        frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
        assert frame["type"] in ("pong", "error"), frame

    assert await _oversize_once(port, access, 70 * 1024) == 1009
    before = proc_rss_kib(server.pid)
    codes = [await _oversize_once(port, access, 70 * 1024) for _ in range(ATTEMPTS)]
    after = proc_rss_kib(server.pid)
    assert set(codes) == {1009}, set(codes)
    assert after - before < 20 * 1024, f"Daphne grew by {(after - before) // 1024} MiB over {ATTEMPTS} attempts"

    leaks = [line for line in server.log_text().splitlines() if SECRET_IN_LOG.search(line)]
    assert not leaks, leaks[:5]
