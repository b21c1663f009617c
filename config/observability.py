"""Request ids, JSON logs with request and tenant ids, health checks and the metrics endpoint."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from django_scopes import get_scope

from config import metrics

request_id_var: ContextVar[str] = ContextVar("request_id", default="")
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Anything that looks like a credential is masked before a log line is written.
_SECRET_PATTERNS = [
    (re.compile(r"(ticket=)[^&\s\"']+", re.I), r"\1[redacted]"),
    (re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I), r"\1[redacted]"),
    (re.compile(r"(access_token=)[^&\s\"']+", re.I), r"\1[redacted]"),
    (
        re.compile(
            r"(\"?(?:password|token|refresh|access|app_secret|verify_token|ticket)\"?\s*[:=]\s*\"?)[^\"&,\s}]+", re.I
        ),
        r"\1[redacted]",
    ),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), "[redacted-jwt]"),
]


def redact(text: str) -> str:
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RequestIdMiddleware:
    """Give every request an id (or keep a sane incoming X-Request-ID), for logs and the response header."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _REQUEST_ID_OK.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = request_id
        return response


class ContextFilter(logging.Filter):
    """Adds request_id and tenant_id (from the active tenant scope) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        tenant = get_scope().get("tenant")
        record.tenant_id = tenant if isinstance(tenant, int) else getattr(tenant, "pk", None)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "request_id": getattr(record, "request_id", "") or None,
            "tenant_id": getattr(record, "tenant_id", None),
        }
        if record.exc_info:
            payload["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(payload, ensure_ascii=False)


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


@never_cache
@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """The process is up (no dependencies checked)."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request: HttpRequest) -> HttpResponse:
    """Ready to serve: the database and (when configured) Redis answer. 503 with the failing check otherwise."""
    checks: dict[str, str] = {}
    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready
        checks["database"] = f"error: {type(exc).__name__}"
    if settings.REDIS_URL:
        import redis

        try:
            redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2).ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    body = {
        "status": "ok" if ok else "unavailable",
        "checks": checks,
        "ms": round((time.perf_counter() - started) * 1000, 1),
    }
    return JsonResponse(body, status=200 if ok else 503)


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text format. Open only to loopback/private scrapers or a bearer token (METRICS_TOKEN)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    token = settings.METRICS_TOKEN
    if token:
        if request.headers.get("Authorization", "") != f"Bearer {token}":
            return JsonResponse(
                {"error": {"code": "forbidden", "message": "metrics need the bearer token"}}, status=403
            )
    elif not settings.DEBUG and request.META.get("REMOTE_ADDR") not in ("127.0.0.1", "::1"):
        return JsonResponse(
            {"error": {"code": "forbidden", "message": "set METRICS_TOKEN to scrape remotely"}}, status=403
        )
    _refresh_queue_depth()
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)


def _refresh_queue_depth() -> None:
    if not settings.REDIS_URL:
        return
    import redis

    try:
        client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_connect_timeout=1, socket_timeout=1)
        for queue in ("inbound", "default"):
            metrics.QUEUE_DEPTH.labels(queue=queue).set(client.llen(queue))
    except Exception:
        logging.getLogger(__name__).warning("could not read Celery queue depth", exc_info=True)
