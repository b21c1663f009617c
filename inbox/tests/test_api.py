"""The tenant-scoped REST API: every endpoint's success, validation, 401, 403 and other-tenant 404.

The cross-tenant cases are a table (CROSS_TENANT) keyed by (route name, method); a test walks the URL resolver
and fails when a tenant route or one of its methods has no entry, so a new endpoint cannot ship without one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from inbox.models import (
    Contact,
    Conversation,
    ConversationStatus,
    Direction,
    MediaState,
    Message,
    MessageStatus,
    MessageTemplate,
    MessageType,
    Reaction,
    SendState,
    TenantEvent,
)
from inbox.services.core import conversation_update, read_marker_set
from inbox.tests import factories
from inbox.tests.api_helpers import assert_error, client_for, isolate_throttles, make_media_message, turl
from inbox.tests.fixtures import World
from tenants.models import Membership, Role, Tenant, WhatsAppNumber
from tenants.scoping import scopes_disabled, tenant_scope

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_throttles(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_throttles(monkeypatch)


@dataclass
class TenantObjects:
    tenant: Tenant
    conversation: Conversation
    message: Message  # inbound, with a wamid
    failed: Message  # an outbound send that failed
    media: Message  # inbound image, downloaded
    contact: Contact
    membership: Membership  # of an agent (acme: bob) or the admin (globex: charlie)
    number: WhatsAppNumber
    template: MessageTemplate


@dataclass
class Objects:
    acme: TenantObjects
    globex: TenantObjects


def _objects_of(
    tenant: Tenant, conversation: Conversation, number: WhatsAppNumber, member_username: str
) -> TenantObjects:
    message = factories.make_message(conversation, text=f"hello from {tenant.slug}")
    failed = factories.make_message(
        conversation,
        direction=Direction.OUTBOUND,
        text="did not go out",
        status=MessageStatus.FAILED,
        send_state=SendState.FAILED,
        error_code=131026,
        error_title="Message undeliverable",
    )
    media = make_media_message(conversation)
    with scopes_disabled():
        membership = Membership.objects.get(tenant=tenant, user__username=member_username)
        template = MessageTemplate.objects.create(
            tenant=tenant, number=number, name="order_update", language="en_US", body_text="Order {{1}} shipped"
        )
        contact = Contact.objects.get(pk=conversation.contact_id)
    return TenantObjects(
        tenant=tenant,
        conversation=conversation,
        message=message,
        failed=failed,
        media=media,
        contact=contact,
        membership=membership,
        number=number,
        template=template,
    )


@pytest.fixture
def objs(world: World) -> Objects:
    return Objects(
        acme=_objects_of(world.acme, world.acme_conversation, world.acme_number, "bob"),
        globex=_objects_of(world.globex, world.globex_conversation, world.globex_number, "charlie"),
    )


# --- The cross-tenant table ---------------------------------------------------------------------------------------
# (route name, method) -> (URL kwargs of an object of tenant `t`, request body). Each case is run as charlie
# (globex) against acme's route and object, and as alice (acme) with globex's object id inside acme's route.

Case = Callable[[TenantObjects], tuple[dict[str, Any], dict[str, Any] | None]]

CROSS_TENANT: dict[tuple[str, str], Case] = {
    ("api-conversation-list", "get"): lambda t: ({}, None),
    ("api-conversation-detail", "get"): lambda t: ({"pk": t.conversation.pk}, None),
    ("api-conversation-detail", "patch"): lambda t: ({"pk": t.conversation.pk}, {"status": "resolved"}),
    ("api-message-list", "get"): lambda t: ({"pk": t.conversation.pk}, None),
    ("api-message-list", "post"): lambda t: ({"pk": t.conversation.pk}, {"text": "hi", "client_id": "x-1"}),
    ("api-conversation-read", "post"): lambda t: ({"pk": t.conversation.pk}, {"message_id": t.message.pk}),
    ("api-message-media", "get"): lambda t: ({"pk": t.media.pk}, None),
    ("api-message-media-retry", "post"): lambda t: ({"pk": t.media.pk}, None),
    ("api-message-reaction", "post"): lambda t: ({"pk": t.message.pk}, {"emoji": "👍"}),
    ("api-message-retry", "post"): lambda t: ({"pk": t.failed.pk}, None),
    ("api-contact-list", "get"): lambda t: ({}, None),
    ("api-contact-detail", "get"): lambda t: ({"pk": t.contact.pk}, None),
    ("api-contact-detail", "patch"): lambda t: ({"pk": t.contact.pk}, {"name": "Renamed"}),
    ("api-member-list", "get"): lambda t: ({}, None),
    ("api-member-list", "post"): lambda t: ({}, {"user": "alice", "role": "agent"}),
    ("api-member-detail", "get"): lambda t: ({"pk": t.membership.pk}, None),
    ("api-member-detail", "patch"): lambda t: ({"pk": t.membership.pk}, {"role": "admin"}),
    ("api-member-detail", "delete"): lambda t: ({"pk": t.membership.pk}, None),
    ("api-number-list", "get"): lambda t: ({}, None),
    ("api-number-list", "post"): lambda t: (
        {},
        {"phone_number_id": "999000999", "display_phone_number": "15550009999"},
    ),
    ("api-number-detail", "get"): lambda t: ({"pk": t.number.pk}, None),
    ("api-number-detail", "patch"): lambda t: ({"pk": t.number.pk}, {"label": "stolen"}),
    ("api-number-detail", "delete"): lambda t: ({"pk": t.number.pk}, None),
    ("api-template-list", "get"): lambda t: ({}, None),
    ("api-event-list", "get"): lambda t: ({}, None),
    ("api-ws-ticket", "post"): lambda t: ({}, None),
}
# Routes outside any tenant: no cross-tenant case applies (each has its own tests).
NOT_TENANT_ROUTES = {
    "api-token-obtain",
    "api-token-refresh",
    "api-logout",
    "api-logout-everywhere",
    "api-me",
    "api-schema",
    "api-docs",
    "api-not-found",
}


def _api_routes() -> list[tuple[str, str, type]]:
    """(route name, full pattern, view class) of every route under /api/ in the URL resolver."""
    found: list[tuple[str, str, type]] = []

    def walk(patterns: list[Any], prefix: str) -> None:
        for p in patterns:
            if isinstance(p, URLResolver):
                walk(p.url_patterns, prefix + str(p.pattern))
            elif isinstance(p, URLPattern):
                full = prefix + str(p.pattern)
                if full.startswith("api/"):
                    view_class = getattr(p.callback, "cls", None) or getattr(p.callback, "view_class", None)
                    found.append((p.name or "", full, view_class))  # type: ignore[arg-type]

    walk(get_resolver().url_patterns, "")
    return found


def _methods(view_class: type) -> set[str]:
    return {m for m in ("get", "post", "put", "patch", "delete") if hasattr(view_class, m)}


def test_every_api_route_has_a_cross_tenant_case() -> None:
    routes = _api_routes()
    assert routes, "no /api/ routes found"
    missing = []
    for name, pattern, view_class in routes:
        assert name, f"/{pattern} has no route name"
        if name in NOT_TENANT_ROUTES:
            assert "<slug:tenant_slug>" not in pattern
            continue
        assert view_class is not None, f"/{pattern} is not a class-based API view"
        assert "<slug:tenant_slug>" in pattern, f"/{pattern} is neither a tenant route nor listed as one outside"
        missing += [(name, m) for m in _methods(view_class) if (name, m) not in CROSS_TENANT]
    assert not missing, f"routes without a cross-tenant case: {missing}"


def _call(client: Any, method: str, url: str, body: dict[str, Any] | None) -> Any:
    return getattr(client, method)(url, body, format="json") if body is not None else getattr(client, method)(url)


@pytest.mark.parametrize("route,method", sorted(CROSS_TENANT))
def test_it_answers_404_across_tenants(world: World, objs: Objects, route: str, method: str) -> None:
    case = CROSS_TENANT[(route, method)]
    # A member of globex (an admin there) asks for acme's route and object: 404, as for an unknown tenant.
    kwargs, body = case(objs.acme)
    response = _call(client_for(world.charlie), method, turl(route, world.acme, **kwargs), body)
    assert_error(response, 404, "not_found")
    unknown = _call(client_for(world.charlie), method, turl(route, "no-such-tenant", **kwargs), body)
    assert_error(unknown, 404, "not_found")
    # Acme's admin asks, inside acme's route, for globex's object by id: 404, as for a missing id.
    foreign_kwargs, foreign_body = case(objs.globex)
    if foreign_kwargs:
        response = _call(client_for(world.alice), method, turl(route, world.acme, **foreign_kwargs), foreign_body)
        assert_error(response, 404, "not_found")
    # Nothing of acme changed.
    with scopes_disabled():
        assert Conversation.objects.get(pk=objs.acme.conversation.pk).status == ConversationStatus.OPEN
        assert Contact.objects.get(pk=objs.acme.contact.pk).name == ""
        assert Membership.objects.get(pk=objs.acme.membership.pk).role == Role.AGENT
        assert WhatsAppNumber.objects.get(pk=objs.acme.number.pk).label == ""
        assert not Message.objects.filter(client_id="x-1").exists()


@pytest.mark.parametrize("route,method", sorted(CROSS_TENANT))
def test_it_answers_401_without_credentials(world: World, objs: Objects, route: str, method: str) -> None:
    kwargs, body = CROSS_TENANT[(route, method)](objs.acme)
    response = _call(client_for(None), method, turl(route, world.acme, **kwargs), body)
    assert_error(response, 401, "not_authenticated")
    bad = client_for(None)
    bad.credentials(HTTP_AUTHORIZATION="Bearer not-a-token")
    assert_error(_call(bad, method, turl(route, world.acme, **kwargs), body), 401, "token_not_valid")


ADMIN_ONLY = [
    ("api-member-list", "post"),
    ("api-member-detail", "patch"),
    ("api-member-detail", "delete"),
    ("api-number-list", "get"),
    ("api-number-list", "post"),
    ("api-number-detail", "get"),
    ("api-number-detail", "patch"),
    ("api-number-detail", "delete"),
]


@pytest.mark.parametrize("route,method", ADMIN_ONLY)
def test_it_answers_403_to_agents_on_admin_actions(world: World, objs: Objects, route: str, method: str) -> None:
    kwargs, body = CROSS_TENANT[(route, method)](objs.acme)
    if route == "api-member-list":
        body = {"user": "charlie", "role": "agent"}
    response = _call(client_for(world.bob), method, turl(route, world.acme, **kwargs), body)
    assert_error(response, 403, "permission_denied")
    with scopes_disabled():
        assert not Membership.objects.filter(tenant=world.acme, user=world.charlie).exists()
        assert Membership.objects.get(pk=objs.acme.membership.pk).is_active


# --- Conversations --------------------------------------------------------------------------------------------------


def test_it_lists_own_tenant_conversations_with_unread_counts(world: World, objs: Objects) -> None:
    response = client_for(world.alice).get(turl("api-conversation-list", world.acme))
    assert response.status_code == 200
    body = response.json()
    assert [c["id"] for c in body["results"]] == [world.acme_conversation.pk]
    item = body["results"][0]
    assert item["unread_count"] == 2  # the text and the image; the outbound failure is not unread
    assert item["contact"]["id"] == objs.acme.contact.pk
    assert item["last_message"]["id"] == objs.acme.media.pk
    assert body["next_cursor"] is None


def test_it_keeps_unread_counts_per_agent(world: World, objs: Objects) -> None:
    alice, bob = client_for(world.alice), client_for(world.bob)
    conv = world.acme_conversation
    read = alice.post(turl("api-conversation-read", world.acme, pk=conv.pk), {"message_id": objs.acme.media.pk})
    assert read.status_code == 200
    assert read.json() == {"conversation_id": conv.pk, "last_read_message_id": objs.acme.media.pk, "unread_count": 0}
    assert alice.get(turl("api-conversation-detail", world.acme, pk=conv.pk)).json()["unread_count"] == 0
    assert bob.get(turl("api-conversation-detail", world.acme, pk=conv.pk)).json()["unread_count"] == 2
    assert alice.get(turl("api-conversation-list", world.acme), {"unread": "true"}).json()["results"] == []
    assert len(bob.get(turl("api-conversation-list", world.acme), {"unread": "true"}).json()["results"]) == 1
    # A new inbound message is unread for both again.
    factories.make_message(conv, text="one more")
    assert alice.get(turl("api-conversation-detail", world.acme, pk=conv.pk)).json()["unread_count"] == 1
    assert bob.get(turl("api-conversation-detail", world.acme, pk=conv.pk)).json()["unread_count"] == 3
    # Reading never moves a marker backwards.
    back = alice.post(turl("api-conversation-read", world.acme, pk=conv.pk), {"message_id": objs.acme.message.pk})
    assert back.json()["last_read_message_id"] == objs.acme.media.pk


def test_mark_read_validates_the_message(world: World, objs: Objects) -> None:
    alice = client_for(world.alice)
    url = turl("api-conversation-read", world.acme, pk=world.acme_conversation.pk)
    assert assert_error(alice.post(url, {}, format="json"), 400, "validation_error")["fields"]["message_id"]
    err = assert_error(alice.post(url, {"message_id": objs.globex.message.pk}, format="json"), 400)
    assert "message_id" in err["fields"]
    assert_error(alice.post(url, {"message_id": "x"}, format="json"), 400, "validation_error")


def test_mark_read_logs_an_event_and_marks_read_at_meta(
    world: World, objs: Objects, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    import respx

    settings.WHATSAPP_GRAPH_BASE_URL = "https://graph.test"
    with scopes_disabled():
        number = WhatsAppNumber.objects.get(pk=world.acme_number.pk)
    number.access_token = "EAAB-test"
    number.save()
    with respx.mock(assert_all_called=True) as graph:
        route = graph.post(f"https://graph.test/{settings.WHATSAPP_API_VERSION}/111000111/messages").respond(
            200, json={"success": True}
        )
        with django_capture_on_commit_callbacks(execute=True):
            response = client_for(world.bob).post(
                turl("api-conversation-read", world.acme, pk=world.acme_conversation.pk),
                {"message_id": objs.acme.media.pk},
                format="json",
            )
        assert response.status_code == 200
        assert route.call_count == 1
        sent = route.calls[0].request.content.replace(b" ", b"")
        assert objs.acme.media.wa_message_id.encode() in sent and b'"status":"read"' in sent
    with scopes_disabled():
        event = TenantEvent.objects.filter(tenant=world.acme, type="message:read").get()
        assert event.data == {
            "conversation_id": world.acme_conversation.pk,
            "user_id": world.bob.pk,
            "last_read_message_id": objs.acme.media.pk,
        }
        assert not TenantEvent.objects.filter(tenant=world.globex).exists()


def test_it_filters_conversations(world: World, objs: Objects) -> None:
    alice = client_for(world.alice)
    other = factories.make_conversation(world.acme_number, factories.make_contact(world.acme, profile_name="Zed"))
    with tenant_scope(world.acme.pk):
        conversation_update(tenant=world.acme, conversation=world.acme_conversation, assignee=world.alice)
        conversation_update(tenant=world.acme, conversation=other, status=ConversationStatus.RESOLVED)
    url = turl("api-conversation-list", world.acme)

    def ids(**params: Any) -> list[int]:
        response = alice.get(url, params)
        assert response.status_code == 200, response.content
        return [c["id"] for c in response.json()["results"]]

    assert set(ids()) == {world.acme_conversation.pk, other.pk}
    assert ids(status="resolved") == [other.pk]
    assert ids(status="open") == [world.acme_conversation.pk]
    assert ids(assigned="me") == [world.acme_conversation.pk]
    assert ids(assigned="unassigned") == [other.pk]
    assert ids(assigned=str(world.alice.pk)) == [world.acme_conversation.pk]
    assert ids(assigned=str(world.bob.pk)) == []
    assert_error(alice.get(url, {"status": "closed"}), 400, "validation_error")
    assert "assigned" in assert_error(alice.get(url, {"assigned": "someone"}), 400)["fields"]
    assert "limit" in assert_error(alice.get(url, {"limit": "0"}), 400)["fields"]
    assert "cursor" in assert_error(alice.get(url, {"cursor": "garbage"}), 400)["fields"]


def test_it_searches_contact_name_number_and_message_text(world: World) -> None:
    alice = client_for(world.alice)
    ada = factories.make_conversation(
        world.acme_number, factories.make_contact(world.acme, wa_id="4915112345678", profile_name="Ada Lovelace")
    )
    grace = factories.make_conversation(world.acme_number, factories.make_contact(world.acme, name="Grace"))
    factories.make_message(grace, text="Where is my parcel tracking number?")
    # Globex has the same words: never found from acme.
    globex_conv = factories.make_conversation(
        world.globex_number, factories.make_contact(world.globex, profile_name="Ada Globex")
    )
    factories.make_message(globex_conv, text="parcel parcel")
    url = turl("api-conversation-list", world.acme)

    def ids(q: str) -> set[int]:
        response = alice.get(url, {"q": q})
        assert response.status_code == 200
        return {c["id"] for c in response.json()["results"]}

    assert ids("lovelace") == {ada.pk}
    assert ids("+49 151 123") == {ada.pk}
    assert ids("grace") == {grace.pk}
    assert ids("parcel") == {grace.pk}
    assert ids("PARCEL tracking") == {grace.pk}
    assert ids("nothing-like-this") == set()
    assert ids("'&|!():*") == set()  # tsquery syntax in user input is harmless


def test_conversation_pages_stay_stable_while_messages_arrive(world: World) -> None:
    alice = client_for(world.alice)
    base = timezone.now() - timedelta(hours=1)
    convs = []
    for i in range(5):
        conv = factories.make_conversation(world.acme_number)
        factories.make_message(conv, wa_timestamp=base + timedelta(minutes=i))
        convs.append(conv)
    with scopes_disabled():
        Conversation.objects.filter(pk=world.acme_conversation.pk).update(
            last_message_at=base - timedelta(hours=1), last_message=None
        )
    expected = [c.pk for c in reversed(convs)] + [world.acme_conversation.pk]
    url = turl("api-conversation-list", world.acme)
    page1 = alice.get(url, {"limit": 2}).json()
    assert [c["id"] for c in page1["results"]] == expected[:2]
    # Meanwhile: a new conversation and new activity on one already seen go to the top.
    fresh = factories.make_conversation(world.acme_number)
    factories.make_message(fresh)
    factories.make_message(convs[4])
    page2 = alice.get(url, {"limit": 2, "cursor": page1["next_cursor"]}).json()
    assert [c["id"] for c in page2["results"]] == expected[2:4]
    page3 = alice.get(url, {"limit": 2, "cursor": page2["next_cursor"]}).json()
    assert [c["id"] for c in page3["results"]] == expected[4:]
    assert page3["next_cursor"] is None


def test_it_updates_status_and_assignee(world: World, objs: Objects) -> None:
    bob = client_for(world.bob)
    url = turl("api-conversation-detail", world.acme, pk=world.acme_conversation.pk)
    response = bob.patch(url, {"status": "pending", "assignee": world.bob.pk}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "pending"
    assert response.json()["assignee"] == {"id": world.bob.pk, "name": world.bob.name}
    with scopes_disabled():
        event = TenantEvent.objects.filter(tenant=world.acme, type="conversation:updated").latest("seq")
        assert event.data["status"] == "pending" and event.data["assignee"]["id"] == world.bob.pk
    assert bob.patch(url, {"assignee": None}, format="json").json()["assignee"] is None
    # Validation: unknown status, a user of another tenant, a missing user.
    assert "status" in assert_error(bob.patch(url, {"status": "closed"}, format="json"), 400)["fields"]
    assert "assignee" in assert_error(bob.patch(url, {"assignee": world.charlie.pk}, format="json"), 400)["fields"]
    assert "assignee" in assert_error(bob.patch(url, {"assignee": 10**9}, format="json"), 400)["fields"]
    assert client_for(world.alice).get(url).json()["status"] == "pending"


# --- Messages -------------------------------------------------------------------------------------------------------


def test_message_pages_newest_first_in_display_order(world: World) -> None:
    conv = factories.make_conversation(world.acme_number)
    base = timezone.now() - timedelta(hours=1)
    # Stored out of Meta's order: display order follows Meta's timestamp.
    msgs = [factories.make_message(conv, wa_timestamp=base + timedelta(seconds=s)) for s in (10, 30, 20, 40, 50)]
    display = [msgs[i].pk for i in (0, 2, 1, 3, 4)]
    alice = client_for(world.alice)
    url = turl("api-message-list", world.acme, pk=conv.pk)
    newest = alice.get(url, {"limit": 2}).json()
    assert [m["id"] for m in newest["results"]] == display[3:]
    assert newest["has_more"] is True and newest["before"] == display[3]
    assert newest["after"] == max(display)
    # New messages arrive: the older pages are unchanged.
    late = factories.make_message(conv, wa_timestamp=base + timedelta(seconds=60))
    older = alice.get(url, {"limit": 2, "before": newest["before"]}).json()
    assert [m["id"] for m in older["results"]] == display[1:3]
    oldest = alice.get(url, {"limit": 2, "before": older["before"]}).json()
    assert [m["id"] for m in oldest["results"]] == display[:1]
    assert oldest["has_more"] is False and oldest["before"] is None
    # Catch-up by id: also finds a late message whose Meta timestamp is older than what was seen.
    backdated = factories.make_message(conv, wa_timestamp=base)
    caught = alice.get(url, {"after": newest["after"]}).json()
    assert [m["id"] for m in caught["results"]] == [backdated.pk, late.pk]
    assert caught["after"] == backdated.pk and caught["has_more"] is False
    first = alice.get(url, {"after": 0, "limit": 1}).json()
    assert [m["id"] for m in first["results"]] == [msgs[0].pk] and first["has_more"] is True
    # Validation.
    foreign = factories.make_message(world.globex_conversation)
    assert "before" in assert_error(alice.get(url, {"before": foreign.pk}), 400)["fields"]
    assert "after" in assert_error(alice.get(url, {"after": foreign.pk}), 400)["fields"]
    assert "before" in assert_error(alice.get(url, {"before": display[0], "after": display[1]}), 400)["fields"]
    assert "limit" in assert_error(alice.get(url, {"limit": 1000}), 400)["fields"]


def test_message_output_has_the_wire_shape(world: World, objs: Objects) -> None:
    response = client_for(world.bob).get(turl("api-message-list", world.acme, pk=world.acme_conversation.pk))
    results = {m["id"]: m for m in response.json()["results"]}
    image = results[objs.acme.media.pk]
    assert image["conversation_id"] == world.acme_conversation.pk
    assert image["media"]["url"] == f"/api/tenants/acme/messages/{objs.acme.media.pk}/media/"
    failed = results[objs.acme.failed.pk]
    assert failed["error"]["code"] == 131026 and failed["status"] == "failed"


def test_it_serves_media_to_members_only(world: World, objs: Objects) -> None:
    url = turl("api-message-media", world.acme, pk=objs.acme.media.pk)
    response = client_for(world.bob).get(url)
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"\x89PNG fake image bytes"
    assert response["Content-Type"] == "image/png"
    assert response["X-Content-Type-Options"] == "nosniff"
    # A message without (downloaded) media: 404.
    assert_error(client_for(world.bob).get(turl("api-message-media", world.acme, pk=objs.acme.message.pk)), 404)


def _failed_download(conversation: Conversation) -> Message:
    return factories.make_message(
        conversation,
        type=MessageType.IMAGE,
        text="",
        media_id="media-gone",
        media_mime_type="image/jpeg",
        media_state=MediaState.FAILED,
        media_error="Media too large",
    )


def test_it_retries_a_failed_media_download(world: World, objs: Objects) -> None:
    failed = _failed_download(world.acme_conversation)
    url = turl("api-message-media-retry", world.acme, pk=failed.pk)
    with scopes_disabled():
        events_before = TenantEvent.objects.filter(tenant=world.acme).count()
    response = client_for(world.bob).post(url)
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["id"] == failed.pk and body["media"]["state"] == "pending" and body["media"]["error"] == ""
    with scopes_disabled():
        failed.refresh_from_db()
        assert failed.media_state == MediaState.PENDING
        # Reported like any change of the message: message:new, in the tenant's log.
        assert TenantEvent.objects.filter(tenant=world.acme).count() == events_before + 1
    # Not failed (any more), an outbound message, a message without media: 400 in the error shape, nothing changed.
    for message in (failed, objs.acme.media, objs.acme.failed, objs.acme.message):
        error = assert_error(
            client_for(world.bob).post(turl("api-message-media-retry", world.acme, pk=message.pk)),
            400,
            "validation_error",
        )
        assert "media" in error["fields"]
    with scopes_disabled():
        assert TenantEvent.objects.filter(tenant=world.acme).count() == events_before + 1


def test_it_does_not_retry_another_tenants_media(world: World, objs: Objects) -> None:
    theirs = _failed_download(world.globex_conversation)
    for client, slug in ((client_for(world.alice), world.acme), (client_for(world.alice), world.globex)):
        assert_error(client.post(turl("api-message-media-retry", slug, pk=theirs.pk)), 404, "not_found")
    with scopes_disabled():
        theirs.refresh_from_db()
        assert (theirs.media_state, theirs.media_error) == (MediaState.FAILED, "Media too large")
        assert not TenantEvent.objects.filter(tenant=world.globex).exists()


# --- Contacts -------------------------------------------------------------------------------------------------------


def test_it_lists_searches_and_renames_contacts(world: World, objs: Objects) -> None:
    bob = client_for(world.bob)
    ada = factories.make_contact(world.acme, wa_id="4917000000042", profile_name="Ada")
    url = turl("api-contact-list", world.acme)
    listed = bob.get(url).json()
    assert {c["id"] for c in listed["results"]} == {objs.acme.contact.pk, ada.pk}
    assert [c["id"] for c in bob.get(url, {"q": "ada"}).json()["results"]] == [ada.pk]
    assert [c["id"] for c in bob.get(url, {"q": "+49 17000000042"}).json()["results"]] == [ada.pk]
    page = bob.get(url, {"limit": 1}).json()
    assert len(page["results"]) == 1 and page["next_cursor"]
    page2 = bob.get(url, {"limit": 1, "cursor": page["next_cursor"]}).json()
    assert page2["results"][0]["id"] != page["results"][0]["id"] and page2["next_cursor"] is None
    assert_error(bob.get(url, {"cursor": "abc"}), 400, "validation_error")

    detail = turl("api-contact-detail", world.acme, pk=objs.acme.contact.pk)
    assert bob.get(detail).json()["id"] == objs.acme.contact.pk
    renamed = bob.patch(detail, {"name": "  Mrs. Customer "}, format="json")
    assert renamed.status_code == 200 and renamed.json()["display_name"] == "Mrs. Customer"
    with scopes_disabled():
        event = TenantEvent.objects.filter(tenant=world.acme, type="conversation:updated").latest("seq")
        assert event.data["contact"]["display_name"] == "Mrs. Customer"
    assert "name" in assert_error(bob.patch(detail, {}, format="json"), 400)["fields"]
    assert "name" in assert_error(bob.patch(detail, {"name": "x" * 201}, format="json"), 400)["fields"]


# --- Members --------------------------------------------------------------------------------------------------------


def test_members_list_and_admin_management(world: World, objs: Objects) -> None:
    alice = client_for(world.alice)
    listed = client_for(world.bob).get(turl("api-member-list", world.acme)).json()
    assert {m["user"]["username"] for m in listed} == {"alice", "bob"}
    dave = factories.make_user("dave")
    added = alice.post(turl("api-member-list", world.acme), {"user": "dave@example.com"}, format="json")
    assert added.status_code == 201, added.content
    assert added.json()["role"] == "agent" and added.json()["user"]["username"] == "dave"
    dave_member = added.json()["id"]
    again = alice.post(turl("api-member-list", world.acme), {"user": "dave"}, format="json")
    assert "user" in assert_error(again, 400)["fields"]
    assert "user" in assert_error(alice.post(turl("api-member-list", world.acme), {"user": "nobody"}), 400)["fields"]
    assert (
        "role"
        in assert_error(alice.post(turl("api-member-list", world.acme), {"user": "charlie", "role": "boss"}), 400)[
            "fields"
        ]
    )

    detail = turl("api-member-detail", world.acme, pk=dave_member)
    assert alice.patch(detail, {"role": "admin"}, format="json").json()["role"] == "admin"
    # An admin cannot make an owner (only owners can).
    assert_error(alice.patch(detail, {"role": "owner"}, format="json"), 403, "permission_denied")
    assert "role" in assert_error(alice.patch(detail, {"role": "boss"}, format="json"), 400)["fields"]
    assert alice.delete(detail).status_code == 204
    assert {m["user"]["username"] for m in alice.get(turl("api-member-list", world.acme)).json()} == {"alice", "bob"}
    # Dave lost access to acme on the very next request.
    assert_error(client_for(dave).get(turl("api-conversation-list", world.acme)), 404)


def test_the_last_admin_cannot_leave(world: World) -> None:
    alice = client_for(world.alice)
    with scopes_disabled():
        alice_member = Membership.objects.get(tenant=world.acme, user=world.alice)
    detail = turl("api-member-detail", world.acme, pk=alice_member.pk)
    assert "role" in assert_error(alice.patch(detail, {"role": "agent"}, format="json"), 400)["fields"]
    assert_error(alice.delete(detail), 400, "validation_error")


# --- Numbers --------------------------------------------------------------------------------------------------------


def test_admins_manage_numbers_with_write_only_secrets(world: World) -> None:
    alice = client_for(world.alice)
    url = turl("api-number-list", world.acme)
    created = alice.post(
        url,
        {
            "phone_number_id": "333000333",
            "display_phone_number": "+1 555 000 3333",
            "label": "Sales",
            "access_token": "EAAB-secret-token",
            "app_secret": "app-secret",
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert "secret" not in created.content.decode().replace("has_app_secret", "")
    assert body["has_access_token"] and body["has_app_secret"] and not body["has_verify_token"]
    assert body["display_phone_number"] == "15550003333" and body["is_sandbox"] is False
    with scopes_disabled():
        stored = WhatsAppNumber.objects.get(pk=body["id"])
        assert stored.tenant_id == world.acme.pk and stored.access_token == "EAAB-secret-token"
    # The phone number id routes webhooks: unique across tenants, without telling whose it is.
    taken = alice.post(url, {"phone_number_id": "222000222", "display_phone_number": "15550002222"}, format="json")
    assert "phone_number_id" in assert_error(taken, 400)["fields"]
    assert "phone_number_id" in assert_error(alice.post(url, {"display_phone_number": "1555"}), 400)["fields"]

    listed = alice.get(url).json()
    assert {n["id"] for n in listed} == {world.acme_number.pk, body["id"]}
    assert all("access_token" not in n for n in listed)
    detail = turl("api-number-detail", world.acme, pk=body["id"])
    patched = alice.patch(detail, {"label": "Support", "access_token": ""}, format="json")
    assert patched.json()["label"] == "Support" and patched.json()["is_sandbox"] is True
    assert alice.get(detail).json()["label"] == "Support"
    assert alice.delete(detail).status_code == 204
    # A number with conversations keeps its history: refused.
    in_use = alice.delete(turl("api-number-detail", world.acme, pk=world.acme_number.pk))
    assert_error(in_use, 400, "validation_error")


# --- Templates, events, tickets ---------------------------------------------------------------------------------------


def test_it_lists_templates(world: World, objs: Objects) -> None:
    response = client_for(world.bob).get(turl("api-template-list", world.acme))
    assert [t["id"] for t in response.json()] == [objs.acme.template.pk]
    assert response.json()[0]["body_text"] == "Order {{1}} shipped"
    only = client_for(world.bob).get(turl("api-template-list", world.acme), {"number": world.globex_number.pk})
    assert only.json() == []
    assert_error(client_for(world.bob).get(turl("api-template-list", world.acme), {"number": "x"}), 400)


def test_the_event_log_replays_after_a_seq(world: World, objs: Objects) -> None:
    with tenant_scope(world.acme.pk):
        read_marker_set(
            tenant=world.acme, user=world.alice, conversation=world.acme_conversation, message=objs.acme.failed
        )
        conversation_update(tenant=world.acme, conversation=world.acme_conversation, status="pending")
    with tenant_scope(world.globex.pk):
        conversation_update(tenant=world.globex, conversation=world.globex_conversation, status="pending")
    bob = client_for(world.bob)
    url = turl("api-event-list", world.acme)
    body = bob.get(url, {"since": 0}).json()
    assert [(e["seq"], e["type"]) for e in body["events"]] == [(1, "message:read"), (2, "conversation:updated")]
    assert body["head"] == 2 and body["has_more"] is False
    assert body["events"][1]["data"]["id"] == world.acme_conversation.pk
    page = bob.get(url, {"since": 0, "limit": 1}).json()
    assert [e["seq"] for e in page["events"]] == [1] and page["has_more"] is True
    assert bob.get(url, {"since": 2}).json()["events"] == []
    assert_error(bob.get(url, {"since": 3}), 410, "sync_gap")  # a seq never issued
    assert "since" in assert_error(bob.get(url), 400)["fields"]
    assert "since" in assert_error(bob.get(url, {"since": -1}), 400)["fields"]
    # Pruned events: the client must reload state instead.
    with scopes_disabled():
        TenantEvent.objects.filter(tenant=world.acme, seq=1).delete()
    assert_error(bob.get(url, {"since": 0}), 410, "sync_gap")
    assert [e["seq"] for e in bob.get(url, {"since": 1}).json()["events"]] == [2]


def test_it_issues_websocket_tickets(world: World) -> None:
    from tenants.tickets import ticket_redeem

    response = client_for(world.bob).post(turl("api-ws-ticket", world.acme))
    assert response.status_code == 201
    body = response.json()
    assert body["url"] == f"/ws/tenants/acme/?ticket={body['ticket']}"
    assert ticket_redeem(token=body["ticket"], tenant_slug="globex") is None  # bound to the tenant
    membership = ticket_redeem(token=body["ticket"], tenant_slug="acme")
    assert membership is not None and membership.user_id == world.bob.pk
    assert ticket_redeem(token=body["ticket"], tenant_slug="acme") is None  # single use


def test_it_throttles_ticket_requests(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from rest_framework.throttling import ScopedRateThrottle

    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"ticket": "2/min", "send": "2/min", "auth": "2/min"})
    bob = client_for(world.bob)
    url = turl("api-ws-ticket", world.acme)
    assert bob.post(url).status_code == 201
    assert bob.post(url).status_code == 201
    err = assert_error(bob.post(url), 429, "throttled")
    assert err["retry_after"] > 0
    # Per user: alice is not throttled by bob's requests.
    assert client_for(world.alice).post(url).status_code == 201


# --- Revocation -----------------------------------------------------------------------------------------------------


def test_revocation_takes_effect_on_the_next_request(world: World) -> None:
    bob = client_for(world.bob)  # the token stays valid throughout
    url = turl("api-conversation-list", world.acme)
    assert bob.get(url).status_code == 200
    with scopes_disabled():
        membership = Membership.objects.get(tenant=world.acme, user=world.bob)
    membership.is_active = False
    membership.save()
    assert_error(bob.get(url), 404, "not_found")
    membership.is_active = True
    membership.save()
    assert bob.get(url).status_code == 200
    world.bob.is_active = False
    world.bob.save()
    assert_error(bob.get(url), 401)
    assert_error(bob.get("/api/me/"), 401)


def test_errors_have_one_shape(world: World) -> None:
    alice = client_for(world.alice)
    assert_error(alice.get("/api/tenants/acme/conversations/not-a-number/"), 404, "not_found")
    assert_error(alice.get("/api/nothing-here/"), 404, "not_found")
    url = turl("api-conversation-detail", world.acme, pk=world.acme_conversation.pk)
    assert_error(alice.put(url, {}, format="json"), 405, "method_not_allowed")
    bad_json = alice.patch(url, "{not json", content_type="application/json")
    assert_error(bad_json, 400, "parse_error")
    assert_error(alice.patch(url, "a=b", content_type="text/plain"), 415, "unsupported_media_type")
    huge = json.dumps({"status": "open", "padding": "x" * 3_000_000})
    assert_error(alice.patch(url, huge, content_type="application/json"), 413, "payload_too_large")


def test_lists_do_not_query_per_row(world: World) -> None:
    """The conversation and message lists cost the same number of queries for 2 rows as for 12."""
    alice = client_for(world.alice)

    def grow(n: int) -> None:
        for _ in range(n):
            conv = factories.make_conversation(world.acme_number)
            message = factories.make_message(conv)
            factories.make_message(world.acme_conversation, direction=Direction.OUTBOUND, sender=world.bob)
            with scopes_disabled():
                Reaction.objects.create(tenant=world.acme, message=message, emoji="👍")

    def count(url: str) -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert alice.get(url).status_code == 200
        return len(ctx.captured_queries)

    conversations = turl("api-conversation-list", world.acme)
    messages = turl("api-message-list", world.acme, pk=world.acme_conversation.pk)
    grow(2)
    few = count(conversations), count(messages)
    grow(10)
    assert (count(conversations), count(messages)) == few


def test_the_tenant_scope_ends_with_the_request(world: World) -> None:
    from tenants.scoping import ScopeError

    assert client_for(world.alice).get(turl("api-conversation-list", world.acme)).status_code == 200
    assert_error(client_for(world.charlie).get(turl("api-conversation-list", world.acme)), 404)
    with pytest.raises(ScopeError):
        Conversation.objects.count()  # nothing of a request's scope is left active afterwards
