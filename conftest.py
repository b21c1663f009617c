"""Project-wide test set-up: fast hashing, Celery inline, services required in CI, two tenants always."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator

import pytest
from django.conf import settings

from config.celery import app as celery_app


def pytest_configure(config: pytest.Config) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Tests run tasks inline unless a test starts a real worker; the broker path is covered by its own tests.
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = True
    # The sandbox's delayed status ticks and send retries run inline (or wait for the sweeper), never in threads.
    settings.WHATSAPP_BACKGROUND_TIMERS = False
    if os.environ.get("REQUIRE_SERVICES") == "1":
        # CI: a missing service fails the run; nothing silently falls back to SQLite or the in-memory layer.
        missing = [name for name in ("DATABASE_URL", "REDIS_URL") if not os.environ.get(name)]
        if missing:
            raise pytest.UsageError(f"REQUIRE_SERVICES=1 but {', '.join(missing)} not set")
        if not settings.USING_POSTGRES:
            raise pytest.UsageError("REQUIRE_SERVICES=1 needs DATABASE_URL to point at PostgreSQL")
        import redis

        try:
            redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3).ping()
        except redis.RedisError as exc:
            raise pytest.UsageError(f"Redis at REDIS_URL is unreachable: {exc}") from exc


@pytest.fixture(autouse=True)
def _media_root(tmp_path_factory: pytest.TempPathFactory, settings) -> Iterator[None]:  # type: ignore[no-untyped-def]
    settings.MEDIA_ROOT = tmp_path_factory.mktemp("media")
    yield


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):  # type: ignore[no-untyped-def]
    """Close the psycopg pool before the test database is dropped (pooled connections would keep it busy), after
    the threads that keep a connection between calls have handed theirs back: the sockets' database threads, and
    asgiref's one thread for sync code called from async tests without a request around it (a ticket minted there
    kept a session open until the drop: "database ... is being accessed by other users").

    Only a pool that exists is closed: Django's `pool` property builds one when there is none, and a pool built at
    teardown starts opening connections that its close may leave behind."""
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    from inbox.consumers import socket_db_restart

    with django_db_blocker.unblock():
        socket_db_restart()
        SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=30)
        for conn in connections.all():
            if conn.alias in getattr(conn, "_connection_pools", {}):
                conn.close_pool()


@pytest.fixture
def require_postgres() -> None:
    """Concurrency tests need PostgreSQL's row locks: they fail (not skip) without it when CI demands services."""
    if not settings.USING_POSTGRES:
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail("PostgreSQL is required in CI")
        pytest.skip("needs PostgreSQL (set DATABASE_URL); CI runs it")


@pytest.fixture
def require_redis() -> None:
    if not settings.REDIS_URL:
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail("Redis is required in CI")
        pytest.skip("needs Redis (set REDIS_URL); CI runs it")


from inbox.tests.fixtures import *  # noqa: E402,F403


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests that ask for a service carry its marker, so the embedded-default run can deselect them (not skip).
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "require_postgres" in fixtures:
            item.add_marker(pytest.mark.postgres)
        if "require_redis" in fixtures:
            item.add_marker(pytest.mark.redis)


# --- No credential ever reaches a log line ------------------------------------------------------------------------
# Every record logged during the suite is formatted with the production formatter and scanned at the end: a JWT,
# an unredacted ticket/token query parameter or a bearer token fails the run.
_LOG_LINES: list[str] = []
_SECRET_IN_LOG = re.compile(
    r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # a JWT
    r"|ticket=(?!\[redacted\])[A-Za-z0-9_-]{8,}"  # a WebSocket ticket in a URL
    r"|Bearer\s+(?!\[redacted\])[A-Za-z0-9._~+/=-]{8,}"
)


class _CollectingHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            _LOG_LINES.append(self.format(record))
        except Exception:  # a broken record is not our concern here
            pass


def pytest_sessionstart(session: pytest.Session) -> None:
    from config.observability import ContextFilter, JsonFormatter

    handler = _CollectingHandler(level=logging.DEBUG)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    logging.getLogger().addHandler(handler)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaks = [line for line in _LOG_LINES if _SECRET_IN_LOG.search(line)]
    if leaks:
        sys.stderr.write("\nCREDENTIALS FOUND IN LOG LINES:\n" + "\n".join(leaks[:10]) + "\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
