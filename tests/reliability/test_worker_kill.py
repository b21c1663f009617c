"""Check 17: a Celery worker SIGKILLed in the middle of a send.

Real processes: a solo Celery worker (the task runs in the worker process itself, so SIGKILL kills it mid-task)
sending through the real GraphClient to a fake Graph API on loopback that can hang. The outbox row says how far
the send got (send_started_at is committed just before the HTTP request goes out), and the sweeper settles it
once the claim's lease has expired (the lease is set to 0 here instead of 150 s):

* killed *before* the request went out (the media upload hangs): the send is re-queued and goes out exactly once;
* killed *after* the request went out (the send hangs): the outcome is `unknown`, never resent, not even when the
  sweeper runs again and a new worker is up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from tests.reliability._procs import FakeGraph, Stack, celery_worker, django_run

pytestmark = pytest.mark.slow

SEND = """
import os
from django.core.files.uploadedfile import SimpleUploadedFile
from accounts.models import User
from inbox.models import Conversation
from inbox.services.outbound import message_send
from tenants.models import Tenant
from tenants.scoping import tenant_scope
tenant_id = int(os.environ["T_TENANT"])
with tenant_scope(tenant_id):
    kind = os.environ["T_KIND"]
    extra = {"text": "hello from the agent"}
    if kind == "document":
        extra = {"media": SimpleUploadedFile("quote.pdf", b"%PDF-1.4 fake", content_type="application/pdf")}
    message, created = message_send(
        tenant=Tenant.objects.get(pk=tenant_id),
        conversation=Conversation.objects.get(pk=int(os.environ["T_CONVERSATION"])),
        sender=User.objects.get(pk=int(os.environ["T_USER"])),
        client_id=os.environ["T_CLIENT_ID"],
        type=kind,
        **extra,
    )
print(json.dumps(message.pk))
"""

SWEEP_EXPIRED = """
from datetime import timedelta
from inbox.services import outbound
outbound.STUCK_AFTER = timedelta(0)  # the claim's lease (150 s in production) has expired
counts = outbound.outbox_sweep()
print(json.dumps({key: counts.get(key, 0) for key in ("enqueued", "requeued", "unknown")}))
"""


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    fake = FakeGraph(mode="hang").start()
    yield fake
    fake.stop()


def _stack(stack_factory: Callable[..., Stack], graph: FakeGraph) -> Stack:
    return stack_factory(SEED_GRAPH_TOKEN="fake-graph-token", WHATSAPP_GRAPH_BASE_URL=graph.base_url)


def _send(stack: Stack, kind: str, client_id: str) -> int:
    acme = stack.data["acme"]
    env = {
        **stack.env,
        "T_TENANT": str(acme["tenant_id"]),
        "T_CONVERSATION": str(acme["conversation_id"]),
        "T_USER": str(acme["user_id"]),
        "T_KIND": kind,
        "T_CLIENT_ID": client_id,
    }
    return int(django_run(env, SEND))


def _row(stack: Stack, message_id: int) -> dict[str, str]:
    line = stack.sql(
        "SELECT send_state, send_started_at IS NOT NULL, coalesce(wa_message_id, ''), status "
        f"FROM inbox_message WHERE id = {message_id}"
    )
    state, started, wamid, status = line.split("|")
    return {"send_state": state, "started": started, "wamid": wamid, "status": status}


async def _arrived(graph: FakeGraph, timeout: float = 30) -> None:
    assert await asyncio.to_thread(graph.arrived.wait, timeout), "the worker never called the Graph API"


async def test_a_send_killed_before_its_request_went_out_is_sent_exactly_once(
    stack_factory: Callable[..., Stack], graph: FakeGraph
) -> None:
    graph.mode = "hang-media"
    stack = _stack(stack_factory, graph)
    first = stack.own(celery_worker(stack.env, name="worker-1"))
    message_id = await asyncio.to_thread(_send, stack, "document", "kill-before")
    await _arrived(graph)  # the upload (before the send) is in flight
    first.kill()
    assert _row(stack, message_id) == {"send_state": "sending", "started": "f", "wamid": "", "status": "pending"}
    assert graph.sends() == []

    graph.mode = "ok"
    graph.release.set()
    stack.own(celery_worker(stack.env, name="worker-2"))
    swept = await asyncio.to_thread(django_run, stack.env, SWEEP_EXPIRED)
    assert swept["requeued"] == 1 and swept["unknown"] == 0, swept
    stack.wait_for(lambda: _row(stack, message_id)["send_state"] == "sent", timeout=30, what="the re-queued send")

    row = _row(stack, message_id)
    # Accepted by "Meta" under its wamid; the delivery status itself waits for Meta's status webhooks.
    assert row["wamid"].startswith("wamid.FAKE"), row
    assert len(graph.sends()) == 1, [c.body for c in graph.sends()]
    # Running the sweeper again finds nothing to do: the send is settled.
    again = await asyncio.to_thread(django_run, stack.env, SWEEP_EXPIRED)
    assert again == {"enqueued": 0, "requeued": 0, "unknown": 0}
    assert len(graph.sends()) == 1


async def test_a_send_killed_after_its_request_went_out_is_marked_unknown_and_never_resent(
    stack_factory: Callable[..., Stack], graph: FakeGraph
) -> None:
    stack = _stack(stack_factory, graph)
    first = stack.own(celery_worker(stack.env, name="worker-1"))
    message_id = await asyncio.to_thread(_send, stack, "text", "kill-after")
    await _arrived(graph)  # the send request reached "Meta"
    first.kill()
    assert _row(stack, message_id)["send_state"] == "sending"
    assert _row(stack, message_id)["started"] == "t", "send_started_at was committed before the request"

    graph.mode = "ok"
    graph.release.set()
    stack.own(celery_worker(stack.env, name="worker-2"))
    swept = await asyncio.to_thread(django_run, stack.env, SWEEP_EXPIRED)
    assert swept["unknown"] == 1 and swept["requeued"] == 0, swept
    assert _row(stack, message_id)["send_state"] == "unknown"

    # Not retried in a loop: more sweeps and a live worker leave it alone; "Meta" saw exactly one request.
    for _ in range(2):
        again = await asyncio.to_thread(django_run, stack.env, SWEEP_EXPIRED)
        assert again == {"enqueued": 0, "requeued": 0, "unknown": 0}
    assert _row(stack, message_id)["send_state"] == "unknown"
    assert len(graph.sends()) == 1
    # The change was announced (message:status logged in the same transaction as the unknown state).
    logged = stack.count(
        f"SELECT count(*) FROM inbox_tenantevent WHERE type = 'message:status' AND (data->>'message_id')::int = {message_id}"
    )
    assert logged >= 1
