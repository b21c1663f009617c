from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from inbox.models import Contact, Direction, Message
from inbox.tests.factories import make_conversation, make_message, make_number
from tenants.scoping import scopes_disabled

pytestmark = pytest.mark.django_db


def test_a_whatsapp_message_id_is_unique_per_number(world) -> None:  # type: ignore[no-untyped-def]
    make_message(world.acme_conversation, wa_message_id="wamid.SAME")
    with pytest.raises(IntegrityError), transaction.atomic():
        make_message(world.acme_conversation, wa_message_id="wamid.SAME")
    # another number (here: another tenant's) may carry the same id
    make_message(world.globex_conversation, wa_message_id="wamid.SAME")
    second_number = make_number(world.acme)
    make_message(make_conversation(second_number), wa_message_id="wamid.SAME")
    with scopes_disabled():
        assert Message.objects.filter(wa_message_id="wamid.SAME").count() == 3


def test_a_client_id_is_unique_per_tenant(world) -> None:  # type: ignore[no-untyped-def]
    make_message(world.acme_conversation, direction=Direction.OUTBOUND, client_id="c-1")
    with pytest.raises(IntegrityError), transaction.atomic():
        other_conv_same_tenant = make_conversation(world.acme_number)
        make_message(other_conv_same_tenant, direction=Direction.OUTBOUND, client_id="c-1")
    make_message(world.globex_conversation, direction=Direction.OUTBOUND, client_id="c-1")
    # messages without a client id (inbound) never collide
    make_message(world.acme_conversation)
    make_message(world.acme_conversation)


def test_a_contact_needs_a_phone_or_a_business_scoped_id_and_each_is_unique_per_tenant(world) -> None:  # type: ignore[no-untyped-def]
    with scopes_disabled():
        with pytest.raises(IntegrityError), transaction.atomic():
            Contact.objects.create(tenant=world.acme, wa_id=None, bsuid=None)
        Contact.objects.create(tenant=world.acme, wa_id=None, bsuid="US.123")
        with pytest.raises(IntegrityError), transaction.atomic():
            Contact.objects.create(tenant=world.acme, bsuid="US.123")
        Contact.objects.create(tenant=world.globex, bsuid="US.123")
        Contact.objects.create(tenant=world.acme, wa_id="4911", bsuid=None)
        with pytest.raises(IntegrityError), transaction.atomic():
            Contact.objects.create(tenant=world.acme, wa_id="4911")


def test_one_conversation_per_number_and_contact(world) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(IntegrityError), transaction.atomic():
        make_conversation(world.acme_number, world.acme_conversation.contact)


def test_number_secrets_are_encrypted_at_rest(world) -> None:  # type: ignore[no-untyped-def]
    from django.db import connection

    number = make_number(world.acme, access_token="EAAG-very-secret", app_secret="s3cr3t")
    with connection.cursor() as cursor:
        cursor.execute("SELECT access_token, app_secret FROM tenants_whatsappnumber WHERE id = %s", [number.pk])
        raw_token, raw_secret = cursor.fetchone()
    assert "very-secret" not in raw_token and raw_token.startswith("fernet:")
    assert "s3cr3t" not in raw_secret
    with scopes_disabled():
        number.refresh_from_db()
    assert number.access_token == "EAAG-very-secret"
    assert number.effective_app_secret() == "s3cr3t"
