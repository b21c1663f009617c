"""Check 14 (load half): signed webhooks at a steady 50 requests/s on loopback; p99 latency must stay under 1 s.

    .venv/bin/python bench/reliability/webhook_load.py [--rate 50] [--seconds 30] [--big 3]

Also sends `--big` signed 3 MB bodies during the run (they must be answered 200). Exit status 1 on a violation.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.reliability._stack import private_stack  # noqa: E402
from tests.reliability._flow import wait_messages  # noqa: E402
from tests.reliability._procs import celery_worker, daphne, free_port, signature, text_webhook  # noqa: E402


async def run(rate: int, seconds: int, big: int) -> int:
    with private_stack() as stack:
        port = free_port()
        stack.own(daphne(port, stack.env))
        stack.own(celery_worker(stack.env))
        acme = stack.data["acme"]
        latencies: list[float] = []
        codes: dict[int, int] = {}
        # One pooled client, like a real sender: a new TLS-less client per request costs the generator more CPU
        # than the server spends, and on 2 cores that shows up as server latency.
        http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, limits=httpx.Limits(max_connections=200)
        )

        async def one(index: int, padding: int = 0) -> None:
            body = text_webhook(acme["phone_number_id"], acme["wa_id"], [f"wamid.LOAD{index:07d}"])
            if padding:
                data = json.loads(body)
                data["padding"] = "x" * padding
                body = json.dumps(data).encode()
            sig = signature(body)
            started = time.perf_counter()
            response = await http.post(
                "/webhooks/whatsapp/",
                content=body,
                headers={"Content-Type": "application/json", "X-Hub-Signature-256": sig},
            )
            code = response.status_code
            latencies.append(time.perf_counter() - started)
            codes[code] = codes.get(code, 0) + 1

        tasks = []
        total = rate * seconds
        start = time.perf_counter()
        for index in range(total):
            # Open loop: requests leave on schedule whether or not earlier ones were answered.
            await asyncio.sleep(max(0.0, start + index / rate - time.perf_counter()))
            padding = 3 * 1024 * 1024 if big and index % max(1, total // big) == 0 else 0
            tasks.append(asyncio.create_task(one(index, padding)))
        await asyncio.gather(*tasks)
        await http.aclose()
        latencies.sort()
        p50 = statistics.median(latencies)
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        await wait_messages(stack, acme["tenant_id"], total, timeout=300, sweep=False)
        print(f"rate={rate}/s seconds={seconds} requests={total} codes={codes}")
        print(f"latency p50={p50 * 1000:.1f} ms p99={p99 * 1000:.1f} ms max={latencies[-1] * 1000:.1f} ms")
        ok = p99 < 1.0 and set(codes) == {200}
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=50)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--big", type=int, default=3)
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args.rate, args.seconds, args.big)))
