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

from django.db import connection
from django.utils import timezone

from accounts.models import User
from tenants.models import Membership, SocketTicket, Tenant
from tenants.scoping import scopes_disabled, tenant_scope

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


def ticket_spend(*, token: str, tenant_slug: str) -> tuple[int, int] | None:
    """Use up a valid ticket of that tenant: (user id, tenant id), or None when unknown, expired, used or foreign.

    One conditional UPDATE … RETURNING (a socket handshake's first statement): "single use" holds under
    concurrency because of two handshakes racing with one ticket, exactly one changes the row. The tenant is not
    known before the ticket is found, so the statement crosses tenants; the slug in it keeps it to one.
    """
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    tickets, tenants = SocketTicket._meta.db_table, Tenant._meta.db_table
    sql = (
        f"UPDATE {tickets} SET used_at = %s WHERE token_hash = %s AND used_at IS NULL AND expires_at > %s"
        f" AND tenant_id = (SELECT id FROM {tenants} WHERE slug = %s) RETURNING user_id, tenant_id"
    )
    with scopes_disabled(), connection.cursor() as cursor:
        cursor.execute(sql, [now, _hash(token), now, tenant_slug])
        row = cursor.fetchone()
    return (int(row[0]), int(row[1])) if row else None


def ticket_consume(*, token: str, tenant_slug: str) -> User | None:
    """Use up a valid ticket of that tenant and return its user; None when unknown, expired, used or foreign."""
    spent = ticket_spend(token=token, tenant_slug=tenant_slug)
    if spent is None:
        return None
    return User.objects.filter(pk=spent[0]).first()


def ticket_membership(*, user_id: int, tenant_id: int) -> Membership | None:
    """The active membership of an active user that a spent ticket names, with its user and tenant (one query)."""
    with tenant_scope(tenant_id):
        return (
            Membership.objects.select_related("user", "tenant")
            .filter(tenant_id=tenant_id, user_id=user_id, is_active=True, user__is_active=True)
            .first()
        )


def ticket_redeem(*, token: str, tenant_slug: str) -> Membership | None:
    """Use up a ticket and return the active membership it grants, or None (invalid, expired, used, not a member)."""
    spent = ticket_spend(token=token, tenant_slug=tenant_slug)
    if spent is None:
        return None
    return ticket_membership(user_id=spent[0], tenant_id=spent[1])


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
