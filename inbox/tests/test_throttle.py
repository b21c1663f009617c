"""The send/ticket throttle on Redis: DRF's sliding window, judged atomically in Redis in one round trip."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from rest_framework.throttling import ScopedRateThrottle

from inbox.permissions import MethodScopedRateThrottle, _sliding_window_script
from inbox.tests.api_helpers import assert_error, client_for, turl
from inbox.tests.fixtures import World

pytestmark = [pytest.mark.redis, pytest.mark.django_db]


@pytest.fixture(autouse=True)
def _own_keys(require_redis: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counters of this test only, in the shared Redis: a fresh key namespace instead of a flush."""
    monkeypatch.setattr(MethodScopedRateThrottle, "cache_format", f"throttle-{uuid.uuid4().hex}_%(scope)s_%(ident)s")
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"send": "3/min", "auth": "20/min", "ticket": "20/min"})


def _send_url(world: World) -> str:
    return turl("api-message-list", world.acme, pk=world.acme_conversation.pk)


def test_it_uses_the_script_and_answers_429_with_retry_after(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _sliding_window_script() is not None
    clock = [1000.0]
    monkeypatch.setattr(MethodScopedRateThrottle, "timer", lambda self: clock[0])
    bob = client_for(world.bob)
    for i in range(3):
        clock[0] += 1
        assert bob.post(_send_url(world), {"text": f"m{i}"}).status_code == 201
    clock[0] = 1010.0
    refused = bob.post(_send_url(world), {"text": "over"})
    assert_error(refused, 429, "throttled")
    assert refused["Retry-After"] == "51"  # the first send (t=1001) leaves the 60 s window at t=1061
    assert bob.get(_send_url(world)).status_code == 200  # reads are not throttled
    assert client_for(world.alice).post(_send_url(world), {"text": "other user"}).status_code == 201
    clock[0] = 1061.5  # the first send has left the window: one slot again, and only one
    assert bob.post(_send_url(world), {"text": "again"}).status_code == 201
    assert_error(bob.post(_send_url(world), {"text": "over again"}), 429, "throttled")


def test_concurrent_requests_never_pass_more_than_the_rate(world: World) -> None:
    """Twelve requests at once from one user (each its own throttle object, as on several processes): exactly the
    three the rate allows pass, where a GET-then-SET of the history could let several read the same free slot."""

    class View:
        throttle_scope = "send"
        throttle_methods = frozenset({"POST"})

    class Req:
        method = "POST"
        user = world.bob
        META: dict[str, Any] = {}

    barrier = threading.Barrier(12)
    results: list[bool] = []

    def attempt() -> None:
        throttle = MethodScopedRateThrottle()
        barrier.wait()
        results.append(throttle.allow_request(Req(), View()))  # type: ignore[arg-type]

    threads = [threading.Thread(target=attempt) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 9 + [True] * 3
