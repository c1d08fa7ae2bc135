"""Admin session control: create, close and configure through the agents.

Only registered, online agents are called, reached at the address and port
their updates give and accepted by their pinned key. A value a client typed is
never turned into a URL: the target is looked up among known servers.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dcvix.common.clock import now_utc
from dcvix.common.errors import (
    ApiError,
    BadGateway,
    BadRequest,
    Conflict,
    Forbidden,
    GatewayTimeout,
    NotFound,
)
from dcvix.common.validate import (
    InvalidInput,
    NotAllowed,
    check_config,
    check_session_id,
)
from dcvix.common.webclient import Answer
from dcvix.director.agent_client import AgentAddress, AgentClient
from dcvix.director.metrics import DirectorMetrics
from dcvix.director.policy import valid_id
from dcvix.director.registry import REGISTERED, AgentRegistry
from dcvix.director.requests import ConfigRequest, CreateSessionRequest
from dcvix.director.runtime import RuntimeStore, ServerState, Session, is_online

log = Logger()

CREATING = "creating"
MIN_GRACE = 60.0


class ServerView(NamedTuple):
    """A server as admins see it: its last report, online now, its agent's state.

    A tuple: a listing makes one per server (10,000 in some 10 ms, half of
    what a frozen dataclass took).
    """

    state: ServerState
    online: bool
    agent_state: str


def _check_free(state: ServerState, user: str, kind: str, session_id: str) -> None:
    """Refuse (409) a create the agent would have to refuse, as far as we know.

    The agent reuses the user's own session of that type, so that case goes
    through; another session with the id, or another user's console (a Linux
    DCV server has one), is the caller's conflict. What the director did not
    know yet (a race with the agent's listing) the agent refuses, and that
    stays an agent refusal (502), as CONTRACT §4 has it.

    Raises:
        Conflict: the id is taken, or the console is someone else's.
    """
    if any(s.owner == user and s.type == kind for s in state.sessions):
        return
    if any(s.id == session_id for s in state.sessions):
        raise Conflict(f"session {session_id} is already on {state.hostname}")
    if kind == "console" and any(s.type == "console" for s in state.sessions):
        raise Conflict(f"the console of {state.hostname} is someone else's")


class SessionControl:
    """What the admin server and session routes do.

    Args:
        runtime: the agents' last reports.
        registry: the agent registry (only registered agents are called).
        client: calls to agents.
        config_allow: the DCV settings that may be pushed.
        max_age: seconds after which a silent server is offline.
        clock: the time.
    """

    def __init__(
        self,
        runtime: RuntimeStore,
        registry: AgentRegistry,
        client: AgentClient,
        config_allow: Sequence[str],
        max_age: float,
        clock: IReactorTime,
        metrics: DirectorMetrics | None = None,
    ) -> None:
        self._metrics = metrics if metrics is not None else DirectorMetrics()
        self._runtime = runtime
        self._registry = registry
        self._client = client
        self._allow = tuple(config_allow)
        self._max_age = max_age
        self._clock = clock

    async def forget(self, guid: str, deleted: bool) -> None:
        """An agent may no longer be called (revoked, replaced or deleted).

        Its pooled connections and its last report go at once: a revoked
        server must leave placement, the user portal, the DCV verifier and
        the Gateway resolver now, not when its report grows old. It comes
        back with its next report once reactivated. ``deleted`` is only
        said for the caller's record.
        """
        self._client.forget(guid)
        await self._runtime.forget_guid(guid)

    async def forget_unregistered(self) -> None:
        """Forget the servers whose agent is no longer registered.

        For the directors of a shared store: an agent revoked, replaced or
        deleted through another director leaves this one's placement, portal,
        verifier and resolver as soon as the store says so.
        """
        states = await self._registry.states()
        for state in await self._runtime.servers():
            if states.get(state.guid) != REGISTERED:
                await self.forget(state.guid, state.guid not in states)

    def online(self, state: ServerState) -> bool:
        """Whether a server is online now."""
        return is_online(state, self._clock.seconds(), self._max_age)

    async def reported_server(self, hostname: str) -> ServerState | None:
        """The last report of one server by registered hostname, or None."""
        return await self._runtime.server(hostname)

    async def reports(self) -> tuple[list[ServerState], Callable[[str], str]]:
        """Every server's latest report (as first seen), and its agent's state.

        The state by GUID, as listings show it: ``unknown`` for an agent the
        registry no longer holds.
        """
        states = await self._registry.states()
        return await self._runtime.servers(), lambda guid: states.get(guid, "unknown")

    async def servers(self) -> list[ServerView]:
        """Every server that reported since start, hostname descending."""
        reported, agent_state = await self.reports()
        listed = sorted(reported, key=lambda s: s.hostname, reverse=True)
        now = self._clock.seconds()  # once: a listing may hold 10,000 servers
        return [
            ServerView(s, is_online(s, now, self._max_age), agent_state(s.guid))
            for s in listed
        ]

    async def online_servers(self) -> list[ServerState]:
        """The servers online now, in the order first seen."""
        now = self._clock.seconds()
        return [
            s for s in await self._runtime.servers() if is_online(s, now, self._max_age)
        ]

    async def live_sessions(self) -> list[tuple[ServerState, Session]]:
        """The sessions of the servers online now."""
        return [
            (server, session)
            for server in await self.online_servers()
            for session in server.sessions
        ]

    async def expire(self) -> list[str]:
        """Drop the sessions of servers gone quiet; their hostnames."""
        gone = []
        for state in await self._runtime.servers():
            if state.sessions and not self.online(state):
                await self._runtime.drop_sessions(state.hostname)
                gone.append(state.hostname)
        return gone

    async def _target(self, hostname: str) -> tuple[ServerState, AgentAddress]:
        state = await self._runtime.server(hostname)
        if state is None:
            raise NotFound(f"unknown server {hostname}")
        record = await self._registry.get(state.guid)
        if record is None or not record.pinned or record.hostname != hostname:
            raise Conflict(f"server {hostname} is not a registered agent")
        if not self.online(state):
            raise Conflict(f"server {hostname} is offline")
        return state, AgentAddress(
            state.guid, state.address, state.agent_port, record.key_fingerprint
        )

    async def _call(
        self, target: AgentAddress, method: str, path: str, payload: Any = None
    ) -> Answer:
        route = f"{method} {_route(path)}"
        outcome = "unreachable"
        try:
            with self._metrics.agent_call_seconds.labels(route).time():
                answer = await self._client.call(target, method, path, payload)
            outcome = "ok" if answer.status < 400 else "refused"
            return answer
        except DeferredTimeout:
            outcome = "timeout"
            raise GatewayTimeout("the agent did not answer in time") from None
        except ApiError:
            outcome = "refused"
            raise
        except Exception as error:
            log.warn(
                "agent {guid} unreachable: {error}",
                guid=target.guid,
                error=str(error) or type(error).__name__,
            )
            raise BadGateway("the agent could not be reached") from None
        finally:
            self._metrics.agent_calls.labels(route, outcome).inc()

    async def create(self, body: CreateSessionRequest) -> dict[str, str]:
        """``POST /v1/sessions``: a session on a server, for a user."""
        if not valid_id(body.user_id):
            raise BadRequest("invalid userId")
        return await self.start(
            body.server_id, body.user_id, body.session_type, body.session_id or None
        )

    async def start(
        self, hostname: str, user: str, session_type: str, session_id: str | None
    ) -> dict[str, str]:
        """A session for ``user`` on the registered, online server ``hostname``.

        It shows at once in every listing, ``creating`` until the agent's next
        report confirms it. The agent may answer the id of a session it
        already has for that user (then nothing new is shown).
        """
        kind = session_type.lower()
        if kind not in ("console", "virtual"):
            raise BadRequest("sessionType must be console or virtual")
        session_id = session_id or f"dcvix_{uuid.uuid4()}"
        try:
            check_session_id(session_id)
        except InvalidInput as error:
            raise BadRequest(str(error)) from None
        state, target = await self._target(hostname)
        _check_free(state, user, kind, session_id)
        answer = await self._call(
            target,
            "POST",
            "/v1/sessions",
            {
                "serverId": state.hostname,
                "userId": user,
                "sessionId": session_id,
                "sessionType": kind,
            },
        )
        body_out = answer.json
        if answer.status == 400:
            raise BadRequest(f"the agent refused: {answer.error}")
        if (
            answer.status != 201
            or not isinstance(body_out, dict)
            or not isinstance(body_out.get("sessionID"), str)
        ):
            raise BadGateway(f"the agent answered {answer.status}: {answer.error}")
        made = body_out["sessionID"]
        try:
            check_session_id(made)
        except InvalidInput:
            raise BadGateway("the agent answered an invalid session id") from None
        now = now_utc(self._clock)
        await self._runtime.add_session(
            state.hostname,
            Session(
                id=made,
                owner=user,
                user=user,
                connections=0,
                creation_time=now,
                last_disconnection_time=None,
                licensing_mode="",
                storage_root="",
                type=kind,
                status=CREATING,
                x11_display="",
                x11_authority="",
            ),
            now + self._grace(state),
        )
        return {"sessionID": made, "serverId": state.hostname}

    def _grace(self, state: ServerState) -> dt.timedelta:
        """How long a change made here outlives reports that do not show it."""
        return dt.timedelta(seconds=max(2 * state.update_interval, MIN_GRACE))

    async def holders(
        self,
        session_id: str,
        server_id: str | None,
        owner: str | None = None,
        allowed: Callable[[str], bool] | None = None,
    ) -> list[ServerState]:
        """The online servers with session ``session_id``.

        ``owner``: only that user's session; ``allowed``: only servers whose
        hostname it accepts (the policy's grant, on user routes).
        """
        return [
            s
            for s in await self._runtime.servers()
            if self.online(s)
            and any(
                session.id == session_id and owner in (None, session.owner)
                for session in s.sessions
            )
            and (server_id is None or s.hostname == server_id)
            and (allowed is None or allowed(s.hostname))
        ]

    async def close(
        self,
        session_id: str,
        server_id: str | None,
        owner: str | None = None,
        allowed: Callable[[str], bool] | None = None,
    ) -> dict[str, Any]:
        """``DELETE /v1/sessions/{id}[?serverId=]``; see :meth:`holders`.

        The session disappears from every listing at once.
        """
        holders = await self.holders(session_id, server_id, owner, allowed)
        if not holders:
            raise NotFound("session not found")
        if len(holders) > 1:
            names = ", ".join(sorted(s.hostname for s in holders))
            raise Conflict(f"session {session_id} is on {names}: give ?serverId=")
        state, target = await self._target(holders[0].hostname)
        answer = await self._call(target, "DELETE", f"/v1/sessions/{session_id}")
        if answer.status == 404:
            raise NotFound("session not found")
        if answer.status != 200:
            raise BadGateway(f"the agent answered {answer.status}: {answer.error}")
        await self._runtime.remove_session(
            state.hostname, session_id, now_utc(self._clock) + self._grace(state)
        )
        return {
            "status": "success",
            "code": 200,
            "message": "Session close request sent successfully",
        }

    async def configure(self, hostname: str, body: ConfigRequest) -> dict[str, Any]:
        """``POST /v1/servers/{server}/config``: allowed DCV settings only."""
        checked = []
        for entry in body.config:
            values = entry if isinstance(entry, dict) else {}
            section, key, value = (values.get(k) for k in ("section", "key", "value"))
            if not all(isinstance(v, str) for v in (section, key, value)):
                raise BadRequest("config entries need section, key and value strings")
            try:
                checked.append(check_config(section, key, value, self._allow))  # type: ignore[arg-type]
            except NotAllowed as error:
                raise Forbidden(str(error)) from None
            except InvalidInput as error:
                raise BadRequest(str(error)) from None
        _, target = await self._target(hostname)
        answer = await self._call(
            target,
            "POST",
            "/v1/config",
            {"config": [{"section": s, "key": k, "value": v} for s, k, v in checked]},
        )
        if answer.status in (400, 403):
            raise (BadRequest if answer.status == 400 else Forbidden)(
                f"the agent refused: {answer.error}"
            )
        if answer.status != 200:
            raise BadGateway(f"the agent answered {answer.status}: {answer.error}")
        return {}


def _route(path: str) -> str:
    """A call's path as a metric label: never a session id."""
    if path.startswith("/v1/sessions/"):
        return "/v1/sessions/{id}"
    return path
