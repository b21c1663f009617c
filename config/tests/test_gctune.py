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
