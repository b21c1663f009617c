"""Check 5: logging out everywhere or changing the password closes the user's open sockets (4403) within seconds,
and the old credentials cannot open a new one. (Deactivation and membership removal: inbox/tests/test_realtime_revocation.py.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from rest_framework.test import APIClient

from accounts.models import User
from inbox import presence
from inbox.routing import websocket_urlpatterns
from inbox.tests.factories import PASSWORD
from inbox.tests.fixtures import World

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _realtime(settings: Any) -> Iterator[None]:
    settings.PRESENCE_OFFLINE_GRACE = 0
    presence.store().clear()
    yield
    presence.store().clear()


async def _open(user: User) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(
        URLRouter(websocket_urlpatterns), "/ws/tenants/acme/", headers=[(b"origin", b"http://testserver")]
    )
    comm.scope["user"] = user
    connected, _ = await comm.connect(timeout=5)
    assert connected
    assert (await comm.receive_json_from(timeout=5))["type"] == "hello"
    return comm


async def _closed_with(comm: WebsocketCommunicator, timeout: float = 5) -> int:
    while True:
        output = await comm.receive_output(timeout=timeout)
        if output["type"] == "websocket.close":
            return int(output["code"])


def _tokens() -> dict[str, str]:
    response = APIClient().post("/api/auth/token/", {"username": "alice", "password": PASSWORD}, format="json")
    assert response.status_code == 200, response.content
    return response.json()  # type: ignore[no-any-return]


def _ticket_status(access: str) -> int:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    return int(client.post("/api/tenants/acme/ws-ticket/").status_code)


async def test_logout_everywhere_closes_open_sockets_and_old_tokens_get_no_ticket(world: World) -> None:
    tokens = await database_sync_to_async(_tokens)()
    comm = await _open(world.alice)

    def logout_all() -> int:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
        return int(client.post("/api/auth/logout-all/").status_code)

    assert await database_sync_to_async(logout_all)() in (200, 204)
    assert await _closed_with(comm) == 4403
    assert await database_sync_to_async(_ticket_status)(tokens["access"]) == 401


async def test_a_password_change_closes_open_sockets(world: World) -> None:
    tokens = await database_sync_to_async(_tokens)()
    comm = await _open(world.alice)

    def change_password() -> None:
        user = User.objects.get(pk=world.alice.pk)
        user.set_password("a-brand-new-passphrase-42")
        user.save()

    await database_sync_to_async(change_password)()
    assert await _closed_with(comm) == 4403
    assert await database_sync_to_async(_ticket_status)(tokens["access"]) == 401
