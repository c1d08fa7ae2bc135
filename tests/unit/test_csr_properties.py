"""Properties of the director's CSR checks at register and renew (hypothesis).

Whatever an agent sends as ``csr`` (any text, base64 of any bytes, a real
CSR with bytes changed, re-signed or not, other key types, other subjects),
register and renew either get past the CSR checks (only a well-signed
PKCS#10 request with an accepted key and exactly ``CN=dcvix-agent-<guid>``)
or refuse it with a 400 (401 for a subject naming another agent), never
another exception; and a valid CSR of a registered agent always gets a
certificate for its key.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from dcvix.common.errors import ApiError, BadRequest, Unauthorized
from dcvix.common.pki import load_certificates, public_key_fingerprint
from dcvix.ctl import wait as resolve
from dcvix.director import ca
from dcvix.director.audit import Audit
from dcvix.director.enrolment import (
    Enrolment,
    EnrolmentPolicy,
    PeerIdentity,
    PendingApproval,
)
from dcvix.director.registry import sql as sqlite
from dcvix.director.registry.engine import inline_runner
from dcvix.director.registry.sqlite import SqliteRegistry
from dcvix.director.registry.sqlite_schema import connect
from dcvix.director.requests import RegisterRequest, RenewRequest

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
GUID = "5d2c8e1a-7f3b-4a69-b0d4-9e8c1f2a3b4c"
ADDRESS = "10.0.0.7"

# Keys are made once (RSA and DSA take a while): name -> (maker, accepted).
KEY_MAKERS: dict[str, tuple[Callable[[], Any], bool]] = {
    "ed25519": (ed25519.Ed25519PrivateKey.generate, True),
    "p256": (lambda: ec.generate_private_key(ec.SECP256R1()), True),
    "p384": (lambda: ec.generate_private_key(ec.SECP384R1()), True),
    "p521": (lambda: ec.generate_private_key(ec.SECP521R1()), True),
    "secp256k1": (lambda: ec.generate_private_key(ec.SECP256K1()), False),
    "p224": (lambda: ec.generate_private_key(ec.SECP224R1()), False),
    "rsa2048": (lambda: rsa.generate_private_key(65537, 2048), True),
    "rsa1024": (lambda: rsa.generate_private_key(65537, 1024), False),  # noqa: S505
    "ed448": (ed448.Ed448PrivateKey.generate, False),
    "dsa1024": (lambda: dsa.generate_private_key(1024), False),  # noqa: S505
}


@functools.cache
def key_of(name: str) -> Any:
    return KEY_MAKERS[name][0]()


def name(*attributes: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])


def agent_name(guid: str) -> x509.Name:
    return name((NameOID.COMMON_NAME, f"dcvix-agent-{guid}"))


def csr_der(key: Any, subject: x509.Name) -> bytes:
    unhashed = isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .sign(key, None if unhashed else hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.DER)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class World:
    enrolment: Enrolment
    registry: SqliteRegistry
    db: Any

    def register(self, csr: str, guid: str = GUID, hostname: str = "ws1") -> Any:
        body = RegisterRequest(csr, guid, hostname, "")
        return resolve(self.enrolment.register(body, ADDRESS))

    def renew(self, csr: str, peer: PeerIdentity) -> Any:
        return resolve(self.enrolment.renew(peer, RenewRequest(csr), ADDRESS))

    def registered(self, key: Any, guid: str, hostname: str = "ws1") -> PeerIdentity:
        """``guid`` registered (approved) with ``key``, as its mTLS peer."""
        try:
            self.register(b64(csr_der(key, agent_name(guid))), guid, hostname)
        except PendingApproval:
            sqlite.approve_txn(self.db, guid, "os:admin", NOW)
        return PeerIdentity(guid, public_key_fingerprint(key.public_key()))


@contextmanager
def world() -> Iterator[World]:
    """An enrolment on a real SQLite registry; no rate nor pending cap in the way."""
    with tempfile.TemporaryDirectory() as folder:
        clock = Clock()
        clock.advance(NOW.timestamp())
        path = Path(folder) / "agents.db"
        registry = SqliteRegistry(path, inline_runner)
        policy = EnrolmentPolicy(
            lifetime=dt.timedelta(days=14), register_rate=10**9, max_pending=10**9
        )
        enrolment = Enrolment(
            registry, authority(), policy, Audit(registry, clock), clock
        )
        db = connect(path)
        try:
            yield World(enrolment, registry, db)
        finally:
            db.close()
            registry.close()


@functools.cache
def authority() -> ca.CertificateAuthority:
    return ca.new_authority(NOW)


@functools.cache
def valid_der() -> bytes:
    return csr_der(key_of("ed25519"), agent_name(GUID))


def resign(tbs: bytes) -> bytes:
    """A CSR whose body is ``tbs`` (same length as the valid one's), well signed."""
    original = x509.load_der_x509_csr(valid_der())
    key = key_of("ed25519")
    return (
        valid_der()
        .replace(original.tbs_certrequest_bytes, tbs)
        .replace(original.signature, key.sign(tbs))
    )


@st.composite
def changed(draw: st.DrawFn, data: bytes, keep_length: bool) -> bytes:
    """``data`` with a few bytes replaced; unless ``keep_length``, cut or grown."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(out) - 1))
        out[where] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF, 0x30, 0x0C]))
    if not keep_length:
        cut = draw(st.integers(0, len(out)))
        out = out[:cut] + draw(st.binary(max_size=8)) + out[cut:]
    return bytes(out)


@st.composite
def resigned(draw: st.DrawFn) -> bytes:
    tbs = x509.load_der_x509_csr(valid_der()).tbs_certrequest_bytes
    return resign(draw(changed(tbs, keep_length=True)))


DER_CANDIDATES = (
    st.binary(max_size=200)
    | st.builds(valid_der).flatmap(lambda d: changed(d, keep_length=False))
    | resigned()
)
CSR_TEXTS = (
    st.text(max_size=80)
    | DER_CANDIDATES.map(b64)
    | DER_CANDIDATES.map(lambda d: base64.urlsafe_b64encode(d).decode())
    | DER_CANDIDATES.map(lambda d: b64(d).rstrip("="))
    | DER_CANDIDATES.map(lambda d: " " + b64(d) + "\n")
)


def expected_valid(text: str) -> bool:
    """Whether ``text`` is base64 of a well-signed CSR with an accepted key
    and exactly this agent's subject: the only CSRs that may get through."""
    try:
        request = x509.load_der_x509_csr(base64.b64decode(text, validate=True))
        return (
            request.is_signature_valid
            and ca.unaccepted_key(request.public_key()) is None
            and request.subject.rfc4514_string() == f"CN=dcvix-agent-{GUID}"
            and len(request.subject.rdns) == 1
        )
    except Exception:  # any failure of the model means "invalid"
        return False


def other_version(der: bytes) -> bytes:
    """``der`` (a CSR) claiming PKCS#10 version 2, re-signed."""
    tbs = x509.load_der_x509_csr(der).tbs_certrequest_bytes
    at = tbs.index(V1)
    return resign(tbs[:at] + b"\x02\x01\x01" + tbs[at + len(V1) :])


V1 = b"\x02\x01\x00"  # INTEGER 0: PKCS#10 version 1


@settings(max_examples=40)
@given(text=CSR_TEXTS)
@example(text=b64(valid_der()))
# Regression: cryptography's InvalidVersion is no ValueError: it was a 500.
@example(text=b64(other_version(valid_der())))
def test_any_csr_text_gets_through_only_when_valid_else_400(text: str) -> None:
    with world() as here:
        try:
            here.register(text)
        except PendingApproval:
            assert expected_valid(text), text
        except (BadRequest, Unauthorized) as error:
            assert type(error) is BadRequest or error.message == "csr guid mismatch"
            assert not expected_valid(text)


SUBJECTS = st.sampled_from(
    [
        agent_name(GUID),
        agent_name(GUID.upper()),
        agent_name("6e3d9f2b-8a4c-4b7a-91e5-af9d2a3b4c5d"),
        name((NameOID.COMMON_NAME, f"dcvix-agent-{GUID} ")),
        name((NameOID.COMMON_NAME, f"DCVIX-AGENT-{GUID}")),
        name((NameOID.COMMON_NAME, "dcvix-director")),
        name(),
        name(
            (NameOID.COMMON_NAME, f"dcvix-agent-{GUID}"),
            (NameOID.ORGANIZATION_NAME, "x"),
        ),
        name(
            (NameOID.COMMON_NAME, f"dcvix-agent-{GUID}"),
            (NameOID.COMMON_NAME, f"dcvix-agent-{GUID}"),
        ),
        name((NameOID.ORGANIZATION_NAME, f"dcvix-agent-{GUID}")),
    ]
)


@settings(max_examples=30)
@given(key_name=st.sampled_from(sorted(KEY_MAKERS)), subject=SUBJECTS)
def test_keys_and_subjects_at_register_and_renew(
    key_name: str, subject: x509.Name
) -> None:
    key, accepted = key_of(key_name), KEY_MAKERS[key_name][1]
    text = b64(csr_der(key, subject))
    exact = subject == agent_name(GUID)
    with world() as here:
        try:
            answer = here.register(text)
        except PendingApproval:
            assert accepted and exact
        except BadRequest as error:
            assert not accepted
            assert error.message.startswith("csr key not accepted: ")
        except Unauthorized as error:
            assert accepted and not exact
            assert error.message == "csr guid mismatch"
        else:
            raise AssertionError(f"a first registration answered {answer}")
        # Renew: the same CSR from the registered agent holding this key.
        if accepted:
            peer = here.registered(key, GUID)
            try:
                answer = here.renew(text, peer)
            except ApiError as error:
                assert not exact
                assert (type(error), error.message) == (
                    Unauthorized,
                    "csr guid mismatch",
                )
            else:
                assert exact
                certificate = x509.load_pem_x509_certificate(
                    answer["certificate"].encode()
                )
                assert public_key_fingerprint(certificate.public_key()) == peer.key


@settings(max_examples=15)
@given(
    key_name=st.sampled_from(sorted(k for k, (_, ok) in KEY_MAKERS.items() if ok)),
    guid=st.uuids(version=4).map(str),
    hostname=st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True),
)
def test_a_valid_csr_of_a_registered_agent_always_gets_a_certificate(
    key_name: str, guid: str, hostname: str
) -> None:
    key = key_of(key_name)
    with world() as here:
        if hostname in ("localhost", "dcvix-director"):
            return
        here.registered(key, guid, hostname)
        answer = here.register(b64(csr_der(key, agent_name(guid))), guid, hostname)
    certificate = x509.load_pem_x509_certificate(answer["certificate"].encode())
    assert public_key_fingerprint(certificate.public_key()) == public_key_fingerprint(
        key.public_key()
    )
    assert certificate.subject == agent_name(guid)
    assert answer["agentId"] == guid


# The certificates the director answers with are read back by agents (and
# by the director from its data_dir) through one loader.

V3 = b"\xa0\x03\x02\x01\x02"  # [0] INTEGER 2: X.509 version 3


def pem_of(der: bytes) -> bytes:
    body = base64.encodebytes(der)
    return b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n"


@functools.cache
def ca_der() -> bytes:
    return authority().certificate.public_bytes(serialization.Encoding.DER)


@settings(max_examples=60)
@given(der=st.builds(ca_der).flatmap(lambda d: changed(d, keep_length=False)))
# Regression: a version other than 1-3 raised InvalidVersion, no ValueError,
# past every caller's "except ValueError".
@example(der=ca_der().replace(V3, V3[:-1] + b"\x07", 1))
def test_a_changed_certificate_loads_or_is_a_value_error(der: bytes) -> None:
    try:
        certificates = load_certificates(pem_of(der))
    except ValueError:
        return
    assert len(certificates) == 1
