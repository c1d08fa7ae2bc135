"""Every SQL statement of the registry, once for both engines.

Each operation is a plain function of a :class:`~.engine.Connection`
(``*_txn``); :class:`SqlRegistry` runs them through its engine's ``call`` and a
*runner*: the director's database pool (off the reactor), or inline for
``dcvixctl``. Both may work on the same store while the director runs: writers
take turns (see :meth:`~.engine.Connection.transaction`), and the registry
notices every commit (:meth:`~.engine.Engine.version`), so a ``dcvixctl`` change
or another director's counts at once.

Timestamps are read with :func:`~dcvix.common.gotime.parse_stored_time`, which
takes Go's text (an adopted ``agents.db``), ours, and PostgreSQL's datetimes.
"""

from __future__ import annotations

import builtins
import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from twisted.internet.defer import Deferred

from dcvix.common.errors import Conflict, NotFound
from dcvix.common.gotime import parse_stored_time
from dcvix.director.registry import (
    DENIED,
    NOTHING_SEEN,
    PENDING,
    REGISTERED,
    REVOKED,
    ActionResult,
    AgentRecord,
    AuditEntry,
    AuditQuery,
    Pinning,
    Seen,
    StoredAudit,
    UniqueViolation,
)
from dcvix.director.registry.engine import (
    AUDIT_FIELDS,
    Connection,
    Engine,
    Runner,
    to_db_time,
)

R = TypeVar("R")

# Records :meth:`SqliteRegistry.current` keeps at most (a fleet's worth; when
# full it starts again, so a read is never stale, only slower).
VIEW_LIMIT = 100_000

# ``duplicate_hostname``, computed with the row: one indexed lookup of the
# other agents holding the same name (see AgentRecord).
_SELECT = """
SELECT a.guid, a.hostname, a.state, a.created_at, a.registered_at,
       a.last_seen_at, a.cert_serial, a.cert_expires_at, a.key_fingerprint,
       a.address, a.state_changed_at, a.claimed_key, a.claimed_at,
       a.state IN ('registered', 'pending') AND EXISTS (
           SELECT 1 FROM agents b
           WHERE lower(b.hostname) = lower(a.hostname) AND b.guid != a.guid
             AND (b.state = 'registered'
                  OR (a.state = 'pending' AND b.state = 'pending')))
FROM agents a
"""


def _record(row: tuple[Any, ...]) -> AgentRecord:
    return AgentRecord(
        guid=row[0],
        hostname=row[1] or "",
        state=row[2],
        created_at=parse_stored_time(row[3]),
        registered_at=parse_stored_time(row[4]),
        last_seen_at=parse_stored_time(row[5]),
        cert_serial=row[6] or "",
        cert_expires_at=parse_stored_time(row[7]),
        key_fingerprint=row[8] or "",
        address=row[9] or "",
        state_changed_at=parse_stored_time(row[10]),
        claimed_key=row[11] or "",
        claimed_at=parse_stored_time(row[12]),
        duplicate_hostname=bool(row[13]),
    )


# ------------------------------------------------------------------ reading


def get_txn(connection: Connection, guid: str) -> AgentRecord | None:
    """One agent, or None."""
    row = connection.execute(f"{_SELECT} WHERE a.guid = ?", (guid,)).fetchone()
    return _record(row) if row else None


def list_txn(connection: Connection, state: str | None = None) -> list[AgentRecord]:
    """Every agent (of one state), oldest first."""
    if state is None:
        rows = connection.execute(
            f"{_SELECT} ORDER BY a.created_at NULLS FIRST, a.guid"
        )
    else:
        rows = connection.execute(
            f"{_SELECT} WHERE a.state = ? ORDER BY a.created_at NULLS FIRST, a.guid",
            (state,),
        )
    return [_record(row) for row in rows]


def states_txn(connection: Connection) -> dict[str, str]:
    """Every agent's state by GUID."""
    return dict(connection.execute("SELECT guid, state FROM agents"))


def count_txn(connection: Connection, state: str) -> int:
    """How many agents are in ``state``."""
    row = connection.execute("SELECT COUNT(*) FROM agents WHERE state = ?", (state,))
    return int(row.fetchone()[0])


def hostname_holders_txn(
    connection: Connection, hostname: str, other_than: str = ""
) -> list[str]:
    """Registered agents holding ``hostname`` (any case), but ``other_than``."""
    rows = connection.execute(
        "SELECT guid FROM agents WHERE lower(hostname) = lower(?) AND state = ? "
        "AND guid != ? ORDER BY guid",
        (hostname, REGISTERED, other_than),
    )
    return [row[0] for row in rows]


# ------------------------------------------------------------------ writing


def _audit(connection: Connection, entry: AuditEntry) -> AuditEntry:
    connection.execute(
        f"INSERT INTO audit ({', '.join(AUDIT_FIELDS)}) "  # noqa: S608 - fixed
        f"VALUES ({', '.join('?' for _ in AUDIT_FIELDS)})",
        (
            to_db_time(entry.time),
            entry.actor,
            entry.action,
            entry.target,
            entry.detail,
            entry.address,
            entry.outcome,
        ),
    )
    return entry


def audit_txn(connection: Connection, entry: AuditEntry) -> None:
    """Append one line to the audit table."""
    with connection.transaction(agents=False):
        _audit(connection, entry)


_AUDIT_COLUMNS = ", ".join(("id", *AUDIT_FIELDS))


def _stored_audit(row: Sequence[Any]) -> StoredAudit:
    return StoredAudit(
        int(row[0]),
        AuditEntry(parse_stored_time(row[1]), *row[2:8]),
    )


def audit_list_txn(connection: Connection, limit: int = 100) -> list[AuditEntry]:
    """The latest audit lines, newest first."""
    return [line.entry for line in audit_query_txn(connection, AuditQuery(limit=limit))]


def _like(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, its own ``%`` and ``_`` literal."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def audit_query_txn(connection: Connection, query: AuditQuery) -> list[StoredAudit]:
    """The lines ``query`` selects, newest (highest id) first."""
    where: list[str] = []
    params: list[Any] = []
    if query.since is not None:
        where.append("time >= ?")
        params.append(to_db_time(query.since))
    if query.until is not None:
        where.append("time < ?")
        params.append(to_db_time(query.until))
    if query.actor:
        where.append("lower(actor) LIKE ? ESCAPE '\\'")
        params.append(_like(query.actor))
    if query.action:
        where.append("action = ?")
        params.append(query.action)
    if query.outcome:
        where.append("outcome = ?")
        params.append(query.outcome)
    if query.after is not None:
        where.append("id < ?")
        params.append(query.after)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    rows = connection.execute(
        f"SELECT {_AUDIT_COLUMNS} FROM audit {clause}ORDER BY id DESC LIMIT ?",  # noqa: S608 - fixed fragments
        (*params, query.limit),
    )
    return [_stored_audit(row) for row in rows]


AUDIT_VACUUM_BATCH = 5000


def vacuum_audit_txn(
    connection: Connection, before: dt.datetime, batch: int = AUDIT_VACUUM_BATCH
) -> int:
    """Forget up to ``batch`` audit lines older than ``before``; how many.

    A batch per transaction: the first vacuum after a flood (or an upgrade)
    never holds the store's write lock for long.
    """
    with connection.transaction(agents=False):
        cursor = connection.execute(
            "DELETE FROM audit WHERE id IN "
            "(SELECT id FROM audit WHERE time < ? ORDER BY id LIMIT ?)",
            (to_db_time(before), batch),
        )
        return cursor.rowcount


def create_pending_txn(
    connection: Connection,
    guid: str,
    hostname: str,
    key: str,
    address: str,
    now: dt.datetime,
) -> bool:
    """Insert a pending agent; False when the GUID exists already (a race)."""
    with connection.transaction():
        return _insert(connection, PENDING, guid, hostname, key, address, now)


def _insert(
    connection: Connection,
    state: str,
    guid: str,
    hostname: str,
    key: str,
    address: str,
    now: dt.datetime,
) -> bool:
    cursor = connection.execute(
        "INSERT INTO agents (guid, hostname, state, created_at, "
        "registered_at, key_fingerprint, address, state_changed_at, "
        "cert_serial, tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, '', '') "
        "ON CONFLICT DO NOTHING",
        (
            guid,
            hostname,
            state,
            to_db_time(now),
            to_db_time(now) if state == REGISTERED else None,
            key,
            address,
            to_db_time(now),
        ),
    )
    return cursor.rowcount == 1


def create_registered_txn(
    connection: Connection,
    guid: str,
    hostname: str,
    key: str,
    address: str,
    now: dt.datetime,
    actor: str,
) -> bool:
    """Insert an agent approved at once, audited; False when it cannot be.

    The hostname's uniqueness among registered agents is the database's
    constraint, so two racing registrations cannot both win (on any engine).
    """
    try:
        with connection.transaction():
            # The index leaves out adopted duplicates; they hold their name too.
            if hostname_holders_txn(connection, hostname, guid):
                return False
            if not _insert(connection, REGISTERED, guid, hostname, key, address, now):
                return False
            _audit(
                connection,
                AuditEntry(
                    now,
                    actor,
                    "approve",
                    guid,
                    f"hostname={hostname} key={key} from {address}",
                    address,
                ),
            )
            return True
    except UniqueViolation:
        return False


_TO_PENDING = (
    "UPDATE agents SET state = ?, hostname = ?, key_fingerprint = ?, "
    "address = ?, state_changed_at = ?, cert_expires_at = NULL, "
    "claimed_key = NULL, claimed_at = NULL, adopted_duplicate = 0 "
    "WHERE guid = ? AND state IN (?, ?)"
)


def to_pending_txn(
    connection: Connection,
    guid: str,
    hostname: str,
    key: str,
    address: str,
    now: dt.datetime,
    seen: AgentRecord | None = None,
) -> bool:
    """A registered agent goes back to pending (new hostname, expiry).

    See :meth:`AgentRegistry.to_pending`. With ``seen``, only if the row still
    has the state and key the caller decided on.
    """
    with connection.transaction():
        values: tuple[str, ...] = (REGISTERED, PENDING)
        query = _TO_PENDING
        if seen is not None:
            query += " AND state = ? AND coalesce(key_fingerprint, '') = ?"
            values = (REGISTERED, PENDING, seen.state, seen.key_fingerprint)
        cursor = connection.execute(
            query,
            (PENDING, hostname, key, address, to_db_time(now), guid, *values),
        )
        return cursor.rowcount == 1


def claim_txn(
    connection: Connection,
    guid: str,
    key: str,
    address: str,
    now: dt.datetime,
) -> str | None:
    """Record a claimed key for an unpinned registered agent; the claim it replaced.

    A new or changed claim is audited; the same claim again is not (a Go agent
    polls every 30 s).
    """
    with connection.transaction():
        row = connection.execute(
            "SELECT claimed_key FROM agents WHERE guid = ? AND state = ? "
            "AND (key_fingerprint IS NULL OR key_fingerprint = '')",
            (guid, REGISTERED),
        ).fetchone()
        if row is None:
            return None
        before = row[0] or ""
        if before != key:
            connection.execute(
                "UPDATE agents SET claimed_key = ?, claimed_at = ? WHERE guid = ?",
                (key, to_db_time(now), guid),
            )
            _audit(
                connection,
                AuditEntry(
                    now,
                    f"address {address}",
                    "claim key",
                    guid,
                    f"key={key}" + (f" replacing {before}" if before else ""),
                    address,
                ),
            )
        return before


def record_issue_txn(
    connection: Connection,
    guid: str,
    serial: int,
    expires: dt.datetime,
    address: str,
    now: dt.datetime,
) -> bool:
    """Note a certificate just issued to a registered agent; False if it is not.

    Checked in the write: the agent was registered when the caller read it,
    but another director (or ``dcvixctl``) may have revoked it since.
    """
    with connection.transaction():
        cursor = connection.execute(
            "UPDATE agents SET cert_serial = ?, cert_expires_at = ?, "
            "last_seen_at = ?, address = ? WHERE guid = ? AND state = ?",
            (
                format(serial, "x"),
                to_db_time(expires),
                to_db_time(now),
                address,
                guid,
                REGISTERED,
            ),
        )
        return cursor.rowcount == 1


def pin_txn(connection: Connection, guid: str, key: str, now: dt.datetime) -> Pinning:
    """Pin the key of an adopted registered agent that had none; drop its claim."""
    with connection.transaction():
        record = get_txn(connection, guid)
        if record is None or record.state != REGISTERED or record.key_fingerprint:
            return Pinning(record, pinned=False)
        connection.execute(
            "UPDATE agents SET key_fingerprint = ?, claimed_key = NULL, "
            "claimed_at = NULL WHERE guid = ?",
            (key, guid),
        )
        dropped = record.claimed_key if record.claimed_key != key else ""
        _audit(
            connection,
            AuditEntry(
                now,
                "mtls",
                "pin key",
                guid,
                f"key={key}" + (f" dropped claim {dropped}" if dropped else ""),
            ),
        )
        return Pinning(
            replace(record, key_fingerprint=key, claimed_key="", claimed_at=None),
            dropped,
            pinned=True,
        )


# ------------------------------------------------------------- admin actions


def _require(
    connection: Connection, guid: str, states: tuple[str, ...], verb: str
) -> AgentRecord:
    record = get_txn(connection, guid)
    if record is None:
        raise NotFound(f"agent {guid} not found")
    if record.state not in states:
        raise Conflict(f"agent {guid} is {record.state}, it cannot be {verb}")
    return record


def _set_state(
    connection: Connection,
    record: AgentRecord,
    state: str,
    now: dt.datetime,
) -> None:
    registered_at = now if state == REGISTERED else record.registered_at
    # A row adopted as a duplicate keeps its flag only while it stays as it
    # was adopted; any change of state puts it under the hostname rule. A
    # claim is for the state it was made in: a revoked agent's claim must not
    # be approvable after a reactivation.
    connection.execute(
        "UPDATE agents SET state = ?, state_changed_at = ?, registered_at = ?, "
        "adopted_duplicate = 0, claimed_key = NULL, claimed_at = NULL "
        "WHERE guid = ?",
        (state, to_db_time(now), to_db_time(registered_at), record.guid),
    )


def approve_txn(
    connection: Connection,
    guid: str,
    actor: str,
    now: dt.datetime,
    replace_holders: bool = False,
    claimed_key: str = "",
    seen: Seen = NOTHING_SEEN,
    address: str = "",
) -> ActionResult:
    """Pending → registered, or a claim → the pin; see :meth:`AgentRegistry.approve`.

    Raises:
        NotFound, Conflict: as the API answers them.
    """
    with connection.transaction():
        record = get_txn(connection, guid)
        if record is not None and record.state == REGISTERED and record.claimed_key:
            if record.key_fingerprint:
                raise Conflict(f"agent {guid} is registered, it cannot be approved")
            if claimed_key != record.claimed_key:
                # Anyone may replace a claim: approve only the key the admin saw.
                raise Conflict(
                    f"agent {guid} has a claim for key {record.claimed_key}: "
                    "approve it with that key"
                    + (" (the claim changed)" if claimed_key else "")
                )
            connection.execute(
                "UPDATE agents SET key_fingerprint = claimed_key, claimed_key = NULL, "
                "claimed_at = NULL WHERE guid = ?",
                (guid,),
            )
            entry = _audit(
                connection,
                AuditEntry(
                    now,
                    actor,
                    "approve claim",
                    guid,
                    f"key={record.claimed_key}",
                    address,
                ),
            )
            return ActionResult(_fresh(connection, guid), entries=(entry,))
        record = _require(connection, guid, (PENDING,), "approved")
        holders = hostname_holders_txn(connection, record.hostname, guid)
        _check_seen(guid, record, holders, seen)
        if holders and not replace_holders:
            raise Conflict(
                f"hostname {record.hostname} is already registered to agent "
                f"{', '.join(holders)}; approve with replace to revoke it"
            )
        entries = []
        for holder in holders:
            old = get_txn(connection, holder)
            assert old is not None
            _set_state(connection, old, REVOKED, now)
            entries.append(
                _audit(
                    connection,
                    AuditEntry(
                        now,
                        actor,
                        "revoke",
                        holder,
                        f"replaced by {guid} ({record.hostname})",
                        address,
                    ),
                )
            )
        _set_state(connection, record, REGISTERED, now)
        entries.append(
            _audit(
                connection,
                AuditEntry(
                    now,
                    actor,
                    "approve",
                    guid,
                    f"hostname={record.hostname} key={record.key_fingerprint}",
                    address,
                ),
            )
        )
        return ActionResult(_fresh(connection, guid), tuple(holders), tuple(entries))


def _check_seen(guid: str, record: AgentRecord, holders: list[str], seen: Seen) -> None:
    """Refuse an approval when the agent or its hostname's holders changed."""
    if seen.hostname and seen.hostname.lower() != record.hostname.lower():
        raise Conflict(
            f"agent {guid} now asks for hostname {record.hostname}, not "
            f"{seen.hostname}: look at it again before approving"
        )
    if seen.key and seen.key.lower() != record.key_fingerprint:
        raise Conflict(
            f"agent {guid} now has key {record.key_fingerprint}, not {seen.key}: "
            "look at it again before approving"
        )
    if seen.holders is not None and sorted(seen.holders) != sorted(holders):
        raise Conflict(
            f"hostname {record.hostname} is now registered to "
            f"{', '.join(holders) or 'no agent'}: look again before replacing"
        )


def _fresh(connection: Connection, guid: str) -> AgentRecord:
    record = get_txn(connection, guid)
    assert record is not None
    return record


def _transition(
    verb: str, past: str, allowed: tuple[str, ...], target: str
) -> Callable[..., ActionResult]:
    def action(
        connection: Connection,
        guid: str,
        actor: str,
        now: dt.datetime,
        address: str = "",
    ) -> ActionResult:
        with connection.transaction():
            record = _require(connection, guid, allowed, past)
            _set_state(connection, record, target, now)
            entry = _audit(
                connection,
                AuditEntry(
                    now, actor, verb, guid, f"hostname={record.hostname}", address
                ),
            )
            return ActionResult(_fresh(connection, guid), entries=(entry,))

    action.__name__ = f"{verb}_txn"
    action.__doc__ = f"{'/'.join(allowed)} → {target}, audited."
    return action


deny_txn = _transition("deny", "denied", (PENDING,), DENIED)
revoke_txn = _transition("revoke", "revoked", (REGISTERED,), REVOKED)


def reactivate_txn(
    connection: Connection,
    guid: str,
    actor: str,
    now: dt.datetime,
    address: str = "",
) -> ActionResult:
    """Revoked → registered (same pinned key); denied → pending."""
    with connection.transaction():
        record = _require(connection, guid, (REVOKED, DENIED), "reactivated")
        target = REGISTERED if record.state == REVOKED else PENDING
        if target == REGISTERED:
            clash = hostname_holders_txn(connection, record.hostname, guid)
            if clash:
                raise Conflict(
                    f"hostname {record.hostname} is now registered to agent "
                    f"{', '.join(clash)}"
                )
        _set_state(connection, record, target, now)
        entry = _audit(
            connection,
            AuditEntry(now, actor, "reactivate", guid, f"now {target}", address),
        )
        return ActionResult(_fresh(connection, guid), entries=(entry,))


def delete_txn(
    connection: Connection,
    guid: str,
    actor: str,
    now: dt.datetime,
    address: str = "",
) -> ActionResult:
    """Forget an agent entirely (its next registration starts afresh)."""
    with connection.transaction():
        record = get_txn(connection, guid)
        if record is None:
            raise NotFound(f"agent {guid} not found")
        connection.execute("DELETE FROM agents WHERE guid = ?", (guid,))
        entry = _audit(
            connection,
            AuditEntry(
                now,
                actor,
                "delete",
                guid,
                f"was {record.state}, hostname={record.hostname}",
                address,
            ),
        )
        return ActionResult(record, entries=(entry,))


def purge_pending_txn(connection: Connection, older_than: dt.datetime) -> list[str]:
    """Delete pending agents created before ``older_than``; their GUIDs.

    Compared in Python: Go's and our timestamps do not sort alike as text.
    """
    with connection.transaction():
        rows = connection.execute(
            "SELECT guid, created_at FROM agents WHERE state = ?", (PENDING,)
        )
        stale = [
            guid
            for guid, created in rows
            if (parse_stored_time(created) or older_than) < older_than
        ]
        connection.executemany(
            "DELETE FROM agents WHERE guid = ?", [(g,) for g in stale]
        )
        return stale


# ------------------------------------------------------------ revoked tokens


def revoke_token_txn(
    connection: Connection, token_hash: str, expires: dt.datetime
) -> bool:
    """Remember a token until it would have expired anyway; False if it was."""
    with connection.transaction(agents=False):
        cursor = connection.execute(
            "INSERT INTO revoked_tokens (hash, expires_at) VALUES (?, ?) "
            "ON CONFLICT DO NOTHING",
            (token_hash, to_db_time(expires)),
        )
        return cursor.rowcount == 1


def token_revoked_txn(connection: Connection, token_hash: str) -> bool:
    """Whether a token was logged out."""
    row = connection.execute(
        "SELECT 1 FROM revoked_tokens WHERE hash = ?", (token_hash,)
    ).fetchone()
    return row is not None


def vacuum_tokens_txn(connection: Connection, now: dt.datetime) -> int:
    """Forget revoked tokens that have expired; how many were dropped."""
    with connection.transaction(agents=False):
        cursor = connection.execute(
            "DELETE FROM revoked_tokens WHERE expires_at < ?", (to_db_time(now),)
        )
        return cursor.rowcount


# ------------------------------------------------------------ login failures

Key = tuple[str, str]
_KEY_MATCH = "((kind = ? AND name = ?) OR (kind = ? AND name = ?))"


def login_failures_txn(
    connection: Connection, keys: tuple[Key, Key], since: float
) -> tuple[dict[Key, list[float]], dict[Key, float]]:
    """Failures after ``since`` and locks of two keys, from every director."""
    params = (*keys[0], *keys[1])
    failures: dict[Key, list[float]] = {}
    for kind, name, at in connection.execute(
        f"SELECT kind, name, at FROM login_failures WHERE {_KEY_MATCH} AND at > ?",  # noqa: S608
        (*params, since),
    ):
        failures.setdefault((kind, name), []).append(float(at))
    locks = {
        (kind, name): float(until)
        for kind, name, until in connection.execute(
            f"SELECT kind, name, until FROM login_locks WHERE {_KEY_MATCH}",  # noqa: S608
            params,
        )
    }
    return failures, locks


def add_login_failure_txn(
    connection: Connection, keys: tuple[Key, Key], at: float, locks: Mapping[Key, float]
) -> None:
    """One failure against both keys, and the locks it set."""
    with connection.transaction(agents=False):
        connection.executemany(
            "INSERT INTO login_failures (kind, name, at) VALUES (?, ?, ?)",
            [(*key, at) for key in keys],
        )
        connection.executemany(
            "INSERT INTO login_locks (kind, name, until) VALUES (?, ?, ?) "
            "ON CONFLICT (kind, name) DO UPDATE SET until = excluded.until "
            "WHERE login_locks.until < excluded.until",
            [(*key, until) for key, until in locks.items()],
        )


def clear_login_failures_txn(connection: Connection, key: Key) -> None:
    """Forget one key's failures and lock (a user who logged in)."""
    with connection.transaction(agents=False):
        connection.execute(
            "DELETE FROM login_failures WHERE kind = ? AND name = ?", key
        )
        connection.execute("DELETE FROM login_locks WHERE kind = ? AND name = ?", key)


def vacuum_login_failures_txn(connection: Connection, before: float) -> int:
    """Forget failures and locks that ended before ``before``; how many."""
    with connection.transaction(agents=False):
        dropped = connection.execute(
            "DELETE FROM login_failures WHERE at < ?", (before,)
        ).rowcount
        dropped += connection.execute(
            "DELETE FROM login_locks WHERE until < ?", (before,)
        ).rowcount
        return dropped


# ----------------------------------------------------------- shared reports


@dataclass(frozen=True)
class SharedReport:
    """An agent's report as the director that received it passes it on.

    ``report`` is its JSON text without the sessions, ``sessions`` theirs
    (None: the agent sent no ``sessions`` key; a row of schema 5 has them in
    ``report``).
    """

    guid: str
    hostname: str
    peer: str
    received_at: float
    report: str
    sessions: str | None = None
    origin: str = ""
    change: int = 0


@dataclass(frozen=True)
class SharedGrant:
    """A connection token issued for a session id: where, until when, to whom."""

    session_id: str
    server: str
    expires_at: float
    address: str
    origin: str = ""
    change: int = 0


def put_shared_txn(
    connection: Connection,
    origin: str,
    reports: Sequence[SharedReport],
    grants: Sequence[SharedGrant] = (),
) -> None:
    """Keep each agent's newest report and add grants, numbered in commit order."""
    with connection.transaction(agents=False):
        if reports:
            base = _last(connection, "server_reports", 0) + 1
            connection.executemany(
                "INSERT INTO server_reports (guid, hostname, peer, received_at, "
                "report, sessions, origin, change) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (guid) DO UPDATE SET hostname = excluded.hostname, "
                "peer = excluded.peer, received_at = excluded.received_at, "
                "report = excluded.report, sessions = excluded.sessions, "
                "origin = excluded.origin, change = excluded.change",
                [
                    (
                        r.guid,
                        r.hostname,
                        r.peer,
                        r.received_at,
                        r.report,
                        r.sessions,
                        origin,
                        base + n,
                    )
                    for n, r in enumerate(reports)
                ],
            )
        if grants:
            base = _last(connection, "connection_grants", 0) + 1
            connection.executemany(
                "INSERT INTO connection_grants (change, session_id, server, "
                "expires_at, address, origin) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (n, g.session_id, g.server, g.expires_at, g.address, origin)
                    for n, g in enumerate(grants, base)
                ],
            )


@dataclass(frozen=True)
class Shared:
    """What other directors shared since a director last read, and where it read to."""

    reports: list[SharedReport]
    grants: list[SharedGrant]
    reports_to: int
    grants_to: int


def shared_since_txn(
    connection: Connection, reports_after: int, grants_after: int, origin: str = ""
) -> Shared:
    """Reports and grants numbered after the last ones read, in order.

    Rows written by ``origin`` (the reader itself) are skipped in the query,
    not read back; the numbers read to are taken first, and every row up to
    them had committed (writers take turns and number in order).
    """
    reports_to = _last(connection, "server_reports", reports_after)
    grants_to = _last(connection, "connection_grants", grants_after)
    rows = connection.execute(
        "SELECT guid, hostname, peer, received_at, report, sessions, origin, "
        "change FROM server_reports WHERE change > ? AND change <= ? "
        "AND origin <> ? ORDER BY change",
        (reports_after, reports_to, origin),
    )
    reports = [
        SharedReport(guid, host, peer, float(at), report, sessions, sender, int(change))
        for guid, host, peer, at, report, sessions, sender, change in rows
    ]
    grants = [
        SharedGrant(session, server, float(expires), address, sender, int(change))
        for change, session, server, expires, address, sender in connection.execute(
            "SELECT change, session_id, server, expires_at, address, origin "
            "FROM connection_grants WHERE change > ? AND change <= ? "
            "AND origin <> ? ORDER BY change",
            (grants_after, grants_to, origin),
        )
    ]
    return Shared(reports, grants, reports_to, grants_to)


def _last(connection: Connection, table: str, after: int) -> int:
    row = connection.execute(f"SELECT max(change) FROM {table}").fetchone()  # noqa: S608
    return max(after, int(row[0] or 0))


def vacuum_grants_txn(connection: Connection, now: float) -> int:
    """Forget grants whose token expired; how many."""
    with connection.transaction(agents=False):
        return connection.execute(
            "DELETE FROM connection_grants WHERE expires_at < ?", (now,)
        ).rowcount


def forget_report_txn(connection: Connection, guid: str) -> None:
    """Drop a deleted agent's report."""
    with connection.transaction(agents=False):
        connection.execute("DELETE FROM server_reports WHERE guid = ?", (guid,))


# ------------------------------------------------------------------ identity


def identity_txn(connection: Connection) -> dict[str, str]:
    """What the store records of its directors' shared identity, by name."""
    return dict(connection.execute("SELECT name, value FROM identity"))


def record_identity_txn(connection: Connection, values: Mapping[str, str]) -> None:
    """Record names not recorded yet; a recorded value is never replaced."""
    with connection.transaction(agents=False):
        connection.executemany(
            "INSERT INTO identity (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING",
            list(values.items()),
        )


# ------------------------------------------------------------------ registry


class SqlRegistry:
    """:class:`~dcvix.director.registry.AgentRegistry` on an :class:`~.engine.Engine`.

    Args:
        engine: the database (:class:`~.sqlite.SqliteEngine` or
            :class:`~.postgres.PostgresEngine`), owned: :meth:`close` closes it.
        runner: where the engine's calls run (:func:`~.engine.pool_runner`, or
            :func:`~.engine.inline_runner`).
    """

    def __init__(self, engine: Engine, runner: Runner) -> None:
        self.engine = engine
        self._run = runner
        # The view behind :meth:`current`: records read at ``_view_version``.
        self._view: dict[str, AgentRecord] = {}
        self._view_version = -1
        # The states behind :meth:`states`, read at ``_states_version``.
        self._states: dict[str, str] = {}
        self._states_version = -1

    def close(self) -> None:
        """Close the engine's connections (after the pool stopped)."""
        self.engine.close()

    def _call(self, function: Callable[..., R], *args: Any) -> Deferred[R]:
        return self._run(self.engine.call, function, *args)

    async def get(self, guid: str) -> AgentRecord | None:  # noqa: D102
        return await self._call(get_txn, guid)

    async def current(self, guid: str) -> AgentRecord | None:
        """As :meth:`get`, from memory until any commit to the store.

        The whole view is dropped when the engine's version moved; a record
        read is kept only if nothing was committed while it was read.
        """
        version = self.engine.version()
        if version != self._view_version:
            self._view.clear()
            self._view_version = version
        found = self._view.get(guid)
        if found is not None:
            return found
        record = await self.get(guid)
        if record is not None and self.engine.version() == version:
            if len(self._view) >= VIEW_LIMIT:
                self._view.clear()
            self._view[guid] = record
        return record

    async def list(self, state: str | None = None) -> builtins.list[AgentRecord]:  # noqa: D102
        return await self._call(list_txn, state)

    async def states(self) -> Mapping[str, str]:  # noqa: D102
        version = self.engine.version()
        if version == self._states_version:
            return self._states
        # Kept under the version seen before the read: a commit landing
        # meanwhile moves it, and the next call reads again.
        self._states = await self._call(states_txn)
        self._states_version = version
        return self._states

    async def count(self, state: str) -> int:  # noqa: D102
        return await self._call(count_txn, state)

    async def hostname_holders(self, hostname: str) -> builtins.list[str]:  # noqa: D102
        return await self._call(hostname_holders_txn, hostname)

    async def create_pending(  # noqa: D102
        self, guid: str, hostname: str, key: str, address: str, now: dt.datetime
    ) -> bool:
        return await self._call(create_pending_txn, guid, hostname, key, address, now)

    async def create_registered(  # noqa: D102
        self,
        guid: str,
        hostname: str,
        key: str,
        address: str,
        now: dt.datetime,
        actor: str,
    ) -> bool:
        return await self._call(
            create_registered_txn,
            guid,
            hostname,
            key,
            address,
            now,
            actor,
        )

    async def to_pending(  # noqa: D102
        self,
        guid: str,
        hostname: str,
        key: str,
        address: str,
        now: dt.datetime,
        seen: AgentRecord | None = None,
    ) -> bool:
        return await self._call(to_pending_txn, guid, hostname, key, address, now, seen)

    async def claim(  # noqa: D102
        self, guid: str, key: str, address: str, now: dt.datetime
    ) -> str | None:
        return await self._call(claim_txn, guid, key, address, now)

    async def record_issue(  # noqa: D102
        self,
        guid: str,
        serial: int,
        expires: dt.datetime,
        address: str,
        now: dt.datetime,
    ) -> bool:
        return await self._call(record_issue_txn, guid, serial, expires, address, now)

    async def pin(self, guid: str, key: str, now: dt.datetime) -> Pinning:  # noqa: D102
        return await self._call(pin_txn, guid, key, now)

    async def approve(  # noqa: D102
        self,
        guid: str,
        actor: str,
        now: dt.datetime,
        replace: bool = False,
        claimed_key: str = "",
        seen: Seen = NOTHING_SEEN,
        address: str = "",
    ) -> ActionResult:
        return await self._call(
            approve_txn,
            guid,
            actor,
            now,
            replace,
            claimed_key,
            seen,
            address,
        )

    async def deny(  # noqa: D102
        self, guid: str, actor: str, now: dt.datetime, address: str = ""
    ) -> ActionResult:
        return await self._call(deny_txn, guid, actor, now, address)

    async def revoke(  # noqa: D102
        self, guid: str, actor: str, now: dt.datetime, address: str = ""
    ) -> ActionResult:
        return await self._call(revoke_txn, guid, actor, now, address)

    async def reactivate(  # noqa: D102
        self, guid: str, actor: str, now: dt.datetime, address: str = ""
    ) -> ActionResult:
        return await self._call(reactivate_txn, guid, actor, now, address)

    async def delete(  # noqa: D102
        self, guid: str, actor: str, now: dt.datetime, address: str = ""
    ) -> ActionResult:
        return await self._call(delete_txn, guid, actor, now, address)

    async def purge_pending(self, older_than: dt.datetime) -> builtins.list[str]:  # noqa: D102
        return await self._call(purge_pending_txn, older_than)

    async def append(self, entry: AuditEntry) -> None:  # noqa: D102
        await self._call(audit_txn, entry)

    async def latest(self, limit: int = 100) -> builtins.list[AuditEntry]:  # noqa: D102
        return await self._call(audit_list_txn, limit)

    async def audit_query(self, query: AuditQuery) -> builtins.list[StoredAudit]:  # noqa: D102
        return await self._call(audit_query_txn, query)

    async def vacuum_audit(self, before: dt.datetime) -> int:  # noqa: D102
        dropped = 0
        while True:
            done = await self._call(vacuum_audit_txn, before, AUDIT_VACUUM_BATCH)
            dropped += done
            if done < AUDIT_VACUUM_BATCH:
                return dropped

    async def revoke_token(self, token_hash: str, expires: dt.datetime) -> bool:  # noqa: D102
        return await self._call(revoke_token_txn, token_hash, expires)

    async def token_revoked(self, token_hash: str) -> bool:  # noqa: D102
        return await self._call(token_revoked_txn, token_hash)

    async def vacuum_tokens(self, now: dt.datetime) -> int:  # noqa: D102
        return await self._call(vacuum_tokens_txn, now)

    async def login_failures(  # noqa: D102
        self, keys: tuple[Key, Key], since: float
    ) -> tuple[dict[Key, builtins.list[float]], dict[Key, float]]:
        return await self._call(login_failures_txn, keys, since)

    async def add_login_failure(  # noqa: D102
        self, keys: tuple[Key, Key], at: float, locks: Mapping[Key, float]
    ) -> None:
        await self._call(add_login_failure_txn, keys, at, locks)

    async def clear_login_failures(self, key: Key) -> None:  # noqa: D102
        await self._call(clear_login_failures_txn, key)

    async def vacuum_login_failures(self, before: float) -> int:  # noqa: D102
        return await self._call(vacuum_login_failures_txn, before)
