"""Agent enrolment end to end: real twistd directors and agents on 127.0.0.1.

Every test starts its own director (free port, own folder) and agents, drives
them with ``dcvixctl`` as a subprocess, and stops every process at the end.

A running agent polls the director every 30 s while it is not enrolled (the
contract fixes that period); where a test needs the next poll now, it restarts
the agent, which registers at once. Only the revoke test waits for a real poll,
to show a running agent picks up its reactivation by itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import ipaddress
import json
import re
import signal
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict, Unpack

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from certs import foreign_ca
from dcvix import __version__
from dcvix.agent.identity import make_csr
from dcvix.common.pki import load_certificates, public_key_fingerprint
from dcvix.director.agent_client import AgentAddress, AgentClient
from fleet import (
    Agent,
    Director,
    Fleet,
    enrol,
    https,
    mode,
    private_key_file,
    wait_for,
)

HEALTHY = {"status": "healthy"}
TOKEN = "s3cret-enrolment-token"
STOPPED = -signal.SIGTERM


# ------------------------------------------------------------------ helpers


def pending_row(director: Director, agent: Agent) -> list[str]:
    rows = [r for r in director.listing("pending") if r[0] == agent.guid]
    assert len(rows) == 1, director.listing()
    return rows[0]


class ClientFiles(TypedDict, total=False):
    """The client certificate and key ``https`` presents."""

    cert: Path
    key: Path


def stats(
    port: int, director: Director, **client: Unpack[ClientFiles]
) -> tuple[int, Any]:
    """``GET /v1/stats`` of an agent, checked against the director's CA.

    A 200 report is cut down to who answered: its hostname and version.
    """
    status, body = https(port, "/v1/stats", cafile=director.ca_file, **client)
    if status == 200 and isinstance(body, dict) and "stats" in body:
        body = {"hostname": body["stats"]["hostname"], "version": body["version"]}
    return status, body


def as_director(director: Director) -> ClientFiles:
    return {"cert": director.server_crt, "key": director.server_key}


def as_agent(agent: Agent) -> ClientFiles:
    return {"cert": agent.certificate, "key": agent.key}


def renew_directly(director: Director, agent: Agent) -> tuple[int, Any]:
    """The agent's renewal, sent by the test with the agent's certificate."""
    key = private_key_file(agent.key)
    return https(
        director.port,
        "/v1/agent/renew",
        cafile=director.ca_file,
        method="POST",
        body={"csr": make_csr(key, agent.guid)},
        **as_agent(agent),
    )


def fingerprint(certificate: x509.Certificate) -> str:
    return hashlib.sha256(
        certificate.public_bytes(serialization.Encoding.DER)
    ).hexdigest()


def key_pin(agent: Agent) -> str:
    return public_key_fingerprint(private_key_file(agent.key).public_key())


def issued_serials(director: Director, agent: Agent) -> list[int]:
    """Serials the director logged as issued to this agent."""
    found = re.findall(
        rf"issued a certificate to agent {agent.guid} \([^)]*\), serial ([0-9a-f]+),",
        director.log_text(),
    )
    return [int(s, 16) for s in found]


def wait_served(
    agent: Agent,
    what: str,
    condition: Callable[[x509.Certificate], bool],
    timeout: float = 15.0,
) -> x509.Certificate:
    """The certificate the agent serves, once it passes ``condition``."""

    def probe() -> x509.Certificate | None:
        served = agent.served()
        return served if condition(served) else None

    certificate: x509.Certificate = wait_for(what, probe, timeout)
    return certificate


def assert_untouched(agent: Agent) -> None:
    """The agent holds no certificate and no CA it was not given."""
    assert sorted(p.name for p in agent.data_dir.iterdir()) == [
        "agent.guid",
        "agent.key",
    ]


# ------------------------------------------------- (1) first start, approve


def test_first_start_pending_approve_and_the_certificate(fleet: Fleet) -> None:
    director = fleet.director()
    agent = fleet.agent(director, "ws-1")
    agent.wait_log("pending approval")
    guid = agent.guid

    # Files and modes, director side (WAL side files come and go).
    assert mode(director.data_dir) == 0o700
    assert mode(director.log_dir) == 0o700
    assert mode(director.log_dir / "dcvix-director.log") == 0o600
    assert {
        p.name: mode(p)
        for p in director.data_dir.iterdir()
        if not p.name.endswith(("-wal", "-shm"))
    } == {
        "ca.key": 0o600,
        "ca.pem": 0o644,
        "server.key": 0o600,
        "server.crt": 0o644,
        "agents.db": 0o600,
        "token.key": 0o600,
    }
    # Agent side: a key and a GUID, nothing else until approved.
    assert mode(agent.data_dir) == 0o700
    assert mode(agent.log_dir) == 0o700
    assert mode(agent.log_dir / "dcvix-agent.log") == 0o600
    assert {p.name: mode(p) for p in agent.data_dir.iterdir()} == {
        "agent.key": 0o600,
        "agent.guid": 0o644,
    }
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", guid
    )
    assert agent.key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert isinstance(private_key_file(agent.key), ed25519.Ed25519PrivateKey)

    # Pending, as the admin sees it.
    row = pending_row(director, agent)
    assert row[:3] == [guid, "ws-1", "pending"]
    assert row[4] == "127.0.0.1"
    assert row[5] == key_pin(agent)[:16]
    assert director.listed("registered") == {}
    assert director.ctl("agents", "list", "--state", "registered").stdout == (
        "no registered agents\n"
    )

    approved = director.ctl("agents", "approve", guid)
    assert approved.stdout == f"agent {guid} (ws-1) approved\n"
    assert approved.stderr == ""
    assert director.listed("registered") == {guid: "ws-1"}
    assert director.listed("pending") == {}

    mark = agent.mark()
    agent.restart()
    agent.wait_log("registered as agent " + guid, since=mark)
    now = dt.datetime.now(dt.UTC)

    assert {p.name: mode(p) for p in agent.data_dir.iterdir()} == {
        "agent.key": 0o600,
        "agent.guid": 0o644,
        "agent.crt": 0o644,
        "ca.pem": 0o644,
    }
    assert agent.ca_file.read_bytes() == director.ca_file.read_bytes()

    certificate = agent.certificate_on_disk()
    ca = director.ca_certificate()
    assert len(load_certificates(agent.certificate.read_bytes())) == 1
    # Exactly one subject attribute: CN=dcvix-agent-<guid>.
    assert [(a.oid, a.value) for a in certificate.subject] == [
        (NameOID.COMMON_NAME, f"dcvix-agent-{guid}")
    ]
    alt_names = certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert list(alt_names) == [
        x509.DNSName("ws-1"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    assert certificate.issuer == ca.subject
    certificate.verify_directly_issued_by(ca)
    assert ca.subject.rfc4514_string() == "CN=dcvix CA"
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert set(usage.value) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.value.ca is False
    margin = dt.timedelta(minutes=2)
    before = certificate.not_valid_before_utc
    after = certificate.not_valid_after_utc
    assert abs(before - (now - dt.timedelta(hours=1))) < margin, before
    assert abs(after - (now + dt.timedelta(days=14))) < margin, after
    assert isinstance(certificate.public_key(), ed25519.Ed25519PublicKey)
    assert public_key_fingerprint(certificate.public_key()) == key_pin(agent)

    # The registry knows the serial, the expiry and the pinned key.
    record = director.record(guid)
    assert record is not None
    assert record.state == "registered"
    assert record.hostname == "ws-1"
    assert record.cert_serial == format(certificate.serial_number, "x")
    assert record.cert_expires_at == after
    assert record.key_fingerprint == key_pin(agent)
    # And the listener serves it.
    wait_for(
        "the new certificate served",
        lambda: agent.served().serial_number == certificate.serial_number,
    )


# ------------------------------------------------------ (2) mTLS both ways


def test_mtls_both_ways(fleet: Fleet, tmp_path: Path) -> None:
    director = fleet.director()
    agent = fleet.agent(director, "ws-1", renew_interval="3s")
    enrol(director, agent)

    # Agent → director: renewal needs the agent's certificate (mTLS).
    mark = director.mark()
    agent.wait_log("certificate renewed", timeout=20)
    director.wait_log('"POST /v1/agent/renew" 200', since=mark)
    assert len(issued_serials(director, agent)) >= 2

    # Director → agent: the seed's curl example, verbatim.
    curl = subprocess.run(
        [
            "curl",
            "--cert",
            str(director.server_crt),
            "--key",
            str(director.server_key),
            "--cacert",
            str(director.ca_file),
            f"https://127.0.0.1:{agent.port}/v1/health",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (curl.returncode, curl.stdout) == (0, '{"status": "healthy"}\n'), curl.stderr

    assert stats(agent.port, director, **as_director(director)) == (
        200,
        {"hostname": "ws-1", "version": __version__},
    )
    assert __version__ == "0.1.0.dev0"
    # Another certificate of the same CA (the agent's own): not the director.
    assert stats(agent.port, director, **as_agent(agent)) == (
        403,
        {"error": "only the director may call this"},
    )
    assert stats(agent.port, director) == (
        401,
        {"error": "client certificate required"},
    )
    # A certificate from a foreign CA, even one naming dcvix-director: refused
    # in the handshake.
    impostor = foreign_ca().issue("dcvix-director", ["dcvix-director"], ["127.0.0.1"])
    cert, key = impostor.write(tmp_path, "impostor")
    with pytest.raises(ssl.SSLError, match="unknown ca"):
        stats(agent.port, director, cert=cert, key=key)
    # Health stays open to anyone.
    assert https(agent.port, "/v1/health", cafile=director.ca_file) == (200, HEALTHY)


# ------------------------------------------- (3) the director's agent client


@pytest.fixture
def enrolled(fleet: Fleet) -> tuple[Director, Agent]:
    director = fleet.director()
    agent = fleet.agent(director, "ws-1")
    enrol(director, agent)
    return director, agent


def tls_errors(error: BaseException) -> list[BaseException]:
    inner = (
        [f.value for f in error.reasons]
        if isinstance(error, ResponseNeverReceived | ResponseFailed)
        else [error]
    )
    return [e for e in inner if isinstance(e, SSL.Error)]


@pytest_twisted.ensureDeferred
async def test_agent_client_reaches_the_agent_by_its_pinned_key(
    enrolled: tuple[Director, Agent],
) -> None:
    from twisted.internet import reactor

    director, agent = enrolled
    record = director.record(agent.guid)
    assert record is not None
    pin = record.key_fingerprint
    assert pin == key_pin(agent)
    client = AgentClient(
        reactor,
        load_certificates(director.ca_file.read_bytes()),
        director.server_crt,
        director.server_key,
    )
    right = AgentAddress(agent.guid, "127.0.0.1", agent.port, pin)
    wrong = AgentAddress(agent.guid, "127.0.0.1", agent.port, "0" * 64)
    try:
        answer = await client.call(right, "GET", "/v1/stats")
        assert answer.status == 200
        assert answer.json["stats"]["hostname"] == "ws-1"
        assert answer.json["version"] == "0.1.0.dev0"
        with pytest.raises(Exception) as refused:
            await client.call(wrong, "GET", "/v1/stats")
        assert tls_errors(refused.value), repr(refused.value)
        # The right pin works again (a fresh pool for the GUID).
        again = await client.call(right, "GET", "/v1/health")
        assert (again.status, again.json) == (200, HEALTHY)
    finally:
        await client.close()


# ---------------------------------------------------------- (4) renewal


def test_renewal_is_served_without_a_restart(fleet: Fleet) -> None:
    director = fleet.director()
    agent = fleet.agent(director, "ws-1", renew_interval="3s")
    enrol(director, agent)
    pid = agent.pid
    first = wait_served(
        agent,
        "the registered certificate served",
        lambda c: c.serial_number == agent.certificate_on_disk().serial_number,
    )
    renewed = wait_served(
        agent,
        "a renewed certificate served",
        lambda c: c.serial_number != first.serial_number,
        timeout=20,
    )
    assert agent.pid == pid
    # The director issued it, for the same identity and key.
    assert renewed.serial_number in issued_serials(director, agent)
    assert renewed.subject == first.subject
    assert renewed.public_key() == first.public_key()
    assert renewed.not_valid_before_utc > first.not_valid_before_utc
    renewed.verify_directly_issued_by(director.ca_certificate())
    assert "certificate renewed, valid until" in agent.log_text()
    record = director.record(agent.guid)
    assert record is not None
    assert record.state == "registered"
    assert int(record.cert_serial, 16) in issued_serials(director, agent)


# ------------------------------------------------- (5) director outage


def test_director_down_through_renewals_then_back(fleet: Fleet) -> None:
    director = fleet.director()
    agent = fleet.agent(director, "ws-1", renew_interval="4s")
    enrol(director, agent)
    pid = agent.pid
    director.stop()
    mark = agent.mark()
    held = agent.certificate_on_disk()

    # renew_interval 4s: once due, retried every renew_interval / 4 = 1 s (the
    # default would be 5 min), failing while the director is away.
    log = agent.wait_log("renewal failed, retrying later", since=mark, count=3)
    failures = re.findall(
        r"\[([^]]+)\] dcvix\.agent\.enrolment: renewal failed, retrying later", log
    )
    first, third = (dt.datetime.fromisoformat(failures[i]) for i in (0, 2))
    assert third - first <= dt.timedelta(seconds=4), failures
    assert "certificate renewed" not in log
    assert "registering again" not in log
    # Still serving its certificate meanwhile.
    assert https(agent.port, "/v1/health", cafile=agent.ca_file) == (200, HEALTHY)
    assert agent.served().serial_number == held.serial_number
    assert agent.certificate_on_disk().serial_number == held.serial_number

    director.start()
    mark = agent.mark()
    agent.wait_log("certificate renewed", since=mark, timeout=10)
    assert agent.pid == pid
    renewed = wait_served(
        agent,
        "the renewed certificate served",
        lambda c: c.serial_number != held.serial_number,
    )
    assert renewed.serial_number in issued_serials(director, agent)
    assert stats(agent.port, director, **as_director(director))[0] == 200


# ------------------------------------------------- (6) expired certificate


def test_a_certificate_shorter_than_the_check_period_is_renewed_in_time(
    fleet: Fleet,
) -> None:
    # agent_cert_lifetime is any positive duration; 20 s, while the agent
    # checks every renew_interval / 4 = 25 s. It renews each certificate before
    # it expires (once due, within half the time left), so it never falls back
    # to registration, which after an expiry would need an admin again.
    director = fleet.director(agent_cert_lifetime="20s")
    agent = fleet.agent(director, "ws-1", renew_interval="100s")
    enrol(director, agent)
    mark = agent.mark()
    agent.wait_log("certificate renewed", since=mark, count=3, timeout=60)
    log = agent.log_since(mark)
    assert "no longer usable" not in log
    assert "registering again" not in log
    record = director.record(agent.guid)
    assert record is not None
    assert record.state == "registered"
    held = agent.certificate_on_disk()
    assert held.serial_number in issued_serials(director, agent)
    assert held.not_valid_after_utc > dt.datetime.now(dt.UTC)
    assert stats(agent.port, director, **as_director(director))[0] == 200


def test_expired_certificate_goes_back_to_pending_and_is_approved_again(
    fleet: Fleet,
) -> None:
    # A certificate expires while the agent runs only when it cannot be renewed
    # in time: here the director is away for the rest of a 20 s certificate.
    director = fleet.director(agent_cert_lifetime="20s")
    agent = fleet.agent(director, "ws-1", renew_interval="100s")
    enrol(director, agent)
    mark, director_mark = agent.mark(), director.mark()
    director.stop()
    log = agent.wait_log(
        "certificate no longer usable (expired): registering again",
        since=mark,
        timeout=40,
    )
    # Read now: a renewal answered just before the director stopped may have
    # replaced the certificate held at the stop.
    held = agent.certificate_on_disk()
    lifetime = held.not_valid_after_utc - held.not_valid_before_utc
    assert lifetime == dt.timedelta(hours=1, seconds=20)
    assert dt.datetime.now(dt.UTC) >= held.not_valid_after_utc
    assert "renewal failed, retrying later" in log
    assert "an admin must approve this agent again" in agent.log_since(mark)
    # The expired certificate stays in service meanwhile.
    assert agent.served().serial_number == held.serial_number

    director.start()
    assert agent.process is not None
    agent.process.send_signal(signal.SIGHUP)  # register now, not in 30 s
    agent.wait_log("pending approval", since=mark)
    director.wait_log(
        f"agent {agent.guid} (ws-1) is back to pending: its last certificate expired",
        since=director_mark,
    )
    assert pending_row(director, agent)[:3] == [agent.guid, "ws-1", "pending"]
    assert agent.served().serial_number == held.serial_number

    director.ctl("agents", "approve", agent.guid)
    mark = agent.mark()
    agent.restart()
    agent.wait_log("registered as agent", since=mark)
    second = agent.certificate_on_disk()
    assert second.serial_number != held.serial_number
    assert second.not_valid_after_utc > dt.datetime.now(dt.UTC)
    assert director.listed("registered") == {agent.guid: "ws-1"}
    assert stats(agent.port, director, **as_director(director)) == (
        200,
        {"hostname": "ws-1", "version": "0.1.0.dev0"},
    )


# ------------------------------------- (7) revoke, reactivate, deny, delete


def test_revoked_at_the_very_next_update_on_a_kept_alive_connection(
    fleet: Fleet,
) -> None:
    """The registry view in memory notices ``dcvixctl``'s writes at once.

    Updates on one kept-alive mTLS connection warm the director's view; the
    update right after ``dcvixctl agents revoke`` is refused, and the one
    right after ``reactivate`` accepted again, with no wait in between.
    """
    director = fleet.director()
    agent = fleet.agent(director, "ws-1")
    enrol(director, agent)
    context = ssl.create_default_context(cafile=str(director.ca_file))
    context.load_cert_chain(str(agent.certificate), str(agent.key))
    link = http.client.HTTPSConnection(
        "127.0.0.1", director.port, context=context, timeout=10
    )
    report = json.dumps({"sessions": [], "stats": {"hostname": "ws-1"}})

    def update() -> tuple[int, Any]:
        link.request("POST", "/v1/agent/update", body=report)
        response = link.getresponse()
        return response.status, json.loads(response.read())

    try:
        for _ in range(3):
            assert update() == (200, {})
        director.ctl("agents", "revoke", agent.guid)
        assert update() == (401, {"error": "agent revoked"})
        director.ctl("agents", "reactivate", agent.guid)
        assert update() == (200, {})
    finally:
        link.close()


def test_revoke_then_reactivate(fleet: Fleet) -> None:
    director = fleet.director()
    agent = fleet.agent(director, "ws-1", renew_interval="3s")
    enrol(director, agent)
    guid = agent.guid
    pid = agent.pid

    mark = agent.mark()
    revoked = director.ctl("agents", "revoke", guid)
    assert revoked.stdout == f"agent {guid} (ws-1) revoked\n"
    log = agent.wait_log("registration answered 401: agent revoked", since=mark)
    assert "renewal refused (401: agent revoked): registering again" in log
    assert director.listed("revoked") == {guid: "ws-1"}
    # Its certificate is still valid, yet renewing with it is refused.
    held = agent.certificate_on_disk()
    assert held.not_valid_after_utc > dt.datetime.now(dt.UTC)
    assert renew_directly(director, agent) == (401, {"error": "agent revoked"})
    # The agent keeps serving its certificate.
    assert https(agent.port, "/v1/health") == (200, HEALTHY)
    assert agent.served().serial_number == held.serial_number

    reactivated = director.ctl("agents", "reactivate", guid)
    assert reactivated.stdout == f"agent {guid} (ws-1) reactivated\n"
    assert director.listed("registered") == {guid: "ws-1"}
    assert agent.certificate_on_disk().serial_number == held.serial_number
    # Its next registration (no restart) gets a certificate. The agent polls
    # every 30 s (test_deny_then_delete waits for polls); SIGHUP asks now.
    mark = agent.mark()
    assert agent.process is not None
    agent.process.send_signal(signal.SIGHUP)
    agent.wait_log("registered as agent " + guid, since=mark, timeout=40)
    assert agent.pid == pid
    again = agent.certificate_on_disk()
    assert again.serial_number != held.serial_number
    assert again.serial_number in issued_serials(director, agent)
    wait_for(
        "the new certificate served",
        lambda: agent.served().serial_number != held.serial_number,
    )
    assert renew_directly(director, agent)[0] == 200


def test_deny_then_delete(fleet: Fleet) -> None:
    director = fleet.director()
    agent = fleet.agent(director, "ws-2")
    agent.wait_log("pending approval")
    guid = agent.guid
    created = director.record(guid)
    assert created is not None

    denied = director.ctl("agents", "deny", guid)
    assert denied.stdout == f"agent {guid} (ws-2) denied\n"
    for _ in range(2):  # polls again, and again: still denied
        mark = agent.mark()
        agent.restart()
        agent.wait_log("registration answered 403: agent denied", since=mark)
        assert director.listed("denied") == {guid: "ws-2"}
    assert director.listed("pending") == {}
    assert_untouched(agent)
    # A denied agent cannot be approved.
    refused = director.ctl("agents", "approve", guid, check=False)
    assert refused.returncode == 1
    assert refused.stderr == f"{guid}: agent {guid} is denied, it cannot be approved\n"

    deleted = director.ctl("agents", "delete", guid)
    assert deleted.stdout == f"agent {guid} (ws-2) deleted\n"
    assert director.ctl("agents", "list").stdout == "no agents\n"
    mark = agent.mark()
    agent.restart()
    agent.wait_log("pending approval", since=mark)
    fresh = director.record(guid)
    assert fresh is not None
    assert fresh.state == "pending"
    assert fresh.hostname == "ws-2"
    assert created.created_at is not None and fresh.created_at is not None
    assert fresh.created_at > created.created_at
    assert director.listed("pending") == {guid: "ws-2"}


# ---------------------------------------------------------- (8) restarts


def test_director_restart_keeps_everything_and_agent_restart_serves_at_once(
    fleet: Fleet,
) -> None:
    director = fleet.director()
    agent = fleet.agent(director, "ws-1")
    enrol(director, agent)
    files = {
        name: (director.data_dir / name).read_bytes()
        for name in ("ca.key", "ca.pem", "server.key", "server.crt")
    }
    listing = director.ctl("agents", "list").stdout
    records = director.records()

    director.restart()
    assert director.ctl("agents", "list").stdout == listing
    assert director.records() == records
    assert {n: (director.data_dir / n).read_bytes() for n in files} == files
    logged = re.findall(
        r"CA fingerprint \(SHA-256\): ([0-9a-f]{64})", director.log_text()
    )
    assert logged == [fingerprint(director.ca_certificate())] * 2
    # Still trusted: the agent's certificate renews over mTLS, and the director
    # reaches the agent.
    status, body = renew_directly(director, agent)
    assert status == 200
    assert set(body) == {"certificate", "renewalIntervalSeconds"}
    assert stats(agent.port, director, **as_director(director))[0] == 200

    # Agent restart with the director down: nothing to register with, yet it
    # serves its certificate from the start.
    director.stop()
    held = agent.certificate_on_disk()
    mark = agent.mark()
    agent.restart()
    assert agent.served().serial_number == held.serial_number
    log = agent.log_since(mark)
    assert f"certificate on disk is valid: serving as agent {agent.guid}" in log
    assert "registering as agent" not in log
    assert https(agent.port, "/v1/health", cafile=director.ca_file) == (200, HEALTHY)
    assert stats(agent.port, director, **as_director(director)) == (
        200,
        {"hostname": "ws-1", "version": "0.1.0.dev0"},
    )


# ----------------------------------------------------- (9) two agents


def test_two_agents_on_one_machine(fleet: Fleet) -> None:
    director = fleet.director()
    one = fleet.agent(director, "ws-1", start=False)
    two = fleet.agent(director, "ws-2", start=False)
    fleet.start(one, two)
    enrol(director, one, two)
    assert one.port != two.port
    assert director.listed("registered") == {one.guid: "ws-1", two.guid: "ws-2"}
    assert one.guid != two.guid
    for agent, hostname in ((one, "ws-1"), (two, "ws-2")):
        certificate = agent.served()
        assert certificate.serial_number == agent.certificate_on_disk().serial_number
        names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
        assert names == [hostname]
        assert stats(agent.port, director, **as_director(director)) == (
            200,
            {"hostname": hostname, "version": "0.1.0.dev0"},
        )


# ------------------------------------- (10) an agent on the director's machine


def test_agent_on_the_director_machine_is_never_auto_approved(fleet: Fleet) -> None:
    machine = socket.gethostname()
    director = fleet.director(registration_token=TOKEN, auto_approve="token")
    # hostname left out: the agent registers with the OS host name.
    agent = fleet.agent(
        director,
        "same-machine",
        hostname="",
        predeploy_ca=True,
        registration_token=TOKEN,
    )
    log = agent.wait_log("pending approval")
    assert "withheld" not in log  # the token was sent (and accepted: not 401)
    assert pending_row(director, agent)[:3] == [agent.guid, machine, "pending"]
    assert not agent.certificate.exists()

    approved = director.ctl("agents", "approve", agent.guid)
    assert approved.stdout == (
        f"agent {agent.guid} ({machine}) approved\n"
        f"warning: {machine} is the director's own host name: this agent runs "
        "on the director's machine\n"
    )
    assert director.listed("registered") == {agent.guid: machine}


# ------------------------------------------------ (11) registration token


def test_registration_token(fleet: Fleet) -> None:
    director = fleet.director(registration_token=TOKEN, auto_approve="token")
    real = fingerprint(director.ca_certificate())
    wrong = "ab" * 32

    no_token = fleet.agent(director, "ws-1", start=False)
    predeployed = fleet.agent(
        director, "ws-2", start=False, predeploy_ca=True, registration_token=TOKEN
    )
    unverified = fleet.agent(director, "ws-3", start=False, registration_token=TOKEN)
    pinned = fleet.agent(
        director,
        "ws-4",
        start=False,
        registration_token=TOKEN,
        ca_fingerprint=real,
    )
    fleet.start(no_token, predeployed, unverified, pinned)

    # No token: 401, no row.
    no_token.wait_log("registration answered 401: invalid registration token")
    # Token over a pre-deployed CA: approved at once.
    predeployed.wait_log("registered as agent " + predeployed.guid)
    # Token but nothing to verify the director with: withheld, so 401.
    log = unverified.wait_log("registration answered 401: invalid registration token")
    assert (
        "registration_token withheld: the director is not verified "
        "(deploy ca.pem or set ca_fingerprint)"
    ) in log
    # Token with the CA fingerprint pinned: sent, approved at once.
    log = pinned.wait_log("registered as agent " + pinned.guid)
    assert "withheld" not in log

    director.wait_log(f"agent {predeployed.guid} (ws-2) approved by token")
    director.wait_log(f"agent {pinned.guid} (ws-4) approved by token")
    assert director.listed() == {predeployed.guid: "ws-2", pinned.guid: "ws-4"}
    assert director.listed("registered") == {
        predeployed.guid: "ws-2",
        pinned.guid: "ws-4",
    }
    for agent in (no_token, unverified):
        assert director.record(agent.guid) is None
        assert_untouched(agent)
    for agent in (predeployed, pinned):
        assert agent.ca_file.read_bytes() == director.ca_file.read_bytes()
        agent.certificate_on_disk().verify_directly_issued_by(director.ca_certificate())

    # A wrong fingerprint: the agent refuses the director before sending anything.
    director_mark = director.mark()
    impostor_pin = fleet.agent(
        director, "ws-5", registration_token=TOKEN, ca_fingerprint=wrong
    )
    impostor_pin.wait_log(
        f"registration refused: the director's CA has fingerprint {real}, not {wrong}"
    )
    assert "/v1/agent/register" not in director.log_since(director_mark)
    assert director.record(impostor_pin.guid) is None
    assert_untouched(impostor_pin)

    # The same with a ca.pem on disk: the fingerprint still decides, so the
    # token is not sent to a director it names as untrusted.
    director_mark = director.mark()
    deployed_pin = fleet.agent(
        director,
        "ws-6",
        predeploy_ca=True,
        registration_token=TOKEN,
        ca_fingerprint=wrong,
    )
    deployed_pin.wait_log(
        f"registration refused: ca.pem holds no CA with fingerprint {wrong}"
    )
    assert "/v1/agent/register" not in director.log_since(director_mark)
    assert director.record(deployed_pin.guid) is None
    assert not deployed_pin.certificate.exists()
    assert len(director.records()) == 2
