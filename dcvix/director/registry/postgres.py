"""The PostgreSQL engine: one database shared by several directors.

Statements run on connections of a psycopg pool (as many as the database
thread pool has threads, so no thread ever waits for a connection another
thread holds). A write transaction first takes one advisory lock, so writers
take turns across every director exactly as they do on one SQLite file, and
each statement's read-check-write logic keeps its meaning without retries.

Every director keeps agent records in memory (see
:meth:`~.sql.SqlRegistry.current`). A trigger notifies ``dcvix_agents`` on each
change of the agents table, and :class:`ChangeListener` follows that channel
from the reactor: a notification moves :meth:`PostgresEngine.version`, which
drops the memory. While the listener is not connected, the version moves on
every call, so nothing is served from memory that could be stale.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool, PoolTimeout
from twisted.internet.interfaces import IReactorFDSet, IReactorTime, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dcvix.common.threads import ThreadPoolService
from dcvix.director.registry import StoreError, StoreFull, UniqueViolation
from dcvix.director.registry.engine import DB_TIMEOUT
from dcvix.director.registry.postgres_schema import (
    AGENTS_CHANNEL,
    IDENTITY_LOCK,
    WRITE_LOCK,
    migrate,
)

log = Logger()
R = TypeVar("R")
# The pool's own warnings (each failed reconnection) would reach stderr
# unthrottled; the listener's lines and the 503 answers' say it already.
logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())
logging.getLogger("psycopg.pool").propagate = False

# Seconds between attempts to listen again after the listening connection broke.
LISTEN_RETRY = 2.0
_SESSION_OPTIONS = (
    f"-c statement_timeout={int(DB_TIMEOUT * 1000)} "
    f"-c lock_timeout={int(DB_TIMEOUT * 1000)} "
    f"-c idle_in_transaction_session_timeout={int(DB_TIMEOUT * 3000)} "
    "-c TimeZone=UTC "
    # The server notices a director that vanished (no FIN) within ~25 s,
    # ending its sessions and freeing its locks (see dcvix.director.leader).
    "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 "
    "-c tcp_keepalives_count=3"
)


def describe(url: str) -> str:
    """``postgresql://host:port/db`` for messages: never a user's password."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"postgresql://{parts.hostname or ''}{port}{parts.path}"


def _message(error: BaseException | None) -> str:
    """A driver error in one line (libpq's messages span several)."""
    return " ".join(str(error).split()) or type(error).__name__


class PostgresConnection:
    """A psycopg connection (autocommit) as :class:`~.engine.Connection`."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self.raw = connection
        # Whether a committed transaction may have changed the agents table.
        self.agents_changed = False

    def execute(self, query: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        """Run one statement written with ``?`` placeholders."""
        try:
            return self.raw.execute(_convert(query), params)
        except psycopg.errors.UniqueViolation as error:
            raise UniqueViolation(_message(error)) from None

    def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement per row."""
        with self.raw.cursor() as cursor:
            cursor.executemany(_convert(query), rows)

    @contextmanager
    def transaction(self, agents: bool = True) -> Iterator[None]:
        """A transaction that holds the store's one write lock until it ends.

        ``agents=False``: it leaves the agents table alone (see
        :meth:`~.engine.Connection.transaction`).
        """
        with self.raw.transaction():
            self.raw.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            yield
        self.agents_changed = self.agents_changed or agents

    def close(self) -> None:
        """Close the connection."""
        self.raw.close()


_CONVERTED: dict[str, str] = {}


def _convert(query: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (our statements have no ``%``)."""
    converted = _CONVERTED.get(query)
    if converted is None:
        converted = _CONVERTED[query] = query.replace("%", "%%").replace("?", "%s")
    return converted


class PostgresEngine:
    """The :class:`~.engine.Engine` of one PostgreSQL database.

    Args:
        url: ``postgresql://user@host:port/database`` (no password in it).
        password: the user's password ("" for none: trust, peer, a pgpass file).
        connections: the most connections held at once.

    Raises:
        StoreError: the database cannot be reached or logged in to, or its
            schema is newer than this code; one line, naming the database.
    """

    def __init__(self, url: str, password: str, connections: int) -> None:
        self.label = describe(url)
        self._url = url
        self._kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, int(DB_TIMEOUT)),
            "options": _SESSION_OPTIONS,
            "application_name": "dcvix-director",
            # A silent connection (the listener's, above all) must fail when
            # the server vanished without a reset, not wait for ever.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": int(DB_TIMEOUT * 3000),
        }
        if password:
            self._kwargs["password"] = password
        try:
            with self.connect() as connection:
                migrate(connection)
        except psycopg.Error as error:
            raise StoreError(f"{self.label}: {_message(error)}") from None
        except StoreError as error:
            raise StoreError(f"{self.label}: {error}") from None
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            kwargs=self._kwargs,
            min_size=1,
            max_size=connections,
            timeout=DB_TIMEOUT,
            check=ConnectionPool.check_connection,
            reconnect_timeout=DB_TIMEOUT * 6,
            name="dcvix",
            open=True,
        )
        self._ticks = itertools.count()
        self._changes = next(self._ticks)
        self._listener: ChangeListener | None = None
        # Channel -> what to call on each notification (and after reconnecting).
        self.watchers: dict[str, list[Callable[[], None]]] = {}

    def watch(self, channel: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the reactor for each notification on ``channel``.

        Also after the listener connects (again): it may have missed some.
        Register before :meth:`listen`.
        """
        self.watchers.setdefault(channel, []).append(callback)

    def connect(self) -> psycopg.Connection[Any]:
        """A new connection of its own (autocommit), outside the pool."""
        return psycopg.connect(self._url, **self._kwargs)

    @contextmanager
    def start_lock(self) -> Iterator[None]:
        """Held by one starting director at a time (its identity checks).

        A session lock on a connection of its own; the checks themselves run
        through :meth:`call`. Waits at most the lock timeout.

        Raises:
            StoreError: the lock could not be taken.
        """
        try:
            connection = self.connect()
            connection.execute("SELECT pg_advisory_lock(%s)", (IDENTITY_LOCK,))
        except psycopg.Error as error:
            raise StoreError(f"{self.label}: {_message(error)}") from None
        try:
            yield
        finally:
            connection.close()  # ends the session, and with it the lock

    def call(self, function: Callable[..., R], *args: Any) -> R:
        """Run one statement function on a pooled connection.

        Raises:
            StoreError: no connection within the timeout, or the database
                failed (StoreFull: its disk is full); the transaction, if any,
                was rolled back.
        """
        try:
            with self._pool.connection() as raw:
                connection = PostgresConnection(raw)
                result = function(connection, *args)
        except PoolTimeout:
            raise StoreError(
                f"{self.label}: no connection to the database within {DB_TIMEOUT:g} s"
            ) from None
        except psycopg.errors.DiskFull as error:
            raise StoreFull(f"{self.label}: {_message(error)}") from None
        except psycopg.Error as error:
            raise StoreError(f"{self.label}: {_message(error)}") from None
        if connection.agents_changed:
            self.changed()
        return result

    def changed(self) -> None:
        """Agents changed: records kept in memory are stale."""
        self._changes = next(self._ticks)

    def version(self) -> int:
        """Moves on every commit seen; on every call while nothing is listening."""
        if self._listener is None or not self._listener.listening:
            return next(self._ticks)
        return self._changes

    def listen(self, reactor: Any, pool: ThreadPoolService) -> ChangeListener:
        """Start following other processes' changes (the director does)."""
        self._listener = ChangeListener(self, reactor, pool)
        self._listener.start()
        return self._listener

    def close(self) -> None:
        """Stop listening and close every connection."""
        if self._listener is not None:
            self._listener.stop()
        self._pool.close(timeout=DB_TIMEOUT)


@implementer(IReadDescriptor)
class ChangeListener:
    """``LISTEN`` on a connection of its own, read by the reactor.

    ``dcvix_agents`` moves the engine's version; other channels call what the
    engine's watchers registered.

    Connecting runs in the database pool; from then on the reactor reads the
    connection's socket and each notification calls the engine's
    :meth:`~PostgresEngine.changed`. A broken connection is dropped, counted as
    a change, and connected again every :data:`LISTEN_RETRY` seconds.
    """

    def __init__(self, engine: PostgresEngine, reactor: Any, pool: ThreadPoolService):
        self._engine = engine
        self._reactor = reactor
        self._pool = pool
        self._connection: psycopg.Connection[Any] | None = None
        # A copy of the connection's socket, ours to close: libpq closes its
        # own when the server goes, and the reactor must still find and
        # unregister the descriptor it watched (else a later socket reusing
        # the number is never watched).
        self._fd = -1
        self._stopped = False
        self._lost_logged = False
        self.listening = False

    def start(self) -> None:
        """Connect (again) in the pool, then read from the reactor."""
        if self._stopped:
            return
        self._pool.run(DB_TIMEOUT * 2, self._open).addCallbacks(
            self._opened, self._failed
        )

    def _open(self) -> psycopg.Connection[Any]:
        connection = self._engine.connect()
        try:
            for channel in (AGENTS_CHANNEL, *self._engine.watchers):
                connection.execute(f"LISTEN {channel}")
        except BaseException:
            connection.close()
            raise
        return connection

    def _opened(self, connection: psycopg.Connection[Any]) -> None:
        if self._stopped:
            connection.close()
            return
        self._connection = connection
        self._fd = os.dup(connection.pgconn.socket)
        assert IReactorFDSet.providedBy(self._reactor)
        self._reactor.addReader(self)
        self.listening = True
        # Anything committed before LISTEN was missed: forget what is known.
        self._engine.changed()
        for callbacks in self._engine.watchers.values():
            for callback in callbacks:
                callback()
        if self._lost_logged:
            log.info("listening to {database} again", database=self._engine.label)
            self._lost_logged = False

    def _failed(self, failure: Failure) -> None:
        if not self._lost_logged:
            log.warn(
                "cannot listen to {database} for changes, trying again every "
                "{retry:g} s: {error}",
                database=self._engine.label,
                retry=LISTEN_RETRY,
                error=_message(failure.value),
            )
            self._lost_logged = True
        self._later()

    def _later(self) -> None:
        if not self._stopped:
            assert IReactorTime.providedBy(self._reactor)
            self._reactor.callLater(LISTEN_RETRY, self.start)

    def fileno(self) -> int:
        """Our copy of the listening connection's socket (-1 once closed)."""
        return self._fd

    def doRead(self) -> None:
        """Take in what arrived; each notification is a change."""
        assert self._connection is not None
        pgconn = self._connection.pgconn
        try:
            pgconn.consume_input()
        except psycopg.Error as error:
            self._drop(_message(error))
            return
        while (notice := pgconn.notifies()) is not None:
            channel = notice.relname.decode("ascii", "replace")
            if channel == AGENTS_CHANNEL:
                self._engine.changed()
            for callback in self._engine.watchers.get(channel, ()):
                callback()

    def connectionLost(self, reason: Failure) -> None:
        """The reactor gave up on the socket."""
        self._drop(_message(reason.value))

    def _drop(self, why: str) -> None:
        self.listening = False
        self._engine.changed()
        if self._connection is not None:
            assert IReactorFDSet.providedBy(self._reactor)
            self._reactor.removeReader(self)
            os.close(self._fd)
            self._fd = -1
            self._connection.close()
            self._connection = None
        if self._stopped:
            return
        log.warn(
            "lost the connection listening to {database}: {why}",
            database=self._engine.label,
            why=why,
        )
        self._lost_logged = True
        self._later()

    def logPrefix(self) -> str:
        """Shown in Twisted's own log lines about this descriptor."""
        return "postgres-listen"

    def stop(self) -> None:
        """Close the connection; never connect again."""
        self._stopped = True
        if self._connection is not None:
            self._drop("stopped")
