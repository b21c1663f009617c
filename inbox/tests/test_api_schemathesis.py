"""Property-based run of the whole API against its own OpenAPI schema (schemathesis, bounded examples).

Every operation of /api/schema/ gets generated requests (valid and invalid) through Django's WSGI handler, as an
admin of acme with real ids in the path (most of the time): no response may be a 5xx, and each must have a
documented status code, content type and body shape.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings
from rest_framework_simplejwt.tokens import RefreshToken
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from inbox.tests.api_helpers import isolate_throttles, make_media_message
from inbox.tests.fixtures import World

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _load_schema() -> dict[str, Any]:
    generated = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(generated))  # type: ignore[no-any-return]


schema = schemathesis.openapi.from_dict(_load_schema())
schema.app = WSGIHandler()
# The examples and fuzzing phases (valid and invalid data) keep this in seconds; the exhaustive coverage phase
# triples the time and is run by the CLI against a server when wanted.
schema.config.phases.coverage.enabled = False


@pytest.fixture
def wsgi_in_test_transaction(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Requests run inside the test's transaction, as with Django's test client (which does the same)."""
    isolate_throttles(monkeypatch)
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def ids(world: World) -> dict[str, list[int]]:
    """Real ids of acme's objects per path, to reach past the 404s most of the time."""
    from inbox.tests import factories
    from tenants.models import Membership
    from tenants.scoping import scopes_disabled

    message = factories.make_message(world.acme_conversation, text="hello")
    media = make_media_message(world.acme_conversation)
    spare = factories.make_number(world.acme)
    with scopes_disabled():
        memberships = list(Membership.objects.filter(tenant=world.acme).values_list("pk", flat=True))
    return {
        "conversations": [world.acme_conversation.pk],
        "messages": [message.pk, media.pk],
        "contacts": [world.acme_conversation.contact_id],
        "members": memberships,
        "numbers": [world.acme_number.pk, spare.pk],
    }


@schema.parametrize()
@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@pytest.mark.django_db
def test_the_api_conforms_to_its_schema(
    case: Any, world: World, ids: dict[str, list[int]], wsgi_in_test_transaction: None
) -> None:
    path = case.operation.path
    if "{tenant_slug}" in path:
        case.path_parameters["tenant_slug"] = "acme"
    if "{id}" in path:  # drf-spectacular names <int:pk> "id"
        resource = path.split("/")[4]  # /api/tenants/{tenant_slug}/<resource>/{id}/...
        rng = random.Random(json.dumps(case.path_parameters, sort_keys=True, default=str))
        if rng.random() < 0.8:
            case.path_parameters["id"] = rng.choice(ids[resource])
    token = RefreshToken.for_user(world.alice).access_token
    headers = {"Authorization": f"Bearer {token}"} if "/auth/token" not in path else {}
    case.call_and_validate(headers=headers, checks=CHECKS)
