"""The settings switch and the production guard, each checked in a fresh interpreter with a controlled environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import django, json; django.setup(); from django.conf import settings as s; from config.celery import app;"
    "print(json.dumps({'engine': s.DATABASES['default']['ENGINE'], 'pool': 'pool' in s.DATABASES['default'].get('OPTIONS', {}),"
    "'layer': s.CHANNEL_LAYERS['default']['BACKEND'], 'eager': app.conf.task_always_eager, 'broker': s.CELERY_BROKER_URL,"
    "'cache': s.CACHES['default']['BACKEND'], 'debug': s.DEBUG,"
    "'server_binding': s.DATABASES['default'].get('OPTIONS', {}).get('server_side_binding', False),"
    "'prepare': s.DATABASES['default'].get('OPTIONS', {}).get('prepare_threshold'),"
    "'http_threads': s.HTTP_THREADS}))"
)
CLEAN_KEYS = (
    "DATABASE_URL",
    "REDIS_URL",
    "DEBUG",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "ALLOWED_ORIGINS",
    "REQUIRE_SERVICES",
    "HTTP_THREADS",
    "DATABASE_SERVER_SIDE_BINDING",
    "DATABASE_PREPARE_THRESHOLD",
)


def run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in CLEAN_KEYS}
    base.update(env, DJANGO_SETTINGS_MODULE="config.settings")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=base, capture_output=True, text=True, timeout=60)


def probe(**env: str) -> dict[str, object]:
    result = run(PROBE, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_no_configuration_means_the_embedded_default() -> None:
    got = probe()
    assert got["engine"] == "django.db.backends.sqlite3"
    assert got["layer"] == "channels.layers.InMemoryChannelLayer"
    assert got["eager"] is True and got["debug"] is True
    assert got["cache"].endswith("LocMemCache")  # type: ignore[union-attr]


def test_database_and_redis_urls_switch_to_postgres_pool_and_redis() -> None:
    got = probe(DATABASE_URL="postgres://u@127.0.0.1:5432/x", REDIS_URL="redis://127.0.0.1:6379/0")
    # PostgreSQL through Django's psycopg pool, with the backend that carries the tenant scope to row-level security
    assert got["engine"] in ("django.db.backends.postgresql", "config.db.postgresql") and got["pool"] is True
    assert got["layer"] == "config.channel_layer.PubSubChannelLayer"  # channels-redis pub/sub, batched publishes
    assert got["eager"] is False and got["broker"] == "redis://127.0.0.1:6379/0"
    assert got["cache"].endswith("RedisCache")  # type: ignore[union-attr]
    assert got["server_binding"] is True and got["prepare"] == 5  # bound by PostgreSQL, prepared after 5 runs
    assert got["http_threads"] == 12


def test_server_side_binding_and_the_request_threads_come_from_the_environment() -> None:
    services = {"DATABASE_URL": "postgres://u@127.0.0.1:5432/x", "REDIS_URL": "redis://127.0.0.1:6379/0"}
    got = probe(**services, DATABASE_SERVER_SIDE_BINDING="0", HTTP_THREADS="3")
    assert got["server_binding"] is False and got["prepare"] is None and got["http_threads"] == 3
    got = probe(**services, DATABASE_PREPARE_THRESHOLD="0")  # for a pooler that keeps no prepared statements
    assert got["server_binding"] is True and got["prepare"] is None
    assert probe(**services, DATABASE_PREPARE_THRESHOLD="2")["prepare"] == 2


def test_the_stock_channels_redis_layer_can_be_chosen_from_the_environment() -> None:
    got = probe(
        DATABASE_URL="postgres://u@127.0.0.1:5432/x",
        REDIS_URL="redis://127.0.0.1:6379/0",
        CHANNEL_LAYER_BACKEND="channels_redis.pubsub.RedisPubSubChannelLayer",
    )
    assert got["layer"] == "channels_redis.pubsub.RedisPubSubChannelLayer"


def test_debug_off_without_a_secret_key_refuses_to_start_with_a_clear_message() -> None:
    result = run(PROBE, DEBUG="False", ALLOWED_HOSTS="inbox.example.com")
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is False" in result.stderr


def test_a_malformed_boolean_is_refused() -> None:
    result = run(PROBE, DEBUG="maybe")
    assert result.returncode != 0 and "DEBUG must be True or False" in result.stderr


def test_production_settings_pass_check_deploy() -> None:
    env = {
        "DEBUG": "False",
        "SECRET_KEY": "k" * 64 + "-Production-Only-9f8e7d",
        "ALLOWED_HOSTS": "inbox.example.com",
        "ALLOWED_ORIGINS": "https://inbox.example.com",
        "DATABASE_URL": "postgres://u@127.0.0.1:5432/x",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
    }
    code = "import sys; from django.core.management import execute_from_command_line as r; r(['manage.py', 'check', '--deploy', '--fail-level', 'WARNING'])"
    result = run(code, **env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
