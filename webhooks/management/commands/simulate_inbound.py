"""Post a signed inbound WhatsApp webhook, as Meta would, so anyone can watch messages arrive live.

    python manage.py simulate_inbound --tenant demo --from 15550001 "Hello"
    python manage.py simulate_inbound --tenant demo --from 15550001 --image photo.jpg "caption"
    python manage.py simulate_inbound --tenant demo --from 15550001 --react-to wamid.X --emoji 👍

By default it posts to SANDBOX_WEBHOOK_URL (or http://127.0.0.1:8000/webhooks/whatsapp/) so the running server
broadcasts it; --local ingests it in this process instead (same verification, storage and processing).
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

import httpx
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from inbox.whatsapp.sandbox import inbound_body, new_wamid, post_signed, sandbox_media_store
from tenants.models import Tenant, WhatsAppNumber

DEFAULT_URL = "http://127.0.0.1:8000/webhooks/whatsapp/"
MEDIA_OPTIONS = ("image", "video", "audio", "document", "sticker")


class Command(BaseCommand):
    help = "Simulate an inbound WhatsApp message (text, media, location or reaction) through the signed webhook."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("text", nargs="?", default="", help="message text (or media caption)")
        parser.add_argument("--tenant", required=True, help="tenant slug")
        parser.add_argument("--from", dest="sender", required=True, help="the customer's phone (wa_id), digits")
        parser.add_argument("--name", default="", help="the customer's WhatsApp profile name")
        parser.add_argument("--number", default="", help="phone_number_id of the tenant's number (default: first)")
        for kind in MEDIA_OPTIONS:
            parser.add_argument(f"--{kind}", metavar="PATH", default="", help=f"attach a file as {kind}")
        parser.add_argument("--location", metavar="LAT,LNG", default="", help="send a location")
        parser.add_argument("--react-to", default="", help="wamid of the message to react to")
        parser.add_argument("--emoji", default=None, help="with --react-to; empty removes the reaction")
        parser.add_argument("--reply-to", default="", help="wamid of the message this one replies to")
        parser.add_argument("--url", default="", help="webhook URL to post to")
        parser.add_argument("--local", action="store_true", help="ingest in this process instead of posting")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"no tenant {options['tenant']!r}")
        numbers = WhatsAppNumber.objects.with_scopes_disabled().filter(tenant=tenant).order_by("pk")
        if options["number"]:
            numbers = numbers.filter(phone_number_id=options["number"])
        number = numbers.first()
        if number is None:
            raise CommandError(f"tenant {tenant.slug} has no such WhatsApp number")
        wa_id = "".join(ch for ch in options["sender"] if ch.isdigit())
        if not wa_id:
            raise CommandError("--from needs a phone number")
        message = self._message(options)
        if options["reply_to"]:
            message["context"] = {"from": number.display_phone_number, "id": options["reply_to"]}
        wamid = new_wamid()
        body = inbound_body(
            number, wa_id=wa_id, name=options["name"] or f"+{wa_id}", message=message, wa_message_id=wamid
        )
        url = "" if options["local"] else (options["url"] or settings.SANDBOX_WEBHOOK_URL or DEFAULT_URL)
        try:
            status = post_signed(number, body, url=url)
        except httpx.HTTPError as exc:
            raise CommandError(f"could not post to {url}: {exc} (is the server running? try --local)") from exc
        if status != 200:
            raise CommandError(f"the webhook answered {status}")
        self.stdout.write(self.style.SUCCESS(f"delivered {message['type']} {wamid} from +{wa_id} to {tenant.slug}"))

    def _message(self, options: dict[str, Any]) -> dict[str, Any]:
        text: str = options["text"]
        if options["react_to"]:
            reaction: dict[str, str] = {"message_id": options["react_to"]}
            if options["emoji"]:
                reaction["emoji"] = options["emoji"]
            return {"type": "reaction", "reaction": reaction}
        for kind in MEDIA_OPTIONS:
            if options[kind]:
                path = Path(options[kind])
                if not path.is_file():
                    raise CommandError(f"no file {path}")
                mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                media: dict[str, Any] = {"id": sandbox_media_store(path.read_bytes()), "mime_type": mime, "sha256": ""}
                if text and kind in ("image", "video", "document"):
                    media["caption"] = text
                if kind == "document":
                    media["filename"] = path.name
                if kind == "audio":
                    media["voice"] = path.suffix == ".ogg"
                return {"type": kind, kind: media}
        if options["location"]:
            try:
                lat, lng = (float(v) for v in options["location"].split(","))
            except ValueError as exc:
                raise CommandError("--location needs LAT,LNG") from exc
            location: dict[str, Any] = {"latitude": lat, "longitude": lng}
            if text:
                location["name"] = text
            return {"type": "location", "location": location}
        if not text:
            raise CommandError("give a text, a file, a location or --react-to")
        return {"type": "text", "text": {"body": text}}
