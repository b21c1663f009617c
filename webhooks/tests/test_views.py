from __future__ import annotations

import hashlib
import io
import json
from typing import Any
from unittest import mock

import pytest
from django.core.management import call_command
from django.db import OperationalError
from django.test import Client

from inbox.models import Contact, Conversation, Message, MessageStatusEvent, TenantEvent
from inbox.tests.fixtures import World
from tenants.scoping import scopes_disabled
from webhooks.models import ProcessingState, SignatureVerdict, WebhookEvent
from webhooks.parsers import signature_for
from webhooks.tests import payloads

pytestmark = pytest.mark.django_db

SECRET = "test-app-secret"


@pytest.fixture(autouse=True)
def _secrets(settings: Any) -> None:
    settings.WHATSAPP_APP_SECRET = SECRET
    settings.WHATSAPP_VERIFY_TOKEN = "test-verify-token"


def _messages(tenant_id: int) -> list[Message]:
    with scopes_disabled():
        return list(Message.objects.filter(tenant_id=tenant_id).order_by("wa_timestamp", "pk"))


# --- GET handshake -----------------------------------------------------------------------------------------------------


def test_it_answers_the_challenge_for_the_right_verify_token(client: Client, world: World) -> None:
    response = client.get(
        payloads.URL, {"hub.mode": "subscribe", "hub.verify_token": "test-verify-token", "hub.challenge": "1158201444"}
    )
    assert response.status_code == 200
    assert response.content == b"1158201444"
    assert response["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": "test-verify-token", "hub.challenge": "1"},
        {"hub.challenge": "1"},
    ],
)
def test_it_refuses_the_handshake_otherwise(client: Client, world: World, params: dict[str, str]) -> None:
    response = client.get(payloads.URL, params)
    assert response.status_code == 403
    assert b"1" not in response.content


def test_it_accepts_a_numbers_own_verify_token(client: Client, world: World) -> None:
    with scopes_disabled():
        world.globex_number.verify_token = "globex-own-token"
        world.globex_number.save()
    response = client.get(
        payloads.URL, {"hub.mode": "subscribe", "hub.verify_token": "globex-own-token", "hub.challenge": "42"}
    )
    assert response.status_code == 200 and response.content == b"42"


def test_other_methods_are_not_allowed(client: Client, world: World) -> None:
    assert client.put(payloads.URL, data=b"{}").status_code == 405


# --- POST: signatures ----------------------------------------------------------------------------------------------------


def test_it_stores_and_processes_a_signed_body_before_answering(client: Client, world: World) -> None:
    data = payloads.body(messages=[payloads.message("messages.json", "text")])
    response = payloads.deliver(client, data)
    assert response.status_code == 200
    event = WebhookEvent.objects.get()
    assert event.signature == SignatureVerdict.VALID
    assert event.state == ProcessingState.PROCESSED
    assert bytes(event.raw_body) == payloads.encode(data)
    [message] = _messages(world.acme.pk)
    assert message.text == "Hallo, wo ist meine Bestellung?"
    assert _messages(world.globex.pk) == []


def test_lone_surrogates_in_a_body_are_processed_as_replacement_characters(client: Client, world: World) -> None:
    """JSON can spell a code point no UTF-8 text holds (a lone `\\udc4d` escape); the databases refuse to store one,
    so it failed the message's processing (found by fuzz/webhook_view.py). The body is kept as it came."""
    wa_id = payloads.cases("messages.json")["text"]["from"]
    text = payloads.text_message("wamid.LONE\udc4d", wa_id=wa_id, text="thumbs \udc4d up \U0001f44d")
    reaction = {
        "from": wa_id,
        "id": "wamid.REACT1",
        "timestamp": "1764288100",
        "type": "reaction",
        "reaction": {"message_id": "wamid.LONE\udc4d", "emoji": "\ud83d"},
    }
    data = payloads.body(messages=[text, reaction])
    raw_body = payloads.encode(data)
    assert b"\\udc4d" in raw_body  # json.dumps escapes it: the wire form a sender would use
    assert payloads.post(client, raw_body).status_code == 200
    event = WebhookEvent.objects.get()
    assert event.state == ProcessingState.PROCESSED, event.last_error
    assert bytes(event.raw_body) == raw_body
    [message] = _messages(world.acme.pk)
    assert message.wa_message_id == "wamid.LONE\ufffd"
    assert message.text == "thumbs \ufffd up \U0001f44d"  # a valid pair is left alone
    with scopes_disabled():
        assert [r.emoji for r in message.reactions.all()] == ["\ufffd"]  # the reaction found its message


@pytest.mark.parametrize("signature", [None, "sha256=" + "0" * 64, "md5=abc", signature_for(b"other", SECRET)])
def test_it_rejects_missing_or_wrong_signatures(client: Client, world: World, signature: str | None) -> None:
    data = payloads.body(messages=[payloads.message("messages.json", "text")])
    response = payloads.deliver(client, data, signature=signature)
    assert response.status_code == 403
    event = WebhookEvent.objects.get()  # recorded for admins...
    assert event.state == ProcessingState.REJECTED
    assert event.signature == (SignatureVerdict.MISSING if signature is None else SignatureVerdict.INVALID)
    assert _messages(world.acme.pk) == []  # ...and never processed
    call_command("reprocess_webhooks", "--id", str(event.pk), stdout=io.StringIO())
    assert _messages(world.acme.pk) == []


def test_a_body_signed_over_the_exact_wire_bytes_verifies(client: Client, world: World) -> None:
    wire = payloads.raw("unicode_wire.json")
    assert b"\\u00fc" in wire and b"\\/" in wire  # Meta escapes non-ASCII and "/"
    reserialised = json.dumps(json.loads(wire), ensure_ascii=False).encode()
    assert signature_for(reserialised, SECRET) != signature_for(wire, SECRET)
    assert payloads.post(client, wire, signature=signature_for(reserialised, SECRET)).status_code == 403
    assert payloads.post(client, wire).status_code == 200
    [message] = _messages(world.acme.pk)
    assert message.text == "Grüße 😀 — see https://example.com/order/1042"
    with scopes_disabled():
        assert message.conversation.contact.profile_name == "Jürgen Müller-Åström"


def test_a_number_with_its_own_app_secret_needs_it(client: Client, world: World) -> None:
    with scopes_disabled():
        world.acme_number.app_secret = "acme-own-secret"
        world.acme_number.save()
    data = payloads.body(messages=[payloads.message("messages.json", "text")])
    # Signed with the default secret: stored (it is a valid signature) but that number's change is not applied.
    assert payloads.deliver(client, data).status_code == 200
    assert _messages(world.acme.pk) == []
    assert "not signed with that number's app secret" in WebhookEvent.objects.get().last_error
    assert payloads.deliver(client, data, secret="acme-own-secret").status_code == 200
    assert len(_messages(world.acme.pk)) == 1


# --- POST: storage, limits and failures ------------------------------------------------------------------------------------


def test_it_answers_503_and_keeps_nothing_when_the_database_is_down(client: Client, world: World) -> None:
    data = payloads.body(messages=[payloads.message("messages.json", "text")])
    with mock.patch("webhooks.services._store", side_effect=OperationalError("server closed")):
        response = payloads.deliver(client, data)
    assert response.status_code == 503
    assert WebhookEvent.objects.count() == 0
    assert payloads.deliver(client, data).status_code == 200  # Meta's retry then lands
    assert len(_messages(world.acme.pk)) == 1


def test_a_3mb_body_is_accepted(client: Client, world: World) -> None:
    data = payloads.body(messages=[payloads.message("messages.json", "text")])
    data["entry"][0]["changes"][0]["value"]["padding"] = "x" * (3 * 1024 * 1024)
    raw_body = payloads.encode(data)
    assert len(raw_body) > 3 * 1024 * 1024 > 2621440  # above Django's default DATA_UPLOAD_MAX_MEMORY_SIZE
    assert payloads.post(client, raw_body).status_code == 200
    assert len(_messages(world.acme.pk)) == 1


def test_a_body_over_the_webhook_limit_is_refused(client: Client, world: World, settings: Any) -> None:
    settings.WHATSAPP_WEBHOOK_MAX_BYTES = 1000
    assert payloads.post(client, b"{" + b" " * 2000 + b"}").status_code == 413
    assert WebhookEvent.objects.count() == 0


def test_malformed_json_is_stored_failed_and_answered_200(client: Client, world: World) -> None:
    response = payloads.post(client, b'{"object": "whatsapp_business_account", "entry": [')
    assert response.status_code == 200
    event = WebhookEvent.objects.get()
    assert event.state == ProcessingState.FAILED
    assert "invalid JSON" in event.last_error


def test_the_same_body_five_times_is_one_message(client: Client, world: World) -> None:
    data = payloads.body(messages=[payloads.message("messages.json", "text")])
    for _ in range(5):
        assert payloads.deliver(client, data).status_code == 200
    assert WebhookEvent.objects.filter(state=ProcessingState.PROCESSED).count() == 5
    assert len(_messages(world.acme.pk)) == 1
    with scopes_disabled():
        assert TenantEvent.objects.filter(tenant=world.acme, type="message:new").count() == 1


def test_a_batch_for_two_tenants_and_an_unknown_number_routes_every_item(client: Client, world: World) -> None:
    assert payloads.post(client, payloads.raw("batch_two_tenants.json")).status_code == 200
    acme = _messages(world.acme.pk)
    globex = _messages(world.globex.pk)
    assert [m.wa_message_id for m in acme] == ["wamid.BATCH_A1", "wamid.BATCH_A2", "wamid.BATCH_A3"]
    assert [m.wa_message_id for m in globex] == ["wamid.BATCH_B1"]
    with scopes_disabled():
        assert Contact.objects.filter(tenant=world.acme).exclude(wa_id__startswith="4917").count() == 2
        assert Contact.objects.get(wa_id="4915112340102").bsuid == "DE.88812345678901234567"
        assert not Contact.objects.filter(wa_id="4915112340301").exists()
        statuses = MessageStatusEvent.objects.order_by("wa_message_id", "timestamp")
        # Statuses for sends we have not stored: kept, per tenant, to apply when the wamid is stored.
        assert [(s.tenant_id, s.status, s.applied) for s in statuses] == [
            (world.acme.pk, "sent", False),
            (world.acme.pk, "delivered", False),
            (world.globex.pk, "sent", False),
            (world.globex.pk, "read", False),
        ]
    event = WebhookEvent.objects.get()
    assert event.state == ProcessingState.PROCESSED
    assert "unknown phone_number_id '999999999'" in event.last_error


def test_an_unknown_number_is_recorded_and_reprocessing_picks_it_up_later(client: Client, world: World) -> None:
    data = payloads.body(messages=[payloads.message("messages.json", "text")], phone_number_id="333000333")
    assert payloads.deliver(client, data).status_code == 200
    event = WebhookEvent.objects.get()
    assert "unknown phone_number_id" in event.last_error
    from inbox.tests.factories import make_number

    make_number(world.globex, phone_number_id="333000333")
    call_command("reprocess_webhooks", "--id", str(event.pk), stdout=io.StringIO())
    assert len(_messages(world.globex.pk)) == 1
    assert _messages(world.acme.pk) == []


@pytest.mark.parametrize("fixture", ["template_status.json", "account_update.json", "value_errors.json"])
def test_non_message_fields_are_stored_and_acknowledged(client: Client, world: World, fixture: str) -> None:
    assert payloads.post(client, payloads.raw(fixture)).status_code == 200
    event = WebhookEvent.objects.get()
    assert event.state == ProcessingState.PROCESSED
    assert event.last_error  # what was done with it is noted for admins
    with scopes_disabled():
        assert Conversation.objects.count() == 2  # only the world's own


def test_the_sweeper_processes_events_whose_enqueue_was_lost(client: Client, world: World) -> None:
    data = payloads.body(messages=[payloads.message("messages.json", "text")])
    with mock.patch("webhooks.services.webhook_enqueue"):
        assert payloads.deliver(client, data).status_code == 200
    assert _messages(world.acme.pk) == []
    WebhookEvent.objects.update(received_at="2020-01-01T00:00:00Z")
    from webhooks.tasks import webhook_sweep

    assert webhook_sweep() == 1
    assert len(_messages(world.acme.pk)) == 1
    assert WebhookEvent.objects.get().state == ProcessingState.PROCESSED


def test_a_batch_task_processes_every_event_even_when_one_of_them_raises(client: Client, world: World) -> None:
    bodies = [payloads.body(messages=[payloads.message("messages.json", "text")]) for _ in range(3)]
    with mock.patch("webhooks.services.webhook_enqueue"):  # stored, not processed
        for index, data in enumerate(bodies):
            data["entry"][0]["changes"][0]["value"]["messages"][0]["id"] = f"wamid.batch.{index}"
            assert payloads.deliver(client, data).status_code == 200
    ids = list(WebhookEvent.objects.order_by("pk").values_list("pk", flat=True))
    from webhooks import services
    from webhooks.tasks import webhook_process_many

    original = services.webhook_process

    def second_raises(event_id: int) -> Any:
        if event_id == ids[1]:
            raise RuntimeError("worker trouble")
        return original(event_id)

    with mock.patch.object(services, "webhook_process", second_raises):
        states = webhook_process_many.apply(kwargs={"event_ids": ids}).get()
    assert states == [ProcessingState.PROCESSED, None, ProcessingState.PROCESSED]
    assert len(_messages(world.acme.pk)) == 2
    assert WebhookEvent.objects.get(pk=ids[1]).state == ProcessingState.RECEIVED  # left for the sweeper


@pytest.mark.django_db(transaction=True)
async def test_under_asgi_a_3mb_signed_body_is_stored_and_processed(world: World) -> None:
    from asgiref.sync import sync_to_async
    from django.test import AsyncClient

    data = payloads.body(messages=[payloads.message("messages.json", "text")])
    data["entry"][0]["changes"][0]["value"]["padding"] = "é" * (560 * 1024)  # escaped on the wire: > 3 MB
    raw_body = payloads.encode(data)
    assert len(raw_body) > 3 * 1024 * 1024
    response = await AsyncClient().post(
        payloads.URL,
        data=raw_body,
        content_type="application/json",
        headers={"X-Hub-Signature-256": signature_for(raw_body, SECRET)},
    )
    assert response.status_code == 200

    def count() -> int:
        from django.db import connection

        try:
            return len(_messages(world.acme.pk))
        finally:
            connection.close()  # this executor thread's connection goes back before the test database is dropped

    assert await sync_to_async(count)() == 1


def test_a_stored_event_reads_back_as_it_was_written(client: Client, world: World) -> None:
    """The raw INSERT on PostgreSQL (the ORM's save elsewhere) stores every column as the model would."""
    data = payloads.body(messages=[payloads.message("messages.json", "text")])
    with mock.patch("webhooks.services.webhook_enqueue"):
        response = payloads.deliver(client, data)
    assert response.status_code == 200
    event = WebhookEvent.objects.get()
    raw = payloads.encode(data)
    assert bytes(event.raw_body) == raw
    assert event.body_sha256 == hashlib.sha256(raw).hexdigest()
    assert event.headers["x-hub-signature-256"] == signature_for(raw, SECRET)
    assert (event.signature, event.state, event.attempts, event.last_error) == (
        SignatureVerdict.VALID,
        ProcessingState.RECEIVED,
        0,
        "",
    )
    assert event.received_at is not None and event.processed_at is None
