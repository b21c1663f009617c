"""Shared steps of the fault tests: Meta-style webhook delivery with retries, and waiting for the database."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence

import httpx

from tests.reliability._client import InboxClient, post_webhook
from tests.reliability._procs import ProcError, Stack, django_run, signature, text_webhook

SWEEP = """
from datetime import timedelta
from webhooks.services import webhook_sweep
print(json.dumps(webhook_sweep(older_than=timedelta(0))))
"""


async def deliver_like_meta(
    ports: Callable[[], Sequence[int]],
    phone_number_id: str,
    wa_id: str,
    wamid: str,
    *,
    log: list[tuple[float, float, int]] | None = None,
    deadline: float = 90,
) -> int:
    """POST one signed message until some server answers 200 (Meta retries anything else); returns attempts."""
    body = text_webhook(phone_number_id, wa_id, [wamid])
    sig = signature(body)
    attempts = 0
    delay = 0.05
    give_up = time.monotonic() + deadline
    while time.monotonic() < give_up:
        for port in ports():
            attempts += 1
            started = time.monotonic()
            try:
                code = await post_webhook(port, body, sig)
            except httpx.TransportError:
                code = 0
            if log is not None:
                log.append((started, time.monotonic(), code))
            if code == 200:
                return attempts
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
    raise TimeoutError(f"{wamid} was never acknowledged")


async def wait_messages(stack: Stack, tenant_id: int, expected: int, *, timeout: float, sweep: bool = True) -> None:
    """Wait until the database holds `expected` inbound messages of a tenant, sweeping stored-but-lost webhooks."""
    deadline = time.monotonic() + timeout
    next_sweep = time.monotonic() + 3
    query = f"SELECT count(*) FROM inbox_message WHERE tenant_id = {tenant_id} AND direction = 'in'"
    while time.monotonic() < deadline:
        count = await asyncio.to_thread(stack.count, query)
        if count >= expected:
            return
        if sweep and time.monotonic() >= next_sweep:
            # The periodic webhook_sweep (celery beat, every 60 s) with its age threshold at 0 for the test.
            await asyncio.to_thread(django_run, stack.env, SWEEP)
            next_sweep = time.monotonic() + 3
        await asyncio.sleep(0.2)
    logs = "\n".join(f"--- {p.name}\n{p.log_text()[-2500:]}" for p in stack.procs)
    raise ProcError(f"only {count}/{expected} messages stored after {timeout}s\n{logs}")


def inbound_ids(stack: Stack, tenant_id: int) -> set[int]:
    rows = stack.sql(f"SELECT id FROM inbox_message WHERE tenant_id = {tenant_id} AND direction = 'in'")
    return {int(r) for r in rows.split()} if rows else set()


def wamid_counts(stack: Stack, tenant_id: int) -> dict[str, int]:
    rows = stack.sql(
        f"SELECT wa_message_id, count(*) FROM inbox_message WHERE tenant_id = {tenant_id} GROUP BY wa_message_id"
    )
    return {line.split("|")[0]: int(line.split("|")[1]) for line in rows.splitlines() if line}


async def settle_clients(clients: Sequence[InboxClient], *, timeout: float = 30) -> None:
    """Every client asks for what it missed (PROTOCOL.md: sync after reconnect, and at any time)."""
    await asyncio.gather(*(client.sync(timeout=timeout) for client in clients))


SECRET_IN_LOG = re.compile(
    r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # a JWT
    r"|ticket=(?!\[redacted\])[A-Za-z0-9_-]{8,}"  # a WebSocket ticket in a URL
    r"|Bearer\s+(?!\[redacted\])[A-Za-z0-9._~+/=-]{8,}"
)


def assert_no_credentials_logged(stack: Stack) -> None:
    """Daphne's access log and every app process's log lines hold no JWT, ticket or bearer token."""
    leaks = [
        f"{proc.name}: {line}"
        for proc in stack.procs
        for line in proc.log_text().splitlines()
        if SECRET_IN_LOG.search(line)
    ]
    assert not leaks, leaks[:5]


async def readiness(port: int) -> tuple[int, dict[str, str]]:
    """GET /readyz: (status, the per-dependency checks)."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
        response = await client.get("/readyz")
        health = await client.get("/healthz")
    assert health.status_code == 200, "the process is up whatever its dependencies do"
    return response.status_code, dict(response.json().get("checks", {}))
