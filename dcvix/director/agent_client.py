"""The director's calls to agents: mTLS, the agent known by its pinned key.

Each agent gets its own connection pool, keyed by GUID and never by address:
the URL host is a made-up ``<guid>.agent.invalid`` that an endpoint factory
maps to wherever the agent is now. When its address changes, or it is revoked,
its pool is closed. The TLS check is the pin (chain to our CA + the agent's
key); no host name, IP or DNS is involved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import treq
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from dcvix.common.tls import PinnedKeyClientTLS
from dcvix.common.webclient import Answer, json_call

READ_TIMEOUT = 10.0
WRITE_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True)
class AgentAddress:
    """Where and how to reach one agent."""

    guid: str
    host: str
    port: int
    pin: str


@implementer(IAgentEndpointFactory)
class _PinnedEndpoints:
    def __init__(self, reactor: Any, target: AgentAddress, creator: Any) -> None:
        self._reactor = reactor
        self._target = target
        self._creator = creator

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        return wrapClientTLS(
            self._creator,
            HostnameEndpoint(
                self._reactor,
                self._target.host.encode("idna"),
                self._target.port,
                timeout=CONNECT_TIMEOUT,
            ),
        )


class _AgentConnection:
    def __init__(
        self, reactor: Any, target: AgentAddress, creator: PinnedKeyClientTLS
    ) -> None:
        self.target = target
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.retryAutomatically = False
        agent = Agent.usingEndpointFactory(
            reactor, _PinnedEndpoints(reactor, target, creator), pool=self.pool
        )
        self.http = treq.client.HTTPClient(agent)


class AgentClient:
    """Calls agents as the director (its certificate is the client certificate).

    Args:
        reactor: network and clock.
        ca_certificates: the CA agents' certificates must chain to.
        certificate, key: the director's certificate and key.
    """

    def __init__(
        self,
        reactor: Any,
        ca_certificates: list[x509.Certificate],
        certificate: x509.Certificate,
        key: PrivateKeyTypes,
    ) -> None:
        self._reactor = reactor
        self._cas = ca_certificates
        self._certificate = certificate
        self._key = key
        self._connections: dict[str, _AgentConnection] = {}

    def _connection(self, target: AgentAddress) -> _AgentConnection:
        current = self._connections.get(target.guid)
        if current is not None and current.target == target:
            return current
        if current is not None:
            self.forget(target.guid)
        creator = PinnedKeyClientTLS(
            self._cas, target.pin, self._certificate, self._key
        )
        fresh = _AgentConnection(self._reactor, target, creator)
        self._connections[target.guid] = fresh
        return fresh

    def forget(self, guid: str) -> Deferred[None] | None:
        """Drop an agent's pooled connections (address changed, or revoked)."""
        connection = self._connections.pop(guid, None)
        if connection is None:
            return None
        closed: Deferred[None] = connection.pool.closeCachedConnections()
        return closed

    async def call(
        self,
        target: AgentAddress,
        method: str,
        path: str,
        payload: Any = None,
        timeout: float | None = None,
    ) -> Answer:
        """One request to an agent; reads default to 10 s, writes to 30 s.

        Raises:
            twisted.internet.defer.TimeoutError: no answer in time.
            Exception: connection or TLS failures (a wrong key among them).
        """
        if timeout is None:
            timeout = READ_TIMEOUT if method == "GET" else WRITE_TIMEOUT
        connection = self._connection(target)
        url = f"https://{target.guid}.agent.invalid{path}"
        return await json_call(
            connection.http, self._reactor, method, url, payload, timeout
        )

    async def close(self) -> None:
        """Close every pooled connection."""
        for guid in list(self._connections):
            closing = self.forget(guid)
            if closing is not None:
                await closing
