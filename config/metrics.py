"""Prometheus metrics for operators (per process; scrape every web and worker process)."""

from __future__ import annotations

import time
from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram

OPEN_SOCKETS = Gauge("inbox_open_sockets", "WebSocket connections currently open in this process")
EVENTS_SENT = Counter("inbox_events_sent_total", "Events handed to the channel layer", ["kind"])
FRAMES_SENT = Counter("inbox_frames_sent_total", "Frames sent to WebSocket clients", ["type"])
E2E_LATENCY = Histogram(
    "inbox_event_delivery_seconds",
    "From the durable event's commit to its frame leaving this process",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
WEBHOOK_LAG = Histogram(
    "inbox_webhook_processing_lag_seconds",
    "From a webhook's receipt to the end of its processing",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
WEBHOOKS_RECEIVED = Counter("inbox_webhooks_received_total", "Webhook POSTs by signature verdict", ["signature"])
SEND_FAILURES = Counter("inbox_send_failures_total", "Outbound sends that failed, by Meta error code", ["code"])
QUEUE_DEPTH = Gauge("inbox_celery_queue_depth", "Tasks waiting in a Celery queue (read at scrape time)", ["queue"])


def written_at(ts: str | None) -> float:
    """A frame's `ts` as a Unix time (0.0 when missing or unreadable)."""
    if not ts:
        return 0.0
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def observe_since(written: float) -> None:
    """Record the time from a durable event's write (a Unix time from written_at) to now."""
    if written:
        E2E_LATENCY.observe(max(0.0, time.time() - written))


def observe_delivery(ts: str | None) -> None:
    """Record the time from a durable event's write (its frame's `ts`) to now."""
    observe_since(written_at(ts))
