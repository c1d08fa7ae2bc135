"""The director killed (SIGKILL) and gone for a while, as real processes see it.

Issue 11, item 3: what a crash of the director may cost. A registration storm
(200 agents registering, approved through the admin API, fetching their
certificates) is cut by ``kill -9`` once enough of it is acknowledged; after a
restart with the same config the storm finishes, ``agents.db`` is intact and
no answer given before the kill is taken back. And an enrolled agent whose
director is gone for several renewal attempts and update intervals keeps
serving, retries at its pace and resumes, without registering again, when the
director returns. Each test ends with ``PRAGMA integrity_check`` = ok on
``agents.db`` and every registered agent still there.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import queue
import re
import signal
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from director_calls import Answer, admin_director, call
from fake_dcv import FakeDcv

from dcvix.agent.identity import make_csr
from dcvix.common.pki import load_certificates, public_key_fingerprint
from fleet import Agent, Director, Fleet, certificate_file, enrol, https, wait_for

# Long: `make test-quick` leaves it out; `make test` (and CI) runs it.
pytestmark = pytest.mark.long

STORM = 200
WORKERS = 8
APPROVERS = 2
# Agents between their first registration and their certificate, at most: the
# storm comes in waves, so the kill finds every stage under way.
WINDOW = 40
ADMIN, ADMIN_PASSWORD = "root-admin", "Storm-proof.9"
PENDING = (403, {"error": "pending approval"})
# Before the kill: this much of the storm acknowledged, and the rest to come.
KILL_AFTER = {"pending": 60, "approved": 20, "certified": 10}
STORM_TIMEOUT = 90.0


# ------------------------------------------------------------------ helpers


def integrity(director: Director) -> str:
    """``PRAGMA integrity_check`` of ``agents.db`` as the director left it."""
    with contextlib.closing(sqlite3.connect(director.data_dir / "agents.db")) as db:
        rows = db.execute("PRAGMA integrity_check").fetchall()
    return "; ".join(str(row[0]) for row in rows)


def kill(director: Director) -> None:
    """``kill -9``, waited for: no orderly stop, no flush, no goodbye."""
    assert director.process is not None
    director.process.send_signal(signal.SIGKILL)
    director.process.wait(15)
    assert director.process.returncode == -signal.SIGKILL


def started_admin_director(fleet: Fleet, **keys: str) -> Director:
    """A director that logs one admin in through an external script."""
    director = admin_director(fleet, ADMIN, ADMIN_PASSWORD, **keys)
    fleet.start(director)
    return director


def admin_token(director: Director) -> str:
    """A login cookie for the admin (it outlives a restart: ``token.key``)."""
    answer = call(
        director,
        "POST",
        "/v1/admin/login",
        {"userID": ADMIN, "password": ADMIN_PASSWORD},
    )
    assert answer.status == 200, answer.body
    assert answer.token is not None
    return answer.token


# -------------------------------------------------------------- the storm


@dataclass(frozen=True)
class StormAgent:
    """One simulated agent: its key, GUID, hostname and CSR (made once)."""

    guid: str
    hostname: str
    key: ed25519.Ed25519PrivateKey
    csr: str

    @classmethod
    def new(cls, number: int) -> StormAgent:
        key = ed25519.Ed25519PrivateKey.generate()
        guid = str(uuid.uuid4())
        return cls(guid, f"storm{number:03d}", key, make_csr(key, guid))

    @property
    def fingerprint(self) -> str:
        return public_key_fingerprint(self.key.public_key())

    def register_body(self) -> dict[str, str]:
        return {"csr": self.csr, "guid": self.guid, "hostname": self.hostname}


@dataclass
class Storm:
    """Registrations and approvals from client threads, and what they were told.

    Each agent registers (403 pending), the approvers approve it through the
    admin API (200), then it registers again and gets its certificate (200);
    at most :data:`WINDOW` agents are between the first and the last step.
    A request that dies with the director (refused, reset, cut short) is sent
    again until an answer comes: the storm rides over the kill. What the
    director acknowledged is noted under ``lock``, so a snapshot taken under
    it holds only answers given before the moment it was taken.
    """

    director: Director
    token: str
    agents: dict[str, StormAgent]
    lock: threading.Lock = field(default_factory=threading.Lock)
    pending: set[str] = field(default_factory=set)
    approved: set[str] = field(default_factory=set)
    certificates: dict[str, str] = field(default_factory=dict)
    retries: int = 0
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._work: queue.Queue[tuple[str, str]] = queue.Queue()
        self._to_approve: queue.Queue[str | None] = queue.Queue()
        self._window = threading.Semaphore(WINDOW)
        self._deadline = time.monotonic() + STORM_TIMEOUT

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {
                "pending": len(self.pending),
                "approved": len(self.approved),
                "certified": len(self.certificates),
            }

    def snapshot(self) -> tuple[set[str], set[str], dict[str, str]]:
        """Copies of what was acknowledged so far (call with ``lock`` held)."""
        return set(self.pending), set(self.approved), dict(self.certificates)

    def _answer(self, method: str, path: str, body: Any = None) -> Answer:
        """An answer from the director, sending again while it is down."""
        while True:
            try:
                return call(self.director, method, path, body, self.token)
            except (OSError, http.client.HTTPException, json.JSONDecodeError):
                # Refused (down), reset or cut short (killed mid-request).
                with self.lock:
                    self.retries += 1
                if time.monotonic() > self._deadline:
                    raise
                time.sleep(0.05)

    def _register(self, agent: StormAgent, first: bool) -> None:
        answer = self._answer("POST", "/v1/agent/register", agent.register_body())
        outcome = (answer.status, answer.body)
        if first and outcome == PENDING:
            with self.lock:
                self.pending.add(agent.guid)
            self._to_approve.put(agent.guid)
        elif not first and answer.status == 200:
            with self.lock:
                self.certificates[agent.guid] = answer.body["certificate"]
            self._window.release()
        else:
            self._problem(f"register {agent.hostname} (first={first}): {outcome}")

    def _approve(self, guid: str) -> None:
        answer = self._answer("POST", f"/v1/admin/agents/{guid}/approve")
        if answer.status == 200:
            with self.lock:
                self.approved.add(guid)
        elif answer.body != {
            "error": f"agent {guid} is registered, it cannot be approved"
        }:
            # (409 "registered" is a retry of an approval the kill cut off
            # after it was committed: done, but never acknowledged.)
            self._problem(f"approve {guid}: {answer.status} {answer.body}")
            return
        self._work.put(("collect", guid))

    def _problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)

    def feeder(self) -> None:
        """First registrations, as the window lets them in."""
        for guid in self.agents:
            if not self._window.acquire(timeout=self._deadline - time.monotonic()):
                return
            self._work.put(("register", guid))

    def worker(self) -> None:
        """Registrations: first ones, then certificate fetches, until told to end."""
        while True:
            kind, guid = self._work.get()
            if kind == "end":
                return
            self._register(self.agents[guid], first=kind == "register")

    def approver(self) -> None:
        """Approvals through the admin API, as pending answers come in."""
        while (guid := self._to_approve.get()) is not None:
            self._approve(guid)

    def run(self, pool: concurrent.futures.ThreadPoolExecutor) -> list[Any]:
        """Start the storm; the futures end when every agent has its certificate."""
        feeder = pool.submit(self.feeder)
        workers = [pool.submit(self.worker) for _ in range(WORKERS)]
        approvers = [pool.submit(self.approver) for _ in range(APPROVERS)]
        return [feeder, *workers, *approvers]

    def finish(self, futures: list[Any]) -> None:
        """Wait for every certificate, then end the threads."""
        try:
            wait_for(
                "every storm agent certified",
                lambda: self.counts()["certified"] == STORM or self.problems,
                STORM_TIMEOUT,
            )
        finally:
            for _ in range(WORKERS):
                self._work.put(("end", ""))
            for _ in range(APPROVERS):
                self._to_approve.put(None)
            for future in futures:
                future.result(timeout=60)
        assert self.problems == []


def verify_certificate(pem: str, ca: x509.Certificate, agent: StormAgent) -> None:
    """Signed by the CA, for the agent's GUID, hostname and key."""
    (certificate,) = load_certificates(pem.encode())
    certificate.verify_directly_issued_by(ca)
    assert certificate.subject.rfc4514_string() == f"CN=dcvix-agent-{agent.guid}"
    names = certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert names.get_values_for_type(x509.DNSName) == [agent.hostname]
    assert public_key_fingerprint(certificate.public_key()) == agent.fingerprint


def test_kill_9_during_a_registration_storm_loses_nothing_acknowledged(
    fleet: Fleet,
) -> None:
    director = started_admin_director(fleet, register_rate="100000", max_pending="1000")
    token = admin_token(director)
    agents = {a.guid: a for a in (StormAgent.new(n) for n in range(STORM))}
    storm = Storm(director, token, agents)

    with concurrent.futures.ThreadPoolExecutor(1 + WORKERS + APPROVERS) as pool:
        futures = storm.run(pool)
        wait_for(
            f"storm under way: {KILL_AFTER}",
            lambda: (
                storm.problems
                or all(storm.counts()[k] >= v for k, v in KILL_AFTER.items())
            ),
            STORM_TIMEOUT,
        )
        with storm.lock:
            pending, approved, certified = storm.snapshot()
            kill(director)
        # Mid-storm: agents yet to register; the rest keep knocking meanwhile.
        assert len(pending) < STORM, "every agent registered before the kill"
        left_by_kill = integrity(director)
        records_left = {r.guid: r for r in director.records()}
        director.start()
        storm.finish(futures)

    assert left_by_kill == "ok"
    # Everything acknowledged before the kill is in the file the kill left.
    assert pending <= records_left.keys()
    assert {records_left[g].state for g in approved | set(certified)} <= {"registered"}
    assert {records_left[g].state for g in pending} <= {"pending", "registered"}
    assert storm.retries > 0, "no request met the director down"

    records = {r.guid: r for r in director.records()}
    assert records.keys() == agents.keys()
    assert {r.state for r in records.values()} == {"registered"}
    ca = director.ca_certificate()
    for guid, agent in agents.items():
        assert records[guid].hostname == agent.hostname
        assert records[guid].key_fingerprint == agent.fingerprint
        verify_certificate(storm.certificates[guid], ca, agent)
        # The last certificate issued is the one the agent holds.
        serial = load_certificates(storm.certificates[guid].encode())[0].serial_number
        assert records[guid].cert_serial == format(serial, "x")
    # An approval acknowledged is audited (one transaction with the change).
    with contextlib.closing(sqlite3.connect(director.data_dir / "agents.db")) as db:
        audited = {
            row[0]
            for row in db.execute(
                "SELECT target FROM audit WHERE action = 'approve' AND actor = ?",
                (f"admin:{ADMIN}",),
            )
        }
    assert approved <= audited
    # Served after the restart, with the same CA and login key.
    assert director.ca_certificate() == ca
    director.stop()
    assert integrity(director) == "ok"


# ------------------------------------------------- the director away a while

RENEW_INTERVAL = 3.0  # the agent checks every second once renewal is due
UPDATE_INTERVAL = 1.0
# Failed renewal attempts (and updates) the outage lasts, at least.
OUTAGE_ATTEMPTS = 5
RENEWAL_FAILED = "renewal failed, retrying later"
UPDATE_FAILED = "update not delivered"
UPDATE_STORED = '"POST /v1/agent/update" 200'


def identity_files(agent: Agent) -> dict[str, bytes]:
    """``agent.key``, ``agent.guid``, ``agent.crt`` and ``ca.pem``, as bytes."""
    names = ("agent.key", "agent.guid", "agent.crt", "ca.pem")
    return {name: (agent.data_dir / name).read_bytes() for name in names}


def answers_the_director(agent: Agent, director: Director) -> tuple[int, Any]:
    """The agent's session list over mTLS, as the director asks for it."""
    return https(
        agent.port,
        "/v1/sessions",
        cafile=director.ca_file,
        cert=director.server_crt,
        key=director.server_key,
    )


def at_most_one_per(interval: float, count: int, seconds: float) -> bool:
    """Paced: no more attempts than ``seconds`` allow at one per ``interval``.

    Twice the pace plus a few, so a loaded machine never fails it; a hot
    loop makes hundreds a second.
    """
    return count <= 2 * seconds / interval + 5


def online_servers(director: Director, token: str) -> list[str]:
    """The hostnames ``GET /v1/servers?online=true`` lists."""
    answer = call(director, "GET", "/v1/servers?online=true", token=token)
    assert answer.status == 200, answer.body
    return [server["hostname"] for server in answer.body]


def test_agent_rides_out_a_director_away_for_several_renewals(fleet: Fleet) -> None:
    director = started_admin_director(fleet)
    token = admin_token(director)
    fake = FakeDcv(fleet.folder / "dcv").install()
    agent = fleet.agent(
        director,
        "ws-outage",
        dcv_path=str(fake.path),
        renew_interval=f"{RENEW_INTERVAL:g}s",
        update_interval=f"{UPDATE_INTERVAL:g}s",
    )
    enrol(director, agent)
    guid = agent.guid
    # Renewals and updates go through while the director is there.
    agent.wait_log("certificate renewed", timeout=30)
    wait_for("ws-outage online", lambda: online_servers(director, token), 30)

    # Marked before the kill: the first failure may follow it within a millisecond.
    away, gone = agent.mark(), time.monotonic()
    kill(director)
    agent.wait_log(RENEWAL_FAILED, since=away, count=OUTAGE_ATTEMPTS, timeout=60)
    # Nothing can be renewed now: what is on disk is what the agent keeps.
    held = identity_files(agent)
    held_serial = certificate_file(agent.certificate).serial_number
    agent.wait_log(RENEWAL_FAILED, since=away, count=OUTAGE_ATTEMPTS + 2, timeout=60)
    outage = agent.log_since(away)
    seconds = time.monotonic() - gone

    # It keeps serving: health for anyone, the API for the director's certificate.
    assert https(agent.port, "/v1/health", cafile=director.ca_file) == (
        200,
        {"status": "healthy"},
    )
    assert answers_the_director(agent, director)[0] == 200
    assert agent.served().serial_number == held_serial
    assert identity_files(agent) == held
    # It retries at its pace, warns once a run for updates, never registers.
    renewals, updates = outage.count(RENEWAL_FAILED), outage.count(UPDATE_FAILED)
    assert at_most_one_per(1.0, renewals, seconds), (renewals, seconds)
    assert updates >= OUTAGE_ATTEMPTS, outage
    assert at_most_one_per(UPDATE_INTERVAL, updates, seconds), (updates, seconds)
    warned = re.findall(f"WARNING .* dcvix.agent.updater: {UPDATE_FAILED}", outage)
    assert len(warned) == 1, outage
    assert "regist" not in outage, outage

    back, director_back = agent.mark(), director.mark()
    director.start()
    agent.wait_log("updates reach the director again", since=back, timeout=30)
    agent.wait_log("certificate renewed", since=back, timeout=30)
    # Its reports are in again (the director's runtime state died with it);
    # the login made before the kill still holds.
    assert wait_for(
        "ws-outage online again", lambda: online_servers(director, token), 30
    ) == ["ws-outage"]

    # The same agent, never pending again, renewed for the same key.
    assert "regist" not in agent.log_since(back)
    assert "new pending agent" not in director.log_since(director_back)
    assert agent.guid == guid
    assert identity_files(agent)["agent.key"] == held["agent.key"]
    renewed = agent.certificate_on_disk()
    assert renewed.serial_number != held_serial
    renewed.verify_directly_issued_by(director.ca_certificate())
    (record,) = director.records()
    assert (record.guid, record.state) == (guid, "registered")
    wait_for(
        "a renewed certificate served",
        lambda: agent.served().serial_number != held_serial,
    )
    assert answers_the_director(agent, director)[0] == 200
    agent.stop()
    director.stop()
    assert integrity(director) == "ok"
