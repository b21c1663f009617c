"""The WhatsApp Cloud API webhook: Meta's verification handshake (GET) and event delivery (POST)."""

from __future__ import annotations

import hmac
import logging

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from tenants.models import WhatsAppNumber
from webhooks.services import webhook_ingest

logger = logging.getLogger(__name__)

KEPT_HEADERS = ("CONTENT_TYPE", "HTTP_USER_AGENT", "CONTENT_LENGTH")


def _verify_tokens() -> list[str]:
    """The default verify token and those of numbers that have their own (one callback URL serves them all)."""
    tokens = [settings.WHATSAPP_VERIFY_TOKEN] if settings.WHATSAPP_VERIFY_TOKEN else []
    numbers = WhatsAppNumber.objects.with_scopes_disabled().exclude(verify_token="")
    tokens += [n.verify_token for n in numbers if n.verify_token]
    return tokens


@csrf_exempt  # Meta cannot send a CSRF token; the HMAC signature authenticates the POST
@require_http_methods(["GET", "POST"])
def whatsapp_webhook(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _handshake(request)
    return _receive(request)


def _handshake(request: HttpRequest) -> HttpResponse:
    # The GET carries no signature: it is checked by verify token only (a signature check here breaks registration).
    mode = request.GET.get("hub.mode", "")
    token = request.GET.get("hub.verify_token", "")
    challenge = request.GET.get("hub.challenge", "")
    if mode == "subscribe" and token and any(hmac.compare_digest(token.encode(), t.encode()) for t in _verify_tokens()):
        return HttpResponse(challenge, content_type="text/plain")
    return HttpResponseForbidden("verification failed", content_type="text/plain")


def _read_body(request: HttpRequest, limit: int) -> bytes | None:
    """The raw bytes, read under this view's own limit (Meta sends up to 3 MB; Django's default stops at 2.5 MB).

    Reading the stream directly bypasses DATA_UPLOAD_MAX_MEMORY_SIZE for this view only.
    """
    declared = request.META.get("CONTENT_LENGTH") or ""
    if declared.isdigit() and int(declared) > limit:
        return None
    body = request.read(limit + 1)
    return None if len(body) > limit else body


def _receive(request: HttpRequest) -> HttpResponse:
    body = _read_body(request, settings.WHATSAPP_WEBHOOK_MAX_BYTES)
    if body is None:
        return HttpResponse("payload too large", status=413, content_type="text/plain")
    headers = {key.lower(): str(request.META[key]) for key in KEPT_HEADERS if key in request.META}
    try:
        result = webhook_ingest(
            raw_body=body, signature_header=request.headers.get("X-Hub-Signature-256"), headers=headers
        )
    except Exception:
        # Not stored (database down): anything but 200 makes Meta retry, for up to 7 days.
        logger.exception("webhook could not be stored; answering 503 so Meta retries")
        return HttpResponse("temporarily unavailable", status=503, content_type="text/plain")
    if result.http_status != 200:
        return HttpResponseForbidden("invalid signature", content_type="text/plain")
    return HttpResponse("ok", content_type="text/plain")
