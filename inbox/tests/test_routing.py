"""The WebSocket stack's escape hatches into third-party behaviour (inbox/routing.py) keep that behaviour's output."""

from __future__ import annotations

import pprint
from typing import Any

from autobahn.websocket import protocol

import inbox.routing  # noqa: F401  (applies the escape hatches on import, like config.asgi)


def test_autobahns_debug_options_are_formatted_only_when_a_line_is_formatted() -> None:
    options = [("autoPingInterval", 0, "WebSocketServerFactory"), ("maxMessagePayloadSize", 65536, "x")]
    lazy = protocol.pformat(options)
    assert not isinstance(lazy, str)  # nothing formatted yet
    assert str(lazy) == pprint.pformat(options)
    line = "\n{attrs}"  # autobahn's log line, formatted the way txaio formats one
    assert line.format(attrs=lazy) == "\n" + pprint.pformat(options)
    timings = protocol.Timings()
    timings.track("onOpen")
    assert str(timings) == pprint.pformat(timings._timings)  # the one caller that needs a string gets one


def test_daphnes_timeout_checks_walk_a_slice_of_the_connections_at_a_time(monkeypatch: Any) -> None:
    """Every connection is still checked once per period; no single step walks them all (M7: ~100 ms per walk at
    15,000 sockets), nor more than TIMEOUT_CHECK_MAX_STEP of them; connections closed since the snapshot are skipped, new ones join at the next snapshot."""
    from daphne.server import Server
    from twisted.internet import reactor

    from inbox.routing import TIMEOUT_CHECK_MAX_STEP, TIMEOUT_CHECK_PERIOD, TIMEOUT_CHECK_SLICES

    delays: list[float] = []
    monkeypatch.setattr(reactor, "callLater", lambda delay, fn, *a: delays.append(delay))

    class Proto:
        def __init__(self) -> None:
            self.checks = 0

        def check_timeouts(self) -> None:
            self.checks += 1

    class FakeServer:
        timeout_checker = Server.timeout_checker

        def __init__(self) -> None:
            self.connections: dict[Any, dict[str, Any]] = {Proto(): {} for _ in range(1000)}

    server = FakeServer()
    closed = list(server.connections)[-1]  # in the last slice of the first walk
    per_step: list[int] = []
    for step in range(TIMEOUT_CHECK_SLICES):
        before = sum(p.checks for p in server.connections)
        server.timeout_checker()
        per_step.append(sum(p.checks for p in server.connections) - before)
        if step == 0:
            late = Proto()
            server.connections[late] = {}
        if step == 5:
            del server.connections[closed]
    assert max(per_step) == 1000 // TIMEOUT_CHECK_SLICES
    assert all(p.checks == 1 for p in server.connections if p is not late)
    assert late.checks == 0 and closed.checks == 0  # joins the next walk; a closed one is left alone
    assert delays == [TIMEOUT_CHECK_PERIOD / TIMEOUT_CHECK_SLICES] * TIMEOUT_CHECK_SLICES
    for _ in range(TIMEOUT_CHECK_SLICES):  # the next period walks a new snapshot, with the late one
        server.timeout_checker()
    assert late.checks == 1
    assert all(p.checks == 2 for p in server.connections if p is not late)

    # Many connections: more steps of at most TIMEOUT_CHECK_MAX_STEP each, still one walk a period (sockets opened
    # together come due for their ping together: a step of 750 of them was a 20-50 ms stall in M7).
    many = FakeServer()
    many.connections = {Proto(): {} for _ in range(5000)}
    delays.clear()
    per_step.clear()
    steps = 5000 // TIMEOUT_CHECK_MAX_STEP
    for _ in range(steps):
        before = sum(p.checks for p in many.connections)
        many.timeout_checker()
        per_step.append(sum(p.checks for p in many.connections) - before)
    assert per_step == [TIMEOUT_CHECK_MAX_STEP] * steps
    assert all(p.checks == 1 for p in many.connections)
    assert delays == [TIMEOUT_CHECK_PERIOD / steps] * steps


def test_daphne_hands_a_form_or_upload_body_on_unparsed(monkeypatch: Any) -> None:
    """Twisted's form parsing (Content-Type through the email package, the body into `args`) is off for Daphne's
    requests; the body reaches Daphne as it came."""
    from types import SimpleNamespace

    from daphne.http_protocol import WebRequest
    from twisted.web import http
    from twisted.web.test.requesthelper import DummyChannel

    def never(line: bytes) -> bytes:
        raise AssertionError("Twisted parsed the Content-Type")

    monkeypatch.setattr(http, "_parseContentType", never)
    bodies: list[bytes] = []

    class Recorder(WebRequest):  # type: ignore[misc]
        def process(self) -> None:  # Daphne's would hand the request to the application
            bodies.append(self.content.read())

    body = b'--x\r\nContent-Disposition: form-data; name="text"\r\n\r\nhello\r\n--x--\r\n'
    for content_type in (b"multipart/form-data; boundary=x", b"application/x-www-form-urlencoded"):
        channel = DummyChannel()
        channel.factory = SimpleNamespace(server=SimpleNamespace(protocol_connected=lambda request: None))
        request = Recorder(channel)
        request.requestHeaders.setRawHeaders(b"content-type", [content_type])
        request.gotLength(len(body))
        request.handleContentChunk(body)
        request.requestReceived(b"POST", b"/api/x/", b"HTTP/1.1")
        assert request.args == {}
    assert bodies == [body, body]


async def test_daphnes_application_checks_look_only_at_connections_that_finished_or_closed(
    monkeypatch: Any, caplog: Any
) -> None:
    """A second's check looks at the connections whose application finished or which closed, not at every held
    one (M7: ~30 ms per walk at 15,000 sockets), and cleans each up as Daphne does."""
    import asyncio

    from daphne.server import Server
    from twisted.internet import reactor

    from inbox.routing import APPLICATION_CHECK_PERIOD

    delays: list[float] = []
    monkeypatch.setattr(reactor, "callLater", lambda delay, fn, *a: delays.append(delay))

    class Details(dict):  # type: ignore[type-arg]
        """A connection's entry that counts how often it is looked at."""

        looks = 0

        def get(self, key: str, default: Any = None) -> Any:
            self.looks += 1
            return super().get(key, default)

    class Proto:
        def __init__(self) -> None:
            self.failures: list[BaseException] = []

        def handle_exception(self, failure: BaseException) -> None:
            self.failures.append(failure)

    release: dict[Proto, asyncio.Event] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await release[scope["proto"]].wait()
        if scope.get("fail"):
            raise ValueError("boom")

    async def stubborn(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if scope.get("once"):
                    scope["once"] = False  # ignores the first cancel only: stays watched until it ends
                    continue
                raise

    server = Server(application=app, endpoints=["tcp:port=0"], application_close_timeout=10)
    server.connections = {}

    def open_(fail: bool = False, application: Any = app) -> Proto:
        proto = Proto()
        release[proto] = asyncio.Event()
        server.protocol_connected(proto)
        server.connections[proto] = Details(server.connections[proto])
        server.application = application
        server.create_application(proto, {"type": "websocket", "proto": proto, "fail": fail})
        return proto

    idle = [open_() for _ in range(1000)]
    finished, failed, closed, failed_closed = open_(), open_(fail=True), open_(), open_(fail=True)
    for proto in (finished, failed, failed_closed):
        release[proto].set()
    server.protocol_disconnected(closed)
    server.protocol_disconnected(failed_closed)
    release[closed].set()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    for proto in idle:
        server.connections[proto].looks = 0  # counted from here: opening one looks at it

    with caplog.at_level("ERROR", logger="daphne.server"):
        server.application_checker()

    assert all(server.connections[p].looks == 0 for p in idle)  # held sockets are not walked
    assert all("application_instance" in server.connections[p] for p in idle)
    assert "application_instance" not in server.connections[finished]  # finished, still connected: kept
    assert [str(f) for f in failed.failures] == ["boom"]  # handed to the protocol, which is still connected
    assert failed_closed.failures == [] and failed_closed not in server.connections and closed not in server.connections
    assert [r.getMessage() for r in caplog.records] == ["Exception inside application: boom"] * 2
    assert delays == [APPLICATION_CHECK_PERIOD]

    server.protocol_disconnected(finished)  # its application is gone: forgotten at the next check
    server.application_checker()
    assert finished not in server.connections
    assert all(server.connections[p].looks == 0 for p in idle)

    slow = open_(application=stubborn)
    server.connections[slow]["proto"] = slow
    await asyncio.sleep(0)
    server.protocol_disconnected(slow)
    server.application_checker()  # closed, application still running, within the close timeout: left running
    instance = server.connections[slow]["application_instance"]
    assert not instance.done()
    server.application_close_timeout = 0
    await asyncio.sleep(0.01)
    server.application_checker()  # past the timeout: cancelled
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert instance.cancelled()
    server.application_checker()
    assert slow not in server.connections
