"""Local delivery (inbox.events.publish): what a process sends reaches its own sockets without the round trip through
the channel layer, exactly once, and every other process still gets it from the layer.

Runs on the configured channel layer (embedded: in-memory; CI: Redis pub/sub). "Another process" is a plain layer
channel in the group, which is what another process's Hub is.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from inbox import consumers, events
from inbox.tests.fixtures import World
from inbox.tests.test_consumers import (  # noqa: F401  (the two fixtures apply here too)
    _flush_layer,
    _realtime_settings,
    append_messages,
    close,
    durable_frames,
    head,
    next_of,
    open_socket,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _typing_from_sync_code(tenant_id: int, conversation_id: int) -> None:
    events.send_ephemeral(
        events.tenant_group(tenant_id), events.TYPING_START, {"conversation_id": conversation_id, "user_id": 0}
    )


async def _next_copy(channel: str, type_: str) -> dict[str, Any]:
    """The next layer message of a frame type on a plain layer channel (presence may come first)."""
    layer = get_channel_layer()
    while True:
        message: dict[str, Any] = await asyncio.wait_for(layer.receive(channel), timeout=5)
        if message["frame"]["type"] == type_:
            return message


async def _other_process(group: str) -> str:
    layer = get_channel_layer()
    channel = await layer.new_channel("other.")
    await layer.group_add(group, channel)
    return channel


async def test_a_frame_sent_from_this_process_reaches_its_socket_once_and_other_processes_marked(world: World) -> None:
    layer = get_channel_layer()
    group = events.tenant_group(world.acme.pk)
    ws, _ = await open_socket(world.alice)
    other = await _other_process(group)
    await database_sync_to_async(_typing_from_sync_code)(world.acme.pk, world.acme_conversation.pk)
    frame = await next_of(ws, events.TYPING_START)
    assert frame["data"]["conversation_id"] == world.acme_conversation.pk
    copy = await _next_copy(other, events.TYPING_START)  # another process gets it from the layer as before...
    hub = consumers._hubs[asyncio.get_running_loop()][id(layer)]
    assert copy[events.HUB_ORIGIN] == hub.token  # ...marked with the Hub that delivered it here
    assert await ws.receive_nothing(timeout=0.3)  # the layer's copy was skipped here: not twice
    await layer.group_discard(group, other)
    await close(ws)


async def test_a_frame_from_another_process_is_delivered(world: World) -> None:
    layer = get_channel_layer()
    ws, _ = await open_socket(world.alice)
    for origin in (None, "another-hub"):
        message: dict[str, Any] = {
            "type": events.LAYER_EVENT,
            "tenant_id": world.acme.pk,
            "frame": events.frame(events.TYPING_START, {"conversation_id": world.acme_conversation.pk}, seq=None),
        }
        if origin is not None:
            message[events.HUB_ORIGIN] = origin
        await layer.group_send(events.tenant_group(world.acme.pk), message)
        assert (await next_of(ws, events.TYPING_START))["data"]["conversation_id"] == world.acme_conversation.pk
        assert await ws.receive_nothing(timeout=0.2)
    await close(ws)


async def test_with_no_local_socket_in_the_group_the_copy_goes_out_unmarked(world: World) -> None:
    layer = get_channel_layer()
    group = events.tenant_group(world.acme.pk)
    ws, _ = await open_socket(world.charlie, "globex")  # a Hub runs on this loop, with no socket of acme
    other = await _other_process(group)
    await database_sync_to_async(_typing_from_sync_code)(world.acme.pk, world.acme_conversation.pk)
    copy = await _next_copy(other, events.TYPING_START)
    assert events.HUB_ORIGIN not in copy
    assert await ws.receive_nothing(timeout=0.2)  # and nothing crossed to the other tenant
    await layer.group_discard(group, other)
    await close(ws)


async def test_durable_events_sent_from_this_process_arrive_once_in_order(world: World) -> None:
    ws, hello = await open_socket(world.alice)
    start = hello["data"]["seq"]
    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk, 3)
    last = await database_sync_to_async(head)(world.acme.pk)
    assert last > start
    frames = await durable_frames(ws, last)
    assert [f["seq"] for f in frames] == list(range(start + 1, last + 1))
    assert await ws.receive_nothing(timeout=0.3)
    await close(ws)
