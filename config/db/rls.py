"""Row-level security, the third layer of tenant isolation (after the selectors' tenant= and the scoped managers).

Every table of a model with a `tenant` FK has RLS enabled and forced (inbox/migrations/0003_row_level_security.py)
with one policy: a row is visible and writable when its tenant_id equals the `app.tenant_id` setting, or when
`app.rls_bypass` is 'on'. The backend in config/db/postgresql sets both from django-scopes' state before a query
runs, so the database enforces the same scope the ORM does, and a query that forgets its tenant filter still sees
only one tenant's rows when the app connects as a role subject to RLS (not a superuser, no BYPASSRLS).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.db import DEFAULT_DB_ALIAS, connections, models
from django_scopes import scope
from django_scopes.manager import DisabledQuerySet
from django_scopes.state import state as scope_state

TENANT_SETTING = "app.tenant_id"
BYPASS_SETTING = "app.rls_bypass"
# One round trip sets both; session-level (is_local=false) so it outlives autocommit statements. A ROLLBACK (TO
# SAVEPOINT) undoes it, which the backend tracks.
SET_SQL = f"SELECT set_config('{TENANT_SETTING}', %s, false), set_config('{BYPASS_SETTING}', %s, false)"
# The same for a tenant named by a query (rls.TenantOf); an unknown one gets '' and sees nothing.
SET_TENANT_OF_SQL = (
    f"SELECT set_config('{TENANT_SETTING}', COALESCE(({{tenant}})::text, ''), false),"
    f" set_config('{BYPASS_SETTING}', '', false)"
)
NOTHING: tuple[str, str] = ("", "")
BYPASS: tuple[str, str] = ("", "on")


def wanted_settings() -> tuple[str, str]:
    """(app.tenant_id, app.rls_bypass) matching the current django-scopes state (a context variable).

    tenant scope -> that tenant's id; scopes_disabled() -> bypass on; no scope, or a scope this policy cannot
    express (several tenants, tenant=None meaning "all" in django-scopes) -> both empty, so nothing is visible.
    """
    current = scope_state.get()
    if not current:
        return NOTHING
    if not current.get("_enabled", True):
        return BYPASS
    tenant = current.get("tenant")
    if isinstance(tenant, models.Model):
        tenant = tenant.pk
    if isinstance(tenant, int) and not isinstance(tenant, bool):
        return (str(tenant), "")
    if isinstance(tenant, str) and tenant.isdigit():
        return (tenant, "")
    return NOTHING


@dataclass(frozen=True)
class TenantOf:
    """A tenant named by a query that returns its id (or no row), resolved by the database in the same round trip:
    a handshake knows its tenant's slug, not its id."""

    sql: str
    params: tuple[Any, ...] = ()


def fetch_in_tenant(
    tenant: int | TenantOf, sql: str, params: Sequence[Any], *, using: str = DEFAULT_DB_ALIAS
) -> list[tuple[Any, ...]]:
    """Run one raw statement in one tenant's scope and return its rows (hot paths that skip the ORM: a socket
    handshake). Under row-level security the settings travel with the statement, in one round trip; an unknown
    tenant (TenantOf with no row) sees nothing. Elsewhere (SQLite, DATABASE_RLS=False) it is a plain cursor: the
    statement must filter by tenant itself either way, RLS being the third layer, not the only one.
    """
    connection = connections[using]
    scoped = getattr(connection, "fetch_in_tenant", None)
    if scoped is not None:
        return scoped(tenant, sql, params)  # type: ignore[no-any-return]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description else []


# --- Manager overrides: Model.objects.with_scopes_disabled() / .with_scope(...) --------------------------------
# These return a queryset that is evaluated later, outside any `with` block, so the context state says nothing
# about them (webhook routing by phone_number_id, a user's memberships across tenants). The querysets they build
# are given a class that evaluates under the override's scope, so the settings follow them too.


class _OverrideFollowingQuerySet(models.QuerySet):  # type: ignore[type-arg]
    _rls_scope: dict[str, Any]

    def _clone(self):  # type: ignore[no-untyped-def]
        clone = super()._clone()
        clone._rls_scope = self._rls_scope
        return clone

    def _iterator(self, use_chunked_fetch: bool, chunk_size: int | None) -> Iterator[Any]:
        # A generator: the scope is entered around each step only, never left set in the caller's context.
        rows = super()._iterator(use_chunked_fetch, chunk_size)
        while True:
            with scope(**self._rls_scope):
                try:
                    row = next(rows)
                except StopIteration:
                    return
            yield row


def _under_override(name: str) -> Any:
    def method(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[no-untyped-def]
        with scope(**self._rls_scope):
            return getattr(super(_OverrideFollowingQuerySet, self), name)(*args, **kwargs)

    method.__name__ = name
    return method


# Everything that reaches the database (iteration, len, get, first, in_bulk go through _fetch_all).
for _name in (
    "_fetch_all",
    "count",
    "exists",
    "contains",
    "aggregate",
    "explain",
    "update",
    "_update",
    "delete",
    "_raw_delete",
    "create",
    "get_or_create",
    "update_or_create",
    "bulk_create",
    "bulk_update",
):
    setattr(_OverrideFollowingQuerySet, _name, _under_override(_name))

_following_classes: dict[type[models.QuerySet], type[models.QuerySet]] = {}  # type: ignore[type-arg]
_install_lock = threading.Lock()
_installed = False


def _following(queryset: models.QuerySet, override: dict[str, Any]) -> models.QuerySet:  # type: ignore[type-arg]
    base = type(queryset)
    cls = _following_classes.get(base)
    if cls is None:
        cls = _following_classes.setdefault(base, type(base.__name__, (_OverrideFollowingQuerySet, base), {}))
    queryset.__class__ = cls
    queryset._rls_scope = dict(override)  # type: ignore[attr-defined]
    return queryset


def _is_scoped_manager_class(cls: type) -> bool:
    method = getattr(cls, "with_scopes_disabled", None)
    return method is not None and getattr(method, "__module__", "") == "django_scopes.manager"


def install_override_following() -> None:
    """Make every django-scopes manager's override querysets carry their scope to the database. Idempotent."""
    global _installed
    if _installed or not apps.ready:
        return
    with _install_lock:
        if _installed:
            return
        for model in apps.get_models(include_auto_created=True):
            for manager in model._meta.managers:
                cls = type(manager)
                if not _is_scoped_manager_class(cls) or "_rls_get_queryset" in cls.__dict__:
                    continue
                original = cls.get_queryset

                def get_queryset(self, _original=original):  # type: ignore[no-untyped-def]
                    queryset = _original(self)
                    override = getattr(self, "_override_scope", None)
                    if override is not None and not isinstance(queryset, DisabledQuerySet):
                        queryset = _following(queryset, override)
                    return queryset

                cls.get_queryset = get_queryset
                cls._rls_get_queryset = True
        _installed = True


def tenant_owned_tables() -> list[str]:
    """Tables of concrete models with a `tenant` FK: those the RLS migration must cover."""
    tables = []
    for model in apps.get_models():
        if model._meta.proxy or not model._meta.managed:
            continue
        field = next((f for f in model._meta.get_fields() if f.name == "tenant"), None)
        if field is not None and field.is_relation and (field.many_to_one or field.one_to_one) and field.concrete:
            tables.append(model._meta.db_table)
    return sorted(tables)
