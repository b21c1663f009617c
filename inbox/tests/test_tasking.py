"""inbox.tasking.enqueue_on_commit: tasks leave after commit, with the repr of their ids Celery would have made."""

from __future__ import annotations

from typing import Any

import pytest
from celery.utils.saferepr import saferepr
from django.db import transaction

from inbox.tasking import enqueue_on_commit


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
