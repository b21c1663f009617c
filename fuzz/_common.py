"""What the harnesses share: Django set-up for a fuzzing process, and JSON built from the fuzzer's bytes.

libFuzzer mutates bytes; the webhook parser and the consumer only get interesting past `json.loads`. So most
inputs are read with atheris.FuzzedDataProvider as a recipe for a JSON value: which type comes next, which key
(mostly from the vocabulary the code looks for, so lookups hit), which string. Coverage feedback then steers the
recipe bytes towards new branches of the code under test.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import atheris

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "webhooks" / "tests" / "fixtures"


def _words(text: str) -> list[str]:
    return text.split()


# Keys and string values the webhook parser and the consumer look for (Meta's shapes, PROTOCOL.md's frames).
KEYS = _words(
    "object entry id changes field value messaging_product metadata phone_number_id display_phone_number contacts "
    "profile name wa_id user_id messages statuses from from_user_id timestamp type text body image video audio "
    "document sticker caption mime_type sha256 filename url voice animated location latitude longitude address "
    "interactive button_reply list_reply nfm_reply title button payload reaction message_id emoji revoke "
    "original_message_id edit message context forwarded frequently_forwarded referral errors code error_data "
    "details status recipient_id conversation pricing system order unsupported request_welcome formatted_name "
    "data since conversation_id conversation_ids seq"
)
WORDS = _words(
    "whatsapp_business_account messages statuses text image video audio document sticker location contacts "
    "interactive button reaction revoke edit system order unsupported nfm_reply button_reply sent delivered read "
    "failed played 1764288000 0 -1 1e309 99999999999999999999 111000111 222000222 4915112340001 wamid.X ping sync "
    "conversation:join conversation:leave typing:start typing:stop message:read activity:subscribe "
    "activity:unsubscribe"
)


def consume_str(fdp: atheris.FuzzedDataProvider) -> str:
    choice = fdp.ConsumeIntInRange(0, 3)
    if choice <= 1:
        return WORDS[fdp.ConsumeIntInRange(0, len(WORDS) - 1)]
    if choice == 2:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 40))  # may hold lone surrogates: hostile on purpose
    return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 200))


def consume_key(fdp: atheris.FuzzedDataProvider) -> str:
    if fdp.ConsumeIntInRange(0, 7):
        return KEYS[fdp.ConsumeIntInRange(0, len(KEYS) - 1)]
    return consume_str(fdp)


def consume_json(fdp: atheris.FuzzedDataProvider, depth: int = 0) -> Any:
    """A JSON value from the fuzzer's bytes (nesting stops at depth 6; json.loads itself covers deeper inputs)."""
    kind = fdp.ConsumeIntInRange(0, 9 if depth < 6 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 12))  # up to 96-bit integers, either sign
    if kind == 3:
        return fdp.ConsumeRegularFloat()
    if kind in (4, 5):
        return consume_str(fdp)
    if kind == 6:
        return [consume_json(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    return {consume_key(fdp): consume_json(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 6))}


def encode(fdp: atheris.FuzzedDataProvider, value: Any) -> bytes:
    """JSON bytes as a client might send them: ASCII-escaped, raw UTF-8, or with lone surrogates passed through."""
    if fdp.ConsumeBool():
        return json.dumps(value).encode()
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _slots(node: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key-or-index) in a JSON tree, in a stable order."""
    if isinstance(node, dict):
        for key in list(node):
            out.append((node, key))
            _slots(node[key], out)
    elif isinstance(node, list):
        for index in range(len(node)):
            out.append((node, index))
            _slots(node[index], out)
    return out


def mutate(fdp: atheris.FuzzedDataProvider, tree: Any, max_mutations: int = 4) -> Any:
    """Replace, delete or duplicate up to `max_mutations` nodes of a (copied) JSON tree."""
    for _ in range(fdp.ConsumeIntInRange(1, max_mutations)):
        slots = _slots(tree, [])
        if not slots:
            return consume_json(fdp)
        container, key = slots[fdp.ConsumeIntInRange(0, len(slots) - 1)]
        action = fdp.ConsumeIntInRange(0, 5)
        if action == 0:
            del container[key]
        elif action == 1 and isinstance(container, list):
            container.insert(key, json.loads(json.dumps(container[key])))
        elif action == 2 and isinstance(container, dict):
            container[consume_key(fdp)] = consume_json(fdp, 3)
        else:
            container[key] = consume_json(fdp, 3)
    return tree


def real_payloads() -> list[dict[str, Any]]:
    """Every recorded Meta body of webhooks/tests/fixtures, and each recorded message or status as its own body."""
    bodies: list[dict[str, Any]] = []
    for path in sorted(FIXTURES.glob("*.json")):
        data = json.loads(path.read_text())
        if "entry" in data:
            bodies.append(data)
            continue
        for item in data.values():
            slot = "statuses" if "status" in item and "type" not in item else "messages"
            value = {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550001111", "phone_number_id": "111000111"},
                "contacts": [{"profile": {"name": "Fuzz"}, "wa_id": item.get("from", "4915112340001")}],
                slot: [item],
            }
            bodies.append(
                {
                    "object": "whatsapp_business_account",
                    "entry": [{"id": "1", "changes": [{"field": "messages", "value": value}]}],
                }
            )
    return bodies


def django_setup(*, embedded: bool = False) -> None:
    """Configure Django for a harness. `embedded`: SQLite and the in-memory layer whatever the environment says."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    if embedded:
        for name in ("DATABASE_URL", "REDIS_URL"):
            os.environ.pop(name, None)
        os.environ["SQLITE_TEST_PATH"] = ":memory:"  # the harness's own test database, in memory
    import django

    django.setup()
    from django.conf import settings

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.WHATSAPP_BACKGROUND_TIMERS = False


def run(name: str, test_one_input: Callable[[bytes], None], seeds: list[bytes] | None = None) -> None:
    """Hand the harness to libFuzzer, with real payloads as seed inputs (-seed_inputs: read, never written to).

    The seeds are rewritten on each start into one fixed temporary directory per harness, so nothing accumulates.
    Pass corpus directories or libFuzzer flags (-runs=, -max_total_time=) on the command line as usual.
    """
    argv = list(sys.argv)
    if seeds and not any(arg.startswith("-seed_inputs=") for arg in argv):
        import tempfile

        folder = Path(tempfile.gettempdir()) / f"inbox-fuzz-seeds-{os.getuid()}" / name
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, seed in enumerate(seeds):
            path = folder / f"seed-{index:03d}"
            path.write_bytes(seed)
            paths.append(str(path))
        argv.append("-seed_inputs=" + ",".join(paths))
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
