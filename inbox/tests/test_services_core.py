from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from inbox import services
from inbox.models import Conversation, ConversationStatus, Direction, Message, TenantEvent
from inbox.status import StatusError
from inbox.tests.factories import make_contact, make_message, make_user
from tenants.scoping import scopes_disabled, tenant_scope

pytestmark = pytest.mark.django_db


def log(tenant_id: int) -> list[tuple[int, str]]:
    with scopes_disabled():
        return list(TenantEvent.objects.filter(tenant_id=tenant_id).order_by("seq").values_list("seq", "type"))


def test_appending_an_inbound_message_logs_it_reopens_and_restarts_the_window(
    world, django_capture_on_commit_callbacks
) -> None:  # type: ignore[no-untyped-def]
    conv = world.acme_conversation
    with scopes_disabled():
        Conversation.objects.filter(pk=conv.pk).update(
            status=ConversationStatus.RESOLVED, last_inbound_at=timezone.now() - timedelta(days=2)
        )
    meta_time = timezone.now() - timedelta(minutes=3)
    with tenant_scope(world.acme.pk), django_capture_on_commit_callbacks(execute=True):
        locked = services.conversation_open_or_get(tenant=world.acme, number=world.acme_number, contact=conv.contact)
        message = services.message_append(
            conversation=locked,
            message=Message(direction=Direction.INBOUND, text="hello", wa_message_id="wamid.X", wa_timestamp=meta_time),
        )
    assert log(world.acme.pk) == [(1, "message:new"), (2, "conversation:updated")]
    assert log(world.globex.pk) == []
    with scopes_disabled():
        conv.refresh_from_db()
        event = TenantEvent.objects.get(tenant=world.acme, seq=1)
    assert conv.status == ConversationStatus.OPEN
    assert conv.last_inbound_at == meta_time and conv.window_open()
    assert conv.last_message_id == message.pk
    assert event.data["id"] == message.pk and event.data["conversation_id"] == conv.pk
    assert event.data["text"] == "hello" and event.data["direction"] == "in"


def test_an_older_message_does_not_replace_the_last_message(world) -> None:  # type: ignore[no-untyped-def]
    newest = make_message(world.acme_conversation, wa_timestamp=timezone.now())
    with tenant_scope(world.acme.pk):
        locked = services.conversation_open_or_get(
            tenant=world.acme, number=world.acme_number, contact=world.acme_conversation.contact
        )
        services.message_append(
            conversation=locked,
            message=Message(direction=Direction.INBOUND, text="late", wa_timestamp=timezone.now() - timedelta(hours=1)),
        )
        assert Conversation.objects.get(pk=locked.pk).last_message_id == newest.pk


def test_status_set_is_monotonic_and_logs_only_changes(world) -> None:  # type: ignore[no-untyped-def]
    msg = make_message(world.acme_conversation, direction=Direction.OUTBOUND, wa_message_id="wamid.OUT")
    with tenant_scope(world.acme.pk):
        assert services.message_status_set(message=msg, status="read")
        assert not services.message_status_set(message=msg, status="delivered")
        assert not services.message_status_set(
            message=msg, status="failed", error=StatusError(code=131026, title="Undeliverable", detail="x")
        )
        msg.refresh_from_db()
    assert msg.status == "read" and msg.delivered_at is not None and msg.error_code is None
    assert [t for _, t in log(world.acme.pk)] == ["message:status"]


def test_a_failed_status_keeps_its_error(world) -> None:  # type: ignore[no-untyped-def]
    msg = make_message(world.acme_conversation, direction=Direction.OUTBOUND)
    with tenant_scope(world.acme.pk):
        services.message_status_set(
            message=msg, status="failed", error=StatusError(code=131047, title="Re-engagement message", detail="24h")
        )
        services.message_status_set(message=msg, status="sent")
        msg.refresh_from_db()
    assert (msg.status, msg.error_code, msg.error_title) == ("failed", 131047, "Re-engagement message")
    with scopes_disabled():
        event = TenantEvent.objects.get(tenant=world.acme, type="message:status")
    assert event.data["error"] == {"code": 131047, "title": "Re-engagement message", "detail": "24h"}


def test_conversation_update_validates_and_refuses_foreign_assignees(world) -> None:  # type: ignore[no-untyped-def]
    with tenant_scope(world.acme.pk):
        conv = services.conversation_update(
            tenant=world.acme, conversation=world.acme_conversation, status="pending", assignee=world.bob
        )
        assert (conv.status, conv.assignee_id) == ("pending", world.bob.pk)
        with pytest.raises(ValidationError):
            services.conversation_update(tenant=world.acme, conversation=conv, assignee=world.charlie)
        with pytest.raises(ValidationError):
            services.conversation_update(tenant=world.acme, conversation=conv, status="archived")
        services.conversation_update(tenant=world.acme, conversation=conv, status="pending")  # no change, no event
    assert [t for _, t in log(world.acme.pk)] == ["conversation:updated"]


def test_contact_upsert_finds_by_either_identity_and_updates_the_profile(world) -> None:  # type: ignore[no-untyped-def]
    with tenant_scope(world.acme.pk):
        a = services.contact_upsert(tenant=world.acme, wa_id="491700", bsuid=None, profile_name="Ann")
        b = services.contact_upsert(tenant=world.acme, wa_id="491700", bsuid="DE.abc", profile_name="Ann B")
        c = services.contact_upsert(tenant=world.acme, wa_id=None, bsuid="DE.abc", profile_name="")
        assert a.pk == b.pk == c.pk
        c.refresh_from_db()
        assert (c.wa_id, c.bsuid, c.profile_name) == ("491700", "DE.abc", "Ann B")
        with pytest.raises(ValidationError):
            services.contact_upsert(tenant=world.acme, wa_id=None, bsuid=None)
    with tenant_scope(world.globex.pk):
        other = services.contact_upsert(tenant=world.globex, wa_id="491700", bsuid=None)
    assert other.pk != a.pk


def test_read_markers_are_per_agent_and_only_move_forward(world) -> None:  # type: ignore[no-untyped-def]
    conv = world.acme_conversation
    first = make_message(conv, wa_timestamp=timezone.now() - timedelta(minutes=2), wa_message_id=None)
    second = make_message(conv, wa_timestamp=timezone.now() - timedelta(minutes=1), wa_message_id=None)
    with tenant_scope(world.acme.pk):
        services.read_marker_set(tenant=world.acme, user=world.alice, conversation=conv, message=second)
        marker = services.read_marker_set(tenant=world.acme, user=world.alice, conversation=conv, message=first)
        assert marker.last_read_message_id == second.pk
        bob_marker = services.read_marker_set(tenant=world.acme, user=world.bob, conversation=conv, message=first)
        assert bob_marker.last_read_message_id == first.pk
        other = make_message(world.globex_conversation)
        with pytest.raises(ValidationError):
            services.read_marker_set(tenant=world.acme, user=world.alice, conversation=conv, message=other)
    assert [t for _, t in log(world.acme.pk)] == ["message:read", "message:read"]


def test_services_refuse_to_run_outside_a_tenant_scope(world) -> None:  # type: ignore[no-untyped-def]
    from tenants.scoping import ScopeError

    with pytest.raises(ScopeError):
        services.contact_upsert(tenant=world.acme, wa_id="1", bsuid=None)
    make_contact(world.acme)
    make_user()
