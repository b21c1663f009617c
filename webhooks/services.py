"""Webhook ingestion: verify → store raw → commit → enqueue; then processing that walks every change, idempotently.

Meta retries anything but a 200 for up to 7 days and keeps no history we could fetch later, so the raw body is
committed before we answer, and processing (which may fail, be retried, or be re-run by an operator) reads it
back from the database. Every write goes through the inbox services the REST API uses.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection, connections, router
from django.db.models import Q
from django.utils import timezone

from config import metrics
from config.celery import app as celery_app
from inbox.services import inbound
from inbox.tasking import IdBatcher, apply_with_ids
from tenants.models import WhatsAppNumber
from tenants.scoping import scopes_disabled, tenant_scope
from tenants.selectors import model_from_row, number_for_phone_id_unsafe
from webhooks.models import ProcessingState, SignatureVerdict, WebhookEvent
from webhooks.parsers import Change, ParseError, parse_body, phone_number_ids_lenient, signature_valid

logger = logging.getLogger(__name__)

REJECTED_BODY_KEEP = 64 * 1024  # a rejected body is kept for admins, truncated: it may be an attacker's
STUCK_AFTER = timedelta(minutes=5)
MAX_ATTEMPTS = 10


@dataclass(frozen=True)
class IngestResult:
    http_status: int
    event: WebhookEvent


def secrets_for(raw_body: bytes) -> list[str]:
    """App secrets that may have signed this body: those of the numbers it names, then the default one."""
    found: list[str] = []
    ids = phone_number_ids_lenient(raw_body)
    if ids:
        numbers = WhatsAppNumber.objects.with_scopes_disabled().filter(phone_number_id__in=ids)
        found = [n.effective_app_secret() for n in numbers]
    if settings.WHATSAPP_APP_SECRET:
        found.append(settings.WHATSAPP_APP_SECRET)
    return list(dict.fromkeys(s for s in found if s))


def _signed(raw_body: bytes, header: str) -> bool:
    # The common case (one Meta app for the SaaS) needs no parsing of an unauthenticated body.
    default = settings.WHATSAPP_APP_SECRET
    if default and signature_valid(raw_body, header, default):
        return True
    return any(signature_valid(raw_body, header, s) for s in secrets_for(raw_body) if s != default)


def webhook_ingest(*, raw_body: bytes, signature_header: str | None, headers: Mapping[str, str]) -> IngestResult:
    """Verify the signature, store the raw event and commit; enqueue processing for an accepted one.

    Raises DatabaseError when the event could not be stored: the caller must answer 5xx so Meta retries.
    """
    if not signature_header:
        verdict = SignatureVerdict.MISSING
    elif _signed(raw_body, signature_header):
        verdict = SignatureVerdict.VALID
    else:
        verdict = SignatureVerdict.INVALID
    accepted = verdict == SignatureVerdict.VALID
    metrics.WEBHOOKS_RECEIVED.labels(signature=verdict).inc()
    # One INSERT in autocommit: committed when it returns (no BEGIN/COMMIT round trips around it).
    event = _store(
        WebhookEvent(
            raw_body=raw_body if accepted else raw_body[:REJECTED_BODY_KEEP],
            body_sha256=hashlib.sha256(raw_body).hexdigest(),
            headers={**dict(headers), "x-hub-signature-256": signature_header or ""},
            signature=verdict,
            state=ProcessingState.RECEIVED if accepted else ProcessingState.REJECTED,
            last_error="" if accepted else f"signature {verdict}: not processed",
            received_at=timezone.now(),
        )
    )
    if not accepted:
        logger.warning("webhook %s rejected: signature %s", event.pk, verdict)
        return IngestResult(http_status=403, event=event)
    webhook_enqueue(event.pk)
    return IngestResult(http_status=200, event=event)


_COLUMNS: tuple[str, ...] = (
    "raw_body",
    "body_sha256",
    "headers",
    "signature",
    "state",
    "attempts",
    "last_error",
    "received_at",
)
_INSERT_SQL = (
    f"INSERT INTO {WebhookEvent._meta.db_table} ({', '.join(_COLUMNS)})"
    f" VALUES ({', '.join(['%s'] * len(_COLUMNS))}) RETURNING id"
)


def _store(event: WebhookEvent) -> WebhookEvent:
    """INSERT the event and return it saved. On PostgreSQL one raw statement with the parameters bound by the server:
    the ORM's compile-and-save path and psycopg quoting the body (up to 3 MB) into the SQL text were two thirds of
    the webhook view's CPU once the request itself got cheap (bench/profile_ingest.py). Elsewhere the ORM's save."""
    if connection.vendor != "postgresql":
        event.save(force_insert=True)
        return event
    from psycopg import Cursor as ServerCursor
    from psycopg.types.json import Jsonb

    values = [
        bytes(event.raw_body),
        event.body_sha256,
        Jsonb(event.headers),
        event.signature,
        event.state,
        event.attempts,
        event.last_error,
        event.received_at,
    ]
    connection.ensure_connection()
    with connection.wrap_database_errors, ServerCursor(connection.connection) as cursor:
        cursor.execute(_INSERT_SQL, values)  # prepared or not as the connection's prepare_threshold says
        row = cursor.fetchone()
    assert row is not None
    event.pk = row[0]
    event._state.adding = False
    event._state.db = connection.alias
    return event


def _publish_batch(event_ids: list[int]) -> None:
    from webhooks.tasks import webhook_process_many  # the tasks module imports this one

    apply_with_ids(webhook_process_many, {"event_ids": event_ids}, retry=False)


# A Celery publish is most of what a webhook POST costs above storing it (~1.2 of ~3 ms of CPU, bench/profile_ingest):
# under load the server hands its stored events to the worker in batches, one publish each (IdBatcher).
# Under a steady stream a batch waits up to 5 ms after the previous one went out, so several ids share a publish
# (~0.45 ms of CPU each); an id after a pause of more than 5 ms goes at once.
_batcher = IdBatcher(_publish_batch, max_batch=20, linger=0.005, name="webhook-enqueue")


def webhook_enqueue(event_id: int) -> None:
    """Hand a stored (committed) event to the inbound queue without waiting for the broker; if the publish fails or
    the process dies first, the sweeper picks it up (it is stored). Eager Celery (the embedded default) processes it
    here and now."""
    if celery_app.conf.task_always_eager:
        webhook_enqueue_many([event_id])
    else:
        _batcher.add(event_id)


def webhook_enqueue_many(event_ids: list[int]) -> None:
    """Hand stored events to the inbound queue now, in tasks of up to 20 (the sweeper's re-enqueue)."""
    for start in range(0, len(event_ids), _batcher.max_batch):
        chunk = event_ids[start : start + _batcher.max_batch]
        try:
            _publish_batch(chunk)
        except Exception:
            logger.exception("could not enqueue webhooks %s; the sweeper will process them", chunk)


def _claim(event_id: int) -> WebhookEvent | None:
    """received/failed → processing, once: two workers given the same event do not both walk it.

    One statement (UPDATE … RETURNING, PostgreSQL and SQLite ≥ 3.35): the claimed row comes back with it, turned into
    the instance as Model.objects.raw() would (tenants.selectors.model_from_row) without its per-call machinery.
    """
    now = timezone.now()
    db = router.db_for_write(WebhookEvent)
    with connections[db].cursor() as cursor:
        cursor.execute(
            _claim_sql(_async_commit(db)),
            [
                ProcessingState.PROCESSING.value,
                now,
                event_id,
                SignatureVerdict.VALID.value,
                ProcessingState.RECEIVED.value,
                ProcessingState.FAILED.value,
                ProcessingState.PROCESSING.value,
                now - STUCK_AFTER,
            ],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    event: WebhookEvent
    event, _ = model_from_row(WebhookEvent, row, 0, db)
    return event


# The claim and the final state need not wait for their commit to reach the disk (PostgreSQL: synchronous_commit off
# for that one statement's transaction, set from inside it). Lost in a crash, a claim leaves the event received and
# a final state leaves it processing: the sweeper hands either back to the queue, and processing it again changes
# nothing twice. A later synchronous commit (the message's) flushes them anyway: the log is written in order. What
# must be durable before anyone sees it, the stored body and each message, still is.
_ASYNC_COMMIT = " FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit"


def _async_commit(db: str) -> str:
    """The clause for a statement that commits on its own: not inside a transaction, whose other writes' commit
    the setting would reach as well."""
    connection = connections[db]
    own = connection.vendor == "postgresql" and connection.get_autocommit() and not connection.in_atomic_block
    return _ASYNC_COMMIT if own else ""


@functools.cache
def _claim_sql(async_commit: str) -> str:
    table = WebhookEvent._meta.db_table
    return (
        f"UPDATE {table} SET state = %s, attempts = attempts + 1, processed_at = %s{async_commit}"
        " WHERE id = %s AND signature = %s"
        " AND (state IN (%s, %s) OR (state = %s AND processed_at < %s))"
        f" RETURNING {', '.join(f.column for f in WebhookEvent._meta.concrete_fields)}"
    )


def _finish(event: WebhookEvent) -> None:
    """WebhookEvent.objects.filter(pk=event.pk).update(state=..., last_error=..., processed_at=...) written out, the
    values prepared by the model's own fields (the ORM's compilation of it was a tenth of a message's CPU)."""
    db = router.db_for_write(WebhookEvent)
    connection = connections[db]
    fields = _FINISH_FIELDS
    params = [f.get_db_prep_save(getattr(event, f.attname), connection) for f in fields]
    qn = connection.ops.quote_name
    sql = (
        f"UPDATE {qn(WebhookEvent._meta.db_table)} SET {', '.join(f'{qn(f.column)} = %s' for f in fields)}"
        f"{_async_commit(db)} WHERE {qn(WebhookEvent._meta.pk.column)} = %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, event.pk])


_FINISH_FIELDS = tuple(WebhookEvent._meta.get_field(name) for name in ("state", "last_error", "processed_at"))


def webhook_process(event_id: int) -> WebhookEvent | None:
    """Process one stored event: every entry, change, message, status and error, each item in its own transaction.

    Idempotent (wamid uniqueness, monotonic statuses), so running it again, or concurrently with a copy of the same
    body, changes nothing twice. Ends processed, or failed with the reason (re-runnable with webhook_reprocess).
    """
    # The claim and the final UPDATE touch no tenant's rows; they run with scopes disabled, the setting the number
    # route between them needs too, so a message changes the connection's row-level-security settings twice (into
    # its tenant and back) instead of three times: one round trip to PostgreSQL less per message.
    with scopes_disabled():
        event = _claim(event_id)
    if event is None:
        return None
    raw_body = bytes(event.raw_body)
    notes: list[str] = []
    failures: list[str] = []
    try:
        envelope = parse_body(raw_body)
    except ParseError as exc:
        failures.append(f"unparseable body: {exc}")
    else:
        notes.extend(envelope.problems)
        signature = str((event.headers or {}).get("x-hub-signature-256", ""))
        numbers: dict[str, WhatsAppNumber | None] = {}  # a body's changes usually name one number
        for index, change in enumerate(envelope.changes):
            try:
                _process_change(event, raw_body, change, signature, numbers, notes, failures)
            except Exception as exc:  # one bad change must not stop the rest; the event is marked failed
                logger.exception("webhook %s change %s failed", event.pk, index)
                failures.append(f"change {index} ({change.field}): {type(exc).__name__}: {exc}")
    event.state = (ProcessingState.FAILED if failures else ProcessingState.PROCESSED).value
    event.last_error = "\n".join(failures + notes)[:10000]
    event.processed_at = timezone.now()
    metrics.WEBHOOK_LAG.observe(max(0.0, (event.processed_at - event.received_at).total_seconds()))
    # The instance is current (claimed and loaded by one statement, changed only here): no re-read.
    with scopes_disabled():
        _finish(event)
    return event


def _process_change(
    event: WebhookEvent,
    raw_body: bytes,
    change: Change,
    signature: str,
    numbers: dict[str, WhatsAppNumber | None],
    notes: list[str],
    failures: list[str],
) -> None:
    if change.field == "messages":
        if change.phone_number_id not in numbers:
            numbers[change.phone_number_id] = number_for_phone_id_unsafe(phone_number_id=change.phone_number_id)
        number = numbers[change.phone_number_id]
        if number is None:
            notes.append(
                f"unknown phone_number_id {change.phone_number_id!r}: "
                f"{len(change.messages)} message(s), {len(change.statuses)} status(es) not routed"
            )
            return
        # The body was accepted with some secret; the number it routes to must have signed it with its own.
        if not signature_valid(raw_body, signature, number.effective_app_secret()):
            notes.append(f"change for {change.phone_number_id} not signed with that number's app secret: skipped")
            return
        with tenant_scope(number.tenant_id):
            for message in change.messages:
                try:
                    inbound.message_receive(tenant=number.tenant, number=number, inbound=message)
                except Exception as exc:  # the others in the batch still count
                    logger.exception("webhook %s message %s failed", event.pk, message.wa_message_id)
                    failures.append(f"message {message.wa_message_id}: {type(exc).__name__}: {exc}")
            for status in change.statuses:
                try:
                    inbound.status_receive(tenant=number.tenant, number=number, status=status)
                except Exception as exc:
                    logger.exception("webhook %s status for %s failed", event.pk, status.wa_message_id)
                    failures.append(f"status {status.wa_message_id}: {type(exc).__name__}: {exc}")
        for error in change.errors:
            notes.append(f"{change.phone_number_id}: Meta error {error.code} {error.title}: {error.detail}")
            logger.warning("Meta reported error %s for %s: %s", error.code, change.phone_number_id, error.detail)
        return
    if change.field == "message_template_status_update":
        updated = inbound.template_status_receive(waba_id=change.waba_id, value=change.value)
        notes.append(f"template status {change.value.get('event')}: {updated} template(s) updated")
        return
    # account_update, quality updates and the rest: stored (the raw event) and acknowledged.
    notes.append(f"field {change.field!r} stored, no action")


def webhook_reprocess(event_id: int) -> WebhookEvent | None:
    """Run processing again for a stored event (admin action / management command). Rejected ones stay rejected."""
    WebhookEvent.objects.filter(pk=event_id, signature=SignatureVerdict.VALID).exclude(
        state=ProcessingState.PROCESSING
    ).update(state=ProcessingState.RECEIVED)
    return webhook_process(event_id)


def webhook_sweep(*, older_than: timedelta = timedelta(minutes=1)) -> list[int]:
    """Events stored but never processed (enqueue lost, worker died): hand them to the queue again."""
    cutoff = timezone.now() - older_than
    ids = list(
        WebhookEvent.objects.filter(signature=SignatureVerdict.VALID, attempts__lt=MAX_ATTEMPTS)
        .filter(
            Q(state=ProcessingState.RECEIVED, received_at__lt=cutoff)
            | Q(state=ProcessingState.FAILED, attempts__lt=3, processed_at__lt=cutoff)
            | Q(state=ProcessingState.PROCESSING, processed_at__lt=timezone.now() - STUCK_AFTER)
        )
        .order_by("received_at")
        .values_list("pk", flat=True)[:500]
    )
    webhook_enqueue_many(ids)
    return ids
