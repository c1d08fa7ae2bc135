"""``GET /metrics`` on the director's HTTPS port, behind the scrape token.

Off unless ``[metrics] https = true`` (which needs ``[metrics] token_file``):
then a Prometheus that reaches the director's port but not its loopback
listener scrapes it over TLS. Off, the path is a 404 like any unknown one.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.web.iweb import IRequest

from dcvix.common.errors import NotFound
from dcvix.common.metrics import MetricsPage
from dcvix.director.api.authz import Role, authorized


class MetricsRoutes:
    """``/metrics``.

    Args:
        page: the metrics listener's page (its registry, token and refresh),
            or None when ``[metrics] https`` is off.
    """

    def __init__(self, page: MetricsPage | None = None) -> None:
        self._page = page

    @authorized("GET", "/metrics", role=Role.PUBLIC)
    async def metrics(self, request: IRequest) -> bytes:
        """Prometheus's text format with ``Authorization: Bearer <token>``.

        401 without the token; 404 when ``[metrics] https`` is off.
        """
        if self._page is None:
            raise NotFound("not found")
        if not self._page.allowed(request):
            return self._page.refuse(request)
        body = await self._page.scrape()
        request.setResponseCode(200)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"cache-control", b"no-store")
        return body
