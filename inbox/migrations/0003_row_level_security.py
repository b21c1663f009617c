"""Row-level security on every table of a model with a `tenant` FK (PostgreSQL only; a no-op on SQLite).

A row is visible and writable when its tenant_id equals the `app.tenant_id` setting, or when `app.rls_bypass` is
'on' (code under django-scopes' scopes_disabled()); config/db/postgresql sets both per connection. FORCE applies the
policy to the table owner too; superusers and BYPASSRLS roles are never subject to it. The (SELECT ...) wrappers
make PostgreSQL evaluate the settings once per statement rather than once per row.

The tables are listed here, not found at run time, so that the migration means the same thing forever; a new
tenant-owned model needs its own migration (tenants/tests/test_rls.py fails until it has one).
"""

from __future__ import annotations

from django.db import migrations

POLICY = "tenant_isolation"
TABLES = (
    "inbox_contact",
    "inbox_conversation",
    "inbox_eventsequence",
    "inbox_message",
    "inbox_messagestatusevent",
    "inbox_messagetemplate",
    "inbox_reaction",
    "inbox_readmarker",
    "inbox_tenantevent",
    "tenants_membership",
    "tenants_socketticket",
    "tenants_whatsappnumber",
)
CONDITION = (
    "tenant_id = (SELECT NULLIF(current_setting('app.tenant_id', true), '')::bigint)"
    " OR (SELECT current_setting('app.rls_bypass', true)) = 'on'"
)


def enable(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor != "postgresql":
        return
    for table in TABLES:
        schema_editor.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        schema_editor.execute(f"DROP POLICY IF EXISTS {POLICY} ON {table}")
        schema_editor.execute(f"CREATE POLICY {POLICY} ON {table} USING ({CONDITION}) WITH CHECK ({CONDITION})")


def disable(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor != "postgresql":
        return
    for table in TABLES:
        schema_editor.execute(f"DROP POLICY IF EXISTS {POLICY} ON {table}")
        schema_editor.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")


class Migration(migrations.Migration):
    dependencies = [("inbox", "0002_message_search_index"), ("tenants", "0001_initial")]
    operations = [migrations.RunPython(enable, disable, elidable=False)]
