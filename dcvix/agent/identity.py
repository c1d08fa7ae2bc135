"""The agent's identity on disk: key, GUID, certificate and the director's CA.

The files and formats are Go dcvix's, so a Go agent's ``data_dir`` is adopted as
it is: ``agent.key`` (PKCS#8 PEM), ``agent.guid`` (a UUID, no newline),
``agent.crt`` and ``ca.pem`` (PEM, possibly several CAs). A lost key means a new
key **and** a new GUID: the director pins keys, so an old GUID with a new key
would only meet a 409.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID
from twisted.logger import Logger

from dcvix.common.daemon import StartupError
from dcvix.common.files import atomic_write, remove_interrupted_writes
from dcvix.common.pki import (
    AGENT_CN_PREFIX,
    certificate_fingerprint,
    issued_by,
    load_certificates,
    load_private_key,
    new_ed25519_key,
    private_key_pem,
    public_key_fingerprint,
    subject_alt_names,
)
from dcvix.common.validate import canonical_guid

log = Logger()

SignerKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class AgentFiles:
    """Where the agent keeps its identity."""

    data_dir: Path

    @property
    def key(self) -> Path:
        """``agent.key``."""
        return self.data_dir / "agent.key"

    @property
    def guid(self) -> Path:
        """``agent.guid``."""
        return self.data_dir / "agent.guid"

    @property
    def certificate(self) -> Path:
        """``agent.crt``."""
        return self.data_dir / "agent.crt"

    @property
    def ca(self) -> Path:
        """``ca.pem``."""
        return self.data_dir / "ca.pem"


def _signer(key: PrivateKeyTypes, path: Path) -> SignerKey:
    if not isinstance(key, SignerKey):
        raise StartupError(f"{path}: this key type cannot sign a request")
    return key


def load_or_create_identity(files: AgentFiles) -> tuple[SignerKey, str]:
    """The agent's key and GUID, made when missing.

    Temp files of writes a crash interrupted are removed first (the files they
    were to replace are whole: see :func:`~dcvix.common.files.atomic_write`).

    Raises:
        StartupError: an unreadable key or a GUID file that is not a UUID.
    """
    remove_interrupted_writes(files.data_dir)
    if not files.key.exists():
        key: SignerKey = new_ed25519_key()
        guid = str(uuid.uuid4())
        atomic_write(files.key, private_key_pem(key), 0o600)
        atomic_write(files.guid, guid.encode(), 0o644)
        for stale in (files.certificate,):
            stale.unlink(missing_ok=True)
        log.warn(
            "made a new key and a new identity {guid}: the director sees a new "
            "agent, to be approved",
            guid=guid,
        )
        return key, guid
    _tighten_key(files.key)
    try:
        loaded = load_private_key(files.key.read_bytes())
    except (OSError, ValueError, TypeError) as error:
        raise StartupError(f"{files.key}: cannot load the key: {error}") from None
    key = _signer(loaded, files.key)
    if not files.guid.exists():
        guid = str(uuid.uuid4())
        atomic_write(files.guid, guid.encode(), 0o644)
        log.warn("made a new identity {guid} for the existing key", guid=guid)
        return key, guid
    text = files.guid.read_text(encoding="ascii", errors="replace").strip()
    guid_or_none = canonical_guid(text)
    if guid_or_none is None:
        raise StartupError(f"{files.guid}: {text!r} is not a UUID")
    return key, guid_or_none


def _tighten_key(path: Path) -> None:
    """Make ``agent.key`` 0600 if group or others may read it, and say so.

    The agent made this key itself, so a loose mode is tightened rather than
    refused (the director refuses its own loose keys); never used silently.

    Raises:
        StartupError: the mode cannot be read or changed.
    """
    try:
        current = stat.S_IMODE(path.stat().st_mode)
        if not current & 0o077:
            return
        os.chmod(path, 0o600)
    except OSError as error:
        raise StartupError(
            f"{path}: cannot make the key private (0600): {error.strerror}"
        ) from None
    log.warn(
        "{path} was readable by other users (mode {mode}): tightened to 0600",
        path=str(path),
        mode=f"{current:04o}",
    )


def make_csr(key: SignerKey, guid: str) -> str:
    """A PKCS#10 request for CN ``dcvix-agent-<guid>``, DER in standard base64."""
    common_name = x509.NameAttribute(NameOID.COMMON_NAME, AGENT_CN_PREFIX + guid)
    subject = x509.Name([common_name])
    algorithm = None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        algorithm = hashes.SHA256()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .sign(key, algorithm)
    )
    return base64.b64encode(csr.public_bytes(serialization.Encoding.DER)).decode()


def load_cas(files: AgentFiles) -> list[x509.Certificate]:
    """Every CA in ``ca.pem``, or an empty list when there is none (TOFU)."""
    try:
        return load_certificates(files.ca.read_bytes())
    except (OSError, ValueError):
        return []


def issued_by_any(
    certificate: x509.Certificate, cas: list[x509.Certificate]
) -> x509.Certificate | None:
    """The CA of ``cas`` that signed ``certificate``, if one did."""
    return next((ca for ca in cas if issued_by(certificate, ca)), None)


@dataclass(frozen=True)
class CertificateState:
    """What is on disk, judged at one moment."""

    certificate: x509.Certificate | None
    cas: list[x509.Certificate]
    problem: str | None

    @property
    def usable(self) -> bool:
        """A certificate from our CA, for our key, valid now, with our hostname."""
        return self.problem is None


def certificate_state(
    files: AgentFiles, key: SignerKey, guid: str, hostname: str, now: dt.datetime
) -> CertificateState:
    """Judge ``agent.crt``: is it one the director issued to this agent, now?"""
    cas = load_cas(files)
    try:
        certificate = load_certificates(files.certificate.read_bytes())[0]
    except (OSError, ValueError):
        return CertificateState(None, cas, "no certificate")
    if not cas:
        return CertificateState(certificate, cas, "no ca.pem")
    if issued_by_any(certificate, cas) is None:
        return CertificateState(certificate, cas, "not issued by the director's CA")
    if public_key_fingerprint(certificate.public_key()) != public_key_fingerprint(
        key.public_key()
    ):
        return CertificateState(certificate, cas, "not for agent.key")
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [str(n.value) for n in names] != [AGENT_CN_PREFIX + guid]:
        return CertificateState(certificate, cas, "not for agent.guid")
    if now < certificate.not_valid_before_utc:
        return CertificateState(certificate, cas, "not valid yet")
    if now >= certificate.not_valid_after_utc:
        return CertificateState(certificate, cas, "expired")
    if hostname.lower() not in (n.lower() for n in subject_alt_names(certificate)[0]):
        return CertificateState(
            certificate, cas, f"issued for another hostname than {hostname}"
        )
    return CertificateState(certificate, cas, None)


def _store_certificate(files: AgentFiles, certificate_pem: bytes) -> None:
    """Write ``agent.crt`` atomically (its CA must be in ``ca.pem`` already)."""
    atomic_write(files.certificate, certificate_pem, 0o644)


def _store_ca(files: AgentFiles, ca_pem: bytes) -> None:
    """Write ``ca.pem`` atomically, and say which CA is now trusted."""
    atomic_write(files.ca, ca_pem, 0o644)
    for ca in load_certificates(ca_pem):
        log.info(
            "trusting the director CA {subject}, fingerprint {fingerprint}",
            subject=ca.subject.rfc4514_string(),
            fingerprint=certificate_fingerprint(ca),
        )


def store_enrolment(
    files: AgentFiles, certificate_pem: bytes, ca_pem: bytes | None = None
) -> None:
    """Write ``ca.pem`` (when given), then ``agent.crt``: in that order.

    Whoever sees a new ``agent.crt`` (the listener's reload, an admin, a test)
    finds the CA that signed it already in ``ca.pem``. The other order left a
    moment where a new certificate sat beside no CA, or beside an old one.
    """
    if ca_pem is not None:
        _store_ca(files, ca_pem)
    _store_certificate(files, certificate_pem)
