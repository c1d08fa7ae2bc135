"""``agents.db``: its schema and migrations, and its connection as statements see it.

Version 0 is Go dcvix's table (or an empty file); each migration moves the
database one version up inside one transaction, and a database newer than this
code is refused rather than misread.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dcvix.common.files import fsync_directory
from dcvix.director.registry import REGISTERED, StoreError, UniqueViolation
from dcvix.director.registry.engine import (
    AUDIT_MIGRATION,
    DB_TIMEOUT,
    IDENTITY_TABLE,
    LOGIN_TABLES,
    REPORT_TABLES,
    SESSIONS_COLUMN,
)


class transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (or ``ROLLBACK`` on any exception)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __enter__(self) -> None:
        self._connection.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        if kind is not None:
            self._abandon()
            return
        try:
            self._connection.execute("COMMIT")
        except sqlite3.Error:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """``ROLLBACK``, unless SQLite already rolled back by itself.

        It does on a full disk or an I/O error: a second ``ROLLBACK`` would
        raise "no transaction is active" in place of the error that matters,
        and a failed ``COMMIT`` left open would refuse every later ``BEGIN``.
        """
        if self._connection.in_transaction:
            self._connection.execute("ROLLBACK")


class SqliteConnection:
    """A ``sqlite3`` connection as :class:`~.engine.Connection`.

    Statements are SQLite's own (``?`` placeholders); a broken unique
    constraint is :class:`~dcvix.director.registry.UniqueViolation`, as on
    every engine.
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.raw = connection

    def execute(self, query: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Run one statement."""
        try:
            return self.raw.execute(query, params)
        except sqlite3.IntegrityError as error:
            if "UNIQUE" in str(error):
                raise UniqueViolation(f"agents.db: {error}") from None
            raise

    def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement per row."""
        self.raw.executemany(query, rows)

    def transaction(self, agents: bool = True) -> transaction:
        """``BEGIN IMMEDIATE``: one writer at a time, readers never wait (WAL).

        ``agents`` does not matter here: ``data_version`` moves on any commit.
        """
        return transaction(self.raw)

    def close(self) -> None:
        """Close the connection."""
        self.raw.close()


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


def _add_columns(connection: sqlite3.Connection, columns: dict[str, str]) -> None:
    have = {row[1] for row in connection.execute("PRAGMA table_info(agents)")}
    for column, kind in columns.items():
        if column not in have:
            connection.execute(f"ALTER TABLE agents ADD COLUMN {column} {kind}")


def _to_1(connection: sqlite3.Connection) -> None:
    """Go's table (or none) extended with our columns; audit and revoked tokens."""
    connection.execute(f"CREATE TABLE IF NOT EXISTS agents ({_GO_COLUMNS})")
    _add_columns(
        connection,
        {
            "key_fingerprint": "TEXT",
            "cert_expires_at": "DATETIME",
            "address": "TEXT",
            "state_changed_at": "DATETIME",
        },
    )
    connection.execute(
        "CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY, "
        "time DATETIME NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, "
        "target TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '')"
    )
    connection.execute(
        "CREATE TABLE IF NOT EXISTS revoked_tokens (hash TEXT PRIMARY KEY, "
        "expires_at DATETIME NOT NULL)"
    )


def _to_2(connection: sqlite3.Connection) -> None:
    """Claims; registered hostnames unique by constraint; indexes for lookups.

    Registered agents sharing a hostname can only come from a Go ``agents.db``
    (CONTRACT §3: kept and flagged, never a reason to refuse to start): all but
    the first of each name are flagged ``adopted_duplicate`` before the unique
    index, which leaves flagged rows out, is made.
    """
    _add_columns(
        connection,
        {
            "claimed_key": "TEXT",
            "claimed_at": "DATETIME",
            "adopted_duplicate": "INTEGER NOT NULL DEFAULT 0",
        },
    )
    connection.execute(
        "UPDATE agents SET adopted_duplicate = 1 WHERE state = ? AND rowid NOT IN "
        "(SELECT MIN(rowid) FROM agents WHERE state = ? GROUP BY lower(hostname))",
        (REGISTERED, REGISTERED),
    )
    connection.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS agents_registered_hostname "
        f"ON agents (lower(hostname)) WHERE state = '{REGISTERED}' "
        "AND adopted_duplicate = 0"
    )
    connection.execute(
        "CREATE INDEX IF NOT EXISTS agents_hostname ON agents (lower(hostname))"
    )
    connection.execute(
        "CREATE INDEX IF NOT EXISTS agents_state ON agents (state, created_at)"
    )


def _to_3(connection: sqlite3.Connection) -> None:
    """What the directors of a store share: CA fingerprint, token key check."""
    connection.execute(IDENTITY_TABLE)


def _to_4(connection: sqlite3.Connection) -> None:
    """Login failures and locks shared by the directors of a store."""
    for statement in LOGIN_TABLES:
        connection.execute(statement)


def _to_5(connection: sqlite3.Connection) -> None:
    """Agents' last reports and connection grants, shared by a store's directors."""
    for statement in REPORT_TABLES:
        connection.execute(statement)


def _to_6(connection: sqlite3.Connection) -> None:
    """A shared report's sessions kept apart from the rest of it."""
    connection.execute(SESSIONS_COLUMN)


def _to_7(connection: sqlite3.Connection) -> None:
    """Where each audited request came from and its outcome; the trail by time.

    Older lines keep ``ok`` and no address (a failed login's address was its
    target until now). The index serves retention and ``since``/``until``.
    """
    for statement in AUDIT_MIGRATION:
        connection.execute(statement)


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _to_1,
    _to_2,
    _to_3,
    _to_4,
    _to_5,
    _to_6,
    _to_7,
)
SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path) -> SqliteConnection:
    """Open ``agents.db`` (0600, WAL), creating or upgrading its tables.

    Raises:
        StoreError: not a database (corrupt, a folder), or newer than this code.
    """
    try:
        connection = sqlite3.connect(
            path, timeout=DB_TIMEOUT, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as error:
        raise StoreError(f"{path}: {error}") from None
    try:
        os.chmod(path, 0o600)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute(f"PRAGMA busy_timeout={int(DB_TIMEOUT * 1000)}")
        migrate(connection)
    except (sqlite3.Error, OSError) as error:
        connection.close()
        raise StoreError(f"{path}: {error}") from None
    except StoreError as error:
        connection.close()
        raise StoreError(f"{path}: {error}") from None
    return SqliteConnection(connection)


def migrate(connection: sqlite3.Connection) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION`, one version per transaction."""
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"schema version {version} is newer than this dcvix ({SCHEMA_VERSION}): "
            "upgrade dcvix"
        )
    for number in range(version, SCHEMA_VERSION):
        with transaction(connection):
            MIGRATIONS[number](connection)
            connection.execute(f"PRAGMA user_version={number + 1}")


def check_database(path: Path) -> None:
    """An existing ``agents.db`` that SQLite opens and finds sound.

    For a director start beside existing CA files: a file that is not a
    database, an emptied one (SQLite would take 0 bytes for a new, empty
    database) or one with damaged pages must stop it, not start it with an
    empty registry or fail later on every request.

    Raises:
        StoreError: one line, naming ``path``: not a file, empty, not readable,
            or not a usable SQLite database.
    """
    try:
        info = path.stat()
    except OSError as error:
        raise StoreError(f"{path} cannot be read: {error.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a special file"
        raise StoreError(f"{path} is not a file (it is {kind})")
    if info.st_size == 0:
        raise StoreError(f"{path} is empty (0 bytes)")
    if not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(f"{path} is not readable and writable by this user")
    try:
        # mode=rw: never create the file, whatever happens to it meanwhile.
        connection = sqlite3.connect(
            f"{path.absolute().as_uri()}?mode=rw", uri=True, timeout=DB_TIMEOUT
        )
    except sqlite3.Error as error:
        raise StoreError(f"{path} is not a usable SQLite database ({error})") from None
    try:
        verdict = connection.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error as error:
        raise StoreError(f"{path} is not a usable SQLite database ({error})") from None
    finally:
        connection.close()
    if verdict != [("ok",)]:
        first = " ".join(str(verdict[0][0]).split()) if verdict else "no answer"
        raise StoreError(
            f"{path} is not a usable SQLite database (quick_check: {first})"
        )


def create_database(path: Path) -> None:
    """A new ``agents.db`` with the current schema (0600), in place whole or not at all.

    Built beside ``path`` and renamed over it, so that a crash never leaves an
    empty or half-made database behind (which a later start would refuse).

    Raises:
        StoreError: it cannot be made.
    """
    temp = path.with_name(f".{path.name}.new")
    sidecars = [Path(f"{temp}{suffix}") for suffix in ("", "-wal", "-shm", "-journal")]
    try:
        for leftover in sidecars:
            leftover.unlink(missing_ok=True)
        connect(temp).close()
        # The last connection closed: SQLite folded the WAL into the file and
        # removed it.
        descriptor = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temp, path)
        fsync_directory(path.parent)
    except OSError as error:
        raise StoreError(f"{path}: {error.strerror}") from None
    finally:
        for leftover in sidecars:
            leftover.unlink(missing_ok=True)
