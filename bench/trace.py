"""A send's timeline inside Daphne: where the time between Twisted's request and the frame leaving goes.

    BENCH_TRACE=1 .venv/bin/python -m bench.run m1@20          # Daphne writes $BENCH_LOG_DIR/trace-<pid>.log
    .venv/bin/python -m bench.trace /path/to/trace-<pid>.log        # p50 / p90 of every step, and what the slowest 5 % spent

With BENCH_TRACE set, bench/asgi.py wraps a few functions of the send's path (Twisted's request, the request thread,
DRF's `initial` and its parts, validation, the locked read, the message's append, the events, every SQL statement,
COMMIT, the publish and the frame's send) so that each writes a monotonic timestamp when it starts and ends, one
line per mark, straight to the file (a few µs each). Only REST sends are marked (paths under /api/, message:new
frames). The report pairs the marks of each send in order, so it reads sends that do not overlap: M1 at 20/s or
100/s, not 300/s. Diagnostic only: the marks add ~0.1 ms to a send.
"""

from __future__ import annotations

import functools
import inspect
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

_fd: int | None = None


def mark(label: str) -> None:
    global _fd
    if _fd is None:
        directory = Path(os.environ.get("BENCH_LOG_DIR") or Path(__file__).parent / "results" / "logs")
        directory.mkdir(parents=True, exist_ok=True)
        _fd = os.open(directory / f"trace-{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(_fd, f"{time.monotonic_ns()} {label}\n".encode())


def _wrap(owner: Any, name: str, label: str, when: Callable[..., bool] | None = None) -> None:
    original = getattr(owner, name)
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def marked_async(*args: Any, **kwargs: Any) -> Any:
            on = when is None or when(*args, **kwargs)
            if on:
                mark(label)
            try:
                return await original(*args, **kwargs)
            finally:
                if on:
                    mark(label + ".end")

        setattr(owner, name, marked_async)
        return

    @functools.wraps(original)
    def marked(*args: Any, **kwargs: Any) -> Any:
        on = when is None or when(*args, **kwargs)
        if on:
            mark(label)
        try:
            return original(*args, **kwargs)
        finally:
            if on:
                mark(label + ".end")

    setattr(owner, name, marked)


def install() -> None:
    """Wrap the send's path (called by bench/asgi.py in the server process, after Django is set up)."""
    from daphne import http_protocol
    from django.db.backends import utils
    from django.db.backends.base import base
    from rest_framework.views import APIView

    from accounts import authentication
    from config import http
    from inbox import api, consumers, events, permissions
    from inbox.services import core, outbound

    _wrap(http_protocol.WebRequest, "process", "request", lambda self: self.path.startswith(b"/api/"))
    _wrap(http.OneHopASGIHandler, "respond", "thread", lambda self, scope, body: scope["path"].startswith("/api/"))
    _wrap(api.MessageListApi, "initial", "drf.initial")
    _wrap(authentication.EpochJWTAuthentication, "get_user", "drf.user")
    _wrap(APIView, "check_permissions", "drf.permissions")
    _wrap(permissions.MethodScopedRateThrottle, "allow_request", "drf.throttle")
    _wrap(api.MessageListApi, "_send", "view.send")
    _wrap(outbound, "message_send", "service.send")
    _wrap(outbound, "_conversation_lock", "service.lock")
    _wrap(core, "_append", "service.append")
    _wrap(events, "emit_many", "service.events")
    _wrap(utils.CursorWrapper, "_execute", "sql")
    _wrap(base.BaseDatabaseWrapper, "commit", "commit")
    _wrap(events, "group_send_many", "publish")
    _wrap(consumers.InboxConsumer, "_send_text", "frame", lambda self, frame, message: frame["type"] == "message:new")


def report(path: str) -> None:
    """Per step (one mark to the next) of the sends in `path`: p50 and p90 in ms, then the steps where the slowest
    5 % of sends (request → frame) spent more than the median send."""
    sends: list[list[tuple[str, int]]] = []
    for line in Path(path).read_text().splitlines():
        stamp, label = line.split()
        if label == "request":
            sends.append([])
        if sends:
            sends[-1].append((label, int(stamp)))
    shapes: dict[tuple[str, ...], list[list[float]]] = defaultdict(list)
    for send in sends:
        labels = [label for label, _ in send]
        if "frame" not in labels:
            continue
        steps = send[: labels.index("frame") + 1]
        shapes[tuple(label for label, _ in steps)].append(
            [(b - a) / 1e6 for (_, a), (_, b) in zip(steps, steps[1:], strict=False)]
        )
    if not shapes:
        print("no complete sends in", path)
        return
    shape, rows = max(shapes.items(), key=lambda item: len(item[1]))
    print(f"{len(rows)} sends of the most common shape ({len(sends)} in all); ms from one mark to the next")
    for i, (a, b) in enumerate(zip(shape, shape[1:], strict=False)):
        column = sorted(row[i] for row in rows)
        print(f"  {a:>18} → {b:<18} p50 {statistics.median(column):6.3f}   p90 {column[int(len(column) * 0.9)]:6.3f}")
    totals = [sum(row) for row in rows]
    cut = sorted(totals)[int(len(totals) * 0.95)]
    slow = [row for row, total in zip(rows, totals, strict=True) if total >= cut]
    print(f"request → frame: p50 {statistics.median(totals):.3f} ms; slowest 5 % ({len(slow)}): what they spent more")
    for i, (a, b) in enumerate(zip(shape, shape[1:], strict=False)):
        extra = statistics.mean(row[i] for row in slow) - statistics.median(row[i] for row in rows)
        if extra > 0.05:
            print(f"  {a:>18} → {b:<18} +{extra:.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    report(sys.argv[1])
