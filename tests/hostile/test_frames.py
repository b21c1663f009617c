"""Checks 4 and 9 (frames): fuzzing the consumer's frame handling, and every client frame type across tenants.

The fuzzer drives a real InboxConsumer over the configured channel layer with hypothesis-generated frames: random
text, random JSON, every known type with wrong/huge/missing fields, oversize frames. After each frame the client
sends `ping`: the socket must still answer `pong`, and no `error` may carry code "internal" (an unhandled
exception in a handler). HOSTILE_FRAME_EXAMPLES raises the count (CI: 400 examples of up to 12 frames).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.models import User
from inbox import presence
from inbox.models import Conversation, Direction, Message, ReadMarker, TenantEvent
from inbox.routing import websocket_urlpatterns
from inbox.services import message_append
from inbox.tests import factories
from inbox.tests.fixtures import World
from tenants.scoping import scopes_disabled, tenant_scope

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://testserver")
CLIENT_TYPES = [
    "ping",
    "sync",
    "conversation:join",
    "conversation:leave",
    "typing:start",
    "typing:stop",
    "message:read",
]
EXAMPLES = int(os.environ.get("HOSTILE_FRAME_EXAMPLES", "400"))


@pytest.fixture(autouse=True)
def _realtime(settings: Any) -> Iterator[None]:
    settings.PRESENCE_OFFLINE_GRACE = 0
    settings.WS_RATE_BURST = 10**9  # the fuzzer floods on purpose; the rate limit has its own test below
    settings.WS_RATE_PER_SECOND = 10**9
    presence.store().clear()
    yield
    presence.store().clear()


@pytest.fixture(autouse=True)
async def _flush_layer() -> AsyncIterator[None]:
    yield
    layer = get_channel_layer()
    if layer is not None and hasattr(layer, "flush"):
        await layer.flush()


async def _open(user: User, slug: str = "acme") -> WebsocketCommunicator:
    comm = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/tenants/{slug}/", headers=[ORIGIN])
    comm.scope["user"] = user
    connected, _ = await comm.connect(timeout=5)
    assert connected
    hello = await comm.receive_json_from(timeout=5)
    assert hello["type"] == "hello"
    return comm


async def _until(comm: WebsocketCommunicator, *types: str, timeout: float = 5) -> tuple[dict[str, Any], list[Any]]:
    """Frames up to the first of `types`; returns it and everything before it."""
    seen: list[dict[str, Any]] = []
    while True:
        output = await comm.receive_output(timeout=timeout)
        assert output["type"] != "websocket.close", f"socket closed ({output}) after {seen}"
        frame = json.loads(output["text"])
        if frame["type"] in types:
            return frame, seen
        seen.append(frame)


# --- strategies ------------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
ids = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 2, 3, 2**63 - 1, 2**63, -1]),
    st.text(max_size=8),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
data_objects = st.fixed_dictionaries(
    {},
    optional={"conversation_id": ids, "message_id": ids, "since": ids, "extra": json_values},
)
structured = st.builds(
    lambda t, d, omit: {"type": t} if omit else {"type": t, "data": d},
    st.one_of(st.sampled_from(CLIENT_TYPES), st.text(max_size=80), st.sampled_from(["hello", "message:new", "error"])),
    st.one_of(data_objects, json_values),
    st.booleans(),
).map(json.dumps)
frames = st.one_of(
    structured,
    structured,
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=64).map(lambda b: b.decode("latin1")),
    st.integers(min_value=65 * 1024, max_value=70 * 1024).map(lambda n: json.dumps({"type": "ping", "pad": "x" * n})),
)


# --- fuzzing ---------------------------------------------------------------------------------------------------------


@pytest.fixture
async def fuzz_socket(world: World) -> AsyncIterator[WebsocketCommunicator]:
    comm = await _open(world.alice)
    yield comm
    await comm.disconnect()


def _globex_state(world: World) -> tuple[int, int, int]:
    with scopes_disabled():
        return (
            TenantEvent.objects.filter(tenant=world.globex).count(),
            ReadMarker.objects.filter(tenant=world.globex).count(),
            Message.objects.filter(tenant=world.globex).count(),
        )


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(frames, min_size=1, max_size=12))
async def test_no_frame_crashes_a_handler_or_closes_the_socket(
    world: World, fuzz_socket: WebsocketCommunicator, batch: list[str]
) -> None:
    for text in batch:
        await fuzz_socket.send_input({"type": "websocket.receive", "text": text})  # "" too: send_to refuses it
        await fuzz_socket.send_to(text_data='{"type": "ping"}')
        _, before = await _until(fuzz_socket, "pong")
        internal = [f for f in before if f["type"] == "error" and f["data"].get("code") == "internal"]
        assert not internal, (text[:300], internal)


async def test_binary_frames_get_an_error_and_the_socket_stays(fuzz_socket: WebsocketCommunicator) -> None:
    for payload in (b"", b"\x00\xff" * 100, json.dumps({"type": "ping"}).encode()):
        await fuzz_socket.send_input({"type": "websocket.receive", "bytes": payload})
        error, _ = await _until(fuzz_socket, "error")
        assert error["data"]["code"] == "bad_frame"
    await fuzz_socket.send_to(text_data='{"type": "ping"}')
    await _until(fuzz_socket, "pong")


async def test_the_fuzzer_leaves_the_other_tenant_untouched(world: World, fuzz_socket: WebsocketCommunicator) -> None:
    globex_message = await database_sync_to_async(factories.make_message)(world.globex_conversation)
    before = await database_sync_to_async(_globex_state)(world)
    hostile = [
        {"type": "message:read", "data": {"conversation_id": world.globex_conversation.pk, "message_id": m}}
        for m in (globex_message.pk, 1, 2**62)
    ]
    hostile += [{"type": "conversation:join", "data": {"conversation_id": world.globex_conversation.pk}}]
    for frame in hostile:
        await fuzz_socket.send_json_to(frame)
        error, _ = await _until(fuzz_socket, "error")
        assert error["data"]["code"] == "not_found", error
    assert await database_sync_to_async(_globex_state)(world) == before


# --- every frame type across tenants (check 9) -------------------------------------------------------------------------


def _append_globex(world: World, count: int) -> None:
    for _ in range(count):
        with tenant_scope(world.globex.pk), transaction.atomic():
            conversation = Conversation.objects.select_for_update().get(pk=world.globex_conversation.pk)
            message = Message(direction=Direction.INBOUND, text="secret", wa_message_id=f"wamid.{uuid.uuid4().hex}")
            message_append(conversation=conversation, message=message)


async def test_every_frame_type_aimed_at_another_tenant_gets_an_error_and_no_data(world: World) -> None:
    alice = await _open(world.alice)
    charlie = await _open(world.charlie, "globex")
    globex_message = await database_sync_to_async(factories.make_message)(world.globex_conversation)
    foreign = world.globex_conversation.pk
    expected = {
        "conversation:join": {"conversation_id": foreign},
        "conversation:leave": {"conversation_id": foreign},
        "typing:start": {"conversation_id": foreign},
        "typing:stop": {"conversation_id": foreign},
        "message:read": {"conversation_id": foreign, "message_id": globex_message.pk},
    }
    for type_, data in expected.items():
        await alice.send_json_to({"type": type_, "data": data})
        error, _ = await _until(alice, "error")
        assert error["data"]["ref"] == type_
        assert error["data"]["code"] in ("not_found", "not_joined"), error
    # charlie saw none of it: no typing, no viewers, no read marker of alice's.
    await charlie.send_json_to({"type": "ping"})
    _, seen = await _until(charlie, "pong")
    assert not [f for f in seen if f["type"].startswith(("typing", "conversation:viewers", "message:read"))], seen

    # 100 messages posted to globex: alice's socket receives none of them, live or by sync.
    await database_sync_to_async(_append_globex)(world, 100)
    assert await alice.receive_nothing(timeout=0.5)
    await alice.send_json_to({"type": "sync", "data": {"since": 0}})
    done, replayed = await _until(alice, "sync:done", "error", timeout=10)
    assert done["type"] == "sync:done"
    assert all(f["data"].get("conversation_id") != foreign for f in replayed)
    assert not [f for f in replayed if "secret" in json.dumps(f)]
    await alice.disconnect()
    await charlie.disconnect()


async def test_a_flood_of_frames_is_rate_limited_then_closed_with_4429(world: World, settings: Any) -> None:
    settings.WS_RATE_BURST = 20
    settings.WS_RATE_PER_SECOND = 2
    settings.WS_RATE_STRIKES = 5
    settings.WS_RATE_STRIKE_DECAY = 0.1
    comm = await _open(world.alice)
    codes: list[str] = []
    closed: int | None = None
    for _ in range(100):
        await comm.send_to(text_data='{"type": "ping"}')
    while closed is None:
        output = await comm.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            closed = output["code"]
        else:
            frame = json.loads(output["text"])
            if frame["type"] == "error":
                codes.append(frame["data"]["code"])
    assert "rate_limited" in codes
    assert closed == 4429
