"""Seed the browser tests' database: two tenants (acme: alice, bob; globex: charlie), one open conversation each.

Run in the server's environment (`python -m tests.browser.seed`); prints what the tests need as JSON.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta

import django


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.browser.server_settings")
    django.setup()
    from django.utils import timezone

    from accounts.models import User
    from inbox.models import Contact, Conversation, Direction, Message
    from tenants.models import Membership, Role, Tenant, WhatsAppNumber
    from tenants.scoping import scopes_disabled

    password = os.environ["BROWSER_TEST_PASSWORD"]
    out: dict[str, object] = {}
    with scopes_disabled():
        for slug, number_id, people, contact_wa_id, contact_name in (
            ("acme", "900000000001", [("alice", "Alice Agent"), ("bob", "Bob Agent")], "4915100000001", "Maria Acme"),
            ("globex", "900000000002", [("charlie", "Charlie Globex")], "4915100000002", "Greta Globex"),
        ):
            tenant = Tenant.objects.create(slug=slug, name=slug.title())
            for username, name in people:
                user = User.objects.create_user(
                    username=username, password=password, email=f"{username}@example.com", display_name=name
                )
                Membership.objects.create(tenant=tenant, user=user, role=Role.AGENT)
            number = WhatsAppNumber.objects.create(
                tenant=tenant, phone_number_id=number_id, display_phone_number=f"1555{number_id[-7:]}", label="Sandbox"
            )
            contact = Contact.objects.create(tenant=tenant, wa_id=contact_wa_id, profile_name=contact_name)
            at = timezone.now() - timedelta(minutes=5)
            conversation = Conversation.objects.create(
                tenant=tenant, number=number, contact=contact, last_inbound_at=at
            )
            first = Message.objects.create(
                tenant=tenant,
                conversation=conversation,
                number=number,
                direction=Direction.INBOUND,
                text=f"Hello from {contact_name}",
                wa_message_id=f"wamid.SEED{number_id}",
                wa_timestamp=at,
            )
            conversation.last_message = first
            conversation.last_message_at = at
            conversation.save()
            out[slug] = {
                "tenant": slug,
                "conversation": conversation.pk,
                "wa_id": contact_wa_id,
                "contact": contact_name,
            }
        # A long thread over three days, for scrolling back and the "new messages" pill.
        acme = Tenant.objects.get(slug="acme")
        number = WhatsAppNumber.objects.get(tenant=acme)
        harry = Contact.objects.create(tenant=acme, wa_id="4915100000003", profile_name="History Harry")
        start = timezone.now() - timedelta(days=3)
        history = Conversation.objects.create(
            tenant=acme, number=number, contact=harry, last_inbound_at=timezone.now() - timedelta(minutes=1)
        )
        last = None
        for i in range(70):
            inbound = i % 2 == 0
            last = Message.objects.create(
                tenant=acme,
                conversation=history,
                number=number,
                direction=Direction.INBOUND if inbound else Direction.OUTBOUND,
                text=f"history {i:03d}",
                wa_message_id=f"wamid.HIST{i:04d}",
                status="read",
                wa_timestamp=start + timedelta(minutes=i * 60),
            )
        assert last is not None
        history.last_message = last
        history.last_message_at = last.wa_timestamp
        history.save()
        out["history"] = {
            "tenant": "acme",
            "conversation": history.pk,
            "wa_id": harry.wa_id,
            "contact": harry.profile_name,
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
