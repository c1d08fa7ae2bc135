"""The agent's HTTPS API (routes are added issue by issue)."""

from __future__ import annotations

from klein import Klein
from twisted.web.iweb import IRequest

from dcvix.common.http import install_error_handlers, json_response


class AgentAPI:
    """Routes of the agent."""

    app = Klein()
    install_error_handlers(app)

    @app.route("/v1/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        """``GET /v1/health``, no client certificate needed: the agent is up."""
        return json_response(request, 200, {"status": "healthy"})
