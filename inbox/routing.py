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

from inbox.consumers import InboxConsumer, handshake_refused

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


daphne_close_with_codes()

websocket_application = ForeignOriginGuard(
    AuthMiddlewareStack(URLRouter(websocket_urlpatterns)), settings.ALLOWED_ORIGINS
)
