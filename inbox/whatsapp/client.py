"""A thin Graph API client on httpx, and the classification of what goes wrong into retry-or-not.

Meta's facts (shared/reference/whatsapp-cloud-api.md §4, §5): sends are `POST /<version>/<phone_number_id>/messages`
with a Bearer token; a 200 carries the wamid and only means "accepted". Errors come in Graph's envelope
`{"error": {"code", "error_subcode", "message", "error_user_title", "error_data": {"details"}, "is_transient"}}`.
Retry decisions key on the code (Meta: "key logic on code and details, not titles"), not on the HTTP status.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from django.conf import settings

from inbox.status import StatusError

logger = logging.getLogger(__name__)

# Throughput, pair rate limit, app/WABA rate limits, maintenance and "something went wrong": wait and retry.
RETRYABLE_CODES = frozenset({1, 2, 4, 80007, 130429, 131000, 131016, 131056, 131057, 133016})
# Permanent for this message: bad parameters, auth, policy, window closed, undeliverable, template problems.
PERMANENT_CODES = frozenset(
    {0, 3, 10, 100, 190, 368, 130472, 131008, 131009, 131021, 131026, 131031, 131042, 131047, 131048}
    | {131049, 131050, 131051, 131052, 131053, 131062}
    | set(range(200, 300))
    | set(range(132000, 132017))
)
TOKEN_EXPIRED_CODES = frozenset({0, 190})


class GraphError(Exception):
    """Meta (or the network) refused the request; `retryable` says whether trying again later can help."""

    def __init__(
        self,
        *,
        title: str,
        detail: str = "",
        code: int | None = None,
        subcode: int | None = None,
        http_status: int | None = None,
        retryable: bool,
        fbtrace_id: str = "",
    ) -> None:
        super().__init__(f"({code}) {title}" if code is not None else title)
        self.title = title
        self.detail = detail
        self.code = code
        self.subcode = subcode
        self.http_status = http_status
        self.retryable = retryable
        self.fbtrace_id = fbtrace_id

    def as_status_error(self) -> StatusError:
        return StatusError(code=self.code, title=self.title, detail=self.detail)

    @property
    def token_expired(self) -> bool:
        return self.code in TOKEN_EXPIRED_CODES or self.http_status == 401


class GraphUnknownOutcome(Exception):
    """The request may have reached Meta (timeout or dropped connection after it went out): never resend blindly."""


@dataclass(frozen=True)
class MediaInfo:
    url: str
    mime_type: str
    sha256: str
    file_size: int | None


class Transport(Protocol):
    """What the send pipeline and the media task need from WhatsApp: the real Graph API or the sandbox."""

    def send_message(self, payload: dict[str, Any]) -> str: ...

    def mark_read(self, wa_message_id: str) -> None: ...

    def upload_media(self, content: bytes, mime_type: str, filename: str) -> str: ...

    def media_info(self, media_id: str) -> MediaInfo: ...

    def download_media(self, url: str, *, max_bytes: int) -> bytes: ...


def classify(http_status: int, body: Any) -> GraphError:
    """Turn an error response into a GraphError with Meta's code, title and detail."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return GraphError(
            title=f"HTTP {http_status}",
            detail=str(body)[:500] if body else "",
            http_status=http_status,
            retryable=http_status >= 500 or http_status == 429,
        )
    raw_code = error.get("code")
    code = raw_code if isinstance(raw_code, int) else None
    data = error.get("error_data") if isinstance(error.get("error_data"), dict) else {}
    title = str(error.get("error_user_title") or error.get("message") or f"HTTP {http_status}")
    detail = str(data.get("details") or error.get("error_user_msg") or error.get("message") or "")
    if code in RETRYABLE_CODES:
        retryable = True
    elif code in PERMANENT_CODES:
        retryable = False
    elif error.get("is_transient") is True:
        retryable = True
    else:
        retryable = http_status >= 500 or http_status == 429
    subcode = error.get("error_subcode")
    return GraphError(
        title=title,
        detail=detail,
        code=code,
        subcode=subcode if isinstance(subcode, int) else None,
        http_status=http_status,
        retryable=retryable,
        fbtrace_id=str(error.get("fbtrace_id") or ""),
    )


class GraphClient:
    """One business number's view of the Graph API. Base URL and version come from settings (or arguments)."""

    def __init__(
        self,
        *,
        access_token: str,
        phone_number_id: str,
        base_url: str | None = None,
        api_version: str | None = None,
        timeout: float | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.phone_number_id = phone_number_id
        self.base_url = (base_url or settings.WHATSAPP_GRAPH_BASE_URL).rstrip("/")
        self.api_version = api_version or settings.WHATSAPP_API_VERSION
        seconds = timeout if timeout is not None else float(getattr(settings, "WHATSAPP_HTTP_TIMEOUT", 20.0))
        self._http = httpx.Client(
            base_url=f"{self.base_url}/{self.api_version}",
            headers={"Authorization": f"Bearer {access_token}"},
            timeout=httpx.Timeout(seconds, connect=min(seconds, 5.0)),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GraphClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, *, idempotent: bool, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # The request never reached Meta: always safe to try again.
            raise GraphError(title="Could not reach the WhatsApp API", detail=str(exc), retryable=True) from exc
        except httpx.TransportError as exc:
            # Timeout or dropped connection after the request went out: Meta may have acted on it.
            if idempotent:
                raise GraphError(title="WhatsApp API did not answer", detail=str(exc), retryable=True) from exc
            raise GraphUnknownOutcome(f"{type(exc).__name__}: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            raise classify(response.status_code, body)
        return body

    def send_message(self, payload: dict[str, Any]) -> str:
        """POST a message; returns the wamid Meta accepted it under."""
        body = self._request("POST", f"/{self.phone_number_id}/messages", json=payload, idempotent=False)
        try:
            return str(body["messages"][0]["id"])
        except (KeyError, IndexError, TypeError) as exc:
            # A 2xx without a wamid: Meta may have accepted it; we cannot tell, so do not resend.
            raise GraphUnknownOutcome(f"unexpected success body: {str(body)[:200]}") from exc

    def mark_read(self, wa_message_id: str) -> None:
        # Marking read twice is harmless, so a timeout here may be retried.
        self._request(
            "POST",
            f"/{self.phone_number_id}/messages",
            json={"messaging_product": "whatsapp", "status": "read", "message_id": wa_message_id},
            idempotent=True,
        )

    def upload_media(self, content: bytes, mime_type: str, filename: str) -> str:
        # An orphaned upload costs nothing (media ids expire), so retrying an upload is safe.
        body = self._request(
            "POST",
            f"/{self.phone_number_id}/media",
            data={"messaging_product": "whatsapp", "type": mime_type},
            files={"file": (filename or "file", content, mime_type)},
            idempotent=True,
        )
        try:
            return str(body["id"])
        except (KeyError, TypeError) as exc:
            raise GraphError(title="Media upload returned no id", detail=str(body)[:300], retryable=True) from exc

    def media_info(self, media_id: str) -> MediaInfo:
        body = self._request("GET", f"/{media_id}", params={"phone_number_id": self.phone_number_id}, idempotent=True)
        if not isinstance(body, dict) or not body.get("url"):
            raise GraphError(title="Media lookup returned no URL", detail=str(body)[:300], retryable=True)
        size = body.get("file_size")
        return MediaInfo(
            url=str(body["url"]),
            mime_type=str(body.get("mime_type") or ""),
            sha256=str(body.get("sha256") or ""),
            file_size=int(size) if isinstance(size, int | str) and str(size).isdigit() else None,
        )

    def download_media(self, url: str, *, max_bytes: int) -> bytes:
        """Fetch a media URL (valid ~5 minutes) with the same Bearer token; stops reading past max_bytes."""
        try:
            with self._http.stream("GET", url, follow_redirects=True) as response:
                if response.status_code >= 400:
                    response.read()
                    error = classify(response.status_code, _json_or_text(response))
                    if response.status_code in (403, 404, 410):
                        # The short-lived URL expired: a fresh one from media_info will work.
                        error.retryable = True
                        error.title = error.title if error.code is not None else "Media URL expired"
                    raise error
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise GraphError(title="Media too large", detail=f"{declared} bytes", retryable=False)
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise GraphError(title="Media too large", detail=f"over {max_bytes} bytes", retryable=False)
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.TransportError as exc:
            raise GraphError(title="Media download failed", detail=str(exc), retryable=True) from exc


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text
