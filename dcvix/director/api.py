"""The director's HTTPS API (routes are added issue by issue)."""

from __future__ import annotations

from klein import Klein
from twisted.web.iweb import IRequest

from dcvix.common.http import install_error_handlers, json_response

REGISTER_BODY_LIMIT = 16 * 1024


class DirectorAPI:
    """Routes of the director."""

    app = Klein()
    install_error_handlers(app)

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes

    def body_limit(self, path: bytes) -> int:
        """Bytes a request body to ``path`` may have (register: 16 KiB)."""
        if path.rstrip(b"/") == b"/v1/agent/register":
            return REGISTER_BODY_LIMIT
        return self.max_body_bytes

    @app.route("/v1/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        """``GET /v1/health``, no auth: the director is up."""
        return json_response(request, 200, {"status": "healthy"})
