"""One settings module, configured from the environment.

With no configuration at all the app runs on the embedded default: a SQLite file, Channels' in-memory layer and
Celery tasks run inline, so a fresh checkout works in one process. DATABASE_URL and REDIS_URL switch it to
PostgreSQL (through Django's psycopg connection pool) and Redis (channels-redis pub/sub layer, Celery broker,
cache), which is what production runs.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import dj_database_url
from csp.constants import NONCE, NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, *, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw in ("True", "true", "1", "yes", "on"):
        return True
    if raw in ("False", "false", "0", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be True or False, not {raw!r}")


def env_int(name: str, *, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}") from exc


def env_float(name: str, *, default: float) -> float:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}") from exc


def env_list(name: str, *, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


DEBUG = env_bool("DEBUG", default=True)
SECRET_KEY = os.environ.get("SECRET_KEY") or ("dev-only-not-secret-" + "x" * 40 if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is False")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must be set when DEBUG is False")
if not DEBUG and "*" in ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must not contain '*' when DEBUG is False")

# Origins allowed to open a WebSocket with a session cookie and to POST forms (scheme://host[:port]).
ALLOWED_ORIGINS = env_list(
    "ALLOWED_ORIGINS",
    default=[f"http://{h}:8000" for h in ("127.0.0.1", "localhost")] + ["http://testserver"] if DEBUG else [],
)
if "*" in ALLOWED_ORIGINS:
    raise ImproperlyConfigured("ALLOWED_ORIGINS must list origins explicitly, not '*'")
CSRF_TRUSTED_ORIGINS = ALLOWED_ORIGINS

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "channels",
    "rest_framework",
    "rest_framework_simplejwt.token_blacklist",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from our static files: no CDN, and the CSP stays 'self'
    "django_htmx",
    "template_partials",
    "axes",
    "accounts",
    "tenants",
    "inbox",
    "webhooks",
]

MIDDLEWARE = [
    "config.observability.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "csp.middleware.CSPMiddleware",
    "axes.middleware.AxesMiddleware",  # inside CSP: turns a flagged lockout into the 429 response
    # Innermost, and sync-only: under ASGI Django then runs the whole stack in one thread. Below a sync-only
    # middleware the async-capable ones above ran on the event loop, and CSP's process_request/process_response
    # each cost a hop to the request thread and back (MiddlewareMixin.__acall__) on every request.
    "tenants.middleware.AdminScopesDisabledMiddleware",
]
# Machine-to-machine paths: no cookie comes in, no page goes out. Under Daphne (config/http.py) they skip the page
# middleware above; the request id, the security headers and the Host check (CommonMiddleware) still apply.
LEAN_PATH_PREFIXES = ("/webhooks/", "/healthz", "/readyz", "/metrics")
LEAN_MIDDLEWARE = [
    "config.observability.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
# A REST call authenticated by its bearer token alone (no cookie): config/http.py.
BEARER_PATH_PREFIXES = ("/api/",)
BEARER_MIDDLEWARE = [
    "config.observability.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
]

ROOT_URLCONF = "config.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

# --- Database ---------------------------------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", "")
DATABASES: dict[str, dict[str, Any]] = {
    "default": dj_database_url.parse(DATABASE_URL)
    if DATABASE_URL
    else {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
    }
}
_db = DATABASES["default"]
DATABASE_APP_ROLE = os.environ.get("DATABASE_APP_ROLE", "")
if _db["ENGINE"] == "django.db.backends.postgresql":
    # Row-level security (config/db/rls.py): this backend keeps app.tenant_id / app.rls_bypass in step with the
    # django-scopes scope. The RLS migration forces RLS on the tenant tables, so an app role subject to it (not a
    # superuser, no BYPASSRLS) sees nothing through the stock backend: DATABASE_RLS=False only for debugging.
    if env_bool("DATABASE_RLS", default=True):
        _db["ENGINE"] = "config.db.postgresql"
    # Connect as the owner (or any login role) and drop to the non-owner app role created by `manage.py rls_role`;
    # leave it unset for `migrate`, which must run as the owner.
    if DATABASE_APP_ROLE:
        _db.setdefault("OPTIONS", {})["assume_role"] = DATABASE_APP_ROLE
    # Persistent connections under Daphne exhausted PostgreSQL at 16 concurrent requests in a measurement here;
    # Django's psycopg pool does not (shared/reference/performance-method.md 4.4). The pool needs CONN_MAX_AGE=0.
    _db["CONN_MAX_AGE"] = 0
    # Parameters bound by PostgreSQL, and a statement run 5 times on a connection prepared (its plan kept), instead of
    # quoted into the SQL by psycopg and planned every time. Django turns psycopg's prepared statements off by default;
    # here they pay: a send's four statements spent ~2.3 ms in PostgreSQL, much of it planning, and M1 at 20/s went
    # p50 12.3/10.5 -> 9.7/8.7 ms, p99 16.7/16.8 -> 12.8/13.4 ms in two pairs of runs (docs/performance.md, run 11).
    # A change of RLS scope still travels with the statement after it (config/db/postgresql/base.py). Behind a pooler
    # in transaction mode that keeps no prepared statements (PgBouncer before 1.21, or without max_prepared_statements)
    # set DATABASE_PREPARE_THRESHOLD=0 (bound on the server, never prepared) or DATABASE_SERVER_SIDE_BINDING=0.
    if env_bool("DATABASE_SERVER_SIDE_BINDING", default=True):
        _db.setdefault("OPTIONS", {})["server_side_binding"] = True
        prepare = env_int("DATABASE_PREPARE_THRESHOLD", default=5)
        _db["OPTIONS"]["prepare_threshold"] = prepare if prepare > 0 else None
    if env_bool("DATABASE_POOL", default=True):
        _db.setdefault("OPTIONS", {})["pool"] = {
            "min_size": env_int("DATABASE_POOL_MIN", default=2),
            "max_size": env_int("DATABASE_POOL_MAX", default=16),
            # How long a request waits for a connection: short, so that with PostgreSQL down the webhook answers
            # 503 (and Meta retries) well within Meta's and clients' own timeouts.
            "timeout": env_float("DATABASE_POOL_TIMEOUT", default=5.0),
        }
elif _db["ENGINE"] == "django.db.backends.sqlite3":
    # Several threads write under Daphne: take the write lock at BEGIN so two writers queue instead of deadlocking.
    _db.setdefault("OPTIONS", {}).update(
        {"transaction_mode": "IMMEDIATE", "timeout": 20, "init_command": "PRAGMA journal_mode=WAL;"}
    )
    _db.setdefault("TEST", {})["NAME"] = os.environ.get("SQLITE_TEST_PATH", str(BASE_DIR / "test-db.sqlite3"))
USING_POSTGRES = _db["ENGINE"] in ("django.db.backends.postgresql", "config.db.postgresql")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = ["accounts.backends.LockoutBackend", "accounts.backends.UsernameOrEmailBackend"]
# Login lockout (django-axes) on the login page and the JWT endpoint: 5 failures for one username from one IP lock
# that pair (not the account everywhere, so an attacker elsewhere cannot lock a user out) for a cool-off period.
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("AXES_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_HTTP_RESPONSE_CODE = 429
AXES_LOCKOUT_CALLABLE = "accounts.lockout.lockout_response"
AXES_VERBOSE = False
AXES_IPWARE_PROXY_COUNT = env_int("PROXY_COUNT", default=0)  # trusted reverse proxies in front (X-Forwarded-For)
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/admin/login/"

# --- Redis: channel layer, cache, Celery --------------------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SOFT_TIME_LIMIT = 60
CELERY_TASK_TIME_LIMIT = 90
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
# Celery's Django fixup hands every database connection back after each task and, in a prefork child with Django's
# connection pool, closes the whole pool: every task then opened new PostgreSQL connections (34 ms per inbound batch
# instead of ~5, bench M2 with `-P prefork -c 2`). With this it recycles them every 2 x 1,000 tasks only; the
# connection still goes back to the pool after each task (config.celery.return_connections).
CELERY_DB_REUSE_MAX = 1000
if REDIS_URL:
    # The pub/sub layer was ~40x better at p99 than the core layer here (performance-method.md 4.1/4.2).
    CHANNEL_LAYERS: dict[str, Any] = {
        "default": {
            # channels-redis' pub/sub layer with batched publishes; CHANNEL_LAYER_BACKEND=
            # channels_redis.pubsub.RedisPubSubChannelLayer runs the stock one (same wire format, same groups).
            "BACKEND": os.environ.get("CHANNEL_LAYER_BACKEND") or "config.channel_layer.PubSubChannelLayer",
            # Redis pub/sub ignores database numbers: deployments (and test runs) sharing a Redis need a prefix.
            "CONFIG": {"hosts": [REDIS_URL], "prefix": os.environ.get("CHANNEL_LAYER_PREFIX", "asgi")},
        }
    }
    CACHES: dict[str, Any] = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"pool_class": "config.redis_pool.SharedConnectionPool"},  # one pool per process
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_BROKER_TRANSPORT = "config.celery:RedisTransport"  # kombu's, keeping its redis-py client per channel
    CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", default=False)
    # A task whose worker dies is redelivered after this long (acks_late); it must exceed the longest task.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 300}
else:  # one process: the in-memory layer cannot reach other processes, so tasks run inline
    # Each group is one channel per process (inbox.consumers.Hub): room for a burst of a busy tenant's events.
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 10_000}}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CELERY_BROKER_URL = "memory://"
    CELERY_TASK_ALWAYS_EAGER = True
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_TASK_ROUTES = {
    "webhooks.*": {"queue": "inbound"},  # inbound processing never waits behind bulk work (chatwoot#13556)
}
CELERY_TASK_DEFAULT_QUEUE = "default"
# Periodic work (celery beat): each entry's task lives in the module named.
CELERY_BEAT_SCHEDULE = {
    "outbox-sweep": {"task": "inbox.tasks.outbox_sweep", "schedule": 30.0},  # re-queue sends stuck after a crash
    "webhook-sweep": {"task": "webhooks.tasks.webhook_sweep", "schedule": 60.0},  # stored but never processed
    "event-log-prune": {"task": "inbox.maintenance.event_log_prune", "schedule": 3600.0},
    "socket-recheck": {"task": "inbox.maintenance.presence_reap", "schedule": 20.0},
}

# --- Internationalisation, static, media --------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Compressed, not hashed: a missing collectstatic manifest can never take the site down.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
if not DEBUG:  # production serves collected static files itself (Daphne serves none); DEBUG uses Django's finders
    MIDDLEWARE.insert(
        MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
        "whitenoise.middleware.WhiteNoiseMiddleware",
    )
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", str(BASE_DIR / "media")))
MEDIA_URL = "/media/"  # never served directly: files go through a view that checks tenant membership

# --- Security ------------------------------------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
# Content-Security-Policy (django-csp): scripts only from our origin or with the per-request nonce; no inline
# handlers, no eval, never framed. WebSockets go to our own origin ('self' covers ws/wss of the same host).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF],
        "img-src": [SELF, "data:", "blob:"],
        "media-src": [SELF, "blob:"],
        "connect-src": [SELF],
        "font-src": [SELF],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}
# Secrets of WhatsApp numbers are encrypted at rest with this key (Fernet); defaults to one derived from SECRET_KEY.
FIELD_ENCRYPTION_KEY = os.environ.get("FIELD_ENCRYPTION_KEY", "")

# --- REST API ------------------------------------------------------------------------------------------------------
REST_FRAMEWORK: dict[str, Any] = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.EpochJWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "inbox.api_errors.exception_handler",
    "DEFAULT_THROTTLE_RATES": {
        "auth": os.environ.get("THROTTLE_AUTH", "20/min"),
        "send": os.environ.get("THROTTLE_SEND", "120/min"),
        "ticket": os.environ.get("THROTTLE_TICKET", "60/min"),
    },
}
SIMPLE_JWT: dict[str, Any] = {
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "UPDATE_LAST_LOGIN": False,
    "CHECK_REVOKE_TOKEN": True,  # a password change invalidates every access token issued before it
}
SPECTACULAR_SETTINGS = {
    "TITLE": "WhatsApp team inbox API",
    "DESCRIPTION": "Tenant-scoped conversations, messages and real-time tickets. See docs/realtime.md for the WebSocket.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "MessageTypeEnum": "inbox.models.MessageType",
        "SendTypeEnum": "inbox.api.SEND_TYPE_CHOICES",
        "ConversationStatusEnum": "inbox.models.ConversationStatus",
        "MessageStatusEnum": "inbox.models.MessageStatus",
    },
}

# --- WhatsApp Cloud API ----------------------------------------------------------------------------------------------
WHATSAPP_GRAPH_BASE_URL = os.environ.get("WHATSAPP_GRAPH_BASE_URL", "https://graph.facebook.com")
WHATSAPP_API_VERSION = os.environ.get("WHATSAPP_API_VERSION", "v25.0")
# Used for numbers that have no app secret / verify token of their own (one Meta app for the whole SaaS).
WHATSAPP_APP_SECRET = os.environ.get("WHATSAPP_APP_SECRET", "sandbox-app-secret" if DEBUG else "")
WHATSAPP_VERIFY_TOKEN = os.environ.get("WHATSAPP_VERIFY_TOKEN", "sandbox-verify-token" if DEBUG else "")
# Meta's payloads can be ~3 MB; Django's default body limit (2.5 MB) applies everywhere but the webhook view.
WHATSAPP_WEBHOOK_MAX_BYTES = env_int("WHATSAPP_WEBHOOK_MAX_BYTES", default=4 * 1024 * 1024)
# Where the sandbox transport posts its signed status webhooks (the running server itself).
SANDBOX_WEBHOOK_URL = os.environ.get("SANDBOX_WEBHOOK_URL", "")

# WhatsApp timing and limits (inbox/whatsapp, inbox/services/outbound.py, media.py).
WHATSAPP_HTTP_TIMEOUT = env_float("WHATSAPP_HTTP_TIMEOUT", default=20.0)
WHATSAPP_MEDIA_MAX_BYTES = env_int("WHATSAPP_MEDIA_MAX_BYTES", default=100 * 1024 * 1024)  # Meta's inbound maximum
# Seconds after a sandbox send at which its sent, delivered and read statuses arrive (so a person sees ticks move).
WHATSAPP_SANDBOX_STATUS_DELAYS = tuple(
    float(x) for x in env_list("WHATSAPP_SANDBOX_STATUS_DELAYS", default=["1.5", "4", "8"])
)
WHATSAPP_BACKGROUND_TIMERS = env_bool("WHATSAPP_BACKGROUND_TIMERS", default=True)
API_UPLOAD_MAX_BYTES = env_int("API_UPLOAD_MAX_BYTES", default=100 * 1024 * 1024)
LOGIN_FAILURES_PER_ADDRESS = env_int("LOGIN_FAILURES_PER_ADDRESS", default=20)  # per IP, across usernames
LOGIN_FAILURE_WINDOW = env_int("LOGIN_FAILURE_WINDOW", default=300)  # seconds

# --- Real time -------------------------------------------------------------------------------------------------------
EVENT_RETENTION_DAYS = env_int("EVENT_RETENTION_DAYS", default=7)
WS_RATE_PER_SECOND = env_float("WS_RATE_PER_SECOND", default=20.0)  # client frames per socket, sustained
WS_RATE_BURST = env_float("WS_RATE_BURST", default=40.0)
WS_RATE_STRIKES = env_float("WS_RATE_STRIKES", default=20.0)  # rate-limited frames tolerated before close 4429
WS_RATE_STRIKE_DECAY = env_float("WS_RATE_STRIKE_DECAY", default=1.0)
WS_RECHECK_SECONDS = env_float("WS_RECHECK_SECONDS", default=30.0)  # membership re-check and missed-event catch-up
WS_FIRST_SYNC_WAIT = env_float("WS_FIRST_SYNC_WAIT", default=5.0)
# Long-lived threads for HTTP requests' sync code under Daphne (config/http.py; Django alone starts one per request).
HTTP_THREADS = env_int("HTTP_THREADS", default=12)
# Threads (each with its pooled database connection while it runs) for what connecting and syncing sockets read.
SOCKET_DB_THREADS = env_int("SOCKET_DB_THREADS", default=4)
TYPING_TTL = env_float("TYPING_TTL", default=6.0)  # a typing:start with no stop expires after this many seconds
TYPING_THROTTLE = env_float("TYPING_THROTTLE", default=2.0)
PRESENCE_TTL = env_float("PRESENCE_TTL", default=30.0)  # a process that stops heartbeating loses its users after this
PRESENCE_HEARTBEAT = env_float("PRESENCE_HEARTBEAT", default=10.0)
PRESENCE_OFFLINE_GRACE = env_float("PRESENCE_OFFLINE_GRACE", default=3.0)  # a reload announces nothing

# JSON lines (LOG_FORMAT=json, the production default) or plain text; every line carries request and tenant ids and
# passes through a redactor so that tokens, tickets and secrets never reach a log.
LOG_FORMAT = os.environ.get("LOG_FORMAT", "text" if DEBUG else "json")
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "config.observability.ContextFilter"}},
    "formatters": {
        "text": {
            "()": "config.observability.RedactingFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s [req=%(request_id)s tenant=%(tenant_id)s] %(message)s",
        },
        "json": {"()": "config.observability.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]},
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
