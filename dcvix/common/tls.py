"""TLS for both daemons: hot-reloaded server certificates and the two client policies.

Server side: :class:`ReloadingServerTLS` hands every new connection the current
``CertificateOptions``; when the files change it builds new options and swaps
them in, never mutating a context a live connection uses. Broken new files are
logged and the old certificate stays in service. A client certificate is asked
for and verified against the trusted CAs when given, but not required: routes
decide (see :func:`dcvix.common.http.peer_certificate`).

Client side (CONVENTIONS.md): to the director by the name ``dcvix-director``,
whatever host or IP it was reached at; to an agent by its pinned public key,
with the chain checked against our CA and no name check at all.

Both sides speak TLS 1.3, or TLS 1.2 with ECDHE key exchange and an AEAD
cipher only (:data:`TLS12_CIPHERS`): no CBC, no SHA-1 MAC, no RSA key
exchange, no finite-field DHE.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL.crypto import X509
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import (
    AcceptableCiphers,
    CertificateOptions,
    TLSVersion,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from dcvix.common.pki import (
    issued_by,
    load_certificates,
    load_private_key,
    public_key_fingerprint,
    subject_alt_names,
)

DIRECTOR_NAME = "dcvix-director"

# TLS 1.2: ECDHE (ECDSA, EdDSA or RSA certificates) with AES-GCM or
# ChaCha20-Poly1305, nothing else. ``!aNULL`` and ``!PSK`` keep out the
# anonymous and pre-shared-key variants OpenSSL files under ECDHE.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!PSK"
# TLS 1.3 suites are all AEAD; named so that a system-wide OpenSSL setting
# cannot add the short-tag CCM_8 ones.
TLS13_SUITES = (
    "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"
)
_ACCEPTABLE = AcceptableCiphers.fromOpenSSLCipherString(TLS12_CIPHERS)


def tls_options(**kwargs: Any) -> CertificateOptions:
    """``CertificateOptions`` at dcvix's floor: TLS 1.2 minimum, our suites only."""
    return harden(
        CertificateOptions(
            raiseMinimumTo=TLSVersion.TLSv1_2, acceptableCiphers=_ACCEPTABLE, **kwargs
        )
    )


def harden(options: CertificateOptions) -> CertificateOptions:
    """Hold ``options`` (made anywhere) to TLS 1.2 or 1.3 with our suites only.

    Applied to the context the options build once and hand to every connection,
    before any connection uses it: a live context is never changed.

    Raises:
        SSL.Error: the certificate and key do not belong together.
    """
    context = options.getContext()
    # No renegotiation (TLS 1.2): a client could otherwise make the server
    # repeat handshakes at will, or present another certificate mid-connection
    # (the director reads a connection's client certificate once).
    context.set_options(SSL.OP_NO_RENEGOTIATION)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_cipher_list(TLS12_CIPHERS.encode("ascii"))
    context.set_tls13_ciphersuites(TLS13_SUITES.encode("ascii"))
    return options


@dataclass(frozen=True)
class ServerFiles:
    """The PEM files a listener is built from.

    ``chain`` holds certificates sent after the leaf (our CA, so agents can pin
    it); ``client_cas`` the CAs a client certificate must chain to.
    """

    certificate: Path
    key: Path
    chain: Path | None = None
    client_cas: Path | None = None

    def paths(self) -> tuple[Path, ...]:
        """Every file, for change detection."""
        return tuple(
            p
            for p in (self.certificate, self.key, self.chain, self.client_cas)
            if p is not None
        )


def server_options(files: ServerFiles) -> CertificateOptions:
    """Fresh options from the files; TLS 1.3, or 1.2 with our suites only.

    Raises:
        ValueError, OSError, SSL.Error: when the files are missing, malformed or
            do not belong together.
    """
    leaf = load_certificates(files.certificate.read_bytes())[0]
    key = load_private_key(files.key.read_bytes())
    chain = load_certificates(files.chain.read_bytes()) if files.chain else []
    client_cas = (
        load_certificates(files.client_cas.read_bytes()) if files.client_cas else []
    )
    # Building the context (in harden) checks the key matches the certificate.
    return tls_options(
        # cryptography objects avoid pyOpenSSL 26's deprecation warnings; Twisted's
        # annotations still name the pyOpenSSL types.
        privateKey=key,
        certificate=leaf,
        extraCertChain=chain,
        verify=bool(client_cas),
        caCerts=[X509.from_cryptography(c) for c in client_cas] or None,
        requireCertificate=False,
    )


def files_signature(paths: Sequence[Path]) -> tuple[tuple[int, int, int, int], ...]:
    """What changes when any of ``paths`` is replaced or rewritten."""
    result = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            result.append((-1, -1, -1, -1))
        else:
            result.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(result)


@implementer(IOpenSSLServerConnectionCreator)
class ReloadingServerTLS:
    """A server connection creator whose certificate can change under it.

    Whatever ``load`` builds is held to dcvix's TLS floor (:func:`harden`), so a
    loader that makes its own ``CertificateOptions`` (the agent's self-signed
    certificate before enrolment) offers no weaker suite.

    Args:
        files: where the certificate, key and CAs are.
        load: builds options from the files (:func:`server_options`).
    """

    log = Logger()

    def __init__(
        self,
        files: ServerFiles,
        load: Callable[[ServerFiles], CertificateOptions] = server_options,
    ) -> None:
        self.files = files
        self._load = load
        self._signature = files_signature(files.paths())
        self._current = harden(load(files))

    def serverConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        """A connection built from the options current at accept time."""
        return self._current.serverConnectionForTLS(tlsProtocol)

    def expires(self) -> dt.datetime | None:
        """When the certificate served now expires (None: options without one)."""
        certificate = getattr(self._current, "certificate", None)
        if certificate is None:
            return None
        if isinstance(certificate, X509):  # pyOpenSSL's, or cryptography's
            certificate = certificate.to_cryptography()
        expiry: dt.datetime = certificate.not_valid_after_utc
        return expiry

    def reload_if_changed(self) -> bool:
        """Reload when any file changed since the last load; True if reloaded."""
        if files_signature(self.files.paths()) == self._signature:
            return False
        return self.reload()

    def reload(self) -> bool:
        """Build new options now; on failure keep serving the old certificate."""
        signature = files_signature(self.files.paths())
        try:
            fresh = harden(self._load(self.files))
        except Exception as error:
            # Remember the broken state so it is not retried (and logged) on
            # every check; the next change to the files is tried again.
            self._signature = signature
            self.log.error(
                "new TLS files in {folder} are unusable, keeping the current "
                "certificate: {error}",
                folder=str(self.files.certificate.parent),
                error=str(error) or type(error).__name__,
            )
            return False
        self._signature = signature
        self._current = fresh
        self.log.info(
            "TLS certificate reloaded from {path}", path=str(self.files.certificate)
        )
        return True


def is_director_leaf(certificate: x509.Certificate) -> bool:
    """Exactly one CN, ``dcvix-director``, and the DNS SAN ``dcvix-director``.

    Compared as plain strings: no wildcard, and a certificate without SANs fails.
    """
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [name.value for name in names] != [DIRECTOR_NAME]:
        return False
    dns_names, _ = subject_alt_names(certificate)
    return DIRECTOR_NAME in [name.lower() for name in dns_names]


def is_director_certificate(
    certificate: x509.Certificate, ca_certificates: Sequence[x509.Certificate]
) -> bool:
    """The director's certificate, signed by one of ``ca_certificates``.

    Another agent of the same CA, or an old Go-issued agent certificate that
    copied ``dcvix-director`` into its SANs, fails: its CN is its own.
    """
    return is_director_leaf(certificate) and any(
        issued_by(certificate, ca) for ca in ca_certificates
    )


@implementer(IOpenSSLClientConnectionCreator)
class LeafCheckingClientTLS:
    """Accept a server only if it chains to our CAs and its leaf passes a check.

    The check runs in the handshake's verify callback, so a refused server
    never receives a byte of the request. No host name or IP from the URL is
    compared: identity is the check's business (a name, or a pinned key).

    Args:
        ca_certificates: CAs the server's chain must reach.
        accept_leaf: the check of the server's own certificate.
        client_certificate, client_key: what we present, if anything.
        server_name: SNI to send, if any.
    """

    def __init__(
        self,
        ca_certificates: Sequence[x509.Certificate],
        accept_leaf: Callable[[x509.Certificate], bool],
        client_certificate: x509.Certificate | None = None,
        client_key: PrivateKeyTypes | None = None,
        server_name: str | None = None,
    ) -> None:
        client: dict[str, object] = {}
        if client_certificate is not None and client_key is not None:
            client = {"privateKey": client_key, "certificate": client_certificate}
        self._accept_leaf = accept_leaf
        self._server_name = server_name
        self._options = tls_options(
            verify=True,
            caCerts=[X509.from_cryptography(c) for c in ca_certificates],
            **client,
        )

    def _verify(
        self,
        connection: SSL.Connection,
        certificate: X509,
        error: int,
        depth: int,
        ok: int,
    ) -> bool:
        if not ok:
            return False
        return depth != 0 or self._accept_leaf(certificate.to_cryptography())

    def clientConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        """A connection that checks the chain and the leaf in the handshake."""
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name.encode("ascii"))
        connection.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify
        )
        return connection


class DirectorClientTLS(LeafCheckingClientTLS):
    """Trust a director only as ``dcvix-director`` under one of our CAs.

    The name is checked whatever host or IP the director was reached at, so
    ``director_host`` may be anything: no agent can get that name. (Twisted's
    own name check lets a certificate without SANs or with a malformed wildcard
    through, so it is not used.)
    """

    def __init__(
        self,
        ca_certificates: Sequence[x509.Certificate],
        client_certificate: x509.Certificate | None = None,
        client_key: PrivateKeyTypes | None = None,
    ) -> None:
        super().__init__(
            ca_certificates,
            is_director_leaf,
            client_certificate,
            client_key,
            server_name=DIRECTOR_NAME,
        )


director_client_tls = DirectorClientTLS


class PinnedKeyClientTLS(LeafCheckingClientTLS):
    """Accept a server only if it chains to our CA and holds the pinned key.

    Args:
        ca_certificates: CAs the server's chain must reach.
        pin: :func:`dcvix.common.pki.public_key_fingerprint` of the expected key.
        client_certificate, client_key: what we present (the director's).
    """

    def __init__(
        self,
        ca_certificates: Sequence[x509.Certificate],
        pin: str,
        client_certificate: x509.Certificate,
        client_key: PrivateKeyTypes,
    ) -> None:
        self.pin = pin
        super().__init__(
            ca_certificates,
            lambda leaf: public_key_fingerprint(leaf.public_key()) == pin,
            client_certificate,
            client_key,
        )


def unverified_client_tls() -> IOpenSSLClientConnectionCreator:
    """No server check at all: only for a first contact, before any CA is known."""
    return tls_options()


@implementer(IHandshakeListener)
class _ChainGrabber(Protocol):
    def __init__(self, done: Deferred[list[x509.Certificate]]) -> None:
        self._done = done

    def handshakeCompleted(self) -> None:
        assert self.transport is not None
        handle = self.transport.getHandle()  # type: ignore[attr-defined]
        chain = handle.get_peer_cert_chain(as_cryptography=True) or []
        if not self._done.called:
            self._done.callback(list(chain))
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._done.called:
            self._done.errback(reason)


def fetch_peer_chain(
    reactor: Any, host: str, port: int, timeout: float
) -> Deferred[list[x509.Certificate]]:
    """The certificates a TLS server sends (leaf first), checking nothing.

    Used once, on first contact with a director, to learn the CA it sends in its
    chain (and compare it with ``ca_fingerprint``).
    """
    done: Deferred[list[x509.Certificate]] = Deferred()
    endpoint = wrapClientTLS(
        unverified_client_tls(),
        HostnameEndpoint(reactor, host.encode("idna"), port, timeout=timeout),
    )
    protocol = _ChainGrabber(done)
    factory = Factory.forProtocol(lambda: protocol)
    factory.noisy = False
    connecting = endpoint.connect(factory)

    def failed(failure: Failure) -> None:
        if not done.called:
            done.errback(failure)

    connecting.addErrback(failed)
    done.addTimeout(timeout, reactor)
    return done


@implementer(IPolicyForHTTPS)
class FixedTLSPolicy:
    """A treq/Agent TLS policy that uses one creator for every host.

    The identity check lives in the creator (a name or a pinned key), never in
    the URL's host.
    """

    def __init__(self, creator: IOpenSSLClientConnectionCreator) -> None:
        self._creator = creator

    def creatorForNetloc(
        self, hostname: bytes, port: int
    ) -> IOpenSSLClientConnectionCreator:
        """The same creator, whatever the URL says."""
        return self._creator
