"""Check 12: the webhook answers 200 only after the raw event is committed.

A private PostgreSQL cluster is stopped (immediate shutdown: every connection cut) while a fake Meta delivers
100 signed messages to Daphne. While it is down every answer is 5xx (never a 200 for something not stored); Meta
retries with backoff; once PostgreSQL is back, the retries and some duplicate redeliveries leave each of the 100
messages stored exactly once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from tests.reliability._flow import deliver_like_meta, readiness, wait_messages, wamid_counts
from tests.reliability._procs import Stack, celery_worker, daphne, free_port

pytestmark = pytest.mark.slow

TOTAL = 100
BEFORE = 30
OUTAGE_SECONDS = (
    14.0  # longer than the psycopg pool timeout (10 s): requests sent early get their 503 before the restart
)


async def test_it_answers_5xx_while_postgres_is_down_and_stores_every_retry_once(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory()
    port = free_port()
    stack.own(daphne(port, stack.env))
    stack.own(celery_worker(stack.env))
    acme = stack.data["acme"]
    wamids = [f"wamid.PG{i:05d}" for i in range(TOTAL)]
    log: list[tuple[float, float, int]] = []

    senders = asyncio.Semaphore(8)  # Meta's delivery concurrency is bounded too

    async def send(wamid: str) -> int:
        async with senders:
            return await deliver_like_meta(
                lambda: [port], acme["phone_number_id"], acme["wa_id"], wamid, log=log, deadline=120
            )

    def deliver(wamid: str) -> asyncio.Future[int]:
        return asyncio.ensure_future(send(wamid))

    await asyncio.gather(*(deliver(w) for w in wamids[:BEFORE]))
    # Stop only once the worker is idle: an event it is processing when the database dies stays claimed until
    # its lease expires (webhooks.services.STUCK_AFTER, minutes) — correct, but too slow for CI.
    await wait_messages(stack, acme["tenant_id"], BEFORE, timeout=30, sweep=False)

    await asyncio.to_thread(stack.pg.stop, "immediate")
    stopped_at = time.monotonic()
    pending = [deliver(w) for w in wamids[BEFORE:]]
    # Meta also redelivers webhooks it already got a 200 for.
    pending += [deliver(w) for w in wamids[:10]]
    status, checks = await readiness(port)
    assert status == 503 and checks["database"].startswith("error"), checks
    await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - stopped_at)))  # the outage: a duration
    restart_at = time.monotonic()
    await asyncio.to_thread(stack.pg.start)
    await asyncio.wait_for(asyncio.gather(*pending), timeout=120)

    # Answers received while PostgreSQL was down (0 = no answer within the client's 10 s: not an answer).
    during = [code for started, ended, code in log if started >= stopped_at and ended <= restart_at and code]
    assert during, "the outage was exercised"
    assert all(code >= 500 for code in during), f"answers while PostgreSQL was down: {sorted(set(during))}"
    assert 200 not in during

    await wait_messages(stack, acme["tenant_id"], TOTAL, timeout=60)
    assert (await readiness(port))[0] == 200
    counts = wamid_counts(stack, acme["tenant_id"])
    assert sorted(counts) == wamids
    assert set(counts.values()) == {1}, {w: n for w, n in counts.items() if n != 1}
    # Every 200 stands for a committed raw event (a commit whose answer was lost in the crash may add a row).
    acked = sum(1 for _, _, code in log if code == 200)
    rows = stack.count("SELECT count(*) FROM webhooks_webhookevent WHERE signature = 'valid'")
    assert rows >= acked, (rows, acked)
