"""The OpenAPI schema generates with no warnings and documents bodies, responses and errors of every endpoint."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

pytestmark = pytest.mark.django_db


def test_the_schema_generates_without_warnings(tmp_path: Any) -> None:
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--fail-on-warn", "--validate", "--file", str(out))
    assert out.stat().st_size > 10_000


def _schema() -> dict[str, Any]:
    response = Client().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return json.loads(response.content)  # type: ignore[no-any-return]


def test_every_operation_documents_its_errors_and_bodies() -> None:
    schema = _schema()
    operations = [
        (path, method, op)
        for path, item in schema["paths"].items()
        for method, op in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]
    assert len(operations) >= 25
    error_ref = "#/components/schemas/Error"
    for path, method, op in operations:
        where = f"{method.upper()} {path}"
        responses = op["responses"]
        assert any(code.startswith("2") for code in responses), where
        assert responses["401"]["content"]["application/json"]["schema"]["$ref"] == error_ref, where
        if "{tenant_slug}" in path:
            assert responses["404"]["content"]["application/json"]["schema"]["$ref"] == error_ref, where
        if method in ("post", "patch") and not path.endswith(("/retry/", "/ws-ticket/", "/logout-all/")):
            assert "requestBody" in op, where
            assert "400" in responses, where
        assert op.get("summary"), where
    numbers = schema["paths"]["/api/tenants/{tenant_slug}/numbers/"]
    assert "403" in numbers["get"]["responses"] and "403" in numbers["post"]["responses"]
    send = schema["paths"]["/api/tenants/{tenant_slug}/conversations/{id}/messages/"]["post"]
    assert set(send["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert {"200", "201", "413", "429"} <= set(send["responses"])
    # Secrets of numbers are write-only: in requests, never in responses.
    components = schema["components"]["schemas"]
    assert "access_token" in components["NumberInputRequest"]["properties"]
    assert "access_token" not in components["NumberOutput"]["properties"]


def test_the_interactive_docs_are_served_without_inline_script() -> None:
    page = Client().get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "swagger-ui-bundle.js" in html and "cdn" not in html.lower()
    assert "<script>" not in html  # the Content-Security-Policy allows only our own script files
    script = Client().get("/api/docs/?script=")
    assert script.status_code == 200 and "/api/schema/" in script.content.decode()
