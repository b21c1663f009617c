"""What a reconnect storm costs the server (bench M8: 1,000 sockets come back within a second or two and `sync`):
one database call for a sync's gap check and first page, each log frame JSON-encoded once per process rather than
once per socket, and nothing of a closed socket left for the cyclic garbage collector."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter

from inbox import consumers
from inbox.models import TenantEvent
from inbox.routing import websocket_urlpatterns
from inbox.tests.fixtures import World
from inbox.tests.test_consumers import (
    ORIGIN,
    _flush_layer,
    _realtime_settings,
    append_messages,
    close,
    drain,
    durable_frames,
    next_of,
    open_socket,
    send,
)
from tenants.scoping import scopes_disabled

pytestmark = pytest.mark.django_db(transaction=True)
__all__ = ["_flush_layer", "_realtime_settings"]

Frame = dict[str, Any]


def socket_db_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions the consumer runs through socket_db from now on."""
    calls: list[str] = []
    real = consumers.socket_db

    def counting(func: Callable[..., Any]) -> Callable[..., Any]:
        calls.append(func.__name__)
        return real(func)

    monkeypatch.setattr(consumers, "socket_db", counting)
    return calls


def encodings(monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    """How many times each durable frame (by seq) is JSON-encoded from now on."""
    counts: Counter[int] = Counter()
    real = consumers._encode

    def counting(frame: Any) -> str:
        if frame.get("seq") is not None:
            counts[frame["seq"]] += 1
        return real(frame)

    monkeypatch.setattr(consumers, "_encode", counting)
    return counts


async def synced(comm: Any, since: int, until_seq: int) -> list[Frame]:
    """Send `sync` from `since`; the durable frames up to `until_seq`, then check sync:done and that nothing follows."""
    await send(comm, "sync", {"since": since})
    frames = await durable_frames(comm, until_seq)
    assert (await next_of(comm, "sync:done"))["data"] == {"seq": until_seq}
    assert [f for f in await drain(comm) if f["seq"] is not None] == []  # presence frames may come, nothing durable
    return frames


# --- one database call for the gap check and the first page ---------------------------------------------------------


async def test_a_sync_behind_the_head_reads_its_gap_check_and_first_page_in_one_call(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk, 4)  # seq 1-8
    alice_ws, _ = await open_socket(world.alice, sync=False)  # the client had seen seq 2 when it lost its socket
    calls = socket_db_calls(monkeypatch)
    frames = await synced(alice_ws, 2, 8)
    assert [f["seq"] for f in frames] == [3, 4, 5, 6, 7, 8]
    assert calls == ["_sync_starts"]
    await close(alice_ws)


async def test_a_replay_longer_than_a_page_goes_on_from_the_first_page(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumers, "REPLAY_PAGE", 3)
    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk, 5)  # seq 1-10
    alice_ws, _ = await open_socket(world.alice, sync=False)
    calls = socket_db_calls(monkeypatch)
    frames = await synced(alice_ws, 0, 10)
    assert [f["seq"] for f in frames] == list(range(1, 11))
    assert calls == ["_sync_starts", "_events_after", "_events_after", "_events_after"]  # 1-3, 4-6, 7-9, 10
    calls.clear()
    assert await synced(alice_ws, 9, 10) == frames[-1:]  # a page that is exactly the rest
    assert calls == ["_sync_starts"]
    await close(alice_ws)


def test_the_first_read_of_a_sync_answers_what_the_gap_check_and_a_page_read_answer(world: World) -> None:
    append_messages(world.acme_conversation.pk, world.acme.pk, 3)  # acme: seq 1-6
    append_messages(world.globex_conversation.pk, world.globex.pk, 1)  # globex: its own seq 1-2
    with scopes_disabled():
        TenantEvent.objects.filter(tenant=world.acme, seq__lte=2).delete()  # pruned: the oldest retained is 3

    def separately(tenant_id: int, since: int, limit: int) -> tuple[bool, int, list[Frame]]:
        gap, head = consumers._sync_gap(tenant_id, since)
        page = [] if gap or since >= head else consumers._events_after(tenant_id, since, None, limit)
        return gap, head, page

    for tenant_id, since, limit in [
        (world.acme.pk, 0, 100),  # gap: 1-2 are gone
        (world.acme.pk, 1, 100),  # gap
        (world.acme.pk, 2, 100),  # exactly at the oldest retained - 1: 3-6
        (world.acme.pk, 2, 2),  # 3-4
        (world.acme.pk, 5, 100),
        (world.acme.pk, 6, 100),  # at the head
        (world.acme.pk, 7, 100),  # ahead of the log: gap
        (world.globex.pk, 0, 100),
        (world.globex.pk, 1, 1),
        (world.globex.pk, 3, 100),
    ]:
        assert consumers._sync_start(tenant_id, since, limit) == separately(tenant_id, since, limit), (since, limit)
    with scopes_disabled():
        TenantEvent.objects.filter(tenant=world.globex).delete()  # an emptied log keeps its head
    assert consumers._sync_start(world.globex.pk, 0, 100) == (True, 2, [])
    assert consumers._sync_start(world.globex.pk, 2, 100) == (False, 2, [])


def test_syncs_read_together_answer_as_each_one_alone(world: World) -> None:
    """_sync_starts (the sockets of a storm syncing at the same moment) gives every socket what _sync_start gives it:
    sockets within a page of each other share a read; one whose lowest neighbour is past the log's start, one far
    behind and another tenant's each still get their own answer."""
    append_messages(world.acme_conversation.pk, world.acme.pk, 6)  # acme: seq 1-12
    append_messages(world.globex_conversation.pk, world.globex.pk, 1)  # globex: its own seq 1-2
    with scopes_disabled():
        TenantEvent.objects.filter(tenant=world.acme, seq__lte=2).delete()  # pruned: the oldest retained is 3
    acme, globex = world.acme.pk, world.globex.pk
    syncs = [
        (acme, 5, 3),
        (acme, 2, 3),  # the lowest without a gap: 3-5
        (acme, 0, 3),  # gap (1-2 are gone), grouped with 2 and 3
        (acme, 3, 3),
        (acme, 12, 3),  # at the head
        (acme, 9, 3),  # a page beyond the lowest: a group of its own
        (acme, 13, 3),  # ahead of the log: gap
        (globex, 0, 3),
        (globex, 1, 3),
        (acme, 5, 3),  # the same since twice
        (acme, 10, 100),  # another page size
    ]
    assert consumers._sync_starts(syncs) == [consumers._sync_start(*sync) for sync in syncs]
    assert consumers._sync_starts([(acme, 0, 3)]) == [(True, 12, [])]  # alone: the gap itself
    assert consumers._sync_starts([]) == []
    with scopes_disabled():
        TenantEvent.objects.filter(tenant=world.acme).delete()  # an emptied log keeps its head
    assert consumers._sync_starts([(acme, 12, 3), (acme, 11, 3)]) == [(False, 12, []), (True, 12, [])]


async def test_a_sync_from_the_largest_seq_is_a_gap_not_a_failure(world: World) -> None:
    """`since` may be any integer up to 2**63 - 1 (the protocol's bound): the first read compared `since + 1` in SQL,
    which overflowed PostgreSQL's bigint there and answered "internal" (found by tests/hostile's fuzzer)."""
    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk, 1)  # seq 1-2
    biggest = 2**63 - 1
    assert await database_sync_to_async(consumers._sync_start)(world.acme.pk, biggest, 100) == (True, 2, [])
    assert await database_sync_to_async(consumers._sync_starts)([(world.acme.pk, biggest, 100)]) == [(True, 2, [])]
    alice_ws, _ = await open_socket(world.alice)
    await send(alice_ws, "sync", {"since": biggest})
    error = await next_of(alice_ws, "error")
    assert error["data"]["code"] == "sync_gap" and error["data"]["seq"] == 2, error
    await close(alice_ws)


def test_a_tenant_that_never_logged_an_event_syncs_from_zero_only(world: World) -> None:
    assert consumers._sync_start(world.acme.pk, 0, 100) == (False, 0, [])
    assert consumers._sync_start(world.acme.pk, 1, 100) == (True, 0, [])


# --- each log frame encoded once per process ---------------------------------------------------------------------


async def test_two_sockets_replaying_the_same_events_get_each_frame_encoded_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk, 3)  # seq 1-6
    alice_ws, _ = await open_socket(world.alice, sync=False)
    bob_ws, _ = await open_socket(world.bob, sync=False)
    counts = encodings(monkeypatch)
    alice_frames = await synced(alice_ws, 0, 6)
    bob_frames = await synced(bob_ws, 0, 6)
    assert counts == dict.fromkeys(range(1, 7), 1)
    logged = await database_sync_to_async(consumers._events_after)(world.acme.pk, 0, None, 100)
    assert alice_frames == bob_frames == json.loads(json.dumps(logged))
    await close(alice_ws, bob_ws)


async def test_tenants_with_the_same_seqs_each_get_their_own_frames(world: World) -> None:
    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk, 2)  # acme seq 1-4
    await database_sync_to_async(append_messages)(world.globex_conversation.pk, world.globex.pk, 2)  # globex 1-4
    alice_ws, _ = await open_socket(world.alice, sync=False)
    charlie_ws, _ = await open_socket(world.charlie, "globex", sync=False)
    alice_frames, charlie_frames = await asyncio.gather(synced(alice_ws, 0, 4), synced(charlie_ws, 0, 4))
    acme_log = await database_sync_to_async(consumers._events_after)(world.acme.pk, 0, None, 100)
    globex_log = await database_sync_to_async(consumers._events_after)(world.globex.pk, 0, None, 100)
    assert alice_frames == json.loads(json.dumps(acme_log))
    assert charlie_frames == json.loads(json.dumps(globex_log))
    assert {f["data"]["conversation_id"] for f in alice_frames if "conversation_id" in f["data"]} == {
        world.acme_conversation.pk
    }
    assert {f["data"]["conversation_id"] for f in charlie_frames if "conversation_id" in f["data"]} == {
        world.globex_conversation.pk
    }
    await close(alice_ws, charlie_ws)


def test_a_cached_frame_serves_only_the_row_it_was_built_from() -> None:
    """A seq is never reused once committed, but a wiped and re-seeded database reuses tenant ids and seqs."""
    at = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    first = consumers._log_frame(990_001, "message:new", '{"id": 1}', 1, at)
    assert consumers._log_frame(990_001, "message:new", '{"id": 1}', 1, at) is first  # the same row: shared
    assert consumers._logged_frames.text(990_001, first) == consumers._encode(first)
    for changed in [
        ("message:new", '{"id": 2}', at),
        ("message:status", '{"id": 1}', at),
        ("message:new", '{"id": 1}', at + timedelta(microseconds=1)),
    ]:
        type_, data, created_at = changed
        frame = consumers._log_frame(990_001, type_, data, 1, created_at)
        assert frame is not first
        assert (frame["type"], frame["data"], frame["ts"]) == (
            type_,
            json.loads(data),
            created_at.isoformat().replace("+00:00", "Z"),
        )
        assert json.loads(consumers._logged_frames.text(990_001, frame)) == frame
    other_tenant = consumers._log_frame(990_002, "message:new", '{"id": 1}', 1, at)
    assert other_tenant is not first
    # A frame the cache no longer holds (or never handed out) is encoded on the spot, never given another's text.
    assert consumers._logged_frames.text(990_001, first) == consumers._encode(first)
    assert consumers._logged_frames.text(990_001, dict(first)) == consumers._encode(first)  # type: ignore[arg-type]


def test_the_frame_cache_is_bounded_in_entries_and_characters() -> None:
    at = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    cache = consumers._LoggedFrames(max_entries=3, max_chars=10_000)
    frames = [
        cache.put(1, seq, "message:new", '{"n": 1}', at, {"type": "message:new", "data": {}, "ts": "t", "seq": seq})
        for seq in range(1, 6)
    ]  # type: ignore[typeddict-item]
    assert [seq for _, seq in cache.entries] == [3, 4, 5]  # the oldest went first
    assert cache.text(1, frames[0]) == consumers._encode(frames[0])
    big = "x" * 4_000
    for seq in range(6, 9):
        cache.put(
            1,
            seq,
            "message:new",
            json.dumps(big),
            at,
            {"type": "message:new", "data": {"t": big}, "ts": "t", "seq": seq},
        )  # type: ignore[typeddict-item]
    assert cache.chars <= 10_000 and len(cache.entries) < 3
    assert cache.chars == sum(len(entry[4]) + len(entry[1]) for entry in cache.entries.values())


# --- a closed socket leaves nothing for the cyclic collector ---------------------------------------------------------


class DaphneLike:
    """One socket driven as Daphne drives the application: a task running it, an input queue, the sent messages."""

    def __init__(self, user: Any, slug: str = "acme") -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        scope = {
            "type": "websocket",
            "path": f"/ws/tenants/{slug}/",
            "headers": [ORIGIN],
            "query_string": b"",
            "subprotocols": [],
            "user": user,
        }
        self.task: asyncio.Future[None] = asyncio.ensure_future(
            URLRouter(websocket_urlpatterns)(scope, self.queue.get, self._send)
        )

    async def _send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        self.arrived.set()

    async def frame(self, type_: str) -> Frame:
        while True:
            for i, message in enumerate(self.sent):
                if message["type"] == "websocket.send" and json.loads(message["text"])["type"] == type_:
                    del self.sent[: i + 1]
                    return dict(json.loads(message["text"]))
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 5)

    def put(self, message: dict[str, Any]) -> None:
        self.queue.put_nowait(message)


def _of_the_consumer(obj: Any) -> bool:
    """Whether a collected object was the consumer module's: its instances, coroutines, tasks and frames."""
    if type(obj).__module__ == consumers.__name__:
        return True
    code = getattr(obj, "cr_code", None) or getattr(obj, "f_code", None)
    if isinstance(obj, asyncio.Future) and hasattr(obj, "get_coro"):
        code = getattr(obj.get_coro(), "cr_code", None)
    return code is not None and code.co_filename == consumers.__file__


async def test_a_closed_socket_is_freed_without_the_cyclic_collector(world: World) -> None:
    """A mass close (bench M8) costs one long collection of what the closed sockets left in reference cycles. The
    consumer, its tasks and what a sync and a replay made must all go by reference counting once the socket closes
    (what is left there is Daphne's and Twisted's objects: see docs/performance.md)."""
    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk, 2)  # seq 1-4
    gc.collect()
    gc.disable()
    try:
        sockets = [DaphneLike(user) for user in (world.alice, world.bob)]
        refs = []
        for socket in sockets:
            socket.put({"type": "websocket.connect"})
            await socket.frame("hello")
            socket.put({"type": "websocket.receive", "text": json.dumps({"type": "sync", "data": {"since": 1}})})
            await socket.frame("sync:done")
        refs = [weakref.ref(s) for s in consumers._sweeper().sockets]
        assert len(refs) == 2
        await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk, 1)  # live: 5-6
        for socket in sockets:
            assert (await socket.frame("conversation:updated"))["seq"] == 6
            socket.put({"type": "websocket.disconnect", "code": 1001})
            await asyncio.wait_for(socket.task, 5)
        del sockets, socket
        await asyncio.sleep(0.1)  # the tasks the close cancelled finish, the offline announcement goes out
        assert [ref() for ref in refs] == [None, None]
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            gc.collect()
            left = [o for o in gc.garbage if _of_the_consumer(o)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert left == []
    finally:
        gc.enable()
