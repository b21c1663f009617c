from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connection, transaction

from inbox import events
from inbox.models import TenantEvent
from tenants.scoping import tenant_scope


def emit_read(tenant_id: int, n: int = 0) -> TenantEvent:
    return events.emit(tenant_id, events.MESSAGE_READ, {"conversation_id": 1, "user_id": 1, "last_read_message_id": n})


@pytest.mark.django_db(transaction=True)
def test_it_refuses_to_emit_outside_a_transaction(world) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError), tenant_scope(world.acme.pk):
        emit_read(world.acme.pk)


@pytest.mark.django_db
def test_it_refuses_ephemeral_types_in_the_durable_log(world) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError), transaction.atomic():
        events.emit(world.acme.pk, events.TYPING_START, {})


@pytest.mark.django_db
def test_seq_counts_per_tenant_from_one(world, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks():
        for i in range(3):
            with transaction.atomic():
                assert emit_read(world.acme.pk, i).seq == i + 1
        with transaction.atomic():
            assert emit_read(world.globex.pk).seq == 1  # tenants never share a sequence


@pytest.mark.django_db
def test_logged_rows_are_what_emit_returned_and_broadcast(world, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    """The tenant's first change creates its counter (two statements); later ones bump it and insert the events in
    one statement on PostgreSQL. Either way the rows hold the seqs, types, data (nested JSON, no conversation)
    and times that emit_many returned and that the frames carry."""
    items: list[events.EventItem] = [
        (
            events.MESSAGE_NEW,
            {"id": 7, "text": 'ü "quoted" %s', "nested": {"a": [1, None]}},
            world.acme_conversation.pk,
        ),
        (events.CONVERSATION_UPDATED, {"id": world.acme_conversation.pk}, None),
        (events.MESSAGE_READ, {"user_id": 1}, world.acme_conversation.pk),
    ]
    returned: list[TenantEvent] = []
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        for _ in range(3):
            with transaction.atomic():
                returned += events.emit_many(world.acme.pk, items)
    assert [e.seq for e in returned] == list(range(1, 10))
    with tenant_scope(world.acme.pk):
        stored = list(TenantEvent.objects.order_by("seq"))
    assert [(e.seq, e.type, e.data, e.conversation_id, e.created_at) for e in stored] == [
        (e.seq, e.type, e.data, e.conversation_id, e.created_at) for e in returned
    ]
    assert [e.tenant_id for e in stored] == [world.acme.pk] * 9
    assert len(callbacks) == 3


@pytest.mark.django_db
def test_a_rolled_back_change_is_neither_logged_nor_broadcast(world, django_capture_on_commit_callbacks) -> None:  # type: ignore[no-untyped-def]
    with django_capture_on_commit_callbacks() as callbacks:
        try:
            with transaction.atomic():
                emit_read(world.acme.pk)
                raise ZeroDivisionError
        except ZeroDivisionError:
            pass
    assert callbacks == []
    with tenant_scope(world.acme.pk):
        assert not TenantEvent.objects.exists()
        with transaction.atomic():
            assert emit_read(world.acme.pk).seq == 1  # the rolled-back seq was not consumed


@pytest.mark.django_db(transaction=True)
async def test_it_broadcasts_to_the_tenant_group_only_after_commit(world) -> None:  # type: ignore[no-untyped-def]
    layer = get_channel_layer()
    acme_channel = await layer.new_channel()
    globex_channel = await layer.new_channel()
    await layer.group_add(events.tenant_group(world.acme.pk), acme_channel)
    await layer.group_add(events.tenant_group(world.globex.pk), globex_channel)
    committed = threading.Event()

    def write() -> None:
        with tenant_scope(world.acme.pk), transaction.atomic():
            emit_read(world.acme.pk, 7)
            committed.clear()
        committed.set()

    await database_sync_to_async(write)()
    message = await asyncio.wait_for(layer.receive(acme_channel), timeout=3)
    assert committed.is_set()
    assert message["type"] == "inbox.event"
    assert message["frame"]["type"] == "message:read" and message["frame"]["seq"] == 1
    assert message["frame"]["data"]["last_read_message_id"] == 7
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(layer.receive(globex_channel), timeout=0.3)


@pytest.mark.django_db(transaction=True)
def test_seq_is_gapless_in_commit_order_under_concurrent_writers(require_postgres, world) -> None:  # type: ignore[no-untyped-def]
    """A reader polling the log must only ever see 1..k: a later seq never commits before an earlier one."""
    writers, per_writer = 6, 12
    tenant_id = world.acme.pk
    stop = threading.Event()
    snapshots: list[list[int]] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with tenant_scope(tenant_id):
                for i in range(per_writer):
                    with transaction.atomic():
                        emit_read(tenant_id, i)
                        time.sleep(random.random() * 0.002)  # widen the window between allocation and commit
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    def reader() -> None:
        try:
            with tenant_scope(tenant_id):
                while not stop.is_set():
                    snapshots.append(list(TenantEvent.objects.order_by("seq").values_list("seq", flat=True)))
        finally:
            connection.close()

    threads = [threading.Thread(target=writer) for _ in range(writers)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    stop.set()
    watcher.join(timeout=10)
    assert not errors, errors
    with tenant_scope(tenant_id):
        final = list(TenantEvent.objects.order_by("seq").values_list("seq", flat=True))
    assert final == list(range(1, writers * per_writer + 1))
    assert len(snapshots) > 5
    for snap in snapshots:
        assert snap == list(range(1, len(snap) + 1)), "a reader saw a gap"
