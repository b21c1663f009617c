# ruff: noqa: F811  (pytest fixtures imported from fake_graph are used as parameters of the same name)
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

from inbox.models import MediaState, Message, TenantEvent
from inbox.services.media import media_retry
from inbox.tests.fake_graph import TOKEN, FakeGraph, Reply, fake_graph, graph_error  # noqa: F401
from inbox.tests.fixtures import World
from tenants.models import WhatsAppNumber
from tenants.scoping import scopes_disabled, tenant_scope
from webhooks.tests import payloads

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _app_secret(settings: Any) -> None:
    # Signed webhooks need a secret whatever DEBUG is (its default is only set in DEBUG).
    settings.WHATSAPP_APP_SECRET = "test-app-secret"


JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8
IMAGE = payloads.message("messages.json", "image")
MEDIA_ID = IMAGE["image"]["id"]


@pytest.fixture
def live_number(world: World, fake_graph: FakeGraph) -> WhatsAppNumber:
    with scopes_disabled():
        world.acme_number.access_token = TOKEN
        world.acme_number.save()
    return world.acme_number


def receive(client: Client, capture: Any, item: dict[str, Any] = IMAGE) -> Message:
    with capture(execute=True):
        assert payloads.deliver(client, payloads.body(messages=[item])).status_code == 200
    with scopes_disabled():
        return Message.objects.get(wa_message_id=item["id"])


def test_inbound_media_is_downloaded_into_tenant_storage(
    client: Client,
    world: World,
    live_number: WhatsAppNumber,
    fake_graph: FakeGraph,
    django_capture_on_commit_callbacks: Any,
) -> None:
    fake_graph.add_media(MEDIA_ID, JPEG, "image/jpeg")
    message = receive(client, django_capture_on_commit_callbacks)
    assert message.media_state == MediaState.READY
    assert message.media_size == len(JPEG)
    assert message.media_file.name.startswith(f"tenants/{world.acme.pk}/media/")
    with message.media_file.open("rb") as handle:
        assert handle.read() == JPEG
    lookup, download = fake_graph.requests
    assert lookup.path == f"/v25.0/{MEDIA_ID}?phone_number_id={live_number.phone_number_id}"
    assert download.path.startswith("/download/") and download.headers["authorization"] == f"Bearer {TOKEN}"
    with scopes_disabled():
        last = TenantEvent.objects.filter(tenant=world.acme, type="message:new").last()
    assert last is not None and last.data["media"]["state"] == "ready"
    assert last.data["media"]["url"] == f"/api/tenants/acme/messages/{message.pk}/media/"
    with tenant_scope(world.globex.pk):
        assert not Message.objects.filter(pk=message.pk).exists()


def test_an_expired_media_url_is_looked_up_again(
    client: Client,
    world: World,
    live_number: WhatsAppNumber,
    fake_graph: FakeGraph,
    django_capture_on_commit_callbacks: Any,
) -> None:
    fake_graph.add_media(MEDIA_ID, JPEG, "image/jpeg")
    fake_graph.expire_next_downloads = 1
    message = receive(client, django_capture_on_commit_callbacks)
    assert message.media_state == MediaState.READY
    assert [r.path.split("/")[1] for r in fake_graph.requests] == ["v25.0", "download", "v25.0", "download"]


def test_too_large_media_fails_visibly_and_can_be_retried(
    client: Client,
    world: World,
    live_number: WhatsAppNumber,
    fake_graph: FakeGraph,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    fake_graph.add_media(MEDIA_ID, JPEG, "image/jpeg")
    settings.WHATSAPP_MEDIA_MAX_BYTES = 100
    message = receive(client, django_capture_on_commit_callbacks)
    assert (message.media_state, message.media_error) == (MediaState.FAILED, "Media too large")
    assert not message.media_file
    settings.WHATSAPP_MEDIA_MAX_BYTES = 10 * 1024 * 1024
    with django_capture_on_commit_callbacks(execute=True), tenant_scope(world.acme.pk):
        media_retry(tenant=world.acme, message=message)
    message.refresh_from_db()
    assert message.media_state == MediaState.READY


@pytest.mark.parametrize(
    "reply",
    [
        graph_error(131000, "Something went wrong", status=500),
        graph_error(100, "Object does not exist"),
        Reply(delay=1.5),
    ],
)
def test_lookup_failures_mark_the_media_failed(
    client: Client,
    world: World,
    live_number: WhatsAppNumber,
    fake_graph: FakeGraph,
    reply: Reply,
    django_capture_on_commit_callbacks: Any,
) -> None:
    fake_graph.script("GET", f"/{MEDIA_ID}", reply)
    message = receive(client, django_capture_on_commit_callbacks)
    assert message.media_state == MediaState.FAILED
    assert message.media_error


def test_simulated_inbound_media_goes_through_the_sandbox(
    client: Client, world: World, tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    photo = tmp_path / "parcel.png"
    photo.write_bytes(JPEG)
    out = io.StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command(
            "simulate_inbound",
            "Damaged box",
            tenant="acme",
            sender="+49 151 1234",
            image=str(photo),
            local=True,
            stdout=out,
        )
    assert "delivered image" in out.getvalue()
    with scopes_disabled():
        message = Message.objects.get(tenant=world.acme, type="image")
    assert (message.text, message.media_state, message.media_mime_type) == (
        "Damaged box",
        MediaState.READY,
        "image/png",
    )
    with message.media_file.open("rb") as handle:
        assert handle.read() == JPEG
    assert message.conversation.contact.wa_id == "491511234"
