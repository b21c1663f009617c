"""config.http: the HTTP side under ASGI runs the middleware chain and a sync view in one hop to the request thread."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
from asgiref.sync import AsyncToSync, SyncToAsync
from asgiref.testing import ApplicationCommunicator
from django.core.signals import request_finished
from django.urls import path

from config.http import OneHopASGIHandler, RequestThreads


def _scope(path: str, method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
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
        "headers": [(b"host", b"testserver"), *(headers or [])],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


async def _request(
    application: Any,
    path: str,
    method: str = "GET",
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> tuple[int, dict[bytes, bytes], bytes]:
    communicator = ApplicationCommunicator(application, _scope(path, method, headers))
    await communicator.send_input({"type": "http.request", "body": body, "more_body": False})
    start = await communicator.receive_output(5)
    body = b""
    while True:
        part = await communicator.receive_output(5)
        body += part.get("body", b"")
        if not part.get("more_body"):
            break
    await communicator.wait(5)  # the application has finished (closed the response)
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


# --- the lean chain of machine-to-machine paths ------------------------------------------------------------------------


def _handler() -> OneHopASGIHandler:
    from config.asgi import django_asgi_app

    return getattr(django_asgi_app, "application", django_asgi_app)  # type: ignore[no-any-return]


def test_machine_paths_get_the_lean_chain_and_everything_else_the_full_one(settings: Any) -> None:
    from django.conf import settings as live

    handler = _handler()
    for path_info in ("/webhooks/whatsapp/", "/healthz", "/readyz", "/metrics"):
        assert handler.chain_for(path_info) is handler.lean, path_info
    for path_info in ("/", "/accounts/login/", "/api/tenants/", "/admin/", "/t/acme/", "/webhook"):
        assert handler.chain_for(path_info) is handler, path_info
    assert live.MIDDLEWARE != live.LEAN_MIDDLEWARE  # building the lean chain left the project's list as it was
    assert "django.contrib.sessions.middleware.SessionMiddleware" in live.MIDDLEWARE


def test_a_rest_call_with_a_bearer_token_and_no_cookie_gets_the_bearer_chain() -> None:
    handler = _handler()
    bearer = {"HTTP_AUTHORIZATION": "Bearer abc.def.ghi"}
    assert handler.bearer is not None and handler.bearer is not handler.lean
    assert handler.chain_for("/api/tenants/acme/conversations/", bearer) is handler.bearer
    # A cookie may carry a session, a path outside the API may render a page, another scheme is not simplejwt's:
    # each of them gets the full chain.
    assert handler.chain_for("/api/tenants/", {**bearer, "HTTP_COOKIE": "sessionid=x"}) is handler
    assert handler.chain_for("/t/acme/", bearer) is handler
    assert handler.chain_for("/api/tenants/", {"HTTP_AUTHORIZATION": "Basic Ym9iOnB3"}) is handler
    assert handler.chain_for("/api/tenants/", {}) is handler
    assert handler.chain_for("/api/tenants/") is handler


@pytest.mark.django_db(transaction=True)
async def test_a_bearer_rest_call_is_answered_through_the_bearer_chain_with_its_security_headers(world: Any) -> None:
    from rest_framework_simplejwt.tokens import AccessToken

    from config.asgi import application

    access = str(AccessToken.for_user(world.bob))  # (no database: an access token is not recorded)
    url = f"/api/tenants/{world.acme.slug}/conversations/"

    status, headers, body = await _request(application, url, headers=[(b"authorization", f"Bearer {access}".encode())])
    assert status == 200, body
    assert isinstance(json.loads(body)["results"], list)
    assert headers[b"X-Content-Type-Options"] == b"nosniff" and headers[b"X-Frame-Options"] == b"DENY"
    assert b"Content-Security-Policy" in headers and b"X-Request-ID" in headers
    assert b"Set-Cookie" not in headers and b"Vary" not in headers  # no session or htmx middleware looked at it

    # A bad token is refused by the JWT authentication itself: 401 in the API's error shape, not a session fallback.
    status, _, body = await _request(application, url, headers=[(b"authorization", b"Bearer not.a.token")])
    assert status == 401 and json.loads(body)["error"]["code"] == "token_not_valid"
    # Another tenant's data stays out of reach on this chain too.
    status, _, body = await _request(
        application,
        f"/api/tenants/{world.globex.slug}/conversations/",
        headers=[(b"authorization", f"Bearer {access}".encode())],
    )
    assert status == 404, body


@pytest.mark.django_db(transaction=True)
async def test_a_health_check_skips_the_page_middleware_and_a_page_does_not() -> None:
    from config.asgi import application

    status, headers, _ = await _request(application, "/healthz", headers=[(b"x-request-id", b"probe-1")])
    assert status == 200
    assert headers[b"X-Request-ID"] == b"probe-1"  # the request id, security headers: still there
    assert headers[b"X-Content-Type-Options"] == b"nosniff"
    assert b"Content-Security-Policy" not in headers and b"X-Frame-Options" not in headers
    assert b"Vary" not in headers  # no session or htmx middleware looked at the request

    status, headers, _ = await _request(application, "/accounts/login/")
    assert status == 200
    assert b"Content-Security-Policy" in headers and headers[b"X-Frame-Options"] == b"DENY"
    assert b"X-Request-ID" in headers


@pytest.mark.django_db(transaction=True)
async def test_meta_s_webhook_is_received_and_refused_through_the_lean_chain(settings: Any) -> None:
    from channels.db import database_sync_to_async

    from config.asgi import application
    from webhooks.models import ProcessingState, WebhookEvent
    from webhooks.parsers import signature_for
    from webhooks.tests import payloads

    settings.WHATSAPP_APP_SECRET = "lean-secret"
    raw = payloads.encode(payloads.body(messages=[payloads.message("messages.json", "text")]))
    json_type = (b"content-type", b"application/json")

    status, headers, _ = await _request(
        application, payloads.URL, "POST", raw, [json_type, (b"x-hub-signature-256", b"sha256=" + b"0" * 64)]
    )
    assert status == 403
    assert b"Set-Cookie" not in headers and b"Content-Security-Policy" not in headers
    signature = signature_for(raw, "lean-secret").encode()
    status, headers, body = await _request(
        application, payloads.URL, "POST", raw, [json_type, (b"x-hub-signature-256", signature)]
    )
    assert status == 200 and b"X-Request-ID" in headers

    # (database_sync_to_async: the thread's connection goes back to the pool, which the test database's teardown needs)
    states = await database_sync_to_async(lambda: sorted(WebhookEvent.objects.values_list("state", flat=True)))()
    assert len(states) == 2 and ProcessingState.REJECTED in states  # both stored, the forged one marked rejected
    stored = await database_sync_to_async(
        lambda: bytes(WebhookEvent.objects.exclude(state=ProcessingState.REJECTED).get().raw_body)
    )()
    assert stored == raw


# --- request threads ------------------------------------------------------------------------------------------------


def _streaming_view(request: Any) -> Any:
    from django.http import StreamingHttpResponse

    def parts() -> Any:
        for i in range(3):
            _thread_of.append(("part", threading.get_ident()))
            yield f"part {i};".encode()

    response = StreamingHttpResponse(parts(), content_type="text/plain")
    response._resource_closers.append(lambda: _thread_of.append(("close", threading.get_ident())))
    return response


def _plain_view(request: Any) -> Any:
    from django.http import HttpResponse

    _thread_of.append(("view", threading.get_ident()))
    return HttpResponse(b"x" * (OneHopASGIHandler.chunk_size + 10), content_type="application/octet-stream")


_thread_of: list[tuple[str, int]] = []
urlpatterns = [path("stream/", _streaming_view), path("plain/", _plain_view)]  # ROOT_URLCONF of the tests below


@pytest.fixture
def own_urls(settings: Any) -> Any:
    settings.ROOT_URLCONF = __name__
    _thread_of.clear()
    return settings


@pytest.mark.django_db(transaction=True)
async def test_requests_run_on_long_lived_threads_in_one_hop_each(
    own_urls: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Django's handler starts a thread per request and hops to it three times (request_started, the view,
    response.close); this one reuses its threads and hops once, with request_finished before the bytes go out."""
    hops = 0
    original = SyncToAsync.__call__

    def counted(self: SyncToAsync, *args: Any, **kwargs: Any) -> Any:
        nonlocal hops
        hops += 1
        return original(self, *args, **kwargs)

    finished: list[int] = []

    def on_finished(**kwargs: Any) -> None:
        finished.append(threading.get_ident())

    monkeypatch.setattr(SyncToAsync, "__call__", counted)
    request_finished.connect(on_finished)
    try:
        handler = OneHopASGIHandler(threads=2)
        threads_before = threading.active_count()
        for _ in range(4):
            status, headers, body = await _request(handler, "/plain/")
            assert (status, len(body)) == (200, OneHopASGIHandler.chunk_size + 10)  # two body messages, joined
            assert headers[b"Content-Type"] == b"application/octet-stream"
    finally:
        request_finished.disconnect(on_finished)
    assert hops == 4
    views = {ident for kind, ident in _thread_of if kind == "view"}
    assert len(views) == 1 and views != {threading.get_ident()}  # one request thread, not the loop's
    assert finished == [views.pop()] * 4  # request_finished on that thread, once per request
    assert handler.threads.started == 1 and threading.active_count() <= threads_before + 1


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators")
@pytest.mark.django_db(transaction=True)
async def test_a_streaming_response_is_streamed_and_closed_on_its_request_thread(own_urls: Any) -> None:
    handler = OneHopASGIHandler(threads=1)
    status, _, body = await _request(handler, "/stream/")
    assert (status, body) == (200, b"part 0;part 1;part 2;")
    kinds = [kind for kind, _ in _thread_of]
    assert kinds == ["part", "part", "part", "close"]
    idents = {ident for _, ident in _thread_of}
    assert len(idents) == 1 and idents != {threading.get_ident()}
    assert handler.threads._idle  # the thread went back to the pool after the close


async def test_requests_beyond_the_thread_limit_wait_for_a_free_thread_in_arrival_order() -> None:
    threads = RequestThreads(1)
    first = await threads.acquire()
    second = asyncio.ensure_future(threads.acquire())
    third = asyncio.ensure_future(threads.acquire())
    await asyncio.sleep(0)
    assert not second.done() and not third.done()
    second.cancel()  # a request cancelled while waiting gives up its place
    await asyncio.sleep(0)
    threads.release(first)
    assert await asyncio.wait_for(third, 5) is first
    threads.release(first)
    assert await threads.acquire() is first and threads.started == 1
    first.shutdown()
