"""The tenant's WebSocket (PROTOCOL.md): authenticate, join groups, replay the event log, relay live frames.

One consumer per socket at /ws/tenants/<slug>/. It never writes rows except through services (message:read →
read_marker_set). Durable frames come from the tenant group (inbox.events.emit, after commit) and from the event
log (`sync`); both paths meet in `_deliver`, which sends each `seq` once and in order:

* the socket joins the tenant group *before* it reads the log head for `hello`, so an event committed during the
  handshake is either at or below the head (replayed by `sync`) or above it (delivered live), never neither;
* while a `sync` replays, live frames are buffered and then delivered through the same dedupe-by-seq path;
* a live frame whose seq skips ahead (another process's send arrived first, or the layer dropped one) is
  preceded by the missing seqs read from the log: seq N+1 commits only after N did, so N is readable.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import json
import logging
import secrets
import threading
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, urlparse

from asgiref.sync import sync_to_async
from autobahn.exception import Disconnected
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections
from django.http.cookie import parse_cookie

from accounts.models import User
from config import metrics
from config.db import rls
from inbox import events, presence
from inbox.models import Conversation, EventSequence, Message, TenantEvent
from inbox.services import read_marker_set
from tenants.models import Membership, Tenant
from tenants.scoping import tenant_scope
from tenants.selectors import membership_get
from tenants.tickets import Admission, ticket_admit, tickets_admit

logger = logging.getLogger(__name__)

# Close codes (PROTOCOL.md "Connecting").
CLOSE_UNAUTHENTICATED: Final = 4401
CLOSE_FORBIDDEN: Final = 4403
CLOSE_ABUSE: Final = 4429

MAX_FRAME_BYTES: Final = 64 * 1024  # Daphne enforces it too (--websocket-max-message-size, closes with 1009)


@functools.cache
def _socket_db_executor() -> tuple[ThreadPoolExecutor, int]:
    threads = int(_setting("SOCKET_DB_THREADS", 4))
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="socket-db"), threads


def socket_db_restart() -> None:
    """Let socket_db's threads finish what they run, close their database connections and end, so that the next
    call starts fresh ones (with no per-thread database state): for tests that change the database settings (the
    role) under a running process. Each thread closes its own connections (one task per thread, held at a barrier
    until all have one): a thread that ends holding one leaves it open until the cyclic collector finds its
    DatabaseWrapper, which kept the test database busy when the suite tried to drop it."""
    if not _socket_db_executor.cache_info().currsize:
        return
    executor, threads = _socket_db_executor()
    barrier = threading.Barrier(threads)

    def close_own() -> None:
        barrier.wait(timeout=30)
        connections.close_all()

    for done in [executor.submit(close_own) for _ in range(threads)]:
        done.result()
    executor.shutdown(wait=True)
    _socket_db_executor.cache_clear()


def socket_db(func: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """database_sync_to_async on a few threads of their own, for what a connecting or syncing socket reads.

    Channels runs every database_sync_to_async call of a process on one thread, one call after another. In a
    reconnect storm (bench M8) that thread was busy 1.8 s of every 2 s with the four calls of each handshake and
    sync (~6 ms of thread time per socket) and calls queued for 1-2 s, while the event loop sat two-thirds idle.
    These calls are each one self-contained statement (the ticket's spend is a conditional UPDATE, safe when
    concurrent), and a socket still awaits its own calls one after the other, so they can run side by side; a
    dedicated executor (not the default one: that one is per event loop and unbounded for this purpose) keeps their
    threads, and so their pooled connections, to SOCKET_DB_THREADS.

    Each call runs in a copy of the socket's context that is not copied back. asgiref otherwise copies every context
    variable the thread saw back into the caller's context when the call returns, and re-homes each asgiref Local's
    storage (Django's connections, caches, translations ...) into a new object as it does: ~60 objects and ~4 KiB
    kept by every idle socket's task for as long as it lives (tracemalloc over 1,000 handshakes; M6's rise in run 7).
    Nothing these calls set is needed by the socket afterwards: their results are their return values."""

    async def call(*args: Any) -> Any:
        run = database_sync_to_async(
            func, thread_sensitive=False, executor=_socket_db_executor()[0], context=contextvars.copy_context()
        )
        return await run(*args)

    return call


REPLAY_PAGE: Final = 500
MAX_BUFFERED: Final = 10_000  # live frames held during a replay
MAX_JOINED: Final = 50  # conversations one socket may view at once

MAX_SNAPSHOT: Final = 100  # conversation ids one activity:subscribe may ask the current viewers of

# Ephemeral wire type added to protocol v1 (backward compatible; see docs/realtime.md).
CONVERSATION_VIEWERS: Final = "conversation:viewers"


def activity_group(tenant_id: int) -> str:
    """Sockets that asked (activity:subscribe) for typing and viewers of *every* conversation of the tenant: the
    conversation list. Opt-in, so integrations and benchmarks that never ask pay nothing for it."""
    return f"tenant.{tenant_id}.activity"


def _setting(name: str, default: float) -> float:
    return float(getattr(settings, name, default))


class FrameError(Exception):
    """A client frame that is refused: answered with an `error` frame, changes nothing."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class TokenBucket:
    capacity: float
    rate: float  # tokens per second
    tokens: float
    at: float

    @classmethod
    def full(cls, capacity: float, rate: float) -> TokenBucket:
        return cls(capacity=capacity, rate=rate, tokens=capacity, at=time.monotonic())

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def origin_allowed(scope: dict[str, Any]) -> bool | None:
    """True/False for an allowed/foreign Origin header, None when there is none."""
    raw = next((value for name, value in scope.get("headers", []) if name == b"origin"), None)
    if raw is None:
        return None
    try:
        parsed = urlparse(raw.decode("latin1"))
    except UnicodeDecodeError:
        return False
    return bool(OriginValidator(None, settings.ALLOWED_ORIGINS).valid_origin(parsed))


def ticket_param(scope: dict[str, Any]) -> str | None:
    """The handshake's `?ticket=` (the first one), or None when there is none or it is empty."""
    tickets = parse_qs(scope.get("query_string", b"").decode("latin1")).get("ticket")
    return tickets[0] if tickets else None


def has_session_cookie(scope: dict[str, Any]) -> bool:
    """Whether the handshake carries Django's session cookie (whatever its value)."""
    for name, value in scope.get("headers", []):
        if name == b"cookie" and settings.SESSION_COOKIE_NAME in parse_cookie(value.decode("latin1")):
            return True
    return False


def handshake_refused(scope: dict[str, Any]) -> bool:
    """Whether the handshake is refused before accept (HTTP 403), PROTOCOL.md "Connecting".

    A foreign Origin, whatever the credentials; and a session cookie without an Origin and without a ticket: a
    cookie is only trusted from our own pages, and browsers always send Origin, so that handshake is either forged
    or a client that should use a ticket. With a ticket the cookie is ignored, so it may come without an Origin.
    """
    origin = origin_allowed(scope)
    if origin is False:
        return True
    return origin is None and ticket_param(scope) is None and has_session_cookie(scope)


def credential_stamp(password: str, epoch: int = 0) -> str:
    """A fingerprint of the user's password hash, taken when the socket authenticates.

    It changes when the password does (and when Django re-hashes it, which also ends the user's sessions) and when
    the user logs out everywhere (accounts.services.logout_everywhere bumps credentials_epoch): a socket
    whose stamp no longer matches the database closes with 4403, like one whose membership was revoked.
    """
    return hashlib.sha256(f"{password}:{epoch}".encode("utf-8", "replace")).hexdigest()  # = User.credential_stamp


# --- Database work (runs in Django's sync thread; every query inside the tenant's scope) ------------------------


def _authenticate(scope: dict[str, Any], slug: str) -> tuple[Membership | None, int, str]:
    """The socket's membership and credential stamp, or None with the close code: 4401 no valid credentials, 4403
    not a member. The stamp comes from the user row the credentials were checked against (the ticket's, or the one
    whose session hash the auth middleware verified), so a password change racing the handshake is caught by the
    re-check after the socket joined its groups."""
    ticket = ticket_param(scope)
    if ticket is not None:
        return _admitted(ticket_admit(token=ticket, tenant_slug=slug))
    # A cookie is sent by the browser whatever page opened the socket: trust it only from our own origins.
    # (routing.ForeignOriginGuard refuses a cookie without an Origin with 403 already; this is the second line.)
    if origin_allowed(scope) is not True:
        return None, CLOSE_UNAUTHENTICATED, ""
    user = scope.get("user")
    if user is None or not user.is_authenticated:
        return None, CLOSE_UNAUTHENTICATED, ""
    return (
        membership_get(user=user, tenant_slug=slug),
        CLOSE_FORBIDDEN,
        credential_stamp(user.password, user.credentials_epoch),
    )


def _admitted(admission: Admission | None) -> tuple[Membership | None, int, str]:
    """_authenticate's answer for a ticket just spent (or not). Ticket clients need no cookie and may send no
    Origin; a foreign Origin never got this far (403)."""
    if admission is None:
        return None, CLOSE_UNAUTHENTICATED, ""
    membership = admission.membership
    if membership is None:
        return None, CLOSE_FORBIDDEN, ""
    return membership, CLOSE_FORBIDDEN, credential_stamp(membership.user.password, membership.user.credentials_epoch)


def _allowed_stamps(tenant_id: int, user_ids: set[int]) -> dict[int, str]:
    """For those of these users who are still active members: the stamp of their current password."""
    with tenant_scope(tenant_id):
        rows = Membership.objects.filter(user_id__in=user_ids, is_active=True, user__is_active=True).values_list(
            "user_id", "user__password", "user__credentials_epoch"
        )
        return {user_id: credential_stamp(password, epoch) for user_id, password, epoch in rows}


def _still_allowed(tenant_id: int, user_id: int, stamp: str) -> bool:
    """Still an active member of an active account, with the password the socket authenticated with."""
    return _allowed_stamps(tenant_id, {user_id}).get(user_id) == stamp


# Parameters: tenant id (the head's), tenant id, the user ids (an array on PostgreSQL, one placeholder each
# elsewhere). Raw: every handshake runs it, and compiling the ORM's version cost more CPU than the rest of the
# handshake's database work.
_HANDSHAKE_STATES_SQL: Final = (
    f"SELECT m.user_id, u.password, u.credentials_epoch,"
    f" (SELECT s.last_seq FROM {EventSequence._meta.db_table} s WHERE s.tenant_id = %s)"
    f" FROM {Membership._meta.db_table} m JOIN {User._meta.db_table} u ON u.id = m.user_id"
    " WHERE m.tenant_id = %s AND m.user_id {users} AND m.is_active AND u.is_active"
)


def _handshake_states(sockets: list[tuple[int, int, str]]) -> list[tuple[bool, int]]:
    """(still allowed, log head) for each socket (tenant id, user id, stamp), read after the socket joined its
    groups: a revocation committed during the handshake either shows here or sends its notice to a socket that
    already listens. The sockets that ask at the same moment (a SocketBatch) are read together, one statement per
    tenant among them, in that tenant's scope (row-level security's settings travel with it); each socket asked
    after it joined, so its head is read after that too."""
    by_tenant: dict[int, set[int]] = {}
    for tenant_id, user_id, _ in sockets:
        by_tenant.setdefault(tenant_id, set()).add(user_id)
    found: dict[tuple[int, int], tuple[str, int]] = {}  # (tenant, user) -> (stamp now, head)
    for tenant_id, user_ids in by_tenant.items():
        ids = sorted(user_ids)
        if connections["default"].vendor == "postgresql":
            sql, params = _HANDSHAKE_STATES_SQL.replace("{users}", "= ANY(%s)"), [tenant_id, tenant_id, ids]
        else:
            placeholders = ", ".join(["%s"] * len(ids))
            sql, params = _HANDSHAKE_STATES_SQL.replace("{users}", f"IN ({placeholders})"), [tenant_id, tenant_id, *ids]
        for user_id, password, epoch, last in rls.fetch_in_tenant(tenant_id, sql, params):
            found[(tenant_id, int(user_id))] = (credential_stamp(password, epoch), int(last or 0))
    answers: list[tuple[bool, int]] = []
    for tenant_id, user_id, stamp in sockets:
        now = found.get((tenant_id, user_id))
        answers.append((False, 0) if now is None else (now[0] == stamp, now[1]))
    return answers


def _head(tenant_id: int) -> int:
    with tenant_scope(tenant_id):
        last = EventSequence.objects.filter(tenant_id=tenant_id).values_list("last_seq", flat=True).first()
    return int(last or 0)


# Parameters: tenant id (the oldest event's), tenant id. Raw, like the handshake's: every reconnect runs it.
_SYNC_GAP_SQL: Final = (
    f"SELECT s.last_seq,"
    f" (SELECT e.seq FROM {TenantEvent._meta.db_table} e WHERE e.tenant_id = %s ORDER BY e.seq LIMIT 1)"
    f" FROM {EventSequence._meta.db_table} s WHERE s.tenant_id = %s"
)


def _is_gap(since: int, head: int, first: int | None) -> bool:
    """Whether the events after `since` are no longer all retained, given the head and the oldest retained seq."""
    if since > head:
        return True  # a seq the log never reached: the client's state is from another log
    if since == head:
        return False
    return first is None or first > since + 1


def _sync_gap(tenant_id: int, since: int) -> tuple[bool, int]:
    """(whether events after `since` are no longer all retained, the head), in one statement."""
    rows = rls.fetch_in_tenant(tenant_id, _SYNC_GAP_SQL, [tenant_id, tenant_id])
    head, first = (int(rows[0][0] or 0), rows[0][1]) if rows else (0, None)
    return _is_gap(since, head, first), head


# Parameters: tenant id, tenant id, since, since, tenant id, limit, tenant id. The head and the oldest retained seq
# (_SYNC_GAP_SQL's) with the first page after `since` (_EVENTS_AFTER_SQL's), in one statement and so one snapshot:
# one row per event, or one with no event. The page is left empty when the oldest retained seq shows a gap.
_SYNC_START_SQL: Final = (
    f"SELECT s.last_seq, (SELECT e.seq FROM {TenantEvent._meta.db_table} e WHERE e.tenant_id = %s ORDER BY e.seq LIMIT 1),"
    " p.type, p.data, p.seq, p.created_at"
    f" FROM {EventSequence._meta.db_table} s LEFT JOIN ("
    f"SELECT type, data, seq, created_at FROM {TenantEvent._meta.db_table} WHERE tenant_id = %s AND seq > %s"
    f" AND %s >= (SELECT e.seq FROM {TenantEvent._meta.db_table} e WHERE e.tenant_id = %s ORDER BY e.seq LIMIT 1) - 1"
    " ORDER BY seq LIMIT %s) p ON 1 = 1"
    " WHERE s.tenant_id = %s ORDER BY p.seq"
)


def _sync_start(tenant_id: int, since: int, limit: int) -> tuple[bool, int, list[events.Frame]]:
    """What a `sync` reads first: (gap, head) as `_sync_gap` answers them, and unless there is a gap the first page
    of the replay, `_events_after(tenant_id, since, None, limit)`. One statement and one thread hop instead of two
    (bench M8: 1,000 sockets resync within a second or two)."""
    rows = rls.fetch_in_tenant(
        tenant_id, _SYNC_START_SQL, [tenant_id, tenant_id, since, since, tenant_id, limit, tenant_id]
    )
    if not rows:
        return _is_gap(since, 0, None), 0, []
    head, first = int(rows[0][0] or 0), rows[0][1]
    if _is_gap(since, head, first) or rows[0][4] is None:
        return _is_gap(since, head, first), head, []
    return False, head, [_log_frame(tenant_id, *row[2:]) for row in rows]


def _sync_starts(syncs: list[tuple[int, int, int]]) -> list[tuple[bool, int, list[events.Frame]]]:
    """_sync_start for the sockets (tenant id, since, limit) that sync at the same moment (a SocketBatch: a
    reconnect storm). A tenant's sockets whose `since` lie within a page of each other share one read, from the
    lowest of them, of a page that long plus the spread; each takes its own answer from it. The answers are those
    of _sync_start: the read has at least `limit` events after each one's `since` (or all there are), and the same
    head and oldest seq. A socket the shared read cannot answer (the lowest `since` is past the log's start but its
    own is not) reads on its own."""
    answers: list[tuple[bool, int, list[events.Frame]] | None] = [None] * len(syncs)
    by_tenant: dict[int, list[int]] = {}
    for index, (tenant_id, _, _) in enumerate(syncs):
        by_tenant.setdefault(tenant_id, []).append(index)
    for tenant_id, indexes in by_tenant.items():
        indexes.sort(key=lambda i: syncs[i][1])
        while indexes:
            low, limit = syncs[indexes[0]][1], syncs[indexes[0]][2]
            group = [i for i in indexes if syncs[i][1] - low <= limit and syncs[i][2] == limit]
            taken = set(group)
            indexes = [i for i in indexes if i not in taken]
            spread = syncs[group[-1]][1] - low
            params = [tenant_id, tenant_id, low, low, tenant_id, limit + spread, tenant_id]
            rows = rls.fetch_in_tenant(tenant_id, _SYNC_START_SQL, params)
            head, first = (int(rows[0][0] or 0), rows[0][1]) if rows else (0, None)
            paged = bool(rows) and rows[0][4] is not None
            for i in group:
                since = syncs[i][1]
                if _is_gap(since, head, first):
                    answers[i] = (True, head, [])
                elif paged:
                    page = [row for row in rows if row[4] > since][:limit]
                    answers[i] = (False, head, [_log_frame(tenant_id, *row[2:]) for row in page])
                elif not _is_gap(low, head, first):  # no events after the lowest since: none after this one
                    answers[i] = (False, head, [])
    return [answer if answer is not None else _sync_start(*syncs[i]) for i, answer in enumerate(answers)]


# Parameters: tenant id, after, up to (inclusive), limit.
_EVENTS_AFTER_SQL: Final = (
    f"SELECT type, data, seq, created_at FROM {TenantEvent._meta.db_table}"
    " WHERE tenant_id = %s AND seq > %s AND seq <= %s ORDER BY seq LIMIT %s"
)
_MAX_SEQ: Final = 2**63 - 1


def _events_after(tenant_id: int, after: int, upto: int | None, limit: int) -> list[events.Frame]:
    """A page of the log for a replay (every `sync` and gap fill), in one raw statement: the ORM's compilation and
    model loading were most of a reconnect's database CPU once the handshake itself went raw."""
    params = [tenant_id, after, _MAX_SEQ if upto is None else upto, limit]
    return [_log_frame(tenant_id, *row) for row in rls.fetch_in_tenant(tenant_id, _EVENTS_AFTER_SQL, params)]


def _log_frame(tenant_id: int, type_: str, data: Any, seq: int, created_at: datetime) -> events.Frame:
    """The frame of one raw log row, exactly as `events.event_frame` makes it from the model (the JSON column comes
    back as text, and SQLite's timestamps without their UTC zone), and its JSON text: both from the process's
    cache when another socket's replay read the same row already (`_LoggedFrames`)."""
    cached = _logged_frames.get(tenant_id, seq, type_, data, created_at)
    if cached is not None:
        return cached
    raw = data
    if isinstance(data, str | bytes):
        data = json.loads(data)
    at = created_at if created_at.tzinfo is not None else created_at.replace(tzinfo=UTC)
    frame = events.event_frame(TenantEvent(type=type_, data=data, seq=seq, created_at=at))
    return _logged_frames.put(tenant_id, seq, type_, raw, created_at, frame)


class _LoggedFrames:
    """Frames of log rows and their JSON text, shared by every socket of the process.

    In a reconnect storm (bench M8) the sockets of a tenant replay the same few seqs: each row was decoded, turned
    into a frame and JSON-encoded once per socket. A durable frame is the same for every socket of the tenant (it is
    the log row; nothing in it depends on the socket), so it is built and encoded once here. An entry is keyed by
    tenant and seq and used only for a row equal to the one it was built from (type, time and the JSON text as
    stored): a seq is never reused once committed, but a wiped and re-seeded database (tests) reuses both ids. The
    socket sends the cached text only for the very frame object the cache handed out (`text`). Bounded in entries
    and characters; the oldest entries go first (a storm replays the newest events).

    Filled from socket_db's threads: changes are made under a lock, lookups are single dict reads.
    """

    def __init__(self, max_entries: int, max_chars: int) -> None:
        self.max_entries = max_entries
        self.max_chars = max_chars
        # (tenant id, seq) → (type, JSON text of data as stored, created_at as read, frame, frame's JSON text)
        self.entries: dict[tuple[int, int], tuple[str, str | bytes, datetime, events.Frame, str]] = {}
        self.chars = 0
        self.lock = threading.Lock()

    def get(self, tenant_id: int, seq: int, type_: str, data: Any, created_at: datetime) -> events.Frame | None:
        entry = self.entries.get((tenant_id, seq))
        if entry is None or entry[0] != type_ or entry[2] != created_at or entry[1] != data:
            return None
        return entry[3]

    def put(
        self, tenant_id: int, seq: int, type_: str, raw: Any, created_at: datetime, frame: events.Frame
    ) -> events.Frame:
        """Cache `frame` (the row's) with its text; returns the cached frame (another thread's, if it got there first)."""
        if not isinstance(raw, str | bytes):
            return frame  # a driver that decodes the JSON itself: nothing cheap to compare the next read with
        text = _encode(frame)
        size = len(text) + len(raw)
        if size > self.max_chars:
            return frame
        with self.lock:
            key = (tenant_id, seq)
            current = self.entries.get(key)
            if current is not None:
                if current[0] == type_ and current[2] == created_at and current[1] == raw:
                    return current[3]
                del self.entries[key]
                self.chars -= len(current[4]) + len(current[1])
            self.entries[key] = (type_, raw, created_at, frame, text)
            self.chars += size
            while len(self.entries) > self.max_entries or self.chars > self.max_chars:
                oldest = next(iter(self.entries))
                gone = self.entries.pop(oldest)
                self.chars -= len(gone[4]) + len(gone[1])
        return frame

    def text(self, tenant_id: int, frame: events.Frame) -> str:
        """The JSON text of a frame `_log_frame` returned: the cached one if the cache still holds this frame."""
        entry = self.entries.get((tenant_id, frame["seq"] or 0))
        if entry is not None and entry[3] is frame:
            return entry[4]
        return _encode(frame)


LOGGED_FRAMES_MAX: Final = 2_000  # a few replay pages: a storm's sockets replay the newest few seconds of events
LOGGED_FRAMES_MAX_CHARS: Final = 4_000_000  # text kept (frames and their stored JSON), ~2-3x that in memory
_logged_frames: Final = _LoggedFrames(LOGGED_FRAMES_MAX, LOGGED_FRAMES_MAX_CHARS)


def _conversation_exists(tenant_id: int, conversation_id: int) -> bool:
    with tenant_scope(tenant_id):
        return Conversation.objects.filter(pk=conversation_id).exists()


def _read(tenant_id: int, user_id: int, conversation_id: int, message_id: int) -> None:
    with tenant_scope(tenant_id):
        conversation = Conversation.objects.filter(pk=conversation_id).first()
        if conversation is None:
            raise FrameError("not_found", "no such conversation")
        message = Message.objects.filter(pk=message_id, conversation=conversation).first()
        if message is None:
            raise FrameError("not_found", "no such message in this conversation")
        tenant = Tenant.objects.get(pk=tenant_id)
        user = User.objects.get(pk=user_id)
        try:
            read_marker_set(tenant=tenant, user=user, conversation=conversation, message=message)
        except ValidationError as exc:
            raise FrameError("invalid", "; ".join(exc.messages)) from exc


def _viewers_of(tenant_id: int, conversation_ids: list[int]) -> dict[int, set[int]]:
    """Who views each of these conversations now (one trip off the event loop for the whole snapshot)."""
    return {cid: presence.conversation_viewer_ids(tenant_id, cid) for cid in conversation_ids}


def _int_field(data: dict[str, Any], name: str, *, minimum: int = 1) -> int:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or value > 2**63 - 1:
        raise FrameError("bad_data", f"data.{name} must be an integer >= {minimum}")
    return value


_background: set[asyncio.Task[None]] = set()  # offline announcements that outlive their socket


class SocketBatch:
    """One blocking call that many sockets of this event loop make at the same moment, run as one: one trip to a
    thread and one round trip to the store for all of them (`presence.connections_open`, `_handshake_states` ...).

    A storm (a balancer restart, a deploy: bench M8) opens or closes thousands of sockets within a second, and each
    open, close, offline check and handshake read was a thread hop and a round trip of its own. A socket still
    awaits its own answer, in the order it asked. While one batch runs, the next one gathers what comes in
    meanwhile, so under load the batches grow and when idle a call goes at once (after the sockets of the same loop
    turn joined it). A failure reaches every call of its batch, as it would have reached each one. With `database`,
    the batch runs like socket_db's calls (on their threads, the connection handled as database_sync_to_async
    does); otherwise on the loop's default executor, as presence calls did."""

    MAX_BATCH: Final = 1000

    def __init__(self, run_many: Callable[[list[Any]], list[Any]], *, database: bool = False) -> None:
        self.run_many = run_many
        self.database = database
        self.pending: list[tuple[Any, asyncio.Future[Any]]] = []
        self.draining = False

    async def __call__(self, item: Any) -> Any:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        self.pending.append((item, answer))
        if not self.draining:
            self.draining = True
            task = loop.create_task(self._drain())
            _background.add(task)
            task.add_done_callback(_background.discard)
        return await answer

    def _runner(self) -> Callable[[list[Any]], Awaitable[list[Any]]]:
        if self.database:
            return socket_db(self.run_many)
        return sync_to_async(self.run_many, thread_sensitive=False, context=contextvars.copy_context())

    async def _drain(self) -> None:
        batch: list[tuple[Any, asyncio.Future[Any]]] = []
        try:
            await asyncio.sleep(0)  # the other sockets of this loop turn join the batch
            while self.pending:
                batch, self.pending = self.pending[: self.MAX_BATCH], self.pending[self.MAX_BATCH :]
                try:
                    answers = await self._runner()([item for item, _ in batch])
                except Exception as exc:
                    for _, answer in batch:
                        if not answer.done():
                            answer.set_exception(exc)
                else:
                    for (_, answer), result in zip(batch, answers, strict=True):
                        if not answer.done():
                            answer.set_result(result)
                batch = []
        finally:
            for _, answer in batch + self.pending:  # cancelled (the loop is closing): nobody is left to answer
                answer.cancel()
            self.pending = []
            self.draining = False


_socket_batches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, SocketBatch]] = (
    weakref.WeakKeyDictionary()
)


def socket_batch(run_many: Callable[[list[Any]], list[Any]], *, database: bool = False) -> SocketBatch:
    """The running event loop's batch for run_many (its futures belong to that loop)."""
    batches = _socket_batches.setdefault(asyncio.get_running_loop(), {})
    batch = batches.get(run_many)
    if batch is None:
        batch = batches[run_many] = SocketBatch(run_many, database=database)
    return batch


_last_reap: dict[int, float] = {}  # tenant id → when this process last reaped it


def _reap_due(tenant_id: int, interval: float) -> bool:
    now = time.monotonic()
    if now - _last_reap.get(tenant_id, float("-inf")) < interval * 0.5:
        return False
    _last_reap[tenant_id] = now
    return True


class _HubGroup:
    """One channel-layer group as this process sees it: one layer channel subscribed to it, the local sockets in it."""

    __slots__ = ("name", "members", "lock", "channel", "reader")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: set[InboxConsumer] = set()
        self.lock = asyncio.Lock()
        self.channel: str | None = None  # set once subscribed
        self.reader: asyncio.Task[None] | None = None


class Hub:
    """The process's side of the channel layer for every socket: each group is joined once, by one layer channel.

    Channels gives every consumer its own layer channel and delivers a group message by putting it on each member's
    queue; each consumer then decodes it, wakes its dispatch loop (a task and an `asyncio.wait` per message), encodes
    the frame and sends it. With a tenant event fanned out to every socket of the tenant that was most of a Daphne
    process's CPU (docs/performance.md). Here one reader per group decodes the message once and hands it to each local
    member in turn (`InboxConsumer.hub_deliver`, which sends without suspending or passes the frame to the socket's
    own ordered slow path), and sockets hold no layer channel, queue or Redis subscription of their own.

    `add` returns only once the group's subscription is live, which the consumer's "join before reading the head"
    rule relies on; joins and leaves of one group are serialised by the group's lock.

    What this process itself sends to a group (inbox.events.publish) reaches the Hub's members directly
    (`deliver_local`), and the copy the layer brings back, marked with the Hub's `token`, is skipped.
    """

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.groups: dict[str, _HubGroup] = {}
        self.token = secrets.token_hex(8)  # marks what this Hub delivered itself (events.HUB_ORIGIN)

    async def add(self, group: str, socket: InboxConsumer) -> None:
        entry = self.groups.get(group)
        if entry is None:
            entry = self.groups[group] = _HubGroup(group)
        entry.members.add(socket)
        if entry.channel is None:
            async with entry.lock:
                if entry.channel is None and entry.members:
                    channel = await self.layer.new_channel("hub.")
                    await self.layer.group_add(group, channel)
                    entry.channel = channel
                    entry.reader = asyncio.create_task(self._read(entry, channel))

    async def discard(self, group: str, socket: InboxConsumer) -> None:
        entry = self.groups.get(group)
        if entry is None:
            return
        entry.members.discard(socket)
        if entry.members:
            return
        async with entry.lock:
            if entry.members or entry.channel is None:
                return
            channel, reader = entry.channel, entry.reader
            entry.channel = entry.reader = None
            try:
                await self.layer.group_discard(group, channel)
            finally:
                if reader is not None:
                    reader.cancel()  # the layer unsubscribes the channel when its receive is cancelled
                if not entry.members and self.groups.get(group) is entry:
                    del self.groups[group]

    async def _read(self, entry: _HubGroup, channel: str) -> None:
        while True:
            try:
                message = await self.layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("channel layer receive for %s failed", entry.name, exc_info=True)
                await asyncio.sleep(1)
                continue
            if message.get(events.HUB_ORIGIN) == self.token:
                continue  # sent from this loop: its sockets had it before it was published (deliver_local)
            await self._deliver(entry, message)

    async def deliver_local(self, group: str, message: dict[str, Any]) -> str | None:
        """A message sent from this Hub's own loop, handed to its sockets in `group` without the round trip through
        the layer. Returns the token to mark the published copy with (skipped when it comes back), or None if this
        Hub has no socket in the group: the copy then goes out unmarked, for a socket that joins meanwhile."""
        entry = self.groups.get(group)
        if entry is None or not entry.members:
            return None
        await self._deliver(entry, message)
        return self.token

    @staticmethod
    async def _deliver(entry: _HubGroup, message: dict[str, Any]) -> None:
        for socket in list(entry.members):
            try:
                await socket.hub_deliver(message)
            except Exception:
                logger.exception("delivering a %s message to a socket failed", message.get("type"))


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, Hub]] = weakref.WeakKeyDictionary()


def _hub(layer: Any) -> Hub:
    per_loop = _hubs.setdefault(asyncio.get_running_loop(), {})
    hub = per_loop.get(id(layer))
    if hub is None or hub.layer is not layer:
        hub = per_loop[id(layer)] = Hub(layer)
    return hub


async def _deliver_local(layer: Any, group: str, message: dict[str, Any]) -> str | None:
    """events' local delivery: through the running loop's Hub for `layer`, if there is one (no Hub is made here)."""
    hub = _hubs.get(asyncio.get_running_loop(), {}).get(id(layer))
    if hub is None or hub.layer is not layer:
        return None
    return await hub.deliver_local(group, message)


events.set_local_delivery(_deliver_local)


_frame_counters: dict[str, Any] = {}


def _count_frame(type_: str) -> None:
    child = _frame_counters.get(type_)
    if child is None:
        child = _frame_counters[type_] = metrics.FRAMES_SENT.labels(type=type_)
    child.inc()


def _encode(frame: events.Frame | dict[str, Any]) -> str:
    return json.dumps(frame, cls=DjangoJSONEncoder)


class InboxConsumer(AsyncWebsocketConsumer):
    tenant_id: int
    user_id: int

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Channels' AsyncConsumer.__call__ without a channel-layer channel of the socket's own.

        Layer messages reach the socket through the process's Hub (`hub_deliver`); the socket's loop only reads its
        client, one message at a time, with no task per message. `channel_name` stays a unique name: it identifies
        the socket in `exclude_channel`, nothing is ever sent to it.
        """
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = f"local.{uuid.uuid4().hex}"
        self.base_send = send
        self.hub_groups: list[str] = []
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass
        finally:
            if self.hub_groups:  # the handshake or a handler failed before the socket left its groups
                leave = asyncio.ensure_future(self._leave_all())
                _background.add(leave)
                leave.add_done_callback(_background.discard)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        await self._leave_all()
        await self.disconnect(message["code"])
        raise StopConsumer()

    async def _join(self, group: str) -> None:
        await _hub(self.channel_layer).add(group, self)
        self.hub_groups.append(group)

    async def _leave(self, group: str) -> None:
        if group in self.hub_groups:
            self.hub_groups.remove(group)
        await _hub(self.channel_layer).discard(group, self)

    async def _leave_all(self) -> None:
        for group in list(self.hub_groups):
            await self._leave(group)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch without its `aclose_old_connections()` before every handler.

        That call is a hop to the one thread-sensitive sync thread per socket per message: with a tenant event fanned
        out to many sockets it was 25-40 % of a Daphne process's CPU (docs/performance.md). This consumer never
        touches the ORM in async code; every database call goes through database_sync_to_async, which closes
        stale connections itself, so the hop buys nothing here.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        self.authenticated = False
        self.closing = False
        # Layer messages that reach the socket before `hello` went out wait here: `hello` is the first frame.
        self.early: list[dict[str, Any]] | None = []
        slug = self.scope["url_route"]["kwargs"]["slug"]
        ticket = ticket_param(self.scope)
        if ticket is not None:  # spent together with the tickets of the sockets connecting at the same moment
            admission = await socket_batch(tickets_admit, database=True)((ticket, slug))
            membership, code, stamp = _admitted(admission)
        else:
            membership, code, stamp = await socket_db(_authenticate)(self.scope, slug)
        if membership is None:
            # Accept, then close with a code the client can act on (PROTOCOL.md): 4401 re-authenticate, 4403 no.
            await self.accept()
            await self.close(code=code)
            return
        tenant, user = membership.tenant, membership.user
        self.tenant_id, self.user_id = tenant.pk, user.pk
        self.user_name = user.name
        self.stamp = stamp
        self.conn_id = uuid.uuid4().hex
        self.delivered = 0  # highest seq sent to this client, in order
        # Until the client's first `sync` (or FIRST_SYNC_WAIT without one) live durable frames are buffered: a
        # frame sent before the replay of older ones would arrive out of order.
        self.syncing = True
        self.first_sync = True
        self.buffer: list[events.Frame] = []
        self.deliver_lock = asyncio.Lock()
        self.slow = 0  # durable frames waiting for deliver_lock: later ones queue behind them, in order
        self.tasks: set[asyncio.Task[Any]] = set()
        self.sync_task: asyncio.Task[None] | None = None
        self.first_wait: asyncio.Task[None] | None = None
        self.viewing: set[int] = set()
        # conversation → (last broadcast, expiry timer): a timer, not a task, since clients send a start per keystroke
        self.typing: dict[int, tuple[float, asyncio.TimerHandle]] = {}
        self.activity = False  # subscribed to the tenant's typing and viewers (activity:subscribe)
        # conversation → (when a typing:start last went to the tenant's lists, whether it is still showing there)
        self.activity_typing: dict[int, tuple[float, bool]] = {}
        self.bucket = TokenBucket.full(_setting("WS_RATE_BURST", 40), _setting("WS_RATE_PER_SECOND", 20))
        self.strikes = TokenBucket.full(_setting("WS_RATE_STRIKES", 20), _setting("WS_RATE_STRIKE_DECAY", 1))
        # Join before reading the head: an event committed from here on is above the head or arrives live.
        for group in (events.tenant_group(self.tenant_id), events.user_group(self.user_id)):
            await self._join(group)
        await self.accept()
        allowed, self.delivered = await socket_batch(_handshake_states, database=True)(
            (self.tenant_id, self.user_id, self.stamp)
        )
        self.hello_seq = self.delivered
        if not allowed:  # revoked (or the password changed) while connecting: its notice may predate the join
            await self._shutdown(CLOSE_FORBIDDEN)
            return
        self.authenticated = True
        metrics.OPEN_SOCKETS.inc()
        became_online, online = await self._presence(
            socket_batch(presence.connections_open), (self.tenant_id, self.user_id, self.conn_id)
        ) or (False, None)
        await self._send_frame(
            events.frame(
                "hello",
                {
                    "protocol": 1,
                    "user": {"id": user.pk, "name": user.name, "username": user.username},
                    "tenant": {"id": tenant.pk, "slug": tenant.slug, "name": tenant.name},
                    "role": membership.role,
                    "seq": self.delivered,
                    "server_time": events.now_iso(),
                    "online_user_ids": sorted(online or {self.user_id}),
                    "limits": {
                        "max_frame_bytes": MAX_FRAME_BYTES,
                        "typing_expires_in": int(_setting("TYPING_TTL", 6.0) * 1000),
                    },
                },
                seq=None,
            )
        )
        early, self.early = self.early or [], None
        for message in early:
            await self.hub_deliver(message)
        if became_online:  # to the others: hello told this socket already
            await self._group_ephemeral(
                events.tenant_group(self.tenant_id), events.USER_ONLINE, {"user_id": user.pk}, exclude_self=True
            )
        _sweeper().add(self)
        self.first_wait = asyncio.create_task(self._live_without_sync())

    async def disconnect(self, code: int) -> None:
        if not getattr(self, "authenticated", False):
            return
        self.authenticated = False
        metrics.OPEN_SOCKETS.dec()
        _sweeper().discard(self)
        for _, expiry in self.typing.values():
            expiry.cancel()
        tasks = [self.sync_task, self.first_wait, *self.tasks]
        for task in tasks:
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        try:
            for conversation_id in list(self.typing):
                await self._typing_broadcast(conversation_id, events.TYPING_STOP)
            for conversation_id in list(self.viewing):
                await self._presence(
                    presence.conversation_unview, self.tenant_id, conversation_id, self.user_id, self.conn_id
                )
                await self._broadcast_viewers(conversation_id)
            await self._presence(socket_batch(presence.connections_drop), (self.tenant_id, self.user_id, self.conn_id))
        except Exception:
            logger.warning("socket clean-up failed", exc_info=True)
        grace = presence.offline_grace()
        if grace <= 0:
            await _settle(self.channel_layer, self.tenant_id, self.user_id, 0)
        else:
            task = asyncio.create_task(_settle(self.channel_layer, self.tenant_id, self.user_id, grace))
            _background.add(task)
            task.add_done_callback(_background.discard)

    # --- client → server --------------------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not getattr(self, "authenticated", False) or self.closing:
            return
        if not self.bucket.take():
            if not self.strikes.take():
                await self._shutdown(CLOSE_ABUSE)
                return
            await self._error("rate_limited", "too many frames; slow down", None)
            return
        if text_data is None:
            await self._error("bad_frame", "binary frames are not supported; send JSON text", None)
            return
        if len(text_data) > MAX_FRAME_BYTES or len(text_data.encode("utf-8", "replace")) > MAX_FRAME_BYTES:
            await self._error("too_large", f"frames are limited to {MAX_FRAME_BYTES} bytes", None)
            return
        try:
            content = json.loads(text_data)
        except (ValueError, RecursionError):  # RecursionError: "[[[[…" nested deeper than the parser goes
            await self._error("bad_json", "the frame is not valid JSON", None)
            return
        if not isinstance(content, dict) or not isinstance(content.get("type"), str):
            await self._error("bad_frame", 'a frame is an object {"type": "...", "data": {...}}', None)
            return
        type_ = content["type"][:64]
        data = content.get("data", {})
        if data is None:
            data = {}
        handler = self.client_handlers.get(type_)
        if handler is None:
            await self._error("unknown_type", f"unknown frame type {type_!r}", type_)
            return
        if not isinstance(data, dict):
            await self._error("bad_data", "data must be an object", type_)
            return
        try:
            await handler(self, data)
        except FrameError as exc:
            await self._error(exc.code, exc.message, type_)
        except Exception:
            # PROTOCOL.md guarantee 5: a frame never takes the socket (or the process) down.
            logger.exception("handling a %s frame failed", type_)
            await self._error("internal", "the frame could not be handled", type_)

    async def on_ping(self, data: dict[str, Any]) -> None:
        await self._send_frame(events.frame("pong", {}, seq=None))

    async def on_sync(self, data: dict[str, Any]) -> None:
        since = _int_field(data, "since", minimum=0)
        if self.sync_task is not None and not self.sync_task.done():
            raise FrameError("sync_in_progress", "a sync is already running; wait for sync:done")
        if self.first_wait is not None:
            self.first_wait.cancel()  # the first sync has come
            self.first_wait = None
        self.syncing = True  # from here live frames are buffered (before the task first runs)
        self.sync_task = asyncio.create_task(self._run_sync(since))

    async def on_conversation_join(self, data: dict[str, Any]) -> None:
        conversation_id = _int_field(data, "conversation_id")
        if conversation_id not in self.viewing:
            if len(self.viewing) >= MAX_JOINED:
                raise FrameError("too_many", f"at most {MAX_JOINED} conversations can be joined at once")
            # Another tenant's id gets the same answer as an unknown one.
            if not await database_sync_to_async(_conversation_exists)(self.tenant_id, conversation_id):
                raise FrameError("not_found", "no such conversation")
            await self._join(events.conversation_group(self.tenant_id, conversation_id))
            self.viewing.add(conversation_id)
        await self._presence(presence.conversation_view, self.tenant_id, conversation_id, self.user_id, self.conn_id)
        await self._broadcast_viewers(conversation_id)

    async def on_conversation_leave(self, data: dict[str, Any]) -> None:
        conversation_id = _int_field(data, "conversation_id")
        if conversation_id not in self.viewing:
            raise FrameError("not_joined", "that conversation was not joined")
        if conversation_id in self.typing:
            self.typing.pop(conversation_id)[1].cancel()
            await self._typing_broadcast(conversation_id, events.TYPING_STOP)
        await self._leave(events.conversation_group(self.tenant_id, conversation_id))
        self.viewing.discard(conversation_id)
        await self._presence(presence.conversation_unview, self.tenant_id, conversation_id, self.user_id, self.conn_id)
        await self._broadcast_viewers(conversation_id)

    async def on_typing_start(self, data: dict[str, Any]) -> None:
        conversation_id = self._joined(data)
        now = time.monotonic()
        last, expiry = self.typing.get(conversation_id, (None, None))
        if expiry is not None:
            expiry.cancel()  # a cancelled timer never fires: only the latest one can expire the indicator
        # Clients send a start per keystroke: rebroadcast at most once per throttle period, but keep it alive.
        if last is None or now - last >= _setting("TYPING_THROTTLE", 2.0):
            await self._typing_broadcast(conversation_id, events.TYPING_START)
            last = now
        expiry = asyncio.get_running_loop().call_later(
            _setting("TYPING_TTL", 6.0), self._typing_expired, conversation_id
        )
        self.typing[conversation_id] = (last, expiry)

    async def on_typing_stop(self, data: dict[str, Any]) -> None:
        conversation_id = self._joined(data)
        if conversation_id in self.typing:
            self.typing.pop(conversation_id)[1].cancel()
            await self._typing_broadcast(conversation_id, events.TYPING_STOP)

    async def on_activity_subscribe(self, data: dict[str, Any]) -> None:
        ids = data.get("conversation_ids", [])
        if (
            not isinstance(ids, list)
            or len(ids) > MAX_SNAPSHOT
            or any(isinstance(i, bool) or not isinstance(i, int) or not 1 <= i <= 2**63 - 1 for i in ids)
        ):
            raise FrameError("bad_data", f"data.conversation_ids must be a list of at most {MAX_SNAPSHOT} ids")
        if not self.activity:
            await self._join(activity_group(self.tenant_id))
            self.activity = True
        # The snapshot is read after joining the group: a change from here on arrives live, so none is missed.
        # Presence is keyed by this socket's tenant: another tenant's id simply has no viewers here.
        viewers = await self._presence(_viewers_of, self.tenant_id, sorted(set(ids))) or {}
        for conversation_id, user_ids in viewers.items():
            if user_ids:
                await self._send_frame(
                    events.frame(
                        CONVERSATION_VIEWERS,
                        {"conversation_id": conversation_id, "user_ids": sorted(user_ids)},
                        seq=None,
                    )
                )

    async def on_activity_unsubscribe(self, data: dict[str, Any]) -> None:
        if self.activity:
            await self._leave(activity_group(self.tenant_id))
            self.activity = False

    async def on_message_read(self, data: dict[str, Any]) -> None:
        conversation_id = _int_field(data, "conversation_id")
        message_id = _int_field(data, "message_id")
        # The service logs message:read, which comes back to every socket of the tenant, this one included.
        await database_sync_to_async(_read)(self.tenant_id, self.user_id, conversation_id, message_id)

    client_handlers: Final = {
        "ping": on_ping,
        "sync": on_sync,
        "conversation:join": on_conversation_join,
        "conversation:leave": on_conversation_leave,
        "typing:start": on_typing_start,
        "typing:stop": on_typing_stop,
        "message:read": on_message_read,
        "activity:subscribe": on_activity_subscribe,
        "activity:unsubscribe": on_activity_unsubscribe,
    }

    # --- channel layer → server ---------------------------------------------------------------------------------

    async def hub_deliver(self, message: dict[str, Any]) -> None:
        """A layer message for this socket, from the process's Hub. Must not wait on anything slow: the hub hands
        the same message to every local socket of the group in turn. Durable frames in order go out at once; the
        rest (a sync running, a gap to fill, a frame already waiting) queue behind this socket's deliver_lock."""
        if self.early is not None:
            if len(self.early) < MAX_BUFFERED:
                self.early.append(message)
            return
        if not self.authenticated or self.closing:
            return
        if message.get("type") != events.LAYER_EVENT:
            self._background(self.dispatch(message))  # inbox.revoke (a database check) and anything else
            return
        if message.get("tenant_id", self.tenant_id) != self.tenant_id:
            return  # belt and braces: groups are per tenant already
        frame: events.Frame = message["frame"]
        seq = frame.get("seq")
        if seq is None:
            if message.get("activity") and (not self.activity or frame["data"].get("conversation_id") in self.viewing):
                return  # a joined conversation's copy comes through its conversation group: one frame, not two
            if message.get("exclude_user") == self.user_id or message.get("exclude_channel") == self.channel_name:
                return  # typing goes to the other viewers, not to the typist's own tabs
            await self._send_text(frame, message)
            return
        if self.syncing:
            if len(self.buffer) < MAX_BUFFERED:
                self.buffer.append(frame)
            # else: dropped here, recovered from the log by the next frame's gap fill or the periodic catch-up
            return
        if seq <= self.delivered:
            return
        if seq == self.delivered + 1 and not self.slow and not self.deliver_lock.locked():
            await self._send_text(frame, message)
            self.delivered = seq
            return
        self.slow += 1
        self._background(self._deliver_slow(frame))

    async def _deliver_slow(self, frame: events.Frame) -> None:
        try:
            async with self.deliver_lock:
                await self._deliver(frame)
        except Disconnected:  # the client went while this frame waited its turn: its disconnect is on its way
            self.closing = True
        finally:
            self.slow -= 1

    async def inbox_event(self, event: dict[str, Any]) -> None:
        """A layer message that came some other way than the hub (kept for direct dispatch)."""
        await self.hub_deliver(event)

    def _background(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def inbox_revoke(self, event: dict[str, Any]) -> None:
        if not getattr(self, "authenticated", False) or self.closing:
            return
        if event.get("tenant_id") not in (None, self.tenant_id):
            return
        # The notice says "look again"; the database (committed before the notice was sent) has the answer.
        if not await database_sync_to_async(_still_allowed)(self.tenant_id, self.user_id, self.stamp):
            await self._shutdown(CLOSE_FORBIDDEN)

    # --- durable delivery ----------------------------------------------------------------------------------------

    async def _deliver(self, frame: events.Frame) -> None:
        """Send one durable frame unless already sent; fill a gap before it from the log. Hold deliver_lock."""
        seq = frame["seq"]
        assert seq is not None
        if seq <= self.delivered:
            return
        if seq > self.delivered + 1:
            await self._replay(upto=seq - 1)
            if seq <= self.delivered:
                return
            if seq > self.delivered + 1:
                logger.warning("tenant %s: seqs %s..%s missing from the log", self.tenant_id, self.delivered + 1, seq)
        await self._send_frame(frame)
        self.delivered = seq

    async def _replay(self, upto: int | None, page: list[events.Frame] | None = None) -> None:
        """Send the log after `delivered` (up to `upto`), a page at a time; `page`: the first one, read already."""
        frames = page
        while True:
            if frames is None:
                frames = await socket_db(_events_after)(self.tenant_id, self.delivered, upto, REPLAY_PAGE)
            for frame in frames:
                if self.closing:
                    return
                await self._send_logged(frame)
                self.delivered = int(frame["seq"] or 0)
            if len(frames) < REPLAY_PAGE:
                return
            frames = None

    async def _drain(self) -> None:
        """Deliver buffered live frames (hold deliver_lock)."""
        while self.buffer:
            frames = sorted(self.buffer, key=lambda f: f["seq"] or 0)
            self.buffer.clear()
            for frame in frames:
                await self._deliver(frame)

    async def _run_sync(self, since: int) -> None:
        try:
            async with self.deliver_lock:
                page: list[events.Frame] | None = None
                if self.first_sync and since == self.hello_seq:
                    # A client resuming from hello's own head (the usual first sync): nothing older to replay, and
                    # what committed since is in the buffer (drained below, gaps filled from the log).
                    gap, head = False, since
                else:
                    # The gap check and the replay's first page in one read (one thread hop, one statement).
                    gap, head, page = await socket_batch(_sync_starts, database=True)(
                        (self.tenant_id, since, REPLAY_PAGE)
                    )
                if gap:
                    await self._error(
                        "sync_gap",
                        "events after that seq are no longer retained: reload over the REST API, then sync from seq",
                        "sync",
                        seq=head,
                    )
                else:
                    # Replay what the client asks for, even if some of it went out on this socket already: a
                    # client that drops a frame must be able to get it back, and clients drop seq <= last seen.
                    self.delivered = since
                    if since < head:  # at the head: what commits from here on arrives live (and is buffered now)
                        await self._replay(upto=None, page=page)
                    await self._drain()
                    await self._send_frame(events.frame("sync:done", {"seq": self.delivered}, seq=None))
                await self._drain()
                self.syncing = False  # no await between the last drain and this: nothing slips past the buffer
                self.first_sync = False
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("sync failed")
            self.syncing = False
            self.first_sync = False
            self.buffer.clear()
            await self._error("internal", "sync failed; retry", "sync")

    async def _live_without_sync(self) -> None:
        """A client that sends no `sync` soon after hello gets live frames from the hello head on."""
        await asyncio.sleep(_setting("WS_FIRST_SYNC_WAIT", 5.0))
        self.first_wait = None  # past this point a sync no longer cancels this task, it waits for the lock
        async with self.deliver_lock:
            if self.first_sync and self.sync_task is None:
                await self._drain()
                self.syncing = False
                self.first_sync = False

    # --- periodic: re-check and catch-up (driven by the process's Sweeper) ------------------------------------

    async def catch_up(self) -> None:
        """Send what the log has beyond what this socket sent (the layer is at-most-once)."""
        async with self.deliver_lock:
            if not self.syncing and not self.closing:
                await self._replay(upto=None)

    # --- helpers ---------------------------------------------------------------------------------------------

    def _joined(self, data: dict[str, Any]) -> int:
        conversation_id = _int_field(data, "conversation_id")
        if conversation_id not in self.viewing:
            raise FrameError("not_joined", "send conversation:join for that conversation first")
        return conversation_id

    def _typing_expired(self, conversation_id: int) -> None:
        """The typist went quiet for TYPING_TTL: the others see the indicator stop (the timer of its last start)."""
        if self.typing.pop(conversation_id, None) is not None and not self.closing:
            self._background(self._typing_broadcast(conversation_id, events.TYPING_STOP))

    async def _typing_broadcast(self, conversation_id: int, type_: str) -> None:
        data: dict[str, Any] = {"conversation_id": conversation_id, "user_id": self.user_id, "name": self.user_name}
        if type_ == events.TYPING_START:
            data["expires_in"] = int(_setting("TYPING_TTL", 6.0) * 1000)
        await self._group_ephemeral(
            events.conversation_group(self.tenant_id, conversation_id), type_, data, exclude_user=self.user_id
        )
        # The tenant's lists: a start at most once per throttle period even across stop/start cycles, and a stop
        # only after a start went out, so each typist costs the whole tenant at most two frames per period.
        now, throttle = time.monotonic(), _setting("TYPING_THROTTLE", 2.0)
        started, shown = self.activity_typing.get(conversation_id, (float("-inf"), False))
        for cid, (at, on) in list(self.activity_typing.items()):
            if not on and now - at >= throttle:
                del self.activity_typing[cid]  # nothing left to throttle or to stop
        if type_ == events.TYPING_START:
            if now - started < throttle:
                return
            self.activity_typing[conversation_id] = (now, True)
        else:
            if not shown:
                return
            self.activity_typing[conversation_id] = (started, False)
        await self._group_ephemeral(
            activity_group(self.tenant_id), type_, data, exclude_user=self.user_id, activity=True
        )

    async def _broadcast_viewers(self, conversation_id: int) -> None:
        viewers = await self._presence(presence.conversation_viewer_ids, self.tenant_id, conversation_id)
        data = {"conversation_id": conversation_id, "user_ids": sorted(viewers or ())}
        await self._group_ephemeral(
            events.conversation_group(self.tenant_id, conversation_id), CONVERSATION_VIEWERS, data
        )
        await self._group_ephemeral(activity_group(self.tenant_id), CONVERSATION_VIEWERS, data, activity=True)

    async def _group_ephemeral(
        self,
        group: str,
        type_: str,
        data: dict[str, Any],
        *,
        exclude_user: int | None = None,
        exclude_self: bool = False,
        activity: bool = False,
    ) -> None:
        message: dict[str, Any] = {
            "type": events.LAYER_EVENT,
            "tenant_id": self.tenant_id,
            "frame": events.frame(type_, data, seq=None),
        }
        if activity:
            message["activity"] = True
        if exclude_user is not None:
            message["exclude_user"] = exclude_user
        if exclude_self:
            message["exclude_channel"] = self.channel_name
        try:
            await events.publish(self.channel_layer, group, [message])
        except Exception:
            logger.warning("channel layer send to %s failed", group, exc_info=True)

    async def _presence(self, func: Any, *args: Any) -> Any:
        """Presence calls block on Redis: run them off the event loop, outside Django's DB thread (a SocketBatch
        does that itself, for many sockets at once)."""
        try:
            if isinstance(func, SocketBatch):
                return await func(*args)
            # In a copy of the context that is not copied back: see socket_db.
            return await sync_to_async(func, thread_sensitive=False, context=contextvars.copy_context())(*args)
        except Exception:
            logger.warning("presence store unavailable", exc_info=True)
            return None

    async def _send_frame(self, frame: events.Frame | dict[str, Any]) -> None:
        if self.closing:
            return
        await self.base_send({"type": "websocket.send", "text": _encode(frame)})
        self._sent(frame)

    async def _send_logged(self, frame: events.Frame) -> None:
        """_send_frame for a frame read from the log: its JSON text is encoded once per process, not per socket."""
        if self.closing:
            return
        await self.base_send({"type": "websocket.send", "text": _logged_frames.text(self.tenant_id, frame)})
        self._sent(frame)

    async def _send_text(self, frame: events.Frame, message: dict[str, Any]) -> None:
        """_send_frame for a frame the hub hands to many sockets: encoded once, kept on the shared message."""
        if self.closing:
            return
        text = message.get("_text")
        if text is None:
            text = message["_text"] = _encode(frame)
        try:
            await self.base_send({"type": "websocket.send", "text": text})
        except Disconnected:  # the client has gone; the server's disconnect message is on its way
            self.closing = True
            return
        self._sent_shared(frame, message)

    def _sent(self, frame: events.Frame | dict[str, Any]) -> None:
        _count_frame(frame["type"])
        if frame.get("seq") is not None and getattr(self, "syncing", True) is False:
            # Live durable frames only (a replay's age is not latency): from the event's write to this send.
            metrics.observe_delivery(frame.get("ts"))

    def _sent_shared(self, frame: events.Frame, message: dict[str, Any]) -> None:
        """_sent for a frame many sockets get: its write time is parsed once (kept on the shared message)."""
        _count_frame(frame["type"])
        if frame.get("seq") is not None and self.syncing is False:
            written = message.get("_written")
            if written is None:
                written = message["_written"] = metrics.written_at(frame.get("ts"))
            metrics.observe_since(written)

    async def _error(self, code: str, message: str, ref: str | None, **extra: Any) -> None:
        await self._send_frame(events.frame("error", {"code": code, "message": message, "ref": ref, **extra}, seq=None))

    async def _shutdown(self, code: int) -> None:
        """Close now and send nothing more (revocation, abuse)."""
        if self.closing:
            return
        self.closing = True
        await self.close(code=code)
        await self._leave_all()


class Sweeper:
    """One per server process (event loop): re-checks every local socket with two queries per tenant.

    Every WS_RECHECK_SECONDS it closes (4403) the sockets whose user is no longer an active member or has changed
    password since the socket authenticated, the hard bound for revocation should a revoke notice be lost (or the
    change bypass signals), and makes sockets behind the log head catch up, should the
    channel layer have dropped a frame. One query per socket would cost thousands of queries a second.
    """

    def __init__(self) -> None:
        self.sockets: set[InboxConsumer] = set()
        self.task: asyncio.Task[None] | None = None
        self.heartbeat_task: asyncio.Task[None] | None = None
        self.spawned: set[asyncio.Task[None]] = set()

    def add(self, socket: InboxConsumer) -> None:
        self.sockets.add(socket)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run())
        if self.heartbeat_task is None or self.heartbeat_task.done():
            self.heartbeat_task = asyncio.create_task(self._heartbeat())

    def discard(self, socket: InboxConsumer) -> None:
        self.sockets.discard(socket)
        if not self.sockets:
            for task in (self.task, self.heartbeat_task):
                if task is not None:
                    task.cancel()
            self.task = self.heartbeat_task = None

    async def _heartbeat(self) -> None:
        """Presence heartbeat of every local socket (and the conversations each views) in one store round trip,
        then a reap of each tenant's lapsed sockets (a dead process's users go offline without celery beat).

        One task per process instead of one per socket: per-socket heartbeats cost 8-10 % of a core per 1,000
        idle sockets (docs/performance.md).
        """
        while self.sockets:
            interval = presence.heartbeat_interval()
            await asyncio.sleep(interval * 0.9)
            try:
                await self.heartbeat(interval)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("presence heartbeat failed", exc_info=True)

    async def heartbeat(self, interval: float) -> None:
        def beat(s: InboxConsumer) -> tuple[InboxConsumer, presence.SocketBeat] | None:
            if not s.authenticated or s.closing:
                return None
            return s, (s.tenant_id, s.user_id, s.conn_id, tuple(s.viewing))

        live = await _in_steps(self.sockets, beat)
        became = await sync_to_async(presence.heartbeat_many, thread_sensitive=False)([b for _, b in live])
        by_tenant = {s.tenant_id: s for s, _ in live}  # any local socket of the tenant can publish to its group
        for tenant_id, user_id in became:
            await by_tenant[tenant_id]._group_ephemeral(
                events.tenant_group(tenant_id), events.USER_ONLINE, {"user_id": user_id}
            )
        for tenant_id, socket in by_tenant.items():
            if _reap_due(tenant_id, interval):
                gone = await sync_to_async(presence.tenant_reap, thread_sensitive=False)(tenant_id)
                for user_id in gone:
                    await socket._group_ephemeral(
                        events.tenant_group(tenant_id), events.USER_OFFLINE, {"user_id": user_id}
                    )

    async def _run(self) -> None:
        while self.sockets:
            await asyncio.sleep(_setting("WS_RECHECK_SECONDS", 30.0))
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("socket re-check failed", exc_info=True)

    async def sweep(self) -> None:
        live = await _in_steps(self.sockets, lambda s: s if s.authenticated and not s.closing else None)
        if not live:
            return
        users: dict[int, set[int]] = {}
        for socket in live:
            users.setdefault(socket.tenant_id, set()).add(socket.user_id)
        states = await database_sync_to_async(_tenant_states)(users)

        def verdict(socket: InboxConsumer) -> tuple[InboxConsumer, int] | None:
            allowed, head = states[socket.tenant_id]
            if allowed.get(socket.user_id) != socket.stamp:
                self._spawn(socket._shutdown(CLOSE_FORBIDDEN))
            elif head > socket.delivered:
                return socket, head
            return None

        behind = await _in_steps(live, verdict)
        if not behind:
            return
        # Events at or below the head may still be on their way (a fan-out to thousands of sockets takes a while):
        # only a socket still behind after a grace period missed one. Catching up the others would cost a query
        # each for frames that arrive anyway.
        await asyncio.sleep(min(2.0, _setting("WS_RECHECK_SECONDS", 30.0) * 0.25))
        for socket, head in behind:
            if head > socket.delivered and not socket.syncing and socket.authenticated and not socket.closing:
                self._spawn(socket.catch_up())

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self.spawned.add(task)
        task.add_done_callback(self.spawned.discard)


T = TypeVar("T")
R = TypeVar("R")
WALK_STEP = 1000  # sockets a periodic walk looks at before it lets the event loop run


async def _in_steps(items: Iterable[T], func: Callable[[T], R | None]) -> list[R]:
    """func over a snapshot of items, without the Nones, yielding to the event loop every WALK_STEP items: a walk
    over 15,000 held sockets in one go held the loop for 10-40 ms (bench M7's probe)."""
    snapshot = list(items)
    out: list[R] = []
    for start in range(0, len(snapshot), WALK_STEP):
        if start:
            await asyncio.sleep(0)
        for item in snapshot[start : start + WALK_STEP]:
            result = func(item)
            if result is not None:
                out.append(result)
    return out


_sweepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Sweeper] = weakref.WeakKeyDictionary()


def _sweeper() -> Sweeper:
    loop = asyncio.get_running_loop()
    if loop not in _sweepers:
        _sweepers[loop] = Sweeper()
    return _sweepers[loop]


def _tenant_states(users: dict[int, set[int]]) -> dict[int, tuple[dict[int, str], int]]:
    """For each tenant: which of these users are still active members (with their credential stamps), and the head."""
    return {
        tenant_id: (_allowed_stamps(tenant_id, user_ids), _head(tenant_id)) for tenant_id, user_ids in users.items()
    }


async def _settle(layer: Any, tenant_id: int, user_id: int, delay: float) -> None:
    """After the grace period, announce the user offline if no socket of theirs is left on any process."""
    if delay > 0:
        await asyncio.sleep(delay)
    try:
        if await socket_batch(presence.users_settle)((tenant_id, user_id)):
            message = {
                "type": events.LAYER_EVENT,
                "tenant_id": tenant_id,
                "frame": events.frame(events.USER_OFFLINE, {"user_id": user_id}, seq=None),
            }
            await events.publish(layer, events.tenant_group(tenant_id), [message])
    except Exception:
        logger.warning("presence settle failed", exc_info=True)
