"""Full-text search over message text: a GIN expression index on PostgreSQL (SQLite searches with LIKE)."""

from __future__ import annotations

from django.db import migrations

INDEX = "message_text_fts"


def create(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {INDEX} ON inbox_message USING gin (to_tsvector('simple', text))"
        )


def drop(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    dependencies = [("inbox", "0001_initial")]
    operations = [migrations.RunPython(create, drop, elidable=False)]
