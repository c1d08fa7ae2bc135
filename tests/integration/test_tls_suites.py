"""The TLS clients of both daemons offer TLS 1.3, and TLS 1.2 ECDHE + AEAD only.

A stand-in server (Python's ``ssl`` in a thread) that speaks a single suite
plays the agent for the director's client (pinned key) and the director for the
agent's clients (by name, and the first contact that checks nothing): against a
CBC, SHA-1 or RSA-key-exchange suite the handshake fails, against a good one it
completes. (The daemons' listeners are tried in ``test_hardening.py``.)
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
)
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from certs import CA, Leaf
from dcvix.common.pki import public_key_fingerprint
from dcvix.common.tls import (
    PinnedKeyClientTLS,
    director_client_tls,
    unverified_client_tls,
)

AGENT_CN = "dcvix-agent-6f1c0a52-9d2e-4c37-8b1a-2f3e4d5c6b7a"


@dataclass
class World:
    ca: CA
    director: Leaf
    agent: Leaf
    rsa_director: Leaf
    folder: Path


@pytest.fixture
def world(tmp_path: Path) -> World:
    ca = CA.create()
    key = rsa.generate_private_key(65537, 2048)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=7)
    return World(
        ca,
        ca.issue("dcvix-director", ["dcvix-director"]),
        ca.issue(AGENT_CN, ["ws1.example"], ["127.0.0.1"]),
        ca.issue(
            "dcvix-director", ["dcvix-director"], key=cast(Any, key), not_after=later
        ),
        tmp_path,
    )


class OneSuiteServer:
    """Accepts one connection and makes its handshake with one suite (or TLS 1.3)."""

    def __init__(self, leaf: Leaf, folder: Path, suite: str | None) -> None:
        certificate, key = leaf.write(folder, "stand-in")
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certificate, key)
        if suite is None:
            self.context.minimum_version = ssl.TLSVersion.TLSv1_3
        else:
            self.context.minimum_version = ssl.TLSVersion.TLSv1_2
            self.context.maximum_version = ssl.TLSVersion.TLSv1_2
            self.context.set_ciphers(f"{suite}:@SECLEVEL=0")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = int(self.listener.getsockname()[1])

    def serve_one(self) -> str:
        """The suite agreed on, or why the handshake failed."""
        try:
            connection, _ = self.listener.accept()
        finally:
            self.listener.close()
        connection.settimeout(10)
        try:
            with self.context.wrap_socket(connection, server_side=True) as tls:
                cipher = tls.cipher()
                assert cipher is not None
                return f"{tls.version()} {cipher[0]}"
        except (ssl.SSLError, OSError) as error:
            return f"failed: {error}"


@implementer(IHandshakeListener)
class Client(Protocol):
    def __init__(self) -> None:
        self.done: Deferred[None] = Deferred()

    def handshakeCompleted(self) -> None:
        assert self.transport is not None
        if not self.done.called:
            self.done.callback(None)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        if not self.done.called:
            self.done.errback(reason)


async def try_handshake(
    creator: IOpenSSLClientConnectionCreator, server: OneSuiteServer
) -> tuple[bool, str]:
    """Whether our client completed the handshake, and what the server saw."""
    from twisted.internet import reactor

    serving = threads.deferToThread(server.serve_one)
    endpoint = wrapClientTLS(
        creator, TCP4ClientEndpoint(reactor, "127.0.0.1", server.port, timeout=10)
    )
    client = await connectProtocol(endpoint, Client())
    try:
        await client.done
        completed = True
    except Exception:
        completed = False
    return completed, await serving


Clients = dict[str, Callable[[World], tuple[IOpenSSLClientConnectionCreator, Leaf]]]
CLIENTS: Clients = {
    # The director calling an agent: chain to the CA and the pinned key.
    "director to agent": lambda w: (
        PinnedKeyClientTLS(
            [w.ca.certificate],
            public_key_fingerprint(w.agent.key.public_key()),
            w.director.certificate,
            w.director.key,
        ),
        w.agent,
    ),
    # An agent calling the director (updates, renewals), with its certificate.
    "agent to director": lambda w: (
        director_client_tls([w.ca.certificate], w.agent.certificate, w.agent.key),
        w.director,
    ),
    # An agent's first contact, before it knows any CA.
    "first contact": lambda w: (unverified_client_tls(), w.director),
    # A director whose certificate has an RSA key (an adopted Go one).
    "agent to an RSA director": lambda w: (
        director_client_tls([w.ca.certificate]),
        w.rsa_director,
    ),
}
WEAK = {
    "ecdsa": ["ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384"],
    "rsa": ["AES128-GCM-SHA256", "AES128-SHA", "ECDHE-RSA-AES128-SHA"],
}
GOOD = {
    "ecdsa": ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"],
    "rsa": ["ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"],
}


def key_type(name: str) -> str:
    return "rsa" if "RSA" in name else "ecdsa"


@pytest.fixture(params=list(CLIENTS))
def client_name(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param


@pytest_twisted.ensureDeferred
async def test_clients_refuse_a_server_that_speaks_only_a_weak_suite(
    world: World, client_name: str
) -> None:
    refused = {}
    for suite in WEAK[key_type(client_name)]:
        creator, leaf = CLIENTS[client_name](world)
        server = OneSuiteServer(leaf, world.folder, suite)
        refused[suite] = await try_handshake(creator, server)
    assert {suite: done for suite, (done, _) in refused.items()} == dict.fromkeys(
        refused, False
    ), refused
    for _, seen in refused.values():
        assert seen.startswith("failed:"), seen


@pytest_twisted.ensureDeferred
async def test_clients_speak_tls_1_3_and_tls_1_2_ecdhe_aead(
    world: World, client_name: str
) -> None:
    for suite in [None, *GOOD[key_type(client_name)]]:
        creator, leaf = CLIENTS[client_name](world)
        server = OneSuiteServer(leaf, world.folder, suite)
        completed, seen = await try_handshake(creator, server)
        assert completed, seen
        expected = "TLSv1.3 " if suite is None else f"TLSv1.2 {suite}"
        assert seen.startswith(expected), seen
