from __future__ import annotations

from django.contrib import admin, messages
from django.utils.html import format_html

from .models import WebhookEvent


@admin.register(WebhookEvent)
class WebhookEventAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("id", "received_at", "signature", "state", "attempts", "short_error")
    list_filter = ("state", "signature")
    search_fields = ("body_sha256", "last_error")
    readonly_fields = (
        "received_at",
        "body_sha256",
        "signature",
        "headers",
        "body",
        "state",
        "attempts",
        "last_error",
        "processed_at",
    )
    exclude = ("raw_body",)
    ordering = ("-received_at",)
    actions = ["reprocess"]

    @admin.action(description="Reprocess selected events (rejected ones are never processed)")
    def reprocess(self, request, queryset):  # type: ignore[no-untyped-def]
        from .services import webhook_reprocess

        done = [webhook_reprocess(pk) for pk in queryset.values_list("pk", flat=True)]
        states = [e.state for e in done if e is not None]
        self.message_user(
            request,
            f"{len(states)} reprocessed ({states.count('processed')} processed, {states.count('failed')} failed); "
            f"{len(done) - len(states)} skipped",
            messages.INFO,
        )

    @admin.display(description="raw body")
    def body(self, obj: WebhookEvent) -> str:
        text = bytes(obj.raw_body).decode("utf-8", errors="replace")
        return format_html('<pre style="white-space:pre-wrap;max-width:100ch">{}</pre>', text)

    @admin.display(description="last error")
    def short_error(self, obj: WebhookEvent) -> str:
        return obj.last_error[:80]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        return False
