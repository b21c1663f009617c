"""Plain factory functions for tests. They write outside any tenant scope (tests may; production code may not)."""

from __future__ import annotations

import itertools
from typing import Any

from django.utils import timezone

from accounts.models import User
from inbox.models import Contact, Conversation, Direction, Message
from tenants.models import Membership, Role, Tenant, WhatsAppNumber
from tenants.scoping import scopes_disabled

_seq = itertools.count(1)
PASSWORD = "correct-horse-battery"


def make_tenant(slug: str | None = None, name: str | None = None) -> Tenant:
    n = next(_seq)
    slug = slug or f"tenant-{n}"
    return Tenant.objects.create(slug=slug, name=name or slug.title())


def make_user(username: str | None = None, *, password: str = PASSWORD, **extra: Any) -> User:
    username = username or f"user{next(_seq)}"
    extra.setdefault("email", f"{username}@example.com")
    extra.setdefault("display_name", username.title())
    return User.objects.create_user(username=username, password=password, **extra)


def make_member(tenant: Tenant, user: User | None = None, *, role: str = Role.AGENT, **user_extra: Any) -> User:
    user = user or make_user(**user_extra)
    with scopes_disabled():
        Membership.objects.create(tenant=tenant, user=user, role=role)
    return user


def make_number(tenant: Tenant, *, phone_number_id: str | None = None, **extra: Any) -> WhatsAppNumber:
    n = next(_seq)
    with scopes_disabled():
        return WhatsAppNumber.objects.create(
            tenant=tenant,
            phone_number_id=phone_number_id or f"10{n:010d}",
            display_phone_number=extra.pop("display_phone_number", f"1555000{n:04d}"),
            **extra,
        )


def make_contact(tenant: Tenant, *, wa_id: str | None = None, **extra: Any) -> Contact:
    with scopes_disabled():
        return Contact.objects.create(tenant=tenant, wa_id=wa_id or f"4917{next(_seq):08d}", **extra)


def make_conversation(number: WhatsAppNumber, contact: Contact | None = None, **extra: Any) -> Conversation:
    contact = contact or make_contact(number.tenant)
    extra.setdefault("last_inbound_at", timezone.now())
    with scopes_disabled():
        return Conversation.objects.create(tenant=number.tenant, number=number, contact=contact, **extra)


def make_message(conversation: Conversation, *, direction: str = Direction.INBOUND, **extra: Any) -> Message:
    n = next(_seq)
    extra.setdefault("text", f"message {n}")
    if direction == Direction.INBOUND:
        extra.setdefault("wa_message_id", f"wamid.TEST{n:08d}")
    with scopes_disabled():
        message = Message.objects.create(
            tenant_id=conversation.tenant_id,
            conversation=conversation,
            number_id=conversation.number_id,
            direction=direction,
            **extra,
        )
        conversation.last_message = message
        conversation.last_message_at = message.wa_timestamp
        conversation.save(update_fields=["last_message", "last_message_at"])
    return message
