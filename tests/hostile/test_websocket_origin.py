"""Checks 1 and 2: cross-site WebSocket hijacking attempts through the whole ASGI application (config.asgi).

A real session cookie (from logging in) is attached to handshakes with a foreign Origin, a look-alike Origin, a
`null` Origin and no Origin: none of them gets a socket that says `hello`. Our own origin does. A ticket opens
once, without Origin; never with a foreign one, never twice, never after it expired, never for another tenant.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone

from config.asgi import application
from inbox import presence
from inbox.tests.factories import PASSWORD
from inbox.tests.fixtures import World
from tenants.models import SocketTicket
from tenants.scoping import scopes_disabled
from tenants.tickets import ticket_issue

pytestmark = pytest.mark.django_db(transaction=True)

OWN = "http://testserver"
FOREIGN = [
    "https://evil.example",
    "http://testserver.evil.example",
    "http://evil-testserver",
    "null",
    "http://127.0.0.2:8000",
]


@pytest.fixture(autouse=True)
def _realtime(settings: Any) -> Iterator[None]:
    settings.PRESENCE_OFFLINE_GRACE = 0
    presence.store().clear()
    yield
    presence.store().clear()


def _session_cookie(username: str = "alice") -> str:
    client = Client()
    response = client.post("/accounts/login/", {"username": username, "password": PASSWORD})
    assert response.status_code == 302, response.status_code
    return client.cookies[django_settings.SESSION_COOKIE_NAME].value


async def _handshake(path: str, headers: list[tuple[bytes, bytes]]) -> tuple[str, Any]:
    """("refused", code) before accept | ("closed", code) after accept | ("hello", frame)."""
    comm = WebsocketCommunicator(application, path, headers=headers)
    connected, detail = await comm.connect(timeout=5)
    if not connected:
        return "refused", detail
    output = await comm.receive_output(timeout=5)
    if output["type"] == "websocket.close":
        return "closed", output.get("code")
    frame = json.loads(output["text"])
    await comm.disconnect()
    return "hello" if frame["type"] == "hello" else "other", frame


@pytest.mark.parametrize("origin", FOREIGN)
async def test_a_session_cookie_with_a_foreign_origin_is_refused_at_the_handshake(world: World, origin: str) -> None:
    cookie = await database_sync_to_async(_session_cookie)()
    outcome, detail = await _handshake(
        "/ws/tenants/acme/", [(b"cookie", f"sessionid={cookie}".encode()), (b"origin", origin.encode())]
    )
    # Closed before accept: Daphne answers the upgrade with HTTP 403 (tests/reliability/test_daphne_limits.py).
    assert outcome == "refused", (outcome, detail)


async def test_a_session_cookie_without_origin_is_refused_at_the_handshake(world: World) -> None:
    """Browsers always send Origin: a cookie-only handshake without one is a replayed cookie (inbox/routing.py)."""
    cookie = await database_sync_to_async(_session_cookie)()
    outcome, detail = await _handshake("/ws/tenants/acme/", [(b"cookie", f"sessionid={cookie}".encode())])
    assert outcome == "refused", (outcome, detail)


async def test_no_origin_and_no_credentials_closes_4401(world: World) -> None:
    assert await _handshake("/ws/tenants/acme/", []) == ("closed", 4401)


async def test_a_session_cookie_from_our_own_origin_opens_the_socket(world: World) -> None:
    cookie = await database_sync_to_async(_session_cookie)()
    headers = [(b"cookie", f"sessionid={cookie}".encode()), (b"origin", OWN.encode())]
    outcome, frame = await _handshake("/ws/tenants/acme/", headers)
    assert outcome == "hello" and frame["data"]["tenant"]["slug"] == "acme"
    # ... and never another tenant's inbox with the same cookie.
    assert await _handshake("/ws/tenants/globex/", headers) == ("closed", 4403)


async def test_tickets_open_once_without_origin_never_with_a_foreign_one(world: World) -> None:
    token, _ = await database_sync_to_async(ticket_issue)(user=world.alice, tenant=world.acme)
    foreign = await _handshake(f"/ws/tenants/acme/?ticket={token}", [(b"origin", b"https://evil.example")])
    assert foreign[0] == "refused"
    outcome, _ = await _handshake(f"/ws/tenants/acme/?ticket={token}", [])
    assert outcome == "hello"
    assert await _handshake(f"/ws/tenants/acme/?ticket={token}", []) == ("closed", 4401), "single use"


async def test_expired_foreign_and_forged_tickets_are_refused(world: World) -> None:
    old, _ = await database_sync_to_async(ticket_issue)(user=world.alice, tenant=world.acme)

    def expire() -> None:
        with scopes_disabled():
            SocketTicket.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    await database_sync_to_async(expire)()
    assert await _handshake(f"/ws/tenants/acme/?ticket={old}", []) == ("closed", 4401)
    charlies, _ = await database_sync_to_async(ticket_issue)(user=world.charlie, tenant=world.globex)
    assert await _handshake(f"/ws/tenants/acme/?ticket={charlies}", []) == ("closed", 4401)
    for forged in ("", "x", "A" * 43, "A" * 5000, "%00%ff", "ticket"):
        assert await _handshake(f"/ws/tenants/acme/?ticket={forged}", []) == ("closed", 4401), forged
