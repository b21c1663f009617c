"""WebSocket routes. The real-time issue fills websocket_urlpatterns and the origin/ticket checks."""

from __future__ import annotations

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import OriginValidator
from django.conf import settings

websocket_urlpatterns: list = []  # type: ignore[type-arg]

websocket_application = OriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)), settings.ALLOWED_ORIGINS)
