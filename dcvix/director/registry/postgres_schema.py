"""The PostgreSQL schema: the same tables and versions as ``agents.db``'s.

Version numbers are shared with :mod:`.sqlite_schema`: version 2 means the same
columns, constraints and meanings on both engines, so a store copied from one
to the other needs no translation. Each migration runs in one transaction
under an advisory lock, so two directors starting together on an empty
database migrate it once; a database newer than this code is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dcvix.director.registry import REGISTERED, StoreError
from dcvix.director.registry.engine import (
    AUDIT_MIGRATION,
    IDENTITY_TABLE,
    LOGIN_TABLES,
    REPORT_TABLES,
    SESSIONS_COLUMN,
)

# Advisory lock keys (one namespace per database; any two distinct numbers).
MIGRATION_LOCK = 0x64637669_00000001
WRITE_LOCK = 0x64637669_00000002
IDENTITY_LOCK = 0x64637669_00000003
LEADER_LOCK = 0x64637669_00000004
# The channel a trigger notifies on every change of the agents table.
AGENTS_CHANNEL = "dcvix_agents"
# The channel a trigger notifies when reports were shared.
REPORTS_CHANNEL = "dcvix_reports"


def _to_1(connection: Any) -> None:
    """Agents (Go's columns and ours), the audit trail, revoked tokens."""
    connection.execute(
        "CREATE TABLE agents (guid TEXT PRIMARY KEY, hostname TEXT, "
        "state TEXT NOT NULL DEFAULT 'pending', created_at TIMESTAMPTZ, "
        "registered_at TIMESTAMPTZ, last_seen_at TIMESTAMPTZ, cert_serial TEXT, "
        "tags TEXT, key_fingerprint TEXT, cert_expires_at TIMESTAMPTZ, "
        "address TEXT, state_changed_at TIMESTAMPTZ)"
    )
    connection.execute(
        "CREATE TABLE audit (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "time TIMESTAMPTZ NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, "
        "target TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '')"
    )
    connection.execute(
        "CREATE TABLE revoked_tokens (hash TEXT PRIMARY KEY, "
        "expires_at TIMESTAMPTZ NOT NULL)"
    )


def _to_2(connection: Any) -> None:
    """Claims; registered hostnames unique by constraint; change notifications.

    The notification is the trigger's, not the statements': a change made by
    any process (another director, ``dcvixctl``, an operator's ``psql``)
    reaches every director's memory of agent records.
    """
    for column, kind in (
        ("claimed_key", "TEXT"),
        ("claimed_at", "TIMESTAMPTZ"),
        ("adopted_duplicate", "INTEGER NOT NULL DEFAULT 0"),
    ):
        connection.execute(f"ALTER TABLE agents ADD COLUMN {column} {kind}")
    connection.execute(
        "CREATE UNIQUE INDEX agents_registered_hostname ON agents (lower(hostname)) "
        f"WHERE state = '{REGISTERED}' AND adopted_duplicate = 0"
    )
    connection.execute("CREATE INDEX agents_hostname ON agents (lower(hostname))")
    connection.execute("CREATE INDEX agents_state ON agents (state, created_at)")
    connection.execute(
        "CREATE FUNCTION dcvix_agents_changed() RETURNS trigger LANGUAGE plpgsql "
        f"AS $$ BEGIN PERFORM pg_notify('{AGENTS_CHANNEL}', ''); RETURN NULL; END $$"
    )
    connection.execute(
        "CREATE TRIGGER agents_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE "
        "ON agents FOR EACH STATEMENT EXECUTE FUNCTION dcvix_agents_changed()"
    )


def _to_3(connection: Any) -> None:
    """What the directors of a store share: CA fingerprint, token key check."""
    connection.execute(IDENTITY_TABLE)


def _to_4(connection: Any) -> None:
    """Login failures and locks shared by the directors of a store."""
    for statement in LOGIN_TABLES:
        connection.execute(statement)


def _to_5(connection: Any) -> None:
    """Agents' last reports and connection grants, shared by a store's directors."""
    for statement in REPORT_TABLES:
        connection.execute(statement)
    connection.execute(
        "CREATE FUNCTION dcvix_reports_changed() RETURNS trigger LANGUAGE plpgsql "
        f"AS $$ BEGIN PERFORM pg_notify('{REPORTS_CHANNEL}', ''); RETURN NULL; END $$"
    )
    for table in ("server_reports", "connection_grants"):
        connection.execute(
            f"CREATE TRIGGER {table}_changed AFTER INSERT OR UPDATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION dcvix_reports_changed()"
        )


def _to_6(connection: Any) -> None:
    """A shared report's sessions kept apart from the rest of it."""
    connection.execute(SESSIONS_COLUMN)


def _to_7(connection: Any) -> None:
    """Where each audited request came from and its outcome; the trail by time.

    Older lines keep ``ok`` and no address (a failed login's address was its
    target until now). The index serves retention and ``since``/``until``.
    """
    for statement in AUDIT_MIGRATION:
        connection.execute(statement)


MIGRATIONS: tuple[Callable[[Any], None], ...] = (
    _to_1,
    _to_2,
    _to_3,
    _to_4,
    _to_5,
    _to_6,
    _to_7,
)
SCHEMA_VERSION = len(MIGRATIONS)


def _version(connection: Any) -> int | None:
    """The schema version, or None before the first migration."""
    row = connection.execute("SELECT to_regclass('schema_version')").fetchone()
    if row[0] is None:
        return None
    row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(connection: Any) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION` (``connection`` in autocommit).

    Raises:
        StoreError: the database's schema is newer than this code.
    """
    if _version(connection) == SCHEMA_VERSION:
        return  # nothing to do: no DDL, so a role without CREATE may start
    connection.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
        )
        row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
        version = row[0] or 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"schema version {version} is newer than this dcvix "
                f"({SCHEMA_VERSION}): upgrade dcvix"
            )
        for number in range(version, SCHEMA_VERSION):
            with connection.transaction():
                MIGRATIONS[number](connection)
                connection.execute("DELETE FROM schema_version")
                connection.execute(
                    "INSERT INTO schema_version (version) VALUES (%s)", (number + 1,)
                )
    finally:
        connection.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
