"""The agent's HTTPS API: health for anyone, everything else for the director only."""

from __future__ import annotations

import socket
from collections.abc import Callable

from cryptography import x509
from klein import Klein
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from dcvix import __version__
from dcvix.agent.dcv import DcvError
from dcvix.agent.report import Reporter
from dcvix.agent.sessions import SessionManager
from dcvix.common.errors import (
    ApiError,
    BadGateway,
    Forbidden,
    GatewayTimeout,
    NotFound,
    Unauthorized,
)
from dcvix.common.http import (
    install_error_handlers,
    json_response,
    peer_certificate,
    read_json,
)
from dcvix.common.jsonfields import go_fields
from dcvix.common.tls import is_director_certificate
from dcvix.common.validate import InvalidInput, NotAllowed


class ServiceUnavailable(ApiError):
    """503: ``dcv`` is not there."""

    status = 503


def _dcv_error(error: DcvError) -> ApiError:
    if error.kind == "timeout":
        return GatewayTimeout(error.message)
    if error.kind == "missing":
        return ServiceUnavailable(error.message)
    return BadGateway(error.message)


class AgentAPI:
    """Routes of the agent.

    Args:
        hostname: the name the agent registered with and reports.
        trusted_cas: the director CAs on disk now (read per request, as they can
            change at registration).
        sessions: DCV sessions through ``dcv``.
        reporter: the stats report.
    """

    app = Klein()

    def __init__(
        self,
        hostname: str = "",
        trusted_cas: Callable[[], list[x509.Certificate]] = list,
        sessions: SessionManager | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self.hostname = hostname or socket.gethostname()
        self._trusted_cas = trusted_cas
        self._sessions = sessions
        self._reporter = reporter

    def _require_director(self, request: IRequest) -> None:
        """Only the director's certificate (CN and SAN ``dcvix-director``) passes.

        The TLS layer already checked the chain against ``ca.pem``; this checks
        it is the director and not another agent of the same CA.
        """
        certificate = peer_certificate(request)
        if certificate is None:
            raise Unauthorized("client certificate required")
        if not is_director_certificate(certificate, self._trusted_cas()):
            raise Forbidden("only the director may call this")

    def _manager(self) -> SessionManager:
        if self._sessions is None:
            raise NotFound("not found")
        return self._sessions

    @app.handle_errors(DcvError)
    def _dcv_failed(self, request: IRequest, failure: Failure) -> bytes:
        error = _dcv_error(failure.value)  # type: ignore[arg-type]
        return json_response(request, error.status, {"error": error.message})

    @app.handle_errors(InvalidInput)
    def _invalid(self, request: IRequest, failure: Failure) -> bytes:
        return json_response(request, 400, {"error": str(failure.value)})

    @app.handle_errors(NotAllowed)
    def _not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        return json_response(request, 403, {"error": str(failure.value)})

    # After the handlers above: Klein tries error handlers in the order given.
    install_error_handlers(app)

    @app.route("/v1/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        """``GET /v1/health``, no client certificate needed: the agent is up."""
        return json_response(request, 200, {"status": "healthy"})

    @app.route("/v1/stats", methods=["GET"])
    async def stats(self, request: IRequest) -> bytes:
        """``GET /v1/stats`` (director only): the report the updater sends."""
        self._require_director(request)
        if self._reporter is None:
            return json_response(
                request, 200, {"hostname": self.hostname, "version": __version__}
            )
        return json_response(request, 200, await self._reporter.build())

    @app.route("/v1/sessions", methods=["GET"])
    async def list_sessions(self, request: IRequest) -> bytes:
        """``GET /v1/sessions`` (director only): every DCV session, Go's shape."""
        self._require_director(request)
        sessions = await self._manager().list()
        return json_response(request, 200, [s.to_json() for s in sessions])

    @app.route("/v1/sessions", methods=["POST"])
    async def create_session(self, request: IRequest) -> bytes:
        """``POST /v1/sessions`` (director only): create, or reuse, a session.

        Body ``{"userId", "sessionType", "sessionId"}``; 201 ``{"sessionID"}``,
        reusing the owner's session of that type. 400 for bad values or an owner
        who may not run it here.
        """
        self._require_director(request)
        fields = go_fields(
            read_json(request), {"userId": str, "sessionType": str, "sessionId": str}
        )
        session_id = await self._manager().create(
            fields["userId"], fields["sessionType"], fields["sessionId"]
        )
        return json_response(request, 201, {"sessionID": session_id})

    @app.route("/v1/sessions/<string:session_id>", methods=["DELETE"])
    async def close_session(self, request: IRequest, session_id: str) -> bytes:
        """``DELETE /v1/sessions/{id}`` (director only): 200, or 404 if unknown."""
        self._require_director(request)
        if not await self._manager().close(session_id):
            raise NotFound(f"no session {session_id}")
        return json_response(request, 200, {})

    @app.route("/v1/config", methods=["POST"])
    async def configure(self, request: IRequest) -> bytes:
        """``POST /v1/config`` (director only): push DCV settings.

        Body ``{"config": [{"section", "key", "value"}]}``; settings outside
        ``config_allow`` → 403; bad values → 400.
        """
        self._require_director(request)
        fields = go_fields(read_json(request), {"config": list})
        await self._manager().configure(fields["config"])
        return json_response(request, 200, {})
