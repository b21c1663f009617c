"""Celery tasks of the inbox: load by id → (tenant scope, entered by TenantTask) → call a service.

All are enqueued after commit (inbox.tasking.enqueue_on_commit) and acknowledged late; each is safe to run twice.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from config.celery import app
from inbox.services import media as media_services
from inbox.services import outbound
from inbox.tasking import TenantTask, apply_with_ids
from inbox.whatsapp.client import GraphError
from inbox.whatsapp.sandbox import status_post

logger = logging.getLogger(__name__)

MEDIA_RETRIES = 4
MARK_READ_RETRIES = 3


@shared_task(base=TenantTask, name="inbox.tasks.message_send", acks_late=True)
def message_send(tenant_id: int, message_id: int) -> str:
    """Deliver one queued outbound message (the claim makes a duplicate run a no-op)."""
    return outbound.message_deliver(message_id=int(message_id))


@shared_task(name="inbox.tasks.message_send_many", acks_late=True)
def message_send_many(sends: list[list[int]]) -> list[str]:
    """Queued sends a web process handed over together (outbound.send_enqueue), each `[tenant_id, message_id]`.

    One is delivered here; several each become a message_send task of their own, so that one slow Graph call does
    not hold up the others and each keeps its own late acknowledgement (the claim makes a second run a no-op).
    """
    if len(sends) == 1:
        [(tenant_id, message_id)] = sends
        return [message_send(tenant_id=int(tenant_id), message_id=int(message_id))]
    for tenant_id, message_id in sends:
        apply_with_ids(message_send, {"tenant_id": int(tenant_id), "message_id": int(message_id)})
    return ["queued"] * len(sends)


@shared_task(base=TenantTask, bind=True, name="inbox.tasks.message_mark_read", max_retries=MARK_READ_RETRIES)
def message_mark_read(self: Any, tenant_id: int, message_id: int) -> bool:
    try:
        return outbound.mark_read_deliver(message_id=int(message_id))
    except GraphError as exc:
        if exc.retryable and not app.conf.task_always_eager and self.request.retries < MARK_READ_RETRIES:
            raise self.retry(countdown=outbound.backoff_delay(self.request.retries + 1, exc.code)) from exc
        logger.warning("mark-read of message %s failed: %s", message_id, exc)
        return False


@shared_task(base=TenantTask, bind=True, name="inbox.tasks.reaction_send", max_retries=MEDIA_RETRIES)
def reaction_send(self: Any, tenant_id: int, message_id: int, user_id: int, emoji: str) -> None:
    try:
        outbound.reaction_deliver(message_id=int(message_id), user_id=int(user_id), emoji=emoji)
    except GraphError as exc:
        if exc.retryable and not app.conf.task_always_eager and self.request.retries < MEDIA_RETRIES:
            raise self.retry(countdown=outbound.backoff_delay(self.request.retries + 1, exc.code)) from exc
        logger.warning("reaction on message %s failed: %s", message_id, exc)


@shared_task(base=TenantTask, bind=True, name="inbox.tasks.media_download", max_retries=MEDIA_RETRIES)
def media_download(self: Any, tenant_id: int, message_id: int) -> str:
    """Download an inbound message's media; retries with backoff, then marks it failed (retry possible)."""
    try:
        return media_services.media_download(message_id=int(message_id)).media_state
    except GraphError as exc:
        if exc.retryable and not app.conf.task_always_eager and self.request.retries < MEDIA_RETRIES:
            raise self.retry(countdown=outbound.backoff_delay(self.request.retries + 1, exc.code)) from exc
        return media_services.media_fail(message_id=int(message_id), error=str(exc)).media_state


@shared_task(name="inbox.tasks.outbox_sweep")
def outbox_sweep() -> dict[str, int]:
    """Periodic, across tenants: re-queue sends stuck after a worker crash or a lost enqueue."""
    return outbound.outbox_sweep()


@shared_task(name="inbox.tasks.sandbox_status")
def sandbox_status(phone_number_id: str, wa_message_id: str, recipient_id: str, status: str) -> None:
    """A sandbox number's delivery status, posted as a signed webhook (delayed with countdown by the sender)."""
    status_post(phone_number_id=phone_number_id, wa_message_id=wa_message_id, recipient_id=recipient_id, status=status)
