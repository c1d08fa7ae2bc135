"""One director at a time does the store's periodic work.

Purging pending agents and forgetting expired logged-out tokens change the
shared store, so with several directors on one PostgreSQL database exactly one
of them (the leader) does it. The leader holds a session advisory lock on a
connection of its own: PostgreSQL releases it the moment that session ends (a
director stopped, killed, or cut off: the server's TCP keepalives end a silent
session within about 25 s), and another director takes it at its next try.
Each director tries, or checks that it still holds the lock, every
:data:`LEADER_CHECK` seconds, so a takeover takes at most that long after the
old session ended. Two leaders at once last at most one check; the work is
idempotent.

With SQLite there is one director: it always leads.
"""

from __future__ import annotations

from typing import Any, Protocol

import psycopg
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from dcvix.common.threads import ThreadPoolService
from dcvix.director.registry.postgres import PostgresEngine
from dcvix.director.registry.postgres_schema import LEADER_LOCK

log = Logger()

LEADER_CHECK = 5.0


class Leadership(Protocol):
    """Whether this director does the store's periodic work now."""

    def leads(self) -> bool:
        """True while this director is the leader."""


class SoleDirector:
    """The leadership of a store only one director uses (SQLite)."""

    def leads(self) -> bool:  # noqa: D102
        return True


class LeaderLease(Service):
    """The advisory lock that makes one director of a PostgreSQL store the leader.

    Args:
        engine: the store's engine (connections are made outside its pool).
        pool: where the blocking calls run.
        clock: schedules the checks.
        check: seconds between tries (and checks while leading).
    """

    def __init__(
        self,
        engine: PostgresEngine,
        pool: ThreadPoolService,
        clock: IReactorTime,
        check: float = LEADER_CHECK,
    ) -> None:
        self._engine = engine
        self._pool = pool
        self._clock = clock
        self._check = check
        self._connection: psycopg.Connection[Any] | None = None
        # Whether the session on ``_connection`` holds the lock (pool side).
        self._leading_session = False
        self._leading = False
        self._call: IDelayedCall | None = None
        # A check is running in the pool: only it may touch ``_connection``.
        self._checking = False
        self.checks = 0

    def leads(self) -> bool:
        """True from the check that took the lock until one that finds it lost."""
        return self._leading

    def startService(self) -> None:
        """Try at once, then every ``check`` seconds."""
        super().startService()
        self._call = self._clock.callLater(0, self._try)

    def stopService(self) -> None:
        """Stop leading, and free the lock for another director at once."""
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._set(False, "stopping")
        if not self._checking:  # else the check's end closes it (``_held``)
            self._close()

    def _close(self) -> None:
        """End the session: the lock is free at once."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self._leading_session = False

    def _try(self) -> None:
        self._call = None
        self.checks += 1
        self._checking = True
        # No deadline: libpq's and TCP's timeouts bound the check, and
        # ``_checking`` must stay set until the thread is done with the
        # connection.
        self._pool.run(None, self._hold).addBoth(self._held)

    def _hold(self) -> bool:
        """In the pool: take the lock, or check that the session holding it lives."""
        try:
            if self._connection is None or self._connection.closed:
                self._connection = self._engine.connect()
                self._leading_session = False
            if self._leading_session:
                self._connection.execute("SELECT 1")
                return True
            row = self._connection.execute(
                "SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)
            ).fetchone()
            self._leading_session = bool(row and row[0])
            return self._leading_session
        except psycopg.Error:
            if self._connection is not None:
                self._connection.close()
            self._connection = None
            self._leading_session = False
            return False

    def _held(self, result: object) -> None:
        self._checking = False
        if not self.running:
            # Stopped during the check, which may have taken the lock (or
            # opened a session) after the stop: let go of it now.
            self._close()
            return
        self._set(result is True, "its lock session ended")
        self._call = self._clock.callLater(self._check, self._try)

    def _set(self, leading: bool, why: str) -> None:
        if leading and not self._leading:
            log.info("this director now leads the store's periodic work")
        elif self._leading and not leading:
            # Stopping is expected; losing the lock while running is not.
            emit = log.info if why == "stopping" else log.warn
            emit(
                "this director no longer leads the store's periodic work: {why}",
                why=why,
            )
        self._leading = leading
