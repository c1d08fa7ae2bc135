"""The director's HTTPS API (routes are added issue by issue)."""

from __future__ import annotations

from klein import Klein
from twisted.web.iweb import IRequest

from dcvix.common.errors import NotFound
from dcvix.common.http import (
    client_address,
    install_error_handlers,
    json_response,
    peer_certificate,
    read_json,
)
from dcvix.director.enrolment import Enrolment

REGISTER_BODY_LIMIT = 16 * 1024


class DirectorAPI:
    """Routes of the director.

    Args:
        max_body_bytes: the request body cap (register has its own, 16 KiB).
        enrolment: agent registration and renewal.
    """

    app = Klein()
    install_error_handlers(app)

    def __init__(self, max_body_bytes: int, enrolment: Enrolment | None = None) -> None:
        self.max_body_bytes = max_body_bytes
        self._enrolment = enrolment

    def body_limit(self, path: bytes) -> int:
        """Bytes a request body to ``path`` may have (register: 16 KiB)."""
        if path.rstrip(b"/") == b"/v1/agent/register":
            return REGISTER_BODY_LIMIT
        return self.max_body_bytes

    @property
    def enrolment(self) -> Enrolment:
        """The enrolment service (absent only in tests of other routes)."""
        if self._enrolment is None:
            raise NotFound("not found")
        return self._enrolment

    @app.route("/v1/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        """``GET /v1/health``, no auth: the director is up."""
        return json_response(request, 200, {"status": "healthy"})

    @app.route("/v1/agent/register", methods=["POST"])
    async def register(self, request: IRequest) -> bytes:
        """``POST /v1/agent/register``, no auth (TOFU): enrol an agent.

        Body ``{"csr", "guid", "hostname", "registrationToken"?}``. 200 with
        ``{"certificate", "ca", "agentId", "renewalIntervalSeconds"}``; 403
        ``pending approval`` or ``agent denied``; 400, 401, 409, 413, 429.
        """
        answer = await self.enrolment.register(
            read_json(request), client_address(request)
        )
        return json_response(request, 200, answer)

    @app.route("/v1/agent/renew", methods=["POST"])
    async def renew(self, request: IRequest) -> bytes:
        """``POST /v1/agent/renew``, agent certificate: a new certificate.

        Body ``{"csr"}``. 200 with ``{"certificate", "renewalIntervalSeconds"}``;
        403 while pending; 401 when revoked, denied or unknown; 409 key mismatch.
        """
        answer = await self.enrolment.renew(
            peer_certificate(request), read_json(request), client_address(request)
        )
        return json_response(request, 200, answer)
