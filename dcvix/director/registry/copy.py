"""``dcvixctl store copy``: a store's rows into another, whatever the engines.

For moving a director from ``agents.db`` to PostgreSQL (or back). Agents,
revoked tokens and the audit trail are copied in one transaction of the
target, so a copy that fails leaves the target as it was, and running it again
copies only what is missing:

- an agent whose GUID the target has is left as the target has it;
- an agent whose registered hostname another agent of the target holds is not
  copied (the target's unique constraint), and is reported by GUID;
- an audit line is copied unless the target has one with the same time,
  actor, action, target and detail.

Times are read as :func:`~dcvix.common.gotime.parse_stored_time` reads them
(Go's text included) and written in the one format both engines share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dcvix.common.gotime import parse_stored_time
from dcvix.director.registry import REGISTERED
from dcvix.director.registry.engine import AUDIT_FIELDS, Connection, Engine, to_db_time

AGENT_COLUMNS = (
    "guid",
    "hostname",
    "state",
    "created_at",
    "registered_at",
    "last_seen_at",
    "cert_serial",
    "tags",
    "key_fingerprint",
    "cert_expires_at",
    "address",
    "state_changed_at",
    "claimed_key",
    "claimed_at",
    "adopted_duplicate",
)
_AGENT_TIMES = frozenset(
    {
        "created_at",
        "registered_at",
        "last_seen_at",
        "cert_expires_at",
        "state_changed_at",
        "claimed_at",
    }
)
# Built from the constant column names above, never from input.
_SELECT_AGENTS = f"SELECT {', '.join(AGENT_COLUMNS)} FROM agents"  # noqa: S608
_INSERT_AGENT = (
    f"INSERT INTO agents ({', '.join(AGENT_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' for _ in AGENT_COLUMNS)})"
)
_AUDIT = ", ".join(AUDIT_FIELDS)
_SELECT_AUDIT = f"SELECT {_AUDIT} FROM audit"  # noqa: S608 - fixed


@dataclass
class CopyReport:
    """What a copy did, for the operator."""

    agents: int = 0
    agents_present: int = 0
    hostname_taken: list[str] = field(default_factory=list)
    tokens: int = 0
    tokens_present: int = 0
    audit: int = 0
    audit_present: int = 0

    def lines(self) -> list[str]:
        """One line per kind of row."""
        lines = [
            f"agents: {self.agents} copied, {self.agents_present} already there",
            f"revoked tokens: {self.tokens} copied, {self.tokens_present} already "
            "there",
            f"audit lines: {self.audit} copied, {self.audit_present} already there",
        ]
        if self.hostname_taken:
            lines.append(
                "not copied, their hostname is registered to another agent there: "
                + ", ".join(self.hostname_taken)
            )
        return lines


@dataclass(frozen=True)
class _Rows:
    agents: list[dict[str, Any]]
    tokens: list[tuple[str, str | None]]
    audit: list[tuple[Any, ...]]


def _time(value: Any) -> str | None:
    return to_db_time(parse_stored_time(value))


def read_rows_txn(connection: Connection) -> _Rows:
    """Everything a copy takes, times in the shared format."""
    agents = []
    for row in connection.execute(_SELECT_AGENTS):
        record = dict(zip(AGENT_COLUMNS, row, strict=True))
        for column in _AGENT_TIMES:
            record[column] = _time(record[column])
        agents.append(record)
    tokens = [
        (hash_, _time(expires))
        for hash_, expires in connection.execute(
            "SELECT hash, expires_at FROM revoked_tokens"
        )
    ]
    audit = [
        (_time(row[0]), *row[1:])
        for row in connection.execute(f"{_SELECT_AUDIT} ORDER BY id")
    ]
    return _Rows(agents, tokens, audit)


def write_rows_txn(connection: Connection, rows: _Rows) -> CopyReport:
    """Insert what the target lacks, in one transaction; what was done."""
    report = CopyReport()
    with connection.transaction():
        _agents(connection, rows.agents, report)
        for hash_, expires in rows.tokens:
            cursor = connection.execute(
                "INSERT INTO revoked_tokens (hash, expires_at) VALUES (?, ?) "
                "ON CONFLICT DO NOTHING",
                (hash_, expires),
            )
            report.tokens += cursor.rowcount
        report.tokens_present = len(rows.tokens) - report.tokens
        have = {(_time(row[0]), *row[1:]) for row in connection.execute(_SELECT_AUDIT)}
        for line in rows.audit:
            if line in have:
                report.audit_present += 1
                continue
            connection.execute(
                f"INSERT INTO audit ({_AUDIT}) "  # noqa: S608 - fixed
                f"VALUES ({', '.join('?' for _ in AUDIT_FIELDS)})",
                line,
            )
            have.add(line)
            report.audit += 1
    return report


def _agents(
    connection: Connection, agents: list[dict[str, Any]], report: CopyReport
) -> None:
    present = {row[0] for row in connection.execute("SELECT guid FROM agents")}
    holders = {
        row[0].lower(): row[1]
        for row in connection.execute(
            "SELECT hostname, guid FROM agents WHERE state = ? "
            "AND adopted_duplicate = 0 AND hostname IS NOT NULL",
            (REGISTERED,),
        )
    }
    for agent in agents:
        if agent["guid"] in present:
            report.agents_present += 1
            continue
        name = (agent["hostname"] or "").lower()
        unique = agent["state"] == REGISTERED and not agent["adopted_duplicate"]
        if unique and name in holders:
            report.hostname_taken.append(agent["guid"])
            continue
        connection.execute(
            _INSERT_AGENT, tuple(agent[column] for column in AGENT_COLUMNS)
        )
        present.add(agent["guid"])
        if unique:
            holders[name] = agent["guid"]
        report.agents += 1


def copy_store(source: Engine, target: Engine) -> CopyReport:
    """Copy ``source``'s rows into ``target`` (see the module).

    Raises:
        StoreError: either store failed; the target is unchanged.
    """
    return target.call(write_rows_txn, source.call(read_rows_txn))
