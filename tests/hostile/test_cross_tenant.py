"""Check 7 (HTTP side): every route in the URL resolver is classified, and every tenant route is tried across tenants.

alice (acme) is authenticated, as a JWT client for the API and with a session for the pages. For every tenant
route and every method its view implements she tries (a) globex's slug and (b) acme's slug with a globex object
id: the answer is 404 (never 200, 403 or 500), exactly as for an id that does not exist. Lists never show a
globex id, and writes that reference a globex row are refused with 400. A new route that is not in ROUTES fails
the suite, so it cannot ship without being tried here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.test import APIClient

from inbox.models import Direction, Message, SendState
from inbox.tests import factories
from inbox.tests.api_helpers import client_for
from inbox.tests.fixtures import World
from tenants.models import Membership
from tenants.scoping import scopes_disabled

pytestmark = pytest.mark.django_db

# route → how it is protected. "tenant:<kind>" routes are tried across tenants below; <kind> names the object
# whose id fills <pk> ("-" for none). The rest say why a cross-tenant test does not apply.
ROUTES: dict[str, str] = {
    "healthz": "public: process liveness, no data",
    "readyz": "public: dependency status, no data",
    "metrics": "operator: loopback or METRICS_TOKEN (test_deployment.py)",
    "webhooks/whatsapp/": "Meta: HMAC signature; routed by phone_number_id (test_webhook_hostile.py)",
    "api/auth/token/": "anonymous: login (lockout in test_deployment.py)",
    "api/auth/token/refresh/": "anonymous: refresh token",
    "api/auth/logout/": "self: own tokens only",
    "api/auth/logout-all/": "self: revokes the caller's own tokens and sockets",
    "api/me/": "self: own user and memberships",
    "api/schema/": "public: the OpenAPI document",
    "api/docs/": "public: Swagger UI",
    "api/^": "catch-all 404 in the API's error shape",
    "": "self: redirects to one of the user's own tenants",
    "accounts/login/": "anonymous: login (lockout in test_deployment.py)",
    "accounts/logout/": "self",
    "api/tenants/<slug:tenant_slug>/conversations/": "tenant:-",
    "api/tenants/<slug:tenant_slug>/conversations/<int:pk>/": "tenant:conversation",
    "api/tenants/<slug:tenant_slug>/conversations/<int:pk>/messages/": "tenant:conversation",
    "api/tenants/<slug:tenant_slug>/conversations/<int:pk>/read/": "tenant:conversation",
    "api/tenants/<slug:tenant_slug>/messages/<int:pk>/media/": "tenant:message",
    "api/tenants/<slug:tenant_slug>/messages/<int:pk>/reaction/": "tenant:message",
    "api/tenants/<slug:tenant_slug>/messages/<int:pk>/retry/": "tenant:message",
    "api/tenants/<slug:tenant_slug>/messages/<int:pk>/media/retry/": "tenant:message",
    "api/tenants/<slug:tenant_slug>/contacts/": "tenant:-",
    "api/tenants/<slug:tenant_slug>/contacts/<int:pk>/": "tenant:contact",
    "api/tenants/<slug:tenant_slug>/members/": "tenant:-",
    "api/tenants/<slug:tenant_slug>/members/<int:pk>/": "tenant:membership",
    "api/tenants/<slug:tenant_slug>/numbers/": "tenant:-",
    "api/tenants/<slug:tenant_slug>/numbers/<int:pk>/": "tenant:number",
    "api/tenants/<slug:tenant_slug>/templates/": "tenant:-",
    "api/tenants/<slug:tenant_slug>/events/": "tenant:-",
    "api/tenants/<slug:tenant_slug>/ws-ticket/": "tenant:-",
    "t/<slug:slug>/": "tenant:-",
    "t/<slug:slug>/conversations/": "tenant:-",
    "t/<slug:slug>/conversations/<int:pk>/": "tenant:conversation",
    "t/<slug:slug>/conversations/<int:pk>/row/": "tenant:conversation",
    "t/<slug:slug>/conversations/<int:pk>/messages/": "tenant:conversation",
    "t/<slug:slug>/conversations/<int:pk>/send/": "tenant:conversation",
    "t/<slug:slug>/conversations/<int:pk>/change/": "tenant:conversation",
    "t/<slug:slug>/conversations/<int:pk>/read/": "tenant:conversation",
    "t/<slug:slug>/messages/<int:pk>/": "tenant:message",
    "t/<slug:slug>/messages/<int:pk>/retry/": "tenant:message",
    "t/<slug:slug>/messages/<int:pk>/react/": "tenant:message",
    "t/<slug:slug>/messages/<int:pk>/media/retry/": "tenant:message",
}
ADMIN_PREFIX = "admin/"  # Django admin: staff only, scopes disabled by design (config/tests/test_admin.py)
METHODS = ("get", "post", "patch", "put", "delete")


def _walk(patterns: list[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern.callback


def _routes() -> dict[str, Any]:
    return {route: cb for route, cb in _walk(get_resolver().url_patterns) if not route.startswith(ADMIN_PREFIX)}


def test_every_route_is_classified_in_the_authorization_matrix() -> None:
    routes = _routes()
    unclassified = sorted(set(routes) - set(ROUTES))
    assert not unclassified, f"classify these routes in tests/hostile/test_cross_tenant.py ROUTES: {unclassified}"
    gone = sorted(set(ROUTES) - set(routes))
    assert not gone, f"ROUTES lists routes that no longer exist: {gone}"


def _methods(callback: Any) -> list[str]:
    view_class = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
    if view_class is not None:
        return [m for m in METHODS if hasattr(view_class, m)]
    return ["get", "post"]  # function views: try both (a 405 is allowed where the view refuses the method)


def _url(route: str, slug: str, pk: int | None) -> str:
    url = "/" + route.replace("<slug:tenant_slug>", slug).replace("<slug:slug>", slug)
    return url.replace("<int:pk>", str(pk)) if pk is not None else url


def _globex_ids(world: World) -> dict[str, int]:
    message = factories.make_message(world.globex_conversation)
    with scopes_disabled():
        membership = Membership.objects.get(tenant=world.globex, user=world.charlie)
    return {
        "conversation": world.globex_conversation.pk,
        "message": message.pk,
        "contact": world.globex_conversation.contact_id,
        "membership": membership.pk,
        "number": world.globex_number.pk,
    }


def _call(client: Client | APIClient, method: str, url: str) -> Any:
    body = json.dumps({"text": "x", "status": "resolved", "role": "agent", "message_id": 1, "emoji": "👍"})
    if method == "get":
        return client.get(url)
    return getattr(client, method)(url, data=body, content_type="application/json")


def _clients(world: World) -> tuple[APIClient, Client]:
    page_client = Client()
    page_client.force_login(world.alice)
    return client_for(world.alice), page_client


def test_every_tenant_route_answers_404_for_another_tenants_slug_and_objects(world: World) -> None:
    api, pages = _clients(world)
    ids = _globex_ids(world)
    tried = 0
    for route, callback in _routes().items():
        kind = ROUTES.get(route, "unclassified")  # unclassified routes fail the test above
        if not kind.startswith("tenant:"):
            continue
        obj = kind.split(":", 1)[1]
        client = api if route.startswith("api/") else pages
        own_pk = None if obj == "-" else 10**9  # a missing id of acme: the baseline answer
        attempts = [("globex", None if obj == "-" else ids[obj])]  # globex's own URL, as alice: not a member
        if obj != "-":
            attempts.append(("acme", ids[obj]))  # acme's URL with globex's object
        for method in _methods(callback):
            baseline = _call(client, method, _url(route, "acme", own_pk)).status_code if own_pk else None
            for slug, pk in attempts:
                response = _call(client, method, _url(route, slug, pk))
                tried += 1
                where = f"{method.upper()} {_url(route, slug, pk)}"
                assert response.status_code in (404, 405), f"{where} → {response.status_code}"
                if response.status_code == 405:
                    # Refusing the method cannot depend on whose object it is.
                    assert baseline in (None, 405), f"{where} → 405 but a missing acme id gets {baseline}"
    assert tried >= 60


def test_lists_show_no_other_tenants_ids(world: World) -> None:
    api, _ = _clients(world)
    ids = _globex_ids(world)
    factories.make_message(world.acme_conversation)
    with scopes_disabled():
        globex_messages = set(Message.objects.filter(tenant=world.globex).values_list("pk", flat=True))
    pages = {
        "conversations/": ("conversation", "id"),
        "contacts/": ("contact", "id"),
        "members/": ("membership", "id"),
        "numbers/": ("number", "id"),
        "events/?since=0": ("-", "-"),
        f"conversations/{world.acme_conversation.pk}/messages/": ("message", "id"),
    }
    for path, (kind, key) in pages.items():
        response = api.get(f"/api/tenants/acme/{path}")
        assert response.status_code == 200, (path, response.status_code)
        text = response.content.decode()
        assert "globex" not in text.lower() and "charlie" not in text, path
        body = response.json()
        rows = body if isinstance(body, list) else body.get("results", body.get("events", []))
        if kind != "-":
            found = {row[key] for row in rows}
            assert ids[kind] not in found, (path, found)
        if kind == "message":
            assert not ({row["id"] for row in rows} & globex_messages)


def test_writes_referencing_another_tenants_rows_are_refused_with_400(world: World) -> None:
    api, _ = _clients(world)
    globex_message = factories.make_message(world.globex_conversation)
    conversation = world.acme_conversation.pk
    assign = api.patch(
        f"/api/tenants/acme/conversations/{conversation}/", {"assignee": world.charlie.pk}, format="json"
    )
    assert assign.status_code == 400, assign.content
    reply = api.post(
        f"/api/tenants/acme/conversations/{conversation}/messages/",
        {"text": "hi", "client_id": "x-tenant-reply", "reply_to": globex_message.pk},
        format="json",
    )
    assert reply.status_code == 400, reply.content
    read = api.post(
        f"/api/tenants/acme/conversations/{conversation}/read/", {"message_id": globex_message.pk}, format="json"
    )
    assert read.status_code == 400, read.content
    with scopes_disabled():
        assert not Message.objects.filter(tenant=world.acme, client_id="x-tenant-reply").exists()
        world.acme_conversation.refresh_from_db()
        assert world.acme_conversation.assignee_id is None


def test_membership_ids_of_another_tenant_are_not_listed(world: World) -> None:
    """members/ lists memberships by id; globex's membership id must not be among them."""
    api, _ = _clients(world)
    with scopes_disabled():
        foreign = Membership.objects.get(tenant=world.globex, user=world.charlie).pk
    rows = api.get("/api/tenants/acme/members/").json()
    rows = rows if isinstance(rows, list) else rows["results"]
    assert foreign not in {row["id"] for row in rows}
    assert world.charlie.pk not in {row["user"]["id"] for row in rows}


def test_tasks_given_another_tenants_ids_touch_nothing(world: World) -> None:
    """Celery payloads carry ids: a task run in acme's scope with a globex message id finds nothing to act on."""
    from inbox import tasks

    globex_send = factories.make_message(
        world.globex_conversation,
        direction=Direction.OUTBOUND,
        send_state=SendState.QUEUED,
        send_next_attempt_at=timezone.now(),
    )
    globex_media = factories.make_message(
        world.globex_conversation, type="image", media_id="m-1", media_state="pending"
    )
    sent = tasks.message_send.apply(kwargs={"tenant_id": world.acme.pk, "message_id": globex_send.pk})
    assert sent.result == "skipped"
    downloaded = tasks.media_download.apply(
        kwargs={"tenant_id": world.acme.pk, "message_id": globex_media.pk}, throw=False
    )
    assert downloaded.failed()  # DoesNotExist: in acme's scope the globex row does not exist
    with scopes_disabled():
        globex_send.refresh_from_db()
        globex_media.refresh_from_db()
    assert globex_send.send_state == SendState.QUEUED and globex_send.send_attempts == 0
    assert globex_media.media_state == "pending"
