"""The director's side of CONTRACT §3 "Hardening" as units: CSR keys the CA
signs, and ``agents.db`` made only on a fresh install and refused when unusable.

(The same, tried against a running director: ``tests/integration/test_hardening.py``.)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from dcvix.common.daemon import StartupError
from dcvix.director.ca import (
    CertificateRequestError,
    load_or_create_authority,
    parse_csr,
)
from dcvix.director.datadir import DirectorFiles
from dcvix.director.registry import StoreError
from dcvix.director.registry.sqlite_schema import check_database, create_database

NOW = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
GUID = "6f1c0a52-9d2e-4c37-8b1a-2f3e4d5c6b7a"

# ------------------------------------------------------------------ CSR keys

KEYS: dict[str, Callable[[], Any]] = {
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "p521": lambda: ec.generate_private_key(ec.SECP521R1()),
    "rsa2048": lambda: rsa.generate_private_key(65537, 2048),
    "secp256k1": lambda: ec.generate_private_key(ec.SECP256K1()),
    "p192": lambda: ec.generate_private_key(ec.SECP192R1()),
    "p224": lambda: ec.generate_private_key(ec.SECP224R1()),
    "brainpoolP384r1": lambda: ec.generate_private_key(ec.BrainpoolP384R1()),
    "rsa1024": lambda: rsa.generate_private_key(65537, 1024),  # noqa: S505
    "dsa2048": lambda: dsa.generate_private_key(2048),
    "ed448": ed448.Ed448PrivateKey.generate,
}
REFUSED = {
    "secp256k1": "ECDSA on secp256k1",
    "p192": "ECDSA on secp192r1",
    "p224": "ECDSA on secp224r1",
    "brainpoolP384r1": "ECDSA on brainpoolP384r1",
    "rsa1024": "RSA of 1024 bits",
    "dsa2048": "DSA",
    "ed448": "Ed448",
}


def csr_der(key: Any) -> bytes:
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"dcvix-agent-{GUID}")]
    )
    algorithm = (
        None
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        else hashes.SHA256()
    )
    request = x509.CertificateSigningRequestBuilder().subject_name(subject)
    return request.sign(key, algorithm).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("kind", ["ed25519", "p256", "p384", "p521", "rsa2048"])
def test_accepted_csr_keys(kind: str) -> None:
    assert parse_csr(csr_der(KEYS[kind]())).subject.rfc4514_string().endswith(GUID)


@pytest.mark.parametrize("kind", list(REFUSED))
def test_other_csr_keys_are_refused_saying_why(kind: str) -> None:
    with pytest.raises(CertificateRequestError) as raised:
        parse_csr(csr_der(KEYS[kind]()))
    assert str(raised.value) == (
        f"csr key not accepted: {REFUSED[kind]} (use Ed25519, ECDSA on P-256, "
        "P-384 or P-521, or RSA of at least 2048 bits)"
    )


# ----------------------------------------------------------------- agents.db


@pytest.fixture
def files(tmp_path: Path) -> DirectorFiles:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    return DirectorFiles(data_dir)


def tables(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {row[0] for row in rows}


def test_a_fresh_install_makes_agents_db_with_its_tables(files: DirectorFiles) -> None:
    load_or_create_authority(files, NOW)

    assert sorted(p.name for p in files.data_dir.iterdir()) == [
        "agents.db",
        "ca.key",
        "ca.pem",
    ]
    assert stat.S_IMODE(files.agents_db.stat().st_mode) == 0o600
    assert files.agents_db.read_bytes().startswith(b"SQLite format 3\x00")
    assert "agents" in tables(files.agents_db)
    check_database(files.agents_db)
    # And the next start takes it as it is.
    load_or_create_authority(files, NOW)


def garble_pages(path: Path) -> None:
    """Keep the first page (the file still opens), garble every other one."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE filler (x)")
        db.executemany("INSERT INTO filler VALUES (?)", [("x" * 500,)] * 100)
    # Closed: the WAL is folded into the file and removed.
    assert not Path(f"{path}-wal").exists()
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page:] = os.urandom(len(data) - page)
    path.write_bytes(bytes(data))


def random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def emptied(path: Path) -> None:
    path.write_bytes(b"")


def a_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def a_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


BREAKAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "empty": (emptied, "is empty (0 bytes)"),
    "random bytes": (
        random_bytes,
        "is not a usable SQLite database (file is not a database)",
    ),
    "garbled pages": (garble_pages, "is not a usable SQLite database ("),
    "a directory": (a_directory, "is not a file (it is a directory)"),
    "a fifo": (a_fifo, "is not a file (it is a special file)"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_an_unusable_agents_db_beside_the_ca_stops_the_start(
    files: DirectorFiles, breakage: str
) -> None:
    load_or_create_authority(files, NOW)
    damage, problem = BREAKAGES[breakage]
    damage(files.agents_db)
    before = sorted(p.name for p in files.data_dir.iterdir())

    with pytest.raises(StartupError) as raised:
        load_or_create_authority(files, NOW)

    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{files.agents_db} {problem}")
    assert message.endswith(
        ", while ca.key and ca.pem exist: refusing to start, because a new "
        "agents.db would forget every enrolled agent. Restore it from a backup, "
        "or empty the folder for a fresh install."
    )
    assert sorted(p.name for p in files.data_dir.iterdir()) == before


def test_check_database_never_creates_the_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot be read: No such file"):
        check_database(tmp_path / "agents.db")
    assert list(tmp_path.iterdir()) == []


def test_create_database_replaces_leftovers_of_an_interrupted_one(
    tmp_path: Path,
) -> None:
    (tmp_path / ".agents.db.new").write_bytes(b"half")
    (tmp_path / ".agents.db.new-wal").write_bytes(b"stale")
    create_database(tmp_path / "agents.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agents.db"]
    check_database(tmp_path / "agents.db")
