from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from django.db import connections, models, router
from django.db.models.expressions import Col
from django.http import Http404

from accounts.models import User

from .models import Membership, Tenant, WhatsAppNumber
from .scoping import scopes_disabled, tenant_scope


def membership_get(*, user: User, tenant_slug: str) -> Membership | None:
    """The active membership of an active user in a tenant, or None (same answer for unknown tenant and non-member).

    Checked on every request and socket so that deactivation or removal takes effect at once. One query: the
    membership with its tenant, found by the tenant's slug. The tenant is what this looks up, so no tenant scope
    can be active yet: the filter on the slug and the user (one row at most) is the scope, as in the `_unsafe`
    routing lookups below.
    """
    if not user.is_authenticated or not user.is_active:
        return None
    memberships = Membership.objects.with_scopes_disabled().select_related("tenant")
    concrete = type(user) is User  # not the lazy user of a socket's scope: that one is read back with the row
    if not concrete:
        memberships = memberships.select_related("user")
    membership = memberships.filter(tenant__slug=tenant_slug, user=user, is_active=True).first()
    if membership is not None and concrete:
        membership.user = user  # the row the caller just authenticated, not a second copy of it
    return membership


# slug -> id of the tenants whose memberships this process has read: the RLS scope to read the next one in.
_tenant_of_slug: dict[str, int] = {}


def user_and_membership_unsafe(*, user_id: int, tenant_slug: str) -> tuple[User | None, Membership | None]:
    """The user of a token and, in the same query, their active membership of the tenant with that slug.

    The JWT authentication of a tenant route calls this instead of reading the user and then (in the permission)
    the membership: one statement instead of two, each with its ORM compilation. (None, None) when no such user;
    (user, None) when the user is no active member there. Whether the user is active is left to the caller, which
    refuses the token then (membership_get would answer None for an inactive user).

    The tenant is what this looks up, so it cannot run in the tenant's scope, except that the id of a slug seen
    before is a good guess: read in that tenant's scope (row-level security then shows only its memberships, and
    the statement still matches the slug), the connection is left in the scope the request goes on in, so neither
    this read nor the request's next statement changes the RLS settings first. A guess that finds no membership
    proves nothing (not a member, or a renamed slug): the read is made again with scopes disabled, as without one.
    """
    guess = _tenant_of_slug.get(tenant_slug)
    found = None
    if guess is not None:
        with tenant_scope(guess):
            found = _user_and_membership(user_id, tenant_slug)
        if found[1] is not None:
            _tenant_of_slug[tenant_slug] = found[1].tenant_id  # the same, unless RLS is off (a superuser)
            return found
        if found[0] is None:
            return found
    with scopes_disabled():  # memberships: the tenant is what this looks up
        found = _user_and_membership(user_id, tenant_slug)
    if found[1] is not None:
        _tenant_of_slug[tenant_slug] = found[1].tenant_id
    return found


def _user_and_membership(user_id: int, tenant_slug: str) -> tuple[User | None, Membership | None]:
    db = router.db_for_read(Membership)
    qn = connections[db].ops.quote_name
    sql = (
        f"SELECT {row_columns(User, 'u', db)}, {row_columns(Membership, 'm', db)}, {row_columns(Tenant, 't', db)}"
        f" FROM {qn(User._meta.db_table)} u"
        f" LEFT JOIN ({qn(Membership._meta.db_table)} m INNER JOIN {qn(Tenant._meta.db_table)} t"
        f" ON t.{qn('id')} = m.{qn('tenant_id')} AND t.{qn('slug')} = %s)"
        f" ON m.{qn('user_id')} = u.{qn('id')} AND m.{qn('is_active')}"
        f" WHERE u.{qn('id')} = %s"
    )
    with connections[db].cursor() as cursor:
        cursor.execute(sql, [tenant_slug, user_id])
        row = cursor.fetchone()
    if row is None:
        return None, None
    user, at = model_from_row(User, row, 0, db)
    if row[at] is None:  # no membership row joined
        return user, None
    membership, at = model_from_row(Membership, row, at, db)
    tenant, _ = model_from_row(Tenant, row, at, db)
    Membership.user.field.set_cached_value(membership, user)
    Membership.tenant.field.set_cached_value(membership, tenant)
    return user, membership


def membership_list_for_user_unsafe(*, user: User) -> list[Membership]:
    """Every tenant a user belongs to (crosses tenants by nature: it lists the user's own memberships)."""
    return list(
        Membership.objects.with_scopes_disabled()
        .select_related("tenant")
        .filter(user=user, is_active=True)
        .order_by("tenant__name")
    )


def number_for_phone_id_unsafe(*, phone_number_id: str) -> WhatsAppNumber | None:
    """Route a webhook by metadata.phone_number_id: this is how the tenant is found, so it cannot be scoped yet.

    The number with its tenant, as select_related("tenant").first() returns them, read by a hand-written statement
    (see below): the worker runs this for every inbound webhook, and the ORM's compilation of the join was most of
    its cost. Read afresh every time (no cache): a number moved to another tenant or deleted routes accordingly.
    """
    db = router.db_for_read(WhatsAppNumber)
    connection = connections[db]
    with scopes_disabled(), connection.cursor() as cursor:  # row-level security: the tenant is what this finds
        cursor.execute(_number_for_phone_id_sql(db), [phone_number_id])
        row = cursor.fetchone()
    if row is None:
        return None
    number: WhatsAppNumber
    number, at = model_from_row(WhatsAppNumber, row, 0, db)
    tenant, _ = model_from_row(Tenant, row, at, db)
    WhatsAppNumber.tenant.field.set_cached_value(number, tenant)
    return number


@functools.cache
def _number_for_phone_id_sql(db: str) -> str:
    qn = connections[db].ops.quote_name
    return (
        f"SELECT {row_columns(WhatsAppNumber, 'n', db)}, {row_columns(Tenant, 't', db)}"
        f" FROM {qn(WhatsAppNumber._meta.db_table)} n"
        f" INNER JOIN {qn(Tenant._meta.db_table)} t ON t.{qn('id')} = n.{qn('tenant_id')}"
        f" WHERE n.{qn('phone_number_id')} = %s ORDER BY n.{qn('id')} LIMIT 1"
    )


def tenant_get(*, slug: str) -> Tenant:
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is None:
        raise Http404("No such tenant")
    return tenant


# --- Hand-written reads on hot paths -----------------------------------------------------------------------------
# The ORM's compilation of a joined SELECT (~100 columns) cost more CPU than the query itself on the paths every
# request takes (authentication, the send's locked conversation). These build the column list from the model once
# and turn a row back into instances the way the ORM does (the fields' and the backend's converters, from_db), so
# the statements stay small and parameterised while the instances are the ones the ORM would have returned.

_Converters = tuple[tuple[int, tuple[Callable[..., Any], ...], Col], ...]


@functools.cache
def row_columns(model: type[models.Model], alias: str, db: str = "default") -> str:
    """Every concrete column of `model` under the table alias `alias`, in field order (for model_from_row)."""
    qn = connections[db].ops.quote_name
    return ", ".join(f"{alias}.{qn(f.column)}" for f in model._meta.concrete_fields)


@functools.cache
def _converters(model: type[models.Model], db: str) -> _Converters:
    """What the ORM's compiler applies to each column of `model` read on this backend (as in get_converters)."""
    connection = connections[db]
    converters = []
    for i, field in enumerate(model._meta.concrete_fields):
        col = field.get_col(model._meta.db_table)
        found = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
        if found:
            converters.append((i, tuple(found), col))
    return tuple(converters)


def model_from_row(model: type[models.Model], row: Sequence[Any], start: int, db: str = "default") -> tuple[Any, int]:
    """The instance read from row[start:] (columns as row_columns lists them) and the index after its columns."""
    end = start + len(model._meta.concrete_fields)
    values = list(row[start:end])
    connection = connections[db]
    for i, functions, col in _converters(model, db):
        value = values[i]
        for convert in functions:
            value = convert(value, col, connection)
        values[i] = value
    return model.from_db(db, None, values), end
