"""Agents' reports and connection grants shared by the directors of one store.

Each director keeps the fleet in memory (``MemoryRuntimeStore``): listings,
placement, the DCV verifier and the resolver answer from it. An agent reports
to one director at a time, so every director passes the reports it accepts on
through the store, and takes in the others':

- **out**: a report accepted (and kept in memory, as with one director) is
  queued by agent; queued reports are written together, every
  :data:`FLUSH_DELAY` at most, in one transaction (the newest report of each
  agent, numbered in commit order). No round trip per update.
- **in**: a trigger notifies ``dcvix_reports`` after each write; this director
  then reads the reports numbered after the last it read, and keeps each one
  from another director as if it had received it (the same parser, the time
  the other director received it). It also reads every :data:`PULL_EVERY` s,
  so a missed notification (a listener reconnecting) costs at most that.
- a write and a read due together share one trip to a database thread (two
  transactions: a write that fails, say behind a long lock, never costs the
  read, nor the other way round).

A report travels as two JSON texts: its sessions, and the rest. An agent's
session list rarely changes between reports while its stats always do, so a
director taking a report in decodes and checks the sessions only when their
text differs from the agent's last (the rest is a few hundred bytes); the
director passing it on encodes them only when its own parser found them
changed. Both texts come from a body that passed the checks of the director
the agent reported to, so they are read back with the plain JSON decoder.
All directors of a store must run the same schema: upgrade them together.

A report older than what this director holds for the server (an agent that
moved from one director to another meanwhile) is left out.

Connection grants (which server a connection token of a session id was
issued for, and to whom: the Gateway resolver's answer) travel the same way,
so a connection token issued by one director resolves on every other.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from dcvix.common.errors import ApiError
from dcvix.common.ratelimit import LogBudget
from dcvix.common.threads import ThreadPoolService
from dcvix.director.registry import StoreError
from dcvix.director.registry.engine import DB_TIMEOUT, Engine
from dcvix.director.registry.sql import (
    Shared,
    SharedGrant,
    SharedReport,
    forget_report_txn,
    put_shared_txn,
    shared_since_txn,
)
from dcvix.director.runtime import (
    RuntimeStore,
    ServerState,
    Session,
    SessionsMemo,
    parse_report,
    parse_sessions,
)

log = Logger()

# Each trip costs a thread hand-off and two transactions whatever it carries;
# at 50 ms two directors cost 1.1-1.2 x one per update, at 100 ms about 1.0 x
# (bench/shared_store.py), and an update reaches the others in about 0.2 s.
FLUSH_DELAY = 0.1
PULL_EVERY = 1.0


@dataclass(frozen=True)
class _Accepted:
    """A report this director accepted, waiting for the next write."""

    guid: str
    hostname: str
    peer: str
    state: ServerState
    payload: dict[str, Any]


class ReportExchange(Service):
    """Passes this director's reports on, and keeps the other directors'.

    Args:
        engine: the shared store.
        pool: the database pool (writes and reads run there).
        runtime: this director's memory of the fleet.
        default_agent_port: as for reports received directly.
        clock: schedules writes and reads.
    """

    def __init__(
        self,
        engine: Engine,
        pool: ThreadPoolService,
        runtime: RuntimeStore,
        default_agent_port: int,
        clock: IReactorTime,
    ) -> None:
        self._engine = engine
        self._pool = pool
        self._runtime = runtime
        self._default_port = default_agent_port
        self._clock = clock
        # Tells this director's rows from the others' (new at every start).
        self.origin = secrets.token_hex(8)
        self._outbox: dict[str, _Accepted] = {}
        # Per agent, the sessions last passed on (parsed, as JSON text) and
        # last taken in (text, parsed): see the module's docstring.
        self._sent: dict[str, tuple[tuple[Session, ...], str]] = {}
        self._got: dict[str, tuple[str, tuple[Session, ...]]] = {}
        self._grants_out: list[SharedGrant] = []
        # Where grants from other directors go (ConnectionTokens.adopt).
        self.grants_to: Callable[[SharedGrant], None] = lambda grant: None
        self._grant_cursor = 0
        self._trip: IDelayedCall | None = None
        self._busy = False
        self._read_due = False
        # After a failure, that part waits this long (reactor seconds).
        self._write_after = self._read_after = 0.0
        self._cursor = 0
        self._memo = SessionsMemo()
        self._poll = LoopingCall(self.changed)
        self._poll.clock = clock
        self._trouble = LogBudget(1, 60.0, clock)
        self.taken = 0

    def startService(self) -> None:
        """Read every report in the store, then keep reading."""
        super().startService()
        self._poll.start(PULL_EVERY, now=True)

    def stopService(self) -> Deferred[None] | None:
        """Stop reading and writing.

        Reports still queued are not written: their agents report again
        within their update interval, to whichever director answers.
        """
        super().stopService()
        if self._poll.running:
            self._poll.stop()
        if self._trip is not None and self._trip.active():
            self._trip.cancel()
        self._trip = None
        return None

    # ---------------------------------------------------------------- out

    def share(
        self,
        guid: str,
        hostname: str,
        peer: str,
        state: ServerState,
        payload: dict[str, Any],
    ) -> None:
        """Queue a report this director accepted, for the others.

        Args:
            guid: the agent.
            hostname: its registered hostname.
            peer: the address it reported from.
            state: what this director made of the report.
            payload: the decoded body (never changed afterwards).
        """
        self._outbox[guid] = _Accepted(guid, hostname, peer, state, payload)
        self._soon()

    def _encode(self, accepted: _Accepted) -> SharedReport:
        """The report as the store keeps it: the rest and the sessions apart."""
        payload = accepted.payload
        rest = _compact({k: v for k, v in payload.items() if k != "sessions"})
        text = None
        if "sessions" in payload:
            parsed = accepted.state.sessions
            sent = self._sent.get(accepted.guid)
            if sent is not None and sent[0] is parsed:  # the parser's memo: same
                text = sent[1]
            else:
                text = _compact(payload["sessions"])
                self._sent[accepted.guid] = (parsed, text)
        return SharedReport(
            accepted.guid,
            accepted.hostname,
            accepted.peer,
            accepted.state.seen_at,
            rest,
            text,
        )

    def share_grant(
        self, session_id: str, server: str, expires: float, to: str
    ) -> None:
        """Queue a connection token this director issued, for the others."""
        self._grants_out.append(SharedGrant(session_id, server, expires, to))
        self._soon()

    def forget(self, guid: str) -> Deferred[None]:
        """Drop a revoked or deleted agent's report from the store (best effort).

        The admin action it follows is done whatever happens here: a report
        left behind is dropped by every director's check of the fleet
        against the agents' states.
        """
        self._outbox.pop(guid, None)
        self._sent.pop(guid, None)
        self._got.pop(guid, None)
        done: Deferred[None] = self._pool.run(
            DB_TIMEOUT * 2, self._engine.call, forget_report_txn, guid
        )
        return done.addErrback(self._complain, "shared report not dropped")

    # ----------------------------------------------------------------- in

    def changed(self) -> None:
        """Reports were shared (a notification, or the periodic read)."""
        self._read_due = True
        self._soon()

    # -------------------------------------------------------- both at once

    def _soon(self) -> None:
        """One trip to the database within :data:`FLUSH_DELAY`.

        Writing what is queued and reading what is new share that trip: one
        hand-off to a database thread, not one for each, which on a busy
        director mattered more than the statements themselves.
        """
        if self._busy or not self.running:
            return
        now = self._clock.seconds()
        times = []
        if self._read_due:
            times.append(max(now + FLUSH_DELAY, self._read_after))
        if self._outbox or self._grants_out:
            times.append(max(now + FLUSH_DELAY, self._write_after))
        if not times:
            return
        due = min(times)
        if self._trip is not None and self._trip.active():
            if self._trip.getTime() <= due:
                return
            self._trip.cancel()
        self._trip = self._clock.callLater(due - now, self._go)

    def _go(self) -> None:
        self._trip = None
        now = self._clock.seconds()
        read = self._read_due and now >= self._read_after
        write = now >= self._write_after
        accepted, grants = (self._outbox, self._grants_out) if write else ({}, [])
        if not (read or accepted or grants):
            self._soon()
            return
        if write:
            self._outbox, self._grants_out = {}, []
        if read:
            self._read_due = False
        batch = [
            encoded
            for report in accepted.values()
            if (encoded := self._encode_or_drop(report)) is not None
        ]
        self._busy = True
        self._pool.run(
            DB_TIMEOUT * 2,
            _trade,
            self._engine,
            self.origin,
            batch,
            grants,
            (self._cursor, self._grant_cursor) if read else None,
        ).addCallbacks(
            self._traded,
            self._trade_failed,
            callbackArgs=(accepted, grants),
            errbackArgs=(accepted, grants, read),
        ).addBoth(self._back)

    def _encode_or_drop(self, accepted: _Accepted) -> SharedReport | None:
        try:
            return self._encode(accepted)
        except Exception:  # a body this director accepted: never expected
            log.failure("report of agent {guid} not shared", guid=accepted.guid)
            return None

    def _traded(
        self, trip: _Trip, accepted: dict[str, _Accepted], grants: list[SharedGrant]
    ) -> Deferred[None] | None:
        """What the trip read is taken in; a part that failed is tried again."""
        retry = self._clock.seconds() + PULL_EVERY
        if trip.write_failed is not None:
            self._requeue(accepted, grants)
            self._write_after = retry
            self._complain(trip.write_failed, "reports not shared")
        if trip.read_failed is not None:
            self._read_due = True
            self._read_after = retry
            self._complain(trip.read_failed, "shared reports not read")
        return self._take(trip.shared)

    def _requeue(
        self, accepted: dict[str, _Accepted], grants: list[SharedGrant]
    ) -> None:
        """Put back what no newer report replaced."""
        for guid, report in accepted.items():
            self._outbox.setdefault(guid, report)
        self._grants_out[:0] = grants

    def _back(self, result: object) -> object:
        self._busy = False
        self._soon()
        return result  # an unexpected failure is logged, not swallowed

    def _trade_failed(
        self,
        failure: Failure,
        accepted: dict[str, _Accepted],
        grants: list[SharedGrant],
        read: bool,
    ) -> None:
        """The trip outran its deadline: try all of it again in a second.

        The write may still commit later: sending a report again stores the
        same state, and a grant twice resolves as once.
        """
        self._requeue(accepted, grants)
        self._write_after = self._read_after = self._clock.seconds() + PULL_EVERY
        self._read_due = self._read_due or read
        self._complain(failure, "the store's shared reports not reached")

    def _sessions(self, report: SharedReport) -> tuple[Session, ...]:
        """A shared report's sessions, parsed only when their text changed."""
        assert report.sessions is not None
        got = self._got.get(report.guid)
        if got is not None and got[0] == report.sessions:
            return got[1]
        parsed = parse_sessions(json.loads(report.sessions))
        self._got[report.guid] = (report.sessions, parsed)
        return parsed

    def _take(self, shared: Shared | None) -> Deferred[None] | None:
        if shared is None:
            return None
        self._cursor = shared.reports_to
        self._grant_cursor = shared.grants_to
        for grant in shared.grants:
            self.grants_to(grant)

        async def take() -> None:
            for report in shared.reports:
                try:
                    await self._keep(report)
                except ApiError as error:  # it passed another director's checks
                    log.warn(
                        "shared report of agent {guid} left out: {error}",
                        guid=report.guid,
                        error=error.message,
                    )
                except Exception:  # a row no director should have written
                    log.failure("shared report of agent {guid}", guid=report.guid)

        return Deferred.fromCoroutine(take())

    async def _keep(self, report: SharedReport) -> None:
        previous = await self._runtime.server(report.hostname)
        received = dt.datetime.fromtimestamp(report.received_at, dt.UTC)
        if previous is not None and previous.last_seen > received:
            return  # this director has a newer one (the agent moved)
        payload = json.loads(report.report)
        # Sessions inside the report win over the column: a director of
        # schema 5 writes them there, and its upsert leaves the column as a
        # newer director last wrote it (stale).
        inside = isinstance(payload, dict) and "sessions" in payload
        state = parse_report(
            report.guid,
            report.hostname,
            payload,
            report.peer,
            received,
            self._default_port,
            previous,
            self._memo,
            sessions=None
            if inside or report.sessions is None
            else self._sessions(report),
        )
        await self._runtime.put(state)
        self.taken += 1

    def _complain(self, failure: Failure, what: str) -> None:
        skipped = self._trouble.take()
        if skipped is None:
            return
        if failure.check(StoreError):
            log.warn(
                "{what}: {error}{more}",
                what=what,
                error=str(failure.value),
                more=f" ({skipped} more)" if skipped else "",
            )
        else:
            log.failure(what, failure)


@dataclass(frozen=True)
class _Trip:
    """What one trip to the database did."""

    shared: Shared | None
    read_failed: Failure | None
    write_failed: Failure | None


def _trade(
    engine: Engine,
    origin: str,
    reports: list[SharedReport],
    grants: list[SharedGrant],
    read_after: tuple[int, int] | None,
) -> _Trip:
    """In a database thread: read the others' news (if due), then write ours.

    Two transactions, each failing alone (StoreError): a write stuck behind
    another writer's lock must not keep this director from reading.
    """
    shared = read_failed = write_failed = None
    if read_after is not None:
        try:
            shared = engine.call(shared_since_txn, *read_after, origin)
        except StoreError:
            read_failed = Failure()
    if reports or grants:
        try:
            engine.call(put_shared_txn, origin, reports, grants)
        except StoreError:
            write_failed = Failure()
    return _Trip(shared, read_failed, write_failed)


def _compact(value: Any) -> str:
    """JSON text without spaces (the store keeps a report per agent)."""
    return json.dumps(value, separators=(",", ":"))
