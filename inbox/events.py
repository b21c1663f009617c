"""Event types, group names and the only code that talks to the channel layer.

Durable events (PROTOCOL.md guarantee 1 and 2): `emit()` writes a TenantEvent row with the tenant's next `seq` in
the caller's transaction, and sends it to the tenant group only after that transaction commits. Ephemeral events
(typing, presence) go straight to a group with `seq: null`.

The channel-layer message carries the whole wire frame: one event fans out to every socket of the tenant, and
re-reading the row per socket would cost one query per socket per event.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypedDict

from asgiref.sync import SyncToAsync, async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import IntegrityError, connection, transaction

from config import metrics

from .models import EventSequence, TenantEvent

logger = logging.getLogger(__name__)

# Wire types of durable events (PROTOCOL.md "Server → client").
MESSAGE_NEW: Final = "message:new"
MESSAGE_STATUS: Final = "message:status"
MESSAGE_READ: Final = "message:read"
CONVERSATION_UPDATED: Final = "conversation:updated"
DURABLE_TYPES: Final = frozenset({MESSAGE_NEW, MESSAGE_STATUS, MESSAGE_READ, CONVERSATION_UPDATED})

# Wire types of ephemeral events.
TYPING_START: Final = "typing:start"
TYPING_STOP: Final = "typing:stop"
USER_ONLINE: Final = "user:online"
USER_OFFLINE: Final = "user:offline"

# Channel-layer message types (→ consumer handlers of the same name with "_" for ".").
LAYER_EVENT: Final = "inbox.event"  # a frame to forward as it is: {"type", "frame"}
LAYER_REVOKE: Final = "inbox.revoke"  # close the socket with 4403 (user deactivated / membership removed)


class Frame(TypedDict):
    type: str
    data: dict[str, Any]
    ts: str
    seq: int | None


class LayerEvent(TypedDict):
    type: Literal["inbox.event"]
    frame: Frame


def tenant_group(tenant_id: int) -> str:
    return f"tenant.{tenant_id}.inbox"  # channels allows [A-Za-z0-9._-], < 100 chars


def conversation_group(tenant_id: int, conversation_id: int) -> str:
    return f"tenant.{tenant_id}.conversation.{conversation_id}"


def user_group(user_id: int) -> str:
    return f"user.{user_id}"


def now_iso() -> str:
    # The frames' ts is always UTC; datetime.now(UTC) is what timezone.now() returns with USE_TZ, without the
    # settings lookup (it runs for every typing and presence frame).
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def frame(type_: str, data: Mapping[str, Any], *, seq: int | None, ts: str | None = None) -> Frame:
    return {"type": type_, "data": dict(data), "ts": ts or now_iso(), "seq": seq}


def event_frame(event: TenantEvent) -> Frame:
    return frame(event.type, event.data, seq=event.seq, ts=event.created_at.isoformat().replace("+00:00", "Z"))


def _next_seq(tenant_id: int, count: int = 1) -> int:
    """Advance the tenant's counter by `count` and return its new value (the last seq allocated).

    The row lock taken by the UPDATE is held until commit, which orders seq by commit.
    """
    table = EventSequence._meta.db_table
    bump = f"UPDATE {table} SET last_seq = last_seq + %s WHERE tenant_id = %s RETURNING last_seq"
    with connection.cursor() as cursor:
        cursor.execute(bump, [count, tenant_id])
        row = cursor.fetchone()
        if row is None:
            # First event of this tenant: create the counter (a concurrent creator loses on the PK and retries).
            try:
                with transaction.atomic():
                    cursor.execute(f"INSERT INTO {table} (tenant_id, last_seq) VALUES (%s, %s)", [tenant_id, count])
                return count
            except IntegrityError:  # a concurrent first event created it; the row exists now
                cursor.execute(bump, [count, tenant_id])
                row = cursor.fetchone()
                assert row is not None
        return int(row[0])


EventItem = tuple[str, Mapping[str, Any], int | None]  # (wire type, data, conversation id)

_COLUMNS: Final = ("tenant_id", "seq", "type", "data", "conversation_id", "created_at")


def _event_params(logged: list[TenantEvent], columns: tuple[str, ...]) -> list[Any]:
    """The events' values for `columns`, prepared by the model's own fields (what bulk_create would send)."""
    fields = [TenantEvent._meta.get_field("tenant" if name == "tenant_id" else name) for name in columns]
    return [
        field.get_db_prep_save(getattr(event, name), connection)
        for event in logged
        for name, field in zip(columns, fields, strict=True)
    ]


def _insert(logged: list[TenantEvent]) -> None:
    """One INSERT for the events of a change. What bulk_create would send, without its per-call ORM compilation
    (it was ~7 % of an agent send's CPU)."""
    row = "(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"
    sql = f"INSERT INTO {TenantEvent._meta.db_table} ({', '.join(_COLUMNS)}) VALUES {', '.join([row] * len(logged))}"
    with connection.cursor() as cursor:
        cursor.execute(sql, _event_params(logged, _COLUMNS))


# The columns _counted_insert takes from its VALUES list (tenant and seq come from the counter's row), with the casts
# a VALUES list needs on PostgreSQL: a column of NULLs would otherwise be typed text.
_VALUE_COLUMNS: Final = ("type", "data", "conversation_id", "created_at")
_VALUE_CASTS: Final = ("varchar", "jsonb", "bigint", "timestamptz")


def _counted_insert(tenant_id: int, logged: list[TenantEvent]) -> int | None:
    """PostgreSQL: the counter's UPDATE and the events' INSERT as one statement (one round trip less per change, on
    the thread every send of a process queues on); the i-th event gets seq last - n + i from the UPDATE's row, in
    the same transaction and under the same row lock as _next_seq + _insert. Returns the last seq allocated, or
    None (nothing written) when the tenant has no counter row yet: the caller then takes the two-statement path,
    which creates it."""
    seqs = EventSequence._meta.db_table
    values = ", ".join(
        "(" + ", ".join([f"{i}"] + [f"%s::{cast}" for cast in _VALUE_CASTS]) + ")" for i in range(1, len(logged) + 1)
    )
    sql = (
        f"WITH s AS (UPDATE {seqs} SET last_seq = last_seq + %s WHERE tenant_id = %s RETURNING tenant_id, last_seq)"
        f" INSERT INTO {TenantEvent._meta.db_table} ({', '.join(_COLUMNS)})"
        f" SELECT s.tenant_id, s.last_seq - %s + v.n, v.type, v.data, v.conversation_id, v.created_at"
        f" FROM s, (VALUES {values}) AS v (n, {', '.join(_VALUE_COLUMNS)})"
        f" RETURNING seq"
    )
    params = [len(logged), tenant_id, len(logged), *_event_params(logged, _VALUE_COLUMNS)]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return max(row[0] for row in rows) if rows else None


def emit(tenant_id: int, type_: str, data: Mapping[str, Any], *, conversation_id: int | None = None) -> TenantEvent:
    """Log a durable event in the current transaction and broadcast it to the tenant group after commit.

    Precondition: called inside transaction.atomic(), as late as possible in it (the tenant's counter row stays
    locked from here to commit, serialising the tenant's writers for that time).
    """
    return emit_many(tenant_id, [(type_, data, conversation_id)])[0]


def emit_many(tenant_id: int, items: list[EventItem]) -> list[TenantEvent]:
    """emit() for several events of one change: consecutive seqs from one counter update and one INSERT."""
    for type_, _, _ in items:
        if type_ not in DURABLE_TYPES:
            raise ValueError(f"{type_!r} is not a durable event type")
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("events.emit() must run inside the transaction of the change it reports")
    logged = [
        TenantEvent(tenant_id=tenant_id, type=type_, data=dict(data), conversation_id=conversation_id)
        for type_, data, conversation_id in items
    ]
    last = _counted_insert(tenant_id, logged) if connection.vendor == "postgresql" else None
    written = last is not None
    if last is None:
        last = _next_seq(tenant_id, len(logged))
    for i, event in enumerate(logged):
        event.seq = last - len(logged) + 1 + i
    if not written:
        _insert(logged)
    messages: list[LayerEvent] = [{"type": LAYER_EVENT, "frame": event_frame(event)} for event in logged]
    group = tenant_group(tenant_id)

    transaction.on_commit(lambda: group_send_many(group, messages), robust=True)
    return logged


def group_send(group: str, message: Mapping[str, Any]) -> None:
    """Send to a group now. The layer is at-most-once: a lost durable event is recovered by the client's `sync`."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        _run(layer, lambda: publish(layer, group, [message]))
        metrics.EVENTS_SENT.labels(kind="durable" if _is_durable(message) else "other").inc()
    except Exception:  # Redis down: the write has committed; clients catch up from the event log
        logger.warning("channel layer send to %s failed", group, exc_info=True)


# Local delivery. Whatever a Daphne process sends to a group from its event loop (a socket's own sends, and a request
# thread's, which hop there to send) used to reach that process's own sockets through the layer as well: published to
# Redis, read back by the process's Hub (inbox.consumers), decoded, handed to each socket; about 0.9 ms from the
# commit to the Hub in M1's timeline. Now the sending loop's Hub hands it to its own sockets first, directly, and the
# copy that goes to the layer carries the Hub's token (HUB_ORIGIN): that Hub skips it when the layer brings it back,
# every other Hub (the other processes) delivers it as before. Where no Hub runs on the sending loop (a Celery worker,
# a test's throwaway loop) or the Hub has no socket in the group, the copy goes out unmarked and is delivered from
# the layer as it always was.
HUB_ORIGIN: Final = "hub_origin"
LocalDelivery = Callable[[Any, str, dict[str, Any]], Awaitable[str | None]]
_local_delivery: LocalDelivery | None = None


def set_local_delivery(deliver: LocalDelivery | None) -> None:
    """Installed by inbox.consumers: `deliver(layer, group, message)` hands `message` to the running loop's Hub's
    sockets in `group` and returns the Hub's token, or returns None when it delivered nothing."""
    global _local_delivery
    _local_delivery = deliver


async def publish(layer: Any, group: str, messages: list[Any]) -> None:
    """Send layer messages to a group from a coroutine: local delivery of every message (in order) first, then their
    publication (in order). Everything this process sends to a group goes this way, so its own sockets get its
    messages in the order it sent them."""
    deliver = _local_delivery
    published = []
    for message in messages:
        out = dict(message)
        if deliver is not None:
            origin = await deliver(layer, group, dict(message))  # its own copy: the Hub caches the encoded frame on it
            if origin is not None:
                out[HUB_ORIGIN] = origin
        published.append(out)
    for out in published:
        await layer.group_send(group, out)


# A process with no event loop of its own to lend (a Celery worker) used to pay async_to_sync's new event loop per
# send, and with it a new Redis connection for the pub/sub layer (~3.6 ms of CPU per send). It sends from one
# long-lived loop in a background thread instead (~0.6 ms). Server threads (Daphne's sync views, which run under
# asgiref's SyncToAsync) keep sending from the server's own loop, and the in-memory layer always does (its queues
# belong to the loop that reads them).
_publisher: asyncio.AbstractEventLoop | None = None
_publisher_lock = threading.Lock()


def _publisher_loop() -> asyncio.AbstractEventLoop:
    global _publisher
    with _publisher_lock:
        if _publisher is None or _publisher.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="inbox-channel-layer", daemon=True).start()
            _publisher = loop
        return _publisher


def _forget_publisher() -> None:  # a forked child (Celery prefork) has the loop object but not its thread
    global _publisher, _publisher_lock
    _publisher = None
    _publisher_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_publisher)


def _run(layer: Any, send: Callable[[], Awaitable[None]]) -> None:
    """Run a layer coroutine to completion from sync code (see _publisher above)."""
    local = SyncToAsync.threadlocal
    server_loop = getattr(local, "main_event_loop", None)
    if getattr(local, "main_event_loop_pid", None) != os.getpid():
        server_loop = None
    if isinstance(layer, InMemoryChannelLayer) or (server_loop is not None and server_loop.is_running()):
        async_to_sync(_awaited)(send)
        return
    future = asyncio.run_coroutine_threadsafe(_awaited(send), _publisher_loop())
    try:
        future.result(timeout=PUBLISH_TIMEOUT)
    except TimeoutError:
        future.cancel()
        raise


async def _awaited(send: Callable[[], Awaitable[None]]) -> None:
    await send()


PUBLISH_TIMEOUT: Final = 5.0


def _is_durable(message: Mapping[str, Any]) -> bool:
    frame = message.get("frame")
    return isinstance(frame, dict) and frame.get("seq") is not None


def group_send_many(group: str, messages: list[LayerEvent]) -> None:
    """Send several messages to a group in order, with one hop into the event loop for all of them."""
    if len(messages) == 1:
        group_send(group, messages[0])
        return
    layer = get_channel_layer()
    if layer is None:
        return

    try:
        _run(layer, lambda: publish(layer, group, messages))
        metrics.EVENTS_SENT.labels(kind="durable").inc(len(messages))
    except Exception:  # Redis down: the write has committed; clients catch up from the event log
        logger.warning("channel layer send to %s failed", group, exc_info=True)


def send_ephemeral(group: str, type_: str, data: Mapping[str, Any]) -> None:
    """Send a non-durable frame (typing, presence) to a group, from sync code."""
    group_send(group, {"type": LAYER_EVENT, "frame": frame(type_, data, seq=None)})


def send_revoke(user_id: int, *, tenant_id: int | None = None) -> None:
    """Ask every socket of a user (optionally: of one tenant) to close with 4403, after the current commit."""
    message = {"type": LAYER_REVOKE, "tenant_id": tenant_id}
    transaction.on_commit(lambda: group_send(user_group(user_id), message), robust=True)
