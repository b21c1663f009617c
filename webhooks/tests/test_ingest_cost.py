"""What receiving one webhook costs beyond storing it: the enqueue of its processing (bench/profile_ingest.py).

Anything Celery keeps per thread is rebuilt in every new thread that publishes (under Django's own ASGI handler that
was every request: a new thread each); and the publish itself is most of the rest, so events go out in batches.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from celery.backends.base import DisabledBackend
from celery.signals import before_task_publish

from config.celery import InboxCelery
from config.celery import app as celery_app
from webhooks.services import _batcher, webhook_enqueue


def _backends_seen_by_threads(app: InboxCelery, threads: int = 3) -> list[Any]:
    seen: list[Any] = []

    def read() -> None:
        seen.append(app.backend)

    for _ in range(threads):  # one after the other, like Daphne's per-request threads
        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
    return seen


def test_a_new_thread_reuses_the_disabled_result_backend() -> None:
    app = InboxCelery("ingest-cost", set_as_current=False)
    seen = _backends_seen_by_threads(app)
    assert isinstance(seen[0], DisabledBackend)
    assert all(backend is seen[0] for backend in seen)
    assert app.backend is seen[0]


def test_a_real_result_backend_stays_per_thread() -> None:
    app = InboxCelery("ingest-cost-results", set_as_current=False)
    app.conf.result_backend = "cache+memory://"
    seen = _backends_seen_by_threads(app)
    assert not isinstance(seen[0], DisabledBackend)
    assert len({id(backend) for backend in seen}) == len(seen)


@pytest.fixture
def published() -> Iterator[list[dict[str, Any]]]:
    """Publish for real (to the configured broker, whose `inbound` queue is emptied afterwards) and record the
    messages' headers as Celery sends them."""
    recorded: list[dict[str, Any]] = []

    def record(headers: dict[str, Any] | None = None, **_: Any) -> None:
        recorded.append(dict(headers or {}))

    before_task_publish.connect(record, weak=False)
    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = False
    try:
        yield recorded
    finally:
        celery_app.conf.task_always_eager = eager
        before_task_publish.disconnect(record)
        with celery_app.connection_for_write() as connection:
            connection.default_channel.queue_purge("inbound")


def test_the_enqueue_names_its_arguments_without_celerys_saferepr(published: list[dict[str, Any]]) -> None:
    with mock.patch("celery.app.amqp.saferepr", side_effect=AssertionError("saferepr of the arguments")):
        webhook_enqueue(4217)
        assert _batcher.idle(5)
    [headers] = published
    assert headers["task"] == "webhooks.tasks.webhook_process_many"
    # What saferepr would have shown for args=() and kwargs={"event_ids": [4217]}: workers' logs read the same.
    assert (headers["argsrepr"], headers["kwargsrepr"]) == (repr(()), repr({"event_ids": [4217]}))


def test_events_stored_while_a_publish_is_out_go_to_the_worker_together(published: list[dict[str, Any]]) -> None:
    """A webhook POST does not wait for the broker; under load its event joins the next publish (one task for
    several events) instead of paying a publish of its own."""
    gate, started = threading.Event(), threading.Event()
    original = _batcher.send

    def slow_first(ids: list[int]) -> None:
        if ids == [1]:
            started.set()
            assert gate.wait(5)
        original(ids)

    with mock.patch.object(_batcher, "send", slow_first):
        webhook_enqueue(1)  # returns at once although its publish is held up
        assert started.wait(5)
        for event_id in range(2, 25):
            webhook_enqueue(event_id)
        gate.set()
        assert _batcher.idle(5)
    assert [h["kwargsrepr"] for h in published] == [
        repr({"event_ids": [1]}),
        repr({"event_ids": list(range(2, 22))}),  # at most 20 per task
        repr({"event_ids": [22, 23, 24]}),
    ]
