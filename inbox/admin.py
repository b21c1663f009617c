from __future__ import annotations

from django.contrib import admin

from .models import (
    Contact,
    Conversation,
    EventSequence,
    Message,
    MessageStatusEvent,
    MessageTemplate,
    Reaction,
    ReadMarker,
    TenantEvent,
)


@admin.register(Contact)
class ContactAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("display_name", "wa_id", "bsuid", "tenant", "created_at")
    list_filter = ("tenant",)
    search_fields = ("name", "profile_name", "wa_id", "bsuid")


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("id", "contact", "number", "tenant", "status", "assignee", "last_message_at")
    list_filter = ("status", "tenant")
    search_fields = ("contact__name", "contact__profile_name", "contact__wa_id")
    raw_id_fields = ("contact", "number", "assignee", "last_message")


class ReactionInline(admin.TabularInline):  # type: ignore[type-arg]
    model = Reaction
    extra = 0
    raw_id_fields = ("user",)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("id", "conversation", "direction", "type", "status", "send_state", "wa_timestamp", "tenant")
    list_filter = ("direction", "type", "status", "send_state", "media_state", "tenant")
    search_fields = ("text", "wa_message_id", "client_id")
    raw_id_fields = ("conversation", "number", "sender", "reply_to")
    date_hierarchy = "wa_timestamp"
    inlines = [ReactionInline]


@admin.register(Reaction)
class ReactionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("emoji", "message", "user", "reacted_at", "tenant")
    list_filter = ("tenant",)
    search_fields = ("emoji", "wa_message_id")
    raw_id_fields = ("message", "user")


@admin.register(MessageStatusEvent)
class MessageStatusEventAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("wa_message_id", "status", "timestamp", "applied", "message", "tenant", "received_at")
    list_filter = ("status", "applied", "tenant")
    search_fields = ("wa_message_id",)
    raw_id_fields = ("message", "number")


@admin.register(ReadMarker)
class ReadMarkerAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("user", "conversation", "last_read_message", "updated_at", "tenant")
    list_filter = ("tenant",)
    search_fields = ("user__username",)
    raw_id_fields = ("user", "conversation", "last_read_message")


@admin.register(MessageTemplate)
class MessageTemplateAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("name", "language", "category", "status", "number", "tenant")
    list_filter = ("status", "category", "tenant")
    search_fields = ("name", "body_text")


@admin.register(TenantEvent)
class TenantEventAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("tenant", "seq", "type", "conversation_id", "created_at")
    list_filter = ("type", "tenant")
    search_fields = ("type",)
    ordering = ("-created_at",)

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False  # the log is append-only


@admin.register(EventSequence)
class EventSequenceAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("tenant", "last_seq")

    def has_change_permission(self, request, obj=None):  # type: ignore[no-untyped-def]
        return False
