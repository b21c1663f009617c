from __future__ import annotations

import threading
from typing import Any, Final

from django.core.signals import setting_changed
from django.utils.timezone import now
from django.utils.translation import gettext_lazy as _
from drf_spectacular.contrib.rest_framework_simplejwt import SimpleJWTScheme
from rest_framework.request import Request
from rest_framework_simplejwt.authentication import JWTAuthentication
from rest_framework_simplejwt.exceptions import AuthenticationFailed, InvalidToken, TokenError
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.tokens import Token
from rest_framework_simplejwt.utils import get_md5_hash_password

EPOCH_CLAIM = "epoch"

# Set on the DRF request by EpochJWTAuthentication on a tenant route: (tenant slug, user, membership or None), what
# inbox.permissions.TenantMember would otherwise read again.
PREFETCHED_MEMBERSHIP = "prefetched_membership"


class VerifiedTokens:
    """Access tokens whose signature and claims this process has verified, by their exact bytes, until they expire.

    An integrator sends the same token with every request until it expires; verifying it again (base64, JSON, the
    HMAC, the claims) was ~4 % of an agent send's CPU. A token is the same claims under the same signature whatever
    request carries it, so the verdict holds until its `exp`, which is checked again on every hit. What can revoke a
    token before then is checked per request after this, not cached: the user's state, the password hash claim and
    the "log out everywhere" epoch (EpochJWTAuthentication.get_user). Bounded: the oldest entry goes first. Cleared
    when the signing settings change (tests override them).
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._tokens: dict[bytes, Token] = {}
        self._lock = threading.Lock()

    def get(self, raw_token: bytes) -> Token | None:
        token = self._tokens.get(raw_token)
        if token is None:
            return None
        try:
            token.check_exp(current_time=now())
        except TokenError:  # expired since: verified again, which refuses it with simplejwt's own error
            with self._lock:  # (every change under the lock: put's eviction iterates the dict)
                self._tokens.pop(raw_token, None)
            return None
        return token

    def put(self, raw_token: bytes, token: Token) -> None:
        with self._lock:
            while len(self._tokens) >= self.max_entries:
                self._tokens.pop(next(iter(self._tokens)), None)
            self._tokens[raw_token] = token

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()


VERIFIED_TOKENS: Final = VerifiedTokens(max_entries=10_000)


def _signing_changed(*, setting: str, **_: Any) -> None:
    if setting in ("SIMPLE_JWT", "SECRET_KEY"):
        VERIFIED_TOKENS.clear()


setting_changed.connect(_signing_changed)


class EpochJWTAuthentication(JWTAuthentication):
    """simplejwt's authentication, plus: a token issued before the user's last "log out everywhere" is refused.

    On a tenant route (/api/tenants/<slug>/...) the user is read together with their membership of that tenant, in
    one query (tenants.selectors.user_and_membership_unsafe), and the membership is handed to the permission
    check on the request: authentication and membership used to be two statements, each with its own ORM
    compilation and RLS scope change. The checks on the user are simplejwt's own, unchanged.
    """

    _tenant_slug: str | None = None

    def authenticate(self, request: Request) -> Any:
        context = getattr(request, "parser_context", None) or {}
        slug = (context.get("kwargs") or {}).get("tenant_slug")
        self._tenant_slug = str(slug) if slug is not None else None
        self._request = request
        return super().authenticate(request)

    def get_validated_token(self, raw_token: bytes) -> Token:
        """simplejwt's verification, once per token and process (VerifiedTokens)."""
        token = VERIFIED_TOKENS.get(raw_token)
        if token is None:
            token = super().get_validated_token(raw_token)
            VERIFIED_TOKENS.put(raw_token, token)
        return token

    def get_user(self, validated_token: Any) -> Any:
        if self._tenant_slug is None:
            user = super().get_user(validated_token)
        else:
            user = self._get_user_with_membership(validated_token, self._tenant_slug)
        if int(validated_token.get(EPOCH_CLAIM, 0)) != user.credentials_epoch:
            raise AuthenticationFailed("Token was revoked (logged out everywhere).", code="token_revoked")
        return user

    def _get_user_with_membership(self, validated_token: Any, slug: str) -> Any:
        """JWTAuthentication.get_user (same checks, same errors) with the user read by the combined query."""
        from tenants.selectors import user_and_membership_unsafe  # tenants imports accounts.models

        try:
            user_id = validated_token[api_settings.USER_ID_CLAIM]
        except KeyError as e:
            raise InvalidToken(_("Token contained no recognizable user identification")) from e
        try:
            pk = int(user_id)
        except (TypeError, ValueError):
            pk = None
        if pk is None or api_settings.USER_ID_FIELD not in ("id", "pk"):
            return super().get_user(validated_token)  # not a lookup the query makes: simplejwt's own path decides
        user, membership = user_and_membership_unsafe(user_id=pk, tenant_slug=slug)
        if user is None:
            raise AuthenticationFailed(_("User not found"), code="user_not_found")
        if api_settings.CHECK_USER_IS_ACTIVE and not user.is_active:
            raise AuthenticationFailed(_("User is inactive"), code="user_inactive")
        if api_settings.CHECK_REVOKE_TOKEN and validated_token.get(
            api_settings.REVOKE_TOKEN_CLAIM
        ) != get_md5_hash_password(user.password):
            raise AuthenticationFailed(_("The user's password has been changed."), code="password_changed")
        setattr(self._request, PREFETCHED_MEMBERSHIP, (slug, user, membership))
        return user


class EpochJWTScheme(SimpleJWTScheme):  # type: ignore[misc]
    """OpenAPI: documented as the plain bearer JWT it is."""

    target_class = "accounts.authentication.EpochJWTAuthentication"
