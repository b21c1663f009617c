"""The send's hand-written statements answer exactly as the ORM reads and the checks they replaced.

A send reads the user with their membership in one statement (accounts.authentication) and the locked conversation
with the client_id lookup in another (outbound._conversation_lock), and writes the message without the ORM's
INSERT compiler. These tests pin what that must not change: the order of the answers (404, then a retry's 200, then
400/413), the instances the rows become, and the kept Redis clients of the throttle and the Celery publish.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from django.conf import settings
from django.db import models

from accounts.models import User
from inbox import selectors
from inbox.models import Conversation, Message
from inbox.services.outbound import _conversation_lock
from inbox.tests import factories
from inbox.tests.api_helpers import assert_error, client_for, isolate_throttles, turl
from inbox.tests.fixtures import World
from tenants.models import Membership, WhatsAppNumber
from tenants.scoping import scopes_disabled, tenant_scope
from tenants.selectors import user_and_membership_unsafe
from tenants.tests.test_rls import app_role, as_role

pytestmark = pytest.mark.django_db

__all__ = ["app_role"]  # a fixture of the RLS tests, used here


@pytest.fixture(autouse=True)
def _fresh_throttles(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_throttles(monkeypatch)


def _fields(instance: models.Model) -> dict[str, Any]:
    return {f.attname: getattr(instance, f.attname) for f in instance._meta.concrete_fields}


def _url(world: World, pk: int) -> str:
    return turl("api-message-list", world.acme, pk=pk)


def test_it_answers_404_first_then_the_retry_then_the_input_error(world: World) -> None:
    bob = client_for(world.bob)
    first = bob.post(_url(world, world.acme_conversation.pk), {"text": "hello", "client_id": "once"})
    assert first.status_code == 201
    bad = {"text": "", "client_id": "once"}  # a retry whose input would be refused now
    for pk in (world.globex_conversation.pk, 999_999):
        assert_error(bob.post(_url(world, pk), bad), 404, "not_found")
        assert_error(bob.post(_url(world, pk), {"text": ""}), 404, "not_found")
        assert_error(bob.post(_url(world, pk), "{broken", content_type="application/json"), 404, "not_found")
        assert_error(bob.post(_url(world, pk), {"text": "hi", "client_id": "new"}), 404, "not_found")
    retry = bob.post(_url(world, world.acme_conversation.pk), bad)
    assert retry.status_code == 200 and retry.json() == first.json()
    assert "text" in assert_error(bob.post(_url(world, world.acme_conversation.pk), {"text": ""}), 400)["fields"]
    with scopes_disabled():
        assert Message.objects.filter(client_id="once").count() == 1
        assert not Message.objects.filter(client_id="new").exists()


def test_the_locked_read_is_what_the_orm_reads(world: World) -> None:
    with scopes_disabled():
        WhatsAppNumber.objects.filter(pk=world.acme_number.pk).update(label="Support")
        number = WhatsAppNumber.objects.get(pk=world.acme_number.pk)
        number.access_token = "a-secret-token"  # encrypted at rest: the row goes through the field's converter
        number.save()
        Conversation.objects.filter(pk=world.acme_conversation.pk).update(assignee=world.alice)
    message = factories.make_message(world.acme_conversation, text="earlier", client_id="known")
    for client_id, existing in ((None, None), ("unknown", None), ("known", message.pk)):
        with tenant_scope(world.acme.pk):
            locked, found = _conversation_lock(tenant=world.acme, pk=world.acme_conversation.pk, client_id=client_id)
            expected = Conversation.objects.select_related("number", "contact", "assignee").get(
                pk=world.acme_conversation.pk
            )
        assert found == existing
        assert _fields(locked) == _fields(expected)
        assert _fields(locked.number) == _fields(expected.number)
        assert locked.number.access_token == "a-secret-token"
        assert _fields(locked.contact) == _fields(expected.contact)
        assert locked.assignee is not None and _fields(locked.assignee) == _fields(expected.assignee)
        assert not locked._state.adding and locked._state.db == expected._state.db


def test_the_locked_read_is_the_tenants_only(world: World) -> None:
    from django.http import Http404

    with tenant_scope(world.acme.pk), pytest.raises(Http404):
        _conversation_lock(tenant=world.acme, pk=world.globex_conversation.pk, client_id=None)
    with scopes_disabled():  # even with the scope (and RLS) out of the way: the statement filters the tenant
        with pytest.raises(Http404):
            _conversation_lock(tenant=world.acme, pk=world.globex_conversation.pk, client_id=None)
        Message.objects.create(
            tenant=world.globex,
            conversation=world.globex_conversation,
            number=world.globex_number,
            direction="out",
            client_id="theirs",
        )
        _, found = _conversation_lock(tenant=world.acme, pk=world.acme_conversation.pk, client_id="theirs")
    assert found is None  # another tenant's client_id is not this tenant's retry


def test_user_and_membership_in_one_read(world: World) -> None:
    user, membership = user_and_membership_unsafe(user_id=world.bob.pk, tenant_slug="acme")
    with scopes_disabled():
        expected = Membership.objects.select_related("user", "tenant").get(user=world.bob, tenant=world.acme)
    assert user is not None and membership is not None
    assert _fields(user) == _fields(User.objects.get(pk=world.bob.pk))
    assert _fields(membership) == _fields(expected) and _fields(membership.tenant) == _fields(expected.tenant)
    assert membership.user is user
    assert user_and_membership_unsafe(user_id=world.bob.pk, tenant_slug="globex")[1] is None
    assert user_and_membership_unsafe(user_id=world.bob.pk, tenant_slug="nope")[1] is None
    assert user_and_membership_unsafe(user_id=999_999, tenant_slug="acme") == (None, None)
    with scopes_disabled():
        Membership.objects.filter(user=world.bob).update(is_active=False)
    user, membership = user_and_membership_unsafe(user_id=world.bob.pk, tenant_slug="acme")
    assert user is not None and membership is None


def test_a_tenant_route_refuses_like_before(world: World) -> None:
    bob = client_for(world.bob)
    url = turl("api-conversation-list", world.acme)
    assert_error(client_for(world.charlie).get(url), 404, "not_found")  # a member elsewhere
    assert_error(bob.get(turl("api-conversation-list", "nope")), 404, "not_found")
    world.bob.set_password("changed")  # simplejwt's revoke claim: the password hash
    world.bob.save()
    assert_error(bob.get(url), 401)
    assert client_for(world.bob).get(url).status_code == 200
    User.objects.filter(pk=world.bob.pk).delete()
    assert_error(bob.get(url), 401)


@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="the kept clients are those of the Redis backends")
def test_the_throttle_and_the_task_publish_keep_their_redis_client() -> None:
    from inbox.permissions import _process_cache

    cache: Any = _process_cache()
    assert cache._cache.get_client(write=True) is cache._cache.get_client(write=False)
    from config.celery import RedisTransport, app

    assert settings.CELERY_BROKER_TRANSPORT == "config.celery:RedisTransport"
    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, RedisTransport)
        channel = connection.default_channel
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second


def test_template_and_non_object_bodies_are_input_errors(world: World) -> None:
    bob = client_for(world.bob)
    url = _url(world, world.acme_conversation.pk)
    assert "template" in assert_error(bob.post(url, {"type": "template"}), 400)["fields"]
    err = assert_error(bob.post(url, {"type": "template", "template": {"language": "en"}}), 400)
    assert "template" in err["fields"]
    assert_error(bob.post(url, [1, 2], format="json"), 400, "validation_error")
    assert_error(bob.post(url, "5", content_type="application/json"), 400, "validation_error")
    assert selectors.conversation_ref(tenant=world.acme, pk=world.acme_conversation.pk).pk == world.acme_conversation.pk


def test_a_known_slug_is_read_in_its_tenants_scope_and_a_wrong_guess_falls_back(world: World) -> None:
    from tenants import selectors as tenant_selectors

    tenant_selectors._tenant_of_slug.pop("acme", None)
    assert user_and_membership_unsafe(user_id=world.bob.pk, tenant_slug="acme")[1] is not None
    assert tenant_selectors._tenant_of_slug["acme"] == world.acme.pk
    assert user_and_membership_unsafe(user_id=world.charlie.pk, tenant_slug="acme")[1] is None  # not a member
    tenant_selectors._tenant_of_slug["globex"] = world.acme.pk  # a stale guess (say, slugs swapped)
    user, membership = user_and_membership_unsafe(user_id=world.charlie.pk, tenant_slug="globex")
    assert membership is not None and membership.tenant_id == world.globex.pk and user is membership.user
    assert tenant_selectors._tenant_of_slug["globex"] == world.globex.pk


@pytest.mark.skipif(not settings.USING_POSTGRES, reason="row-level security is PostgreSQL's")
def test_a_second_send_changes_no_rls_settings(world: World) -> None:
    from django.db import connection

    bob = client_for(world.bob)
    url = _url(world, world.acme_conversation.pk)
    assert bob.post(url, {"text": "one", "client_id": "rls-1"}).status_code == 201
    sent = connection.rls_settings_sent  # type: ignore[attr-defined]
    assert bob.post(url, {"text": "two", "client_id": "rls-2"}).status_code == 201
    assert connection.rls_settings_sent == sent  # type: ignore[attr-defined]


def test_a_stale_guess_under_row_level_security_falls_back(app_role: str, world: World) -> None:
    from tenants import selectors as tenant_selectors

    tenant_selectors._tenant_of_slug["globex"] = world.acme.pk  # RLS then hides globex's memberships
    tenant_selectors._tenant_of_slug["acme"] = world.acme.pk
    with as_role(app_role):
        user, membership = user_and_membership_unsafe(user_id=world.charlie.pk, tenant_slug="globex")
        assert membership is not None and membership.tenant_id == world.globex.pk and user is membership.user
        assert user_and_membership_unsafe(user_id=world.bob.pk, tenant_slug="acme")[1] is not None
        assert user_and_membership_unsafe(user_id=world.charlie.pk, tenant_slug="acme")[1] is None
    assert tenant_selectors._tenant_of_slug["globex"] == world.globex.pk
