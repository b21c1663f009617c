"""A bare `websockets` server (no Django, no Channels): the baselines for echo RTT, fan-out and memory per socket.

Every text frame is echoed back, except a control frame {"op": "broadcast", "id": k, "size": n}, which is answered
by one `websockets.broadcast()` of an n-byte JSON frame to every connected socket (the sender included).

    python -m bench.wsbare PORT
"""

from __future__ import annotations

import asyncio
import json
import sys

import websockets
from websockets.asyncio.server import ServerConnection, serve

CONNECTIONS: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    CONNECTIONS.add(ws)
    try:
        async for message in ws:
            if isinstance(message, str) and message.startswith('{"op":"broadcast"'):
                control = json.loads(message)
                head = json.dumps({"type": "bench:broadcast", "id": control["id"], "pad": ""})
                frame = head[:-2] + "x" * max(0, int(control["size"]) - len(head)) + '"}'
                websockets.broadcast(CONNECTIONS, frame)
            else:
                await ws.send(message)
    finally:
        CONNECTIONS.discard(ws)


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, max_queue=None, ping_interval=20):
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
