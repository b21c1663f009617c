"""Fuzz the webhook end to end: Django's test client → middleware → webhooks/views.py → storage → processing.

The process gets its own in-memory SQLite database (migrated at start-up) with one tenant whose number is
111000111, and Celery runs inline, so each accepted POST is also processed (parse → inbox services) before the
response. Bodies come from the parser harness's generator (raw bytes, fuzzer-built JSON, mutated real Meta
payloads); most are signed with the app secret, some carry no, a wrong or a garbled X-Hub-Signature-256; now
and then the input is a GET handshake with fuzzed parameters instead.

Asserted for every input: the answer is one the view documents (POST: 200 stored, 403 bad signature, 413 too
large; GET: 200 or 403), never a 5xx (the database is up, so the view's 503 means a bug); a signed body is
answered 200; and nothing is logged at ERROR with a traceback other than a service's ValidationError (processing
contains each message's exception and logs it: anything else is a bug found, too).

Known bugs this harness found, probed at start-up: while one is present the harness keeps its inputs ASCII
where the bug needs more, and says so on stderr; once it is fixed the full range is fuzzed again by itself
(tests/hostile/test_atheris.py pins each one with a strict xfail):
* a non-ASCII `hub.verify_token` on the GET handshake: `hmac.compare_digest` raises TypeError → 500;
* a non-ASCII X-Hub-Signature-256 (ASGI servers hand header bytes over as latin-1): TypeError in
  parsers.signature_valid → the view's 503 (and the event is not stored), instead of a 403.

    .venv/bin/python -m fuzz.webhook_view -runs=3000 -max_total_time=60
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import atheris

from fuzz import _common

_common.django_setup(embedded=True)

from django.conf import settings  # noqa: E402
from django.core.exceptions import ValidationError  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

from config.celery import app as celery_app  # noqa: E402

with atheris.instrument_imports(include=["webhooks", "inbox.services"]):
    from webhooks import services, views  # noqa: F401

from fuzz.webhook_parser import PAYLOADS, body_for  # noqa: E402
from webhooks.parsers import signature_for  # noqa: E402

SECRET = "fuzz-app-secret"
URL = "/webhooks/whatsapp/"


class Crash(AssertionError):
    pass


class ErrorRecords(logging.Handler):
    """ERROR records with a traceback: an exception that the code caught only to log it.

    A service's ValidationError is its documented refusal of an input (processing records it and marks the event
    failed), so it is not counted: e.g. a message with neither `from` nor `from_user_id` (and no single contact to
    take them from) is refused by contact_upsert.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and not isinstance(record.exc_info[1], ValidationError):
            self.records.append(record)


ERRORS = ErrorRecords()


def _world() -> None:
    setup_test_environment()
    connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    from inbox.tests import factories

    acme = factories.make_tenant("acme", "Acme")
    factories.make_number(acme, phone_number_id="111000111", display_phone_number="15550001111")
    settings.WHATSAPP_APP_SECRET = SECRET
    settings.WHATSAPP_VERIFY_TOKEN = "fuzz-verify-token"
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = True
    logging.disable(logging.WARNING)  # 403s and parse problems log warnings by design
    logging.getLogger().addHandler(ERRORS)


_world()
CLIENT = Client()


def _fails(call: Any) -> bool:
    try:
        return call().status_code >= 500
    except Exception:
        return True


NON_ASCII_TOKEN_OK = not _fails(
    lambda: CLIENT.get(URL, {"hub.mode": "subscribe", "hub.verify_token": "\u00e9", "hub.challenge": "1"})
)
NON_ASCII_SIGNATURE_OK = not _fails(
    lambda: CLIENT.post(URL, data=b"{}", content_type="application/json", HTTP_X_HUB_SIGNATURE_256="sha256=\u00e9")
)
ERRORS.records.clear()  # the probes' own tracebacks
for ok, what in ((NON_ASCII_TOKEN_OK, "hub.verify_token"), (NON_ASCII_SIGNATURE_OK, "X-Hub-Signature-256")):
    if not ok:
        sys.stderr.write(f"KNOWN BUG: a non-ASCII {what} is answered 5xx; fuzzing it with ASCII only\n")


def _signature(fdp: atheris.FuzzedDataProvider, body: bytes) -> str | None:
    mode = fdp.ConsumeIntInRange(0, 9)
    if mode <= 6:
        return signature_for(body, SECRET)
    if mode == 7:
        return None
    if mode == 8:
        return signature_for(body, SECRET)[:-1] + "0"  # one hex digit off (or a no-op: the body decides)
    garbage = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 80))
    text = garbage.decode("latin-1")
    if not NON_ASCII_SIGNATURE_OK:
        text = text.encode("ascii", "replace").decode()
    return ("sha256=" + text) if fdp.ConsumeBool() else text


def _get(fdp: atheris.FuzzedDataProvider) -> None:
    token = "fuzz-verify-token" if fdp.ConsumeBool() else fdp.ConsumeUnicodeNoSurrogates(40)
    if not NON_ASCII_TOKEN_OK:
        token = token.encode("ascii", "replace").decode()
    params = {
        "hub.mode": "subscribe" if fdp.ConsumeBool() else fdp.ConsumeUnicodeNoSurrogates(20),
        "hub.verify_token": token,
        "hub.challenge": fdp.ConsumeUnicodeNoSurrogates(60),
    }
    response = CLIENT.get(URL, params)
    if response.status_code not in (200, 403):
        raise Crash(f"GET {params!r} answered {response.status_code}")


def test_one_input(data: bytes) -> None:
    if data[:1] == b"G":
        _get(atheris.FuzzedDataProvider(data[1:]))
        return
    split = min(len(data), 16)
    fdp = atheris.FuzzedDataProvider(data[:split])
    body = body_for(data[split:])
    signature = _signature(fdp, body)
    headers: dict[str, Any] = {}
    if signature is not None:
        headers["HTTP_X_HUB_SIGNATURE_256"] = signature
    content_type = ("application/json", "text/plain", "application/x-www-form-urlencoded")[fdp.ConsumeIntInRange(0, 2)]
    response = CLIENT.post(URL, data=body, content_type=content_type, **headers)
    status = response.status_code
    if status not in (200, 403, 413):
        raise Crash(f"POST answered {status} (signature {signature!r}) for {len(body)} bytes: {body[:300]!r}")
    if signature == signature_for(body, SECRET) and status != 200:
        raise Crash(f"a correctly signed body was answered {status}: {body[:300]!r}")
    if ERRORS.records:
        record = ERRORS.records[0]
        ERRORS.records.clear()
        formatted = logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
        raise Crash(f"logged at ERROR: {record.getMessage()}\n{formatted}\nbody: {body[:300]!r}")


def seeds() -> list[bytes]:
    import json

    return [bytes(16) + b"\x00" + json.dumps(p).encode() for p in PAYLOADS] + [b"Gsubscribe"]


def main() -> None:
    _common.run("webhook_view", test_one_input, seeds())


if __name__ == "__main__":
    main()
