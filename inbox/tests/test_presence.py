"""Presence: online across tabs and processes, coalesced changes, offline within a minute of a process dying."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async

from inbox import presence
from inbox.maintenance import presence_reap
from inbox.tests.factories import make_member
from inbox.tests.fixtures import World
from inbox.tests.test_consumers import _flush_layer, _realtime_settings, close, drain, next_of, open_socket

pytestmark = pytest.mark.django_db(transaction=True)
__all__ = ["_flush_layer", "_realtime_settings"]  # the autouse fixtures apply here too


def presence_types(frames: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(f["type"], f["data"]["user_id"]) for f in frames if f["type"].startswith("user:")]


async def test_a_user_is_online_while_any_tab_is_open_and_changes_are_announced_once(world: World) -> None:
    bob_ws, _ = await open_socket(world.bob)
    charlie_ws, _ = await open_socket(world.charlie, "globex")
    tab1, hello = await open_socket(world.alice)
    assert world.alice.pk in hello["data"]["online_user_ids"]
    assert (await next_of(bob_ws, "user:online"))["data"] == {"user_id": world.alice.pk}
    tab2, hello = await open_socket(world.alice)
    assert sorted(hello["data"]["online_user_ids"]) == sorted([world.alice.pk, world.bob.pk])
    await tab1.disconnect()
    assert await database_sync_to_async(presence.online_user_ids)(world.acme.pk) == {world.alice.pk, world.bob.pk}
    assert presence_types(await drain(bob_ws)) == []  # second tab opening and first closing: no change
    await tab2.disconnect()
    assert (await next_of(bob_ws, "user:offline", "user:online"))["data"] == {"user_id": world.alice.pk}
    assert presence_types(await drain(bob_ws)) == []
    assert await database_sync_to_async(presence.online_user_ids)(world.acme.pk) == {world.bob.pk}
    assert await drain(charlie_ws) == []  # another tenant hears nothing
    await close(bob_ws, charlie_ws)


async def test_a_reload_within_the_grace_period_announces_nothing(world: World, settings: Any) -> None:
    settings.PRESENCE_OFFLINE_GRACE = 0.4
    bob_ws, _ = await open_socket(world.bob)
    alice_ws, _ = await open_socket(world.alice)
    assert (await next_of(bob_ws, "user:online"))["data"] == {"user_id": world.alice.pk}
    await alice_ws.disconnect()
    alice_ws, _ = await open_socket(world.alice)  # the reloaded tab
    assert presence_types(await drain(bob_ws, timeout=0.6)) == []
    await alice_ws.disconnect()
    frame = await next_of(bob_ws, "user:offline", timeout=3)
    assert frame["data"] == {"user_id": world.alice.pk} and frame["seq"] is None
    await close(bob_ws)


async def test_heartbeats_keep_users_online_without_broadcasting(world: World, settings: Any) -> None:
    settings.PRESENCE_HEARTBEAT = 0.05
    settings.PRESENCE_TTL = 0.3
    bob_ws, _ = await open_socket(world.bob)
    alice_ws, _ = await open_socket(world.alice)
    await drain(bob_ws)
    assert presence_types(await drain(bob_ws, timeout=0.8)) == []  # ~15 heartbeats, > 2 TTLs
    assert await database_sync_to_async(presence.online_user_ids)(world.acme.pk) == {world.alice.pk, world.bob.pk}
    await close(alice_ws, bob_ws)


def _dead_process_socket(tenant_id: int, user_id: int) -> None:
    """What a server process that was then killed leaves behind: a socket entry nobody refreshes."""
    assert presence.connection_touch(tenant_id, user_id, uuid.uuid4().hex)


async def test_a_dead_process_users_go_offline_through_live_processes(world: World, settings: Any) -> None:
    settings.PRESENCE_HEARTBEAT = 0.1
    settings.PRESENCE_TTL = 0.4
    dave = await database_sync_to_async(make_member)(world.acme, username="dave")
    await database_sync_to_async(_dead_process_socket)(world.acme.pk, dave.pk)
    bob_ws, hello = await open_socket(world.bob)
    assert dave.pk in hello["data"]["online_user_ids"]
    started = time.monotonic()
    frame = await next_of(bob_ws, "user:offline", timeout=3)
    assert frame["data"] == {"user_id": dave.pk}
    assert time.monotonic() - started < 2  # TTL + one heartbeat, here; a minute at most with the defaults
    assert await database_sync_to_async(presence.online_user_ids)(world.acme.pk) == {world.bob.pk}
    await close(bob_ws)


async def test_the_periodic_reap_announces_offline_without_any_socket_of_the_tenant(
    world: World, settings: Any
) -> None:
    dave = await database_sync_to_async(make_member)(world.acme, username="dave")
    # Entries of a killed process whose last heartbeat is older than the TTL.
    lapsed = time.time() - 1
    presence.store().touch(world.acme.pk, dave.pk, "dead-1", lapsed)
    presence.store().touch(world.globex.pk, world.charlie.pk, "dead-2", lapsed)
    bob_ws, _ = await open_socket(world.bob)  # a listener whose own heartbeat will not reap in time
    charlie_ws, _ = await open_socket(world.charlie, "globex")  # charlie is back on another process
    result = await database_sync_to_async(presence_reap)()
    assert result["offline"] == {str(world.acme.pk): [dave.pk]}
    assert (await next_of(bob_ws, "user:offline"))["data"] == {"user_id": dave.pk}
    assert presence_types(await drain(bob_ws)) == []
    assert presence_types(await drain(charlie_ws)) == []
    assert await database_sync_to_async(presence.online_user_ids)(world.globex.pk) == {world.charlie.pk}
    await close(bob_ws, charlie_ws)


async def test_the_store_decides_each_transition_once(settings: Any) -> None:
    settings.PRESENCE_TTL = 30
    presence.store().clear()
    assert presence.connection_touch(1, 10, "a") is True
    assert presence.connection_touch(1, 10, "b") is False  # second tab
    assert presence.connection_touch(1, 10, "a") is False  # heartbeat
    assert presence.connection_touch(2, 10, "c") is True  # another tenant is separate
    presence.connection_drop(1, 10, "a")
    assert presence.user_settle(1, 10) is False  # tab b is still open
    presence.connection_drop(1, 10, "b")
    assert presence.user_settle(1, 10) is True
    assert presence.user_settle(1, 10) is False  # announced once, by whoever settles first
    assert presence.online_user_ids(1) == set()
    assert presence.online_user_ids(2) == {10}
    presence.conversation_view(1, 5, 10, "a")
    presence.conversation_view(1, 5, 11, "x")
    presence.conversation_unview(1, 5, 11, "x")
    assert presence.conversation_viewer_ids(1, 5) == {10}
    assert presence.conversation_viewer_ids(1, 6) == set()
    presence.store().clear()


async def test_opening_a_socket_registers_it_and_lists_who_is_online_in_one_call(settings: Any) -> None:
    settings.PRESENCE_TTL = 30
    presence.store().clear()
    assert presence.connection_open(1, 10, "a") == (True, {10})
    assert presence.connection_open(1, 11, "b") == (True, {10, 11})
    assert presence.connection_open(1, 10, "c") == (False, {10, 11})  # a second tab
    assert presence.connection_open(2, 12, "d") == (True, {12})  # another tenant is separate
    presence.connection_drop(1, 10, "a")
    presence.connection_drop(1, 10, "c")
    assert presence.user_settle(1, 10) is True  # the opened sockets count like touched ones
    assert presence.connection_open(1, 11, "e") == (False, {11})
    presence.store().clear()


async def test_a_page_connecting_while_a_colleague_reloads_still_lists_them_online(world: World, settings: Any) -> None:
    """hello must agree with the announcements: Alice's last tab closed but she was never announced offline (she
    comes back within the grace period), so a page that connects in between must count her online."""
    settings.PRESENCE_OFFLINE_GRACE = 4.0  # generous: the steps below must fit in it on a loaded CI machine
    dave = await database_sync_to_async(make_member)(world.acme, username="dave")
    bob_ws, _ = await open_socket(world.bob)
    alice_ws, _ = await open_socket(world.alice)
    assert (await next_of(bob_ws, "user:online"))["data"] == {"user_id": world.alice.pk}
    await alice_ws.disconnect()  # reloading: old tab gone, new one not yet connected
    dave_ws, hello = await open_socket(dave)
    assert world.alice.pk in hello["data"]["online_user_ids"]
    alice_ws, _ = await open_socket(world.alice)  # the reloaded tab: nothing changed, nothing is announced
    assert [p for p in presence_types(await drain(dave_ws, timeout=0.3)) if p[1] == world.alice.pk] == []
    await alice_ws.disconnect()
    assert (await next_of(dave_ws, "user:offline", timeout=10))["data"] == {"user_id": world.alice.pk}
    await close(bob_ws, dave_ws)


def _heartbeat_world() -> list[presence.SocketBeat]:
    """Five sockets of two tenants: user 10 has a lapsed socket (its process missed beats) and a new one; user 11's
    two sockets are new and fall in different chunks; tenant 2 knows nobody yet."""
    lapsed = time.time() - 1
    presence.store().touch(1, 10, "a", lapsed)
    return [(1, 10, "a", (5,)), (1, 11, "c", (5, 6)), (1, 10, "b", ()), (1, 11, "d", ()), (2, 10, "e", (7,))]


async def test_a_process_heartbeat_refreshes_every_socket_and_view_and_announces_each_user_once(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.PRESENCE_TTL = 30
    monkeypatch.setattr(presence, "TOUCH_CHUNK", 2)
    beats = _heartbeat_world()
    assert sorted(presence.heartbeat_many(beats)) == [(1, 11), (2, 10)]  # user 10 was announced already
    assert presence.heartbeat_many(beats) == []  # the next beat announces nothing
    assert presence.tenant_reap(1) == set()  # the lapsed socket was refreshed with the others
    assert presence.online_user_ids(1) == {10, 11}
    assert presence.online_user_ids(2) == {10}
    assert presence.conversation_viewer_ids(1, 5) == {10, 11}
    assert presence.conversation_viewer_ids(1, 6) == {11}
    assert presence.conversation_viewer_ids(2, 7) == {10}
    assert presence.conversation_viewer_ids(2, 5) == set()  # another tenant's conversation of the same id
    for conn_id in ("b", "c", "d"):
        presence.connection_drop(1, 10 if conn_id == "b" else 11, conn_id)
    assert presence.user_settle(1, 10) is False  # socket "a" lives on: its heartbeat counted
    assert presence.user_settle(1, 11) is True


@pytest.mark.redis
async def test_a_heartbeat_is_one_store_command_per_chunk_of_sockets(
    require_redis: None, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command (or three) per socket cost ~9 ms of GIL-holding CPU per 400 sockets in redis-py's packing, every
    heartbeat, in the same process as the event loop (docs/performance.md, M3)."""
    assert isinstance(presence.store(), presence.RedisStore)  # with Redis configured, presence lives there
    import redis

    settings.PRESENCE_TTL = 30
    monkeypatch.setattr(presence, "TOUCH_CHUNK", 2)
    beats = _heartbeat_world()
    sent: list[str] = []
    direct, piped = redis.Redis.execute_command, redis.client.Pipeline.execute

    def execute_command(self: redis.Redis, *args: Any, **options: Any) -> Any:
        sent.append(str(args[0]))
        return direct(self, *args, **options)

    def execute(self: redis.client.Pipeline, raise_on_error: bool = True) -> Any:
        sent.extend(str(args[0]) for args, _ in self.command_stack)
        return piped(self, raise_on_error)

    monkeypatch.setattr(redis.Redis, "execute_command", execute_command)
    monkeypatch.setattr(redis.client.Pipeline, "execute", execute)
    presence.heartbeat_many(beats)
    assert sent == ["EVALSHA"] * 3  # tenant 1: four sockets in two chunks; tenant 2: one


async def test_many_sockets_open_drop_and_settle_in_one_call_with_the_answers_of_one_at_a_time(
    settings: Any,
) -> None:
    settings.PRESENCE_TTL = 30
    presence.store().clear()
    opened = presence.connections_open([(1, 10, "a"), (1, 11, "b"), (1, 10, "c"), (2, 12, "d")])
    assert opened == [(True, {10}), (True, {10, 11}), (False, {10, 11}), (True, {12})]
    assert presence.connections_drop([(1, 10, "a"), (1, 11, "b")]) == [None, None]
    # 10 still has tab c; 11 has none left (announced offline once, by the first of the two); 12 is another tenant's.
    assert presence.users_settle([(1, 10), (1, 11), (1, 11), (2, 12)]) == [False, True, False, False]
    assert presence.online_user_ids(1) == {10}
    assert presence.connections_open([]) == [] and presence.connections_drop([]) == [] == presence.users_settle([])
    presence.store().clear()


@pytest.mark.redis
async def test_a_batch_of_closes_is_one_store_round_trip(
    require_redis: None, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each script or command of the batch still runs on its own in Redis; they travel together."""
    assert isinstance(presence.store(), presence.RedisStore)
    import redis

    settings.PRESENCE_TTL = 30
    presence.store().clear()
    sockets = [(1, 100 + i, f"s{i}") for i in range(50)]
    presence.connections_open(sockets)
    direct: list[str] = []
    trips: list[list[str]] = []
    send_direct, send_piped = redis.Redis.execute_command, redis.client.Pipeline.execute

    def execute_command(self: redis.Redis, *args: Any, **options: Any) -> Any:
        direct.append(str(args[0]))
        return send_direct(self, *args, **options)

    def execute(self: redis.client.Pipeline, raise_on_error: bool = True) -> Any:
        trips.append([str(args[0]) for args, _ in self.command_stack])
        return send_piped(self, raise_on_error)

    monkeypatch.setattr(redis.Redis, "execute_command", execute_command)
    monkeypatch.setattr(redis.client.Pipeline, "execute", execute)
    presence.connections_drop(sockets)
    assert presence.users_settle([(t, u) for t, u, _ in sockets]) == [True] * 50
    assert direct == []
    assert trips == [["ZREM"] * 100, ["EVALSHA"] * 50]
    monkeypatch.undo()
    assert presence.online_user_ids(1) == set()
    presence.store().clear()


async def test_sockets_closing_together_leave_in_one_batch_and_the_user_goes_offline_once(
    world: World, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.PRESENCE_OFFLINE_GRACE = 0.2
    real_drop, real_settle = presence.connections_drop, presence.users_settle
    drops: list[list[presence.Conn]] = []
    settles: list[list[tuple[int, int]]] = []

    def drop(sockets: list[presence.Conn]) -> list[None]:
        drops.append(list(sockets))
        return real_drop(sockets)

    def settle(users: list[tuple[int, int]]) -> list[bool]:
        settles.append(list(users))
        return real_settle(users)

    monkeypatch.setattr(presence, "connections_drop", drop)
    monkeypatch.setattr(presence, "users_settle", settle)
    bob_ws, _ = await open_socket(world.bob)
    tabs = [(await open_socket(world.alice))[0] for _ in range(5)]
    assert (await next_of(bob_ws, "user:online"))["data"] == {"user_id": world.alice.pk}
    await asyncio.gather(*(tab.disconnect() for tab in tabs))
    assert (await next_of(bob_ws, "user:offline", "user:online", timeout=3))["data"] == {"user_id": world.alice.pk}
    assert presence_types(await drain(bob_ws, timeout=0.4)) == []  # once
    assert {(t, u) for batch in drops for t, u, _ in batch} == {(world.acme.pk, world.alice.pk)}
    assert sum(len(batch) for batch in drops) == 5 and len(drops) < 5, drops
    assert sum(len(batch) for batch in settles) == 5 and len(settles) < 5, settles
    await close(bob_ws)
