from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from webhooks.parsers import ParseError, _without_lone_surrogates, parse_body, signature_for, signature_valid
from webhooks.tests import payloads


def one(case: str, name: str = "messages.json"):  # type: ignore[no-untyped-def]
    envelope = parse_body(payloads.encode(payloads.body(messages=[payloads.message(name, case)])))
    [change] = envelope.changes
    [message] = change.messages
    return message


def test_it_walks_every_entry_change_message_and_status() -> None:
    envelope = parse_body(payloads.raw("batch_two_tenants.json"))
    assert [c.phone_number_id for c in envelope.changes] == ["111000111", "111000111", "222000222", "999999999"]
    assert [len(c.messages) for c in envelope.changes] == [3, 0, 1, 1]
    assert [len(c.statuses) for c in envelope.changes] == [0, 2, 2, 0]
    assert envelope.changes[0].messages[1].from_bsuid == "DE.88812345678901234567"
    assert envelope.changes[0].messages[1].profile_name == "Jonas"
    assert envelope.problems == ()


def test_text_and_its_timestamp() -> None:
    message = one("text")
    assert (message.type, message.text, message.from_wa_id) == (
        "text",
        "Hallo, wo ist meine Bestellung?",
        "4915112340001",
    )
    assert message.timestamp == datetime.fromtimestamp(1764288000, tz=UTC)


def test_media_fields() -> None:
    document = one("document")
    assert document.media is not None
    assert (document.media.filename, document.media.mime_type, document.text) == (
        "invoice-1042.pdf",
        "application/pdf",
        "My invoice",
    )
    assert one("voice").payload["voice"] is True
    assert one("image").media.url.startswith("https://lookaside.fbsbx.com/")  # type: ignore[union-attr]


def test_reactions_edits_and_deletions() -> None:
    react = one("react", "reactions.json")
    assert (react.reaction_to, react.emoji) == (payloads.cases("messages.json")["text"]["id"], "👍")
    assert one("unreact_no_emoji", "reactions.json").emoji == ""
    edit = one("edit", "edits.json")
    assert edit.original_id.startswith("wamid.HBgN") and edit.edit is not None
    assert edit.edit.text == "Hallo, wo ist meine Bestellung #1042?"
    assert one("revoke", "edits.json").original_id.startswith("wamid.HBgN")


def test_statuses_with_errors() -> None:
    data = payloads.body(statuses=[payloads.cases("statuses.json")["failed"]])
    [status] = parse_body(payloads.encode(data)).changes[0].statuses
    assert status.status == "failed"
    assert (status.errors[0].code, status.errors[0].title, status.errors[0].detail) == (
        131026,
        "Message undeliverable",
        "Message Undeliverable.",
    )


def test_items_without_ids_are_reported_and_the_rest_kept() -> None:
    good = payloads.message("messages.json", "text")
    bad = {k: v for k, v in good.items() if k != "id"}
    envelope = parse_body(payloads.encode(payloads.body(messages=[bad, good])))
    assert len(envelope.changes[0].messages) == 1
    assert envelope.problems == ("entry[0].changes[0].messages[0]: message without id",)


def test_a_message_without_a_sender_is_reported_and_the_rest_kept() -> None:
    good = payloads.message("messages.json", "text")
    anonymous = {k: v for k, v in good.items() if k not in ("from", "from_user_id")} | {"id": "wamid.ANON"}
    contacts = [{"profile": {"name": n}, "wa_id": w} for n, w in (("A", good["from"]), ("B", "15550009999"))]
    # Two contacts: none can be borrowed for the message that names no sender.
    envelope = parse_body(payloads.encode(payloads.body(messages=[anonymous, good], contacts=contacts)))
    assert [m.wa_message_id for m in envelope.changes[0].messages] == [good["id"]]
    assert envelope.problems == ("entry[0].changes[0].messages[0]: message without sender",)


@pytest.mark.parametrize("body", [b"", b"not json", b"[]", b'{"object": "x"}', b"\xff\xfe"])
def test_unreadable_bodies_raise(body: bytes) -> None:
    with pytest.raises(ParseError):
        parse_body(body)


def test_signatures_are_over_the_raw_bytes() -> None:
    wire = payloads.raw("unicode_wire.json")
    header = signature_for(wire, "s3cret")
    assert signature_valid(wire, header, "s3cret")
    assert not signature_valid(wire, header, "other")
    assert not signature_valid(json.dumps(json.loads(wire)).encode(), header, "s3cret")
    assert not signature_valid(wire, header.removeprefix("sha256="), "s3cret")
    assert not signature_valid(wire, None, "s3cret")
    assert not signature_valid(wire, header, "")


def test_lone_surrogates_are_replaced_however_deep_they_sit() -> None:
    """A lone surrogate escape becomes U+FFFD in values and keys alike; a valid pair stays one character; nesting as
    deep as json.loads accepts does not exhaust the recursion limit (a recursive walk did at 500 levels)."""
    depth = 900
    body = (
        b'{"entry": [], "k\\udc4d": {"v": ["a\\ud83d", "\\ud83d\\udc4d"]}, "deep": '
        + b"[" * depth
        + b'"\\udc4d"'
        + b"]" * depth
        + b"}"
    )
    envelope = parse_body(body)  # no RecursionError
    assert envelope.changes == ()
    data = _without_lone_surrogates(json.loads(body))
    assert data["k\ufffd"] == {"v": ["a\ufffd", "\U0001f44d"]}
    inner = data["deep"]
    for _ in range(depth - 1):
        inner = inner[0]
    assert inner == ["\ufffd"]
