"""Log out everywhere: every session, JWT, refresh token and ticket issued before it stops working."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import User
from inbox.tests.api_helpers import assert_error, isolate_throttles, turl
from inbox.tests.factories import PASSWORD
from inbox.tests.fixtures import World
from tenants.tickets import ticket_issue, ticket_redeem

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_throttles(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_throttles(monkeypatch)


def _login(username: str) -> dict[str, str]:
    client = APIClient()
    response = client.post("/api/auth/token/", {"username": username, "password": PASSWORD}, format="json")
    assert response.status_code == 200, response.content
    return response.json()  # type: ignore[no-any-return]


def _bearer(access: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    return client


def test_it_ends_every_credential_of_the_user_and_no_one_elses(world: World) -> None:
    laptop, phone, colleague = _login("bob"), _login("bob"), _login("alice")
    page = Client()
    assert page.login(username="bob", password=PASSWORD)
    ticket, _ = ticket_issue(user=world.bob, tenant=world.acme)
    conversations = turl("api-conversation-list", world.acme)
    assert _bearer(phone["access"]).get(conversations).status_code == 200

    response = _bearer(laptop["access"]).post("/api/auth/logout-all/")
    assert response.status_code == 200, response.content
    assert response.json()["revoked_refresh_tokens"] >= 2

    for tokens in (laptop, phone):
        assert_error(_bearer(tokens["access"]).get(conversations), 401)
        refresh = APIClient().post("/api/auth/token/refresh/", {"refresh": tokens["refresh"]}, format="json")
        assert refresh.status_code == 401
    assert ticket_redeem(token=ticket, tenant_slug="acme") is None
    # the page's session ended too: the inbox now asks to log in
    assert page.get("/").status_code in (302, 401, 403)
    # others are untouched, and logging in again works
    assert _bearer(colleague["access"]).get(conversations).status_code == 200
    fresh = _login("bob")
    assert _bearer(fresh["access"]).get(conversations).status_code == 200
    assert User.objects.get(pk=world.bob.pk).credentials_epoch == 1


def test_it_needs_authentication(world: World) -> None:
    assert_error(APIClient().post("/api/auth/logout-all/"), 401)
