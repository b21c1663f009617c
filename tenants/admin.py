from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from .models import Membership, SocketTicket, Tenant, WhatsAppNumber

SECRET_FIELDS = ("access_token", "app_secret", "verify_token")


class MembershipInline(admin.TabularInline):  # type: ignore[type-arg]
    model = Membership
    extra = 0
    autocomplete_fields = ("user",)


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("name", "slug", "created_at")
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("user", "tenant", "role", "is_active", "created_at")
    list_filter = ("role", "is_active", "tenant")
    search_fields = ("user__username", "user__email", "tenant__name", "tenant__slug")
    autocomplete_fields = ("user", "tenant")


class WhatsAppNumberForm(forms.ModelForm):  # type: ignore[type-arg]
    """Secrets are write-only: never rendered back; leaving a field blank keeps the stored value."""

    access_token = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False))
    app_secret = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False))
    verify_token = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False))
    clear_secrets = forms.MultipleChoiceField(
        required=False,
        choices=[(f, f.replace("_", " ")) for f in SECRET_FIELDS],
        widget=forms.CheckboxSelectMultiple,
        help_text="Remove these stored secrets (a number without an access token uses the sandbox).",
    )

    class Meta:
        model = WhatsAppNumber
        fields = ("tenant", "phone_number_id", "display_phone_number", "label", "waba_id", "auth_error")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stored_secrets = {field: getattr(self.instance, field) for field in SECRET_FIELDS}

    def save(self, commit: bool = True) -> WhatsAppNumber:
        number = super().save(commit=False)
        for field in SECRET_FIELDS:
            if field in self.cleaned_data.get("clear_secrets", []):
                setattr(number, field, "")
            elif self.cleaned_data.get(field):
                setattr(number, field, self.cleaned_data[field])
            else:
                setattr(number, field, self._stored_secrets[field])
        if commit:
            number.save()
        return number


@admin.register(WhatsAppNumber)
class WhatsAppNumberAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    form = WhatsAppNumberForm
    list_display = ("__str__", "tenant", "phone_number_id", "waba_id", "mode", "has_app_secret", "auth_error")
    list_filter = ("tenant",)
    search_fields = ("phone_number_id", "display_phone_number", "label", "waba_id", "tenant__name")
    fields = (
        "tenant",
        "phone_number_id",
        "display_phone_number",
        "label",
        "waba_id",
        "access_token",
        "app_secret",
        "verify_token",
        "clear_secrets",
        "auth_error",
    )

    @admin.display(description="mode")
    def mode(self, obj: WhatsAppNumber) -> str:
        return "sandbox" if obj.is_sandbox else "Cloud API"

    @admin.display(boolean=True, description="own app secret")
    def has_app_secret(self, obj: WhatsAppNumber) -> bool:
        return bool(obj.app_secret)


@admin.register(SocketTicket)
class SocketTicketAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("user", "tenant", "created_at", "expires_at", "used_at")
    list_filter = ("tenant",)
    search_fields = ("user__username", "tenant__slug")
    exclude = ("token_hash",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
