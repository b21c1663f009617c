"""Helpers for the REST API tests: JWT-authenticated clients and URL building."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.core.cache.backends.locmem import LocMemCache
from django.core.files.base import ContentFile
from django.urls import reverse
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle
from rest_framework_simplejwt.tokens import RefreshToken

from accounts.models import User
from inbox.models import Conversation, MediaState, Message, MessageType
from inbox.tests import factories
from tenants.models import Tenant
from tenants.scoping import scopes_disabled


def client_for(user: User | None) -> APIClient:
    """An API client holding a fresh access token of `user` (anonymous when None)."""
    client = APIClient()
    client.default_format = "json"  # the API parses JSON (and multipart only where files are uploaded)
    if user is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(user).access_token}")
    return client


def turl(name: str, tenant: Tenant | str, **kwargs: Any) -> str:
    slug = tenant if isinstance(tenant, str) else tenant.slug
    return reverse(name, kwargs={"tenant_slug": slug, **kwargs})


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is in the one error shape, with that status (and code)."""
    assert response.status_code == status, (response.status_code, getattr(response, "data", response.content))
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message", "fields"} <= set(body["error"]), body
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]  # type: ignore[no-any-return]


def make_media_message(conversation: Conversation, *, content: bytes = b"\x89PNG fake image bytes") -> Message:
    message = factories.make_message(
        conversation,
        type=MessageType.IMAGE,
        text="",
        media_id="media-1",
        media_mime_type="image/png",
        media_filename="photo.png",
        media_size=len(content),
        media_state=MediaState.READY,
    )
    with scopes_disabled():
        message.media_file.save("photo.png", ContentFile(content), save=True)
    return message


def isolate_throttles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give this test its own throttle counters (not the shared cache: flushing Redis would hit other users of it)."""
    monkeypatch.setattr(SimpleRateThrottle, "cache", LocMemCache(f"throttle-{uuid.uuid4().hex}", {}))
