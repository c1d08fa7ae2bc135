"""The director's CA: its files, the server certificate, agent certificates.

The CA is made only on a fresh install (``ca.key``, ``ca.pem`` and ``agents.db`` all
absent). A Go director's files are adopted as they are. When some are there and
others are not, the director refuses to start: a silently new CA would cut off
every enrolled agent. So does an ``agents.db`` beside the CA files that is not a
sound SQLite database (emptied, garbled, a folder): only a fresh install makes one.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import (
    dsa,
    ec,
    ed448,
    ed25519,
    rsa,
)
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.logger import Logger

from dcvix.common.daemon import StartupError, require_private_file
from dcvix.common.files import atomic_write
from dcvix.common.pki import (
    AGENT_CN_PREFIX,
    BACKDATE,
    certificate_fingerprint,
    certificate_pem,
    issued_by,
    load_certificates,
    load_private_key,
    new_ec_key,
    private_key_pem,
    public_key_fingerprint,
    subject_alt_names,
)
from dcvix.common.tls import DIRECTOR_NAME
from dcvix.director.datadir import DirectorFiles
from dcvix.director.registry import StoreError
from dcvix.director.registry.sqlite_schema import check_database, create_database

log = Logger()

CA_NAME = "dcvix CA"
CA_LIFETIME = dt.timedelta(days=3650)
SERVER_LIFETIME = dt.timedelta(days=3650)
# A server certificate with less than this left is re-issued at start.
SERVER_RENEW_BEFORE = dt.timedelta(days=30)
LOOPBACK = "127.0.0.1"
MIN_RSA_BITS = 2048


# P-256, P-384 and P-521, by their names in cryptography.
ACCEPTED_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})
ACCEPTED_KEYS = (
    f"Ed25519, ECDSA on P-256, P-384 or P-521, or RSA of at least {MIN_RSA_BITS} bits"
)


class CertificateRequestError(ValueError):
    """A CSR that cannot be signed: not PKCS#10, a bad signature, a weak key."""


def unaccepted_key(key: object) -> str | None:
    """What is wrong with a CSR's key, or None for one we sign (CONTRACT §3)."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name in ACCEPTED_CURVES:
            return None
        return f"ECDSA on {key.curve.name}"
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size >= MIN_RSA_BITS:
            return None
        return f"RSA of {key.key_size} bits"
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    return "an unknown key type"


def _serial() -> int:
    # 127 random bits: positive and below 2**127, as Go dcvix makes them.
    return int.from_bytes(os.urandom(16), "big") >> 1


def _hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def _alt_names(
    dns_names: Iterable[str], ip_addresses: Iterable[str]
) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for name in dict.fromkeys(dns_names):
        names.append(x509.DNSName(name))
    for address in dict.fromkeys(ip_addresses):
        names.append(x509.IPAddress(ipaddress.ip_address(address)))
    return x509.SubjectAlternativeName(names)


def common_names(certificate: x509.Certificate) -> list[str]:
    """Every CN of the subject (a valid dcvix certificate has exactly one)."""
    return [
        str(attribute.value)
        for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ]


def parse_csr(der: bytes) -> x509.CertificateSigningRequest:
    """A DER PKCS#10 request whose self-signature holds (proof of possession).

    Raises:
        CertificateRequestError: not a CSR, a bad signature or an unusable key.
    """
    try:
        csr = x509.load_der_x509_csr(der)
    except (ValueError, x509.InvalidVersion):  # the latter is no ValueError
        raise CertificateRequestError("invalid csr") from None
    try:
        valid = csr.is_signature_valid
    except (
        ValueError,
        InvalidSignature,
        UnsupportedAlgorithm,
        x509.UnsupportedGeneralNameType,
    ):
        valid = False
    if not valid:
        raise CertificateRequestError("invalid csr signature")
    refused = unaccepted_key(csr.public_key())
    if refused is not None:
        raise CertificateRequestError(
            f"csr key not accepted: {refused} (use {ACCEPTED_KEYS})"
        )
    try:
        # cryptography parses the subject lazily: a malformed name fails here.
        csr.subject.rfc4514_string()
    except ValueError:
        raise CertificateRequestError("invalid csr") from None
    return csr


@dataclass(frozen=True)
class CertificateAuthority:
    """The CA key and certificate, and what it signs."""

    key: CertificateIssuerPrivateKeyTypes
    certificate: x509.Certificate
    pem: bytes

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the CA certificate's DER, hex."""
        return certificate_fingerprint(self.certificate)

    def issued(self, certificate: x509.Certificate) -> bool:
        """Whether this CA signed ``certificate``."""
        return issued_by(certificate, self.certificate)

    def _builder(
        self,
        common_name: str,
        public_key: CertificatePublicKeyTypes,
        now: dt.datetime,
        lifetime: dt.timedelta,
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
            )
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(_serial())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.key.public_key()
                ),
                False,
            )
        )

    def sign_agent(
        self,
        public_key: CertificatePublicKeyTypes,
        guid: str,
        hostname: str,
        now: dt.datetime,
        lifetime: dt.timedelta,
    ) -> x509.Certificate:
        """An agent certificate: CN ``dcvix-agent-<guid>``, SANs hostname and 127.0.0.1.

        Nothing is copied from the CSR but its key.
        """
        builder = self._builder(AGENT_CN_PREFIX + guid, public_key, now, lifetime)
        builder = builder.add_extension(_alt_names([hostname], [LOOPBACK]), False)
        return builder.sign(self.key, _hash_for(self.key))

    def sign_server(
        self,
        public_key: CertificatePublicKeyTypes,
        dns_names: Sequence[str],
        ip_addresses: Sequence[str],
        now: dt.datetime,
    ) -> x509.Certificate:
        """The director's certificate (CN ``dcvix-director``), also its client one."""
        builder = self._builder(DIRECTOR_NAME, public_key, now, SERVER_LIFETIME)
        builder = builder.add_extension(_alt_names(dns_names, ip_addresses), False)
        return builder.sign(self.key, _hash_for(self.key))


def new_authority(now: dt.datetime) -> CertificateAuthority:
    """A fresh CA: ECDSA P-256, CN ``dcvix CA``, ten years."""
    key = new_ec_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
        )
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(key, certificate, certificate_pem(certificate))


def _read_key(path: Path) -> CertificateIssuerPrivateKeyTypes:
    require_private_file(path)
    try:
        key = load_private_key(path.read_bytes())
    except (OSError, ValueError, TypeError) as error:
        raise StartupError(f"{path}: cannot load the key: {error}") from None
    if not isinstance(
        key,
        ec.EllipticCurvePrivateKey
        | rsa.RSAPrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        raise StartupError(f"{path}: this key type cannot sign certificates")
    return key


def load_or_create_authority(
    files: DirectorFiles,
    now: dt.datetime,
    shared_claim: Callable[[], str] | None = None,
) -> CertificateAuthority:
    """The CA of ``data_dir``: adopted, or made on a fresh install.

    With a SQLite store, ``agents.db`` counts as a file of the install (CONTRACT
    §3). With a shared (PostgreSQL) store, ``shared_claim`` says why the store
    is not new ("" when it is): a CA is made only when the files are absent
    and the store is new, for a director joining others must use their CA.

    Raises:
        StartupError: some files of an existing install are missing, a key is
            readable by others, or the files do not load or match.
    """
    wanted = {"ca.key": files.ca_key, "ca.pem": files.ca_pem}
    if shared_claim is None:
        wanted["agents.db"] = files.agents_db
    present = [name for name, path in wanted.items() if path.exists()]
    claim = shared_claim() if shared_claim is not None and not present else ""
    if claim:
        raise StartupError(
            f"{files.data_dir} has no CA, but {claim}: refusing to make a new "
            "one. Copy ca.key, ca.pem and token.key from a director of this "
            "store (see the README), or use an empty database."
        )
    if not present:
        authority = new_authority(now)
        atomic_write(files.ca_key, private_key_pem(authority.key), 0o600)
        atomic_write(files.ca_pem, authority.pem, 0o644)
        # Made now, with its tables, so that a start that fails later (say, on
        # server.key) is not taken for a partial loss, nor for an emptied file.
        try:
            if shared_claim is None:
                create_database(files.agents_db)
        except StoreError as error:
            raise StartupError(str(error)) from None
        log.warn(
            "fresh install: made a new CA in {path} (fingerprint {fingerprint})",
            path=str(files.data_dir),
            fingerprint=authority.fingerprint,
        )
        return authority
    missing = [name for name in wanted if name not in present]
    if missing:
        raise StartupError(
            f"{files.data_dir} has {', '.join(present)} but not "
            f"{', '.join(missing)}: refusing to start, because a new CA would cut "
            "off every enrolled agent. Restore the missing files from a backup, "
            "or empty the folder for a fresh install."
        )
    key = _read_key(files.ca_key)
    try:
        pem = files.ca_pem.read_bytes()
        certificate = load_certificates(pem)[0]
    except (OSError, ValueError) as error:
        raise StartupError(f"{files.ca_pem}: cannot load the CA: {error}") from None
    if public_key_fingerprint(certificate.public_key()) != public_key_fingerprint(
        key.public_key()
    ):
        raise StartupError(f"{files.ca_key} does not belong to {files.ca_pem}")
    if shared_claim is not None:
        return CertificateAuthority(key, certificate, pem)
    try:
        check_database(files.agents_db)
    except StoreError as error:
        raise StartupError(
            f"{error}, while ca.key and ca.pem exist: refusing to start, because a "
            "new agents.db would forget every enrolled agent. Restore it from a "
            "backup, or empty the folder for a fresh install."
        ) from None
    return CertificateAuthority(key, certificate, pem)


def server_certificate_problem(
    authority: CertificateAuthority,
    certificate: x509.Certificate,
    key: CertificateIssuerPrivateKeyTypes,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    now: dt.datetime,
) -> str | None:
    """Why the server certificate must be re-issued, or None if it is fine."""
    if public_key_fingerprint(certificate.public_key()) != public_key_fingerprint(
        key.public_key()
    ):
        return "it does not match server.key"
    if not authority.issued(certificate):
        return "it is not signed by the CA"
    if common_names(certificate) != [DIRECTOR_NAME]:
        return f"its subject is not exactly CN={DIRECTOR_NAME}"
    if certificate.not_valid_after_utc - now < SERVER_RENEW_BEFORE:
        return "it expires soon"
    have_dns, have_ips = subject_alt_names(certificate)
    lacking = [n for n in dns_names if n not in have_dns]
    lacking += [a for a in ip_addresses if a not in have_ips]
    if lacking:
        return f"it lacks {', '.join(lacking)}"
    return None


def ensure_server_certificate(
    authority: CertificateAuthority,
    files: DirectorFiles,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    now: dt.datetime,
) -> None:
    """Keep ``server.crt`` valid, signed by the CA and carrying every wanted name.

    A re-issued certificate keeps every name of the old one: Go agents check
    ``director_host`` against them.

    Raises:
        StartupError: ``server.key`` is readable by others or unusable.
    """
    key: CertificateIssuerPrivateKeyTypes | None = None
    old: x509.Certificate | None = None
    if files.server_key.exists():
        key = _read_key(files.server_key)
    if files.server_crt.exists():
        try:
            old = load_certificates(files.server_crt.read_bytes())[0]
        except (OSError, ValueError):
            old = None
    reason = "it is missing"
    if key is not None and old is not None:
        problem = server_certificate_problem(
            authority, old, key, dns_names, ip_addresses, now
        )
        if problem is None:
            return
        reason = problem
    if key is None:
        key = new_ec_key()
        atomic_write(files.server_key, private_key_pem(key), 0o600)
    old_dns, old_ips = subject_alt_names(old) if old is not None else ([], [])
    certificate = authority.sign_server(
        key.public_key(),
        [*dns_names, *old_dns],
        [*ip_addresses, *old_ips],
        now,
    )
    atomic_write(files.server_crt, certificate_pem(certificate), 0o644)
    log.info(
        "issued a new director certificate because {reason}: {names}",
        reason=reason,
        names=", ".join(
            [*subject_alt_names(certificate)[0], *subject_alt_names(certificate)[1]]
        ),
    )
