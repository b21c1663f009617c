"""ASGI entry point: HTTP to Django; WebSocket through origin validation and session auth to the consumers."""

from __future__ import annotations

import os

from config.http import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()  # before importing anything that touches models (config/http.py: why)

from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.conf import settings  # noqa: E402

if settings.DEBUG:
    # Daphne serves no static files by itself: in development the inbox's CSS/JS come through Django's finders.
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)  # type: ignore[assignment]

from inbox.routing import websocket_application  # noqa: E402

application = ProtocolTypeRouter({"http": django_asgi_app, "websocket": websocket_application})

from config.gctune import tune_after_startup  # noqa: E402

tune_after_startup()  # everything above lives as long as the process
