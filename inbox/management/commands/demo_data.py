"""Create a demo tenant to try the inbox with: an admin, two agents, a sandbox number, conversations.

Safe to run twice: existing rows are kept and nothing is duplicated.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from inbox.models import (
    Contact,
    Conversation,
    ConversationStatus,
    Direction,
    Message,
    MessageTemplate,
    MessageType,
    Reaction,
)
from tenants.models import Membership, Role, Tenant, WhatsAppNumber
from tenants.scoping import scopes_disabled

DEMO_SLUG = "demo"
PEOPLE = [
    ("admin", "Ada Admin", Role.ADMIN, True),
    ("agent1", "Sam Support", Role.AGENT, False),
    ("agent2", "Riley Helpdesk", Role.AGENT, False),
]
CONTACTS = [
    ("4915112345001", "Maria Schmidt"),
    ("14155550102", "John Carter"),
    ("5511987650003", "Lucas Pereira"),
    ("447700900004", "Priya Patel"),
]


class Command(BaseCommand):
    help = "Create (or keep) the demo tenant with users, a sandbox number and sample conversations."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--password", default=os.environ.get("DEMO_PASSWORD", "inbox-demo-2026"))

    def handle(self, *args: Any, **options: Any) -> None:
        password: str = options["password"]
        with scopes_disabled(), transaction.atomic():
            tenant, _ = Tenant.objects.get_or_create(slug=DEMO_SLUG, defaults={"name": "Demo Company"})
            users = {}
            for username, name, role, staff in PEOPLE:
                user, created = User.objects.get_or_create(
                    username=username,
                    defaults={
                        "email": f"{username}@demo.example",
                        "display_name": name,
                        "is_staff": staff,
                        "is_superuser": staff,
                    },
                )
                if created:
                    user.set_password(password)
                    user.save()
                Membership.objects.get_or_create(tenant=tenant, user=user, defaults={"role": role})
                users[username] = user
            number, _ = WhatsAppNumber.objects.get_or_create(
                phone_number_id="100000000000001",
                defaults={"tenant": tenant, "display_phone_number": "15550100001", "label": "Sandbox"},
            )
            MessageTemplate.objects.get_or_create(
                number=number,
                name="order_update",
                language="en_US",
                defaults={
                    "tenant": tenant,
                    "category": "UTILITY",
                    "body_text": "Hi {{1}}, your order {{2}} is on its way.",
                    "components": [{"type": "BODY", "text": "Hi {{1}}, your order {{2}} is on its way."}],
                },
            )
            if not Conversation.objects.filter(tenant=tenant).exists():
                self._conversations(tenant, number, users)
        self.stdout.write(self.style.SUCCESS("Demo tenant ready: slug 'demo'"))
        for username, name, role, staff in PEOPLE:
            extra = " (Django admin too)" if staff else ""
            self.stdout.write(f"  {role:6} {username:7} password: {password}   {name}{extra}")

    def _conversations(self, tenant: Tenant, number: WhatsAppNumber, users: dict[str, User]) -> None:
        now = timezone.now()
        agent = users["agent1"]
        for i, (wa_id, name) in enumerate(CONTACTS):
            contact = Contact.objects.create(tenant=tenant, wa_id=wa_id, profile_name=name)
            start = now - timedelta(hours=30 - i * 8)
            status = [
                ConversationStatus.OPEN,
                ConversationStatus.OPEN,
                ConversationStatus.PENDING,
                ConversationStatus.RESOLVED,
            ][i]
            conv = Conversation.objects.create(
                tenant=tenant,
                number=number,
                contact=contact,
                status=status,
                assignee=agent if i % 2 == 0 else None,
            )
            script = self._script(i)
            last = None
            last_inbound = None
            for j, (direction, mtype, text, extra) in enumerate(script):
                at = start + timedelta(minutes=j * 7)
                msg = Message(
                    tenant=tenant,
                    conversation=conv,
                    number=number,
                    direction=direction,
                    type=mtype,
                    text=text,
                    wa_timestamp=at,
                    **extra,
                )
                if direction == Direction.INBOUND:
                    msg.wa_message_id = f"wamid.DEMO{i:02d}{j:03d}"
                    msg.status = "read"
                    last_inbound = at
                else:
                    msg.sender = agent
                    msg.wa_message_id = f"wamid.DEMOOUT{i:02d}{j:03d}"
                    msg.send_state = "sent"
                    msg.sent_at = at
                    if msg.status in ("delivered", "read"):
                        msg.delivered_at = at + timedelta(seconds=20)
                    if msg.status == "read":
                        msg.read_at = at + timedelta(minutes=2)
                    if msg.status == "failed":
                        msg.failed_at = at + timedelta(seconds=5)
                msg.save()
                last = msg
            if last is not None:
                conv.last_message = last
                conv.last_message_at = last.wa_timestamp
            conv.last_inbound_at = last_inbound
            conv.save()
            first = conv.messages.order_by("wa_timestamp").first()
            if first is not None and i == 0:
                Reaction.objects.create(tenant=tenant, message=first, user=None, emoji="👍")

    @staticmethod
    def _script(i: int) -> list[tuple[str, str, str, dict[str, Any]]]:
        inbound, outbound = Direction.INBOUND, Direction.OUTBOUND
        scripts: list[list[tuple[str, str, str, dict[str, Any]]]] = [
            [
                (inbound, MessageType.TEXT, "Hi! My order #1042 hasn't arrived yet.", {}),
                (outbound, MessageType.TEXT, "Sorry about that, Maria. Let me check.", {"status": "read"}),
                (
                    outbound,
                    MessageType.TEXT,
                    "It left our warehouse yesterday; tracking below.",
                    {"status": "delivered"},
                ),
                (
                    inbound,
                    MessageType.LOCATION,
                    "",
                    {"payload": {"latitude": 52.52, "longitude": 13.405, "name": "Home", "address": "Berlin"}},
                ),
            ],
            [
                (inbound, MessageType.TEXT, "Can I change the delivery address?", {}),
                (outbound, MessageType.TEXT, "Yes — send me the new address please.", {"status": "sent"}),
                (
                    inbound,
                    MessageType.INTERACTIVE,
                    "Yes, please",
                    {"payload": {"type": "button_reply", "button_reply": {"id": "yes", "title": "Yes, please"}}},
                ),
            ],
            [
                (inbound, MessageType.TEXT, "Do you ship to Brazil?", {}),
                (
                    outbound,
                    MessageType.TEXT,
                    "We do! Shipping takes 7–10 days.",
                    {
                        "status": "failed",
                        "error_code": 131026,
                        "error_title": "Message undeliverable",
                        "error_detail": "Unable to deliver message.",
                    },
                ),
            ],
            [
                (inbound, MessageType.TEXT, "Thanks for the help!", {}),
                (outbound, MessageType.TEXT, "You're welcome, Priya!", {"status": "read"}),
            ],
        ]
        return scripts[i]
