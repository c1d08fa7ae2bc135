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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from OpenSSL import SSL
from OpenSSL.crypto import X509, PKey
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    KeyPair,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from dcvix.common.pki import (
    load_certificates,
    load_private_key,
    public_key_fingerprint,
)

DIRECTOR_NAME = "dcvix-director"


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
    """Fresh options from the files; TLS 1.2 minimum, 1.3 offered.

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
    options = CertificateOptions(
        # cryptography objects avoid pyOpenSSL 26's deprecation warnings; Twisted's
        # annotations still name the pyOpenSSL types.
        privateKey=key,  # type: ignore[arg-type]
        certificate=leaf,  # type: ignore[arg-type]
        extraCertChain=chain,  # type: ignore[arg-type]
        verify=bool(client_cas),
        caCerts=[X509.from_cryptography(c) for c in client_cas] or None,
        requireCertificate=False,
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )
    options._makeContext()  # check the key matches the certificate now
    return options


def _signature(paths: Sequence[Path]) -> tuple[tuple[int, int, int, int], ...]:
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
        self._signature = _signature(files.paths())
        self._current = load(files)

    def serverConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        """A connection built from the options current at accept time."""
        return self._current.serverConnectionForTLS(tlsProtocol)

    def reload_if_changed(self) -> bool:
        """Reload when any file changed since the last load; True if reloaded."""
        if _signature(self.files.paths()) == self._signature:
            return False
        return self.reload()

    def reload(self) -> bool:
        """Build new options now; on failure keep serving the old certificate."""
        signature = _signature(self.files.paths())
        try:
            fresh = self._load(self.files)
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


def _private_certificate(
    certificate: x509.Certificate, key: PrivateKeyTypes
) -> PrivateCertificate:
    made: PrivateCertificate = PrivateCertificate.fromCertificateAndKeyPair(
        Certificate(X509.from_cryptography(certificate)),
        KeyPair(PKey.from_cryptography_key(key)),  # type: ignore[arg-type]
    )
    return made


def director_client_tls(
    ca_certificates: Sequence[x509.Certificate],
    client_certificate: x509.Certificate | None = None,
    client_key: PrivateKeyTypes | None = None,
) -> IOpenSSLClientConnectionCreator:
    """Trust a director only as ``dcvix-director`` under one of our CAs.

    The name is checked whatever host or IP the director was reached at, so
    ``director_host`` may be anything: no agent can get that name.
    """
    trust = trustRootFromCertificates(
        [Certificate(X509.from_cryptography(c)) for c in ca_certificates]
    )
    client = (
        _private_certificate(client_certificate, client_key)
        if client_certificate is not None and client_key is not None
        else None
    )
    return optionsForClientTLS(
        DIRECTOR_NAME,
        trustRoot=trust,
        clientCertificate=client,
        extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
    )


@implementer(IOpenSSLClientConnectionCreator)
class PinnedKeyClientTLS:
    """Accept a server only if it chains to our CA and holds the pinned key.

    No host name or IP is compared: agents are known by key, and may move.

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
        self._options = CertificateOptions(
            privateKey=client_key,  # type: ignore[arg-type]
            certificate=client_certificate,  # type: ignore[arg-type]
            verify=True,
            caCerts=[X509.from_cryptography(c) for c in ca_certificates],
            raiseMinimumTo=TLSVersion.TLSv1_2,
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
        if depth != 0:
            return True
        key = certificate.to_cryptography().public_key()
        return public_key_fingerprint(key) == self.pin

    def clientConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        """A connection that checks the leaf's key during the handshake."""
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        connection.set_verify(SSL.VERIFY_PEER, self._verify)
        return connection


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
