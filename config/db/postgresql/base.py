"""PostgreSQL backend whose connections carry the current django-scopes scope to row-level security.

Before a statement runs, the connection's `app.tenant_id` / `app.rls_bypass` are made to match the scope (see
config/db/rls.py). What was sent is remembered per raw connection (pooled connections move between threads and
DatabaseWrapper objects), so a statement in the same scope as the previous one costs nothing extra. A change of
scope puts `SELECT set_config(...)` in front of the next query or data change, in the same round trip (one
simple-query message of two statements; where the connection binds parameters on the server, which takes one
statement per message, that statement runs on a client-binding cursor instead); before another kind of statement,
or a named (server-side) cursor's, it is a round trip of its own. A SET made inside a transaction is undone by
ROLLBACK and ROLLBACK TO SAVEPOINT, so those forget what was remembered, as does handing a connection back to the
pool mid-transaction.

OPTIONS["assume_role"] (settings: DATABASE_APP_ROLE) makes every new connection `SET ROLE` to the app role.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence
from typing import Any

from django.db.backends.postgresql.base import Cursor as ClientBindingCursor
from django.db.backends.postgresql.base import CursorDebugWrapper as PostgresCursorDebugWrapper
from django.db.backends.postgresql.base import DatabaseWrapper as PostgresDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from psycopg import ClientCursor, Cursor, ServerCursor, sql
from psycopg.pq import ExecStatus, TransactionStatus

from config.db import rls

# raw psycopg connection -> (tenant_id, bypass) last sent on it
_sent: weakref.WeakKeyDictionary[Any, tuple[str, str]] = weakref.WeakKeyDictionary()


def sent_settings(raw_connection: Any) -> tuple[str, str] | None:
    """What this backend believes the connection's settings are (None: unknown, they will be sent)."""
    return _sent.get(raw_connection)


@functools.lru_cache(maxsize=4096)
def _set_literal(wanted: tuple[str, str]) -> str:
    """rls.SET_SQL with the values inline: a tenant id is digits, the bypass flag "on" or empty (wanted_settings),
    so the statement holds no quote and no %, and runs before a statement with or without parameters."""
    tenant, bypass = wanted
    if not (tenant == "" or tenant.isdigit()) or bypass not in ("", "on"):
        raise ValueError(f"unexpected row-level security settings {wanted!r}")
    return rls.SET_SQL % (f"'{tenant}'", f"'{bypass}'")


_DML = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")


def _foldable(statement: Any) -> bool:
    """A query or data change, which may share a simple-query message (an implicit transaction in autocommit) with
    the settings: not a statement that refuses a transaction block (CREATE DATABASE, VACUUM, ...) or ends one."""
    return isinstance(statement, str) and statement.lstrip()[:6].upper().startswith(_DML)


def _server_bound(cursor: Any) -> bool:
    """A plain cursor that binds parameters on the server (OPTIONS["server_side_binding"]), not a named one."""
    return isinstance(cursor, Cursor) and not isinstance(cursor, (ClientCursor, ServerCursor))


def _rows(cursor: Any) -> list[tuple[Any, ...]]:
    # Not `cursor.description`: psycopg builds a Column object per column each time it is read.
    result = cursor.pgresult
    return cursor.fetchall() if result is not None and result.status == ExecStatus.TUPLES_OK else []  # type: ignore[no-any-return]


class _FollowsScope:
    """Django's cursor wrapper whose statements follow the scope (DatabaseWrapper._follow_scope) right before they
    run: inside every execute_wrapper (those see the statement as written) and the query log."""

    db: DatabaseWrapper

    def _execute(self, sql: Any, params: Any, *ignored: Any) -> Any:
        return self.db._follow_scope(super()._execute, sql, params, False, self)  # type: ignore[misc]

    def _executemany(self, sql: Any, param_list: Any, *ignored: Any) -> Any:
        return self.db._follow_scope(super()._executemany, sql, param_list, True, self)  # type: ignore[misc]


class _Cursor(_FollowsScope, CursorWrapper):
    pass


class _DebugCursor(_FollowsScope, PostgresCursorDebugWrapper):
    pass


class DatabaseWrapper(PostgresDatabaseWrapper):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rls_settings_sent = 0  # settings this backend sent (measurement and tests)
        self.rls_settings_sent_folded = 0  # of which in front of the statement, in its round trip

    def make_cursor(self, cursor: Any) -> Any:
        return _Cursor(cursor, self)

    def make_debug_cursor(self, cursor: Any) -> Any:
        return _DebugCursor(cursor, self)

    def init_connection_state(self) -> None:
        super().init_connection_state()
        rls.install_override_following()

    def _configure_role(self, connection: Any) -> bool:
        # Django's own version composes the statement through a Django cursor, which with the pool asks the pool
        # for a connection from inside the pool's configure callback and waits forever; compose it with psycopg.
        if role := self.settings_dict["OPTIONS"].get("assume_role"):
            with connection.cursor() as cursor:
                cursor.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            return True
        return False

    def _follow_scope(self, execute: Any, statement: Any, params: Any, many: bool, wrapper: CursorWrapper) -> Any:
        """Run execute(statement, params) (the Django cursor wrapper's own) with the connection's settings matching
        the current scope: sent first if they differ from what the connection carries."""
        raw = self.connection
        wanted = rls.wanted_settings()
        if _sent.get(raw) == wanted or raw.info.transaction_status == TransactionStatus.INERROR:
            return execute(statement, params)
        self.rls_settings_sent += 1
        cursor = wrapper.cursor
        if not many and _foldable(statement) and (isinstance(cursor, ClientCursor) or _server_bound(cursor)):
            if not isinstance(cursor, ClientCursor):
                # Server-side binding takes one statement per message: this one, which carries the scope change,
                # runs on a client-binding cursor of the same connection instead (the Django cursor reads its result
                # from it); the statements of other cursors stay server-bound.
                cursor.close()
                cursor = wrapper.cursor = ClientBindingCursor(raw)
            # The settings travel in front of the statement, in the same round trip (one simple-query message of
            # two statements), and the cursor is moved on to the statement's result. A failure undoes them with the
            # statement (one implicit transaction in autocommit; the transaction's ROLLBACK otherwise).
            _sent.pop(raw, None)
            result = execute(f"{_set_literal(wanted)}; {statement}", params)
            cursor.nextset()
            _sent[raw] = wanted
            self.rls_settings_sent_folded += 1
            return result
        # The raw cursor: not logged as a query (query-count assertions are unaffected) and never a named
        # (server-side) cursor, which could not run it.
        with raw.cursor() as set_cursor:
            set_cursor.execute(rls.SET_SQL, wanted)
        _sent[raw] = wanted
        return execute(statement, params)

    def fetch_in_tenant(
        self, tenant: int | rls.TenantOf, statement: str, params: Sequence[Any]
    ) -> list[tuple[Any, ...]]:
        """rls.fetch_in_tenant: the statement on the raw connection (no Django cursor wrappers, no query log), with
        the settings in front of it in the same round trip (one simple-query message of two statements) unless the
        connection already carries them."""
        self.ensure_connection()
        raw = self.connection
        if isinstance(tenant, rls.TenantOf):
            prefix: str | None = rls.SET_TENANT_OF_SQL.format(tenant=tenant.sql)
            prefix_params: Sequence[Any] = tenant.params
        elif _sent.get(raw) == (wanted := (str(tenant), "")):
            prefix = None
        else:
            prefix, prefix_params = rls.SET_SQL, wanted
        # With a prefix, a client-binding cursor even where the connection binds on the server: one round trip.
        with self.wrap_database_errors, raw.cursor() if prefix is None else ClientBindingCursor(raw) as cursor:
            if prefix is None:
                cursor.execute(statement, params)
                return _rows(cursor)
            try:
                cursor.execute(f"{prefix}; {statement}", [*prefix_params, *params])
                sent = cursor.fetchone()
                cursor.nextset()
                rows = _rows(cursor)
            except Exception:
                _sent.pop(raw, None)  # a failed statement undoes the settings sent with it
                raise
        assert sent is not None
        _sent[raw] = (sent[0], sent[1])
        self.rls_settings_sent += 1
        return rows

    def _forget(self) -> None:
        if self.connection is not None:
            _sent.pop(self.connection, None)

    def _rollback(self) -> None:
        self._forget()
        super()._rollback()

    def _savepoint_rollback(self, sid: str) -> None:
        super()._savepoint_rollback(sid)
        self._forget()

    def _close(self) -> None:
        # The pool rolls back a connection returned inside a transaction, undoing a SET made in it.
        if self.connection is not None and self.connection.info.transaction_status != TransactionStatus.IDLE:
            self._forget()
        super()._close()
