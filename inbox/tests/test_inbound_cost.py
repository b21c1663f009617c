"""The inbound message's hand-written hot path: what it costs in SQL, and that it answers what the ORM would.

webhook_process → number_for_phone_id_unsafe → message_receive (_wamid_stored, _conversation_locked_fast,
message_append_once): none of them caches anything across messages, so a moved or deleted number routes at once.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from inbox.models import Conversation, Direction, Message, MessageType, TenantEvent
from inbox.services import inbound
from inbox.services.core import message_append_once
from inbox.tests import factories
from inbox.tests.fixtures import World
from tenants.models import WhatsAppNumber
from tenants.scoping import ScopeError, scopes_disabled, tenant_scope
from tenants.selectors import number_for_phone_id_unsafe
from webhooks.models import ProcessingState
from webhooks.parsers import InboundMessage
from webhooks.services import webhook_process
from webhooks.tests import payloads

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "test-app-secret"
WA_ID = "4915112349999"
POSTGRES = connection.vendor == "postgresql"


@pytest.fixture(autouse=True)
def _secrets(settings: Any) -> None:
    settings.WHATSAPP_APP_SECRET = SECRET


_text = functools.partial(payloads.text_message, wa_id=WA_ID)
_store = functools.partial(payloads.stored, secret=SECRET)


def _inbound(wamid: str, *, wa_id: str = WA_ID, profile_name: str = "Maria Schmidt") -> InboundMessage:
    return InboundMessage(
        wa_message_id=wamid,
        type="text",
        timestamp=datetime(2026, 1, 1, 12, 0, tzinfo=UTC),
        from_wa_id=wa_id,
        from_bsuid=None,
        profile_name=profile_name,
        text="hi",
    )


def _statements(ctx: CaptureQueriesContext) -> list[str]:
    skipped = ("BEGIN", "COMMIT", "ROLLBACK", "SELECT SET_CONFIG")  # as webhooks/tests/test_processing_cost.py
    return [q["sql"] for q in ctx.captured_queries if not q["sql"].lstrip().upper().startswith(skipped)]


def test_it_stores_a_message_in_a_known_thread_in_6_statements_without_a_savepoint_on_postgresql(
    world: World,
) -> None:
    webhook_process(_store(payloads.body(messages=[_text("wamid.IC1")])))
    event_id = _store(payloads.body(messages=[_text("wamid.IC2")]))

    with CaptureQueriesContext(connection) as ctx:
        event = webhook_process(event_id)

    statements = _statements(ctx)
    assert event is not None and event.state == ProcessingState.PROCESSED, event and event.last_error
    # claim, number, locked conversation with the wamid check, INSERT with the conversation's UPDATE, event log, final
    # state (SQLite: the INSERT and the UPDATE apart, the counter apart, a savepoint around them).
    assert len(statements) <= (6 if POSTGRES else 10), "\n".join(statements)
    if POSTGRES:
        assert not [s for s in statements if "SAVEPOINT" in s.upper()], "\n".join(statements)
    with scopes_disabled():
        assert Message.objects.filter(tenant=world.acme, wa_message_id="wamid.IC2").count() == 1


@pytest.mark.skipif(not POSTGRES, reason="row-level security settings exist on PostgreSQL only")
def test_a_message_changes_the_connection_s_scope_settings_twice(world: World) -> None:
    """Into its tenant and back out: the claim, the number route and the final UPDATE share one setting (bypass)."""
    webhook_process(_store(payloads.body(messages=[_text("wamid.SC1")])))
    ids = [_store(payloads.body(messages=[_text(f"wamid.SC{i}")])) for i in (2, 3, 4)]

    sent = connection.rls_settings_sent  # type: ignore[attr-defined]
    events = [webhook_process(event_id) for event_id in ids]

    assert [e.state for e in events if e is not None] == [ProcessingState.PROCESSED] * 3
    # Bypass once before the first claim (the test stored the events with no scope), then two per message.
    assert connection.rls_settings_sent - sent == 1 + 2 * 3  # type: ignore[attr-defined]


def test_it_stores_a_redelivered_wamid_once_with_one_event(world: World) -> None:
    first = webhook_process(_store(payloads.body(messages=[_text("wamid.TWICE")])))
    again = webhook_process(_store(payloads.body(messages=[_text("wamid.TWICE", text="changed")])))

    assert first is not None and again is not None
    assert (first.state, again.state) == (ProcessingState.PROCESSED, ProcessingState.PROCESSED)
    with scopes_disabled():
        stored = list(Message.objects.filter(wa_message_id="wamid.TWICE"))
        news = [
            e
            for e in TenantEvent.objects.filter(tenant=world.acme, type="message:new")
            if e.data["wa_message_id"] == "wamid.TWICE"
        ]
    assert [m.text for m in stored] == ["hello"]
    assert len(news) == 1


def test_append_once_writes_and_logs_nothing_for_a_wamid_the_number_has(world: World) -> None:
    number = world.acme_number
    with tenant_scope(world.acme.pk):
        stored = inbound.message_receive(tenant=world.acme, number=number, inbound=_inbound("wamid.ONCE"))
    assert stored is not None
    with scopes_disabled():
        events_before = TenantEvent.objects.filter(tenant=world.acme).count()
        conversation = Conversation.objects.select_related("contact").get(pk=stored.conversation_id)
    copy = Message(direction=Direction.INBOUND, type=MessageType.TEXT, text="copy", wa_message_id="wamid.ONCE")

    before = (conversation.last_message_id, conversation.updated_at)
    with tenant_scope(world.acme.pk), transaction.atomic():
        conversation.number = number
        assert message_append_once(conversation=conversation, message=copy) is False
        assert (conversation.last_message_id, conversation.updated_at) == before  # the instance unchanged too
        assert copy.pk is None
        fresh = Message(direction=Direction.INBOUND, type=MessageType.TEXT, text="new", wa_message_id="wamid.ONCE2")
        assert message_append_once(conversation=conversation, message=fresh) is True
        assert conversation.last_message_id == fresh.pk and conversation.updated_at > before[1]

    with scopes_disabled():
        assert list(Message.objects.filter(wa_message_id="wamid.ONCE").values_list("text", flat=True)) == ["hi"]
        assert Message.objects.filter(wa_message_id="wamid.ONCE2").count() == 1
        stored_conversation = Conversation.objects.get(pk=conversation.pk)
        assert (stored_conversation.last_message_id, stored_conversation.updated_at) == (
            fresh.pk,
            conversation.updated_at,
        )
        assert TenantEvent.objects.filter(tenant=world.acme).count() == events_before + 2  # fresh's two only


def test_the_locked_conversation_is_the_one_the_orm_reads_with_contact_and_assignee(world: World) -> None:
    contact = factories.make_contact(world.acme, wa_id=WA_ID, profile_name="Maria Schmidt")
    conversation = factories.make_conversation(world.acme_number, contact, assignee=world.bob)

    with tenant_scope(world.acme.pk):
        read = inbound._conversation_locked_fast(
            tenant=world.acme, number=world.acme_number, inbound=_inbound("wamid.X")
        )
        fast = read.conversation
        orm = Conversation.objects.select_related("contact", "assignee").get(pk=conversation.pk)
    assert fast is not None and (read.stored_pk, read.stored_known) == (None, True)
    for field in Conversation._meta.concrete_fields:
        assert getattr(fast, field.attname) == getattr(orm, field.attname), field.name
    with CaptureQueriesContext(connection) as ctx:
        assert fast.contact.wa_id == WA_ID and fast.contact.pk == contact.pk
        assert fast.assignee is not None and fast.assignee.pk == world.bob.pk
    assert not ctx.captured_queries  # loaded with the row, as select_related does

    with tenant_scope(world.acme.pk):  # a changed profile name: the full path (contact_upsert) takes it
        renamed = _inbound("wamid.Y", profile_name="Maria S.")
        read = inbound._conversation_locked_fast(tenant=world.acme, number=world.acme_number, inbound=renamed)
        assert read.conversation is None and read.stored_known


def test_the_hand_written_reads_stay_in_the_tenant(world: World) -> None:
    contact = factories.make_contact(world.acme, wa_id=WA_ID, profile_name="Maria Schmidt")
    factories.make_conversation(world.acme_number, contact)
    with tenant_scope(world.acme.pk):
        inbound.message_receive(tenant=world.acme, number=world.acme_number, inbound=_inbound("wamid.ISO"))

    with tenant_scope(world.globex.pk):  # globex asking about acme's number: sees nothing of acme's
        read = inbound._conversation_locked_fast(tenant=world.globex, number=world.acme_number, inbound=_inbound("x"))
        assert read == (None, None, False)
        assert inbound._wamid_stored(tenant=world.globex, number=world.acme_number, wa_message_id="wamid.ISO") is None
    with tenant_scope(world.acme.pk):
        stored = inbound._wamid_stored(tenant=world.acme, number=world.acme_number, wa_message_id="wamid.ISO")
        assert stored is not None
        read = inbound._conversation_locked_fast(
            tenant=world.acme, number=world.acme_number, inbound=_inbound("wamid.ISO")
        )
        assert read.conversation is not None and (read.stored_pk, read.stored_known) == (stored, True)


def test_the_hand_written_reads_need_a_tenant_scope_as_the_managers_do(world: World) -> None:
    with pytest.raises(ScopeError):
        inbound._wamid_stored(tenant=world.acme, number=world.acme_number, wa_message_id="wamid.NOSCOPE")
    with pytest.raises(ScopeError):
        inbound._conversation_locked_fast(tenant=world.acme, number=world.acme_number, inbound=_inbound("x"))


def test_number_routing_is_what_the_orm_reads_and_follows_moves_and_deletions(world: World) -> None:
    number = number_for_phone_id_unsafe(phone_number_id=world.acme_number.phone_number_id)
    with scopes_disabled():
        orm = WhatsAppNumber.objects.select_related("tenant").get(pk=world.acme_number.pk)
    assert number is not None
    for field in WhatsAppNumber._meta.concrete_fields:
        assert getattr(number, field.attname) == getattr(orm, field.attname), field.name
    with CaptureQueriesContext(connection) as ctx:
        assert number.tenant.slug == orm.tenant.slug
    assert not ctx.captured_queries
    assert number_for_phone_id_unsafe(phone_number_id="no-such-number") is None

    # Not cached: a number given to another tenant, or deleted, routes accordingly on the next webhook.
    with scopes_disabled():
        WhatsAppNumber.objects.filter(pk=world.acme_number.pk).update(tenant=world.globex)
    moved = number_for_phone_id_unsafe(phone_number_id=world.acme_number.phone_number_id)
    assert moved is not None and moved.tenant_id == world.globex.pk and moved.tenant.pk == world.globex.pk
    with scopes_disabled():
        WhatsAppNumber.objects.filter(pk=world.acme_number.pk).delete()
    assert number_for_phone_id_unsafe(phone_number_id=world.acme_number.phone_number_id) is None
