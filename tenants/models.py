from __future__ import annotations

from django.conf import settings
from django.db import models

from .fields import EncryptedTextField
from .scoping import tenant_manager


class Tenant(models.Model):
    """A company whose staff share one inbox."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=60, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    AGENT = "agent", "Agent"


class Membership(models.Model):
    """A user's access to one tenant. Checked on every request and socket, never taken from token claims."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.AGENT)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = tenant_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="tenants_membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} @ {self.tenant} ({self.role})"

    @property
    def is_admin(self) -> bool:
        return self.role in (Role.OWNER, Role.ADMIN)


class WhatsAppNumber(models.Model):
    """A business phone number on the Cloud API. Meta routes webhooks to us by its phone_number_id.

    A number without an access token uses the sandbox transport (no Meta credentials needed).
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="numbers")
    phone_number_id = models.CharField(max_length=64, unique=True)  # unique across all tenants: it routes webhooks
    display_phone_number = models.CharField(max_length=32)
    label = models.CharField(max_length=100, blank=True)
    waba_id = models.CharField("WABA id", max_length=64, blank=True)
    access_token = EncryptedTextField(blank=True)
    app_secret = EncryptedTextField(blank=True, help_text="Blank: the configured default app secret is used.")
    verify_token = EncryptedTextField(blank=True, help_text="Blank: the configured default verify token is used.")
    auth_error = models.CharField(max_length=300, blank=True)  # e.g. token expired (190): needs reconnecting
    created_at = models.DateTimeField(auto_now_add=True)

    objects = tenant_manager()

    def __str__(self) -> str:
        return f"+{self.display_phone_number}" + (f" ({self.label})" if self.label else "")

    @property
    def is_sandbox(self) -> bool:
        return not self.access_token

    def effective_app_secret(self) -> str:
        return self.app_secret or settings.WHATSAPP_APP_SECRET

    def effective_verify_token(self) -> str:
        return self.verify_token or settings.WHATSAPP_VERIFY_TOKEN


class SocketTicket(models.Model):
    """A single-use, 60-second token that lets a non-browser client open the tenant's WebSocket (PROTOCOL.md).

    Only a hash of the token is stored; the token itself goes to the client once.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    token_hash = models.CharField(max_length=64, unique=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = tenant_manager()
