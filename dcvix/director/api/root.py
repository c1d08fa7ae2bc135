"""One Klein app from the audiences' routes, each behind its declared check."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from inspect import isawaitable
from typing import Any, cast

from klein import Klein
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from dcvix.common.http import (
    error_response,
    failure_answer,
    install_error_handlers,
    json_response,
)
from dcvix.common.ratelimit import LogBudget
from dcvix.director.api.authz import Gate, Role, RouteSpec, authorized, routes_of
from dcvix.director.readiness import Readiness
from dcvix.director.registry import StoreError, StoreFull

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


STORE_DOWN = "service unavailable: the director cannot reach its database"
# While the database is down every request fails alike: a few lines a minute
# say so, with how many were left out.
_store_down_lines: LogBudget | None = None


def store_unavailable(request: IRequest, failure: Failure) -> bytes:
    """503 and a line naming the database, not a 500 with a traceback.

    The transaction was rolled back, so nothing changed; the engine connects
    again by itself, and the same call works once the database answers.
    """
    global _store_down_lines  # noqa: PLW0603 - one budget for the process
    if _store_down_lines is None:
        from twisted.internet import reactor  # noqa: PLC0415 - the running one

        _store_down_lines = LogBudget(5, 60.0, cast(IReactorTime, reactor))
    skipped = _store_down_lines.take()
    if skipped is not None:
        log.error(
            "{method} {path} answered 503: {error}{more}",
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("ascii", "replace"),
            error=str(failure.value),
            more=f" ({skipped} more left out)" if skipped else "",
        )
    request.setHeader(b"Retry-After", b"5")
    return error_response(request, 503, STORE_DOWN)


def answer_failure(request: IRequest, failure: Failure) -> bytes:
    """A route's failure as JSON: full disk 507, no database 503, the rest as usual."""
    if failure.check(StoreFull):
        return store_full(request, failure)
    if failure.check(StoreError):
        return store_unavailable(request, failure)
    return failure_answer(request, failure)


Handler = Callable[[IRequest], Coroutine[Any, Any, bytes | None]]


class _Routes(Resource):
    """Klein's resource, but exact fixed paths skip its URL routing.

    Agents' updates are most of what a director answers (10,000 agents every
    30 s), and werkzeug's URL map with Klein's wrapping took some 8 % of each
    (py-spy, bench/update_ingestion.py). A request whose method and path are
    exactly those of a route without parameters runs that route's checked
    handler here, answered as Klein would (the same failure answers); every
    other request (parameters, ``HEAD``, a trailing slash or ``//`` that Klein
    redirects or merges, 404, 405) goes to Klein.
    """

    isLeaf = True

    def __init__(self, klein: IResource, direct: dict[tuple[bytes, bytes], Handler]):
        super().__init__()
        self._klein = klein
        self._direct = direct

    def render(self, request: IRequest) -> Any:
        """Answer a direct route here, anything else through Klein."""
        handler = self._direct.get((request.method, request.path))
        if handler is None:
            return self._klein.render(request)
        done: Deferred[bytes | None] = ensureDeferred(handler(request))
        gone: list[Failure] = []

        def left(reason: Failure) -> None:
            # Cancelled, as with Klein: a login queued for the back ends then
            # leaves the admission queue.
            gone.append(reason)
            done.cancel()

        cast(Request, request).notifyFinish().addErrback(left)

        def answer(body: bytes | None) -> None:
            # A streamed answer may end as the connection is lost, before
            # notifyFinish says so: finishing then would raise.
            if gone or getattr(request, "_disconnected", False):
                return
            if body is not None:
                request.write(body)
            request.finish()

        def failed(failure: Failure) -> None:
            if gone:  # the client left: nobody to answer
                if not failure.check(CancelledError):
                    log.failure("failed after the client left", failure)
                return
            answer(answer_failure(request, failure))

        def unanswered(failure: Failure) -> None:
            log.failure("could not write an answer", failure)
            cast(Request, request).loseConnection()

        done.addCallbacks(answer, failed)
        done.addErrback(unanswered)
        return NOT_DONE_YET


class DirectorRoot:
    """The director's whole API.

    Args:
        max_body_bytes: the request body cap (register has its own, 16 KiB).
        gate: checks callers against each route's role.
        audiences: objects whose :func:`~.authz.authorized` methods are routes.
    """

    def __init__(
        self,
        max_body_bytes: int,
        gate: Gate,
        audiences: Sequence[object],
        readiness: Readiness | None = None,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self._readiness = readiness
        self.app = Klein()
        install_error_handlers(self.app, answer_failure)
        self.routes: list[RouteSpec] = []
        self._direct: dict[tuple[bytes, bytes], Handler] = {}
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
        if "<" not in spec.path:
            self._direct[spec.method.encode(), spec.path.encode()] = checked

    def resource(self) -> IResource:
        """The twisted.web resource serving every route."""
        return _Routes(self.app.resource(), self._direct)

    def body_limit(self, path: bytes) -> int:
        """Bytes a request body to ``path`` may have (register: 16 KiB)."""
        if path.rstrip(b"/") == REGISTER_PATH:
            return REGISTER_BODY_LIMIT
        return self.max_body_bytes

    @authorized("GET", "/v1/health", role=Role.PUBLIC)
    async def health(self, request: IRequest) -> bytes:
        """``GET /v1/health``: the director is up (Go's answer).

        ``?ready=1`` (or ``true``): 200 ``{"status": "ready", "checks"}`` when
        the store answers and the certificates are valid, else 503 with
        ``{"error"}`` naming what failed (see :mod:`dcvix.director.readiness`).
        """
        asked = request.args.get(b"ready", [b""])[-1].lower()
        if asked not in (b"1", b"true", b"yes") or self._readiness is None:
            return json_response(request, 200, {"status": "healthy"})
        ready, checks = await self._readiness.check()
        if ready:
            return json_response(request, 200, {"status": "ready", "checks": checks})
        request.setHeader(b"retry-after", b"5")
        problems = "; ".join(
            f"{name} {found}"
            for name, found in checks.items()
            if not found.startswith("ok")
        )
        return json_response(request, 503, {"error": f"not ready: {problems}"})
