"""Check 15's alert and the other operator alerts (deploy/prometheus/alerts.yml) stay wired to real metrics.

* every metric an `expr` reads is in the project's registry (config/metrics.py, plus the process collectors) or is
  one of the few series Prometheus or blackbox_exporter make, and every label a rule matches, groups by or prints
  in an annotation is one that metric has: renaming a metric or a label fails here;
* label values the rules rely on are the code's (signature verdicts, the durable frame types);
* a send whose retries run out ends `failed` and increments inbox_send_failures_total with the `code` label the
  dead-send rule groups by;
* `promtool check rules` and `promtool test rules deploy/prometheus/alerts_test.yml` (which proves the dead-send
  alert fires on the first failure of a code) pass. promtool comes from Debian's `prometheus` package, which the
  project's setup installs (`make promtool-deps`, part of `make test`); without it these tests fail.

The PromQL is read with a small tokenizer (names, matchers, grouping clauses), not evaluated: promtool does that.
"""

# ruff: noqa: F811  (the fake_graph fixture is imported and used as a parameter of the same name)
from __future__ import annotations

import re
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.utils import timezone
from prometheus_client import REGISTRY

from config import metrics
from inbox import events
from inbox.models import Message, SendState
from inbox.services.outbound import MAX_ATTEMPTS, message_send, outbox_sweep
from inbox.tests.fake_graph import TOKEN, FakeGraph, fake_graph, graph_error  # noqa: F401
from inbox.tests.fixtures import World
from tenants.scoping import scopes_disabled, tenant_scope
from webhooks.models import SignatureVerdict

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = RULES_DIR / "alerts.yml"
RULES_TEST = RULES_DIR / "alerts_test.yml"

# Series that do not come from the project's registry, and who makes them.
EXTERNAL = {
    "up": {"job", "instance"},  # Prometheus, for every scrape target
    "probe_success": {"job", "instance"},  # blackbox_exporter's probe of /readyz
}
TARGET_LABELS = {"job", "instance"}  # Prometheus adds them to every scraped series
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool", "atan2",
    "inf", "nan",
}  # fmt: skip
NAME = r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)"
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"((?:\\.|[^\"\\])*)\"")


def _registry() -> dict[str, set[str]]:
    """Every sample name the registry can expose → its label names (a histogram's buckets also have `le`)."""
    labels_of = {
        wrapper._name: set(wrapper._labelnames)
        for wrapper in vars(metrics).values()
        if hasattr(wrapper, "_labelnames") and hasattr(wrapper, "_name")
    }
    suffixes = {
        "counter": ["_total", "_created"],
        "gauge": [""],
        "histogram": ["_bucket", "_count", "_sum", "_created"],
        "summary": ["", "_count", "_sum", "_created"],
        "info": ["_info"],
    }
    known: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        labels = labels_of.get(family.name) or {k for s in family.samples for k in s.labels}
        for suffix in suffixes.get(family.type, [""]):
            known[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return known


def _references(expr: str) -> tuple[list[tuple[str, list[tuple[str, str, str]]]], set[str]]:
    """(each metric selector as (name, [(label, op, value)]), the labels of every grouping clause)."""
    grouping = {label.strip() for clause in GROUPING.findall(expr) for label in clause.split(",") if label.strip()}
    text = GROUPING.sub(" ", expr)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery selectors
    refs = []
    for match in re.finditer(NAME + r"\s*(\{[^}]*\})?", text):
        name, selector = match.group(1), match.group(2) or ""
        after = text[match.end() :].lstrip()
        if name in PROMQL_WORDS or (not selector and after.startswith("(")):
            continue  # a keyword or a function call
        refs.append((name, MATCHER.findall(selector)))
    return refs, grouping


def _rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_it_has_the_alerts_the_operators_need() -> None:
    names = {rule["alert"] for rule in _rules()}
    assert {
        "InboxSendDead",  # check 15
        "InboxSendFailuresHigh",
        "InboxWebhookLagHigh",
        "InboxCeleryQueueDeep",
        "InboxWebSocketDeliveryStalled",
        "InboxTargetDown",
        "InboxNotReady",
    } <= names
    for rule in _rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: rule["alert"])
def test_every_metric_and_label_a_rule_reads_exists(rule: dict[str, Any]) -> None:
    known = {**_registry(), **EXTERNAL}
    refs, grouping = _references(rule["expr"])
    assert refs, f"no metric found in {rule['expr']!r}"
    available: set[str] = set(TARGET_LABELS)
    for name, matchers in refs:
        assert name in known, f"{rule['alert']}: {name} is not a metric of the project's registry ({sorted(known)})"
        labels = known[name] | TARGET_LABELS
        available |= labels
        for label, _op, _value in matchers:
            assert label in labels, f"{rule['alert']}: {name} has no label {label!r} (it has {sorted(labels)})"
    assert grouping <= available, f"{rule['alert']}: grouping by {sorted(grouping - available)}, not on its metrics"
    printed = {m for text in rule.get("annotations", {}).values() for m in re.findall(r"\$labels\.(\w+)", text)}
    assert printed <= available, f"{rule['alert']}: annotations print {sorted(printed - available)}"


def test_label_values_in_the_rules_are_the_codes() -> None:
    values: dict[tuple[str, str], set[str]] = {}
    for rule in _rules():
        for name, matchers in _references(rule["expr"])[0]:
            for label, op, value in matchers:
                options = set(value.split("|")) if op in ("=~", "!~") else {value}
                values.setdefault((name, label), set()).update(options)
    assert values[("inbox_webhooks_received_total", "signature")] <= set(SignatureVerdict.values)
    # "No WebSocket delivery" counts exactly the durable frame types as delivery.
    assert values[("inbox_frames_sent_total", "type")] == set(events.DURABLE_TYPES)
    assert values[("inbox_events_sent_total", "kind")] == {"durable"}


def test_the_dead_send_rule_selects_every_code_and_keeps_it() -> None:
    [rule] = [r for r in _rules() if r["alert"] == "InboxSendDead"]
    refs, grouping = _references(rule["expr"])
    assert {name for name, _ in refs} == {"inbox_send_failures_total"}
    assert all(not matchers for _, matchers in refs)  # no code is left out
    assert grouping == {"code"} and metrics.SEND_FAILURES._labelnames == ("code",)
    assert "for" not in rule  # fires on the evaluation that sees the failure


# --- The dead send increments what the rule reads --------------------------------------------------------------------


@pytest.mark.django_db
def test_a_send_whose_retries_run_out_counts_under_its_code(
    world: World, fake_graph: FakeGraph, django_capture_on_commit_callbacks: Any, settings: Any
) -> None:
    settings.WHATSAPP_APP_SECRET = "test-app-secret"
    with scopes_disabled():
        world.acme_number.access_token = TOKEN
        world.acme_number.save()
    number = world.acme_number
    fake_graph.script(
        "POST",
        f"/{number.phone_number_id}/messages",
        *[graph_error(131000, "Something went wrong", status=500)] * MAX_ATTEMPTS,
    )
    before = REGISTRY.get_sample_value("inbox_send_failures_total", {"code": "131000"}) or 0
    with django_capture_on_commit_callbacks(execute=True), tenant_scope(world.acme.pk):
        message, _ = message_send(
            tenant=world.acme, conversation=world.acme_conversation, sender=world.alice, client_id=None, text="hi"
        )
    for _ in range(MAX_ATTEMPTS - 1):
        assert REGISTRY.get_sample_value("inbox_send_failures_total", {"code": "131000"}) in (None, before)
        with scopes_disabled():
            Message.objects.filter(pk=message.pk).update(send_next_attempt_at=timezone.now() - timedelta(seconds=1))
        with django_capture_on_commit_callbacks(execute=True):
            outbox_sweep()
    with scopes_disabled():
        message.refresh_from_db()
    assert (message.send_state, message.send_attempts) == (SendState.FAILED, MAX_ATTEMPTS)
    assert REGISTRY.get_sample_value("inbox_send_failures_total", {"code": "131000"}) == before + 1


# --- promtool --------------------------------------------------------------------------------------------------------


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:  # like the browser tests without Chromium: a missing tool fails, it never skips
        pytest.fail("promtool is missing: run `make promtool-deps` (Debian's `prometheus` package); `make test` does")
    return found


def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_prove_the_alerts_fire() -> None:
    result = subprocess.run(
        [_promtool(), "test", "rules", RULES_TEST.name],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
