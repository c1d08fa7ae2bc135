"""Admin session control: create, close and configure through the agents.

Only registered, online agents are called, reached at the address and port
their updates give and accepted by their pinned key. A value a client typed is
never turned into a URL: the target is looked up among known servers.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.logger import Logger

from dcvix.common.errors import (
    ApiError,
    BadGateway,
    BadRequest,
    Conflict,
    Forbidden,
    GatewayTimeout,
    NotFound,
)
from dcvix.common.http import go_fields
from dcvix.common.validate import (
    InvalidInput,
    NotAllowed,
    check_config,
    check_session_id,
)
from dcvix.common.webclient import Answer
from dcvix.director import store
from dcvix.director.agent_client import AgentAddress, AgentClient
from dcvix.director.policy import valid_id
from dcvix.director.runtime import Runtime, ServerState
from dcvix.director.store import AgentStore

log = Logger()


class SessionControl:
    """What the admin session routes do."""

    def __init__(
        self,
        runtime: Runtime,
        registry: AgentStore,
        client: AgentClient,
        config_allow: Sequence[str],
        now: Any,
    ) -> None:
        self._runtime = runtime
        self._registry = registry
        self._client = client
        self._allow = tuple(config_allow)
        self._now = now

    def forget(self, guid: str, deleted: bool) -> None:
        """An agent was revoked or deleted: drop its connections (and reports)."""
        self._client.forget(guid)
        if deleted:
            self._runtime.forget_guid(guid)

    async def _target(self, hostname: str) -> tuple[ServerState, AgentAddress]:
        state = self._runtime.server(hostname)
        if state is None:
            raise NotFound(f"unknown server {hostname}")
        record = await self._registry.run(store.get_txn, state.guid)
        if record is None or not record.pinned or record.hostname != hostname:
            raise Conflict(f"server {hostname} is not a registered agent")
        if not self._runtime.online(state, self._now()):
            raise Conflict(f"server {hostname} is offline")
        return state, AgentAddress(
            state.guid, state.address, state.agent_port, record.key_fingerprint
        )

    async def _call(
        self, target: AgentAddress, method: str, path: str, payload: Any = None
    ) -> Answer:
        try:
            return await self._client.call(target, method, path, payload)
        except DeferredTimeout:
            raise GatewayTimeout("the agent did not answer in time") from None
        except ApiError:
            raise
        except Exception as error:
            log.warn(
                "agent {guid} unreachable: {error}",
                guid=target.guid,
                error=str(error) or type(error).__name__,
            )
            raise BadGateway("the agent could not be reached") from None

    async def create(self, body: Any) -> dict[str, str]:
        """``POST /v1/sessions``: a session on a server, for a user."""
        fields = go_fields(
            body,
            {"serverId": str, "userId": str, "sessionId": str, "sessionType": str},
        )
        if not valid_id(fields["userId"]):
            raise BadRequest("invalid userId")
        kind = fields["sessionType"].lower()
        if kind not in ("console", "virtual"):
            raise BadRequest("sessionType must be console or virtual")
        session_id = fields["sessionId"] or f"dcvix_{uuid.uuid4()}"
        try:
            check_session_id(session_id)
        except InvalidInput as error:
            raise BadRequest(str(error)) from None
        state, target = await self._target(fields["serverId"])
        answer = await self._call(
            target,
            "POST",
            "/v1/sessions",
            {
                "serverId": state.hostname,
                "userId": fields["userId"],
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
        return {"sessionID": body_out["sessionID"], "serverId": state.hostname}

    async def close(self, session_id: str, server_id: str | None) -> dict[str, Any]:
        """``DELETE /v1/sessions/{id}[?serverId=]``."""
        holders = [
            s
            for s in self._runtime.live_servers(self._now())
            if any(session["id"] == session_id for session in s.sessions)
            and (server_id is None or s.hostname == server_id)
        ]
        if not holders:
            raise NotFound("session not found")
        if len(holders) > 1:
            names = ", ".join(sorted(s.hostname for s in holders))
            raise Conflict(f"session {session_id} is on {names}: give ?serverId=")
        _, target = await self._target(holders[0].hostname)
        answer = await self._call(target, "DELETE", f"/v1/sessions/{session_id}")
        if answer.status == 404:
            raise NotFound("session not found")
        if answer.status != 200:
            raise BadGateway(f"the agent answered {answer.status}: {answer.error}")
        return {
            "status": "success",
            "code": 200,
            "message": "Session close request sent successfully",
        }

    async def configure(self, hostname: str, body: Any) -> dict[str, Any]:
        """``POST /v1/servers/{server}/config``: allowed DCV settings only."""
        entries = go_fields(body, {"config": list})["config"]
        checked = []
        for entry in entries:
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
