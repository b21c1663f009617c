"""A fake Graph API served on loopback, so the real httpx client is tested end to end (no mocks of our code).

Defaults behave like Meta: sends get a wamid, uploads a media id, media lookups a short-lived download URL that
needs the Bearer token. Tests script other answers per (method, path): Graph error envelopes, 5xx, 429, slow
answers (client timeouts) and dropped connections.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import secrets
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

VERSION = "v25.0"
TOKEN = "test-access-token"


@dataclass
class Reply:
    status: int = 200
    json: Any = None
    body: bytes = b""
    content_type: str = "application/json"
    delay: float = 0.0  # seconds before answering (a client with a shorter timeout gives up)
    drop: bool = False  # close the connection without answering


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def graph_error(code: int, message: str, *, details: str = "", status: int = 400, **extra: Any) -> Reply:
    error: dict[str, Any] = {
        "message": message,
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": details or message},
        "fbtrace_id": "AbCdEfGh123",
        **extra,
    }
    return Reply(status=status, json={"error": error})


@dataclass
class FakeGraph:
    token: str = TOKEN
    requests: list[Recorded] = field(default_factory=list)
    scripts: dict[tuple[str, str], deque[Reply]] = field(default_factory=lambda: defaultdict(deque))
    media: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    downloads: dict[str, str] = field(default_factory=dict)  # download token -> media id
    expire_next_downloads: int = 0  # answer this many download URLs with 404, as an expired URL would be
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def script(self, method: str, path: str, *replies: Reply) -> None:
        """Answer the next requests to METHOD /v25.0<path> with these replies, in order, then the default."""
        self.scripts[(method, f"/{VERSION}{path}")].extend(replies)

    def add_media(self, media_id: str, content: bytes, mime_type: str) -> None:
        self.media[media_id] = (content, mime_type)

    def expire_downloads(self) -> None:
        self.downloads.clear()

    def sent(self, path_suffix: str = "/messages") -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith(path_suffix)]

    # --- serving ---------------------------------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        with self._lock:
            self.requests.append(Recorded(method, path, headers, body))
            queue = self.scripts.get((method, path.split("?")[0]))
            if queue:
                return queue.popleft()
        if headers.get("authorization") != f"Bearer {self.token}":
            return graph_error(190, "Error validating access token: Session has expired", status=401)
        clean = path.split("?")[0]
        parts = clean.strip("/").split("/")
        if parts[0] == "download" and method == "GET":
            media_id = self.downloads.get(parts[1]) if len(parts) > 1 else None
            if self.expire_next_downloads > 0:
                self.expire_next_downloads -= 1
                media_id = None
            if media_id is None or media_id not in self.media:
                return Reply(status=404, body=b"Not Found", content_type="text/plain")
            content, mime = self.media[media_id]
            return Reply(body=content, content_type=mime)
        if parts[0] != VERSION:
            return Reply(status=404, json={"error": {"message": "unknown path", "code": 100}})
        if method == "POST" and parts[-1] == "messages":
            payload = json.loads(body or b"{}")
            if payload.get("status") == "read":
                return Reply(json={"success": True})
            n = next(self._ids)
            return Reply(
                json={
                    "messaging_product": "whatsapp",
                    "contacts": [{"input": payload.get("to", ""), "wa_id": str(payload.get("to", "")).lstrip("+")}],
                    "messages": [{"id": f"wamid.FAKE{n:06d}"}],
                }
            )
        if method == "POST" and parts[-1] == "media":
            return Reply(json={"id": f"upload-{next(self._ids)}"})
        if method == "GET" and len(parts) == 2:
            media_id = parts[1]
            if media_id not in self.media:
                return graph_error(100, "Unsupported get request. Object does not exist", status=400)
            content, mime = self.media[media_id]
            token = secrets.token_hex(8)
            self.downloads[token] = media_id
            return Reply(
                json={
                    "messaging_product": "whatsapp",
                    "url": f"{self.url}/download/{token}",
                    "mime_type": mime,
                    "sha256": hashlib.sha256(content).hexdigest(),
                    "file_size": len(content),
                    "id": media_id,
                }
            )
        return graph_error(100, "Unsupported request", status=400)


def _handler(fake: FakeGraph) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            reply = fake.handle(self.command, self.path, headers, body)
            if reply.delay:
                time.sleep(reply.delay)
            if reply.drop:
                self.close_connection = True
                self.connection.close()
                return
            payload = json.dumps(reply.json).encode() if reply.json is not None else reply.body
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up (its timeout was shorter than our delay)

        do_GET = _serve
        do_POST = _serve
        do_DELETE = _serve

    return Handler


@pytest.fixture
def fake_graph(settings: Any) -> Iterator[FakeGraph]:
    """A running fake Graph API; the client's base URL points at it and its timeout is short."""
    fake = FakeGraph()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    settings.WHATSAPP_GRAPH_BASE_URL = fake.url
    settings.WHATSAPP_API_VERSION = VERSION
    settings.WHATSAPP_HTTP_TIMEOUT = 0.5
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
