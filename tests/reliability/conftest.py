"""Fixtures for fault tests: a private PostgreSQL cluster (one per session, a fresh database per test cloned from a
migrated template) and a private Redis per test. Nothing here touches the shared services on 5432/6379.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.reliability._procs import (
    PostgresCluster,
    ProcError,
    RedisServer,
    Stack,
    app_env,
    migrate,
    seed,
    services_available,
)

_db_names = itertools.count(1)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    missing = services_available()
    if missing:
        if "1" in (os.environ.get("REQUIRE_FAULTS"), os.environ.get("REQUIRE_SERVICES")):  # CI: fail, never skip
            pytest.fail(f"fault tests need local binaries: {missing}")
        pytest.skip(f"fault tests need local binaries: {missing}")
    cluster = PostgresCluster().init().start()
    try:
        cluster.psql("CREATE DATABASE tpl")
        migrate(app_env(database_url=cluster.url("tpl"), redis_url="", prefix="tpl"))
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def stack_factory(pg_cluster: PostgresCluster) -> Iterator[Callable[..., Stack]]:
    made: list[Stack] = []

    def make(**env_extra: str) -> Stack:
        db = f"t{os.getpid()}_{next(_db_names)}"
        pg_cluster.psql(f"CREATE DATABASE {db} TEMPLATE tpl")
        redis = RedisServer().start()
        graph_token = env_extra.pop("SEED_GRAPH_TOKEN", "")
        env = app_env(
            database_url=pg_cluster.url(db), redis_url=redis.url, prefix=f"hF{uuid.uuid4().hex[:8]}", **env_extra
        )
        stack = Stack(pg=pg_cluster, db=db, redis=redis, env=env, data={})
        made.append(stack)  # before seeding: a failed seed still gets its Redis and database cleaned up
        stack.data = seed(env, graph_token=graph_token)
        return stack

    yield make
    for stack in made:
        for proc in reversed(stack.procs):
            proc.stop()
        stack.redis.stop()
        try:
            if not (pg_cluster.data / "postmaster.pid").exists():
                pg_cluster.start()  # a test stopped it and failed before restarting it
            pg_cluster.psql(f"DROP DATABASE IF EXISTS {stack.db} WITH (FORCE)")
        except ProcError:
            pass
