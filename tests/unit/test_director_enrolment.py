"""Register, renew and authenticate: CONTRACT §3's decision table, row by row.

The registry is a real SqliteRegistry on tmp_path run inline, so every
coroutine completes synchronously; time is a task.Clock. Bodies are the decoded
request types the routes hand over; the checks of raw JSON bodies are those of
``jsonfields.decode``.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from twisted.internet.task import Clock

from dcvix.common.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)
from dcvix.common.jsonfields import decode
from dcvix.common.pki import public_key_fingerprint
from dcvix.ctl import wait as resolve
from dcvix.director import ca
from dcvix.director.agent_admin import AgentAdmin, forget_nothing
from dcvix.director.audit import Audit
from dcvix.director.enrolment import Enrolment, EnrolmentPolicy, PendingApproval
from dcvix.director.registry import AgentRecord, AuditEntry, Pinning
from dcvix.director.registry import sql as sqlite
from dcvix.director.registry.engine import inline_runner
from dcvix.director.registry.sqlite import SqliteRegistry
from dcvix.director.registry.sqlite_schema import SqliteConnection, connect
from dcvix.director.requests import RegisterRequest, RenewRequest

NOW = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
LIFETIME = dt.timedelta(days=14)
A = "11111111-1111-4111-8111-111111111111"
B = "22222222-2222-4222-8222-222222222222"
C = "33333333-3333-4333-8333-333333333333"
TOKEN = "s3cret-token"
ADDRESS = "10.0.0.7"
STRANGER = "203.0.113.9"
OWN_NAMES = frozenset({"director1", "director1.example.org"})


# ------------------------------------------------------------------- harness


def new_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def fingerprint(key: Any) -> str:
    return public_key_fingerprint(key.public_key())


def csr_der(key: Any, subject: x509.Name) -> bytes:
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .sign(key, algorithm)
    )
    return csr.public_bytes(serialization.Encoding.DER)


def agent_name(guid: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dcvix-agent-{guid}")])


def csr_b64(key: Any, guid: str, subject: x509.Name | None = None) -> str:
    der = csr_der(key, subject or agent_name(guid))
    return base64.b64encode(der).decode()


def body(key: Any, guid: str, hostname: str, token: str = "") -> RegisterRequest:
    """A register body as the Go agent sends it (no token: an empty one)."""
    return RegisterRequest(csr_b64(key, guid), guid, hostname, token)


def certificate_of(answer: dict[str, Any]) -> x509.Certificate:
    return x509.load_pem_x509_certificate(answer["certificate"].encode())


@dataclass
class World:
    """An Enrolment with its registry, CA, clock and admin, and a window on the db."""

    enrolment: Enrolment
    registry: SqliteRegistry
    authority: ca.CertificateAuthority
    clock: Clock
    admin: AgentAdmin
    db: SqliteConnection

    def register(self, request: RegisterRequest, address: str = ADDRESS) -> Any:
        return resolve(self.enrolment.register(request, address))

    def renew(
        self,
        peer: x509.Certificate | None,
        request: RenewRequest,
        address: str = ADDRESS,
    ) -> Any:
        identity = self.enrolment.identify(peer)
        return resolve(self.enrolment.renew(identity, request, address))

    def authenticate(self, peer: x509.Certificate | None) -> AgentRecord:
        record: AgentRecord = resolve(
            self.enrolment.authenticate(self.enrolment.identify(peer))
        )
        return record

    def refused(
        self, error: type[ApiError], message: str, call: Any, audited: bool = False
    ) -> None:
        """``call()`` raises exactly ``error(message)`` and changes nothing.

        With ``audited``, the agents table is unchanged and one audit line added.
        """
        agents, audit = self.snapshot()
        with pytest.raises(error) as raised:
            call()
        assert type(raised.value) is error
        assert raised.value.message == message
        after_agents, after_audit = self.snapshot()
        assert after_agents == agents
        assert len(after_audit) == len(audit) + audited
        assert after_audit[: len(audit)] == audit

    def snapshot(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        agents = self.db.execute("SELECT * FROM agents ORDER BY guid").fetchall()
        audit = self.db.execute("SELECT * FROM audit ORDER BY id").fetchall()
        return agents, audit

    def record(self, guid: str) -> AgentRecord:
        record = sqlite.get_txn(self.db, guid)
        assert record is not None
        return record

    def audit(self) -> list[tuple[str, str, str]]:
        """(actor, action, target) of each audit row, oldest first."""
        return [(e.actor, e.action, e.target) for e in self.audit_entries()]

    def audit_details(self) -> list[tuple[str, str, str, str]]:
        """(actor, action, target, detail) of each audit row, oldest first."""
        return [(e.actor, e.action, e.target, e.detail) for e in self.audit_entries()]

    def audit_entries(self) -> list[AuditEntry]:
        return list(reversed(sqlite.audit_list_txn(self.db)))

    def approve(self, guid: str, claimed_key: str = "") -> None:
        sqlite.approve_txn(
            self.db, guid, "os:admin", self.now(), claimed_key=claimed_key
        )

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock.seconds(), dt.UTC)

    def adopt(
        self,
        guid: str,
        hostname: str,
        state: str = "registered",
        key: str | None = None,
    ) -> None:
        """A row as a Go director left it: no key, Go text timestamps."""
        self.db.execute(
            "INSERT INTO agents (guid, hostname, state, created_at, registered_at, "
            "key_fingerprint) VALUES (?, ?, ?, "
            "'2025-01-10 09:00:00.123456789+01:00', '2025-01-10 08:05:00+00:00', ?)",
            (guid, hostname, state, key),
        )

    def go_era_certificate(
        self, key: Any, guid: str = A, hostname: str = "ws1"
    ) -> x509.Certificate:
        """The certificate an adopted agent got from the Go director, same CA."""
        return self.authority.sign_agent(
            key.public_key(), guid, hostname, NOW - dt.timedelta(days=3), LIFETIME
        )


@pytest.fixture
def make_world(tmp_path: Path) -> Iterator[Callable[..., World]]:
    opened: list[World] = []

    def make(**policy: Any) -> World:
        clock = Clock()
        clock.advance(NOW.timestamp())
        path = tmp_path / f"agents{len(opened)}.db"
        registry = SqliteRegistry(path, inline_runner)
        audit = Audit(registry, clock)
        authority = ca.new_authority(NOW)
        settings: dict[str, Any] = {
            "lifetime": LIFETIME,
            "reserved_names": frozenset(
                {"dcvix-director", "localhost", "broker.example.org"}
            ),
            "own_names": OWN_NAMES,
        }
        settings.update(policy)
        enrolment = Enrolment(
            registry, authority, EnrolmentPolicy(**settings), audit, clock
        )
        admin = AgentAdmin(registry, audit, clock, OWN_NAMES, forget_nothing)
        world = World(enrolment, registry, authority, clock, admin, connect(path))
        opened.append(world)
        return world

    yield make
    for world in opened:
        world.db.close()
        world.registry.close()


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()


def registered_agent(world: World, guid: str = A, hostname: str = "ws1") -> Any:
    """An agent registered and approved the normal way; its key and certificate."""
    key = new_key()
    with pytest.raises(PendingApproval):
        world.register(body(key, guid, hostname))
    world.approve(guid)
    answer = world.register(body(key, guid, hostname))
    return key, certificate_of(answer)


# -------------------------------------------------------- row 1: 400 and 401


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ("not an object", "request body must be a JSON object"),
        ([1, 2], "request body must be a JSON object"),
        (None, "request body must be a JSON object"),
        ({"csr": 5, "guid": A, "hostname": "ws1"}, "field 'csr' must be a string"),
        ({"csr": "x", "guid": 7, "hostname": "ws1"}, "field 'guid' must be a string"),
        (
            {"csr": "x", "guid": A, "registrationToken": True},
            "field 'registrationToken' must be a string",
        ),
    ],
    ids=["string", "list", "null", "csr-not-string", "guid-not-string", "token-bool"],
)
def test_a_body_that_is_not_a_register_request_is_400(
    request_body: Any, message: str
) -> None:
    with pytest.raises(BadRequest) as raised:
        decode(RegisterRequest, request_body)

    assert raised.value.message == message


def test_a_register_body_is_read_as_go_reads_it() -> None:
    request = decode(
        RegisterRequest,
        {
            "CSR": "abc",
            "Guid": A,
            "hostName": "ws1",
            "REGISTRATIONTOKEN": TOKEN,
            "x": 1,
        },
    )

    assert request == RegisterRequest("abc", A, "ws1", TOKEN)
    assert decode(RegisterRequest, {}) == RegisterRequest("", "", "", "")


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({"csr": "!!not base64!!", "guid": A}, "invalid csr encoding"),
        ({"csr": "aGVsbG8", "guid": A}, "invalid csr encoding"),  # no padding
        ({"csr": base64.b64encode(b"hello").decode(), "guid": A}, "invalid csr"),
        ({"guid": A, "hostname": "ws1"}, "invalid csr"),
    ],
    ids=["bad-base64", "unpadded", "not-a-csr", "no-csr"],
)
def test_malformed_csr_is_400(world: World, request_body: Any, message: str) -> None:
    request = decode(RegisterRequest, request_body)

    world.refused(BadRequest, message, lambda: world.register(request))


def test_bad_csr_signature_is_400(world: World) -> None:
    der = bytearray(csr_der(new_key(), agent_name(A)))
    der[-1] ^= 0x01
    request = RegisterRequest(base64.b64encode(bytes(der)).decode(), A, "ws1")

    world.refused(BadRequest, "invalid csr signature", lambda: world.register(request))


@pytest.mark.parametrize(
    "guid",
    [
        "not-a-guid",
        "",
        "11111111111141118111111111111111",
        "{11111111-1111-4111-8111-111111111111}",
        "urn:uuid:11111111-1111-4111-8111-111111111111",
        "11111111-1111-4111-8111-11111111111g",
    ],
)
def test_guid_not_a_uuid_is_400(world: World, guid: str) -> None:
    request = RegisterRequest(csr_b64(new_key(), guid), guid, "ws1")

    world.refused(BadRequest, "guid must be a UUID", lambda: world.register(request))


@pytest.mark.parametrize(
    ("hostname", "message"),
    [
        ("*.example.org", "invalid hostname"),
        ("*", "invalid hostname"),
        ("", "invalid hostname"),
        ("ws_1", "invalid hostname"),
        ("-ws1", "invalid hostname"),
        ("ws1.", "invalid hostname"),
        ("a" * 64, "invalid hostname"),
        ("10.0.0.1", "invalid hostname"),
        ("dcvix-director", "hostname dcvix-director is reserved for the director"),
        ("DCVIX-Director", "hostname DCVIX-Director is reserved for the director"),
        ("localhost", "hostname localhost is reserved for the director"),
        (
            "broker.example.org",
            "hostname broker.example.org is reserved for the director",
        ),
    ],
)
def test_invalid_hostname_is_400(world: World, hostname: str, message: str) -> None:
    world.refused(
        BadRequest, message, lambda: world.register(body(new_key(), A, hostname))
    )


def test_400_comes_before_401(world: World) -> None:
    # CN of another GUID (a 401) and a wildcard hostname (a 400): 400 wins.
    request = RegisterRequest(csr_b64(new_key(), B), A, "*.x.org")

    world.refused(BadRequest, "invalid hostname", lambda: world.register(request))


@pytest.mark.parametrize(
    "subject",
    [
        agent_name(B),
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, A)]),
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dcvix-agent-{A} ")]),
        x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"dcvix-agent-{A}"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Evil"),
            ]
        ),
        x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"dcvix-agent-{A}"),
                x509.NameAttribute(NameOID.COMMON_NAME, "dcvix-director"),
            ]
        ),
    ],
    ids=["other-guid", "bare-guid", "trailing-space", "extra-attribute", "two-cns"],
)
def test_csr_subject_not_exactly_the_guid_is_401(
    world: World, subject: x509.Name
) -> None:
    request = RegisterRequest(csr_b64(new_key(), A, subject), A, "ws1")

    world.refused(Unauthorized, "csr guid mismatch", lambda: world.register(request))


def test_the_401_row_does_not_touch_a_known_agent(world: World) -> None:
    registered_agent(world)
    request = RegisterRequest(csr_b64(new_key(), B), A, "ws1")

    world.refused(Unauthorized, "csr guid mismatch", lambda: world.register(request))


# ------------------------------------------------------- row 2: revoked, denied


def test_revoked_is_401(world: World) -> None:
    key, _ = registered_agent(world)
    sqlite.revoke_txn(world.db, A, "os:admin", NOW)

    world.refused(
        Unauthorized, "agent revoked", lambda: world.register(body(key, A, "ws1"))
    )
    world.refused(
        Unauthorized,
        "agent revoked",
        lambda: world.register(body(new_key(), A, "ws9", TOKEN)),
    )


def test_denied_is_403_and_stays_denied(world: World) -> None:
    key = new_key()
    with pytest.raises(PendingApproval):
        world.register(body(key, A, "ws1"))
    sqlite.deny_txn(world.db, A, "os:admin", NOW)

    for _ in range(3):  # the Go agent keeps polling
        world.refused(
            Forbidden, "agent denied", lambda: world.register(body(key, A, "ws1"))
        )
    assert world.record(A).state == "denied"


# ------------------------------- row 3, case 3: registered, adopted without a pin


@pytest.mark.parametrize("no_key", [None, ""], ids=["null", "empty"])
def test_a_stranger_knowing_the_guid_cannot_lock_out_an_adopted_agent(
    world: World, no_key: str | None
) -> None:
    """The GUID is in the agent's certificate, which anyone on the path can read.

    Before CONTRACT §3 case 3, a registration with that GUID and any key sent an
    adopted (unpinned) agent back to pending, where its mTLS calls were refused.
    """
    world.adopt(A, "ws1", key=no_key)
    real = new_key()
    certificate = world.go_era_certificate(real)
    stranger = new_key()

    with pytest.raises(PendingApproval) as raised:
        world.register(body(stranger, A, "ws1"), STRANGER)

    assert (raised.value.status, raised.value.message) == (403, "pending approval")
    record = world.record(A)
    assert (record.state, record.key_fingerprint, record.claimed_key) == (
        "registered",
        "",
        fingerprint(stranger),
    )

    pinned = world.authenticate(certificate)

    assert (pinned.guid, pinned.state, pinned.key_fingerprint, pinned.claimed_key) == (
        A,
        "registered",
        fingerprint(real),
        "",
    )
    record = world.record(A)
    assert (record.key_fingerprint, record.claimed_key, record.claimed_at) == (
        fingerprint(real),
        "",
        None,
    )
    assert world.audit_details() == [
        (f"address {STRANGER}", "claim key", A, f"key={fingerprint(stranger)}"),
        (
            "mtls",
            "pin key",
            A,
            f"key={fingerprint(real)} dropped claim {fingerprint(stranger)}",
        ),
    ]
    answer = world.renew(certificate, renew_body(real))
    assert sorted(answer) == ["certificate", "renewalIntervalSeconds"]
    assert public_key_fingerprint(certificate_of(answer).public_key()) == (
        fingerprint(real)
    )
    assert world.authenticate(certificate).guid == A
    # Pinned now: the stranger's key is refused outright.
    world.refused(
        Conflict,
        "key mismatch",
        lambda: world.register(body(stranger, A, "ws1"), STRANGER),
        audited=True,
    )
    assert world.record(A).state == "registered"


def test_registered_adopted_without_a_pin_records_a_claim_and_waits(
    world: World,
) -> None:
    world.adopt(A, "ws1")
    key = new_key()

    with pytest.raises(PendingApproval) as raised:
        world.register(body(key, A, "ws1"))

    assert raised.value.status == 403
    assert raised.value.message == "pending approval"
    record = world.record(A)
    assert (record.state, record.key_fingerprint, record.hostname) == (
        "registered",
        "",
        "ws1",
    )
    assert (record.claimed_key, record.claimed_at) == (fingerprint(key), NOW)
    assert (record.registered_at, record.state_changed_at) == (
        dt.datetime(2025, 1, 10, 8, 5, tzinfo=dt.UTC),
        None,
    )
    assert world.audit_details() == [
        ("address 10.0.0.7", "claim key", A, f"key={fingerprint(key)}")
    ]

    world.approve(A, claimed_key=fingerprint(key))
    record = world.record(A)
    assert (record.pinned, record.key_fingerprint, record.claimed_key) == (
        True,
        fingerprint(key),
        "",
    )
    assert world.audit_details()[-1] == (
        "os:admin",
        "approve claim",
        A,
        f"key={fingerprint(key)}",
    )
    answer = world.register(body(key, A, "ws1"))
    assert certificate_of(answer).subject == agent_name(A)


def test_a_claim_never_changes_the_agent_and_polling_is_audited_once(
    world: World,
) -> None:
    world.adopt(A, "ws1")
    before = world.record(A)
    first, second = new_key(), new_key()

    for _ in range(3):  # a Go agent polls every 30 s
        with pytest.raises(PendingApproval):
            world.register(body(first, A, "ws1"))
        world.clock.advance(30)
    with pytest.raises(PendingApproval):
        world.register(body(second, A, "ws1-renamed"), "10.0.0.8")

    record = world.record(A)
    assert record.claimed_key == fingerprint(second)
    assert record.claimed_at == NOW + dt.timedelta(seconds=90)
    unchanged = ("state", "hostname", "key_fingerprint", "address", "registered_at")
    assert [getattr(record, name) for name in unchanged] == [
        getattr(before, name) for name in unchanged
    ]
    assert record.state_changed_at == before.state_changed_at
    assert world.audit_details() == [
        ("address 10.0.0.7", "claim key", A, f"key={fingerprint(first)}"),
        (
            "address 10.0.0.8",
            "claim key",
            A,
            f"key={fingerprint(second)} replacing {fingerprint(first)}",
        ),
    ]


@pytest.mark.parametrize("token", [None, "", "wrong"])
def test_a_claim_needs_the_registration_token_when_one_is_set(
    make_world: Callable[..., World], token: str | None
) -> None:
    world = make_world(registration_token=TOKEN)
    world.adopt(A, "ws1")
    fields = {"csr": csr_b64(new_key(), A), "guid": A, "hostname": "ws1"}
    if token is not None:
        fields["registrationToken"] = token
    request = decode(RegisterRequest, fields)

    world.refused(
        Unauthorized, "invalid registration token", lambda: world.register(request)
    )
    assert world.record(A).claimed_key == ""


def test_an_admin_approving_a_claim_pins_the_claimed_key(
    make_world: Callable[..., World],
) -> None:
    world = make_world(registration_token=TOKEN)
    world.adopt(A, "ws1")
    old = new_key()
    old_certificate = world.go_era_certificate(old)
    new = new_key()

    with pytest.raises(PendingApproval):
        world.register(body(new, A, "ws1", TOKEN))
    assert world.audit() == [("address 10.0.0.7", "claim key", A)]
    claimed = world.record(A)
    assert (claimed.state, claimed.key_fingerprint, claimed.claimed_key) == (
        "registered",
        "",
        fingerprint(new),
    )

    with pytest.raises(Conflict, match="approve it with that key"):
        resolve(world.admin.act("approve", A, "admin:alice"))
    outcome = resolve(
        world.admin.act("approve", A, "admin:alice", claimed_key=fingerprint(new))
    )

    assert (outcome.action, outcome.replaced, outcome.warning) == ("approve", (), "")
    record = outcome.record
    assert (record.state, record.key_fingerprint, record.claimed_key) == (
        "registered",
        fingerprint(new),
        "",
    )
    assert world.record(A) == record
    assert world.audit_details()[-1] == (
        "admin:alice",
        "approve claim",
        A,
        f"key={fingerprint(new)}",
    )

    answer = world.register(body(new, A, "ws1"))  # a pinned agent needs no token

    assert sorted(answer) == ["agentId", "ca", "certificate", "renewalIntervalSeconds"]
    issued = certificate_of(answer)
    assert issued.subject == agent_name(A)
    assert public_key_fingerprint(issued.public_key()) == fingerprint(new)
    world.refused(
        Conflict,
        "key mismatch",
        lambda: world.register(body(old, A, "ws1", TOKEN)),
        audited=True,
    )
    world.refused(
        Unauthorized,
        "client certificate does not carry the agent's key",
        lambda: world.authenticate(old_certificate),
    )
    assert world.record(A).state == "registered"


def test_every_audit_row_of_an_adoption_has_its_audit_log_line(
    world: World, audit_lines: list[str]
) -> None:
    world.adopt(A, "ws1")
    world.adopt(B, "ws2")
    stranger, real_a, real_b = new_key(), new_key(), new_key()

    with pytest.raises(PendingApproval):
        world.register(body(stranger, A, "ws1"), STRANGER)
    world.authenticate(world.go_era_certificate(real_a))
    world.authenticate(world.go_era_certificate(real_b, B, "ws2"))

    claim = f"key={fingerprint(stranger)}"
    pin_a = f"key={fingerprint(real_a)} dropped claim {fingerprint(stranger)}"
    pin_b = f"key={fingerprint(real_b)}"
    assert world.audit_details() == [
        (f"address {STRANGER}", "claim key", A, claim),
        ("mtls", "pin key", A, pin_a),
        ("mtls", "pin key", B, pin_b),
    ]
    assert audit_lines == [
        f"address {STRANGER} claim key {A} from {STRANGER} {claim}",
        f"mtls pin key {A} {pin_a}",
        f"mtls pin key {B} {pin_b}",
    ]


def test_renew_pins_an_adopted_agent_and_drops_a_claim_for_its_own_key(
    world: World,
) -> None:
    world.adopt(A, "ws1")
    key = new_key()
    with pytest.raises(PendingApproval):
        world.register(body(key, A, "ws1"))

    answer = world.renew(world.go_era_certificate(key), renew_body(key))

    assert sorted(answer) == ["certificate", "renewalIntervalSeconds"]
    record = world.record(A)
    assert (record.key_fingerprint, record.claimed_key) == (fingerprint(key), "")
    assert world.audit_details()[-1] == (
        "mtls",
        "pin key",
        A,
        f"key={fingerprint(key)}",
    )


# ----------------------------------------------------- row 3: registered, pinned


def test_registered_with_another_key_is_409_audited_once_a_minute(
    world: World,
) -> None:
    registered_agent(world, A, "ws1")
    registered_agent(world, B, "ws2")
    before = world.snapshot()[0]
    thief = new_key()

    def attempt(guid: str = A, hostname: str = "ws1") -> None:
        with pytest.raises(Conflict) as raised:
            world.register(body(thief, guid, hostname))
        assert raised.value.message == "key mismatch"
        assert raised.value.status == 409

    attempt()
    world.clock.advance(59)
    attempt()
    attempt(B, "ws2")  # another GUID is audited on its own
    assert world.audit().count(("address 10.0.0.7", "key mismatch", A)) == 1
    assert world.audit().count(("address 10.0.0.7", "key mismatch", B)) == 1

    world.clock.advance(1)
    attempt()
    assert world.audit().count(("address 10.0.0.7", "key mismatch", A)) == 2
    assert world.snapshot()[0] == before


def test_registered_with_a_new_hostname_goes_back_to_pending(world: World) -> None:
    key, _ = registered_agent(world)
    old_serial = world.record(A).cert_serial

    with pytest.raises(PendingApproval):
        world.register(body(key, A, "ws1-renamed"), "10.0.0.8")

    record = world.record(A)
    assert (record.state, record.hostname, record.key_fingerprint) == (
        "pending",
        "ws1-renamed",
        fingerprint(key),
    )
    assert (record.address, record.cert_serial) == ("10.0.0.8", old_serial)
    assert world.audit_details()[-1] == (
        "address 10.0.0.8",
        "back to pending",
        A,
        "hostname changed from ws1 to ws1-renamed",
    )

    world.approve(A)
    answer = world.register(body(key, A, "ws1-renamed"))
    names = certificate_of(answer).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert names.value.get_values_for_type(x509.DNSName) == ["ws1-renamed"]


def test_registered_with_an_expired_certificate_goes_back_to_pending(
    world: World,
) -> None:
    key, _ = registered_agent(world)

    world.clock.advance(LIFETIME.total_seconds() - 1)
    world.register(body(key, A, "ws1"))  # still valid: re-signed at once
    world.clock.advance(LIFETIME.total_seconds() + 1)
    with pytest.raises(PendingApproval):
        world.register(body(key, A, "ws1"))

    assert world.record(A).state == "pending"
    assert world.audit_details()[-1][1:] == (
        "back to pending",
        A,
        "its last certificate expired",
    )
    with pytest.raises(PendingApproval):  # and stays so, until approved
        world.register(body(key, A, "ws1"))

    world.approve(A)
    answer = world.register(body(key, A, "ws1"))
    certificate = certificate_of(answer)
    assert certificate.not_valid_after_utc == world.now() + LIFETIME
    assert world.record(A).state == "registered"


def test_registered_same_key_gets_a_certificate_at_once(world: World) -> None:
    key, _ = registered_agent(world)
    world.clock.advance(3600)

    answer = world.register(body(key, A, "ws1"), "10.0.0.99")

    assert sorted(answer) == ["agentId", "ca", "certificate", "renewalIntervalSeconds"]
    assert answer["agentId"] == A
    assert answer["ca"] == world.authority.pem.decode()
    assert answer["renewalIntervalSeconds"] == 43200
    certificate = certificate_of(answer)
    assert certificate.subject == agent_name(A)
    assert world.authority.issued(certificate) is True
    assert fingerprint(key) == public_key_fingerprint(certificate.public_key())
    assert certificate.not_valid_before_utc == NOW
    assert certificate.not_valid_after_utc == NOW + dt.timedelta(hours=1) + LIFETIME
    record = world.record(A)
    assert record.state == "registered"
    assert record.cert_serial == format(certificate.serial_number, "x")
    assert record.cert_expires_at == certificate.not_valid_after_utc
    assert record.last_seen_at == NOW + dt.timedelta(hours=1)
    assert record.address == "10.0.0.99"


def test_registered_agent_needs_no_token(make_world: Callable[..., World]) -> None:
    world = make_world(registration_token=TOKEN)
    key = new_key()
    with pytest.raises(PendingApproval):
        world.register(body(key, A, "ws1", TOKEN))
    world.approve(A)

    answer = world.register(body(key, A, "ws1"))  # a Go agent sends none

    assert answer["agentId"] == A


# -------------------------------------------------------------- row 4: pending


def test_pending_with_another_key_is_409(world: World) -> None:
    with pytest.raises(PendingApproval):
        world.register(body(new_key(), A, "ws1"))

    world.refused(
        Conflict,
        "key mismatch",
        lambda: world.register(body(new_key(), A, "ws1")),
        audited=True,
    )
    assert world.audit() == [
        ("address 10.0.0.7", "register", A),
        ("address 10.0.0.7", "key mismatch", A),
    ]
    assert world.record(A).state == "pending"


def test_pending_with_the_same_key_is_403(world: World) -> None:
    key = new_key()
    with pytest.raises(PendingApproval):
        world.register(body(key, A, "ws1"))
    before = world.snapshot()

    world.clock.advance(30)
    with pytest.raises(PendingApproval) as raised:
        world.register(body(key, A, "ws1"))

    assert (raised.value.status, raised.value.message) == (403, "pending approval")
    assert world.snapshot() == before


def test_pending_with_the_same_key_and_a_new_hostname_keeps_the_latest(
    world: World,
) -> None:
    key = new_key()
    with pytest.raises(PendingApproval):
        world.register(body(key, A, "ws1"))

    with pytest.raises(PendingApproval):
        world.register(body(key, A, "ws1-renamed"), "10.0.0.8")

    record = world.record(A)
    assert (record.state, record.hostname, record.address) == (
        "pending",
        "ws1-renamed",
        "10.0.0.8",
    )


def test_adopted_pending_row_records_the_first_key(world: World) -> None:
    world.adopt(A, "ws1", "pending")
    key = new_key()

    with pytest.raises(PendingApproval):
        world.register(body(key, A, "ws1"))
    world.refused(
        Conflict,
        "key mismatch",
        lambda: world.register(body(new_key(), A, "ws1")),
        audited=True,
    )

    assert world.record(A).key_fingerprint == fingerprint(key)


# -------------------------------------------------------------- row 5: unknown


def test_unknown_becomes_pending(world: World) -> None:
    key = new_key()

    with pytest.raises(PendingApproval):
        world.register(body(key, A, "ws1"))

    record = world.record(A)
    assert (record.state, record.hostname, record.key_fingerprint) == (
        "pending",
        "ws1",
        fingerprint(key),
    )
    assert (record.address, record.created_at) == (ADDRESS, NOW)


@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN + "x", TOKEN.upper()])
def test_unknown_with_a_wrong_token_is_401(
    make_world: Callable[..., World], token: str | None
) -> None:
    world = make_world(registration_token=TOKEN)
    fields = {"csr": csr_b64(new_key(), A), "guid": A, "hostname": "ws1"}
    if token is not None:
        fields["registrationToken"] = token
    request = decode(RegisterRequest, fields)

    world.refused(
        Unauthorized, "invalid registration token", lambda: world.register(request)
    )


def test_unknown_with_the_right_token_is_pending(
    make_world: Callable[..., World],
) -> None:
    world = make_world(registration_token=TOKEN)

    with pytest.raises(PendingApproval):
        world.register(
            decode(
                RegisterRequest,
                {
                    "csr": csr_b64(new_key(), A),
                    "guid": A,
                    "hostname": "ws1",
                    "RegistrationToken": TOKEN,
                },
            )
        )

    assert world.record(A).state == "pending"


def test_register_rate_per_address_slides(make_world: Callable[..., World]) -> None:
    world = make_world(register_rate=3)
    guids = iter(f"00000000-0000-4000-8000-{n:012d}" for n in range(100))

    def new(address: str = ADDRESS) -> None:
        with pytest.raises(PendingApproval):
            world.register(body(new_key(), next(guids), "ws1"), address)

    def too_many(address: str = ADDRESS) -> None:
        world.refused(
            TooManyRequests,
            "too many new agents from this address",
            lambda: world.register(body(new_key(), next(guids), "ws1"), address),
        )

    new()  # t = 0
    world.clock.advance(20)
    new()  # t = 20
    world.clock.advance(20)
    new()  # t = 40
    world.clock.advance(19)
    too_many()  # t = 59: three in the last minute
    new("10.0.0.8")  # another address is fine
    world.clock.advance(2)
    new()  # t = 61: the first one left the window
    world.clock.advance(1)
    too_many()  # t = 62
    world.clock.advance(19)
    new()  # t = 81
    assert world.db.execute("SELECT COUNT(*) FROM agents").fetchone()[0] == 6


def test_polling_pending_agents_do_not_use_the_rate(
    make_world: Callable[..., World],
) -> None:
    world = make_world(register_rate=1)
    key = new_key()
    with pytest.raises(PendingApproval):
        world.register(body(key, A, "ws1"))

    for _ in range(5):
        with pytest.raises(PendingApproval):
            world.register(body(key, A, "ws1"))


def test_max_pending_is_429(make_world: Callable[..., World]) -> None:
    world = make_world(max_pending=2)
    for guid in (A, B):
        with pytest.raises(PendingApproval):
            world.register(body(new_key(), guid, "ws1"), f"10.0.1.{guid[0]}")

    world.refused(
        TooManyRequests,
        "too many pending agents",
        lambda: world.register(body(new_key(), C, "ws3"), "10.0.2.1"),
    )

    world.approve(A)  # one fewer pending: room again
    with pytest.raises(PendingApproval):
        world.register(body(new_key(), C, "ws3"), "10.0.2.1")


def test_auto_approve_with_a_token_answers_200_at_once(
    make_world: Callable[..., World],
) -> None:
    world = make_world(registration_token=TOKEN, auto_approve=True)
    key = new_key()

    answer = world.register(body(key, A, "ws1", TOKEN))

    assert sorted(answer) == ["agentId", "ca", "certificate", "renewalIntervalSeconds"]
    assert certificate_of(answer).subject == agent_name(A)
    record = world.record(A)
    assert (record.state, record.key_fingerprint, record.registered_at) == (
        "registered",
        fingerprint(key),
        NOW,
    )
    assert record.cert_serial == format(certificate_of(answer).serial_number, "x")
    assert world.audit() == [("auto_approve", "approve", A)]


@pytest.mark.parametrize("hostname", ["director1", "Director1.example.org"])
def test_auto_approve_never_for_the_directors_own_host(
    make_world: Callable[..., World], hostname: str
) -> None:
    world = make_world(registration_token=TOKEN, auto_approve=True)

    with pytest.raises(PendingApproval):
        world.register(body(new_key(), A, hostname, TOKEN))

    assert world.record(A).state == "pending"
    assert world.audit() == [("address 10.0.0.7", "register", A)]


def test_auto_approve_never_for_a_registered_hostname(
    make_world: Callable[..., World],
) -> None:
    world = make_world(registration_token=TOKEN, auto_approve=True)
    world.register(body(new_key(), A, "ws1", TOKEN))

    with pytest.raises(PendingApproval):
        world.register(body(new_key(), B, "WS1", TOKEN))

    assert (world.record(A).state, world.record(B).state) == ("registered", "pending")


def test_auto_approve_needs_the_token(make_world: Callable[..., World]) -> None:
    world = make_world(registration_token=TOKEN, auto_approve=True)

    world.refused(
        Unauthorized,
        "invalid registration token",
        lambda: world.register(body(new_key(), A, "ws1", "wrong")),
    )


# ---------------------------------------------------------------------- renew


def renew_body(key: Any, guid: str = A) -> RenewRequest:
    return RenewRequest(csr_b64(key, guid))


def test_renew_without_a_certificate_is_401(world: World) -> None:
    key, _ = registered_agent(world)

    world.refused(
        Unauthorized,
        "client certificate required",
        lambda: world.renew(None, renew_body(key)),
    )


def test_renew_with_a_certificate_of_another_ca_is_401(world: World) -> None:
    key, _ = registered_agent(world)
    foreign = ca.new_authority(NOW).sign_agent(
        key.public_key(), A, "ws1", NOW, LIFETIME
    )

    world.refused(
        Unauthorized,
        "invalid client certificate",
        lambda: world.renew(foreign, renew_body(key)),
    )


def test_an_agent_revoked_while_its_certificate_is_made_gets_none(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another director (or dcvixctl) revokes between the check and the write."""
    key, certificate = registered_agent(world)
    before = sqlite.get_txn(world.db, A)
    sign = ca.CertificateAuthority.sign_agent

    def sign_while_revoked(*args: Any) -> x509.Certificate:
        sqlite.revoke_txn(world.db, A, "os:admin", NOW)
        return sign(*args)

    monkeypatch.setattr(ca.CertificateAuthority, "sign_agent", sign_while_revoked)

    with pytest.raises(ServiceUnavailable) as raised:
        world.renew(certificate, renew_body(key))

    assert raised.value.message == (
        f"agent {A} changed while its certificate was made; try again"
    )
    after = sqlite.get_txn(world.db, A)
    assert after is not None and before is not None
    assert (after.state, after.cert_serial) == ("revoked", before.cert_serial)


def test_renew_success_returns_certificate_and_interval_only(world: World) -> None:
    key, certificate = registered_agent(world)
    world.clock.advance(12 * 3600)

    answer = world.renew(certificate, renew_body(key), "10.0.0.50")

    assert sorted(answer) == ["certificate", "renewalIntervalSeconds"]
    assert answer["renewalIntervalSeconds"] == 43200
    renewed = certificate_of(answer)
    assert renewed.subject == agent_name(A)
    assert renewed.serial_number != certificate.serial_number
    assert renewed.not_valid_after_utc == world.now() + LIFETIME
    record = world.record(A)
    assert record.cert_serial == format(renewed.serial_number, "x")
    assert (record.state, record.address) == ("registered", "10.0.0.50")


def test_renew_never_promotes_a_pending_agent(world: World) -> None:
    key, certificate = registered_agent(world)
    with pytest.raises(PendingApproval):
        world.register(body(key, A, "ws1-renamed"))

    world.refused(
        PendingApproval,
        "pending approval",
        lambda: world.renew(certificate, renew_body(key)),
    )
    assert world.record(A).state == "pending"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda db: sqlite.revoke_txn(db, A, "os:admin", NOW), "agent revoked"),
        (lambda db: sqlite.delete_txn(db, A, "os:admin", NOW), "unknown agent"),
    ],
    ids=["revoked", "unknown"],
)
def test_renew_revoked_or_unknown_is_401(
    world: World, change: Callable[[SqliteConnection], object], message: str
) -> None:
    key, certificate = registered_agent(world)
    change(world.db)

    world.refused(
        Unauthorized, message, lambda: world.renew(certificate, renew_body(key))
    )


def test_renew_denied_is_401(world: World) -> None:
    key, certificate = registered_agent(world)
    with pytest.raises(PendingApproval):
        world.register(body(key, A, "ws1-renamed"))
    sqlite.deny_txn(world.db, A, "os:admin", NOW)

    world.refused(
        Unauthorized,
        "agent denied",
        lambda: world.renew(certificate, renew_body(key)),
    )


def test_renew_pins_an_adopted_agent_from_its_certificate(world: World) -> None:
    world.adopt(A, "ws1")
    key = new_key()

    answer = world.renew(world.go_era_certificate(key), renew_body(key))

    assert sorted(answer) == ["certificate", "renewalIntervalSeconds"]
    record = world.record(A)
    assert (record.state, record.key_fingerprint) == ("registered", fingerprint(key))
    assert world.audit_details() == [("mtls", "pin key", A, f"key={fingerprint(key)}")]


def test_renew_with_a_csr_for_another_key_is_409(world: World) -> None:
    _, certificate = registered_agent(world)
    before = world.snapshot()[0]

    with pytest.raises(Conflict) as raised:
        world.renew(certificate, renew_body(new_key()))

    assert raised.value.message == "key mismatch"
    assert world.snapshot()[0] == before
    assert world.audit()[-1] == ("address 10.0.0.7", "key mismatch", A)


def test_renew_with_a_csr_for_another_guid_is_401(world: World) -> None:
    key, certificate = registered_agent(world)
    registered_agent(world, B, "ws2")

    world.refused(
        Unauthorized,
        "csr guid mismatch",
        lambda: world.renew(certificate, renew_body(key, B)),
    )


def test_renew_with_a_certificate_for_another_key_is_401(world: World) -> None:
    # Signed by our CA for A's GUID, but not with A's pinned key.
    registered_agent(world)
    other = new_key()
    stray = world.authority.sign_agent(other.public_key(), A, "ws1", NOW, LIFETIME)

    world.refused(
        Unauthorized,
        "client certificate does not carry the agent's key",
        lambda: world.renew(stray, renew_body(other)),
    )


def test_renew_with_an_expired_certificate_is_401(world: World) -> None:
    key, certificate = registered_agent(world)
    world.clock.advance(LIFETIME.total_seconds() + 1)

    world.refused(
        Unauthorized,
        "client certificate expired",
        lambda: world.renew(certificate, renew_body(key)),
    )


def test_renew_with_a_malformed_body_is_400(world: World) -> None:
    _, certificate = registered_agent(world)

    world.refused(
        BadRequest,
        "invalid csr encoding",
        lambda: world.renew(certificate, RenewRequest("***")),
    )


# -------------------------------------------------------------- authenticate


def test_authenticate_a_registered_agent(world: World) -> None:
    key, certificate = registered_agent(world)

    record = world.authenticate(certificate)

    assert (record.guid, record.state, record.key_fingerprint) == (
        A,
        "registered",
        fingerprint(key),
    )


def test_authenticate_an_expired_certificate_is_401(world: World) -> None:
    _, certificate = registered_agent(world)
    world.clock.advance(LIFETIME.total_seconds() - 1)
    assert world.authenticate(certificate).guid == A
    world.clock.advance(2)

    world.refused(
        Unauthorized,
        "client certificate expired",
        lambda: world.authenticate(certificate),
    )


def test_authenticate_a_revoked_agent_is_401(world: World) -> None:
    _, certificate = registered_agent(world)
    sqlite.revoke_txn(world.db, A, "os:admin", NOW)

    world.refused(
        Unauthorized, "agent revoked", lambda: world.authenticate(certificate)
    )


def test_authenticate_a_pending_agent_is_401(world: World) -> None:
    key, certificate = registered_agent(world)
    with pytest.raises(PendingApproval):
        world.register(body(key, A, "ws1-renamed"))

    world.refused(
        Unauthorized, "agent pending", lambda: world.authenticate(certificate)
    )


def test_authenticate_is_checked_each_time(world: World) -> None:
    _, certificate = registered_agent(world)
    assert world.authenticate(certificate).guid == A

    sqlite.revoke_txn(world.db, A, "os:admin", NOW)
    with pytest.raises(Unauthorized):
        world.authenticate(certificate)
    sqlite.reactivate_txn(world.db, A, "os:admin", NOW)

    assert world.authenticate(certificate).guid == A


def test_authenticate_pins_an_adopted_agent(world: World) -> None:
    world.adopt(A, "ws1")
    key = ec.generate_private_key(ec.SECP256R1())
    go_era = world.authority.sign_agent(key.public_key(), A, "ws1", NOW, LIFETIME)

    record = world.authenticate(go_era)

    assert record.key_fingerprint == fingerprint(key)
    assert world.record(A).pinned is True


def test_authenticate_without_a_certificate_is_401(world: World) -> None:
    world.refused(
        Unauthorized, "client certificate required", lambda: world.authenticate(None)
    )


# ------------------------------------------------------ races and hammering


def test_a_stranger_alternating_keys_changes_a_claim_at_most_once_a_minute(
    world: World,
) -> None:
    world.adopt(A, "ws1")
    first, second = new_key(), new_key()
    for n in range(200):
        with pytest.raises(PendingApproval):
            world.register(body(first if n % 2 == 0 else second, A, "ws1"), STRANGER)
    assert world.record(A).claimed_key == fingerprint(first)
    assert world.audit() == [(f"address {STRANGER}", "claim key", A)]

    world.clock.advance(60)
    with pytest.raises(PendingApproval):
        world.register(body(second, A, "ws1"), STRANGER)
    assert world.record(A).claimed_key == fingerprint(second)
    assert len(world.audit()) == 2


class RevokingRegistry(SqliteRegistry):
    """Two first mTLS calls race: one pins, an admin revokes, the other pins."""

    async def pin(self, guid: str, key: str, now: dt.datetime) -> Pinning:
        await super().pin(guid, key, now)
        await self.revoke(guid, "admin:alice", now)
        return await super().pin(guid, key, now)


def test_an_agent_revoked_while_its_key_is_pinned_is_refused(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(NOW.timestamp())
    registry = RevokingRegistry(tmp_path / "agents.db", inline_runner)
    authority = ca.new_authority(NOW)
    enrolment = Enrolment(
        registry,
        authority,
        EnrolmentPolicy(lifetime=LIFETIME),
        Audit(registry, clock),
        clock,
    )
    db = connect(tmp_path / "agents.db")
    db.execute(
        "INSERT INTO agents (guid, hostname, state) VALUES (?, 'ws1', 'registered')",
        (A,),
    )
    key = new_key()
    certificate = authority.sign_agent(
        key.public_key(), A, "ws1", NOW - dt.timedelta(days=3), LIFETIME
    )
    try:
        with pytest.raises(Unauthorized, match=r"^agent revoked$"):
            resolve(enrolment.authenticate(enrolment.identify(certificate)))
        record = sqlite.get_txn(db, A)
        assert record is not None
        assert (record.state, record.key_fingerprint) == ("revoked", fingerprint(key))
    finally:
        db.close()
        registry.close()
