"""Who may call a tenant route: resolved on every request from the database, never from token claims.

`/api/tenants/<slug>/...` resolves <slug> to the requesting user's ACTIVE membership each time, so removing a member
or deactivating a user takes effect on the very next request. An unknown tenant and a tenant the user is not a
member of both answer 404 (no oracle for which tenants exist). Admin-only actions answer 403 to agents.
`TenantApiView` then runs the handler inside the tenant's scope (tenants/scoping.py).
"""

from __future__ import annotations

import functools
import secrets
from contextlib import ExitStack
from typing import Any, ClassVar

from django.conf import settings
from django.core.cache import DEFAULT_CACHE_ALIAS, BaseCache, caches
from django.core.cache import cache as default_cache
from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from rest_framework import exceptions
from rest_framework.parsers import JSONParser
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle, SimpleRateThrottle
from rest_framework.views import APIView

from accounts.authentication import PREFETCHED_MEMBERSHIP
from inbox.api_errors import PayloadTooLarge
from tenants.models import Membership, Tenant
from tenants.scoping import tenant_scope
from tenants.selectors import membership_get


class TenantMember(BasePermission):
    """The user is an active member of the tenant in the URL; sets request.membership and request.tenant."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        if not user or not user.is_authenticated:
            return False
        slug = str(view.kwargs.get("tenant_slug", ""))
        prefetched = getattr(request, PREFETCHED_MEMBERSHIP, None)
        if prefetched is not None and prefetched[0] == slug and prefetched[1] is user:
            membership = prefetched[2] if user.is_active else None  # read with the user by the authentication
        else:
            membership = membership_get(user=user, tenant_slug=slug)  # type: ignore[arg-type]
        if membership is None:
            raise exceptions.NotFound()  # same answer as an unknown tenant
        request.membership = membership  # type: ignore[attr-defined]
        request.tenant = membership.tenant  # type: ignore[attr-defined]
        return True


class TenantAdminForMethods(BasePermission):
    """Admins and owners only, for the HTTP methods the view lists in `admin_methods`."""

    message = "Only admins of this tenant can do this."

    def has_permission(self, request: Request, view: APIView) -> bool:
        admin_methods: frozenset[str] = getattr(view, "admin_methods", frozenset())
        if request.method not in admin_methods:
            return True
        membership: Membership | None = getattr(request, "membership", None)
        return membership is not None and membership.is_admin


class _KeptClientRedisCacheClient(RedisCacheClient):
    """Django's Redis cache client, handing out one redis-py client per connection pool instead of a new one per
    call: redis-py's constructor (a table of ~170 response callbacks) cost more CPU than the GET or SET it served.
    A redis-py client is thread-safe (each command takes a connection from the pool), so one can serve every
    thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kept: dict[Any, Any] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        pool = self._get_connection_pool(write)
        client = self._kept.get(pool)
        if client is None:
            client = self._kept.setdefault(pool, super().get_client(key, write=write))
        return client


@functools.cache
def _process_cache() -> BaseCache:
    cache = caches.create_connection(DEFAULT_CACHE_ALIAS)
    if isinstance(cache, RedisCache) and cache._class is RedisCacheClient:
        cache._class = _KeptClientRedisCacheClient  # RedisCache's own extension point, before its first use
    return cache


# DRF's history throttle, kept in Redis as a sorted set and judged in one atomic script: the timestamps of the
# requests allowed in the last `window` seconds, oldest first. Returns nil when this request is allowed (and
# recorded), else the oldest timestamp still in the window (the caller's Retry-After is when it leaves).
_SLIDING_WINDOW = """
local key, now, window, limit = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
if redis.call('ZCARD', key) >= limit then
  return redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]
end
redis.call('ZADD', key, now, ARGV[4])
redis.call('EXPIRE', key, math.ceil(window))
return false
"""


@functools.cache
def _sliding_window_script() -> Any | None:
    """The registered script on the process cache's kept redis-py client; None when the cache is not Redis."""
    cache = _process_cache()
    if not isinstance(cache, RedisCache):
        return None
    return cache._cache.get_client(write=True).register_script(_SLIDING_WINDOW)


class MethodScopedRateThrottle(ScopedRateThrottle):
    """ScopedRateThrottle for the methods in the view's `throttle_methods` only (sends, not reads of the same URL).

    With Redis as the cache, the same sliding window is judged by one script (_SLIDING_WINDOW): one round trip
    instead of DRF's GET and SET of the pickled history, and atomic, so concurrent requests on several processes
    cannot both read a history with one slot left and both pass (DRF's read-modify-write can)."""

    @property
    def cache(self) -> BaseCache:  # type: ignore[override]
        """The default cache, through one object per process. Django keeps a cache object per request context, so
        under ASGI every request built a new RedisCache and client for its two throttle round trips; the object
        holds no per-request state (the connection pool is shared anyway: config/redis_pool.py), and with Redis it
        keeps its redis-py client too (_KeptClientRedisCacheClient). A cache put on SimpleRateThrottle instead of
        the default (tests isolating their counters) is used as it is."""
        configured = SimpleRateThrottle.cache
        return _process_cache() if configured is default_cache else configured

    def allow_request(self, request: Request, view: APIView) -> bool:
        methods: frozenset[str] | None = getattr(view, "throttle_methods", None)
        if methods is not None and request.method not in methods:
            return True
        script = _sliding_window_script() if SimpleRateThrottle.cache is default_cache else None
        if script is None:
            return super().allow_request(request, view)
        self.scope = getattr(view, self.scope_attr, None)  # what ScopedRateThrottle.allow_request resolves first
        if not self.scope:
            return True
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        self.now = self.timer()
        oldest = script(
            keys=[self.cache.make_and_validate_key(self.key)],
            args=[repr(self.now), self.duration, self.num_requests, f"{self.now!r}:{secrets.token_hex(6)}"],
        )
        self._oldest = None if oldest is None else float(oldest)
        return self._oldest is None

    def wait(self) -> float | None:
        oldest: float | None = getattr(self, "_oldest", None)
        if oldest is None:
            return super().wait()
        return max(0.0, oldest + self.duration - self.now)


class JsonApiView(APIView):
    """JSON in, JSON out (no browsable HTML API). A body larger than `max_body_bytes` answers 413 unread."""

    renderer_classes = [JSONRenderer]
    parser_classes = [JSONParser]

    def max_body_bytes(self) -> int:
        # Django enforces DATA_UPLOAD_MAX_MEMORY_SIZE on request.body, but DRF's parsers read the stream instead.
        return int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 2_621_440)

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > self.max_body_bytes():
            raise PayloadTooLarge()
        super().initial(request, *args, **kwargs)


class TenantApiView(JsonApiView):
    """Base of every /api/tenants/<slug>/ view: membership checked per request, handler run in the tenant scope."""

    permission_classes = [IsAuthenticated, TenantMember, TenantAdminForMethods]
    admin_methods: ClassVar[frozenset[str]] = frozenset()

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # authenticates, resolves the membership, throttles
        self._scope = ExitStack()
        self._scope.enter_context(tenant_scope(self.tenant.pk))

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        try:
            return super().finalize_response(request, response, *args, **kwargs)
        finally:
            scope: ExitStack | None = getattr(self, "_scope", None)
            if scope is not None:
                scope.close()
                self._scope = None  # type: ignore[assignment]

    @property
    def tenant(self) -> Tenant:
        return self.request.tenant  # type: ignore[attr-defined, no-any-return]

    @property
    def membership(self) -> Membership:
        return self.request.membership  # type: ignore[attr-defined, no-any-return]
