"""Access tokens are verified once per process (accounts.authentication.VerifiedTokens); what revokes one still does."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework_simplejwt.backends import TokenBackend
from rest_framework_simplejwt.tokens import AccessToken

from accounts import authentication
from accounts.authentication import VERIFIED_TOKENS, VerifiedTokens
from inbox.tests.api_helpers import assert_error, isolate_throttles, turl
from inbox.tests.factories import PASSWORD
from inbox.tests.fixtures import World

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    isolate_throttles(monkeypatch)
    VERIFIED_TOKENS.clear()
    yield
    VERIFIED_TOKENS.clear()


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every signature verification (TokenBackend.decode) of the test, by token."""
    seen: list[str] = []
    decode = TokenBackend.decode

    def counting(self: TokenBackend, token: Any, verify: bool = True) -> Any:
        seen.append(token if isinstance(token, str) else token.decode())
        return decode(self, token, verify)

    monkeypatch.setattr(TokenBackend, "decode", counting)
    return seen


def _bearer(access: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    return client


def test_a_token_is_verified_once_and_a_tampered_copy_is_still_refused(world: World, decodes: list[str]) -> None:
    access = str(AccessToken.for_user(world.bob))
    url = turl("api-conversation-list", world.acme)
    for _ in range(3):
        assert _bearer(access).get(url).status_code == 200
    assert decodes == [access]

    header, payload, signature = access.split(".")
    forged = f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    assert_error(_bearer(forged).get(url), 401, "token_not_valid")
    assert_error(_bearer(forged).get(url), 401, "token_not_valid")  # a refused token is not remembered
    assert decodes == [access, forged, forged]


def test_what_revokes_a_token_still_does_after_it_was_verified(world: World) -> None:
    access = str(AccessToken.for_user(world.bob))
    url = turl("api-conversation-list", world.acme)
    assert _bearer(access).get(url).status_code == 200

    world.bob.set_password("a-new-long-password-1")  # the token's password hash claim no longer matches
    world.bob.save()
    assert_error(_bearer(access).get(url), 401)

    other = str(AccessToken.for_user(world.alice))
    assert _bearer(other).get(url).status_code == 200
    world.alice.is_active = False
    world.alice.save()
    assert_error(_bearer(other).get(url), 401)


def test_a_remembered_token_that_has_expired_is_verified_again(
    world: World, monkeypatch: pytest.MonkeyPatch, decodes: list[str]
) -> None:
    token = AccessToken.for_user(world.bob)
    token.set_exp(lifetime=timedelta(minutes=2))
    access = str(token)
    client = _bearer(access)
    url = turl("api-conversation-list", world.acme)
    assert client.get(url).status_code == 200
    assert client.get(url).status_code == 200
    assert decodes == [access]

    later = timezone.now() + timedelta(minutes=3)
    monkeypatch.setattr(authentication, "now", lambda: later)
    assert VERIFIED_TOKENS.get(access.encode()) is None  # past its exp: forgotten, so it is verified again
    assert client.get(url).status_code == 200  # (the signature check itself runs on the real clock)
    assert decodes == [access, access]


def test_the_oldest_tokens_go_first_and_a_signing_key_change_forgets_them(world: World, settings: Any) -> None:
    tokens = VerifiedTokens(max_entries=2)
    made = [AccessToken.for_user(user) for user in (world.alice, world.bob, world.charlie)]
    for token in made:
        tokens.put(str(token).encode(), token)
    assert tokens.get(str(made[0]).encode()) is None
    assert tokens.get(str(made[1]).encode()) is made[1] and tokens.get(str(made[2]).encode()) is made[2]

    access = str(AccessToken.for_user(world.bob))
    assert _bearer(access).get(turl("api-conversation-list", world.acme)).status_code == 200
    assert VERIFIED_TOKENS.get(access.encode()) is not None
    settings.SIMPLE_JWT = {**settings.SIMPLE_JWT, "SIGNING_KEY": "another-signing-key-of-enough-length-0123456789"}
    assert VERIFIED_TOKENS.get(access.encode()) is None  # what verified it may no longer: it is verified again


def test_a_login_still_issues_tokens_that_work(world: World) -> None:
    response = APIClient().post("/api/auth/token/", {"username": "bob", "password": PASSWORD}, format="json")
    assert response.status_code == 200
    assert _bearer(response.json()["access"]).get(turl("api-conversation-list", world.acme)).status_code == 200
