"""The agent's HTTPS API: health for anyone, everything else for the director only."""

from __future__ import annotations

import socket
from collections.abc import Callable

from cryptography import x509
from klein import Klein
from twisted.web.iweb import IRequest

from dcvix import __version__
from dcvix.common.errors import Forbidden, Unauthorized
from dcvix.common.http import install_error_handlers, json_response, peer_certificate
from dcvix.common.tls import is_director_certificate


class AgentAPI:
    """Routes of the agent.

    Args:
        hostname: the name the agent registered with and reports.
        trusted_cas: the director CAs on disk now (read per request, as they can
            change at registration).
    """

    app = Klein()
    install_error_handlers(app)

    def __init__(
        self,
        hostname: str = "",
        trusted_cas: Callable[[], list[x509.Certificate]] = list,
    ) -> None:
        self.hostname = hostname or socket.gethostname()
        self._trusted_cas = trusted_cas

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

    @app.route("/v1/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        """``GET /v1/health``, no client certificate needed: the agent is up."""
        return json_response(request, 200, {"status": "healthy"})

    @app.route("/v1/stats", methods=["GET"])
    def stats(self, request: IRequest) -> bytes:
        """``GET /v1/stats`` (director only): what the agent reports."""
        self._require_director(request)
        return json_response(
            request, 200, {"hostname": self.hostname, "version": __version__}
        )
