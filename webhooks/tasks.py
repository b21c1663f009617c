"""Inbound processing tasks (routed to the `inbound` queue so they never wait behind bulk work)."""

from __future__ import annotations

import logging

from celery import shared_task

from webhooks import services

logger = logging.getLogger(__name__)


@shared_task(name="webhooks.tasks.webhook_process", acks_late=True)
def webhook_process(event_id: int) -> str | None:
    """Process one stored webhook event. Not tenant-scoped: one body may carry several tenants' numbers."""
    event = services.webhook_process(int(event_id))
    return event.state if event is not None else None


@shared_task(name="webhooks.tasks.webhook_process_many", acks_late=True)
def webhook_process_many(event_ids: list[int]) -> list[str | None]:
    """Process stored webhook events one after another (the server hands them over in batches). One that raises
    is logged and left to the sweeper (it stays claimed until then); the others still run."""
    states: list[str | None] = []
    for event_id in event_ids:
        try:
            event = services.webhook_process(int(event_id))
        except Exception:
            logger.exception("webhook %s: processing raised; the sweeper will retry it", event_id)
            states.append(None)
        else:
            states.append(event.state if event is not None else None)
    return states


@shared_task(name="webhooks.tasks.webhook_sweep")
def webhook_sweep() -> int:
    """Periodic: re-enqueue events stored but not processed (lost enqueue, crashed worker)."""
    return len(services.webhook_sweep())
