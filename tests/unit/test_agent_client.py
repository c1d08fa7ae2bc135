"""AgentClient: the director's client certificate follows its files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest_twisted
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.task import Clock

from dcvix.common.pki import (
    certificate_pem,
    load_certificates,
    private_key_pem,
    self_signed_certificate,
)
from dcvix.director.agent_client import AgentAddress, AgentClient

NOW = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
GUID = "11111111-1111-4111-8111-111111111111"


def _write_identity(folder: Path, name: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = self_signed_certificate(
        key, name, [name], ["127.0.0.1"], NOW, dt.timedelta(days=1)
    )
    (folder / "server.crt").write_bytes(certificate_pem(certificate))
    (folder / "server.key").write_bytes(private_key_pem(key))


def _common_name(client: AgentClient) -> str:
    return str(client.certificate.subject.rfc4514_string())


def test_a_replaced_certificate_is_used_for_the_next_connection(
    tmp_path: Path,
) -> None:
    _write_identity(tmp_path, "first")
    client = AgentClient(Clock(), [], tmp_path / "server.crt", tmp_path / "server.key")
    assert _common_name(client) == "CN=first"
    _write_identity(tmp_path, "second")
    assert _common_name(client) == "CN=second"


def test_a_certificate_without_its_key_is_refused_and_the_old_one_kept(
    tmp_path: Path,
) -> None:
    _write_identity(tmp_path, "first")
    client = AgentClient(Clock(), [], tmp_path / "server.crt", tmp_path / "server.key")
    other = tmp_path / "other"
    other.mkdir()
    _write_identity(other, "second")
    (tmp_path / "server.crt").write_bytes((other / "server.crt").read_bytes())
    assert _common_name(client) == "CN=first"  # the pair does not match
    (tmp_path / "server.key").write_bytes((other / "server.key").read_bytes())
    assert _common_name(client) == "CN=second"  # now it does


@pytest_twisted.ensureDeferred
async def test_stopping_the_service_closes_every_pool(tmp_path: Path) -> None:
    _write_identity(tmp_path, "first")
    ca = load_certificates((tmp_path / "server.crt").read_bytes())
    client = AgentClient(Clock(), ca, tmp_path / "server.crt", tmp_path / "server.key")
    client.startService()
    client._connection(AgentAddress(GUID, "127.0.0.1", 8446, "ab" * 32))
    assert list(client._connections) == [GUID]
    await client.stopService()
    assert client._connections == {}
    assert not client.running


def test_writes_wait_go_s_30_s_unless_configured(tmp_path: Path) -> None:
    _write_identity(tmp_path, "director")
    default = AgentClient(Clock(), [], tmp_path / "server.crt", tmp_path / "server.key")
    longer = AgentClient(
        Clock(), [], tmp_path / "server.crt", tmp_path / "server.key", 90.0
    )
    assert (default._write_timeout, longer._write_timeout) == (30.0, 90.0)
