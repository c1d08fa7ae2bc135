"""Everything the director keeps across restarts, in ``agents.db`` (SQLite, WAL).

All SQL lives here. Each operation is a plain function of a ``sqlite3``
connection (``*_txn``) so that the director runs it in its one database thread
(:class:`AgentStore`) and ``dcvixctl`` runs it directly, both against the same
file: SQLite's locking makes that safe while the director runs, and the
director reads agent state per request, so a ``dcvixctl`` change counts at once.

A Go ``agents.db`` is read as it is: its table is extended with our columns and
its text timestamps (``2025-03-01 10:20:30.123456789+01:00``) are parsed.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from twisted.internet.defer import Deferred

from dcvix.common.errors import Conflict, NotFound
from dcvix.common.threads import ThreadPoolService

P = ParamSpec("P")
R = TypeVar("R")

PENDING, REGISTERED, REVOKED, DENIED = "pending", "registered", "revoked", "denied"
STATES = (PENDING, REGISTERED, REVOKED, DENIED)
DB_TIMEOUT = 10.0

_GO_COLUMNS = """
    guid TEXT PRIMARY KEY,
    hostname TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    created_at DATETIME,
    registered_at DATETIME,
    last_seen_at DATETIME,
    cert_serial TEXT,
    tags TEXT
"""
# Columns Go dcvix does not have; added to an adopted database in place.
_OUR_COLUMNS = {
    "key_fingerprint": "TEXT",
    "cert_expires_at": "DATETIME",
    "address": "TEXT",
    "state_changed_at": "DATETIME",
}
_SCHEMA_VERSION = 1


# ------------------------------------------------------------------ timestamps


_TIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(?:\.(\d+))?"
    r"\s*(Z|[+-]\d{2}:?\d{2})?(?:\s.*)?$"
)


def from_db_time(text: str | None) -> dt.datetime | None:
    """Parse our timestamps and Go's (0-9 fractional digits, offset or ``Z``).

    A timestamp without an offset is taken as UTC.
    """
    if not text:
        return None
    match = _TIME.match(text.strip())
    if match is None:
        return None
    day, clock, fraction, zone = match.groups()
    micro = (fraction or "0")[:6].ljust(6, "0")
    if zone in (None, "Z"):
        zone = "+00:00"
    elif ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    try:
        moment = dt.datetime.fromisoformat(f"{day}T{clock}.{micro}{zone}")
        if moment.year <= 1:
            return None  # Go's zero time
        return moment.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        return None  # a day or offset out of range: junk, not a crash


def to_db_time(moment: dt.datetime | None) -> str | None:
    """One format for everything we write: UTC, microseconds, explicit offset."""
    if moment is None:
        return None
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00:00")


# ----------------------------------------------------------------------- rows


@dataclass(frozen=True)
class AgentRecord:
    """One row of the agent registry."""

    guid: str
    hostname: str
    state: str
    created_at: dt.datetime | None
    registered_at: dt.datetime | None
    last_seen_at: dt.datetime | None
    cert_serial: str
    cert_expires_at: dt.datetime | None
    key_fingerprint: str
    address: str
    state_changed_at: dt.datetime | None

    @property
    def pinned(self) -> bool:
        """A registered agent whose key is known (adopted Go rows have none yet)."""
        return self.state == REGISTERED and bool(self.key_fingerprint)


_SELECT = (
    "SELECT guid, hostname, state, created_at, registered_at, last_seen_at, "
    "cert_serial, cert_expires_at, key_fingerprint, address, state_changed_at "
    "FROM agents"
)


def _record(row: tuple[Any, ...]) -> AgentRecord:
    return AgentRecord(
        guid=row[0],
        hostname=row[1] or "",
        state=row[2],
        created_at=from_db_time(row[3]),
        registered_at=from_db_time(row[4]),
        last_seen_at=from_db_time(row[5]),
        cert_serial=row[6] or "",
        cert_expires_at=from_db_time(row[7]),
        key_fingerprint=row[8] or "",
        address=row[9] or "",
        state_changed_at=from_db_time(row[10]),
    )


# --------------------------------------------------------------------- schema


def connect(path: Path) -> sqlite3.Connection:
    """Open ``agents.db`` (0600, WAL), creating or upgrading its tables."""
    connection = sqlite3.connect(
        path, timeout=DB_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    os.chmod(path, 0o600)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(f"PRAGMA busy_timeout={int(DB_TIMEOUT * 1000)}")
    _migrate(connection)
    return connection


def _migrate(connection: sqlite3.Connection) -> None:
    with _transaction(connection):
        connection.execute(f"CREATE TABLE IF NOT EXISTS agents ({_GO_COLUMNS})")
        have = {row[1] for row in connection.execute("PRAGMA table_info(agents)")}
        for column, kind in _OUR_COLUMNS.items():
            if column not in have:
                connection.execute(f"ALTER TABLE agents ADD COLUMN {column} {kind}")
        connection.execute(
            "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY, "
            "time DATETIME NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, "
            "target TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '')"
        )
        connection.execute(
            "CREATE TABLE IF NOT EXISTS revoked_tokens (hash TEXT PRIMARY KEY, "
            "expires_at DATETIME NOT NULL)"
        )
        connection.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")


class _transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (or ``ROLLBACK`` on any exception)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __enter__(self) -> sqlite3.Connection:
        self._connection.execute("BEGIN IMMEDIATE")
        return self._connection

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        self._connection.execute("ROLLBACK" if kind else "COMMIT")


# ------------------------------------------------------------- transactions


def get_txn(connection: sqlite3.Connection, guid: str) -> AgentRecord | None:
    """One agent, or None."""
    row = connection.execute(f"{_SELECT} WHERE guid = ?", (guid,)).fetchone()
    return _record(row) if row else None


def list_txn(
    connection: sqlite3.Connection, state: str | None = None
) -> list[AgentRecord]:
    """Every agent (of one state), oldest first."""
    if state is None:
        rows = connection.execute(f"{_SELECT} ORDER BY created_at, guid")
    else:
        rows = connection.execute(
            f"{_SELECT} WHERE state = ? ORDER BY created_at, guid", (state,)
        )
    return [_record(row) for row in rows]


def count_txn(connection: sqlite3.Connection, state: str) -> int:
    """How many agents are in ``state``."""
    row = connection.execute("SELECT COUNT(*) FROM agents WHERE state = ?", (state,))
    return int(row.fetchone()[0])


def duplicate_hostnames_txn(connection: sqlite3.Connection) -> set[str]:
    """Hostnames held by more than one registered agent (adopted Go rows).

    Compared and returned in lower case, as :func:`approve_txn` compares them.
    """
    rows = connection.execute(
        "SELECT lower(hostname) FROM agents WHERE state = ? "
        "GROUP BY lower(hostname) HAVING COUNT(*) > 1",
        (REGISTERED,),
    )
    return {row[0] for row in rows}


def _create(
    connection: sqlite3.Connection,
    state: str,
    guid: str,
    hostname: str,
    key_fingerprint: str,
    address: str,
    now: dt.datetime,
) -> bool:
    registered_at = to_db_time(now) if state == REGISTERED else None
    with _transaction(connection):
        if (
            state == REGISTERED
            and connection.execute(
                "SELECT 1 FROM agents WHERE state = ? AND lower(hostname) = lower(?)",
                (REGISTERED, hostname),
            ).fetchone()
        ):
            return False  # hostnames are unique among registered agents
        cursor = connection.execute(
            "INSERT OR IGNORE INTO agents (guid, hostname, state, created_at, "
            "registered_at, key_fingerprint, address, state_changed_at, "
            "cert_serial, tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, '', '')",
            (
                guid,
                hostname,
                state,
                to_db_time(now),
                registered_at,
                key_fingerprint,
                address,
                to_db_time(now),
            ),
        )
        return cursor.rowcount == 1


def create_pending_txn(
    connection: sqlite3.Connection,
    guid: str,
    hostname: str,
    key_fingerprint: str,
    address: str,
    now: dt.datetime,
) -> bool:
    """Insert a pending agent; False when the GUID exists already (a race)."""
    return _create(connection, PENDING, guid, hostname, key_fingerprint, address, now)


def create_registered_txn(
    connection: sqlite3.Connection,
    guid: str,
    hostname: str,
    key_fingerprint: str,
    address: str,
    now: dt.datetime,
) -> bool:
    """Insert an agent approved at once (``auto_approve = token``).

    False when the GUID exists, or a registered agent has the hostname (checked
    in the same transaction, so two racing registrations cannot both win).
    """
    return _create(
        connection, REGISTERED, guid, hostname, key_fingerprint, address, now
    )


def to_pending_txn(
    connection: sqlite3.Connection,
    guid: str,
    hostname: str,
    key_fingerprint: str,
    address: str,
    now: dt.datetime,
) -> None:
    """A registered agent goes back to pending (new hostname, expiry, first key).

    The expiry of its last certificate is forgotten: the approval that follows
    stands for it, or an expired agent would fall back to pending forever. An
    agent revoked or denied meanwhile (``dcvixctl``) stays so.
    """
    with _transaction(connection):
        connection.execute(
            "UPDATE agents SET state = ?, hostname = ?, key_fingerprint = ?, "
            "address = ?, state_changed_at = ?, cert_expires_at = NULL "
            "WHERE guid = ? AND state IN (?, ?)",
            (
                PENDING,
                hostname,
                key_fingerprint,
                address,
                to_db_time(now),
                guid,
                REGISTERED,
                PENDING,
            ),
        )


def record_issue_txn(
    connection: sqlite3.Connection,
    guid: str,
    serial: int,
    expires: dt.datetime,
    address: str,
    now: dt.datetime,
) -> None:
    """Note a certificate just issued to an agent."""
    with _transaction(connection):
        connection.execute(
            "UPDATE agents SET cert_serial = ?, cert_expires_at = ?, "
            "last_seen_at = ?, address = ? WHERE guid = ?",
            (format(serial, "x"), to_db_time(expires), to_db_time(now), address, guid),
        )


def pin_txn(connection: sqlite3.Connection, guid: str, key_fingerprint: str) -> None:
    """Pin the key of an adopted registered agent that had none."""
    with _transaction(connection):
        connection.execute(
            "UPDATE agents SET key_fingerprint = ? WHERE guid = ? AND state = ? "
            "AND (key_fingerprint IS NULL OR key_fingerprint = '')",
            (key_fingerprint, guid, REGISTERED),
        )


def audit_txn(
    connection: sqlite3.Connection,
    now: dt.datetime,
    actor: str,
    action: str,
    target: str,
    detail: str = "",
) -> None:
    """Append one line to the audit table."""
    with _transaction(connection):
        _audit(connection, now, actor, action, target, detail)


def _audit(
    connection: sqlite3.Connection,
    now: dt.datetime,
    actor: str,
    action: str,
    target: str,
    detail: str,
) -> None:
    connection.execute(
        "INSERT INTO audit (time, actor, action, target, detail) "
        "VALUES (?, ?, ?, ?, ?)",
        (to_db_time(now), actor, action, target, detail),
    )


def audit_list_txn(
    connection: sqlite3.Connection, limit: int = 100
) -> list[tuple[dt.datetime | None, str, str, str, str]]:
    """The latest audit lines, newest first."""
    rows = connection.execute(
        "SELECT time, actor, action, target, detail FROM audit "
        "ORDER BY id DESC LIMIT ?",
        (limit,),
    )
    return [(from_db_time(r[0]), r[1], r[2], r[3], r[4]) for r in rows]


# ------------------------------------------------------------ revoked tokens


def revoke_token_txn(
    connection: sqlite3.Connection, token_hash: str, expires: dt.datetime
) -> None:
    """Remember a logged-out token until it would have expired anyway."""
    with _transaction(connection):
        connection.execute(
            "INSERT OR IGNORE INTO revoked_tokens (hash, expires_at) VALUES (?, ?)",
            (token_hash, to_db_time(expires)),
        )


def token_revoked_txn(connection: sqlite3.Connection, token_hash: str) -> bool:
    """Whether a token was logged out."""
    row = connection.execute(
        "SELECT 1 FROM revoked_tokens WHERE hash = ?", (token_hash,)
    ).fetchone()
    return row is not None


def vacuum_tokens_txn(connection: sqlite3.Connection, now: dt.datetime) -> int:
    """Forget revoked tokens that have expired; how many were dropped."""
    with _transaction(connection):
        cursor = connection.execute(
            "DELETE FROM revoked_tokens WHERE expires_at < ?", (to_db_time(now),)
        )
        return cursor.rowcount


# ------------------------------------------------------------- admin actions


@dataclass(frozen=True)
class ActionResult:
    """What an admin action did, for the caller to report."""

    record: AgentRecord
    replaced: tuple[str, ...] = ()
    warning: str = ""


def _require(
    connection: sqlite3.Connection, guid: str, states: tuple[str, ...], verb: str
) -> AgentRecord:
    record = get_txn(connection, guid)
    if record is None:
        raise NotFound(f"agent {guid} not found")
    if record.state not in states:
        raise Conflict(f"agent {guid} is {record.state}, it cannot be {verb}")
    return record


def _set_state(
    connection: sqlite3.Connection,
    record: AgentRecord,
    state: str,
    now: dt.datetime,
) -> AgentRecord:
    registered_at = now if state == REGISTERED else record.registered_at
    connection.execute(
        "UPDATE agents SET state = ?, state_changed_at = ?, registered_at = ? "
        "WHERE guid = ?",
        (state, to_db_time(now), to_db_time(registered_at), record.guid),
    )
    return replace(
        record, state=state, state_changed_at=now, registered_at=registered_at
    )


def approve_txn(
    connection: sqlite3.Connection,
    guid: str,
    actor: str,
    now: dt.datetime,
    replace_existing: bool = False,
    own_names: frozenset[str] = frozenset(),
) -> ActionResult:
    """Pending → registered, pinning the key it registered with.

    Hostnames are unique among registered agents: when another registered agent
    has this one's hostname, the answer is 409 unless ``replace_existing``, which
    revokes the other one.

    Raises:
        NotFound, Conflict: as the API answers them.
    """
    with _transaction(connection):
        record = _require(connection, guid, (PENDING,), "approved")
        holders = [
            other.guid
            for other in list_txn(connection, REGISTERED)
            if other.hostname.lower() == record.hostname.lower() and other.guid != guid
        ]
        if holders and not replace_existing:
            raise Conflict(
                f"hostname {record.hostname} is already registered to agent "
                f"{', '.join(holders)}; approve with replace to revoke it"
            )
        for holder in holders:
            old = get_txn(connection, holder)
            assert old is not None
            _set_state(connection, old, REVOKED, now)
            _audit(
                connection,
                now,
                actor,
                "revoke",
                holder,
                f"replaced by {guid} ({record.hostname})",
            )
        updated = _set_state(connection, record, REGISTERED, now)
        warning = ""
        if record.hostname.lower() in own_names:
            warning = (
                f"{record.hostname} is the director's own host name: this agent "
                "runs on the director's machine"
            )
        _audit(
            connection,
            now,
            actor,
            "approve",
            guid,
            f"hostname={record.hostname} key={record.key_fingerprint}",
        )
        return ActionResult(updated, tuple(holders), warning)


def _transition(
    verb: str, past: str, allowed: tuple[str, ...], target: str
) -> Callable[[sqlite3.Connection, str, str, dt.datetime], ActionResult]:
    def action(
        connection: sqlite3.Connection, guid: str, actor: str, now: dt.datetime
    ) -> ActionResult:
        with _transaction(connection):
            record = _require(connection, guid, allowed, past)
            updated = _set_state(connection, record, target, now)
            _audit(connection, now, actor, verb, guid, f"hostname={record.hostname}")
            return ActionResult(updated)

    action.__name__ = f"{verb}_txn"
    action.__doc__ = f"{'/'.join(allowed)} → {target}, audited."
    return action


deny_txn = _transition("deny", "denied", (PENDING,), DENIED)
revoke_txn = _transition("revoke", "revoked", (REGISTERED,), REVOKED)


def reactivate_txn(
    connection: sqlite3.Connection, guid: str, actor: str, now: dt.datetime
) -> ActionResult:
    """Revoked → registered (same pinned key); denied → pending."""
    with _transaction(connection):
        record = _require(connection, guid, (REVOKED, DENIED), "reactivated")
        target = REGISTERED if record.state == REVOKED else PENDING
        if target == REGISTERED:
            clash = [
                other.guid
                for other in list_txn(connection, REGISTERED)
                if other.hostname.lower() == record.hostname.lower()
            ]
            if clash:
                raise Conflict(
                    f"hostname {record.hostname} is now registered to agent "
                    f"{', '.join(clash)}"
                )
        updated = _set_state(connection, record, target, now)
        _audit(connection, now, actor, "reactivate", guid, f"now {target}")
        return ActionResult(updated)


def delete_txn(
    connection: sqlite3.Connection, guid: str, actor: str, now: dt.datetime
) -> ActionResult:
    """Forget an agent entirely (its next registration starts afresh)."""
    with _transaction(connection):
        record = get_txn(connection, guid)
        if record is None:
            raise NotFound(f"agent {guid} not found")
        connection.execute("DELETE FROM agents WHERE guid = ?", (guid,))
        _audit(
            connection,
            now,
            actor,
            "delete",
            guid,
            f"was {record.state}, hostname={record.hostname}",
        )
        return ActionResult(record)


def purge_pending_txn(
    connection: sqlite3.Connection, older_than: dt.datetime
) -> list[str]:
    """Delete pending agents created before ``older_than``; their GUIDs."""
    with _transaction(connection):
        stale = [
            r.guid
            for r in list_txn(connection, PENDING)
            if (r.created_at or older_than) < older_than
        ]
        connection.executemany(
            "DELETE FROM agents WHERE guid = ?", [(g,) for g in stale]
        )
        return stale


# ----------------------------------------------------------- the async store


class AgentStore:
    """The registry as the director uses it: every call off the reactor thread.

    Args:
        path: ``agents.db``.
        pool: a one-thread pool, so calls are serialised on one connection.
    """

    def __init__(self, path: Path, pool: ThreadPoolService) -> None:
        self.path = path
        self._pool = pool
        self._connection = connect(path)

    def run(
        self,
        function: Callable[..., R],
        *args: Any,
        **kwargs: Any,
    ) -> Deferred[R]:
        """Run one ``*_txn`` function with the store's connection."""
        return self._pool.run(
            DB_TIMEOUT * 2, function, self._connection, *args, **kwargs
        )

    def close(self) -> None:
        """Close the connection (after the pool stopped)."""
        self._connection.close()
