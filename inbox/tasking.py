"""The Celery task base: tasks take ids, enter the tenant's scope, then call a service.

Tasks are enqueued with `enqueue_on_commit` so a worker never looks for a row that has not committed yet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task
from django.db import transaction

from tenants.scoping import tenant_scope


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
