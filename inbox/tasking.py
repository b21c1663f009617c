"""The Celery task base: tasks take ids, enter the tenant's scope, then call a service.

Tasks are enqueued with `enqueue_on_commit` so a worker never looks for a row that has not committed yet.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from celery import Task
from django.db import transaction

from tenants.scoping import tenant_scope

logger = logging.getLogger(__name__)

Item = TypeVar("Item")


class TenantTask(Task):  # type: ignore[misc]
    """A task whose first keyword argument `tenant_id` selects the tenant scope it runs in."""

    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tenant_id = kwargs.get("tenant_id")
        if tenant_id is None:
            raise TypeError(f"{self.name} must be called with tenant_id=")
        with tenant_scope(int(tenant_id)):
            return super().__call__(*args, **kwargs)


def apply_with_ids(task: Any, kwargs: dict[str, Any], **options: Any) -> Any:
    """task.apply_async for a task that takes ids: their plain repr is what the worker's logs and events show, given
    here instead of Celery's bounded `saferepr` of them (13 % of an enqueue on the send path, bench/profile_send.py)."""
    return task.apply_async(kwargs=kwargs, argsrepr="()", kwargsrepr=repr(kwargs), **options)


def enqueue_on_commit(task: Callable[..., Any], **kwargs: Any) -> None:
    """Send a task after the current transaction commits (at once outside a transaction)."""
    transaction.on_commit(lambda: apply_with_ids(task, kwargs), robust=True)


class IdBatcher(Generic[Item]):
    """Hands ids (or tuples of ids) to `send` (one broker publish for a list of them) from a thread of its own, in
    batches.

    The first id after a quiet moment goes at once; ids that arrive while a batch is being published wait for the
    next one (at most `max_batch` each). With `linger`, a batch never follows the previous one sooner than `linger`
    seconds after it went out (unless `max_batch` ids are waiting): ids that come in a steady stream share a publish
    instead of each paying for one, at the cost of up to `linger` of delay, while an id after a pause longer than
    `linger` still goes at once. The caller returns without waiting for the broker: what is added must
    already be safe elsewhere (committed, with a sweeper that re-enqueues what a crash lost before it went out).
    A publish that fails is logged and its ids left to that sweeper.
    """

    def __init__(
        self,
        send: Callable[[list[Item]], Any],
        *,
        max_batch: int = 20,
        linger: float = 0.0,
        name: str = "id-batcher",
    ) -> None:
        self.send = send
        self.max_batch = max_batch
        self.linger = linger
        self.name = name
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a forked child has the state but not the thread
        atexit.register(self.idle, 2.0)  # a server stopping hands over what it still holds

    def _reset(self) -> None:
        self._lock = threading.Condition()
        self._pending: list[Item] = []
        self._busy = False
        self._sent_at = -math.inf  # time.monotonic() when the last batch went out
        self._thread: threading.Thread | None = None

    def add(self, item: Item) -> None:
        with self._lock:
            self._pending.append(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._lock.notify()

    def idle(self, timeout: float = 5.0) -> bool:
        """Wait until everything added has been handed to `send` (tests, shutdown)."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: bool(self._pending))
                gather = self._sent_at + self.linger - time.monotonic()
                if gather > 0:  # the previous batch went out moments ago: let this one fill for the rest of linger
                    self._lock.wait_for(lambda: len(self._pending) >= self.max_batch, gather)
                batch, self._pending[: self.max_batch] = self._pending[: self.max_batch], []
                self._busy = True
            try:
                self.send(batch)
            except Exception:
                logger.exception("%s: could not publish %s; left to the sweeper", self.name, batch)
            finally:
                with self._lock:
                    self._busy = False
                    self._sent_at = time.monotonic()
                    self._lock.notify_all()
