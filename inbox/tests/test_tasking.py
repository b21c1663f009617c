"""inbox.tasking: tasks leave after commit, with the repr of their ids Celery would have made; IdBatcher."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from celery.utils.saferepr import saferepr
from django.db import transaction

from inbox.tasking import IdBatcher, enqueue_on_commit


class _Task:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def apply_async(self, **options: Any) -> None:
        self.calls.append(options)


@pytest.mark.django_db
def test_the_task_is_sent_after_commit_with_its_ids_repr(django_capture_on_commit_callbacks: Any) -> None:
    task = _Task()
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        enqueue_on_commit(task, tenant_id=3, message_id=12345678901)
        assert task.calls == []  # nothing leaves before the commit
    [options] = task.calls
    assert options["kwargs"] == {"tenant_id": 3, "message_id": 12345678901}
    # What Celery's own bounded repr gives for these arguments, without computing it on the request thread.
    assert options["kwargsrepr"] == saferepr(options["kwargs"])
    assert options["argsrepr"] == saferepr(())


@pytest.mark.django_db
def test_a_rolled_back_change_sends_nothing(django_capture_on_commit_callbacks: Any) -> None:
    task = _Task()
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(ZeroDivisionError), transaction.atomic():
        enqueue_on_commit(task, tenant_id=1, message_id=2)
        raise ZeroDivisionError
    assert task.calls == []


# --- IdBatcher ------------------------------------------------------------------------------------------------------


def test_the_first_id_goes_at_once_and_ids_added_meanwhile_share_the_next_publish() -> None:
    sent: list[list[int]] = []
    first_started, release_first = threading.Event(), threading.Event()

    def send(ids: list[int]) -> None:
        sent.append(ids)
        if len(sent) == 1:
            first_started.set()
            assert release_first.wait(5)

    batcher = IdBatcher(send, max_batch=3, name="test-batcher")
    batcher.add(1)
    assert first_started.wait(5)  # published without waiting for company
    for item in range(2, 7):  # arrive while the first publish is still out
        batcher.add(item)
    release_first.set()
    assert batcher.idle(5)
    assert sent == [[1], [2, 3, 4], [5, 6]]  # in order, at most max_batch per publish


def test_a_failed_publish_is_logged_and_the_next_ids_still_go(caplog: pytest.LogCaptureFixture) -> None:
    sent: list[list[int]] = []

    def send(ids: list[int]) -> None:
        if ids == [1]:
            raise ConnectionError("broker down")
        sent.append(ids)

    batcher = IdBatcher(send, name="test-batcher")
    batcher.add(1)
    assert batcher.idle(5)
    batcher.add(2)
    assert batcher.idle(5)
    assert sent == [[2]]
    assert "could not publish [1]; left to the sweeper" in caplog.text


def test_with_linger_ids_in_a_steady_stream_share_a_publish_and_one_after_a_pause_goes_at_once() -> None:
    sent: list[tuple[list[int], float]] = []
    published = threading.Semaphore(0)

    def send(ids: list[int]) -> None:
        sent.append((ids, time.monotonic()))
        published.release()

    batcher = IdBatcher(send, max_batch=20, linger=0.3, name="test-batcher")
    start = time.monotonic()
    batcher.add(1)
    assert published.acquire(timeout=5)
    assert sent[0][1] - start < 0.3  # the first id after a quiet moment did not linger
    for item in (2, 3, 4):  # a stream right behind it: gathered until linger after the first publish
        batcher.add(item)
    assert published.acquire(timeout=5)
    assert sent[1][0] == [2, 3, 4]
    assert sent[1][1] - sent[0][1] >= 0.29
    time.sleep(0.35)  # a pause longer than linger
    paused = time.monotonic()
    batcher.add(5)
    assert published.acquire(timeout=5)
    assert sent[2][0] == [5] and sent[2][1] - paused < 0.3
    assert batcher.idle(5)


def test_with_linger_a_full_batch_goes_without_waiting() -> None:
    sent: list[list[int]] = []
    published = threading.Semaphore(0)

    def send(ids: list[int]) -> None:
        sent.append(ids)
        published.release()

    batcher = IdBatcher(send, max_batch=3, linger=60.0, name="test-batcher")  # a wait would outlast the test
    batcher.add(1)
    assert published.acquire(timeout=5)
    for item in (2, 3, 4):
        batcher.add(item)
    assert published.acquire(timeout=5)
    assert sent == [[1], [2, 3, 4]]
