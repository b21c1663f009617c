"""The Celery app. Tasks are enqueued after commit and acknowledged late so a killed worker's task runs again."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.backends.base import DisabledBackend
from celery.signals import task_postrun, task_prerun, worker_init
from kombu.transport import redis as kombu_redis

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


class _KeptClientChannel(kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel, publishing through one redis-py client per channel instead of a new one per message.

    kombu builds `redis.Redis(connection_pool=...)` for every publish (conn_or_acquire -> _create_client), and
    redis-py's constructor fills a table of ~170 response callbacks each time: about a third of the CPU of an
    enqueue on commit. A client object holds no connection of its own (they come from the channel's pool per
    command), so one per channel is the same thing without the rebuild. Channels are not shared between threads
    (Celery's producer pool lends each to one publisher at a time).
    """

    _kept_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        if self._kept_client is None:
            self._kept_client = super()._create_client(asynchronous=False)
        return self._kept_client


class RedisTransport(kombu_redis.Transport):  # type: ignore[misc]
    """The Redis transport with _KeptClientChannel (settings: CELERY_BROKER_TRANSPORT)."""

    Channel = _KeptClientChannel


class InboxCelery(Celery):  # type: ignore[misc]
    """Celery, with one result backend per process while results are disabled (ours are: nothing reads a result).

    Celery keeps its result backend per thread (a real one may hold a connection that threads must not share), and
    every apply_async reads it (for the AsyncResult it returns). Under Daphne every request's sync code runs in a
    thread of its own (Django's ASGIHandler enters a new ThreadSensitiveContext per request), so each request that
    enqueued a task looked the backend up again (an importlib.metadata entry-point scan) and built it (a dozen
    settings reads): about a fifth of the webhook view's CPU. The disabled backend holds no state to share.
    """

    _shared_backend: Any = None

    @property
    def backend(self) -> Any:
        shared = self._shared_backend
        if shared is not None:
            return shared
        backend = super().backend
        if isinstance(backend, DisabledBackend):
            self._shared_backend = backend
        return backend


app = InboxCelery("inbox")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.autodiscover_tasks(related_name="maintenance")


@worker_init.connect
def tune_gc(**_: object) -> None:
    """The start-up heap frozen and short young collections, as in Daphne (config/gctune.py). In the pool's parent,
    before it forks: the children inherit it (and share those pages copy-on-write)."""
    from config.gctune import tune_after_startup

    tune_after_startup()


@worker_init.connect
def serve_worker_metrics(**_: object) -> None:
    """Expose the worker's Prometheus metrics (send failures, webhook lag: they happen here, not in Daphne) on
    WORKER_METRICS_PORT when it is set. With a prefork pool, also set PROMETHEUS_MULTIPROC_DIR (an empty directory
    per worker) so that the pool's child processes, where tasks run, are counted; `--pool solo`/`threads` needs
    nothing more."""
    port = os.environ.get("WORKER_METRICS_PORT")
    if not port:
        return
    from prometheus_client import CollectorRegistry, start_http_server

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        start_http_server(int(port), registry=registry)
    else:
        start_http_server(int(port))


@task_prerun.connect
@task_postrun.connect
def return_connections(task: Any = None, **_: object) -> None:
    """Around every task, Django's request rule for database connections: one that is broken or past CONN_MAX_AGE
    is closed (with Django's pool, CONN_MAX_AGE is 0: handed back to the pool, which keeps it open). This replaces
    the per-task close of Celery's Django fixup, which with a prefork pool closed the whole connection pool after each
    task (settings.CELERY_DB_REUSE_MAX). Eager tasks run inside their caller's connection and are left alone."""
    if task is not None and getattr(task.request, "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()
