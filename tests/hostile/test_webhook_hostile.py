"""Checks 10, 11, 13, 14 (size) and the webhook half of issue 8's fuzzing.

* parse_body (webhooks/parsers.py) over arbitrary bytes, arbitrary JSON and Meta-shaped bodies with random values
  in every slot: it returns an Envelope or raises ParseError, nothing else;
* signed hostile bodies through the real view with processing inline: never a 500, the raw event is stored, and
  processing ends `processed` or `failed` (an exception never escapes);
* signatures, replays (sequential and concurrent), a mixed batch, status permutations, body size limits.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inbox.models import Direction, Message, MessageStatusEvent
from inbox.tests import factories
from inbox.tests.fixtures import World
from tenants.scoping import scopes_disabled
from webhooks.models import ProcessingState, WebhookEvent
from webhooks.parsers import Envelope, ParseError, parse_body, signature_for

pytestmark = pytest.mark.django_db

URL = "/webhooks/whatsapp/"
SECRET = "hostile-app-secret"
ACME_PNID = "111000111"
EXAMPLES = int(os.environ.get("HOSTILE_WEBHOOK_EXAMPLES", "150"))


@pytest.fixture(autouse=True)
def _secret(settings: Any) -> None:
    settings.WHATSAPP_APP_SECRET = SECRET


def _post(client: Client, body: bytes, *, signature: str | None = "auto") -> Any:
    headers = {}
    if signature == "auto":
        signature = signature_for(body, SECRET)
    if signature is not None:
        headers["HTTP_X_HUB_SIGNATURE_256"] = signature
    return client.post(URL, data=body, content_type="application/json", **headers)


def _envelope(value: dict[str, Any], *, pnid: str = ACME_PNID) -> dict[str, Any]:
    value = {"messaging_product": "whatsapp", "metadata": {"phone_number_id": pnid}, **value}
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
    }


def _text(wamid: str, wa_id: str = "4917111111111", ts: int = 1_760_000_000) -> dict[str, Any]:
    return {"from": wa_id, "id": wamid, "timestamp": str(ts), "type": "text", "text": {"body": "hi " + wamid}}


# --- strategies ------------------------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(["", "0", "-1", "1e309", "99999999999999999999", "text", "image", "reaction", "edit", "revoke"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=10,
)
MESSAGE_TYPES = ["text", "image", "document", "audio", "video", "sticker", "location", "contacts", "interactive"]
MESSAGE_TYPES += ["button", "reaction", "edit", "revoke", "order", "system", "unsupported", "request_welcome", "new"]


@st.composite
def meta_messages(draw: st.DrawFn) -> dict[str, Any]:
    """A message object with Meta's keys, each either a plausible value or random JSON."""
    kind = draw(st.sampled_from(MESSAGE_TYPES) | st.text(max_size=10))

    def maybe(plausible: Any) -> Any:
        return draw(st.one_of(st.just(plausible), json_values))

    message: dict[str, Any] = {
        "from": maybe("4917111111111"),
        "id": maybe(f"wamid.H{draw(st.integers(0, 10**6))}"),
        "timestamp": maybe("1760000000"),
        "type": kind,
    }
    message[kind if isinstance(kind, str) else "x"] = maybe(
        {
            "body": "hi",
            "id": "media-1",
            "mime_type": "image/jpeg",
            "message_id": "wamid.X",
            "emoji": "👍",
            "original_message_id": "wamid.Y",
            "message": {"type": "text", "text": {"body": "edited"}},
            "type": "button_reply",
            "button_reply": {"id": "b", "title": "Yes"},
        }
    )
    for optional in ("context", "errors", "referral", "from_user_id"):
        if draw(st.booleans()):
            message[optional] = draw(json_values)
    return message


@st.composite
def meta_bodies(draw: st.DrawFn) -> dict[str, Any]:
    value: dict[str, Any] = {
        "metadata": draw(st.one_of(st.just({"phone_number_id": ACME_PNID}), json_values)),
        "contacts": draw(st.one_of(st.just([{"wa_id": "4917111111111", "profile": {"name": "X"}}]), json_values)),
        "messages": draw(st.one_of(st.lists(meta_messages(), max_size=4), json_values)),
        "statuses": draw(
            st.one_of(
                st.lists(
                    st.fixed_dictionaries(
                        {"id": st.text(max_size=12) | json_values, "status": st.text(max_size=10) | json_values},
                        optional={"timestamp": json_values, "errors": json_values, "recipient_id": json_values},
                    ),
                    max_size=3,
                ),
                json_values,
            )
        ),
        "errors": draw(st.one_of(st.just([]), json_values)),
    }
    change = {
        "field": draw(
            st.sampled_from(["messages", "account_update", "message_template_status_update"]) | st.text(max_size=8)
        ),
        "value": value,
    }
    entry = {"id": draw(json_values), "changes": draw(st.one_of(st.just([change]), json_values))}
    return {"object": "whatsapp_business_account", "entry": draw(st.one_of(st.just([entry]), json_values))}


def _parses_or_refuses(body: bytes) -> None:
    try:
        result = parse_body(body)
    except ParseError:
        return
    assert isinstance(result, Envelope)
    result.phone_number_ids()


@settings(max_examples=EXAMPLES * 2, deadline=None)
@given(body=st.binary(max_size=512))
def test_the_parser_takes_any_bytes(body: bytes) -> None:
    _parses_or_refuses(body)


@settings(max_examples=EXAMPLES * 2, deadline=None)
@given(value=json_values)
def test_the_parser_takes_any_json(value: Any) -> None:
    _parses_or_refuses(json.dumps(value).encode())


@settings(max_examples=EXAMPLES * 2, deadline=None)
@given(body=meta_bodies())
def test_the_parser_takes_any_meta_shaped_body(body: dict[str, Any]) -> None:
    _parses_or_refuses(json.dumps(body).encode())


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=meta_bodies())
def test_signed_hostile_bodies_never_cause_a_500_and_processing_never_raises(
    world: World, client: Client, body: dict[str, Any]
) -> None:
    raw = json.dumps(body).encode()
    response = _post(client, raw)
    assert response.status_code == 200, response.content
    event = WebhookEvent.objects.order_by("-pk").first()
    assert event is not None and bytes(event.raw_body) == raw
    assert event.state in (ProcessingState.PROCESSED, ProcessingState.FAILED), (event.state, event.last_error)
    # Nothing reached the other tenant: the body names only acme's number (or garbage).
    with scopes_disabled():
        assert not Message.objects.filter(tenant=world.globex).exists()


PATHOLOGICAL = [
    b"",
    b"null",
    b"[" * 100_000 + b"]" * 100_000,  # json.loads hits the recursion limit
    b'{"entry": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b"\xff\xfe\x00garbage",
    b'{"entry": [{"changes": [{"value": {"messages": true, "statuses": 7, "contacts": "x"}}]}]}',
    b'{"entry": [{"changes": [{"value": {"messages": [{"id": "w", "timestamp": "-99999999999999999"}]}}]}]}',
    b'{"entry": [{"changes": [{"value": {"messages": [{"id": "w", "timestamp": "1e400"}]}}]}]}',
]


@pytest.mark.parametrize("raw", PATHOLOGICAL, ids=range(len(PATHOLOGICAL)))
@pytest.mark.parametrize("signed", [True, False])
def test_pathological_bodies_get_a_clean_answer(world: World, client: Client, raw: bytes, signed: bool) -> None:
    response = _post(client, raw, signature="auto" if signed else None)
    assert response.status_code == (200 if signed else 403), response.status_code
    event = WebhookEvent.objects.order_by("-pk").first()
    assert event is not None
    assert event.state in (ProcessingState.PROCESSED, ProcessingState.FAILED, ProcessingState.REJECTED)


# --- signatures and methods (check 10) ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "signature",
    [None, "", "sha256=", "sha256=" + "0" * 64, "sha1=abc", "garbage", "auto-wrong-secret", "auto-other-body"],
)
def test_a_missing_or_wrong_signature_is_refused_and_nothing_is_processed(
    world: World, client: Client, signature: str | None
) -> None:
    raw = json.dumps(_envelope({"messages": [_text("wamid.SIG")]})).encode()
    if signature == "auto-wrong-secret":
        signature = signature_for(raw, "not-the-secret")
    elif signature == "auto-other-body":
        signature = signature_for(raw + b" ", SECRET)
    response = _post(client, raw, signature=signature)
    # PROTOCOL/issue text asks for 401; the webhook view answers 403 (see docs/reliability.md, check 10).
    assert response.status_code in (401, 403)
    with scopes_disabled():
        assert not Message.objects.exists()
    assert not WebhookEvent.objects.exclude(state=ProcessingState.REJECTED).exists()


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_other_methods_get_405(client: Client, method: str) -> None:
    assert getattr(client, method)(URL).status_code == 405


# --- replays and batches (check 11) -------------------------------------------------------------------------------------


def test_replaying_a_body_five_times_stores_one_message(world: World, client: Client) -> None:
    raw = json.dumps(_envelope({"messages": [_text("wamid.REPLAY")]})).encode()
    for _ in range(5):
        assert _post(client, raw).status_code == 200
    with scopes_disabled():
        assert Message.objects.filter(wa_message_id="wamid.REPLAY").count() == 1


@pytest.mark.django_db(transaction=True)
def test_five_concurrent_replays_store_one_message(world: World, require_postgres: None) -> None:
    raw = json.dumps(_envelope({"messages": [_text("wamid.PARALLEL")]})).encode()
    barrier = threading.Barrier(5)
    codes: list[int] = []

    def replay() -> None:
        try:
            barrier.wait(timeout=10)
            codes.append(_post(Client(), raw).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=replay) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert codes == [200] * 5
    with scopes_disabled():
        assert Message.objects.filter(wa_message_id="wamid.PARALLEL").count() == 1


def test_a_batch_of_three_messages_and_four_statuses_applies_all_seven(world: World, client: Client) -> None:
    outbound = [
        factories.make_message(world.acme_conversation, direction=Direction.OUTBOUND, wa_message_id=f"wamid.OUT{i}")
        for i in range(4)
    ]
    statuses = [
        {"id": m.wa_message_id, "status": "delivered", "timestamp": "1760000100", "recipient_id": "4917111111111"}
        for m in outbound
    ]
    raw = json.dumps(_envelope({"messages": [_text(f"wamid.BATCH{i}") for i in range(3)], "statuses": statuses}))
    assert _post(client, raw.encode()).status_code == 200
    with scopes_disabled():
        assert Message.objects.filter(wa_message_id__startswith="wamid.BATCH").count() == 3
        assert set(Message.objects.filter(pk__in=[m.pk for m in outbound]).values_list("status", flat=True)) == {
            "delivered"
        }
        assert MessageStatusEvent.objects.filter(applied=True).count() == 4


# --- status permutations (check 13) -------------------------------------------------------------------------------------

STATUSES = ["sent", "delivered", "read", "failed"]
_perm_ids = itertools.count(1)
RANK = {"pending": 0, "sent": 1, "delivered": 2, "read": 3}


def _expected(sequence: list[str]) -> str:
    """What the customer saw, as the product defines it: the highest step; failed only before delivery."""
    current = "pending"
    for status in sequence:
        if current == "failed":
            continue
        if status == "failed":
            current = "failed" if RANK[current] < RANK["delivered"] else current
        elif RANK[status] > RANK[current]:
            current = status
    return current


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=st.lists(st.sampled_from(STATUSES), min_size=1, max_size=7))
def test_any_order_and_duplication_of_statuses_stores_the_maximum(
    world: World, client: Client, sequence: list[str]
) -> None:
    message = factories.make_message(
        world.acme_conversation, direction=Direction.OUTBOUND, wa_message_id=f"wamid.PERM{next(_perm_ids)}"
    )
    for index, status in enumerate(sequence):
        item: dict[str, Any] = {
            "id": message.wa_message_id,
            "status": status,
            "timestamp": str(1_760_000_000 + index),
            "recipient_id": "4917111111111",
        }
        if status == "failed":
            item["errors"] = [{"code": 131026, "title": "Message undeliverable", "error_data": {"details": "x"}}]
        assert _post(client, json.dumps(_envelope({"statuses": [item]})).encode()).status_code == 200
    with scopes_disabled():
        message.refresh_from_db()
    expected = _expected(sequence)
    assert message.status == expected, (sequence, message.status)
    if expected == "failed":
        assert message.error_code == 131026


# --- sizes (check 14, size half) ---------------------------------------------------------------------------------------


def test_a_signed_3_mb_body_is_accepted(world: World, client: Client) -> None:
    filler = "x" * (3 * 1024 * 1024)
    raw = json.dumps(_envelope({"messages": [_text("wamid.BIG")], "padding": filler})).encode()
    assert len(raw) > 3 * 1024 * 1024
    assert _post(client, raw).status_code == 200
    with scopes_disabled():
        assert Message.objects.filter(wa_message_id="wamid.BIG").count() == 1


def test_a_body_over_the_limit_gets_413_and_is_not_stored(world: World, client: Client, settings: Any) -> None:
    settings.WHATSAPP_WEBHOOK_MAX_BYTES = 64 * 1024
    raw = json.dumps(_envelope({"messages": [_text("wamid.HUGE")], "padding": "y" * 70_000})).encode()
    assert _post(client, raw).status_code == 413
    assert not WebhookEvent.objects.exists()


def test_the_timestamp_of_a_replayed_status_is_not_reapplied(world: World, client: Client) -> None:
    message = factories.make_message(world.acme_conversation, direction=Direction.OUTBOUND, wa_message_id="wamid.TS")
    item = {"id": "wamid.TS", "status": "read", "timestamp": "1760000000", "recipient_id": "4917111111111"}
    for _ in range(3):
        _post(client, json.dumps(_envelope({"statuses": [item]})).encode())
    with scopes_disabled():
        message.refresh_from_db()
        assert message.status == "read"
        assert message.read_at == datetime.fromtimestamp(1_760_000_000, tz=UTC)
        assert MessageStatusEvent.objects.filter(wa_message_id="wamid.TS").count() == 1
