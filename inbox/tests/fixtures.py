"""Shared fixtures: every test world has two tenants (acme with alice and bob, globex with charlie)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from accounts.models import User
from inbox.models import Conversation
from tenants.models import Role, Tenant, WhatsAppNumber

from . import factories


@dataclass
class World:
    acme: Tenant
    globex: Tenant
    alice: User  # acme admin
    bob: User  # acme agent
    charlie: User  # globex admin
    acme_number: WhatsAppNumber
    globex_number: WhatsAppNumber
    acme_conversation: Conversation
    globex_conversation: Conversation


@pytest.fixture
def world(db: None) -> World:
    acme = factories.make_tenant("acme", "Acme")
    globex = factories.make_tenant("globex", "Globex")
    alice = factories.make_member(acme, role=Role.ADMIN, username="alice")
    bob = factories.make_member(acme, role=Role.AGENT, username="bob")
    charlie = factories.make_member(globex, role=Role.ADMIN, username="charlie")
    acme_number = factories.make_number(acme, phone_number_id="111000111", display_phone_number="15550001111")
    globex_number = factories.make_number(globex, phone_number_id="222000222", display_phone_number="15550002222")
    return World(
        acme=acme,
        globex=globex,
        alice=alice,
        bob=bob,
        charlie=charlie,
        acme_number=acme_number,
        globex_number=globex_number,
        acme_conversation=factories.make_conversation(acme_number),
        globex_conversation=factories.make_conversation(globex_number),
    )


__all__ = ["World", "world"]
