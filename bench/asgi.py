"""The project's ASGI application plus one bench-only WebSocket route: a bare Channels echo consumer.

/bench/echo/ is the R_typing baseline (client sends, the consumer's receive() sends it straight back: Daphne and
Channels dispatch, no auth, no layer, no JSON). Every other path goes to the project's own WebSocket stack.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
django_asgi_app = get_asgi_application()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter  # noqa: E402

from inbox.routing import websocket_application  # noqa: E402

if os.environ.get("BENCH_EXPERIMENT") == "no-dispatch-close":
    # A/B experiment only (docs/performance.md): Channels' AsyncConsumer.dispatch hops to the sync thread to close
    # stale DB connections before every message; the consumer's own DB calls (database_sync_to_async) do it anyway.
    from channels.consumer import get_handler_name

    from inbox.consumers import InboxConsumer

    async def _dispatch(self: Any, message: dict[str, Any]) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    InboxConsumer.dispatch = _dispatch  # type: ignore[method-assign]


class EchoConsumer(AsyncWebsocketConsumer):
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.send(text_data=text_data, bytes_data=bytes_data)


echo_app = EchoConsumer.as_asgi()


_lag_monitor: list[Any] = []


async def _log_loop_stalls() -> None:
    """Diagnostic (BENCH_LOOP_LAG): every time the event loop was held for more than 20 ms, on stderr."""
    import sys
    import time

    while True:
        started = time.perf_counter()
        await asyncio.sleep(0.005)
        lag = time.perf_counter() - started - 0.005
        if lag > 0.02:
            print(f"loop: stalled {1000 * lag:.0f} ms at {time.time():.3f}", file=sys.stderr, flush=True)


async def websocket_router(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if not _lag_monitor and os.environ.get("BENCH_LOOP_LAG"):
        _lag_monitor.append(asyncio.ensure_future(_log_loop_stalls()))
    if scope["path"] == "/bench/echo/":
        await echo_app(scope, receive, send)
    else:
        await websocket_application(scope, receive, send)


application = ProtocolTypeRouter({"http": django_asgi_app, "websocket": websocket_router})

from config.gctune import tune_after_startup  # noqa: E402

tune_after_startup()  # as config/asgi.py does

if os.environ.get("BENCH_GC_LOG"):
    # Diagnostic: every collection that holds the event loop for more than 2 ms, on stderr (the server's log file).
    # This is how the 70-165 ms full collections behind the scenarios' p99 were found (config/gctune.py).
    import gc
    import sys
    import time

    _gc_started = [0.0]

    def _log_slow_collections(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            _gc_started[0] = time.perf_counter()
            return
        took = 1000 * (time.perf_counter() - _gc_started[0])
        if took > 2:
            print(
                f"gc: generation {info['generation']} took {took:.1f} ms at {time.time():.3f}",
                file=sys.stderr,
                flush=True,
            )

    gc.callbacks.append(_log_slow_collections)
