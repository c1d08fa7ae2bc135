"""The director's calls to agents: mTLS, the agent known by its pinned key.

Each agent gets its own connection pool, keyed by GUID and never by address:
the URL host is a made-up ``<guid>.agent.invalid`` that an endpoint factory
maps to wherever the agent is now. When its address changes, or it is revoked,
its pool is closed. The TLS check is the pin (chain to our CA + the agent's
key); no host name, IP or DNS is involved.

The client certificate is the director's own, re-read when its files change
(the same files the listener reloads), so a re-issued certificate is used for
the next connection. Stopping the service closes every pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import treq
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from dcvix.common.http import CLIENT_IDLE
from dcvix.common.pki import (
    load_certificates,
    load_private_key,
    public_key_fingerprint,
)
from dcvix.common.tls import PinnedKeyClientTLS, files_signature
from dcvix.common.webclient import Answer, json_call

log = Logger()

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
        self,
        reactor: Any,
        target: AgentAddress,
        creator: PinnedKeyClientTLS,
        generation: int,
    ) -> None:
        self.target = target
        self.generation = generation
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        # Dropped before the agent's idle timeout closes it under a request.
        self.pool.cachedConnectionTimeout = CLIENT_IDLE
        self.pool.retryAutomatically = False
        agent = Agent.usingEndpointFactory(
            reactor, _PinnedEndpoints(reactor, target, creator), pool=self.pool
        )
        self.http = treq.client.HTTPClient(agent)


class AgentClient(Service):
    """Calls agents as the director (its certificate is the client certificate).

    Args:
        reactor: network and clock.
        ca_certificates: the CA agents' certificates must chain to.
        certificate_file, key_file: the director's certificate and key.
    """

    def __init__(
        self,
        reactor: Any,
        ca_certificates: list[x509.Certificate],
        certificate_file: Path,
        key_file: Path,
        write_timeout: float = WRITE_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self._write_timeout = write_timeout
        self._cas = ca_certificates
        self._files = (certificate_file, key_file)
        self._signature = files_signature(self._files)
        self._certificate, self._key = self._read()
        self._generation = 0
        self._connections: dict[str, _AgentConnection] = {}

    def _read(self) -> tuple[x509.Certificate, PrivateKeyTypes]:
        certificate_file, key_file = self._files
        certificate = load_certificates(certificate_file.read_bytes())[0]
        key = load_private_key(key_file.read_bytes())
        if public_key_fingerprint(certificate.public_key()) != public_key_fingerprint(
            key.public_key()
        ):
            raise ValueError("the key does not match the certificate")
        return certificate, key

    def _refresh(self) -> None:
        """Re-read the certificate when its files changed; keep it if they are bad.

        Bad files are logged once and tried again at their next change.
        """
        signature = files_signature(self._files)
        if signature == self._signature:
            return
        self._signature = signature
        try:
            self._certificate, self._key = self._read()
        except (OSError, ValueError, IndexError) as error:
            log.error(
                "cannot reload the director's client certificate ({error}): "
                "keeping the current one",
                error=str(error),
            )
            return
        self._generation += 1

    @property
    def certificate(self) -> x509.Certificate:
        """The client certificate the next new connection presents."""
        self._refresh()
        return self._certificate

    def _connection(self, target: AgentAddress) -> _AgentConnection:
        self._refresh()
        current = self._connections.get(target.guid)
        if (
            current is not None
            and current.target == target
            and current.generation == self._generation
        ):
            return current
        if current is not None:
            self.forget(target.guid)
        creator = PinnedKeyClientTLS(
            self._cas, target.pin, self._certificate, self._key
        )
        fresh = _AgentConnection(self._reactor, target, creator, self._generation)
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
        """One request to an agent; reads default to 10 s, writes to ``write_timeout``.

        Raises:
            twisted.internet.defer.TimeoutError: no answer in time.
            Exception: connection or TLS failures (a wrong key among them).
        """
        if timeout is None:
            timeout = READ_TIMEOUT if method == "GET" else self._write_timeout
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

    def stopService(self) -> Deferred[None]:
        """Close every pool, so the reactor stops with no connection left."""
        super().stopService()
        return Deferred.fromCoroutine(self.close())
