"""Tenant scoping that is hard to forget (pretix's django-scopes).

Every tenant-owned model's default manager raises ScopeError unless a tenant scope is active, and filters to that
tenant when one is. Scopes are entered in four places: the tenant middleware/API permission, the WebSocket
consumer, the Celery task base and the webhook processor after phone_number_id -> number. `scopes_disabled()` is
for admin, management commands and tests only.
"""

from __future__ import annotations

from django_scopes import ScopedManager, scope, scopes_disabled
from django_scopes.exceptions import ScopeError

__all__ = ["ScopeError", "ScopedManager", "scope", "scopes_disabled", "tenant_scope", "tenant_manager"]


def tenant_scope(tenant_id: int) -> scope:  # type: ignore[valid-type]
    """Enter the scope of one tenant: tenant-owned managers then see only its rows."""
    return scope(tenant=tenant_id)


def tenant_manager():  # type: ignore[no-untyped-def]
    return ScopedManager(tenant="tenant")
