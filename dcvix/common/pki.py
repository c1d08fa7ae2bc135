"""Keys and certificates as files: load, fingerprint, and make self-signed ones."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Certificates are back-dated an hour, as Go dcvix does, to absorb clock skew.
BACKDATE = dt.timedelta(hours=1)
# An agent certificate's only subject attribute is CN ``dcvix-agent-<guid>``.
AGENT_CN_PREFIX = "dcvix-agent-"


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle.

    Raises:
        ValueError: when there is none or one is malformed.
    """
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except x509.InvalidVersion as error:  # not a ValueError in cryptography
        raise ValueError(str(error)) from None
    if not certificates:
        raise ValueError("no certificate found")
    return certificates


def issued_by(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``certificate`` (issuer name and signature)."""
    if certificate.issuer != ca.subject:
        return False
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def load_private_key(pem: bytes) -> PrivateKeyTypes:
    """An unencrypted PEM private key (PKCS#8, or the traditional forms).

    Raises:
        ValueError: when it cannot be parsed.
    """
    return serialization.load_pem_private_key(pem, password=None)


def private_key_pem(key: PrivateKeyTypes) -> bytes:
    """PKCS#8 PEM, the format Go dcvix writes and reads."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate_pem(certificate: x509.Certificate) -> bytes:
    """PEM of one certificate."""
    return certificate.public_bytes(serialization.Encoding.PEM)


def certificate_fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the DER, lower-case hex: the CA fingerprint operators compare."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def public_key_fingerprint(key: PublicKeyTypes) -> str:
    """SHA-256 of the SubjectPublicKeyInfo DER, hex: what a pin records."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    """An ECDSA P-256 key, the director's key type."""
    return ec.generate_private_key(ec.SECP256R1())


def new_ed25519_key() -> ed25519.Ed25519PrivateKey:
    """An Ed25519 key, the agent's key type."""
    return ed25519.Ed25519PrivateKey.generate()


def _signature_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def self_signed_certificate(
    key: CertificateIssuerPrivateKeyTypes,
    common_name: str,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    now: dt.datetime,
    lifetime: dt.timedelta,
) -> x509.Certificate:
    """A self-signed TLS certificate (serverAuth and clientAuth).

    Used until a daemon has a certificate from the director's CA.
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(x509.SubjectAlternativeName(alt_names), False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            False,
        )
        .sign(key, _signature_hash(key))
    )


def subject_alt_names(
    certificate: x509.Certificate,
) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses a certificate carries."""
    try:
        extension = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except x509.ExtensionNotFound:
        return [], []
    dns = extension.value.get_values_for_type(x509.DNSName)
    ips = [str(a) for a in extension.value.get_values_for_type(x509.IPAddress)]
    return dns, ips
