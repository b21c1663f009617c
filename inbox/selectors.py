"""Reads of the inbox: tenant= comes first; every function returns a QuerySet, a list or one object.

Callers are inside `tenants.scoping.tenant_scope(tenant.pk)` (the tenant-owned managers refuse to run otherwise);
every query also filters on the tenant explicitly, so a selector is correct even where a scope is disabled.
Another tenant's id and a missing id get the same answer: Http404.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.contrib.postgres.search import SearchQuery, SearchVectorField
from django.core.exceptions import ValidationError
from django.db.models import (
    Count,
    DateTimeField,
    Exists,
    F,
    Func,
    IntegerField,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    Value,
)
from django.db.models.functions import Coalesce
from django.http import Http404

from accounts.models import User
from inbox.models import (
    Contact,
    Conversation,
    ConversationStatus,
    Direction,
    EventSequence,
    Message,
    MessageTemplate,
    MessageType,
    ReadMarker,
    TenantEvent,
)
from tenants.models import Membership, Tenant, WhatsAppNumber

MESSAGE_PAGE_MAX = 200
EVENT_PAGE_MAX = 1000

# Messages that count towards an agent's unread badge: what the customer wrote (reactions are not messages to read).
_UNREAD_EXCLUDED_TYPES = (MessageType.REACTION,)


class _SimpleTsVector(Func):
    """to_tsvector('simple', text) spelt exactly like the GIN index of migration 0002, so PostgreSQL uses it.

    Django's SearchVector wraps the column in COALESCE(), which no longer matches the indexed expression.
    """

    function = "to_tsvector"
    template = "%(function)s('simple'::regconfig, %(expressions)s)"
    output_field = SearchVectorField()


def _prefix_tsquery(q: str) -> SearchQuery | None:
    """Every word of the query as a prefix ("hel wor" → 'hel':* & 'wor':*): search-as-you-type over message text.

    Only word characters reach to_tsquery, so user input can never be a tsquery syntax error.
    """
    words = re.findall(r"\w+", q)[:8]
    if not words:
        return None
    return SearchQuery(" & ".join(f"{w}:*" for w in words), config="simple", search_type="raw")


def message_text_matches(*, tenant: Tenant, q: str) -> QuerySet[Message]:
    """Messages of the tenant whose text matches q: PostgreSQL full-text search, LIKE on SQLite."""
    messages = Message.objects.filter(tenant=tenant, deleted_at__isnull=True)
    if settings.USING_POSTGRES:
        query = _prefix_tsquery(q)
        if query is None:
            return messages.none()
        return messages.annotate(_fts=_SimpleTsVector(F("text"))).filter(_fts=query)
    # SQLite: every word must occur somewhere in the text (LIKE, case-insensitive for ASCII), like the tsquery's &.
    words = re.findall(r"\w+", q)[:8]
    if not words:
        return messages.filter(text__icontains=q.strip()) if q.strip() else messages.none()
    for word in words:
        messages = messages.filter(text__icontains=word)
    return messages


def _unread_count(user: User) -> Coalesce:
    """Per-user unread count: inbound messages after the user's read marker (by Meta's timestamp, then id)."""
    marker = ReadMarker.objects.filter(conversation=OuterRef(OuterRef("pk")), user=user)
    marker_at = Subquery(marker.values("last_read_at")[:1], output_field=DateTimeField())
    marker_id = Subquery(marker.values("last_read_message_id")[:1], output_field=IntegerField())
    unread = (
        Message.objects.filter(conversation=OuterRef("pk"), direction=Direction.INBOUND)
        .exclude(type__in=_UNREAD_EXCLUDED_TYPES)
        .alias(_marker_at=marker_at, _marker_id=marker_id)
        .filter(
            Q(_marker_at__isnull=True)
            | Q(wa_timestamp__gt=F("_marker_at"))
            | Q(wa_timestamp=F("_marker_at"), pk__gt=F("_marker_id"))
        )
        .order_by()
        .values("conversation")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(unread, output_field=IntegerField()), Value(0))


def _conversations(tenant: Tenant) -> QuerySet[Conversation]:
    return Conversation.objects.filter(tenant=tenant).select_related(
        "contact", "number", "assignee", "last_message", "tenant"
    )


def conversation_list(
    *,
    tenant: Tenant,
    user: User,
    status: str | None = None,
    assigned: str | int | None = None,
    unread: bool = False,
    q: str = "",
) -> QuerySet[Conversation]:
    """The tenant's conversations, most recent activity first, annotated with `unread_count` for `user`.

    assigned: "me", "unassigned" or a user id. q searches the contact's name, profile name and number, and the
    text of the conversation's messages. Also annotated: `activity_at` (last message time, else creation time),
    the ordering key used with `id` for keyset pagination.
    """
    conversations = _conversations(tenant).annotate(
        unread_count=_unread_count(user),
        activity_at=Coalesce("last_message_at", "created_at"),
    )
    if status:
        if status not in ConversationStatus.values:
            raise ValidationError({"status": f"must be one of {', '.join(ConversationStatus.values)}"})
        conversations = conversations.filter(status=status)
    if assigned is not None and assigned != "":
        if assigned == "me":
            conversations = conversations.filter(assignee=user)
        elif assigned == "unassigned":
            conversations = conversations.filter(assignee__isnull=True)
        else:
            try:
                assignee_id = int(assigned)
            except (TypeError, ValueError):
                raise ValidationError({"assigned": 'must be "me", "unassigned" or a user id'})
            conversations = conversations.filter(assignee_id=assignee_id)
    if unread:
        conversations = conversations.filter(unread_count__gt=0)
    q = q.strip()
    if q:
        digits = q.lstrip("+").replace(" ", "")
        match = Q(contact__name__icontains=q) | Q(contact__profile_name__icontains=q)
        if digits:
            match |= Q(contact__wa_id__icontains=digits)
        text_hits = message_text_matches(tenant=tenant, q=q).filter(conversation=OuterRef("pk"))
        conversations = conversations.filter(match | Exists(text_hits))
    return conversations.order_by(F("activity_at").desc(), F("id").desc())


def conversation_get(*, tenant: Tenant, pk: Any, user: User | None = None) -> Conversation:
    """One conversation of the tenant (Http404 for a missing or another tenant's id); with `user`, `unread_count`."""
    conversations = _conversations(tenant)
    if user is not None:
        conversations = conversations.annotate(unread_count=_unread_count(user))
    conversation = conversations.filter(pk=_int_or_404(pk)).first()
    if conversation is None:
        raise Http404("No such conversation")
    return conversation


def conversation_ref_get(*, tenant: Tenant, pk: Any) -> Conversation:
    """Like conversation_get, but only the conversation's identity (id, tenant_id, number_id; other fields load
    on access): for writers that lock and read the row themselves (outbound.message_send), so that the 404 comes
    first without paying for conversation_get's five-table join."""
    conversation = (
        Conversation.objects.filter(tenant=tenant, pk=_int_or_404(pk)).only("id", "tenant_id", "number_id").first()
    )
    if conversation is None:
        raise Http404("No such conversation")
    return conversation


def conversation_ref(*, tenant: Tenant, pk: int) -> Conversation:
    """A reference to the tenant's conversation `pk`, not read (no query): for writers whose own locked read
    answers Http404 for a missing or another tenant's id (outbound.message_send)."""
    return Conversation(pk=pk, tenant_id=tenant.pk)


def _int_or_404(pk: Any) -> int:
    try:
        return int(pk)
    except (TypeError, ValueError):
        raise Http404("No such object")


def _messages(tenant: Tenant, conversation: Conversation) -> QuerySet[Message]:
    return (
        Message.objects.filter(tenant=tenant, conversation=conversation)
        .select_related("sender", "tenant")
        .prefetch_related("reactions")
    )


def message_list(
    *,
    tenant: Tenant,
    conversation: Conversation,
    before_id: int | None = None,
    after_id: int | None = None,
    limit: int = 50,
) -> list[Message]:
    """A page of a conversation's messages, in display order (Meta's timestamp, then id: oldest first).

    - neither cursor: the newest `limit` messages;
    - before_id: the `limit` messages just before that message in display order (scrolling back);
    - after_id: catch-up after a reconnect: the first `limit` messages stored after that one (by id, so a message
      that arrives late with an older Meta timestamp is not missed), returned in display order.
    A cursor that is not a message of this conversation is a ValidationError. Pages keyed on a message stay
    stable while new messages arrive.
    """
    if before_id is not None and after_id is not None:
        raise ValidationError({"before": "give either before or after, not both"})
    limit = max(1, min(int(limit), MESSAGE_PAGE_MAX))
    messages = _messages(tenant, conversation)
    if after_id is not None:
        if after_id != 0:  # 0: from the very first message
            _cursor_message(tenant, conversation, after_id, field="after")
        page = list(messages.filter(pk__gt=after_id).order_by("pk")[:limit])
        return sorted(page, key=lambda m: (m.wa_timestamp, m.pk))
    if before_id is not None:
        anchor = _cursor_message(tenant, conversation, before_id, field="before")
        messages = messages.filter(
            Q(wa_timestamp__lt=anchor.wa_timestamp) | Q(wa_timestamp=anchor.wa_timestamp, pk__lt=anchor.pk)
        )
    page = list(messages.order_by("-wa_timestamp", "-pk")[:limit])
    page.reverse()
    return page


def message_has_before(*, tenant: Tenant, conversation: Conversation, message: Message) -> bool:
    """Whether there are messages before `message` in display order (is there an older page?)."""
    return (
        Message.objects.filter(tenant=tenant, conversation=conversation)
        .filter(Q(wa_timestamp__lt=message.wa_timestamp) | Q(wa_timestamp=message.wa_timestamp, pk__lt=message.pk))
        .exists()
    )


def message_has_after_id(*, tenant: Tenant, conversation: Conversation, after_id: int) -> bool:
    return Message.objects.filter(tenant=tenant, conversation=conversation, pk__gt=after_id).exists()


def _cursor_message(tenant: Tenant, conversation: Conversation, pk: int, *, field: str) -> Message:
    message = Message.objects.filter(tenant=tenant, conversation=conversation, pk=pk).first()
    if message is None:
        raise ValidationError({field: "is not a message of this conversation"})
    return message


def message_get(*, tenant: Tenant, pk: Any) -> Message:
    """One message of the tenant (Http404 for a missing or another tenant's id)."""
    message = (
        Message.objects.filter(tenant=tenant, pk=_int_or_404(pk))
        .select_related("sender", "tenant", "conversation")
        .prefetch_related("reactions")
        .first()
    )
    if message is None:
        raise Http404("No such message")
    return message


def contact_list(*, tenant: Tenant, q: str = "") -> QuerySet[Contact]:
    """The tenant's contacts by name; q matches the edited name, WhatsApp profile name or number."""
    contacts = Contact.objects.filter(tenant=tenant)
    q = q.strip()
    if q:
        match = Q(name__icontains=q) | Q(profile_name__icontains=q)
        digits = q.lstrip("+").replace(" ", "")
        if digits:
            match |= Q(wa_id__icontains=digits)
        contacts = contacts.filter(match)
    return contacts.order_by("id")


def contact_get(*, tenant: Tenant, pk: Any) -> Contact:
    contact = Contact.objects.filter(tenant=tenant, pk=_int_or_404(pk)).first()
    if contact is None:
        raise Http404("No such contact")
    return contact


def member_list(*, tenant: Tenant, include_inactive: bool = False) -> QuerySet[Membership]:
    """The tenant's memberships with their users, by name (active ones only unless include_inactive)."""
    members = Membership.objects.filter(tenant=tenant).select_related("user")
    if not include_inactive:
        members = members.filter(is_active=True, user__is_active=True)
    return members.order_by("user__username", "id")


def member_get(*, tenant: Tenant, pk: Any) -> Membership:
    """One membership of the tenant by its id (Http404 for a missing or another tenant's id)."""
    membership = Membership.objects.filter(tenant=tenant, pk=_int_or_404(pk)).select_related("user").first()
    if membership is None:
        raise Http404("No such member")
    return membership


def number_list(*, tenant: Tenant) -> QuerySet[WhatsAppNumber]:
    return WhatsAppNumber.objects.filter(tenant=tenant).order_by("id")


def number_get(*, tenant: Tenant, pk: Any) -> WhatsAppNumber:
    number = WhatsAppNumber.objects.filter(tenant=tenant, pk=_int_or_404(pk)).first()
    if number is None:
        raise Http404("No such number")
    return number


def template_list(*, tenant: Tenant, number_id: int | None = None) -> QuerySet[MessageTemplate]:
    """The tenant's message templates (optionally of one number), approved ones first."""
    templates = MessageTemplate.objects.filter(tenant=tenant)
    if number_id is not None:
        templates = templates.filter(number_id=number_id)
    return templates.order_by("number_id", "name", "language")


def event_head(*, tenant: Tenant) -> int:
    """The tenant's latest event seq (0 before the first event)."""
    row = EventSequence.objects.filter(tenant=tenant).values_list("last_seq", flat=True).first()
    return int(row or 0)


def event_list(*, tenant: Tenant, since: int, limit: int = 500) -> list[TenantEvent]:
    """Durable events with seq > since, in seq order: the REST twin of the WebSocket `sync`."""
    limit = max(1, min(int(limit), EVENT_PAGE_MAX))
    return list(TenantEvent.objects.filter(tenant=tenant, seq__gt=since).order_by("seq")[:limit])


def event_gap(*, tenant: Tenant, since: int) -> bool:
    """Whether the client must reload its state instead of replaying: events after `since` were pruned already,
    or `since` is ahead of the log (a seq this tenant never issued, e.g. after a database restore)."""
    head = event_head(tenant=tenant)
    if since > head:
        return True
    if since == head:
        return False
    first = TenantEvent.objects.filter(tenant=tenant, seq__gt=since).order_by("seq").values_list("seq", flat=True)
    first_seq = first.first()
    return first_seq is None or first_seq != since + 1
