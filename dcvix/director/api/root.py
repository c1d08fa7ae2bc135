"""One Klein app from the audiences' routes, each behind its declared check."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from inspect import isawaitable
from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from dcvix.common.http import error_response, install_error_handlers, json_response
from dcvix.director.api.authz import Gate, Role, RouteSpec, authorized, routes_of
from dcvix.director.registry import StoreFull

log = Logger()

REGISTER_PATH = b"/v1/agent/register"
REGISTER_BODY_LIMIT = 16 * 1024
STORE_FULL = "insufficient storage: the director cannot record this now"


def store_full(request: IRequest, failure: Failure) -> bytes:
    """507 and one line naming the disk, not a 500 with a traceback.

    A full disk is the operator's to fix, and nothing was written (the
    transaction was rolled back); the same call works once space is freed.
    """
    log.error(
        "{method} {path} not recorded: {error} (free space on the disk that "
        "holds it; the director goes on)",
        method=request.method.decode("ascii", "replace"),
        path=request.path.decode("ascii", "replace"),
        error=str(failure.value),
    )
    return error_response(request, 507, STORE_FULL)


class DirectorRoot:
    """The director's whole API.

    Args:
        max_body_bytes: the request body cap (register has its own, 16 KiB).
        gate: checks callers against each route's role.
        audiences: objects whose :func:`~.authz.authorized` methods are routes.
    """

    def __init__(
        self, max_body_bytes: int, gate: Gate, audiences: Sequence[object]
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.app = Klein()
        # Before the catch-all of install_error_handlers: the first match wins.
        self.app.handle_errors(StoreFull)(store_full)
        install_error_handlers(self.app)
        self.routes: list[RouteSpec] = []
        self._gate = gate
        for audience in (self, *audiences):
            for spec, handler in routes_of(audience):
                self._install(type(audience).__name__, spec, handler)

    def _install(
        self, owner: str, spec: RouteSpec, handler: Callable[..., Any]
    ) -> None:
        gate = self._gate

        async def checked(request: IRequest, **kwargs: Any) -> Any:
            caller = await gate.check(spec.role, request)
            if spec.role is Role.PUBLIC:
                result = handler(request, **kwargs)
            else:
                result = handler(request, caller, **kwargs)
            return await result if isawaitable(result) else result

        self.app.route(
            spec.path, methods=[spec.method], endpoint=f"{owner}.{handler.__name__}"
        )(checked)
        self.routes.append(spec)

    def resource(self) -> IResource:
        """The twisted.web resource serving every route."""
        return self.app.resource()

    def body_limit(self, path: bytes) -> int:
        """Bytes a request body to ``path`` may have (register: 16 KiB)."""
        if path.rstrip(b"/") == REGISTER_PATH:
            return REGISTER_BODY_LIMIT
        return self.max_body_bytes

    @authorized("GET", "/v1/health", role=Role.PUBLIC)
    def health(self, request: IRequest) -> bytes:
        """``GET /v1/health``: the director is up."""
        return json_response(request, 200, {"status": "healthy"})
