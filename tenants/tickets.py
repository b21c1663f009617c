"""Single-use WebSocket tickets (PROTOCOL.md "Connecting").

Clients that cannot send the session cookie (integrations, scripts, mobile) exchange their JWT for a ticket over
the REST API and open the socket with `?ticket=`. A long-lived credential never goes in a URL (URLs end up in
proxy and server logs); a ticket is worth little there: it lives 60 seconds, is bound to one user and one tenant,
works once, and only its SHA-256 is stored.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from django.db import connection
from django.utils import timezone

from accounts.models import User
from config.db import rls
from tenants.models import Membership, SocketTicket, Tenant
from tenants.scoping import scopes_disabled, tenant_scope
from tenants.selectors import model_from_row, row_columns

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


def _spend_sql(hash_match: str, returning: str) -> str:
    """One conditional UPDATE: "single use" holds under concurrency because of two handshakes racing with one ticket,
    exactly one changes the row. Parameters: now, the token's hash (or an array of them), now, the tenant's slug."""
    return (
        f"UPDATE {SocketTicket._meta.db_table} SET used_at = %s"
        f" WHERE token_hash {hash_match} AND used_at IS NULL AND expires_at > %s"
        f" AND tenant_id = (SELECT id FROM {Tenant._meta.db_table} WHERE slug = %s) RETURNING {returning}"
    )


_SPEND_SQL: Final = _spend_sql("= %s", "user_id, tenant_id")
# The same for several tickets of one tenant: it returns which hashes it spent.
_SPEND_MANY_SQL: Final = _spend_sql("= ANY(%s)", "token_hash, user_id, tenant_id")
_TENANT_OF_SLUG: Final = f"SELECT id FROM {Tenant._meta.db_table} WHERE slug = %s"

_GRANT_JOIN: Final = (
    f" JOIN {Tenant._meta.db_table} t ON t.id = m.tenant_id"
    f" JOIN {User._meta.db_table} u ON u.id = m.user_id AND u.is_active"
)


@functools.cache
def _grant_sql() -> tuple[str, str]:
    """(PostgreSQL: spend and read in one statement, elsewhere: the read after the spend) of the membership a
    ticket grants, with its tenant and user, columns as tenants.selectors.row_columns lists them. On PostgreSQL
    the membership is read in the slug's tenant scope (row-level security applies to both tables;
    rls.fetch_in_tenant sends the scope in the same round trip); SQLite has no UPDATE in WITH. Parameters of the
    second: tenant id, user id."""
    select = _grant_columns()
    grant = (
        f"SELECT {select} FROM {Membership._meta.db_table} m{_GRANT_JOIN}"
        " WHERE m.tenant_id = %s AND m.user_id = %s AND m.is_active"
    )
    return _spend_and_grant_sql(many=False), grant


def _grant_columns() -> str:
    db = connection.alias
    return ", ".join([row_columns(Membership, "m", db), row_columns(Tenant, "t", db), row_columns(User, "u", db)])


@functools.cache
def _spend_and_grant_sql(*, many: bool) -> str:
    """The spend and the membership it grants in one statement (PostgreSQL); with `many`, for an array of hashes,
    each row led by the hash it spent."""
    spend, lead = (_SPEND_MANY_SQL, "spent.token_hash, ") if many else (_SPEND_SQL, "")
    return (
        f"WITH spent AS ({spend}) SELECT {lead}spent.user_id, spent.tenant_id, {_grant_columns()} FROM spent"
        f" LEFT JOIN ({Membership._meta.db_table} m{_GRANT_JOIN})"
        " ON m.tenant_id = spent.tenant_id AND m.user_id = spent.user_id AND m.is_active"
    )


@dataclass(frozen=True, slots=True)
class Admission:
    """A ticket just spent: whose it was, and the active membership of an active user it grants (None: none)."""

    user_id: int
    tenant_id: int
    membership: Membership | None


def _spend_params(token: str, tenant_slug: str) -> list[Any]:
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    return [now, _hash(token), now, tenant_slug]


def _valid_token(token: str) -> bool:
    return bool(token) and len(token) <= MAX_TOKEN_CHARS


def ticket_spend(*, token: str, tenant_slug: str) -> tuple[int, int] | None:
    """Use up a valid ticket of that tenant: (user id, tenant id), or None when unknown, expired, used or foreign.

    The tenant is not known before the ticket is found, so the statement crosses tenants; the slug in it keeps it
    to one.
    """
    if not _valid_token(token):
        return None
    with scopes_disabled(), connection.cursor() as cursor:
        cursor.execute(_SPEND_SQL, _spend_params(token, tenant_slug))
        row = cursor.fetchone()
    return (int(row[0]), int(row[1])) if row else None


def _membership_from_row(row: tuple[Any, ...]) -> Membership:
    """The models as select_related("tenant", "user") builds them (tenants.selectors.model_from_row)."""
    membership, at = model_from_row(Membership, row, 0, connection.alias)
    tenant, at = model_from_row(Tenant, row, at, connection.alias)
    user, _ = model_from_row(User, row, at, connection.alias)
    Membership.tenant.field.set_cached_value(membership, tenant)
    Membership.user.field.set_cached_value(membership, user)
    return membership


def ticket_admit(*, token: str, tenant_slug: str) -> Admission | None:
    """Use up a valid ticket of that tenant and read the membership it grants (a socket handshake's first call).

    None when the ticket is unknown, expired, used or foreign (the socket closes with 4401); an Admission without a
    membership when the ticket was good but its user is not an active member or not active (4403). On PostgreSQL
    this is one raw statement in one round trip: no ORM compilation, no separate scope change.
    """
    if not _valid_token(token):
        return None
    params = _spend_params(token, tenant_slug)
    if connection.vendor == "postgresql":
        rows = rls.fetch_in_tenant(rls.TenantOf(_TENANT_OF_SLUG, (tenant_slug,)), _grant_sql()[0], params)
        if not rows:
            return None
        user_id, tenant_id, *grant = rows[0]
        membership = _membership_from_row(tuple(grant)) if grant[0] is not None else None
        return Admission(int(user_id), int(tenant_id), membership)
    spent = ticket_spend(token=token, tenant_slug=tenant_slug)
    if spent is None:
        return None
    user_id, tenant_id = spent
    rows = rls.fetch_in_tenant(tenant_id, _grant_sql()[1], [tenant_id, user_id])
    return Admission(user_id, tenant_id, _membership_from_row(rows[0]) if rows else None)


def tickets_admit(tickets: list[tuple[str, str]]) -> list[Admission | None]:
    """ticket_admit for several handshakes at once (token, tenant slug), the answers in the same order: on
    PostgreSQL one statement per tenant slug among them, which spends that tenant's tickets together.

    Single use holds within the batch too: of two handshakes with the same ticket, the first gets the admission and
    the second None, as if the second had come after it.
    """
    if connection.vendor != "postgresql":
        return [ticket_admit(token=token, tenant_slug=slug) for token, slug in tickets]
    answers: list[Admission | None] = [None] * len(tickets)
    by_slug: dict[str, dict[str, int]] = {}  # slug -> token hash -> the first handshake that asked with it
    for index, (token, slug) in enumerate(tickets):
        if _valid_token(token):
            by_slug.setdefault(slug, {}).setdefault(_hash(token), index)
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    for slug, first in by_slug.items():
        rows = rls.fetch_in_tenant(
            rls.TenantOf(_TENANT_OF_SLUG, (slug,)), _spend_and_grant_sql(many=True), [now, list(first), now, slug]
        )
        for token_hash, user_id, tenant_id, *grant in rows:
            membership = _membership_from_row(tuple(grant)) if grant[0] is not None else None
            answers[first[token_hash]] = Admission(int(user_id), int(tenant_id), membership)
    return answers


def ticket_consume(*, token: str, tenant_slug: str) -> User | None:
    """Use up a valid ticket of that tenant and return its user; None when unknown, expired, used or foreign."""
    spent = ticket_spend(token=token, tenant_slug=tenant_slug)
    if spent is None:
        return None
    return User.objects.filter(pk=spent[0]).first()


def ticket_redeem(*, token: str, tenant_slug: str) -> Membership | None:
    """Use up a ticket and return the active membership it grants, or None (invalid, expired, used, not a member)."""
    admission = ticket_admit(token=token, tenant_slug=tenant_slug)
    return admission.membership if admission is not None else None


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
