"""Which DCV server holds a session: the Connection Gateway's question.

Answered from the agents' last reports, in memory (the Gateway asks at every
connection, so no agent is called). A session id is normally on one server;
when two online servers report the same id, the one named by the latest
unexpired connection token issued for that id to the same client address
wins (else the latest one to anyone), else nobody does (sending the
client to the wrong desktop is worse than refusing it).
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dcvix.common.ratelimit import LogBudget
from dcvix.director.runtime import RuntimeStore, ServerState, is_online

log = Logger()

WARNINGS_LOGGED = 10


class LatestTokens(Protocol):
    """Where connection tokens went (:class:`.connections.ConnectionTokens`)."""

    def server_for(self, session_id: str, client: str = "") -> str | None:
        """The server a connection from ``client`` to ``session_id`` is for."""


class SessionResolver:
    """Finds the online server holding a session id.

    Args:
        runtime: the agents' last reports.
        tokens: which server the latest connection token names.
        max_age: seconds after which a silent server is offline.
        clock: the time.
    """

    def __init__(
        self,
        runtime: RuntimeStore,
        tokens: LatestTokens,
        max_age: float,
        clock: IReactorTime,
    ) -> None:
        self._runtime = runtime
        self._tokens = tokens
        self._max_age = max_age
        self._clock = clock
        self._warnings = LogBudget(WARNINGS_LOGGED, 60.0, clock)

    async def locate(self, session_id: str, client: str = "") -> ServerState | None:
        """The online server holding ``session_id``, or None (unknown, or ambiguous).

        ``client``: the DCV client's address as the Gateway reports it, which
        picks among the tokens issued for an id held by several servers.
        """
        now = self._clock.seconds()
        holders = [
            state
            for state in await self._runtime.servers()
            if any(s.id == session_id for s in state.sessions)
            and is_online(state, now, self._max_age)
        ]
        if len(holders) == 1:
            return holders[0]
        if not holders:
            return None
        chosen = self._tokens.server_for(session_id, client)
        for state in holders:
            if state.hostname == chosen:
                return state
        skipped = self._warnings.take()
        if skipped is not None:
            log.warn(
                "session {session} is on {servers} and no unexpired connection "
                "token says which: not resolved"
                + (" ({skipped} such lines left out)" if skipped else ""),
                session=session_id,
                servers=", ".join(sorted(s.hostname for s in holders)),
                skipped=skipped,
            )
        return None
