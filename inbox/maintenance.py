"""Periodic real-time upkeep, run by celery beat (settings.CELERY_BEAT_SCHEDULE).

Both tasks work across tenants by nature (they are nobody's request), so they run without a tenant scope and
filter by tenant explicitly.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from inbox import events, presence
from inbox.models import TenantEvent
from tenants.models import Membership
from tenants.scoping import scopes_disabled
from tenants.tickets import ticket_prune_unsafe

logger = logging.getLogger(__name__)

PRUNE_BATCH = 5000


@shared_task(name="inbox.maintenance.event_log_prune")  # type: ignore[misc]
def event_log_prune() -> int:
    """Delete event-log rows older than EVENT_RETENTION_DAYS (and expired socket tickets). Returns rows deleted.

    The per-tenant counter (EventSequence) is kept, so the head survives an empty log and a client that syncs
    from before the oldest retained row gets `sync_gap`.
    """
    cutoff = timezone.now() - timedelta(days=settings.EVENT_RETENTION_DAYS)
    deleted = 0
    with scopes_disabled():
        while True:  # in batches: one huge DELETE would hold locks and bloat one transaction
            ids = list(TenantEvent.objects.filter(created_at__lt=cutoff).values_list("pk", flat=True)[:PRUNE_BATCH])
            if not ids:
                break
            count, _ = TenantEvent.objects.filter(pk__in=ids).delete()
            deleted += count
    tickets = ticket_prune_unsafe()
    if deleted or tickets:
        logger.info("pruned %s events and %s socket tickets", deleted, tickets)
    return deleted


@shared_task(name="inbox.maintenance.presence_reap")  # type: ignore[misc]
def presence_reap() -> dict[str, Any]:
    """Announce offline the users of dead server processes, and re-check the membership of everyone connected.

    The re-check is the revocation backstop for writes that sent no signal (QuerySet.update, raw SQL): users who
    are present but no longer active members get a revoke notice, on which their sockets re-check and close.
    """
    gone = presence.reap_all()
    revoked = 0
    for tenant_id in presence.tenants_present():
        online = presence.online_user_ids(tenant_id)
        if not online:
            continue
        with scopes_disabled():
            allowed = set(
                Membership.objects.filter(
                    tenant_id=tenant_id, user_id__in=online, is_active=True, user__is_active=True
                ).values_list("user_id", flat=True)
            )
        for user_id in online - allowed:
            events.send_revoke(user_id, tenant_id=tenant_id)
            revoked += 1
    return {"offline": {str(t): sorted(u) for t, u in gone.items()}, "revoked": revoked}
