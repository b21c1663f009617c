"""The send's input serializers share their fields between instances (inbox.api.FieldsBuiltOnce) and still judge
every body on its own."""

from __future__ import annotations

import threading
from typing import Any

from inbox.api import SendJsonInputSerializer, SendMultipartInputSerializer


def _judged(data: dict[str, Any]) -> tuple[bool, Any]:
    serializer = SendJsonInputSerializer(data=data)
    valid = serializer.is_valid()
    return valid, (dict(serializer.validated_data) if valid else serializer.errors)


def test_instances_share_one_set_of_fields_per_class() -> None:
    first, second = SendJsonInputSerializer(data={}), SendJsonInputSerializer(data={"text": "x"})
    assert first.fields is second.fields
    assert "template" in first.fields and "media" not in first.fields
    multipart = SendMultipartInputSerializer(data={})
    assert multipart.fields is not first.fields and "media" in multipart.fields and "template" not in multipart.fields


def test_each_body_is_judged_on_its_own_in_any_order() -> None:
    good = {"text": "hello", "client_id": "c-1"}
    bad = {"text": "x" * 5000, "client_id": "not an id!", "reply_to": 0}
    template = {"type": "template", "template": {"name": "hello", "parameters": ["a", "b"]}}
    bad_template = {"type": "template", "template": {"parameters": [""] * 21}}
    expected = {
        "good": (True, {"client_id": "c-1", "type": "text", "text": "hello", "media_link": "", "filename": ""}),
        "template": (
            True,
            {
                "type": "template",
                "text": "",
                "media_link": "",
                "filename": "",
                "template": {"name": "hello", "parameters": ["a", "b"]},
            },
        ),
    }
    for _ in range(2):  # the second round reuses the fields the first one built
        assert _judged(good) == expected["good"]
        valid, errors = _judged(bad)
        assert not valid and set(errors) == {"text", "client_id", "reply_to"}
        assert _judged(template) == expected["template"]
        valid, errors = _judged(bad_template)
        assert not valid and set(errors["template"]) == {"name", "parameters"}
        assert _judged(good) == expected["good"]  # nothing of the refused bodies stayed behind


def test_threads_validating_at_once_get_their_own_answers() -> None:
    results: dict[int, list[tuple[bool, Any]]] = {}

    def work(n: int) -> None:
        body = {"text": f"message {n}", "client_id": f"c-{n}"} if n % 2 else {"text": "", "client_id": "bad id"}
        results[n] = [_judged(body) for _ in range(200)]

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n, answers in results.items():
        if n % 2:
            assert all(a == (True, {**answers[0][1], "text": f"message {n}", "client_id": f"c-{n}"}) for a in answers)
        else:
            assert all(not valid and set(errors) == {"client_id"} for valid, errors in answers)
