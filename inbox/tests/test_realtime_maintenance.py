"""The event-log prune: rows past the retention window go, the head and recent rows stay; replay pages of the log."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from inbox import consumers, events
from inbox.maintenance import event_log_prune
from inbox.models import TenantEvent
from inbox.tests.fixtures import World
from inbox.tests.test_consumers import append_messages
from tenants.scoping import scopes_disabled


def test_it_prunes_events_older_than_the_retention_window_in_every_tenant(world: World, settings: Any) -> None:
    settings.EVENT_RETENTION_DAYS = 7
    append_messages(world.acme_conversation.pk, world.acme.pk, 2)  # seq 1-4
    append_messages(world.globex_conversation.pk, world.globex.pk, 1)  # seq 1-2
    with scopes_disabled():
        old = timezone.now() - timedelta(days=7, minutes=1)
        TenantEvent.objects.filter(tenant=world.acme, seq__lte=2).update(created_at=old)
        TenantEvent.objects.filter(tenant=world.globex).update(created_at=old)
        TenantEvent.objects.filter(tenant=world.acme, seq=3).update(created_at=timezone.now() - timedelta(days=6))
    assert event_log_prune() == 4
    with scopes_disabled():
        assert list(TenantEvent.objects.order_by("tenant_id", "seq").values_list("tenant_id", "seq")) == [
            (world.acme.pk, 3),
            (world.acme.pk, 4),
        ]
    # The heads survive an emptied log, so syncing clients are told about the gap instead of missing events.
    assert consumers._head(world.globex.pk) == 2
    assert consumers._sync_gap(world.globex.pk, 0) == (True, 2)
    assert consumers._sync_gap(world.globex.pk, 2) == (False, 2)
    assert consumers._sync_gap(world.acme.pk, 1) == (True, 4)
    assert consumers._sync_gap(world.acme.pk, 2) == (False, 4)


def test_the_retention_window_is_configurable(world: World, settings: Any) -> None:
    settings.EVENT_RETENTION_DAYS = 1
    append_messages(world.acme_conversation.pk, world.acme.pk, 1)
    with scopes_disabled():
        TenantEvent.objects.update(created_at=timezone.now() - timedelta(days=2))
    assert event_log_prune() == 2
    assert event_log_prune() == 0


def test_a_replay_page_is_the_logged_frames_of_the_tenant_only_in_order(world: World) -> None:
    append_messages(world.acme_conversation.pk, world.acme.pk, 3)  # seq 1-6
    append_messages(world.globex_conversation.pk, world.globex.pk, 2)  # globex's own seq 1-4
    with scopes_disabled():
        logged = [events.event_frame(e) for e in TenantEvent.objects.filter(tenant=world.acme).order_by("seq")]
    # The raw statement gives exactly what the model gives (data decoded, ts in UTC with a Z), acme's rows only.
    assert consumers._events_after(world.acme.pk, 0, None, 100) == logged
    assert consumers._events_after(world.acme.pk, 1, 4, 100) == logged[1:4]
    assert consumers._events_after(world.acme.pk, 2, None, 2) == logged[2:4]
    assert consumers._events_after(world.acme.pk, 6, None, 100) == []
    assert [f["seq"] for f in consumers._events_after(world.globex.pk, 0, None, 100)] == [1, 2, 3, 4]
    assert all(f["ts"].endswith("Z") and isinstance(f["data"], dict) for f in logged)
