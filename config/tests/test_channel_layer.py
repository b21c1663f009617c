"""The channel layer's backend (config/channel_layer.py): channels-redis pub/sub with batched publishes (Redis)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from django.conf import settings

from config.channel_layer import BatchingShardConnection, PubSubChannelLayer

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def layer(require_redis: None) -> AsyncIterator[PubSubChannelLayer]:
    layer = PubSubChannelLayer(hosts=[settings.REDIS_URL], prefix=f"t{uuid.uuid4().hex[:8]}")
    yield layer
    await layer.flush()


async def receive_all(layer: PubSubChannelLayer, channel: str, count: int) -> list[dict[str, object]]:
    return [await asyncio.wait_for(layer.receive(channel), timeout=5) for _ in range(count)]


async def test_concurrent_group_sends_arrive_once_each_in_call_order(layer: PubSubChannelLayer) -> None:
    channel = await layer.new_channel("hub.")
    await layer.group_add("g", channel)
    # 300 publishes started at once: they are batched, and still arrive once each, in the order they were made.
    await asyncio.gather(*(layer.group_send("g", {"type": "x", "n": n}) for n in range(300)))
    got = await receive_all(layer, channel, 300)
    assert [m["n"] for m in got] == list(range(300))
    shard = layer._get_layer()._shards[0]
    assert isinstance(shard, BatchingShardConnection)


async def test_a_send_returns_only_after_redis_took_it(layer: PubSubChannelLayer) -> None:
    channel = await layer.new_channel("hub.")
    await layer.group_add("g", channel)
    await layer.group_send("g", {"type": "x", "n": 1})
    assert shard_pending(layer) == 0
    assert (await receive_all(layer, channel, 1))[0]["n"] == 1


async def test_a_dropped_publish_connection_is_replaced_and_nothing_is_lost(layer: PubSubChannelLayer) -> None:
    channel = await layer.new_channel("hub.")
    await layer.group_add("g", channel)
    await layer.group_send("g", {"type": "x", "n": 0})
    shard = layer._get_layer()._shards[0]
    client_id = await publisher_client_id(shard)
    admin = aioredis.Redis.from_url(settings.REDIS_URL)
    try:
        await admin.client_kill_filter(_id=client_id)
    finally:
        await admin.aclose()
    await layer.group_send("g", {"type": "x", "n": 1})  # the kept connection is gone: one retry on a fresh one
    assert await publisher_client_id(shard) != client_id  # a new connection to Redis
    got = await receive_all(layer, channel, 2)
    assert [m["n"] for m in got] == [0, 1]


async def test_a_redis_error_reaches_the_caller() -> None:
    bad = PubSubChannelLayer(hosts=["redis://127.0.0.1:1/0"], prefix="unreachable")
    with pytest.raises(Exception) as raised:
        await asyncio.wait_for(bad.group_send("g", {"type": "x"}), timeout=10)
    assert "connect" in str(raised.value).lower() or isinstance(raised.value, OSError)
    await bad.flush()


async def test_flush_cancels_nothing_it_already_sent_and_the_layer_works_after(layer: PubSubChannelLayer) -> None:
    channel = await layer.new_channel("hub.")
    await layer.group_add("g", channel)
    await layer.group_send("g", {"type": "x", "n": 1})
    await layer.flush()
    channel = await layer.new_channel("hub.")
    await layer.group_add("g", channel)
    await layer.group_send("g", {"type": "x", "n": 2})
    assert (await receive_all(layer, channel, 1))[0]["n"] == 2


def shard_pending(layer: PubSubChannelLayer) -> int:
    return len(layer._get_layer()._shards[0]._pending)


async def publisher_client_id(shard: BatchingShardConnection) -> int:
    connection = shard._connection
    assert connection is not None
    await connection.send_command("CLIENT", "ID")
    return int(await connection.read_response())
