"""Servers and sessions, for admins: list them, create, close, configure."""

from __future__ import annotations

import json

from twisted.web.iweb import IRequest

from dcvix.common.http import (
    client_address,
    json_pieces_response,
    json_response,
    read_json,
)
from dcvix.common.jsonfields import decode
from dcvix.director.api.authz import Role, authorized
from dcvix.director.api.render import FleetRenderer
from dcvix.director.audit import Audit
from dcvix.director.listing import ServerQuery
from dcvix.director.policy import PolicyHolder
from dcvix.director.requests import ConfigRequest, CreateSessionRequest, config_detail
from dcvix.director.sessions import SessionControl
from dcvix.director.tokens import Claims


class SessionRoutes:
    """``/v1/servers``, ``/v1/sessions``.

    Args:
        control: the session service.
        audit: where creates, closes and config pushes are recorded.
        policy: the policy in force (which pools hold a server).
    """

    def __init__(
        self,
        control: SessionControl,
        audit: Audit,
        policy: PolicyHolder,
        renderer: FleetRenderer,
    ) -> None:
        self._control = control
        self._audit = audit
        self._policy = policy
        self._render = renderer

    async def warm(self) -> None:
        """Render new reports ahead of the next listing (a periodic job).

        As a listing will likely show them: online (just reported), with their
        agent's state and their pools.
        """
        reported, agent_state = await self._control.reports()
        pools = self._policy.current.pools_by_host
        self._render.warm(
            reported,
            lambda s: (True, agent_state(s.guid), pools.get(s.hostname, ())),
        )

    @authorized("GET", "/v1/servers", role=Role.ADMIN)
    async def servers(self, request: IRequest, caller: Claims) -> bytes | None:
        """Every reporting server with its sessions (Go's keys, then ours).

        Hostname descending; servers gone quiet are shown ``online: false``.
        ``?online=true|false``, ``?pool=P`` and ``?q=text`` (in the hostname,
        a tag or the agent state) filter; ``?limit=N`` (at most 1000) pages,
        and the answer is then ``{"servers": [...], "next": H or null}``, H
        to pass as ``?after=`` for the next page. 400 for a bad value.
        """
        query = ServerQuery.parse(request.args)
        pools = self._policy.current.pools_by_host
        every = await self._control.servers()
        views = [v for v in every if query.keeps(v, pools.get(v.state.hostname, ()))]
        following = None
        if query.paged:
            views, following = query.page(views)
        listed = self._render.servers(
            (v.state, v.online, v.agent_state, pools.get(v.state.hostname, ()))
            for v in views
        )
        self._render.keep_only([v.state for v in every])
        if query.paged:
            listed = [b'{"servers": ', *listed, b', "next": ']
            listed += (json.dumps(following).encode(), b"}")
        return await json_pieces_response(request, listed)

    @authorized("GET", "/v1/sessions", role=Role.ADMIN)
    async def sessions(self, request: IRequest, caller: Claims) -> bytes | None:
        """Every session of every online server (Go's shape), by user then uid."""
        found = self._render.sessions(await self._control.online_servers())
        return await json_pieces_response(request, found)

    @authorized("POST", "/v1/sessions", role=Role.ADMIN)
    async def create_session(self, request: IRequest, caller: Claims) -> bytes:
        """A session on a registered, online agent.

        Body ``{"serverId", "userId", "sessionId"?, "sessionType"}``; a valid
        ``sessionId`` is kept, else ``dcvix_<uuid4>``. 200 ``{"sessionID",
        "serverId"}``; 404 unknown server; 409 offline; 502/504 agent trouble.
        """
        body = decode(CreateSessionRequest, read_json(request))
        answer = await self._control.create(body)
        await self._audit.record(
            f"admin:{caller.user}",
            "create session",
            answer["sessionID"],
            f"server={answer['serverId']}",
            address=client_address(request),
        )
        return json_response(request, 200, answer)

    @authorized("DELETE", "/v1/sessions/<string:session_id>", role=Role.ADMIN)
    async def close_session(
        self, request: IRequest, caller: Claims, session_id: str
    ) -> bytes:
        """``?serverId=<hostname>``: close it.

        200 ``{"status": "success", "code": 200, "message"}``; 404 unknown; 409
        when the id is on two servers and no ``serverId`` says which; 502, 504.
        """
        raw = request.args.get(b"serverId", [b""])[0].decode("utf-8", "replace")
        answer = await self._control.close(session_id, raw or None)
        await self._audit.record(
            f"admin:{caller.user}",
            "close session",
            session_id,
            f"server={raw or '-'}",
            address=client_address(request),
        )
        return json_response(request, 200, answer)

    @authorized("POST", "/v1/servers/<string:server>/config", role=Role.ADMIN)
    async def configure_server(
        self, request: IRequest, caller: Claims, server: str
    ) -> bytes:
        """Push allowed DCV settings: ``{"config": [{"section", "key", "value"}]}``.

        A setting outside ``config_allow`` → 403, on this side and the agent's.
        """
        body = decode(ConfigRequest, read_json(request))
        answer = await self._control.configure(server, body)
        await self._audit.record(
            f"admin:{caller.user}",
            "configure server",
            server,
            config_detail(body),
            address=client_address(request),
        )
        return json_response(request, 200, answer)
