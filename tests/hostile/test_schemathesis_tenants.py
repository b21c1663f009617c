"""Check 25: schemathesis over the drf-spectacular schema with the auth checks and a cross-tenant check.

inbox/tests/test_api_schemathesis.py (Engineer B) checks conformance as acme's admin on acme's own objects. This
run is the hostile one: every generated request is sent by alice (acme) either to globex's slug or to acme's slug
with globex's object ids. Besides `not_a_server_error`, `ignored_auth` (the same request without / with a bogus
token must be refused) and `use_after_free`, the custom cross-tenant check fails on any 2xx or 403 (the answer must
be the 404 of "no such object") and on any response that carries a globex name.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.cache import cache
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings
from rest_framework_simplejwt.tokens import RefreshToken
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import ignored_auth, use_after_free

from inbox.tests import factories
from inbox.tests.api_helpers import make_media_message
from inbox.tests.fixtures import World
from tenants.models import Membership
from tenants.scoping import scopes_disabled

EXAMPLES = int(os.environ.get("HOSTILE_SCHEMA_EXAMPLES", "8"))


def _load_schema() -> dict[str, Any]:
    generated = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(generated))  # type: ignore[no-any-return]


schema = schemathesis.openapi.from_dict(_load_schema())
schema.app = WSGIHandler()
schema.config.phases.coverage.enabled = False
# Only the tenant operations: the rest (login, refresh, me, schema) has no tenant to cross.
tenant_schema = schema.include(path_regex=r"^/api/tenants/")


@pytest.fixture
def wsgi_in_test_transaction() -> Iterator[None]:
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    cache.clear()
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
        cache.clear()


@pytest.fixture
def globex_ids(world: World) -> dict[str, list[int]]:
    message = factories.make_message(world.globex_conversation, text="globex secret text")
    media = make_media_message(world.globex_conversation)
    with scopes_disabled():
        memberships = list(Membership.objects.filter(tenant=world.globex).values_list("pk", flat=True))
    return {
        "conversations": [world.globex_conversation.pk],
        "messages": [message.pk, media.pk],
        "contacts": [world.globex_conversation.contact_id],
        "members": memberships,
        "numbers": [world.globex_number.pk],
    }


def _cross_tenant(response: Any, case: Any) -> None:
    where = f"{case.method} {case.formatted_path}"
    assert not (200 <= response.status_code < 300), f"{where} answered {response.status_code} across tenants"
    assert response.status_code != 403, f"{where} answered 403: it revealed that the object exists"
    body = response.content.decode(errors="replace").lower()
    assert "globex" not in body and "charlie" not in body, f"{where} leaked globex data"


@tenant_schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@pytest.mark.django_db
def test_no_operation_crosses_tenants(
    case: Any, world: World, globex_ids: dict[str, list[int]], wsgi_in_test_transaction: None
) -> None:
    rng = random.Random(json.dumps(case.path_parameters, sort_keys=True, default=str) + case.method)
    path = case.operation.path
    if "{id}" in path and rng.random() < 0.7:
        resource = path.split("/")[4]
        case.path_parameters["tenant_slug"] = "acme"  # acme's URL, globex's object
        case.path_parameters["id"] = rng.choice(globex_ids[resource])
    else:
        case.path_parameters["tenant_slug"] = "globex"  # globex's URL: alice is not a member
    token = RefreshToken.for_user(world.alice).access_token
    response = case.call(headers={"Authorization": f"Bearer {token}"})
    case.validate_response(response, checks=[not_a_server_error, ignored_auth, use_after_free])
    _cross_tenant(response, case)
