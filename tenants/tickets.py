"""Single-use WebSocket tickets (PROTOCOL.md "Connecting").

Clients that cannot send the session cookie (integrations, scripts, mobile) exchange their JWT for a ticket over
the REST API and open the socket with `?ticket=`. A long-lived credential never goes in a URL (URLs end up in
proxy and server logs); a ticket is worth little there: it lives 60 seconds, is bound to one user and one tenant,
works once, and only its SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Final

from django.db import transaction
from django.utils import timezone

from accounts.models import User
from tenants.models import Membership, SocketTicket, Tenant
from tenants.scoping import scopes_disabled, tenant_scope
from tenants.selectors import membership_get

TICKET_TTL: Final = timedelta(seconds=60)
MAX_TOKEN_CHARS: Final = 200  # issued tokens are 43 characters; anything much longer is not one of ours


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ticket_issue(*, user: User, tenant: Tenant) -> tuple[str, datetime]:
    """Create a ticket for `user` to open `tenant`'s socket; returns the token (shown once) and its expiry.

    Membership is not checked here but at redemption, which is what counts: a ticket of a user removed in the
    meantime opens nothing.
    """
    token = secrets.token_urlsafe(32)
    expires_at = timezone.now() + TICKET_TTL
    with tenant_scope(tenant.pk):
        SocketTicket.objects.create(tenant=tenant, user=user, token_hash=_hash(token), expires_at=expires_at)
    return token, expires_at


def ticket_consume(*, token: str, tenant_slug: str) -> User | None:
    """Use up a valid ticket of that tenant and return its user; None when unknown, expired, used or foreign.

    The conditional UPDATE makes "single use" hold under concurrency: of two handshakes racing with one ticket,
    exactly one sees its row change.
    """
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    tenant = Tenant.objects.filter(slug=tenant_slug).first()
    if tenant is None:
        return None
    now = timezone.now()
    with tenant_scope(tenant.pk), transaction.atomic():
        ticket = SocketTicket.objects.filter(token_hash=_hash(token)).select_related("user").first()
        if ticket is None:
            return None
        used = SocketTicket.objects.filter(pk=ticket.pk, used_at__isnull=True, expires_at__gt=now).update(used_at=now)
    if used != 1:
        return None
    return ticket.user


def ticket_redeem(*, token: str, tenant_slug: str) -> Membership | None:
    """Use up a ticket and return the active membership it grants, or None (invalid, expired, used, not a member)."""
    user = ticket_consume(token=token, tenant_slug=tenant_slug)
    if user is None:
        return None
    return membership_get(user=user, tenant_slug=tenant_slug)


def tickets_revoke_unsafe(*, user_id: int) -> int:
    """Delete a user's unused tickets in every tenant (their password changed: old credentials open nothing).

    Crosses tenants by nature: it is about one user's own tickets. Runs in the caller's transaction, so the
    tickets go exactly when the change that revokes them commits.
    """
    with scopes_disabled():
        deleted, _ = SocketTicket.objects.filter(user_id=user_id, used_at__isnull=True).delete()
    return deleted


def ticket_prune_unsafe(*, older_than: timedelta = timedelta(hours=1)) -> int:
    """Delete tickets that expired more than `older_than` ago, across tenants (periodic maintenance only)."""
    with scopes_disabled():
        deleted, _ = SocketTicket.objects.filter(expires_at__lt=timezone.now() - older_than).delete()
    return deleted
