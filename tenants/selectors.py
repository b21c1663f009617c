from __future__ import annotations

from django.http import Http404

from accounts.models import User

from .models import Membership, Tenant, WhatsAppNumber


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


def membership_list_for_user_unsafe(*, user: User) -> list[Membership]:
    """Every tenant a user belongs to (crosses tenants by nature: it lists the user's own memberships)."""
    return list(
        Membership.objects.with_scopes_disabled()
        .select_related("tenant")
        .filter(user=user, is_active=True)
        .order_by("tenant__name")
    )


def number_for_phone_id_unsafe(*, phone_number_id: str) -> WhatsAppNumber | None:
    """Route a webhook by metadata.phone_number_id: this is how the tenant is found, so it cannot be scoped yet."""
    return (
        WhatsAppNumber.objects.with_scopes_disabled()
        .select_related("tenant")
        .filter(phone_number_id=phone_number_id)
        .first()
    )


def tenant_get(*, slug: str) -> Tenant:
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is None:
        raise Http404("No such tenant")
    return tenant
