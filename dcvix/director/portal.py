"""What an end user may do: see their servers and pools, get sessions, connect.

Every call is checked against the policy in force now (CONTRACT §3): a user
reaches a server only when ``users.json`` lists it among their workstations,
lists a pool that holds it, or lists ``ALLOW_CUSTOM`` (then any registered
agent). On these routes an admin is a user like any other (Go let admins
bypass the policy). The target of every call is a server of the runtime
store, so a name a user typed never becomes a URL.

Sessions are the user's own: another user's session is "not found", never
"forbidden", so ids of others cannot be probed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import DeferredLock

from dcvix.common.errors import (
    BadGateway,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    ServiceUnavailable,
)
from dcvix.common.validate import InvalidInput, check_session_id
from dcvix.director.connections import ConnectionTokens, Issued
from dcvix.director.metrics import DirectorMetrics
from dcvix.director.placement import CONSOLE, choose_server
from dcvix.director.policy import ALLOW_CUSTOM, PolicyHolder
from dcvix.director.requests import ConfigRequest, UserSessionRequest
from dcvix.director.runtime import ServerState, Session
from dcvix.director.sessions import SessionControl

SESSION_TYPES = ("console", "virtual")


@dataclass(frozen=True)
class Grant:
    """What the policy lets one user reach; host names in lower case."""

    workstations: tuple[str, ...] = ()
    pools: dict[str, tuple[str, ...]] = field(default_factory=dict)
    custom: bool = False

    def allows(self, hostname: str) -> bool:
        """Whether the user may use the server ``hostname``."""
        name = hostname.lower()
        return (
            self.custom
            or name in self.workstations
            or any(name in members for members in self.pools.values())
        )

    def pools_of(self, hostname: str) -> list[str]:
        """The user's pools that hold ``hostname``."""
        name = hostname.lower()
        return [pool for pool, members in self.pools.items() if name in members]


@dataclass(frozen=True)
class Connection:
    """What a DCV client needs to join a session."""

    issued: Issued
    host: str
    port: int

    @property
    def web_url(self) -> str:
        """The DCV web client's address, token and session included."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (
            f"https://{host}:{self.port}/?authToken={quote(self.issued.token)}"
            f"#{quote(self.issued.session)}"
        )

    def dcv_file(self, user: str) -> bytes:
        """A ``.dcv`` connection file (the Go launcher's fields).

        Every value is checked once more for line breaks and control
        characters: one would add lines (a proxy, say) to the file.

        Raises:
            BadGateway: a value the agent or the login gave is unfit.
        """
        for value in (self.host, user, self.issued.session, self.issued.token):
            if any(not c.isprintable() for c in value):
                raise BadGateway("the server's address cannot go in a .dcv file")
        lines = [
            "[version]",
            "format=1.0",
            "",
            "[connect]",
            f"host={self.host}",
            f"port={self.port}",
            f"sessionid={self.issued.session}",
            f"user={user}",
            "weburlpath=",
            f"authtoken={self.issued.token}",
            "",
            "[options]",
            "promptreconnect=false",
            "fullscreen=false",
            "useallmonitors=false",
            "",
        ]
        return "\r\n".join(lines).encode("utf-8")


class Portal:
    """The user routes' rules.

    Args:
        policy: the policy in force (re-read on SIGHUP).
        control: the fleet and the calls to agents.
        connections: connection tokens.
        dcv_port: the DCV servers' web port, for clients.
        metrics: where placements are counted and timed.
    """

    def __init__(
        self,
        policy: PolicyHolder,
        control: SessionControl,
        connections: ConnectionTokens,
        dcv_port: int,
        metrics: DirectorMetrics | None = None,
    ) -> None:
        self._metrics = metrics if metrics is not None else DirectorMetrics()
        self._policy = policy
        self._control = control
        self._connections = connections
        self._dcv_port = dcv_port
        self._creating: dict[tuple[str, str], DeferredLock] = {}

    def grant(self, user: str) -> Grant:
        """What the policy lets ``user`` reach now (nothing for an unknown user)."""
        current = self._policy.current
        entry = current.user(user)
        if entry is None:
            return Grant()
        pools = {}
        for pool_id in entry.pools:
            pool = current.pools.get(pool_id)
            members = pool.workstations if pool is not None else ()
            pools[pool_id] = tuple(m.lower() for m in members)
        return Grant(
            tuple(w.lower() for w in entry.workstations if w != ALLOW_CUSTOM),
            pools,
            ALLOW_CUSTOM in entry.workstations,
        )

    def listed_servers(self, user: str) -> list[str]:
        """Go's ``servers`` list: workstations then pool members, once each.

        ``ALLOW_CUSTOM`` is passed through (the Go launcher then shows a box
        for any server name).
        """
        current = self._policy.current
        entry = current.user(user)
        if entry is None:
            return []
        names = list(entry.workstations)
        for pool_id in entry.pools:
            pool = current.pools.get(pool_id)
            names.extend(pool.workstations if pool is not None else ())
        seen: set[str] = set()
        unique = []
        for name in names:
            key = name if name == ALLOW_CUSTOM else name.lower()
            if key not in seen:
                seen.add(key)
                unique.append(name)
        return unique

    async def _servers(self, grant: Grant) -> dict[str, ServerState]:
        """The reports of the servers ``grant`` names, by host name.

        Looked up one by one: a user is granted a handful of servers, the
        fleet may hold thousands.
        """
        names = {*grant.workstations, *(m for ms in grant.pools.values() for m in ms)}
        found = {}
        for name in names:
            state = await self._control.reported_server(name)
            if state is not None:
                found[name] = state
        return found

    async def overview(self, user: str) -> dict[str, Any]:
        """``GET /v1/user/servers``: Go's list, and ``details`` beside it."""
        grant = self.grant(user)
        servers = await self._servers(grant)
        listed = self.listed_servers(user)
        workstations = []
        for name in listed:
            if name == ALLOW_CUSTOM:
                continue
            state = servers.get(name.lower())
            online = state is not None and self._control.online(state)
            own = self._own(state, user) if state is not None and online else []
            workstations.append(
                {
                    "hostname": name,
                    "pools": grant.pools_of(name),
                    "online": online,
                    "sessions": [s.id for s in own],
                    "sessionCount": len(state.sessions) if state and online else 0,
                    "freeMemory": state.stats.free_memory if state else 0,
                    "totalMemory": state.stats.total_memory if state else 0,
                }
            )
        pools = [
            {
                "id": pool_id,
                "members": len(members),
                "online": len(self._online_members(servers, members)),
            }
            for pool_id, members in grant.pools.items()
        ]
        return {
            "servers": listed,
            "details": {"workstations": workstations, "pools": pools},
        }

    def _online_members(
        self, servers: dict[str, ServerState], members: tuple[str, ...]
    ) -> list[ServerState]:
        return [
            servers[m]
            for m in dict.fromkeys(members)
            if m in servers and self._control.online(servers[m])
        ]

    @staticmethod
    def _own(state: ServerState, user: str) -> list[Session]:
        return [s for s in state.sessions if s.owner == user]

    async def _granted_server(self, user: str, hostname: str) -> ServerState:
        """The server ``hostname`` if the policy grants it to ``user``.

        Raises:
            Forbidden: the policy does not grant it.
            NotFound: granted, but no such server has reported.
        """
        if not self.grant(user).allows(hostname):
            raise Forbidden("not authorized for this server")
        # One lookup: every launcher call comes here, the fleet may be large.
        state = await self._control.reported_server(hostname.lower())
        if state is None:
            raise NotFound(f"unknown server {hostname}")
        return state

    async def create(self, user: str, body: UserSessionRequest) -> dict[str, str]:
        """``POST /v1/user/sessions``: reuse the user's session, or make one.

        ``serverId`` names a workstation; ``poolId`` lets placement choose
        among the pool's online members.

        Raises:
            BadRequest: neither or both of serverId and poolId; a bad type.
            Forbidden: the policy does not grant the server or pool.
            NotFound: the server has never reported.
            Conflict: the server is offline, or its console is someone else's.
            ServiceUnavailable: no member of the pool can take the session.
        """
        kind = body.session_type.lower()
        if kind not in SESSION_TYPES:
            raise BadRequest("sessionType must be console or virtual")
        if bool(body.server_id) == bool(body.pool_id):
            raise BadRequest("give serverId or poolId, not both")
        # One request per user and type at a time: a double click must find
        # the session the first one made, not make a second.
        key = (user, kind)
        lock = self._creating.setdefault(key, DeferredLock())
        await lock.acquire()
        try:
            return await self._create(user, body, kind)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._creating.pop(key, None)

    async def _create(
        self, user: str, body: UserSessionRequest, kind: str
    ) -> dict[str, str]:
        if body.pool_id:
            state = await self._place(user, body.pool_id, kind)
        else:
            state = await self._granted_server(user, body.server_id)
            if not self._control.online(state):
                raise Conflict(f"server {state.hostname} is offline")
        mine = [s for s in self._own(state, user) if s.type == kind]
        if mine:
            return {"sessionID": mine[0].id, "serverId": state.hostname}
        if kind == CONSOLE and any(s.type == CONSOLE for s in state.sessions):
            raise Conflict(f"the console of {state.hostname} is in use")
        return await self._control.start(state.hostname, user, kind, None)

    async def _place(self, user: str, pool_id: str, kind: str) -> ServerState:
        started = time.perf_counter()
        counted = self._metrics.placements.labels
        grant = self.grant(user)
        members = grant.pools.get(pool_id)
        if members is None:
            counted("refused").inc()
            raise Forbidden("not authorized for this pool")
        online = self._online_members(await self._servers(grant), members)
        if not online:
            counted("none_online").inc()
            raise ServiceUnavailable(f"no server of pool {pool_id} is online")
        placed = choose_server(online, user, kind)
        self._metrics.placement_seconds.observe(time.perf_counter() - started)
        if placed is None:
            counted("full").inc()
            raise ServiceUnavailable(f"every console of pool {pool_id} is in use")
        counted("placed").inc()
        return placed.server

    async def sessions(self, user: str) -> list[tuple[ServerState, Session]]:
        """``GET /v1/user/sessions``: the user's sessions on granted, online servers."""
        grant = self.grant(user)
        return [
            (server, session)
            for server, session in await self._control.live_sessions()
            if session.owner == user and grant.allows(server.hostname)
        ]

    async def close(
        self, user: str, session_id: str, server_id: str | None
    ) -> dict[str, Any]:
        """``DELETE /v1/user/sessions/{id}``: the user's own, on granted servers.

        A session elsewhere (a server the policy no longer grants, say) is
        "not found", as another user's is.
        """
        grant = self.grant(user)
        if server_id is not None and not grant.allows(server_id):
            raise NotFound("session not found")
        return await self._control.close(
            session_id, server_id.lower() if server_id else None, user, grant.allows
        )

    async def connection(
        self, user: str, server_id: str, session_id: str, address: str = ""
    ) -> Connection:
        """A connection token for the user's own session on a granted server.

        Raises:
            BadRequest: a missing or invalid serverId or sessionId.
            Forbidden: the policy does not grant the server.
            NotFound: no such session of the user's there (or server offline).
        """
        if not server_id or not session_id:
            raise BadRequest("serverId and sessionId are required")
        try:
            check_session_id(session_id)
        except InvalidInput as error:
            raise BadRequest(str(error)) from None
        state = await self._granted_server(user, server_id)
        if not self._control.online(state) or not any(
            s.id == session_id for s in self._own(state, user)
        ):
            raise NotFound("session not found")
        issued = self._connections.issue(user, state.hostname, session_id, address)
        return Connection(issued, state.dcv_host, self._dcv_port)

    async def configure(
        self, user: str, hostname: str, body: ConfigRequest
    ) -> dict[str, Any]:
        """``POST /v1/user/servers/{server}/config`` on a granted server."""
        state = await self._granted_server(user, hostname)
        return await self._control.configure(state.hostname, body)
