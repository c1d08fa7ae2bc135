"""DCV connection tokens: issued to a user for one session, checked for DCV.

A connection token is a PASETO token of purpose ``connection`` (see
:mod:`.tokens`), bound to the user, the server's registered hostname and the
DCV session id, living ``connection_token_ttl``. The API refuses it as a
login (another purpose does not decrypt there), and the verifier refuses login
tokens the same way.

:meth:`ConnectionTokens.verify` answers from memory: every DCV connection waits
on it, so it never calls an agent and never writes to the database, except to
consume a token when ``connection_token_single_use`` is on (kept in the
revoked-token list, so that a restart does not make a used token good again).

The latest token issued for each session id also tells the Gateway resolver
which server to pick when two servers hold a session of that id.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dcvix.common.clock import now_utc
from dcvix.common.ratelimit import LogBudget
from dcvix.director.registry import RevokedTokens
from dcvix.director.runtime import RuntimeStore, ServerState, is_online
from dcvix.director.tokens import (
    CONNECTION,
    USER,
    InvalidToken,
    TokenService,
    token_hash,
)

log = Logger()

REFUSALS_LOGGED = 20  # a minute: anyone may ask, the log must not flood
# Tokens remembered per session id for the resolver (the latest ones).
GRANTS_KEPT = 64


@dataclass(frozen=True)
class Grant:
    """Where a connection token issued for a session id went, and to whom."""

    server: str
    expires: dt.datetime
    address: str


@dataclass(frozen=True)
class Issued:
    """A connection token, with what the user needs to connect."""

    token: str
    expires: dt.datetime
    server: str
    session: str


class ConnectionTokens:
    """Issues connection tokens and verifies them for DCV servers.

    Args:
        tokens: the token service (same key as logins, another purpose).
        runtime: the agents' last reports (whose session is whose).
        revoked: where consumed single-use tokens are kept.
        ttl: seconds a connection token lives.
        single_use: whether the first successful verification consumes it.
        max_age: seconds after which a silent server is offline.
        clock: the time.
    """

    def __init__(
        self,
        tokens: TokenService,
        runtime: RuntimeStore,
        revoked: RevokedTokens,
        ttl: float,
        single_use: bool,
        max_age: float,
        clock: IReactorTime,
    ) -> None:
        self._tokens = tokens
        self._runtime = runtime
        self._revoked = revoked
        self._ttl = dt.timedelta(seconds=ttl)
        self._single_use = single_use
        self._max_age = max_age
        self._clock = clock
        # session id -> (hostname, expiry) of the latest token issued for it
        self._issued: dict[str, list[Grant]] = {}
        # token hash -> expiry, for tokens consumed by a verification
        self._consumed: dict[str, dt.datetime] = {}
        self._refusals = LogBudget(REFUSALS_LOGGED, 60.0, clock)
        # With a shared store: tells the other directors of each token issued
        # (session id, server, expiry in epoch seconds, to whom).
        self.on_issue: Callable[[str, str, float, str], None] | None = None

    def issue(
        self, user: str, hostname: str, session_id: str, address: str = ""
    ) -> Issued:
        """A fresh token for ``user``'s session ``session_id`` on ``hostname``.

        The caller has checked that the session is the user's and that the
        policy grants the server.
        """
        token, expires = self._tokens.issue(
            user,
            USER,
            CONNECTION,
            self._ttl,
            serverId=hostname,
            sessionId=session_id,
        )
        self._grant(session_id, Grant(hostname, expires, address))
        if self.on_issue is not None:
            self.on_issue(session_id, hostname, expires.timestamp(), address)
        return Issued(token, expires, hostname, session_id)

    def _grant(self, session_id: str, grant: Grant) -> None:
        grants = self._issued.setdefault(session_id, [])
        grants.append(grant)
        del grants[:-GRANTS_KEPT]

    def adopt(self, session_id: str, server: str, expires: float, address: str) -> None:
        """A token another director of the store issued (for the resolver)."""
        moment = dt.datetime.fromtimestamp(expires, dt.UTC)
        self._grant(session_id, Grant(server, moment, address))

    def server_for(self, session_id: str, client: str = "") -> str | None:
        """Which server a connection to ``session_id`` from ``client`` is for.

        The server of the latest unexpired token issued for that id to a
        caller at ``client`` (the Gateway's ``clientIpAddress``), so that one
        user fetching a token cannot steer everyone else's connections to a
        shared id such as ``console``; without such a token, the latest
        unexpired token's server; else None.
        """
        now = now_utc(self._clock)
        live = [g for g in self._issued.get(session_id, ()) if g.expires > now]
        mine = [g for g in live if client and g.address == client]
        chosen = mine or live
        return chosen[-1].server if chosen else None

    async def verify(self, token: str, session_id: str, address: str) -> str | None:
        """The user a DCV server should let into ``session_id``, or None.

        Refused: a field missing, not a connection token (a login token
        included), expired, bound to another session, its session no longer
        on its (online) server or no longer the user's, asked for from
        another server's address, already consumed
        (single use). Why is logged (at most ``REFUSALS_LOGGED`` lines a
        minute), never answered.

        Args:
            token: the ``authenticationToken`` the DCV server received.
            session_id: the session the client asks for.
            address: who asks: refused when it is another server's address.
        """
        if not token or not session_id:
            self._refuse(address, session_id, "a field is missing")
            return None
        try:
            claims = self._tokens.check(token, CONNECTION)
        except InvalidToken as error:
            self._refuse(address, session_id, str(error))
            return None
        if claims.session != session_id:
            self._refuse(address, session_id, "token is for another session")
            return None
        state = await self._runtime.server(claims.server)
        if state is None or not is_online(state, self._clock.seconds(), self._max_age):
            self._refuse(address, session_id, "its server is not online")
            return None
        if not any(
            s.id == session_id and s.owner == claims.user for s in state.sessions
        ):
            self._refuse(address, session_id, "the session is not the token user's")
            return None
        if address != state.address and await self._another_servers(address, state):
            # A token for a session on A, replayed by another DCV server that
            # has a session of the same id: the token names its server.
            self._refuse(address, session_id, f"token is for {claims.server}")
            return None
        if self._single_use and not await self._consume(token, claims.expires):
            self._refuse(address, session_id, "token already used")
            return None
        log.info(
            "DCV connection of {user} to {session} on {server} verified "
            "(asked by {address})",
            user=claims.user,
            session=session_id,
            server=claims.server,
            address=address,
        )
        return claims.user

    async def _another_servers(self, address: str, bound: ServerState) -> bool:
        """Whether ``address`` is where another server than ``bound`` reports from.

        Only asked when the caller is not at the bound server's address (a
        DCV server usually calls from its agent's address), so the common
        case never walks the fleet; an address no server uses (NAT, a
        second interface) is given the benefit of the doubt.
        """
        return any(
            s.address == address and s.hostname != bound.hostname
            for s in await self._runtime.servers()
        )

    async def _consume(self, token: str, expires: dt.datetime) -> bool:
        """Mark a token used; False when it already was."""
        digest = token_hash(token)
        if digest in self._consumed:
            return False
        # Claimed in memory before the first await: a concurrent replay loses.
        self._consumed[digest] = expires
        return await self._revoked.revoke_token(digest, expires)

    def _refuse(self, address: str, session_id: str, why: str) -> None:
        skipped = self._refusals.take()
        if skipped is None:
            return
        log.info(
            "DCV connection to {session!r} refused (asked by {address}): {why}"
            + (" ({skipped} more refusals not logged)" if skipped else ""),
            # Anyone can send anything: shown escaped, and cut short.
            session=session_id[:100],
            address=address,
            why=why,
            skipped=skipped,
        )

    def vacuum(self) -> int:
        """Forget what expired tokens left behind; how many entries went."""
        now = now_utc(self._clock)
        stale = 0
        for key, grants in list(self._issued.items()):
            live = [g for g in grants if g.expires > now]
            stale += len(grants) - len(live)
            if live:
                self._issued[key] = live
            else:
                del self._issued[key]
        used = [k for k, expires in self._consumed.items() if expires <= now]
        for key in used:
            del self._consumed[key]
        return stale + len(used)
