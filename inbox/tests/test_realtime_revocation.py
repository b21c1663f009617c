"""Revocation: deactivated users and removed memberships lose their sockets within seconds (4403), and the
periodic re-check is the hard bound when no notice is sent."""

from __future__ import annotations

import time
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from accounts.models import User
from inbox import events
from inbox.maintenance import presence_reap
from inbox.tests.factories import make_member
from inbox.tests.fixtures import World
from inbox.tests.test_consumers import (
    _flush_layer,
    _realtime_settings,
    append_messages,
    close,
    drain,
    durable_frames,
    next_of,
    open_socket,
)
from tenants.models import Membership, Role
from tenants.scoping import scopes_disabled

pytestmark = pytest.mark.django_db(transaction=True)
__all__ = ["_flush_layer", "_realtime_settings"]


async def closed_with(comm: WebsocketCommunicator, timeout: float = 3) -> int:
    """Wait for the server to close the socket (skipping frames sent before) and return the close code."""
    while True:
        output = await comm.receive_output(timeout=timeout)
        if output["type"] == "websocket.close":
            return int(output["code"])


def membership(user: User, tenant_id: int) -> Membership:
    with scopes_disabled():
        return Membership.objects.get(user=user, tenant_id=tenant_id)


async def test_deactivating_a_membership_closes_that_tenants_sockets_within_seconds(world: World) -> None:
    await database_sync_to_async(make_member)(world.globex, world.alice, role=Role.AGENT)
    acme_ws, _ = await open_socket(world.alice)
    globex_ws, _ = await open_socket(world.alice, "globex")
    bob_ws, _ = await open_socket(world.bob)

    def deactivate() -> None:
        m = membership(world.alice, world.acme.pk)
        m.is_active = False
        m.save()

    started = time.monotonic()
    await database_sync_to_async(deactivate)()
    assert await closed_with(acme_ws) == 4403
    assert time.monotonic() - started < 2
    # Nothing committed after the revocation reaches her; her other tenant and other users are untouched.
    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk)
    assert [f["seq"] for f in await durable_frames(bob_ws, 2)] == [1, 2]
    assert await acme_ws.receive_nothing(timeout=0.2)
    assert [f for f in await drain(globex_ws) if not f["type"].startswith("user:")] == []
    await globex_ws.send_json_to({"type": "ping"})
    assert (await globex_ws.receive_json_from(timeout=3))["type"] == "pong"
    await close(globex_ws, bob_ws)


async def test_removing_a_membership_closes_the_socket(world: World) -> None:
    bob_ws, _ = await open_socket(world.bob)
    await database_sync_to_async(lambda: membership(world.bob, world.acme.pk).delete())()
    assert await closed_with(bob_ws) == 4403


async def test_deactivating_a_user_closes_all_their_sockets(world: World) -> None:
    await database_sync_to_async(make_member)(world.globex, world.alice, role=Role.AGENT)
    acme_ws, _ = await open_socket(world.alice)
    globex_ws, _ = await open_socket(world.alice, "globex")
    bob_ws, _ = await open_socket(world.bob)

    def deactivate() -> None:
        world.alice.is_active = False
        world.alice.save()

    await database_sync_to_async(deactivate)()
    assert await closed_with(acme_ws) == 4403
    assert await closed_with(globex_ws) == 4403
    await bob_ws.send_json_to({"type": "ping"})
    # (skipping a user:online of alice that may still be in flight on Redis pub/sub)
    assert (await next_of(bob_ws, "pong", "message:new"))["type"] == "pong"
    await close(bob_ws)


async def test_a_spurious_revoke_notice_closes_nothing(world: World) -> None:
    alice_ws, _ = await open_socket(world.alice)
    await database_sync_to_async(events.send_revoke)(world.alice.pk)
    await database_sync_to_async(events.send_revoke)(world.alice.pk, tenant_id=world.globex.pk)
    await alice_ws.send_json_to({"type": "ping"})
    assert (await alice_ws.receive_json_from(timeout=5))["type"] == "pong"  # not a close
    assert await alice_ws.receive_nothing(timeout=0.3)
    await close(alice_ws)


async def test_the_periodic_recheck_closes_sockets_when_no_notice_was_sent(world: World, settings: Any) -> None:
    settings.PRESENCE_HEARTBEAT = 0.1
    settings.WS_RECHECK_SECONDS = 0.2
    alice_ws, _ = await open_socket(world.alice)

    def revoke_silently() -> None:  # QuerySet.update sends no signal
        with scopes_disabled():
            Membership.objects.filter(user=world.alice, tenant=world.acme).update(is_active=False)

    await database_sync_to_async(revoke_silently)()
    assert await closed_with(alice_ws, timeout=3) == 4403


async def test_the_periodic_task_revokes_present_users_who_lost_access(world: World) -> None:
    alice_ws, _ = await open_socket(world.alice)
    bob_ws, _ = await open_socket(world.bob)
    await database_sync_to_async(lambda: User.objects.filter(pk=world.alice.pk).update(is_active=False))()
    result = await database_sync_to_async(presence_reap)()
    assert result["revoked"] == 1
    assert await closed_with(alice_ws) == 4403
    await bob_ws.send_json_to({"type": "ping"})
    assert (await next_of(bob_ws, "pong"))["type"] == "pong"
    await close(bob_ws)


async def test_logging_out_everywhere_closes_every_socket_of_the_user_only(world: World) -> None:
    from accounts.services import logout_everywhere

    tab1, _ = await open_socket(world.alice)
    tab2, _ = await open_socket(world.alice)
    bob_ws, _ = await open_socket(world.bob)
    started = time.monotonic()
    await database_sync_to_async(lambda: logout_everywhere(user=User.objects.get(pk=world.alice.pk)))()
    assert await closed_with(tab1) == 4403
    assert await closed_with(tab2) == 4403
    assert time.monotonic() - started < 5
    await bob_ws.send_json_to({"type": "ping"})
    assert (await next_of(bob_ws, "pong"))["type"] == "pong"
    await close(bob_ws)
