"""Recorded payloads (fixtures/*.json, written from Meta's documented shapes) and signed delivery helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import HttpResponse
from django.test import Client

from webhooks.parsers import signature_for

FIXTURES = Path(__file__).parent / "fixtures"
URL = "/webhooks/whatsapp/"
ACME_PNID = "111000111"
GLOBEX_PNID = "222000222"


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def cases(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(raw(name))
    return data


def message(name: str, case: str, **changes: Any) -> dict[str, Any]:
    item = dict(cases(name)[case])
    item.update(changes)
    return item


def body(
    *,
    messages: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
    phone_number_id: str = ACME_PNID,
    contacts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One messages change for one number, Meta's envelope around it."""
    value: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001111", "phone_number_id": phone_number_id},
    }
    if messages:
        senders = {m.get("from") for m in messages if m.get("from")}
        value["contacts"] = contacts or [{"profile": {"name": "Maria Schmidt"}, "wa_id": s} for s in sorted(senders)]
        value["messages"] = messages
    if statuses:
        value["statuses"] = statuses
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "900000000000001", "changes": [{"field": "messages", "value": value}]}],
    }


def encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def post(client: Client, raw_body: bytes, *, secret: str | None = None, signature: str | None = "auto") -> HttpResponse:
    """POST bytes as Meta would: signed with the app secret (default) unless a signature (or None) is given."""
    headers = {}
    if signature == "auto":
        signature = signature_for(raw_body, secret or settings.WHATSAPP_APP_SECRET)
    if signature is not None:
        headers["HTTP_X_HUB_SIGNATURE_256"] = signature
    return client.post(URL, data=raw_body, content_type="application/json", **headers)  # type: ignore[return-value]


def deliver(client: Client, data: dict[str, Any], **kwargs: Any) -> HttpResponse:
    return post(client, encode(data), **kwargs)


def text_message(wamid: str, *, wa_id: str, text: str = "hello") -> dict[str, Any]:
    """A minimal inbound text message as it sits in a body's `messages` list."""
    return {"from": wa_id, "id": wamid, "timestamp": "1764288000", "type": "text", "text": {"body": text}}


def stored(data: dict[str, Any], secret: str) -> int:
    """Store a body as the webhook view would have (signed with `secret`, not yet processed); returns its id."""
    from webhooks.models import SignatureVerdict, WebhookEvent

    raw_body = encode(data)
    event = WebhookEvent.objects.create(
        raw_body=raw_body,
        body_sha256="0" * 64,
        headers={"x-hub-signature-256": signature_for(raw_body, secret)},
        signature=SignatureVerdict.VALID,
    )
    return event.pk
