"""Declared authorisation: every route names the role its caller must hold.

A route is a method marked with :func:`authorized`; :func:`routes_of` finds
them and the root installs each behind :meth:`Gate.check`, which runs before
the method and hands it the checked caller. A route without the mark is not a
route at all, so a check cannot be forgotten.

Roles:

- ``PUBLIC``: anyone (health, register, logins, logout);
- ``AGENT_CERTIFICATE``: a valid client certificate our CA issued to an agent,
  whatever the registry says (renew decides pending vs revoked itself);
  the route gets a :class:`~dcvix.director.enrolment.PeerIdentity`;
- ``AGENT``: a registered agent with its pinned key, checked against the
  registry at every request; the route gets its
  :class:`~dcvix.director.registry.AgentRecord`;
- ``USER``: a valid login cookie; the route gets its
  :class:`~dcvix.director.tokens.Claims`;
- ``ADMIN``: a valid admin login of a user who is still admin in the policy.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from cryptography import x509
from twisted.web.iweb import IRequest

from dcvix.common.http import peer_certificate
from dcvix.director.enrolment import PeerIdentity
from dcvix.director.registry import AgentRecord
from dcvix.director.tokens import Claims

F = TypeVar("F", bound=Callable[..., Any])

COOKIE = b"dcvix_session"
_MARK = "__dcvix_route__"


class Role(enum.Enum):
    """Who may call a route."""

    PUBLIC = "public"
    AGENT_CERTIFICATE = "agent certificate"
    AGENT = "agent"
    USER = "user"
    ADMIN = "admin"


@dataclass(frozen=True)
class RouteSpec:
    """A route's method, path (Klein syntax) and role."""

    method: str
    path: str
    role: Role


def authorized(method: str, path: str, *, role: Role) -> Callable[[F], F]:
    """Mark a method as the route ``method path``, callable by ``role`` only.

    Every role but ``PUBLIC`` passes the checked caller as the argument after
    the request.
    """

    def mark(function: F) -> F:
        setattr(function, _MARK, RouteSpec(method, path, role))
        return function

    return mark


def routes_of(audience: object) -> list[tuple[RouteSpec, Callable[..., Any]]]:
    """The marked routes of an object, with their bound methods."""
    found: list[tuple[RouteSpec, Callable[..., Any]]] = []
    for _name, method in inspect.getmembers(audience, inspect.ismethod):
        spec = getattr(method, _MARK, None)
        if isinstance(spec, RouteSpec):
            found.append((spec, method))
    return found


def login_cookie(request: IRequest) -> str | None:
    """The ``dcvix_session`` cookie's value, if any."""
    value = request.getCookie(COOKIE)
    return value.decode("ascii", "replace") if value else None


class Callers(Protocol):
    """Who holds a login cookie (:class:`~dcvix.director.login.LoginService`)."""

    async def identify(self, token: str | None) -> Claims:
        """Any valid login."""

    async def require_admin(self, token: str | None) -> Claims:
        """A valid admin login of a user who is still admin."""


class Agents(Protocol):
    """Which agent holds a client certificate (:class:`~.enrolment.Enrolment`)."""

    def identify(self, peer: x509.Certificate | None) -> PeerIdentity:
        """A certificate our CA issued to an agent, valid now."""

    async def authenticate(self, peer: PeerIdentity) -> AgentRecord:
        """The registered agent with that pinned key."""


class Gate:
    """Checks a caller against a role, with the services that know callers."""

    def __init__(self, logins: Callers, enrolment: Agents) -> None:
        self._logins = logins
        self._enrolment = enrolment

    async def check(self, role: Role, request: IRequest) -> Any:
        """The caller of ``request`` if it holds ``role``.

        Raises:
            Unauthorized: no valid credentials for the role.
            Forbidden: valid credentials, but not enough (a non-admin).
        """
        if role is Role.PUBLIC:
            return None
        if role is Role.AGENT_CERTIFICATE:
            return self._enrolment.identify(peer_certificate(request))
        if role is Role.AGENT:
            peer = self._enrolment.identify(peer_certificate(request))
            return await self._enrolment.authenticate(peer)
        if role is Role.USER:
            return await self._logins.identify(login_cookie(request))
        assert role is Role.ADMIN
        return await self._logins.require_admin(login_cookie(request))
