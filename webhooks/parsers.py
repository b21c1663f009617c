"""Meta's webhook JSON → frozen dataclasses. Pure: no database, no settings.

Meta batches up to 1000 updates per POST (several entries, changes, messages and statuses), so the parser walks
every one of them; an item it cannot make sense of is reported in `problems` and the rest still counts.
Shapes: shared/reference/whatsapp-cloud-api.md §3 (Meta's messages webhook reference).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SIGNATURE_PREFIX = "sha256="
MEDIA_KINDS = frozenset({"image", "video", "audio", "document", "sticker"})


class ParseError(ValueError):
    """The body is not a WhatsApp webhook we can read at all (bad JSON, wrong top-level shape)."""


def signature_for(body: bytes, secret: str) -> str:
    """The X-Hub-Signature-256 value Meta computes: HMAC-SHA256 of the raw bytes keyed with the app secret."""
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_valid(body: bytes, header: str | None, secret: str) -> bool:
    """Constant-time check over the exact wire bytes (re-serialised JSON would not match: \\u escapes, \\/)."""
    if not header or not secret or not header.startswith(SIGNATURE_PREFIX) or not header.isascii():
        return False  # a non-ASCII header is no hex digest (and compare_digest refuses non-ASCII text)
    return hmac.compare_digest(signature_for(body, secret), header.strip())


@dataclass(frozen=True)
class ErrorInfo:
    code: int | None
    title: str
    detail: str

    @classmethod
    def from_json(cls, raw: Any) -> ErrorInfo:
        if not isinstance(raw, dict):
            return cls(code=None, title=str(raw), detail="")
        code = raw.get("code")
        data = raw.get("error_data") if isinstance(raw.get("error_data"), dict) else {}
        return cls(
            code=int(code) if isinstance(code, int | str) and str(code).lstrip("-").isdigit() else None,
            title=str(raw.get("title") or raw.get("message") or ""),
            detail=str(data.get("details") or raw.get("message") or ""),
        )


@dataclass(frozen=True)
class InboundContact:
    wa_id: str | None
    bsuid: str | None
    profile_name: str


@dataclass(frozen=True)
class InboundMedia:
    id: str
    mime_type: str
    sha256: str
    filename: str
    url: str


@dataclass(frozen=True)
class InboundMessage:
    """One entry of value.messages[]. `type` is Meta's type; the inbox stores unknown ones as unsupported."""

    wa_message_id: str
    type: str
    timestamp: datetime
    from_wa_id: str | None
    from_bsuid: str | None
    profile_name: str
    text: str = ""
    media: InboundMedia | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    context_id: str = ""  # the wamid this message replies to (or whose button was pressed)
    reaction_to: str = ""  # reactions: the wamid reacted to; emoji "" removes the reaction
    emoji: str = ""
    original_id: str = ""  # edit/revoke: the wamid edited or deleted
    edit: InboundMessage | None = None  # edit: the new content
    errors: tuple[ErrorInfo, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InboundStatus:
    wa_message_id: str
    status: str
    timestamp: datetime
    recipient_id: str
    errors: tuple[ErrorInfo, ...]
    raw: dict[str, Any]


@dataclass(frozen=True)
class Change:
    """One entry[].changes[] item. For field "messages" the routing key is phone_number_id."""

    field: str
    waba_id: str
    phone_number_id: str
    display_phone_number: str
    messages: tuple[InboundMessage, ...]
    statuses: tuple[InboundStatus, ...]
    errors: tuple[ErrorInfo, ...]
    value: dict[str, Any]


@dataclass(frozen=True)
class Envelope:
    object: str
    changes: tuple[Change, ...]
    problems: tuple[str, ...]

    def phone_number_ids(self) -> set[str]:
        return {c.phone_number_id for c in self.changes if c.phone_number_id}


def _timestamp(raw: Any) -> datetime:
    # Meta sends Unix seconds as a string.
    try:
        return datetime.fromtimestamp(int(str(raw)), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError) as exc:  # OSError: out-of-range (found by fuzzing)
        raise ParseError(f"bad timestamp {raw!r}") from exc


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    # A hostile or broken body may put any JSON where Meta puts an array (found by tests/hostile fuzzing).
    return value if isinstance(value, list) else []


def _contacts(value: dict[str, Any]) -> list[InboundContact]:
    out = []
    for raw in _list(value.get("contacts")):
        if not isinstance(raw, dict):
            continue
        out.append(
            InboundContact(
                wa_id=_str(raw.get("wa_id")) or None,
                bsuid=_str(raw.get("user_id")) or None,
                profile_name=_str(_dict(raw.get("profile")).get("name")),
            )
        )
    return out


def _match_contact(contacts: list[InboundContact], wa_id: str | None, bsuid: str | None) -> InboundContact | None:
    for contact in contacts:
        if (bsuid and contact.bsuid == bsuid) or (wa_id and contact.wa_id == wa_id):
            return contact
    return contacts[0] if len(contacts) == 1 else None


def _content(msg_type: str, raw: dict[str, Any]) -> tuple[str, InboundMedia | None, dict[str, Any]]:
    """The text, media and type-specific payload of a message body (also used for an edit's new content)."""
    body = raw.get(msg_type)
    payload: dict[str, Any] = {"meta_type": msg_type}
    if msg_type == "text":
        return _str(_dict(body).get("body")), None, payload
    if msg_type in MEDIA_KINDS:
        media = _dict(body)
        for key in ("voice", "animated"):
            if key in media:
                payload[key] = bool(media[key])
        return (
            _str(media.get("caption")),
            InboundMedia(
                id=_str(media.get("id")),
                mime_type=_str(media.get("mime_type")),
                sha256=_str(media.get("sha256")),
                filename=_str(media.get("filename")),
                url=_str(media.get("url")),
            ),
            payload,
        )
    if msg_type == "location":
        location = _dict(body)
        payload.update({k: location[k] for k in ("latitude", "longitude", "name", "address", "url") if k in location})
        return _str(location.get("name") or location.get("address")), None, payload
    if msg_type == "contacts":
        cards = body if isinstance(body, list) else []
        payload["contacts"] = cards
        names = [_str(_dict(_dict(c).get("name")).get("formatted_name")) for c in cards]
        return ", ".join(n for n in names if n), None, payload
    if msg_type == "interactive":
        interactive = _dict(body)
        kind = _str(interactive.get("type"))
        reply = _dict(interactive.get(kind))
        payload.update({"type": kind, kind: reply})
        text = _str(reply.get("title"))
        if kind == "nfm_reply":  # a WhatsApp Flow's answer
            text = _str(reply.get("body")) or "Form submitted"
        return text, None, payload
    if msg_type == "button":
        button = _dict(body)
        payload.update({"payload": _str(button.get("payload")), "text": _str(button.get("text"))})
        return _str(button.get("text")), None, payload
    # unsupported, order, system, request_welcome and anything Meta adds later: kept whole, shown as such.
    payload["raw"] = raw
    if msg_type == "system":
        return _str(_dict(body).get("body")), None, payload
    if msg_type == "order":
        return _str(_dict(body).get("text")), None, payload
    return "", None, payload


def _message(raw: dict[str, Any], contacts: list[InboundContact]) -> InboundMessage:
    wamid = _str(raw.get("id"))
    if not wamid:
        raise ParseError("message without id")
    msg_type = _str(raw.get("type")) or "unknown"
    from_wa_id = _str(raw.get("from")) or None
    from_bsuid = _str(raw.get("from_user_id")) or None
    contact = _match_contact(contacts, from_wa_id, from_bsuid)
    if contact is not None:
        from_wa_id = from_wa_id or contact.wa_id
        from_bsuid = from_bsuid or contact.bsuid
    if not from_wa_id and not from_bsuid:
        raise ParseError("message without sender")
    context = _dict(raw.get("context"))
    errors = tuple(ErrorInfo.from_json(e) for e in _list(raw.get("errors")))
    common: dict[str, Any] = {
        "wa_message_id": wamid,
        "type": msg_type,
        "timestamp": _timestamp(raw.get("timestamp")),
        "from_wa_id": from_wa_id,
        "from_bsuid": from_bsuid,
        "profile_name": contact.profile_name if contact else "",
        "context_id": _str(context.get("id")),
        "errors": errors,
        "raw": raw,
    }
    if msg_type == "reaction":
        reaction = _dict(raw.get("reaction"))
        # Removing a reaction sends no emoji (or an empty one).
        return InboundMessage(
            **common,
            reaction_to=_str(reaction.get("message_id")),
            emoji=_str(reaction.get("emoji")),
            payload={"meta_type": "reaction"},
        )
    if msg_type == "revoke":
        return InboundMessage(
            **common, original_id=_str(_dict(raw.get("revoke")).get("original_message_id")), payload={}
        )
    if msg_type == "edit":
        edit = _dict(raw.get("edit"))
        inner = _dict(edit.get("message"))
        inner_type = _str(inner.get("type")) or "text"
        text, media, payload = _content(inner_type, inner)
        new = InboundMessage(
            wa_message_id=wamid,
            type=inner_type,
            timestamp=common["timestamp"],
            from_wa_id=from_wa_id,
            from_bsuid=from_bsuid,
            profile_name=common["profile_name"],
            text=text,
            media=media,
            payload=payload,
            raw=inner,
        )
        return InboundMessage(**common, original_id=_str(edit.get("original_message_id")), edit=new, payload={})
    text, media, payload = _content(msg_type, raw)
    for key in ("referral",):
        if key in raw:
            payload[key] = raw[key]
    if context.get("forwarded") or context.get("frequently_forwarded"):
        payload["forwarded"] = "frequently" if context.get("frequently_forwarded") else True
    if errors:
        payload["errors"] = [e.__dict__ for e in errors]
    return InboundMessage(**common, text=text, media=media, payload=payload)


def _status(raw: dict[str, Any]) -> InboundStatus:
    wamid = _str(raw.get("id"))
    status = _str(raw.get("status"))
    if not wamid or not status:
        raise ParseError("status without id or status")
    return InboundStatus(
        wa_message_id=wamid,
        status=status,
        timestamp=_timestamp(raw.get("timestamp")),
        recipient_id=_str(raw.get("recipient_id")),
        errors=tuple(ErrorInfo.from_json(e) for e in _list(raw.get("errors"))),
        raw=raw,
    )


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # after json.loads a valid pair is one character: these are lone


def _without_lone_surrogates(data: Any) -> Any:
    """The parsed JSON with every lone surrogate (a `\\udc4d` escape that is not half of a pair) replaced by U+FFFD,
    in place.

    JSON's escapes can spell such a code point, which no UTF-8 text holds: PostgreSQL and SQLite refuse to store it,
    so one in a wamid or a text failed the message's processing (found by fuzz/webhook_view.py). Meta sends UTF-8;
    a body that carries one anyway is stored as it came and processed with the replacement character. Walked with a
    stack of its own, not by recursion: json.loads accepts nesting deeper than Python's recursion limit allows a
    recursive walk."""
    if isinstance(data, str):
        return _LONE_SURROGATE.sub("\ufffd", data)
    pending = [data]
    while pending:
        node = pending.pop()
        keys = range(len(node)) if isinstance(node, list) else list(node) if isinstance(node, dict) else ()
        for key in keys:
            value = node[key]
            if isinstance(value, str):
                node[key] = _LONE_SURROGATE.sub("\ufffd", value)
            elif isinstance(value, list | dict):
                pending.append(value)
            if isinstance(key, str) and _LONE_SURROGATE.search(key):
                node[_LONE_SURROGATE.sub("\ufffd", key)] = node.pop(key)
    return data


def parse_body(body: bytes) -> Envelope:
    """Parse a whole POST body. Raises ParseError only when nothing in it can be read."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # RecursionError: [[[[...]]]]
        raise ParseError(f"invalid JSON: {exc}") from exc
    if b"\\ud" in body or b"\\uD" in body:  # only an escape can spell a surrogate (raw bytes fail to decode)
        data = _without_lone_surrogates(data)
    if not isinstance(data, dict) or not isinstance(data.get("entry"), list):
        raise ParseError("not a webhook body: no entry list")
    problems: list[str] = []
    changes: list[Change] = []
    for e_index, entry in enumerate(data["entry"]):
        if not isinstance(entry, dict):
            problems.append(f"entry[{e_index}] is not an object")
            continue
        for c_index, change in enumerate(_list(entry.get("changes"))):
            where = f"entry[{e_index}].changes[{c_index}]"
            if not isinstance(change, dict) or not isinstance(change.get("value"), dict):
                problems.append(f"{where} has no value object")
                continue
            value: dict[str, Any] = change["value"]
            metadata = _dict(value.get("metadata"))
            contacts = _contacts(value)
            messages: list[InboundMessage] = []
            for m_index, raw in enumerate(_list(value.get("messages"))):
                try:
                    messages.append(_message(_dict(raw), contacts))
                except ParseError as exc:
                    problems.append(f"{where}.messages[{m_index}]: {exc}")
            statuses: list[InboundStatus] = []
            for s_index, raw in enumerate(_list(value.get("statuses"))):
                try:
                    statuses.append(_status(_dict(raw)))
                except ParseError as exc:
                    problems.append(f"{where}.statuses[{s_index}]: {exc}")
            changes.append(
                Change(
                    field=_str(change.get("field")),
                    waba_id=_str(entry.get("id")),
                    phone_number_id=_str(metadata.get("phone_number_id")),
                    display_phone_number=_str(metadata.get("display_phone_number")),
                    messages=tuple(messages),
                    statuses=tuple(statuses),
                    errors=tuple(ErrorInfo.from_json(e) for e in _list(value.get("errors"))),
                    value=value,
                )
            )
    return Envelope(object=_str(data.get("object")), changes=tuple(changes), problems=tuple(problems))


def phone_number_ids_lenient(body: bytes) -> set[str]:
    """The phone_number_ids a body names, for picking the app secret before the signature is checked.

    Nothing here is trusted: it only chooses which secret to verify with.
    """
    try:
        return parse_body(body).phone_number_ids()
    except ParseError:
        return set()
