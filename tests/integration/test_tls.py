"""TLS on loopback with the real reactor: optional client certificates, hot
reload, the two client policies (by name, by pinned key) and the TLS versions.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.x509.oid import NameOID
from klein import Klein
from OpenSSL import SSL
from service_identity import VerificationError
from treq.client import HTTPClient
from twisted.internet import threads
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
)
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import (
    Certificate,
    trustRootFromCertificates,
)
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.iweb import IPolicyForHTTPS, IRequest
from zope.interface import implementer

from certs import CA, Leaf, foreign_ca
from dcvix.common.http import (
    DcvixSite,
    install_error_handlers,
    json_response,
    peer_certificate,
)
from dcvix.common.pki import public_key_fingerprint
from dcvix.common.tls import (
    FixedTLSPolicy,
    PinnedKeyClientTLS,
    ReloadingServerTLS,
    ServerFiles,
    director_client_tls,
    server_options,
)

GUID = "6f1c0a52-9d2e-4c37-8b1a-2f3e4d5c6b7a"
AGENT_CN = f"dcvix-agent-{GUID}"
REFUSED = (
    SSL.Error,
    VerificationError,
    ConnectionLost,
    ConnectionDone,
    ResponseNeverReceived,
    ResponseFailed,
)


class PeerAPI:
    """Says which client certificate the TLS layer handed to the route."""

    app = Klein()
    install_error_handlers(app)

    @app.route("/v1/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        return json_response(request, 200, {"status": "healthy"})

    @app.route("/peer", methods=["GET"])
    def peer(self, request: IRequest) -> bytes:
        certificate = peer_certificate(request)
        if certificate is None:
            return json_response(request, 200, {"peer": None})
        (cn,) = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return json_response(
            request,
            200,
            {"peer": cn.value, "serial": str(certificate.serial_number)},
        )


# ------------------------------------------------------------------ fixtures


@dataclass
class Pki:
    folder: Path
    ca: CA
    ca_path: Path
    director: Leaf
    director_cert: Path
    director_key: Path
    agent: Leaf
    agent_cert: Path
    agent_key: Path

    def director_files(self, client_cas: bool = True) -> ServerFiles:
        return ServerFiles(
            self.director_cert,
            self.director_key,
            chain=self.ca_path,
            client_cas=self.ca_path if client_cas else None,
        )


@pytest.fixture(params=["p256", "ed25519"])
def pki(request: pytest.FixtureRequest, tmp_path: Path) -> Pki:
    """A CA, the director's certificate and an agent's (the agent key type varies)."""
    ca = CA.create()
    director = ca.issue("dcvix-director", ["dcvix-director"])
    agent = ca.issue(AGENT_CN, ["ws1.example"], ["127.0.0.1"], key_type=request.param)
    director_cert, director_key = director.write(tmp_path, "server")
    agent_cert, agent_key = agent.write(tmp_path, "agent")
    return Pki(
        tmp_path,
        ca,
        ca.write(tmp_path),
        director,
        director_cert,
        director_key,
        agent,
        agent_cert,
        agent_key,
    )


@pytest.fixture
def reactor() -> Iterator[Any]:
    from twisted.internet import reactor as global_reactor

    yield global_reactor
    for probe in Probe.opened:
        if not probe.closed.called and probe.transport is not None:
            probe.transport.abortConnection()  # type: ignore[attr-defined]
    Probe.opened.clear()
    pytest_twisted.blockon(_settle(global_reactor))
    leftovers = [c for c in global_reactor.getDelayedCalls() if c.active()]
    assert not leftovers, f"test left delayed calls behind: {leftovers}"


@inlineCallbacks
def _settle(reactor: Any, turns: int = 100) -> Any:
    for _ in range(turns):
        if not [c for c in reactor.getDelayedCalls() if c.active()]:
            return
        yield deferLater(reactor, 0.01, lambda: None)


@pytest.fixture
def serve(reactor: Any) -> Iterator[Callable[..., int]]:
    """Serve ``PeerAPI`` over TLS on 127.0.0.1; ports closed after the test."""
    ports: list[Any] = []

    def listen(creator: ReloadingServerTLS) -> int:
        site = DcvixSite(PeerAPI().app.resource())
        port = reactor.listenSSL(0, site, creator, interface="127.0.0.1")
        ports.append(port)
        return int(port.getHost().port)

    yield listen
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def log_events() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def replace(path: Path, data: bytes) -> None:
    """Write a file the way the daemons do: a new file renamed over the old."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_bytes(data)
    os.replace(fresh, path)


# ------------------------------------------------------------------- clients


@implementer(IHandshakeListener)
class Probe(Protocol):
    """A raw TLS client: the peer certificate, then one HTTP/1.1 exchange."""

    opened: ClassVar[list[Probe]] = []

    def __init__(self) -> None:
        Probe.opened.append(self)
        self.handshake: Deferred[x509.Certificate] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self.reason: Failure | None = None
        self.data = b""

    def handshakeCompleted(self) -> None:
        assert self.transport is not None
        if self.transport.disconnecting:  # type: ignore[attr-defined]
            return  # verification failed: connectionLost says why
        certificate = self.transport.getPeerCertificate()  # type: ignore[attr-defined]
        self.handshake.callback(certificate.to_cryptography())

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.reason = reason
        if not self.handshake.called:
            self.handshake.errback(reason)
        self.closed.callback(None)

    async def get(self, path: str) -> tuple[int, Any]:
        """One request; the server closes after answering."""
        assert self.transport is not None
        self.transport.write(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        await self.closed
        head, _, body = self.data.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        if b"transfer-encoding: chunked" in head.lower():
            size, _, rest = body.partition(b"\r\n")
            body = rest[: int(size, 16)]
        return status, json.loads(body)

    async def close(self) -> None:
        assert self.transport is not None
        if not self.closed.called:
            self.transport.loseConnection()
        await self.closed


async def connect(
    reactor: Any, port: int, creator: IOpenSSLClientConnectionCreator
) -> Probe:
    """A TLS connection whose handshake completed (else the reason is raised)."""
    endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    probe: Probe = await connectProtocol(endpoint, Probe())
    try:
        await probe.handshake
    except BaseException:
        await probe.closed
        raise
    return probe


async def served_serial(
    reactor: Any, port: int, creator: IOpenSSLClientConnectionCreator
) -> int:
    probe = await connect(reactor, port, creator)
    serial = (await probe.handshake).serial_number
    assert await probe.get("/v1/health") == (200, {"status": "healthy"})
    return serial


def http_client(reactor: Any, policy: IPolicyForHTTPS) -> HTTPClient:
    pool = HTTPConnectionPool(reactor, persistent=False)
    return HTTPClient(Agent(reactor, contextFactory=policy, pool=pool))


async def get_json(reactor: Any, policy: IPolicyForHTTPS, url: str) -> tuple[int, Any]:
    response = await http_client(reactor, policy).get(url)
    return response.code, json.loads(await response.content())


def reasons(error: BaseException) -> list[BaseException]:
    """The error, or the errors a web client failure wraps."""
    if isinstance(error, ResponseNeverReceived | ResponseFailed):
        return [f.value for f in error.reasons]
    return [error]


def assert_tls_refusal(error: BaseException, *fragments: str) -> None:
    """An OpenSSL error whose text names one of ``fragments``."""
    found = [e for e in reasons(error) if isinstance(e, SSL.Error)]
    assert found, f"not a TLS error: {reasons(error)!r}"
    text = str(found[0])
    assert any(f in text for f in fragments), text


# ----------------------------------------- (1) optional client certificates


@pytest_twisted.ensureDeferred
async def test_client_without_certificate_is_served_and_route_sees_none(
    reactor: Any, serve: Callable[..., int], pki: Pki
) -> None:
    port = serve(ReloadingServerTLS(pki.director_files()))
    policy = FixedTLSPolicy(director_client_tls([pki.ca.certificate]))
    assert await get_json(reactor, policy, f"https://127.0.0.1:{port}/peer") == (
        200,
        {"peer": None},
    )


@pytest_twisted.ensureDeferred
async def test_agent_certificate_reaches_the_route(
    reactor: Any, serve: Callable[..., int], pki: Pki
) -> None:
    port = serve(ReloadingServerTLS(pki.director_files()))
    creator = director_client_tls(
        [pki.ca.certificate], pki.agent.certificate, pki.agent.key
    )
    code, body = await get_json(
        reactor, FixedTLSPolicy(creator), f"https://127.0.0.1:{port}/peer"
    )
    assert code == 200
    assert body == {"peer": AGENT_CN, "serial": str(pki.agent.serial)}


@pytest_twisted.ensureDeferred
async def test_client_certificate_from_a_foreign_ca_fails_the_handshake(
    reactor: Any, serve: Callable[..., int], pki: Pki
) -> None:
    port = serve(ReloadingServerTLS(pki.director_files()))
    rogue = foreign_ca().issue(AGENT_CN, ["ws1.example"], ["127.0.0.1"])
    creator = director_client_tls([pki.ca.certificate], rogue.certificate, rogue.key)
    with pytest.raises(REFUSED) as raised:
        await get_json(
            reactor, FixedTLSPolicy(creator), f"https://127.0.0.1:{port}/peer"
        )
    assert_tls_refusal(raised.value, "unknown ca", "certificate verify failed")


@pytest_twisted.ensureDeferred
async def test_expired_client_certificate_fails_the_handshake(
    reactor: Any, serve: Callable[..., int], pki: Pki
) -> None:
    import datetime as dt

    port = serve(ReloadingServerTLS(pki.director_files()))
    now = dt.datetime.now(dt.UTC)
    expired = pki.ca.issue(
        AGENT_CN,
        ["ws1.example"],
        not_before=now - dt.timedelta(days=20),
        not_after=now - dt.timedelta(days=1),
    )
    creator = director_client_tls(
        [pki.ca.certificate], expired.certificate, expired.key
    )
    with pytest.raises(REFUSED) as raised:
        await get_json(
            reactor, FixedTLSPolicy(creator), f"https://127.0.0.1:{port}/peer"
        )
    assert_tls_refusal(raised.value, "certificate expired")


@pytest_twisted.ensureDeferred
async def test_without_client_cas_a_client_certificate_is_not_asked_for(
    reactor: Any, serve: Callable[..., int], pki: Pki
) -> None:
    port = serve(ReloadingServerTLS(pki.director_files(client_cas=False)))
    creator = director_client_tls(
        [pki.ca.certificate], pki.agent.certificate, pki.agent.key
    )
    assert await get_json(
        reactor, FixedTLSPolicy(creator), f"https://127.0.0.1:{port}/peer"
    ) == (200, {"peer": None})


# ------------------------------------------------------------- (2) reloading


@pytest_twisted.ensureDeferred
async def test_reload_serves_the_new_certificate_to_new_connections_only(
    reactor: Any, serve: Callable[..., int], pki: Pki
) -> None:
    server = ReloadingServerTLS(pki.director_files())
    port = serve(server)
    client = director_client_tls([pki.ca.certificate])
    assert server.reload_if_changed() is False

    before = await connect(reactor, port, client)
    assert (await before.handshake).serial_number == pki.director.serial

    renewed = pki.ca.issue("dcvix-director", ["dcvix-director"])
    replace(pki.director_cert, renewed.cert_pem())
    replace(pki.director_key, renewed.key_pem())
    assert server.reload_if_changed() is True
    assert server.reload_if_changed() is False

    assert await served_serial(reactor, port, client) == renewed.serial
    # The connection opened before the reload still works, on the old certificate.
    assert await before.get("/v1/health") == (200, {"status": "healthy"})


@pytest.mark.parametrize(
    "broken",
    ["garbage key", "key of another certificate", "garbage certificate", "no key"],
)
@pytest_twisted.ensureDeferred
async def test_unusable_new_files_are_logged_and_the_old_certificate_stays(
    reactor: Any,
    serve: Callable[..., int],
    pki: Pki,
    log_events: list[dict[str, Any]],
    broken: str,
) -> None:
    server = ReloadingServerTLS(pki.director_files())
    port = serve(server)
    client = director_client_tls([pki.ca.certificate])

    other = pki.ca.issue("dcvix-director", ["dcvix-director"])
    if broken == "garbage key":
        replace(pki.director_key, b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
    elif broken == "key of another certificate":
        replace(pki.director_cert, other.cert_pem())
    elif broken == "garbage certificate":
        replace(pki.director_cert, b"not a certificate")
    else:
        pki.director_key.unlink()
    assert server.reload() is False

    errors = [
        e
        for e in log_events
        if e.get("log_namespace", "").startswith("dcvix.common.tls")
        and e["log_level"] == LogLevel.error
    ]
    assert len(errors) == 1
    assert errors[0]["folder"] == str(pki.folder)
    assert "garbage" not in errors[0]["error"]
    assert "PRIVATE KEY" not in errors[0]["error"]

    assert await served_serial(reactor, port, client) == pki.director.serial
    # The broken state is remembered: it is not retried (nor logged) again.
    assert server.reload_if_changed() is False
    assert len([e for e in log_events if e.get("log_level") == LogLevel.error]) == 1

    # Good files again: picked up at the next check.
    replace(pki.director_cert, other.cert_pem())
    replace(pki.director_key, other.key_pem())
    assert server.reload_if_changed() is True
    assert await served_serial(reactor, port, client) == other.serial


def test_unusable_files_at_start_raise(pki: Pki) -> None:
    pki.director_key.write_bytes(pki.agent.key_pem())
    with pytest.raises(SSL.Error):
        ReloadingServerTLS(pki.director_files())


# -------------------------------------------------- (3) director by its name


@pytest.mark.parametrize(
    ("dns", "ips"),
    [
        (["dcvix-director"], []),
        (["director.example", "dcvix-director"], ["127.0.0.1", "::1"]),
    ],
)
@pytest_twisted.ensureDeferred
async def test_director_policy_accepts_the_name_whatever_the_address(
    reactor: Any, serve: Callable[..., int], pki: Pki, dns: list[str], ips: list[str]
) -> None:
    director = pki.ca.issue("dcvix-director", dns, ips)
    replace(pki.director_cert, director.cert_pem())
    replace(pki.director_key, director.key_pem())
    port = serve(ReloadingServerTLS(pki.director_files()))
    client = director_client_tls([pki.ca.certificate])
    assert await served_serial(reactor, port, client) == director.serial


def _names(*common_names: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, n) for n in common_names])


@pytest.mark.parametrize(
    ("subject", "dns", "ips"),
    [
        (_names("dcvix-director"), ["director.example"], ["127.0.0.1"]),
        (_names("dcvix-director"), [], ["127.0.0.1"]),
        (_names("dcvix-director"), [], []),
        (_names(AGENT_CN), ["ws1.example"], ["127.0.0.1"]),
        (_names(AGENT_CN), ["dcvix-director"], []),
        (_names("dcvix-director", "dcvix-director"), ["dcvix-director"], []),
        (_names(AGENT_CN, "dcvix-director"), ["dcvix-director"], []),
        (x509.Name([]), ["dcvix-director"], []),
        (_names("dcvix-director"), ["*.dcvix-director", "x.dcvix-director"], []),
        (_names("dcvix-director"), ["dcvix-director.example"], []),
    ],
    ids=[
        "other-name",
        "ip-only",
        "no-san",
        "agent",
        "agent-cn-with-the-san",
        "two-cns",
        "agent-and-director-cns",
        "no-cn",
        "wildcard",
        "longer-name",
    ],
)
@pytest_twisted.ensureDeferred
async def test_director_policy_refuses_a_certificate_that_is_not_the_director(
    reactor: Any,
    serve: Callable[..., int],
    pki: Pki,
    subject: x509.Name,
    dns: list[str],
    ips: list[str],
) -> None:
    impostor = pki.ca.issue("unused", dns, ips, subject=subject)
    replace(pki.director_cert, impostor.cert_pem())
    replace(pki.director_key, impostor.key_pem())
    port = serve(ReloadingServerTLS(pki.director_files()))
    with pytest.raises(SSL.Error) as raised:
        await connect(reactor, port, director_client_tls([pki.ca.certificate]))
    assert_tls_refusal(raised.value, "certificate verify failed")


@pytest_twisted.ensureDeferred
async def test_director_policy_refuses_an_expired_director_certificate(
    reactor: Any, serve: Callable[..., int], pki: Pki
) -> None:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    expired = pki.ca.issue(
        "dcvix-director",
        ["dcvix-director"],
        not_before=now - dt.timedelta(days=20),
        not_after=now - dt.timedelta(days=1),
    )
    replace(pki.director_cert, expired.cert_pem())
    replace(pki.director_key, expired.key_pem())
    port = serve(ReloadingServerTLS(pki.director_files()))
    with pytest.raises(SSL.Error) as raised:
        await connect(reactor, port, director_client_tls([pki.ca.certificate]))
    assert_tls_refusal(raised.value, "certificate verify failed")


@pytest_twisted.ensureDeferred
async def test_director_policy_refuses_the_name_from_a_foreign_ca(
    reactor: Any, serve: Callable[..., int], pki: Pki
) -> None:
    impostor = foreign_ca().issue("dcvix-director", ["dcvix-director"], ["127.0.0.1"])
    replace(pki.director_cert, impostor.cert_pem())
    replace(pki.director_key, impostor.key_pem())
    port = serve(ReloadingServerTLS(pki.director_files()))
    with pytest.raises(SSL.Error) as raised:
        await connect(reactor, port, director_client_tls([pki.ca.certificate]))
    assert_tls_refusal(raised.value, "certificate verify failed")


# ------------------------------------------------- (3) agents by pinned key


def agent_server(pki: Pki, leaf: Leaf) -> ReloadingServerTLS:
    """An agent's listener serving ``leaf``, asking for the director's cert."""
    certificate, key = leaf.write(pki.folder / "agent-served", "agent")
    return ReloadingServerTLS(ServerFiles(certificate, key, client_cas=pki.ca_path))


def pinned(pki: Pki, pin: str) -> PinnedKeyClientTLS:
    return PinnedKeyClientTLS(
        [pki.ca.certificate], pin, pki.director.certificate, pki.director.key
    )


@pytest_twisted.ensureDeferred
async def test_pinned_policy_accepts_the_pinned_key(
    reactor: Any, serve: Callable[..., int], pki: Pki
) -> None:
    port = serve(agent_server(pki, pki.agent))
    pin = public_key_fingerprint(pki.agent.key.public_key())
    assert await served_serial(reactor, port, pinned(pki, pin)) == pki.agent.serial


@pytest_twisted.ensureDeferred
async def test_pinned_policy_accepts_a_renewed_certificate_with_the_same_key(
    reactor: Any, serve: Callable[..., int], pki: Pki
) -> None:
    renewed = pki.ca.issue(AGENT_CN, ["ws2.example"], key=pki.agent.key)
    port = serve(agent_server(pki, renewed))
    pin = public_key_fingerprint(pki.agent.key.public_key())
    assert await served_serial(reactor, port, pinned(pki, pin)) == renewed.serial


@pytest_twisted.ensureDeferred
async def test_pinned_policy_refuses_another_key_from_the_same_ca(
    reactor: Any, serve: Callable[..., int], pki: Pki
) -> None:
    other = pki.ca.issue(AGENT_CN, ["ws1.example"], ["127.0.0.1"])
    port = serve(agent_server(pki, other))
    pin = public_key_fingerprint(pki.agent.key.public_key())
    with pytest.raises(SSL.Error) as raised:
        await connect(reactor, port, pinned(pki, pin))
    assert_tls_refusal(raised.value, "certificate verify failed")


@pytest.mark.parametrize("same_key", [True, False])
@pytest_twisted.ensureDeferred
async def test_pinned_policy_refuses_any_key_from_a_foreign_ca(
    reactor: Any, serve: Callable[..., int], pki: Pki, same_key: bool
) -> None:
    rogue = foreign_ca().issue(
        AGENT_CN,
        ["ws1.example"],
        ["127.0.0.1"],
        key=pki.agent.key if same_key else None,
    )
    port = serve(agent_server(pki, rogue))
    pin = public_key_fingerprint(rogue.key.public_key())
    with pytest.raises(SSL.Error) as raised:
        await connect(reactor, port, pinned(pki, pin))
    assert_tls_refusal(raised.value, "certificate verify failed")


@pytest_twisted.ensureDeferred
async def test_agent_listener_sees_the_directors_client_certificate(
    reactor: Any, serve: Callable[..., int], pki: Pki
) -> None:
    port = serve(agent_server(pki, pki.agent))
    pin = public_key_fingerprint(pki.agent.key.public_key())
    code, body = await get_json(
        reactor, FixedTLSPolicy(pinned(pki, pin)), f"https://127.0.0.1:{port}/peer"
    )
    assert code == 200
    assert body == {"peer": "dcvix-director", "serial": str(pki.director.serial)}


# ------------------------------------------ (3) FixedTLSPolicy with an Agent


def test_fixed_policy_hands_out_one_creator_for_every_host(pki: Pki) -> None:
    # Typed as the interface: mypy narrows ``x is creator`` to an impossible
    # class-and-interface meet otherwise, and calls the asserts after unreachable.
    creator: IOpenSSLClientConnectionCreator = director_client_tls([pki.ca.certificate])
    policy = FixedTLSPolicy(creator)
    assert policy.creatorForNetloc(b"127.0.0.1", 8445) is creator
    assert policy.creatorForNetloc(b"evil.example", 443) is creator
    assert policy.creatorForNetloc(b"0.agent.invalid", 8446) is creator


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
@pytest_twisted.ensureDeferred
async def test_agent_with_fixed_policy_ignores_the_url_host(
    reactor: Any, serve: Callable[..., int], pki: Pki, host: str
) -> None:
    port = serve(ReloadingServerTLS(pki.director_files()))
    policy = FixedTLSPolicy(director_client_tls([pki.ca.certificate]))
    assert await get_json(reactor, policy, f"https://{host}:{port}/v1/health") == (
        200,
        {"status": "healthy"},
    )


@pytest_twisted.ensureDeferred
async def test_a_host_checking_policy_would_refuse_the_same_server(
    reactor: Any, serve: Callable[..., int], pki: Pki
) -> None:
    """The control: the director's certificate does not name 127.0.0.1."""
    port = serve(ReloadingServerTLS(pki.director_files()))
    trust = trustRootFromCertificates([Certificate.loadPEM(pki.ca.pem())])
    with pytest.raises(ResponseNeverReceived) as raised:
        await get_json(
            reactor,
            BrowserLikePolicyForHTTPS(trustRoot=trust),
            f"https://127.0.0.1:{port}/v1/health",
        )
    assert any(isinstance(e, VerificationError) for e in reasons(raised.value))


@pytest_twisted.ensureDeferred
async def test_agent_with_fixed_pinned_policy_reaches_an_agent_by_key(
    reactor: Any, serve: Callable[..., int], pki: Pki
) -> None:
    port = serve(agent_server(pki, pki.agent))
    pin = public_key_fingerprint(pki.agent.key.public_key())
    policy = FixedTLSPolicy(pinned(pki, pin))
    assert await get_json(reactor, policy, f"https://localhost:{port}/v1/health") == (
        200,
        {"status": "healthy"},
    )
    wrong = FixedTLSPolicy(pinned(pki, "00" * 32))
    with pytest.raises(ResponseNeverReceived):
        await get_json(reactor, wrong, f"https://127.0.0.1:{port}/v1/health")


# ---------------------------------------------------------- (4) TLS versions


def _client_context(ca_pem: bytes, version: ssl.TLSVersion | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca_pem.decode())
    if version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = version
            context.maximum_version = version
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def _handshake(port: int, context: ssl.SSLContext) -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="dcvix-director") as tls,
    ):
        return str(tls.version())


def _local_openssl_speaks_tls11(pki: Pki) -> bool:
    """Whether this OpenSSL can still make a TLS 1.1 handshake with itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.minimum_version = ssl.TLSVersion.TLSv1_1
        server.maximum_version = ssl.TLSVersion.TLSv1_1
        server.set_ciphers("DEFAULT:@SECLEVEL=0")
    server.load_cert_chain(pki.director_cert, pki.director_key)
    client = _client_context(pki.ca.pem(), ssl.TLSVersion.TLSv1_1)

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)

        def accept() -> None:
            try:
                conn, _ = listener.accept()
                with server.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                pass

        thread = threading.Thread(target=accept)
        thread.start()
        try:
            return _handshake(listener.getsockname()[1], client) == "TLSv1.1"
        except (OSError, ssl.SSLError):
            return False
        finally:
            thread.join()


@pytest_twisted.ensureDeferred
async def test_a_default_client_negotiates_tls_1_3(
    reactor: Any, serve: Callable[..., int], pki: Pki
) -> None:
    port = serve(ReloadingServerTLS(pki.director_files()))
    context = _client_context(pki.ca.pem(), None)
    assert await threads.deferToThread(_handshake, port, context) == "TLSv1.3"


@pytest_twisted.ensureDeferred
async def test_a_tls_1_2_client_is_accepted(
    reactor: Any, serve: Callable[..., int], pki: Pki
) -> None:
    port = serve(ReloadingServerTLS(pki.director_files()))
    context = _client_context(pki.ca.pem(), ssl.TLSVersion.TLSv1_2)
    assert await threads.deferToThread(_handshake, port, context) == "TLSv1.2"


@pytest_twisted.ensureDeferred
async def test_a_tls_1_1_client_is_refused(
    reactor: Any, serve: Callable[..., int], pki: Pki
) -> None:
    if not await threads.deferToThread(_local_openssl_speaks_tls11, pki):
        pytest.skip("this OpenSSL cannot make a TLS 1.1 client to test with")
    port = serve(ReloadingServerTLS(pki.director_files()))
    context = _client_context(pki.ca.pem(), ssl.TLSVersion.TLSv1_1)
    with pytest.raises(ssl.SSLError) as raised:
        await threads.deferToThread(_handshake, port, context)
    assert "PROTOCOL_VERSION" in str(raised.value).upper()


def _version_flags(options: Any) -> int:
    context = options._makeContext()  # a fresh context, never used
    return int(context.set_options(0))


def test_every_context_excludes_tls_1_0_and_1_1_and_keeps_1_2_and_1_3(
    pki: Pki,
) -> None:
    """The handshake above may also be refused by OpenSSL's security level;
    this shows dcvix itself sets the minimum, on both sides."""
    pin = public_key_fingerprint(pki.agent.key.public_key())
    director = director_client_tls(
        [pki.ca.certificate], pki.agent.certificate, pki.agent.key
    )
    for options in (
        server_options(pki.director_files()),
        director._options,
        pinned(pki, pin)._options,
    ):
        flags = _version_flags(options)
        assert flags & SSL.OP_NO_TLSv1
        assert flags & SSL.OP_NO_TLSv1_1
        assert not flags & SSL.OP_NO_TLSv1_2
        assert not flags & SSL.OP_NO_TLSv1_3
