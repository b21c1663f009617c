"""Output shapes shared by the REST API and the WebSocket frames (`message:new` carries a message exactly as the
REST API returns it). Input serializers live next to the API views that use them."""

from __future__ import annotations

from functools import cache
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .models import Contact, Conversation, Message, SendState

PREVIEW_CHARS = 120


def user_brief(user: Any) -> dict[str, Any] | None:
    if user is None:
        return None
    return {"id": user.pk, "name": user.name}


class ContactOutputSerializer(serializers.ModelSerializer[Contact]):
    display_name = serializers.CharField(read_only=True)

    class Meta:
        model = Contact
        fields = ["id", "display_name", "name", "profile_name", "wa_id", "bsuid", "created_at", "updated_at"]
        read_only_fields = fields


class MessageErrorSerializer(serializers.Serializer[Any]):
    code = serializers.IntegerField(allow_null=True)
    title = serializers.CharField()
    detail = serializers.CharField()


class UserBriefSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    name = serializers.CharField()


class ReactionOutputSerializer(serializers.Serializer[Any]):
    emoji = serializers.CharField()
    user_id = serializers.IntegerField(allow_null=True, help_text="null: the contact reacted")


class MediaOutputSerializer(serializers.Serializer[Any]):
    state = serializers.CharField()
    mime_type = serializers.CharField()
    filename = serializers.CharField()
    size = serializers.IntegerField(allow_null=True)
    url = serializers.CharField(allow_null=True, help_text="download URL for members of the tenant, once ready")
    error = serializers.CharField()


def media_url(message: Message) -> str | None:
    if message.media_state != "ready" or not message.media_file:
        return None
    return f"/api/tenants/{message.tenant.slug}/messages/{message.pk}/media/"


def message_preview(message: Message | None) -> str:
    if message is None:
        return ""
    if message.deleted_at:
        return "This message was deleted"
    text = message.text or ""
    if not text:
        labels = {
            "image": "📷 Photo",
            "video": "🎥 Video",
            "audio": "🎤 Audio",
            "document": "📄 Document",
            "sticker": "Sticker",
            "location": "📍 Location",
            "contacts": "👤 Contact",
            "template": "Template",
            "reaction": "Reaction",
            "unsupported": "Unsupported message",
        }
        text = labels.get(message.type, message.type)
    return text[:PREVIEW_CHARS]


class MessageOutputSerializer(serializers.ModelSerializer[Message]):
    conversation_id = serializers.IntegerField(read_only=True)
    sender = serializers.SerializerMethodField()
    media = serializers.SerializerMethodField()
    error = serializers.SerializerMethodField()
    reactions = serializers.SerializerMethodField()
    reply_to_id = serializers.IntegerField(read_only=True, allow_null=True)
    timestamp = serializers.DateTimeField(source="wa_timestamp", read_only=True)
    # Blank for inbound messages (only outbound ones go through the outbox): the schema must allow "".
    send_state = serializers.ChoiceField(choices=SendState.choices, allow_blank=True, read_only=True)

    class Meta:
        model = Message
        fields = [
            "id",
            "conversation_id",
            "client_id",
            "direction",
            "type",
            "text",
            "sender",
            "media",
            "payload",
            "reply_to_id",
            "reply_to_wa_id",
            "wa_message_id",
            "status",
            "sent_at",
            "delivered_at",
            "read_at",
            "failed_at",
            "error",
            "send_state",
            "reactions",
            "edited_at",
            "deleted_at",
            "timestamp",
            "created_at",
        ]
        read_only_fields = fields

    @extend_schema_field(UserBriefSerializer(allow_null=True))
    def get_sender(self, obj: Message) -> dict[str, Any] | None:
        return user_brief(obj.sender)

    @extend_schema_field(MediaOutputSerializer(allow_null=True))
    def get_media(self, obj: Message) -> dict[str, Any] | None:
        if obj.media_state == "none" and not obj.media_id and not obj.media_file:
            return None
        return {
            "state": obj.media_state,
            "mime_type": obj.media_mime_type,
            "filename": obj.media_filename,
            "size": obj.media_size,
            "url": media_url(obj),
            "error": obj.media_error,
        }

    @extend_schema_field(MessageErrorSerializer(allow_null=True))
    def get_error(self, obj: Message) -> dict[str, Any] | None:
        if obj.status != "failed" and obj.error_code is None and not obj.error_title:
            return None
        return {"code": obj.error_code, "title": obj.error_title, "detail": obj.error_detail}

    @extend_schema_field(ReactionOutputSerializer(many=True))
    def get_reactions(self, obj: Message) -> list[dict[str, Any]]:
        # The prefetched rows when there are (prefetch_related, or a new message's none): obj.reactions.all() would
        # build a related manager and clone the cached queryset first, to iterate the same rows.
        prefetched = getattr(obj, "_prefetched_objects_cache", {}).get("reactions")
        reactions = prefetched if prefetched is not None else obj.reactions.all()
        return [{"emoji": r.emoji, "user_id": r.user_id} for r in reactions if r.emoji]  # "" = removed


class ConversationOutputSerializer(serializers.ModelSerializer[Conversation]):
    contact = ContactOutputSerializer(read_only=True)
    assignee = serializers.SerializerMethodField()
    number = serializers.SerializerMethodField()
    last_message = serializers.SerializerMethodField()
    window_expires_at = serializers.DateTimeField(read_only=True, allow_null=True)

    class Meta:
        model = Conversation
        fields = [
            "id",
            "status",
            "assignee",
            "contact",
            "number",
            "last_message",
            "last_message_at",
            "last_inbound_at",
            "window_expires_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    @extend_schema_field(UserBriefSerializer(allow_null=True))
    def get_assignee(self, obj: Conversation) -> dict[str, Any] | None:
        return user_brief(obj.assignee)

    def get_number(self, obj: Conversation) -> dict[str, Any]:
        return {"id": obj.number_id, "display_phone_number": obj.number.display_phone_number, "label": obj.number.label}

    def get_last_message(self, obj: Conversation) -> dict[str, Any] | None:
        m = obj.last_message
        if m is None:
            return None
        return {
            "id": m.pk,
            "direction": m.direction,
            "type": m.type,
            "preview": message_preview(m),
            "status": m.status,
            "timestamp": m.wa_timestamp.isoformat().replace("+00:00", "Z"),
        }


# One bound instance per output serializer, shared by every call: building a ModelSerializer's fields (model
# introspection, a deep copy of the declared fields) cost more than serializing a row with them, and it happened
# on every message:new, conversation:updated and API response. to_representation() keeps no per-call state on the
# instance (the SerializerMethodFields here read nothing but the object), so one instance can serve every thread.


@cache
def _message_output() -> MessageOutputSerializer:
    return MessageOutputSerializer()


@cache
def _conversation_output() -> ConversationOutputSerializer:
    return ConversationOutputSerializer()


def message_data(message: Message) -> dict[str, Any]:
    """A message as the REST API returns it (MessageOutputSerializer(message).data, without building the fields)."""
    return dict(_message_output().to_representation(message))


def messages_data(messages: Any) -> list[dict[str, Any]]:
    """message_data() of each message, in order (MessageOutputSerializer(messages, many=True).data)."""
    serializer = _message_output()
    return [dict(serializer.to_representation(message)) for message in messages]


def conversation_data(conversation: Conversation) -> dict[str, Any]:
    """A conversation as the REST API returns it (ConversationOutputSerializer(conversation).data)."""
    return dict(_conversation_output().to_representation(conversation))
