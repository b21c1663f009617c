"""Check 22: many WebSocket clients across 2 Daphne processes each receive every fan-out event.

    .venv/bin/python bench/reliability/fanout.py [--clients 500] [--messages 5000] [--rate 2] \
        [--pool solo --concurrency 1] [--json out.json]

Each inbound message logs two durable events (message:new, conversation:updated), so 5,000 messages are 10,000
fan-out events per client. Webhooks are sent open-loop at `--rate` per second (one message each, signed, through a
pooled HTTP client, alternating between the two Daphne processes, retried like Meta until a 200). The check fixes
no rate: choose one the stack sustains (see docs/reliability.md §22; the run prints the rate it achieved).

Reports: live delivery (frames received without asking) and completeness after a final `sync`, duplicates (frames
received twice on the wire, and messages counted twice after the client's seq dedupe), webhook-to-frame latency
p50/p95/p99/max over every (client, frame) pair — for message:new and for all frames — "over capacity" lines in
the Daphne and worker logs, the webhook answer latency, the server-side lag per webhook (stored → processed, from
the database: queueing in front of the worker plus processing), the load generator's own event-loop lag (its
timestamps are only as good as that), and every phase's duration. Targets: 100% delivery, p95 < 500 ms, zero
over-capacity lines, no duplicates after dedupe. Exit status 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.reliability._stack import private_stack  # noqa: E402
from tests import procs  # noqa: E402
from tests.reliability._client import InboxClient  # noqa: E402
from tests.reliability._flow import settle_clients, wait_messages  # noqa: E402
from tests.reliability._procs import daphne, free_port, signature, text_webhook  # noqa: E402


class TimedClient(InboxClient):
    """Records when each durable frame arrived, by the wamid of the inbound message that caused it.

    A message's conversation:updated is logged right after its message:new (consecutive seqs): it is matched by seq,
    not by last_message (which, with two messages processed at once, may name the other one).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrived: dict[str, float] = {}  # wamid → message:new arrival
        self.conv_arrived: dict[str, float] = {}  # wamid → conversation:updated arrival
        self.wamid_at_seq: dict[int, str] = {}

    def _on_frame(self, frame: dict[str, Any]) -> None:
        now = time.monotonic()
        kind, seq = frame.get("type"), frame.get("seq")
        if kind == "message:new":
            wamid = str(frame["data"].get("wa_message_id"))
            self.arrived.setdefault(wamid, now)
            if seq is not None:
                self.wamid_at_seq[int(seq)] = wamid
        elif kind == "conversation:updated" and seq is not None:
            wamid = self.wamid_at_seq.get(int(seq) - 1)
            if wamid is not None:
                self.conv_arrived.setdefault(wamid, now)
        super()._on_frame(frame)


def pct(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * q + 0.5) - 1))]


def ms(value: float) -> str:
    return f"{value * 1000:.0f} ms"


def dist(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": pct(ordered, 0.50),
        "p95": pct(ordered, 0.95),
        "p99": pct(ordered, 0.99),
        "max": ordered[-1] if ordered else float("nan"),
    }


def line(name: str, d: dict[str, float]) -> str:
    return f"{name}: p50={ms(d['p50'])} p95={ms(d['p95'])} p99={ms(d['p99'])} max={ms(d['max'])} (n={d['n']:,})"


async def loop_lag(samples: list[float], stop: asyncio.Event, interval: float = 0.05) -> None:
    """How late this process's event loop wakes up: frame timestamps are late by as much."""
    while not stop.is_set():
        before = time.monotonic()
        await asyncio.sleep(interval)
        samples.append(max(0.0, time.monotonic() - before - interval))


async def run(args: argparse.Namespace) -> int:
    clients_total, messages, rate = args.clients, args.messages, args.rate
    started_utc = datetime.now(UTC)
    load_start = os.getloadavg()
    phases: dict[str, float] = {}
    t0 = time.monotonic()
    with private_stack() as stack:
        phases["stack"] = time.monotonic() - t0
        ports = [free_port(), free_port()]
        servers = [stack.own(daphne(port, stack.env, name=f"d{i}")) for i, port in enumerate(ports)]
        worker = stack.own(
            procs.start_celery(
                stack.env, name="worker", queues="inbound,default", pool=args.pool, concurrency=args.concurrency
            )
        )
        acme = stack.data["acme"]
        clients = [
            TimedClient([ports[i % 2], ports[(i + 1) % 2]], "acme", "alice", name=f"c{i}") for i in range(clients_total)
        ]
        t = time.monotonic()
        await clients[0].login()  # one password check (PBKDF2 costs ~0.3 s of CPU); every client is alice
        for client in clients[1:]:
            client.access = clients[0].access
        for start in range(0, clients_total, 50):
            await asyncio.gather(*(c.connect(initial=True) for c in clients[start : start + 50]))
        phases["connect"] = time.monotonic() - t
        await asyncio.sleep(args.settle)  # let the servers finish the handshakes' tail before measuring

        lag: list[float] = []
        stop_lag = asyncio.Event()
        lag_task = asyncio.create_task(loop_lag(lag, stop_lag))
        sent: dict[str, float] = {}
        answered: list[float] = []
        retries = 0
        http = [
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{p}", timeout=30, limits=httpx.Limits(max_connections=100))
            for p in ports
        ]

        async def one(index: int, wamid: str) -> None:
            nonlocal retries
            body = text_webhook(acme["phone_number_id"], acme["wa_id"], [wamid])
            headers = {"Content-Type": "application/json", "X-Hub-Signature-256": signature(body)}
            sent[wamid] = time.monotonic()
            delay = 0.05
            for attempt in range(40):  # like Meta: anything but a 200 is retried (here: the other server first)
                client = http[(index + attempt) % 2]
                began = time.monotonic()
                try:
                    code = (await client.post("/webhooks/whatsapp/", content=body, headers=headers)).status_code
                except httpx.TransportError:
                    code = 0
                if code == 200:
                    answered.append(time.monotonic() - began)
                    return
                retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            raise TimeoutError(f"{wamid} was never acknowledged")

        tasks = []
        t = begin = time.monotonic()
        for index in range(messages):
            # Open loop: webhooks leave on schedule whether or not earlier ones were answered.
            await asyncio.sleep(max(0.0, begin + index / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(index, f"wamid.FAN{index:07d}")))
        await asyncio.gather(*tasks)
        phases["send"] = time.monotonic() - t
        for client in http:
            await client.aclose()
        await wait_messages(stack, acme["tenant_id"], messages, timeout=args.drain_timeout, sweep=False)
        phases["drain"] = time.monotonic() - t
        live_deadline = time.monotonic() + 60
        while time.monotonic() < live_deadline and any(
            len(c.arrived) < messages or len(c.conv_arrived) < messages for c in clients
        ):
            await asyncio.sleep(0.2)
        phases["last_frame"] = time.monotonic() - t
        stop_lag.set()
        await lag_task

        new_latencies = [c.arrived[w] - s for c in clients for w, s in sent.items() if w in c.arrived]
        all_latencies = list(new_latencies)
        all_latencies += [c.conv_arrived[w] - s for c in clients for w, s in sent.items() if w in c.conv_arrived]
        expected_frames = 2 * messages * clients_total
        live_new = len(new_latencies) / (messages * clients_total)
        live_all = len(all_latencies) / expected_frames
        wire_duplicates = sum(len(c.wire_seqs) - len(set(c.wire_seqs)) for c in clients)

        t = time.monotonic()
        await settle_clients(clients, timeout=300)
        phases["sync"] = time.monotonic() - t
        expected_events = 2 * messages
        complete = sum(1 for c in clients if len(set(c.wire_seqs)) >= expected_events and c.message_ids)
        doubled = sum(1 for c in clients if set(c.message_ids.values()) - {1})
        over = {p.name: p.log_text().count("over capacity") for p in [*servers, worker]}
        server_lag_rows = stack.sql(
            "SELECT extract(epoch FROM processed_at - received_at) FROM webhooks_webhookevent WHERE state = 'processed'"
        )
        server_lag = [float(v) for v in server_lag_rows.split()] if server_lag_rows else []
        unprocessed = stack.count("SELECT count(*) FROM webhooks_webhookevent WHERE state <> 'processed'")
        for client in clients:
            await client.close()
        load_end = os.getloadavg()

    d_new, d_all = dist(new_latencies), dist(all_latencies)
    d_answer, d_server, d_lag = dist(answered), dist(server_lag), dist(lag)
    # p95 per tenth of the run (by send order): a rising trend means the rate is more than the stack sustains.
    order = sorted(sent, key=sent.__getitem__)
    tenths: list[float] = []
    for part in range(10):
        wamids = set(order[part * len(order) // 10 : (part + 1) * len(order) // 10])
        tenths.append(dist([c.arrived[w] - sent[w] for c in clients for w in wamids if w in c.arrived])["p95"])
    achieved = messages / phases["send"] if phases["send"] else float("nan")
    print(f"check 22 fan-out, {started_utc:%Y-%m-%d %H:%M:%S} UTC → {datetime.now(UTC):%H:%M:%S} UTC")
    print(
        f"clients={clients_total} (2 Daphne) messages={messages} events/client={expected_events} "
        f"rate={rate}/s (achieved {achieved:.1f}/s) worker pool={args.pool} concurrency={args.concurrency}"
    )
    print(f"load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f} (1 min); cores {os.cpu_count()}")
    print(
        f"delivery live: message:new {live_new:.2%}, all frames {live_all:.2%}; after sync complete clients "
        f"{complete}/{clients_total}"
    )
    print(f"duplicates: {wire_duplicates} frames received twice on the wire; {doubled} clients with a message twice")
    print(line("webhook→frame (message:new)", d_new))
    print(line("webhook→frame (all frames)", d_all))
    print("message:new p95 by tenth of the run: " + " ".join(f"{v * 1000:.0f}" for v in tenths) + " ms")
    print(line("webhook POST answered", d_answer) + f"; retries {retries}")
    print(line("server lag stored→processed", d_server) + f"; not processed {unprocessed}")
    print(line("load generator loop lag", d_lag))
    print(f"over capacity lines: {sum(over.values())} {over}")
    print("durations: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))
    ok = (
        complete == clients_total
        and not doubled
        and d_new["p95"] < 0.5
        and d_all["p95"] < 0.5
        and sum(over.values()) == 0
        and not unprocessed
    )
    print("PASS" if ok else "FAIL")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "started": started_utc.isoformat(),
                    "clients": clients_total,
                    "messages": messages,
                    "rate": rate,
                    "achieved_rate": achieved,
                    "pool": args.pool,
                    "concurrency": args.concurrency,
                    "load_start": load_start,
                    "load_end": load_end,
                    "live_new": live_new,
                    "live_all": live_all,
                    "complete": complete,
                    "wire_duplicates": wire_duplicates,
                    "doubled": doubled,
                    "latency_new": d_new,
                    "latency_all": d_all,
                    "p95_by_tenth": tenths,
                    "answer": d_answer,
                    "server_lag": d_server,
                    "loop_lag": d_lag,
                    "over_capacity": over,
                    "unprocessed": unprocessed,
                    "phases": phases,
                    "pass": ok,
                },
                indent=2,
            )
        )
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=2.0, help="webhooks per second (one message each)")
    parser.add_argument("--pool", default="solo", choices=["solo", "prefork", "threads"], help="Celery pool")
    parser.add_argument("--concurrency", type=int, default=1, help="Celery worker processes/threads")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between connecting and sending")
    parser.add_argument("--drain-timeout", type=float, default=1800.0)
    parser.add_argument("--json", default="", help="also write the figures to this file")
    sys.exit(asyncio.run(run(parser.parse_args())))
