"""Who is online in a tenant, and who is viewing a conversation, across tabs and server processes.

Every open socket is a *connection* entry with an expiry that its consumer refreshes by heartbeat. A user is
online while at least one of their connections has not expired (PROTOCOL.md guarantee 6): a server process that
dies stops refreshing, so its entries lapse after PRESENCE_TTL seconds and the next reap (any live process's
heartbeat, or the periodic `inbox.maintenance.presence_reap`) announces the user offline.

Changes are coalesced: heartbeats never broadcast; `user:online` is sent once when a user goes from no
connections to some, and `user:offline` only when none is left after a short grace period, so that a reloading
tab (close + open within a second) announces nothing. The set of *announced* users lives in the store too, so
two processes never both announce the same transition.

Storage: Redis when settings.REDIS_URL is set (one Lua script per transition keeps check-and-set atomic across
processes), otherwise this process's memory (the embedded single-process default).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

from django.conf import settings

from inbox import events


def ttl() -> float:
    """Seconds a connection stays present without a heartbeat."""
    return float(getattr(settings, "PRESENCE_TTL", 30.0))


def heartbeat_interval() -> float:
    return float(getattr(settings, "PRESENCE_HEARTBEAT", 10.0))


def offline_grace() -> float:
    """Seconds to wait after a user's last socket closes before announcing them offline (tab reloads)."""
    return float(getattr(settings, "PRESENCE_OFFLINE_GRACE", 3.0))


SocketBeat = tuple[int, int, str, tuple[int, ...]]  # (tenant id, user id, connection id, conversations viewed)
Conn = tuple[int, int, str]  # (tenant id, user id, connection id)


class Store(Protocol):
    def touch(self, tenant_id: int, user_id: int, conn_id: str, expires: float) -> bool: ...
    def open(self, tenant_id: int, user_id: int, conn_id: str, expires: float) -> tuple[bool, set[int]]: ...
    def touch_many(self, sockets: list[SocketBeat], expires: float) -> list[tuple[int, int]]: ...
    def drop(self, tenant_id: int, user_id: int, conn_id: str) -> None: ...
    def settle(self, tenant_id: int, user_id: int, now: float) -> bool: ...
    def open_many(self, sockets: list[Conn], expires: float) -> list[tuple[bool, set[int]]]: ...
    def drop_many(self, sockets: list[Conn]) -> None: ...
    def settle_many(self, users: list[tuple[int, int]], now: float) -> list[bool]: ...
    def reap(self, tenant_id: int, now: float) -> set[int]: ...
    def online(self, tenant_id: int, now: float) -> set[int]: ...
    def tenants(self) -> set[int]: ...
    def view(self, tenant_id: int, conversation_id: int, user_id: int, conn_id: str, expires: float) -> None: ...
    def unview(self, tenant_id: int, conversation_id: int, user_id: int, conn_id: str) -> None: ...
    def viewers(self, tenant_id: int, conversation_id: int, now: float) -> set[int]: ...
    def clear(self) -> None: ...


@dataclass
class MemoryStore:
    """One process's presence (embedded default: a single server process, so memory is the whole truth)."""

    conns: dict[int, dict[int, dict[str, float]]] = field(default_factory=dict)
    announced: dict[int, set[int]] = field(default_factory=dict)
    watching: dict[tuple[int, int], dict[str, tuple[int, float]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def touch(self, tenant_id: int, user_id: int, conn_id: str, expires: float) -> bool:
        with self.lock:
            self.conns.setdefault(tenant_id, {}).setdefault(user_id, {})[conn_id] = expires
            announced = self.announced.setdefault(tenant_id, set())
            if user_id in announced:
                return False
            announced.add(user_id)
            return True

    def open(self, tenant_id: int, user_id: int, conn_id: str, expires: float) -> tuple[bool, set[int]]:
        return self.touch(tenant_id, user_id, conn_id, expires), self.online(tenant_id, time.time())

    def touch_many(self, sockets: list[SocketBeat], expires: float) -> list[tuple[int, int]]:
        became: list[tuple[int, int]] = []
        for tenant_id, user_id, conn_id, viewing in sockets:
            if self.touch(tenant_id, user_id, conn_id, expires):
                became.append((tenant_id, user_id))
            for conversation_id in viewing:
                self.view(tenant_id, conversation_id, user_id, conn_id, expires)
        return became

    def drop(self, tenant_id: int, user_id: int, conn_id: str) -> None:
        with self.lock:
            self.conns.get(tenant_id, {}).get(user_id, {}).pop(conn_id, None)

    def open_many(self, sockets: list[Conn], expires: float) -> list[tuple[bool, set[int]]]:
        return [self.open(tenant_id, user_id, conn_id, expires) for tenant_id, user_id, conn_id in sockets]

    def drop_many(self, sockets: list[Conn]) -> None:
        for tenant_id, user_id, conn_id in sockets:
            self.drop(tenant_id, user_id, conn_id)

    def settle_many(self, users: list[tuple[int, int]], now: float) -> list[bool]:
        return [self.settle(tenant_id, user_id, now) for tenant_id, user_id in users]

    def _live(self, tenant_id: int, user_id: int, now: float) -> bool:
        user_conns = self.conns.get(tenant_id, {}).get(user_id, {})
        for conn_id in [c for c, exp in user_conns.items() if exp <= now]:
            del user_conns[conn_id]
        return bool(user_conns)

    def settle(self, tenant_id: int, user_id: int, now: float) -> bool:
        with self.lock:
            if self._live(tenant_id, user_id, now):
                return False
            announced = self.announced.get(tenant_id, set())
            if user_id not in announced:
                return False
            announced.discard(user_id)
            return True

    def reap(self, tenant_id: int, now: float) -> set[int]:
        gone: set[int] = set()
        with self.lock:
            announced = self.announced.get(tenant_id, set())
            for user_id in list(announced):
                if not self._live(tenant_id, user_id, now):
                    announced.discard(user_id)
                    gone.add(user_id)
        return gone

    def online(self, tenant_id: int, now: float) -> set[int]:
        with self.lock:
            live = {u for u, c in self.conns.get(tenant_id, {}).items() if any(exp > now for exp in c.values())}
            return live | self.announced.get(tenant_id, set())

    def tenants(self) -> set[int]:
        with self.lock:
            return set(self.conns) | set(self.announced)

    def view(self, tenant_id: int, conversation_id: int, user_id: int, conn_id: str, expires: float) -> None:
        with self.lock:
            self.watching.setdefault((tenant_id, conversation_id), {})[conn_id] = (user_id, expires)

    def unview(self, tenant_id: int, conversation_id: int, user_id: int, conn_id: str) -> None:
        with self.lock:
            self.watching.get((tenant_id, conversation_id), {}).pop(conn_id, None)

    def viewers(self, tenant_id: int, conversation_id: int, now: float) -> set[int]:
        with self.lock:
            return {u for u, exp in self.watching.get((tenant_id, conversation_id), {}).values() if exp > now}

    def clear(self) -> None:
        with self.lock:
            self.conns.clear()
            self.announced.clear()
            self.watching.clear()


# Redis layout (all under one prefix, so test runs and deployments sharing a Redis stay apart):
#   {p}:t:{tenant}:conns       ZSET "user:conn" -> expiry      (who is online: any score in the future)
#   {p}:t:{tenant}:u:{user}    ZSET "conn" -> expiry           (one user's sockets)
#   {p}:t:{tenant}:online      SET user                        (users announced online)
#   {p}:t:{tenant}:c:{conv}    ZSET "user:conn" -> expiry      (viewers of a conversation)
#   {p}:tenants                SET tenant                      (what the reaper walks)
# Keys are named inside the scripts, so this needs a single Redis (not Redis Cluster), like the channel layer.
_REFRESH = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3] .. ':' .. ARGV[1])
redis.call('SADD', KEYS[4], ARGV[4])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
"""
_TOUCH = _REFRESH + "return redis.call('SADD', KEYS[3], ARGV[3])\n"
# A new socket: _TOUCH, then the users announced online (for `hello`), in one round trip.
_OPEN = (
    _REFRESH + "local became = redis.call('SADD', KEYS[3], ARGV[3])\nreturn {became, redis.call('SMEMBERS', KEYS[3])}\n"
)
_SETTLE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) > 0 then return 0 end
return redis.call('SREM', KEYS[2], ARGV[2])
"""
_REAP = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local gone = {}
for _, user in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local key = ARGV[2] .. user
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
  if redis.call('ZCARD', key) == 0 then
    redis.call('SREM', KEYS[2], user)
    table.insert(gone, user)
  end
end
if redis.call('ZCARD', KEYS[1]) == 0 and redis.call('SCARD', KEYS[2]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[3])
end
return gone
"""
# A server process's heartbeat: _TOUCH for many sockets of one tenant (and the conversations each views) in one call.
# ARGV: tenant key prefix, tenants set, tenant id, expiry, keep, then per socket: user, conn, n, n conversation ids.
# Returns the users that just became online. One call per chunk instead of three commands per socket: redis-py
# packing a pipeline of ~1,200 commands cost 12-17 ms of CPU per 400 sockets in the heartbeat's thread, holding
# the GIL the event loop needs (M3's slow samples clustered on the heartbeats); now ~2 ms.
_TOUCH_MANY = """
local t, expires, keep = ARGV[1], ARGV[4], ARGV[5]
local conns, online = t .. ':conns', t .. ':online'
local all, mine, viewing, users, convs = {}, {}, {}, {}, {}
local i = 6
while i <= #ARGV do
  local user, conn, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local member = user .. ':' .. conn
  all[#all + 1] = expires
  all[#all + 1] = member
  if not mine[user] then mine[user] = {}; users[#users + 1] = user end
  local m = mine[user]
  m[#m + 1] = expires
  m[#m + 1] = conn
  for j = i + 3, i + 2 + n do
    local c = ARGV[j]
    if not viewing[c] then viewing[c] = {}; convs[#convs + 1] = c end
    local v = viewing[c]
    v[#v + 1] = expires
    v[#v + 1] = member
  end
  i = i + 3 + n
end
local became = {}
if #all > 0 then
  redis.call('ZADD', conns, unpack(all))
  for _, user in ipairs(users) do
    local key = t .. ':u:' .. user
    redis.call('ZADD', key, unpack(mine[user]))
    redis.call('EXPIRE', key, keep)
    if redis.call('SADD', online, user) == 1 then became[#became + 1] = user end
  end
  for _, c in ipairs(convs) do
    local key = t .. ':c:' .. c
    redis.call('ZADD', key, unpack(viewing[c]))
    redis.call('EXPIRE', key, keep)
  end
  redis.call('SADD', ARGV[2], ARGV[3])
  redis.call('EXPIRE', conns, keep)
  redis.call('EXPIRE', online, keep)
end
return became
"""
# Sockets per _TOUCH_MANY call: a script runs alone in Redis, so each call is kept short (~0.3 ms) for the channel
# layer's publishes queued behind it.
TOUCH_CHUNK = 50


class RedisStore:
    """Presence shared by every server process through Redis."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis

        self.redis = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=5)
        self.prefix = prefix
        self._touch = self.redis.register_script(_TOUCH)
        self._open = self.redis.register_script(_OPEN)
        self._settle = self.redis.register_script(_SETTLE)
        self._reap = self.redis.register_script(_REAP)
        self._touch_many = self.redis.register_script(_TOUCH_MANY)

    def _t(self, tenant_id: int) -> str:
        return f"{self.prefix}:t:{tenant_id}"

    def _touch_call(self, tenant_id: int, user_id: int, conn_id: str, expires: float) -> tuple[list[str], list[Any]]:
        """The keys and arguments of _TOUCH and _OPEN."""
        t = self._t(tenant_id)
        keep = int(ttl() * 10) + 60  # idle keys clean themselves up
        keys = [f"{t}:u:{user_id}", f"{t}:conns", f"{t}:online", f"{self.prefix}:tenants"]
        return keys, [conn_id, expires, user_id, tenant_id, keep]

    def touch(self, tenant_id: int, user_id: int, conn_id: str, expires: float) -> bool:
        keys, args = self._touch_call(tenant_id, user_id, conn_id, expires)
        return bool(self._touch(keys=keys, args=args))

    def open(self, tenant_id: int, user_id: int, conn_id: str, expires: float) -> tuple[bool, set[int]]:
        keys, args = self._touch_call(tenant_id, user_id, conn_id, expires)
        became, online = self._open(keys=keys, args=args)
        return bool(became), {int(u) for u in online}

    def touch_many(self, sockets: list[SocketBeat], expires: float) -> list[tuple[int, int]]:
        """All of a process's sockets in one round trip: one _TOUCH_MANY call per tenant and chunk of sockets."""
        keep = int(ttl() * 10) + 60
        by_tenant: dict[int, list[SocketBeat]] = {}
        for beat in sockets:
            by_tenant.setdefault(beat[0], []).append(beat)
        calls: list[tuple[int, list[Any]]] = []
        for tenant_id, beats in by_tenant.items():
            head = [self._t(tenant_id), f"{self.prefix}:tenants", tenant_id, expires, keep]
            for start in range(0, len(beats), TOUCH_CHUNK):
                args = list(head)
                for _, user_id, conn_id, viewing in beats[start : start + TOUCH_CHUNK]:
                    args += (user_id, conn_id, len(viewing), *viewing)
                calls.append((tenant_id, args))
        if len(calls) == 1:
            results = [self._touch_many(args=calls[0][1])]
        else:
            pipe = self.redis.pipeline(transaction=False)
            for _, args in calls:
                self._touch_many(args=args, client=pipe)
            results = pipe.execute()
        return [
            (tenant_id, int(user)) for (tenant_id, _), became in zip(calls, results, strict=True) for user in became
        ]

    def drop(self, tenant_id: int, user_id: int, conn_id: str) -> None:
        t = self._t(tenant_id)
        pipe = self.redis.pipeline()
        pipe.zrem(f"{t}:u:{user_id}", conn_id)
        pipe.zrem(f"{t}:conns", f"{user_id}:{conn_id}")
        pipe.execute()

    def settle(self, tenant_id: int, user_id: int, now: float) -> bool:
        t = self._t(tenant_id)
        return bool(self._settle(keys=[f"{t}:u:{user_id}", f"{t}:online"], args=[now, user_id]))

    # Many sockets' transitions in one round trip (a storm: thousands of sockets open or close within a second).
    # Each script still runs on its own, atomically and in order, so the answers are those of one call at a time.

    def open_many(self, sockets: list[Conn], expires: float) -> list[tuple[bool, set[int]]]:
        pipe = self.redis.pipeline(transaction=False)
        for tenant_id, user_id, conn_id in sockets:
            keys, args = self._touch_call(tenant_id, user_id, conn_id, expires)
            self._open(keys=keys, args=args, client=pipe)
        return [(bool(became), {int(u) for u in online}) for became, online in pipe.execute()]

    def drop_many(self, sockets: list[Conn]) -> None:
        pipe = self.redis.pipeline()  # MULTI/EXEC, as drop: a socket's two entries go together
        for tenant_id, user_id, conn_id in sockets:
            t = self._t(tenant_id)
            pipe.zrem(f"{t}:u:{user_id}", conn_id)
            pipe.zrem(f"{t}:conns", f"{user_id}:{conn_id}")
        pipe.execute()

    def settle_many(self, users: list[tuple[int, int]], now: float) -> list[bool]:
        pipe = self.redis.pipeline(transaction=False)
        for tenant_id, user_id in users:
            t = self._t(tenant_id)
            self._settle(keys=[f"{t}:u:{user_id}", f"{t}:online"], args=[now, user_id], client=pipe)
        return [bool(result) for result in pipe.execute()]

    def reap(self, tenant_id: int, now: float) -> set[int]:
        t = self._t(tenant_id)
        keys = [f"{t}:conns", f"{t}:online", f"{self.prefix}:tenants"]
        gone = self._reap(keys=keys, args=[now, f"{t}:u:", tenant_id])
        return {int(u) for u in gone}

    def online(self, tenant_id: int, now: float) -> set[int]:
        # Every touch adds the user to the announced set, and only settle/reap (atomically, when the user has no
        # live socket left) take them out: the set already holds every user with a live socket. Reading the
        # connections too cost one entry per socket per handshake, quadratic in a reconnect storm.
        return {int(u) for u in self.redis.smembers(f"{self._t(tenant_id)}:online")}

    def tenants(self) -> set[int]:
        return {int(t) for t in self.redis.smembers(f"{self.prefix}:tenants")}

    def view(self, tenant_id: int, conversation_id: int, user_id: int, conn_id: str, expires: float) -> None:
        key = f"{self._t(tenant_id)}:c:{conversation_id}"
        pipe = self.redis.pipeline()
        pipe.zadd(key, {f"{user_id}:{conn_id}": expires})
        pipe.expire(key, int(ttl() * 10) + 60)
        pipe.execute()

    def unview(self, tenant_id: int, conversation_id: int, user_id: int, conn_id: str) -> None:
        self.redis.zrem(f"{self._t(tenant_id)}:c:{conversation_id}", f"{user_id}:{conn_id}")

    def viewers(self, tenant_id: int, conversation_id: int, now: float) -> set[int]:
        key = f"{self._t(tenant_id)}:c:{conversation_id}"
        return {int(m.split(b":", 1)[0]) for m in self.redis.zrangebyscore(key, f"({now}", "+inf")}

    def clear(self) -> None:
        keys = list(self.redis.scan_iter(f"{self.prefix}:*", count=500))
        if keys:
            self.redis.delete(*keys)


@cache
def _store_for(url: str, prefix: str) -> Store:
    return RedisStore(url, prefix) if url else MemoryStore()


def store() -> Store:
    url: str = settings.REDIS_URL
    layer_prefix = settings.CHANNEL_LAYERS.get("default", {}).get("CONFIG", {}).get("prefix", "asgi")
    return _store_for(url, f"{layer_prefix}:presence")


# --- The API the consumer, the maintenance tasks and the pages use (sync: call via sync_to_async from async) ----


def online_user_ids(tenant_id: int) -> set[int]:
    """Ids of the tenant's users online as the tenant's sockets were told: a live socket on any server process, or
    announced online and not yet announced offline (the last tab closed less than the grace period ago). Listing
    only live sockets would make `hello` miss a user whose `user:offline` never comes (they reconnected in time)."""
    return store().online(tenant_id, time.time())


def connection_touch(tenant_id: int, user_id: int, conn_id: str) -> bool:
    """Register or refresh one socket. True when the user just became online (the caller announces it)."""
    return store().touch(tenant_id, user_id, conn_id, time.time() + ttl())


def connection_open(tenant_id: int, user_id: int, conn_id: str) -> tuple[bool, set[int]]:
    """A new socket: connection_touch, then the tenant's online users (for `hello`), in one store round trip."""
    return store().open(tenant_id, user_id, conn_id, time.time() + ttl())


def heartbeat_many(sockets: list[SocketBeat]) -> list[tuple[int, int]]:
    """Refresh many sockets and the conversations each one views, at once (a server process's heartbeat).

    Returns the (tenant id, user id) pairs that just became online, for the caller to announce.
    """
    if not sockets:
        return []
    return store().touch_many(sockets, time.time() + ttl())


def connection_drop(tenant_id: int, user_id: int, conn_id: str) -> None:
    """Forget one socket. The offline decision comes after the grace period (`user_settle`)."""
    store().drop(tenant_id, user_id, conn_id)


def user_settle(tenant_id: int, user_id: int) -> bool:
    """True when the user has no live socket left and was announced online: the caller announces them offline."""
    return store().settle(tenant_id, user_id, time.time())


def connections_open(sockets: list[Conn]) -> list[tuple[bool, set[int]]]:
    """connection_open for many sockets at once, in one store round trip; the answers in the same order."""
    return store().open_many(sockets, time.time() + ttl()) if sockets else []


def connections_drop(sockets: list[Conn]) -> list[None]:
    """connection_drop for many sockets at once, in one store round trip."""
    if sockets:
        store().drop_many(sockets)
    return [None] * len(sockets)


def users_settle(users: list[tuple[int, int]]) -> list[bool]:
    """user_settle for many users at once, in one store round trip; the answers in the same order."""
    return store().settle_many(users, time.time()) if users else []


def tenant_reap(tenant_id: int) -> set[int]:
    """Expire lapsed sockets (a dead process's); returns the users that thereby went offline, to announce."""
    return store().reap(tenant_id, time.time())


def tenants_present() -> set[int]:
    return store().tenants()


def conversation_view(tenant_id: int, conversation_id: int, user_id: int, conn_id: str) -> None:
    store().view(tenant_id, conversation_id, user_id, conn_id, time.time() + ttl())


def conversation_unview(tenant_id: int, conversation_id: int, user_id: int, conn_id: str) -> None:
    store().unview(tenant_id, conversation_id, user_id, conn_id)


def conversation_viewer_ids(tenant_id: int, conversation_id: int) -> set[int]:
    return store().viewers(tenant_id, conversation_id, time.time())


def presence_frame_data(user_id: int) -> dict[str, Any]:
    return {"user_id": user_id}


def announce_offline(tenant_id: int, user_ids: Iterable[int]) -> None:
    """Broadcast user:offline for users a reap found gone (sync code: the periodic task)."""
    for user_id in sorted(user_ids):
        events.send_ephemeral(events.tenant_group(tenant_id), events.USER_OFFLINE, presence_frame_data(user_id))


def reap_all() -> dict[int, set[int]]:
    """Reap every tenant that has presence entries and announce who went offline. Returns {tenant: users}."""
    result: dict[int, set[int]] = {}
    for tenant_id in tenants_present():
        gone = tenant_reap(tenant_id)
        if gone:
            announce_offline(tenant_id, gone)
            result[tenant_id] = gone
    return result
