"""Check 21 at full size: 200 clients on two Daphne processes, one SIGKILLed while messages flow.

    .venv/bin/python bench/reliability/daphne_kill.py [--clients 200] [--messages 300]

Prints how long the victim's clients took to reconnect (they must all be back within 30 s) and whether every client
ended with every message exactly once. Exit status 1 on any violation. The CI-sized version is
tests/reliability/test_daphne_kill.py.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.reliability._stack import private_stack  # noqa: E402
from tests.reliability._client import InboxClient  # noqa: E402
from tests.reliability._flow import deliver_like_meta, inbound_ids, settle_clients, wait_messages  # noqa: E402
from tests.reliability._procs import celery_worker, daphne, free_port  # noqa: E402


async def run(clients_total: int, messages: int) -> int:
    with private_stack() as stack:
        victim_port, survivor_port = free_port(), free_port()
        victim = stack.own(daphne(victim_port, stack.env, name="victim"))
        stack.own(daphne(survivor_port, stack.env, name="survivor"))
        stack.own(celery_worker(stack.env))
        acme = stack.data["acme"]
        half = clients_total // 2
        clients = [InboxClient([victim_port, survivor_port], "acme", "alice", name=f"v{i}") for i in range(half)]
        clients += [InboxClient([survivor_port, victim_port], "acme", "alice", name=f"s{i}") for i in range(half)]
        alive = [victim_port, survivor_port]
        for client in clients:
            await client.login()
        await asyncio.gather(*(c.connect(initial=True) for c in clients))
        wamids = [f"wamid.BENCHKILL{i:06d}" for i in range(messages)]
        third = messages // 3

        async def send(batch: list[str]) -> None:
            sem = asyncio.Semaphore(10)

            async def one(w: str) -> None:
                async with sem:
                    await deliver_like_meta(lambda: list(alive), acme["phone_number_id"], acme["wa_id"], w)

            await asyncio.gather(*(one(w) for w in batch))

        await send(wamids[:third])
        victim.kill()
        killed = time.monotonic()
        alive.remove(victim_port)
        await send(wamids[third : 2 * third])
        while any(c.connects < 2 for c in clients[:half]) and time.monotonic() - killed < 60:
            await asyncio.sleep(0.1)
        times = [c.reconnected_at - killed for c in clients[:half] if c.reconnected_at]
        await send(wamids[2 * third :])
        await wait_messages(stack, acme["tenant_id"], messages, timeout=180)
        stored = inbound_ids(stack, acme["tenant_id"])
        await settle_clients(clients, timeout=120)
        missing = [c.name for c in clients if set(c.message_ids) != stored]
        doubled = [c.name for c in clients if set(c.message_ids.values()) - {1}]
        wire_dups = sum(len(c.duplicate_seqs()) for c in clients)  # seqs a server sent twice on one socket
        for client in clients:
            await client.close()
        print(f"clients={clients_total} messages={messages}")
        print(
            f"reconnected {len(times)}/{half} in max {max(times):.2f}s, median {statistics.median(times):.2f}s"
            if times
            else "nobody reconnected"
        )
        print(f"missing messages: {len(missing)} clients; duplicates: {len(doubled)} clients")
        print(f"seqs received twice on one socket (clients drop them by seq): {wire_dups}")
        ok = len(times) == half and max(times) < 30 and not missing and not doubled
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--messages", type=int, default=300)
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args.clients, args.messages)))
