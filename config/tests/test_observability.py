from __future__ import annotations

import json
import logging

import pytest
from django.test import Client

from config.observability import ContextFilter, JsonFormatter, redact
from tenants.scoping import tenant_scope


@pytest.mark.django_db
def test_healthz_and_readyz_answer(client: Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"] == "ok"


@pytest.mark.django_db
def test_readyz_checks_redis_when_configured(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"].startswith("error")


@pytest.mark.django_db
def test_every_response_carries_a_request_id(client: Client) -> None:
    assert len(client.get("/healthz")["X-Request-ID"]) == 32
    assert client.get("/healthz", HTTP_X_REQUEST_ID="abc-123")["X-Request-ID"] == "abc-123"
    assert client.get("/healthz", HTTP_X_REQUEST_ID="bad id\n")["X-Request-ID"] != "bad id\n"


@pytest.mark.django_db
def test_metrics_are_exposed_to_local_scrapers_and_guarded_by_a_token(client: Client, settings) -> None:  # type: ignore[no-untyped-def]
    body = client.get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    assert "inbox_open_sockets" in body and "inbox_events_sent_total" in body
    settings.METRICS_TOKEN = "scrape-me"
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me").status_code == 200


def test_json_log_lines_carry_tenant_and_request_ids_and_never_secrets() -> None:
    record = logging.LogRecord(
        "x",
        logging.INFO,
        __file__,
        1,
        "GET /ws/?ticket=%s Authorization: Bearer %s",
        ("T0PSECRET", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"),
        None,
    )
    with tenant_scope(42):
        ContextFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["tenant_id"] == 42
    assert "T0PSECRET" not in line["message"] and "eyJ" not in line["message"]


@pytest.mark.parametrize(
    "text",
    [
        '{"password": "hunter2"}',
        "access_token=EAAGabc123",
        '{"refresh": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"}',
        "app_secret=hunter2",
    ],
)
def test_redaction(text: str) -> None:
    out = redact(text)
    assert "hunter2" not in out and "EAAGabc123" not in out and "c2lnbmF0dXJl" not in out


@pytest.mark.django_db
def test_webhooks_are_counted_by_signature_verdict(client: Client, world) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client import REGISTRY

    before = REGISTRY.get_sample_value("inbox_webhooks_received_total", {"signature": "missing"}) or 0
    response = client.post("/webhooks/whatsapp/", data=b"{}", content_type="application/json")
    assert response.status_code == 403
    assert REGISTRY.get_sample_value("inbox_webhooks_received_total", {"signature": "missing"}) == before + 1


def test_cache_objects_share_one_redis_pool_per_process(settings) -> None:  # type: ignore[no-untyped-def]
    """Under ASGI each request context gets its own cache object; they must not each open Redis connections."""
    from django.core.cache.backends.redis import RedisCache

    options = {"pool_class": "config.redis_pool.SharedConnectionPool"}
    first = RedisCache("redis://127.0.0.1:6379/15", {"OPTIONS": options})
    second = RedisCache("redis://127.0.0.1:6379/15", {"OPTIONS": options})
    assert first._cache._get_connection_pool(True) is second._cache._get_connection_pool(True)
    other_db = RedisCache("redis://127.0.0.1:6379/14", {"OPTIONS": options})
    assert other_db._cache._get_connection_pool(True) is not first._cache._get_connection_pool(True)
