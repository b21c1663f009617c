"""The inbox's data: contacts, conversations, messages, reactions, read markers and the tenant event log.

Fields, constraints and small properties only: no I/O and no broadcasting (that is services.py and events.py).
Every table here has a non-null tenant and a default manager that refuses to run outside a tenant scope.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from tenants.models import Tenant, WhatsAppNumber
from tenants.scoping import tenant_manager

CUSTOMER_SERVICE_WINDOW = timedelta(hours=24)


class Contact(models.Model):
    """A WhatsApp user. Meta identifies them by phone (wa_id) and/or business-scoped user id; either may be missing."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    wa_id = models.CharField(max_length=32, null=True, blank=True)
    bsuid = models.CharField("business-scoped user id", max_length=160, null=True, blank=True)
    profile_name = models.CharField(max_length=200, blank=True)  # as WhatsApp tells us; updates with each message
    name = models.CharField(max_length=200, blank=True)  # as an agent edited it; wins over profile_name
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = tenant_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "wa_id"], condition=Q(wa_id__isnull=False), name="contact_wa_id_uniq"
            ),
            models.UniqueConstraint(
                fields=["tenant", "bsuid"], condition=Q(bsuid__isnull=False), name="contact_bsuid_uniq"
            ),
            models.CheckConstraint(
                condition=Q(wa_id__isnull=False) | Q(bsuid__isnull=False), name="contact_has_identity"
            ),
        ]

    def __str__(self) -> str:
        return self.display_name

    @property
    def display_name(self) -> str:
        return self.name or self.profile_name or (f"+{self.wa_id}" if self.wa_id else (self.bsuid or "?"))


class ConversationStatus(models.TextChoices):
    OPEN = "open", "Open"
    PENDING = "pending", "Pending"
    RESOLVED = "resolved", "Resolved"


class Conversation(models.Model):
    """The thread between one business number and one contact; a resolved one reopens on a new inbound message."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    number = models.ForeignKey(WhatsAppNumber, on_delete=models.CASCADE, related_name="conversations")
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="conversations")
    status = models.CharField(max_length=10, choices=ConversationStatus.choices, default=ConversationStatus.OPEN)
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    last_message = models.ForeignKey("Message", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    last_message_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # Meta's timestamp of the customer's last message: the 24-hour customer-service window runs from it.
    last_inbound_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = tenant_manager()

    class Meta:
        constraints = [
            # One thread per (number, contact): two first messages arriving at once end in the same conversation.
            models.UniqueConstraint(fields=["number", "contact"], name="conversation_number_contact_uniq"),
        ]
        indexes = [models.Index(fields=["tenant", "status", "-last_message_at"], name="conv_tenant_status_last")]

    def __str__(self) -> str:
        return f"{self.contact} via {self.number}"

    @property
    def window_expires_at(self) -> datetime | None:
        return self.last_inbound_at + CUSTOMER_SERVICE_WINDOW if self.last_inbound_at else None

    def window_open(self, now: datetime | None = None) -> bool:
        expires = self.window_expires_at
        return expires is not None and (now or timezone.now()) < expires


class Direction(models.TextChoices):
    INBOUND = "in", "Inbound"
    OUTBOUND = "out", "Outbound"


class MessageType(models.TextChoices):
    TEXT = "text", "Text"
    IMAGE = "image", "Image"
    VIDEO = "video", "Video"
    AUDIO = "audio", "Audio"
    DOCUMENT = "document", "Document"
    STICKER = "sticker", "Sticker"
    LOCATION = "location", "Location"
    CONTACTS = "contacts", "Contacts"
    INTERACTIVE = "interactive", "Interactive reply"
    BUTTON = "button", "Template button reply"
    REACTION = "reaction", "Reaction"
    TEMPLATE = "template", "Template"
    UNSUPPORTED = "unsupported", "Unsupported"


MEDIA_TYPES = frozenset(
    {MessageType.IMAGE, MessageType.VIDEO, MessageType.AUDIO, MessageType.DOCUMENT, MessageType.STICKER}
)


class MessageStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    SENT = "sent", "Sent"
    DELIVERED = "delivered", "Delivered"
    READ = "read", "Read"
    FAILED = "failed", "Failed"


class SendState(models.TextChoices):
    """Where an outbound message is in our pipeline to the Graph API (the outbox)."""

    QUEUED = "queued", "Queued"
    SENDING = "sending", "Sending"
    SENT = "sent", "Accepted by Meta"
    FAILED = "failed", "Failed"
    UNKNOWN = "unknown", "Unknown (timed out after the request went out)"


class MediaState(models.TextChoices):
    NONE = "none", "No media"
    PENDING = "pending", "Downloading"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"


def media_upload_to(instance: Message, filename: str) -> str:
    # Tenant-prefixed, never guessable from outside; files are served only through a membership-checking view.
    return f"tenants/{instance.tenant_id}/media/{timezone.now():%Y/%m}/{filename}"


class Message(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    number = models.ForeignKey(WhatsAppNumber, on_delete=models.CASCADE, related_name="+")
    direction = models.CharField(max_length=3, choices=Direction.choices)
    sender = models.ForeignKey(  # the agent who sent an outbound message
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    type = models.CharField(max_length=16, choices=MessageType.choices, default=MessageType.TEXT)
    text = models.TextField(blank=True)  # body, or a media caption
    # Media: Meta's media id, what Meta told us about it, and our stored copy.
    media_id = models.CharField(max_length=128, blank=True)
    media_mime_type = models.CharField(max_length=128, blank=True)
    media_sha256 = models.CharField(max_length=128, blank=True)
    media_filename = models.CharField(max_length=255, blank=True)
    media_size = models.BigIntegerField(null=True, blank=True)
    media_file = models.FileField(upload_to=media_upload_to, max_length=400, blank=True)
    media_state = models.CharField(max_length=10, choices=MediaState.choices, default=MediaState.NONE)
    media_error = models.CharField(max_length=300, blank=True)
    payload = models.JSONField(default=dict, blank=True)  # everything else of the message (location, contacts, ...)
    reply_to = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    reply_to_wa_id = models.CharField(max_length=128, blank=True)  # the quoted wamid, even if we never stored it
    wa_message_id = models.CharField("WhatsApp message id", max_length=128, null=True, blank=True)
    client_id = models.CharField(max_length=64, null=True, blank=True)  # idempotency key of an agent's send
    # Delivery status (monotonic, see inbox/status.py) with the time of each step and a failure's reason.
    status = models.CharField(max_length=10, choices=MessageStatus.choices, default=MessageStatus.PENDING)
    sent_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    read_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    error_code = models.IntegerField(null=True, blank=True)
    error_title = models.CharField(max_length=300, blank=True)
    error_detail = models.TextField(blank=True)
    # Outbox state of an outbound message.
    send_state = models.CharField(max_length=10, choices=SendState.choices, blank=True)
    send_attempts = models.PositiveSmallIntegerField(default=0)
    send_next_attempt_at = models.DateTimeField(null=True, blank=True)
    send_started_at = models.DateTimeField(null=True, blank=True)
    # Customer edits and deletions, where Meta sends them.
    edited_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    wa_timestamp = models.DateTimeField(default=timezone.now)  # Meta's timestamp (inbound) or when it was written
    created_at = models.DateTimeField(auto_now_add=True)  # when we received/stored it

    objects = tenant_manager()

    class Meta:
        constraints = [
            # Meta redelivers webhooks: a repeated wamid is the same message.
            models.UniqueConstraint(
                fields=["number", "wa_message_id"], condition=Q(wa_message_id__isnull=False), name="message_wamid_uniq"
            ),
            # An agent's retried send with the same client id is the same message, never a second send.
            models.UniqueConstraint(
                fields=["tenant", "client_id"], condition=Q(client_id__isnull=False), name="message_client_id_uniq"
            ),
        ]
        indexes = [
            models.Index(fields=["conversation", "wa_timestamp", "id"], name="message_conv_order"),
            models.Index(
                fields=["send_state", "send_next_attempt_at"],
                condition=Q(send_state__in=["queued", "sending"]),
                name="message_outbox_due",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_direction_display()} {self.type} {self.pk}"

    @property
    def is_inbound(self) -> bool:
        return self.direction == Direction.INBOUND


class MessageStatusEvent(models.Model):
    """Every status Meta reported for an outbound message, in arrival order.

    message is null while the wamid is not known yet (a status can beat the send's HTTP response); such rows are
    applied when the wamid is stored.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    number = models.ForeignKey(WhatsAppNumber, on_delete=models.CASCADE, related_name="+")
    message = models.ForeignKey(Message, on_delete=models.CASCADE, null=True, blank=True, related_name="status_events")
    wa_message_id = models.CharField(max_length=128, db_index=True)
    status = models.CharField(max_length=16)
    timestamp = models.DateTimeField()
    errors = models.JSONField(default=list, blank=True)
    applied = models.BooleanField(default=False)
    received_at = models.DateTimeField(auto_now_add=True)

    objects = tenant_manager()

    class Meta:
        indexes = [
            models.Index(fields=["number", "wa_message_id"], condition=Q(applied=False), name="status_unapplied"),
        ]


class Reaction(models.Model):
    """An emoji on a message, by the contact (user is null) or by an agent. One per reactor and message."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="reactions")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    emoji = models.CharField(max_length=32)
    wa_message_id = models.CharField(max_length=128, blank=True)  # the reaction's own wamid
    reacted_at = models.DateTimeField(default=timezone.now)

    objects = tenant_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["message"], condition=Q(user__isnull=True), name="reaction_contact_uniq"),
            models.UniqueConstraint(
                fields=["message", "user"], condition=Q(user__isnull=False), name="reaction_user_uniq"
            ),
        ]


class ReadMarker(models.Model):
    """How far one agent has read one conversation: per-agent unread counts without per-message rows."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="read_markers")
    last_read_message = models.ForeignKey(Message, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    last_read_at = models.DateTimeField(null=True, blank=True)  # wa_timestamp of that message
    updated_at = models.DateTimeField(auto_now=True)

    objects = tenant_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "conversation"], name="readmarker_user_conv_uniq")]


class MessageTemplate(models.Model):
    """A pre-approved template of a number's WABA; the only kind of message allowed outside the 24-hour window."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    number = models.ForeignKey(WhatsAppNumber, on_delete=models.CASCADE, related_name="templates")
    name = models.CharField(max_length=512)
    language = models.CharField(max_length=16, default="en_US")
    category = models.CharField(max_length=32, blank=True)
    status = models.CharField(max_length=32, default="APPROVED")
    meta_template_id = models.CharField(max_length=64, blank=True)
    components = models.JSONField(default=list, blank=True)
    body_text = models.TextField(blank=True)  # the body with {{1}}-style placeholders, for the picker
    updated_at = models.DateTimeField(auto_now=True)

    objects = tenant_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["number", "name", "language"], name="template_number_name_lang_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.language})"


class EventSequence(models.Model):
    """The per-tenant counter behind TenantEvent.seq. Its row is locked by the increment until commit."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, primary_key=True, related_name="+")
    last_seq = models.BigIntegerField(default=0)

    objects = tenant_manager()


class TenantEvent(models.Model):
    """The tenant's durable event log (PROTOCOL.md): what a reconnecting client replays with `sync`.

    seq increases by one per tenant in commit order: it is allocated by incrementing EventSequence's row, whose
    lock is held until the transaction commits, so a later seq can never commit before an earlier one.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    seq = models.BigIntegerField()
    type = models.CharField(max_length=40)  # the wire type, e.g. "message:new"
    data = models.JSONField()
    conversation_id = models.BigIntegerField(null=True, blank=True)  # no FK: the log outlives what it describes
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = tenant_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "seq"], name="tenantevent_tenant_seq_uniq")]

    def __str__(self) -> str:
        return f"{self.tenant_id}#{self.seq} {self.type}"
