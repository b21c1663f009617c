from __future__ import annotations

from typing import Any

from axes.backends import AxesBackend
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


class LockoutBackend(AxesBackend):
    """django-axes' lockout check, first in AUTHENTICATION_BACKENDS, for the login page and the JWT endpoint alike.

    DRF hands authenticate() its own Request wrapper; axes flags the request it is given and its middleware reads
    the flag from Django's HttpRequest, so the wrapper is unwrapped here. Calls without a request (management
    commands, the test client's login()) are not login attempts from the network and skip the check.
    """

    def authenticate(  # type: ignore[override]
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> User | None:
        if request is None:
            return None
        http_request = getattr(request, "_request", request)
        return super().authenticate(http_request, username=username, password=password, **kwargs)  # type: ignore[no-any-return]
