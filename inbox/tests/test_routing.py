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
    15,000 sockets); connections closed since the snapshot are skipped, new ones join at the next snapshot."""
    from daphne.server import Server
    from twisted.internet import reactor

    from inbox.routing import TIMEOUT_CHECK_PERIOD, TIMEOUT_CHECK_SLICES

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
