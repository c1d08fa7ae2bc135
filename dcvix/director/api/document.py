"""``GET /v1/openapi.json``: the director's API document, for anyone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.web.iweb import IRequest

from dcvix.common.http import json_response
from dcvix.director.api.authz import Role, RouteSpec, authorized
from dcvix.director.openapi import director_document


class DocumentRoutes:
    """The OpenAPI document of the routes the director serves.

    Args:
        routes: the routes installed (``DirectorRoot.routes``), read at the
            first request, once the root holds them all.
    """

    def __init__(self, routes: Callable[[], Sequence[RouteSpec]]) -> None:
        self._routes = routes
        self._document: dict[str, Any] | None = None

    @authorized("GET", "/v1/openapi.json", role=Role.PUBLIC)
    def document(self, request: IRequest) -> bytes:
        """The OpenAPI 3.1 document: every route, its body, answers and errors."""
        if self._document is None:
            self._document = director_document(self._routes())
        return json_response(request, 200, self._document)
