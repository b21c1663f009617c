"""Run webhook processing again for stored events (after a fix, or for a number added later)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from webhooks.models import ProcessingState, SignatureVerdict, WebhookEvent
from webhooks.services import webhook_reprocess


class Command(BaseCommand):
    help = "Reprocess stored WhatsApp webhook events: by id, or every failed one. Rejected (unsigned) ones never."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--id", type=int, action="append", default=[], help="event id (repeatable)")
        parser.add_argument("--failed", action="store_true", help="every failed event")
        parser.add_argument("--since-hours", type=int, default=None, help="with --failed: only this recent")

    def handle(self, *args: Any, **options: Any) -> None:
        ids: list[int] = list(options["id"])
        if options["failed"]:
            failed = WebhookEvent.objects.filter(state=ProcessingState.FAILED, signature=SignatureVerdict.VALID)
            if options["since_hours"] is not None:
                failed = failed.filter(received_at__gte=timezone.now() - timedelta(hours=options["since_hours"]))
            ids += list(failed.order_by("received_at").values_list("pk", flat=True))
        if not ids:
            raise CommandError("give --id N or --failed")
        for event_id in ids:
            event = webhook_reprocess(event_id)
            if event is None:
                self.stdout.write(f"webhook {event_id}: not reprocessed (unknown, rejected or being processed)")
            else:
                note = f": {event.last_error.splitlines()[0]}" if event.last_error else ""
                self.stdout.write(f"webhook {event_id}: {event.state}{note}")
