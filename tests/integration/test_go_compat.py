"""Drop-in compatibility with Go dcvix, both ways (CONTRACT §2, §3).

- A Go agent's exact requests against our director (original-agent.md §7 to §9).
- A Go director's ``data_dir`` (CA files, ``agents.db`` with only the Go table
  and Go text timestamps) adopted by our director.
- A Go agent's ``data_dir`` adopted by our agent.
- Our agent against a stand-in that answers exactly as the Go director does
  (``tests/go_director.py``), including ``ca_fingerprint`` without a CA in the
  chain and the withheld ``registration_token``.
- A Go-era agent certificate carrying ``dcvix-director`` is never taken for
  the director.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL

from daemons import DaemonProcess, free_port
from dcvix import __version__
from dcvix.common.tls import is_director_certificate
from dcvix.director.hostnames import own_host_names
from go_agent import (
    GoAgentKey,
    Reply,
    go_csr,
    new_go_key,
    new_guid,
    pkcs8,
    register,
    renew,
    strict_context,
    tofu_context,
    write_go_agent_data_dir,
)
from go_director import (
    GoAgentRow,
    GoCA,
    StandIn,
    call_agent,
    pem,
    write_go_director_data_dir,
)

DCVIXCTL = str(Path(sys.executable).parent / "dcvixctl")
PENDING = {"error": "pending approval"}
HOSTNAME = socket.gethostname()


# ------------------------------------------------------------------ helpers


class report_from:
    """Equal to an agent's ``/v1/stats`` report from ``hostname`` (our version)."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, dict)
            and other.get("stats", {}).get("hostname") == self.hostname
            and other.get("version") == __version__
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<a report from {self.hostname}, version {__version__}>"


def wait_for(what: str, condition: Callable[[], object], timeout: float = 10.0) -> Any:
    """Poll ``condition`` until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not after {timeout} s: {what}")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def log_text(daemon: DaemonProcess) -> str:
    path = daemon.log_dir / f"{daemon.plugin}.log"
    return path.read_text() if path.exists() else ""


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_fingerprint(key: GoAgentKey) -> str:
    return hashlib.sha256(spki(key.public_key())).hexdigest()


def load_pem(data: bytes | str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(
        data.encode() if isinstance(data, str) else data
    )


def served_der(port: int) -> bytes | None:
    """The certificate a new TLS connection to ``port`` gets, or None."""
    context = tofu_context()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw) as tls,
        ):
            return tls.getpeercert(binary_form=True)
    except OSError:
        return None


def served_chain(port: int) -> list[bytes]:
    """The DER of every certificate a TLS server at ``port`` sends, leaf first."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.settimeout(None)  # pyOpenSSL wants a blocking socket
        connection = SSL.Connection(context, raw)
        connection.set_connect_state()
        connection.do_handshake()
        chain = connection.get_peer_cert_chain(as_cryptography=True) or []
        connection.shutdown()
    return [der(c) for c in chain]


def start_agent(
    daemons: list[DaemonProcess], folder: Path, **agent: str
) -> DaemonProcess:
    """Our agent, up once its port answers TLS (whatever it serves)."""
    daemon = DaemonProcess("dcvix-agent", folder, free_port(), extra={"agent": agent})
    daemons.append(daemon)
    daemon.start(wait=False)

    def up() -> bool:
        assert daemon.process is not None
        if daemon.process.poll() is not None:
            raise AssertionError(daemon.output.read_text(errors="replace"))
        return served_der(daemon.port) is not None

    wait_for("the agent listens", up, 20.0)
    return daemon


def dcvixctl(director: DaemonProcess, *args: str) -> str:
    done = subprocess.run(
        [DCVIXCTL, "--conf", str(director.conf), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def agents_list_line(director: DaemonProcess, guid: str) -> str:
    [line] = [x for x in dcvixctl(director, "agents", "list").splitlines() if guid in x]
    return line


def assert_agent_certificate(
    certificate: x509.Certificate,
    ca: x509.Certificate,
    key: GoAgentKey,
    guid: str,
    hostname: str,
    lifetime: dt.timedelta = dt.timedelta(days=14),
) -> None:
    """What CONTRACT §3 says our director issues, field by field."""
    certificate.verify_directly_issued_by(ca)
    assert certificate.subject.rfc4514_string() == f"CN=dcvix-agent-{guid}"
    assert spki(certificate.public_key()) == spki(key.public_key())
    names = certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert names.get_values_for_type(x509.DNSName) == [hostname]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    assert end - start == lifetime + dt.timedelta(hours=1)
    drift = start + dt.timedelta(hours=1) - dt.datetime.now(dt.UTC)
    assert abs(drift.total_seconds()) < 120


def assert_pending(reply: Reply) -> None:
    assert (reply.status, reply.content_type, reply.json) == (
        403,
        "application/json",
        PENDING,
    )


# ------------------------------------------- 1. a Go agent against our director


@pytest.fixture(scope="module")
def director(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One of our directors (fresh install) for the Go agents of this section."""
    daemon = DaemonProcess(
        "dcvix-director", tmp_path_factory.mktemp("director"), free_port()
    )
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


def test_go_agent_enrols_registers_again_and_renews(
    director: DaemonProcess, tmp_path: Path
) -> None:
    key, guid, hostname = new_go_key("ed25519"), new_guid(), "go-ws-ed25519"

    # TOFU, no client certificate, no verification: pending, and again pending.
    assert_pending(register(director.port, key, guid, hostname))
    assert_pending(register(director.port, key, guid, hostname))
    assert "pending" in agents_list_line(director, guid)

    assert dcvixctl(director, "agents", "approve", guid).startswith(
        f"agent {guid} (go-ws-ed25519) approved"
    )
    answer = register(director.port, key, guid, hostname)
    assert (answer.status, answer.content_type) == (200, "application/json")
    body = answer.json
    assert sorted(body) == ["agentId", "ca", "certificate", "renewalIntervalSeconds"]
    assert body["agentId"] == guid
    assert body["renewalIntervalSeconds"] == 43200
    assert body["ca"].encode() == director.ca.read_bytes()
    ca = load_pem(body["ca"])
    first = load_pem(body["certificate"])
    assert_agent_certificate(first, ca, key, guid, hostname)

    # The Go agent registers at every start, strict now: ca.pem and the host
    # name it dials (127.0.0.1) checked. Same key, valid certificate: 200 at once.
    strict = strict_context(tmp_path / "strict", body["ca"].encode())
    again = register(director.port, key, guid, hostname, strict)
    assert again.status == 200
    second = load_pem(again.json["certificate"])
    assert_agent_certificate(second, ca, key, guid, hostname)
    assert second.serial_number != first.serial_number

    mtls = strict_context(tmp_path / "mtls", body["ca"].encode(), pem(second), key)
    renewed = renew(director.port, key, guid, mtls)
    assert (renewed.status, renewed.content_type) == (200, "application/json")
    assert sorted(renewed.json) == ["certificate", "renewalIntervalSeconds"]
    assert renewed.json["renewalIntervalSeconds"] == 43200
    third = load_pem(renewed.json["certificate"])
    assert_agent_certificate(third, ca, key, guid, hostname)
    assert third.serial_number not in (first.serial_number, second.serial_number)


def test_go_csr_is_what_go_makes() -> None:
    """The helper's CSR: CN alone as a PrintableString, no attribute, pure Ed25519."""
    guid = new_guid()
    csr = go_csr(new_go_key("ed25519"), guid)
    encoded = csr.public_bytes(serialization.Encoding.DER)
    common_name = f"dcvix-agent-{guid}".encode()
    # SET { SEQUENCE { OID 2.5.4.3, PrintableString (tag 0x13) } }
    assert bytes([0x13, len(common_name)]) + common_name in encoded
    assert b"\xa0\x00" in encoded  # an empty attribute set, as Go writes it
    assert len(csr.subject.rdns) == 1
    assert len(csr.extensions) == 0
    assert csr.signature_algorithm_oid.dotted_string == "1.3.101.112"
    assert csr.is_signature_valid


@pytest.mark.parametrize(
    ("kind", "key_class"),
    [("p256", ec.EllipticCurvePublicKey), ("rsa2048", rsa.RSAPublicKey)],
)
def test_go_agent_with_ecdsa_or_rsa_key_enrols(
    director: DaemonProcess, tmp_path: Path, kind: str, key_class: type
) -> None:
    key, guid, hostname = new_go_key(kind), new_guid(), f"go-ws-{kind}"
    assert_pending(register(director.port, key, guid, hostname))
    dcvixctl(director, "agents", "approve", guid)

    answer = register(director.port, key, guid, hostname)
    assert answer.status == 200
    ca = load_pem(answer.json["ca"])
    certificate = load_pem(answer.json["certificate"])
    assert isinstance(certificate.public_key(), key_class)
    assert_agent_certificate(certificate, ca, key, guid, hostname)

    mtls = strict_context(tmp_path, answer.json["ca"].encode(), pem(certificate), key)
    renewed = renew(director.port, key, guid, mtls)
    assert renewed.status == 200
    assert_agent_certificate(
        load_pem(renewed.json["certificate"]), ca, key, guid, hostname
    )


# ------------------------------------- 2. a Go director's data_dir, adopted


GO_CREATED_A = "2025-03-01 10:20:30.123456789+01:00"


@pytest.mark.parametrize(
    "ca_kind",
    [
        "p256",  # what Go generates
        "ed25519",  # an admin-supplied CA (Go loads any PKCS#8 key)
    ],
)
def test_go_director_data_dir_is_adopted(
    tmp_path: Path, daemons: list[DaemonProcess], ca_kind: str
) -> None:
    ca = GoCA.create(kind=ca_kind)
    key_a, guid_a = new_go_key("ed25519"), new_guid()
    key_b, guid_b = new_go_key("ed25519"), new_guid()
    guid_c, guid_d, guid_e = new_guid(), new_guid(), new_guid()
    folder = tmp_path / "go-director"
    data_dir = folder / "data"
    write_go_director_data_dir(
        data_dir,
        ca,
        ["dcvix-director", "localhost", *own_host_names()],
        [
            GoAgentRow(
                guid_a,
                "go-ws-a",
                "registered",
                GO_CREATED_A,
                "2025-03-01 09:25:00.5+00:00",
                "2025-03-10 08:00:00.000000001+00:00",
            ),
            GoAgentRow(
                guid_b,
                "go-ws-b",
                "registered",
                "2025-03-02 11:00:00+01:00",
                "2025-03-02 10:05:00.25+00:00",
                "2025-03-09 07:30:00.75+00:00",
            ),
            GoAgentRow(guid_c, "go-ws-c", "pending", "2025-03-03 12:00:00.999+01:00"),
            # Go let two agents register the same hostname: kept, flagged.
            GoAgentRow(
                guid_d,
                "go-ws-a",
                "registered",
                "2025-03-04 08:00:00.1+01:00",
                "2025-03-04 07:10:00+00:00",
            ),
            GoAgentRow(
                guid_e,
                "go-ws-e",
                "revoked",
                "2025-02-01 08:00:00+01:00",
                "2025-02-01 07:30:00+00:00",
            ),
        ],
    )
    files = ("ca.key", "ca.pem", "server.key", "server.crt")
    before = {name: (data_dir / name).read_bytes() for name in files}

    director = DaemonProcess("dcvix-director", folder, free_port())
    daemons.append(director)
    director.start()  # healthy: checked against the Go ca.pem, as 127.0.0.1

    assert {name: (data_dir / name).read_bytes() for name in files} == before
    assert mode(data_dir / "ca.key") == 0o600
    assert mode(data_dir) == 0o700  # Go's 0755 tightened
    # Go's server.crt served as it is, now with the CA after it.
    assert served_chain(director.port) == [
        der(load_pem(before["server.crt"])),
        der(ca.certificate),
    ]

    line_a = agents_list_line(director, guid_a)
    assert "go-ws-a" in line_a
    assert "registered (unpinned)" in line_a
    since = dt.datetime(2025, 3, 1, 9, 20, 30, tzinfo=dt.UTC).astimezone()
    assert since.isoformat(timespec="seconds") in line_a
    assert "pending" in agents_list_line(director, guid_c)
    assert "go-ws-a (duplicate!)" in agents_list_line(director, guid_d)
    assert f"CA fingerprint (SHA-256): {ca.fingerprint}" in log_text(director)
    with sqlite3.connect(data_dir / "agents.db") as connection:
        row = connection.execute(
            "SELECT hostname, state, created_at FROM agents WHERE guid = ?", (guid_a,)
        ).fetchone()
    assert row == ("go-ws-a", "registered", GO_CREATED_A)

    # A: its Go certificate renews over mTLS, and that pins its key.
    go_certificate = ca.agent_certificate(key_a.public_key(), guid_a, "go-ws-a")
    mtls = strict_context(tmp_path / "a", ca.pem(), pem(go_certificate), key_a)
    renewed = renew(director.port, key_a, guid_a, mtls)
    assert (renewed.status, sorted(renewed.json)) == (
        200,
        ["certificate", "renewalIntervalSeconds"],
    )
    assert_agent_certificate(
        load_pem(renewed.json["certificate"]),
        ca.certificate,
        key_a,
        guid_a,
        "go-ws-a",
    )
    line_a = agents_list_line(director, guid_a)
    assert "unpinned" not in line_a
    assert key_fingerprint(key_a)[:16] in line_a

    stranger = new_go_key("ed25519")
    mismatch = register(director.port, stranger, guid_a, "go-ws-a")
    assert (mismatch.status, mismatch.json) == (409, {"error": "key mismatch"})
    restart = register(director.port, key_a, guid_a, "go-ws-a")
    assert restart.status == 200

    # B: first contact is a register: the row stays registered, its key is a
    # claim that waits for an admin (or for B's certificate at an mTLS call).
    assert_pending(register(director.port, key_b, guid_b, "go-ws-b"))
    line_b = agents_list_line(director, guid_b)
    assert f"registered (unpinned, claim {key_fingerprint(key_b)[:16]})" in line_b
    # A stranger who read B's GUID changes neither B's state nor, within the
    # minute, its claim; the admin approves the key they checked.
    assert_pending(register(director.port, stranger, guid_b, "go-ws-b"))
    line_b = agents_list_line(director, guid_b)
    assert f"registered (unpinned, claim {key_fingerprint(key_b)[:16]})" in line_b
    dcvixctl(director, "agents", "approve", guid_b, "--key", key_fingerprint(key_b))
    mismatch = register(director.port, stranger, guid_b, "go-ws-b")
    assert (mismatch.status, mismatch.json) == (409, {"error": "key mismatch"})
    # C was pending under Go (no key known): its first key is recorded now.
    key_c = new_go_key("ed25519")
    assert_pending(register(director.port, key_c, guid_c, "go-ws-c"))
    assert key_fingerprint(key_c)[:16] in agents_list_line(director, guid_c)
    # E was revoked under Go, and stays so.
    revoked = register(director.port, new_go_key("ed25519"), guid_e, "go-ws-e")
    assert (revoked.status, revoked.json) == (401, {"error": "agent revoked"})
    approved = register(director.port, key_b, guid_b, "go-ws-b")
    assert approved.status == 200
    assert approved.json["ca"].encode() == before["ca.pem"]
    assert_agent_certificate(
        load_pem(approved.json["certificate"]),
        ca.certificate,
        key_b,
        guid_b,
        "go-ws-b",
    )


# ---------------------------------------- 3. a Go agent's data_dir, adopted


@pytest.mark.parametrize("kind", ["ed25519", "p256", "rsa2048"])
def test_go_agent_data_dir_is_adopted(
    tmp_path: Path, daemons: list[DaemonProcess], kind: str
) -> None:
    """A Go agent makes Ed25519 keys, and takes any existing PKCS#8 key."""
    ca = GoCA.create()
    key, guid = new_go_key(kind), new_guid()
    certificate = ca.agent_certificate(key.public_key(), guid, HOSTNAME)
    folder = tmp_path / "go-agent"
    data_dir = folder / "data"
    # ca.pem "may hold several certificates, and all of them are trusted".
    bundle = GoCA.create("an older dcvix CA").pem() + ca.pem()
    write_go_agent_data_dir(data_dir, key, guid, certificate, bundle)
    files = ("agent.key", "agent.guid", "agent.crt", "ca.pem")
    before = {name: (data_dir / name).read_bytes() for name in files}
    nobody = free_port()  # the director is unreachable

    agent = start_agent(
        daemons, folder, director_host="127.0.0.1", director_port=str(nobody)
    )

    assert served_der(agent.port) == der(certificate)
    assert {name: (data_dir / name).read_bytes() for name in files} == before
    assert (data_dir / "agent.guid").read_bytes() == guid.encode()
    assert mode(data_dir) == 0o700
    assert f"certificate on disk is valid: serving as agent {guid}" in log_text(agent)

    # The Go director calls it as it always did: its server.crt as client
    # certificate, the agent's certificate checked against ca.pem and HOSTNAME.
    server_certificate, server_key = ca.server_certificate(
        ["dcvix-director", "localhost", "go-director"]
    )
    assert call_agent(
        agent.port,
        HOSTNAME,
        "/v1/stats",
        ca.pem(),
        server_certificate,
        server_key,
        tmp_path / "go-director",
    ) == (200, report_from(HOSTNAME))


# ------------------------------ 4. our agent against a Go director stand-in


@pytest.fixture
def stand_ins() -> Iterator[list[StandIn]]:
    started: list[StandIn] = []
    yield started
    for stand_in in started:
        stand_in.stop()


def go_stand_in(
    stand_ins: list[StandIn],
    folder: Path,
    ca: GoCA,
    pending_polls: int = 0,
    server_ca: GoCA | None = None,
) -> StandIn:
    """A Go director: its certificate from ``server_ca`` (default ``ca``)."""
    server_certificate, server_key = (server_ca or ca).server_certificate(
        ["dcvix-director", "localhost", "go-director"]
    )
    stand_in = StandIn(folder, ca, server_certificate, server_key, pending_polls)
    stand_ins.append(stand_in)
    return stand_in.start()


def assert_go_register_request(entry: dict[str, Any], guid: str, key: Any) -> None:
    """What our agent sent is what a Go director reads."""
    assert entry["content_type"] == "application/json"
    assert entry["peer"] is None
    body = json.loads(entry["body"])
    assert list(body) == ["csr", "guid", "hostname"]
    assert body["guid"] == guid
    csr = x509.load_der_x509_csr(base64.b64decode(body["csr"], validate=True))
    assert csr.subject.rfc4514_string() == f"CN=dcvix-agent-{guid}"
    assert len(csr.extensions) == 0
    assert csr.is_signature_valid
    assert spki(csr.public_key()) == spki(key.public_key())


def test_our_agent_enrols_with_and_renews_against_a_go_director(
    tmp_path: Path, daemons: list[DaemonProcess], stand_ins: list[StandIn]
) -> None:
    ca = GoCA.create()
    stand_in = go_stand_in(stand_ins, tmp_path / "go", ca, pending_polls=1)
    agent = start_agent(
        daemons,
        tmp_path / "agent",
        director_host="127.0.0.1",
        director_port=str(stand_in.port),
        hostname="go-ws-4",
        renew_interval="4s",
    )
    files = agent.data_dir
    wait_for("a first register", lambda: stand_in.requests("/v1/agent/register"))
    assert not (files / "agent.crt").exists()
    assert not (files / "ca.pem").exists()

    # The Go agent's rhythm: polls until approved (every 30 s; SIGHUP asks
    # now, which keeps the suite short; test_deny_then_delete waits for polls).
    assert agent.process is not None
    agent.process.send_signal(signal.SIGHUP)
    wait_for("agent.crt", (files / "agent.crt").exists, 45.0)
    key = serialization.load_pem_private_key((files / "agent.key").read_bytes(), None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    guid = (files / "agent.guid").read_text()
    registers = stand_in.requests("/v1/agent/register")
    assert [e["status"] for e in registers] == [403, 200]
    for entry in registers:
        assert_go_register_request(entry, guid, key)
        assert json.loads(entry["body"])["hostname"] == "go-ws-4"
    assert (files / "ca.pem").read_bytes() == ca.pem()
    first_pem = (files / "agent.crt").read_bytes()
    first = load_pem(first_pem)
    first.verify_directly_issued_by(ca.certificate)
    assert first.subject.rfc4514_string() == f"CN=dcvix-agent-{guid}"
    assert spki(first.public_key()) == spki(key.public_key())
    wait_for("agent.crt served", lambda: served_der(agent.port) == der(first))
    assert f"fingerprint {ca.fingerprint}" in log_text(agent)  # trusted on first use
    assert call_agent(
        agent.port,
        "go-ws-4",
        "/v1/stats",
        ca.pem(),
        stand_in.server_certificate,
        stand_in.server_key,
        tmp_path / "go-director",
    ) == (200, report_from("go-ws-4"))

    # Renewal (renew_interval 4 s) over mTLS with that certificate.
    renewal = wait_for(
        "a renewal",
        lambda: [e for e in stand_in.requests("/v1/agent/renew") if e["status"] == 200],
        20.0,
    )[0]
    assert renewal["content_type"] == "application/json"
    assert list(json.loads(renewal["body"])) == ["csr"]
    assert renewal["peer"].encode() == first_pem
    wait_for(
        "the renewed agent.crt",
        lambda: (files / "agent.crt").read_bytes() != first_pem,
    )

    def serving_what_is_on_disk() -> bool:
        renewed = load_pem((files / "agent.crt").read_bytes())
        return served_der(agent.port) == der(renewed)

    wait_for("the renewed certificate served", serving_what_is_on_disk)
    renewed = load_pem((files / "agent.crt").read_bytes())
    renewed.verify_directly_issued_by(ca.certificate)
    assert renewed.serial_number != first.serial_number
    assert spki(renewed.public_key()) == spki(key.public_key())
    assert (files / "ca.pem").read_bytes() == ca.pem()
    assert [e["status"] for e in stand_in.requests("/v1/agent/register")] == [403, 200]


def colon_fingerprint(ca: GoCA) -> str:
    """``AB:CD:…``, as ``openssl x509 -fingerprint -sha256`` prints it."""
    hexdigits = ca.fingerprint.upper()
    return ":".join(hexdigits[i : i + 2] for i in range(0, len(hexdigits), 2))


def test_ca_fingerprint_accepts_a_go_director_without_ca_in_its_chain(
    tmp_path: Path, daemons: list[DaemonProcess], stand_ins: list[StandIn]
) -> None:
    ca = GoCA.create()
    stand_in = go_stand_in(stand_ins, tmp_path / "go", ca)
    agent = start_agent(
        daemons,
        tmp_path / "agent",
        director_host="127.0.0.1",
        director_port=str(stand_in.port),
        hostname="go-ws-fp",
        ca_fingerprint=colon_fingerprint(ca),
        registration_token="s3cret-enrol",
    )
    # Like Go, the stand-in sends its certificate alone, no CA.
    assert served_chain(stand_in.port) == [der(stand_in.server_certificate)]
    files = agent.data_dir
    wait_for("agent.crt", (files / "agent.crt").exists, 15.0)
    assert (files / "ca.pem").read_bytes() == ca.pem()
    load_pem((files / "agent.crt").read_bytes()).verify_directly_issued_by(
        ca.certificate
    )

    registers = stand_in.requests("/v1/agent/register")
    assert [e["status"] for e in registers] == [200]
    guid = (files / "agent.guid").read_text()
    key = serialization.load_pem_private_key((files / "agent.key").read_bytes(), None)
    assert_go_register_request(registers[0], guid, key)  # no registrationToken
    assert "s3cret-enrol" not in registers[0]["body"]
    text = log_text(agent)
    assert "registration_token withheld" in text
    assert "s3cret-enrol" not in text


@pytest.mark.parametrize("trap", ["wrong fingerprint", "director from another CA"])
def test_unverified_go_director_gets_nothing_stored(
    tmp_path: Path, daemons: list[DaemonProcess], stand_ins: list[StandIn], trap: str
) -> None:
    ca, other = GoCA.create(), GoCA.create()
    if trap == "wrong fingerprint":
        # The director is what it claims, but not the CA the admin pinned.
        stand_in = go_stand_in(stand_ins, tmp_path / "go", ca)
        pinned = other
    else:
        # The ``ca`` answered is the pinned one, the director's own certificate
        # does not chain to it.
        stand_in = go_stand_in(stand_ins, tmp_path / "go", ca, server_ca=other)
        pinned = ca
    agent = start_agent(
        daemons,
        tmp_path / "agent",
        director_host="127.0.0.1",
        director_port=str(stand_in.port),
        hostname="go-ws-trap",
        ca_fingerprint=pinned.fingerprint,
        registration_token="s3cret-enrol",
    )
    wait_for(
        "the answer refused",
        lambda: "registration answer refused" in log_text(agent),
        15.0,
    )
    assert [e["status"] for e in stand_in.requests("/v1/agent/register")] == [200]
    assert "s3cret-enrol" not in stand_in.requests_file.read_text()
    assert sorted(p.name for p in agent.data_dir.iterdir()) == [
        "agent.guid",
        "agent.key",
    ]


def test_adopted_agent_refused_in_go_text_registers_again_with_its_token(
    tmp_path: Path, daemons: list[DaemonProcess], stand_ins: list[StandIn]
) -> None:
    """A Go director that forgot the agent answers its renewal with a Go text
    error (401 ``unknown agent``): our agent registers again, same GUID and key,
    and sends its token, as the channel is verified by the ca.pem on disk."""
    ca = GoCA.create()
    stand_in = go_stand_in(stand_ins, tmp_path / "go", ca)
    key, guid = new_go_key("ed25519"), new_guid()
    old = ca.agent_certificate(key.public_key(), guid, "go-ws-re")
    folder = tmp_path / "agent"
    write_go_agent_data_dir(folder / "data", key, guid, old, ca.pem())
    agent = start_agent(
        daemons,
        folder,
        director_host="127.0.0.1",
        director_port=str(stand_in.port),
        hostname="go-ws-re",
        renew_interval="2s",
        registration_token="s3cret-enrol",
    )
    [register_entry] = wait_for(
        "a registration", lambda: stand_in.requests("/v1/agent/register"), 20.0
    )
    refusal = stand_in.requests("/v1/agent/renew")[0]
    assert (refusal["status"], refusal["peer"].encode()) == (401, pem(old))
    assert "renewal refused (401: unknown agent): registering again" in log_text(agent)

    assert register_entry["status"] == 200
    assert register_entry["peer"] is None
    body = json.loads(register_entry["body"])
    assert list(body) == ["csr", "guid", "hostname", "registrationToken"]
    assert (body["guid"], body["hostname"], body["registrationToken"]) == (
        guid,
        "go-ws-re",
        "s3cret-enrol",
    )
    data = folder / "data"
    wait_for("the new agent.crt", lambda: (data / "agent.crt").read_bytes() != pem(old))
    new = load_pem((data / "agent.crt").read_bytes())
    new.verify_directly_issued_by(ca.certificate)
    assert spki(new.public_key()) == spki(key.public_key())
    assert (data / "agent.guid").read_bytes() == guid.encode()
    assert (data / "agent.key").read_bytes() == pkcs8(key)
    wait_for(
        "a renewal accepted",
        lambda: [e for e in stand_in.requests("/v1/agent/renew") if e["status"] == 200],
    )


# ------------------------ 5. a Go-era agent certificate naming dcvix-director


def test_go_era_agent_certificate_is_not_the_director(
    tmp_path: Path, daemons: list[DaemonProcess], stand_ins: list[StandIn]
) -> None:
    ca = GoCA.create()
    key, guid = new_go_key("ed25519"), new_guid()
    own = ca.agent_certificate(key.public_key(), guid, HOSTNAME)
    # Another agent whose CSR asked for dcvix-director: a Go director copied it.
    impostor_key, impostor_guid = new_go_key("ed25519"), new_guid()
    impostor = ca.agent_certificate(
        impostor_key.public_key(),
        impostor_guid,
        "go-ws-evil",
        extra_dns=["dcvix-director"],
    )
    names = impostor.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert names.value.get_values_for_type(x509.DNSName) == [
        "dcvix-director",
        "go-ws-evil",
    ]
    impostor_director = StandIn(tmp_path / "evil", ca, impostor, impostor_key)
    stand_ins.append(impostor_director)
    impostor_director.start()

    folder = tmp_path / "agent"
    write_go_agent_data_dir(folder / "data", key, guid, own, ca.pem())
    before = {p.name: p.read_bytes() for p in (folder / "data").iterdir()}
    agent = start_agent(
        daemons,
        folder,
        director_host="127.0.0.1",
        director_port=str(impostor_director.port),
        renew_interval="2s",
    )
    wait_for("a renewal attempt", lambda: "renewal failed" in log_text(agent), 20.0)
    assert impostor_director.requests() == []  # refused in the handshake
    assert {p.name: p.read_bytes() for p in (folder / "data").iterdir()} == before
    assert served_der(agent.port) == der(own)

    # Nor may it call the agent's API as the director.
    assert call_agent(
        agent.port,
        HOSTNAME,
        "/v1/stats",
        ca.pem(),
        impostor,
        impostor_key,
        tmp_path / "impostor",
    ) == (403, {"error": "only the director may call this"})


def _leaf(ca: GoCA, subject: x509.Name, dns: list[str]) -> x509.Certificate:
    key = new_go_key("p256")
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
        .not_valid_after(dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    )
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns]), False
        )
    return builder.sign(ca.key, hashes.SHA256())


def _cn(*values: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, v) for v in values])


@pytest.mark.parametrize(
    ("subject", "dns", "accepted"),
    [
        (_cn("dcvix-director"), ["dcvix-director", "localhost"], True),
        (_cn("dcvix-agent-x"), ["dcvix-director", "go-ws-evil"], False),
        (_cn("dcvix-director"), [], False),
        (_cn("dcvix-director"), ["localhost"], False),
        (_cn("dcvix-director", "dcvix-director"), ["dcvix-director"], False),
        (_cn("dcvix-director", "dcvix-agent-x"), ["dcvix-director"], False),
        (_cn("DCVIX-DIRECTOR"), ["dcvix-director"], False),
    ],
    ids=[
        "go server.crt",
        "go-era agent certificate",
        "no SAN",
        "SAN without the name",
        "two CNs",
        "a second, agent CN",
        "CN in another case",
    ],
)
def test_only_the_director_certificate_is_the_director(
    subject: x509.Name, dns: list[str], accepted: bool
) -> None:
    ca = GoCA.create()
    certificate = _leaf(ca, subject, dns)
    assert is_director_certificate(certificate, [ca.certificate]) is accepted
    assert is_director_certificate(certificate, [GoCA.create().certificate]) is False
