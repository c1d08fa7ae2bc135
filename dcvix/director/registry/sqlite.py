"""The SQLite engine: ``agents.db`` (WAL), one connection, one writer at a time.

The director runs the registry's statements in a one-thread pool on one
connection; ``dcvixctl`` opens its own and runs them inline. SQLite's locking
(``BEGIN IMMEDIATE``, WAL) makes both safe on one file, and a second,
read-only connection watches ``PRAGMA data_version`` so that the director's
memory of agent records follows every commit, its own and ``dcvixctl``'s.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from dcvix.director.registry import StoreError, StoreFull
from dcvix.director.registry.engine import DB_TIMEOUT, Runner
from dcvix.director.registry.sql import SqlRegistry
from dcvix.director.registry.sqlite_schema import connect

R = TypeVar("R")


class SqliteEngine:
    """The :class:`~.engine.Engine` of one ``agents.db``.

    Raises:
        StoreError: the file is not a usable database, or is newer than us.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = "agents.db"
        self._connection = connect(path)
        self._watch: sqlite3.Connection | None = None

    def call(self, function: Callable[..., R], *args: Any) -> R:
        """Run one statement function; a database failure becomes a StoreError.

        SQLite rolls back a transaction that found the disk full, so the file
        stays whole (:class:`StoreFull`).
        """
        try:
            return function(self._connection, *args)
        except sqlite3.Error as error:
            full = getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            raise (StoreFull if full else StoreError)(f"agents.db: {error}") from None

    def version(self) -> int:
        """SQLite's ``data_version`` as the watching connection sees it.

        That connection never writes, so the value changes exactly when a
        commit of any other connection lands: the director's own and
        ``dcvixctl``'s alike. A few microseconds, never a wait on a writer (WAL).
        """
        if self._watch is None:
            self._watch = sqlite3.connect(
                self.path,
                timeout=DB_TIMEOUT,
                isolation_level=None,
                check_same_thread=False,
            )
        try:
            row = self._watch.execute("PRAGMA data_version").fetchone()
        except sqlite3.Error as error:
            raise StoreError(f"agents.db: {error}") from None
        return int(row[0])

    def close(self) -> None:
        """Close both connections."""
        self._connection.close()
        if self._watch is not None:
            self._watch.close()


class SqliteRegistry(SqlRegistry):
    """The registry on ``agents.db`` at ``path`` (created or upgraded on open)."""

    def __init__(self, path: Path, runner: Runner) -> None:
        super().__init__(SqliteEngine(path), runner)
        self.path = path
