"""WebSocket routes and the handshake's origin check (PROTOCOL.md "Connecting").

Refused at the HTTP handshake (403), before any credential is looked at:

* a foreign Origin, whatever the credentials;
* a session cookie without an Origin and without a ticket. Browsers always send Origin, so such a handshake did
  not come from one of our pages, and the cookie is the only credential it offers (cross-site hijacking, or a
  script replaying a browser's cookie: integrators use tickets).

A handshake without an Origin but with a ticket goes on to the consumer, which authenticates the ticket and ignores
any cookie. One without an Origin, cookie or ticket also goes on, and is closed with 4401 (no credentials), so that
a client can tell it needs a ticket.
"""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import OriginValidator, WebsocketDenier
from django.conf import settings
from django.urls import path

from inbox.consumers import InboxConsumer, handshake_refused, ticket_param

websocket_urlpatterns: list[Any] = [
    path("ws/tenants/<slug:slug>/", InboxConsumer.as_asgi()),
]


class ForeignOriginGuard(OriginValidator):  # type: ignore[misc]
    """Deny (403) a handshake whose Origin is not one of settings.ALLOWED_ORIGINS, or that has a session cookie
    but neither an Origin nor a ticket (inbox.consumers.handshake_refused)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("ForeignOriginGuard is for WebSocket connections only")
        if handshake_refused(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)


def daphne_close_with_codes() -> None:
    """Escape hatch (third-party behaviour): make Daphne close oversize frames with 1009 instead of a TCP drop.

    Daphne's autobahn factory runs with failByDrop=True, so a frame over --websocket-max-message-size cuts the
    TCP connection (the client sees 1006); PROTOCOL.md promises close code 1009. Daphne builds its factory after
    importing the application, so patching the option's default here takes effect. Harmless under other servers.
    """
    try:
        from daphne.ws_protocol import WebSocketFactory
    except ImportError:  # pragma: no cover - another ASGI server
        return
    if getattr(WebSocketFactory, "_inbox_close_with_codes", False):
        return
    original = WebSocketFactory.setProtocolOptions

    def set_protocol_options(self: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("failByDrop", False)
        return original(self, *args, **kwargs)

    WebSocketFactory.setProtocolOptions = set_protocol_options
    WebSocketFactory._inbox_close_with_codes = True


def twisted_write_now() -> None:
    """Escape hatch (third-party behaviour): let Twisted's TCP transport send at once when nothing is queued.

    Twisted always queues a write and sends it on the next "writable" event, which on the asyncio reactor Daphne
    runs costs two epoll_ctl calls and a trip round the event loop per WebSocket frame: with an event fanned out to
    a thousand sockets that was a third of the process's CPU (docs/performance.md). When the connection has nothing
    queued, this tries the send first and queues only what the kernel did not take (a slow reader still ends up
    in Twisted's buffer, as before); anything unusual (TLS, a write-side shutdown, a closing connection, an error)
    takes Twisted's own path. Harmless under other servers.
    """
    try:
        from twisted.internet import abstract, tcp
    except ImportError:  # pragma: no cover - another ASGI server
        return
    if getattr(tcp.Connection, "_inbox_write_now", False):
        return
    queued_write = tcp.Connection.write

    def write(self: Any, data: bytes) -> None:
        if (
            self.TLS
            or not self.connected
            or self.disconnecting
            or self._writeDisconnected
            or self._tempDataBuffer
            or self.offset < len(self.dataBuffer)
            or not isinstance(data, bytes)
            or not data
        ):
            queued_write(self, data)
            return
        sent = self.writeSomeData(data)
        if isinstance(sent, Exception):
            queued_write(self, data)  # the queued path meets the same error on its next try and closes properly
        elif sent < len(data):
            abstract.FileDescriptor.write(self, data[sent:])

    tcp.Connection.write = write
    tcp.Connection._inbox_write_now = True
    try:
        # autobahn formats the arguments of a debug log call on every frame it sends, colouring them with click even
        # though the line is never logged (5 % of a fan-out's CPU): plain text is enough for a line nobody reads.
        import autobahn.util

        autobahn.util._HAS_CLICK = False
    except (ImportError, AttributeError):  # pragma: no cover - another autobahn
        pass


class _LazyPformat:
    """pprint.pformat(obj), computed only if a log line is ever formatted with it."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __str__(self) -> str:
        import pprint

        return pprint.pformat(self.obj)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def autobahn_lazy_debug() -> None:
    """Escape hatch (third-party behaviour): autobahn pretty-prints its ~40 protocol options for a debug log line on
    every WebSocket it accepts, whether or not debug logging is on (6 % of a handshake's CPU in bench/profile_ws.py).
    The line is built the same when it is logged; otherwise nothing is formatted. Harmless under other servers."""
    try:
        from autobahn.websocket import protocol
    except ImportError:  # pragma: no cover - another ASGI server
        return
    if getattr(protocol, "_inbox_lazy_pformat", False):
        return
    import pprint

    protocol.pformat = _LazyPformat
    protocol.Timings.__str__ = lambda self: pprint.pformat(self._timings)  # the one caller that needs a str
    protocol._inbox_lazy_pformat = True


TIMEOUT_CHECK_PERIOD = 2.0  # Daphne's: every connection's timeouts and keep-alive ping are looked at this often
TIMEOUT_CHECK_SLICES = 20  # in at least this many steps, each taking the next slice of the connections
TIMEOUT_CHECK_MAX_STEP = 100  # and at most this many connections a step (more steps when there are more)


def daphne_spread_timeout_checks() -> None:
    """Escape hatch (third-party behaviour): Daphne's timeout checker walks every connection at once every 2 s
    (timeouts, and the keep-alive ping every 20 s), on the event loop: ~100 ms at 15,000 held sockets, a stall that
    set bench M7's probe p99. Here it walks a slice of them at a time (a snapshot of the connections, taken again
    once it is used up): at least 20 steps a period and at most 100 connections a step, so every connection is still
    checked about every 2 s and no step stalls the loop for long. The cap matters for the pings: sockets opened
    together come due together, and one step of 750 of them (15,000 / 20) sent 750 pings and read 750 pongs in one
    go, a 20-50 ms stall every second or two while M7's sockets were held. Connections that closed since the
    snapshot are skipped. Harmless under other servers."""
    try:
        from daphne.server import Server
    except ImportError:  # pragma: no cover - another ASGI server
        return
    if getattr(Server, "_inbox_spread_timeout_checks", False):
        return

    def timeout_checker(self: Any) -> None:
        from twisted.internet import reactor

        pending: list[Any] = getattr(self, "_inbox_timeout_pending", None) or []
        if not pending:
            pending = list(self.connections.keys())
            slices = max(TIMEOUT_CHECK_SLICES, -(-len(pending) // TIMEOUT_CHECK_MAX_STEP))
            self._inbox_timeout_step = -(-len(pending) // slices)  # ceil: a snapshot lasts one period
            self._inbox_timeout_delay = TIMEOUT_CHECK_PERIOD / slices
        step: int = self._inbox_timeout_step
        batch, self._inbox_timeout_pending = pending[:step], pending[step:]
        for protocol in batch:
            if protocol in self.connections:
                protocol.check_timeouts()
        reactor.callLater(self._inbox_timeout_delay, self.timeout_checker)

    Server.timeout_checker = timeout_checker
    Server._inbox_spread_timeout_checks = True


APPLICATION_CHECK_PERIOD = 1.0  # Daphne's: finished applications and closed connections are cleaned up this often


def daphne_watch_finished_applications() -> None:
    """Escape hatch (third-party behaviour): Daphne's application checker walks every connection each second, on the
    event loop, to find the applications that finished and the connections that closed: ~30 ms at 15,000 held
    sockets, a stall every second under bench M7's probe. Only two events make a connection need that clean-up, so
    here they put it on a watch list and each second's check looks at that list alone: its application finishing (a
    done callback on the application's future) and Daphne being told the connection closed. Each entry is handled
    as Daphne does: a finished application's exception is logged (and handed to the protocol if it is still
    connected; KeyboardInterrupt stops the server), its future dropped, and a closed connection forgotten once its
    application is gone; an application still running `application_close_timeout` seconds after its connection
    closed is cancelled. A closed connection stays watched until then. Harmless under other servers."""
    try:
        from daphne.server import Server
    except ImportError:  # pragma: no cover - another ASGI server
        return
    if getattr(Server, "_inbox_watch_applications", False):
        return
    import logging
    import time

    daphne_logger = logging.getLogger("daphne.server")
    create_application = Server.create_application
    protocol_disconnected = Server.protocol_disconnected

    def watched(server: Any) -> set[Any]:
        if not hasattr(server, "_inbox_watched"):
            server._inbox_watched = set()
        return server._inbox_watched  # type: ignore[no-any-return]

    def create_and_watch(self: Any, protocol: Any, scope: dict[str, Any]) -> Any:
        queue = create_application(self, protocol, scope)
        instance = self.connections.get(protocol, {}).get("application_instance")
        if instance is not None:
            instance.add_done_callback(lambda _future: watched(self).add(protocol))
        return queue

    def disconnected_and_watch(self: Any, protocol: Any) -> None:
        protocol_disconnected(self, protocol)
        watched(self).add(protocol)

    def settled(self: Any, protocol: Any, details: dict[str, Any], now: float) -> bool:
        """Clean one watched connection up; False while its connection is closed and its application still runs."""
        instance = details.get("application_instance")
        closed_at = details.get("disconnected")
        if instance is not None and not instance.done():
            if closed_at is not None and now - closed_at > self.application_close_timeout:
                daphne_logger.warning(
                    "Application instance %r for connection %s took too long to shut down and was killed.",
                    instance,
                    repr(protocol),
                )
                instance.cancel()
            return closed_at is None
        if instance is not None:
            failure = None if instance.cancelled() else instance.exception()
            if isinstance(failure, KeyboardInterrupt):
                self.stop()
            elif failure is not None:
                daphne_logger.error("Exception inside application: %s", failure, exc_info=failure)
                if closed_at is None:
                    protocol.handle_exception(failure)
            del details["application_instance"]
        if closed_at is not None:
            del self.connections[protocol]
        return True

    def application_checker(self: Any) -> None:
        from twisted.internet import reactor

        due, self._inbox_watched = watched(self), set()
        now = time.time()
        for protocol in due:
            details = self.connections.get(protocol)
            if details is not None and not settled(self, protocol, details, now):
                self._inbox_watched.add(protocol)
        reactor.callLater(APPLICATION_CHECK_PERIOD, self.application_checker)

    Server.create_application = create_and_watch
    Server.protocol_disconnected = disconnected_and_watch
    Server.application_checker = application_checker
    Server._inbox_watch_applications = True


def daphne_free_closed_connections() -> None:
    """Escape hatch (third-party behaviour): free a closed WebSocket's server objects by reference counting.

    Each WebSocket leaves two reference cycles of Twisted, autobahn and Daphne objects (~56 objects): autobahn
    resolves the protocol's `is_closed` Deferred with the protocol itself when the connection is lost, and Daphne
    leaves the HTTP request it upgraded in its channel's list of requests (the channel stays the TCP transport's
    producer until the close). Only the cyclic collector could free them: after a storm's mass close of 1,000
    sockets (bench M8), one collection of 56,000 objects that held the event loop for 200-370 ms. Here the upgraded
    request leaves its channel's list once the protocol has taken the connection over (the channel only pauses and
    resumes the transport after that), and the protocol drops its resolved `is_closed` once Daphne has been told of
    the close (nothing in Daphne or here waits on it). Harmless under other servers.
    """
    try:
        from daphne.http_protocol import WebRequest
        from daphne.ws_protocol import WebSocketProtocol
        from twisted.internet import defer
    except ImportError:  # pragma: no cover - another ASGI server
        return
    if getattr(WebSocketProtocol, "_inbox_free_closed", False):
        return
    on_close = WebSocketProtocol.onClose
    process = WebRequest.process

    def onClose(self: Any, wasClean: bool, code: int | None, reason: str | None) -> None:  # noqa: N802 - autobahn's
        try:
            on_close(self, wasClean, code, reason)
        finally:
            if getattr(self, "is_closed", None) is not None and self.is_closed.called:
                self.is_closed = defer.succeed(None)

    def process_request(self: Any) -> None:
        process(self)
        channel = getattr(self, "channel", None)
        if self.transport is None and channel is not None and self in channel.requests:  # upgraded to a WebSocket
            channel.requests.remove(self)

    WebSocketProtocol.onClose = onClose
    WebRequest.process = process_request
    WebSocketProtocol._inbox_free_closed = True


def daphne_skip_form_parsing() -> None:
    """Escape hatch (third-party behaviour): Twisted does not parse a POST body as a form for Daphne.

    Twisted's Request parses a POST's Content-Type with the email package on every request with a body (~4 % of
    Daphne's CPU for a REST send, bench M1) and, for a form or a multipart upload, the whole body into
    `request.args`. Daphne never reads `args`: it hands the raw body to Django, which parses forms and uploads
    itself. Twisted's own switch for this (parsePOSTFormSubmission) is turned off on Daphne's requests. Harmless
    under other servers.
    """
    try:
        from daphne.http_protocol import WebRequest
    except ImportError:  # pragma: no cover - another ASGI server
        return
    if getattr(WebRequest, "_inbox_skip_form_parsing", False):
        return
    init = WebRequest.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807 - the method it replaces
        init(self, *args, **kwargs)
        self._parsePOSTFormSubmission = False

    WebRequest.__init__ = __init__
    WebRequest._inbox_skip_form_parsing = True


class TicketBypassesSession:
    """Handshakes with `?ticket=` skip the session and auth middleware: the consumer ignores cookies for them
    (inbox.consumers._authenticate), so loading a session and wrapping every frame's send would be waste."""

    def __init__(self, with_session: Any, without: Any) -> None:
        self.with_session = with_session
        self.without = without

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if ticket_param(scope) is not None:
            return await self.without(scope, receive, send)
        return await self.with_session(scope, receive, send)


daphne_close_with_codes()
twisted_write_now()
autobahn_lazy_debug()
daphne_spread_timeout_checks()
daphne_watch_finished_applications()
daphne_free_closed_connections()
daphne_skip_form_parsing()

websocket_application = ForeignOriginGuard(
    TicketBypassesSession(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)), URLRouter(websocket_urlpatterns)),
    settings.ALLOWED_ORIGINS,
)
