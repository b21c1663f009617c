"""Fuzz webhooks/parsers.py: whatever the body, only ParseError escapes, and the result is well formed.

The contract (parsers.py, webhooks/services.py): `parse_body` returns an Envelope or raises ParseError (the
service catches exactly that and marks the event failed); `phone_number_ids_lenient` and `signature_valid` run on
unauthenticated input before the signature is checked and never raise.

The first byte picks the input's shape: raw bytes, a JSON tree built from the fuzzer's bytes, or a real Meta body
from webhooks/tests/fixtures with a few nodes replaced, deleted or duplicated.

    .venv/bin/python -m fuzz.webhook_parser -runs=10000 -max_total_time=60
"""

from __future__ import annotations

import copy
import json
from datetime import datetime

import atheris

from fuzz import _common

with atheris.instrument_imports(include=["webhooks.parsers"]):
    from webhooks import parsers

PAYLOADS = _common.real_payloads()
SECRET = "fuzz-app-secret"


def body_for(data: bytes) -> bytes:
    if not data:
        return b""
    mode, rest = data[0] % 3, data[1:]
    if mode == 0:
        return rest
    fdp = atheris.FuzzedDataProvider(rest)
    if mode == 1:
        return _common.encode(fdp, _common.consume_json(fdp))
    tree = copy.deepcopy(PAYLOADS[fdp.ConsumeIntInRange(0, len(PAYLOADS) - 1)])
    return _common.encode(fdp, _common.mutate(fdp, tree))


def check_envelope(envelope: parsers.Envelope) -> None:
    assert isinstance(envelope, parsers.Envelope)
    assert all(isinstance(p, str) for p in envelope.problems)
    for change in envelope.changes:
        for name in ("field", "waba_id", "phone_number_id", "display_phone_number"):
            assert isinstance(getattr(change, name), str), name
        assert isinstance(change.value, dict)
        for message in change.messages:
            assert message.wa_message_id and isinstance(message.wa_message_id, str)
            assert isinstance(message.timestamp, datetime) and message.timestamp.tzinfo is not None
            assert isinstance(message.text, str) and isinstance(message.payload, dict)
            json.dumps(message.payload, default=str)  # stored in a JSONField by the service
        for status in change.statuses:
            assert status.wa_message_id and status.status
            assert isinstance(status.timestamp, datetime)


def test_one_input(data: bytes) -> None:
    body = body_for(data)
    try:
        envelope = parsers.parse_body(body)
    except parsers.ParseError:
        pass
    else:
        check_envelope(envelope)
    ids = parsers.phone_number_ids_lenient(body)
    assert isinstance(ids, set) and all(isinstance(i, str) for i in ids)
    # A signature header is whatever the client sent; a correct one must verify, anything else must not raise.
    assert parsers.signature_valid(body, parsers.signature_for(body, SECRET), SECRET) is True
    assert parsers.signature_valid(body, "sha256=" + body[:64].hex(), SECRET) is False


def seeds() -> list[bytes]:
    return [b"\x00" + json.dumps(p).encode() for p in PAYLOADS]


def main() -> None:
    _common.run("webhook_parser", test_one_input, seeds())


if __name__ == "__main__":
    main()
