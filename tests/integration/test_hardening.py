"""CONTRACT §3 "Hardening", tried as an attacker would against running daemons.

Real twistd processes on 127.0.0.1, spoken to with restricted TLS clients, raw
TLS sockets and hand-made CSRs: the TLS suites on offer, the CSR keys the CA
signs, an ``agents.db`` that is not a database, control characters in what
clients send, and HTTP requests the parser refuses.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

import certs
from daemons import DaemonProcess, free_port, seed_agent, twistd_argv
from fleet import Agent, Daemon, Fleet, https, wait_for

STOPPED = -signal.SIGTERM
TOKEN = "hardening-token"


def log_file(daemon: DaemonProcess) -> Path:
    return daemon.log_dir / f"{daemon.plugin}.log"


def started(fleet: Fleet, plugin: str) -> Daemon:
    """A director, or an agent that has no director, running in ``fleet``."""
    kind = Agent if plugin == "dcvix-agent" else Daemon
    daemon = kind(plugin, fleet.folder / plugin, free_port())
    if plugin == "dcvix-agent":
        daemon.extra = {"agent": {"hostname": "ws-hostile"}}
    fleet.started.append(daemon)
    daemon.start()
    return daemon


def no_verify_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# ======================================================= (1) TLS cipher suites


def tls12_only(cipher: str) -> ssl.SSLContext:
    """A client that offers TLS 1.2 and this one suite, whatever its strength."""
    context = no_verify_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(f"{cipher}:@SECLEVEL=0")
    return context


def handshake(port: int, context: ssl.SSLContext) -> tuple[str, str]:
    """The protocol and suite a handshake settles on (ssl.SSLError if none)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as tls,
    ):
        cipher = tls.cipher()
        assert cipher is not None
        return str(tls.version()), cipher[0]


def rsa_director(fleet: Fleet) -> DaemonProcess:
    """A director serving an RSA certificate (as an adopted Go one may be).

    Made by its own CA with every name of the certificate it made itself, so
    it is kept at the next start.
    """
    director = fleet.director()
    director.stop()
    ca = certs.load_ca(director.data_dir / "ca.pem", director.data_dir / "ca.key")
    dns, ips = certs.alt_names(certs.load_certificate(director.certificate))
    key = rsa.generate_private_key(65537, 2048)
    leaf = ca.issue(
        "dcvix-director",
        dns,
        ips,
        key=cast(Any, key),
        not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=365),
    )
    director.key.write_bytes(leaf.key_pem())
    director.key.chmod(0o600)
    director.certificate.write_bytes(leaf.cert_pem())
    director.start()
    return director


LISTENERS = ["director", "director-rsa", "agent", "agent-enrolled"]


@pytest.fixture(params=LISTENERS)
def listener(request: pytest.FixtureRequest, fleet: Fleet) -> tuple[int, str]:
    """A running daemon's port and its certificate's key type."""
    kind = request.param
    if kind == "director":
        return fleet.director().port, "ecdsa"
    if kind == "director-rsa":
        return rsa_director(fleet).port, "rsa"
    agent = Agent(
        "dcvix-agent",
        fleet.folder / kind,
        free_port(),
        extra={"agent": {"hostname": "ws-tls"}},
    )
    if kind == "agent-enrolled":
        # A certificate it serves through its usual path, not the self-signed one.
        seed_agent(agent, certs.CA.create(), "ws-tls")
    fleet.started.append(agent)
    agent.start()
    return agent.port, "ed25519"


# Refused whatever the key: CBC (with SHA-1 or SHA-2 MACs), RSA key exchange
# (even with an AEAD), finite-field DHE.
WEAK_SUITES = {
    "ecdsa": [
        "ECDHE-ECDSA-AES128-SHA",
        "ECDHE-ECDSA-AES256-SHA",
        "ECDHE-ECDSA-AES128-SHA256",
        "ECDHE-ECDSA-AES256-SHA384",
    ],
    "rsa": [
        "AES128-GCM-SHA256",
        "AES256-GCM-SHA384",
        "AES128-SHA",
        "AES256-SHA256",
        "ECDHE-RSA-AES128-SHA",
        "ECDHE-RSA-AES256-SHA384",
        "DHE-RSA-AES128-GCM-SHA256",
    ],
}
WEAK_SUITES["ed25519"] = WEAK_SUITES["ecdsa"]
GOOD_SUITES = {
    "ecdsa": [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ],
    "rsa": [
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ],
}
GOOD_SUITES["ed25519"] = GOOD_SUITES["ecdsa"]


def test_listeners_refuse_cbc_sha1_and_rsa_key_exchange_suites(
    listener: tuple[int, str],
) -> None:
    port, key_type = listener
    accepted = []
    for suite in WEAK_SUITES[key_type]:
        try:
            accepted.append(handshake(port, tls12_only(suite)))
        except ssl.SSLError:
            continue
    assert accepted == []


def test_listeners_accept_tls_1_3_and_tls_1_2_ecdhe_aead(
    listener: tuple[int, str],
) -> None:
    port, key_type = listener
    assert handshake(port, no_verify_context())[0] == "TLSv1.3"
    for suite in GOOD_SUITES[key_type]:
        assert handshake(port, tls12_only(suite)) == ("TLSv1.2", suite)


def renegotiated(port: int) -> bool:
    """Whether a TLS 1.2 client may renegotiate after its first handshake."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_max_proto_version(SSL.TLS1_2_VERSION)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        # OpenSSL needs a blocking socket; the kernel bounds each read.
        raw.setblocking(True)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
        client = SSL.Connection(context, raw)
        client.set_connect_state()
        client.do_handshake()
        assert client.renegotiate()
        try:
            client.do_handshake()
            client.send(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            client.recv(4096)
        except (SSL.Error, OSError):
            return False
        return not client.renegotiate_pending()


def test_listeners_refuse_renegotiation(listener: tuple[int, str]) -> None:
    # A renegotiation would let a client present another certificate in the
    # middle of a connection the director has already identified.
    port, _key_type = listener
    assert not renegotiated(port)


# ============================================================ (2) CSR keys


def new_signing_key(kind: str) -> Any:
    makers: dict[str, Callable[[], Any]] = {
        "ed25519": ed25519.Ed25519PrivateKey.generate,
        "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
        "p521": lambda: ec.generate_private_key(ec.SECP521R1()),
        "rsa2048": lambda: rsa.generate_private_key(65537, 2048),
        "rsa3072": lambda: rsa.generate_private_key(65537, 3072),
        "secp256k1": lambda: ec.generate_private_key(ec.SECP256K1()),
        "p192": lambda: ec.generate_private_key(ec.SECP192R1()),
        "p224": lambda: ec.generate_private_key(ec.SECP224R1()),
        "brainpoolp256r1": lambda: ec.generate_private_key(ec.BrainpoolP256R1()),
        "rsa1024": lambda: rsa.generate_private_key(65537, 1024),  # noqa: S505
        "rsa2047": lambda: rsa.generate_private_key(65537, 2047),  # noqa: S505
        "dsa2048": lambda: dsa.generate_private_key(2048),
        "ed448": ed448.Ed448PrivateKey.generate,
    }
    return makers[kind]()


def csr_for(key: Any, guid: str) -> str:
    """A correctly self-signed CSR for ``CN=dcvix-agent-<guid>``, base64 DER."""
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"dcvix-agent-{guid}")]
    )
    algorithm = (
        None
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        else hashes.SHA256()
    )
    request = x509.CertificateSigningRequestBuilder().subject_name(subject)
    der = request.sign(key, algorithm).public_bytes(serialization.Encoding.DER)
    return base64.b64encode(der).decode()


def register(director: DaemonProcess, key: Any, hostname: str) -> tuple[int, Any]:
    guid = str(uuid.uuid4())
    return https(
        director.port,
        "/v1/agent/register",
        cafile=director.ca,
        method="POST",
        body={
            "csr": csr_for(key, guid),
            "guid": guid,
            "hostname": hostname,
            "registrationToken": TOKEN,
        },
    )


ACCEPTED_KEYS = ["ed25519", "p256", "p384", "p521", "rsa2048", "rsa3072"]
REFUSED_KEYS = [
    "secp256k1",
    "p192",
    "p224",
    "brainpoolp256r1",
    "rsa1024",
    "rsa2047",
    "dsa2048",
    "ed448",
]


@pytest.fixture
def token_director(fleet: Fleet) -> DaemonProcess:
    """Approves at once any agent that brings the token."""
    return fleet.director(registration_token=TOKEN, auto_approve="token")


def test_register_signs_only_accepted_csr_keys(token_director: DaemonProcess) -> None:
    refused = {}
    for kind in REFUSED_KEYS:
        status, body = register(token_director, new_signing_key(kind), f"ws-{kind}")
        refused[kind] = (status, body)
    assert {k: v[0] for k, v in refused.items()} == dict.fromkeys(REFUSED_KEYS, 400)
    for kind, (_, body) in refused.items():
        assert body["error"].startswith("csr key not accepted: "), (kind, body)
        assert "Ed25519, ECDSA on P-256, P-384 or P-521" in body["error"]
    assert "secp256k1" in refused["secp256k1"][1]["error"]
    assert "1024 bits" in refused["rsa1024"][1]["error"]
    assert "DSA" in refused["dsa2048"][1]["error"]

    for kind in ACCEPTED_KEYS:
        status, body = register(token_director, new_signing_key(kind), f"ws-{kind}")
        assert status == 200, (kind, body)
        assert body["certificate"].startswith("-----BEGIN CERTIFICATE-----")


def test_renew_refuses_a_csr_with_an_unaccepted_key(
    token_director: DaemonProcess, tmp_path: Path
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    guid = str(uuid.uuid4())
    status, body = https(
        token_director.port,
        "/v1/agent/register",
        cafile=token_director.ca,
        method="POST",
        body={
            "csr": csr_for(key, guid),
            "guid": guid,
            "hostname": "ws-renew",
            "registrationToken": TOKEN,
        },
    )
    assert status == 200, body
    certificate = tmp_path / "agent.crt"
    private = tmp_path / "agent.key"
    certificate.write_text(body["certificate"])
    private.write_bytes(certs.key_pem(key))

    def renew(csr: str) -> tuple[int, Any]:
        return https(
            token_director.port,
            "/v1/agent/renew",
            cafile=token_director.ca,
            cert=certificate,
            key=private,
            method="POST",
            body={"csr": csr},
        )

    for kind in ("secp256k1", "p192", "rsa1024"):
        status, answer = renew(csr_for(new_signing_key(kind), guid))
        assert status == 400, (kind, answer)
        assert answer["error"].startswith("csr key not accepted: "), answer
    status, answer = renew(csr_for(key, guid))
    assert status == 200, answer


# ================================================ (3) agents.db unusable


def corrupt_pages(path: Path) -> None:
    """Keep the header page (the file still opens), garble every other one."""
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page:] = os.urandom(len(data) - page)
    path.write_bytes(bytes(data))


def random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(32768))


def emptied(path: Path) -> None:
    path.write_bytes(b"")


def a_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


BREAKAGES: dict[str, Callable[[Path], None]] = {
    "random bytes": random_bytes,
    "empty": emptied,
    "a directory": a_directory,
    "garbled pages": corrupt_pages,
}
PROBLEMS = {
    "random bytes": "is not a usable SQLite database",
    "empty": "is empty (0 bytes)",
    "a directory": "is not a file",
    "garbled pages": "is not a usable SQLite database",
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_an_unusable_agents_db_beside_the_ca_is_one_line_and_exit_1(
    fleet: Fleet, breakage: str
) -> None:
    director = fleet.director()
    assert director.stop() == STOPPED
    agents_db = director.data_dir / "agents.db"
    for leftover in ("agents.db-wal", "agents.db-shm"):
        (director.data_dir / leftover).unlink(missing_ok=True)
    BREAKAGES[breakage](agents_db)
    before = sorted(p.name for p in director.data_dir.iterdir())

    process = subprocess.Popen(
        twistd_argv("dcvix-director", director.conf),
        cwd=director.folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"the director started with {breakage} agents.db:\n{stdout}")

    assert process.returncode == 1, stdout + stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"dcvix-director: {agents_db} {PROBLEMS[breakage]}")
    assert "Traceback" not in stdout + stderr
    # Nothing was made or replaced: the evidence stays for the admin.
    assert sorted(p.name for p in director.data_dir.iterdir()) == before
    assert agents_db.is_dir() == (breakage == "a directory")


def test_a_fresh_install_makes_a_real_agents_db(fleet: Fleet) -> None:
    director = fleet.director()
    assert director.stop() == STOPPED
    data = (director.data_dir / "agents.db").read_bytes()
    assert data.startswith(b"SQLite format 3\x00")
    # And it starts again on it.
    director.start()


# ================================================= (4) control characters

# Every kind of character that can rewrite or forge a log line on a terminal or
# in a viewer: C0 (ESC, BS, CR), DEL, C1 (CSI), line and paragraph separators,
# bidirectional overrides.
RAW_CONTROL = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def raw_exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send ``request`` over TLS; everything the server answers until it closes."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
        no_verify_context().wrap_socket(raw) as tls,
    ):
        tls.sendall(request)
        answer = b""
        while True:
            try:
                chunk = tls.recv(65536)
            except (ssl.SSLEOFError, ConnectionResetError):
                break
            if not chunk:
                break
            answer += chunk
        return answer


HOSTILE_AGENT = "curl/8\x1b[31m RED\x1b[0m\x08\x08\x7f \u2028INFO forged \u202egnp.exe"


@pytest.mark.parametrize("plugin", ["dcvix-director", "dcvix-agent"])
def test_client_text_in_the_access_log_has_its_control_characters_escaped(
    fleet: Fleet, plugin: str
) -> None:
    daemon = started(fleet, plugin)
    requests = [
        # UTF-8 with terminal escapes, separators, a bidi override, and C1 CSI.
        "GET /v1/health HTTP/1.1\r\nHost: x\r\n"
        f"User-Agent: {HOSTILE_AGENT}\xc2\x9b2J\r\nConnection: close\r\n\r\n".encode(),
        # Not UTF-8 at all.
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nUser-Agent: a\xff\x85\x9bb\r\n"
        b"Connection: close\r\n\r\n",
        # Escapes in the path (raw ones are refused by the parser): logged encoded.
        b"GET /v1/%1b[31m%c2%9b%e2%80%a8x HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close\r\n\r\n",
    ]
    answers = [raw_exchange(daemon.port, request) for request in requests]
    assert [a.split(b" ", 2)[1] for a in answers] == [b"200", b"200", b"404"], answers
    log = log_file(daemon)
    wait_for("three access lines", lambda: log.read_text().count('"GET /v1/') >= 4)
    assert daemon.stop() == STOPPED

    text = log.read_text(encoding="utf-8")
    assert "Traceback" not in text
    assert RAW_CONTROL.findall(text) == []
    assert "curl/8\\x1b[31m RED\\x1b[0m\\x08\\x08\\x7f \\u2028INFO forged" in text
    assert "\\u202egnp.exe" in text
    assert not [line for line in text.splitlines() if line.startswith("INFO forged")]


def test_user_ids_in_login_audit_lines_have_their_control_characters_escaped(
    fleet: Fleet,
) -> None:
    director = fleet.director()
    hostile = (
        "eve\u2028INFO     [2026-01-01T00:00:00+00:00] dcvix.audit: admin login\u202e"
    )
    for path in ("/v1/user/login", "/v1/admin/login"):
        status, _ = https(
            director.port,
            path,
            cafile=director.ca,
            method="POST",
            body={"userID": hostile, "password": "wrong"},
        )
        assert status == 401
    log = log_file(director)
    wait_for("two failed logins", lambda: log.read_text().count("login failed") >= 2)
    assert director.stop() == STOPPED

    text = log.read_text(encoding="utf-8")
    assert RAW_CONTROL.findall(text) == []
    failed = [line for line in text.splitlines() if "login failed" in line]
    assert len(failed) == 2
    for line in failed:
        assert line.startswith("INFO ")
        assert "eve\\u2028INFO     [2026-01-01T00:00:00+00:00]" in line
        assert "admin login\\u202e" in line


# ============================================ (5) protocol errors answered


def status_of(answer: bytes) -> int:
    head = answer.split(b"\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 "), answer[:200]
    return int(head.split(b" ")[1])


def json_error(answer: bytes) -> str:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"\r\nconnection: close" in head.lower(), head
    assert b"\r\ncontent-type: application/json" in head.lower(), head
    return str(json.loads(body)["error"])


PROTOCOL_ERRORS = {
    "a 20 KB header line": (
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
        431,
    ),
    "a 20 KB request line": (
        b"GET /v1/health?" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        431,
    ),
    "20 KB of headers": (
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: %s\r\n" % (n, b"a" * 90) for n in range(200))
        + b"\r\n",
        431,
    ),
    "a bad Content-Length": (
        b"POST /v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: 12a\r\n\r\n",
        400,
    ),
    "two Content-Lengths": (
        b"POST /v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Content-Length: 3\r\n\r\n{}",
        400,
    ),
    "no Host on HTTP/1.1": (b"GET /v1/health HTTP/1.1\r\n\r\n", 400),
    "two Hosts on HTTP/1.1": (
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        400,
    ),
    "a header without a colon": (
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nnonsense\r\n\r\n",
        400,
    ),
    "a request line without a version": (b"GET /v1/health\r\n\r\n", 400),
}


@pytest.mark.parametrize("plugin", ["dcvix-director", "dcvix-agent"])
def test_protocol_errors_are_answered_and_closed(fleet: Fleet, plugin: str) -> None:
    """Each is answered at once and the connection closed: a hang would run
    into the 10 s socket timeout (and the daemon's idle timeout is far longer)."""
    daemon = started(fleet, plugin)
    seen = {}
    for name, (request, _) in PROTOCOL_ERRORS.items():
        answer = raw_exchange(daemon.port, request)
        seen[name] = (status_of(answer), json_error(answer))
    assert {k: v[0] for k, v in seen.items()} == {
        k: v[1] for k, v in PROTOCOL_ERRORS.items()
    }
    assert seen["a 20 KB header line"][1] == "request header fields too large"
    assert seen["no Host on HTTP/1.1"][1] == "missing Host header"
    # Header values that are not UTF-8 are answered, never a traceback.
    answer = raw_exchange(
        daemon.port,
        b"POST /v1/user/login HTTP/1.1\r\nHost: x\r\nOrigin: https://\xff\r\n"
        b"Content-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    assert status_of(answer) == 403, answer
    # HTTP/1.0 needs no Host; the daemon still answers and serves on.
    answer = raw_exchange(daemon.port, b"GET /v1/health HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 200 "), answer[:200]
    assert daemon.stop() == STOPPED
    assert "Traceback" not in log_file(daemon).read_text()
