"""Fuzz the consumer's client-frame handling (inbox/consumers.py `InboxConsumer.receive`).

Each input is a short session on one socket, driven through the consumer's ASGI interface as Daphne drives it:
`websocket.connect` (the real `connect()`, authenticated by a stub), up to eight `websocket.receive` messages
(text, now and then bytes), any `sync` it started run to the end, then `websocket.disconnect`. Stubbed is only
what lies outside the consumer: the ASGI send (every message the consumer sends is captured) and the database
functions it calls through `database_sync_to_async` and `socket_db` (a small in-memory world: conversations 1-3,
messages 10-11, a log head at seq 5; a database function the consumer starts calling is reported as a crash so that it gets a stub).
The channel layer is the configured in-memory one (it refuses invalid group names), with group_send checking that
each message would serialise; presence runs on its in-memory store.

Asserted for every input: no exception escapes the consumer; every frame it sends is a well-formed protocol
frame (an object with `type`, `data`, `ts`, `seq`; errors carry a string `code` and `message`); no `internal`
error (that code means a handler raised: a bug the consumer only contained); the socket is never closed with
anything but the protocol's abuse code (4429); no frame it sends exceeds the protocol's frame limit.

    .venv/bin/python -m fuzz.consumer_frames -runs=5000 -max_total_time=60
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import atheris

from fuzz import _common

_common.django_setup(embedded=True)

from django.conf import settings  # noqa: E402

settings.PRESENCE_OFFLINE_GRACE = 0  # disconnect() settles presence inline instead of in a timer task
settings.WS_FIRST_SYNC_WAIT = 30.0  # the session ends long before: the timer is cancelled by disconnect()

with atheris.instrument_imports(include=["inbox.consumers", "inbox.presence"]):
    from inbox import consumers, events

atheris.instrument_func(events.frame)

KNOWN_CONVERSATIONS = {1, 2, 3}
KNOWN_MESSAGES = {10, 11}
HEAD = 5
TYPES = ["", "PING", "sync ", "message:new", "hello", "error", "x" * 80]
FIELDS = ["conversation_id", "message_id", "since", "conversation_ids"]
logging.disable(logging.CRITICAL)  # handled errors log warnings; the assertions below are what counts


class Crash(AssertionError):
    """The harness's verdict: libFuzzer reports it with the input that caused it."""


# --- the world outside the consumer -------------------------------------------------------------------------------


def _authenticate(scope: dict[str, Any], slug: str) -> tuple[Any, int, str]:
    tenant = SimpleNamespace(pk=7, slug=slug, name="Fuzz Inc")
    user = SimpleNamespace(pk=70, name="Fuzzy", username="fuzzy")
    return SimpleNamespace(tenant=tenant, user=user, role="agent"), consumers.CLOSE_FORBIDDEN, "stamp"


def _handshake_states(sockets: list[tuple[int, int, str]]) -> list[tuple[bool, int]]:
    return [(True, HEAD)] * len(sockets)


def _still_allowed(tenant_id: int, user_id: int, stamp: str) -> bool:
    return True


def _conversation_exists(tenant_id: int, conversation_id: int) -> bool:
    return conversation_id in KNOWN_CONVERSATIONS


def _read(tenant_id: int, user_id: int, conversation_id: int, message_id: int) -> None:
    if conversation_id not in KNOWN_CONVERSATIONS:
        raise consumers.FrameError("not_found", "no such conversation")
    if message_id not in KNOWN_MESSAGES:
        raise consumers.FrameError("not_found", "no such message in this conversation")


def _sync_gap(tenant_id: int, since: int) -> tuple[bool, int]:
    return since > HEAD, HEAD


def _events_after(tenant_id: int, after: int, upto: int | None, limit: int) -> list[events.Frame]:
    last = min(HEAD, upto if upto is not None else HEAD)
    return [
        events.frame("message:new", {"conversation_id": 1, "message_id": seq}, seq=seq)
        for seq in range(after + 1, last + 1)
    ][:limit]


def _sync_start(tenant_id: int, since: int, limit: int) -> tuple[bool, int, list[events.Frame]]:
    gap, head = _sync_gap(tenant_id, since)
    return gap, head, [] if gap else _events_after(tenant_id, since, None, limit)


def _sync_starts(syncs: list[tuple[int, int, int]]) -> list[tuple[bool, int, list[events.Frame]]]:
    return [_sync_start(*sync) for sync in syncs]


DATABASE: dict[str, Callable[..., Any]] = {
    f.__name__: f
    for f in (
        _authenticate,
        _handshake_states,
        _still_allowed,
        _conversation_exists,
        _read,
        _sync_gap,
        _sync_start,
        _sync_starts,
        _events_after,
    )
}


def database_sync_to_async(func: Callable[..., Any]) -> Callable[..., Any]:
    fake = DATABASE.get(func.__name__)
    if fake is None:
        raise Crash(f"the consumer calls {func.__name__} through the database: add a stub to fuzz/consumer_frames.py")

    async def call(*args: Any, **kwargs: Any) -> Any:
        return fake(*args, **kwargs)

    return call


consumers.database_sync_to_async = database_sync_to_async  # type: ignore[assignment]
consumers.socket_db = database_sync_to_async  # type: ignore[assignment]  (the handshake's and sync's reads)


def _checked_layer() -> Any:
    """The configured (in-memory) layer, with group_send checking that every message would serialise (Redis)."""
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    group_send = layer.group_send

    async def checked_group_send(group: str, message: dict[str, Any]) -> None:
        try:
            json.dumps(message)
        except (TypeError, ValueError) as exc:
            raise Crash(f"a group_send message would not serialise: {message!r}") from exc
        await group_send(group, message)  # the layer itself refuses invalid group names (TypeError)

    layer.group_send = checked_group_send
    return layer


LAYER = _checked_layer()


# --- the session ------------------------------------------------------------------------------------------------------


def _frame_text(fdp: atheris.FuzzedDataProvider) -> str:
    mode = fdp.ConsumeIntInRange(0, 15)
    if mode == 0:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 300))
    if mode == 1:
        return json.dumps(_common.consume_json(fdp))
    if mode == 2:  # oversized: a valid frame padded past the limit, in ASCII or in multi-byte characters
        pad = ("x", "é", "\U0001f600")[fdp.ConsumeIntInRange(0, 2)] * fdp.ConsumeIntInRange(16_000, 70_000)
        return json.dumps({"type": "ping", "data": {"pad": pad}}, ensure_ascii=False)
    handlers = list(consumers.InboxConsumer.client_handlers)
    if fdp.ConsumeIntInRange(0, 7):
        type_: Any = handlers[fdp.ConsumeIntInRange(0, len(handlers) - 1)]
    elif fdp.ConsumeBool():
        type_ = TYPES[fdp.ConsumeIntInRange(0, len(TYPES) - 1)]
    else:
        type_ = _common.consume_json(fdp, 5)
    data: Any
    shape = fdp.ConsumeIntInRange(0, 7)
    if shape == 0:
        data = _common.consume_json(fdp, 4)
    else:  # the fields the handlers read, each present most of the time, mostly with ids the world knows
        data = {}
        for key in FIELDS:
            pick = fdp.ConsumeIntInRange(0, 9)
            if pick <= 5:
                data[key] = fdp.ConsumeIntInRange(0, 12)
            elif pick == 6:
                data[key] = [fdp.ConsumeIntInRange(-1, 4) for _ in range(fdp.ConsumeIntInRange(0, 4))]
            elif pick == 7:
                data[key] = _common.consume_json(fdp, 4)
        if fdp.ConsumeIntInRange(0, 7) == 0:
            data[_common.consume_key(fdp)] = _common.consume_json(fdp, 4)
    frame: dict[str, Any] = {"type": type_}
    if shape != 1:
        frame["data"] = data
    try:
        return json.dumps(frame, ensure_ascii=fdp.ConsumeBool())
    except ValueError:  # NaN-free by construction; anything else falls back to the raw text
        return str(frame)


def _check_sent(messages: list[dict[str, Any]]) -> None:
    for message in messages:
        kind = message.get("type")
        if kind == "websocket.accept":
            continue
        if kind == "websocket.close":
            if message.get("code") != consumers.CLOSE_ABUSE:
                raise Crash(f"the socket was closed with {message.get('code')}")
            continue
        if kind != "websocket.send" or not isinstance(message.get("text"), str) or message.get("bytes"):
            raise Crash(f"not a text frame: {message!r}")
        text = message["text"]
        if len(text.encode("utf-8", "surrogatepass")) > consumers.MAX_FRAME_BYTES:
            raise Crash(f"a reply of {len(text)} characters exceeds the frame limit")
        frame = json.loads(text)
        if not isinstance(frame, dict) or set(frame) != {"type", "data", "ts", "seq"}:
            raise Crash(f"malformed frame {text[:300]!r}")
        if not isinstance(frame["type"], str) or not isinstance(frame["data"], dict):
            raise Crash(f"malformed frame {text[:300]!r}")
        if not (frame["seq"] is None or (isinstance(frame["seq"], int) and frame["seq"] > 0)):
            raise Crash(f"bad seq in {text[:300]!r}")
        if frame["type"] == "error":
            data = frame["data"]
            if not isinstance(data.get("code"), str) or not isinstance(data.get("message"), str):
                raise Crash(f"malformed error frame {text[:300]!r}")
            if data["code"] == "internal":
                raise Crash(f"a handler raised (answered 'internal'): {text[:300]!r}")


class FuzzedConsumer(consumers.InboxConsumer):
    latest: FuzzedConsumer | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        FuzzedConsumer.latest = self


APP = FuzzedConsumer.as_asgi()
SCOPE = {
    "type": "websocket",
    "path": "/ws/tenants/fuzz/",
    "headers": [(b"origin", b"http://testserver")],
    "query_string": b"",
    "subprotocols": [],
    "url_route": {"args": (), "kwargs": {"slug": "fuzz"}},
}


async def session(data: bytes) -> list[dict[str, Any]]:
    """One socket through its ASGI interface. The consumer asks for its next message only once it has handled the
    previous one, so each `await ready.get()` below waits for exactly that: no sleeps, no timing."""
    fdp = atheris.FuzzedDataProvider(data)
    sent: list[dict[str, Any]] = []
    incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    ready: asyncio.Queue[None] = asyncio.Queue()

    async def receive() -> dict[str, Any]:
        ready.put_nowait(None)
        return await incoming.get()

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    def closed() -> bool:
        return any(m.get("type") == "websocket.close" for m in sent)

    def sync_task() -> asyncio.Task[None] | None:
        return getattr(FuzzedConsumer.latest, "sync_task", None)

    app = asyncio.ensure_future(APP(dict(SCOPE), receive, send))
    await ready.get()
    incoming.put_nowait({"type": "websocket.connect"})
    await ready.get()
    if FuzzedConsumer.latest is not None and fdp.ConsumeIntInRange(0, 7) == 0:
        # A tight budget now and then: the rate limit's error frames and the abuse close.
        FuzzedConsumer.latest.bucket = consumers.TokenBucket.full(2, 0.001)
        FuzzedConsumer.latest.strikes = consumers.TokenBucket.full(2, 0.001)
    for _ in range(fdp.ConsumeIntInRange(1, 8)):
        if closed():
            break
        if fdp.ConsumeIntInRange(0, 15) == 0:
            incoming.put_nowait({"type": "websocket.receive", "bytes": fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))})
        else:
            incoming.put_nowait({"type": "websocket.receive", "text": _frame_text(fdp)})
        await ready.get()
        if sync_task() is not None and fdp.ConsumeBool():
            await asyncio.wait_for(asyncio.shield(sync_task()), 5)  # now and then a sync finishes first
    if sync_task() is not None:
        await asyncio.wait_for(asyncio.shield(sync_task()), 5)
    incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})
    await asyncio.wait_for(app, 5)  # the consumer's own exceptions surface here
    FuzzedConsumer.latest = None
    leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in leftover:  # timers that outlive the socket by design (typing expiry, the process sweeper)
        task.cancel()
    await asyncio.gather(*leftover, return_exceptions=True)
    return sent


LOOP = asyncio.new_event_loop()


def test_one_input(data: bytes) -> None:
    sent = LOOP.run_until_complete(session(data))
    _check_sent(sent)


def seeds() -> list[bytes]:
    return [bytes((n * 7 + i * 13) % 256 for i in range(512)) for n in range(16)]


def main() -> None:
    _common.run("consumer_frames", test_one_input, seeds())


if __name__ == "__main__":
    main()
