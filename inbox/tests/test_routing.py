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
