"""What arrives from WhatsApp: messages of every type, reactions, edits, deletions, delivery statuses, templates.

Called by webhook processing inside the tenant's scope (after phone_number_id → number). Meta delivers at least
once, batched and out of order, so every function here is idempotent: a redelivered wamid is the same message, a
status never moves backwards, and a status for a wamid we have not stored yet waits in MessageStatusEvent.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime
from typing import NamedTuple

from django.db import connections, router, transaction
from django.db.models import Q
from django_scopes import get_scope

from accounts.models import User
from inbox.models import (
    Contact,
    Conversation,
    Direction,
    MediaState,
    Message,
    MessageStatusEvent,
    MessageTemplate,
    MessageType,
    Reaction,
)
from inbox.services.core import (
    contact_upsert,
    conversation_emit,
    conversation_open_or_get,
    conversation_people_from_row,
    message_append_once,
    message_emit_new,
    message_status_set,
)
from inbox.status import StatusError
from inbox.tasking import enqueue_on_commit
from tenants.models import Tenant, WhatsAppNumber
from tenants.scoping import ScopeError, tenant_scope
from tenants.selectors import model_from_row, row_columns
from webhooks.parsers import ErrorInfo, InboundMessage, InboundStatus

logger = logging.getLogger(__name__)

STORED_TYPES = {
    "text": MessageType.TEXT,
    "image": MessageType.IMAGE,
    "video": MessageType.VIDEO,
    "audio": MessageType.AUDIO,
    "document": MessageType.DOCUMENT,
    "sticker": MessageType.STICKER,
    "location": MessageType.LOCATION,
    "contacts": MessageType.CONTACTS,
    "interactive": MessageType.INTERACTIVE,
    "button": MessageType.BUTTON,
}


def _status_error(errors: tuple[ErrorInfo, ...]) -> StatusError | None:
    if not errors:
        return None
    first = errors[0]
    return StatusError(code=first.code, title=first.title, detail=first.detail)


def message_receive(*, tenant: Tenant, number: WhatsAppNumber, inbound: InboundMessage) -> Message | None:
    """Store an inbound message once (keyed by its wamid per number) and log message:new + conversation:updated.

    Reactions, edits and deletions change the message they refer to instead (re-logged as message:new, which
    clients treat as an upsert by id). Media messages get media_state pending and a download task after commit.
    Returns the message stored or changed (None for a reaction/edit/deletion of a message we do not have).
    """
    if inbound.type == "reaction":
        return _reaction_receive(tenant=tenant, number=number, inbound=inbound)
    if inbound.type == "revoke":
        return _revoke_receive(number=number, inbound=inbound)
    if inbound.type == "edit" and inbound.edit is not None:
        edited = _edit_receive(number=number, inbound=inbound)
        if edited is not None:
            return edited
        # The original is unknown to us (sent before we connected?): keep the new content as a message.
        inbound = inbound.edit
    return _message_store(tenant=tenant, number=number, inbound=inbound)


@transaction.atomic
def _message_store(*, tenant: Tenant, number: WhatsAppNumber, inbound: InboundMessage) -> Message:
    fast = _conversation_locked_fast(tenant=tenant, number=number, inbound=inbound)
    existing_pk = fast.stored_pk
    if not fast.stored_known:  # the fast read found no thread: ask on its own
        existing_pk = _wamid_stored(tenant=tenant, number=number, wa_message_id=inbound.wa_message_id)
    if existing_pk is not None:
        return Message.objects.get(pk=existing_pk)  # Meta redelivered it
    conversation = fast.conversation
    if conversation is None:  # a new contact, a new thread, or a contact whose details change: the full path
        contact = contact_upsert(
            tenant=tenant, wa_id=inbound.from_wa_id, bsuid=inbound.from_bsuid, profile_name=inbound.profile_name
        )
        conversation = conversation_open_or_get(tenant=tenant, number=number, contact=contact)
        conversation.contact = contact  # the event payload shows them: no lazy re-reads
    contact = conversation.contact
    conversation.number = number
    # A concurrent copy of this message (same wamid) that got the conversation lock first has committed by now: the
    # UNIQUE constraint on (number, wamid) rejects our INSERT below and we return that copy.
    message = Message(
        direction=Direction.INBOUND,
        type=STORED_TYPES.get(inbound.type, MessageType.UNSUPPORTED),
        text=inbound.text,
        payload=dict(inbound.payload),
        wa_message_id=inbound.wa_message_id,
        wa_timestamp=inbound.timestamp,
    )
    if message.type == MessageType.UNSUPPORTED and "raw" not in message.payload:
        message.payload["raw"] = inbound.raw
    if inbound.context_id:
        message.reply_to_wa_id = inbound.context_id
        message.reply_to_id = (
            Message.objects.filter(number=number, wa_message_id=inbound.context_id).values_list("pk", flat=True).first()
        )
    if inbound.media is not None:
        message.media_id = inbound.media.id
        message.media_mime_type = inbound.media.mime_type
        message.media_sha256 = inbound.media.sha256
        message.media_filename = inbound.media.filename
        message.media_state = MediaState.PENDING if inbound.media.id else MediaState.FAILED
        if not inbound.media.id:
            message.media_error = "Meta sent no media id"
    if not message_append_once(conversation=conversation, message=message):
        # Lost a race on the wamid unique constraint: the other copy is the message.
        return Message.objects.get(number=number, wa_message_id=inbound.wa_message_id)
    if inbound.type == "system":
        _system_apply(contact=contact, inbound=inbound)
    if message.media_state == MediaState.PENDING:
        from inbox.tasks import media_download

        enqueue_on_commit(media_download, tenant_id=tenant.pk, message_id=message.pk)
    return message


def _scope_check() -> None:
    """The scoped managers' precondition, for the hand-written reads below: a tenant scope (or scopes_disabled())
    is active. They filter by the caller's tenant themselves, which is the scope's (webhook processing enters it)."""
    current = get_scope()
    if current.get("_enabled", True) and "tenant" not in current:
        raise ScopeError("A scope on dimension(s) tenant needs to be active for this query.")


def _wamid_stored(*, tenant: Tenant, number: WhatsAppNumber, wa_message_id: str) -> int | None:
    """The id of the message with this wamid on this number, if stored: what
    Message.objects.filter(number=..., wa_message_id=...).values_list("pk", flat=True).first() answers, without its
    ORM compilation (every inbound message asks)."""
    _scope_check()
    db = router.db_for_read(Message)
    with connections[db].cursor() as cursor:
        cursor.execute(_wamid_sql(db), [tenant.pk, number.pk, wa_message_id])
        row = cursor.fetchone()
    return None if row is None else int(row[0])


@functools.cache
def _wamid_sql(db: str) -> str:
    qn = connections[db].ops.quote_name
    return (
        f"SELECT m.{qn('id')} FROM {qn(Message._meta.db_table)} m"
        f" WHERE m.{qn('tenant_id')} = %s AND m.{qn('number_id')} = %s AND m.{qn('wa_message_id')} = %s"
        f" ORDER BY m.{qn('id')} LIMIT 1"
    )


class FastRead(NamedTuple):
    """What _conversation_locked_fast read: the locked conversation (None: take the full path) and, when its thread
    was found, the id of a message the number already has with this wamid (stored_known)."""

    conversation: Conversation | None
    stored_pk: int | None
    stored_known: bool


_NOTHING_READ = FastRead(None, None, False)


def _conversation_locked_fast(*, tenant: Tenant, number: WhatsAppNumber, inbound: InboundMessage) -> FastRead:
    """The common case in one statement: the contact exists, its details are unchanged, and so is its thread; the
    same statement asks whether the number has a message with this wamid already (Meta redelivering).

    The conversation comes back locked (as conversation_open_or_get returns it) with its contact and assignee
    loaded, or None when contact_upsert would create or change something (then the caller takes the full path).
    wa_id and bsuid are each unique per tenant, so the contact matched here is the one contact_upsert would find.
    With no thread found, nothing is known about the wamid (stored_known False).

    The statement is written out (the instances built as select_related builds them): the ORM's compilation of the
    locked three-table join cost more CPU than running it, on every inbound message.
    """
    wa_id, bsuid = inbound.from_wa_id, inbound.from_bsuid
    if not wa_id and not bsuid:
        return _NOTHING_READ  # contact_upsert raises the ValidationError
    _scope_check()
    db = router.db_for_write(Conversation)
    connection = connections[db]
    with connection.cursor() as cursor:
        cursor.execute(
            _conversation_locked_sql(db, "wa_id" if wa_id else "bsuid"),
            [tenant.pk, number.pk, inbound.wa_message_id, tenant.pk, number.pk, wa_id or bsuid],
        )
        row = cursor.fetchone()
    if row is None:
        return _NOTHING_READ
    conversation: Conversation
    conversation, at = model_from_row(Conversation, row, 0, db)
    conversation_people_from_row(conversation, row, at, db)
    stored_pk = None if row[-1] is None else int(row[-1])
    contact = conversation.contact
    if (bsuid and contact.bsuid != bsuid) or (inbound.profile_name and contact.profile_name != inbound.profile_name):
        return FastRead(None, stored_pk, True)
    return FastRead(conversation, stored_pk, True)


@functools.cache
def _conversation_locked_sql(db: str, contact_key: str) -> str:
    """Conversation.objects.select_for_update(of=("self",)).select_related("contact", "assignee")
    .filter(contact__<contact_key>=..., number=...).first() in the tenant's scope, and as its last column
    _wamid_sql's answer."""
    connection = connections[db]
    qn = connection.ops.quote_name
    lock = ""
    if connection.features.has_select_for_update:
        lock = f" FOR UPDATE OF {qn('c')}" if connection.features.has_select_for_update_of else " FOR UPDATE"
    return (
        f"SELECT {row_columns(Conversation, 'c', db)}, {row_columns(Contact, 'ct', db)}, {row_columns(User, 'a', db)},"
        f" ({_wamid_sql(db)})"
        f" FROM {qn(Conversation._meta.db_table)} c"
        f" INNER JOIN {qn(Contact._meta.db_table)} ct ON ct.{qn('id')} = c.{qn('contact_id')}"
        f" LEFT OUTER JOIN {qn(User._meta.db_table)} a ON a.{qn('id')} = c.{qn('assignee_id')}"
        f" WHERE c.{qn('tenant_id')} = %s AND c.{qn('number_id')} = %s AND ct.{qn(contact_key)} = %s"
        f" ORDER BY c.{qn('id')} LIMIT 1{lock}"
    )


def _system_apply(*, contact: Contact, inbound: InboundMessage) -> None:
    """The customer changed their number: later messages come from the new wa_id, so the contact follows it."""
    system = inbound.raw.get("system") if isinstance(inbound.raw.get("system"), dict) else {}
    new_wa_id = str(system.get("wa_id") or "")
    if system.get("type") != "user_changed_number" or not new_wa_id or contact.wa_id == new_wa_id:
        return
    if Contact.objects.filter(wa_id=new_wa_id).exclude(pk=contact.pk).exists():
        return  # already a contact of its own: keep both rather than merge threads silently
    contact.wa_id = new_wa_id
    contact.save(update_fields=["wa_id", "updated_at"])


@transaction.atomic
def _reaction_receive(*, tenant: Tenant, number: WhatsAppNumber, inbound: InboundMessage) -> Message | None:
    target = Message.objects.select_for_update().filter(number=number, wa_message_id=inbound.reaction_to).first()
    if target is None:
        logger.info("reaction %s to unknown message %s ignored", inbound.wa_message_id, inbound.reaction_to)
        return None
    current = Reaction.objects.filter(message=target, user__isnull=True).first()
    if current is not None and current.reacted_at > inbound.timestamp:
        return target  # an older reaction delivered late: the newer one stands
    if inbound.emoji:
        if current is not None and current.emoji == inbound.emoji and current.wa_message_id == inbound.wa_message_id:
            return target  # redelivery
        Reaction.objects.update_or_create(
            tenant=tenant,
            message=target,
            user=None,
            defaults={"emoji": inbound.emoji, "wa_message_id": inbound.wa_message_id, "reacted_at": inbound.timestamp},
        )
    else:
        # Meta sends a reaction without emoji when the customer removes theirs. The row stays as a tombstone (empty
        # emoji, with the removal's time) so that an older reaction delivered after it cannot bring it back.
        if current is not None and not current.emoji:
            return target  # already removed
        Reaction.objects.update_or_create(
            tenant=tenant,
            message=target,
            user=None,
            defaults={"emoji": "", "wa_message_id": inbound.wa_message_id, "reacted_at": inbound.timestamp},
        )
        if current is None:
            return target  # nothing was shown: no event
    message_emit_new(target)
    return target


@transaction.atomic
def _edit_receive(*, number: WhatsAppNumber, inbound: InboundMessage) -> Message | None:
    new = inbound.edit
    assert new is not None
    target = Message.objects.select_for_update().filter(number=number, wa_message_id=inbound.original_id).first()
    if target is None:
        return None
    if target.edited_at is not None and target.edited_at >= inbound.timestamp:
        return target  # redelivery, or an older edit arriving late
    target.text = new.text
    target.payload = {**target.payload, "edited": True, "edit_wa_message_id": inbound.wa_message_id}
    target.edited_at = inbound.timestamp
    target.save(update_fields=["text", "payload", "edited_at"])
    _changed(target)
    return target


@transaction.atomic
def _revoke_receive(*, number: WhatsAppNumber, inbound: InboundMessage) -> Message | None:
    target = Message.objects.select_for_update().filter(number=number, wa_message_id=inbound.original_id).first()
    if target is None:
        logger.info("deletion of unknown message %s ignored", inbound.original_id)
        return None
    if target.deleted_at is not None:
        return target
    # The customer deleted it for everyone: keep the row (the thread stays readable) but not the content.
    target.deleted_at = inbound.timestamp
    target.text = ""
    target.payload = {"meta_type": target.payload.get("meta_type", target.type), "deleted": True}
    target.save(update_fields=["deleted_at", "text", "payload"])
    _changed(target)
    return target


def _changed(message: Message) -> None:
    message_emit_new(message)
    if message.conversation.last_message_id == message.pk:
        conversation_emit(message.conversation)  # the list's preview shows the change


def status_receive(*, tenant: Tenant, number: WhatsAppNumber, status: InboundStatus) -> Message | None:
    """Record a delivery status and apply it through the monotonic rule; logs message:status when it changes.

    A status whose wamid is not stored yet (it can beat the send's HTTP response) waits unapplied and is applied
    when the wamid is stored (pending_statuses_apply). Both sides write first and look second, so one always sees
    the other.
    """
    message = _status_record(tenant=tenant, number=number, status=status)
    if message is None:
        message = pending_statuses_apply(number=number, wa_message_id=status.wa_message_id)
    return message


@transaction.atomic
def _status_record(*, tenant: Tenant, number: WhatsAppNumber, status: InboundStatus) -> Message | None:
    message = Message.objects.filter(number=number, wa_message_id=status.wa_message_id).first()
    errors = [e.__dict__ for e in status.errors]
    already = MessageStatusEvent.objects.filter(
        number=number, wa_message_id=status.wa_message_id, status=status.status, timestamp=status.timestamp
    ).exists()
    if not already:
        MessageStatusEvent.objects.create(
            tenant=tenant,
            number=number,
            message=message,
            wa_message_id=status.wa_message_id,
            status=status.status,
            timestamp=status.timestamp,
            errors=errors,
            applied=message is not None,
        )
    if message is None:
        return None
    _apply(message, status.status, status.timestamp, _status_error(status.errors))
    return message


def _apply(message: Message, status: str, at: datetime, error: StatusError | None) -> None:
    try:
        message_status_set(message=message, status=status, at=at, error=error)
    except ValueError:
        logger.warning("unknown status %r for message %s kept in the log only", status, message.pk)


@transaction.atomic
def pending_statuses_apply(*, number: WhatsAppNumber, wa_message_id: str) -> Message | None:
    """Apply statuses that arrived before their wamid was stored, in Meta's time order. Idempotent."""
    message = Message.objects.filter(number=number, wa_message_id=wa_message_id).first()
    if message is None:
        return None
    pending = list(
        MessageStatusEvent.objects.select_for_update()
        .filter(number=number, wa_message_id=wa_message_id, applied=False)
        .order_by("timestamp", "pk")
    )
    for event in pending:
        errors = tuple(
            ErrorInfo(code=e.get("code"), title=e.get("title", ""), detail=e.get("detail", "")) for e in event.errors
        )
        _apply(message, event.status, event.timestamp, _status_error(errors))
        event.message = message
        event.applied = True
        event.save(update_fields=["message", "applied"])
    return message


def template_status_receive(*, waba_id: str, value: dict[str, object]) -> int:
    """Meta approved, rejected, paused or disabled a template: update our copy for every number of that WABA."""
    event = str(value.get("event") or "")
    if not waba_id or not event:
        return 0
    template_id = str(value.get("message_template_id") or "")
    name = str(value.get("message_template_name") or "")
    language = str(value.get("message_template_language") or "")
    updated = 0
    for number in WhatsAppNumber.objects.with_scopes_disabled().filter(waba_id=waba_id):
        with tenant_scope(number.tenant_id), transaction.atomic():
            match = Q(meta_template_id=template_id) if template_id else Q(pk__in=[])
            if name:
                match |= Q(name=name, language=language) if language else Q(name=name)
            templates = MessageTemplate.objects.filter(number=number).filter(match)
            updated += templates.update(status=event)
            if template_id:
                templates.filter(meta_template_id="").update(meta_template_id=template_id)
    return updated
