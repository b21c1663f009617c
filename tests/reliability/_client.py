"""A protocol-following WebSocket client for fault tests and bench scripts (PROTOCOL.md, version 1).

It logs in over the REST API (JWT), takes a single-use ticket per connection, remembers the last `seq` it saw and
sends `sync` after every (re)connect, reconnecting with jittered exponential backoff to whichever server answers.
It records every durable frame as it arrived on the wire, so a test can check "every event exactly once".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.reliability._procs import PASSWORD

logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the failures


@dataclass
class InboxClient:
    ports: list[int]  # Daphne processes; the first is preferred, the others are fallbacks
    slug: str
    username: str
    password: str = PASSWORD
    name: str = ""
    access: str = ""
    last_seq: int = 0
    wire_seqs: list[int] = field(default_factory=list)  # every durable seq, as received (duplicates included)
    message_ids: Counter[int] = field(default_factory=Counter)  # message:new ids, counted per distinct seq
    connects: int = 0
    reconnected_at: float | None = None
    closed_codes: list[int] = field(default_factory=list)
    ws: ClientConnection | None = None
    _reader: asyncio.Task[None] | None = None
    _sync_done: asyncio.Event = field(default_factory=asyncio.Event)
    _stopping: bool = False
    errors: list[dict[str, Any]] = field(default_factory=list)

    def http(self, port: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10)

    async def login(self) -> None:
        for port in self._port_order():
            try:
                async with self.http(port) as client:
                    response = await client.post(
                        "/api/auth/token/", json={"username": self.username, "password": self.password}
                    )
            except httpx.TransportError:
                continue
            response.raise_for_status()
            self.access = response.json()["access"]
            return
        raise ConnectionError("no server answered the login")

    def _port_order(self) -> list[int]:
        return list(self.ports)

    async def _ticket(self, port: int) -> str:
        async with self.http(port) as client:
            response = await client.post(
                f"/api/tenants/{self.slug}/ws-ticket/", headers={"Authorization": f"Bearer {self.access}"}
            )
        response.raise_for_status()
        return str(response.json()["ticket"])

    async def connect(self, *, initial: bool = False) -> None:
        """Open a socket on the first server that answers; take `hello`; send `sync` unless this is the first."""
        last_error: Exception | None = None
        for port in self._port_order():
            try:
                ticket = await self._ticket(port)
                ws = await asyncio.wait_for(
                    connect(f"ws://127.0.0.1:{port}/ws/tenants/{self.slug}/?ticket={ticket}", max_size=2**22),
                    timeout=10,
                )
            except (OSError, httpx.HTTPError, InvalidHandshake, TimeoutError, EOFError) as exc:
                # Refused, reset, or closed mid-handshake (Daphne drops handshakes its app does not accept within
                # --websocket_connect_timeout, which a reconnect storm can exceed): try the next server.
                last_error = exc
                continue
            try:
                hello = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
            except (ConnectionClosed, TimeoutError) as exc:
                last_error = exc
                await ws.close()
                continue
            if hello.get("type") != "hello":
                await ws.close()
                raise AssertionError(f"first frame was not hello: {hello}")
            self.ws = ws
            self.connects += 1
            if initial:
                self.last_seq = int(hello["data"]["seq"])
            self._sync_done = asyncio.Event()
            self._reader = asyncio.create_task(self._read(ws))
            if not initial:
                self.reconnected_at = time.monotonic()
                await ws.send(json.dumps({"type": "sync", "data": {"since": self.last_seq}}))
            return
        raise ConnectionError(f"no server accepted the socket: {last_error!r}")

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                self._on_frame(json.loads(raw))
        except ConnectionClosed:
            pass
        code = ws.close_code
        if code is not None:
            self.closed_codes.append(code)
        if not self._stopping:
            asyncio.create_task(self._reconnect())

    def _on_frame(self, frame: dict[str, Any]) -> None:
        seq = frame.get("seq")
        if seq is not None:
            self.wire_seqs.append(int(seq))
            if int(seq) > self.last_seq:  # a client dedupes by seq (PROTOCOL.md)
                self.last_seq = int(seq)
                if frame["type"] == "message:new":
                    self.message_ids[int(frame["data"]["id"])] += 1
        elif frame["type"] == "sync:done":
            self._sync_done.set()
        elif frame["type"] == "error":
            self.errors.append(frame["data"])

    async def _reconnect(self) -> None:
        delay = 0.1
        deadline = time.monotonic() + 60
        while not self._stopping and time.monotonic() < deadline:
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jittered backoff: no thundering herd
            delay = min(delay * 2, 2.0)
            try:
                await self.connect()
                return
            except Exception:  # whatever went wrong, a client keeps trying until its deadline
                continue

    async def sync(self, timeout: float = 30) -> None:
        """Ask for everything after the last seq seen and wait for sync:done."""
        deadline = time.monotonic() + timeout
        while self.ws is None or self.ws.close_code is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no open socket to sync on")
            await asyncio.sleep(0.05)
        self._sync_done = asyncio.Event()
        await self.ws.send(json.dumps({"type": "sync", "data": {"since": self.last_seq}}))
        await asyncio.wait_for(self._sync_done.wait(), timeout=max(0.1, deadline - time.monotonic()))

    async def close(self) -> None:
        self._stopping = True
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, timeout=5)

    def duplicate_seqs(self) -> list[int]:
        return sorted(seq for seq, n in Counter(self.wire_seqs).items() if n > 1)

    def out_of_order(self) -> int:
        """Durable frames that arrived below a seq already seen (a client must drop them)."""
        top, count = 0, 0
        for seq in self.wire_seqs:
            if seq <= top:
                count += 1
            top = max(top, seq)
        return count


async def post_webhook(port: int, body: bytes, signature: str, *, timeout: float = 10) -> int:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=timeout) as client:
        response = await client.post(
            "/webhooks/whatsapp/",
            content=body,
            headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
        )
    return response.status_code
