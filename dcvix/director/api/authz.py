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
- ``ADMIN``: a valid admin login of a user who is still admin in the policy;
- ``GATEWAY``: a peer address within ``[gateway] gateways_list`` (the DCV
  Connection Gateway); the route gets that address.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from cryptography import x509
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from dcvix.common.errors import Forbidden
from dcvix.common.http import client_address, peer_certificate
from dcvix.common.networks import AddressList
from dcvix.common.ratelimit import LogBudget
from dcvix.director.enrolment import PeerIdentity
from dcvix.director.registry import AgentRecord
from dcvix.director.tokens import Claims

log = Logger()

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
    GATEWAY = "gateway"


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
    """The ``dcvix_session`` cookie's value, if exactly one was sent.

    Two are refused (None: not logged in): a page on a sibling host can set
    a second ``dcvix_session`` for the parent domain (cookie tossing), and
    Twisted would silently take the last, logging the victim in as the
    attacker.
    """
    sent = request.requestHeaders.getRawHeaders(b"cookie") or []
    named = sum(
        part.strip().startswith(COOKIE + b"=")
        for header in sent
        for part in header.split(b";")
    )
    value = request.getCookie(COOKIE)
    return value.decode("ascii", "replace") if value and named == 1 else None


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


class Gateways:
    """Which peers may call as the DCV Connection Gateway.

    Addresses and CIDR networks (``[gateway] gateways_list``), matched against
    the socket's peer (an IPv4-mapped IPv6 peer as IPv4), never a header.
    Refusals are logged at most ``REFUSALS_LOGGED`` times a minute.

    Args:
        entries: the configured addresses and networks; empty refuses everyone.
        clock: the time, for the log budget.
    """

    REFUSALS_LOGGED = 10

    def __init__(self, entries: Sequence[str], clock: IReactorTime) -> None:
        self._allowed = AddressList(entries)
        self._refusals = LogBudget(self.REFUSALS_LOGGED, 60.0, clock)

    def admit(self, request: IRequest) -> str:
        """The peer's address, if it is a gateway's.

        Raises:
            Forbidden: it is not.
        """
        peer = client_address(request)
        if peer in self._allowed:
            return peer
        skipped = self._refusals.take()
        if skipped is not None:
            why = (
                "[gateway] gateways_list is empty"
                if not self._allowed
                else "it is not in [gateway] gateways_list"
            )
            log.warn(
                "refused a session resolution from {peer}: {why}"
                + (" ({skipped} more refusals not logged)" if skipped else ""),
                peer=peer,
                why=why,
                skipped=skipped,
            )
        raise Forbidden("forbidden")


class Gate:
    """Checks a caller against a role, with the services that know callers."""

    def __init__(self, logins: Callers, enrolment: Agents, gateways: Gateways) -> None:
        self._logins = logins
        self._enrolment = enrolment
        self._gateways = gateways

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
        if role is Role.GATEWAY:
            return self._gateways.admit(request)
        assert role is Role.ADMIN
        return await self._logins.require_admin(login_cookie(request))
