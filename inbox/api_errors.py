"""One JSON error shape for the whole API: {"error": {"code", "message", "fields"}}.

`code` is machine-readable and stable (clients branch on it), `message` is for people, `fields` maps each
offending input field to its messages (empty unless the input was invalid). Django's own ValidationError, raised by
services and selectors, becomes a 400 with the same shape, so a service's field names reach the client as they are.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request or its upload is too large."
    default_code = "payload_too_large"


class Gone(exceptions.APIException):
    status_code = status.HTTP_410_GONE
    default_detail = "What was asked for is no longer retained."
    default_code = "gone"


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state."
    default_code = "conflict"


# A status's code when DRF gives none worth keeping.
_STATUS_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "throttled",
}


def _flatten(detail: Any) -> list[str]:
    if isinstance(detail, dict):
        out: list[str] = []
        for key, value in detail.items():
            out += [f"{key}: {m}" for m in _flatten(value)]
        return out
    if isinstance(detail, list | tuple):
        out = []
        for item in detail:
            out += _flatten(item)
        return out
    return [str(detail)]


def _fields(detail: Any) -> dict[str, Any]:
    """{field: [messages]}; nested serializers keep their nesting ({"template": {"name": [...]}})."""
    if isinstance(detail, dict):
        return {
            str(k): (_fields(v) if isinstance(v, dict) else [str(m) for m in _flatten(v)]) for k, v in detail.items()
        }
    return {"non_field_errors": [str(m) for m in _flatten(detail)]}


def _django_validation_detail(exc: DjangoValidationError) -> Any:
    if hasattr(exc, "error_dict"):
        return {("non_field_errors" if k == "__all__" else k): v for k, v in exc.message_dict.items()}
    return list(exc.messages)


def error_body(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: every handled error answers in the one shape; unknown errors stay 500s (logged)."""
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(_django_validation_detail(exc))
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()

    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response

    if isinstance(exc, exceptions.ValidationError):
        fields = _fields(exc.detail)
        if set(fields) == {"non_field_errors"}:
            message = "; ".join(fields["non_field_errors"])
        else:
            message = "Invalid input: " + "; ".join(_flatten(exc.detail))
        response.data = error_body("validation_error", message[:500], fields)
        return response

    detail = exc.detail
    code = _STATUS_CODES.get(response.status_code, "error")
    if isinstance(detail, dict):
        # simplejwt: {"detail": "...", "code": "token_not_valid", "messages": [...]}
        code = str(detail.get("code") or code)
        message = str(detail.get("detail") or "; ".join(_flatten(detail)))
    else:
        codes = exc.get_codes()
        if isinstance(codes, str) and codes not in ("error", "invalid"):
            code = codes
        message = "; ".join(_flatten(detail))
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        response.data = error_body(code, message)
        response.data["error"]["retry_after"] = int(exc.wait)
        return response
    response.data = error_body(code, message)
    return response


class ErrorDetailSerializer(serializers.Serializer[Any]):
    code = serializers.CharField(help_text="machine-readable, e.g. validation_error, not_found, permission_denied")
    message = serializers.CharField(help_text="human-readable")
    fields = serializers.DictField(
        child=serializers.JSONField(),
        help_text="each invalid input field with its messages; empty for errors that are not about input",
    )
    retry_after = serializers.IntegerField(required=False, help_text="seconds to wait (429 only)")


class ErrorSerializer(serializers.Serializer[Any]):
    error = ErrorDetailSerializer()


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    """OpenAPI responses in the error shape for the given status codes (401 is always documented)."""
    descriptions = {
        400: "Invalid input: `fields` names each offending field.",
        401: "Not authenticated: missing, invalid or expired token.",
        403: "Authenticated but not allowed (e.g. an agent on an admin-only action).",
        404: "No such object in this tenant, unknown tenant, or not a member (all answer alike).",
        409: "Conflicts with the current state.",
        410: "No longer retained (the event log was pruned past `since`): reload state over REST.",
        413: "Request body or upload too large.",
        429: "Throttled: retry after `retry_after` seconds.",
    }
    wanted = sorted({*statuses, 401})
    return {s: OpenApiResponse(ErrorSerializer, description=descriptions.get(s, "Error.")) for s in wanted}
