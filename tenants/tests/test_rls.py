"""Row-level security, the third layer: as a non-owner role the database itself shows one tenant's rows.

The test database user is a superuser, which RLS never applies to, so these tests create a plain role with
`manage.py rls_role` and run as it: in one transaction with SET ROLE, or (for flows that use several connections:
Celery eager tasks, consumer threads) with OPTIONS["assume_role"] on every pooled connection.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import respx
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.core.management import call_command
from django.db import DatabaseError, connection, connections, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from psycopg import ClientCursor

from config.db import rls
from config.db.postgresql.base import sent_settings
from inbox import presence
from inbox.maintenance import event_log_prune
from inbox.models import Contact, Conversation, Message, SendState, TenantEvent
from inbox.services.outbound import outbox_sweep
from inbox.tests import factories
from inbox.tests.api_helpers import client_for, isolate_throttles, turl
from inbox.tests.fixtures import World
from tenants.models import Membership, WhatsAppNumber
from tenants.scoping import scopes_disabled, tenant_scope
from webhooks.models import ProcessingState, WebhookEvent
from webhooks.tests import payloads

GRAPH = "https://graph.test"
SECRET = "test-app-secret"


def _role_name() -> str:
    return f"inbox_rls_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"  # roles are cluster-wide: other runs share them


def _count(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")
        return int(cursor.fetchone()[0])


def _setting(name: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting(%s, true)", [name])
        return str(cursor.fetchone()[0] or "")


@contextmanager
def as_role(role: str) -> Iterator[None]:
    with connection.cursor() as cursor:
        cursor.execute(f'SET ROLE "{role}"')
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET ROLE")


@pytest.fixture
def app_role(require_postgres: None, db: None) -> str:
    """A non-owner role made by the operator's command, inside the test's transaction (rolled back with it)."""
    role = _role_name()
    call_command("rls_role", role, stdout=open(os.devnull, "w"))  # noqa: SIM115
    return role


@pytest.fixture
def app_role_everywhere(require_postgres: None, transactional_db: None, world: World) -> Iterator[str]:
    """Every connection the app opens runs as the app role (DATABASE_APP_ROLE), the way production runs."""
    role = _role_name()
    call_command("rls_role", role, stdout=open(os.devnull, "w"))  # noqa: SIM115
    options = connection.settings_dict.setdefault("OPTIONS", {})

    def recycle() -> None:
        from inbox.consumers import socket_db_restart

        socket_db_restart()  # its threads' connections came from the pool being closed, as the role being dropped
        connection.close()
        connection.close_pool()

    recycle()
    options["assume_role"] = role
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_user")
            assert cursor.fetchone()[0] == role
        yield role
    finally:
        recycle()
        options.pop("assume_role", None)
        with connection.cursor() as cursor:
            cursor.execute(f'DROP OWNED BY "{role}"')
            cursor.execute(f'DROP ROLE "{role}"')


@pytest.fixture
def rows(world: World) -> dict[int, int]:
    """A message in each tenant's conversation (plus the world's rows): {tenant_id: messages}."""
    factories.make_message(world.acme_conversation)
    factories.make_message(world.acme_conversation)
    factories.make_message(world.globex_conversation)
    return {world.acme.pk: 2, world.globex.pk: 1}


# --- The policy ------------------------------------------------------------------------------------------------------


def test_every_tenant_owned_table_has_forced_row_level_security_and_the_policy(
    require_postgres: None, db: None
) -> None:
    owned = rls.tenant_owned_tables()
    assert "inbox_message" in owned and "tenants_membership" in owned
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relrowsecurity AND c.relforcerowsecurity"
            " AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'tenant_isolation')"
        )
        protected = {name for (name,) in cursor.fetchall()}
    missing = sorted(set(owned) - protected)
    assert not missing, f"tenant-owned tables without RLS (add them in a new migration like inbox/0003): {missing}"


def test_the_app_role_sees_no_rows_without_a_tenant_and_only_its_tenants_with_one(
    app_role: str, world: World, rows: dict[int, int]
) -> None:
    tables = rls.tenant_owned_tables()
    superuser_counts = {table: _count(table) for table in tables}
    assert superuser_counts["inbox_message"] == 3 and superuser_counts["tenants_membership"] == 3
    with as_role(app_role):
        assert {table: _count(table) for table in tables} == dict.fromkeys(tables, 0)
        with tenant_scope(world.acme.pk):
            assert _count("inbox_message") == rows[world.acme.pk]
            with connection.cursor() as cursor:
                cursor.execute("SELECT DISTINCT tenant_id FROM inbox_message UNION SELECT tenant_id FROM inbox_contact")
                assert {tenant for (tenant,) in cursor.fetchall()} == {world.acme.pk}
            # A query that forgets the tenant filter (the plain base manager) still gets acme's rows only.
            assert Message._base_manager.count() == rows[world.acme.pk]
            assert Membership._base_manager.count() == 2
        with tenant_scope(world.globex.pk):
            assert Message._base_manager.count() == rows[world.globex.pk]
        with scopes_disabled():  # admin, maintenance, webhook routing: every tenant
            assert Message._base_manager.count() == 3


def test_the_app_role_cannot_write_another_tenants_rows(app_role: str, world: World) -> None:
    globex_contact = factories.make_contact(world.globex)
    with as_role(app_role), tenant_scope(world.acme.pk):
        with pytest.raises(DatabaseError, match="row-level security"), transaction.atomic():
            Contact(tenant=world.globex, wa_id="4915100000000").save()
        with pytest.raises(DatabaseError, match="row-level security"), transaction.atomic():
            Conversation._base_manager.filter(pk=world.acme_conversation.pk).update(tenant_id=world.globex.pk)
        # Another tenant's row cannot even be found to be changed or deleted.
        assert Message._base_manager.filter(tenant_id=world.globex.pk).update(text="x") == 0
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM inbox_contact WHERE id = %s", [globex_contact.pk])
            assert cursor.rowcount == 0
    with scopes_disabled():
        assert Conversation.objects.get(pk=world.acme_conversation.pk).tenant_id == world.acme.pk


def test_unscoped_manager_querysets_see_across_tenants_like_they_ask(app_role: str, world: World) -> None:
    """`with_scopes_disabled()` querysets (webhook routing, a user's memberships) are evaluated later, unscoped."""
    with as_role(app_role):
        numbers = WhatsAppNumber.objects.with_scopes_disabled().filter(phone_number_id__in=["111000111", "222000222"])
        assert numbers.count() == 2
        assert {n.tenant_id for n in numbers} == {world.acme.pk, world.globex.pk}
        assert sorted(numbers.values_list("phone_number_id", flat=True)) == ["111000111", "222000222"]
        assert [n.pk for n in numbers.iterator()] and rls.wanted_settings() == rls.NOTHING
        with tenant_scope(world.acme.pk):  # the override wins inside another scope too
            assert WhatsAppNumber.objects.with_scopes_disabled().exists()
            assert WhatsAppNumber.objects.with_scopes_disabled().count() == 2
            assert WhatsAppNumber._base_manager.count() == 1


# --- Keeping the settings in step ------------------------------------------------------------------------------------


def test_the_wanted_settings_follow_django_scopes() -> None:
    assert rls.wanted_settings() == ("", "")
    with tenant_scope(7):
        assert rls.wanted_settings() == ("7", "")
        with scopes_disabled():
            assert rls.wanted_settings() == ("", "on")
        assert rls.wanted_settings() == ("7", "")
    with scopes_disabled():
        assert rls.wanted_settings() == ("", "on")
    assert rls.wanted_settings() == ("", "")


def test_the_settings_follow_the_scope_with_one_statement_per_change(require_postgres: None, world: World) -> None:
    with CaptureQueriesContext(connection):
        sent = connection.rls_settings_sent  # type: ignore[attr-defined]
        with tenant_scope(world.acme.pk):
            assert (_setting(rls.TENANT_SETTING), _setting(rls.BYPASS_SETTING)) == (str(world.acme.pk), "")
            _setting(rls.TENANT_SETTING)
            Message.objects.count()
        assert connection.rls_settings_sent == sent + 1  # type: ignore[attr-defined]
        with scopes_disabled():
            assert (_setting(rls.TENANT_SETTING), _setting(rls.BYPASS_SETTING)) == ("", "on")
        assert (_setting(rls.TENANT_SETTING), _setting(rls.BYPASS_SETTING)) == ("", "")
        assert connection.rls_settings_sent == sent + 3  # type: ignore[attr-defined]


def test_a_change_of_scope_travels_in_front_of_the_next_query_in_its_round_trip(
    require_postgres: None, world: World
) -> None:
    seen: list[str] = []

    def spy(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        seen.append(sql)
        return execute(sql, params, many, context)

    _setting(rls.TENANT_SETTING)  # ("", "") sent
    folded = connection.rls_settings_sent_folded  # type: ignore[attr-defined]
    with connection.execute_wrapper(spy), tenant_scope(world.acme.pk), connection.cursor() as cursor:
        cursor.execute("SELECT current_setting(%s, true), '100%%'", [rls.TENANT_SETTING])
        assert cursor.fetchall() == [(str(world.acme.pk), "100%")]  # the statement's result, not set_config's
    assert connection.rls_settings_sent_folded == folded + 1  # type: ignore[attr-defined]
    assert seen == ["SELECT current_setting(%s, true), '100%%'"]  # a caller's wrapper sees the statement as written
    with scopes_disabled(), connection.cursor() as cursor:
        cursor.execute("UPDATE tenants_tenant SET name = name WHERE id IN (%s, %s)", [world.acme.pk, world.globex.pk])
        assert cursor.rowcount == 2  # the UPDATE's count
        cursor.execute("SELECT current_setting('app.rls_bypass')")  # no parameters: the settings still go first
    assert connection.rls_settings_sent_folded == folded + 2  # type: ignore[attr-defined]
    with tenant_scope(world.globex.pk), connection.cursor() as cursor:
        cursor.execute("SHOW app.tenant_id")  # not a query or data change: the settings in a round trip of their own
        assert cursor.fetchone() == (str(world.globex.pk),)
    assert connection.rls_settings_sent_folded == folded + 2  # type: ignore[attr-defined]


@pytest.mark.django_db(transaction=True)
def test_a_failed_statement_takes_the_settings_in_front_of_it_along(require_postgres: None, world: World) -> None:
    assert _setting(rls.TENANT_SETTING) == ""  # autocommit: sent, and kept
    with tenant_scope(world.acme.pk):
        with pytest.raises(DatabaseError), connection.cursor() as cursor:
            cursor.execute("SELECT 1 / 0")  # one implicit transaction with the settings: both undone
        assert sent_settings(connection.connection) is None  # the backend knows it does not know
        assert _setting(rls.TENANT_SETTING) == str(world.acme.pk)


def test_a_rollback_to_savepoint_forgets_what_was_set(require_postgres: None, world: World) -> None:
    _setting(rls.TENANT_SETTING)  # ("", "") sent in the test's transaction
    with tenant_scope(world.acme.pk):
        with pytest.raises(ZeroDivisionError), transaction.atomic():  # a savepoint inside the test transaction
            Message.objects.count()
            assert sent_settings(connection.connection) == (str(world.acme.pk), "")
            sent = connection.rls_settings_sent  # type: ignore[attr-defined]
            1 / 0  # noqa: B018
        # ROLLBACK TO SAVEPOINT undid the SET; Django's RELEASE SAVEPOINT right after already sent it again.
        assert connection.rls_settings_sent == sent + 1  # type: ignore[attr-defined]
        assert _setting(rls.TENANT_SETTING) == str(world.acme.pk)


@pytest.mark.django_db(transaction=True)
def test_a_rollback_forgets_what_was_set_and_the_next_query_sees_the_tenant(
    require_postgres: None, world: World
) -> None:
    assert _setting(rls.TENANT_SETTING) == ""  # autocommit: sent, and kept
    with tenant_scope(world.acme.pk):
        with pytest.raises(ZeroDivisionError), transaction.atomic():
            Message.objects.count()  # set inside the transaction...
            1 / 0  # noqa: B018
        # ...and undone by its ROLLBACK: the server is back to "" and the backend knows it does not know.
        assert sent_settings(connection.connection) is None
        assert _setting(rls.TENANT_SETTING) == str(world.acme.pk)


@pytest.mark.django_db(transaction=True)
def test_a_pooled_connection_reused_in_another_scope_gets_the_new_tenant(
    app_role_everywhere: str, world: World, rows: dict[int, int]
) -> None:
    with tenant_scope(world.acme.pk):
        assert Message._base_manager.count() == rows[world.acme.pk]
    raw = connection.connection
    assert sent_settings(raw) == (str(world.acme.pk), "")
    connection.close()  # back to the pool, still carrying acme's setting
    # Hold every other idle connection so the next checkout is that one.
    pool = connection.pool
    held = []
    while (other := pool.getconn(timeout=5)) is not raw:
        held.append(other)
    pool.putconn(other)
    seen: dict[str, Any] = {}

    def other_request() -> None:  # another thread: its own DatabaseWrapper, the same raw connection
        from django.db import connection as thread_connection

        try:
            with tenant_scope(world.globex.pk):
                seen["count"] = Message._base_manager.count()
                seen["same"] = thread_connection.connection is raw
                with thread_connection.cursor() as cursor:
                    cursor.execute("SELECT current_setting('app.tenant_id', true)")
                    seen["tenant"] = cursor.fetchone()[0]
        finally:
            thread_connection.close()

    thread = threading.Thread(target=other_request)
    thread.start()
    thread.join(timeout=30)
    for other in held:
        pool.putconn(other)
    assert seen == {"count": rows[world.globex.pk], "same": True, "tenant": str(world.globex.pk)}


_SETTINGS_SQL = f"SELECT current_setting('{rls.TENANT_SETTING}', true), current_setting('{rls.BYPASS_SETTING}', true)"
_SLUG_SQL = "SELECT id FROM tenants_tenant WHERE slug = %s"


def test_a_raw_statement_in_a_tenant_scope_carries_its_settings_in_the_same_round_trip(
    require_postgres: None, world: World
) -> None:
    _setting(rls.TENANT_SETTING)  # ("", "") sent
    sent = connection.rls_settings_sent  # type: ignore[attr-defined]
    assert rls.fetch_in_tenant(world.acme.pk, _SETTINGS_SQL, []) == [(str(world.acme.pk), "")]
    assert connection.rls_settings_sent == sent + 1  # type: ignore[attr-defined]
    assert sent_settings(connection.connection) == (str(world.acme.pk), "")
    assert rls.fetch_in_tenant(world.acme.pk, _SETTINGS_SQL, []) == [(str(world.acme.pk), "")]
    assert connection.rls_settings_sent == sent + 1  # type: ignore[attr-defined]  # already there: nothing sent
    with tenant_scope(world.acme.pk):
        assert Message.objects.count() == 0  # the ORM's statements agree: nothing more to send
    assert connection.rls_settings_sent == sent + 1  # type: ignore[attr-defined]
    # A tenant named by a query (a handshake's slug), resolved in the same round trip; an unknown one sees nothing.
    by_slug = rls.TenantOf(_SLUG_SQL, ("globex",))
    assert rls.fetch_in_tenant(by_slug, _SETTINGS_SQL + " WHERE %s = 1", [1]) == [(str(world.globex.pk), "")]
    assert sent_settings(connection.connection) == (str(world.globex.pk), "")
    assert rls.fetch_in_tenant(rls.TenantOf(_SLUG_SQL, ("nope",)), _SETTINGS_SQL, []) == [("", "")]
    assert sent_settings(connection.connection) == ("", "")


def test_a_failed_raw_statement_forgets_the_settings_sent_with_it(require_postgres: None, world: World) -> None:
    with pytest.raises(DatabaseError), transaction.atomic():
        rls.fetch_in_tenant(world.acme.pk, "SELECT 1 / 0", [])
    # ROLLBACK TO SAVEPOINT undid acme's settings; Django's RELEASE SAVEPOINT right after sent its own (no scope).
    assert sent_settings(connection.connection) == ("", "")
    assert _setting(rls.TENANT_SETTING) == ""
    assert rls.fetch_in_tenant(world.acme.pk, _SETTINGS_SQL, []) == [(str(world.acme.pk), "")]


@pytest.mark.django_db(transaction=True)
def test_a_failed_raw_statement_in_autocommit_forgets_too(require_postgres: None, world: World) -> None:
    assert rls.fetch_in_tenant(world.globex.pk, _SETTINGS_SQL, []) == [(str(world.globex.pk), "")]
    with pytest.raises(DatabaseError):
        rls.fetch_in_tenant(world.acme.pk, "SELECT 1 / 0", [])  # rolled back with its settings: globex's stay
    assert sent_settings(connection.connection) is None
    assert _setting(rls.TENANT_SETTING) == ""  # the next ORM statement sends its own (here: none)


@pytest.fixture
def server_binding(require_postgres: None, transactional_db: None) -> Iterator[None]:
    """Every connection binds parameters on the server and prepares a statement from its first run."""
    options = connection.settings_dict.setdefault("OPTIONS", {})

    def recycle() -> None:
        from inbox.consumers import socket_db_restart

        socket_db_restart()
        connection.close()
        connection.close_pool()

    recycle()
    options.update(server_side_binding=True, prepare_threshold=1)
    try:
        yield
    finally:
        recycle()
        options.pop("server_side_binding", None)
        options.pop("prepare_threshold", None)


def test_with_server_side_binding_a_change_of_scope_still_travels_with_the_next_statement(
    server_binding: None, world: World
) -> None:
    factories.make_message(world.acme_conversation)
    _setting(rls.TENANT_SETTING)  # ("", "") sent
    folded = connection.rls_settings_sent_folded  # type: ignore[attr-defined]
    with tenant_scope(world.acme.pk), connection.cursor() as cursor:
        assert not isinstance(cursor.cursor, ClientCursor)  # the connection binds on the server...
        cursor.execute("SELECT current_setting(%s, true), '100%%'", [rls.TENANT_SETTING])
        assert cursor.fetchall() == [(str(world.acme.pk), "100%")]  # ...and this statement's result is its own
    assert connection.rls_settings_sent_folded == folded + 1  # type: ignore[attr-defined]
    with tenant_scope(world.acme.pk):  # the same scope: nothing to send, the statements stay server-bound
        counts = {Message.objects.filter(conversation=world.acme_conversation).count() for _ in range(3)}
        with connection.cursor() as cursor:
            assert not isinstance(cursor.cursor, ClientCursor)
            cursor.execute("SELECT count(*) FROM pg_prepared_statements")
            assert cursor.fetchone()[0] >= 1  # and prepared
    assert counts == {1}
    assert connection.rls_settings_sent_folded == folded + 1  # type: ignore[attr-defined]
    with tenant_scope(world.globex.pk):  # another tenant's scope: its rows only, the change folded again
        assert Message.objects.filter(conversation=world.acme_conversation).count() == 0
    assert connection.rls_settings_sent_folded == folded + 2  # type: ignore[attr-defined]
    sent = connection.rls_settings_sent  # type: ignore[attr-defined]
    assert rls.fetch_in_tenant(world.acme.pk, _SETTINGS_SQL, []) == [(str(world.acme.pk), "")]
    assert connection.rls_settings_sent == sent + 1  # type: ignore[attr-defined]


# --- The application under RLS, as the app role ----------------------------------------------------------------------


@pytest.fixture
def graph(world: World, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[respx.MockRouter]:
    """Acme's number on the real Graph client, with the Graph API mocked at the HTTP boundary."""
    isolate_throttles(monkeypatch)
    settings.WHATSAPP_GRAPH_BASE_URL = GRAPH
    settings.WHATSAPP_BACKGROUND_TIMERS = False
    settings.WHATSAPP_APP_SECRET = SECRET
    with scopes_disabled():
        WhatsAppNumber.objects.filter(pk=world.acme_number.pk).update(access_token="EAAB-test-token")
    counter = {"n": 0}

    def accepted(request: Any) -> Any:
        counter["n"] += 1
        return respx.MockResponse(
            200, json={"messaging_product": "whatsapp", "messages": [{"id": f"wamid.RLS{counter['n']:04d}"}]}
        )

    with respx.mock(assert_all_called=False) as router:
        router.post(f"{GRAPH}/{settings.WHATSAPP_API_VERSION}/111000111/messages", name="messages").mock(
            side_effect=accepted
        )
        yield router


def _all_messages(tenant_id: int) -> list[Message]:
    with scopes_disabled():
        return list(Message.objects.filter(tenant_id=tenant_id).order_by("pk"))


@pytest.mark.django_db(transaction=True)
def test_rest_send_and_conversation_list_work_as_the_app_role(
    app_role_everywhere: str, world: World, rows: dict[int, int], graph: respx.MockRouter
) -> None:
    bob = client_for(world.bob)
    sent = bob.post(
        turl("api-message-list", world.acme, pk=world.acme_conversation.pk), {"text": "Hi", "client_id": "c"}
    )
    assert sent.status_code == 201, sent.content
    assert graph.routes["messages"].call_count == 1  # the after-commit Celery send ran as the app role too
    assert [m.send_state for m in _all_messages(world.acme.pk) if m.pk == sent.json()["id"]] == [SendState.SENT]
    listed = bob.get(turl("api-conversation-list", world.acme))
    assert listed.status_code == 200, listed.content
    results = listed.json()["results"] if isinstance(listed.json(), dict) else listed.json()
    assert [c["id"] for c in results] == [world.acme_conversation.pk]
    assert client_for(world.charlie).get(turl("api-conversation-list", world.acme)).status_code in (403, 404)
    with tenant_scope(world.acme.pk):
        assert Message._base_manager.count() == rows[world.acme.pk] + 1  # no tenant filter: the database's
    with scopes_disabled():
        assert Message.objects.count() == sum(rows.values()) + 1


@pytest.mark.django_db(transaction=True)
def test_signed_webhooks_are_routed_to_each_tenant_as_the_app_role(
    app_role_everywhere: str, world: World, settings: Any
) -> None:
    settings.WHATSAPP_APP_SECRET = SECRET
    client = Client()
    for pnid, wamid in ((payloads.ACME_PNID, "wamid.RLS-A"), (payloads.GLOBEX_PNID, "wamid.RLS-G")):
        data = payloads.body(messages=[payloads.message("messages.json", "text", id=wamid)], phone_number_id=pnid)
        assert payloads.deliver(client, data).status_code == 200
    with scopes_disabled():
        assert list(WebhookEvent.objects.values_list("state", flat=True)) == [ProcessingState.PROCESSED] * 2
    assert [m.wa_message_id for m in _all_messages(world.acme.pk)] == ["wamid.RLS-A"]
    assert [m.wa_message_id for m in _all_messages(world.globex.pk)] == ["wamid.RLS-G"]
    with tenant_scope(world.globex.pk):
        assert list(Message._base_manager.values_list("wa_message_id", flat=True)) == ["wamid.RLS-G"]


@pytest.mark.django_db(transaction=True)
def test_the_outbox_sweeper_and_maintenance_work_as_the_app_role(
    app_role_everywhere: str, world: World, graph: respx.MockRouter, settings: Any
) -> None:
    queued = factories.make_message(
        world.acme_conversation,
        direction="out",
        send_state=SendState.QUEUED,
        send_next_attempt_at=timezone.now() - timedelta(seconds=1),
    )
    assert outbox_sweep()["enqueued"] == 1
    assert graph.routes["messages"].call_count == 1
    with scopes_disabled():
        assert Message.objects.get(pk=queued.pk).send_state == SendState.SENT
        for tenant in (world.acme, world.globex):
            TenantEvent.objects.create(tenant=tenant, seq=10_000, type="x", data={})
        TenantEvent.objects.update(created_at=timezone.now() - timedelta(days=settings.EVENT_RETENTION_DAYS + 1))
    assert event_log_prune() >= 2
    with scopes_disabled():
        assert not TenantEvent.objects.exists()


@pytest.fixture
async def _realtime(settings: Any) -> AsyncIterator[None]:
    settings.PRESENCE_OFFLINE_GRACE = 0
    presence.store().clear()
    yield
    presence.store().clear()
    layer = get_channel_layer()
    if layer is not None and hasattr(layer, "flush"):
        await layer.flush()


@pytest.mark.django_db(transaction=True)
def test_a_ticket_is_admitted_as_the_app_role_in_its_own_tenant_only(app_role_everywhere: str, world: World) -> None:
    from tenants.tickets import ticket_admit, ticket_issue

    token, _ = ticket_issue(user=world.bob, tenant=world.acme)
    assert ticket_admit(token=token, tenant_slug="globex") is None
    admission = ticket_admit(token=token, tenant_slug="acme")
    assert admission is not None and admission.membership is not None
    assert (admission.membership.user_id, admission.membership.tenant.slug) == (world.bob.pk, "acme")
    token, _ = ticket_issue(user=world.charlie, tenant=world.acme)
    admission = ticket_admit(token=token, tenant_slug="acme")  # globex's membership is out of acme's sight
    assert admission is not None and admission.membership is None


@pytest.mark.django_db(transaction=True)
async def test_a_ticket_handshake_works_as_the_app_role(
    app_role_everywhere: str, world: World, _realtime: None
) -> None:
    from inbox.tests.test_consumers import append_messages, close, communicator
    from tenants.tickets import ticket_issue

    await database_sync_to_async(append_messages)(world.globex_conversation.pk, world.globex.pk, 2)
    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk)
    token, _ = await database_sync_to_async(ticket_issue)(user=world.bob, tenant=world.acme)
    bob_ws = communicator("acme", query=f"ticket={token}", headers=[])
    assert (await bob_ws.connect(timeout=5))[0]
    hello = await bob_ws.receive_json_from(timeout=5)
    assert hello["type"] == "hello", hello
    assert (hello["data"]["user"]["id"], hello["data"]["tenant"]["slug"], hello["data"]["seq"]) == (
        world.bob.pk,
        "acme",
        2,
    )
    await close(bob_ws)
    await sync_to_async(connections.close_all)()  # the executor thread's connection, before the role is dropped


@pytest.mark.django_db(transaction=True)
async def test_a_websocket_handshake_and_sync_work_as_the_app_role(
    app_role_everywhere: str, world: World, _realtime: None
) -> None:
    from inbox.tests.test_consumers import append_messages, close, open_socket

    await database_sync_to_async(append_messages)(world.globex_conversation.pk, world.globex.pk, 2)
    await database_sync_to_async(append_messages)(world.acme_conversation.pk, world.acme.pk)
    bob_ws, hello = await open_socket(world.bob, sync=False)
    assert hello["data"]["tenant"]["slug"] == "acme" and hello["data"]["seq"] == 2  # acme's own log only
    await bob_ws.send_to(text_data=json.dumps({"type": "sync", "data": {"since": 0}}))
    frames = []
    while (frame := await bob_ws.receive_json_from(timeout=5))["type"] != "sync:done":
        if frame.get("seq") is not None:
            frames.append(frame)
    assert [f["seq"] for f in frames] == [1, 2]
    await close(bob_ws)
    # The consumer's last database call left its executor thread's connection open (as the app role): close it
    # there, before the role is dropped.
    await sync_to_async(connections.close_all)()
