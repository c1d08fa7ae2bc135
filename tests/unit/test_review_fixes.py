"""Hostile inputs a review found: each gets a clear refusal, never a 500."""

from __future__ import annotations

import datetime as dt
import io
import json
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from twisted.internet.task import Clock

from dcvix.agent.enrolment import AgentEnrolment, EnrolmentSettings
from dcvix.agent.identity import AgentFiles, load_cas
from dcvix.common.errors import BadRequest
from dcvix.common.http import read_json
from dcvix.common.pki import certificate_fingerprint, certificate_pem
from dcvix.common.webclient import Answer
from dcvix.director import store
from dcvix.director.ca import CertificateRequestError, new_authority, parse_csr
from dcvix.director.policy import valid_id
from dcvix.director.runtime import Runtime

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


def test_a_csr_whose_subject_is_not_utf8_is_refused_not_a_crash() -> None:
    guid = str(uuid.uuid4())
    key = ed25519.Ed25519PrivateKey.generate()
    common_name = f"dcvix-agent-{guid}"
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, None)
    )
    der = request.public_bytes(serialization.Encoding.DER)
    body = request.tbs_certrequest_bytes
    broken = body.replace(common_name.encode(), b"\xff\xfe" + common_name.encode()[2:])
    forged = der.replace(body, broken).replace(request.signature, key.sign(broken))
    assert x509.load_der_x509_csr(forged).is_signature_valid  # a well-signed CSR
    with pytest.raises(CertificateRequestError, match="invalid csr"):
        parse_csr(forged)


class _Body:
    def __init__(self, raw: bytes) -> None:
        self.content = io.BytesIO(raw)


@pytest.mark.parametrize(
    "raw",
    [b'{"userID": "\\ud800", "password": "x"}', b'{"registrationToken": "\\udfff"}'],
)
def test_a_lone_surrogate_escape_is_a_400(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="invalid"):
        read_json(_Body(raw))  # type: ignore[arg-type]


def test_a_lone_surrogate_is_not_a_valid_id() -> None:
    assert not valid_id("a\ud800b")
    assert valid_id("alice")


def _report(**stats: object) -> dict[str, object]:
    return {"stats": {"hostname": "ws", **stats}, "tags": []}


def test_a_huge_integer_in_the_stats_is_a_400_not_a_crash() -> None:
    runtime = Runtime(90.0, 8446)
    with pytest.raises(BadRequest, match=r"stats\.cpu_usage is out of range"):
        runtime.record("g", "ws", _report(cpu_usage=10**400), "10.0.0.1", NOW)
    assert runtime.servers() == []


@pytest.mark.parametrize("interval", [10**400, 86401, 1e300, 0, -5])
def test_an_absurd_update_interval_falls_back_to_30_seconds(interval: object) -> None:
    runtime = Runtime(90.0, 8446)
    payload = _report() | {"update_interval": interval}
    assert runtime.record("g", "ws", payload, "10.0.0.1", NOW).update_interval == 30.0


def test_two_agents_cannot_both_be_registered_under_one_hostname(
    tmp_path: Path,
) -> None:
    connection = store.connect(tmp_path / "agents.db")
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    assert store.create_registered_txn(connection, first, "ws1", "aa", "", NOW)
    # The second lost the race for ws1: nothing is inserted, it may wait as pending.
    assert not store.create_registered_txn(connection, second, "WS1", "bb", "", NOW)
    assert store.get_txn(connection, second) is None
    assert store.create_pending_txn(connection, second, "WS1", "bb", "", NOW)
    connection.close()


def test_the_agent_stores_only_the_ca_that_signed_its_certificate(
    tmp_path: Path,
) -> None:
    files = AgentFiles(tmp_path)
    key = ed25519.Ed25519PrivateKey.generate()
    guid = str(uuid.uuid4())
    real, attacker = new_authority(NOW), new_authority(NOW)
    issued = real.sign_agent(key.public_key(), guid, "ws1", NOW, dt.timedelta(days=14))
    enrolment = AgentEnrolment(
        files,
        key,
        guid,
        EnrolmentSettings(
            "127.0.0.1", 1, "ws1", 43200.0, ca_fingerprint=real.fingerprint
        ),
        Clock(),
    )
    answer = Answer(
        200,
        json.dumps(
            {
                "certificate": certificate_pem(issued).decode(),
                "ca": (real.pem + attacker.pem).decode(),
            }
        ).encode(),
    )
    enrolment._accept_registration(answer, [])
    assert [certificate_fingerprint(c) for c in load_cas(files)] == [real.fingerprint]
