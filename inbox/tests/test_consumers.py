"""The tenant WebSocket end to end: handshake and auth, hello, live durable events, sync, isolation, client frames.

Runs on the configured database and channel layer (embedded: SQLite + in-memory; CI: PostgreSQL + Redis pub/sub).
Helpers here are shared by the other real-time test modules.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.db import transaction
from django.test import Client

from accounts.models import User
from inbox import consumers, presence
from inbox.models import Conversation, Direction, Message, ReadMarker, TenantEvent
from inbox.routing import websocket_application, websocket_urlpatterns
from inbox.services import conversation_update, message_append, message_status_set
from inbox.tests.factories import make_message
from inbox.tests.fixtures import World
from tenants.models import SocketTicket
from tenants.scoping import scopes_disabled, tenant_scope
from tenants.tickets import ticket_issue

pytestmark = pytest.mark.django_db(transaction=True)  # consumer DB calls run in another thread (channels#1780)

ORIGIN = (b"origin", b"http://testserver")
Frame = dict[str, Any]


@pytest.fixture(autouse=True)
def _realtime_settings(settings: Any) -> Iterator[None]:
    settings.PRESENCE_OFFLINE_GRACE = 0  # announce offline at once: no task outlives a test's event loop
    presence.store().clear()
    yield
    presence.store().clear()


@pytest.fixture(autouse=True)
async def _flush_layer() -> AsyncIterator[None]:
    yield
    layer = get_channel_layer()
    if layer is not None and hasattr(layer, "flush"):
        await layer.flush()


# --- helpers -------------------------------------------------------------------------------------------------------


def communicator(
    slug: str = "acme", *, user: User | None = None, query: str = "", headers: list[tuple[bytes, bytes]] | None = None
) -> WebsocketCommunicator:
    path = f"/ws/tenants/{slug}/" + (f"?{query}" if query else "")
    comm = WebsocketCommunicator(
        URLRouter(websocket_urlpatterns), path, headers=[ORIGIN] if headers is None else headers
    )
    if user is not None:
        comm.scope["user"] = user  # what AuthMiddlewareStack puts there from the session
    return comm


async def open_socket(user: User, slug: str = "acme", *, sync: bool = True) -> tuple[WebsocketCommunicator, Frame]:
    """A connected, authenticated socket and its hello frame; like a client, it syncs from the hello head."""
    comm = communicator(slug, user=user)
    connected, _ = await comm.connect(timeout=5)
    assert connected
    hello = await comm.receive_json_from(timeout=5)
    assert hello["type"] == "hello", hello
    if sync:
        await send(comm, "sync", {"since": hello["data"]["seq"]})
        done = await next_of(comm, "sync:done")
        assert done["data"]["seq"] == hello["data"]["seq"]
    return comm, hello


async def refused(comm: WebsocketCommunicator) -> int:
    """The close code of a handshake that is accepted and then closed at once."""
    connected, _ = await comm.connect(timeout=5)
    assert connected
    output = await comm.receive_output(timeout=5)
    assert output["type"] == "websocket.close", output
    return int(output["code"])


async def next_of(comm: WebsocketCommunicator, *types: str, timeout: float = 5) -> Frame:
    """The next frame of one of `types`, skipping others (presence, viewers) that may interleave."""
    while True:
        frame = await comm.receive_json_from(timeout=timeout)
        if frame["type"] in types:
            return frame


async def durable_frames(comm: WebsocketCommunicator, until_seq: int, timeout: float = 5) -> list[Frame]:
    """Every durable frame up to and including seq `until_seq`, in arrival order."""
    frames: list[Frame] = []
    while not frames or frames[-1]["seq"] < until_seq:
        frame = await comm.receive_json_from(timeout=timeout)
        if frame.get("seq") is not None:
            frames.append(frame)
    return frames


async def close(*comms: WebsocketCommunicator) -> None:
    for comm in comms:
        await comm.disconnect()


def append_messages(conversation_id: int, tenant_id: int, count: int = 1) -> list[Message]:
    """Inbound messages through the core service: each logs message:new and conversation:updated."""
    appended = []
    for _ in range(count):
        with tenant_scope(tenant_id), transaction.atomic():
            conversation = Conversation.objects.select_for_update().get(pk=conversation_id)
            message = Message(direction=Direction.INBOUND, text="hi", wa_message_id=f"wamid.{uuid.uuid4().hex}")
            appended.append(message_append(conversation=conversation, message=message))
    return appended


def login_cookie(user: User) -> str:
    """A real session cookie value for `user` (as after logging in on the inbox page)."""
    client = Client()
    client.force_login(user)
    return client.cookies[django_settings.SESSION_COOKIE_NAME].value


def cookie_header(sessionid: str) -> tuple[bytes, bytes]:
    return (b"cookie", f"{django_settings.SESSION_COOKIE_NAME}={sessionid}".encode())


async def close_code(comm: WebsocketCommunicator, timeout: float = 3) -> int:
    """Wait for the server to close an open socket (skipping frames sent before) and return the close code."""
    while True:
        output = await comm.receive_output(timeout=timeout)
        if output["type"] == "websocket.close":
            return int(output["code"])


def head(tenant_id: int) -> int:
    return consumers._head(tenant_id)


async def send(comm: WebsocketCommunicator, type_: str, data: dict[str, Any] | None = None) -> None:
    await comm.send_to(text_data=json.dumps({"type": type_, "data": data or {}}))


# --- handshake and auth --------------------------------------------------------------------------------------------


async def test_it_says_hello_with_user_tenant_head_and_who_is_online(world: World) -> None:
    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk)
    bob_ws, _ = await open_socket(world.bob)
    alice_ws, hello = await open_socket(world.alice, sync=False)
    assert hello["seq"] is None and hello["ts"].endswith("Z")
    data = hello["data"]
    assert data["user"]["id"] == world.alice.pk
    assert data["tenant"] == {"id": world.acme.pk, "slug": "acme", "name": "Acme"}
    assert data["seq"] == 2  # one message: message:new + conversation:updated
    assert data["online_user_ids"] == sorted([world.alice.pk, world.bob.pk])
    assert data["server_time"].endswith("Z")
    await close(alice_ws, bob_ws)


async def test_it_closes_4401_without_credentials(world: World) -> None:
    assert await refused(communicator("acme")) == 4401


async def test_it_closes_4403_for_non_members_and_unknown_tenants_alike(world: World) -> None:
    assert await refused(communicator("acme", user=world.charlie)) == 4403
    assert await refused(communicator("no-such-tenant", user=world.charlie)) == 4403


async def test_it_closes_4403_for_inactive_users_and_memberships(world: World) -> None:
    def deactivate() -> None:
        with scopes_disabled():
            world.bob.memberships.update(is_active=False)
        User.objects.filter(pk=world.alice.pk).update(is_active=False)

    await database_sync_to_async(deactivate)()
    await database_sync_to_async(world.alice.refresh_from_db)()
    assert await refused(communicator("acme", user=world.bob)) == 4403
    assert await refused(communicator("acme", user=world.alice)) == 4403


async def test_it_ignores_the_session_of_a_handshake_without_origin(world: World) -> None:
    # Cookies ride along from any page; without an Origin we cannot tell it is ours (cross-site hijacking).
    assert await refused(communicator("acme", user=world.alice, headers=[])) == 4401


async def test_it_rejects_a_foreign_origin_at_the_handshake(world: World) -> None:
    for headers in ([(b"origin", b"https://evil.example")], [(b"origin", b"http://testserver.evil.example")]):
        comm = WebsocketCommunicator(websocket_application, "/ws/tenants/acme/", headers=headers)
        comm.scope["user"] = world.alice
        connected, _ = await comm.connect(timeout=5)
        assert not connected  # closed before accept: the server answers the HTTP handshake with 403


async def test_it_accepts_a_session_cookie_through_the_asgi_application(world: World) -> None:
    from config.asgi import application

    sessionid = await database_sync_to_async(login_cookie)(world.alice)
    headers = [ORIGIN, cookie_header(sessionid), (b"host", b"testserver")]
    comm = WebsocketCommunicator(application, "/ws/tenants/acme/", headers=headers)
    connected, _ = await comm.connect(timeout=5)
    assert connected
    hello = await comm.receive_json_from(timeout=5)
    assert hello["type"] == "hello" and hello["data"]["user"]["id"] == world.alice.pk
    await comm.disconnect()

    # The same cookie from a foreign page is refused at the handshake.
    foreign = [(b"origin", b"https://evil.example"), cookie_header(sessionid)]
    comm = WebsocketCommunicator(application, "/ws/tenants/acme/", headers=foreign)
    assert (await comm.connect(timeout=5))[0] is False


async def test_a_session_cookie_without_origin_or_ticket_is_refused_at_the_handshake(world: World) -> None:
    """Reliability check 1: a cookie handshake without an allowed Origin never reaches accept (Daphne: HTTP 403)."""
    from config.asgi import application

    sessionid = await database_sync_to_async(login_cookie)(world.alice)
    for path in ("/ws/tenants/acme/", "/ws/tenants/acme/?ticket=", "/ws/tenants/acme/?other=1"):
        for headers in (
            [cookie_header(sessionid)],
            [cookie_header(sessionid), (b"host", b"testserver")],
            [(b"cookie", b"csrftoken=x"), cookie_header("not-even-a-valid-session")],
        ):
            comm = WebsocketCommunicator(application, path, headers=headers)
            assert (await comm.connect(timeout=5))[0] is False, (path, headers)


async def test_a_ticket_without_origin_opens_the_socket_and_any_cookie_is_ignored(world: World) -> None:
    from config.asgi import application

    sessionid = await database_sync_to_async(login_cookie)(world.alice)
    token, _ = await database_sync_to_async(ticket_issue)(user=world.bob, tenant=world.acme)
    comm = WebsocketCommunicator(application, f"/ws/tenants/acme/?ticket={token}", headers=[cookie_header(sessionid)])
    connected, _ = await comm.connect(timeout=5)
    assert connected
    hello = await comm.receive_json_from(timeout=5)
    assert hello["type"] == "hello" and hello["data"]["user"]["id"] == world.bob.pk  # the ticket's user, not alice
    await comm.disconnect()
    # A used ticket with alice's cookie: the cookie does not stand in for it.
    comm = WebsocketCommunicator(application, f"/ws/tenants/acme/?ticket={token}", headers=[cookie_header(sessionid)])
    assert await refused(comm) == 4401


async def test_a_handshake_without_origin_cookie_or_ticket_is_accepted_then_closed_4401(world: World) -> None:
    """No credentials at all: the PROTOCOL.md refusal a client can act on (get a ticket), not a bare 403."""
    from config.asgi import application

    for headers in ([], [(b"cookie", b"csrftoken=abc")]):
        assert await refused(WebsocketCommunicator(application, "/ws/tenants/acme/", headers=headers)) == 4401


async def test_it_accepts_a_ticket_without_origin_once(world: World) -> None:
    token, _ = await database_sync_to_async(ticket_issue)(user=world.bob, tenant=world.acme)
    comm = communicator("acme", query=f"ticket={token}", headers=[])
    connected, _ = await comm.connect(timeout=5)
    assert connected
    hello = await comm.receive_json_from(timeout=5)
    assert hello["data"]["user"]["id"] == world.bob.pk
    await comm.disconnect()
    assert await refused(communicator("acme", query=f"ticket={token}", headers=[])) == 4401  # single use


async def test_sockets_connecting_together_with_tickets_each_get_their_own_and_a_ticket_opens_one(
    world: World,
) -> None:
    """Handshakes at the same moment spend their tickets together: each socket is its ticket's user, a ticket
    presented twice at once opens one socket (the other closes 4401), a non-member's closes 4403."""
    issue = database_sync_to_async(ticket_issue)
    alice, _ = await issue(user=world.alice, tenant=world.acme)
    bob, _ = await issue(user=world.bob, tenant=world.acme)
    outsider, _ = await issue(user=world.charlie, tenant=world.acme)
    comms = [communicator("acme", query=f"ticket={t}", headers=[]) for t in (alice, bob, alice, outsider)]
    await asyncio.gather(*(comm.connect(timeout=5) for comm in comms))
    first = [await comm.receive_output(timeout=5) for comm in comms]
    hellos = [json.loads(o["text"]) for o in first if o["type"] == "websocket.send"]
    assert sorted(h["data"]["user"]["id"] for h in hellos) == sorted([world.alice.pk, world.bob.pk])
    closes = sorted(o["code"] for o in first if o["type"] == "websocket.close")
    assert closes == [4401, 4403]
    await close(*comms)


async def test_it_refuses_bad_or_foreign_tickets(world: World) -> None:
    assert await refused(communicator("acme", query="ticket=nope", headers=[])) == 4401
    # A globex ticket does not open acme (and is not used up by trying).
    token, _ = await database_sync_to_async(ticket_issue)(user=world.charlie, tenant=world.globex)
    assert await refused(communicator("acme", query=f"ticket={token}", headers=[])) == 4401
    # A ticket still needs an active membership when it is redeemed.
    token, _ = await database_sync_to_async(ticket_issue)(user=world.charlie, tenant=world.acme)
    assert await refused(communicator("acme", query=f"ticket={token}", headers=[])) == 4403
    # A foreign Origin is refused even with a valid ticket.
    token, _ = await database_sync_to_async(ticket_issue)(user=world.bob, tenant=world.acme)
    comm = WebsocketCommunicator(
        websocket_application, f"/ws/tenants/acme/?ticket={token}", headers=[(b"origin", b"https://evil.example")]
    )
    assert (await comm.connect(timeout=5))[0] is False


# --- revocation by password change (reliability check 5) ----------------------------------------------------------


def change_password(user: User, password: str = "a-new-password-42") -> None:
    user.set_password(password)
    user.save()


async def test_a_password_change_closes_the_users_sockets_and_old_credentials_open_none(world: World) -> None:
    from config.asgi import application

    sessionid = await database_sync_to_async(login_cookie)(world.alice)
    own = [ORIGIN, cookie_header(sessionid), (b"host", b"testserver")]
    cookie_ws = WebsocketCommunicator(application, "/ws/tenants/acme/", headers=own)
    assert (await cookie_ws.connect(timeout=5))[0]
    assert (await cookie_ws.receive_json_from(timeout=5))["type"] == "hello"
    token, _ = await database_sync_to_async(ticket_issue)(user=world.alice, tenant=world.acme)
    ticket_ws = communicator("acme", query=f"ticket={token}", headers=[])
    assert (await ticket_ws.connect(timeout=5))[0]
    assert (await ticket_ws.receive_json_from(timeout=5))["type"] == "hello"
    unused, _ = await database_sync_to_async(ticket_issue)(user=world.alice, tenant=world.acme)
    bob_ws, _ = await open_socket(world.bob)

    started = time.monotonic()
    await database_sync_to_async(change_password)(world.alice)
    assert await close_code(cookie_ws) == 4403
    assert await close_code(ticket_ws) == 4403
    assert time.monotonic() - started < 3

    # The old session and a ticket minted before the change open nothing; the tickets are gone.
    assert await refused(WebsocketCommunicator(application, "/ws/tenants/acme/", headers=own)) == 4401
    assert await refused(communicator("acme", query=f"ticket={unused}", headers=[])) == 4401
    with_scopes_off = database_sync_to_async(lambda: _unused_tickets(world.alice.pk))
    assert await with_scopes_off() == 0
    # Nothing committed after the change reaches alice; bob's socket is untouched.
    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk)
    assert [f["seq"] for f in await durable_frames(bob_ws, 2)] == [1, 2]
    assert await cookie_ws.receive_nothing(timeout=0.1) and await ticket_ws.receive_nothing(timeout=0.1)
    # Logging in again with the new password works.
    fresh = await database_sync_to_async(login_cookie)(world.alice)
    comm = WebsocketCommunicator(application, "/ws/tenants/acme/", headers=[ORIGIN, cookie_header(fresh)])
    assert (await comm.connect(timeout=5))[0]
    assert (await next_of(comm, "hello"))["data"]["user"]["id"] == world.alice.pk
    await close(comm, bob_ws)


def _unused_tickets(user_id: int) -> int:
    with scopes_disabled():
        return SocketTicket.objects.filter(user_id=user_id, used_at__isnull=True).count()


async def test_saving_a_user_without_changing_the_password_closes_nothing(world: World) -> None:
    alice_ws, _ = await open_socket(world.alice)
    token, _ = await database_sync_to_async(ticket_issue)(user=world.alice, tenant=world.acme)

    def edit() -> None:
        world.alice.display_name = "Alice A."
        world.alice.save()
        fresh = User.objects.get(pk=world.alice.pk)
        fresh.save()
        fresh.save(update_fields=["last_login"])

    await database_sync_to_async(edit)()
    await send(alice_ws, "ping")
    assert (await next_of(alice_ws, "pong"))["type"] == "pong"  # not a close
    assert await alice_ws.receive_nothing(timeout=0.2)
    assert await database_sync_to_async(_unused_tickets)(world.alice.pk) == 1
    await close(alice_ws)


async def test_a_password_change_without_a_signal_is_caught_by_the_periodic_recheck(
    world: World, settings: Any
) -> None:
    from django.contrib.auth.hashers import make_password

    settings.WS_RECHECK_SECONDS = 0.2
    alice_ws, _ = await open_socket(world.alice)
    bob_ws, _ = await open_socket(world.bob)
    update = User.objects.filter(pk=world.alice.pk).update  # QuerySet.update sends no signal
    await database_sync_to_async(lambda: update(password=make_password("changed-by-sql")))()
    assert await close_code(alice_ws) == 4403
    await send(bob_ws, "ping")
    assert (await next_of(bob_ws, "pong"))["type"] == "pong"
    await close(bob_ws)


async def test_a_password_change_during_the_handshake_closes_the_new_socket(world: World, monkeypatch: Any) -> None:
    """The change commits after the credentials were checked but before the socket listens for its notice."""
    real_authenticate = consumers._authenticate

    def authenticate_then_change(scope: dict[str, Any], slug: str) -> Any:
        result = real_authenticate(scope, slug)
        change_password(User.objects.get(pk=world.alice.pk))
        return result

    monkeypatch.setattr(consumers, "_authenticate", authenticate_then_change)
    assert await refused(communicator("acme", user=world.alice)) == 4403


# --- durable events: live, isolated, every type from its service -----------------------------------------------------


async def test_it_pushes_new_messages_to_own_tenant_only(world: World) -> None:
    alice_ws, _ = await open_socket(world.alice)
    charlie_ws, _ = await open_socket(world.charlie, "globex")
    (message,) = await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk)
    new = await next_of(alice_ws, "message:new")
    assert new["seq"] == 1
    assert new["data"]["id"] == message.pk and new["data"]["conversation_id"] == world.acme_conversation.pk
    updated = await next_of(alice_ws, "conversation:updated")
    assert updated["seq"] == 2 and updated["data"]["last_message"]["id"] == message.pk
    assert await charlie_ws.receive_nothing(timeout=0.3)
    await close(alice_ws, charlie_ws)


async def test_it_delivers_status_and_conversation_changes_from_their_services(world: World) -> None:
    outbound = await database_sync_to_async(make_message)(
        world.acme_conversation, direction=Direction.OUTBOUND, wa_message_id="wamid.OUT1"
    )
    alice_ws, _ = await open_socket(world.alice)
    charlie_ws, _ = await open_socket(world.charlie, "globex")

    def change() -> None:
        with tenant_scope(world.acme.pk):
            message_status_set(message=outbound, status="delivered")
            conversation_update(tenant=world.acme, conversation=world.acme_conversation, status="resolved")

    await database_sync_to_async(change)()
    status = await next_of(alice_ws, "message:status")
    assert status["seq"] == 1
    assert status["data"]["message_id"] == outbound.pk and status["data"]["status"] == "delivered"
    updated = await next_of(alice_ws, "conversation:updated")
    assert updated["seq"] == 2 and updated["data"]["status"] == "resolved"
    assert await charlie_ws.receive_nothing(timeout=0.3)
    await close(alice_ws, charlie_ws)


async def test_it_stores_read_markers_sent_over_the_socket_and_broadcasts_them(world: World) -> None:
    outbound = await database_sync_to_async(make_message)(world.acme_conversation, direction=Direction.OUTBOUND)
    alice_ws, _ = await open_socket(world.alice)
    bob_ws, _ = await open_socket(world.bob)
    charlie_ws, _ = await open_socket(world.charlie, "globex")
    await send(alice_ws, "message:read", {"conversation_id": world.acme_conversation.pk, "message_id": outbound.pk})
    expected = {
        "conversation_id": world.acme_conversation.pk,
        "user_id": world.alice.pk,
        "last_read_message_id": outbound.pk,
    }
    for ws in (alice_ws, bob_ws):  # the reader's own tabs and the other agents
        frame = await next_of(ws, "message:read")
        assert frame["data"] == expected and frame["seq"] == 1
    assert await charlie_ws.receive_nothing(timeout=0.3)
    # Charlie cannot mark acme's conversation: same answer as an unknown id, and nothing is written.
    await send(charlie_ws, "message:read", {"conversation_id": world.acme_conversation.pk, "message_id": outbound.pk})
    error = await next_of(charlie_ws, "error")
    assert error["data"]["code"] == "not_found" and error["data"]["ref"] == "message:read"
    assert await database_sync_to_async(head)(world.globex.pk) == 0
    assert await alice_ws.receive_nothing(timeout=0.3)
    await close(alice_ws, bob_ws, charlie_ws)


async def test_it_marks_inbound_messages_read_through_the_service(world: World) -> None:
    inbound = await database_sync_to_async(make_message)(world.acme_conversation, direction=Direction.INBOUND)
    alice_ws, _ = await open_socket(world.alice)
    await send(alice_ws, "message:read", {"conversation_id": world.acme_conversation.pk, "message_id": inbound.pk})
    frame = await next_of(alice_ws, "message:read", "error")
    assert frame["type"] == "message:read", frame
    assert frame["data"]["last_read_message_id"] == inbound.pk
    await close(alice_ws)


# --- sync: nothing missed, nothing twice ----------------------------------------------------------------------------


async def test_it_replays_exactly_the_missed_events_in_order_after_reconnecting(world: World) -> None:
    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk, 2)
    alice_ws, hello = await open_socket(world.alice, sync=False)
    last_seen = hello["data"]["seq"]
    assert last_seen == 4
    await alice_ws.disconnect()

    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk, 50)  # 100 events
    alice_ws, hello = await open_socket(world.alice, sync=False)
    assert hello["data"]["seq"] == 104
    await send(alice_ws, "sync", {"since": last_seen})
    frames = await durable_frames(alice_ws, 104)
    assert [f["seq"] for f in frames] == list(range(5, 105))
    assert [f["type"] for f in frames[:2]] == ["message:new", "conversation:updated"]
    done = await next_of(alice_ws, "sync:done")
    assert done["data"] == {"seq": 104}
    # Replayed frames are the frames that were broadcast: same ts, same data as the log.
    logged = await database_sync_to_async(consumers._events_after)(world.acme.pk, 4, None, 1)
    assert frames[0] == json.loads(json.dumps(logged[0]))
    assert await alice_ws.receive_nothing(timeout=0.3)
    await close(alice_ws)


async def test_sync_then_live_events_continue_without_gaps_or_doubles(world: World) -> None:
    alice_ws, _ = await open_socket(world.alice, sync=False)
    await send(alice_ws, "sync", {"since": 0})
    assert (await next_of(alice_ws, "sync:done"))["data"] == {"seq": 0}
    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk, 3)
    frames = await durable_frames(alice_ws, 6)
    assert [f["seq"] for f in frames] == [1, 2, 3, 4, 5, 6]
    assert await alice_ws.receive_nothing(timeout=0.3)
    await close(alice_ws)


@pytest.mark.parametrize("when", ["before_head", "after_head"])
async def test_an_event_committed_during_the_handshake_arrives_once(
    world: World, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    """The consumer has joined the tenant group; an event commits just before or just after it reads the head."""
    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk, 1)
    real_state = consumers._handshake_states  # the read of the head (with the membership re-check)

    def state_with_a_write(sockets: list[tuple[int, int, str]]) -> list[tuple[bool, int]]:
        if when == "before_head":
            append_messages(world.acme_conversation.pk, world.acme.pk, 1)
            return real_state(sockets)
        value = real_state(sockets)
        append_messages(world.acme_conversation.pk, world.acme.pk, 1)
        return value

    monkeypatch.setattr(consumers, "_handshake_states", state_with_a_write)
    alice_ws, hello = await open_socket(world.alice, sync=False)
    monkeypatch.setattr(consumers, "_handshake_states", real_state)
    await send(alice_ws, "sync", {"since": 2})  # the client had seen the first message
    frames = []
    while True:
        frame = await alice_ws.receive_json_from(timeout=5)
        if frame["type"] == "sync:done":
            break
        if frame["seq"] is not None:
            frames.append(frame)
    if when == "after_head":  # the live frames may come after sync:done
        frames += await durable_frames(alice_ws, 4) if not frames or frames[-1]["seq"] < 4 else []
    assert [f["seq"] for f in frames] == [3, 4]
    assert await alice_ws.receive_nothing(timeout=0.3)
    await close(alice_ws)


async def test_a_client_that_never_syncs_gets_live_frames_from_the_hello_head(world: World, settings: Any) -> None:
    settings.WS_FIRST_SYNC_WAIT = 0.1
    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk, 1)
    alice_ws, hello = await open_socket(world.alice, sync=False)
    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk, 1)
    frames = await durable_frames(alice_ws, 4)
    assert [f["seq"] for f in frames] == [3, 4]
    await send(alice_ws, "sync", {"since": 4})  # a later sync sends nothing twice
    assert (await next_of(alice_ws, "sync:done"))["data"] == {"seq": 4}
    assert await alice_ws.receive_nothing(timeout=0.3)
    await close(alice_ws)


async def test_it_answers_sync_gap_when_the_log_was_pruned(world: World) -> None:
    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk, 3)

    def prune_first_four() -> None:
        with scopes_disabled():
            TenantEvent.objects.filter(tenant=world.acme, seq__lte=4).delete()

    await database_sync_to_async(prune_first_four)()
    alice_ws, _ = await open_socket(world.alice, sync=False)
    await send(alice_ws, "sync", {"since": 2})
    error = await next_of(alice_ws, "error", "sync:done")
    assert error["type"] == "error"
    assert error["data"]["code"] == "sync_gap" and error["data"]["ref"] == "sync" and error["data"]["seq"] == 6
    await send(alice_ws, "sync", {"since": 4})  # exactly at the oldest retained - 1: no gap
    frames = await durable_frames(alice_ws, 6)
    assert [f["seq"] for f in frames] == [5, 6]
    assert (await next_of(alice_ws, "sync:done"))["data"] == {"seq": 6}
    await send(alice_ws, "sync", {"since": 99})  # ahead of the log: the client's state is from elsewhere
    assert (await next_of(alice_ws, "error"))["data"]["code"] == "sync_gap"
    await close(alice_ws)


async def test_a_live_frame_that_skips_ahead_is_preceded_by_the_missing_ones(world: World) -> None:
    """The layer is at-most-once and processes send in any order: the consumer fills gaps from the log."""
    alice_ws, _ = await open_socket(world.alice)

    def write_quietly() -> None:
        with tenant_scope(world.acme.pk), transaction.atomic():
            conversation = Conversation.objects.select_for_update().get(pk=world.acme_conversation.pk)
            message_append(conversation=conversation, message=Message(direction=Direction.INBOUND, text="lost"))
            transaction.get_connection().run_on_commit = []  # the broadcast is lost (Redis hiccup)

    await database_sync_to_async(write_quietly)()
    assert await alice_ws.receive_nothing(timeout=0.2)
    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk, 1)
    frames = await durable_frames(alice_ws, 4)
    assert [f["seq"] for f in frames] == [1, 2, 3, 4]
    assert frames[0]["data"]["text"] == "lost"
    await close(alice_ws)


async def test_a_lost_broadcast_is_caught_up_by_the_periodic_recheck(world: World, settings: Any) -> None:
    settings.WS_RECHECK_SECONDS = 0.2
    alice_ws, _ = await open_socket(world.alice)
    charlie_ws, _ = await open_socket(world.charlie, "globex")

    def write_quietly() -> None:
        with tenant_scope(world.acme.pk), transaction.atomic():
            conversation = Conversation.objects.select_for_update().get(pk=world.acme_conversation.pk)
            message_append(conversation=conversation, message=Message(direction=Direction.INBOUND, text="lost"))
            transaction.get_connection().run_on_commit = []

    await database_sync_to_async(write_quietly)()
    frames = await durable_frames(alice_ws, 2, timeout=3)  # no later event comes to reveal the gap
    assert [f["seq"] for f in frames] == [1, 2]
    assert await charlie_ws.receive_nothing(timeout=0.3)
    await close(alice_ws, charlie_ws)


async def test_gapless_seq_under_concurrent_writers(world: World, require_postgres: None) -> None:
    import threading

    from django.db import connection

    errors: list[BaseException] = []

    def writer() -> None:
        try:
            append_messages(world.acme_conversation.pk, world.acme.pk, 10)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    def run_writers() -> None:
        threads = [threading.Thread(target=writer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    await database_sync_to_async(run_writers)()
    assert not errors
    alice_ws, hello = await open_socket(world.alice, sync=False)
    assert hello["data"]["seq"] == 80
    await send(alice_ws, "sync", {"since": 0})
    frames = await durable_frames(alice_ws, 80)
    assert [f["seq"] for f in frames] == list(range(1, 81))
    await close(alice_ws)


async def test_concurrent_writers_reach_a_live_socket_gapless_and_in_order(
    world: World, require_postgres: None, require_redis: None
) -> None:
    """Writers in other threads broadcast in whatever order their commits finish; the socket still sends 1..N."""
    import threading

    from django.db import connection

    alice_ws, _ = await open_socket(world.alice)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            append_messages(world.acme_conversation.pk, world.acme.pk, 10)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    frames = await durable_frames(alice_ws, 80, timeout=20)
    for t in threads:
        t.join()
    assert not errors
    assert [f["seq"] for f in frames] == list(range(1, 81))
    assert await alice_ws.receive_nothing(timeout=0.3)
    await close(alice_ws)


# --- conversations, typing ------------------------------------------------------------------------------------------


async def test_join_shows_who_is_viewing_and_refuses_foreign_conversations(world: World) -> None:
    alice_ws, _ = await open_socket(world.alice)
    bob_ws, _ = await open_socket(world.bob)
    charlie_ws, _ = await open_socket(world.charlie, "globex")
    conv = world.acme_conversation.pk
    await send(alice_ws, "conversation:join", {"conversation_id": conv})
    viewers = await next_of(alice_ws, "conversation:viewers")
    assert viewers["data"] == {"conversation_id": conv, "user_ids": [world.alice.pk]} and viewers["seq"] is None
    await send(bob_ws, "conversation:join", {"conversation_id": conv})
    expected = {"conversation_id": conv, "user_ids": sorted([world.alice.pk, world.bob.pk])}
    assert (await next_of(alice_ws, "conversation:viewers"))["data"] == expected
    assert (await next_of(bob_ws, "conversation:viewers"))["data"] == expected
    # Another tenant's conversation id: an error, and no group joined.
    await send(charlie_ws, "conversation:join", {"conversation_id": conv})
    error = await next_of(charlie_ws, "error")
    assert error["data"]["code"] == "not_found" and error["data"]["ref"] == "conversation:join"
    await send(charlie_ws, "typing:start", {"conversation_id": conv})
    assert (await next_of(charlie_ws, "error"))["data"]["code"] == "not_joined"
    assert await alice_ws.receive_nothing(timeout=0.3)
    await send(bob_ws, "conversation:leave", {"conversation_id": conv})
    assert (await next_of(alice_ws, "conversation:viewers"))["data"]["user_ids"] == [world.alice.pk]
    await send(bob_ws, "conversation:leave", {"conversation_id": conv})
    assert (await next_of(bob_ws, "error"))["data"]["code"] == "not_joined"
    await close(alice_ws, bob_ws, charlie_ws)


async def test_another_tenants_conversation_gets_errors_and_none_of_its_messages(world: World) -> None:
    """Reliability check 9: a tenant-A socket naming a tenant-B conversation gets `error` frames, and while tenant B
    gets 20 messages through its services (and typing), the tenant-A socket receives nothing at all."""
    globex_message = await database_sync_to_async(make_message)(world.globex_conversation)
    alice_ws, _ = await open_socket(world.alice)
    charlie_ws, _ = await open_socket(world.charlie, "globex")
    conv = world.globex_conversation.pk
    attempts = [
        ("conversation:join", {"conversation_id": conv}, "not_found"),
        ("typing:start", {"conversation_id": conv}, "not_joined"),
        ("typing:stop", {"conversation_id": conv}, "not_joined"),
        ("message:read", {"conversation_id": conv, "message_id": globex_message.pk}, "not_found"),
        ("conversation:leave", {"conversation_id": conv}, "not_joined"),
    ]
    for type_, data, code in attempts:
        await send(alice_ws, type_, data)
        error = await alice_ws.receive_json_from(timeout=5)  # the answer, and only that
        assert error["type"] == "error" and error["seq"] is None, error
        assert (error["data"]["code"], error["data"]["ref"]) == (code, type_)

    # Tenant B is busy: its own socket sees everything, tenant A's sees none of it.
    await send(charlie_ws, "conversation:join", {"conversation_id": conv})
    await next_of(charlie_ws, "conversation:viewers")
    await send(charlie_ws, "typing:start", {"conversation_id": conv})
    await database_sync_to_async(append_messages)(conv, world.globex.pk, 20)
    frames = await durable_frames(charlie_ws, 40)
    assert [f["seq"] for f in frames] == list(range(1, 41))
    assert sum(f["type"] == "message:new" for f in frames) == 20
    await send(alice_ws, "ping")  # a round trip on tenant A's socket after all of that was broadcast
    pong = await alice_ws.receive_json_from(timeout=5)
    assert pong["type"] == "pong", pong  # nothing of tenant B came before it
    assert await drain(alice_ws) == []
    # And the refused frames wrote nothing in either tenant.
    assert await database_sync_to_async(head)(world.acme.pk) == 0
    assert await database_sync_to_async(_read_markers)() == 0
    await close(alice_ws, charlie_ws)


def _read_markers() -> int:
    with scopes_disabled():
        return ReadMarker.objects.count()


async def test_typing_goes_to_other_viewers_only_and_expires(world: World, settings: Any) -> None:
    settings.TYPING_TTL = 0.3
    alice_ws, _ = await open_socket(world.alice)
    bob_ws, _ = await open_socket(world.bob)
    away_ws, _ = await open_socket(world.bob)  # bob's other tab, not viewing the conversation
    conv = world.acme_conversation.pk
    for ws in (alice_ws, bob_ws):
        await send(ws, "conversation:join", {"conversation_id": conv})
        await next_of(ws, "conversation:viewers")
    await next_of(alice_ws, "conversation:viewers")  # bob's join
    await send(alice_ws, "typing:start", {"conversation_id": conv})
    start = await next_of(bob_ws, "typing:start")
    assert start["seq"] is None
    assert start["data"] == {"conversation_id": conv, "user_id": world.alice.pk, "name": "Alice", "expires_in": 300}
    stop = await next_of(bob_ws, "typing:stop")  # alice never sent a stop: it expires by itself
    assert stop["data"] == {"conversation_id": conv, "user_id": world.alice.pk, "name": "Alice"}
    assert await alice_ws.receive_nothing(timeout=0.2)  # never back to the typist
    assert all(f["type"].startswith("user:") for f in await drain(away_ws))
    await close(alice_ws, bob_ws, away_ws)


async def drain(comm: WebsocketCommunicator, timeout: float = 0.2) -> list[Frame]:
    """Frames until the socket has been quiet for `timeout` (for asserting that nothing more arrives)."""
    frames = []
    while not await comm.receive_nothing(timeout=timeout):
        frames.append(await comm.receive_json_from())
    return frames


async def test_typing_is_throttled_and_stopped_explicitly(world: World, settings: Any) -> None:
    settings.TYPING_THROTTLE = 60
    alice_ws, _ = await open_socket(world.alice)
    bob_ws, _ = await open_socket(world.bob)
    conv = world.acme_conversation.pk
    for ws in (alice_ws, bob_ws):
        await send(ws, "conversation:join", {"conversation_id": conv})
        await next_of(ws, "conversation:viewers")
    await next_of(alice_ws, "conversation:viewers")  # bob's join: he is in the group before alice types
    for _ in range(5):  # one per keystroke
        await send(alice_ws, "typing:start", {"conversation_id": conv})
    await send(alice_ws, "typing:stop", {"conversation_id": conv})
    typing = []
    while not typing or typing[-1] != "typing:stop":
        typing.append((await next_of(bob_ws, "typing:start", "typing:stop"))["type"])
    assert typing == ["typing:start", "typing:stop"]
    later = await drain(bob_ws, timeout=0.3)  # viewer updates may still come; no further typing frame may
    assert [f["type"] for f in later if f["type"].startswith("typing:")] == []
    await close(alice_ws, bob_ws)


async def test_leaving_or_disconnecting_stops_typing(world: World) -> None:
    alice_ws, _ = await open_socket(world.alice)
    bob_ws, _ = await open_socket(world.bob)
    conv = world.acme_conversation.pk
    for ws in (alice_ws, bob_ws):
        await send(ws, "conversation:join", {"conversation_id": conv})
        await next_of(ws, "conversation:viewers")
    await next_of(alice_ws, "conversation:viewers")  # bob's join: he is in the group before alice types
    await send(alice_ws, "typing:start", {"conversation_id": conv})
    await next_of(bob_ws, "typing:start")
    await alice_ws.disconnect()
    assert (await next_of(bob_ws, "typing:stop"))["data"]["user_id"] == world.alice.pk
    assert (await next_of(bob_ws, "conversation:viewers"))["data"]["user_ids"] == [world.bob.pk]
    await close(bob_ws)


# --- the conversation list: typing and viewers of every conversation (activity:subscribe) ---------------------------


def not_about(frames: list[Frame], conversation_id: int) -> bool:
    return not [f for f in frames if f["data"].get("conversation_id") == conversation_id]


async def test_the_list_gets_typing_and_viewers_of_conversations_it_has_not_joined(world: World) -> None:
    """Sockets of the tenant that subscribed see typing and viewers of every conversation, without joining it;
    another tenant's subscribed socket, and a socket that did not subscribe, get none of it; typing never goes back
    to the typist's own sockets."""
    conv = world.acme_conversation.pk
    list_ws, _ = await open_socket(world.alice)  # alice's inbox shows the list; she has another conversation open
    bob_ws, _ = await open_socket(world.bob)  # bob opens the conversation and types
    bob_list_ws, _ = await open_socket(world.bob)  # bob's other tab, on the list
    plain_ws, _ = await open_socket(world.alice)  # an integration's socket: never asked
    charlie_ws, _ = await open_socket(world.charlie, "globex")
    for ws in (list_ws, bob_list_ws, charlie_ws):
        await send(ws, "activity:subscribe", {"conversation_ids": [conv]})
    await send(charlie_ws, "ping")
    await next_of(charlie_ws, "pong")  # its subscription (and its empty snapshot) is in place

    await send(bob_ws, "conversation:join", {"conversation_id": conv})
    viewers = await next_of(list_ws, "conversation:viewers")
    assert viewers["seq"] is None and viewers["data"] == {"conversation_id": conv, "user_ids": [world.bob.pk]}
    assert (await next_of(bob_list_ws, "conversation:viewers"))["data"]["user_ids"] == [world.bob.pk]
    await send(bob_ws, "typing:start", {"conversation_id": conv})
    start = await next_of(list_ws, "typing:start")
    assert start["seq"] is None
    assert start["data"] == {"conversation_id": conv, "user_id": world.bob.pk, "name": "Bob", "expires_in": 6000}
    await send(bob_ws, "typing:stop", {"conversation_id": conv})
    stop = await next_of(list_ws, "typing:stop")
    assert stop["data"] == {"conversation_id": conv, "user_id": world.bob.pk, "name": "Bob"}
    await send(bob_ws, "conversation:leave", {"conversation_id": conv})
    assert (await next_of(list_ws, "conversation:viewers"))["data"] == {"conversation_id": conv, "user_ids": []}

    # Exactly those frames on the list socket: each once.
    assert await drain(list_ws) == []
    # Bob's own list tab saw the viewers change but not his own typing.
    bob_list = [f["type"] for f in await drain(bob_list_ws) if not f["type"].startswith("user:")]
    assert "typing:start" not in bob_list and "typing:stop" not in bob_list
    assert not_about(await drain(plain_ws), conv)  # not subscribed: as before this addition
    assert not_about(await drain(charlie_ws), conv)  # another tenant: nothing at all
    await close(list_ws, bob_ws, bob_list_ws, plain_ws, charlie_ws)


async def test_subscribing_sends_who_views_the_listed_conversations_now(world: World) -> None:
    conv, foreign = world.acme_conversation.pk, world.globex_conversation.pk
    bob_ws, _ = await open_socket(world.bob)
    charlie_ws, _ = await open_socket(world.charlie, "globex")
    await send(bob_ws, "conversation:join", {"conversation_id": conv})
    await next_of(bob_ws, "conversation:viewers")
    await send(charlie_ws, "conversation:join", {"conversation_id": foreign})
    await next_of(charlie_ws, "conversation:viewers")

    alice_ws, _ = await open_socket(world.alice)
    await send(alice_ws, "activity:subscribe", {"conversation_ids": [conv, foreign, 99999999]})
    snapshot = await next_of(alice_ws, "conversation:viewers")
    assert snapshot["data"] == {"conversation_id": conv, "user_ids": [world.bob.pk]}
    # Nothing about the other tenant's conversation (charlie views it) nor the unknown id.
    assert not_about(await drain(alice_ws), foreign)
    await send(alice_ws, "activity:unsubscribe")
    await send(alice_ws, "ping")
    await next_of(alice_ws, "pong")
    await send(bob_ws, "conversation:leave", {"conversation_id": conv})
    assert not_about(await drain(alice_ws), conv)
    await close(alice_ws, bob_ws, charlie_ws)


async def test_a_socket_that_joined_and_subscribed_gets_each_frame_once(world: World) -> None:
    conv = world.acme_conversation.pk
    alice_ws, _ = await open_socket(world.alice)
    bob_ws, _ = await open_socket(world.bob)
    await send(alice_ws, "activity:subscribe", {"conversation_ids": []})
    await send(alice_ws, "conversation:join", {"conversation_id": conv})
    await next_of(alice_ws, "conversation:viewers")
    await send(bob_ws, "conversation:join", {"conversation_id": conv})
    await send(bob_ws, "typing:start", {"conversation_id": conv})
    await send(bob_ws, "typing:stop", {"conversation_id": conv})
    frames = [f["type"] for f in await drain(alice_ws, timeout=0.4) if not f["type"].startswith("user:")]
    assert frames == ["conversation:viewers", "typing:start", "typing:stop"]
    await close(alice_ws, bob_ws)


async def test_stop_start_cycles_reach_the_list_at_most_once_per_throttle_period(world: World) -> None:
    conv = world.acme_conversation.pk
    alice_ws, _ = await open_socket(world.alice)
    bob_ws, _ = await open_socket(world.bob)
    viewer_ws, _ = await open_socket(world.alice)  # alice's tab that has the conversation open
    await send(alice_ws, "activity:subscribe", {"conversation_ids": []})
    for ws in (bob_ws, viewer_ws):
        await send(ws, "conversation:join", {"conversation_id": conv})
        await next_of(ws, "conversation:viewers")
    for _ in range(5):
        await send(bob_ws, "typing:start", {"conversation_id": conv})
        await send(bob_ws, "typing:stop", {"conversation_id": conv})
    await send(bob_ws, "ping")
    await next_of(bob_ws, "pong")
    listed = [f["type"] for f in await drain(alice_ws, timeout=0.4) if f["type"].startswith("typing")]
    assert listed == ["typing:start", "typing:stop"]
    # The thread view is unchanged: the viewer of the conversation still sees every start and stop.
    viewed = [f["type"] for f in await drain(viewer_ws, timeout=0.4) if f["type"].startswith("typing")]
    assert viewed == ["typing:start", "typing:stop"] * 5
    await close(alice_ws, bob_ws, viewer_ws)


# --- bad frames and abuse -------------------------------------------------------------------------------------------


BAD_FRAMES: list[tuple[str, str, str | None]] = [
    ("not json", "bad_json", None),
    ("[" * 60_000, "bad_json", None),
    ('{"type": "sync", "data": {"since": ' + "1" * 5000 + "}}", "bad_json", None),
    ("[1, 2]", "bad_frame", None),
    ('{"data": {}}', "bad_frame", None),
    ('{"type": 7}', "bad_frame", None),
    ('{"type": "launch:missiles"}', "unknown_type", "launch:missiles"),
    ('{"type": "sync", "data": []}', "bad_data", "sync"),
    ('{"type": "sync"}', "bad_data", "sync"),
    ('{"type": "sync", "data": {"since": "0"}}', "bad_data", "sync"),
    ('{"type": "sync", "data": {"since": -1}}', "bad_data", "sync"),
    ('{"type": "sync", "data": {"since": true}}', "bad_data", "sync"),
    ('{"type": "conversation:join", "data": {"conversation_id": 1.5}}', "bad_data", "conversation:join"),
    ('{"type": "conversation:join", "data": {"conversation_id": 99999999}}', "not_found", "conversation:join"),
    ('{"type": "conversation:leave", "data": {}}', "bad_data", "conversation:leave"),
    ('{"type": "typing:start", "data": {"conversation_id": 1}}', "not_joined", "typing:start"),
    ('{"type": "typing:stop", "data": {"conversation_id": null}}', "bad_data", "typing:stop"),
    ('{"type": "message:read", "data": {"conversation_id": 1}}', "bad_data", "message:read"),
    ('{"type": "message:read", "data": {"conversation_id": 99999, "message_id": 1}}', "not_found", "message:read"),
    ('{"type": "sync", "data": {"since": 1e400}}', "bad_data", "sync"),
    ('{"type": "activity:subscribe", "data": {"conversation_ids": 1}}', "bad_data", "activity:subscribe"),
    ('{"type": "activity:subscribe", "data": {"conversation_ids": [true]}}', "bad_data", "activity:subscribe"),
    ('{"type": "activity:subscribe", "data": {"conversation_ids": [0]}}', "bad_data", "activity:subscribe"),
    (
        '{"type": "activity:subscribe", "data": {"conversation_ids": ' + str(list(range(1, 102))) + "}}",
        "bad_data",
        "activity:subscribe",
    ),
    ("x" * (64 * 1024 + 1), "too_large", None),
]


async def test_every_bad_frame_gets_an_error_and_changes_nothing(world: World) -> None:
    alice_ws, _ = await open_socket(world.alice)
    for text, code, ref in BAD_FRAMES:
        await alice_ws.send_to(text_data=text)
        error = await next_of(alice_ws, "error")
        assert (error["data"]["code"], error["data"]["ref"]) == (code, ref), text[:80]
        assert error["seq"] is None and error["data"]["message"]
    await alice_ws.send_to(bytes_data=b"\x00\x01")
    assert (await next_of(alice_ws, "error"))["data"]["code"] == "bad_frame"
    # The socket still works, and nothing was written.
    await send(alice_ws, "ping")
    assert (await next_of(alice_ws, "pong"))["seq"] is None
    assert await database_sync_to_async(head)(world.acme.pk) == 0
    await close(alice_ws)


async def test_a_flood_gets_error_frames_then_4429(world: World, settings: Any) -> None:
    settings.WS_RATE_BURST = 5
    settings.WS_RATE_PER_SECOND = 0.001
    settings.WS_RATE_STRIKES = 3
    settings.WS_RATE_STRIKE_DECAY = 0.001
    alice_ws, _ = await open_socket(world.alice, sync=False)
    for _ in range(9):
        await send(alice_ws, "ping")
    received = []
    while True:
        output = await alice_ws.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            break
        received.append(json.loads(output["text"]))
    assert output["code"] == 4429
    kinds = [(f["type"], f["data"].get("code")) for f in received if not f["type"].startswith("user:")]
    assert kinds == [("pong", None)] * 5 + [("error", "rate_limited")] * 3


async def test_open_sockets_frames_and_delivery_latency_are_measured(world: World) -> None:
    from prometheus_client import REGISTRY

    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels or {}) or 0.0

    sockets, hellos = sample("inbox_open_sockets"), sample("inbox_frames_sent_total", {"type": "hello"})
    delivered = sample("inbox_event_delivery_seconds_count")
    alice_ws, _ = await open_socket(world.alice)
    assert sample("inbox_open_sockets") == sockets + 1
    assert sample("inbox_frames_sent_total", {"type": "hello"}) == hellos + 1
    await send(alice_ws, "sync", {"since": 0})
    await next_of(alice_ws, "sync:done")
    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk, 1)
    await durable_frames(alice_ws, 2)
    assert sample("inbox_event_delivery_seconds_count") >= delivered + 2
    await alice_ws.disconnect()
    assert sample("inbox_open_sockets") == sockets


async def test_hello_is_the_first_frame_even_when_the_tenant_group_is_busy_during_the_handshake(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process's hub delivers group messages while a socket is still in its handshake: anything that arrives
    before `hello` waits for it (an ephemeral frame and a durable one, each exactly once, after hello)."""
    alice_ws, _ = await open_socket(world.alice)
    layer = get_channel_layer()
    real_open = presence.connections_open

    def open_while_the_group_talks(sockets: list[presence.Conn]) -> list[tuple[bool, set[int]]]:
        # Runs after bob's socket joined the tenant group and before its hello: the tenant's traffic goes on.
        from asgiref.sync import async_to_sync

        ((tenant_id, _, _),) = sockets

        async_to_sync(layer.group_send)(
            f"tenant.{tenant_id}.inbox",
            {
                "type": "inbox.event",
                "tenant_id": tenant_id,
                "frame": {"type": "user:online", "data": {"user_id": 999}, "ts": "2026-01-01T00:00:00Z", "seq": None},
            },
        )
        try:
            append_messages(world.acme_conversation.pk, world.acme.pk, 1)
        finally:
            from django.db import connection

            connection.close()  # this is a worker thread of the presence calls, not Django's: give it back
        return real_open(sockets)

    monkeypatch.setattr(presence, "connections_open", open_while_the_group_talks)
    bob_ws = communicator("acme", user=world.bob)
    connected, _ = await bob_ws.connect(timeout=5)
    assert connected
    hello = await bob_ws.receive_json_from(timeout=5)
    assert hello["type"] == "hello", hello
    monkeypatch.setattr(presence, "connections_open", real_open)
    await send(bob_ws, "sync", {"since": hello["data"]["seq"]})
    seen: list[tuple[str, Any]] = []
    while not any(t == "sync:done" for t, _ in seen) or not any(t == "message:new" for t, _ in seen):
        frame = await bob_ws.receive_json_from(timeout=5)
        seen.append((frame["type"], frame["data"].get("user_id") if frame["type"] == "user:online" else frame["seq"]))
    while ("user:online", 999) not in seen:
        frame = await bob_ws.receive_json_from(timeout=5)
        seen.append((frame["type"], frame["data"].get("user_id") if frame["type"] == "user:online" else frame["seq"]))
    assert seen.count(("user:online", 999)) == 1, seen
    assert len([s for t, s in seen if t == "message:new"]) == 1
    await close(alice_ws, bob_ws)


async def test_connecting_sockets_read_the_database_side_by_side(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The handshake's and sync's reads run on socket_db's threads, not one after another on Channels' single sync
    thread: two handshakes meet inside _authenticate (a barrier of two), which on one thread would time out."""
    import threading

    barrier = threading.Barrier(2, timeout=5)
    threads: list[str] = []
    authenticate = consumers._authenticate

    def meeting(scope: dict[str, Any], slug: str) -> Any:
        threads.append(threading.current_thread().name)
        barrier.wait()  # BrokenBarrierError (the handshake fails) unless the other one is in here at the same time
        return authenticate(scope, slug)

    monkeypatch.setattr(consumers, "_authenticate", meeting)
    (first, hello), (second, _) = await asyncio.gather(open_socket(world.alice), open_socket(world.bob))
    assert hello["type"] == "hello"
    assert len(threads) == 2 and all(name.startswith("socket-db") for name in threads), threads
    assert len(set(threads)) == 2
    await first.disconnect()
    await second.disconnect()


async def test_a_sockets_thread_calls_leave_its_context_as_it_was() -> None:
    """asgiref copies what a thread call set back into the caller's context, re-homing every asgiref Local's storage
    into new objects: an idle socket's task kept ~60 of them (~4 KiB) from its handshake's calls. socket_db and the
    presence calls run in a copy that is not copied back."""
    from asgiref.local import Local

    probe: contextvars.ContextVar[str | None] = contextvars.ContextVar("probe", default=None)
    local = Local()

    def touch() -> int:
        probe.set("thread")
        local.seen = "thread"
        return 7

    assert await consumers.socket_db(touch)() == 7
    consumer = consumers.InboxConsumer()
    assert await consumer._presence(touch) == 7
    assert probe.get() is None and getattr(local, "seen", None) is None
    before = len(contextvars.copy_context())
    await consumers.socket_db(touch)()
    assert len(contextvars.copy_context()) == before


async def test_handshakes_read_together_each_get_their_own_tenant_head_and_verdict(world: World) -> None:
    """Sockets of two tenants whose handshakes read at the same moment: each socket's verdict (active member, same
    password) and its own tenant's head; a tenant's sockets never see another's head."""
    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk, 2)  # acme head 4

    def stamp(user: User) -> str:
        return consumers.credential_stamp(user.password, user.credentials_epoch)

    bob_stale = consumers.credential_stamp("an older password hash", world.bob.credentials_epoch)
    sockets = [
        (world.acme.pk, world.alice.pk, stamp(world.alice)),
        (world.globex.pk, world.charlie.pk, stamp(world.charlie)),
        (world.acme.pk, world.bob.pk, bob_stale),  # the password changed since the ticket
        (world.acme.pk, world.charlie.pk, stamp(world.charlie)),  # not a member of acme
        (world.acme.pk, world.alice.pk, stamp(world.alice)),  # a second tab
    ]
    answers = await database_sync_to_async(consumers._handshake_states)(sockets)
    assert answers == [(True, 4), (True, 0), (False, 4), (False, 0), (True, 4)]
    assert await database_sync_to_async(consumers._handshake_states)([]) == []

    sockets_at_once = [open_socket(user) for user in (world.alice, world.bob, world.alice)]
    opened = await asyncio.gather(*sockets_at_once)
    assert [hello["data"]["seq"] for _, hello in opened] == [4, 4, 4]
    await close(*(ws for ws, _ in opened))


async def test_a_frame_waiting_its_turn_for_a_socket_that_went_away_is_dropped_quietly() -> None:
    """A durable frame queued behind a replay (the slow path) whose client disconnected meanwhile: no "Task
    exception was never retrieved" in the log, and the socket counts as closing."""
    from autobahn.exception import Disconnected

    consumer = consumers.InboxConsumer()
    consumer.deliver_lock = asyncio.Lock()
    consumer.slow = 1
    consumer.closing = False

    async def gone(frame: Any) -> None:
        raise Disconnected("Attempt to send on a closed protocol")

    consumer._deliver = gone  # type: ignore[method-assign]
    await consumer._deliver_slow({"type": "message:new", "data": {}, "seq": 7})
    assert consumer.closing is True and consumer.slow == 0
