"""Revocation: a deactivated user, a password change or a removed/deactivated membership loses its open sockets
within seconds.

The signal asks (after commit) every socket of that user to re-check; sockets that are no longer allowed close with
4403. A socket re-checks its membership and whether the user's password is still the one it authenticated with
(inbox.consumers.credential_stamp), so a spurious notice closes nothing. Writes that bypass signals
(QuerySet.update, raw SQL) are caught by the sockets' periodic re-check, the hard bound of PROTOCOL.md (one minute).

A password change also deletes the user's unused WebSocket tickets, and Django's session auth hash ends their other
sessions, so no old credential opens a new socket.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models.signals import post_delete, post_init, post_save
from django.dispatch import receiver

from inbox import events
from tenants.models import Membership
from tenants.tickets import tickets_revoke_unsafe

_LOADED_PASSWORD = "_revocation_loaded_password"  # the password hash as loaded (or last saved)


@receiver(post_init, sender=settings.AUTH_USER_MODEL, dispatch_uid="tenants.remember_password")
def user_loaded(sender: Any, instance: Any, **kwargs: Any) -> None:
    # __dict__, not the attribute: a deferred password (`.only(...)`) must not cost a query per instance.
    instance.__dict__[_LOADED_PASSWORD] = instance.__dict__.get("password")


def _password_changed(instance: Any, update_fields: frozenset[str] | None) -> bool:
    if update_fields is not None and "password" not in update_fields:
        return False
    if getattr(instance, "_password", None) is not None:  # set_password() since the last save
        return True
    loaded = instance.__dict__.get(_LOADED_PASSWORD)
    # Unknown (deferred when loaded): say yes. A notice is only "look again", a spurious one closes nothing.
    return loaded is None or loaded != instance.__dict__.get("password")


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="tenants.revoke_inactive_user")
def user_saved(sender: Any, instance: Any, created: bool, update_fields: Any = None, **kwargs: Any) -> None:
    password_changed = not created and _password_changed(instance, update_fields)
    instance.__dict__[_LOADED_PASSWORD] = instance.__dict__.get("password")
    if password_changed:
        tickets_revoke_unsafe(user_id=instance.pk)
    if not created and (password_changed or not instance.is_active):
        events.send_revoke(instance.pk)


@receiver(post_delete, sender=settings.AUTH_USER_MODEL, dispatch_uid="tenants.revoke_deleted_user")
def user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    events.send_revoke(instance.pk)


@receiver(post_save, sender=Membership, dispatch_uid="tenants.revoke_inactive_membership")
def membership_saved(sender: Any, instance: Membership, created: bool, **kwargs: Any) -> None:
    if not instance.is_active:
        events.send_revoke(instance.user_id, tenant_id=instance.tenant_id)


@receiver(post_delete, sender=Membership, dispatch_uid="tenants.revoke_deleted_membership")
def membership_deleted(sender: Any, instance: Membership, **kwargs: Any) -> None:
    events.send_revoke(instance.user_id, tenant_id=instance.tenant_id)
