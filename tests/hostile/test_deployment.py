"""Checks 23 and 24 and the deployment half of issue 8: what production settings actually send, and lockout.

Production values are read from a fresh interpreter started with DEBUG=False (config/settings.py's own branch),
then applied to this process's settings, so the test follows settings.py rather than a copy of it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone

from inbox.tests.factories import PASSWORD
from inbox.tests.fixtures import World
from tenants import fields
from tenants.models import WhatsAppNumber
from tenants.scoping import scopes_disabled

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_ENV = {
    "DEBUG": "False",
    "SECRET_KEY": "deployment-test-" + "s3cr3t" * 10,
    "ALLOWED_HOSTS": "inbox.example.com",
    "ALLOWED_ORIGINS": "https://inbox.example.com",
    "WHATSAPP_APP_SECRET": "prod-app-secret",
    "WHATSAPP_VERIFY_TOKEN": "prod-verify-token",
    "FIELD_ENCRYPTION_KEY": "",
}
SECURITY_SETTINGS = (
    "SECURE_SSL_REDIRECT",
    "SECURE_PROXY_SSL_HEADER",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SESSION_COOKIE_HTTPONLY",
    "SESSION_COOKIE_SAMESITE",
    "CSRF_COOKIE_SAMESITE",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SECURE_CONTENT_TYPE_NOSNIFF",
    "SECURE_REFERRER_POLICY",
    "X_FRAME_OPTIONS",
    "ALLOWED_HOSTS",
    "ALLOWED_ORIGINS",
    "CONTENT_SECURITY_POLICY",
)


def _production_env() -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "DATABASE_URL", "REDIS_URL", "SQLITE_PATH")}
    return {**keep, **PRODUCTION_ENV, "DJANGO_SETTINGS_MODULE": "config.settings"}


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, env=_production_env(), capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def production() -> dict[str, Any]:
    code = (
        "import django, json; django.setup(); from django.conf import settings as s;"
        f"print(json.dumps({{k: getattr(s, k, None) for k in {SECURITY_SETTINGS!r}}}, default=str))"
    )
    result = _run([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr
    values: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return values


@pytest.fixture
def prod(settings: Any, production: dict[str, Any]) -> dict[str, Any]:
    """This process with the production security settings (the rest stays: test database, in-memory layer)."""
    for key, value in production.items():
        if key in ("ALLOWED_HOSTS", "ALLOWED_ORIGINS", "CONTENT_SECURITY_POLICY"):
            continue  # the test client talks to "testserver"; the CSP dict is compared below as it is
        if key == "SECURE_PROXY_SSL_HEADER" and value is not None:
            value = tuple(value)
        setattr(settings, key, value)
    settings.SECURE_SSL_REDIRECT = False  # the test client is not behind the TLS proxy; secure=True marks requests
    return production


# --- check 23: check --deploy and the headers -----------------------------------------------------------------------


def test_check_deploy_passes_at_warning_level_with_production_settings() -> None:
    result = _run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_settings_list_hosts_and_origins_explicitly(production: dict[str, Any]) -> None:
    assert production["ALLOWED_HOSTS"] == ["inbox.example.com"]
    assert production["ALLOWED_ORIGINS"] == ["https://inbox.example.com"]
    assert "*" not in production["ALLOWED_HOSTS"] and "*" not in production["ALLOWED_ORIGINS"]


def test_production_refuses_a_wildcard_host() -> None:
    env = {**_production_env(), "ALLOWED_HOSTS": "*"}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "ALLOWED_HOSTS" in result.stderr


def _csp(response: Any) -> dict[str, list[str]]:
    header = response.get("Content-Security-Policy", "")
    assert header, "no enforced Content-Security-Policy header"
    directives: dict[str, list[str]] = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            directives[words[0]] = words[1:]
    return directives


def _assert_no_inline_script(html: str, nonce: str | None) -> None:
    for match in re.finditer(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S | re.I):
        attrs, body = match.group(1), match.group(2)
        if "src=" not in attrs:
            assert nonce and f'nonce="{nonce}"' in attrs, f"inline script without the request's nonce: {attrs}"
        assert not body.strip() or "src=" not in attrs
    assert not re.search(r"\son[a-z]+\s*=", html, flags=re.I), "inline event handler attribute (onclick=...)"
    assert "javascript:" not in html.lower()


def _html_pages(world: World) -> list[tuple[str, Client]]:
    anonymous = Client()
    member = Client()
    member.force_login(world.alice)
    return [("/accounts/login/", anonymous), ("/t/acme/", member), ("/api/docs/", member)]


def test_html_responses_carry_hsts_csp_nosniff_referrer_policy_and_no_inline_script(
    world: World, prod: dict[str, Any]
) -> None:
    for url, client in _html_pages(world):
        response = client.get(url, secure=True)
        assert response.status_code == 200, (url, response.status_code)
        assert response["Strict-Transport-Security"].startswith("max-age=31536000"), url
        assert "includeSubDomains" in response["Strict-Transport-Security"]
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Referrer-Policy"] in ("same-origin", "strict-origin-when-cross-origin", "no-referrer")
        assert response["X-Frame-Options"] == "DENY"
        csp = _csp(response)
        assert "Content-Security-Policy-Report-Only" not in response
        script = csp.get("script-src", csp.get("default-src", []))
        assert "'unsafe-eval'" not in script and "'unsafe-inline'" not in script, script
        assert csp.get("frame-ancestors") == ["'none'"]
        assert csp.get("object-src") == ["'none'"]
        # django-csp adds the per-request nonce to the header only when a template uses it; none does, as no
        # page has an inline script. Whatever a page has, an inline script must carry this request's nonce.
        nonce = next((s[len("'nonce-") : -1] for s in script if s.startswith("'nonce-")), None)
        _assert_no_inline_script(response.content.decode(), nonce)


def test_the_session_cookie_is_secure_httponly_samesite_lax(world: World, prod: dict[str, Any]) -> None:
    client = Client()
    response = client.post(
        "/accounts/login/", {"username": "alice", "password": PASSWORD}, secure=True, REMOTE_ADDR="10.0.0.1"
    )
    assert response.status_code == 302, response.status_code
    cookie = response.cookies["sessionid"]
    assert cookie["secure"]
    assert cookie["httponly"]
    assert cookie["samesite"] == "Lax"
    csrf = client.get("/accounts/login/", secure=True).cookies.get("csrftoken")
    if csrf is not None:
        assert csrf["secure"] and csrf["samesite"] == "Lax"


def test_an_htmx_post_without_the_csrf_token_is_refused(world: World, prod: dict[str, Any]) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.alice)
    url = f"/t/acme/conversations/{world.acme_conversation.pk}/change/"
    response = client.post(url, {"status": "resolved"}, secure=True, HTTP_HX_REQUEST="true")
    assert response.status_code == 403
    with scopes_disabled():
        world.acme_conversation.refresh_from_db()
    assert world.acme_conversation.status == "open"


# --- check 24: login lockout ---------------------------------------------------------------------------------------


def _page_login(client: Client, password: str) -> int:
    response = client.post("/accounts/login/", {"username": "alice", "password": password}, REMOTE_ADDR="10.1.1.1")
    return int(response.status_code)


def _token_login(client: Client, password: str) -> int:
    response = client.post(
        "/api/auth/token/",
        data=json.dumps({"username": "alice", "password": password}),
        content_type="application/json",
        REMOTE_ADDR="10.1.1.1",
    )
    return int(response.status_code)


def _expire_lockout() -> None:
    from axes.models import AccessAttempt

    past = timezone.now() - timedelta(hours=2)
    AccessAttempt.objects.update(attempt_time=past)
    if hasattr(AccessAttempt, "expiration"):
        from axes.models import AccessAttemptExpiration

        AccessAttemptExpiration.objects.update(expires_at=past)


@pytest.mark.parametrize("login", [_page_login, _token_login], ids=["login-page", "token-endpoint"])
def test_five_failures_lock_the_username_from_that_address_until_the_cool_off_ends(
    world: World, settings: Any, login: Any
) -> None:
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "auth": "1000/min"},
    }
    client = Client()
    for _ in range(4):
        assert login(client, "wrong-password") in (400, 401)
    assert login(client, "wrong-password") in (400, 401, 429)  # the fifth failure itself may already answer 429
    assert login(client, PASSWORD) == 429, "locked out even with the right password"
    # Another address is not locked out: an attacker cannot lock alice out everywhere.
    other = client.post(
        "/accounts/login/", {"username": "alice", "password": PASSWORD}, REMOTE_ADDR="10.9.9.9"
    ).status_code
    assert other in (200, 302)
    _expire_lockout()
    assert login(Client(), PASSWORD) in (200, 302), "the cool-off ends"


def test_the_throttle_cache_is_the_shared_redis_cache(settings: Any, require_redis: None) -> None:
    from django.core.cache import caches

    backend = type(caches["default"]).__name__
    assert backend == "RedisCache", f"DRF throttles and the login throttle live in {backend}, not in shared Redis"


# --- secrets at rest and in logs ------------------------------------------------------------------------------------


def test_number_secrets_are_encrypted_at_rest_with_the_configured_key(world: World, settings: Any) -> None:
    secret = "EAAG-very-secret-access-token-123"
    with scopes_disabled():
        number = WhatsAppNumber.objects.get(pk=world.acme_number.pk)
        number.access_token = secret
        number.app_secret = "app-secret-456"
        number.save()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT access_token, app_secret FROM tenants_whatsappnumber WHERE id = %s", [world.acme_number.pk]
        )
        stored = cursor.fetchone()
    assert stored is not None
    for value, plain in zip(stored, (secret, "app-secret-456"), strict=True):
        assert value.startswith(fields.PREFIX) and plain not in value
    with scopes_disabled():
        assert WhatsAppNumber.objects.get(pk=world.acme_number.pk).access_token == secret
    # Another key (FIELD_ENCRYPTION_KEY from the environment) cannot read them.
    from cryptography.fernet import Fernet

    settings.FIELD_ENCRYPTION_KEY = Fernet.generate_key().decode()
    with pytest.raises(ValueError, match="FIELD_ENCRYPTION_KEY"):
        fields.decrypt(stored[0])


def test_credentials_in_log_lines_are_redacted() -> None:
    import logging

    from config.observability import ContextFilter, JsonFormatter

    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyX2lkIjoxfQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
    lines = [
        "GET /ws/tenants/acme/?ticket=AbCdEf0123456789xyz HTTP/1.1",
        f"Authorization: Bearer {jwt}",
        f'{{"refresh": "{jwt}", "password": "hunter2hunter2"}}',
        "https://graph.example/v1/media?access_token=EAAGsecretsecret",
        "app_secret=shhh-its-secret verify_token=also-secret",
    ]
    formatter = JsonFormatter()
    for line in lines:
        record = logging.LogRecord("t", logging.WARNING, __file__, 1, line, None, None)
        ContextFilter().filter(record)
        out = formatter.format(record)
        for needle in ("AbCdEf0123456789xyz", jwt, "hunter2hunter2", "EAAGsecretsecret", "shhh-its-secret"):
            assert needle not in out, out
