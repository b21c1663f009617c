"""The server processes' collector settings (config/gctune.py)."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest
from django.urls import clear_url_caches, get_resolver

from config import gctune


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before, interval = gc.get_threshold(), sys.getswitchinterval()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)
    sys.setswitchinterval(interval)


def test_defaults_freeze_the_startup_heap_and_set_the_thresholds(
    monkeypatch: pytest.MonkeyPatch, restore_gc: None
) -> None:
    monkeypatch.delenv("GC_THRESHOLDS", raising=False)
    monkeypatch.delenv("GC_FREEZE", raising=False)
    kept = [object() for _ in range(10)]  # alive now: frozen, skipped by every later collection
    monkeypatch.delenv("GIL_SWITCH_INTERVAL", raising=False)
    gctune.tune_after_startup()
    assert gc.get_threshold() == gctune.DEFAULT_THRESHOLDS == (2_000, 20, 200)
    assert gc.get_freeze_count() > len(kept)
    assert sys.getswitchinterval() == pytest.approx(0.001)  # CPython's own is 0.005


@pytest.mark.parametrize(("raw", "expected"), [("0.005", 0.005), ("soon", 0.001), ("0", 0.001), ("-1", 0.001)])
def test_the_gil_switch_interval_comes_from_the_environment(
    raw: str, expected: float, monkeypatch: pytest.MonkeyPatch, restore_gc: None
) -> None:
    monkeypatch.setenv("GIL_SWITCH_INTERVAL", raw)
    monkeypatch.setenv("GC_FREEZE", "0")
    gctune.tune_after_startup()
    assert sys.getswitchinterval() == pytest.approx(expected)


def test_environment_restores_cpython_defaults(monkeypatch: pytest.MonkeyPatch, restore_gc: None) -> None:
    monkeypatch.setenv("GC_THRESHOLDS", "700,10,10")
    monkeypatch.setenv("GC_FREEZE", "0")
    gc.unfreeze()
    gctune.tune_after_startup()
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize("raw", ["lots", "1,2", "0,10,10", "-5,10,10", "1,2,3,4"])
def test_bad_thresholds_fall_back_with_a_warning(
    raw: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("GC_THRESHOLDS", raw)
    with caplog.at_level("WARNING", logger="config.gctune"):
        assert gctune.thresholds() == gctune.DEFAULT_THRESHOLDS
    assert "GC_THRESHOLDS" in caplog.text


def test_what_the_first_request_would_build_is_frozen_with_the_startup_heap(
    monkeypatch: pytest.MonkeyPatch, restore_gc: None
) -> None:
    """The URLconf (every view, DRF, the admin: ~20,000 objects) used to be imported by the first request, after the
    freeze, and walked by every collection from then on."""
    monkeypatch.delenv("GC_FREEZE", raising=False)
    gc.unfreeze()
    clear_url_caches()  # as in a process that has not served a request yet
    gctune.tune_after_startup()
    resolver = get_resolver()
    walked = {id(o) for o in gc.get_objects()}  # every generation but the frozen one
    assert id(resolver) not in walked
    assert id(resolver.url_patterns) not in walked
    assert id(resolver.reverse_dict) not in walked


class FakeGc:
    """The collector's counts and thresholds as a test sets them, and the collections asked of it."""

    def __init__(self, counts: tuple[int, int, int], thresholds: tuple[int, int, int] = (2000, 20, 200)) -> None:
        self.counts, self.thresholds, self.enabled = counts, thresholds, True
        self.collected: list[int] = []

    def get_count(self) -> tuple[int, int, int]:
        return self.counts

    def get_threshold(self) -> tuple[int, int, int]:
        return self.thresholds

    def isenabled(self) -> bool:
        return self.enabled

    def collect(self, generation: int = 2) -> int:
        self.collected.append(generation)
        self.counts = (0, *self.counts[1:])
        return 0


class Loop:
    def __init__(self) -> None:
        self.queued: list[object] = []

    def call_soon(self, callback: object) -> None:
        self.queued.append(callback)

    def run(self) -> None:
        queued, self.queued = self.queued, []
        for callback in queued:
            callback()  # type: ignore[operator]


def test_a_due_collection_runs_between_requests_not_inside_one(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeGc((1200, 3, 0))
    monkeypatch.setattr(gctune, "gc", fake)
    idle, loop = gctune.IdleCollector(0.5), Loop()
    idle.started()
    idle.started()
    idle.finished(loop)  # one request still in flight: nothing
    assert loop.queued == []
    idle.finished(loop)  # the last one: scheduled after what the loop already has queued
    assert len(loop.queued) == 1 and fake.collected == []
    idle.started()  # a request came in before the loop got to it: it waits
    loop.run()
    assert fake.collected == []
    idle.finished(loop)
    loop.run()
    assert fake.collected == [0] and idle.collections == 1
    idle.started()
    idle.finished(loop)  # the young generation is empty now: nothing due
    assert loop.queued == []


def test_the_generation_is_the_one_the_automatic_collector_would_pick(monkeypatch: pytest.MonkeyPatch) -> None:
    idle = gctune.IdleCollector(0.5)
    for counts, generation in [((1500, 3, 0), 0), ((1500, 21, 5), 1), ((1500, 21, 201), 2), ((1500, 3, 201), 2)]:
        monkeypatch.setattr(gctune, "gc", FakeGc(counts))
        assert idle.generation() == generation


def test_below_the_fraction_disabled_or_off_nothing_is_collected(monkeypatch: pytest.MonkeyPatch) -> None:
    for fraction, counts, enabled in [(0.5, (900, 0, 0), True), (0.5, (1900, 0, 0), False), (0.0, (1900, 0, 0), True)]:
        fake = FakeGc(counts)
        fake.enabled = enabled
        monkeypatch.setattr(gctune, "gc", fake)
        idle, loop = gctune.IdleCollector(fraction), Loop()
        idle.started()
        idle.finished(loop)
        loop.run()
        assert fake.collected == []


@pytest.mark.parametrize(("raw", "expected"), [("", 0.5), ("0", 0.0), ("0.25", 0.25), ("2", 1.0), ("x", 0.5)])
def test_the_idle_fraction_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: float
) -> None:
    monkeypatch.setenv("GC_IDLE", raw)
    assert gctune.idle_fraction() == expected


def test_the_http_handler_reports_each_request_to_the_idle_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the real handler: a request counts as in flight while it runs and stops once its response is sent."""
    import asyncio

    from config.http import OneHopASGIHandler

    handler = OneHopASGIHandler()
    in_flight_when_finished: list[int] = []
    finished = handler.idle.finished

    def spy(loop: object) -> None:
        in_flight_when_finished.append(handler.idle.active)
        finished(loop)

    monkeypatch.setattr(handler.idle, "finished", spy)
    sent: list[dict[str, object]] = []

    async def call() -> None:
        messages = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict[str, object]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "GET",
            "path": "/healthz",
            "headers": [(b"host", b"localhost")],
            "query_string": b"",
            "server": ("localhost", 80),
        }
        await handler(scope, receive, send)

    asyncio.run(call())
    assert [m["type"] for m in sent][:1] == ["http.response.start"]
    assert sent[0]["status"] == 200
    assert in_flight_when_finished == [1] and handler.idle.active == 0  # the response went out first
