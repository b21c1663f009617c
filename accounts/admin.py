from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from .models import User


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    list_display = ("username", "email", "display_name", "is_active", "is_staff", "last_login")
    list_filter = ("is_active", "is_staff", "is_superuser")
    search_fields = ("username", "email", "display_name", "first_name", "last_name")
    fieldsets = (*BaseUserAdmin.fieldsets, ("Inbox", {"fields": ("display_name",)}))  # type: ignore[misc]
    add_fieldsets = (
        (None, {"classes": ("wide",), "fields": ("username", "email", "display_name", "password1", "password2")}),
    )
