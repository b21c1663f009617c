"""Sending through the REST API ends in a real Celery send to the Graph API (mocked at the HTTP boundary by respx).

Idempotency: the same client_id returns the same message and never makes a second Graph call, under retries and
under concurrent requests (PostgreSQL).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import respx
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.utils import timezone

from inbox.models import Conversation, Direction, Message, MessageTemplate, Reaction, SendState, TenantEvent
from inbox.tests import factories
from inbox.tests.api_helpers import assert_error, client_for, isolate_throttles, turl
from inbox.tests.fixtures import World
from tenants.models import WhatsAppNumber
from tenants.scoping import scopes_disabled

pytestmark = pytest.mark.django_db

GRAPH = "https://graph.test"


@pytest.fixture(autouse=True)
def _fresh_throttles(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_throttles(monkeypatch)


@pytest.fixture
def graph(world: World, settings: Any) -> Iterator[respx.MockRouter]:
    """Acme's number on the real Graph client, with the Graph API mocked; counts the calls per endpoint."""
    settings.WHATSAPP_GRAPH_BASE_URL = GRAPH
    settings.WHATSAPP_BACKGROUND_TIMERS = False
    with scopes_disabled():
        number = WhatsAppNumber.objects.get(pk=world.acme_number.pk)
    number.access_token = "EAAB-test-token"
    number.save()
    counter = {"n": 0}

    def accepted(request: Any) -> Any:
        counter["n"] += 1
        return respx.MockResponse(
            200,
            json={"messaging_product": "whatsapp", "messages": [{"id": f"wamid.OUT{counter['n']:04d}"}]},
        )

    version = settings.WHATSAPP_API_VERSION
    with respx.mock(assert_all_called=False) as router:
        router.post(f"{GRAPH}/{version}/111000111/messages", name="messages").mock(side_effect=accepted)
        router.post(f"{GRAPH}/{version}/111000111/media", name="media").respond(200, json={"id": "media-up-1"})
        yield router


def _sent_bodies(graph: respx.MockRouter) -> list[dict[str, Any]]:
    return [json.loads(call.request.content) for call in graph.routes["messages"].calls]


def _send_url(world: World, conversation: Conversation | None = None) -> str:
    return turl("api-message-list", world.acme, pk=(conversation or world.acme_conversation).pk)


def test_it_sends_text_once_per_client_id(
    world: World, graph: respx.MockRouter, django_capture_on_commit_callbacks: Any
) -> None:
    bob = client_for(world.bob)
    with django_capture_on_commit_callbacks(execute=True):
        first = bob.post(_send_url(world), {"text": "Hello there", "client_id": "c-1"})
    assert first.status_code == 201, first.content
    body = first.json()
    assert body["client_id"] == "c-1" and body["direction"] == "out" and body["sender"]["id"] == world.bob.pk
    # The Celery task sent it to the Graph API.
    assert _sent_bodies(graph) == [
        {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": "+" + world.acme_conversation.contact.wa_id,
            "type": "text",
            "text": {"body": "Hello there", "preview_url": False},
        }
    ]
    # Retries (a lost response, a double click) return the same message and send nothing.
    for _ in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            again = bob.post(_send_url(world), {"text": "Hello there", "client_id": "c-1"})
        assert again.status_code == 200
        assert again.json()["id"] == body["id"]
    assert graph.routes["messages"].call_count == 1
    with scopes_disabled():
        message = Message.objects.get(client_id="c-1")
        assert message.send_state == SendState.SENT and message.wa_message_id == "wamid.OUT0001"
        assert Message.objects.filter(tenant=world.acme, direction=Direction.OUTBOUND).count() == 1
        new_events = TenantEvent.objects.filter(tenant=world.acme, type="message:new")
        assert [e.data["id"] for e in new_events] == [message.pk]
    # The same client id in another tenant is another tenant's business.
    with scopes_disabled():
        WhatsAppNumber.objects.filter(pk=world.globex_number.pk).update(access_token="")
    other = client_for(world.charlie).post(
        turl("api-message-list", world.globex, pk=world.globex_conversation.pk), {"text": "hi", "client_id": "c-1"}
    )
    assert other.status_code == 201 and other.json()["id"] != body["id"]


def test_send_validation(world: World, graph: respx.MockRouter) -> None:
    bob = client_for(world.bob)
    url = _send_url(world)
    assert "text" in assert_error(bob.post(url, {"text": ""}), 400, "validation_error")["fields"]
    assert "type" in assert_error(bob.post(url, {"type": "hologram", "text": "x"}), 400)["fields"]
    assert "client_id" in assert_error(bob.post(url, {"text": "x", "client_id": "has spaces"}), 400)["fields"]
    assert "client_id" in assert_error(bob.post(url, {"text": "x", "client_id": "x" * 65}), 400)["fields"]
    assert "template" in assert_error(bob.post(url, {"type": "template"}), 400)["fields"]
    assert "media" in assert_error(bob.post(url, {"type": "image"}), 400)["fields"]
    foreign = factories.make_message(world.globex_conversation)
    assert "reply_to" in assert_error(bob.post(url, {"text": "x", "reply_to": foreign.pk}), 400)["fields"]
    assert "text" in assert_error(bob.post(url, {"text": "x" * 4097}), 400)["fields"]
    assert_error(bob.post(url, "{broken", content_type="application/json"), 400, "parse_error")
    assert graph.routes["messages"].call_count == 0
    with scopes_disabled():
        assert not Message.objects.filter(direction=Direction.OUTBOUND).exists()


def test_outside_the_window_only_templates_go(
    world: World, graph: respx.MockRouter, django_capture_on_commit_callbacks: Any
) -> None:
    with scopes_disabled():
        Conversation.objects.filter(pk=world.acme_conversation.pk).update(
            last_inbound_at=timezone.now() - timedelta(hours=25)
        )
        MessageTemplate.objects.create(
            tenant=world.acme, number=world.acme_number, name="order_update", body_text="Order {{1}} has shipped"
        )
    bob = client_for(world.bob)
    closed = assert_error(bob.post(_send_url(world), {"text": "hello?"}), 400, "validation_error")
    assert "template" in closed["fields"]["window"][0]
    bad = bob.post(_send_url(world), {"type": "template", "template": {"name": "order_update", "parameters": []}})
    assert "template" in assert_error(bad, 400)["fields"]
    with django_capture_on_commit_callbacks(execute=True):
        sent = bob.post(
            _send_url(world),
            {"type": "template", "client_id": "t-1", "template": {"name": "order_update", "parameters": ["A-17"]}},
        )
    assert sent.status_code == 201, sent.content
    assert sent.json()["text"] == "Order A-17 has shipped"
    [graph_body] = _sent_bodies(graph)
    assert graph_body["type"] == "template"
    assert graph_body["template"] == {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "A-17"}]}],
    }


def test_it_sends_an_uploaded_image_replying_to_a_message(
    world: World, graph: respx.MockRouter, django_capture_on_commit_callbacks: Any
) -> None:
    quoted = factories.make_message(world.acme_conversation, text="can you send a photo?")
    image = SimpleUploadedFile("photo.png", b"\x89PNG\r\n\x1a\n" + b"0" * 100, content_type="image/png")
    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(world.bob).post(
            _send_url(world),
            {"type": "image", "text": "here", "media": image, "client_id": "img-1", "reply_to": quoted.pk},
            format="multipart",
        )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["reply_to_id"] == quoted.pk and body["media"]["filename"] == "photo.png"
    assert graph.routes["media"].call_count == 1
    [graph_body] = _sent_bodies(graph)
    assert graph_body["image"] == {"id": "media-up-1", "caption": "here"}
    assert graph_body["context"] == {"message_id": quoted.wa_message_id}
    # The sender can download what was sent.
    download = client_for(world.alice).get(body["media"]["url"])
    assert download.status_code == 200 and b"".join(download.streaming_content).startswith(b"\x89PNG")


def test_oversize_uploads_get_413(world: World, graph: respx.MockRouter, settings: Any) -> None:
    settings.API_UPLOAD_MAX_BYTES = 2048
    big = SimpleUploadedFile("big.png", b"\x89PNG\r\n\x1a\n" + b"0" * 200_000, content_type="image/png")
    response = client_for(world.bob).post(
        _send_url(world), {"type": "image", "media": big, "client_id": "big-1"}, format="multipart"
    )
    assert_error(response, 413, "payload_too_large")
    settings.API_UPLOAD_MAX_BYTES = 100 * 1024 * 1024
    sticker = SimpleUploadedFile("s.webp", b"RIFF" + b"0" * (600 * 1024), content_type="image/webp")
    response = client_for(world.bob).post(_send_url(world), {"type": "sticker", "media": sticker}, format="multipart")
    assert_error(response, 413, "payload_too_large")
    with scopes_disabled():
        assert not Message.objects.filter(direction=Direction.OUTBOUND).exists()


def test_it_reacts_and_retries(world: World, graph: respx.MockRouter, django_capture_on_commit_callbacks: Any) -> None:
    bob = client_for(world.bob)
    inbound = factories.make_message(world.acme_conversation, text="thanks!")
    url = turl("api-message-reaction", world.acme, pk=inbound.pk)
    with django_capture_on_commit_callbacks(execute=True):
        reacted = bob.post(url, {"emoji": "👍"})
    assert reacted.status_code == 200, reacted.content
    assert reacted.json()["reactions"] == [{"emoji": "👍", "user_id": world.bob.pk}]
    assert _sent_bodies(graph)[-1]["reaction"] == {"message_id": inbound.wa_message_id, "emoji": "👍"}
    with django_capture_on_commit_callbacks(execute=True):
        removed = bob.post(url, {"emoji": ""})
    assert removed.json()["reactions"] == []
    with scopes_disabled():
        assert not Reaction.objects.filter(message=inbound).exists()
    assert "emoji" in assert_error(bob.post(url, {}), 400)["fields"]

    failed = factories.make_message(
        world.acme_conversation,
        direction=Direction.OUTBOUND,
        text="try me again",
        status="failed",
        send_state=SendState.FAILED,
        error_code=131000,
        error_title="Something went wrong",
    )
    with django_capture_on_commit_callbacks(execute=True):
        retried = bob.post(turl("api-message-retry", world.acme, pk=failed.pk))
    assert retried.status_code == 200, retried.content
    assert retried.json()["error"] is None
    with scopes_disabled():
        failed.refresh_from_db()
        assert failed.send_state == SendState.SENT and failed.wa_message_id
    assert _sent_bodies(graph)[-1]["text"]["body"] == "try me again"
    # Only failed outbound messages can be retried.
    assert_error(bob.post(turl("api-message-retry", world.acme, pk=inbound.pk)), 400, "validation_error")


def test_it_throttles_sends_but_not_reads(
    world: World, graph: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rest_framework.throttling import ScopedRateThrottle

    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"send": "2/min", "auth": "20/min", "ticket": "20/min"})
    bob = client_for(world.bob)
    assert bob.post(_send_url(world), {"text": "1"}).status_code == 201
    assert bob.post(_send_url(world), {"text": "2"}).status_code == 201
    assert_error(bob.post(_send_url(world), {"text": "3"}), 429, "throttled")
    assert bob.get(_send_url(world)).status_code == 200


@pytest.mark.django_db(transaction=True)
def test_concurrent_sends_with_one_client_id_make_one_message(
    require_postgres: None, world: World, graph: respx.MockRouter
) -> None:
    """Parallel requests with the same client_id: one message, one Graph call, every caller gets that message."""
    workers = 6
    barrier = threading.Barrier(workers)
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def send() -> None:
        try:
            client = client_for(world.bob)
            barrier.wait(timeout=10)
            response = client.post(_send_url(world), {"text": "only once", "client_id": "race-1"})
            results.append((response.status_code, response.json()["id"]))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert len(results) == workers
    assert len({message_id for _, message_id in results}) == 1
    assert sorted(status for status, _ in results) == [200] * (workers - 1) + [201]
    with scopes_disabled():
        assert Message.objects.filter(client_id="race-1").count() == 1
        assert Message.objects.get(client_id="race-1").send_state == SendState.SENT
    assert graph.routes["messages"].call_count == 1
