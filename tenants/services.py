"""Writes on a tenant's members and WhatsApp numbers (the REST API's admin actions).

Memberships are saved with Model.save() so that the revocation signals (a removed or deactivated membership closes
that user's sockets) see every change. A tenant always keeps at least one active owner or admin; only owners grant
or take away the owner role.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q

from accounts.models import User
from tenants.models import Membership, Role, Tenant, WhatsAppNumber

NUMBER_SECRET_FIELDS = ("access_token", "app_secret", "verify_token")
NUMBER_FIELDS = ("phone_number_id", "display_phone_number", "label", "waba_id", *NUMBER_SECRET_FIELDS)


def _check_may_manage(*, actor: Membership, target_role: str, new_role: str | None = None) -> None:
    if not actor.is_admin:
        raise PermissionDenied("Only admins of this tenant can manage members.")
    if Role.OWNER in (target_role, new_role) and actor.role != Role.OWNER:
        raise PermissionDenied("Only owners can grant, change or remove the owner role.")


def _keeps_an_admin(*, tenant: Tenant, without: Membership) -> bool:
    return (
        Membership.objects.filter(
            tenant=tenant, is_active=True, role__in=[Role.OWNER, Role.ADMIN], user__is_active=True
        )
        .exclude(pk=without.pk)
        .exists()
    )


@transaction.atomic
def member_add(*, tenant: Tenant, actor: Membership, user_identifier: str, role: str = Role.AGENT) -> Membership:
    """Give an existing user (by username or email) access to the tenant, or reactivate their old membership."""
    if role not in Role.values:
        raise ValidationError({"role": f"must be one of {', '.join(Role.values)}"})
    _check_may_manage(actor=actor, target_role=role)
    identifier = user_identifier.strip()
    user = User.objects.filter(Q(username=identifier) | Q(email__iexact=identifier), is_active=True).first()
    if user is None or not identifier:
        raise ValidationError({"user": "no active user with this username or email"})
    membership = Membership.objects.select_for_update().filter(tenant=tenant, user=user).first()
    if membership is not None and membership.is_active:
        raise ValidationError({"user": "is already a member of this tenant"})
    if membership is None:
        try:
            with transaction.atomic():
                membership = Membership.objects.create(tenant=tenant, user=user, role=role)
        except IntegrityError:
            raise ValidationError({"user": "is already a member of this tenant"})
    else:
        membership.is_active = True
        membership.role = role
        membership.save(update_fields=["is_active", "role"])
    return membership


@transaction.atomic
def member_role_set(*, tenant: Tenant, actor: Membership, membership: Membership, role: str) -> Membership:
    """Change a member's role; the tenant keeps at least one active owner or admin."""
    if role not in Role.values:
        raise ValidationError({"role": f"must be one of {', '.join(Role.values)}"})
    locked = Membership.objects.select_for_update().get(pk=membership.pk, tenant=tenant)
    _check_may_manage(actor=actor, target_role=locked.role, new_role=role)
    if role == locked.role:
        return locked
    if role == Role.AGENT and locked.is_admin and not _keeps_an_admin(tenant=tenant, without=locked):
        raise ValidationError({"role": "the tenant must keep at least one owner or admin"})
    locked.role = role
    locked.save(update_fields=["role"])
    return locked


@transaction.atomic
def member_remove(*, tenant: Tenant, actor: Membership, membership: Membership) -> None:
    """Deactivate a membership: the user loses the tenant on their next request and their sockets are closed."""
    locked = Membership.objects.select_for_update().get(pk=membership.pk, tenant=tenant)
    _check_may_manage(actor=actor, target_role=locked.role)
    if not locked.is_active:
        return
    if locked.is_admin and not _keeps_an_admin(tenant=tenant, without=locked):
        raise ValidationError({"non_field_errors": "the tenant must keep at least one owner or admin"})
    locked.is_active = False
    locked.save(update_fields=["is_active"])


def _number_clean(number: WhatsAppNumber) -> None:
    if number.phone_number_id and not number.phone_number_id.isdigit():
        raise ValidationError({"phone_number_id": "must be Meta's numeric phone number id"})
    taken = WhatsAppNumber.objects.with_scopes_disabled().filter(phone_number_id=number.phone_number_id)
    if number.pk:
        taken = taken.exclude(pk=number.pk)
    if taken.exists():
        # Unique across tenants because it routes webhooks; do not reveal which tenant holds it.
        raise ValidationError({"phone_number_id": "is already connected"})


@transaction.atomic
def number_create(*, tenant: Tenant, **fields: Any) -> WhatsAppNumber:
    """Connect a business number. Secrets are stored encrypted (tenants/fields.py) and never returned."""
    unknown = set(fields) - set(NUMBER_FIELDS)
    if unknown:
        raise TypeError(f"unknown number fields: {sorted(unknown)}")
    number = WhatsAppNumber(tenant=tenant, **fields)
    _number_clean(number)
    try:
        with transaction.atomic():
            number.save(force_insert=True)
    except IntegrityError:
        raise ValidationError({"phone_number_id": "is already connected"})
    return number


@transaction.atomic
def number_update(*, tenant: Tenant, number: WhatsAppNumber, **fields: Any) -> WhatsAppNumber:
    """Change a number's fields; a new access token clears a stored authentication error."""
    unknown = set(fields) - set(NUMBER_FIELDS)
    if unknown:
        raise TypeError(f"unknown number fields: {sorted(unknown)}")
    locked = WhatsAppNumber.objects.select_for_update().get(pk=number.pk, tenant=tenant)
    for name, value in fields.items():
        setattr(locked, name, value)
    changed = list(fields)
    if "access_token" in fields and locked.auth_error:
        locked.auth_error = ""
        changed.append("auth_error")
    _number_clean(locked)
    if changed:
        try:
            with transaction.atomic():
                locked.save(update_fields=changed)
        except IntegrityError:
            raise ValidationError({"phone_number_id": "is already connected"})
    return locked


@transaction.atomic
def number_delete(*, tenant: Tenant, number: WhatsAppNumber) -> None:
    """Disconnect a number; refused while it has conversations (their history would go with it)."""
    locked = WhatsAppNumber.objects.select_for_update().get(pk=number.pk, tenant=tenant)
    if locked.conversations.exists():
        raise ValidationError({"non_field_errors": "this number has conversations; it cannot be deleted"})
    locked.delete()
