"""Agents' edits of contacts."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction

from inbox.models import Contact, Conversation
from inbox.services.core import conversation_emit
from tenants.models import Tenant

CONTACT_NAME_MAX = 200


@transaction.atomic
def contact_update(*, tenant: Tenant, contact: Contact, name: str) -> Contact:
    """Set the name agents see (it wins over the WhatsApp profile name; blank falls back to it).

    Logs conversation:updated for each of the contact's conversations, whose payload carries the contact, so open
    inboxes show the new name. Locks the contact row so concurrent edits apply one after the other.
    """
    name = name.strip()
    if len(name) > CONTACT_NAME_MAX:
        raise ValidationError({"name": f"at most {CONTACT_NAME_MAX} characters"})
    locked = Contact.objects.select_for_update().get(pk=contact.pk, tenant=tenant)
    if locked.name == name:
        return locked
    locked.name = name
    locked.save(update_fields=["name", "updated_at"])
    for conversation in Conversation.objects.filter(tenant=tenant, contact=locked).order_by("pk"):
        conversation_emit(conversation)
    return locked
