from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from inbox.models import Message, Reaction
from inbox.tests.fixtures import World
from tenants.scoping import scopes_disabled
from webhooks.models import ProcessingState, WebhookEvent
from webhooks.tests import payloads

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _app_secret(settings: Any) -> None:
    # Signed webhooks need a secret whatever DEBUG is (its default is only set in DEBUG).
    settings.WHATSAPP_APP_SECRET = "test-app-secret"


def simulate(*args: str, **options: Any) -> str:
    out = io.StringIO()
    call_command("simulate_inbound", *args, local=True, stdout=out, **options)
    return out.getvalue()


def test_simulate_inbound_posts_a_signed_text_and_a_reaction(world: World) -> None:
    assert "delivered text" in simulate("Hello from the sandbox", tenant="acme", sender="15550001", name="Sam")
    with scopes_disabled():
        message = Message.objects.get(tenant=world.acme, text="Hello from the sandbox")
        assert message.conversation.contact.profile_name == "Sam"
    simulate(tenant="acme", sender="15550001", react_to=message.wa_message_id, emoji="🎉")
    with scopes_disabled():
        assert Reaction.objects.get(message=message).emoji == "🎉"
    simulate(tenant="acme", sender="15550001", react_to=message.wa_message_id)
    with scopes_disabled():
        assert not Reaction.objects.exclude(emoji="").exists()  # a removal leaves an empty tombstone
    assert {e.signature for e in WebhookEvent.objects.all()} == {"valid"}


def test_simulate_inbound_location_and_errors(world: World) -> None:
    simulate("Office", tenant="acme", sender="15550001", location="52.5,13.4")
    with scopes_disabled():
        assert Message.objects.get(type="location").payload["latitude"] == 52.5
    with pytest.raises(CommandError):
        simulate("x", tenant="nope", sender="1")
    with pytest.raises(CommandError):
        simulate(tenant="acme", sender="1")


def test_reprocess_failed_events(world: World, client: Any) -> None:
    payloads.post(client, b"{broken")
    out = io.StringIO()
    call_command("reprocess_webhooks", "--failed", stdout=out)
    assert "failed: unparseable body" in out.getvalue()
    assert WebhookEvent.objects.get().state == ProcessingState.FAILED
    with pytest.raises(CommandError):
        call_command("reprocess_webhooks")


def test_admins_can_reprocess_from_the_admin(world: World, client: Any, admin_client: Any) -> None:
    data = payloads.body(messages=[payloads.message("messages.json", "text")], phone_number_id="444000444")
    payloads.deliver(client, data)
    event = WebhookEvent.objects.get()
    from inbox.tests.factories import make_number

    make_number(world.acme, phone_number_id="444000444")
    response = admin_client.post(
        "/admin/webhooks/webhookevent/", {"action": "reprocess", "_selected_action": [event.pk]}, follow=True
    )
    assert response.status_code == 200
    assert b"1 reprocessed (1 processed, 0 failed)" in response.content
    with scopes_disabled():
        assert Message.objects.filter(
            tenant=world.acme, wa_message_id=data["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
        ).exists()
