"""The project's ASGI application plus one bench-only WebSocket route: a bare Channels echo consumer.

/bench/echo/ is the R_typing baseline (client sends, the consumer's receive() sends it straight back: Daphne and
Channels dispatch, no auth, no layer, no JSON). Every other path goes to the project's own WebSocket stack.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")  # before config (its Celery app sets a default)

from config.http import get_asgi_application  # noqa: E402  (the project's HTTP handler: config/http.py)

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
    """Diagnostic (BENCH_LOOP_LAG): every time the event loop was held for more than BENCH_LOOP_LAG_MS (20) ms, on
    stderr. The probe sleeps a fifth of the threshold (at most 5 ms), so a stall is seen to within that."""
    import sys
    import time

    threshold = float(os.environ.get("BENCH_LOOP_LAG_MS", "20")) / 1000
    step = min(0.005, threshold / 5)
    stacks = _stall_stacks(threshold / 2) if os.environ.get("BENCH_LOOP_LAG") == "stacks" else None
    while True:
        started = time.perf_counter()
        if stacks is not None:
            stacks.tick = started
        await asyncio.sleep(step)
        lag = time.perf_counter() - started - step
        if lag > threshold:
            print(f"loop: stalled {1000 * lag:.0f} ms at {time.time():.3f}", file=sys.stderr, flush=True)
            if stacks is not None:
                for stack, n in stacks.take():
                    print(f"loop:   {n} x {stack}", file=sys.stderr, flush=True)


class _StallStacks:
    """BENCH_LOOP_LAG=stacks: a watchdog thread samples the event loop thread's stack every 2 ms while the loop has
    not ticked for half the threshold, so each reported stall comes with what the loop was running meanwhile (a
    sampling profiler over a whole run dilutes a 30 ms stall a second into noise)."""

    def __init__(self, stale_after: float) -> None:
        import collections
        import threading
        import time

        self.tick = time.perf_counter()
        self.counts: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.loop_thread = threading.get_ident()
        self.stale_after = stale_after
        threading.Thread(target=self._watch, name="stall-stacks", daemon=True).start()

    def _watch(self) -> None:
        import sys
        import time
        import traceback

        while True:
            time.sleep(0.002)
            if time.perf_counter() - self.tick < self.stale_after:
                continue
            frame = sys._current_frames().get(self.loop_thread)
            if frame is None:
                continue
            summary = traceback.extract_stack(frame)[-7:]
            stack = " < ".join(f"{f.name} ({os.path.basename(f.filename)}:{f.lineno})" for f in reversed(summary))
            with self.lock:
                self.counts[stack] += 1

    def take(self) -> list[tuple[str, int]]:
        with self.lock:
            top, self.counts = self.counts.most_common(3), type(self.counts)()
        return top


def _stall_stacks(stale_after: float) -> _StallStacks:
    return _StallStacks(stale_after)


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
    # Diagnostic: every collection that holds the event loop for more than BENCH_GC_LOG_MS (2) ms, on stderr (the
    # server's log file), with what it found and the generations' counts when it started. This is how the 70-165 ms
    # full collections behind the scenarios' p99 were found (config/gctune.py).
    import gc
    import sys
    import time

    _gc_threshold_ms = float(os.environ.get("BENCH_GC_LOG_MS", "2"))
    _gc_started = [0.0]
    _gc_counts: list[tuple[int, int, int]] = [(0, 0, 0)]

    def _log_slow_collections(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            _gc_counts[0] = gc.get_count()
            _gc_started[0] = time.perf_counter()
            return
        took = 1000 * (time.perf_counter() - _gc_started[0])
        if took > _gc_threshold_ms:
            print(
                f"gc: generation {info['generation']} took {took:.1f} ms at {time.time():.3f}"
                f" (collected {info['collected']}, counts {_gc_counts[0]})",
                file=sys.stderr,
                flush=True,
            )

    gc.callbacks.append(_log_slow_collections)

    # Modules first imported after the start-up heap was frozen: what they build lives for good but is walked by
    # the collector (young, then older generations), unlike the frozen start-up heap.
    _startup_modules = set(sys.modules)

    def _log_late_imports(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and len(sys.modules) > len(_startup_modules):
            late = sorted(set(sys.modules) - _startup_modules)
            _startup_modules.update(late)
            print(f"gc: {len(late)} modules imported since: {' '.join(late[:40])}", file=sys.stderr, flush=True)

    gc.callbacks.append(_log_late_imports)

if os.environ.get("BENCH_PERIODIC_LOG"):
    # Diagnostic: when the per-process periodic work (presence heartbeat, membership re-check + catch-up) runs and
    # how long it takes end to end, on stderr, to line up with the slow samples of a scenario.
    import functools
    import sys
    import time

    from inbox.consumers import Sweeper

    def _timed(name: str, method: Any) -> Any:
        @functools.wraps(method)
        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            began, cpu = time.time(), time.process_time()
            try:
                return await method(self, *args, **kwargs)
            finally:
                print(
                    f"periodic: {name} {len(self.sockets)} sockets from {began:.3f} for "
                    f"{1000 * (time.time() - began):.1f} ms ({1000 * (time.process_time() - cpu):.1f} ms CPU)",
                    file=sys.stderr,
                    flush=True,
                )

        return wrapper

    from inbox import presence

    _heartbeat_many = presence.heartbeat_many

    def _heartbeat_many_timed(sockets: Any) -> Any:
        """The store part of a heartbeat, in its worker thread: that thread's CPU is what it takes from the loop."""
        cpu = time.thread_time()
        try:
            return _heartbeat_many(sockets)
        finally:
            print(
                f"periodic: heartbeat store call {len(sockets)} sockets "
                f"{1000 * (time.thread_time() - cpu):.2f} ms thread CPU at {time.time():.3f}",
                file=sys.stderr,
                flush=True,
            )

    presence.heartbeat_many = _heartbeat_many_timed
    Sweeper.heartbeat = _timed("heartbeat", Sweeper.heartbeat)  # type: ignore[method-assign]
    Sweeper.sweep = _timed("sweep", Sweeper.sweep)  # type: ignore[method-assign]

if os.environ.get("BENCH_TRACE"):  # a send's timeline (bench/trace.py): diagnostic, off by default
    from bench import trace

    trace.install()
