"""Django's HTTP side under ASGI, with the middleware chain and the view in one hop to the request thread.

Django's ASGIHandler builds its chain for an async caller: the innermost handler is the async `_get_response_async`,
so with every middleware sync-only (ours are, see MIDDLEWARE) a request went event loop → request thread (the sync
chain) → back to the event loop (async_to_sync around `_get_response_async`) → request thread again (the sync view)
and back twice more on the way out. Each of those hops waits for the event loop, which under load is busy with
WebSocket frames: on an agent's send that was both CPU and latency before the message is even written.

`get_asgi_application()` returns a handler whose chain is built for a sync caller (`_get_response`, exactly what
WSGI runs: sync views are called directly, an async view would be run through async_to_sync) and is entered with
one `sync_to_async(thread_sensitive=True)`: the same thread as before, the same middleware order, signals, error
handling and response streaming (ASGIHandler's own), without the two inner hops.
"""

from __future__ import annotations

from typing import Any

import django
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler


class OneHopASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        self._middleware_chain: Any = sync_to_async(self._middleware_chain, thread_sensitive=True)


def get_asgi_application() -> OneHopASGIHandler:
    """django.core.asgi.get_asgi_application, with the one-hop handler."""
    django.setup(set_prefix=False)
    return OneHopASGIHandler()
