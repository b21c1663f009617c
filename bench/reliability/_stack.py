"""A fault-test world outside pytest: a private PostgreSQL cluster and Redis, migrated and seeded (tests/reliability)."""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.reliability._procs import (  # noqa: E402
    PostgresCluster,
    RedisServer,
    Stack,
    app_env,
    migrate,
    seed,
    services_available,
)


@contextlib.contextmanager
def private_stack(**env_extra: str) -> Iterator[Stack]:
    """Everything on free ports, torn down at the end whatever happens (never the shared 5432/6379)."""
    missing = services_available()
    if missing:
        raise SystemExit(f"needs local binaries: {missing}")
    cluster = PostgresCluster().init().start()
    redis = RedisServer().start()
    stack: Stack | None = None
    try:
        cluster.psql("CREATE DATABASE bench")
        env = app_env(
            database_url=cluster.url("bench"),
            redis_url=redis.url,
            prefix=f"bench{uuid.uuid4().hex[:6]}",
            **env_extra,
        )
        migrate(env)
        stack = Stack(pg=cluster, db="bench", redis=redis, env=env, data=seed(env))
        yield stack
    finally:
        if stack is not None:
            for proc in reversed(stack.procs):
                proc.stop()
        redis.stop()
        cluster.destroy()
