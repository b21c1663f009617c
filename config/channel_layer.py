"""The channels-redis pub/sub layer, with publishes that do not wait for each other.

channels-redis publishes every message of a process through one Redis connection under one lock (shared with
subscribe and unsubscribe), so a process sending many small messages (typing at 1,000 events/s, a burst of events)
queues each publish behind the previous one's round trip: the queue is where the tail latency came from
(docs/performance.md). Here a publish takes a connection of the shard's pool and runs beside the others; the lock
still guards set-up, subscriptions and unsubscriptions. Two sends from one coroutine stay in order (each is awaited
before the next starts); sends from different coroutines were never ordered with respect to each other.

Everything else is the library's own (channels-redis is pinned in requirements.txt; this follows 4.3.0's shapes).
"""

from __future__ import annotations

import asyncio
from typing import Any

from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, RedisSingleShardConnection
from channels_redis.utils import _wrap_close, decode_hosts


class _ConcurrentPublishShard(RedisSingleShardConnection):  # type: ignore[misc]
    async def publish(self, channel: str, message: bytes) -> None:
        if self._redis is None:
            async with self._lock:
                self._ensure_redis()
        await self._redis.publish(channel, message)


class _LoopLayer(RedisPubSubLoopLayer):  # type: ignore[misc]
    def __init__(self, hosts: Any = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(hosts, *args, **kwargs)
        self._shards = [_ConcurrentPublishShard(host, self) for host in decode_hosts(hosts)]


class PubSubChannelLayer(RedisPubSubChannelLayer):  # type: ignore[misc]
    def _get_layer(self) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return self._layers[loop]
        except KeyError:
            layer = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            self._layers[loop] = layer
            _wrap_close(self, loop)
            return layer
