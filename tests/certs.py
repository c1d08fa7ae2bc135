"""A test PKI: a CA, leaves signed by it, a foreign CA, and their PEM files.

Everything is built when a test asks for it, never at import time.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["p256", "ed25519"]
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def new_key(key_type: KeyType = "p256") -> PrivateKey:
    """A fresh ECDSA P-256 or Ed25519 private key."""
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(certificate: x509.Certificate) -> bytes:
    """PEM of one certificate."""
    return certificate.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _sign(builder: x509.CertificateBuilder, key: PrivateKey) -> x509.Certificate:
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True)
class Leaf:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: PrivateKey

    @property
    def serial(self) -> int:
        """The certificate's serial number."""
        return self.certificate.serial_number

    def cert_pem(self) -> bytes:
        """PEM of the certificate."""
        return cert_pem(self.certificate)

    def key_pem(self) -> bytes:
        """PKCS#8 PEM of the key."""
        return key_pem(self.key)

    def write(self, folder: Path, name: str) -> tuple[Path, Path]:
        """Write ``<name>.crt`` and ``<name>.key`` into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        certificate = folder / f"{name}.crt"
        key = folder / f"{name}.key"
        certificate.write_bytes(self.cert_pem())
        key.write_bytes(self.key_pem())
        key.chmod(0o600)
        return certificate, key


@dataclass(frozen=True)
class CA:
    """A certificate authority (ECDSA P-256) that issues leaf certificates."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(
        cls,
        common_name: str = "dcvix test CA",
        now: dt.datetime | None = None,
        lifetime: dt.timedelta = dt.timedelta(days=30),
    ) -> CA:
        """A new self-signed CA valid from an hour ago."""
        now = now or _now()
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
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
        )
        return cls(_sign(builder, key), key)

    def pem(self) -> bytes:
        """PEM of the CA certificate."""
        return cert_pem(self.certificate)

    def write(self, folder: Path, name: str = "ca.pem") -> Path:
        """Write the CA certificate into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        path.write_bytes(self.pem())
        return path

    def issue(
        self,
        common_name: str,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        *,
        key_type: KeyType = "p256",
        key: PrivateKey | None = None,
        subject: x509.Name | None = None,
        now: dt.datetime | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Leaf:
        """A leaf certificate (EKU serverAuth and clientAuth) signed by this CA.

        Args:
            common_name: the subject's only attribute.
            dns_names, ip_addresses: the subject alternative names.
            key_type: the kind of new key, unless ``key`` is given.
            key: reuse this key (same public key, new certificate).
            subject: a whole subject instead of ``CN=<common_name>``.
            now: the reference time (default: the real time).
            not_before, not_after: validity (default: an hour ago to 7 days on).
        """
        now = now or _now()
        key = key or new_key(key_type)
        alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject or _name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - dt.timedelta(hours=1))
            .not_valid_after(not_after or now + dt.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.key.public_key()
                ),
                False,
            )
        )
        if alt_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(alt_names), False
            )
        return Leaf(_sign(builder, self.key), key)


def foreign_ca(now: dt.datetime | None = None) -> CA:
    """A CA that nothing under test trusts."""
    return CA.create("foreign CA", now)


def load_key(path: Path) -> PrivateKey:
    """The PEM private key in ``path`` (a daemon's, or one written by a test)."""
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey)
    return key


def load_certificate(path: Path) -> x509.Certificate:
    """The first certificate of the PEM file ``path``."""
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_ca(certificate: Path, key: Path) -> CA:
    """A CA from its PEM files, e.g. a director's ``ca.pem`` and ``ca.key``."""
    ca_key = load_key(key)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    return CA(load_certificate(certificate), ca_key)


def alt_names(certificate: x509.Certificate) -> tuple[list[str], list[str]]:
    """The DNS names and the IP addresses (as text) of a certificate's SANs."""
    try:
        extension = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except x509.ExtensionNotFound:
        return [], []
    dns = extension.value.get_values_for_type(x509.DNSName)
    ips = [str(a) for a in extension.value.get_values_for_type(x509.IPAddress)]
    return dns, ips


def common_names(certificate: x509.Certificate) -> list[str]:
    """Every CN of the subject, in order."""
    return [
        str(attribute.value)
        for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ]


def same_key(certificate: x509.Certificate, key: PrivateKey) -> bool:
    """Whether ``certificate`` carries the public half of ``key``."""
    encoding = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    theirs = certificate.public_key().public_bytes(encoding, spki)
    return theirs == key.public_key().public_bytes(encoding, spki)
