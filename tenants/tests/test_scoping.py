from __future__ import annotations

import pytest
from django.apps import apps
from django.db import models

from inbox.models import Conversation, Message
from inbox.tests.factories import make_message
from tenants.scoping import ScopeError, scopes_disabled, tenant_scope


def tenant_owned_models() -> list[type[models.Model]]:
    found = []
    for model in apps.get_models():
        field = next((f for f in model._meta.get_fields() if f.name == "tenant"), None)
        if field is not None and field.is_relation and field.many_to_one:
            found.append(model)
    return found


def test_every_tenant_owned_table_has_a_non_null_tenant_and_a_fail_closed_manager() -> None:
    owned = tenant_owned_models()
    assert {m.__name__ for m in owned} >= {
        "Message",
        "Conversation",
        "Contact",
        "Membership",
        "WhatsAppNumber",
        "TenantEvent",
    }
    for model in owned:
        assert not model._meta.get_field("tenant").null, model
        with pytest.raises(ScopeError):
            list(model.objects.all())
        with pytest.raises(ScopeError):
            model.objects.filter(pk=1).exists()


@pytest.mark.django_db
def test_it_shows_only_the_scoped_tenants_rows(world) -> None:  # type: ignore[no-untyped-def]
    mine = make_message(world.acme_conversation)
    theirs = make_message(world.globex_conversation)
    with tenant_scope(world.acme.pk):
        assert list(Message.objects.values_list("pk", flat=True)) == [mine.pk]
        assert not Conversation.objects.filter(pk=world.globex_conversation.pk).exists()
    with tenant_scope(world.globex.pk):
        assert list(Message.objects.values_list("pk", flat=True)) == [theirs.pk]
    with scopes_disabled():
        assert Message.objects.count() == 2
