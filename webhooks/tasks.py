"""Inbound processing tasks (routed to the `inbound` queue so they never wait behind bulk work)."""

from __future__ import annotations

from celery import shared_task

from webhooks import services


@shared_task(name="webhooks.tasks.webhook_process", acks_late=True)
def webhook_process(event_id: int) -> str | None:
    """Process one stored webhook event. Not tenant-scoped: one body may carry several tenants' numbers."""
    event = services.webhook_process(int(event_id))
    return event.state if event is not None else None


@shared_task(name="webhooks.tasks.webhook_sweep")
def webhook_sweep() -> int:
    """Periodic: re-enqueue events stored but not processed (lost enqueue, crashed worker)."""
    return len(services.webhook_sweep())
