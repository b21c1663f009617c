"""One Redis connection pool per process for Django's cache.

Django keeps a cache object per request context (asgiref Local) under ASGI, and each RedisCache object builds its
own connection pool, so every request opened a new Redis connection for the DRF throttles (found by the M1
benchmark). This pool class hands every cache object the same pool for the same URL and options.
"""

from __future__ import annotations

import threading
from typing import Any

import redis

_pools: dict[tuple[str, str], redis.ConnectionPool] = {}
_lock = threading.Lock()


class SharedConnectionPool(redis.ConnectionPool):
    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> redis.ConnectionPool:  # type: ignore[override]
        key = (url, repr(sorted(kwargs.items())))
        with _lock:
            pool = _pools.get(key)
            if pool is None:
                pool = _pools[key] = redis.ConnectionPool.from_url(url, **kwargs)
            return pool
