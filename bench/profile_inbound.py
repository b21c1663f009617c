"""Profile inbound processing per message: stored signed webhooks → webhook_process, as the Celery worker runs it.

    DATABASE_URL=postgres://... REDIS_URL=redis://... .venv/bin/python bench/profile_inbound.py [-n 300]
    .venv/bin/pyinstrument bench/profile_inbound.py -n 300          # where the time goes
    .venv/bin/python -m cProfile -s cumtime bench/profile_inbound.py -n 300 | head -60

Runs with DEBUG off against the configured database (migrated on start) and channel layer; it seeds one tenant,
number and contact (prefix `prof`), stores N signed one-message webhooks the way the view does (without enqueueing
them) and then calls webhooks.services.webhook_process on each, timing CPU (process time: this process only, not
PostgreSQL's) and wall time, and counting SQL statements per message; with the server on this machine it also prints
the CPU its backend process spent per message (/proc). `--view` also measures the webhook view
itself (Django test client, signature check + INSERT + enqueue to a queue nobody reads, purged at the end).
Use a database of your own: it adds rows (all under its own tenant, deleted at the end unless `--keep`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DEBUG", "False")
os.environ.setdefault("SECRET_KEY", "profile-inbound-" + "k" * 48)
os.environ.setdefault("ALLOWED_HOSTS", "testserver,127.0.0.1,localhost")
os.environ.setdefault("SECURE_SSL_REDIRECT", "False")
os.environ.setdefault("WHATSAPP_APP_SECRET", "profile-app-secret")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from tenants.scoping import scopes_disabled  # noqa: E402


def backend_cpu() -> tuple[int, float] | None:
    """(pid, CPU seconds) of this connection's PostgreSQL backend, when the server runs on this machine (loopback):
    what the server spends on our statements, which the client's process time does not show."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = int(cursor.fetchone()[0])
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # another machine, or not ours to read
        return None
    return pid, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class StatementCounter:
    """connection.execute_wrapper that counts statements (by their first word) without DEBUG's query log."""

    def __init__(self) -> None:
        self.count = 0
        self.kinds: Counter[str] = Counter()
        self.samples: list[str] = []
        self.keep_samples = False

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.count += 1
        self.kinds[sql.split(None, 1)[0].upper()] += 1
        if self.keep_samples:
            self.samples.append(sql[:160])
        return execute(sql, params, many, context)


def text_body(phone_number_id: str, wa_id: str, wamid: str) -> bytes:
    """One signed-able text message from wa_id (the benchmarks' own body)."""
    from bench.harness import webhook_body

    return webhook_body(phone_number_id, wa_id, wamid, f"hello {wamid}")


def seed(tag: str) -> tuple[Any, Any]:
    from inbox.models import Contact
    from tenants.models import Tenant, WhatsAppNumber

    with scopes_disabled():
        tenant = Tenant.objects.create(slug=f"prof-{tag}", name=f"Profile {tag}")
        number = WhatsAppNumber.objects.create(
            tenant=tenant, phone_number_id=f"9{int(tag, 16) % 10**9:09d}", display_phone_number="15550001111"
        )
        Contact.objects.create(tenant=tenant, wa_id="49170" + tag[:6].translate(str.maketrans("abcdef", "123456")))
    return tenant, number


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * q) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="messages (one webhook each)")
    parser.add_argument("--new-contacts", action="store_true", help="every message from a new contact")
    parser.add_argument("--view", action="store_true", help="also measure the webhook view (POST → 200)")
    parser.add_argument("--statements", action="store_true", help="print the SQL of the last message")
    parser.add_argument("--keep", action="store_true", help="keep the rows")
    parser.add_argument("--no-migrate", action="store_true")
    args = parser.parse_args()

    from inbox.models import Contact
    from webhooks.models import ProcessingState, SignatureVerdict, WebhookEvent
    from webhooks.parsers import signature_for
    from webhooks.services import webhook_process

    if not args.no_migrate:
        call_command("migrate", verbosity=0)
    tag = uuid.uuid4().hex[:8]
    tenant, number = seed(tag)
    with scopes_disabled():
        wa_id = Contact.objects.get(tenant=tenant).wa_id
    secret = settings.WHATSAPP_APP_SECRET
    print(
        f"database={connection.vendor} layer={settings.CHANNEL_LAYERS['default']['BACKEND'].rsplit('.', 1)[-1]} "
        f"DEBUG={settings.DEBUG} n={args.n}"
    )

    counter = StatementCounter()
    if args.view:
        from django.test import Client

        client = Client()
        first_pk = WebhookEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        view_cpu: list[float] = []
        view_sql: list[int] = []
        for index in range(min(args.n, 200)):
            body = text_body(number.phone_number_id, wa_id, f"wamid.VIEW{tag}{index:06d}")
            counter.count = 0
            cpu0 = time.process_time()
            with connection.execute_wrapper(counter):
                response = client.post(
                    "/webhooks/whatsapp/",
                    data=body,
                    content_type="application/json",
                    headers={"X-Hub-Signature-256": signature_for(body, secret)},
                )
            view_cpu.append((time.process_time() - cpu0) * 1000)
            view_sql.append(counter.count)
            assert response.status_code == 200, response.status_code
        warm = view_cpu[10:] or view_cpu
        print(
            f"view: CPU per POST median {statistics.median(warm):.2f} ms, p90 {pct(warm, 0.9):.2f} ms; "
            f"SQL statements {statistics.median(view_sql):.0f}"
        )
        # Those POSTs stored events and enqueued them: drop both rather than leave work for some worker.
        WebhookEvent.objects.filter(pk__gt=first_pk, state=ProcessingState.RECEIVED).delete()
        if settings.CELERY_BROKER_URL.startswith("redis"):
            import redis

            redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("inbound")

    events: list[int] = []
    for index in range(args.n):
        contact_wa = (
            f"4918{tag[:4].translate(str.maketrans('abcdef', '123456'))}{index:06d}" if args.new_contacts else wa_id
        )
        body = text_body(number.phone_number_id, contact_wa, f"wamid.PROF{tag}{index:06d}")
        event = WebhookEvent.objects.create(
            raw_body=body,
            body_sha256="0" * 64,
            headers={"content_type": "application/json", "x-hub-signature-256": signature_for(body, secret)},
            signature=SignatureVerdict.VALID,
            state=ProcessingState.RECEIVED,
        )
        events.append(event.pk)

    cpu_ms: list[float] = []
    wall_ms: list[float] = []
    statements: list[int] = []
    kinds: Counter[str] = Counter()
    backend0 = backend_cpu()
    for index, event_id in enumerate(events):
        counter.count = 0
        counter.kinds = Counter()
        counter.keep_samples = args.statements and index == len(events) - 1
        cpu0, wall0 = time.process_time(), time.perf_counter()
        with connection.execute_wrapper(counter):
            done = webhook_process(event_id)
        cpu_ms.append((time.process_time() - cpu0) * 1000)
        wall_ms.append((time.perf_counter() - wall0) * 1000)
        statements.append(counter.count)
        kinds.update(counter.kinds)
        assert done is not None and done.state == ProcessingState.PROCESSED, (done and done.last_error) or event_id
    backend1 = backend_cpu()
    warm = slice(min(10, len(events) // 10), None)  # the first few pay for imports and plan caches
    c, w = cpu_ms[warm], wall_ms[warm]
    print(
        f"webhook_process per message: CPU median {statistics.median(c):.2f} ms, mean {statistics.fmean(c):.2f} ms, "
        f"p90 {pct(c, 0.9):.2f} ms; wall median {statistics.median(w):.2f} ms, p90 {pct(w, 0.9):.2f} ms"
    )
    print(
        f"SQL statements per message: median {statistics.median(statements):.0f} "
        f"(min {min(statements)}, max {max(statements)}); by kind per message: "
        + ", ".join(f"{k} {v / len(events):.1f}" for k, v in kinds.most_common())
    )
    if backend0 is not None and backend1 is not None and backend0[0] == backend1[0]:
        print(
            f"PostgreSQL server CPU per message (the connection's backend process): "
            f"{1000 * (backend1[1] - backend0[1]) / len(events):.2f} ms"
        )
    if args.statements:
        print("statements of the last message:")
        for sql in counter.samples:
            print("  ", sql)
    if not args.keep:
        WebhookEvent.objects.filter(pk__in=events).delete()
        with scopes_disabled():
            tenant.delete()
    return 0


if __name__ == "__main__":
    sys.exit(main())
