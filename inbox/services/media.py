"""Media: checking outbound files, downloading inbound ones from Meta into Django's storage.

Meta's facts (shared/reference/whatsapp-cloud-api.md §5): `GET /<media_id>` gives a URL that lives 5 minutes, fetched
with the same Bearer token; webhook media ids die after 7 days, so download promptly. Files are stored under a
tenant prefix and served only through the API's membership-checking view.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import mimetypes
import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import transaction

from inbox.models import Direction, MediaState, Message
from inbox.services.core import message_emit_new
from inbox.tasking import enqueue_on_commit
from inbox.whatsapp.client import GraphClient, GraphError
from inbox.whatsapp.sandbox import transport_for
from tenants.models import Tenant

logger = logging.getLogger(__name__)

MB = 1024 * 1024
# What Meta accepts for sending (Meta docs, "Supported media types").
OUTBOUND_MEDIA: dict[str, tuple[frozenset[str], int]] = {
    "image": (frozenset({"image/jpeg", "image/png"}), 5 * MB),
    "video": (frozenset({"video/mp4", "video/3gpp"}), 16 * MB),
    "audio": (frozenset({"audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"}), 16 * MB),
    "document": (
        frozenset(
            {
                "text/plain",
                "application/pdf",
                "application/vnd.ms-excel",
                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                "application/msword",
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                "application/vnd.ms-powerpoint",
                "application/vnd.openxmlformats-officedocument.presentationml.presentation",
            }
        ),
        100 * MB,
    ),
    "sticker": (frozenset({"image/webp"}), 500 * 1024),
}
INBOUND_MAX_BYTES = 100 * MB  # Cloud API's inbound limit; larger files never reach us (131052)


def media_check(*, type: str, content_type: str, size: int) -> None:
    """Raise ValidationError({"media": ...}) unless Meta would accept this file for this message type."""
    rule = OUTBOUND_MEDIA.get(type)
    if rule is None:
        raise ValidationError({"type": f"{type!r} cannot carry media"})
    allowed, limit = rule
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime not in allowed:
        raise ValidationError(
            {"media": f"{mime or 'unknown type'} cannot be sent as {type}: use {', '.join(sorted(allowed))}"}
        )
    if size > limit:
        raise ValidationError({"media": f"{type} files are limited to {limit // 1024} KB by WhatsApp"})
    if size <= 0:
        raise ValidationError({"media": "the file is empty"})


def max_download_bytes() -> int:
    return int(getattr(settings, "WHATSAPP_MEDIA_MAX_BYTES", INBOUND_MAX_BYTES))


def _filename(message: Message, mime: str) -> str:
    ext = mimetypes.guess_extension(mime.split(";")[0].strip()) if mime else None
    base = message.media_filename or f"{message.type}{ext or ''}"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "file"
    return f"{message.pk}-{safe[-120:]}"


def _sha_matches(expected: str, content: bytes) -> bool:
    # Webhook examples carry base64, the media lookup hex: accept either form.
    digest = hashlib.sha256(content).digest()
    return expected in (digest.hex(), base64.b64encode(digest).decode())


def media_download(*, message_id: int) -> Message:
    """Fetch an inbound message's media (id → short-lived URL → bytes) into storage; log message:new (upsert).

    A URL that expired between lookup and download is looked up again once. Raises GraphError for the caller (the
    task) to retry or give up on with media_fail.
    """
    message = Message.objects.select_related("number").get(pk=message_id)
    if message.media_state == MediaState.READY or not message.media_id:
        return message
    transport = transport_for(message.number)
    try:
        for attempt in (1, 2):
            info = transport.media_info(message.media_id)
            try:
                content = transport.download_media(info.url, max_bytes=max_download_bytes())
                break
            except GraphError as exc:
                if attempt == 1 and exc.http_status in (403, 404, 410):
                    continue  # the 5-minute URL expired: ask for a fresh one
                raise
    finally:
        if isinstance(transport, GraphClient):
            transport.close()
    if message.media_sha256 and not _sha_matches(message.media_sha256, content):
        logger.warning("media of message %s does not match Meta's sha256", message.pk)
    mime = message.media_mime_type or info.mime_type or "application/octet-stream"
    with transaction.atomic():
        locked = Message.objects.select_for_update().get(pk=message.pk)
        if locked.media_state == MediaState.READY:
            return locked
        locked.media_file.save(_filename(locked, mime), ContentFile(content), save=False)
        locked.media_state = MediaState.READY
        locked.media_size = len(content)
        locked.media_mime_type = mime
        locked.media_error = ""
        locked.save(update_fields=["media_file", "media_state", "media_size", "media_mime_type", "media_error"])
        message_emit_new(locked)
    return locked


@transaction.atomic
def media_fail(*, message_id: int, error: str) -> Message:
    """Give up on a download for now: media_state failed with the reason (media_retry starts again)."""
    locked = Message.objects.select_for_update().get(pk=message_id)
    if locked.media_state != MediaState.READY:
        locked.media_state = MediaState.FAILED
        locked.media_error = error[:300]
        locked.save(update_fields=["media_state", "media_error"])
        message_emit_new(locked)
    return locked


@transaction.atomic
def media_retry(*, tenant: Tenant, message: Message) -> Message:
    """Queue the download of a failed inbound media again."""
    locked = Message.objects.select_for_update().get(pk=message.pk, tenant=tenant)
    if locked.direction != Direction.INBOUND or not locked.media_id or locked.media_state != MediaState.FAILED:
        raise ValidationError({"media": "only a failed download of received media can be retried"})
    locked.media_state = MediaState.PENDING
    locked.media_error = ""
    locked.save(update_fields=["media_state", "media_error"])
    message_emit_new(locked)
    from inbox.tasks import media_download as media_download_task

    enqueue_on_commit(media_download_task, tenant_id=tenant.pk, message_id=locked.pk)
    return locked
