"""The WebSocket stack's escape hatches into third-party behaviour (inbox/routing.py) keep that behaviour's output."""

from __future__ import annotations

import pprint

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
