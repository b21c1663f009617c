"""Authentication for API clients: JWT obtain/refresh (rotating, blacklisted), logout, and `me`.

Tokens carry only the user id: tenant access is checked against Membership on every request
(inbox/permissions.py), so a removed member or a deactivated user loses access on the very next request.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.serializers import TokenObtainPairSerializer, TokenRefreshSerializer
from rest_framework_simplejwt.settings import api_settings as jwt_settings
from rest_framework_simplejwt.tokens import RefreshToken

from accounts.authentication import EPOCH_CLAIM
from accounts.models import User
from accounts.services import logout_everywhere
from inbox.api_errors import error_responses
from inbox.permissions import JsonApiView
from tenants.selectors import membership_list_for_user_unsafe


class TokenPairSerializer(serializers.Serializer[Any]):
    access = serializers.CharField(help_text="send as `Authorization: Bearer <access>`; short-lived")
    refresh = serializers.CharField(help_text="single use: each refresh returns a new one and revokes the old")


class TokenObtainInputSerializer(TokenObtainPairSerializer):
    """username accepts the username or the email address (accounts/backends.py)."""

    @classmethod
    def get_token(cls, user: Any) -> Any:
        token = super().get_token(user)
        token[EPOCH_CLAIM] = user.credentials_epoch  # "log out everywhere" bumps it; older tokens are refused
        return token


class TokenRefreshInputSerializer(TokenRefreshSerializer):
    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        try:
            return super().validate(attrs)
        except User.DoesNotExist:  # the user was deleted since the token was issued
            raise exceptions.AuthenticationFailed("No active account found for the given token.", "no_active_account")
        except TokenError as exc:
            raise exceptions.AuthenticationFailed(str(exc), "token_not_valid")


class _TokenApi(JsonApiView):
    """No authentication on the way in (a stale header must not block logging in), yet failures answer 401."""

    authentication_classes: list[Any] = []

    def get_authenticate_header(self, request: Request) -> str:
        return f'{jwt_settings.AUTH_HEADER_TYPES[0]} realm="api"'


class TokenObtainApi(_TokenApi):
    permission_classes = [AllowAny]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth"

    @extend_schema(
        operation_id="auth_token_obtain",
        summary="Log in: exchange username (or email) and password for an access and a refresh token",
        request=TokenObtainInputSerializer,
        responses={200: TokenPairSerializer, **error_responses(400, 413, 429)},
        auth=[],
    )
    def post(self, request: Request) -> Response:
        # Django's HttpRequest, not DRF's wrapper: django-axes flags a lockout on the request that authenticate()
        # is given, and its middleware (which answers 429) reads the flag from the HttpRequest.
        serializer = TokenObtainInputSerializer(data=request.data, context={"request": request._request})
        serializer.is_valid(raise_exception=True)
        return Response(serializer.validated_data)


class TokenRefreshApi(_TokenApi):
    permission_classes = [AllowAny]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth"

    class RefreshInputSerializer(serializers.Serializer[Any]):
        refresh = serializers.CharField()

    @extend_schema(
        operation_id="auth_token_refresh",
        summary="Rotate a refresh token: returns a new pair; the old refresh token is blacklisted",
        request=RefreshInputSerializer,
        responses={200: TokenPairSerializer, **error_responses(400, 413, 429)},
        auth=[],
    )
    def post(self, request: Request) -> Response:
        serializer = TokenRefreshInputSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        return Response(serializer.validated_data)


class LogoutApi(JsonApiView):
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth"

    class LogoutInputSerializer(serializers.Serializer[Any]):
        refresh = serializers.CharField(help_text="the refresh token to revoke")

    @extend_schema(
        operation_id="auth_logout",
        summary="Log out: blacklist the refresh token (the short-lived access token expires by itself)",
        request=LogoutInputSerializer,
        responses={204: OpenApiResponse(description="revoked"), **error_responses(400, 413, 429)},
    )
    def post(self, request: Request) -> Response:
        data = self.LogoutInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            token = RefreshToken(data.validated_data["refresh"])  # type: ignore[arg-type]
        except TokenError:
            raise serializers.ValidationError({"refresh": ["is invalid, expired or already revoked"]})
        if str(token.payload.get(jwt_settings.USER_ID_CLAIM)) != str(request.user.pk):
            raise serializers.ValidationError({"refresh": ["belongs to another user"]})
        token.blacklist()
        return Response(status=status.HTTP_204_NO_CONTENT)


class LogoutEverywhereApi(JsonApiView):
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "auth"

    class LogoutEverywhereOutputSerializer(serializers.Serializer[Any]):
        revoked_refresh_tokens = serializers.IntegerField()

    @extend_schema(
        operation_id="auth_logout_everywhere",
        summary="Log out everywhere: end every session, token, ticket and open WebSocket of the current user",
        request=None,
        responses={200: LogoutEverywhereOutputSerializer, **error_responses(401, 429)},
    )
    def post(self, request: Request) -> Response:
        revoked = logout_everywhere(user=request.user)  # type: ignore[arg-type]
        return Response({"revoked_refresh_tokens": revoked})


class MeTenantSerializer(serializers.Serializer[Any]):
    slug = serializers.CharField()
    name = serializers.CharField()
    role = serializers.CharField(help_text="owner, admin or agent")


class MeUserSerializer(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.CharField()
    name = serializers.CharField()


class MeOutputSerializer(serializers.Serializer[Any]):
    user = MeUserSerializer()
    tenants = MeTenantSerializer(many=True)


class MeApi(JsonApiView):
    @extend_schema(
        operation_id="me_retrieve",
        summary="The authenticated user with their tenants and roles",
        responses={200: MeOutputSerializer, **error_responses()},
    )
    def get(self, request: Request) -> Response:
        user: User = request.user  # type: ignore[assignment]
        memberships = membership_list_for_user_unsafe(user=user)
        return Response(
            {
                "user": {"id": user.pk, "username": user.username, "email": user.email, "name": user.name},
                "tenants": [{"slug": m.tenant.slug, "name": m.tenant.name, "role": m.role} for m in memberships],
            }
        )
