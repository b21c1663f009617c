"""The cost of an agent send through the REST API stays where bench/profile_send.py measured it.

A send is one statement per thing it must do: the user (JWT) with their membership and its tenant, the
conversation locked with what conversation:updated carries and the client_id lookup (the 404 and the idempotency
check), the INSERT, the conversation UPDATE, the tenant's event counter and the two events in one INSERT (counter
and events are one statement on PostgreSQL). Nothing is read back: message:new, conversation:updated and the 201
body are built from the rows in hand, and are equal to what a fresh read serialises to.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection
from django.http import Http404
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from inbox import events, selectors
from inbox.models import Direction, MediaState, Message, MessageType, Reaction, SendState, TenantEvent
from inbox.serializers import (
    ConversationOutputSerializer,
    MessageOutputSerializer,
    conversation_data,
    message_data,
    messages_data,
)
from inbox.tests import factories
from inbox.tests.api_helpers import client_for, isolate_throttles, make_media_message, turl
from inbox.tests.fixtures import World
from tenants.models import Membership
from tenants.scoping import scopes_disabled, tenant_scope
from tenants.selectors import membership_get

pytestmark = pytest.mark.django_db

# What one send runs, in order (SAVEPOINT/RELEASE aside: they depend on whether a caller's transaction is open).
SEND_STATEMENTS = [
    "SELECT accounts_user",  # with the membership of the URL's tenant and the tenant (the permission's)
    "SELECT inbox_conversation",  # locked, with number, contact, assignee and the client_id lookup: 404 + idempotency
    "INSERT inbox_message",
    "UPDATE inbox_conversation",
    "UPDATE inbox_eventsequence",
    "INSERT inbox_tenantevent",  # message:new and conversation:updated
]
if connection.vendor == "postgresql":  # the INSERT and the UPDATE are one statement there, and so are the counter's
    # UPDATE and the events' INSERT
    SEND_STATEMENTS[2:] = [
        "WITH INSERT inbox_message UPDATE inbox_conversation",
        "WITH UPDATE inbox_eventsequence INSERT inbox_tenantevent",
    ]


def _kind(sql: str) -> str:
    verb = sql.split(None, 1)[0].upper()
    if verb == "WITH":  # WITH a AS (<statement>), b AS (<statement>) <statement>: each, the final one if it writes
        parts, rest = [], sql
        while (start := re.search(r"\bAS\s*\(", rest)) is not None:
            depth, at = 1, start.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(rest[at], 0)
                at += 1
            parts.append(_kind(rest[start.end() : at - 1]))
            rest = rest[at:]
        final = _kind(rest.lstrip(" ,"))
        return " ".join(["WITH", *parts, *([] if final.startswith("SELECT") else [final])])
    while re.search(r"\([^()]*\)", sql):  # the outer statement's table, not a subquery's or a nested join's
        sql = re.sub(r"\([^()]*\)", "", sql)
    if verb == "SELECT":
        table = re.search(r'\bFROM\s+"?(\w+)"?', sql)
    elif verb == "INSERT":
        table = re.search(r'\bINTO\s+"?(\w+)"?', sql)
    else:
        table = re.search(r'^\s*\w+\s+"?(\w+)"?', sql)
    return f"{verb} {table.group(1) if table else '?'}"


def _statements(ctx: CaptureQueriesContext) -> list[str]:
    sqls = [q["sql"] for q in ctx.captured_queries]
    return [_kind(s) for s in sqls if not s.upper().startswith(("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO"))]


@pytest.fixture(autouse=True)
def _fresh_throttles(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_throttles(monkeypatch)


def _send(client: Any, world: World, **body: Any) -> Any:
    url = turl("api-message-list", world.acme, pk=world.acme_conversation.pk)
    return client.post(url, {"text": "hello", **body}, format="json")


def _counted_send(world: World, **body: Any) -> tuple[Any, list[str]]:
    bob = client_for(world.bob)
    assert _send(bob, world, client_id="warm-up").status_code == 201  # the tenant's first event creates its counter
    with CaptureQueriesContext(connection) as ctx:
        response = _send(bob, world, **body)
    return response, _statements(ctx)


def test_a_send_runs_one_statement_per_step_and_reads_nothing_back(world: World) -> None:
    response, statements = _counted_send(world, client_id="c-1")
    assert response.status_code == 201, response.content
    assert statements == SEND_STATEMENTS


def test_a_send_without_client_id_skips_the_idempotency_lookup(world: World) -> None:
    bob = client_for(world.bob)
    assert _send(bob, world, client_id="warm-up").status_code == 201
    with CaptureQueriesContext(connection) as ctx:
        response = _send(bob, world)
    assert response.status_code == 201
    assert _statements(ctx) == SEND_STATEMENTS
    locked = next(q["sql"] for q in ctx.captured_queries if _kind(q["sql"]) == "SELECT inbox_conversation")
    assert "client_id" not in locked


def test_an_assigned_conversation_costs_no_extra_statement(world: World) -> None:
    with scopes_disabled():
        world.acme_conversation.assignee = world.alice
        world.acme_conversation.save(update_fields=["assignee"])
    response, statements = _counted_send(world, client_id="c-assigned")
    assert response.status_code == 201
    assert statements == SEND_STATEMENTS
    with scopes_disabled():
        updated = TenantEvent.objects.get(type=events.CONVERSATION_UPDATED, seq=4)
    assert updated.data["assignee"] == {"id": world.alice.pk, "name": world.alice.name}


def test_a_retry_answers_the_first_message_without_writing(world: World) -> None:
    bob = client_for(world.bob)
    first = _send(bob, world, client_id="again")
    assert first.status_code == 201
    with CaptureQueriesContext(connection) as ctx:
        retry = _send(bob, world, client_id="again", text="changed")
    assert retry.status_code == 200
    assert retry.json() == first.json()
    assert not [s for s in _statements(ctx) if not s.startswith("SELECT")]


def _fresh_json(data: Any) -> Any:
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder))


def test_the_response_and_both_events_equal_a_fresh_read(world: World) -> None:
    """Built from the rows in hand, they are exactly what the REST API serialises when it reads them again."""
    with scopes_disabled():
        world.acme_conversation.assignee = world.bob
        world.acme_conversation.save(update_fields=["assignee"])
    response = _send(client_for(world.bob), world, client_id="fresh-1")
    assert response.status_code == 201
    body = response.json()
    with scopes_disabled():
        new, updated = TenantEvent.objects.filter(tenant=world.acme).order_by("seq")
    with tenant_scope(world.acme.pk):
        message = selectors.message_get(tenant=world.acme, pk=body["id"])
        conversation = selectors.conversation_get(tenant=world.acme, pk=world.acme_conversation.pk)
        fresh_message = _fresh_json(MessageOutputSerializer(message).data)
        fresh_conversation = _fresh_json(ConversationOutputSerializer(conversation).data)
    assert (new.type, updated.type) == (events.MESSAGE_NEW, events.CONVERSATION_UPDATED)
    assert body == fresh_message
    assert new.data == fresh_message
    assert updated.data == fresh_conversation
    assert updated.data["last_message"]["id"] == body["id"]
    assert body["send_state"] == SendState.QUEUED and body["sender"] == {"id": world.bob.pk, "name": world.bob.name}


def _varied_messages(world: World) -> list[Message]:
    conversation = world.acme_conversation
    inbound = factories.make_message(conversation, text="hi there")
    failed = factories.make_message(
        conversation,
        direction=Direction.OUTBOUND,
        sender=world.bob,
        status="failed",
        error_code=131047,
        error_title="Re-engagement message",
        error_detail="More than 24 hours",
        failed_at=timezone.now(),
        send_state=SendState.FAILED,
        client_id="x-1",
    )
    template = factories.make_message(
        conversation,
        direction=Direction.OUTBOUND,
        type=MessageType.TEMPLATE,
        payload={"template": {"name": "hello", "language": {"code": "en_US"}}},
        reply_to=inbound,
        reply_to_wa_id=inbound.wa_message_id or "",
    )
    deleted = factories.make_message(conversation, deleted_at=timezone.now(), edited_at=timezone.now())
    media = make_media_message(conversation)
    pending_media = factories.make_message(conversation, type=MessageType.IMAGE, media_state=MediaState.PENDING)
    with scopes_disabled():
        Reaction.objects.create(tenant=world.acme, message=inbound, emoji="👍")
        Reaction.objects.create(tenant=world.acme, message=inbound, user=world.bob, emoji="")  # removed
        ids = [m.pk for m in (inbound, failed, template, deleted, media, pending_media)]
        return list(
            Message.objects.filter(pk__in=ids)
            .select_related("sender", "tenant")
            .prefetch_related("reactions")
            .order_by("pk")
        )


def test_message_data_is_the_output_serializer(world: World) -> None:
    messages = _varied_messages(world)
    expected = [dict(MessageOutputSerializer(m).data) for m in messages]
    assert [message_data(m) for m in messages] == expected
    assert messages_data(messages) == list(MessageOutputSerializer(messages, many=True).data)
    assert json.dumps([message_data(m) for m in messages], cls=DjangoJSONEncoder) == json.dumps(
        expected, cls=DjangoJSONEncoder
    )
    media = next(d for d in expected if d["media"] and d["media"]["url"])
    assert media["media"]["url"].startswith(f"/api/tenants/{world.acme.slug}/messages/")
    assert next(d for d in expected if d["reactions"])["reactions"] == [{"emoji": "👍", "user_id": None}]


def test_conversation_data_is_the_output_serializer(world: World) -> None:
    last = factories.make_message(world.acme_conversation, text="latest")
    other = factories.make_conversation(world.acme_number, assignee=world.bob, last_inbound_at=None)
    with scopes_disabled():
        conversations = [
            selectors.conversation_get(tenant=world.acme, pk=pk) for pk in (world.acme_conversation.pk, other.pk)
        ]
    for conversation in conversations:
        assert conversation_data(conversation) == dict(ConversationOutputSerializer(conversation).data)
    assert conversation_data(conversations[0])["last_message"]["id"] == last.pk
    assert conversation_data(conversations[1])["assignee"] == {"id": world.bob.pk, "name": world.bob.name}


def test_membership_is_one_query_and_per_tenant(world: World) -> None:
    with CaptureQueriesContext(connection) as ctx:
        membership = membership_get(user=world.bob, tenant_slug="acme")
    assert len(ctx.captured_queries) == 1
    assert membership is not None and membership.tenant == world.acme and membership.user is world.bob
    assert membership_get(user=world.bob, tenant_slug="globex") is None  # exists, but not his
    assert membership_get(user=world.bob, tenant_slug="nope") is None
    assert membership_get(user=world.charlie, tenant_slug="globex") is not None
    with scopes_disabled():
        Membership.objects.filter(user=world.bob).update(is_active=False)
    assert membership_get(user=world.bob, tenant_slug="acme") is None


def test_conversation_ref_is_the_tenants_only(world: World) -> None:
    with tenant_scope(world.acme.pk):
        ref = selectors.conversation_ref_get(tenant=world.acme, pk=world.acme_conversation.pk)
        assert (ref.pk, ref.tenant_id, ref.number_id) == (
            world.acme_conversation.pk,
            world.acme.pk,
            world.acme_number.pk,
        )
        with pytest.raises(Http404):
            selectors.conversation_ref_get(tenant=world.acme, pk=world.globex_conversation.pk)
        with pytest.raises(Http404):
            selectors.conversation_ref_get(tenant=world.acme, pk="x")


def test_a_send_to_another_tenants_conversation_is_404_before_validation(world: World) -> None:
    url = turl("api-message-list", world.acme, pk=world.globex_conversation.pk)
    response = client_for(world.bob).post(url, {"type": "no-such-type"}, format="json")
    assert response.status_code == 404
