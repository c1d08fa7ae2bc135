"""Closes sessions nobody uses, by a rule users can trust.

A session is reaped only when all of these hold: no client is connected; it
has been idle for ``idle_timeout``, counted from its last disconnection (or
its creation, if no client ever connected); and dcvix made it (its id starts
with ``dcvix_`` or this agent created it) unless ``reap_all_sessions`` is set.
A session whose times are unknown is kept.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from dcvix.agent.dcv import DcvError, Session
from dcvix.agent.metrics import AgentMetrics
from dcvix.agent.sessions import SessionManager
from dcvix.common.validate import InvalidInput

log = Logger()


def idle_kind(session: Session) -> str:
    """The metrics' reason for reaping ``session``: disconnected or unused."""
    return "disconnected" if session.last_disconnected else "unused"


def reap_reason(
    session: Session,
    now: dt.datetime,
    idle_timeout: float,
    ours: bool,
    reap_all: bool,
) -> str | None:
    """Why ``session`` should be closed now, or None to keep it."""
    if session.connections > 0:
        return None
    if not (reap_all or ours or session.id.startswith("dcvix_")):
        return None
    since = session.last_disconnected or session.created
    if since is None:
        return None
    idle = (now - since).total_seconds()
    if idle < idle_timeout:
        return None
    what = "last disconnection" if session.last_disconnected else "creation, unused"
    limit = int(idle_timeout)
    return f"no client for {int(idle)} s since its {what} (idle_timeout {limit} s)"


class Reaper:
    """One pass over the sessions, run by a PeriodicJob every ``reap_interval``."""

    def __init__(
        self,
        sessions: SessionManager,
        idle_timeout: float,
        reap_all: bool,
        clock: Any,
        metrics: AgentMetrics | None = None,
        reported: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._idle_timeout = idle_timeout
        self._reap_all = reap_all
        self._clock = clock
        self._metrics = metrics or AgentMetrics()
        # Tells the director why (Reporter.reaped): its audit trail says so.
        self._reported = reported

    def _still_idle(self, now: dt.datetime) -> Callable[[Session], bool]:
        def still_idle(fresh: Session) -> bool:
            ours = fresh.id in self._sessions.created
            reason = reap_reason(fresh, now, self._idle_timeout, ours, self._reap_all)
            return reason is not None

        return still_idle

    async def reap_once(self) -> list[str]:
        """Close every idle session the rule allows; the ids closed."""
        try:
            listed = await self._sessions.list()
        except DcvError as error:
            log.warn("reaper skipped a pass: {error}", error=error.message)
            return []
        now = dt.datetime.fromtimestamp(self._clock.seconds(), dt.UTC)
        closed = []
        for session in listed:
            reason = reap_reason(
                session,
                now,
                self._idle_timeout,
                session.id in self._sessions.created,
                self._reap_all,
            )
            if reason is None:
                continue
            try:
                # Decided again on a fresh listing under dcv's lock: a client
                # may have connected since the listing above.
                if await self._sessions.close(session.id, self._still_idle(now)):
                    closed.append(session.id)
                    self._metrics.reaped.labels(idle_kind(session)).inc()
                    if self._reported is not None:
                        self._reported(session.id, session.owner, reason)
                    log.info(
                        "reaped session {id} of {owner}: {reason}",
                        id=session.id,
                        owner=session.owner,
                        reason=reason,
                    )
            except (DcvError, InvalidInput) as error:
                # InvalidInput: dcv listed an id that close() refuses to pass on.
                self._metrics.reap_failures.inc()
                log.warn(
                    "could not reap session {id}: {error}",
                    id=session.id,
                    error=str(error),
                )
        return closed
