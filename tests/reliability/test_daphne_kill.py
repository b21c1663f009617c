"""Check 21 (CI size): one of two Daphne processes is SIGKILLed with clients connected while messages flow.

Its clients notice the dropped socket, reconnect with jittered backoff to the surviving process (new ticket,
`sync` from their last seq) and end with every message exactly once, including those sent during the outage.
The full-size run (200 clients) is bench/reliability/daphne_kill.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from tests.reliability._client import InboxClient
from tests.reliability._flow import (
    assert_no_credentials_logged,
    deliver_like_meta,
    inbound_ids,
    settle_clients,
    wait_messages,
)
from tests.reliability._procs import Stack, celery_worker, daphne, free_port

pytestmark = pytest.mark.slow

ON_VICTIM = 12
ON_SURVIVOR = 4


async def test_clients_of_a_killed_daphne_reconnect_to_the_other_and_miss_nothing(
    stack_factory: Callable[..., Stack],
) -> None:
    stack = stack_factory()
    victim_port, survivor_port = free_port(), free_port()
    victim = stack.own(daphne(victim_port, stack.env, name="daphne-victim"))
    stack.own(daphne(survivor_port, stack.env, name="daphne-survivor"))
    stack.own(celery_worker(stack.env))
    acme = stack.data["acme"]
    clients = [InboxClient([victim_port, survivor_port], "acme", "alice", name=f"v{i}") for i in range(ON_VICTIM)]
    clients += [InboxClient([survivor_port, victim_port], "acme", "alice", name=f"s{i}") for i in range(ON_SURVIVOR)]
    alive = [victim_port, survivor_port]
    wamids = [f"wamid.DAPHNE{i:05d}" for i in range(80)]

    async def send(batch: list[str]) -> None:
        await asyncio.gather(
            *(deliver_like_meta(lambda: list(alive), acme["phone_number_id"], acme["wa_id"], w) for w in batch)
        )

    try:
        for client in clients:
            await client.login()
            await client.connect(initial=True)
        await send(wamids[:30])

        victim.kill()
        killed_at = time.monotonic()
        alive.remove(victim_port)
        await send(wamids[30:60])  # during the outage and the reconnect storm

        deadline = killed_at + 30
        while any(c.connects < 2 for c in clients[:ON_VICTIM]) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        late = [c.name for c in clients[:ON_VICTIM] if c.connects < 2]
        assert not late, f"not reconnected within 30 s: {late}"
        reconnect_times = [c.reconnected_at - killed_at for c in clients[:ON_VICTIM] if c.reconnected_at]
        assert max(reconnect_times) < 30
        assert all(c.connects == 1 for c in clients[ON_VICTIM:]), "the survivor's clients were not disturbed"

        await send(wamids[60:])
        await wait_messages(stack, acme["tenant_id"], len(wamids), timeout=60)
        stored = inbound_ids(stack, acme["tenant_id"])
        assert len(stored) == len(wamids)
        await settle_clients(clients, timeout=60)
        for client in clients:
            assert set(client.message_ids) == stored, (client.name, len(client.message_ids), client.errors)
            assert set(client.message_ids.values()) == {1}, client.name
        assert_no_credentials_logged(stack)
    finally:
        for client in clients:
            await client.close()
