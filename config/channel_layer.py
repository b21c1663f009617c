"""channels-redis' pub/sub layer with cheaper publishes and a cheaper subscriber loop (CHANNEL_LAYERS' backend).

What channels-redis does per message, and what this changes (docs/performance.md, `bench/profile_typing.py`):

* **Publish.** Every `group_send` took the shard's lock, went through redis-py's full command path (a connection from
  the pool, retry wrapper, observability hooks) and held the lock for the whole round trip, so concurrent publishes
  (a typing burst, a fan-out of presence changes) queued one round trip each. Here publishes go, in call order, to
  one publisher per shard that writes everything waiting as one pipelined batch on its own connection and reads the
  replies; a caller still returns only once Redis has taken its message, and gets the error if it did not.
* **Subscribe loop.** The reader asked for each message with a 0.1 s timeout (a timeout context and timer per
  message); here it blocks on the next message, and idles only while nothing is subscribed.

Subscriptions, groups, serialisation and the message format are channels-redis' own: this is a drop-in backend.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, RedisSingleShardConnection
from channels_redis.utils import _wrap_close
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

MAX_BATCH = 512  # publishes per pipelined write


class BatchingShardConnection(RedisSingleShardConnection):
    def __init__(self, host: dict[str, Any], channel_layer: Any) -> None:
        super().__init__(host, channel_layer)
        self._pending: list[tuple[str, bytes, asyncio.Future[None]]] = []
        self._wakeup: asyncio.Future[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._connection: Any = None  # the publisher's own connection, taken from the shard's pool

    async def publish(self, channel: str, message: bytes) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((channel, message, future))
        if self._publisher is None or self._publisher.done():
            self._publisher = asyncio.ensure_future(self._publish_forever())
        elif self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        await future

    async def _publish_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup = loop.create_future()
                await self._wakeup
                self._wakeup = None
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                for *_, future in batch:
                    if not future.done():
                        future.cancel()
                raise
            except Exception as exc:
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for *_, future in batch:
                    if not future.done():
                        future.set_result(None)

    async def _write(self, batch: list[tuple[str, bytes, asyncio.Future[None]]]) -> None:
        """PUBLISH the batch in one write and read its replies; once more on a fresh connection if the kept one has
        gone (a message may then reach subscribers twice: durable frames are deduplicated by seq, ephemeral ones are
        idempotent)."""
        commands = [("PUBLISH", channel, message) for channel, message, _ in batch]
        for attempt in (1, 2):
            connection = await self._publish_connection()
            try:
                await connection.send_packed_command(connection.pack_commands(commands), check_health=False)
                for _ in commands:
                    await connection.read_response()
                return
            except (RedisConnectionError, RedisTimeoutError, OSError):
                await self._drop_connection()
                if attempt == 2:
                    raise
            except BaseException:
                await self._drop_connection()  # a reply may be left unread: never reuse the connection
                raise

    async def _publish_connection(self) -> Any:
        if self._connection is None:
            self._ensure_redis()
            assert self._redis is not None
            self._connection = await self._redis.connection_pool.get_connection()
        return self._connection

    async def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None or self._redis is None:
            return
        try:
            await connection.disconnect()
        finally:
            await self._redis.connection_pool.release(connection)

    async def _do_receiving(self) -> None:
        while True:
            try:
                if self._pubsub is not None and self._pubsub.subscribed:
                    response = await self._pubsub.parse_response(block=True)
                    message = await self._pubsub.handle_message(response, ignore_subscribe_messages=True)
                    self._receive_message(message)
                else:
                    await asyncio.sleep(0.1)
            except (TimeoutError, asyncio.CancelledError, GeneratorExit):
                raise
            except BaseException:
                logger.exception("Unexpected exception in receive task")
                await asyncio.sleep(1)

    async def flush(self) -> None:
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.cancel()
            try:
                await publisher
            except asyncio.CancelledError:
                pass
        for *_, future in self._pending:
            if not future.done():
                future.cancel()
        self._pending = []
        await self._drop_connection()
        await super().flush()


class BatchingLoopLayer(RedisPubSubLoopLayer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shards = [BatchingShardConnection(shard.host, self) for shard in self._shards]


class PubSubChannelLayer(RedisPubSubChannelLayer):
    """`channels_redis.pubsub.RedisPubSubChannelLayer` with `BatchingShardConnection` shards."""

    def _get_layer(self) -> BatchingLoopLayer:
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = self._layers[loop] = BatchingLoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
        return layer
