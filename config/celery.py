"""The Celery app. Tasks are enqueued after commit and acknowledged late so a killed worker's task runs again."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("inbox")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.autodiscover_tasks(related_name="maintenance")


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
