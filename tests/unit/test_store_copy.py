"""``dcvixctl store copy``: agents.db into PostgreSQL, idempotently, all or nothing."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres import Postgres, PostgresStore, postgres_fixture  # noqa: F401

from dcvix import ctl
from dcvix.director.registry import AuditEntry
from dcvix.director.registry import sql as statements
from dcvix.director.registry.engine import Connection
from dcvix.director.registry.postgres import describe
from dcvix.director.registry.sqlite_schema import SqliteConnection, connect

NOW = dt.datetime(2026, 12, 7, 12, 0, 0, 250000, tzinfo=dt.UTC)
A = "11111111-1111-4111-8111-111111111111"
B = "22222222-2222-4222-8222-222222222222"
C = "33333333-3333-4333-8333-333333333333"
D = "44444444-4444-4444-8444-444444444444"
KEY = "ab" * 32


@pytest.fixture
def pg(postgres: Postgres) -> PostgresStore:
    return PostgresStore(postgres)


@pytest.fixture
def target(pg: PostgresStore) -> Iterator[Connection]:
    """A connection to the PostgreSQL store copied into."""
    connection = pg.connection()
    yield connection
    connection.close()


@pytest.fixture
def password_file(postgres: Postgres, tmp_path: Path) -> str:
    path = tmp_path / "db-password"
    path.write_text(postgres.password + "\n")
    path.chmod(0o600)
    return str(path)


def filled_agents_db(path: Path) -> SqliteConnection:
    """An agents.db as a director leaves it, with a Go row and a Go time."""
    db = connect(path)
    assert statements.create_registered_txn(db, A, "ws1", KEY, "10.0.0.1", NOW, "os:a")
    statements.record_issue_txn(db, A, 0xBEEF, NOW + dt.timedelta(days=14), "", NOW)
    assert statements.create_pending_txn(db, B, "ws2", KEY, "10.0.0.2", NOW)
    # Adopted from Go: its own time text, no key, a duplicate hostname.
    db.raw.execute(
        "INSERT INTO agents (guid, hostname, state, created_at, adopted_duplicate) "
        "VALUES (?, 'WS1', 'registered', '2025-03-01 10:20:30.123456789+01:00', 1)",
        (C,),
    )
    assert statements.revoke_token_txn(db, "h1", NOW + dt.timedelta(hours=1))
    statements.audit_txn(db, AuditEntry(NOW, "os:eve", "login", "eve", "ok"))
    return db


def copy(source: str, target: str, password_file: str) -> int:
    return ctl.main(
        [
            "store",
            "copy",
            "--from",
            source,
            "--to",
            target,
            "--password-file",
            password_file,
        ]
    )


def test_agents_db_is_copied_whole_and_a_second_copy_adds_nothing(
    pg: PostgresStore,
    target: Connection,
    password_file: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "agents.db"
    source = filled_agents_db(path)

    assert copy(f"sqlite://{path}", pg.url, password_file) == 0

    assert capsys.readouterr().out == (
        f"copied sqlite://{path} into {describe(pg.url)}\n"
        "  agents: 3 copied, 0 already there\n"
        "  revoked tokens: 1 copied, 0 already there\n"
        "  audit lines: 2 copied, 0 already there\n"
    )
    # The same records, read back through the same statements on each engine.
    assert statements.list_txn(target) == statements.list_txn(source)
    assert statements.audit_list_txn(target) == statements.audit_list_txn(source)
    assert statements.token_revoked_txn(target, "h1")
    go_row = statements.get_txn(target, C)
    assert go_row is not None
    assert go_row.created_at == dt.datetime(
        2025, 3, 1, 9, 20, 30, 123456, tzinfo=dt.UTC
    )

    assert copy(f"sqlite://{path}", pg.url, password_file) == 0

    assert capsys.readouterr().out.splitlines()[1:] == [
        "  agents: 0 copied, 3 already there",
        "  revoked tokens: 0 copied, 1 already there",
        "  audit lines: 0 copied, 2 already there",
    ]
    assert len(statements.audit_list_txn(target)) == 2
    source.close()


def test_an_agent_whose_hostname_is_taken_there_is_named_not_copied(
    pg: PostgresStore,
    target: Connection,
    password_file: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "agents.db"
    filled_agents_db(path).close()
    assert statements.create_registered_txn(target, D, "ws1", KEY, "", NOW, "os:b")

    assert copy(f"sqlite://{path}", pg.url, password_file) == 0

    out = capsys.readouterr().out.splitlines()
    assert out[1] == "  agents: 2 copied, 0 already there"
    assert out[-1] == (
        f"  not copied, their hostname is registered to another agent there: {A}"
    )
    assert {r.guid: r.hostname for r in statements.list_txn(target)} == {
        B: "ws2",
        C: "WS1",
        D: "ws1",
    }


def test_a_copy_that_fails_leaves_the_target_as_it_was(
    pg: PostgresStore,
    target: Connection,
    password_file: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "agents.db"
    filled_agents_db(path).close()
    database = pg.url.rsplit("/", 1)[1]
    # The target refuses audit lines: agents and tokens were inserted before.
    pg.cluster.admin(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'no audit here'; END $$",
        database,
    )
    pg.cluster.admin(
        "CREATE TRIGGER refuse BEFORE INSERT ON audit "
        "FOR EACH ROW EXECUTE FUNCTION refuse()",
        database,
    )

    assert copy(f"sqlite://{path}", pg.url, password_file) == 2

    err = capsys.readouterr().err
    assert err.startswith(f"{describe(pg.url)}: no audit here")
    assert statements.list_txn(target) == []
    assert not statements.token_revoked_txn(target, "h1")


def test_a_missing_source_changes_nothing_and_says_so(
    pg: PostgresStore,
    password_file: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = tmp_path / "nothing.db"

    assert copy(f"sqlite://{missing}", pg.url, password_file) == 2

    assert capsys.readouterr().err == f"{missing} does not exist\n"
    assert not missing.exists()


def test_postgresql_back_into_a_new_agents_db(
    pg: PostgresStore,
    password_file: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = tmp_path / "agents.db"
    source = filled_agents_db(first)
    assert copy(f"sqlite://{first}", pg.url, password_file) == 0
    back = tmp_path / "back.db"

    assert copy(pg.url, f"sqlite://{back}", password_file) == 0

    assert "agents: 3 copied" in capsys.readouterr().out
    copied = connect(back)
    assert statements.list_txn(copied) == statements.list_txn(source)
    raw = sqlite3.connect(back)
    assert raw.execute("SELECT count(*) FROM audit").fetchone() == (2,)
    raw.close()
    copied.close()
    source.close()
