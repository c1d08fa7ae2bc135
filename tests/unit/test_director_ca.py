"""The director's CA: fresh install, Go adoption, refusals, server and agent certs."""

from __future__ import annotations

import datetime as dt
import ipaddress
import sqlite3
import stat
from collections.abc import Callable, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any, TypedDict, Unpack

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from dcvix.common.daemon import StartupError
from dcvix.director import ca
from dcvix.director.ca import (
    CertificateAuthority,
    CertificateRequestError,
    ensure_server_certificate,
    load_or_create_authority,
    parse_csr,
)
from dcvix.director.datadir import DirectorFiles

NOW = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
WANTED_DNS = ["dcvix-director", "localhost", "director1", "director1.example.org"]
WANTED_IPS = ["127.0.0.1", "192.0.2.10"]
GUID = "0b8f4c5e-6a2d-4e1f-9c3b-7d5a1e2f3a4b"

GO_AGENTS_TABLE = (
    "CREATE TABLE agents (guid TEXT PRIMARY KEY, hostname TEXT, "
    "state TEXT NOT NULL DEFAULT 'pending', created_at DATETIME, "
    "registered_at DATETIME, last_seen_at DATETIME, cert_serial TEXT, tags TEXT)"
)


# ------------------------------------------------------------------- helpers


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def spki(key: Any) -> bytes:
    """SubjectPublicKeyInfo DER of a public key, or of a private key's public key."""
    if hasattr(key, "private_bytes"):
        key = key.public_key()
    info: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return info


def cn_name(*common_names: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, n) for n in common_names])


def go_ca(
    now: dt.datetime = NOW,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A CA as Go dcvix makes it, built by hand."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = cn_name("dcvix CA")
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(123456789)
        .not_valid_before(now - dt.timedelta(days=100))
        .not_valid_after(now + dt.timedelta(days=3000))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def server_cert(
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    *,
    common_names: tuple[str, ...] = ("dcvix-director",),
    dns: tuple[str, ...] = tuple(WANTED_DNS),
    ips: tuple[str, ...] = tuple(WANTED_IPS),
    not_after: dt.datetime = NOW + dt.timedelta(days=3000),
) -> x509.Certificate:
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    return (
        x509.CertificateBuilder()
        .subject_name(cn_name(*common_names))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(987654321)
        .not_valid_before(NOW - dt.timedelta(days=10))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), False)
        .sign(issuer_key, hashes.SHA256())
    )


def make_go_dir(data_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A Go director data_dir: ca.key, ca.pem, agents.db with one agent."""
    key, certificate = go_ca()
    (data_dir / "ca.key").write_bytes(pkcs8(key))
    (data_dir / "ca.key").chmod(0o600)
    (data_dir / "ca.pem").write_bytes(pem(certificate))
    connection = sqlite3.connect(data_dir / "agents.db")
    connection.execute(GO_AGENTS_TABLE)
    connection.execute(
        "INSERT INTO agents (guid, hostname, state, created_at) VALUES "
        "(?, 'ws1', 'registered', '2025-03-01 10:20:30.123456789+01:00')",
        (GUID,),
    )
    connection.commit()
    connection.close()
    (data_dir / "agents.db").chmod(0o600)
    return key, certificate


def write_server(
    data_dir: Path, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    (data_dir / "server.crt").write_bytes(pem(certificate))
    (data_dir / "server.key").write_bytes(pkcs8(key))
    (data_dir / "server.key").chmod(0o600)


def sans(certificate: x509.Certificate) -> tuple[list[str], list[str]]:
    value = certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    return (
        value.get_values_for_type(x509.DNSName),
        [str(a) for a in value.get_values_for_type(x509.IPAddress)],
    )


def read_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def verify_signed_by(certificate: x509.Certificate, issuer: x509.Certificate) -> None:
    assert certificate.issuer == issuer.subject
    certificate.verify_directly_issued_by(issuer)  # raises when it is not


@pytest.fixture
def files(tmp_path: Path) -> DirectorFiles:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    return DirectorFiles(data_dir)


@pytest.fixture
def adopted(files: DirectorFiles) -> CertificateAuthority:
    """A Go data_dir, loaded."""
    make_go_dir(files.data_dir)
    return load_or_create_authority(files, NOW)


# -------------------------------------------------------------- fresh install


def test_fresh_install_makes_the_ca_files(files: DirectorFiles) -> None:
    authority = load_or_create_authority(files, NOW)

    assert mode_of(files.ca_key) == 0o600
    assert mode_of(files.ca_pem) == 0o644
    assert files.ca_pem.read_bytes() == authority.pem
    key = serialization.load_pem_private_key(files.ca_key.read_bytes(), None)
    assert files.ca_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert spki(key) == spki(authority.certificate.public_key())


def test_fresh_ca_certificate_contents(files: DirectorFiles) -> None:
    authority = load_or_create_authority(files, NOW)
    certificate = read_cert(files.ca_pem)

    key = certificate.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    assert certificate.subject == cn_name("dcvix CA")
    assert certificate.issuer == cn_name("dcvix CA")
    assert certificate.not_valid_before_utc == NOW - HOUR
    assert certificate.not_valid_after_utc == NOW + dt.timedelta(days=3650)
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical is True
    assert constraints.value.ca is True
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign is True
    assert usage.crl_sign is True
    verify_signed_by(certificate, certificate)
    assert 0 < certificate.serial_number < 2**127
    assert authority.fingerprint == certificate.fingerprint(hashes.SHA256()).hex()
    assert len(authority.fingerprint) == 64


def test_fresh_server_certificate_field_by_field(files: DirectorFiles) -> None:
    authority = load_or_create_authority(files, NOW)
    ensure_server_certificate(authority, files, WANTED_DNS, WANTED_IPS, NOW)

    assert mode_of(files.server_key) == 0o600
    certificate = read_cert(files.server_crt)
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == [
        x509.NameAttribute(NameOID.COMMON_NAME, "dcvix-director")
    ]
    assert certificate.subject == cn_name("dcvix-director")
    assert sans(certificate) == (
        ["dcvix-director", "localhost", "director1", "director1.example.org"],
        ["127.0.0.1", "192.0.2.10"],
    )
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    assert certificate.not_valid_before_utc == NOW - HOUR
    assert certificate.not_valid_after_utc == NOW + dt.timedelta(days=3650)
    verify_signed_by(certificate, authority.certificate)
    key = serialization.load_pem_private_key(files.server_key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert spki(key) == spki(certificate.public_key())
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.value.ca is False


def test_fresh_install_that_fails_later_can_start_again(
    files: DirectorFiles,
) -> None:
    # A first start that makes the CA and then stops (here on a server.key
    # readable by others) must not leave a "partial loss" behind.
    other = ec.generate_private_key(ec.SECP256R1())
    files.server_key.write_bytes(pkcs8(other))
    files.server_key.chmod(0o644)
    authority = load_or_create_authority(files, NOW)
    with pytest.raises(StartupError):
        ensure_server_certificate(authority, files, WANTED_DNS, WANTED_IPS, NOW)

    files.server_key.chmod(0o600)
    again = load_or_create_authority(files, NOW)

    assert again.pem == authority.pem
    assert mode_of(files.agents_db) == 0o600


# ------------------------------------------------------------------ adoption


def test_go_data_dir_is_adopted_unchanged(files: DirectorFiles) -> None:
    key, certificate = make_go_dir(files.data_dir)
    before = {
        name: (files.data_dir / name).read_bytes()
        for name in ("ca.key", "ca.pem", "agents.db")
    }

    authority = load_or_create_authority(files, NOW)

    after = {name: (files.data_dir / name).read_bytes() for name in before}
    assert after == before
    assert authority.certificate == certificate
    assert authority.pem == pem(certificate)
    assert spki(authority.key) == spki(key)


def test_go_server_certificate_is_kept_when_fine(
    files: DirectorFiles, adopted: CertificateAuthority
) -> None:
    ca_key = adopted.key
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    server_key = ec.generate_private_key(ec.SECP256R1())
    write_server(
        files.data_dir,
        server_cert(ca_key, adopted.certificate, server_key),
        server_key,
    )
    before = (files.server_crt.read_bytes(), files.server_key.read_bytes())

    ensure_server_certificate(adopted, files, WANTED_DNS, WANTED_IPS, NOW)

    assert (files.server_crt.read_bytes(), files.server_key.read_bytes()) == before


@pytest.mark.parametrize(
    "present",
    [
        set(subset)
        for size in (1, 2)
        for subset in combinations(("ca.key", "ca.pem", "agents.db"), size)
    ],
    ids=lambda present: "+".join(sorted(present)),
)
def test_partial_loss_is_refused(files: DirectorFiles, present: set[str]) -> None:
    make_go_dir(files.data_dir)
    for name in {"ca.key", "ca.pem", "agents.db"} - present:
        (files.data_dir / name).unlink()
    missing = [n for n in ("ca.key", "ca.pem", "agents.db") if n not in present]

    with pytest.raises(StartupError) as raised:
        load_or_create_authority(files, NOW)

    message = str(raised.value)
    assert f"but not {', '.join(missing)}:" in message
    assert {p.name for p in files.data_dir.iterdir()} == present


def test_ca_key_readable_by_others_is_refused(files: DirectorFiles) -> None:
    make_go_dir(files.data_dir)
    files.ca_key.chmod(0o644)

    with pytest.raises(StartupError) as raised:
        load_or_create_authority(files, NOW)

    assert "mode 0644" in str(raised.value)
    assert str(files.ca_key) in str(raised.value)


def test_server_key_readable_by_others_is_refused(
    files: DirectorFiles, adopted: CertificateAuthority
) -> None:
    ca_key = adopted.key
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    server_key = ec.generate_private_key(ec.SECP256R1())
    write_server(
        files.data_dir, server_cert(ca_key, adopted.certificate, server_key), server_key
    )
    files.server_key.chmod(0o644)
    before = files.server_crt.read_bytes()

    with pytest.raises(StartupError) as raised:
        ensure_server_certificate(adopted, files, WANTED_DNS, WANTED_IPS, NOW)

    assert "mode 0644" in str(raised.value)
    assert str(files.server_key) in str(raised.value)
    assert files.server_crt.read_bytes() == before


def test_ca_key_not_matching_ca_pem_is_refused(files: DirectorFiles) -> None:
    make_go_dir(files.data_dir)
    files.ca_key.write_bytes(pkcs8(ec.generate_private_key(ec.SECP256R1())))
    files.ca_key.chmod(0o600)

    with pytest.raises(StartupError) as raised:
        load_or_create_authority(files, NOW)

    assert str(raised.value) == f"{files.ca_key} does not belong to {files.ca_pem}"


def test_unreadable_ca_pem_is_refused(files: DirectorFiles) -> None:
    make_go_dir(files.data_dir)
    files.ca_pem.write_bytes(b"not a certificate\n")

    with pytest.raises(StartupError, match="cannot load the CA"):
        load_or_create_authority(files, NOW)


# --------------------------------------------------- server certificate reissue


class ServerCertChanges(TypedDict, total=False):
    """The keyword arguments of :func:`server_cert`."""

    common_names: tuple[str, ...]
    dns: tuple[str, ...]
    ips: tuple[str, ...]
    not_after: dt.datetime


def reissue_case(
    files: DirectorFiles,
    authority: CertificateAuthority,
    issuer_key: ec.EllipticCurvePrivateKey | None = None,
    issuer: x509.Certificate | None = None,
    **changes: Unpack[ServerCertChanges],
) -> tuple[x509.Certificate, x509.Certificate, bytes]:
    """Write a server certificate with ``changes``, ensure, return old and new."""
    ca_key = authority.key
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    if issuer_key is None:
        issuer_key = ca_key
    if issuer is None:
        issuer = authority.certificate
    server_key = ec.generate_private_key(ec.SECP256R1())
    old = server_cert(issuer_key, issuer, server_key, **changes)
    write_server(files.data_dir, old, server_key)
    key_before = files.server_key.read_bytes()
    ensure_server_certificate(authority, files, WANTED_DNS, WANTED_IPS, NOW)
    return old, read_cert(files.server_crt), key_before


def test_server_certificate_lacking_a_name_is_reissued_keeping_old_names(
    files: DirectorFiles, adopted: CertificateAuthority
) -> None:
    old, new, key_before = reissue_case(
        files,
        adopted,
        dns=("dcvix-director", "localhost", "old-director.example.org"),
        ips=("127.0.0.1", "198.51.100.7"),
    )

    assert new != old
    assert sans(new) == (
        [
            "dcvix-director",
            "localhost",
            "director1",
            "director1.example.org",
            "old-director.example.org",
        ],
        ["127.0.0.1", "192.0.2.10", "198.51.100.7"],
    )
    verify_signed_by(new, adopted.certificate)
    assert new.subject == cn_name("dcvix-director")
    assert files.server_key.read_bytes() == key_before
    assert mode_of(files.server_crt) == 0o644


def test_server_certificate_lacking_an_ip_is_reissued(
    files: DirectorFiles, adopted: CertificateAuthority
) -> None:
    _, new, _ = reissue_case(files, adopted, ips=("127.0.0.1",))

    assert sans(new)[1] == ["127.0.0.1", "192.0.2.10"]


def test_server_certificate_from_another_ca_is_reissued(
    files: DirectorFiles, adopted: CertificateAuthority
) -> None:
    other_key, other = go_ca()

    old, new, key_before = reissue_case(
        files, adopted, issuer_key=other_key, issuer=other
    )

    # The other CA has the same name, "dcvix CA": only the signature tells.
    assert other.subject == adopted.certificate.subject
    verify_signed_by(new, adopted.certificate)
    with pytest.raises(InvalidSignature):
        new.verify_directly_issued_by(other)
    assert sans(new) == sans(old)
    assert files.server_key.read_bytes() == key_before


def test_server_certificate_expiring_within_30_days_is_reissued(
    files: DirectorFiles, adopted: CertificateAuthority
) -> None:
    old, new, _ = reissue_case(
        files, adopted, not_after=NOW + dt.timedelta(days=29, hours=23)
    )

    assert new != old
    assert new.not_valid_after_utc == NOW + dt.timedelta(days=3650)
    assert new.not_valid_before_utc == NOW - HOUR


def test_server_certificate_with_31_days_left_is_kept(
    files: DirectorFiles, adopted: CertificateAuthority
) -> None:
    old, new, _ = reissue_case(files, adopted, not_after=NOW + dt.timedelta(days=31))

    assert new == old


def test_server_certificate_with_a_second_cn_is_reissued(
    files: DirectorFiles, adopted: CertificateAuthority
) -> None:
    old, new, _ = reissue_case(
        files, adopted, common_names=("dcvix-director", "dcvix-agent-x")
    )

    assert len(old.subject.get_attributes_for_oid(NameOID.COMMON_NAME)) == 2
    assert new.subject == cn_name("dcvix-director")


def test_server_certificate_not_matching_server_key_is_reissued(
    files: DirectorFiles, adopted: CertificateAuthority
) -> None:
    ca_key = adopted.key
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    certificate_key = ec.generate_private_key(ec.SECP256R1())
    server_key = ec.generate_private_key(ec.SECP256R1())
    old = server_cert(ca_key, adopted.certificate, certificate_key)
    write_server(files.data_dir, old, server_key)

    ensure_server_certificate(adopted, files, WANTED_DNS, WANTED_IPS, NOW)

    new = read_cert(files.server_crt)
    assert spki(new.public_key()) == spki(server_key)
    assert files.server_key.read_bytes() == pkcs8(server_key)
    verify_signed_by(new, adopted.certificate)


def test_missing_server_key_makes_a_new_key_and_keeps_old_names(
    files: DirectorFiles, adopted: CertificateAuthority
) -> None:
    ca_key = adopted.key
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    old_key = ec.generate_private_key(ec.SECP256R1())
    old = server_cert(
        ca_key, adopted.certificate, old_key, dns=(*WANTED_DNS, "legacy.example.org")
    )
    files.server_crt.write_bytes(pem(old))

    ensure_server_certificate(adopted, files, WANTED_DNS, WANTED_IPS, NOW)

    new = read_cert(files.server_crt)
    assert mode_of(files.server_key) == 0o600
    key = serialization.load_pem_private_key(files.server_key.read_bytes(), None)
    assert spki(new.public_key()) == spki(key)
    assert spki(key) != spki(old_key)
    assert "legacy.example.org" in sans(new)[0]


# ---------------------------------------------------------- agent certificates


def agent_csr(
    key: CertificateIssuerPrivateKeyTypes,
    subject: x509.Name,
    extensions: Sequence[x509.ExtensionType] = (),
) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    for extension in extensions:
        builder = builder.add_extension(extension, False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def der(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.DER)


def test_agent_certificate_copies_nothing_but_the_key(files: DirectorFiles) -> None:
    authority = load_or_create_authority(files, NOW)
    key = ed25519.Ed25519PrivateKey.generate()
    csr = agent_csr(
        key,
        x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"dcvix-agent-{GUID}"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Evil Corp"),
                x509.NameAttribute(NameOID.COMMON_NAME, "dcvix-director"),
            ]
        ),
        [
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("dcvix-director"),
                    x509.DNSName("*.example.org"),
                    x509.IPAddress(ipaddress.ip_address("10.1.2.3")),
                ]
            ),
            x509.BasicConstraints(ca=True, path_length=None),
        ],
    )

    certificate = authority.sign_agent(
        csr.public_key(), GUID, "ws1.example.org", NOW, dt.timedelta(days=14)
    )

    assert certificate.subject == cn_name(f"dcvix-agent-{GUID}")
    assert len(certificate.subject.rdns) == 1
    assert sans(certificate) == (["ws1.example.org"], ["127.0.0.1"])
    assert spki(certificate.public_key()) == spki(key)
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.value.ca is False
    assert {extension.oid for extension in certificate.extensions} == {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    }
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    verify_signed_by(certificate, authority.certificate)
    assert authority.issued(certificate) is True


def test_agent_certificate_lifetime_and_serial(files: DirectorFiles) -> None:
    authority = load_or_create_authority(files, NOW)
    key = ec.generate_private_key(ec.SECP256R1())

    serials = set()
    for _ in range(24):
        certificate = authority.sign_agent(
            key.public_key(), GUID, "ws1", NOW, dt.timedelta(hours=5)
        )
        serials.add(certificate.serial_number)

    assert certificate.not_valid_before_utc == NOW - HOUR
    assert certificate.not_valid_after_utc == NOW + dt.timedelta(hours=5)
    assert len(serials) == 24
    assert all(0 < serial < 2**127 for serial in serials)


def test_agent_certificate_of_another_ca_is_not_issued(files: DirectorFiles) -> None:
    authority = load_or_create_authority(files, NOW)
    other = ca.new_authority(NOW)
    key = ed25519.Ed25519PrivateKey.generate()

    foreign = other.sign_agent(key.public_key(), GUID, "ws1", NOW, dt.timedelta(days=1))

    assert authority.issued(foreign) is False
    assert other.issued(foreign) is True


# ------------------------------------------------------------------ parse_csr


def good_subject() -> x509.Name:
    return cn_name(f"dcvix-agent-{GUID}")


@pytest.mark.parametrize("kind", ["ed25519", "p256", "rsa2048"])
def test_parse_csr_accepts_usual_keys(kind: str) -> None:
    makers: dict[str, Callable[[], CertificateIssuerPrivateKeyTypes]] = {
        "ed25519": ed25519.Ed25519PrivateKey.generate,
        "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "rsa2048": lambda: rsa.generate_private_key(65537, 2048),
    }
    key = makers[kind]()
    csr = agent_csr(key, good_subject())

    parsed = parse_csr(der(csr))

    assert parsed.subject == good_subject()
    assert spki(parsed.public_key()) == spki(key)


def test_parse_csr_refuses_a_bad_signature() -> None:
    data = bytearray(
        der(agent_csr(ed25519.Ed25519PrivateKey.generate(), good_subject()))
    )
    data[-1] ^= 0x01  # the last byte of the signature

    with pytest.raises(CertificateRequestError, match=r"^invalid csr signature$"):
        parse_csr(bytes(data))


def test_parse_csr_refuses_a_csr_signed_by_another_key() -> None:
    # The subject and key of one CSR, the signature of another: no possession.
    key = ed25519.Ed25519PrivateKey.generate()
    mine = der(agent_csr(key, good_subject()))
    theirs = der(agent_csr(ed25519.Ed25519PrivateKey.generate(), good_subject()))
    forged = mine[:-64] + theirs[-64:]

    with pytest.raises(CertificateRequestError, match=r"^invalid csr signature$"):
        parse_csr(forged)


@pytest.mark.parametrize(
    "data", [b"", b"hello world", b"\x30\x03\x02\x01\x01"], ids=["empty", "text", "int"]
)
def test_parse_csr_refuses_non_csr_bytes(data: bytes) -> None:
    with pytest.raises(CertificateRequestError, match=r"^invalid csr$"):
        parse_csr(data)


def test_parse_csr_refuses_a_certificate() -> None:
    authority = ca.new_authority(NOW)

    with pytest.raises(CertificateRequestError, match=r"^invalid csr$"):
        parse_csr(authority.certificate.public_bytes(serialization.Encoding.DER))


def test_parse_csr_refuses_rsa_1024() -> None:
    weak = rsa.generate_private_key(65537, 1024)  # noqa: S505
    csr = agent_csr(weak, good_subject())

    with pytest.raises(
        CertificateRequestError, match=r"^csr key not accepted: RSA of 1024 bits \(use "
    ):
        parse_csr(der(csr))


def test_parse_csr_refuses_an_unknown_key_algorithm() -> None:
    data = der(agent_csr(ed25519.Ed25519PrivateKey.generate(), good_subject()))
    ed25519_oid = bytes([0x06, 0x03, 0x2B, 0x65, 0x70])
    assert data.count(ed25519_oid) == 2  # in the key and as signature algorithm
    unknown = data.replace(ed25519_oid, bytes([0x06, 0x03, 0x2B, 0x65, 0x7F]))

    with pytest.raises(CertificateRequestError, match=r"^invalid csr signature$"):
        parse_csr(unknown)


def test_a_csr_whose_subject_is_not_utf8_is_refused_not_a_crash() -> None:
    guid = "5d2c8e1a-7f3b-4a69-b0d4-9e8c1f2a3b4c"
    key = ed25519.Ed25519PrivateKey.generate()
    common_name = f"dcvix-agent-{guid}"
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, None)
    )
    der = request.public_bytes(serialization.Encoding.DER)
    body = request.tbs_certrequest_bytes
    broken = body.replace(common_name.encode(), b"\xff\xfe" + common_name.encode()[2:])
    forged = der.replace(body, broken).replace(request.signature, key.sign(broken))
    assert x509.load_der_x509_csr(forged).is_signature_valid  # a well-signed CSR
    with pytest.raises(CertificateRequestError, match=r"^invalid csr$"):
        parse_csr(forged)
