from __future__ import annotations

import hashlib

from django.contrib.auth.models import AbstractUser
from django.db import models
from django.db.models.functions import Lower
from django.utils.crypto import salted_hmac


class User(AbstractUser):
    """A person who logs in: support staff, admins, integrators. Tenancy comes from tenants.Membership."""

    display_name = models.CharField(max_length=150, blank=True)
    # Bumped by "log out everywhere": every session, JWT and WebSocket issued before it stops working.
    credentials_epoch = models.PositiveIntegerField(default=0, editable=False)

    class Meta:
        constraints = [
            # Login works by username or email, so an email may belong to one account only.
            models.UniqueConstraint(
                Lower("email"), name="accounts_user_email_ci_unique", condition=~models.Q(email="")
            ),
        ]

    def _get_session_auth_hash(self, secret: str | None = None) -> str:
        # Django ends a session whose stored hash no longer matches: the password and the epoch both count.
        key_salt = "accounts.User.session_auth_hash"
        return salted_hmac(
            key_salt, f"{self.password}:{self.credentials_epoch}", secret=secret, algorithm="sha256"
        ).hexdigest()

    @property
    def credential_stamp(self) -> str:
        """Changes whenever the user's credentials are revoked (password change, log out everywhere)."""
        return hashlib.sha256(f"{self.password}:{self.credentials_epoch}".encode("utf-8", "replace")).hexdigest()

    @property
    def name(self) -> str:
        return self.display_name or self.get_full_name() or self.username

    def __str__(self) -> str:
        return self.name
