from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from inbox.models import (
    Contact,
    Conversation,
    ConversationStatus,
    Direction,
    MediaState,
    Message,
    MessageStatusEvent,
    MessageTemplate,
    Reaction,
    SendState,
    TenantEvent,
)
from inbox.services.inbound import pending_statuses_apply, status_receive
from inbox.tests import factories
from inbox.tests.fixtures import World
from tenants.scoping import scopes_disabled, tenant_scope
from webhooks.parsers import InboundStatus
from webhooks.tests import payloads

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _app_secret(settings: Any) -> None:
    # Signed webhooks need a secret whatever DEBUG is (its default is only set in DEBUG).
    settings.WHATSAPP_APP_SECRET = "test-app-secret"


TEXT_WAMID = payloads.cases("messages.json")["text"]["id"]


def deliver(client: Client, *items: dict[str, Any], pnid: str = payloads.ACME_PNID, **kw: Any) -> None:
    response = payloads.deliver(client, payloads.body(messages=list(items), phone_number_id=pnid, **kw))
    assert response.status_code == 200


def statuses(client: Client, *items: dict[str, Any], pnid: str = payloads.ACME_PNID) -> None:
    assert payloads.deliver(client, payloads.body(statuses=list(items), phone_number_id=pnid)).status_code == 200


def get(wamid: str) -> Message:
    with scopes_disabled():
        return Message.objects.select_related("conversation__contact", "reply_to").get(wa_message_id=wamid)


def events(tenant_id: int, type_: str) -> list[TenantEvent]:
    with scopes_disabled():
        return list(TenantEvent.objects.filter(tenant_id=tenant_id, type=type_).order_by("seq"))


# --- Every message type ------------------------------------------------------------------------------------------------


def test_a_text_message_creates_contact_conversation_and_events(client: Client, world: World) -> None:
    deliver(client, payloads.message("messages.json", "text"))
    message = get(TEXT_WAMID)
    assert (message.direction, message.type, message.text) == (
        Direction.INBOUND,
        "text",
        "Hallo, wo ist meine Bestellung?",
    )
    assert message.wa_timestamp == datetime(2025, 11, 28, tzinfo=UTC)
    contact = message.conversation.contact
    assert (contact.wa_id, contact.profile_name) == ("4915112340001", "Maria Schmidt")
    with scopes_disabled():
        conversation = Conversation.objects.get(pk=message.conversation_id)
    assert conversation.last_message_id == message.pk
    assert conversation.last_inbound_at == message.wa_timestamp
    [new] = events(world.acme.pk, "message:new")
    assert new.data["id"] == message.pk and new.data["text"] == message.text
    assert events(world.acme.pk, "conversation:updated")
    assert events(world.globex.pk, "message:new") == []


@pytest.mark.parametrize(
    ("case", "type_", "text", "mime", "filename", "extra"),
    [
        ("image", "image", "The broken part", "image/jpeg", "", {}),
        ("video", "video", "Unboxing", "video/mp4", "", {}),
        ("audio", "audio", "", "audio/mpeg", "", {"voice": False}),
        ("voice", "audio", "", "audio/ogg; codecs=opus", "", {"voice": True}),
        ("document", "document", "My invoice", "application/pdf", "invoice-1042.pdf", {}),
        ("sticker", "sticker", "", "image/webp", "", {"animated": True}),
    ],
)
def test_media_messages_keep_caption_filename_mime_and_sha(
    client: Client, world: World, case: str, type_: str, text: str, mime: str, filename: str, extra: dict[str, Any]
) -> None:
    raw = payloads.message("messages.json", case)
    deliver(client, raw)
    message = get(raw["id"])
    media = raw[raw["type"]]
    assert (message.type, message.text, message.media_mime_type, message.media_filename) == (
        type_,
        text,
        mime,
        filename,
    )
    assert message.media_id == media["id"]
    assert message.media_sha256 == media["sha256"]
    assert message.media_state in (MediaState.PENDING, MediaState.FAILED)  # the download task runs after commit
    for key, value in extra.items():
        assert message.payload[key] == value


def test_location_contacts_and_replies_of_every_kind(client: Client, world: World) -> None:
    names = ["location", "current_location", "contacts", "interactive_button", "interactive_list", "interactive_flow"]
    names.append("button")
    deliver(client, *[payloads.message("messages.json", n) for n in names])
    location = get("wamid.LOCATION0001")
    assert location.type == "location"
    assert (location.payload["latitude"], location.payload["longitude"], location.payload["name"]) == (
        52.520008,
        13.404954,
        "Alexanderplatz",
    )
    assert get("wamid.LOCATION0002").payload["latitude"] == 48.137154
    contacts = get("wamid.CONTACTS0001")
    assert contacts.type == "contacts" and contacts.text == "Erika Mustermann"
    assert contacts.payload["contacts"][0]["phones"][0]["wa_id"] == "4915112345678"
    button = get("wamid.BUTTONREPLY0001")
    assert (button.type, button.text, button.payload["button_reply"]["id"]) == (
        "interactive",
        "Yes, confirm",
        "confirm",
    )
    assert button.reply_to_wa_id == "wamid.OUTBOUND_BUTTONS"
    listed = get("wamid.LISTREPLY0001")
    assert listed.payload["list_reply"]["description"] == "Morning slot"
    flow = get("wamid.FLOWREPLY0001")
    assert (flow.type, flow.text, flow.payload["type"]) == ("interactive", "Sent", "nfm_reply")
    assert "flow_token" in flow.payload["nfm_reply"]["response_json"]
    template_button = get("wamid.TEMPLATEBUTTON0001")
    assert (template_button.type, template_button.text, template_button.payload["payload"]) == (
        "button",
        "Stop promotions",
        "STOP_PROMOTIONS",
    )


@pytest.mark.parametrize("case", ["unsupported", "order", "system", "future_type"])
def test_unsupported_and_unknown_types_are_kept_with_their_raw_json(client: Client, world: World, case: str) -> None:
    raw = payloads.message("messages.json", case)
    deliver(client, raw)
    message = get(raw["id"])
    assert message.type == "unsupported"
    assert message.payload["meta_type"] == raw["type"]
    assert message.payload["raw"] == raw
    if case == "unsupported":
        assert message.payload["errors"][0]["code"] == 131051


def test_a_reply_links_to_the_quoted_message_and_forwards_are_flagged(client: Client, world: World) -> None:
    deliver(client, payloads.message("messages.json", "text"))
    deliver(client, payloads.message("messages.json", "reply"), payloads.message("messages.json", "forwarded"))
    reply = get("wamid.REPLY0001")
    assert reply.reply_to_id == get(TEXT_WAMID).pk
    assert reply.reply_to_wa_id == TEXT_WAMID
    assert get("wamid.FORWARDED0001").payload["forwarded"] is True


# --- Reactions, edits, deletions -------------------------------------------------------------------------------------------


def test_reactions_apply_to_their_message_replace_and_remove(client: Client, world: World) -> None:
    deliver(client, payloads.message("messages.json", "text"))
    target = get(TEXT_WAMID)
    before = len(events(world.acme.pk, "message:new"))

    def reactions() -> list[str]:
        with scopes_disabled():
            shown = Reaction.objects.filter(message=target, user__isnull=True).exclude(emoji="")
            return list(shown.values_list("emoji", flat=True))

    deliver(client, payloads.message("reactions.json", "react"))
    assert reactions() == ["👍"]
    deliver(client, payloads.message("reactions.json", "react"))  # redelivered: nothing new
    assert len(events(world.acme.pk, "message:new")) == before + 1
    assert events(world.acme.pk, "message:new")[-1].data["reactions"] == [{"emoji": "👍", "user_id": None}]
    deliver(client, payloads.message("reactions.json", "react_again"))
    assert reactions() == ["❤️"]
    deliver(client, payloads.message("reactions.json", "unreact_no_emoji"))
    assert reactions() == []
    assert events(world.acme.pk, "message:new")[-1].data["reactions"] == []
    # an older reaction delivered after the removal does not bring it back (Meta does not order webhooks)
    deliver(client, payloads.message("reactions.json", "react"))
    assert reactions() == []
    deliver(client, payloads.message("reactions.json", "unreact_empty"))
    assert reactions() == []
    with scopes_disabled():
        assert Message.objects.filter(tenant=world.acme, type="reaction").count() == 0  # not messages of their own


def test_a_reaction_to_an_unknown_message_is_ignored(client: Client, world: World) -> None:
    deliver(client, payloads.message("reactions.json", "react"))
    with scopes_disabled():
        assert Reaction.objects.count() == 0


def test_customer_edits_and_deletions_change_the_original(client: Client, world: World) -> None:
    deliver(client, payloads.message("messages.json", "text"))
    deliver(client, payloads.message("edits.json", "edit"))
    edited = get(TEXT_WAMID)
    assert edited.text == "Hallo, wo ist meine Bestellung #1042?"
    assert edited.edited_at == datetime.fromtimestamp(1764288300, tz=UTC)
    assert events(world.acme.pk, "message:new")[-1].data["edited_at"] is not None
    deliver(client, payloads.message("edits.json", "revoke"))
    deleted = get(TEXT_WAMID)
    assert deleted.deleted_at is not None and deleted.text == ""
    assert (
        events(world.acme.pk, "conversation:updated")[-1].data["last_message"]["preview"] == "This message was deleted"
    )
    with scopes_disabled():
        assert (
            Message.objects.filter(tenant=world.acme, wa_message_id__in=["wamid.EDIT0001", "wamid.REVOKE0001"]).count()
            == 0
        )


def test_an_edit_of_a_message_we_never_had_is_kept_as_a_message(client: Client, world: World) -> None:
    deliver(client, payloads.message("edits.json", "edit"))
    assert get("wamid.EDIT0001").text == "Hallo, wo ist meine Bestellung #1042?"


# --- Contacts and conversations --------------------------------------------------------------------------------------------


def test_profile_names_update_and_a_resolved_conversation_reopens(client: Client, world: World) -> None:
    deliver(client, payloads.message("messages.json", "text"))
    conversation = get(TEXT_WAMID).conversation
    with scopes_disabled():
        Conversation.objects.filter(pk=conversation.pk).update(status=ConversationStatus.RESOLVED)
    deliver(
        client,
        payloads.message("messages.json", "forwarded"),
        contacts=[{"profile": {"name": "Maria S."}, "wa_id": "4915112340001"}],
    )
    with scopes_disabled():
        conversation.refresh_from_db()
        assert conversation.status == ConversationStatus.OPEN
        assert Contact.objects.get(pk=conversation.contact_id).profile_name == "Maria S."
        assert Conversation.objects.filter(tenant=world.acme, contact=conversation.contact).count() == 1


def test_a_contact_known_only_by_business_scoped_id_gets_its_phone_later(client: Client, world: World) -> None:
    bsuid = "DE.13491208655302741918"
    first = {
        "from_user_id": bsuid,
        "id": "wamid.BSUID1",
        "timestamp": "1764288000",
        "type": "text",
        "text": {"body": "hi"},
    }
    deliver(client, first, contacts=[{"profile": {"name": "@erika"}, "user_id": bsuid}])
    contact = get("wamid.BSUID1").conversation.contact
    assert (contact.wa_id, contact.bsuid) == (None, bsuid)
    second = {**first, "id": "wamid.BSUID2", "from": "4915112349999"}
    deliver(client, second, contacts=[{"profile": {"name": "Erika"}, "wa_id": "4915112349999", "user_id": bsuid}])
    again = get("wamid.BSUID2").conversation.contact
    assert again.pk == contact.pk and again.wa_id == "4915112349999"


def test_a_changed_number_moves_the_contact_to_it(client: Client, world: World) -> None:
    deliver(client, payloads.message("messages.json", "text"))
    deliver(client, payloads.message("messages.json", "system"))
    contact = get("wamid.SYSTEM0001").conversation.contact
    with scopes_disabled():
        contact.refresh_from_db()
    assert contact.wa_id == "4915112340009"
    later = payloads.message("messages.json", "text", id="wamid.AFTERCHANGE", **{"from": "4915112340009"})
    deliver(client, later)
    assert get("wamid.AFTERCHANGE").conversation_id == get(TEXT_WAMID).conversation_id


def test_the_same_message_to_two_tenants_numbers_stays_in_each(client: Client, world: World) -> None:
    deliver(client, payloads.message("messages.json", "text"))
    deliver(client, payloads.message("messages.json", "text"), pnid=payloads.GLOBEX_PNID)
    with scopes_disabled():
        assert Message.objects.filter(wa_message_id=TEXT_WAMID).count() == 2
    with tenant_scope(world.globex.pk):
        assert [m.number_id for m in Message.objects.filter(wa_message_id=TEXT_WAMID)] == [world.globex_number.pk]


# --- Statuses -------------------------------------------------------------------------------------------------------------


def outbound(world: World, wamid: str, **extra: Any) -> Message:
    return factories.make_message(
        world.acme_conversation, direction=Direction.OUTBOUND, wa_message_id=wamid, send_state=SendState.SENT, **extra
    )


def test_statuses_update_with_their_times_and_failures_keep_metas_error(client: Client, world: World) -> None:
    sent = outbound(world, "wamid.OUTBOUND0001")
    failed = outbound(world, "wamid.OUTBOUND0002")
    cases = payloads.cases("statuses.json")
    statuses(client, cases["sent"], cases["delivered"], cases["failed"])
    sent.refresh_from_db()
    assert sent.status == "delivered"
    assert sent.sent_at == datetime.fromtimestamp(1764289000, tz=UTC)
    assert sent.delivered_at == datetime.fromtimestamp(1764289005, tz=UTC)
    failed.refresh_from_db()
    assert (failed.status, failed.error_code, failed.error_title, failed.error_detail) == (
        "failed",
        131026,
        "Message undeliverable",
        "Message Undeliverable.",
    )
    frames = events(world.acme.pk, "message:status")
    assert frames[-1].data["error"] == {
        "code": 131026,
        "title": "Message undeliverable",
        "detail": "Message Undeliverable.",
    }
    statuses(client, cases["played"])
    sent.refresh_from_db()
    assert sent.status == "read"


STEPS = [("sent", 100), ("delivered", 200), ("read", 300), ("delivered", 200), ("sent", 100)]
_ids = itertools.count()


@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(STEPS), cut=st.integers(min_value=1, max_value=len(STEPS)))
def test_out_of_order_statuses_end_at_the_highest(world: World, order: list[tuple[str, int]], cut: int) -> None:
    message = outbound(world, f"wamid.PROP{next(_ids)}")
    base = timezone.now()
    arrived = order[:cut]
    with tenant_scope(world.acme.pk):
        for status, offset in arrived:
            status_receive(
                tenant=world.acme,
                number=world.acme_number,
                status=InboundStatus(
                    wa_message_id=message.wa_message_id or "",
                    status=status,
                    timestamp=base + timedelta(seconds=offset),
                    recipient_id="",
                    errors=(),
                    raw={},
                ),
            )
    message.refresh_from_db()
    rank = {"sent": 1, "delivered": 2, "read": 3}
    assert message.status == max((s for s, _ in arrived), key=rank.__getitem__)
    for status, offset in arrived:
        assert getattr(message, f"{status}_at") == base + timedelta(seconds=offset)


def test_a_status_that_beats_the_send_response_is_applied_when_the_wamid_is_stored(
    client: Client, world: World
) -> None:
    cases = payloads.cases("statuses.json")
    statuses(client, cases["delivered"], cases["sent"])
    with scopes_disabled():
        assert MessageStatusEvent.objects.filter(applied=False).count() == 2
    message = outbound(world, "wamid.OUTBOUND0001")
    with tenant_scope(world.acme.pk):
        pending_statuses_apply(number=world.acme_number, wa_message_id="wamid.OUTBOUND0001")
    message.refresh_from_db()
    assert message.status == "delivered"
    assert message.sent_at is not None and message.delivered_at is not None
    with scopes_disabled():
        assert MessageStatusEvent.objects.filter(applied=False).count() == 0
        assert MessageStatusEvent.objects.filter(message=message).count() == 2
    statuses(client, cases["delivered"])  # redelivered: logged once
    with scopes_disabled():
        assert MessageStatusEvent.objects.filter(message=message).count() == 2


def test_a_status_for_another_tenants_wamid_changes_nothing(client: Client, world: World) -> None:
    message = outbound(world, "wamid.OUTBOUND0001")
    statuses(client, payloads.cases("statuses.json")["read"], pnid=payloads.GLOBEX_PNID)
    message.refresh_from_db()
    assert message.status == "pending"
    with scopes_disabled():
        assert MessageStatusEvent.objects.get().tenant_id == world.globex.pk


def test_template_status_updates_change_the_template(client: Client, world: World) -> None:
    with scopes_disabled():
        world.acme_number.waba_id = "900000000000001"
        world.acme_number.save()
        template = MessageTemplate.objects.create(
            tenant=world.acme, number=world.acme_number, name="order_update", language="en_US"
        )
        other = MessageTemplate.objects.create(
            tenant=world.globex, number=world.globex_number, name="order_update", language="en_US"
        )
    assert payloads.post(client, payloads.raw("template_status.json")).status_code == 200
    with scopes_disabled():
        template.refresh_from_db()
        other.refresh_from_db()
    assert (template.status, template.meta_template_id) == ("REJECTED", "1689556908129832")
    assert other.status == "APPROVED"  # another WABA's template


# --- Concurrency (PostgreSQL) ----------------------------------------------------------------------------------------------


def stored_event(raw: bytes) -> int:
    from django.conf import settings

    from webhooks.models import WebhookEvent
    from webhooks.parsers import signature_for

    signature = signature_for(raw, settings.WHATSAPP_APP_SECRET)
    return WebhookEvent.objects.create(
        raw_body=raw, body_sha256="x", signature="valid", headers={"x-hub-signature-256": signature}
    ).pk


def _in_threads(*calls: Any) -> list[Any]:
    import threading

    from django.db import connection

    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = calls[i]()
        except Exception as exc:  # surfaced by the assertions below
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


@pytest.mark.django_db(transaction=True)
def test_the_same_body_processed_concurrently_is_one_message(require_postgres: None, world: World) -> None:
    from webhooks.models import WebhookEvent
    from webhooks.services import webhook_process

    raw = payloads.encode(payloads.body(messages=[payloads.message("messages.json", "text")]))
    ids = [stored_event(raw) for _ in range(4)]
    results = _in_threads(*[lambda i=i: webhook_process(i) for i in ids])
    assert all(not isinstance(r, Exception) for r in results), results
    assert [WebhookEvent.objects.get(pk=i).state for i in ids] == ["processed"] * 4
    with scopes_disabled():
        assert Message.objects.filter(wa_message_id=TEXT_WAMID).count() == 1
        assert TenantEvent.objects.filter(tenant=world.acme, type="message:new").count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_first_messages_from_a_new_contact_make_one_contact_and_conversation(
    require_postgres: None, world: World
) -> None:
    from webhooks.services import webhook_process

    first = payloads.message("messages.json", "text", id="wamid.RACE1")
    second = payloads.message("messages.json", "text", id="wamid.RACE2", text={"body": "second"})
    ids = [stored_event(payloads.encode(payloads.body(messages=[m]))) for m in (first, second)]
    results = _in_threads(*[lambda i=i: webhook_process(i) for i in ids])
    assert all(not isinstance(r, Exception) for r in results), results
    with scopes_disabled():
        assert Contact.objects.filter(wa_id="4915112340001").count() == 1
        assert Conversation.objects.filter(contact__wa_id="4915112340001").count() == 1
        assert Message.objects.filter(wa_message_id__in=["wamid.RACE1", "wamid.RACE2"]).count() == 2
