"""What end users call with their login cookie: servers, sessions, connecting.

Go's shapes come first (the Go launcher reads them); ours are added beside.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from dcvix.common.errors import Forbidden
from dcvix.common.http import client_address, json_response, read_json
from dcvix.common.jsonfields import decode
from dcvix.director.api.authz import Role, authorized
from dcvix.director.api.render import session_json
from dcvix.director.audit import Audit
from dcvix.director.portal import Connection, Portal
from dcvix.director.requests import ConfigRequest, UserSessionRequest, config_detail
from dcvix.director.tokens import Claims


def _arg(request: IRequest, name: bytes) -> str:
    value: bytes = request.args.get(name, [b""])[0]
    return value.decode("utf-8", "replace")


class UserRoutes:
    """``/v1/user/*`` but logins.

    Args:
        portal: the user rules.
        audit: where sessions and connection tokens are recorded.
    """

    def __init__(self, portal: Portal, audit: Audit) -> None:
        self._portal = portal
        self._audit = audit

    @authorized("GET", "/v1/user/servers", role=Role.USER)
    async def servers(self, request: IRequest, caller: Claims) -> bytes:
        """``{"servers": [names], "details": {"workstations", "pools"}}``.

        ``servers`` is Go's: the user's workstations then their pools'
        members, each once, ``ALLOW_CUSTOM`` passed through.
        """
        return json_response(request, 200, await self._portal.overview(caller.user))

    @authorized("POST", "/v1/user/sessions", role=Role.USER)
    async def create_session(self, request: IRequest, caller: Claims) -> bytes:
        """``{"serverId" | "poolId", "sessionType"}``: the user's session there.

        200 ``{"sessionID", "serverId"}`` (an existing session of that type is
        reused); 403 not granted; 404 unknown server; 409 offline or console
        in use; 503 no pool member online; 502/504 agent trouble.
        """
        body = decode(UserSessionRequest, read_json(request))
        answer = await self._portal.create(caller.user, body)
        await self._audit.record(
            caller.user,
            "user session",
            answer["sessionID"],
            f"server={answer['serverId']}"
            + (f" pool={body.pool_id}" if body.pool_id else ""),
            address=client_address(request),
        )
        return json_response(request, 200, answer)

    @authorized("GET", "/v1/user/sessions", role=Role.USER)
    async def sessions(self, request: IRequest, caller: Claims) -> bytes:
        """The caller's sessions on online servers (the admin listing's shape)."""
        found = [
            session_json(server, session)
            for server, session in await self._portal.sessions(caller.user)
        ]
        found.sort(key=lambda s: s["uid"])
        return json_response(request, 200, found)

    @authorized("DELETE", "/v1/user/sessions/<string:session_id>", role=Role.USER)
    async def close_session(
        self, request: IRequest, caller: Claims, session_id: str
    ) -> bytes:
        """``?serverId=``: close one of the caller's sessions.

        Another user's session is 404; an id on two of the caller's servers
        without ``serverId`` is 409.
        """
        server = _arg(request, b"serverId")
        answer = await self._portal.close(caller.user, session_id, server or None)
        await self._audit.record(
            caller.user,
            "close user session",
            session_id,
            f"server={server or '-'}",
            address=client_address(request),
        )
        return json_response(request, 200, answer)

    async def _connection(self, request: IRequest, caller: Claims) -> Connection:
        # A GET that issues a token: only the UI's own page (or a client that
        # sends no Sec-Fetch-Site, like the launcher and curl) may ask.
        site = request.getHeader(b"sec-fetch-site")
        if site not in (None, b"same-origin", b"none"):
            raise Forbidden("connection tokens are for this site's pages only")
        connection = await self._portal.connection(
            caller.user,
            _arg(request, b"serverId"),
            _arg(request, b"sessionId"),
            client_address(request),
        )
        await self._audit.record(
            caller.user,
            "connection token",
            connection.issued.session,
            f"server={connection.issued.server}",
            address=client_address(request),
        )
        return connection

    @authorized("GET", "/v1/user/connectiontoken", role=Role.USER)
    async def connection_token(self, request: IRequest, caller: Claims) -> bytes:
        """``?serverId=&sessionId=``: ``{"token", "expiresAt", "webUrl"}``.

        For the caller's own session on a server the policy grants. The Go
        launcher's extra ``userId`` is ignored.
        """
        connection = await self._connection(request, caller)
        return json_response(
            request,
            200,
            {
                "token": connection.issued.token,
                "expiresAt": connection.issued.expires.isoformat(),
                "webUrl": connection.web_url,
            },
        )

    @authorized("GET", "/v1/user/connectionfile", role=Role.USER)
    async def connection_file(self, request: IRequest, caller: Claims) -> bytes:
        """``?serverId=&sessionId=``: a ``.dcv`` file for the native client."""
        connection = await self._connection(request, caller)
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", b"application/x-dcv")
        request.setHeader(
            b"Content-Disposition",
            f'attachment; filename="{connection.issued.session}.dcv"'.encode(),
        )
        return connection.dcv_file(caller.user)

    @authorized("POST", "/v1/user/servers/<string:server>/config", role=Role.USER)
    async def configure_server(
        self, request: IRequest, caller: Claims, server: str
    ) -> bytes:
        """``{"config": [{"section", "key", "value"}]}`` on a granted server.

        Settings outside ``config_allow`` → 403, as for admins.
        """
        body = decode(ConfigRequest, read_json(request))
        answer = await self._portal.configure(caller.user, server, body)
        await self._audit.record(
            caller.user,
            "configure server",
            server,
            config_detail(body),
            address=client_address(request),
        )
        return json_response(request, 200, answer)
