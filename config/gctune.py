"""Garbage-collector settings for the long-running server processes (Daphne, Celery workers).

CPython's cyclic collector walks every tracked object of a generation. A Daphne process holds a few hundred thousand
objects from start-up (Django, the URL conf, the models, DRF, Twisted) that live as long as the process, plus the
sockets' own state; a full (generation 2) collection walked all of them and paused the event loop for 70-165 ms
under typing load (measured with `bench/profile_typing.py` and a gc callback: p99 of every scenario was such a
pause). Two standard remedies, both reversible with the environment:

* `gc.freeze()` once start-up is done: the objects alive then move to a permanent generation that collections skip
  (they are never garbage; a cycle among them would only be freed at exit).
* thresholds that keep young collections short and full ones rare: (2,000, 20, 200). CPython's are (700, 10, 10).

A young collection walks every object in the young generation, and that is not only new survivors: a request's
objects (Django's request, DRF's view, request and response, the serializers and their fields, the models it read)
hold each other in cycles, so about 200 of them per REST send are garbage only the collector frees. Until run 11
the thresholds were (20,000, 20, 20): a young collection came every ~4 s under 20 sends/s and walked ~20,000
objects, a 10-20 ms stall of the event loop and the request threads, which was M1's p99 (the 5 slowest sends of
400 were exactly those collections, timed with a gc callback). At 2,000 one takes ~1-1.5 ms. The oldest
generation's threshold rises by as much as the youngest's fell, so a full collection still waits for the same
number of allocations (8 million, and CPython's rule that the long-lived objects have grown by a quarter): with
(2,000, 20, 20) a Daphne ramping to 15,000 sockets ran five full collections of 0.4-1.5 s each (M7), and none at
(2,000, 20, 200). A middle-generation collection walks what survived 20 young ones: ~3 ms under REST load, 20-240 ms
while thousands of sockets connect (their state survives), where (20,000, 20, 20) walked ten times as many.

Much of what a process keeps is built lazily, though: the URLconf (and with it every view, DRF, drf-spectacular,
the admin), the channel layer and Celery's producer side were imported by the first request, socket or send, after
the freeze: ~220 modules and ~23,000 tracked objects that every later collection walked (the first young
collection after start-up took 3-17 ms, all of it survivors). `warm_up()` builds them before the freeze.

GC_FREEZE=0 turns the freeze (and the warm-up) off; GC_THRESHOLDS="700,10,10" (CPython's defaults) restores the
threshold.

Short young collections still land inside requests: under 20 sends/s one came every ~7 sends (0.4-1.0 ms, plus a
middle one of 2-5 ms now and then), in whatever request allocated the object that crossed the threshold, which is
what sets a send's p95/p99 once everything else is fast. `IdleCollector` runs the collection that is coming anyway
between requests instead: when the last HTTP request in flight in the process has sent its response and the young
generation is at least GC_IDLE (default 0.5) of its threshold full, the event loop collects the generation the
automatic collector would pick by its counts, so a request seldom meets one. Under load there is no idle moment
and the automatic collector works as before. GC_IDLE=0 turns it off.

Not the collector, but the same kind of process setting: the GIL's switch interval. A Daphne process runs its event
loop (every WebSocket frame) beside request threads; a thread that wants the GIL while another computes waits up to
the interval before CPython makes the holder let go. At CPython's 5 ms, an agent's send whose frame was ready while a
request thread (the next POST, the Celery publish) computed sat there for up to 5 ms: M1's p99 at 20 sends/s was
27.9-33.1 ms at 5 ms and 21.8-27.8 ms at 0.5 ms in pairs of runs. GIL_SWITCH_INTERVAL (seconds, default 0.001).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLDS = (2_000, 20, 200)
DEFAULT_SWITCH_INTERVAL = 0.001


def thresholds() -> tuple[int, int, int]:
    raw = os.environ.get("GC_THRESHOLDS", "")
    if not raw.strip():
        return DEFAULT_THRESHOLDS
    try:
        gen0, gen1, gen2 = (int(part) for part in raw.split(","))
    except ValueError:
        logger.warning("GC_THRESHOLDS=%r is not three integers: using %s", raw, DEFAULT_THRESHOLDS)
        return DEFAULT_THRESHOLDS
    if min(gen0, gen1, gen2) < 1:
        logger.warning("GC_THRESHOLDS=%r must be positive: using %s", raw, DEFAULT_THRESHOLDS)
        return DEFAULT_THRESHOLDS
    return gen0, gen1, gen2


def warm_up() -> None:
    """Build now what the first request, socket or task send would otherwise build, so that it is frozen too."""
    from django.apps import apps

    if not apps.ready:  # a process that has not set Django up yet: nothing of it to build
        return
    from channels.layers import get_channel_layer
    from django.urls import get_resolver

    from config.celery import app

    resolver = get_resolver()  # the one requests use (cached per URLconf)
    # Each of these is built on first access: the URLconf with every view module, what the first reverse() builds,
    # the channel layer object (its per-event-loop parts are made by the loop that uses them), Celery's producer side.
    built = (resolver.url_patterns, resolver.reverse_dict, get_channel_layer(), app.finalize(auto=True), app.amqp)
    del built


def _env_number(name: str, default: float) -> float:
    """A number from the environment; unset or blank gives the default, anything else that is not a number too
    (with a warning)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        logger.warning("%s=%r is not a number; using %s", name, raw, default)
        return default


def switch_interval() -> float:
    value = _env_number("GIL_SWITCH_INTERVAL", DEFAULT_SWITCH_INTERVAL)  # seconds
    return value if value > 0 else DEFAULT_SWITCH_INTERVAL


DEFAULT_IDLE_FRACTION = 0.5


def idle_fraction() -> float:
    return min(max(_env_number("GC_IDLE", DEFAULT_IDLE_FRACTION), 0.0), 1.0)


class IdleCollector:
    """Collects between a process's HTTP requests what the cyclic collector would otherwise collect inside one.

    `started()` when a request begins, `finished(loop)` once its response is sent. When none is left in flight and
    the young generation is `fraction` of its threshold full, a collection is scheduled on the event loop (after
    what is already queued there, such as the frame the request published) and runs if still no request is in
    flight: of the oldest generation whose count passed its threshold, else the young one. Counts advance as they
    do for the automatic collector, so the middle and oldest generations are still collected in their turn (the
    oldest one without CPython's extra rule that the long-lived objects must have grown by a quarter: with the
    start-up heap frozen it comes after ~4,000 young collections)."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.active = 0
        self.scheduled = False
        self.collections = 0  # run here (tests, diagnostics)

    def started(self) -> None:
        self.active += 1

    def finished(self, loop: Any) -> None:
        self.active -= 1
        if self.active or self.scheduled or not self._due():
            return
        self.scheduled = True
        loop.call_soon(self._collect)

    def _due(self) -> bool:
        return self.fraction > 0 and gc.isenabled() and gc.get_count()[0] >= self.fraction * gc.get_threshold()[0]

    def generation(self) -> int:
        counts, limits = gc.get_count(), gc.get_threshold()
        for generation in (2, 1):
            if counts[generation] > limits[generation]:
                return generation
        return 0

    def _collect(self) -> None:
        self.scheduled = False
        if self.active or not self._due():
            return
        gc.collect(self.generation())
        self.collections += 1


def tune_after_startup() -> None:
    """Call once the process has imported and built everything it keeps (the ASGI application, the Celery app)."""
    gc.set_threshold(*thresholds())
    sys.setswitchinterval(switch_interval())
    if os.environ.get("GC_FREEZE", "1").strip().lower() not in ("0", "false", "no", "off"):
        warm_up()
        gc.collect()  # what start-up left as garbage is freed, not frozen
        gc.freeze()
