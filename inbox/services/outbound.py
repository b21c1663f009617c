"""Outbound: agents' messages, reactions and read receipts to WhatsApp, through a transactional outbox.

A send is a Message row in state queued (send_state), committed with its message:new event, then delivered by a
task. The task claims the row with a conditional UPDATE queued → sending, so a task that runs twice sends once.
Retryable failures (network, 5xx, 429, Meta's throughput/pair-rate codes) go back to queued with exponential
backoff and jitter, bounded; others fail at once with Meta's code, title and detail. A timeout after the request
went out leaves the outcome unknown (send_state unknown): never resent blindly. The sweeper re-queues sends that
a crashed worker left behind.
"""

from __future__ import annotations

import logging
import random
import re
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, connections, router, transaction
from django.db.models import F, Q
from django.http import Http404
from django.utils import timezone

from accounts.models import User
from config import metrics
from inbox.models import (
    MEDIA_TYPES,
    Contact,
    Conversation,
    Direction,
    MediaState,
    Message,
    MessageStatusEvent,
    MessageTemplate,
    MessageType,
    Reaction,
    SendState,
)
from inbox.serializers import message_data
from inbox.services.core import (
    conversation_people_from_row,
    message_append,
    message_emit_new,
    message_status_emit,
    message_status_set,
)
from inbox.services.inbound import pending_statuses_apply
from inbox.services.media import media_check
from inbox.tasking import IdBatcher, apply_with_ids, enqueue_on_commit
from inbox.whatsapp.client import GraphClient, GraphError, GraphUnknownOutcome, Transport
from inbox.whatsapp.sandbox import background_timers, run_later, statuses_schedule, transport_for
from tenants.models import Tenant, WhatsAppNumber
from tenants.scoping import scopes_disabled, tenant_scope
from tenants.selectors import model_from_row, row_columns

logger = logging.getLogger(__name__)

MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_ATTEMPTS = 6
BACKOFF_BASE = 2.0  # seconds; doubles per attempt
BACKOFF_CAP = 300.0
PAIR_RATE_LIMIT = 131056  # Meta: retry after 4^X seconds
STUCK_AFTER = timedelta(seconds=150)
PENDING_STATUS_TTL = timedelta(days=30)  # longer than the task's hard time limit (90 s)
WINDOW_MESSAGE = "The 24-hour customer service window is closed: only a template message can be sent."
SENDABLE = {"text", "template", *MEDIA_TYPES}


# --- Creating sends -------------------------------------------------------------------------------------------------


def _template_build(number: WhatsAppNumber, template: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Meta's template object and the rendered body text, from {"name", "language"?, "parameters"? | "components"?}."""
    name = str(template.get("name") or "")
    language = str(template.get("language") or "")
    found = MessageTemplate.objects.filter(number=number, name=name)
    if language:
        found = found.filter(language=language)
    stored = found.first()
    if stored is None:
        raise ValidationError({"template": f"no template {name!r} for this number"})
    if stored.status.upper() != "APPROVED":
        raise ValidationError({"template": f"template {name!r} is {stored.status.lower()}, not approved"})
    parameters = [str(p) for p in template.get("parameters") or []]
    components = template.get("components")
    if components is not None and not isinstance(components, list):
        raise ValidationError({"template": "components must be a list"})
    placeholders = set(re.findall(r"\{\{(\d+)\}\}", stored.body_text))
    if components is None and len(parameters) != len(placeholders):
        raise ValidationError({"template": f"{name} needs {len(placeholders)} parameter(s), got {len(parameters)}"})
    meta: dict[str, Any] = {"name": stored.name, "language": {"code": stored.language}}
    if components is not None:
        meta["components"] = components
    elif parameters:
        meta["components"] = [{"type": "body", "parameters": [{"type": "text", "text": p} for p in parameters]}]
    text = re.sub(
        r"\{\{(\d+)\}\}",
        lambda m: parameters[int(m.group(1)) - 1] if 0 < int(m.group(1)) <= len(parameters) else m.group(0),
        stored.body_text,
    )
    return meta, text or stored.name


def message_send(
    *,
    tenant: Tenant,
    conversation: Conversation,
    sender: User | None,
    client_id: str | None,
    type: str = "text",
    text: str = "",
    reply_to: Message | None = None,
    media: UploadedFile | None = None,
    media_link: str = "",
    filename: str = "",
    template: dict[str, Any] | None = None,
) -> tuple[Message, bool]:
    """Queue an agent's message: persisted (send_state queued) with message:new + conversation:updated, then sent
    by inbox.tasks.message_send after commit.

    client_id is the idempotency key: a second call with the same one returns the first message (created=False)
    and sends nothing. Refuses free-form messages outside the 24-hour window (error key "window") before calling
    Meta, and bad input with ValidationError keyed by field. `conversation` may be an unread reference
    (selectors.conversation_ref): the locked read raises Http404 for a missing or another tenant's one.
    """
    if conversation.tenant_id != tenant.pk:
        existing = _client_id_lookup(tenant, client_id)
        if existing is not None:
            return existing, False
        raise ValidationError({"conversation": "not found"})
    errors: dict[str, str] = {}
    if type not in SENDABLE:
        errors["type"] = f"must be one of {', '.join(sorted(SENDABLE))}"
    text = (text or "").strip()
    if type == "text":
        if not text:
            errors["text"] = "cannot be empty"
        elif len(text) > MAX_TEXT:
            errors["text"] = f"at most {MAX_TEXT} characters"
    elif type in MEDIA_TYPES:
        if media is None and not media_link:
            errors["media"] = "attach a file or give a link"
        if media is not None and media_link:
            errors["media"] = "either a file or a link, not both"
        if media_link and not media_link.startswith("https://"):
            errors["media_link"] = "must be an https:// URL"
        if len(text) > MAX_CAPTION:
            errors["text"] = f"a caption has at most {MAX_CAPTION} characters"
        if type in ("audio", "sticker") and text:
            errors["text"] = f"{type} messages cannot have a caption"
    elif type == "template" and not template:
        errors["template"] = "choose a template"
    if client_id is not None and (not client_id or len(client_id) > 64):
        errors["client_id"] = "1 to 64 characters"
    if reply_to is not None and (reply_to.conversation_id != conversation.pk or not reply_to.wa_message_id):
        errors["reply_to"] = "must be a delivered message of this conversation"
    problem: ValidationError | None = ValidationError(errors) if errors else None
    if problem is None and media is not None:
        try:
            media_check(type=type, content_type=media.content_type or "", size=media.size or 0)
        except ValidationError as exc:
            problem = exc
    if problem is not None and not client_id:
        raise problem  # nothing to look up: a retry with a known client_id is answered before its input is judged

    try:
        return _message_create(
            tenant=tenant,
            conversation=conversation,
            sender=sender,
            client_id=client_id,
            type=type,
            text=text,
            reply_to=reply_to,
            media=media,
            media_link=media_link,
            filename=filename,
            template=template,
            problem=problem,
        )
    except IntegrityError:
        # A concurrent request with the same client id won (its INSERT committed first): answer with its message.
        # No savepoint around the INSERT for this: the whole write rolled back, and the lookup runs after it.
        existing = Message.objects.filter(tenant=tenant, client_id=client_id).first() if client_id else None
        if existing is None:
            raise
        return existing, False


def _client_id_lookup(tenant: Tenant, client_id: str | None) -> Message | None:
    if not client_id:
        return None
    # Only the id (the common case is a miss): a retry then reads the message it answers with.
    existing_pk = Message.objects.filter(tenant=tenant, client_id=client_id).values_list("pk", flat=True).first()
    return None if existing_pk is None else Message.objects.get(tenant=tenant, pk=existing_pk)


def _conversation_lock(*, tenant: Tenant, pk: int, client_id: str | None) -> tuple[Conversation, int | None]:
    """The conversation locked (its row only, of=self: docs/performance.md, the deadlock) with the number, contact
    and assignee that conversation:updated carries, plus the id of the tenant's message with this client_id if
    there is one: one statement, where the ORM's compilation of the join cost more CPU than running it.

    Http404 for a missing or another tenant's conversation, as conversation_get answers.
    """
    db = router.db_for_write(Conversation)
    connection = connections[db]
    qn = connection.ops.quote_name
    existing = ""
    params: list[Any] = []
    if client_id:
        existing = (
            f", (SELECT x.{qn('id')} FROM {qn(Message._meta.db_table)} x"
            f" WHERE x.{qn('tenant_id')} = %s AND x.{qn('client_id')} = %s LIMIT 1)"
        )
        params += [tenant.pk, client_id]
    lock = f" FOR UPDATE OF {qn('c')}" if connection.features.has_select_for_update_of else ""
    sql = (
        f"SELECT {row_columns(Conversation, 'c', db)}, {row_columns(WhatsAppNumber, 'n', db)},"
        f" {row_columns(Contact, 'ct', db)}, {row_columns(User, 'a', db)}{existing}"
        f" FROM {qn(Conversation._meta.db_table)} c"
        f" INNER JOIN {qn(WhatsAppNumber._meta.db_table)} n ON n.{qn('id')} = c.{qn('number_id')}"
        f" INNER JOIN {qn(Contact._meta.db_table)} ct ON ct.{qn('id')} = c.{qn('contact_id')}"
        f" LEFT JOIN {qn(User._meta.db_table)} a ON a.{qn('id')} = c.{qn('assignee_id')}"
        f" WHERE c.{qn('tenant_id')} = %s AND c.{qn('id')} = %s{lock}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, tenant.pk, pk])
        row = cursor.fetchone()
    if row is None:
        raise Http404("No such conversation")
    conversation, at = model_from_row(Conversation, row, 0, db)
    number, at = model_from_row(WhatsAppNumber, row, at, db)
    Conversation.number.field.set_cached_value(conversation, number)
    conversation_people_from_row(conversation, row, at, db)
    return conversation, (row[-1] if client_id else None)


def _message_create(
    *,
    tenant: Tenant,
    conversation: Conversation,
    sender: User | None,
    client_id: str | None,
    type: str,
    text: str,
    reply_to: Message | None,
    media: UploadedFile | None,
    media_link: str,
    filename: str,
    template: dict[str, Any] | None,
    problem: ValidationError | None,
) -> tuple[Message, bool]:
    """message_send's write: one transaction that raises IntegrityError on a client_id race.

    The locked read answers the 404, then the idempotency check, then `problem` (the input's, found before) is
    raised: a retry with a known client_id gets its message even if its input would be refused now.
    """
    with transaction.atomic():
        # Reads with the lock what conversation:updated carries, so it is serialised without another query.
        locked, existing_pk = _conversation_lock(tenant=tenant, pk=conversation.pk, client_id=client_id)
        if existing_pk is not None:
            return Message.objects.get(tenant=tenant, pk=existing_pk), False
        if problem is not None:
            raise problem
        if type != "template" and not locked.window_open():
            raise ValidationError({"window": WINDOW_MESSAGE})
        payload: dict[str, Any] = {}
        if type == "template":
            assert template is not None
            payload["template"], text = _template_build(locked.number, template)
        message = Message(
            tenant=tenant,  # in hand: message:new's media URL reads tenant.slug
            direction=Direction.OUTBOUND,
            sender=sender,
            type=type,
            text=text,
            client_id=client_id or None,
            payload=payload,
            send_state=SendState.QUEUED,
            send_next_attempt_at=timezone.now(),
            wa_timestamp=timezone.now(),
        )
        if reply_to is not None:
            message.reply_to = reply_to
            message.reply_to_wa_id = reply_to.wa_message_id or ""
        if media is not None:
            message.tenant_id = tenant.pk
            message.media_filename = (filename or media.name or "")[:255]
            message.media_mime_type = (media.content_type or "").split(";")[0].strip()
            message.media_size = media.size
            message.media_state = MediaState.READY
            message.media_file.save(message.media_filename or type, media, save=False)
        elif media_link:
            message.payload["media_link"] = media_link
            message.media_filename = filename[:255]
        message_append(conversation=locked, message=message)
        send_enqueue_on_commit(tenant_id=tenant.pk, message_id=message.pk)
    return message, True


# --- Handing sends to the worker ------------------------------------------------------------------------------------


def _publish_sends(sends: list[tuple[int, int]]) -> None:
    from inbox.tasks import message_send_many  # the tasks module imports this one

    apply_with_ids(
        message_send_many, {"sends": [[tenant_id, message_id] for tenant_id, message_id in sends]}, retry=False
    )


# A Celery publish per send (its routing, message building, signals and kombu's producer, on the request thread)
# held one process to 5,200-5,560 sends in M1's 300/s window (bench.run m1@300, saturated); handed over in batches
# from a thread of its own (IdBatcher), 6,390-6,770. A send after a quiet moment goes at once; sends in a steady
# stream share a publish at most every 5 ms. What a crash or a broker outage loses before it goes out is a queued
# row, which outbox_sweep enqueues.
_send_batcher: IdBatcher[tuple[int, int]] = IdBatcher(_publish_sends, max_batch=20, linger=0.005, name="send-enqueue")


def send_enqueue(*, tenant_id: int, message_id: int) -> None:
    """Hand a committed queued send to the worker without waiting for the broker. Eager Celery (the embedded
    default) delivers it here and now, as its own task."""
    from config.celery import app as celery_app

    if celery_app.conf.task_always_eager:
        from inbox.tasks import message_send as message_send_task

        apply_with_ids(message_send_task, {"tenant_id": tenant_id, "message_id": message_id})
    else:
        _send_batcher.add((tenant_id, message_id))


def send_enqueue_on_commit(*, tenant_id: int, message_id: int) -> None:
    """send_enqueue once the current transaction commits (a worker never looks for a row that is not there yet)."""
    transaction.on_commit(lambda: send_enqueue(tenant_id=tenant_id, message_id=message_id), robust=True)


def message_send_data(message: Message) -> dict[str, Any]:
    """A message message_send created, as the REST API returns it: the data its message:new carries (serialised
    once by message_append, from the same instance, which nothing changes in between), else serialised now."""
    data: dict[str, Any] | None = getattr(message, "_message_new_data", None)
    return data if data is not None else message_data(message)


@transaction.atomic
def message_retry(*, tenant: Tenant, message: Message, user: User | None) -> Message:
    """Re-queue a failed (or unknown-outcome) outbound message; logs message:status (back to pending)."""
    locked = (
        Message.objects.select_for_update(of=("self",)).select_related("conversation").get(pk=message.pk, tenant=tenant)
    )
    retryable = locked.send_state in (SendState.FAILED, SendState.UNKNOWN) or locked.status == "failed"
    if locked.direction != Direction.OUTBOUND or not retryable:
        raise ValidationError({"message": "only a failed outbound message can be retried"})
    if locked.type != MessageType.TEMPLATE and not locked.conversation.window_open():
        raise ValidationError({"window": WINDOW_MESSAGE})
    locked.status = "pending"
    locked.error_code = None
    locked.error_title = ""
    locked.error_detail = ""
    locked.failed_at = None
    locked.sent_at = locked.delivered_at = locked.read_at = None
    locked.wa_message_id = None
    locked.send_state = SendState.QUEUED
    locked.send_attempts = 0
    locked.send_next_attempt_at = timezone.now()
    locked.send_started_at = None
    locked.save()
    message_status_emit(locked)
    send_enqueue_on_commit(tenant_id=tenant.pk, message_id=locked.pk)
    return locked


@transaction.atomic
def reaction_send(*, tenant: Tenant, message: Message, user: User, emoji: str) -> Reaction | None:
    """Set (or with an empty emoji remove) the agent's reaction on a message and send it to WhatsApp after commit.

    Logs message:new for the message (clients upsert it by id).
    """
    locked = (
        Message.objects.select_for_update(of=("self",)).select_related("conversation").get(pk=message.pk, tenant=tenant)
    )
    emoji = (emoji or "").strip()
    if len(emoji) > 32:
        raise ValidationError({"emoji": "one emoji"})
    if not locked.wa_message_id:
        raise ValidationError({"message": "this message has no WhatsApp id yet"})
    if not locked.conversation.window_open():
        raise ValidationError({"window": WINDOW_MESSAGE})
    reaction: Reaction | None
    if emoji:
        reaction, _ = Reaction.objects.update_or_create(
            tenant=tenant, message=locked, user=user, defaults={"emoji": emoji, "reacted_at": timezone.now()}
        )
    else:
        Reaction.objects.filter(message=locked, user=user).delete()
        reaction = None
    message_emit_new(locked)
    from inbox.tasks import reaction_send as reaction_send_task

    enqueue_on_commit(reaction_send_task, tenant_id=tenant.pk, message_id=locked.pk, user_id=user.pk, emoji=emoji)
    return reaction


# --- Delivering sends (the task side) ---------------------------------------------------------------------------------


def _recipient(message: Message) -> dict[str, str]:
    contact = message.conversation.contact
    if contact.wa_id:
        return {"to": "+" + contact.wa_id.lstrip("+")}  # with "+", Meta does not prepend our own country code
    return {"recipient": contact.bsuid or ""}


def _payload(message: Message, transport: Transport) -> dict[str, Any]:
    body: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual", **_recipient(message)}
    if message.reply_to_wa_id:
        body["context"] = {"message_id": message.reply_to_wa_id}
    if message.type == MessageType.TEXT:
        body.update(type="text", text={"body": message.text, "preview_url": "https://" in message.text})
    elif message.type == MessageType.TEMPLATE:
        body.update(type="template", template=message.payload["template"])
    elif message.type in MEDIA_TYPES:
        media: dict[str, Any] = {}
        if message.media_file:
            if not message.media_id:
                message.media_file.open("rb")
                try:
                    content = message.media_file.read()
                finally:
                    message.media_file.close()
                media_id = transport.upload_media(content, message.media_mime_type, message.media_filename)
                Message.objects.filter(pk=message.pk).update(media_id=media_id)  # a retry reuses the upload
                message.media_id = media_id
            media["id"] = message.media_id
        else:
            media["link"] = message.payload.get("media_link", "")
        if message.text and message.type in ("image", "video", "document"):
            media["caption"] = message.text
        if message.type == "document" and message.media_filename:
            media["filename"] = message.media_filename
        body.update(type=message.type, **{message.type: media})
    else:
        raise GraphError(title=f"cannot send a {message.type} message", retryable=False)
    return body


def backoff_delay(attempt: int, code: int | None = None) -> float:
    """Exponential backoff with jitter, bounded. Meta's pair rate limit asks for 4^X seconds."""
    base = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempt - 1))
    if code == PAIR_RATE_LIMIT:
        base = min(BACKOFF_CAP, max(base, 4.0 ** max(0, attempt - 1)))
    return base / 2 + random.uniform(0, base / 2)


def message_deliver(*, message_id: int) -> str:
    """Send one queued message to WhatsApp. Returns what happened: sent, retry, failed, unknown or skipped.

    Precondition: inside the message's tenant scope, not inside a transaction (each step commits on its own).
    """
    now = timezone.now()
    claimed = (
        Message.objects.filter(pk=message_id, direction=Direction.OUTBOUND, send_state=SendState.QUEUED)
        .filter(Q(send_next_attempt_at__isnull=True) | Q(send_next_attempt_at__lte=now))
        .update(
            send_state=SendState.SENDING,
            send_attempts=F("send_attempts") + 1,
            send_next_attempt_at=now,  # the claim's lease starts now (the sweeper reads it)
            send_started_at=None,
        )
    )
    if claimed != 1:
        return "skipped"  # already sent, being sent, or not due: a duplicate task does nothing
    message = Message.objects.select_related("number", "conversation__contact").get(pk=message_id)
    try:
        transport = transport_for(message.number)
    except Exception as exc:  # e.g. a token that no longer decrypts: retrying will not help
        return _handle_error(
            message, GraphError(title="WhatsApp number misconfigured", detail=str(exc), retryable=False)
        )
    try:
        try:
            payload = _payload(message, transport)
        except GraphError:
            raise
        except Exception as exc:  # e.g. the stored file is gone: fail visibly instead of leaving it in `sending`
            detail = f"{type(exc).__name__}: {exc}"
            raise GraphError(title="Could not prepare the message", detail=detail, retryable=False) from exc
        # Committed before the request goes out: after a crash the sweeper knows the send may have happened.
        Message.objects.filter(pk=message_id).update(send_started_at=timezone.now())
        wa_message_id = transport.send_message(payload)
    except GraphUnknownOutcome as exc:
        logger.warning("send of message %s has an unknown outcome: %s", message_id, exc)
        _mark_unknown(message_id, str(exc))
        return "unknown"
    except GraphError as exc:
        return _handle_error(message, exc)
    finally:
        if isinstance(transport, GraphClient):
            transport.close()
    _mark_sent(message, wa_message_id)
    return "sent"


def _mark_sent(message: Message, wa_message_id: str) -> None:
    with transaction.atomic():
        locked = Message.objects.select_for_update().get(pk=message.pk)
        locked.wa_message_id = wa_message_id
        locked.send_state = SendState.SENT
        locked.send_next_attempt_at = None
        locked.save(update_fields=["wa_message_id", "send_state", "send_next_attempt_at"])
        message_status_emit(locked)
    if message.number.auth_error:  # the token works again
        WhatsAppNumber.objects.filter(pk=message.number_id).update(auth_error="")
    # Statuses may have beaten the HTTP response: apply what waited for this wamid.
    pending_statuses_apply(number=message.number, wa_message_id=wa_message_id)
    if message.number.is_sandbox:
        statuses_schedule(
            number=message.number,
            wa_message_id=wa_message_id,
            recipient_id=message.conversation.contact.wa_id or message.conversation.contact.bsuid or "",
        )


def _mark_unknown(message_id: int, reason: str) -> None:
    with transaction.atomic():
        locked = Message.objects.select_for_update().get(pk=message_id)
        locked.send_state = SendState.UNKNOWN
        locked.send_next_attempt_at = None
        locked.error_title = "Delivery unknown: WhatsApp did not answer after the message was sent"
        locked.error_detail = reason[:1000]
        locked.save(update_fields=["send_state", "send_next_attempt_at", "error_title", "error_detail"])
        message_status_emit(locked)


def _handle_error(message: Message, exc: GraphError) -> str:
    if exc.token_expired and not message.number.is_sandbox:
        WhatsAppNumber.objects.filter(pk=message.number_id).update(auth_error=f"({exc.code}) {exc.title}"[:300])
    attempts = Message.objects.filter(pk=message.pk).values_list("send_attempts", flat=True).get()
    if exc.retryable and attempts < MAX_ATTEMPTS:
        delay = backoff_delay(attempts, exc.code)
        Message.objects.filter(pk=message.pk, send_state=SendState.SENDING).update(
            send_state=SendState.QUEUED,
            send_next_attempt_at=timezone.now() + timedelta(seconds=delay),
            send_started_at=None,
        )
        logger.info("send of message %s failed (%s), retry %s in %.1fs", message.pk, exc, attempts, delay)
        _schedule_retry(message, delay)
        return "retry"
    # The alert: logged at ERROR (alerting on the logs sees sends that will not arrive) and counted by code.
    logger.error("ALERT send of message %s failed for good after %s attempt(s): %s", message.pk, attempts, exc)
    metrics.SEND_FAILURES.labels(code=str(exc.code)).inc()
    with transaction.atomic():
        Message.objects.filter(pk=message.pk).update(send_state=SendState.FAILED, send_next_attempt_at=None)
        message_status_set(message=message, status="failed", error=exc.as_status_error())
    return "failed"


def _schedule_retry(message: Message, delay: float) -> None:
    from config.celery import app
    from inbox.tasks import message_send as message_send_task

    kwargs = {"tenant_id": message.tenant_id, "message_id": message.pk}
    if not app.conf.task_always_eager:
        try:
            message_send_task.apply_async(kwargs=kwargs, countdown=delay, retry=False)
        except Exception:
            logger.warning("could not schedule retry of message %s; the outbox sweeper will", message.pk)
    elif background_timers():
        # One process, no broker: a timer stands in for the delayed task (the sweeper would also find it).
        def retry() -> None:
            with tenant_scope(message.tenant_id):
                message_deliver(message_id=message.pk)

        run_later(delay + 0.05, retry)


def outbox_sweep() -> dict[str, int]:
    """Periodic: enqueue due queued sends (lost enqueue, retry timer gone) and settle sends a crashed worker left.

    A send left in `sending` whose request had not gone out yet goes back to queued; one whose request had gone
    out becomes unknown (it may have reached the customer, so it is not resent blindly).
    """
    from inbox.tasks import message_send as message_send_task

    now = timezone.now()
    counts = {"enqueued": 0, "requeued": 0, "unknown": 0, "pruned": 0}
    with scopes_disabled():
        stuck = list(
            Message.objects.filter(
                send_state=SendState.SENDING, send_next_attempt_at__lt=now - STUCK_AFTER
            ).values_list("pk", "tenant_id", "send_started_at")[:500]
        )
        for pk, tenant_id, started in stuck:
            if started is None:
                counts["requeued"] += Message.objects.filter(
                    pk=pk, send_state=SendState.SENDING, send_started_at__isnull=True
                ).update(send_state=SendState.QUEUED, send_next_attempt_at=now)
            else:
                with tenant_scope(tenant_id):
                    _mark_unknown(pk, "the worker stopped after the request went out")
                counts["unknown"] += 1
        due = list(
            Message.objects.filter(send_state=SendState.QUEUED, send_next_attempt_at__lte=now)
            .order_by("send_next_attempt_at")
            .values_list("pk", "tenant_id")[:500]
        )
        # Statuses for wamids we never stored (sent by another app on the number): Meta gives up after 30 days too.
        counts["pruned"] = MessageStatusEvent.objects.filter(
            applied=False, received_at__lt=now - PENDING_STATUS_TTL
        ).delete()[0]
    for pk, tenant_id in due:
        try:
            message_send_task.apply_async(kwargs={"tenant_id": tenant_id, "message_id": pk}, retry=False)
            counts["enqueued"] += 1
        except Exception:
            logger.warning("outbox sweep could not enqueue message %s", pk)
    return counts


# --- Reactions and read receipts (best effort, no outbox row) -----------------------------------------------------------


def reaction_deliver(*, message_id: int, user_id: int, emoji: str) -> None:
    """Send an agent's reaction (empty emoji: removal). Raises GraphError for the task to retry."""
    message = Message.objects.select_related("number", "conversation__contact").get(pk=message_id)
    transport = transport_for(message.number)
    body = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        **_recipient(message),
        "type": "reaction",
        "reaction": {"message_id": message.wa_message_id, "emoji": emoji},
    }
    try:
        wa_message_id = transport.send_message(body)
    except GraphUnknownOutcome:
        logger.warning("reaction on message %s: outcome unknown", message_id)
        return
    finally:
        if isinstance(transport, GraphClient):
            transport.close()
    if emoji:
        Reaction.objects.filter(message=message, user_id=user_id).update(wa_message_id=wa_message_id)


def mark_read_deliver(*, message_id: int) -> bool:
    """Tell WhatsApp an agent read an inbound message (and the earlier ones). Raises GraphError to retry."""
    message = Message.objects.select_related("number").get(pk=message_id)
    if message.direction != Direction.INBOUND or not message.wa_message_id:
        return False
    transport = transport_for(message.number)
    try:
        transport.mark_read(message.wa_message_id)
    finally:
        if isinstance(transport, GraphClient):
            transport.close()
    return True
