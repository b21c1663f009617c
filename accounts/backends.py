from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.http import HttpRequest

from .models import User


class UsernameOrEmailBackend(ModelBackend):
    """Log in with either the username or the (case-insensitive) email address."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> User | None:
        if username is None:
            username = kwargs.get(User.USERNAME_FIELD)
        if not username or password is None:
            return None
        field = "email__iexact" if "@" in username else "username"
        user = User.objects.filter(**{field: username}).first()
        if user is None and field == "email__iexact":
            user = User.objects.filter(username=username).first()
        if user is None:
            User().set_password(password)  # same cost as a real check: no timing oracle for unknown users
            return None
        if user.check_password(password) and self.user_can_authenticate(user):
            return user
        return None
