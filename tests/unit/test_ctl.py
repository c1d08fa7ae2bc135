"""dcvixctl: agents list, approve, deny, revoke, reactivate, delete."""

from __future__ import annotations

import datetime as dt
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dcvix import ctl
from dcvix.director.registry import sql as engine
from dcvix.director.registry.sqlite_schema import (
    SCHEMA_VERSION,
    SqliteConnection,
    connect,
)

A = "11111111-1111-4111-8111-111111111111"
B = "22222222-2222-4222-8222-222222222222"
C = "33333333-3333-4333-8333-333333333333"
D = "44444444-4444-4444-8444-444444444444"
UNKNOWN = "99999999-9999-4999-8999-999999999999"
KEY_A = "a1" * 32
KEY_B = "b2" * 32
T0 = dt.datetime(2025, 3, 1, 10, 0, 0, tzinfo=dt.UTC)
SETUP = "test:setup"
GO_TABLE = (
    "CREATE TABLE agents (guid TEXT PRIMARY KEY, hostname TEXT, "
    "state TEXT NOT NULL DEFAULT 'pending', created_at DATETIME, "
    "registered_at DATETIME, last_seen_at DATETIME, cert_serial TEXT, tags TEXT)"
)


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """UTC for the printed times, and a known OS user."""
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("LOGNAME", "alice")
    monkeypatch.delenv("SUDO_USER", raising=False)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir(mode=0o700)
    return folder


@pytest.fixture
def conf(tmp_path: Path, data_dir: Path) -> Path:
    path = tmp_path / "dcvix-director.conf"
    path.write_text(f"[director]\ndata_dir = {data_dir}\n")
    return path


@pytest.fixture
def db(data_dir: Path) -> Iterator[SqliteConnection]:
    connection = connect(data_dir / "agents.db")
    yield connection
    connection.close()


def run(conf: Path, *args: str) -> int:
    return ctl.main(["--conf", str(conf), *args])


def add(
    db: SqliteConnection,
    guid: str,
    hostname: str,
    state: str,
    key: str = KEY_A,
    created: dt.datetime = T0,
) -> None:
    if state == "registered":
        assert engine.create_registered_txn(
            db, guid, hostname, key, "10.0.0.5", created, SETUP
        )
    else:
        assert engine.create_pending_txn(db, guid, hostname, key, "10.0.0.5", created)
        if state != "pending":
            db.execute("UPDATE agents SET state = ? WHERE guid = ?", (state, guid))


def go_db(path: Path, rows: list[tuple[str, str]]) -> None:
    """A Go ``agents.db``: registered rows (guid, hostname), no keys, Go times."""
    connection = sqlite3.connect(path)
    connection.execute(GO_TABLE)
    connection.executemany(
        "INSERT INTO agents (guid, hostname, state, created_at) "
        "VALUES (?, ?, 'registered', '2025-03-01 10:20:30.123456789+01:00')",
        rows,
    )
    connection.commit()
    connection.close()


def state_of(db: SqliteConnection, guid: str) -> str | None:
    record = engine.get_txn(db, guid)
    return None if record is None else record.state


def audit(db: SqliteConnection) -> list[tuple[str, str, str]]:
    """The audit lines dcvixctl wrote (not the set-up's), oldest first."""
    return [
        (entry.actor, entry.action, entry.target)
        for entry in reversed(engine.audit_list_txn(db))
        if entry.actor != SETUP
    ]


def cells(out: str) -> list[list[str]]:
    """The rows of the ``agents list`` table below its heading, cell by cell."""
    return [
        [cell.strip() for cell in line.split("  ") if cell.strip()]
        for line in out.splitlines()[1:]
    ]


# ---------------------------------------------------------------------- list


def test_list_prints_a_table(
    conf: Path, db: SqliteConnection, capsys: pytest.CaptureFixture[str]
) -> None:
    add(db, A, "ws1", "registered")
    add(db, B, "ws2", "pending", KEY_B, T0 + dt.timedelta(hours=1))
    engine.record_issue_txn(db, A, 0xBEEF, T0 + dt.timedelta(days=14), "10.0.0.5", T0)

    assert run(conf, "agents", "list") == 0

    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [
        "GUID                                  HOSTNAME  STATE       "
        "SINCE                      ADDRESS   KEY               CERT UNTIL",
        f"{A}  ws1       registered  2025-03-01T10:00:00+00:00  10.0.0.5  "
        "a1a1a1a1a1a1a1a1  2025-03-15T10:00:00+00:00",
        f"{B}  ws2       pending     2025-03-01T11:00:00+00:00  10.0.0.5  "
        "b2b2b2b2b2b2b2b2  -",
    ]


def test_list_one_state(
    conf: Path, db: SqliteConnection, capsys: pytest.CaptureFixture[str]
) -> None:
    add(db, A, "ws1", "registered")
    add(db, B, "ws2", "pending")
    add(db, C, "ws3", "pending")

    assert run(conf, "agents", "list", "--state", "pending") == 0

    rows = [line.split()[:3] for line in capsys.readouterr().out.splitlines()]
    assert rows == [
        ["GUID", "HOSTNAME", "STATE"],
        [B, "ws2", "pending"],
        [C, "ws3", "pending"],
    ]


def test_list_flags_adopted_and_duplicate_rows(
    conf: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Go rows: no key, Go text timestamps, one hostname twice (in two cases).
    go_db(data_dir / "agents.db", [(A, "ws1"), (B, "WS1")])

    assert run(conf, "agents", "list") == 0

    assert [row[:4] for row in cells(capsys.readouterr().out)] == [
        [A, "ws1 (duplicate!)", "registered (unpinned)", "2025-03-01T09:20:30+00:00"],
        [B, "WS1 (duplicate!)", "registered (unpinned)", "2025-03-01T09:20:30+00:00"],
    ]


def test_an_adopted_agents_claim_is_listed_and_approved(
    conf: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = data_dir / "agents.db"
    go_db(path, [(A, "ws1")])
    db = connect(path)
    assert engine.claim_txn(db, A, KEY_B, "10.0.0.7", T0) == ""

    assert run(conf, "agents", "list") == 0

    assert cells(capsys.readouterr().out) == [
        [
            A,
            "ws1",
            "registered (unpinned, claim b2b2b2b2b2b2b2b2)",
            "2025-03-01T09:20:30+00:00",
            "-",
            "-",
            "-",
        ]
    ]

    assert run(conf, "agents", "approve", A) == 1  # which key, please?
    assert capsys.readouterr().err == (
        f"{A}: agent {A} has a claim for key {KEY_B}: approve it with that key\n"
    )
    assert run(conf, "agents", "approve", A, "--key", KEY_A) == 1
    assert "(the claim changed)" in capsys.readouterr().err
    assert run(conf, "agents", "approve", A, "--key", KEY_B.upper()) == 0

    out, err = capsys.readouterr()
    assert (out, err) == (f"agent {A} (ws1) approved\n", "")
    record = engine.get_txn(db, A)
    assert record is not None
    assert (record.state, record.key_fingerprint, record.claimed_key) == (
        "registered",
        KEY_B,
        "",
    )
    assert audit(db) == [
        ("address 10.0.0.7", "claim key", A),
        ("os:alice", "approve claim", A),
    ]
    assert run(conf, "agents", "list") == 0
    assert [row[2:6] for row in cells(capsys.readouterr().out)] == [
        ["registered", "2025-03-01T09:20:30+00:00", "-", "b2b2b2b2b2b2b2b2"]
    ]
    db.close()


def test_list_empty(
    conf: Path, db: SqliteConnection, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(conf, "agents", "list") == 0
    assert capsys.readouterr().out == "no agents\n"

    add(db, A, "ws1", "pending")
    assert run(conf, "agents", "list", "--state", "denied") == 0
    assert capsys.readouterr().out == "no denied agents\n"


def test_list_refuses_an_unknown_state(
    conf: Path, db: SqliteConnection, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        run(conf, "agents", "list", "--state", "approved")

    assert raised.value.code == 2
    assert "invalid choice: 'approved'" in capsys.readouterr().err


# ------------------------------------------------------------------- approve


def test_approve_several(
    conf: Path, db: SqliteConnection, capsys: pytest.CaptureFixture[str]
) -> None:
    add(db, A, "ws1", "pending")
    add(db, B, "ws2", "pending", KEY_B)

    assert run(conf, "agents", "approve", A, B) == 0

    out, err = capsys.readouterr()
    assert out == f"agent {A} (ws1) approved\nagent {B} (ws2) approved\n"
    assert err == ""
    assert (state_of(db, A), state_of(db, B)) == ("registered", "registered")
    assert audit(db) == [("os:alice", "approve", A), ("os:alice", "approve", B)]


def test_approve_what_was_listed_only(
    conf: Path, db: SqliteConnection, capsys: pytest.CaptureFixture[str]
) -> None:
    """--hostname/--fingerprint: refused if the pending agent changed since."""
    add(db, A, "ws-finance", "pending")

    assert run(conf, "agents", "approve", "--hostname", "ws-harmless", A) == 1
    assert (
        "now asks for hostname ws-finance, not ws-harmless" in capsys.readouterr().err
    )
    assert run(conf, "agents", "approve", "--fingerprint", KEY_B, A) == 1
    assert "look at it again before approving" in capsys.readouterr().err
    assert state_of(db, A) == "pending"

    assert run(conf, "agents", "approve", "--hostname", "ws-finance", A) == 0
    assert state_of(db, A) == "registered"


def test_approve_hostname_conflict_is_refused(
    conf: Path, db: SqliteConnection, capsys: pytest.CaptureFixture[str]
) -> None:
    add(db, A, "ws1", "registered")
    add(db, B, "ws1", "pending", KEY_B)

    assert run(conf, "agents", "approve", B) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"{B}: hostname ws1 is already registered to agent {A}; "
        "approve with replace to revoke it\n"
    )
    assert (state_of(db, A), state_of(db, B)) == ("registered", "pending")
    assert audit(db) == []


def test_approve_replace_revokes_the_old_agent(
    conf: Path, db: SqliteConnection, capsys: pytest.CaptureFixture[str]
) -> None:
    add(db, A, "ws1", "registered")
    add(db, B, "ws1", "pending", KEY_B)

    assert run(conf, "agents", "approve", "--replace", B) == 0

    assert capsys.readouterr().out == (
        f"agent {B} (ws1) approved\nagent {A} revoked: replaced by {B}\n"
    )
    assert (state_of(db, A), state_of(db, B)) == ("revoked", "registered")
    assert audit(db) == [("os:alice", "revoke", A), ("os:alice", "approve", B)]


def test_approve_this_machine_warns(
    conf: Path, db: SqliteConnection, capsys: pytest.CaptureFixture[str]
) -> None:
    hostname = socket.gethostname()
    add(db, A, hostname, "pending")

    assert run(conf, "agents", "approve", A) == 0

    assert capsys.readouterr().out == (
        f"agent {A} ({hostname}) approved\n"
        f"warning: {hostname} is the director's own host name: this agent runs "
        "on the director's machine\n"
    )
    assert state_of(db, A) == "registered"


def test_approve_this_machines_fqdn_warns(
    conf: Path,
    db: SqliteConnection,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(
        ctl, "own_host_names", lambda: ["director1", "Director1.example.org"]
    )
    add(db, A, "director1.example.org", "pending")

    assert run(conf, "agents", "approve", A) == 0

    assert capsys.readouterr().out == (
        f"agent {A} (director1.example.org) approved\n"
        "warning: director1.example.org is the director's own host name: this "
        "agent runs on the director's machine\n"
    )


def test_approve_other_host_does_not_warn(
    conf: Path, db: SqliteConnection, capsys: pytest.CaptureFixture[str]
) -> None:
    hostname = "not-" + socket.gethostname()
    add(db, A, hostname, "pending")

    assert run(conf, "agents", "approve", A) == 0

    assert "warning" not in capsys.readouterr().out


def test_approve_goes_on_after_a_failure(
    conf: Path, db: SqliteConnection, capsys: pytest.CaptureFixture[str]
) -> None:
    add(db, A, "ws1", "pending")

    assert run(conf, "agents", "approve", UNKNOWN, A) == 1

    out, err = capsys.readouterr()
    assert err == f"{UNKNOWN}: agent {UNKNOWN} not found\n"
    assert out == f"agent {A} (ws1) approved\n"
    assert state_of(db, A) == "registered"


# ----------------------------------------------------------- the other verbs


def test_deny_revoke_reactivate_delete(
    conf: Path, db: SqliteConnection, capsys: pytest.CaptureFixture[str]
) -> None:
    add(db, A, "ws1", "pending")
    add(db, B, "ws2", "registered", KEY_B)

    assert run(conf, "agents", "deny", A) == 0
    assert state_of(db, A) == "denied"
    assert run(conf, "agents", "revoke", B) == 0
    assert state_of(db, B) == "revoked"
    assert run(conf, "agents", "reactivate", A, B) == 0
    assert (state_of(db, A), state_of(db, B)) == ("pending", "registered")
    assert run(conf, "agents", "delete", A) == 0
    assert state_of(db, A) is None

    assert capsys.readouterr().out == (
        f"agent {A} (ws1) denied\n"
        f"agent {B} (ws2) revoked\n"
        f"agent {A} (ws1) reactivated\n"
        f"agent {B} (ws2) reactivated\n"
        f"agent {A} (ws1) deleted\n"
    )
    assert audit(db) == [
        ("os:alice", "deny", A),
        ("os:alice", "revoke", B),
        ("os:alice", "reactivate", A),
        ("os:alice", "reactivate", B),
        ("os:alice", "delete", A),
    ]


def test_wrong_state_is_exit_1(
    conf: Path, db: SqliteConnection, capsys: pytest.CaptureFixture[str]
) -> None:
    add(db, A, "ws1", "pending")

    assert run(conf, "agents", "revoke", A) == 1

    assert capsys.readouterr().err == (
        f"{A}: agent {A} is pending, it cannot be revoked\n"
    )
    assert state_of(db, A) == "pending"


@pytest.mark.parametrize("verb", ["approve", "deny", "revoke", "reactivate", "delete"])
def test_unknown_guid_is_exit_1(
    conf: Path,
    db: SqliteConnection,
    capsys: pytest.CaptureFixture[str],
    verb: str,
) -> None:
    assert run(conf, "agents", verb, UNKNOWN) == 1

    out, err = capsys.readouterr()
    assert (out, err) == ("", f"{UNKNOWN}: agent {UNKNOWN} not found\n")
    assert audit(db) == []


def test_sudo_user_is_recorded(
    conf: Path,
    db: SqliteConnection,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    add(db, A, "ws1", "pending")
    monkeypatch.setenv("LOGNAME", "root")
    monkeypatch.setenv("SUDO_USER", "bob")

    assert run(conf, "agents", "approve", A) == 0

    assert audit(db) == [("os:root (sudo by bob)", "approve", A)]


# -------------------------------------------------------------- bad set-ups


def test_missing_agents_db_is_exit_2_and_creates_nothing(
    conf: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(conf, "agents", "list") == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"{data_dir / 'agents.db'} does not exist: has the director been started?\n"
    )
    assert list(data_dir.iterdir()) == []


def test_missing_config_file_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.conf"

    assert run(missing, "agents", "list") == 2

    assert capsys.readouterr().err.startswith(f"{missing}: cannot read config file")


def test_invalid_config_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.conf"
    path.write_text("[director]\nmax_pending = many\n")

    assert run(path, "agents", "list") == 2

    assert capsys.readouterr().err.startswith(f"{path}: [director] max_pending:")


def test_no_command_is_a_usage_error(conf: Path) -> None:
    with pytest.raises(SystemExit) as raised:
        run(conf)

    assert raised.value.code == 2


@pytest.mark.parametrize("command", [["list"], ["approve", A]])
def test_a_corrupt_agents_db_is_one_line_not_a_traceback(
    conf: Path,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    path = data_dir / "agents.db"
    path.write_bytes(b"this is not a database" * 100)

    assert run(conf, "agents", *command) == 2

    out, err = capsys.readouterr()
    assert (out, err) == ("", f"{path}: file is not a database\n")
    assert path.read_bytes() == b"this is not a database" * 100


def test_a_newer_agents_db_is_refused(
    conf: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = data_dir / "agents.db"
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 99")
    raw.close()

    assert run(conf, "agents", "list") == 2

    assert capsys.readouterr().err == (
        f"{path}: schema version 99 is newer than this dcvix "
        f"({SCHEMA_VERSION}): upgrade dcvix\n"
    )
