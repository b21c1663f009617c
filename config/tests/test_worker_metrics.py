"""The Celery worker serves its own metrics: a dead send's counter is where the alert (check 15) can see it."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from config import metrics
from config.celery import serve_worker_metrics


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_worker_serves_send_failures_on_its_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()
    monkeypatch.setenv("WORKER_METRICS_PORT", str(port))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    serve_worker_metrics()
    metrics.SEND_FAILURES.labels(code="131049").inc()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    assert 'inbox_send_failures_total{code="131049"}' in body


def test_no_port_no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    import prometheus_client

    started: list[object] = []
    monkeypatch.setattr(prometheus_client, "start_http_server", lambda *a, **k: started.append(a))
    monkeypatch.delenv("WORKER_METRICS_PORT", raising=False)
    serve_worker_metrics()
    assert started == []
