"""What processing one inbound message costs in SQL, and that the cheap path behaves like the full one.

The common case (a known contact writing in its existing thread) is one claim (UPDATE … RETURNING), the number, a
wamid check, the conversation locked with its contact, the INSERT, the conversation UPDATE, the event counter and log,
a savepoint around the INSERT, and the final state: bench/profile_inbound.py measures it against PostgreSQL.
"""

from __future__ import annotations

import re
from typing import Any
from unittest import mock

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from inbox.models import Contact, Message, TenantEvent
from inbox.services import inbound
from inbox.tests.fixtures import World
from tenants.scoping import scopes_disabled
from webhooks.models import ProcessingState, WebhookEvent
from webhooks.services import webhook_process
from webhooks.tests import payloads

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "test-app-secret"
WA_ID = "4915112340001"
# Was 21 before the claim returned the row and the known-thread path took one statement; on PostgreSQL the tenant
# counter's UPDATE and the events' INSERT are one statement (inbox/events.py), and so are the message's INSERT and
# the conversation's UPDATE (inbox/services/core.py); the wamid check rides on the locked read.
MAX_STATEMENTS = 6 if connection.vendor == "postgresql" else 10


@pytest.fixture(autouse=True)
def _secrets(settings: Any) -> None:
    settings.WHATSAPP_APP_SECRET = SECRET


def _text(wamid: str, *, text: str = "hello") -> dict[str, Any]:
    return payloads.text_message(wamid, wa_id=WA_ID, text=text)


def _store(data: dict[str, Any]) -> int:
    return payloads.stored(data, SECRET)


def _statements(ctx: CaptureQueriesContext) -> list[str]:
    # Transaction control is not counted (it is the same for every path); savepoints are.
    skipped = ("BEGIN", "COMMIT", "ROLLBACK", "SELECT SET_CONFIG")  # the last: the RLS backend keeping up with scopes
    return [q["sql"] for q in ctx.captured_queries if not q["sql"].lstrip().upper().startswith(skipped)]


def _events(tenant_id: int) -> list[TenantEvent]:
    with scopes_disabled():
        return list(TenantEvent.objects.filter(tenant_id=tenant_id).order_by("seq"))


def test_a_message_in_a_known_thread_costs_at_most_max_statements(world: World) -> None:
    first = webhook_process(_store(payloads.body(messages=[_text("wamid.COST1")])))
    assert first is not None and first.state == ProcessingState.PROCESSED
    event_id = _store(payloads.body(messages=[_text("wamid.COST2")]))

    with CaptureQueriesContext(connection) as ctx:
        event = webhook_process(event_id)

    statements = _statements(ctx)
    assert event is not None and event.state == ProcessingState.PROCESSED, event and event.last_error
    assert len(statements) <= MAX_STATEMENTS, "\n".join(statements)
    # No re-reads: the claim returns the event; contact, number and event are not read back for the payloads.
    assert not [s for s in statements if re.match(r'\s*SELECT .* FROM "webhooks_webhookevent"', s)]
    assert not [s for s in statements if re.search(r'FROM "inbox_contact"', s)]
    assert len([s for s in statements if re.search(r'FROM "tenants_whatsappnumber"', s)]) == 1


def test_the_returned_event_is_what_was_stored(world: World) -> None:
    event = webhook_process(_store(payloads.body(messages=[_text("wamid.RET1")])))
    assert event is not None
    stored = WebhookEvent.objects.get(pk=event.pk)
    for field in ("state", "attempts", "last_error", "processed_at", "received_at", "signature", "headers"):
        assert getattr(event, field) == getattr(stored, field), field
    assert bytes(event.raw_body) == bytes(stored.raw_body)
    assert event.attempts == 1
    assert webhook_process(event.pk) is None  # processed: not claimed again


def test_the_payloads_of_the_known_thread_path_carry_contact_and_number(world: World) -> None:
    webhook_process(_store(payloads.body(messages=[_text("wamid.PAY1")])))
    webhook_process(_store(payloads.body(messages=[_text("wamid.PAY2", text="second")])))
    updated = [e for e in _events(world.acme.pk) if e.type == "conversation:updated"][-1]
    assert updated.data["contact"]["wa_id"] == WA_ID
    assert updated.data["contact"]["profile_name"] == "Maria Schmidt"
    assert updated.data["number"] == {
        "id": world.acme_number.pk,
        "display_phone_number": world.acme_number.display_phone_number,
        "label": world.acme_number.label,
    }
    assert updated.data["last_message"]["preview"] == "second"


def test_a_new_profile_name_or_bsuid_still_updates_the_contact(world: World) -> None:
    webhook_process(_store(payloads.body(messages=[_text("wamid.NAME1")])))
    renamed = payloads.body(
        messages=[{**_text("wamid.NAME2"), "from_user_id": "US.123"}],
        contacts=[{"profile": {"name": "Maria S."}, "wa_id": WA_ID, "user_id": "US.123"}],
    )
    event = webhook_process(_store(renamed))
    assert event is not None and event.state == ProcessingState.PROCESSED, event and event.last_error
    with scopes_disabled():
        contact = Contact.objects.get(tenant=world.acme, wa_id=WA_ID)
        assert (contact.profile_name, contact.bsuid) == ("Maria S.", "US.123")
        assert Message.objects.filter(tenant=world.acme, conversation__contact=contact).count() == 2
    updated = [e for e in _events(world.acme.pk) if e.type == "conversation:updated"][-1]
    assert updated.data["contact"]["profile_name"] == "Maria S."


def test_a_copy_that_commits_first_wins_on_the_unique_wamid(world: World) -> None:
    """A concurrent copy of the message (same wamid) stored between our check and our INSERT: one row, one event."""
    webhook_process(_store(payloads.body(messages=[_text("wamid.RACE0")])))
    real_fast_path = inbound._conversation_locked_fast
    copies: list[Message] = []
    slipped = False

    def copy_slips_in(**kwargs: Any) -> Any:
        nonlocal slipped
        read = real_fast_path(**kwargs)  # finds no copy of the wamid yet
        if not slipped:
            slipped = True
            copies.append(inbound._message_store(tenant=world.acme, number=kwargs["number"], inbound=kwargs["inbound"]))
        return read

    with mock.patch.object(inbound, "_conversation_locked_fast", side_effect=copy_slips_in):
        event = webhook_process(_store(payloads.body(messages=[_text("wamid.RACE1")])))

    assert event is not None and event.state == ProcessingState.PROCESSED, event and event.last_error
    with scopes_disabled():
        assert list(Message.objects.filter(wa_message_id="wamid.RACE1").values_list("pk", flat=True)) == [copies[0].pk]
    news = [e for e in _events(world.acme.pk) if e.type == "message:new" and e.data["wa_message_id"] == "wamid.RACE1"]
    assert len(news) == 1


def _with_async_commit(statements: list[str]) -> list[str]:
    return [s for s in statements if "set_config('synchronous_commit', 'off', true)" in s]


def test_the_claim_and_the_final_state_do_not_wait_for_the_disk_and_the_message_does(
    world: World, require_postgres: None
) -> None:
    """Each of the two webhook-row UPDATEs commits on its own with synchronous_commit off (a crash that loses one
    leaves the event to the sweeper); the message's transaction, and the connection afterwards, keep it on."""
    event_id = _store(payloads.body(messages=[_text("wamid.ASYNC1")]))

    with CaptureQueriesContext(connection) as ctx:
        event = webhook_process(event_id)

    assert event is not None and event.state == ProcessingState.PROCESSED, event and event.last_error
    asynchronous = _with_async_commit([q["sql"] for q in ctx.captured_queries])
    assert len(asynchronous) == 2 and all(
        'UPDATE "webhooks_webhookevent"' in s or "UPDATE webhooks_webhookevent" in s for s in asynchronous
    ), asynchronous
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone() == ("on",)
    stored = WebhookEvent.objects.get(pk=event_id)
    assert (stored.state, stored.attempts) == (ProcessingState.PROCESSED, 1)
    with scopes_disabled():
        assert Message.objects.filter(wa_message_id="wamid.ASYNC1").count() == 1


def test_inside_a_transaction_the_claim_and_final_state_leave_its_commit_alone(
    world: World, require_postgres: None
) -> None:
    """Called inside someone's transaction, the UPDATEs would turn off the wait for that whole transaction's commit:
    there they carry no setting."""
    from django.db import transaction

    event_id = _store(payloads.body(messages=[_text("wamid.ASYNC2")]))
    with transaction.atomic(), CaptureQueriesContext(connection) as ctx:
        event = webhook_process(event_id)
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            assert cursor.fetchone() == ("on",)

    assert event is not None and event.state == ProcessingState.PROCESSED, event and event.last_error
    assert _with_async_commit([q["sql"] for q in ctx.captured_queries]) == []
