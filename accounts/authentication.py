from __future__ import annotations

from typing import Any

from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import AuthenticationFailed

EPOCH_CLAIM = "epoch"


class EpochJWTAuthentication(JWTAuthentication):
    """simplejwt's authentication, plus: a token issued before the user's last "log out everywhere" is refused."""

    def get_user(self, validated_token: Any) -> Any:
        user = super().get_user(validated_token)
        if int(validated_token.get(EPOCH_CLAIM, 0)) != user.credentials_epoch:
            raise AuthenticationFailed("Token was revoked (logged out everywhere).", code="token_revoked")
        return user


class EpochJWTScheme(SimpleJWTScheme):  # type: ignore[misc]
    """OpenAPI: documented as the plain bearer JWT it is."""

    target_class = "accounts.authentication.EpochJWTAuthentication"
