"""The Go dcvix agent, as far as a director and its ``data_dir`` can tell.

The requests are byte for byte what the Go agent sends
(reference/original-agent.md §7, §9): ``POST /v1/agent/register`` with
``Content-Type: application/json`` and the compact body
``{"csr":…,"guid":…,"hostname":…}``; ``POST /v1/agent/renew`` with
``{"csr":…}`` over mTLS. The CSR is what Go's ``x509.CreateCertificateRequest``
makes: subject ``CN=dcvix-agent-<guid>`` alone (a PrintableString, as Go's
``encoding/asn1`` picks for such a string), no extension, no attribute.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

GoAgentKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def new_go_key(kind: str = "ed25519") -> GoAgentKey:
    """Ed25519 (what a Go agent makes), or an adopted ECDSA P-256 / RSA 2048 key."""
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa2048":
        return rsa.generate_private_key(65537, 2048)
    return ed25519.Ed25519PrivateKey.generate()


def new_guid() -> str:
    """A canonical lower-case UUIDv4, as the Go agent writes to ``agent.guid``."""
    return str(uuid.uuid4())


def go_csr(key: GoAgentKey, guid: str) -> x509.CertificateSigningRequest:
    """The CSR a Go agent builds (pure Ed25519, else SHA-256)."""
    subject = x509.Name(
        [
            x509.NameAttribute(
                NameOID.COMMON_NAME,
                f"dcvix-agent-{guid}",
                _type=_ASN1Type.PrintableString,
            )
        ]
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def csr_text(key: GoAgentKey, guid: str) -> str:
    """Standard base64 of the CSR's DER, with padding, no line breaks."""
    der = go_csr(key, guid).public_bytes(serialization.Encoding.DER)
    return base64.b64encode(der).decode("ascii")


def _go_json(value: dict[str, str]) -> bytes:
    # encoding/json: compact, struct field order.
    return json.dumps(value, separators=(",", ":")).encode()


def register_body(key: GoAgentKey, guid: str, hostname: str) -> bytes:
    """``{"csr":…,"guid":…,"hostname":…}``, in that order."""
    return _go_json({"csr": csr_text(key, guid), "guid": guid, "hostname": hostname})


def renew_body(key: GoAgentKey, guid: str) -> bytes:
    """``{"csr":…}``."""
    return _go_json({"csr": csr_text(key, guid)})


@dataclass(frozen=True)
class Reply:
    """A director's answer as the Go agent sees it."""

    status: int
    content_type: str
    body: bytes

    @property
    def json(self) -> Any:
        """The body as JSON (fails the test if it is not)."""
        return json.loads(self.body)


def tofu_context() -> ssl.SSLContext:
    """The Go agent's first contact: ``InsecureSkipVerify``, TLS 1.2 minimum,
    no client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def strict_context(
    folder: Path,
    ca_pem: bytes,
    certificate_pem: bytes | None = None,
    key: GoAgentKey | None = None,
) -> ssl.SSLContext:
    """The Go agent once ``ca.pem`` exists: the chain against it **and** the
    host name ``director_host`` against the director's SANs (original-agent.md
    §7.1, §8); with a client certificate for renewals."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=ca_pem.decode())
    if certificate_pem is not None and key is not None:
        folder.mkdir(parents=True, exist_ok=True)
        certificate_file = folder / "agent.crt"
        key_file = folder / "agent.key"
        certificate_file.write_bytes(certificate_pem)
        key_file.write_bytes(pkcs8(key))
        key_file.chmod(0o600)
        context.load_cert_chain(certificate_file, key_file)
    return context


def pkcs8(key: GoAgentKey) -> bytes:
    """``agent.key`` as Go writes it: ``PRIVATE KEY`` PEM, PKCS#8."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def post(
    port: int,
    path: str,
    body: bytes,
    context: ssl.SSLContext,
    host: str = "127.0.0.1",
) -> Reply:
    """One request with the headers Go's ``http.Post`` sends."""
    connection = http.client.HTTPSConnection(host, port, timeout=10, context=context)
    try:
        connection.putrequest("POST", path, skip_accept_encoding=True)
        connection.putheader("User-Agent", "Go-http-client/1.1")
        connection.putheader("Content-Length", str(len(body)))
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Accept-Encoding", "gzip")
        connection.endheaders(body)
        answer = connection.getresponse()
        return Reply(
            answer.status, answer.getheader("Content-Type") or "", answer.read()
        )
    finally:
        connection.close()


def register(
    port: int,
    key: GoAgentKey,
    guid: str,
    hostname: str,
    context: ssl.SSLContext | None = None,
) -> Reply:
    """One pass of the Go registration loop (TOFU unless ``context`` is given)."""
    return post(
        port,
        "/v1/agent/register",
        register_body(key, guid, hostname),
        context or tofu_context(),
    )


def renew(port: int, key: GoAgentKey, guid: str, context: ssl.SSLContext) -> Reply:
    """One renewal over mTLS (``context`` from :func:`strict_context`)."""
    return post(port, "/v1/agent/renew", renew_body(key, guid), context)


def write_go_agent_data_dir(
    data_dir: Path,
    key: GoAgentKey,
    guid: str,
    certificate: x509.Certificate,
    ca_pem: bytes,
) -> None:
    """A Go agent's ``data_dir``: 0755, ``agent.key`` 0600, the rest 0644,
    ``agent.guid`` 36 characters without a newline."""
    data_dir.mkdir(parents=True)
    data_dir.chmod(0o755)
    for name, data, mode in (
        ("agent.key", pkcs8(key), 0o600),
        ("agent.guid", guid.encode("ascii"), 0o644),
        ("agent.crt", certificate.public_bytes(serialization.Encoding.PEM), 0o644),
        ("ca.pem", ca_pem, 0o644),
    ):
        path = data_dir / name
        path.write_bytes(data)
        path.chmod(mode)
