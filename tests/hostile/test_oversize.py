"""Oversize requests on the API, the pages and the socket: refused with a 4xx or an error frame, never a 500.

(The webhook's own limit and Meta's 3 MB bodies are in test_webhook_hostile.py; Daphne's 1009 for 70 KiB frames
in tests/reliability/test_daphne_limits.py.)
"""

from __future__ import annotations

import json

import pytest
from django.test import Client

from inbox.models import Message
from inbox.tests.api_helpers import client_for
from inbox.tests.fixtures import World
from tenants.scoping import scopes_disabled

pytestmark = pytest.mark.django_db

BIG = 3 * 1024 * 1024  # over Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB)


def test_an_oversize_json_send_is_refused_without_a_500(world: World) -> None:
    api = client_for(world.alice)
    url = f"/api/tenants/acme/conversations/{world.acme_conversation.pk}/messages/"
    body = json.dumps({"text": "x" * BIG, "client_id": "oversize-1"})
    response = api.post(url, data=body, content_type="application/json")
    assert 400 <= response.status_code < 500, response.status_code
    with scopes_disabled():
        assert not Message.objects.filter(client_id="oversize-1").exists()


def test_an_oversize_text_within_the_body_limit_is_a_field_error(world: World) -> None:
    api = client_for(world.alice)
    url = f"/api/tenants/acme/conversations/{world.acme_conversation.pk}/messages/"
    response = api.post(url, {"text": "y" * 5000, "client_id": "oversize-2"}, format="json")
    assert response.status_code == 400
    assert "text" in json.dumps(response.json())


def test_an_oversize_login_form_and_query_string_get_a_4xx(world: World) -> None:
    client = Client()
    response = client.post("/accounts/login/", {"username": "alice", "password": "p" * BIG})
    assert 400 <= response.status_code < 500, response.status_code
    page = Client()
    page.force_login(world.alice)
    response = page.get("/t/acme/conversations/", {"q": "z" * 20_000})
    assert response.status_code < 500
    api = client_for(world.alice)
    response = api.get("/api/tenants/acme/conversations/", {"q": "z" * 20_000, "cursor": "9" * 5000})
    assert 400 <= response.status_code < 500, response.status_code
