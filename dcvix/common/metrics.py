"""Prometheus metrics of a daemon: its registry, the ``/metrics`` page, the listener.

The exposition format, the process metrics and the parser the tests read
scrapes with are the official ``prometheus_client`` library's. Each daemon
has a registry of its own (never the library's global one), so that tests
running several in one process count apart.

The page renders in the reactor thread: collectors read the daemon's memory,
which only the reactor changes. (The library's own Twisted resource renders
in a thread pool, where those reads would race the reactor.) A scrape costs
what the registry holds, a few hundred series, whatever the fleet's size:
labels never carry session ids, user names or host names.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    GCCollector,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from dcvix import __version__
from dcvix.common.config import MetricsSection
from dcvix.common.files import read_secret_line
from dcvix.common.http import error_response
from dcvix.common.validate import split_host_port

log = Logger()

PATH = b"metrics"
# Scrapes are not rate-limited: a token this long cannot be guessed by trying.
MIN_TOKEN = 16
REFRESH_AT_MOST = 1.0  # seconds between two refreshes of the gauges


def new_registry(daemon: str) -> CollectorRegistry:
    """A daemon's registry: process, platform and GC metrics, and build info.

    Counters and histograms get no ``*_created`` series (the library's
    switch is process-wide): they doubled a scrape for nothing dashboards use.
    """
    disable_created_metrics()
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    Info("dcvix_build", "The dcvix daemon running.", registry=registry).info(
        {"daemon": daemon, "version": __version__}
    )
    return registry


def metrics_token(section: MetricsSection) -> str:
    """The bearer token scrapes must send ("" when none is configured).

    Raises:
        ValueError: ``token_file`` cannot be read, or others may read it.
    """
    if not section.token_file:
        return ""
    try:
        token = read_secret_line(Path(section.token_file)).strip()
    except ValueError as error:
        raise ValueError(f"[metrics] token_file {error}") from None
    if len(token) < MIN_TOKEN:
        raise ValueError(
            f"[metrics] token_file {section.token_file}: the token is shorter than "
            f"{MIN_TOKEN} characters (make one with: openssl rand -hex 32)"
        )
    return token


class MetricsPage(Resource):
    """``GET /metrics``: the registry in Prometheus's text format.

    With a token, a scrape must send ``Authorization: Bearer <token>``
    (compared in constant time); otherwise 401.
    """

    isLeaf = True

    def __init__(
        self,
        registry: CollectorRegistry,
        token: str = "",
        refresh: Callable[[], Coroutine[Any, Any, None]] | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__()
        self._registry = registry
        self._refresh = refresh
        self._clock = clock
        self._refreshed = float("-inf")
        self._token = token.encode()
        self.guarded = bool(token)

    def allowed(self, request: IRequest) -> bool:
        """Whether ``request`` may read the metrics."""
        if not self._token:
            return True
        # Bytes throughout: a header that is not UTF-8 is a wrong token.
        header = request.getHeader(b"authorization") or b""
        scheme, _, value = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(
            value.strip(), self._token
        )

    async def scrape(self) -> bytes:
        """The registry's text, once ``refresh`` set the gauges read at scrape time.

        A refresh that fails leaves the gauges at their last values (logged):
        the scrape still answers.
        """
        if self._refresh is not None and self._due():
            try:
                await self._refresh()
            except Exception:
                log.failure("metrics: gauges not refreshed")
        return generate_latest(self._registry)

    def _due(self) -> bool:
        """Whether ``refresh`` runs for this scrape: at most once a second.

        Prometheus scrapes every 15 to 60 s; anyone scraping in a loop (every
        local user reaches a loopback listener) costs the fleet's walk or the
        files' reads once a second, no more. Without a clock: every scrape.
        """
        if self._clock is None:
            return True
        now = self._clock.seconds()
        if now - self._refreshed < REFRESH_AT_MOST:
            return False
        self._refreshed = now
        return True

    def refuse(self, request: IRequest) -> bytes:
        """401, and how to authenticate."""
        request.setHeader(b"www-authenticate", b'Bearer realm="metrics"')
        return error_response(request, 401, "a valid bearer token is required")

    def render_GET(self, request: Request) -> bytes | int:
        """The scrape, or 401."""
        if request.postpath not in ([], [b""]):
            return error_response(request, 404, "not found")
        if not self.allowed(request):
            return self.refuse(request)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"cache-control", b"no-store")
        gone: list[Failure] = []
        request.notifyFinish().addErrback(gone.append)

        def answer(body: bytes) -> None:
            if not gone:
                request.write(body)
                request.finish()

        def failed(failure: Failure) -> None:
            log.failure("metrics: the scrape failed", failure)
            if not gone:
                request.setResponseCode(500)
                request.finish()

        ensureDeferred(self.scrape()).addCallbacks(answer, failed)
        return NOT_DONE_YET

    def render_HEAD(self, request: Request) -> bytes | int:
        """As GET, without the body (Twisted drops it)."""
        return self.render_GET(request)


class _Root(Resource):
    """``/metrics``, and a JSON 404 for anything else."""

    def __init__(self, page: MetricsPage) -> None:
        super().__init__()
        self._page = page

    def getChild(self, path: bytes, request: Request) -> Resource:
        """The page for ``/metrics``; else a 404."""
        if path == PATH:
            return self._page
        return _NotFound()

    def render(self, request: Request) -> bytes:
        """``/`` itself."""
        return _not_here(request)


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return _not_here(request)


def _not_here(request: Request) -> bytes:
    return error_response(request, 404, "not found: the metrics are at /metrics")


def metrics_listener(reactor: IReactorTCP, listen: str, page: MetricsPage) -> IService:
    """Plain HTTP on ``listen`` (``IP:port``) serving ``page`` at ``/metrics``.

    A busy port fails the daemon's start (exit 1), as for its main port.
    """
    host, port = split_host_port(listen)
    assert port is not None  # the LISTEN kind requires one
    site = Site(_Root(page))
    site.displayTracebacks = False
    site.noisy = False
    endpoint = (
        TCP6ServerEndpoint(reactor, port, interface=host)
        if ":" in host
        else TCP4ServerEndpoint(reactor, port, interface=host)
    )
    service = StreamServerEndpointService(endpoint, site)
    service._raiseSynchronously = True
    if not ipaddress.ip_address(host).is_loopback and not page.guarded:
        log.warn(
            "metrics on {listen} without [metrics] token_file: anyone who reaches "
            "that address reads them",
            listen=listen,
        )
    return service
