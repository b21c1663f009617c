"""Every model is in Django admin, and every admin page loads (list, add, change) for an operator."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.contrib import admin
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from accounts.models import User
from inbox.models import MessageStatusEvent, MessageTemplate, Reaction, ReadMarker, TenantEvent
from inbox.tests.factories import make_message
from tenants.models import SocketTicket
from tenants.scoping import scopes_disabled
from webhooks.models import WebhookEvent

pytestmark = pytest.mark.django_db
OWN_APPS = {"accounts", "tenants", "inbox", "webhooks"}


def test_every_model_of_ours_is_registered() -> None:
    ours = {m for m in apps.get_models() if m._meta.app_label in OWN_APPS}
    assert ours - set(admin.site._registry) == set()


@pytest.fixture
def operator_client(world) -> Client:  # type: ignore[no-untyped-def]
    User.objects.create_superuser("root", "root@example.com", "pw-root-123")
    client = Client()
    client.login(username="root", password="pw-root-123")
    msg = make_message(world.acme_conversation)
    with scopes_disabled():
        Reaction.objects.create(tenant=world.acme, message=msg, emoji="👍")
        ReadMarker.objects.create(tenant=world.acme, user=world.alice, conversation=world.acme_conversation)
        MessageTemplate.objects.create(tenant=world.acme, number=world.acme_number, name="hello")
        MessageStatusEvent.objects.create(
            tenant=world.acme, number=world.acme_number, wa_message_id="w", status="sent", timestamp=msg.wa_timestamp
        )
        TenantEvent.objects.create(tenant=world.acme, seq=1, type="message:new", data={})
        from django.utils import timezone

        SocketTicket.objects.create(tenant=world.acme, user=world.alice, token_hash="h", expires_at=timezone.now())
    WebhookEvent.objects.create(raw_body=b'{"object": "whatsapp_business_account"}', body_sha256="0", signature="valid")
    return client


def test_every_admin_page_loads(operator_client: Client) -> None:
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        base = f"admin:{opts.app_label}_{opts.model_name}"
        response = operator_client.get(reverse(f"{base}_changelist"))
        assert response.status_code == 200, (model, response.status_code)
        if opts.app_label in OWN_APPS:
            response = operator_client.get(reverse(f"{base}_changelist"), {"q": "a"})
            assert response.status_code == 200, model
        with scopes_disabled():
            obj = (
                model._default_manager.first()
                if hasattr(model._default_manager, "with_scopes_disabled")
                else model._default_manager.first()
            )
        if obj is not None:
            response = operator_client.get(reverse(f"{base}_change", args=[obj.pk]))
            assert response.status_code == 200, (model, response.status_code)
        if model_admin.has_add_permission(type("R", (), {"user": User.objects.get(username="root")})()):
            response = operator_client.get(reverse(f"{base}_add"))
            assert response.status_code == 200, (model, "add", response.status_code)


def test_secrets_are_write_only_in_admin(operator_client: Client, world) -> None:  # type: ignore[no-untyped-def]
    with scopes_disabled():
        world.acme_number.access_token = "EAAG-TOKEN-NEVER-SHOWN"
        world.acme_number.app_secret = "APP-SECRET-NEVER-SHOWN"
        world.acme_number.save()
    for url in (
        reverse("admin:tenants_whatsappnumber_changelist"),
        reverse("admin:tenants_whatsappnumber_change", args=[world.acme_number.pk]),
    ):
        body = operator_client.get(url).content.decode()
        assert "NEVER-SHOWN" not in body
    # submitting the form with the secret fields blank keeps them
    response = operator_client.post(
        reverse("admin:tenants_whatsappnumber_change", args=[world.acme_number.pk]),
        {
            "tenant": world.acme.pk,
            "phone_number_id": "111000111",
            "display_phone_number": "15550001111",
            "label": "Main",
            "waba_id": "",
            "auth_error": "",
            "access_token": "",
            "app_secret": "",
            "verify_token": "",
        },
    )
    assert response.status_code == 302
    with scopes_disabled():
        world.acme_number.refresh_from_db()
    assert world.acme_number.access_token == "EAAG-TOKEN-NEVER-SHOWN" and world.acme_number.label == "Main"


def test_webhook_events_show_their_raw_body(operator_client: Client) -> None:
    event = WebhookEvent.objects.get()
    body = operator_client.get(reverse("admin:webhooks_webhookevent_change", args=[event.pk])).content.decode()
    assert "whatsapp_business_account" in body


def test_createsuperuser_works_non_interactively(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "a-long-enough-password-1")
    call_command("createsuperuser", "--noinput", username="ops", email="ops@example.com")
    user = User.objects.get(username="ops")
    assert user.is_superuser and user.check_password("a-long-enough-password-1")


def test_login_by_username_or_email(client: Client) -> None:
    User.objects.create_user("dana", "Dana@Example.com", "pw-dana-123")
    assert Client().login(username="dana", password="pw-dana-123")
    assert Client().login(username="dana@example.com", password="pw-dana-123")
    assert not Client().login(username="dana@example.com", password="wrong")
    assert not Client().login(username="nobody@example.com", password="pw-dana-123")
