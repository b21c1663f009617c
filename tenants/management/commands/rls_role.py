"""Create (or update) the non-owner PostgreSQL role the app runs as, so row-level security applies to it.

Run by the operator as the owner after `migrate` (and again after a migration adds tables: the grants cover the
tables that exist now, and default privileges cover tables the same owner creates later):

    python manage.py migrate
    python manage.py rls_role inbox_app               # NOLOGIN: the owner connection drops to it (DATABASE_APP_ROLE)
    python manage.py rls_role inbox_app --login --password-env INBOX_APP_PASSWORD   # or the app logs in as it
"""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections, transaction
from psycopg import sql


class Command(BaseCommand):
    help = "Create the non-owner app role (no superuser, no BYPASSRLS) and grant it DML on the app's tables."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("role", help="role name, e.g. inbox_app")
        parser.add_argument("--login", action="store_true", help="LOGIN role (default NOLOGIN, reached by SET ROLE)")
        parser.add_argument("--password-env", default="", help="environment variable holding the LOGIN password")
        parser.add_argument("--database", default="default")

    def handle(self, *args: Any, role: str, login: bool, password_env: str, database: str, **options: Any) -> None:
        connection = connections[database]
        if connection.vendor != "postgresql":
            raise CommandError("row-level security needs PostgreSQL")
        password = ""
        if password_env:
            password = os.environ.get(password_env, "")
            if not password:
                raise CommandError(f"{password_env} is empty")
        name = sql.Identifier(role)
        with transaction.atomic(using=database), connection.cursor() as cursor:
            cursor.execute("SELECT current_user, current_database()")
            owner, dbname = cursor.fetchone()
            if owner == role:
                raise CommandError("run this as the owner of the tables, not as the app role")
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
            verb = "ALTER" if cursor.fetchone() else "CREATE"
            attributes = sql.SQL("LOGIN" if login else "NOLOGIN") + sql.SQL(
                " NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE"
            )
            statement = sql.SQL(verb + " ROLE {} WITH ").format(name) + attributes
            if password:
                statement += sql.SQL(" PASSWORD {}").format(sql.Literal(password))
            cursor.execute(statement)
            # The owner may SET ROLE to it (DATABASE_APP_ROLE); a superuser owner can anyway.
            cursor.execute(sql.SQL("GRANT {} TO {}").format(name, sql.Identifier(owner)))
            for grant in (
                "GRANT CONNECT ON DATABASE {db} TO {role}",
                "GRANT USAGE ON SCHEMA public TO {role}",
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
                "GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {role}",
                "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}",
                "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {role}",
            ):
                cursor.execute(sql.SQL(grant).format(db=sql.Identifier(dbname), role=name))
        self.stdout.write(f"{verb.lower()}d role {role}: DML on every table in {dbname}, subject to row-level security")
