"""A certificate and key pair on disk, made self-signed when missing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dcvix.common.files import atomic_write
from dcvix.common.pki import (
    certificate_pem,
    load_private_key,
    private_key_pem,
    self_signed_certificate,
)

log = Logger()


def ensure_self_signed(
    certificate: Path,
    key: Path,
    new_key: Callable[[], CertificateIssuerPrivateKeyTypes],
    common_name: str,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    clock: IReactorTime,
    lifetime: dt.timedelta = dt.timedelta(days=365),
) -> bool:
    """Write a self-signed certificate (and a key, if there is none) when missing.

    An existing key is kept: it may be the daemon's identity. Returns True when a
    certificate was written.
    """
    if certificate.exists():
        return False
    if key.exists():
        private_key = load_private_key(key.read_bytes())
        assert not isinstance(private_key, str)
    else:
        private_key = new_key()
        atomic_write(key, private_key_pem(private_key), 0o600)
    now = dt.datetime.fromtimestamp(clock.seconds(), dt.UTC)
    issued = self_signed_certificate(
        private_key,  # type: ignore[arg-type]
        common_name,
        dns_names,
        ip_addresses,
        now,
        lifetime,
    )
    atomic_write(certificate, certificate_pem(issued), 0o644)
    log.info("made a self-signed certificate {path}", path=str(certificate))
    return True
