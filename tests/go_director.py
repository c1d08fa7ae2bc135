"""The Go dcvix director, as far as its agents and its ``data_dir`` can tell.

Two things live here:

- A Go director's PKI and files, built the way Go dcvix builds them
  (reference/original-director.md §4, §5): :class:`GoCA` (ECDSA P-256,
  ``CN=dcvix CA``), its server certificate and the agent certificates it signs
  from CSRs (subject and DNS SANs copied from the CSR, the hostname appended,
  now - 1 h to now + 14 days, EKU serverAuth + clientAuth), and a Go ``data_dir``
  with an ``agents.db`` holding only the Go table and Go text timestamps.
- :class:`StandIn`: a stand-in director that answers register and renew exactly
  as the Go director does (403 ``{"error":"pending approval"}``, 200 JSON, Go
  *text errors* otherwise), run as a subprocess of this very file. TLS as Go's:
  no CA in the chain, client certificates requested and verified if given (Go's
  ``VerifyClientCertIfGiven``), required by the renew route only. Every request
  it receives is appended to a JSON-lines file the test reads.
"""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import json
import os
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

GO_AGENT_LIFETIME = dt.timedelta(days=14)
GO_LONG_LIFETIME = dt.timedelta(days=3650)
GO_BACKDATE = dt.timedelta(hours=1)
RENEWAL_INTERVAL_SECONDS = 43200
AGENT_CN_PREFIX = "dcvix-agent-"
DIRECTOR_NAME = "dcvix-director"
SSL_MODE_NO_AUTO_CHAIN = 0x8  # openssl/ssl.h; pyOpenSSL has no name for it

# The Go table, exactly (original-director.md §5.1): nothing of ours.
GO_AGENTS_TABLE = """CREATE TABLE IF NOT EXISTS agents (
    guid TEXT PRIMARY KEY,
    hostname TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    created_at DATETIME,
    registered_at DATETIME,
    last_seen_at DATETIME,
    cert_serial TEXT,
    tags TEXT
)"""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def go_serial() -> int:
    """16 random bytes with the top bit cleared (original-director.md §4.6)."""
    return int.from_bytes(os.urandom(16), "big") & ((1 << 127) - 1)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def pkcs8_pem(key: PrivateKeyTypes) -> bytes:
    """What Go's ``x509.MarshalPKCS8PrivateKey`` + ``pem.Encode`` write."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def pem(certificate: x509.Certificate) -> bytes:
    """One ``CERTIFICATE`` PEM block."""
    return certificate.public_bytes(serialization.Encoding.PEM)


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the DER, lower-case hex (``ca_fingerprint``'s format)."""
    return certificate.fingerprint(hashes.SHA256()).hex()


CAKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


def _hash(key: CAKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _usage(*, digital_signature: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _both_ekus() -> x509.ExtendedKeyUsage:
    return x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    )


@dataclass(frozen=True)
class GoCA:
    """A CA as Go dcvix generates it (original-director.md §4.3)."""

    certificate: x509.Certificate
    key: CAKey

    @classmethod
    def create(cls, common_name: str = "dcvix CA", kind: str = "p256") -> GoCA:
        """ECDSA P-256, self-signed, CA without a path length, ten years.

        ``kind`` ``ed25519`` or ``rsa2048``: a CA an admin supplied (Go loads
        any PKCS#8 key for ``ca.key``).
        """
        now = _now()
        key: CAKey
        if kind == "ed25519":
            key = ed25519.Ed25519PrivateKey.generate()
        elif kind == "rsa2048":
            key = rsa.generate_private_key(65537, 2048)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(go_serial())
            .not_valid_before(now - GO_BACKDATE)
            .not_valid_after(now + GO_LONG_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(_usage(digital_signature=False, cert_sign=True), True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
            )
            .sign(key, _hash(key))
        )
        return cls(certificate, key)

    def pem(self) -> bytes:
        """``ca.pem``."""
        return pem(self.certificate)

    def key_pem(self) -> bytes:
        """``ca.key``."""
        return pkcs8_pem(self.key)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the CA certificate's DER, hex."""
        return fingerprint(self.certificate)

    def _leaf(
        self,
        subject: x509.Name,
        public_key: CertificatePublicKeyTypes,
        dns_names: Sequence[str],
        ip_addresses: Sequence[str],
        lifetime: dt.timedelta,
        authority_key_id: bool,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        now = now or _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(go_serial())
            .not_valid_before(now - GO_BACKDATE)
            .not_valid_after(now + lifetime)
            .add_extension(_usage(digital_signature=True, cert_sign=False), True)
            .add_extension(_both_ekus(), False)
        )
        if authority_key_id:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.key.public_key()
                ),
                False,
            )
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), False)
        return builder.sign(self.key, _hash(self.key))

    def server_certificate(
        self,
        dns_names: Sequence[str],
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """``server.crt`` as a first Go run makes it: CN ``dcvix-director``, the
        given DNS SANs, IP SAN 127.0.0.1 only, no AKI, ten years."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        certificate = self._leaf(
            _name(DIRECTOR_NAME),
            key.public_key(),
            dns_names,
            ["127.0.0.1"],
            GO_LONG_LIFETIME,
            authority_key_id=False,
        )
        return certificate, key

    def sign_csr(
        self,
        csr: x509.CertificateSigningRequest,
        hostname: str,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """Go's ``SignCSR``: subject verbatim, CSR DNS SANs + hostname, 14 days."""
        try:
            requested = csr.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value.get_values_for_type(x509.DNSName)
        except x509.ExtensionNotFound:
            requested = []
        names = list(dict.fromkeys(requested))
        if hostname and hostname not in names:
            names.append(hostname)
        return self._leaf(
            csr.subject,
            csr.public_key(),
            names,
            [],
            GO_AGENT_LIFETIME,
            authority_key_id=True,
            now=now,
        )

    def agent_certificate(
        self,
        public_key: CertificatePublicKeyTypes,
        guid: str,
        hostname: str,
        extra_dns: Sequence[str] = (),
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """What a Go director issued to a Go agent (``extra_dns``: SANs its CSR
        carried, which a Go director copied, e.g. ``dcvix-director``)."""
        names = list(dict.fromkeys([*extra_dns, hostname]))
        return self._leaf(
            _name(AGENT_CN_PREFIX + guid),
            public_key,
            names,
            [],
            GO_AGENT_LIFETIME,
            authority_key_id=True,
            now=now,
        )


# ------------------------------------------------------------- a Go data_dir


@dataclass(frozen=True)
class GoAgentRow:
    """One row of a Go ``agents.db`` (timestamps as the Go driver writes them)."""

    guid: str
    hostname: str
    state: str
    created_at: str
    registered_at: str | None = None
    last_seen_at: str | None = None


def write_go_agents_db(path: Path, rows: Iterable[GoAgentRow]) -> None:
    """A Go ``agents.db``: WAL, 0600, the Go table only, ``cert_serial`` and
    ``tags`` never written (NULL)."""
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(GO_AGENTS_TABLE)
        connection.executemany(
            "INSERT INTO agents (guid, hostname, state, created_at, registered_at, "
            "last_seen_at) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    r.guid,
                    r.hostname,
                    r.state,
                    r.created_at,
                    r.registered_at,
                    r.last_seen_at,
                )
                for r in rows
            ],
        )
        connection.commit()
    finally:
        connection.close()
    path.chmod(0o600)


def write_go_director_data_dir(
    data_dir: Path,
    ca: GoCA,
    server_dns_names: Sequence[str],
    rows: Iterable[GoAgentRow],
) -> None:
    """``ca.key``, ``ca.pem``, ``server.key``, ``server.crt``, ``agents.db`` as Go
    leaves them: keys PKCS#8 PEM 0600, certificates 0644, the folder 0755."""
    data_dir.mkdir(parents=True)
    data_dir.chmod(0o755)
    certificate, key = ca.server_certificate(server_dns_names)
    for name, data, mode in (
        ("ca.key", ca.key_pem(), 0o600),
        ("ca.pem", ca.pem(), 0o644),
        ("server.key", pkcs8_pem(key), 0o600),
        ("server.crt", pem(certificate), 0o644),
    ):
        path = data_dir / name
        path.write_bytes(data)
        path.chmod(mode)
    write_go_agents_db(data_dir / "agents.db", rows)


# ------------------------------------------------- the Go director as client


def call_agent(
    port: int,
    hostname: str,
    path: str,
    ca_pem: bytes,
    certificate: x509.Certificate,
    key: PrivateKeyTypes,
    folder: Path,
) -> tuple[int, Any]:
    """``GET`` an agent as the Go director does (original-director.md §9.1):
    its ``server.crt`` as client certificate, the agent's certificate checked
    against ``ca.pem`` **and** the host name it dials (the agent's hostname);
    here the host name resolves to 127.0.0.1."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "server.crt").write_bytes(pem(certificate))
    (folder / "server.key").write_bytes(pkcs8_pem(key))
    (folder / "server.key").chmod(0o600)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=ca_pem.decode())
    context.load_cert_chain(folder / "server.crt", folder / "server.key")
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        tls.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {hostname}:{port}\r\n"
            "User-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        answer = http.client.HTTPResponse(tls)
        answer.begin()
        return answer.status, json.loads(answer.read())


# ----------------------------------------------------------- the stand-in


@dataclass
class StandIn:
    """The stand-in Go director as a subprocess (see the module docstring).

    Args:
        folder: where its files go (config, request log, output).
        ca: signs agents' CSRs; the ``ca`` it answers and the CA client
            certificates must chain to.
        server_certificate, server_key: what it serves (alone, no chain).
        pending_polls: register calls answered 403 per GUID before it acts as
            if an admin had approved the agent.
    """

    folder: Path
    ca: GoCA
    server_certificate: x509.Certificate
    server_key: PrivateKeyTypes
    pending_polls: int = 0
    process: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def requests_file(self) -> Path:
        """One JSON object per request received."""
        return self.folder / "requests.jsonl"

    @property
    def output(self) -> Path:
        """The subprocess's stdout and stderr."""
        return self.folder / "stand-in.log"

    def start(self, timeout: float = 15.0) -> StandIn:
        """Start it and wait until it listens (on a port it picks itself)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        files = {
            "server_cert": ("server.crt", pem(self.server_certificate)),
            "server_key": ("server.key", pkcs8_pem(self.server_key)),
            "ca_cert": ("ca.pem", self.ca.pem()),
            "ca_key": ("ca.key", self.ca.key_pem()),
        }
        config: dict[str, Any] = {}
        for field, (name, data) in files.items():
            (self.folder / name).write_bytes(data)
            config[field] = str(self.folder / name)
        port_file = self.folder / "port"
        config |= {
            "pending_polls": self.pending_polls,
            "requests": str(self.requests_file),
            "port_file": str(port_file),
        }
        (self.folder / "stand-in.json").write_text(json.dumps(config))
        with self.output.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, __file__, str(self.folder / "stand-in.json")],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    "stand-in director exited:\n" + self.output.read_text()
                )
            if port_file.exists() and port_file.read_text().strip():
                self.port = int(port_file.read_text())
                return self
            time.sleep(0.05)
        raise AssertionError(f"stand-in director not listening after {timeout} s")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        """What it received so far (only to ``path`` when given)."""
        if not self.requests_file.exists():
            return []
        entries = [
            json.loads(line)
            for line in self.requests_file.read_text().splitlines()
            if line.strip()
        ]
        return [e for e in entries if path is None or e["path"] == path]


# ------------------------------------------------- the stand-in's own process


def _serve(config_path: str) -> None:  # pragma: no cover - runs in the subprocess
    import base64
    import binascii

    from OpenSSL.crypto import X509
    from twisted.internet import reactor
    from twisted.internet.ssl import CertificateOptions, TLSVersion
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    config = json.loads(Path(config_path).read_text())
    ca_certificate = x509.load_pem_x509_certificate(
        Path(config["ca_cert"]).read_bytes()
    )
    ca_key = serialization.load_pem_private_key(
        Path(config["ca_key"]).read_bytes(), None
    )
    assert isinstance(
        ca_key,
        ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey,
    )
    ca = GoCA(ca_certificate, ca_key)
    ca_pem = Path(config["ca_cert"]).read_bytes()
    pending_polls = int(config["pending_polls"])
    requests_log = Path(config["requests"])
    # guid -> [state, hostname, register calls]
    agents: dict[str, list[Any]] = {}

    class GoText(Exception):
        def __init__(self, status: int, message: str) -> None:
            super().__init__(message)
            self.status = status
            self.message = message

    def parse_csr(text: Any) -> x509.CertificateSigningRequest:
        if not isinstance(text, str):
            raise GoText(400, "json: cannot unmarshal into field csr of type string")
        try:
            der = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise GoText(400, "invalid csr encoding") from None
        try:
            # Go parses (and checks nothing else, not even the signature).
            return x509.load_der_x509_csr(der)
        except ValueError:
            raise GoText(400, "invalid csr") from None

    def csr_guid_ok(csr: x509.CertificateSigningRequest, guid: str) -> bool:
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return bool(names) and names[0].value == AGENT_CN_PREFIX + guid

    def decode(body: bytes) -> dict[str, Any]:
        try:
            value = json.loads(body)
        except ValueError as error:
            raise GoText(400, str(error)) from None
        if not isinstance(value, dict):
            raise GoText(400, "json: cannot unmarshal into Go value")
        # encoding/json matches keys case-insensitively.
        return {str(k).lower(): v for k, v in value.items()}

    def register(body: bytes) -> tuple[int, Any]:
        fields = decode(body)
        csr = parse_csr(fields.get("csr", ""))
        guid = str(fields.get("guid", ""))
        hostname = str(fields.get("hostname", ""))
        if not csr_guid_ok(csr, guid):
            raise GoText(401, "csr guid mismatch")
        record = agents.setdefault(guid, ["pending", hostname, 0])
        record[2] += 1
        if record[0] == "pending" and record[2] > pending_polls:
            record[0] = "registered"  # an admin approved it meanwhile
        if record[0] == "pending":
            return 403, {"error": "pending approval"}
        record[1] = hostname
        certificate = ca.sign_csr(csr, hostname)
        return 200, {
            "certificate": pem(certificate).decode(),
            "ca": ca_pem.decode(),
            "agentId": guid,
            "renewalIntervalSeconds": RENEWAL_INTERVAL_SECONDS,
        }

    def renew(body: bytes, peer: x509.Certificate | None) -> tuple[int, Any]:
        if peer is None:
            raise GoText(401, "No client certificate provided")
        names = peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common_name = str(names[0].value) if names else ""
        if not common_name.startswith(AGENT_CN_PREFIX):
            raise GoText(401, "invalid client certificate")
        guid = common_name.removeprefix(AGENT_CN_PREFIX)
        csr = parse_csr(decode(body).get("csr", ""))
        if not csr_guid_ok(csr, guid):
            raise GoText(401, "csr guid mismatch")
        record = agents.get(guid)
        if record is None:
            raise GoText(401, "unknown agent")
        record[0] = "registered"  # Go promotes a pending agent silently
        certificate = ca.sign_csr(csr, record[1])
        return 200, {
            "certificate": pem(certificate).decode(),
            "renewalIntervalSeconds": RENEWAL_INTERVAL_SECONDS,
        }

    class Director(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            body = request.content.read()
            handle = getattr(request.channel.transport, "getPeerCertificate", None)
            x509_peer = handle() if handle is not None else None
            peer = x509_peer.to_cryptography() if x509_peer is not None else None
            path = request.path.decode()
            try:
                if request.method != b"POST":
                    raise GoText(405, "Method Not Allowed")
                if path == "/v1/agent/register":
                    status, answer = register(body)
                elif path == "/v1/agent/renew":
                    status, answer = renew(body, peer)
                else:
                    raise GoText(404, "404 page not found")
                payload = (json.dumps(answer, separators=(",", ":")) + "\n").encode()
                content_type = b"application/json"
            except GoText as error:
                status = error.status
                payload = (error.message + "\n").encode()
                content_type = b"text/plain; charset=utf-8"
                request.setHeader(b"X-Content-Type-Options", b"nosniff")
            request.setResponseCode(status)
            request.setHeader(b"Content-Type", content_type)
            entry = {
                "path": path,
                "method": request.method.decode(),
                "content_type": (request.getHeader(b"content-type") or b"").decode(
                    "latin-1"
                ),
                "body": body.decode("utf-8", "replace"),
                "peer": pem(peer).decode() if peer is not None else None,
                "status": status,
            }
            with requests_log.open("a") as log:
                log.write(json.dumps(entry) + "\n")
            return payload

    server_certificate = x509.load_pem_x509_certificate(
        Path(config["server_cert"]).read_bytes()
    )
    server_key = serialization.load_pem_private_key(
        Path(config["server_key"]).read_bytes(), None
    )
    options = CertificateOptions(
        privateKey=server_key,  # type: ignore[arg-type]
        certificate=server_certificate,  # type: ignore[arg-type]
        # Go's tls.VerifyClientCertIfGiven: asked for, checked if sent.
        verify=True,
        requireCertificate=False,
        caCerts=[X509.from_cryptography(ca_certificate)],
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )
    # Go sends server.crt alone. OpenSSL would complete the chain from the
    # store that verifies client certificates, sending the CA: not here.
    options.getContext().set_mode(SSL_MODE_NO_AUTO_CHAIN)
    port = reactor.listenSSL(0, Site(Director()), options, interface="127.0.0.1")  # type: ignore[attr-defined]
    ready = Path(config["port_file"] + ".tmp")
    ready.write_text(str(port.getHost().port))
    ready.rename(config["port_file"])
    reactor.run()


if __name__ == "__main__":  # pragma: no cover
    _serve(sys.argv[1])
