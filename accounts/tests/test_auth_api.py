"""JWT auth for API clients: obtain (username or email), rotating refresh with blacklist, logout, me."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from inbox.tests.api_helpers import assert_error, client_for, isolate_throttles, turl
from inbox.tests.factories import PASSWORD
from inbox.tests.fixtures import World
from tenants.models import Membership
from tenants.scoping import scopes_disabled

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_throttles(monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_throttles(monkeypatch)


def _json_client() -> APIClient:
    client = APIClient()
    client.default_format = "json"
    return client


def _login(username: str, password: str = PASSWORD) -> Any:
    return _json_client().post("/api/auth/token/", {"username": username, "password": password})


def test_it_logs_in_with_username_or_email_and_uses_the_token(world: World) -> None:
    for identifier in ("alice", "ALICE@example.com"):
        response = _login(identifier)
        assert response.status_code == 200, response.content
        tokens = response.json()
        assert set(tokens) == {"access", "refresh"}
    client = _json_client()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
    assert client.get(turl("api-conversation-list", world.acme)).status_code == 200


def test_login_failures(world: World) -> None:
    assert_error(_login("alice", "wrong password"), 401, "no_active_account")
    assert_error(_login("nobody"), 401, "no_active_account")
    err = assert_error(_json_client().post("/api/auth/token/", {"username": "alice"}), 400, "validation_error")
    assert "password" in err["fields"]
    world.bob.is_active = False
    world.bob.save()
    assert_error(_login("bob"), 401, "no_active_account")


def test_refresh_rotates_and_blacklists(world: World) -> None:
    tokens = _login("bob").json()
    client = _json_client()
    rotated = client.post("/api/auth/token/refresh/", {"refresh": tokens["refresh"]})
    assert rotated.status_code == 200, rotated.content
    new = rotated.json()
    assert set(new) == {"access", "refresh"} and new["refresh"] != tokens["refresh"]
    # The old refresh token was blacklisted by the rotation.
    assert_error(client.post("/api/auth/token/refresh/", {"refresh": tokens["refresh"]}), 401, "token_not_valid")
    assert_error(client.post("/api/auth/token/refresh/", {"refresh": "garbage"}), 401, "token_not_valid")
    assert "refresh" in assert_error(client.post("/api/auth/token/refresh/", {}), 400)["fields"]
    # A deactivated user cannot refresh.
    world.bob.is_active = False
    world.bob.save()
    assert_error(client.post("/api/auth/token/refresh/", {"refresh": new["refresh"]}), 401, "no_active_account")


def test_logout_blacklists_the_refresh_token(world: World) -> None:
    tokens = _login("bob").json()
    client = _json_client()
    assert_error(client.post("/api/auth/logout/", {"refresh": tokens["refresh"]}), 401, "not_authenticated")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
    # Someone else's refresh token cannot be revoked with bob's access.
    alice_refresh = _login("alice").json()["refresh"]
    assert "refresh" in assert_error(client.post("/api/auth/logout/", {"refresh": alice_refresh}), 400)["fields"]
    assert client.post("/api/auth/logout/", {"refresh": tokens["refresh"]}).status_code == 204
    refresh = _json_client().post("/api/auth/token/refresh/", {"refresh": tokens["refresh"]})
    assert_error(refresh, 401, "token_not_valid")
    assert "refresh" in assert_error(client.post("/api/auth/logout/", {"refresh": tokens["refresh"]}), 400)["fields"]
    assert "refresh" in assert_error(client.post("/api/auth/logout/", {}), 400)["fields"]


def test_me_lists_tenants_and_roles(world: World) -> None:
    response = client_for(world.alice).get("/api/me/")
    assert response.status_code == 200
    assert response.json() == {
        "user": {"id": world.alice.pk, "username": "alice", "email": "alice@example.com", "name": world.alice.name},
        "tenants": [{"slug": "acme", "name": "Acme", "role": "admin"}],
    }
    with scopes_disabled():
        Membership.objects.filter(user=world.alice).update(is_active=False)
    assert client_for(world.alice).get("/api/me/").json()["tenants"] == []
    assert_error(client_for(None).get("/api/me/"), 401, "not_authenticated")


def test_auth_endpoints_are_throttled(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from rest_framework.throttling import ScopedRateThrottle

    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"auth": "3/min", "send": "20/min", "ticket": "20/min"})
    for _ in range(3):
        _login("alice", "wrong password")
    err = assert_error(_login("alice"), 429, "throttled")
    assert err["retry_after"] > 0


def test_repeated_failures_lock_the_login_out(world: World) -> None:
    """django-axes' lockout applies to the JWT endpoint too, answering in the API's error shape."""
    for _ in range(4):
        assert_error(_login("alice", "wrong password"), 401, "no_active_account")
    assert_error(_login("alice", "wrong password"), 429, "locked_out")  # the 5th failure locks
    locked = _login("alice")  # even with the right password, for the cool-off
    err = assert_error(locked, 429, "locked_out")
    assert "Try again" in err["message"] and int(locked["Retry-After"]) > 0
    assert _login("bob").status_code == 200  # only that username is locked
