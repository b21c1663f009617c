"""Check 6: refresh tokens of deactivated users, reused rotated refresh tokens, access tokens after a password change."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from accounts.models import User
from inbox.tests.factories import PASSWORD
from inbox.tests.fixtures import World

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_throttle(settings: Any) -> None:
    rates = {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "auth": "1000/min"}
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}


def _post(path: str, data: dict[str, str]) -> Any:
    return Client().post(path, data=json.dumps(data), content_type="application/json")


def _pair(username: str = "alice") -> dict[str, str]:
    response = _post("/api/auth/token/", {"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.content
    return response.json()  # type: ignore[no-any-return]


def _me(access: str) -> int:
    return Client().get("/api/me/", HTTP_AUTHORIZATION=f"Bearer {access}").status_code


def test_a_deactivated_users_refresh_and_access_tokens_are_refused(world: World) -> None:
    pair = _pair()
    User.objects.filter(pk=world.alice.pk).update(is_active=False)
    assert _post("/api/auth/token/refresh/", {"refresh": pair["refresh"]}).status_code == 401
    assert _me(pair["access"]) == 401


def test_a_rotated_refresh_token_works_once(world: World) -> None:
    pair = _pair()
    first = _post("/api/auth/token/refresh/", {"refresh": pair["refresh"]})
    assert first.status_code == 200
    assert _post("/api/auth/token/refresh/", {"refresh": pair["refresh"]}).status_code == 401  # blacklisted
    assert _post("/api/auth/token/refresh/", {"refresh": first.json()["refresh"]}).status_code == 200


def test_a_password_change_revokes_every_access_token_issued_before_it(world: World) -> None:
    pair = _pair()
    assert _me(pair["access"]) == 200
    user = User.objects.get(pk=world.alice.pk)
    user.set_password("a-brand-new-passphrase-42")
    user.save()
    assert _me(pair["access"]) == 401
    # The old refresh token cannot mint a working access token either (simplejwt's refresh endpoint answers, but
    # the access token it derives carries the old password's revoke claim).
    refreshed = _post("/api/auth/token/refresh/", {"refresh": pair["refresh"]})
    if refreshed.status_code == 200:
        assert _me(refreshed.json()["access"]) == 401
    else:
        assert refreshed.status_code == 401
