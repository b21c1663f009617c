# ruff: noqa: F811  (pytest fixtures imported from fake_graph are used as parameters of the same name)
from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from prometheus_client import REGISTRY

from inbox.models import Direction, Message, MessageTemplate, Reaction, SendState, TenantEvent
from inbox.services.outbound import (
    MAX_ATTEMPTS,
    backoff_delay,
    message_deliver,
    message_retry,
    message_send,
    outbox_sweep,
    reaction_send,
)
from inbox.tasks import message_mark_read
from inbox.tests import factories
from inbox.tests.fake_graph import TOKEN, FakeGraph, Reply, fake_graph, graph_error  # noqa: F401
from inbox.tests.fixtures import World
from tenants.models import WhatsAppNumber
from tenants.scoping import scopes_disabled, tenant_scope
from webhooks.models import ProcessingState, WebhookEvent

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _app_secret(settings: Any) -> None:
    # Signed webhooks need a secret whatever DEBUG is (its default is only set in DEBUG).
    settings.WHATSAPP_APP_SECRET = "test-app-secret"


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64

Send = Callable[..., tuple[Message, bool]]


@pytest.fixture
def live_number(world: World, fake_graph: FakeGraph) -> WhatsAppNumber:
    with scopes_disabled():
        world.acme_number.access_token = TOKEN
        world.acme_number.save()
    return world.acme_number


@pytest.fixture
def send(world: World, django_capture_on_commit_callbacks: Any) -> Send:
    """message_send as the API calls it, with the after-commit send task actually running."""

    def run(**kwargs: Any) -> tuple[Message, bool]:
        kwargs.setdefault("client_id", None)
        kwargs.setdefault("sender", world.alice)
        kwargs.setdefault("conversation", world.acme_conversation)
        with django_capture_on_commit_callbacks(execute=True), tenant_scope(world.acme.pk):
            message, created = message_send(tenant=world.acme, **kwargs)
        message.refresh_from_db()
        return message, created

    return run


def due_now(message: Message) -> None:
    with scopes_disabled():
        Message.objects.filter(pk=message.pk).update(send_next_attempt_at=timezone.now() - timedelta(seconds=1))


def sweep(django_capture_on_commit_callbacks: Any) -> dict[str, int]:
    with django_capture_on_commit_callbacks(execute=True):
        return outbox_sweep()


# --- Success ---------------------------------------------------------------------------------------------------------------


def test_it_sends_text_through_the_graph_api(
    world: World, live_number: WhatsAppNumber, fake_graph: FakeGraph, send: Send
) -> None:
    message, created = send(text="Your order left the warehouse: https://example.com/t/1", client_id="c-1")
    assert created
    [request] = fake_graph.sent()
    assert request.path == f"/v25.0/{live_number.phone_number_id}/messages"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.json == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "+" + (world.acme_conversation.contact.wa_id or ""),
        "type": "text",
        "text": {"body": "Your order left the warehouse: https://example.com/t/1", "preview_url": True},
    }
    assert (message.wa_message_id, message.send_state, message.status) == ("wamid.FAKE000001", "sent", "pending")
    assert (message.direction, message.sender_id, message.send_attempts) == (Direction.OUTBOUND, world.alice.pk, 1)
    with scopes_disabled():
        types = list(TenantEvent.objects.filter(tenant=world.acme).order_by("seq").values_list("type", flat=True))
        status_frame = TenantEvent.objects.filter(tenant=world.acme, type="message:status").last()
        assert not TenantEvent.objects.filter(tenant=world.globex).exists()
    assert types == ["message:new", "conversation:updated", "message:status"]
    assert status_frame is not None and status_frame.data["wa_message_id"] == "wamid.FAKE000001"


def test_the_same_client_id_is_one_message_and_one_send(
    world: World, live_number: WhatsAppNumber, fake_graph: FakeGraph, send: Send
) -> None:
    first, created = send(text="hello", client_id="same-key")
    again, created_again = send(text="hello", client_id="same-key")
    assert created and not created_again
    assert again.pk == first.pk
    assert len(fake_graph.sent()) == 1


def test_a_reply_carries_its_context(
    world: World, live_number: WhatsAppNumber, fake_graph: FakeGraph, send: Send
) -> None:
    quoted = factories.make_message(world.acme_conversation)
    message, _ = send(text="About this:", reply_to=quoted)
    assert fake_graph.sent()[0].json["context"] == {"message_id": quoted.wa_message_id}
    assert message.reply_to_id == quoted.pk


def test_media_is_uploaded_then_sent_by_id(
    world: World, live_number: WhatsAppNumber, fake_graph: FakeGraph, send: Send
) -> None:
    upload = SimpleUploadedFile("photo.png", PNG, content_type="image/png")
    message, _ = send(type="image", text="the label", media=upload)
    [uploaded] = fake_graph.sent("/media")
    assert b'name="messaging_product"' in uploaded.body and PNG in uploaded.body
    assert fake_graph.sent()[0].json["image"] == {"id": "upload-1", "caption": "the label"}
    assert (message.media_id, message.media_mime_type, message.media_size) == ("upload-1", "image/png", len(PNG))
    assert message.media_file.name.startswith(f"tenants/{world.acme.pk}/media/")


def test_a_media_link_and_a_document_filename(
    world: World, live_number: WhatsAppNumber, fake_graph: FakeGraph, send: Send
) -> None:
    send(type="document", media_link="https://example.com/invoice.pdf", filename="invoice.pdf", text="Invoice")
    assert fake_graph.sent()[0].json["document"] == {
        "link": "https://example.com/invoice.pdf",
        "caption": "Invoice",
        "filename": "invoice.pdf",
    }


def test_a_template_can_be_sent_outside_the_window(
    world: World, live_number: WhatsAppNumber, fake_graph: FakeGraph, send: Send
) -> None:
    with scopes_disabled():
        MessageTemplate.objects.create(
            tenant=world.acme, number=live_number, name="order_update", body_text="Hi {{1}}, order {{2}} shipped."
        )
        world.acme_conversation.last_inbound_at = timezone.now() - timedelta(days=3)
        world.acme_conversation.save()
    message, _ = send(type="template", template={"name": "order_update", "parameters": ["Maria", "#1042"]})
    assert message.text == "Hi Maria, order #1042 shipped."
    assert fake_graph.sent()[0].json["template"] == {
        "name": "order_update",
        "language": {"code": "en_US"},
        "components": [
            {"type": "body", "parameters": [{"type": "text", "text": "Maria"}, {"type": "text", "text": "#1042"}]}
        ],
    }


# --- Refused before calling Meta ---------------------------------------------------------------------------------------------


def test_free_form_outside_the_24h_window_is_refused(
    world: World, live_number: WhatsAppNumber, fake_graph: FakeGraph, send: Send
) -> None:
    with scopes_disabled():
        world.acme_conversation.last_inbound_at = timezone.now() - timedelta(hours=24, minutes=1)
        world.acme_conversation.save()
    with pytest.raises(ValidationError) as caught:
        send(text="are you there?")
    assert "template" in caught.value.message_dict["window"][0]
    assert fake_graph.requests == []
    with scopes_disabled():
        assert not Message.objects.filter(direction=Direction.OUTBOUND).exists()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"text": ""}, "text"),
        ({"text": "x" * 4097}, "text"),
        ({"type": "location", "text": "x"}, "type"),
        ({"type": "image", "media": SimpleUploadedFile("a.pdf", b"%PDF-1.4", content_type="application/pdf")}, "media"),
        (
            {"type": "sticker", "media": SimpleUploadedFile("s.webp", b"R" * 600_000, content_type="image/webp")},
            "media",
        ),
        ({"type": "image", "media_link": "http://insecure.example/a.png"}, "media_link"),
        ({"type": "template", "template": {"name": "nope"}}, "template"),
    ],
)
def test_bad_input_is_refused_by_field(
    world: World, live_number: WhatsAppNumber, fake_graph: FakeGraph, send: Send, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        send(**kwargs)
    assert field in caught.value.message_dict
    assert fake_graph.requests == []


def test_another_tenants_conversation_is_refused(world: World, send: Send) -> None:
    with pytest.raises(ValidationError):
        send(text="hi", conversation=world.globex_conversation)


# --- Failures: permanent, retryable, unknown --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "code", "title", "detail"),
    [
        (
            graph_error(
                131047,
                "Re-engagement message",
                details="More than 24 hours have passed since the customer last replied.",
            ),
            131047,
            "Re-engagement message",
            "More than 24 hours have passed since the customer last replied.",
        ),
        (graph_error(131026, "Message undeliverable"), 131026, "Message undeliverable", "Message undeliverable"),
        (
            graph_error(100, "Invalid parameter", details="Parameter 'to' is invalid"),
            100,
            "Invalid parameter",
            "Parameter 'to' is invalid",
        ),
        (
            graph_error(190, "Error validating access token", status=401, error_subcode=463),
            190,
            "Error validating access token",
            "Error validating access token",
        ),
    ],
)
def test_permanent_errors_fail_at_once_with_metas_code(
    world: World,
    live_number: WhatsAppNumber,
    fake_graph: FakeGraph,
    send: Send,
    reply: Reply,
    code: int,
    title: str,
    detail: str,
) -> None:
    fake_graph.script("POST", f"/{live_number.phone_number_id}/messages", reply)
    failures_before = REGISTRY.get_sample_value("inbox_send_failures_total", {"code": str(code)}) or 0
    message, _ = send(text="hello")
    assert (message.send_state, message.status) == (SendState.FAILED, "failed")
    # the alert: counted by Meta's code for /metrics
    assert REGISTRY.get_sample_value("inbox_send_failures_total", {"code": str(code)}) == failures_before + 1
    assert (message.error_code, message.error_title, message.error_detail) == (code, title, detail)
    assert message.failed_at is not None
    assert len(fake_graph.sent()) == 1
    with scopes_disabled():
        frame = TenantEvent.objects.filter(type="message:status").last()
        live_number.refresh_from_db()
    assert frame is not None and frame.data["error"]["code"] == code
    assert bool(live_number.auth_error) == (code == 190)


@pytest.mark.parametrize(
    "reply",
    [
        graph_error(130429, "Rate limit hit", details="Cloud API message throughput has been reached."),
        graph_error(131056, "(Business Account, Consumer Account) pair rate limit hit"),
        graph_error(131000, "Something went wrong", status=500),
        graph_error(4, "Application request limit reached"),
        Reply(status=503, body=b"upstream unavailable", content_type="text/plain"),
        Reply(status=429, json={"error": {"message": "Too many calls"}}),
    ],
)
def test_retryable_errors_back_off_then_send_exactly_once(
    world: World,
    live_number: WhatsAppNumber,
    fake_graph: FakeGraph,
    send: Send,
    reply: Reply,
    django_capture_on_commit_callbacks: Any,
) -> None:
    fake_graph.script("POST", f"/{live_number.phone_number_id}/messages", reply)
    before = timezone.now()
    message, _ = send(text="hello")
    assert (message.send_state, message.status, message.send_attempts) == (SendState.QUEUED, "pending", 1)
    assert message.send_next_attempt_at is not None and message.send_next_attempt_at > before
    with tenant_scope(world.acme.pk):
        assert message_deliver(message_id=message.pk) == "skipped"  # not due yet
    due_now(message)
    assert sweep(django_capture_on_commit_callbacks)["enqueued"] == 1
    message.refresh_from_db()
    assert (message.send_state, message.wa_message_id, message.send_attempts) == (SendState.SENT, "wamid.FAKE000001", 2)
    assert len(fake_graph.sent()) == 2


def test_retries_are_bounded(
    world: World,
    live_number: WhatsAppNumber,
    fake_graph: FakeGraph,
    send: Send,
    django_capture_on_commit_callbacks: Any,
) -> None:
    fake_graph.script(
        "POST",
        f"/{live_number.phone_number_id}/messages",
        *[graph_error(131000, "Something went wrong", status=500)] * MAX_ATTEMPTS,
    )
    message, _ = send(text="hello")
    for _ in range(MAX_ATTEMPTS - 1):
        due_now(message)
        sweep(django_capture_on_commit_callbacks)
    message.refresh_from_db()
    assert (message.send_state, message.status, message.error_code) == (SendState.FAILED, "failed", 131000)
    assert message.send_attempts == MAX_ATTEMPTS
    assert len(fake_graph.sent()) == MAX_ATTEMPTS


@pytest.mark.parametrize(
    ("status", "error", "retryable"),
    [
        (400, {"code": 130429, "message": "Rate limit hit"}, True),
        (400, {"code": 131056, "message": "pair rate limit"}, True),
        (400, {"code": 80007, "message": "WABA rate limit"}, True),
        (500, {"code": 131000, "message": "Something went wrong"}, True),
        (400, {"code": 999999, "message": "new and transient", "is_transient": True}, True),
        (500, {"code": 3, "message": "capability"}, False),
        (400, {"code": 131047, "message": "Re-engagement message"}, False),
        (401, {"code": 190, "message": "token expired", "error_subcode": 463}, False),
        (400, {"code": 132001, "message": "Template name does not exist"}, False),
        (400, {"code": 999999, "message": "unknown"}, False),
        (502, None, True),
        (429, None, True),
        (404, None, False),
    ],
)
def test_errors_are_classified_by_metas_code(status: int, error: dict[str, Any] | None, retryable: bool) -> None:
    from inbox.whatsapp.client import classify

    classified = classify(status, {"error": error} if error else "<html>bad gateway</html>")
    assert classified.retryable is retryable
    assert classified.http_status == status
    if error:
        assert (classified.code, classified.title) == (error["code"], error["message"])


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    delays = [backoff_delay(attempt) for attempt in range(1, 12)]
    assert all(0 < d <= 300 for d in delays)
    assert backoff_delay(1) <= 2 < backoff_delay(4)
    assert len({backoff_delay(5) for _ in range(20)}) > 1  # jitter
    assert backoff_delay(5, 131056) >= 128  # Meta's 4^X for the pair rate limit


@pytest.mark.parametrize("reply", [Reply(delay=1.5), Reply(drop=True)])
def test_a_timeout_after_the_request_went_out_is_unknown_and_never_resent(
    world: World,
    live_number: WhatsAppNumber,
    fake_graph: FakeGraph,
    send: Send,
    reply: Reply,
    django_capture_on_commit_callbacks: Any,
) -> None:
    fake_graph.script("POST", f"/{live_number.phone_number_id}/messages", reply)
    message, _ = send(text="hello")
    assert (message.send_state, message.wa_message_id) == (SendState.UNKNOWN, None)
    assert "unknown" in message.error_title.lower()
    assert sweep(django_capture_on_commit_callbacks) == {"enqueued": 0, "requeued": 0, "unknown": 0, "pruned": 0}
    with tenant_scope(world.acme.pk):
        assert message_deliver(message_id=message.pk) == "skipped"
    assert len(fake_graph.sent()) == 1


def test_a_refused_connection_is_retried(world: World, live_number: WhatsAppNumber, send: Send, settings: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    settings.WHATSAPP_GRAPH_BASE_URL = f"http://127.0.0.1:{closed_port}"
    message, _ = send(text="hello")
    assert (message.send_state, message.send_attempts) == (SendState.QUEUED, 1)


def test_a_task_that_runs_twice_sends_once(world: World, live_number: WhatsAppNumber, fake_graph: FakeGraph) -> None:
    message = factories.make_message(
        world.acme_conversation, direction=Direction.OUTBOUND, send_state=SendState.QUEUED, text="hi"
    )
    from inbox.tasks import message_send as task

    assert task.apply(kwargs={"tenant_id": world.acme.pk, "message_id": message.pk}).get() == "sent"
    assert task.apply(kwargs={"tenant_id": world.acme.pk, "message_id": message.pk}).get() == "skipped"
    assert len(fake_graph.sent()) == 1


def test_a_send_that_cannot_be_prepared_fails_visibly(
    world: World, live_number: WhatsAppNumber, fake_graph: FakeGraph
) -> None:
    message = factories.make_message(
        world.acme_conversation,
        direction=Direction.OUTBOUND,
        type="image",
        text="",
        media_file="tenants/1/media/gone.png",
        media_mime_type="image/png",
        send_state=SendState.QUEUED,
    )
    with tenant_scope(world.acme.pk):
        assert message_deliver(message_id=message.pk) == "failed"
    message.refresh_from_db()
    assert (message.send_state, message.status, message.error_title) == (
        "failed",
        "failed",
        "Could not prepare the message",
    )
    assert fake_graph.requests == []


@pytest.mark.parametrize(("started", "expected"), [(False, SendState.SENT), (True, SendState.UNKNOWN)])
def test_the_sweeper_settles_sends_a_crashed_worker_left(
    world: World,
    live_number: WhatsAppNumber,
    fake_graph: FakeGraph,
    django_capture_on_commit_callbacks: Any,
    started: bool,
    expected: str,
) -> None:
    long_ago = timezone.now() - timedelta(minutes=10)
    message = factories.make_message(
        world.acme_conversation,
        direction=Direction.OUTBOUND,
        text="hi",
        send_state=SendState.SENDING,
        send_attempts=1,
        send_next_attempt_at=long_ago,
        send_started_at=long_ago if started else None,
    )
    sweep(django_capture_on_commit_callbacks)
    message.refresh_from_db()
    assert message.send_state == expected
    # Requeued only when the request had not gone out; otherwise it may have reached the customer.
    assert len(fake_graph.sent()) == (0 if started else 1)


def test_a_failed_message_can_be_retried(
    world: World,
    live_number: WhatsAppNumber,
    fake_graph: FakeGraph,
    send: Send,
    django_capture_on_commit_callbacks: Any,
) -> None:
    fake_graph.script("POST", f"/{live_number.phone_number_id}/messages", graph_error(131026, "Message undeliverable"))
    message, _ = send(text="hello")
    assert message.status == "failed"
    with django_capture_on_commit_callbacks(execute=True), tenant_scope(world.acme.pk):
        message_retry(tenant=world.acme, message=message, user=world.alice)
    message.refresh_from_db()
    assert (message.send_state, message.status, message.error_code) == (SendState.SENT, "pending", None)
    assert len(fake_graph.sent()) == 2
    with pytest.raises(ValidationError), tenant_scope(world.acme.pk):
        message_retry(tenant=world.acme, message=message, user=world.alice)  # not failed any more


# --- Reactions and read receipts ----------------------------------------------------------------------------------------------


@pytest.fixture
def inbound(world: World) -> Iterator[Message]:
    yield factories.make_message(world.acme_conversation, wa_message_id="wamid.INBOUND1")


def test_an_agent_reaction_is_stored_and_sent_and_can_be_removed(
    world: World,
    live_number: WhatsAppNumber,
    fake_graph: FakeGraph,
    inbound: Message,
    django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=True), tenant_scope(world.acme.pk):
        reaction = reaction_send(tenant=world.acme, message=inbound, user=world.alice, emoji="🙏")
    assert reaction is not None
    body = fake_graph.sent()[0].json
    assert (body["type"], body["reaction"]) == ("reaction", {"message_id": "wamid.INBOUND1", "emoji": "🙏"})
    with scopes_disabled():
        assert Reaction.objects.get(user=world.alice).wa_message_id == "wamid.FAKE000001"
    with django_capture_on_commit_callbacks(execute=True), tenant_scope(world.acme.pk):
        assert reaction_send(tenant=world.acme, message=inbound, user=world.alice, emoji="") is None
    assert fake_graph.sent()[1].json["reaction"] == {"message_id": "wamid.INBOUND1", "emoji": ""}
    with scopes_disabled():
        assert not Reaction.objects.exists()


def test_mark_read_tells_meta(
    world: World, live_number: WhatsAppNumber, fake_graph: FakeGraph, inbound: Message
) -> None:
    assert message_mark_read.apply(kwargs={"tenant_id": world.acme.pk, "message_id": inbound.pk}).get() is True
    assert fake_graph.sent()[0].json == {
        "messaging_product": "whatsapp",
        "status": "read",
        "message_id": "wamid.INBOUND1",
    }


# --- Sandbox --------------------------------------------------------------------------------------------------------------------


def test_a_sandbox_send_gets_statuses_through_the_signed_webhook(world: World, send: Send) -> None:
    assert world.acme_number.is_sandbox
    message, _ = send(text="hello sandbox")
    assert message.wa_message_id is not None and message.wa_message_id.startswith("wamid.SANDBOX")
    assert message.send_state == SendState.SENT
    assert message.status == "read"
    assert message.sent_at and message.delivered_at and message.read_at
    webhooks = list(WebhookEvent.objects.order_by("pk"))
    assert [(w.signature, w.state) for w in webhooks] == [("valid", ProcessingState.PROCESSED)] * 3
    with scopes_disabled():
        statuses = [e.data["status"] for e in TenantEvent.objects.filter(type="message:status").order_by("seq")]
    assert statuses == ["pending", "sent", "delivered", "read"]


@pytest.mark.django_db(transaction=True)
def test_in_one_process_the_sandbox_ticks_arrive_spaced_out_in_background(world: World, settings: Any) -> None:
    import time

    settings.WHATSAPP_BACKGROUND_TIMERS = True
    settings.WHATSAPP_SANDBOX_STATUS_DELAYS = (0.05, 0.15, 0.3)
    with tenant_scope(world.acme.pk):
        message, _ = message_send(
            tenant=world.acme, conversation=world.acme_conversation, sender=world.alice, client_id=None, text="tick"
        )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # the timers' threads write on their own connections
        message.refresh_from_db()
        processed = WebhookEvent.objects.filter(state=ProcessingState.PROCESSED, signature="valid").count()
        if message.read_at is not None and processed == 3:
            break
        time.sleep(0.05)
    assert message.status == "read"
    assert message.sent_at and message.delivered_at and message.read_at
    with scopes_disabled():
        logged = list(message.status_events.order_by("received_at", "pk").values_list("status", flat=True))
    assert logged == ["sent", "delivered", "read"]  # one after the other, as a person watching would see them
    assert WebhookEvent.objects.filter(state=ProcessingState.PROCESSED, signature="valid").count() == 3


def test_the_sweeper_drops_statuses_that_never_found_their_message(
    world: World, django_capture_on_commit_callbacks: Any
) -> None:
    from inbox.models import MessageStatusEvent

    with scopes_disabled():
        for wamid, age in (("wamid.OLD", 31), ("wamid.RECENT", 1)):
            event = MessageStatusEvent.objects.create(
                tenant=world.acme,
                number=world.acme_number,
                wa_message_id=wamid,
                status="sent",
                timestamp=timezone.now(),
            )
            MessageStatusEvent.objects.filter(pk=event.pk).update(received_at=timezone.now() - timedelta(days=age))
    assert sweep(django_capture_on_commit_callbacks)["pruned"] == 1
    with scopes_disabled():
        assert list(MessageStatusEvent.objects.values_list("wa_message_id", flat=True)) == ["wamid.RECENT"]


# --- Handing sends to the worker (outbound.send_enqueue) -------------------------------------------------------------


@pytest.fixture
def published() -> Iterator[list[dict[str, Any]]]:
    """Publish for real (to the configured broker, whose `default` queue is emptied afterwards) and record the
    messages' headers as Celery sends them."""
    from celery.signals import before_task_publish

    from config.celery import app as celery_app

    recorded: list[dict[str, Any]] = []

    def record(headers: dict[str, Any] | None = None, **_: Any) -> None:
        recorded.append(dict(headers or {}))

    before_task_publish.connect(record, weak=False)
    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = False
    try:
        yield recorded
    finally:
        celery_app.conf.task_always_eager = eager
        before_task_publish.disconnect(record)
        with celery_app.connection_for_write() as connection:
            connection.default_channel.queue_purge("default")


def test_a_committed_send_goes_to_the_worker_after_the_commit_without_the_request_waiting(
    world: World, published: list[dict[str, Any]], django_capture_on_commit_callbacks: Any
) -> None:
    from inbox.services.outbound import _send_batcher

    with django_capture_on_commit_callbacks(execute=False) as callbacks, tenant_scope(world.acme.pk):
        message, created = message_send(
            tenant=world.acme, conversation=world.acme_conversation, sender=world.alice, client_id=None, text="hello"
        )
    assert created and published == []  # nothing leaves before the commit
    for callback in callbacks:
        callback()
    assert _send_batcher.idle(5)
    [headers] = published
    assert headers["task"] == "inbox.tasks.message_send_many"
    assert headers["kwargsrepr"] == repr({"sends": [[world.acme.pk, message.pk]]})


def test_sends_committed_while_a_publish_is_out_share_the_next_one(published: list[dict[str, Any]]) -> None:
    """Under load a send joins the next publish (one task for several sends) instead of paying one of its own."""
    import threading
    from unittest import mock

    from inbox.services.outbound import _send_batcher, send_enqueue

    gate, started = threading.Event(), threading.Event()
    original = _send_batcher.send

    def slow_first(sends: list[tuple[int, int]]) -> None:
        if sends == [(1, 1)]:
            started.set()
            assert gate.wait(5)
        original(sends)

    with mock.patch.object(_send_batcher, "send", slow_first):
        send_enqueue(tenant_id=1, message_id=1)  # returns at once although its publish is held up
        assert started.wait(5)
        for message_id in range(2, 25):
            send_enqueue(tenant_id=1 + message_id % 2, message_id=message_id)
        gate.set()
        assert _send_batcher.idle(5)
    assert [h["kwargsrepr"] for h in published] == [
        repr({"sends": [[1, 1]]}),
        repr({"sends": [[1 + i % 2, i] for i in range(2, 22)]}),  # at most 20 per task, in order
        repr({"sends": [[1 + i % 2, i] for i in (22, 23, 24)]}),
    ]


def test_a_send_whose_publish_failed_is_left_queued_for_the_sweeper(
    world: World, published: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    from unittest import mock

    from inbox.services.outbound import _send_batcher, send_enqueue

    message = factories.make_message(
        world.acme_conversation,
        direction=Direction.OUTBOUND,
        send_state=SendState.QUEUED,
        text="hi",
        send_next_attempt_at=timezone.now(),
    )
    with mock.patch("inbox.services.outbound.apply_with_ids", side_effect=ConnectionError("broker down")):
        send_enqueue(tenant_id=world.acme.pk, message_id=message.pk)
        assert _send_batcher.idle(5)
    assert "could not publish" in caplog.text and published == []
    message.refresh_from_db()
    assert message.send_state == SendState.QUEUED
    assert outbox_sweep()["enqueued"] == 1
    [headers] = published
    assert (headers["task"], headers["kwargsrepr"]) == (
        "inbox.tasks.message_send",
        repr({"tenant_id": world.acme.pk, "message_id": message.pk}),
    )


def test_a_batch_of_one_is_delivered_in_its_task(
    world: World, live_number: WhatsAppNumber, fake_graph: FakeGraph
) -> None:
    from inbox.tasks import message_send_many

    message = factories.make_message(
        world.acme_conversation, direction=Direction.OUTBOUND, send_state=SendState.QUEUED, text="hi"
    )
    assert message_send_many.apply(kwargs={"sends": [[world.acme.pk, message.pk]]}).get() == ["sent"]
    message.refresh_from_db()
    assert message.send_state == SendState.SENT
    assert len(fake_graph.sent()) == 1


def test_a_batch_of_several_becomes_a_send_task_each(world: World, published: list[dict[str, Any]]) -> None:
    from inbox.tasks import message_send_many

    sends = [[world.acme.pk, 11], [world.globex.pk, 12], [world.acme.pk, 13]]
    assert message_send_many.run(sends=sends) == ["queued"] * 3
    assert [(h["task"], h["kwargsrepr"]) for h in published] == [
        ("inbox.tasks.message_send", repr({"tenant_id": tenant_id, "message_id": message_id}))
        for tenant_id, message_id in sends
    ]


def test_a_batched_send_of_another_tenants_message_sends_nothing(
    world: World, live_number: WhatsAppNumber, fake_graph: FakeGraph
) -> None:
    from inbox.tasks import message_send_many

    message = factories.make_message(
        world.acme_conversation, direction=Direction.OUTBOUND, send_state=SendState.QUEUED, text="hi"
    )
    message_send_many.apply(kwargs={"sends": [[world.globex.pk, message.pk]]})
    message.refresh_from_db()
    assert message.send_state == SendState.QUEUED
    assert fake_graph.sent() == []
