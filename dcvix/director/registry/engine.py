"""What the registry's statements need from a database engine, and where they run.

The statements (:mod:`.sql`) are written once, in the SQL both engines speak
(``?`` placeholders, ``ON CONFLICT DO NOTHING``, timestamps written as text in
one format), as functions of a :class:`Connection`. An engine (:mod:`.sqlite`,
:mod:`.postgres`) adapts its driver to that shape, gives a transaction the
same meaning on both (writers one at a time, as SQLite's ``BEGIN IMMEDIATE``),
and turns its driver's errors into :class:`~dcvix.director.registry.StoreError`.
This is the split of Synapse's ``BaseDatabaseEngine``, kept to what we use.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, TimeoutError, fail, succeed
from twisted.python.failure import Failure

from dcvix.common.threads import ThreadPoolService
from dcvix.director.registry import StoreError

R = TypeVar("R")

# The same on both engines (schema version 3).
IDENTITY_TABLE = "CREATE TABLE identity (name TEXT PRIMARY KEY, value TEXT NOT NULL)"
# Version 4: login failures and locks that every director of a store sees
# (times are the reactor's seconds since the epoch).
LOGIN_TABLES = (
    "CREATE TABLE login_failures (kind TEXT NOT NULL, name TEXT NOT NULL, "
    "at DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX login_failures_key ON login_failures (kind, name, at)",
    "CREATE TABLE login_locks (kind TEXT NOT NULL, name TEXT NOT NULL, "
    "until DOUBLE PRECISION NOT NULL, PRIMARY KEY (kind, name))",
)

# Version 5: each agent's last report and the connection tokens issued, for
# the other directors of a store
# (``change`` orders them; writers take turns, so it grows in commit order).
REPORT_TABLES = (
    "CREATE TABLE server_reports (guid TEXT PRIMARY KEY, hostname TEXT NOT NULL, "
    "peer TEXT NOT NULL, received_at DOUBLE PRECISION NOT NULL, "
    "report TEXT NOT NULL, origin TEXT NOT NULL, change BIGINT NOT NULL)",
    "CREATE INDEX server_reports_change ON server_reports (change)",
    # The connection tokens issued per session id, for every director's
    # Gateway resolver (``change`` numbers them as it does reports).
    "CREATE TABLE connection_grants (change BIGINT PRIMARY KEY, "
    "session_id TEXT NOT NULL, server TEXT NOT NULL, "
    "expires_at DOUBLE PRECISION NOT NULL, address TEXT NOT NULL, "
    "origin TEXT NOT NULL)",
)

# Version 6: a shared report's sessions apart from the rest, as JSON text
# (NULL: the agent sent none), so that a director taking it in decodes them
# only when they differ from the agent's last.
SESSIONS_COLUMN = "ALTER TABLE server_reports ADD COLUMN sessions TEXT"

# The audit table's fields as statements write and read them (after its id).
AUDIT_FIELDS = ("time", "actor", "action", "target", "detail", "address", "outcome")

# Schema 7, both engines: an audited request's source and outcome.
AUDIT_MIGRATION = (
    "ALTER TABLE audit ADD COLUMN address TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE audit ADD COLUMN outcome TEXT NOT NULL DEFAULT 'ok'",
    "CREATE INDEX audit_time ON audit (time)",
)

# How long one statement, a lock or a connection may take before the call
# fails (a request answers 503 rather than waiting for ever).
DB_TIMEOUT = 10.0


def to_db_time(moment: dt.datetime | None) -> str | None:
    """One format for every time we write: UTC, microseconds, explicit offset.

    Text on both engines: SQLite keeps it as it is (as Go's rows are), and
    PostgreSQL reads it into its ``timestamptz`` columns.
    """
    if moment is None:
        return None
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00:00")


class Cursor(Protocol):
    """The part of a DB-API cursor the statements use."""

    @property
    def rowcount(self) -> int:
        """Rows the last statement changed."""

    def fetchone(self) -> Any:
        """The next row, or None."""

    def __iter__(self) -> Iterator[Any]:
        """The remaining rows."""


class Connection(Protocol):
    """One connection, as the statements see it."""

    def execute(self, query: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement with ``?`` placeholders."""

    def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement once per row of parameters."""

    def transaction(self, agents: bool = True) -> AbstractContextManager[None]:
        """A write transaction: other writers wait; an exception rolls it back.

        ``agents=False`` promises the transaction leaves the agents table
        alone, so agent records kept in memory stay valid after it (the
        PostgreSQL engine keeps them; SQLite's ``data_version`` moves anyway).
        Reports shared ten times a second would otherwise empty that memory each time.
        """

    def close(self) -> None:
        """Close the connection."""


class Engine(Protocol):
    """A store's database: runs statements and says when anything changed."""

    label: str

    def call(self, function: Callable[..., R], *args: Any) -> R:
        """``function(connection, *args)`` with a connection, in this thread.

        Raises:
            StoreError: the database failed (StoreFull: its disk is full).
        """

    def version(self) -> int:
        """A number that moves whenever any process commits to the store.

        Cheap and called on the reactor thread: the registry keeps records in
        memory while it stays the same.
        """

    def close(self) -> None:
        """Close every connection (after the thread pool stopped)."""


class Runner(Protocol):
    """Runs an engine's ``call`` somewhere, giving a Deferred."""

    def __call__(self, call: Callable[..., R], *args: Any) -> Deferred[R]:
        """Run ``call(*args)``."""


def inline_runner(call: Callable[..., R], *args: Any) -> Deferred[R]:
    """Run at once, in the caller's thread (``dcvixctl``, tests)."""
    try:
        return succeed(call(*args))
    except Exception:
        return fail()


def pool_runner(pool: ThreadPoolService) -> Runner:
    """Run in ``pool``: off the reactor, with a deadline."""

    def run(call: Callable[..., R], *args: Any) -> Deferred[R]:
        return pool.run(DB_TIMEOUT * 2, call, *args).addErrback(_late)

    return run


def _late(failure: Failure) -> Failure:
    """A call the pool did not finish in time is the store's failure, not ours."""
    if failure.check(TimeoutError):
        raise StoreError(
            f"the database did not answer within {DB_TIMEOUT * 2:g} s"
        ) from None
    return failure
