"""Check 22: many WebSocket clients across 2 Daphne processes each receive every fan-out event.

    .venv/bin/python bench/reliability/fanout.py [--clients 500] [--messages 5000] [--rate 100]

Each inbound message logs two durable events (message:new, conversation:updated), so 5,000 messages are 10,000
fan-out events per client. Measures webhook-to-frame latency (webhook POST sent → message:new frame received) over
all clients, checks every client got every event exactly once (after a final `sync`), and counts "over capacity"
lines in the Daphne logs. Targets: 100% delivery, p95 < 500 ms, zero over-capacity lines. Exit status 1 otherwise.
On a 2-core machine run it with fewer clients first (e.g. --clients 100 --messages 1000).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.reliability._stack import private_stack  # noqa: E402
from tests.reliability._client import InboxClient  # noqa: E402
from tests.reliability._flow import deliver_like_meta, settle_clients, wait_messages  # noqa: E402
from tests.reliability._procs import celery_worker, daphne, free_port  # noqa: E402


class TimedClient(InboxClient):
    """Records when each message:new frame arrived, by wamid."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrived: dict[str, float] = {}

    def _on_frame(self, frame: dict[str, Any]) -> None:
        if frame.get("type") == "message:new":
            self.arrived.setdefault(str(frame["data"].get("wa_message_id")), time.monotonic())
        super()._on_frame(frame)


async def run(clients_total: int, messages: int, rate: int) -> int:
    with private_stack() as stack:
        ports = [free_port(), free_port()]
        servers = [stack.own(daphne(port, stack.env, name=f"d{i}")) for i, port in enumerate(ports)]
        stack.own(celery_worker(stack.env))
        acme = stack.data["acme"]
        clients = [
            TimedClient([ports[i % 2], ports[(i + 1) % 2]], "acme", "alice", name=f"c{i}") for i in range(clients_total)
        ]
        for client in clients:
            await client.login()
        for start in range(0, clients_total, 50):
            await asyncio.gather(*(c.connect(initial=True) for c in clients[start : start + 50]))
        sent: dict[str, float] = {}

        async def one(wamid: str) -> None:
            sent[wamid] = time.monotonic()
            await deliver_like_meta(lambda: ports, acme["phone_number_id"], acme["wa_id"], wamid)

        tasks = []
        begin = time.monotonic()
        for index in range(messages):
            await asyncio.sleep(max(0.0, begin + index / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(f"wamid.FAN{index:07d}")))
        await asyncio.gather(*tasks)
        await wait_messages(stack, acme["tenant_id"], messages, timeout=600, sweep=False)
        live_deadline = time.monotonic() + 60
        while time.monotonic() < live_deadline and any(len(c.arrived) < messages for c in clients):
            await asyncio.sleep(0.2)
        latencies = sorted(c.arrived[w] - t for c in clients for w, t in sent.items() if w in c.arrived)
        live_share = len(latencies) / (messages * clients_total)
        await settle_clients(clients, timeout=300)
        expected_events = 2 * messages
        complete = sum(1 for c in clients if len(set(c.wire_seqs)) >= expected_events and c.message_ids)
        doubled = sum(1 for c in clients if set(c.message_ids.values()) - {1})
        over = sum(p.log_text().count("over capacity") for p in servers)
        for client in clients:
            await client.close()
        p50 = latencies[len(latencies) // 2] if latencies else float("nan")
        p95 = latencies[int(len(latencies) * 0.95) - 1] if latencies else float("nan")
        print(f"clients={clients_total} messages={messages} events/client={expected_events} rate={rate}/s")
        print(f"live delivery {live_share:.2%}; after sync complete clients {complete}/{clients_total}")
        print(
            f"webhook→frame p50={p50 * 1000:.0f} ms p95={p95 * 1000:.0f} ms; duplicates={doubled}; over capacity={over}"
        )
        ok = complete == clients_total and not doubled and p95 < 0.5 and over == 0
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rate", type=int, default=100)
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args.clients, args.messages, args.rate)))
