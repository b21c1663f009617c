"""The primitives every writer shares: contacts, conversations, appending a message, status and read markers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connections, router, transaction
from django.db.models import Q, signals
from django.utils import timezone

from accounts.models import User
from inbox import events
from inbox.models import Contact, Conversation, ConversationStatus, Direction, Message, Reaction, ReadMarker
from inbox.serializers import conversation_data, message_data
from inbox.status import StatusError, status_apply
from inbox.tasking import enqueue_on_commit
from tenants.models import Membership, Tenant, WhatsAppNumber
from tenants.selectors import model_from_row


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


@transaction.atomic
def contact_upsert(*, tenant: Tenant, wa_id: str | None, bsuid: str | None, profile_name: str = "") -> Contact:
    """Find the contact by business-scoped user id or phone (either may be missing), create it once, keep it current.

    Two first messages from a new contact arriving at once create one contact: the loser of the unique
    constraint re-reads the winner's row.
    """
    if not wa_id and not bsuid:
        raise ValidationError("a contact needs a wa_id or a business-scoped user id")
    query = Q()
    if bsuid:
        query |= Q(bsuid=bsuid)
    if wa_id:
        query |= Q(wa_id=wa_id)
    contact = Contact.objects.filter(query).order_by("-bsuid").first()
    if contact is None:
        try:
            with transaction.atomic():
                contact = Contact.objects.create(
                    tenant=tenant, wa_id=wa_id or None, bsuid=bsuid or None, profile_name=profile_name
                )
            return contact
        except IntegrityError:
            contact = Contact.objects.filter(query).order_by("-bsuid").first()
            if contact is None:
                raise
    changed: list[str] = []
    if profile_name and contact.profile_name != profile_name:
        contact.profile_name = profile_name
        changed.append("profile_name")
    if wa_id and contact.wa_id != wa_id and not Contact.objects.filter(wa_id=wa_id).exclude(pk=contact.pk).exists():
        contact.wa_id = wa_id
        changed.append("wa_id")
    if bsuid and contact.bsuid != bsuid and not Contact.objects.filter(bsuid=bsuid).exclude(pk=contact.pk).exists():
        contact.bsuid = bsuid
        changed.append("bsuid")
    if changed:
        contact.save(update_fields=[*changed, "updated_at"])
    return contact


@transaction.atomic
def conversation_open_or_get(*, tenant: Tenant, number: WhatsAppNumber, contact: Contact) -> Conversation:
    """The conversation of (number, contact), created once and returned locked (SELECT FOR UPDATE) until commit.

    Holding the row lock serialises writers of one conversation, so its last-message fields stay consistent.
    """
    conversation = Conversation.objects.select_for_update().filter(number=number, contact=contact).first()
    if conversation is None:
        try:
            with transaction.atomic():
                Conversation.objects.create(tenant=tenant, number=number, contact=contact)
        except IntegrityError:
            pass  # created concurrently: lock the winner's row below
        conversation = Conversation.objects.select_for_update().get(number=number, contact=contact)
    return conversation


def _conversation_item(conversation: Conversation) -> events.EventItem:
    return (events.CONVERSATION_UPDATED, conversation_data(conversation), conversation.pk)


def conversation_emit(conversation: Conversation) -> None:
    """Log conversation:updated with the conversation as the REST API returns it (re-read: callers may hold a
    partial or stale instance)."""
    conversation = Conversation.objects.select_related("contact", "number", "assignee", "last_message").get(
        pk=conversation.pk
    )
    events.emit_many(conversation.tenant_id, [_conversation_item(conversation)])


def message_emit_new(message: Message) -> None:
    """Log message:new with the message as the REST API returns it (re-read, with its current reactions)."""
    message = Message.objects.select_related("sender", "tenant").prefetch_related("reactions").get(pk=message.pk)
    events.emit(message.tenant_id, events.MESSAGE_NEW, message_data(message), conversation_id=message.conversation_id)


def message_append(*, conversation: Conversation, message: Message) -> Message:
    """Persist a new message in a conversation and log message:new and conversation:updated.

    Precondition: inside transaction.atomic() with the conversation locked (conversation_open_or_get).
    An inbound message reopens a resolved conversation and restarts the 24-hour window (by Meta's timestamp).
    """
    _append(conversation, message, once=False)
    return message


def message_append_once(*, conversation: Conversation, message: Message) -> bool:
    """message_append for a message with a wamid, unless its number has a message with that wamid already (a
    concurrent copy, Meta redelivering, that committed first): then nothing is written or logged and it returns False.

    Same precondition as message_append. On PostgreSQL the INSERT skips the row on the wamid's unique index
    (ON CONFLICT … DO NOTHING) instead of failing, so no savepoint has to guard it (two statements less per
    message); elsewhere, and when a model signal makes it save(), a savepoint catches the IntegrityError.
    """
    target = _written_out(message)
    if target is None or target[2].vendor != "postgresql":
        try:
            with transaction.atomic():
                message_append(conversation=conversation, message=message)
        except IntegrityError:
            return False
        return True
    return _append(conversation, message, once=True)


def _append(conversation: Conversation, message: Message, *, once: bool) -> bool:
    message.tenant_id = conversation.tenant_id
    message.conversation = conversation
    message.number_id = conversation.number_id
    changes: dict[str, Any] = {}
    if conversation.last_message_at is None or message.wa_timestamp >= conversation.last_message_at:
        changes["last_message"] = message
        changes["last_message_at"] = message.wa_timestamp
    if message.direction == Direction.INBOUND:
        if conversation.last_inbound_at is None or message.wa_timestamp > conversation.last_inbound_at:
            changes["last_inbound_at"] = message.wa_timestamp
        if conversation.status == ConversationStatus.RESOLVED:
            changes["status"] = ConversationStatus.OPEN
    merged = _insert_updating(message, conversation, changes, on_wamid_conflict_skip=once)
    if merged is False:
        return False
    if merged is None:  # not written out together: the INSERT, then the conversation's UPDATE
        if not _insert(message, on_wamid_conflict_skip=once):
            return False
        for name, value in changes.items():
            setattr(conversation, name, value)
        _update(conversation, ["updated_at", *changes])
    # Both objects are current (the conversation is locked and was just saved; the message was just inserted), so
    # they are serialised as they are instead of being read back. A new message has no reactions yet: an empty
    # result, cached as prefetch_related caches one (the base manager: the scoped default one would add, and
    # compile, the tenant filter to a queryset that never runs).
    no_reactions = Reaction._base_manager.none()
    no_reactions._result_cache = []
    no_reactions._prefetch_done = True
    message._prefetched_objects_cache = {"reactions": no_reactions}  # type: ignore[attr-defined]
    data = message_data(message)
    events.emit_many(
        conversation.tenant_id, [(events.MESSAGE_NEW, data, conversation.pk), _conversation_item(conversation)]
    )
    message._message_new_data = data  # type: ignore[attr-defined]  # the REST API answers with it (outbound)
    return True


def conversation_people_from_row(conversation: Conversation, row: Sequence[Any], at: int, db: str) -> None:
    """The contact and the (LEFT JOINed, possibly NULL) assignee of a hand-written conversation read, from row[at:]
    (row_columns of Contact, then of User), cached on the conversation as select_related("contact", "assignee")
    would have."""
    contact, at = model_from_row(Contact, row, at, db)
    assignee = model_from_row(User, row, at, db)[0] if row[at] is not None else None
    Conversation.contact.field.set_cached_value(conversation, contact)
    Conversation.assignee.field.set_cached_value(conversation, assignee)


def _written_out(instance: Message | Conversation) -> tuple[Any, str, Any, Any] | None:
    """(meta, database alias, connection, quote_name) for writing the instance's row by hand, or None when a model
    signal has a receiver: signals are sent by save() only, so then save() it is."""
    model = type(instance)
    if signals.pre_save.has_listeners(model) or signals.post_save.has_listeners(model):
        return None
    db = router.db_for_write(model)
    connection = connections[db]
    return instance._meta, db, connection, connection.ops.quote_name


def _insert(instance: Message, *, on_wamid_conflict_skip: bool = False) -> bool:
    """instance.save(force_insert=True) written out: the ORM's compilation of the ~35-column INSERT cost more CPU
    than the statement. Values prepared by the model's own fields (pre_save, get_db_prep_save), the new id read
    back. on_wamid_conflict_skip (PostgreSQL, no signal receivers: message_append_once): a row with the same
    (number, wamid) makes it write nothing and return False instead of raising IntegrityError."""
    target = _written_out(instance)
    if target is None:
        assert not on_wamid_conflict_skip
        instance.save(force_insert=True)
        return True
    meta, db, connection, qn = target
    sql, params = _insert_sql(instance, connection, on_wamid_conflict_skip=on_wamid_conflict_skip)
    returning = connection.features.can_return_columns_from_insert
    if returning:
        sql += f" RETURNING {qn(meta.pk.column)}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if returning:
            row = cursor.fetchone()
            if row is None:
                return False  # on_wamid_conflict_skip: the number has this wamid already
            instance.pk = row[0]
        else:
            instance.pk = cursor.lastrowid
    instance._state.adding = False
    instance._state.db = db
    return True


def _insert_sql(instance: Message, connection: Any, *, on_wamid_conflict_skip: bool) -> tuple[str, list[Any]]:
    meta = instance._meta
    qn = connection.ops.quote_name
    fields = [f for f in meta.local_concrete_fields if f is not meta.auto_field]
    params = [f.get_db_prep_save(f.pre_save(instance, True), connection) for f in fields]
    sql = (
        f"INSERT INTO {qn(meta.db_table)} ({', '.join(qn(f.column) for f in fields)})"
        f" VALUES ({', '.join(['%s'] * len(fields))})"
    )
    if on_wamid_conflict_skip:
        # The arbiter is the partial unique index message_wamid_uniq only: any other violation still raises.
        sql += f" ON CONFLICT ({qn('number_id')}, {qn('wa_message_id')}) WHERE {qn('wa_message_id')} IS NOT NULL DO NOTHING"
    return sql, params


def _insert_updating(
    message: Message, conversation: Conversation, changes: dict[str, Any], *, on_wamid_conflict_skip: bool
) -> bool | None:
    """The message's INSERT and the conversation's UPDATE (updated_at and `changes`, "last_message" the new row) in
    one statement, one round trip to PostgreSQL instead of two: the UPDATE runs only if the INSERT wrote a row.
    True: both written, the instances updated as save() would; False: on_wamid_conflict_skip and the number has
    this wamid already (nothing written, the instances unchanged); None: not on PostgreSQL, or a model signal has a
    receiver (nothing done: the caller writes them one by one)."""
    message_target = _written_out(message)
    conversation_target = _written_out(conversation)
    if message_target is None or conversation_target is None or message_target[2].vendor != "postgresql":
        return None
    meta, db, connection, qn = message_target
    insert_sql, params = _insert_sql(message, connection, on_wamid_conflict_skip=on_wamid_conflict_skip)
    conversation_meta = conversation._meta
    updated_at = conversation_meta.get_field("updated_at")
    previous = conversation.updated_at
    now = updated_at.pre_save(conversation, False)  # auto_now: sets the attribute, as save() does
    sets = [f"{qn(updated_at.column)} = %s"]
    params.append(updated_at.get_db_prep_save(now, connection))
    for name, value in changes.items():
        field = conversation_meta.get_field(name)
        if name == "last_message":
            sets.append(f"{qn(field.column)} = (SELECT {qn(meta.pk.column)} FROM m)")
        else:
            sets.append(f"{qn(field.column)} = %s")
            params.append(field.get_db_prep_save(value, connection))
    params.append(conversation.pk)
    sql = (
        f"WITH m AS ({insert_sql} RETURNING {qn(meta.pk.column)}),"
        f" u AS (UPDATE {qn(conversation_meta.db_table)} SET {', '.join(sets)}"
        f" WHERE {qn(conversation_meta.pk.column)} = %s AND EXISTS (SELECT 1 FROM m))"
        f" SELECT {qn(meta.pk.column)} FROM m"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        conversation.updated_at = previous
        return False  # on_wamid_conflict_skip: the number has this wamid already
    message.pk = row[0]
    message._state.adding = False
    message._state.db = db
    for name, value in changes.items():
        setattr(conversation, name, value)
    return True


def _update(instance: Conversation, names: list[str]) -> None:
    """instance.save(update_fields=names) for a row known to exist (it is locked), written out like _insert."""
    target = _written_out(instance)
    if target is None:
        instance.save(update_fields=names)
        return
    meta, _, connection, qn = target
    fields = [meta.get_field(name) for name in names]
    params = [f.get_db_prep_save(f.pre_save(instance, False), connection) for f in fields]
    sql = (
        f"UPDATE {qn(meta.db_table)} SET {', '.join(f'{qn(f.column)} = %s' for f in fields)}"
        f" WHERE {qn(meta.pk.column)} = %s"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, instance.pk])


def message_status_emit(message: Message) -> None:
    data: dict[str, Any] = {
        "message_id": message.pk,
        "conversation_id": message.conversation_id,
        "client_id": message.client_id,
        "wa_message_id": message.wa_message_id,
        "status": message.status,
        "error": (
            {"code": message.error_code, "title": message.error_title, "detail": message.error_detail}
            if message.status == "failed"
            else None
        ),
        "time": {
            "sent": _iso(message.sent_at),
            "delivered": _iso(message.delivered_at),
            "read": _iso(message.read_at),
            "failed": _iso(message.failed_at),
        },
    }
    events.emit(message.tenant_id, events.MESSAGE_STATUS, data, conversation_id=message.conversation_id)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


@transaction.atomic
def message_status_set(
    *, message: Message, status: str, at: datetime | None = None, error: StatusError | None = None
) -> bool:
    """Apply a delivery status through the one monotonic rule (inbox/status.py); log message:status if it changed.

    Locks the message row so concurrent status webhooks for it apply one after the other. Returns whether the
    stored status changed.
    """
    locked = Message.objects.select_for_update().get(pk=message.pk)
    transition = status_apply(
        current=locked.status,
        new=status,
        at=at or timezone.now(),
        known_times={f: getattr(locked, f) for f in ("sent_at", "delivered_at", "read_at", "failed_at")},
        error=error,
    )
    fields: list[str] = []
    for field, value in transition.time_fields.items():
        setattr(locked, field, value)
        fields.append(field)
    if transition.changed:
        locked.status = transition.status
        fields.append("status")
        if transition.error is not None:
            locked.error_code = transition.error.code
            locked.error_title = transition.error.title[:300]
            locked.error_detail = transition.error.detail
            fields += ["error_code", "error_title", "error_detail"]
    if fields:
        locked.save(update_fields=fields)
    if transition.changed:
        message_status_emit(locked)
    # Keep the caller's instance current.
    for field in fields:
        setattr(message, field, getattr(locked, field))
    return transition.changed


@transaction.atomic
def conversation_update(
    *,
    tenant: Tenant,
    conversation: Conversation,
    status: str | _Unset = UNSET,
    assignee: User | None | _Unset = UNSET,
) -> Conversation:
    """Change a conversation's status and/or assignee; logs conversation:updated when something changed.

    The assignee must be an active member of the tenant (ValidationError otherwise).
    """
    locked = Conversation.objects.select_for_update().get(pk=conversation.pk, tenant=tenant)
    fields: list[str] = []
    if not isinstance(status, _Unset) and status != locked.status:
        if status not in ConversationStatus.values:
            raise ValidationError({"status": f"must be one of {', '.join(ConversationStatus.values)}"})
        locked.status = status
        fields.append("status")
    if not isinstance(assignee, _Unset) and (assignee.pk if assignee else None) != locked.assignee_id:
        if (
            assignee is not None
            and not Membership.objects.filter(tenant=tenant, user=assignee, is_active=True).exists()
        ):
            raise ValidationError({"assignee": "is not an active member of this tenant"})
        locked.assignee = assignee
        fields.append("assignee")
    if fields:
        locked.save(update_fields=[*fields, "updated_at"])
        conversation_emit(locked)
    return locked


@transaction.atomic
def read_marker_set(*, tenant: Tenant, user: User, conversation: Conversation, message: Message) -> ReadMarker:
    """Move the user's read marker of a conversation forward to `message` (never backwards); log message:read.

    Marks the latest inbound message up to it as read at Meta (after commit), which also marks the earlier ones.
    """
    if message.conversation_id != conversation.pk or message.tenant_id != tenant.pk:
        raise ValidationError({"message_id": "is not a message of this conversation"})
    marker, _ = ReadMarker.objects.select_for_update().get_or_create(
        tenant=tenant, user=user, conversation=conversation
    )
    current = marker.last_read_message
    if current is not None and (current.wa_timestamp, current.pk) >= (message.wa_timestamp, message.pk):
        return marker
    marker.last_read_message = message
    marker.last_read_at = message.wa_timestamp
    marker.save()
    events.emit(
        tenant.pk,
        events.MESSAGE_READ,
        {"conversation_id": conversation.pk, "user_id": user.pk, "last_read_message_id": message.pk},
        conversation_id=conversation.pk,
    )
    latest_inbound = (
        Message.objects.filter(conversation=conversation, direction=Direction.INBOUND, wa_message_id__isnull=False)
        .filter(Q(wa_timestamp__lt=message.wa_timestamp) | Q(wa_timestamp=message.wa_timestamp, pk__lte=message.pk))
        .order_by("-wa_timestamp", "-pk")
        .first()
    )
    if latest_inbound is not None:
        from inbox.tasks import message_mark_read

        enqueue_on_commit(message_mark_read, tenant_id=tenant.pk, message_id=latest_inbound.pk)
    return marker
