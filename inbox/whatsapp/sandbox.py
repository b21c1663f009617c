"""The sandbox transport: try the inbox without Meta credentials.

A number without an access token sends through here. A send gets a WhatsApp-like id at once; then `sent`,
`delivered` and `read` statuses are posted as signed webhooks through the real ingestion path (the running server's
URL when SANDBOX_WEBHOOK_URL is set, else the same in-process function the webhook view calls), spaced out in time
so a person can watch the ticks move. The same body builders serve `simulate_inbound`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from asgiref.sync import SyncToAsync, sync_to_async
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import close_old_connections, connection

from inbox.whatsapp.client import GraphClient, GraphError, MediaInfo, Transport
from tenants.models import WhatsAppNumber
from webhooks.parsers import signature_for

logger = logging.getLogger(__name__)

DEFAULT_STATUS_DELAYS = (1.5, 4.0, 8.0)  # seconds after the send until sent, delivered, read
SANDBOX_MEDIA_DIR = "sandbox-media"


def new_wamid() -> str:
    return "wamid.SANDBOX" + secrets.token_hex(16).upper()


class SandboxTransport:
    """Behaves like the Graph API for one number, without talking to Meta."""

    def __init__(self, number: WhatsAppNumber) -> None:
        self.number = number

    def send_message(self, payload: dict[str, Any]) -> str:
        return new_wamid()

    def mark_read(self, wa_message_id: str) -> None:
        return None

    def upload_media(self, content: bytes, mime_type: str, filename: str) -> str:
        return "sbx" + secrets.token_hex(12)  # nobody downloads a sandbox send's media: no copy is kept

    def media_info(self, media_id: str) -> MediaInfo:
        path = f"{SANDBOX_MEDIA_DIR}/{media_id}"
        if not media_id.replace("-", "").isalnum() or not default_storage.exists(path):
            raise GraphError(code=100, title="Media not found", detail=f"no sandbox media {media_id}", retryable=False)
        return MediaInfo(url=f"sandbox:{media_id}", mime_type="", sha256="", file_size=default_storage.size(path))

    def download_media(self, url: str, *, max_bytes: int) -> bytes:
        media_id = url.removeprefix("sandbox:")
        with default_storage.open(f"{SANDBOX_MEDIA_DIR}/{media_id}", "rb") as handle:
            content: bytes = handle.read(max_bytes + 1)
        if len(content) > max_bytes:
            raise GraphError(title="Media too large", detail=f"over {max_bytes} bytes", retryable=False)
        return content


def sandbox_media_store(content: bytes) -> str:
    """Keep bytes where the sandbox's media lookup finds them (simulate_inbound uses this for attachments)."""
    media_id = "sbx" + secrets.token_hex(12)
    default_storage.save(f"{SANDBOX_MEDIA_DIR}/{media_id}", ContentFile(content))
    return media_id


def transport_for(number: WhatsAppNumber) -> Transport:
    if number.is_sandbox:
        return SandboxTransport(number)
    return GraphClient(access_token=number.access_token, phone_number_id=number.phone_number_id)


# --- Webhook bodies shaped like Meta's -------------------------------------------------------------------------------


def envelope(number: WhatsAppNumber, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": number.waba_id or "sandbox-waba",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": number.display_phone_number,
                                "phone_number_id": number.phone_number_id,
                            },
                            **value,
                        },
                    }
                ],
            }
        ],
    }


def status_body(number: WhatsAppNumber, *, wa_message_id: str, recipient_id: str, status: str) -> dict[str, Any]:
    return envelope(
        number,
        {
            "statuses": [
                {
                    "id": wa_message_id,
                    "status": status,
                    "timestamp": str(int(time.time())),
                    "recipient_id": recipient_id,
                }
            ]
        },
    )


def inbound_body(
    number: WhatsAppNumber, *, wa_id: str, name: str, message: dict[str, Any], wa_message_id: str | None = None
) -> dict[str, Any]:
    """A messages webhook carrying one inbound message (message = {"type": ..., <type>: {...}, "context"?: ...})."""
    return envelope(
        number,
        {
            "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
            "messages": [
                {
                    "from": wa_id,
                    "id": wa_message_id or new_wamid(),
                    "timestamp": str(int(time.time())),
                    **message,
                }
            ],
        },
    )


def encode(body: dict[str, Any]) -> bytes:
    # Meta sends non-ASCII escaped as \uXXXX; so do we, so the same bytes are signed and sent.
    return json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode()


def post_signed(number: WhatsAppNumber, body: dict[str, Any], *, url: str | None = None) -> int:
    """Sign a body with the number's app secret and deliver it like Meta would. Returns the HTTP status."""
    raw = encode(body)
    signature = signature_for(raw, number.effective_app_secret())
    target = url if url is not None else settings.SANDBOX_WEBHOOK_URL
    if target:
        response = httpx.post(
            target,
            content=raw,
            headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature},
            timeout=30.0,
        )
        return response.status_code
    from webhooks.services import webhook_ingest

    result = webhook_ingest(raw_body=raw, signature_header=signature, headers={"sandbox": "in-process"})
    return result.http_status


# --- Status ticks ----------------------------------------------------------------------------------------------------


def status_delays() -> tuple[float, ...]:
    return tuple(getattr(settings, "WHATSAPP_SANDBOX_STATUS_DELAYS", DEFAULT_STATUS_DELAYS))


def status_post(*, phone_number_id: str, wa_message_id: str, recipient_id: str, status: str) -> None:
    number = WhatsAppNumber.objects.with_scopes_disabled().filter(phone_number_id=phone_number_id).first()
    if number is None:
        return
    code = post_signed(
        number, status_body(number, wa_message_id=wa_message_id, recipient_id=recipient_id, status=status)
    )
    if code != 200:
        logger.warning("sandbox status %s for %s answered %s", status, wa_message_id, code)


def background_timers() -> bool:
    """Whether one-process mode may use timer threads (tests turn this off: everything then runs inline)."""
    return bool(getattr(settings, "WHATSAPP_BACKGROUND_TIMERS", True))


def statuses_schedule(*, number: WhatsAppNumber, wa_message_id: str, recipient_id: str) -> None:
    """Deliver sent → delivered → read for a sandbox send (call after the wamid has committed)."""
    steps = list(zip(("sent", "delivered", "read"), status_delays() or (0.0, 0.0, 0.0), strict=False))
    kwargs = {"phone_number_id": number.phone_number_id, "wa_message_id": wa_message_id, "recipient_id": recipient_id}
    from config.celery import app

    if not app.conf.task_always_eager:
        from inbox.tasks import sandbox_status

        try:
            for status, delay in steps:
                sandbox_status.apply_async(kwargs={**kwargs, "status": status}, countdown=delay, retry=False)
        except Exception:  # the send itself succeeded; only the demo ticks are lost
            logger.warning("could not schedule sandbox statuses for %s", wa_message_id, exc_info=True)
        return
    if not background_timers():
        for status, _ in steps:  # inline, in order
            status_post(**kwargs, status=status)
        return

    # One process (embedded default): a background timer stands in for delayed tasks, one step after the other so
    # the ticks arrive in order.
    def step(index: int) -> None:
        status_post(**kwargs, status=steps[index][0])
        if index + 1 < len(steps):
            run_later(max(0.0, steps[index + 1][1] - steps[index][1]), lambda: step(index + 1))

    run_later(steps[0][1], lambda: step(0))


def run_later(delay: float, fn: Callable[[], None]) -> None:
    """Run fn in a daemon thread after delay seconds, with its own database connection.

    Under the ASGI server, fn runs the way a request's sync code does (sync_to_async from the server's event loop),
    so the broadcasts it makes reach the in-memory channel layer on that loop; a bare thread would not wake it.
    """
    loop: asyncio.AbstractEventLoop | None = None
    if getattr(SyncToAsync.threadlocal, "main_event_loop_pid", None) == os.getpid():
        loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)

    def target() -> None:
        close_old_connections()
        try:
            fn()
        except Exception:
            logger.exception("background sandbox work failed")
        finally:
            connection.close()

    def fire() -> None:
        if loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(sync_to_async(target, thread_sensitive=False)(), loop).result(120)
        else:
            target()

    timer = threading.Timer(delay, fire)
    timer.daemon = True
    timer.start()
