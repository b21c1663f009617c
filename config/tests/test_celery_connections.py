"""A worker's tasks hand their database connection back to Django's pool, and a prefork child keeps its pool: Celery's
Django fixup used to close the whole pool after every task (a new PostgreSQL connection per task, bench M2)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from celery.fixups.django import DjangoWorkerFixup
from django.conf import settings
from django.db import connection

from config.celery import app, return_connections


def _task(*, eager: bool) -> Any:
    return SimpleNamespace(request=SimpleNamespace(is_eager=eager))


def test_the_fixup_recycles_connections_only_every_so_many_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    fixup = DjangoWorkerFixup(app)
    fixup.worker = SimpleNamespace(pool_cls="celery.concurrency.prefork:TaskPool")
    closed: list[bool] = []
    monkeypatch.setattr(fixup, "_close_database", lambda: closed.append(True))
    assert fixup.db_reuse_max == settings.CELERY_DB_REUSE_MAX >= 100
    for _ in range(100):
        fixup.close_database()  # what its task_prerun / task_postrun handlers call
    assert closed == []


@pytest.mark.django_db(transaction=True)
def test_a_task_hands_its_connection_back_and_an_eager_one_keeps_it() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    raw = connection.connection
    assert raw is not None

    return_connections(task=_task(eager=True))  # runs inside its caller's connection (and transaction)
    assert connection.connection is raw

    return_connections(task=_task(eager=False))  # past CONN_MAX_AGE (0 with the pool): back to the pool or closed
    assert connection.connection is None
    with connection.cursor() as cursor:  # the next task gets one again
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
