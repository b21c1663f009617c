"""Django's HTTP side under ASGI: a request's sync work in one hop, on a long-lived request thread.

Django's ASGIHandler, per request, (1) enters a fresh `ThreadSensitiveContext`, i.e. starts a new thread for the
request's sync code (and on exit one more thread to join it), so each request also builds a fresh database
connection wrapper (pool checkout, `connection_created` receivers); (2) hops to that thread for the
`request_started` receivers, again for the middleware chain and the view, and again for `response.close()`
(`request_finished`); and (3) builds its middleware chain for an async caller, so with sync-only middleware (ours are)
the chain hops thread → event loop → thread again around a sync view. Each hop waits for the event loop, which under
load is busy with WebSocket frames; each costs CPU in asgiref's context copying.

`OneHopASGIHandler` builds the chain for a sync caller (`_get_response`, what WSGI runs: a sync view is called
directly, an async view through async_to_sync) and runs `request_started`, the request, the view and, for an
ordinary (non-streaming) response, the body and `response.close()` in one hop, on a thread of a small pool
(`HTTP_THREADS`) that lives as long as the process. The event loop reads the body before and writes the response
after. A streaming response (a file download) is streamed by Django's own code, its sync iterator and close on the
same request thread (a `ThreadSensitiveContext` bound to it), with the client's disconnect stopping the stream.

Machine-to-machine paths (`LEAN_PATH_PREFIXES`: Meta's webhook, the health checks, the metrics scrape) go through a
second, shorter chain (`LEAN_MIDDLEWARE`): no session, CSRF, login lockout, messages, htmx or CSP applies to a request
that carries no cookie and gets no page back, and on the webhook, the busiest path, that chain was a quarter of the
CPU of a request. An integrator's REST call (`BEARER_PATH_PREFIXES`, `Authorization: Bearer ...` and no cookie) goes
through a third one (`BEARER_MIDDLEWARE`): DRF authenticates it by its token alone (the JWT class comes first and
answers 401 itself for a bad token), so no session, CSRF, login lockout, messages or htmx middleware has anything
to do with it; the security headers, CSP and X-Frame-Options stay. On an agent send, the busiest REST path, those
middleware were ~0.2 ms of its ~6 ms on the request thread.

The handler also tells the process's `config.gctune.IdleCollector` when a request starts and when its response
has been sent, so that a garbage collection that is due runs between requests rather than inside one.

What differs from Django's handler: `request_finished` fires before the response's bytes are written (they are
already complete in memory), and a request whose client disconnects while the view runs is not told (a sync view
never was: its thread ran to the end either way; the response to a gone client is dropped by the server).
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.http import FileResponse, HttpResponseBase
from django.urls import set_script_prefix

from config.gctune import IdleCollector, idle_fraction

Headers = list[tuple[bytes, bytes]]


class RequestThreads:
    """Up to `size` long-lived threads, each serving one request at a time (a request's sync code must stay on one
    thread: its database connection is thread-local). Started on demand; a request that finds them all busy waits
    for the next one to come free, in arrival order."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.started = 0
        self._idle: list[ThreadPoolExecutor] = []
        self._waiters: deque[asyncio.Future[ThreadPoolExecutor]] = deque()

    async def acquire(self) -> ThreadPoolExecutor:
        if self._idle:
            return self._idle.pop()
        if self.started < self.size:
            self.started += 1
            return ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"http-{self.started}")
        waiter: asyncio.Future[ThreadPoolExecutor] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())  # handed over just as the request was cancelled: pass it on
            raise

    def release(self, executor: ThreadPoolExecutor) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(executor)
                return
        self._idle.append(executor)


def response_headers(response: HttpResponseBase) -> Headers:
    """The ASGI header list of a response, cookies included (as Django's ASGIHandler.send_response writes it)."""
    headers: Headers = []
    for header, value in response.items():
        headers.append(
            (
                header.encode("ascii") if isinstance(header, str) else bytes(header),
                value.encode("latin1") if isinstance(value, str) else bytes(value),
            )
        )
    for cookie in response.cookies.values():
        headers.append((b"Set-Cookie", cookie.output(header="").encode("ascii").strip()))
    return headers


class LeanChain(BaseHandler):
    """A middleware chain of its own list instead of settings.MIDDLEWARE, built by Django's own loader (for a sync
    caller). Built once, at startup, before any request runs."""

    def __init__(self, middleware: list[str]) -> None:
        self.middleware = list(middleware)
        self.load_middleware()

    def load_middleware(self, is_async: bool = False) -> None:
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = self.middleware  # Django's loader reads the list from settings, and only here
        try:
            super().load_middleware(is_async=False)
        finally:
            settings.MIDDLEWARE = full


class OneHopASGIHandler(ASGIHandler):
    def __init__(self, threads: int | None = None) -> None:
        super().__init__()
        self.threads = RequestThreads(threads if threads is not None else getattr(settings, "HTTP_THREADS", 12))
        self.lean_prefixes = tuple(getattr(settings, "LEAN_PATH_PREFIXES", ()))
        self.lean = LeanChain(settings.LEAN_MIDDLEWARE) if self.lean_prefixes else None
        self.bearer_prefixes = tuple(getattr(settings, "BEARER_PATH_PREFIXES", ()))
        self.bearer = LeanChain(settings.BEARER_MIDDLEWARE) if self.bearer_prefixes else None
        self.idle = IdleCollector(idle_fraction())  # young collections between requests, not inside them

    def chain_for(self, path: str, meta: dict[str, Any] | None = None) -> BaseHandler:
        """The lean chain for a machine-to-machine path, the bearer chain for a token-authenticated REST call that
        carries no cookie (`meta`: the request's META), the full one for everything else."""
        if self.lean is not None and path.startswith(self.lean_prefixes):
            return self.lean
        if (
            self.bearer is not None
            and meta is not None
            and path.startswith(self.bearer_prefixes)
            and str(meta.get("HTTP_AUTHORIZATION", "")).startswith("Bearer ")
            and "HTTP_COOKIE" not in meta
        ):
            return self.bearer
        return self

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        self.idle.started()
        try:
            await self._respond_on_thread(scope, body_file, receive, send)
        finally:
            self.idle.finished(asyncio.get_running_loop())

    async def _respond_on_thread(self, scope: dict[str, Any], body_file: Any, receive: Any, send: Any) -> None:
        executor = await self.threads.acquire()
        try:
            async with ThreadSensitiveContext(executor=executor):
                response, headers, body = await sync_to_async(self.respond, thread_sensitive=True)(scope, body_file)
                if body is None:
                    await self.stream(response, receive, send)
                    return
                await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
                for chunk, last in self.chunk_bytes(body):
                    await send({"type": "http.response.body", "body": chunk, "more_body": not last})
        finally:
            self.threads.release(executor)
            body_file.close()

    def respond(self, scope: dict[str, Any], body_file: Any) -> tuple[HttpResponseBase, Headers, bytes | None]:
        """On the request thread: the request from start to finish. Returns the response, its headers and its body,
        or no body for a streaming response (left open for `stream`)."""
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        response = (
            error_response if request is None else self.chain_for(request.path_info, request.META).get_response(request)
        )
        response._handler_class = self.__class__  # type: ignore[attr-defined]
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size  # the server chunks the socket writes itself
        if response.streaming:
            return response, [], None
        headers = response_headers(response)
        body = response.content  # type: ignore[attr-defined]
        response.close()  # request_finished: the thread's database connection goes back to the pool
        return response, headers, body

    async def stream(self, response: HttpResponseBase, receive: Any, send: Any) -> None:
        """Django's streaming, stopped by the client's disconnect; then close on the request thread."""
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(self.send_response(response, send)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if not task.done():
                    task.cancel()
                try:
                    await task
                except (RequestAborted, asyncio.CancelledError):
                    pass
        finally:
            await sync_to_async(response.close, thread_sensitive=True)()


def get_asgi_application() -> OneHopASGIHandler:
    """django.core.asgi.get_asgi_application, with the one-hop handler."""
    django.setup(set_prefix=False)
    return OneHopASGIHandler()
