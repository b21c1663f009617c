"""Same-run baselines: the physical floor and bare servers, measured right before the system under test.

floor      psycopg INSERT+COMMIT p99 + redis-py PUBLISH→SUBSCRIBE p99 + bare `websockets` echo p99   (R_e2e)
echo       bare Channels echo consumer through the same Daphne, same load shape as M3                 (R_typing)
broadcast  bare `websockets.broadcast()` to the same N client sockets, same client code               (R_fanout)
wsmem      bare `websockets` server RSS per idle socket                                                (R_mem)
empty      wrk against an empty Django view in the same Daphne process                                (R_ingest)
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from bench.harness import ms, pct, summary
from tests import procs


async def floor_pg(database_url: str, n: int = 2000) -> dict[str, float]:
    import psycopg

    conn = await psycopg.AsyncConnection.connect(database_url.replace("postgres://", "postgresql://"))
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_floor (id bigserial primary key, tenant_id int not null, "
            "conversation_id bigint not null, wa_message_id text unique, direction smallint, body text, "
            "created_at timestamptz default now())"
        )
        await conn.execute("CREATE INDEX IF NOT EXISTS bench_floor_conv ON bench_floor (conversation_id, created_at)")
        await conn.execute("TRUNCATE bench_floor")
        await conn.commit()
        times: list[float] = []
        tag = time.time_ns()
        for i in range(n):
            start = time.perf_counter()
            await conn.execute(
                "INSERT INTO bench_floor (tenant_id, conversation_id, wa_message_id, direction, body) "
                "VALUES (1, %s, %s, 1, %s)",
                (i % 50, f"wamid.floor.{tag}.{i}", "hello " * 10),
            )
            await conn.commit()
            times.append(time.perf_counter() - start)
        await conn.execute("DROP TABLE bench_floor")
        await conn.commit()
    finally:
        await conn.close()
    return {k: ms(v) if k != "n" else v for k, v in summary(times[200:]).items()}


async def floor_redis(redis_url: str, n: int = 2000) -> dict[str, float]:
    import redis.asyncio as aioredis

    pub = aioredis.Redis.from_url(redis_url)
    sub = aioredis.Redis.from_url(redis_url)
    pubsub = sub.pubsub()
    await pubsub.subscribe("bench:floor")
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    times: list[float] = []
    try:
        for i in range(n):
            start = time.perf_counter()
            await pub.publish("bench:floor", json.dumps({"type": "message:new", "i": i, "pad": "x" * 40}))
            while True:
                message = await pubsub.get_message(timeout=2)
                if message is not None and message["type"] == "message":
                    break
            times.append(time.perf_counter() - start)
    finally:
        await pubsub.aclose()
        await pub.aclose()
        await sub.aclose()
    return {k: ms(v) if k != "n" else v for k, v in summary(times[200:]).items()}


async def ws_echo(uri: str, n: int = 2000) -> dict[str, float]:
    async with connect(uri, compression=None, ping_interval=None) as ws:
        times: list[float] = []
        payload = json.dumps({"type": "ping", "data": {"pad": "x" * 60}})
        for _ in range(n):
            start = time.perf_counter()
            await ws.send(payload)
            await ws.recv()
            times.append(time.perf_counter() - start)
    return {k: ms(v) if k != "n" else v for k, v in summary(times[200:]).items()}


def start_wsbare(log_dir: Path) -> procs.Proc:
    port = procs.free_port()
    proc = procs.start(
        "wsbare", [sys.executable, "-m", "bench.wsbare", str(port)], env=_env(), log_dir=log_dir, port=port
    )
    procs.wait_until(proc, lambda: procs.port_accepts(port), timeout=10, what="listening")
    return proc


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONHASHSEED": "0"}


async def echo_load(uri: str, *, sockets: int, rate: float, duration: float) -> dict[str, Any]:
    """Open-loop echo over many sockets (the shape of M3): each socket sends every sockets/rate seconds."""
    conns: list[ClientConnection] = []
    for _ in range(sockets):
        conns.append(await connect(uri, compression=None, ping_interval=None))
    sent: dict[str, float] = {}
    lat: list[float] = []
    lost = 0

    async def reader(ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                now = time.perf_counter()
                key = json.loads(raw)["data"]["k"]
                start = sent.pop(key, None)
                if start is not None:
                    lat.append(now - start)
        except Exception:
            pass

    readers = [asyncio.create_task(reader(ws)) for ws in conns]
    count = int(rate * duration)
    begin = time.perf_counter()
    for i in range(count):
        delay = begin + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        key = f"e{i}"
        ws = conns[i % sockets]
        sent[key] = time.perf_counter()
        await ws.send(json.dumps({"type": "typing:start", "data": {"conversation_id": i % sockets, "k": key}}))
    deadline = time.perf_counter() + 5
    while sent and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    lost = len(sent)
    for ws in conns:
        await ws.close()
    for task in readers:
        task.cancel()
    warm = int(len(lat) * 0.1)
    result: dict[str, Any] = {k: ms(v) if k != "n" else v for k, v in summary(lat[warm:]).items()}
    result["lost"] = lost
    result["sent"] = count
    return result


async def broadcast_fanout(uri: str, *, n: int, sends: int, size: int, gap: float = 0.5) -> dict[str, Any]:
    """bare websockets.broadcast to n client sockets: per-delivery latency and time-to-last per send."""
    clients: list[ClientConnection] = []
    sem = asyncio.Semaphore(100)

    async def one() -> None:
        async with sem:
            clients.append(await connect(uri, compression=None, ping_interval=None, max_queue=None))

    await asyncio.gather(*(one() for _ in range(n)))
    control = await connect(uri, compression=None, ping_interval=None, max_queue=None)
    sent_at: dict[int, float] = {}
    per: list[float] = []
    last: dict[int, float] = {}
    got: dict[int, int] = {}

    async def reader(ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                now = time.perf_counter()
                k = json.loads(raw)["id"]
                start = sent_at.get(k)
                if start is not None:
                    per.append(now - start)
                    last[k] = now
                    got[k] = got.get(k, 0) + 1
        except Exception:
            pass

    readers = [asyncio.create_task(reader(ws)) for ws in clients]
    for k in range(sends):
        sent_at[k] = time.perf_counter()
        await control.send(json.dumps({"op": "broadcast", "id": k, "size": size}, separators=(",", ":")))
        await asyncio.sleep(gap)
    deadline = time.perf_counter() + 10
    while sum(got.values()) < n * sends and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    ttl = [last[k] - sent_at[k] for k in last]
    await control.close()
    await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)
    for task in readers:
        task.cancel()
    return {
        "per_p50": ms(pct(per, 50)),
        "per_p99": ms(pct(per, 99)),
        "ttl_p50": ms(pct(ttl, 50)),
        "ttl_max": ms(max(ttl)) if ttl else float("nan"),
        "delivered": sum(got.values()),
        "expected": n * sends,
    }


async def idle_memory(port: int, proc: procs.Proc, levels: list[int], idle: float) -> dict[int, float]:
    """KiB of server RSS per idle socket at each level (sockets opened cumulatively)."""
    uri = f"ws://127.0.0.1:{port}/"
    base = proc.rss_kib()
    clients: list[ClientConnection] = []
    result: dict[int, float] = {}
    sem = asyncio.Semaphore(100)

    async def one() -> None:
        async with sem:
            clients.append(await connect(uri, compression=None, ping_interval=None))

    for level in levels:
        await asyncio.gather(*(one() for _ in range(level - len(clients))))
        await asyncio.sleep(idle)
        result[level] = (proc.rss_kib() - base) / level
    await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)
    return result


# --- wrk --------------------------------------------------------------------------------------------------------

POST_LUA = """
local lines = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do
    local tab = line:find("\\t")
    lines[#lines + 1] = {line:sub(1, tab - 1), line:sub(tab + 1)}
  end
end
request = function()
  i = i + 1
  local item = lines[(i % #lines) + 1]
  return wrk.format("POST", nil, {["Content-Type"] = "application/json", ["X-Hub-Signature-256"] = item[1]}, item[2])
end
"""


def wrk_bin() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    return found


def wrk(url: str, bodies: list[tuple[str, bytes]], *, connections: int, duration: int) -> dict[str, Any]:
    """Closed-loop POSTs with wrk -t1 cycling through (signature, body) pairs. Returns req/s, p50/p99, non-2xx."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-wrk-"))
    script = workdir / "post.lua"
    data = workdir / "bodies.tsv"
    script.write_text(POST_LUA)
    data.write_bytes(b"".join(sig.encode() + b"\t" + body + b"\n" for sig, body in bodies))
    out = subprocess.run(
        [wrk_bin(), "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url, "--", str(data)],
        capture_output=True,
        text=True,
        timeout=duration + 30,
    ).stdout
    shutil.rmtree(workdir, ignore_errors=True)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)

    def lat(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {
        "rps": float(rps.group(1)) if rps else float("nan"),
        "requests": int(total.group(1)) if total else 0,
        "p50": lat("50"),
        "p99": lat("99"),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
        "raw": out,
    }
