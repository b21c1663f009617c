from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.db import models
from django.db.models.functions import Lower


class User(AbstractUser):
    """A person who logs in: support staff, admins, integrators. Tenancy comes from tenants.Membership."""

    display_name = models.CharField(max_length=150, blank=True)

    class Meta:
        constraints = [
            # Login works by username or email, so an email may belong to one account only.
            models.UniqueConstraint(
                Lower("email"), name="accounts_user_email_ci_unique", condition=~models.Q(email="")
            ),
        ]

    @property
    def name(self) -> str:
        return self.display_name or self.get_full_name() or self.username

    def __str__(self) -> str:
        return self.name
