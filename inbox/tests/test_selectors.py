"""Selectors: tenant isolation, per-agent unread counts, display order, search and the event log."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.http import Http404
from django.utils import timezone

from inbox import selectors
from inbox.models import Direction, Message, TenantEvent
from inbox.services.core import conversation_update, read_marker_set
from inbox.tests import factories
from inbox.tests.fixtures import World
from tenants.scoping import scopes_disabled, tenant_scope

pytestmark = pytest.mark.django_db


def test_it_counts_unread_per_agent(world: World) -> None:
    conv = world.acme_conversation
    m1 = factories.make_message(conv, text="hello")
    m2 = factories.make_message(conv, text="again")
    factories.make_message(conv, direction=Direction.OUTBOUND, text="reply")
    with tenant_scope(world.acme.pk):
        read_marker_set(tenant=world.acme, user=world.alice, conversation=conv, message=m1)
        alice = {c.pk: c.unread_count for c in selectors.conversation_list(tenant=world.acme, user=world.alice)}
        bob = {c.pk: c.unread_count for c in selectors.conversation_list(tenant=world.acme, user=world.bob)}
        assert alice[conv.pk] == 1
        assert bob[conv.pk] == 2
        read_marker_set(tenant=world.acme, user=world.alice, conversation=conv, message=m2)
        assert list(selectors.conversation_list(tenant=world.acme, user=world.alice, unread=True)) == []
        assert [c.pk for c in selectors.conversation_list(tenant=world.acme, user=world.bob, unread=True)] == [conv.pk]
        assert selectors.conversation_get(tenant=world.acme, pk=conv.pk, user=world.bob).unread_count == 2


def test_it_never_returns_another_tenants_rows(world: World) -> None:
    globex_message = factories.make_message(world.globex_conversation, text="secret")
    with tenant_scope(world.acme.pk):
        assert [c.pk for c in selectors.conversation_list(tenant=world.acme, user=world.alice)] == [
            world.acme_conversation.pk
        ]
        for getter, pk in (
            (selectors.conversation_get, world.globex_conversation.pk),
            (selectors.message_get, globex_message.pk),
            (selectors.contact_get, world.globex_conversation.contact_id),
            (selectors.number_get, world.globex_number.pk),
            (selectors.conversation_get, "not-a-number"),
        ):
            with pytest.raises(Http404):
                getter(tenant=world.acme, pk=pk)
        assert list(selectors.contact_list(tenant=world.acme, q="")) == [world.acme_conversation.contact]
        assert [m.user_id for m in selectors.member_list(tenant=world.acme)] == [world.alice.pk, world.bob.pk]
        assert list(selectors.conversation_list(tenant=world.acme, user=world.alice, q="secret")) == []
        with pytest.raises(ValidationError):
            selectors.message_list(tenant=world.acme, conversation=world.acme_conversation, before_id=globex_message.pk)


def test_messages_come_in_display_order(world: World) -> None:
    conv = world.acme_conversation
    base = timezone.now() - timedelta(minutes=10)
    late = factories.make_message(conv, wa_timestamp=base + timedelta(minutes=2))
    early = factories.make_message(conv, wa_timestamp=base + timedelta(minutes=1))
    same_time = factories.make_message(conv, wa_timestamp=base + timedelta(minutes=2))
    with tenant_scope(world.acme.pk):
        page = selectors.message_list(tenant=world.acme, conversation=conv)
        assert [m.pk for m in page] == [early.pk, late.pk, same_time.pk]
        before = selectors.message_list(tenant=world.acme, conversation=conv, before_id=same_time.pk, limit=1)
        assert [m.pk for m in before] == [late.pk]
        after = selectors.message_list(tenant=world.acme, conversation=conv, after_id=late.pk)
        assert [m.pk for m in after] == [early.pk, same_time.pk]  # stored later, shown in Meta's order


def test_search_matches_prefixes_of_message_words(world: World) -> None:
    factories.make_message(world.acme_conversation, text="The invoice number is INV-2044")
    with tenant_scope(world.acme.pk):
        for q in ("invoice", "invo", "INVOICE", "number invoice", "inv"):
            assert [c.pk for c in selectors.conversation_list(tenant=world.acme, user=world.bob, q=q)] == [
                world.acme_conversation.pk
            ], q
        assert not selectors.conversation_list(tenant=world.acme, user=world.bob, q="receipt").exists()


def test_message_search_uses_the_gin_index(world: World, require_postgres: None) -> None:
    """The selector's tsvector expression is the indexed one (migration 0002), so PostgreSQL can use the index."""
    from django.db.models import F

    from inbox.selectors import _prefix_tsquery, _SimpleTsVector

    with tenant_scope(world.acme.pk):
        selector_sql = str(selectors.message_text_matches(tenant=world.acme, q="invoice").query)
    assert 'to_tsvector(\'simple\'::regconfig, "inbox_message"."text")' in selector_sql
    with scopes_disabled():
        query = Message.objects.annotate(_fts=_SimpleTsVector(F("text"))).filter(_fts=_prefix_tsquery("invoice"))
        sql, params = query.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "message_text_fts" in plan, plan


def test_the_event_log_and_its_gaps(world: World) -> None:
    with tenant_scope(world.acme.pk):
        for status in ("pending", "resolved", "open"):
            conversation_update(tenant=world.acme, conversation=world.acme_conversation, status=status)
        assert selectors.event_head(tenant=world.acme) == 3
        assert [e.seq for e in selectors.event_list(tenant=world.acme, since=1)] == [2, 3]
        assert [e.seq for e in selectors.event_list(tenant=world.acme, since=0, limit=1)] == [1]
        assert not selectors.event_gap(tenant=world.acme, since=0)
        assert not selectors.event_gap(tenant=world.acme, since=3)
        assert selectors.event_gap(tenant=world.acme, since=4)  # ahead of the log: reload
    with tenant_scope(world.globex.pk):
        assert selectors.event_head(tenant=world.globex) == 0
        assert selectors.event_list(tenant=world.globex, since=0) == []
    with scopes_disabled():
        TenantEvent.objects.filter(tenant=world.acme, seq__lte=2).delete()
        assert Message.objects.count() == 0
    with tenant_scope(world.acme.pk):
        assert selectors.event_gap(tenant=world.acme, since=0)
        assert selectors.event_gap(tenant=world.acme, since=1)
        assert not selectors.event_gap(tenant=world.acme, since=2)
