"""agents.db: schema, Go adoption, timestamps, admin actions, the async store."""

from __future__ import annotations

import datetime as dt
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from dcvix.common.errors import Conflict, NotFound
from dcvix.common.threads import ThreadPoolService
from dcvix.director import store
from dcvix.director.store import AgentStore, from_db_time, to_db_time

UTC = dt.UTC
NOW = dt.datetime(2025, 3, 2, 8, 0, 0, tzinfo=UTC)
LATER = NOW + dt.timedelta(minutes=5)
A = "11111111-1111-4111-8111-111111111111"
B = "22222222-2222-4222-8222-222222222222"
C = "33333333-3333-4333-8333-333333333333"
D = "44444444-4444-4444-8444-444444444444"
KEY_A = "aa" * 32
KEY_B = "bb" * 32

GO_TABLE = (
    "CREATE TABLE agents (guid TEXT PRIMARY KEY, hostname TEXT, "
    "state TEXT NOT NULL DEFAULT 'pending', created_at DATETIME, "
    "registered_at DATETIME, last_seen_at DATETIME, cert_serial TEXT, tags TEXT)"
)


def columns(connection: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]


def audit(connection: sqlite3.Connection) -> list[tuple[str, str, str, str]]:
    """The audit lines, oldest first, without their time."""
    return [
        (actor, action, target, detail)
        for _, actor, action, target, detail in reversed(
            store.audit_list_txn(connection)
        )
    ]


def state_of(connection: sqlite3.Connection, guid: str) -> str | None:
    record = store.get_txn(connection, guid)
    return None if record is None else record.state


@pytest.fixture
def db(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = store.connect(tmp_path / "agents.db")
    yield connection
    connection.close()


def pending(
    connection: sqlite3.Connection, guid: str, hostname: str, key: str = KEY_A
) -> None:
    assert store.create_pending_txn(connection, guid, hostname, key, "10.0.0.9", NOW)


def registered(
    connection: sqlite3.Connection, guid: str, hostname: str, key: str = KEY_A
) -> None:
    assert store.create_registered_txn(connection, guid, hostname, key, "10.0.0.9", NOW)


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
def test_from_db_time(text: str | None, expected: dt.datetime | None) -> None:
    parsed = from_db_time(text)

    assert parsed == expected
    if parsed is not None:
        assert parsed.utcoffset() == dt.timedelta(0)


def test_to_db_time_round_trips() -> None:
    moment = dt.datetime(
        2025, 3, 1, 10, 20, 30, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2))
    )

    text = to_db_time(moment)

    assert text == "2025-03-01 08:20:30.123456+00:00"
    assert from_db_time(text) == moment
    assert to_db_time(None) is None


# -------------------------------------------------------------------- schema


def test_connect_creates_the_tables_0600(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"

    connection = store.connect(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert columns(connection, "agents") == [
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
    ]
    assert columns(connection, "audit") == [
        "id",
        "time",
        "actor",
        "action",
        "target",
        "detail",
    ]
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    connection.close()


def test_connect_reads_an_empty_file(tmp_path: Path) -> None:
    # What a fresh install leaves before the registry is first opened.
    path = tmp_path / "agents.db"
    path.write_bytes(b"")

    connection = store.connect(path)

    assert store.list_txn(connection) == []
    connection.close()


def make_go_db(path: Path) -> None:
    connection = sqlite3.connect(path)
    connection.execute(GO_TABLE)
    connection.executemany(
        "INSERT INTO agents VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
    connection.commit()
    connection.close()


def test_go_agents_db_is_read_and_extended_in_place(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    make_go_db(path)

    connection = store.connect(path)

    assert columns(connection, "agents")[8:] == [
        "key_fingerprint",
        "cert_expires_at",
        "address",
        "state_changed_at",
    ]
    record = store.get_txn(connection, A)
    assert record == store.AgentRecord(
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
    )
    assert record.pinned is False
    assert [r.guid for r in store.list_txn(connection)] == [D, C, A, B]
    assert [r.guid for r in store.list_txn(connection, "pending")] == [C]
    assert store.count_txn(connection, "registered") == 2
    connection.close()

    # The file itself holds the new columns; the Go rows are still there.
    raw = sqlite3.connect(path)
    assert "key_fingerprint" in columns(raw, "agents")
    assert raw.execute("SELECT COUNT(*) FROM agents").fetchone()[0] == 4
    raw.close()


def test_go_duplicate_hostnames_are_kept_and_listed(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    make_go_db(path)

    connection = store.connect(path)

    assert store.duplicate_hostnames_txn(connection) == {"ws1"}
    assert {r.guid for r in store.list_txn(connection, "registered")} == {A, B}
    connection.close()


def test_duplicate_hostnames_ignore_case_and_non_registered(
    db: sqlite3.Connection,
) -> None:
    registered(db, A, "WS1.example.org")
    db.execute(
        "INSERT INTO agents (guid, hostname, state) VALUES (?, ?, ?)",
        (B, "ws1.example.org", "registered"),
    )
    pending(db, C, "ws2")
    registered(db, D, "ws3")
    db.execute(
        "INSERT INTO agents (guid, hostname, state) VALUES "
        "('55555555-5555-4555-8555-555555555555', 'ws2', 'pending')"
    )

    assert store.duplicate_hostnames_txn(db) == {"ws1.example.org"}


def test_connect_twice_keeps_rows(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    first = store.connect(path)
    registered(first, A, "ws1")
    first.close()

    second = store.connect(path)

    record = store.get_txn(second, A)
    assert record is not None
    assert (record.state, record.key_fingerprint, record.created_at) == (
        "registered",
        KEY_A,
        NOW,
    )
    second.close()


# ------------------------------------------------------------- row functions


def test_create_pending_and_registered(db: sqlite3.Connection) -> None:
    pending(db, A, "ws1")
    registered(db, B, "ws2", KEY_B)

    assert store.create_pending_txn(db, A, "other", KEY_B, "10.9.9.9", LATER) is False
    assert store.create_registered_txn(db, B, "x", KEY_A, "10.9.9.9", LATER) is False
    a = store.get_txn(db, A)
    b = store.get_txn(db, B)
    assert a is not None
    assert b is not None
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
    assert store.get_txn(db, C) is None


def test_record_issue_and_to_pending(db: sqlite3.Connection) -> None:
    registered(db, A, "ws1")
    expires = NOW + dt.timedelta(days=14)

    store.record_issue_txn(db, A, 0xABC123, expires, "10.1.1.1", LATER)

    record = store.get_txn(db, A)
    assert record is not None
    assert (record.cert_serial, record.cert_expires_at, record.last_seen_at) == (
        "abc123",
        expires,
        LATER,
    )
    assert record.address == "10.1.1.1"

    store.to_pending_txn(db, A, "ws1-new", KEY_B, "10.2.2.2", LATER)

    record = store.get_txn(db, A)
    assert record is not None
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
    db: sqlite3.Connection, state: str
) -> None:
    # A register that read "registered" just before dcvixctl revoked the agent
    # must not bring it back as pending.
    db.execute(
        "INSERT INTO agents (guid, hostname, state, key_fingerprint) "
        "VALUES (?, 'ws1', ?, ?)",
        (A, state, KEY_A),
    )

    store.to_pending_txn(db, A, "ws9", KEY_B, "10.2.2.2", LATER)

    record = store.get_txn(db, A)
    assert record is not None
    assert (record.state, record.hostname, record.key_fingerprint) == (
        state,
        "ws1",
        KEY_A,
    )


def test_pin_only_fills_an_empty_pin(db: sqlite3.Connection) -> None:
    db.execute(
        "INSERT INTO agents (guid, hostname, state) VALUES (?, 'ws1', 'registered')",
        (A,),
    )
    pending(db, B, "ws2", "")

    store.pin_txn(db, A, KEY_A)
    store.pin_txn(db, A, KEY_B)
    store.pin_txn(db, B, KEY_B)

    a = store.get_txn(db, A)
    b = store.get_txn(db, B)
    assert a is not None
    assert b is not None
    assert (a.key_fingerprint, a.pinned) == (KEY_A, True)
    assert b.key_fingerprint == ""


# ------------------------------------------------------------- admin actions


def test_approve_pending(db: sqlite3.Connection) -> None:
    pending(db, A, "ws1")

    result = store.approve_txn(db, A, "os:alice", LATER)

    assert result.record.state == "registered"
    assert result.replaced == ()
    assert result.warning == ""
    record = store.get_txn(db, A)
    assert record is not None
    assert (record.state, record.registered_at, record.state_changed_at) == (
        "registered",
        LATER,
        LATER,
    )
    assert record.pinned is True
    assert audit(db) == [
        ("os:alice", "approve", A, f"hostname=ws1 key={KEY_A}"),
    ]
    assert store.audit_list_txn(db)[0][0] == LATER


def test_approve_with_hostname_conflict_is_409_and_changes_nothing(
    db: sqlite3.Connection,
) -> None:
    registered(db, A, "ws1.example.org")
    pending(db, B, "WS1.example.org", KEY_B)

    with pytest.raises(Conflict) as raised:
        store.approve_txn(db, B, "os:alice", LATER)

    assert raised.value.status == 409
    assert raised.value.message == (
        f"hostname WS1.example.org is already registered to agent {A}; "
        "approve with replace to revoke it"
    )
    assert (state_of(db, A), state_of(db, B)) == ("registered", "pending")
    assert audit(db) == []


def test_approve_with_replace_revokes_the_holder(db: sqlite3.Connection) -> None:
    registered(db, A, "ws1")
    pending(db, B, "ws1", KEY_B)

    result = store.approve_txn(db, B, "os:alice", LATER, replace_existing=True)

    assert result.replaced == (A,)
    assert (state_of(db, A), state_of(db, B)) == ("revoked", "registered")
    assert audit(db) == [
        ("os:alice", "revoke", A, f"replaced by {B} (ws1)"),
        ("os:alice", "approve", B, f"hostname=ws1 key={KEY_B}"),
    ]


def test_approve_own_hostname_warns(db: sqlite3.Connection) -> None:
    pending(db, A, "Director1")

    result = store.approve_txn(
        db, A, "os:alice", LATER, own_names=frozenset({"director1"})
    )

    assert result.record.state == "registered"
    assert result.warning == (
        "Director1 is the director's own host name: this agent runs on the "
        "director's machine"
    )


def test_pending_duplicates_are_allowed(db: sqlite3.Connection) -> None:
    pending(db, A, "ws1")
    pending(db, B, "ws1", KEY_B)

    store.approve_txn(db, A, "os:alice", LATER)

    assert (state_of(db, A), state_of(db, B)) == ("registered", "pending")


def test_deny_revoke_reactivate_delete(db: sqlite3.Connection) -> None:
    pending(db, A, "ws1")
    registered(db, B, "ws2", KEY_B)

    assert store.deny_txn(db, A, "os:alice", LATER).record.state == "denied"
    assert store.revoke_txn(db, B, "os:bob", LATER).record.state == "revoked"
    assert (state_of(db, A), state_of(db, B)) == ("denied", "revoked")

    assert store.reactivate_txn(db, A, "os:carol", LATER).record.state == "pending"
    assert store.reactivate_txn(db, B, "os:carol", LATER).record.state == "registered"
    assert (state_of(db, A), state_of(db, B)) == ("pending", "registered")
    b = store.get_txn(db, B)
    assert b is not None
    assert b.key_fingerprint == KEY_B  # the pin survives revocation

    deleted = store.delete_txn(db, A, "os:dave", LATER)
    assert deleted.record.guid == A
    assert store.get_txn(db, A) is None

    assert audit(db) == [
        ("os:alice", "deny", A, "hostname=ws1"),
        ("os:bob", "revoke", B, "hostname=ws2"),
        ("os:carol", "reactivate", A, "now pending"),
        ("os:carol", "reactivate", B, "now registered"),
        ("os:dave", "delete", A, "was pending, hostname=ws1"),
    ]


def test_reactivate_refused_when_the_hostname_was_taken(
    db: sqlite3.Connection,
) -> None:
    registered(db, A, "ws1")
    store.revoke_txn(db, A, "os:alice", NOW)
    registered(db, B, "ws1", KEY_B)

    with pytest.raises(Conflict) as raised:
        store.reactivate_txn(db, A, "os:alice", LATER)

    assert raised.value.message == f"hostname ws1 is now registered to agent {B}"
    assert state_of(db, A) == "revoked"


@pytest.mark.parametrize(
    ("action", "state", "message"),
    [
        (
            store.approve_txn,
            "registered",
            f"agent {A} is registered, it cannot be approved",
        ),
        (store.approve_txn, "denied", f"agent {A} is denied, it cannot be approved"),
        (store.deny_txn, "registered", f"agent {A} is registered, it cannot be denied"),
        (store.revoke_txn, "pending", f"agent {A} is pending, it cannot be revoked"),
        (store.revoke_txn, "denied", f"agent {A} is denied, it cannot be revoked"),
        (
            store.reactivate_txn,
            "registered",
            f"agent {A} is registered, it cannot be reactivated",
        ),
        (
            store.reactivate_txn,
            "pending",
            f"agent {A} is pending, it cannot be reactivated",
        ),
    ],
)
def test_wrong_state_is_a_conflict(
    db: sqlite3.Connection, action: Callable[..., Any], state: str, message: str
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
        store.approve_txn,
        store.deny_txn,
        store.revoke_txn,
        store.reactivate_txn,
        store.delete_txn,
    ],
)
def test_unknown_agent_is_not_found(
    db: sqlite3.Connection, action: Callable[..., Any]
) -> None:
    with pytest.raises(NotFound) as raised:
        action(db, A, "os:alice", LATER)

    assert raised.value.status == 404
    assert raised.value.message == f"agent {A} not found"
    assert audit(db) == []


def test_purge_pending(db: sqlite3.Connection) -> None:
    old = NOW - dt.timedelta(days=8)
    assert store.create_pending_txn(db, A, "ws1", KEY_A, "", old)
    assert store.create_pending_txn(db, B, "ws2", KEY_B, "", NOW)
    assert store.create_registered_txn(db, C, "ws3", KEY_A, "", old)
    db.execute(
        "INSERT INTO agents (guid, hostname, state, created_at) "
        "VALUES (?, 'ws4', 'pending', NULL)",
        (D,),
    )

    purged = store.purge_pending_txn(db, NOW - dt.timedelta(days=7))

    assert purged == [A]
    assert [r.guid for r in store.list_txn(db)] == [D, C, B]


def test_purge_pending_reads_go_local_times(tmp_path: Path) -> None:
    path = tmp_path / "agents.db"
    make_go_db(path)
    connection = store.connect(path)

    # C was created at 2025-02-20 08:00 UTC (09:00+01:00).
    before = store.purge_pending_txn(
        connection, dt.datetime(2025, 2, 20, 8, 0, 0, tzinfo=UTC)
    )
    after = store.purge_pending_txn(
        connection, dt.datetime(2025, 2, 20, 8, 0, 1, tzinfo=UTC)
    )

    assert (before, after) == ([], [C])
    connection.close()


def test_a_failed_action_rolls_back(db: sqlite3.Connection) -> None:
    registered(db, A, "ws1")
    registered(db, B, "ws2", KEY_B)
    pending(db, C, "ws1", KEY_A)
    pending(db, D, "ws2", KEY_B)

    with pytest.raises(Conflict):
        store.approve_txn(db, D, "os:alice", LATER)

    assert db.in_transaction is False
    store.approve_txn(db, C, "os:alice", LATER, replace_existing=True)
    assert [(r.guid, r.state) for r in store.list_txn(db)] == [
        (A, "revoked"),
        (B, "registered"),
        (C, "registered"),
        (D, "pending"),
    ]


# ------------------------------------------------------------ the async store


@pytest.fixture
def pool() -> Iterator[ThreadPoolService]:
    service = ThreadPoolService("db", 1, reactor)
    service.startService()
    yield service
    service.stopService()


@pytest_twisted.ensureDeferred
async def test_agent_store_runs_txn_functions_in_its_pool(
    tmp_path: Path, pool: ThreadPoolService
) -> None:
    path = tmp_path / "agents.db"
    agents = AgentStore(path, pool)
    try:
        created = await agents.run(
            store.create_pending_txn, A, "ws1", KEY_A, "10.0.0.1", NOW
        )
        result = await agents.run(store.approve_txn, A, "os:alice", LATER)
        record = await agents.run(store.get_txn, A)
        missing = await agents.run(store.get_txn, B)
        with pytest.raises(NotFound):
            await agents.run(store.revoke_txn, B, "os:alice", LATER)
    finally:
        agents.close()

    assert created is True
    assert result.record.state == "registered"
    assert record is not None
    assert (record.guid, record.state, record.key_fingerprint) == (
        A,
        "registered",
        KEY_A,
    )
    assert missing is None
    # What the director wrote, a second connection (dcvixctl) reads.
    other = store.connect(path)
    assert state_of(other, A) == "registered"
    other.close()
