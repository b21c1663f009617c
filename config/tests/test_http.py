"""config.http: the HTTP side under ASGI runs the middleware chain and a sync view in one hop to the request thread."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import AsyncToSync
from asgiref.testing import ApplicationCommunicator

from config.http import OneHopASGIHandler


def _scope(path: str, method: str = "GET") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def _request(application: Any, path: str, method: str = "GET") -> tuple[int, dict[bytes, bytes], bytes]:
    communicator = ApplicationCommunicator(application, _scope(path, method))
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await communicator.receive_output(5)
    body = b""
    while True:
        part = await communicator.receive_output(5)
        body += part.get("body", b"")
        if not part.get("more_body"):
            break
    return start["status"], dict(start["headers"]), body


def test_the_project_serves_http_through_the_one_hop_handler() -> None:
    from config.asgi import django_asgi_app

    handler = getattr(django_asgi_app, "application", django_asgi_app)  # DEBUG wraps it in the static files handler
    assert isinstance(handler, OneHopASGIHandler)


@pytest.mark.django_db(transaction=True)
async def test_a_sync_view_runs_inside_its_middleware_without_hopping_back_to_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Django's own ASGIHandler hops request thread → event loop → request thread between the (sync) middleware and
    a sync view: one async_to_sync per request. This handler enters the request thread once and stays there."""
    from django.core.handlers.asgi import ASGIHandler

    from config.asgi import application

    calls = 0
    original = AsyncToSync.__call__

    def counted(self: AsyncToSync, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(AsyncToSync, "__call__", counted)

    status, headers, body = await _request(ASGIHandler(), "/healthz")  # the stock handler, for comparison
    assert (status, calls) == (200, 1)

    calls = 0
    status, headers, body = await _request(application, "/healthz")
    assert status == 200, body
    assert json.loads(body) == {"status": "ok"}
    assert headers.get(b"X-Request-ID")  # the middleware chain ran around the view
    assert calls == 0


@pytest.mark.django_db(transaction=True)
async def test_unknown_paths_and_api_errors_are_answered_as_before() -> None:
    from config.asgi import application

    status, _, _ = await _request(application, "/no-such-path/")
    assert status == 404
    status, headers, body = await _request(application, "/api/tenants/nope/conversations/")
    assert status in (401, 403, 404)
    assert headers[b"Content-Type"].startswith(b"application/json")
    assert "detail" in json.loads(body) or "error" in json.loads(body)
