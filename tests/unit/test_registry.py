"""The registry on both engines: statements, claims, actions, runners; SQLite's
schema, migrations and Go adoption.

Tests taking ``db`` or ``registry`` run once on SQLite and once on PostgreSQL
(a throwaway cluster, see tests/postgres.py).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_twisted
from postgres import Postgres, PostgresStore, postgres_fixture  # noqa: F401
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorFromThreads

from dcvix.common.errors import Conflict, NotFound
from dcvix.common.gotime import parse_stored_time
from dcvix.common.threads import ThreadPoolService
from dcvix.director.registry import (
    AgentRecord,
    AuditEntry,
    AuditQuery,
    Pinning,
    StoreError,
    StoreFull,
    UniqueViolation,
)
from dcvix.director.registry import sql as engine
from dcvix.director.registry.engine import (
    Connection,
    Runner,
    inline_runner,
    pool_runner,
    to_db_time,
)
from dcvix.director.registry.postgres import PostgresConnection, PostgresEngine
from dcvix.director.registry.sql import SqlRegistry
from dcvix.director.registry.sqlite import SqliteRegistry
from dcvix.director.registry.sqlite_schema import (
    SCHEMA_VERSION,
    SqliteConnection,
    connect,
)

UTC = dt.UTC
NOW = dt.datetime(2025, 3, 2, 8, 0, 0, tzinfo=UTC)
LATER = NOW + dt.timedelta(minutes=5)
A = "11111111-1111-4111-8111-111111111111"
B = "22222222-2222-4222-8222-222222222222"
C = "33333333-3333-4333-8333-333333333333"
D = "44444444-4444-4444-8444-444444444444"
E = "55555555-5555-4555-8555-555555555555"
F = "66666666-6666-4666-8666-666666666666"
G = "77777777-7777-4777-8777-777777777777"
H = "88888888-8888-4888-8888-888888888888"
KEY_A = "aa" * 32
KEY_B = "bb" * 32
KEY_C = "cc" * 32
SETUP = "test:setup"

GO_TABLE = (
    "CREATE TABLE agents (guid TEXT PRIMARY KEY, hostname TEXT, "
    "state TEXT NOT NULL DEFAULT 'pending', created_at DATETIME, "
    "registered_at DATETIME, last_seen_at DATETIME, cert_serial TEXT, tags TEXT)"
)
GO_COLUMNS = [
    "guid",
    "hostname",
    "state",
    "created_at",
    "registered_at",
    "last_seen_at",
    "cert_serial",
    "tags",
]
OUR_COLUMNS = [
    "key_fingerprint",
    "cert_expires_at",
    "address",
    "state_changed_at",
    "claimed_key",
    "claimed_at",
    "adopted_duplicate",
]


def columns(connection: SqliteConnection | sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]


def user_version(connection: SqliteConnection | sqlite3.Connection) -> int:
    return int(connection.execute("PRAGMA user_version").fetchone()[0])


def audit(connection: Connection) -> list[tuple[str, str, str, str]]:
    """The audit lines, oldest first, without their time."""
    return [
        (entry.actor, entry.action, entry.target, entry.detail)
        for entry in reversed(engine.audit_list_txn(connection))
    ]


def state_of(connection: Connection, guid: str) -> str | None:
    record = engine.get_txn(connection, guid)
    return None if record is None else record.state


def get(connection: Connection, guid: str) -> AgentRecord:
    record = engine.get_txn(connection, guid)
    assert record is not None
    return record


def flags(connection: Connection) -> dict[str, int]:
    """``adopted_duplicate`` of every row, by GUID."""
    rows = connection.execute("SELECT guid, adopted_duplicate FROM agents")
    return dict(rows)


@pytest.fixture(scope="module")
def pg_store(postgres: Postgres) -> PostgresStore:
    return PostgresStore(postgres)


@dataclass(frozen=True)
class Store:
    """One engine's store under test, empty: its connections and registries."""

    engine: str
    connection: Callable[[], Connection]
    registry: Callable[[Runner], SqlRegistry]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        path = tmp_path / "agents.db"
        return Store(
            "sqlite", lambda: connect(path), lambda run: SqliteRegistry(path, run)
        )
    pg: PostgresStore = request.getfixturevalue("pg_store")
    pg.empty()
    return Store(
        "postgresql",
        pg.connection,
        lambda run: SqlRegistry(pg.engine(), run),
    )


@pytest.fixture
def db(store: Store) -> Iterator[Connection]:
    """A connection to an empty store, of each engine."""
    connection = store.connection()
    yield connection
    connection.close()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[SqliteConnection]:
    connection = connect(tmp_path / "agents.db")
    yield connection
    connection.close()


def in_transaction(connection: Connection) -> bool:
    if isinstance(connection, SqliteConnection):
        return connection.raw.in_transaction
    assert isinstance(connection, PostgresConnection)
    status = connection.raw.info.transaction_status
    return status != psycopg.pq.TransactionStatus.IDLE


def pending(connection: Connection, guid: str, hostname: str, key: str = KEY_A) -> None:
    assert engine.create_pending_txn(connection, guid, hostname, key, "10.0.0.9", NOW)


def registered(
    connection: Connection, guid: str, hostname: str, key: str = KEY_A
) -> None:
    assert engine.create_registered_txn(
        connection, guid, hostname, key, "10.0.0.9", NOW, SETUP
    )


def adopted(connection: Connection, guid: str, hostname: str, claim: str = "") -> None:
    """A registered Go row without a pinned key (optionally with a claim)."""
    connection.execute(
        "INSERT INTO agents (guid, hostname, state, claimed_key, claimed_at) "
        "VALUES (?, ?, 'registered', ?, ?)",
        (guid, hostname, claim or None, to_db_time(NOW) if claim else None),
    )


def go_db(path: Path, rows: list[tuple[Any, ...]]) -> None:
    """A Go ``agents.db`` holding ``rows`` (inserted in this order)."""
    connection = sqlite3.connect(path)
    connection.execute(GO_TABLE)
    connection.executemany("INSERT INTO agents VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    connection.commit()
    connection.close()


# --------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-01 10:20:30+00:00", dt.datetime(2025, 3, 1, 10, 20, 30, tzinfo=UTC)),
        (
            "2025-03-01 10:20:30.1+00:00",
            dt.datetime(2025, 3, 1, 10, 20, 30, 100000, tzinfo=UTC),
        ),
        (
            "2025-03-01 10:20:30.123456+00:00",
            dt.datetime(2025, 3, 1, 10, 20, 30, 123456, tzinfo=UTC),
        ),
        (
            "2025-03-01 10:20:30.123456789+01:00",
            dt.datetime(2025, 3, 1, 9, 20, 30, 123456, tzinfo=UTC),
        ),
        (
            "2025-03-01 10:20:30.999999999-05:30",
            dt.datetime(2025, 3, 1, 15, 50, 30, 999999, tzinfo=UTC),
        ),
        ("2025-03-01 10:20:30Z", dt.datetime(2025, 3, 1, 10, 20, 30, tzinfo=UTC)),
        (
            "2025-03-01T10:20:30.5Z",
            dt.datetime(2025, 3, 1, 10, 20, 30, 500000, tzinfo=UTC),
        ),
        ("2025-03-01 10:20:30+0100", dt.datetime(2025, 3, 1, 9, 20, 30, tzinfo=UTC)),
        ("2025-03-01T10:20:30-0200", dt.datetime(2025, 3, 1, 12, 20, 30, tzinfo=UTC)),
        ("2025-03-01 10:20:30", dt.datetime(2025, 3, 1, 10, 20, 30, tzinfo=UTC)),
        (
            # Go's time.String(), with its zone name and monotonic reading
            "2025-03-01 10:20:30.25 +0100 CET m=+0.000000001",
            dt.datetime(2025, 3, 1, 9, 20, 30, 250000, tzinfo=UTC),
        ),
        # Go's zero time, in both of its spellings
        ("0001-01-01 00:00:00+00:00", None),
        ("0001-01-01 00:00:00Z", None),
        # junk
        ("", None),
        (None, None),
        ("yesterday", None),
        ("2025-03-01", None),
        ("2025-13-01 10:20:30+00:00", None),
        ("2025-02-30 10:20:30+00:00", None),
        ("2025-03-01 10:20:30+25:00", None),
        ("9999-12-31 23:59:59-01:00", None),
    ],
)
def test_parse_stored_time(text: str | None, expected: dt.datetime | None) -> None:
    parsed = parse_stored_time(text)

    assert parsed == expected
    if parsed is not None:
        assert parsed.utcoffset() == dt.timedelta(0)


def test_to_db_time_round_trips() -> None:
    moment = dt.datetime(
        2025, 3, 1, 10, 20, 30, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2))
    )

    text = to_db_time(moment)

    assert text == "2025-03-01 08:20:30.123456+00:00"
    assert parse_stored_time(text) == moment
    assert to_db_time(None) is None


# -------------------------------------------------------------------- schema


def test_connect_creates_the_tables_0600(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"

    connection = connect(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert columns(connection, "agents") == GO_COLUMNS + OUR_COLUMNS
    assert columns(connection, "audit") == [
        "id",
        "time",
        "actor",
        "action",
        "target",
        "detail",
        "address",
        "outcome",
    ]
    assert columns(connection, "revoked_tokens") == ["hash", "expires_at"]
    assert columns(connection, "identity") == ["name", "value"]
    assert columns(connection, "login_failures") == ["kind", "name", "at"]
    assert columns(connection, "login_locks") == ["kind", "name", "until"]
    assert columns(connection, "connection_grants") == [
        "change",
        "session_id",
        "server",
        "expires_at",
        "address",
        "origin",
    ]
    assert columns(connection, "server_reports") == [
        "guid",
        "hostname",
        "peer",
        "received_at",
        "report",
        "origin",
        "change",
        "sessions",
    ]
    indexes = connection.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'agents' "
        "AND sql IS NOT NULL ORDER BY name"
    )
    assert [row[0] for row in indexes] == [
        "agents_hostname",
        "agents_registered_hostname",
        "agents_state",
    ]
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert SCHEMA_VERSION == 7
    assert user_version(connection) == SCHEMA_VERSION
    connection.close()


def test_connect_reads_an_empty_file(tmp_path: Path) -> None:
    # What a fresh install leaves before the registry is first opened.
    path = tmp_path / "agents.db"
    path.write_bytes(b"")

    connection = connect(path)

    assert engine.list_txn(connection) == []
    assert columns(connection, "agents") == GO_COLUMNS + OUR_COLUMNS
    assert user_version(connection) == SCHEMA_VERSION
    connection.close()


def test_connect_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 99")
    raw.close()

    with pytest.raises(StoreError) as raised:
        connect(path)

    assert str(raised.value) == (
        f"{path}: schema version 99 is newer than this dcvix "
        f"({SCHEMA_VERSION}): upgrade dcvix"
    )
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT name FROM sqlite_master").fetchall() == []
    assert user_version(raw) == 99
    raw.close()


def test_connect_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    path.write_bytes(b"this is not a database" * 100)

    with pytest.raises(StoreError) as raised:
        connect(path)

    assert str(raised.value) == f"{path}: file is not a database"
    assert path.read_bytes() == b"this is not a database" * 100


def test_connect_refuses_a_folder(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as raised:
        connect(tmp_path)

    assert str(raised.value) == f"{tmp_path}: unable to open database file"


def make_go_db(path: Path) -> None:
    go_db(
        path,
        [
            (
                A,
                "ws1",
                "registered",
                "2025-03-01 10:20:30.123456789+01:00",
                "2025-03-01 10:20:30+00:00",
                "2025-03-02 07:00:00.5+00:00",
                "",
                None,
            ),
            (B, "ws1", "registered", "2025-03-01 11:00:00+01:00", None, None, "", ""),
            (C, "ws2", "pending", "2025-02-20 09:00:00.000000001+01:00", *[None] * 4),
            (D, "ws3", "revoked", "2025-01-01 00:00:00+00:00", *[None] * 4),
        ],
    )


def test_go_agents_db_is_read_and_extended_in_place(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    make_go_db(path)

    connection = connect(path)

    assert columns(connection, "agents") == GO_COLUMNS + OUR_COLUMNS
    record = engine.get_txn(connection, A)
    assert record == AgentRecord(
        guid=A,
        hostname="ws1",
        state="registered",
        created_at=dt.datetime(2025, 3, 1, 9, 20, 30, 123456, tzinfo=UTC),
        registered_at=dt.datetime(2025, 3, 1, 10, 20, 30, tzinfo=UTC),
        last_seen_at=dt.datetime(2025, 3, 2, 7, 0, 0, 500000, tzinfo=UTC),
        cert_serial="",
        cert_expires_at=None,
        key_fingerprint="",
        address="",
        state_changed_at=None,
        claimed_key="",
        claimed_at=None,
        duplicate_hostname=True,
    )
    assert record.pinned is False
    assert [r.guid for r in engine.list_txn(connection)] == [D, C, A, B]
    assert [r.guid for r in engine.list_txn(connection, "pending")] == [C]
    assert engine.count_txn(connection, "registered") == 2
    assert user_version(connection) == SCHEMA_VERSION
    connection.close()

    # The file itself holds the new columns; the Go rows are still there.
    raw = sqlite3.connect(path)
    assert "claimed_key" in columns(raw, "agents")
    assert raw.execute("SELECT COUNT(*) FROM agents").fetchone()[0] == 4
    raw.close()


def test_go_duplicate_hostnames_are_kept_and_flagged(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    make_go_db(path)

    connection = connect(path)

    assert {
        r.guid: (r.state, r.duplicate_hostname) for r in engine.list_txn(connection)
    } == {
        A: ("registered", True),
        B: ("registered", True),
        C: ("pending", False),
        D: ("revoked", False),
    }
    connection.close()


@pytest.mark.parametrize(
    ("rows", "adopted_flags"),
    [
        # The first inserted of each name keeps the name; the others are flagged.
        ([(B, "ws1"), (A, "WS1")], {B: 0, A: 1, D: 0}),
        ([(C, "Ws1"), (A, "ws1"), (B, "WS1")], {C: 0, A: 1, B: 1, D: 0}),
    ],
    ids=["two", "three"],
)
def test_go_registered_duplicates_are_adopted_not_refused(
    tmp_path: Path, rows: list[tuple[str, str]], adopted_flags: dict[str, int]
) -> None:
    path = tmp_path / "agents.db"
    go_db(
        path,
        [(guid, name, "registered", None, None, None, "", None) for guid, name in rows]
        + [(D, "ws2", "registered", None, None, None, "", None)],
    )
    holders = [A, B] if len(rows) == 2 else [A, B, C]

    connection = connect(path)

    assert user_version(connection) == SCHEMA_VERSION
    assert {
        r.guid: (r.state, r.duplicate_hostname) for r in engine.list_txn(connection)
    } == dict.fromkeys(holders, ("registered", True)) | {D: ("registered", False)}
    assert flags(connection) == adopted_flags
    assert engine.hostname_holders_txn(connection, "wS1") == holders

    # A new agent for that hostname waits for an admin who chooses to replace.
    pending(connection, E, "ws1", KEY_B)
    assert get(connection, E).duplicate_hostname is True
    with pytest.raises(Conflict) as raised:
        engine.approve_txn(connection, E, "os:alice", LATER)
    assert raised.value.message == (
        f"hostname ws1 is already registered to agent {', '.join(holders)}; "
        "approve with replace to revoke it"
    )
    assert state_of(connection, E) == "pending"

    result = engine.approve_txn(connection, E, "os:alice", LATER, replace_holders=True)

    assert result.replaced == tuple(holders)
    assert {r.guid: r.state for r in engine.list_txn(connection)} == dict.fromkeys(
        holders, "revoked"
    ) | {D: "registered", E: "registered"}
    assert flags(connection) == dict.fromkeys([*holders, D, E], 0)
    assert get(connection, E).duplicate_hostname is False
    assert audit(connection) == [
        ("os:alice", "revoke", guid, f"replaced by {E} (ws1)") for guid in holders
    ] + [("os:alice", "approve", E, f"hostname=ws1 key={KEY_B}")]
    connection.close()


def test_migration_from_version_1(tmp_path: Path) -> None:
    # What the previous dcvix left: Go's table with four more columns, audit,
    # revoked tokens, user_version 1 (an adopted Go duplicate included).
    path = tmp_path / "agents.db"
    raw = sqlite3.connect(path)
    raw.execute(GO_TABLE)
    for column, kind in (
        ("key_fingerprint", "TEXT"),
        ("cert_expires_at", "DATETIME"),
        ("address", "TEXT"),
        ("state_changed_at", "DATETIME"),
    ):
        raw.execute(f"ALTER TABLE agents ADD COLUMN {column} {kind}")
    raw.execute(
        "CREATE TABLE audit (id INTEGER PRIMARY KEY, time DATETIME NOT NULL, "
        "actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, "
        "detail TEXT NOT NULL DEFAULT '')"
    )
    raw.execute(
        "CREATE TABLE revoked_tokens (hash TEXT PRIMARY KEY, "
        "expires_at DATETIME NOT NULL)"
    )
    raw.executemany(
        "INSERT INTO agents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                A,
                "ws1",
                "registered",
                "2025-03-01 08:00:00.000000+00:00",
                "2025-03-01 09:00:00.000000+00:00",
                "2025-03-02 07:00:00.000000+00:00",
                "abc123",
                "",
                KEY_A,
                "2025-03-15 09:00:00.000000+00:00",
                "10.0.0.1",
                "2025-03-01 09:00:00.000000+00:00",
            ),
            (
                B,
                "ws2",
                "pending",
                "2025-03-01 10:00:00+00:00",
                None,
                None,
                None,
                None,
                KEY_B,
                None,
                "10.0.0.2",
                None,
            ),
            (C, "WS1", "registered", None, None, None, "", None, None, None, "", None),
        ],
    )
    raw.execute(
        "INSERT INTO audit (time, actor, action, target, detail) VALUES "
        "('2025-03-01 09:00:00.000000+00:00', 'os:alice', 'approve', ?, "
        "'hostname=ws1')",
        (A,),
    )
    raw.execute(
        "INSERT INTO revoked_tokens VALUES ('f00d', '2025-04-01 00:00:00.000000+00:00')"
    )
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()

    connection = connect(path)

    assert user_version(connection) == SCHEMA_VERSION
    assert columns(connection, "agents") == GO_COLUMNS + OUR_COLUMNS
    assert engine.get_txn(connection, A) == AgentRecord(
        guid=A,
        hostname="ws1",
        state="registered",
        created_at=dt.datetime(2025, 3, 1, 8, 0, tzinfo=UTC),
        registered_at=dt.datetime(2025, 3, 1, 9, 0, tzinfo=UTC),
        last_seen_at=dt.datetime(2025, 3, 2, 7, 0, tzinfo=UTC),
        cert_serial="abc123",
        cert_expires_at=dt.datetime(2025, 3, 15, 9, 0, tzinfo=UTC),
        key_fingerprint=KEY_A,
        address="10.0.0.1",
        state_changed_at=dt.datetime(2025, 3, 1, 9, 0, tzinfo=UTC),
        claimed_key="",
        claimed_at=None,
        duplicate_hostname=True,
    )
    b = get(connection, B)
    assert (b.state, b.hostname, b.key_fingerprint, b.address) == (
        "pending",
        "ws2",
        KEY_B,
        "10.0.0.2",
    )
    assert (get(connection, C).state, get(connection, C).duplicate_hostname) == (
        "registered",
        True,
    )
    assert flags(connection) == {A: 0, B: 0, C: 1}
    assert engine.audit_list_txn(connection) == [
        AuditEntry(
            dt.datetime(2025, 3, 1, 9, 0, tzinfo=UTC),
            "os:alice",
            "approve",
            A,
            "hostname=ws1",
        )
    ]
    assert engine.token_revoked_txn(connection, "f00d") is True
    connection.close()


def test_connect_twice_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    first = connect(path)
    registered(first, A, "ws1")
    first.close()

    second = connect(path)

    record = get(second, A)
    assert (record.state, record.key_fingerprint, record.created_at) == (
        "registered",
        KEY_A,
        NOW,
    )
    assert user_version(second) == SCHEMA_VERSION
    second.close()


def test_duplicate_hostname_rules(db: Connection) -> None:
    # Registered: another registered agent has the name (any case).
    registered(db, A, "WS1.example.org")
    db.execute(
        "INSERT INTO agents (guid, hostname, state, adopted_duplicate) "
        "VALUES (?, 'ws1.example.org', 'registered', 1)",
        (B,),
    )
    # Pending: another pending or registered agent has it.
    pending(db, C, "ws2")
    pending(db, E, "WS2")
    registered(db, D, "ws3")
    pending(db, F, "Ws3")
    pending(db, G, "ws9")
    # Revoked and denied agents never count, nor are they flagged.
    db.execute(
        "INSERT INTO agents (guid, hostname, state) VALUES "
        "(?, 'ws1.example.org', 'revoked'), (?, 'ws3', 'denied')",
        (H, "99999999-9999-4999-8999-999999999999"),
    )

    assert {r.guid: r.duplicate_hostname for r in engine.list_txn(db)} == {
        A: True,
        B: True,
        C: True,
        E: True,
        D: False,
        F: True,
        G: False,
        H: False,
        "99999999-9999-4999-8999-999999999999": False,
    }


def test_hostname_holders(db: Connection) -> None:
    registered(db, B, "WS1")
    db.execute(
        "INSERT INTO agents (guid, hostname, state, adopted_duplicate) "
        "VALUES (?, 'ws1', 'registered', 1)",
        (A,),
    )
    pending(db, C, "ws1")
    db.execute(
        "INSERT INTO agents (guid, hostname, state) VALUES (?, 'ws1', 'revoked')",
        (E,),
    )
    registered(db, D, "ws2")

    assert engine.hostname_holders_txn(db, "ws1") == [A, B]
    assert engine.hostname_holders_txn(db, "Ws1", B) == [A]
    assert engine.hostname_holders_txn(db, "ws3") == []


def test_hostname_holders_uses_an_index(sqlite_db: SqliteConnection) -> None:
    db = sqlite_db
    statements: list[str] = []
    db.raw.set_trace_callback(statements.append)
    engine.hostname_holders_txn(db, "ws1", A)
    db.raw.set_trace_callback(None)
    [query] = [s for s in statements if s.lstrip().upper().startswith("SELECT")]

    plan = " | ".join(row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {query}"))

    assert "USING INDEX" in plan
    assert "SCAN agents" not in plan


# ------------------------------------------------------- hostname uniqueness


def test_the_unique_index_refuses_a_second_registered_hostname(
    db: Connection,
) -> None:
    registered(db, A, "ws1.example.org")
    pending(db, B, "WS1.Example.ORG", KEY_B)

    with pytest.raises(UniqueViolation):
        db.execute("UPDATE agents SET state = 'registered' WHERE guid = ?", (B,))

    assert (state_of(db, A), state_of(db, B)) == ("registered", "pending")


def test_two_agents_cannot_both_be_registered_under_one_hostname(
    db: Connection,
) -> None:
    assert engine.create_registered_txn(db, A, "ws1", KEY_A, "", NOW, "auto")
    # The second lost the race for ws1: nothing is inserted, it may wait as pending.
    assert not engine.create_registered_txn(db, B, "WS1", KEY_B, "", NOW, "auto")
    assert engine.get_txn(db, B) is None
    assert audit(db) == [("auto", "approve", A, f"hostname=ws1 key={KEY_A} from ")]
    assert engine.create_pending_txn(db, B, "WS1", KEY_B, "", NOW)
    assert state_of(db, B) == "pending"


def test_create_registered_is_refused_while_only_a_flagged_row_holds_the_name(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agents.db"
    go_db(
        path,
        [
            (A, "ws1", "registered", None, None, None, "", None),
            (B, "WS1", "registered", None, None, None, "", None),
        ],
    )
    connection = connect(path)
    engine.revoke_txn(connection, A, "os:alice", NOW)
    assert engine.hostname_holders_txn(connection, "ws1") == [B]

    created = engine.create_registered_txn(connection, C, "ws1", KEY_C, "", NOW, "a")

    assert (created, engine.get_txn(connection, C)) == (False, None)
    connection.close()


def test_reactivate_refused_when_the_hostname_was_taken(
    db: Connection,
) -> None:
    registered(db, A, "ws1")
    engine.revoke_txn(db, A, "os:alice", NOW)
    registered(db, B, "WS1", KEY_B)
    before = audit(db)

    with pytest.raises(Conflict) as raised:
        engine.reactivate_txn(db, A, "os:alice", LATER)

    assert raised.value.message == f"hostname ws1 is now registered to agent {B}"
    assert state_of(db, A) == "revoked"
    assert audit(db) == before


# ------------------------------------------------------------- row functions


def test_create_pending_and_registered(db: Connection) -> None:
    pending(db, A, "ws1")
    registered(db, B, "ws2", KEY_B)

    assert engine.create_pending_txn(db, A, "other", KEY_B, "10.9.9.9", LATER) is False
    assert (
        engine.create_registered_txn(db, B, "x", KEY_A, "10.9.9.9", LATER, SETUP)
        is False
    )
    a = get(db, A)
    b = get(db, B)
    assert (a.state, a.hostname, a.key_fingerprint, a.address) == (
        "pending",
        "ws1",
        KEY_A,
        "10.0.0.9",
    )
    assert (a.created_at, a.registered_at, a.pinned) == (NOW, None, False)
    assert (b.state, b.hostname, b.key_fingerprint, b.registered_at, b.pinned) == (
        "registered",
        "ws2",
        KEY_B,
        NOW,
        True,
    )
    assert engine.get_txn(db, C) is None
    # Only the agent approved at once is audited, once.
    assert audit(db) == [
        (SETUP, "approve", B, f"hostname=ws2 key={KEY_B} from 10.0.0.9"),
    ]
    assert engine.audit_list_txn(db)[0].time == NOW


def test_record_issue_and_to_pending(db: Connection) -> None:
    registered(db, A, "ws1")
    expires = NOW + dt.timedelta(days=14)

    engine.record_issue_txn(db, A, 0xABC123, expires, "10.1.1.1", LATER)

    record = get(db, A)
    assert (record.cert_serial, record.cert_expires_at, record.last_seen_at) == (
        "abc123",
        expires,
        LATER,
    )
    assert record.address == "10.1.1.1"

    engine.to_pending_txn(db, A, "ws1-new", KEY_B, "10.2.2.2", LATER)

    record = get(db, A)
    assert (record.state, record.hostname, record.key_fingerprint) == (
        "pending",
        "ws1-new",
        KEY_B,
    )
    assert (record.address, record.state_changed_at) == ("10.2.2.2", LATER)
    # Back to pending, the old certificate no longer counts: approval does.
    assert record.cert_expires_at is None
    assert record.cert_serial == "abc123"


@pytest.mark.parametrize("state", ["revoked", "denied"])
def test_to_pending_leaves_revoked_and_denied_alone(
    db: SqliteConnection, state: str
) -> None:
    # A register that read "registered" just before dcvixctl revoked the agent
    # must not bring it back as pending.
    db.execute(
        "INSERT INTO agents (guid, hostname, state, key_fingerprint) "
        "VALUES (?, 'ws1', ?, ?)",
        (A, state, KEY_A),
    )

    engine.to_pending_txn(db, A, "ws9", KEY_B, "10.2.2.2", LATER)

    record = get(db, A)
    assert (record.state, record.hostname, record.key_fingerprint) == (
        state,
        "ws1",
        KEY_A,
    )


# -------------------------------------------------------------------- claims


def test_claim_only_for_an_unpinned_registered_agent(db: Connection) -> None:
    pending(db, B, "ws2", "")
    db.execute(
        "INSERT INTO agents (guid, hostname, state, key_fingerprint) "
        "VALUES (?, 'ws3', 'registered', ?)",
        (C, KEY_C),
    )
    db.execute(
        "INSERT INTO agents (guid, hostname, state) VALUES (?, 'ws4', 'revoked')",
        (E,),
    )
    before = {r.guid: r for r in engine.list_txn(db)}

    answers = [
        engine.claim_txn(db, guid, KEY_A, "10.0.0.7", NOW) for guid in (B, C, D, E)
    ]

    assert answers == [None, None, None, None]
    assert {r.guid: r for r in engine.list_txn(db)} == before
    assert audit(db) == []


def test_claim_records_and_replaces_a_claim(db: Connection) -> None:
    adopted(db, A, "ws1")

    first = engine.claim_txn(db, A, KEY_A, "10.0.0.7", NOW)

    assert first == ""
    record = get(db, A)
    assert (record.state, record.key_fingerprint, record.pinned) == (
        "registered",
        "",
        False,
    )
    assert (record.claimed_key, record.claimed_at) == (KEY_A, NOW)
    assert audit(db) == [("address 10.0.0.7", "claim key", A, f"key={KEY_A}")]

    # A Go agent polls every 30 s: the same claim again is not audited again.
    again = engine.claim_txn(db, A, KEY_A, "10.0.0.7", LATER)

    assert again == KEY_A
    record = get(db, A)
    assert (record.state, record.claimed_key, record.claimed_at) == (
        "registered",
        KEY_A,
        NOW,
    )
    assert len(audit(db)) == 1

    other = engine.claim_txn(db, A, KEY_B, "10.0.0.8", LATER)

    assert other == KEY_A
    record = get(db, A)
    assert (record.state, record.key_fingerprint) == ("registered", "")
    assert (record.claimed_key, record.claimed_at) == (KEY_B, LATER)
    assert audit(db) == [
        ("address 10.0.0.7", "claim key", A, f"key={KEY_A}"),
        ("address 10.0.0.8", "claim key", A, f"key={KEY_B} replacing {KEY_A}"),
    ]


@pytest.mark.parametrize(
    ("claim", "dropped", "detail"),
    [
        ("", "", f"key={KEY_A}"),
        (KEY_A, "", f"key={KEY_A}"),
        (KEY_B, KEY_B, f"key={KEY_A} dropped claim {KEY_B}"),
    ],
    ids=["no-claim", "same-claim", "other-claim"],
)
def test_pin_fills_an_empty_pin_and_drops_the_claim(
    db: SqliteConnection, claim: str, dropped: str, detail: str
) -> None:
    adopted(db, A, "ws1", claim)

    pinning = engine.pin_txn(db, A, KEY_A, LATER)

    record = get(db, A)
    assert pinning == Pinning(record, dropped, pinned=True)
    assert (record.state, record.key_fingerprint, record.pinned) == (
        "registered",
        KEY_A,
        True,
    )
    assert (record.claimed_key, record.claimed_at) == ("", None)
    assert audit(db) == [("mtls", "pin key", A, detail)]
    assert engine.audit_list_txn(db)[0].time == LATER


def test_pin_leaves_pinned_pending_and_unknown_agents_alone(
    db: Connection,
) -> None:
    db.execute(
        "INSERT INTO agents (guid, hostname, state, key_fingerprint) "
        "VALUES (?, 'ws1', 'registered', ?)",
        (A, KEY_A),
    )
    pending(db, B, "ws2", "")
    before = {r.guid: r for r in engine.list_txn(db)}

    pinned = engine.pin_txn(db, A, KEY_B, LATER)
    waiting = engine.pin_txn(db, B, KEY_B, LATER)
    unknown = engine.pin_txn(db, C, KEY_B, LATER)

    assert pinned == Pinning(before[A], "")
    assert pinned.record is not None
    assert pinned.record.key_fingerprint == KEY_A
    assert waiting == Pinning(before[B], "")
    assert unknown == Pinning(None, "")
    assert {r.guid: r for r in engine.list_txn(db)} == before
    assert audit(db) == []


def test_approve_turns_a_claim_into_the_pin(db: Connection) -> None:
    adopted(db, A, "ws1", KEY_B)
    before = get(db, A)
    with pytest.raises(Conflict, match=f"has a claim for key {KEY_B}: approve it"):
        engine.approve_txn(db, A, "os:alice", LATER)  # without the key seen
    with pytest.raises(Conflict, match=r"\(the claim changed\)"):
        engine.approve_txn(db, A, "os:alice", LATER, claimed_key=KEY_A)
    assert get(db, A) == before

    result = engine.approve_txn(db, A, "os:alice", LATER, claimed_key=KEY_B)

    record = get(db, A)
    assert (result.record, result.replaced) == (record, ())
    assert [(e.action, e.detail) for e in result.entries] == [
        ("approve claim", f"key={KEY_B}")
    ]
    assert (record.state, record.key_fingerprint, record.pinned) == (
        "registered",
        KEY_B,
        True,
    )
    assert (record.claimed_key, record.claimed_at) == ("", None)
    assert (record.registered_at, record.state_changed_at) == (
        before.registered_at,
        before.state_changed_at,
    )
    assert audit(db) == [("os:alice", "approve claim", A, f"key={KEY_B}")]


@pytest.mark.parametrize(
    ("key", "claim"),
    [(KEY_A, KEY_B), ("", "")],
    ids=["pinned-with-claim", "unpinned-without-claim"],
)
def test_approve_refuses_a_registered_agent_without_a_claim_to_approve(
    db: SqliteConnection, key: str, claim: str
) -> None:
    db.execute(
        "INSERT INTO agents (guid, hostname, state, key_fingerprint, claimed_key) "
        "VALUES (?, 'ws1', 'registered', ?, ?)",
        (A, key, claim),
    )
    before = get(db, A)

    with pytest.raises(Conflict) as raised:
        engine.approve_txn(db, A, "os:alice", LATER)

    assert raised.value.message == f"agent {A} is registered, it cannot be approved"
    assert get(db, A) == before
    assert audit(db) == []


# ------------------------------------------------------------- admin actions


def test_approve_pending(db: Connection) -> None:
    pending(db, A, "ws1")

    result = engine.approve_txn(db, A, "os:alice", LATER)

    assert result.record.state == "registered"
    assert result.replaced == ()
    record = get(db, A)
    assert result.record == record
    assert (record.state, record.registered_at, record.state_changed_at) == (
        "registered",
        LATER,
        LATER,
    )
    assert record.pinned is True
    assert audit(db) == [
        ("os:alice", "approve", A, f"hostname=ws1 key={KEY_A}"),
    ]
    assert engine.audit_list_txn(db)[0].time == LATER


def test_approve_with_hostname_conflict_is_409_and_changes_nothing(
    db: Connection,
) -> None:
    registered(db, A, "ws1.example.org")
    pending(db, B, "WS1.example.org", KEY_B)
    before = audit(db)

    with pytest.raises(Conflict) as raised:
        engine.approve_txn(db, B, "os:alice", LATER)

    assert raised.value.status == 409
    assert raised.value.message == (
        f"hostname WS1.example.org is already registered to agent {A}; "
        "approve with replace to revoke it"
    )
    assert (state_of(db, A), state_of(db, B)) == ("registered", "pending")
    assert audit(db) == before


def test_approve_with_replace_revokes_the_holder(db: Connection) -> None:
    registered(db, A, "ws1")
    pending(db, B, "ws1", KEY_B)

    result = engine.approve_txn(db, B, "os:alice", LATER, replace_holders=True)

    assert result.replaced == (A,)
    assert (state_of(db, A), state_of(db, B)) == ("revoked", "registered")
    assert audit(db)[1:] == [
        ("os:alice", "revoke", A, f"replaced by {B} (ws1)"),
        ("os:alice", "approve", B, f"hostname=ws1 key={KEY_B}"),
    ]


def test_pending_duplicates_are_allowed(db: Connection) -> None:
    pending(db, A, "ws1")
    pending(db, B, "ws1", KEY_B)

    engine.approve_txn(db, A, "os:alice", LATER)

    assert (state_of(db, A), state_of(db, B)) == ("registered", "pending")


def test_deny_revoke_reactivate_delete(db: Connection) -> None:
    pending(db, A, "ws1")
    registered(db, B, "ws2", KEY_B)

    assert engine.deny_txn(db, A, "os:alice", LATER).record.state == "denied"
    assert engine.revoke_txn(db, B, "os:bob", LATER).record.state == "revoked"
    assert (state_of(db, A), state_of(db, B)) == ("denied", "revoked")

    assert engine.reactivate_txn(db, A, "os:carol", LATER).record.state == "pending"
    assert engine.reactivate_txn(db, B, "os:carol", LATER).record.state == "registered"
    assert (state_of(db, A), state_of(db, B)) == ("pending", "registered")
    assert get(db, B).key_fingerprint == KEY_B  # the pin survives revocation

    deleted = engine.delete_txn(db, A, "os:dave", LATER)
    assert deleted.record.guid == A
    assert engine.get_txn(db, A) is None

    assert audit(db) == [
        (SETUP, "approve", B, f"hostname=ws2 key={KEY_B} from 10.0.0.9"),
        ("os:alice", "deny", A, "hostname=ws1"),
        ("os:bob", "revoke", B, "hostname=ws2"),
        ("os:carol", "reactivate", A, "now pending"),
        ("os:carol", "reactivate", B, "now registered"),
        ("os:dave", "delete", A, "was pending, hostname=ws1"),
    ]


@pytest.mark.parametrize(
    ("action", "state", "message"),
    [
        (
            engine.approve_txn,
            "registered",
            f"agent {A} is registered, it cannot be approved",
        ),
        (engine.approve_txn, "denied", f"agent {A} is denied, it cannot be approved"),
        (
            engine.deny_txn,
            "registered",
            f"agent {A} is registered, it cannot be denied",
        ),
        (engine.revoke_txn, "pending", f"agent {A} is pending, it cannot be revoked"),
        (engine.revoke_txn, "denied", f"agent {A} is denied, it cannot be revoked"),
        (
            engine.reactivate_txn,
            "registered",
            f"agent {A} is registered, it cannot be reactivated",
        ),
        (
            engine.reactivate_txn,
            "pending",
            f"agent {A} is pending, it cannot be reactivated",
        ),
    ],
)
def test_wrong_state_is_a_conflict(
    db: SqliteConnection, action: Callable[..., Any], state: str, message: str
) -> None:
    db.execute(
        "INSERT INTO agents (guid, hostname, state, key_fingerprint) "
        "VALUES (?, 'ws1', ?, ?)",
        (A, state, KEY_A),
    )

    with pytest.raises(Conflict) as raised:
        action(db, A, "os:alice", LATER)

    assert raised.value.message == message
    assert state_of(db, A) == state
    assert audit(db) == []


@pytest.mark.parametrize(
    "action",
    [
        engine.approve_txn,
        engine.deny_txn,
        engine.revoke_txn,
        engine.reactivate_txn,
        engine.delete_txn,
    ],
)
def test_unknown_agent_is_not_found(
    db: SqliteConnection, action: Callable[..., Any]
) -> None:
    with pytest.raises(NotFound) as raised:
        action(db, A, "os:alice", LATER)

    assert raised.value.status == 404
    assert raised.value.message == f"agent {A} not found"
    assert audit(db) == []


def test_purge_pending(db: Connection) -> None:
    old = NOW - dt.timedelta(days=8)
    assert engine.create_pending_txn(db, A, "ws1", KEY_A, "", old)
    assert engine.create_pending_txn(db, B, "ws2", KEY_B, "", NOW)
    assert engine.create_registered_txn(db, C, "ws3", KEY_A, "", old, SETUP)
    db.execute(
        "INSERT INTO agents (guid, hostname, state, created_at) "
        "VALUES (?, 'ws4', 'pending', NULL)",
        (D,),
    )

    purged = engine.purge_pending_txn(db, NOW - dt.timedelta(days=7))

    assert purged == [A]
    assert [r.guid for r in engine.list_txn(db)] == [D, C, B]


def test_purge_pending_reads_go_local_times(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    make_go_db(path)
    connection = connect(path)

    # C was created at 2025-02-20 08:00 UTC (09:00+01:00).
    before = engine.purge_pending_txn(
        connection, dt.datetime(2025, 2, 20, 8, 0, 0, tzinfo=UTC)
    )
    after = engine.purge_pending_txn(
        connection, dt.datetime(2025, 2, 20, 8, 0, 1, tzinfo=UTC)
    )

    assert (before, after) == ([], [C])
    connection.close()


def test_a_failed_action_rolls_back(db: Connection) -> None:
    registered(db, A, "ws1")
    registered(db, B, "ws2", KEY_B)
    pending(db, C, "ws1", KEY_A)
    pending(db, D, "ws2", KEY_B)

    with pytest.raises(Conflict):
        engine.approve_txn(db, D, "os:alice", LATER)

    assert in_transaction(db) is False
    engine.approve_txn(db, C, "os:alice", LATER, replace_holders=True)
    assert [(r.guid, r.state) for r in engine.list_txn(db)] == [
        (A, "revoked"),
        (B, "registered"),
        (C, "registered"),
        (D, "pending"),
    ]


def test_login_failures_and_locks(db: Connection) -> None:
    alice, address = ("user", "alice"), ("address", "10.0.0.1")
    bob = ("user", "bob")
    engine.add_login_failure_txn(db, (alice, address), 100.0, {})
    engine.add_login_failure_txn(db, (bob, address), 101.5, {address: 160.0})
    engine.add_login_failure_txn(db, (alice, address), 102.0, {address: 150.0})

    failures, locks = engine.login_failures_txn(db, (alice, address), 100.0)

    assert {k: sorted(v) for k, v in failures.items()} == {
        alice: [102.0],
        address: [101.5, 102.0],
    }
    assert locks == {address: 160.0}  # a shorter lock never shortens one
    engine.clear_login_failures_txn(db, alice)
    assert engine.login_failures_txn(db, (alice, bob), 0.0) == ({bob: [101.5]}, {})
    assert engine.vacuum_login_failures_txn(db, 155.0) == 4  # 4 failures, no lock
    assert engine.login_failures_txn(db, (alice, address), 0.0) == (
        {},
        {address: 160.0},
    )


def test_shared_reports_keep_the_newest_of_each_agent_in_commit_order(
    db: Connection,
) -> None:
    first = engine.SharedReport(A, "ws1", "10.0.0.1", 100.0, '{"n": 1}')
    second = engine.SharedReport(B, "ws2", "10.0.0.2", 101.0, '{"n": 2}')
    grant = engine.SharedGrant("console", "ws1", 200.0, "192.0.2.7")
    engine.put_shared_txn(db, "director-a", [first, second], [grant])
    newer = engine.SharedReport(A, "ws1", "10.0.0.9", 102.0, '{"n": 3}', "[]")
    engine.put_shared_txn(db, "director-b", [newer], [grant, grant])

    everything = engine.shared_since_txn(db, 0, 0)
    reports, grants = everything.reports, everything.grants

    assert (everything.reports_to, everything.grants_to) == (3, 3)
    assert [(r.guid, r.report, r.origin, r.change) for r in reports] == [
        (B, '{"n": 2}', "director-a", 2),
        (A, '{"n": 3}', "director-b", 3),
    ]
    assert [(g.origin, g.change) for g in grants] == [
        ("director-a", 1),
        ("director-b", 2),
        ("director-b", 3),
    ]
    assert engine.shared_since_txn(db, 2, 2) == engine.Shared(
        [
            engine.SharedReport(
                A, "ws1", "10.0.0.9", 102.0, '{"n": 3}', "[]", "director-b", 3
            )
        ],
        [engine.SharedGrant("console", "ws1", 200.0, "192.0.2.7", "director-b", 3)],
        3,
        3,
    )
    # A director never reads its own rows back, yet reads past them.
    assert engine.shared_since_txn(db, 0, 0, "director-b") == engine.Shared(
        [
            engine.SharedReport(
                B, "ws2", "10.0.0.2", 101.0, '{"n": 2}', None, "director-a", 2
            )
        ],
        [engine.SharedGrant("console", "ws1", 200.0, "192.0.2.7", "director-a", 1)],
        3,
        3,
    )
    engine.forget_report_txn(db, A)
    assert [r.guid for r in engine.shared_since_txn(db, 0, 3).reports] == [B]
    assert engine.vacuum_grants_txn(db, 300.0) == 3


def test_revoked_tokens(db: Connection) -> None:
    engine.revoke_token_txn(db, "old", NOW)
    engine.revoke_token_txn(db, "new", LATER)
    engine.revoke_token_txn(db, "new", LATER)

    assert engine.token_revoked_txn(db, "old") is True
    assert engine.token_revoked_txn(db, "other") is False
    assert engine.vacuum_tokens_txn(db, NOW + dt.timedelta(minutes=1)) == 1
    assert (
        engine.token_revoked_txn(db, "old"),
        engine.token_revoked_txn(db, "new"),
    ) == (
        False,
        True,
    )


# ------------------------------------------------------------------ the engine


@pytest.fixture
def pool() -> Iterator[ThreadPoolService]:
    service = ThreadPoolService("db", 1, IReactorFromThreads(reactor))
    service.startService()
    yield service
    service.stopService()


@pytest.fixture(params=["inline", "pool"])
def registry(request: pytest.FixtureRequest, store: Store) -> Iterator[SqlRegistry]:
    if request.param == "inline":
        runner = inline_runner
    else:
        runner = pool_runner(request.getfixturevalue("pool"))
    agents = store.registry(runner)
    yield agents
    agents.close()


@pytest_twisted.ensureDeferred
async def test_registry_runs_each_method_on_the_store(
    store: Store, registry: SqlRegistry
) -> None:
    created = await registry.create_pending(A, "ws1", KEY_A, "10.0.0.1", NOW)
    again = await registry.create_pending(A, "ws1", KEY_A, "10.0.0.1", NOW)
    approved = await registry.approve(A, "os:alice", LATER)
    record = await registry.get(A)
    missing = await registry.get(B)
    with pytest.raises(NotFound):
        await registry.revoke(B, "os:alice", LATER)
    assert await registry.create_registered(B, "WS1", KEY_B, "", NOW, "auto") is False
    assert await registry.create_registered(C, "ws3", KEY_C, "", NOW, "auto") is True
    await registry.record_issue(C, 0xBEEF, LATER, "10.0.0.3", LATER)
    await registry.to_pending(C, "ws3b", KEY_B, "10.0.0.4", LATER)
    assert (await registry.deny(C, "os:bob", LATER)).record.state == "denied"
    assert (await registry.reactivate(C, "os:bob", LATER)).record.state == "pending"
    assert await registry.purge_pending(LATER) == [C]
    assert (await registry.revoke(A, "os:bob", LATER)).record.state == "revoked"
    assert (await registry.delete(A, "os:bob", LATER)).record.guid == A

    assert created is True
    assert again is False
    assert approved.record.state == "registered"
    assert record is not None
    assert (record.guid, record.state, record.key_fingerprint) == (
        A,
        "registered",
        KEY_A,
    )
    assert missing is None
    assert await registry.list() == []
    assert await registry.count("registered") == 0

    raw = store.connection()
    raw.executemany(
        "INSERT INTO agents (guid, hostname, state) VALUES (?, ?, 'registered')",
        [(D, "ws4"), (E, "ws5")],
    )
    raw.close()
    assert await registry.claim(D, KEY_A, "10.0.0.5", NOW) == ""
    assert await registry.hostname_holders("WS4") == [D]
    claim = await registry.approve(D, "os:alice", LATER, claimed_key=KEY_A)
    assert (claim.record.key_fingerprint, claim.record.claimed_key) == (KEY_A, "")
    assert await registry.claim(E, KEY_A, "10.0.0.6", NOW) == ""
    pinning = await registry.pin(E, KEY_B, LATER)
    assert pinning.record is not None
    assert (pinning.record.key_fingerprint, pinning.dropped_claim) == (KEY_B, KEY_A)
    assert [r.guid for r in await registry.list("registered")] == [D, E]
    assert await registry.count("registered") == 2

    await registry.append(AuditEntry(LATER, "os:eve", "login", "eve", "ok"))
    latest = await registry.latest(2)
    assert latest == [
        AuditEntry(LATER, "os:eve", "login", "eve", "ok"),
        AuditEntry(LATER, "mtls", "pin key", E, f"key={KEY_B} dropped claim {KEY_A}"),
    ]
    await registry.revoke_token("h1", NOW)
    assert await registry.token_revoked("h1") is True
    assert await registry.vacuum_tokens(LATER) == 1
    assert await registry.token_revoked("h1") is False

    # What the director wrote, a second connection (dcvixctl) reads.
    other = store.connection()
    assert state_of(other, D) == "registered"
    assert [e.action for e in engine.audit_list_txn(other)][:4] == [
        "login",
        "pin key",
        "claim key",
        "approve claim",
    ]
    other.close()


@pytest_twisted.ensureDeferred
async def test_a_database_failure_is_a_store_error(
    store: Store, registry: SqlRegistry
) -> None:
    raw = store.connection()
    raw.execute("ALTER TABLE audit RENAME TO audit_gone")
    try:
        with pytest.raises(StoreError) as raised:
            await registry.latest()
    finally:
        raw.execute("ALTER TABLE audit_gone RENAME TO audit")
        raw.close()

    expected = {
        "sqlite": "agents.db: no such table: audit",
        "postgresql": f'{registry.engine.label}: relation "audit" does not exist',
    }[store.engine]
    assert str(raised.value).startswith(expected)


@pytest_twisted.ensureDeferred
async def test_a_full_disk_is_a_store_full_and_changes_nothing(
    tmp_path: Path,
) -> None:
    registry = SqliteRegistry(tmp_path / "agents.db", inline_runner)
    await registry.create_pending(A, "ws1", KEY_A, "10.0.0.1", NOW)
    # As on a full disk: the file may not grow (SQLITE_FULL), for this
    # connection only.
    connection = registry.engine._connection.raw  # type: ignore[attr-defined]
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count = {pages}")

    with pytest.raises(StoreFull) as raised:
        for number in range(10_000):
            guid = f"{number:08x}-0000-4000-8000-000000000000"
            await registry.create_pending(guid, f"ws-{number}", KEY_B, "", NOW)

    assert str(raised.value) == "agents.db: database or disk is full"
    assert isinstance(raised.value, StoreError)
    assert not connection.in_transaction
    record = await registry.get(A)
    assert record is not None and record.state == "pending"
    # Space again: the same connection writes.
    connection.execute(f"PRAGMA max_page_count = {2**30}")
    approved = await registry.approve(A, "os:alice", LATER)
    assert approved.record.state == "registered"
    registry.close()


def test_the_registry_refuses_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    path.write_bytes(b"\x00garbage" * 64)

    with pytest.raises(StoreError) as raised:
        SqliteRegistry(path, inline_runner)

    assert str(raised.value) == f"{path}: file is not a database"


def test_to_pending_never_undoes_a_change_made_since_the_caller_read(
    db: Connection,
) -> None:
    db.execute(
        "INSERT INTO agents (guid, hostname, state, created_at) "
        "VALUES (?, 'ws1', 'pending', ?)",
        (A, to_db_time(NOW)),
    )
    seen = get(db, A)  # a registration read it: pending, no key
    engine.approve_txn(db, A, "os:alice", NOW)  # the admin approves meanwhile
    approved = get(db, A)

    changed = engine.to_pending_txn(
        db, A, "evil-host", KEY_B, "203.0.113.9", LATER, seen=seen
    )

    assert changed is False
    assert get(db, A) == approved
    assert engine.to_pending_txn(db, A, "ws2", KEY_B, "10.0.0.2", LATER, seen=approved)
    assert (get(db, A).state, get(db, A).hostname) == ("pending", "ws2")


def test_a_claim_does_not_survive_a_change_of_state(db: Connection) -> None:
    adopted(db, A, "ws1", claim=KEY_B)
    engine.revoke_txn(db, A, "os:alice", LATER)
    assert (get(db, A).claimed_key, get(db, A).claimed_at) == ("", None)
    engine.reactivate_txn(db, A, "os:alice", LATER)
    record = get(db, A)
    assert (record.state, record.claimed_key) == ("registered", "")
    with pytest.raises(Conflict, match="cannot be approved"):
        engine.approve_txn(db, A, "os:alice", LATER, claimed_key=KEY_B)


def test_a_role_without_create_starts_on_a_migrated_database(
    pg_store: PostgresStore,
) -> None:
    """Operators may run directors as a role that can only read and write rows."""
    cluster = pg_store.cluster
    database = pg_store.url.rsplit("/", 1)[1]
    role = f"rows_{database[-6:]}"
    cluster.admin(f"CREATE ROLE {role} LOGIN PASSWORD 'rows-only'")
    cluster.admin(f"GRANT CONNECT ON DATABASE {database} TO {role}", database)
    cluster.admin(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}", database)
    cluster.admin(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public "
        f"TO {role}",
        database,
    )
    url = pg_store.url.replace("postgres@", f"{role}@")

    store = PostgresEngine(url, "rows-only", 1)

    try:
        assert store.call(engine.count_txn, "pending") == 0
    finally:
        store.close()


def test_only_agent_writes_make_memory_of_agents_stale(pg_store: PostgresStore) -> None:
    # Reports are shared ten times a second: were each write to drop the agent
    # records kept in memory, every update would read its agent again.
    pg_store.empty()
    connection = pg_store.connection()
    try:
        report = engine.SharedReport(A, "ws1", "10.0.0.1", 100.0, '{"n": 1}')
        engine.put_shared_txn(connection, "director-a", [report])
        engine.revoke_token_txn(connection, "jti-1", NOW + dt.timedelta(hours=1))
        keys = (("user", "alice"), ("address", "192.0.2.7"))
        engine.add_login_failure_txn(connection, keys, 100.0, {})
        assert not connection.agents_changed
        pending(connection, A, "ws1")
        assert connection.agents_changed
    finally:
        connection.close()


# ------------------------------------------------------------ the audit trail


def _trail(connection: Connection) -> None:
    """Five lines a minute apart from 09:00, as the director writes them."""
    start = dt.datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
    for minute, (actor, action, address, outcome) in enumerate(
        [
            ("alice", "login", "10.0.0.7", "ok"),
            ("admin:alice", "approve", "10.0.0.7", "ok"),
            ("bob", "login failed", "10.0.0.8", "failed"),
            ("os:root", "revoke", "", "ok"),
            ("100%_sure", "login", "10.0.0.9", "ok"),
        ]
    ):
        engine.audit_txn(
            connection,
            AuditEntry(
                start + dt.timedelta(minutes=minute),
                actor,
                action,
                "target",
                "",
                address,
                outcome,
            ),
        )


def _actors(connection: Connection, **query: Any) -> list[str]:
    return [
        line.entry.actor
        for line in engine.audit_query_txn(connection, AuditQuery(**query))
    ]


def test_audit_lines_keep_their_address_and_outcome(db: Connection) -> None:
    _trail(db)
    [newest, *_rest] = engine.audit_query_txn(db, AuditQuery(limit=5))
    assert newest.entry == AuditEntry(
        dt.datetime(2025, 3, 1, 9, 4, tzinfo=UTC),
        "100%_sure",
        "login",
        "target",
        "",
        "10.0.0.9",
        "ok",
    )
    failed = engine.audit_query_txn(db, AuditQuery(action="login failed"))
    assert [(f.entry.address, f.entry.outcome) for f in failed] == [
        ("10.0.0.8", "failed")
    ]


def test_audit_query_filters_newest_first(db: Connection) -> None:
    _trail(db)
    nine = dt.datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
    assert _actors(db) == ["100%_sure", "os:root", "bob", "admin:alice", "alice"]
    # actor: contained, in any case; its % and _ are no wildcards.
    assert _actors(db, actor="ALICE") == ["admin:alice", "alice"]
    assert _actors(db, actor="%") == ["100%_sure"]
    assert _actors(db, actor="_") == ["100%_sure"]
    assert _actors(db, action="login") == ["100%_sure", "alice"]
    # since included, until excluded.
    since, until = nine + dt.timedelta(minutes=1), nine + dt.timedelta(minutes=3)
    assert _actors(db, since=since, until=until) == ["bob", "admin:alice"]
    assert _actors(db, actor="alice", action="approve", since=since) == ["admin:alice"]


def test_audit_pages_follow_the_cursor(db: Connection) -> None:
    _trail(db)
    first = engine.audit_query_txn(db, AuditQuery(limit=2))
    second = engine.audit_query_txn(db, AuditQuery(limit=2, after=first[-1].id))
    third = engine.audit_query_txn(db, AuditQuery(limit=2, after=second[-1].id))
    pages = [[line.entry.actor for line in page] for page in (first, second, third)]
    assert pages == [["100%_sure", "os:root"], ["bob", "admin:alice"], ["alice"]]
    ids = [line.id for page in (first, second, third) for line in page]
    assert ids == sorted(ids, reverse=True)


def test_audit_vacuum_forgets_lines_older_than_the_bound(db: Connection) -> None:
    _trail(db)
    bound = dt.datetime(2025, 3, 1, 9, 2, tzinfo=UTC)
    assert engine.vacuum_audit_txn(db, bound, batch=1) == 1  # oldest first
    assert _actors(db) == ["100%_sure", "os:root", "bob", "admin:alice"]
    assert engine.vacuum_audit_txn(db, bound) == 1
    assert _actors(db) == ["100%_sure", "os:root", "bob"]
    assert engine.vacuum_audit_txn(db, bound) == 0
